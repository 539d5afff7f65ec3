// Stress: 10,000 spawns from 8 threads with random option mixes, then no extra fd
// and no child (running or zombie) may remain. Each child's result is checked, so
// a pipe end leaking into a concurrently spawned child (the classic race that
// keeps `cat` from ever seeing EOF) shows up as a timeout here.
//
// Also: 1,000 children alive at once in one event_loop (stdout piped, an on_exit
// each), many short pipelines from several threads, and many ipc channels in one
// event_loop; each ends with zero extra fds and zero children.
//
// SP_STRESS_SPAWNS overrides the count (e.g. 100000 for a long soak); sanitizer
// builds default to 3,000. SP_STRESS_CHILDREN overrides the 1,000.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <unistd.h>

#include <subprocess/subprocess.hpp>
#if defined(SP_STRESS_IPC)
#include <subprocess/ipc.hpp>
#endif

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

struct tally {
  std::atomic<long> spawned{0}, expected_errors{0}, timeouts{0}, detached{0}, groups{0},
      clone_backend{0}, runs{0};
};

struct failure_log {
  std::mutex mu;
  std::vector<std::string> msgs;
  void add(std::string m) {
    std::lock_guard l(mu);
    if (msgs.size() < 20) msgs.push_back(std::move(m));
  }
};

// One random spawn. Returns normally when the child behaved as expected.
void one_spawn(std::mt19937& rng, const fs::path& dir, tally& t, int id) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  const std::string tag = "t" + std::to_string(id);
  sp::command cmd = testing::helper({"out", tag, "err", "e" + tag, "exit", std::to_string(id % 7)});
  const int kind = pick(100);
  // Options that do not change what the child prints.
  switch (pick(3)) {
    case 0:
      cmd.backend(sp::spawn_backend::automatic);
      break;
    case 1:
      cmd.backend(sp::spawn_backend::posix_spawn);
      break;
    case 2:
      cmd.backend(sp::spawn_backend::clone_vfork);
      ++t.clone_backend;
      break;
  }
  if (pick(4) == 0) cmd.cwd(dir);
  switch (pick(4)) {
    case 0:
      cmd.env(sp::environment::inherit().set("SP_STRESS", tag));
      break;
    case 1:
      cmd.env(sp::environment::only({"PATH"}));
      break;
    default:
      break;
  }
  if (pick(5) == 0) {
    if (pick(2))
      cmd.new_process_group();
    else
      cmd.new_session();
    ++t.groups;
  }

  if (kind < 40) {  // run(): captured stdout and stderr, maybe merged
    bool merge = pick(4) == 0;
    if (merge) cmd.err(sp::merge_with_out);
    auto r = sp::run(cmd, {.timeout = 30s});
    ++t.runs;
    if (r.status != sp::exit_status::exited(id % 7))
      throw std::runtime_error("status " + r.status.to_string());
    if (merge ? r.out != tag + "\ne" + tag + "\n"
              : (r.out != tag + "\n" || r.err != "e" + tag + "\n"))
      throw std::runtime_error("output '" + r.out + "' / '" + r.err + "'");
  } else if (kind < 60) {  // run() with input through cat: EOF must arrive
    std::string input(static_cast<std::size_t>(pick(200000)), 'x');
    sp::command c = testing::helper({"cat"});
    c.backend(cmd.has_process_group() ? sp::spawn_backend::automatic
                                      : sp::spawn_backend::clone_vfork);
    auto r = sp::run(c, {.input = input, .timeout = 30s});
    ++t.runs;
    if (!r.success() || r.out.size() != input.size()) throw std::runtime_error("cat lost data");
  } else if (kind < 75) {  // files and /dev/null
    fs::path f = dir / (tag + ".out");
    cmd.in(sp::null)
        .out(sp::file(f))
        .err(pick(2) ? sp::stdio(sp::null) : sp::stdio(sp::merge_with_out));
    auto p = cmd.spawn();
    if (p.wait() != sp::exit_status::exited(id % 7)) throw std::runtime_error("file child status");
    std::ifstream in(f);
    std::string line;
    std::getline(in, line);
    if (line != tag) throw std::runtime_error("file content '" + line + "'");
    fs::remove(f);
  } else if (kind < 85) {  // spawn, read a line, wait
    auto p = cmd.out(sp::pipe).err(sp::null).spawn();
    auto line = p.out().read_line_for(30s);
    if (line != tag) throw std::runtime_error("read_line");
    if (p.wait() != sp::exit_status::exited(id % 7)) throw std::runtime_error("status");
  } else if (kind < 90) {  // a timeout: killed and reaped
    try {
      sp::run(testing::helper({"sleep", "60000"}).new_process_group(pick(2) == 0),
              {.timeout = 20ms});
      throw std::runtime_error("no timeout");
    } catch (const sp::timeout_error& e) {
      if (!e.status() || e.status()->signal() != SIGKILL)
        throw std::runtime_error("timeout status");
      ++t.timeouts;
    }
  } else if (kind < 94) {  // detached: the reaper collects it
    testing::helper({"sleep", std::to_string(pick(20))})
        .in(sp::null)
        .out(sp::null)
        .spawn()
        .detach();
    ++t.detached;
  } else if (kind < 97) {  // destroyed while running: killed and reaped by the destructor
    auto p = testing::helper({"sleep", "60000"}).in(sp::pipe).out(sp::pipe).spawn();
  } else {  // expected failures: nothing may be left behind
    try {
      if (pick(2))
        sp::command{"/nonexistent/program"}.out(sp::pipe).spawn();
      else
        cmd.cwd(dir / "missing").in(sp::pipe).out(sp::pipe).err(sp::pipe).spawn();
      throw std::runtime_error("no spawn_error");
    } catch (const sp::spawn_error&) {
      ++t.expected_errors;
      return;
    }
  }
  ++t.spawned;
}

}  // namespace

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SP_STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SP_STRESS_SANITIZED 1
#endif
#endif

