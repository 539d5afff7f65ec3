// Durations and deadlines at the edges: every API that takes a duration or a deadline
// accepts anything up to its type's maximum (milliseconds::max(), hours::max(),
// nanoseconds::max(), a floating-point duration's max(), time_point::max(), a
// system_clock time centuries away) as "practically forever". Never an overflow (this
// program is also built with -fsanitize=undefined -fno-sanitize-recover=all: see
// CMakeLists.txt), never an immediate timeout.
//
// The pattern: a child that exits quickly is observed normally; a child that keeps
// running keeps the call waiting (checked from another thread after a short moment),
// and the call is then ended by the child's end, not by a timeout.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <functional>
#include <thread>

#include <subprocess/detail/deadline.hpp>
#include <subprocess/ipc.hpp>
#include <subprocess/pool.hpp>
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

namespace {

// `call` blocks until `end` (run on another thread after a short moment) makes it
// return. True if it was still blocked when end() ran: it did not time out at once.
bool still_waiting_until_ended(const std::function<void()>& call, const std::function<void()>& end) {
  std::atomic<bool> returned{false};
  bool waiting = false;
  std::thread t([&] {
    std::this_thread::sleep_for(100ms);  // what is checked is that nothing happens meanwhile
    waiting = !returned.load();
    end();
  });
  try {
    call();
  } catch (...) {
    returned = true;
    t.join();
    throw;
  }
  returned = true;
  t.join();
  return waiting;
}

// sp_helper that exits 0 (after `ms` ms) when it gets SIGTERM; returns once its handler is in place.
sp::process term_child(int ms = 0, bool group = false) {
  auto c = testing::helper({"term-exits-after", std::to_string(ms), "ready", "sleep", "60000"}).out(sp::pipe);
  if (group) c.new_process_group();
  auto p = c.spawn();
  REQUIRE(p.out().read_line() == "ready");
  return p;
}

using testing::ipc_child;

constexpr auto far_system_time = std::chrono::system_clock::time_point::max();
const auto dmax = std::chrono::duration<double>::max();  // 1.8e308 s

}  // namespace

TEST_CASE("deadline.hpp: saturating conversions") {
  using sp::detail::clock;
  CHECK(sp::detail::to_clock_duration(milliseconds::max()) == clock::duration::max());
  CHECK(sp::detail::to_clock_duration(hours::max()) == clock::duration::max());
  CHECK(sp::detail::to_clock_duration(hours::min()) == clock::duration::min());
  CHECK(sp::detail::to_clock_duration(dmax) == clock::duration::max());
  CHECK(sp::detail::to_clock_duration(std::chrono::duration<double>(0.5)) == 500ms);
  CHECK(sp::detail::to_clock_duration(1500ms) == 1500ms);
  CHECK(sp::detail::to_clock_duration(std::chrono::duration<long long, std::pico>(1500)) == 2ns);  // up
  CHECK(sp::detail::deadline_in(hours::max()) == clock::time_point::max());
  const auto soon = sp::detail::deadline_in(-5s);
  CHECK(soon <= clock::now());
  CHECK(sp::detail::to_deadline(far_system_time) == clock::time_point::max());
  const auto in_200_years = std::chrono::system_clock::now() + hours(24 * 365 * 200);
  CHECK(sp::detail::to_deadline(in_200_years) > clock::now() + hours(24 * 365 * 199));
  CHECK(sp::detail::to_deadline(std::chrono::system_clock::time_point::min()) <= clock::now());
  CHECK(sp::detail::poll_timeout(clock::time_point::max()) == sp::detail::max_poll_ms);
  CHECK(sp::detail::poll_timeout(clock::time_point::min()) == 0);
  CHECK(sp::detail::poll_timeout(std::nullopt) == -1);
  const timespec ts = sp::detail::to_timespec(clock::duration::max());
  CHECK(ts.tv_sec == 9223372036LL);
  CHECK(ts.tv_nsec == 854775807L);
}

TEST_CASE("process: wait_for / wait_until / terminate with max durations and far deadlines") {
  SECTION("a child that exits is observed normally") {
    auto p = testing::helper({"exit", "3"}).spawn();
    CHECK(p.wait_for(milliseconds::max()) == sp::exit_status::exited(3));
    auto q = testing::helper({"exit", "4"}).spawn();
    CHECK(q.wait_for(hours::max()) == sp::exit_status::exited(4));
    auto r = testing::helper({"exit", "5"}).spawn();
    CHECK(r.wait_for(dmax) == sp::exit_status::exited(5));
    auto s = testing::helper({"exit", "6"}).spawn();
    CHECK(s.wait_until(clk::time_point::max()) == sp::exit_status::exited(6));
    auto t = testing::helper({"exit", "7"}).spawn();
    CHECK(t.wait_until(far_system_time) == sp::exit_status::exited(7));
  }
  SECTION("a running child keeps wait_for(hours::max()) waiting until it ends") {
    auto p = testing::helper({"sleep", "60000"}).spawn();
    std::optional<sp::exit_status> st;
    CHECK(still_waiting_until_ended([&] { st = p.wait_for(hours::max()); }, [&] { p.signal(SIGTERM); }));
    REQUIRE(st);
    CHECK(st->signal() == SIGTERM);
  }
  SECTION("wait_until a far system_clock time waits too") {
    auto p = testing::helper({"sleep", "60000"}).spawn();
    std::optional<sp::exit_status> st;
    CHECK(still_waiting_until_ended([&] { st = p.wait_until(far_system_time); }, [&] { p.signal(SIGTERM); }));
    REQUIRE(st);
    CHECK(st->signal() == SIGTERM);
  }
  SECTION("terminate(max): SIGTERM, and no SIGKILL while the child takes its time") {
    auto p = term_child(150);
    CHECK(p.terminate(milliseconds::max()) == sp::exit_status::exited(0));
    auto g = term_child(150, true);
    CHECK(g.terminate(hours::max()) == sp::exit_status::exited(0));
  }
  SECTION("negative durations keep their rule") {
    auto p = testing::helper({"sleep", "60000"}).spawn();
    CHECK_THROWS_AS(p.wait_for(hours::min()), sp::argument_error);
    CHECK_THROWS_AS(p.terminate(milliseconds::min()), sp::argument_error);
  }
}

TEST_CASE("shutdown with max grace: nobody is SIGKILLed early") {
  std::vector<sp::process> ps;
  ps.push_back(term_child(150));
  ps.push_back(term_child(150, true));
  auto r = sp::shutdown(ps, hours::max());
  REQUIRE(r.processes.size() == 2);
  for (const auto& e : r.processes) {
    CHECK(e.status == sp::exit_status::exited(0));
    CHECK_FALSE(e.needed_sigkill);
  }
  std::vector<sp::process> qs;
  qs.push_back(term_child(0));
  CHECK(sp::shutdown(qs, milliseconds::max()).all_graceful());
  CHECK_THROWS_AS(sp::shutdown(qs, hours::min()), sp::argument_error);
}

TEST_CASE("signal_set: wait_for(max) and wait_until(far) wait for the signal") {
  sp::signal_set set{SIGUSR1};
  std::optional<sp::signal_info> got;
  CHECK(still_waiting_until_ended([&] { got = set.wait_for(hours::max()); },
                                  [] { ::kill(::getpid(), SIGUSR1); }));
  REQUIRE(got);
  CHECK(got->signal == SIGUSR1);
  got.reset();
  CHECK(still_waiting_until_ended([&] { got = set.wait_until(clk::time_point::max()); },
                                  [] { ::kill(::getpid(), SIGUSR1); }));
  REQUIRE(got);
  got.reset();
  CHECK(still_waiting_until_ended([&] { got = set.wait_for(nanoseconds::max()); },
                                  [] { ::kill(::getpid(), SIGUSR1); }));
  REQUIRE(got);
  CHECK_THROWS_AS(set.wait_for(-1ms), sp::argument_error);
}

TEST_CASE("event_loop: after/every/run_for with max durations") {
  sp::event_loop loop;
  bool fired = false;
  auto a = loop.after(milliseconds::max(), [&] { fired = true; });
  auto b = loop.every(hours::max(), [&] { fired = true; });
  auto c = loop.after(dmax, [&] { fired = true; });
  auto p = testing::helper({"sleep", "60000"}).spawn();
  std::optional<sp::exit_status> st;
  loop.on_exit(p, [&](sp::exit_status s) {
    st = s;
    for (auto t : {a, b, c}) loop.cancel(t);
  });
  bool drained = false;
  CHECK(still_waiting_until_ended([&] { drained = loop.run_for(hours::max()); }, [&] { p.signal(SIGTERM); }));
  CHECK(drained);  // it ran until nothing was left, not until some wrapped-around end
  CHECK_FALSE(fired);
  REQUIRE(st);
  CHECK(st->signal() == SIGTERM);
  CHECK_THROWS_AS(loop.after(hours::min(), [] {}), sp::argument_error);
}