TEST_CASE("stress: 10,000 spawns from 8 threads with random option mixes") {
#if defined(SP_STRESS_SANITIZED)
  const long default_total = 3000;  // sanitizers make each spawn ~10x slower
#else
  const long default_total = 10000;
#endif
  const long total =
      std::getenv("SP_STRESS_SPAWNS") ? std::atol(std::getenv("SP_STRESS_SPAWNS")) : default_total;
  const int threads = 8;
  char tmpl[] = "/tmp/sp_stress_XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const fs::path dir = tmpl;
  auto fds_before = testing::open_fds();

  tally t;
  failure_log failures;
  std::atomic<long> next{0};
  auto t0 = clk::now();
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(1000 + w));
      for (long i; (i = next.fetch_add(1)) < total;) {
        try {
          one_spawn(rng, dir, t, static_cast<int>(i));
        } catch (const std::exception& e) {
          failures.add("spawn " + std::to_string(i) + ": " + e.what());
        }
      }
    });
  for (auto& th : pool) th.join();
  auto secs = std::chrono::duration<double>(clk::now() - t0).count();

  // Detached children finish within ~20 ms; the reaper collects them.
  for (int i = 0; i < 500 && sp::detail::reaper::instance().pending() > 0; ++i)
    std::this_thread::sleep_for(10ms);
  fs::remove_all(dir);

  for (const auto& m : failures.msgs) UNSCOPED_INFO(m);
  CHECK(failures.msgs.empty());
  CHECK(t.spawned + t.expected_errors == total);
  CHECK(sp::detail::reaper::instance().pending() == 0);
  CHECK(testing::children().empty());
  CHECK(testing::open_fds() == fds_before);
  WARN("stress: " << total << " spawn attempts from " << threads << " threads in " << secs << " s ("
                  << static_cast<long>(total / secs) << "/s): " << t.spawned << " children ("
                  << t.runs << " via run(), " << t.timeouts << " timed out and killed, "
                  << t.detached << " detached, " << t.groups << " with their own group/session, "
                  << t.clone_backend << " on the clone backend), " << t.expected_errors
                  << " expected spawn_errors");
}

TEST_CASE("stress: 1,000 children alive at once in one event_loop, stdout piped, on_exit each") {
  // Every child prints a line, then waits for the end of its stdin; only when all of
  // them have printed (so all are alive together) are their stdins closed. Then each
  // prints 100 numbered lines and exits with its own code.
  const int n = std::getenv("SP_STRESS_CHILDREN") ? std::atoi(std::getenv("SP_STRESS_CHILDREN")) : 1000;
  auto fds_before = testing::open_fds();
  auto t0 = clk::now();
  double spawn_secs = 0;
  long lines_total = 0;
  {
    std::vector<sp::process> kids;
    kids.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
      kids.push_back(testing::helper({"out", "ready " + std::to_string(i), "wait-stdin-eof", "seq", "100", "exit",
                                      std::to_string(i % 7)})
                         .in(sp::pipe)
                         .out(sp::pipe)
                         .spawn());
    spawn_secs = std::chrono::duration<double>(clk::now() - t0).count();
    sp::event_loop loop;
    std::vector<int> next_line(static_cast<std::size_t>(n), -1);  // -1: "ready" expected
    std::vector<std::optional<sp::exit_status>> exits(static_cast<std::size_t>(n));
    int ready = 0, bad = 0, exited = 0, closed = 0;
    for (int i = 0; i < n; ++i) {
      loop.on_line(kids[i].out(), [&, i](std::string_view l) {
        ++lines_total;
        int& k = next_line[static_cast<std::size_t>(i)];
        if (k < 0) {
          if (l != "ready " + std::to_string(i)) ++bad;
          k = 0;
          if (++ready == n)  // everyone is alive and waiting: let them all go on
            for (auto& q : kids) q.in().close();
          return;
        }
        if (l != std::to_string(k)) ++bad;
        ++k;
      });
      loop.on_close(kids[i].out(), [&] { ++closed; });
      loop.on_exit(kids[i], [&, i](sp::exit_status st) {
        exits[static_cast<std::size_t>(i)] = st;
        ++exited;
      });
    }
    REQUIRE(loop.run_for(120s));
    CHECK(ready == n);
    CHECK(bad == 0);
    CHECK(closed == n);
    CHECK(exited == n);
    for (int i = 0; i < n; ++i) {
      INFO("child " << i);
      CHECK(next_line[static_cast<std::size_t>(i)] == 100);
      CHECK(exits[static_cast<std::size_t>(i)] == sp::exit_status::exited(i % 7));
    }
  }
  auto secs = std::chrono::duration<double>(clk::now() - t0).count();
  CHECK(testing::children().empty());
  CHECK(testing::open_fds() == fds_before);
  WARN("event_loop stress: " << n << " children alive at once (" << 3 * n << " fds: stdin, stdout, pidfd), "
                             << lines_total << " lines, " << n << " exits; spawned in " << spawn_secs
                             << " s, all done in " << secs << " s");
}