TEST_CASE("pipe_reader::read_line_for(max) waits for the line") {
  auto p = testing::helper({"cat"}).in(sp::pipe).out(sp::pipe).spawn();
  std::optional<std::string> line;
  CHECK(still_waiting_until_ended([&] { line = p.out().read_line_for(hours::max()); },
                                  [&] { p.in().write_all("hello\n"); }));
  CHECK(line == "hello");
  p.in().close();
  CHECK(p.wait() == sp::exit_status::exited(0));
}

TEST_CASE("run() and communicate() with a max timeout: no timeout_error") {
  auto t0 = clk::now();
  auto r = sp::run(testing::helper({"sleep", "150", "out", "done"}), {.timeout = milliseconds::max()});
  CHECK(r.success());
  CHECK(r.out == "done\n");
  CHECK(clk::now() - t0 >= 150ms);
  auto p = testing::helper({"sleep", "150", "out", "x"}).out(sp::pipe).spawn();
  auto c = sp::communicate(p, {}, {.timeout = milliseconds::max()});
  CHECK(c.success());
  CHECK(c.out == "x\n");
  CHECK_THROWS_AS(sp::run(testing::helper({"exit", "0"}), {.timeout = milliseconds::min()}), sp::argument_error);
}

TEST_CASE("pipeline: timeout and wait_for and terminate with max durations") {
  auto pl = sp::pipeline{} | testing::helper({"sleep", "150", "out", "a"}) | sp::command{"cat"};
  auto r = pl.run({.timeout = milliseconds::max()});
  CHECK(r.status.success());
  CHECK(r.out == "a\n");
  auto running = (sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{"cat"}).spawn();
  std::optional<sp::pipeline_result> res;
  CHECK(still_waiting_until_ended([&] { res = running.wait_for(hours::max()); },
                                  [&] { running.signal(SIGTERM); }));
  REQUIRE(res);
  auto t = (sp::pipeline{} | testing::helper({"sleep", "60000"})).spawn();  // ends at SIGTERM
  auto tr = t.terminate(hours::max());
  CHECK(tr.stages.at(0).status.signal() == SIGTERM);
}

TEST_CASE("ipc: receive_for and call timeouts and heartbeats with max durations") {
  SECTION("receive_for(max) waits for the message") {
    auto p = ipc_child({"connect", "receive-one", "send", R"({"a":1})", "expect-eof"}).spawn();
    ipc::channel ch(p);
    std::optional<json> m;
    CHECK(still_waiting_until_ended([&] { m = ch.receive_for(hours::max()); }, [&] { ch.send(json{{"go", 1}}); }));
    REQUIRE(m);
    CHECK((*m)["a"] == 1);
    ch.close();
    CHECK(p.wait() == sp::exit_status::exited(0));
  }
  SECTION("a call with a timeout just under no_timeout") {
    auto p = ipc_child({"connect", "serve"}).spawn();
    ipc::client c(p, {.timeout = milliseconds::max() - 1ms});
    CHECK(c.call("sleep", {{"ms", 100}}).get() == 100);
    CHECK(c.call("sleep", {{"ms", 100}}, milliseconds::max() - 1ms).get() == 100);
    CHECK(c.call_sync("sleep", {{"ms", 100}}, milliseconds::max() - 1ms) == 100);
    CHECK(c.call_sync("sleep", {{"ms", 100}}, ipc::no_timeout) == 100);
    // Heartbeats: one ping at the start, the next in "for ever".
    ipc::heartbeat hb(c, {.interval = milliseconds::max(), .timeout = milliseconds::max(),
                          .method = "rpc.heartbeat", .on_beat = {}, .on_unresponsive = {}});
    auto t0 = clk::now();
    while (hb.beats() < 1 && clk::now() - t0 < 5s) std::this_thread::sleep_for(5ms);
    std::this_thread::sleep_for(100ms);
    CHECK(hb.beats() == 1);
    CHECK(hb.responsive());
    hb.stop();
    c.close();
  }
}