TEST_CASE("stress: many short pipelines from several threads") {
  const int threads = 4, per_thread = 100;
  auto fds_before = testing::open_fds();
  std::atomic<long> ok{0}, timeouts{0};
  failure_log failures;
  auto t0 = clk::now();
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(77 + w));
      for (int i = 0; i < per_thread; ++i) {
        const int kind = static_cast<int>(rng() % 5);
        const int lines = 1 + static_cast<int>(rng() % 2000);
        try {
          std::string expect;
          for (int k = 0; k < lines; ++k) expect += std::to_string(k) + "\n";
          if (kind == 0) {  // commands only, output captured
            auto r = (sp::pipeline{} | testing::helper({"seq", std::to_string(lines)}) | sp::command{"cat"} |
                      sp::command{"sort", "-n"})
                         .run({.timeout = 30s});
            if (r.out != expect || !r.success()) throw std::runtime_error("commands: wrong output");
          } else if (kind == 1) {  // string input through a line transform, stderr captured
            auto t = sp::transform([](std::string_view l) -> std::optional<std::string> { return std::string(l); });
            auto r = (sp::pipeline{} | testing::helper({"err", "e", "cat"}) | t | sp::command{"cat"})
                         .run({.input = expect, .err = sp::capture, .timeout = 30s});
            if (r.out != expect || r.stages[0].err != "e\n") throw std::runtime_error("transform: wrong output");
          } else if (kind == 2) {  // a chunk transform at each end, a callback for the output
            std::size_t got = 0;
            auto copy = sp::transform([](std::string_view d, sp::emitter& emit) { emit(d); });
            auto r = (sp::pipeline{} | copy | sp::command{"cat"} | copy)
                         .run({.input = expect, .output = sp::output_callback([&](std::string_view d) { got += d.size(); }),
                               .timeout = 30s});
            if (got != expect.size() || !r.success()) throw std::runtime_error("callback: lost bytes");
          } else if (kind == 3) {  // yes | head: the producer dies of SIGPIPE, no failure
            auto r = (sp::pipeline{} | sp::command{"yes"} | sp::command{"head", "-n", std::to_string(lines)})
                         .run({.timeout = 30s});
            if (!r.success() || std::count(r.out.begin(), r.out.end(), '\n') != lines)
              throw std::runtime_error("yes | head");
          } else {  // a timeout: everything killed and reaped
            try {
              (sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{"cat"}).run({.timeout = 20ms});
              throw std::runtime_error("no timeout");
            } catch (const sp::timeout_error&) {
              ++timeouts;
            }
          }
          ++ok;
        } catch (const std::exception& e) {
          failures.add("pipeline " + std::to_string(w) + "/" + std::to_string(i) + ": " + e.what());
        }
      }
    });
  for (auto& th : pool) th.join();
  auto secs = std::chrono::duration<double>(clk::now() - t0).count();
  for (const auto& m : failures.msgs) UNSCOPED_INFO(m);
  CHECK(failures.msgs.empty());
  CHECK(ok == threads * per_thread);
  CHECK(testing::children().empty());
  CHECK(testing::open_fds() == fds_before);
  WARN("pipeline stress: " << threads * per_thread << " pipelines from " << threads << " threads in " << secs
                           << " s (" << timeouts << " timed out and killed)");
}

#if defined(SP_STRESS_IPC)
TEST_CASE("stress: many ipc channels in one event_loop") {
  namespace ipc = subprocess::ipc;
  using json = ipc::json;
  const int n = 100, messages = 50;
  auto fds_before = testing::open_fds();
  auto t0 = clk::now();
  {
    std::vector<sp::process> kids;
    std::vector<std::unique_ptr<ipc::channel>> chans;
    for (int i = 0; i < n; ++i) {
      kids.push_back(sp::command{IPC_HELPER_PATH, "connect", "echo-n", std::to_string(messages), "close"}.ipc().spawn());
      chans.push_back(std::make_unique<ipc::channel>(kids.back()));
    }
    sp::event_loop loop;
    std::vector<int> got(static_cast<std::size_t>(n), 0);
    int closed = 0, bad = 0, exits = 0;
    std::vector<std::unique_ptr<ipc::attachment<sp::event_loop>>> atts;
    for (int i = 0; i < n; ++i) {
      atts.push_back(ipc::attach(loop, *chans[static_cast<std::size_t>(i)],
                                 {.on_message =
                                      [&, i](json m) {
                                        int& k = got[static_cast<std::size_t>(i)];
                                        if (m != json{{"c", i}, {"k", k}, {"pad", std::string(static_cast<std::size_t>(k * 100), 'p')}})
                                          ++bad;
                                        ++k;
                                      },
                                  .on_error = [&](const ipc::channel_error&) { ++bad; },
                                  .on_close = [&] { ++closed; }}));
      loop.on_exit(kids[static_cast<std::size_t>(i)], [&](sp::exit_status st) {
        if (!st.success()) ++bad;
        ++exits;
      });
    }
    for (int k = 0; k < messages; ++k)
      for (int i = 0; i < n; ++i)
        atts[static_cast<std::size_t>(i)]->send({{"c", i}, {"k", k}, {"pad", std::string(static_cast<std::size_t>(k * 100), 'p')}});
    REQUIRE(loop.run_for(60s));
    CHECK(bad == 0);
    CHECK(closed == n);
    CHECK(exits == n);
    for (int i = 0; i < n; ++i) CHECK(got[static_cast<std::size_t>(i)] == messages);
  }
  auto secs = std::chrono::duration<double>(clk::now() - t0).count();
  CHECK(testing::children().empty());
  CHECK(testing::open_fds() == fds_before);
  WARN("ipc stress: " << n << " channels in one event_loop, " << n * messages << " messages each way in " << secs
                      << " s");
}
#endif