TEST_CASE("worker_pool: max durations in every option and in wait_idle_for and shutdown") {
  std::vector<std::string> argv{IPC_HELPER_PATH, "connect", "serve"};
  sp::worker_pool pool(sp::command(argv), {.min_workers = 1,
                                           .max_workers = 2,
                                           .scale_up_cooldown = milliseconds::max(),
                                           .idle_timeout = milliseconds::max(),
                                           .heartbeat_interval = milliseconds::max(),
                                           .heartbeat_timeout = milliseconds::max(),
                                           .task_timeout = milliseconds::max(),
                                           .shutdown_grace = milliseconds::max()});
  auto f = pool.submit("sleep", {{"ms", 100}});
  CHECK(pool.wait_idle_for(hours::max()));
  CHECK(f.get() == 100);
  auto g = pool.submit("sleep", {{"ms", 100}});
  CHECK(pool.wait_idle_for(nanoseconds::max()));
  CHECK(g.get() == 100);
  CHECK(pool.stats().workers_hung == 0);
  auto t0 = clk::now();
  pool.shutdown(hours::max());
  CHECK(clk::now() - t0 < 5s);
}

TEST_CASE("worker_pool: term_grace = milliseconds::max(): SIGTERM at the end of the grace, no early SIGKILL") {
  // The worker ignores the disconnect; SIGTERM ends it (killed by SIGTERM). An
  // overflowing term_grace would SIGKILL it at once, or never let shutdown() return.
  std::mutex mu;
  std::vector<sp::pool_event> stopped;
  auto on_event = [&](const sp::pool_event& e) {
    std::lock_guard l(mu);
    if (e.kind == sp::pool_event_kind::worker_stopped) stopped.push_back(e);
  };
  SECTION("shutdown()") {
    std::promise<void> ready;
    sp::worker_pool pool(
        sp::command{IPC_HELPER_PATH, "connect", "send", "{\"ready\":1}", "sleep", "60000"},
        {.min_workers = 1,
         .heartbeat_interval = 0ms,
         .term_grace = milliseconds::max(),
         .on_event = on_event,
         .on_message = [&](pid_t, const json&) { ready.set_value(); }});
    REQUIRE(ready.get_future().wait_for(10s) == std::future_status::ready);
    auto t0 = clk::now();
    pool.shutdown(100ms);
    auto took = clk::now() - t0;
    CHECK(took >= 100ms);
    CHECK(took < 5s);
  }
  SECTION("a recycled worker that lingers after its channel closed") {
    sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "serve", "sleep", "60000"},
                         {.min_workers = 1,
                          .max_tasks_per_worker = 1,
                          .shutdown_grace = 100ms,
                          .term_grace = milliseconds::max(),
                          .on_event = on_event});
    CHECK(pool.submit("square", {3}).get() == 9);
    auto t0 = clk::now();
    for (;;) {
      {
        std::lock_guard l(mu);
        if (!stopped.empty() || clk::now() - t0 > 5s) break;
      }
      std::this_thread::sleep_for(5ms);  // the pool's events have no fd to wait on
    }
  }
  std::lock_guard l(mu);
  REQUIRE(stopped.size() >= 1);
  CHECK(stopped[0].status == sp::exit_status::signaled(SIGTERM));
}

TEST_CASE("a timeout policy's grace of milliseconds::max() is for ever, never an overflow") {
  const auto forever = sp::timeout_policy::kill_with(SIGTERM, milliseconds::max());
  SECTION("process::wait_for(t, policy)") {
    auto p = testing::helper({"ignore-term", "ready", "sleep", "60000"}).out(sp::pipe).spawn();
    REQUIRE(p.out().read_line() == "ready");
    std::optional<sp::timeout_outcome> o;
    CHECK(still_waiting_until_ended(
        [&] {
          try {
            p.wait_for(10ms, forever);
          } catch (const sp::timeout_error& e) {
            o = e.outcome();
          }
        },
        [&] { p.signal(SIGKILL); }));
    REQUIRE(o);
    CHECK(o->status->signal() == SIGKILL);
    CHECK_FALSE(o->escalated);  // the SIGKILL was ours, not the grace's end
  }
  SECTION("a pipeline's on_timeout") {
    auto link = sp::detail::make_pipe();
    auto h = (sp::pipeline{} | testing::helper({"ignore-term", "ready", "sleep", "60000"}))
                 .spawn({.output = sp::fd(link.write.get()), .timeout = 10ms, .on_timeout = forever});
    link.write.reset();
    sp::pipe_reader out(std::move(link.read));
    REQUIRE(out.read_line_for(10s) == "ready");
    std::optional<sp::pipeline_result> r;
    CHECK(still_waiting_until_ended(
        [&] {
          try {
            h.wait();
          } catch (const sp::pipeline_timeout_error& e) {
            r = e.result();
            CHECK_FALSE(e.outcome().escalated);
          }
        },
        [&] { h.signal(SIGKILL); }));
    REQUIRE(r);
    CHECK(r->stages[0].status == sp::exit_status::signaled(SIGKILL));
  }
}
