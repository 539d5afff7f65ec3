#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/resource.h>

#include <subprocess/pipeline.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// ThreadSanitizer makes the parent's copying (the transform test) ~3x slower; there
// the big tests move 64 MiB unless SP_PIPELINE_BIG_BYTES says otherwise. Every
// other build, AddressSanitizer included (~1 s), moves the full 1 GiB.
#if defined(__SANITIZE_THREAD__)
#define SP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SP_TEST_TSAN 1
#endif
#endif

namespace {

// Every command runs with LC_ALL=C so sort, uniq and friends agree with bash byte for byte.
sp::command c_cmd(std::vector<std::string> argv) {
  return sp::command(std::move(argv)).env(sp::environment::inherit().set("LC_ALL", "C"));
}

// What bash prints for the same pipeline, and its pipefail exit code.
sp::run_result bash(const std::string& script, const std::string& input) {
  return sp::run(c_cmd({"bash", "-c", "set -o pipefail; " + script}), {.input = input});
}

// A private temporary directory, removed at the end of the test.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string t = (fs::temp_directory_path() / "sp_pipeline_XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~temp_dir() { fs::remove_all(path); }
  fs::path write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
    return path / name;
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Deterministic text: words, numbers and categories, some repeated, ~n lines.
std::string generated_text(int n) {
  static const char* words[] = {"apple", "banana", "cherry", "date", "elder", "fig", "grape", "kiwi"};
  static const char* cats[] = {"fruit", "berry", "stone", "citrus"};
  std::string s;
  unsigned x = 12345;
  for (int i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    unsigned r = (x >> 8) & 0xffff;
    s += words[r % 8];
    s += ' ';
    s += std::to_string(r % 97);
    s += ' ';
    s += cats[(r / 8) % 4];
    if (r % 11 == 0) s += "  Mixed Case\tTab";
    s += '\n';
  }
  return s;
}

// True when UndefinedBehaviorSanitizer's vptr check is linked in. That check probes
// memory with a pipe(2) of its own, so with every fd taken it reports a valid object
// as having an "invalid vptr": the fd-exhaustion test cannot run there.
bool ubsan_vptr_checks() { return ::dlsym(RTLD_DEFAULT, "__ubsan_handle_dynamic_type_cache_miss") != nullptr; }

long proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  std::string k = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.compare(0, k.size(), k) == 0) return std::stol(line.substr(k.size()));
  return -1;
}

// Resets VmHWM to the current RSS (Linux 4.0+). False if the kernel refused.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

std::size_t big_bytes() {
  if (const char* e = std::getenv("SP_PIPELINE_BIG_BYTES")) return std::stoull(e);
#if defined(SP_TEST_TSAN)
  return std::size_t(64) << 20;
#else
  return std::size_t(1) << 30;
#endif
}

// Checks that a stream is sp_helper's out-bytes pattern: byte o is 'a' + (o % 65536) % 26.
struct pattern_checker {
  std::string ref;
  std::size_t offset = 0;
  bool ok = true;
  pattern_checker() : ref(2 * 65536, 'a') {
    for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = static_cast<char>('a' + (i % 65536) % 26);
  }
  void operator()(std::string_view d) {
    while (!d.empty()) {
      std::size_t n = std::min<std::size_t>(d.size(), 65536);
      if (std::memcmp(d.data(), ref.data() + offset % 65536, n) != 0) ok = false;
      offset += n;
      d.remove_prefix(n);
    }
  }
};

std::vector<std::string> fd_kinds() {
  std::vector<std::string> v;
  for (int fd : testing::open_fds()) {
    char buf[256] = {};
    auto link = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(link.c_str(), buf, sizeof buf - 1) > 0) v.emplace_back(buf);
  }
  return v;
}
long count_pipes(const std::vector<std::string>& kinds) {
  return std::count_if(kinds.begin(), kinds.end(),
                       [](const std::string& k) { return k.rfind("pipe:", 0) == 0; });
}

auto identity_lines() {
  return sp::transform([](std::string_view l) -> std::optional<std::string> { return std::string(l); },
                       "identity");
}
auto identity_chunks() {
  return sp::transform([](std::string_view d, sp::emitter& emit) { emit(d); }, "identity");
}

}  // namespace

TEST_CASE("building: | and add() make the same pipeline; to_string is shell-like") {
  auto square = sp::transform([](std::string_view l) -> std::optional<std::string> { return std::string(l); },
                              "square");
  auto a = sp::pipeline{} | sp::command{"grep", "-v", "^#"} | square | sp::command{"sort", "-n"};
  std::vector<sp::stage> stages{sp::command{"grep", "-v", "^#"}, square, sp::command{"sort", "-n"}};
  sp::pipeline b;
  for (const auto& s : stages) b.add(s);
  CHECK(a.to_string() == "grep -v '^#' | [square] | sort -n");
  CHECK(b.to_string() == a.to_string());
  CHECK(sp::pipeline(stages).to_string() == a.to_string());
  CHECK(a.size() == 3);
  CHECK_FALSE(a.empty());
  CHECK(sp::pipeline{}.empty());
  CHECK(sp::transform([](std::string_view, sp::emitter&) {}).to_string() == "[transform]");
  CHECK(square.is_line_function());
  // Runs the same either way.
  auto in = std::string("3\n# comment\n1\n2\n");
  CHECK(a.run({.input = in}).out == "1\n2\n3\n");
  CHECK(b.run({.input = in}).out == "1\n2\n3\n");
  SECTION("a pipeline is a value: it runs again with the same result") {
    CHECK(a.run({.input = in}).out == "1\n2\n3\n");
  }
}

TEST_CASE("bad input is rejected before anything starts") {
  auto cat = sp::command{"cat"};
  SECTION("an empty pipeline") {
    CHECK_THROWS_AS(sp::pipeline{}.run(), sp::argument_error);
    CHECK_THROWS_WITH(sp::pipeline{}.spawn(), Catch::Contains("empty pipeline"));
  }
  SECTION("a stage with its own stdin/stdout") {
    CHECK_THROWS_WITH((sp::pipeline{} | cat | sp::command{"sort"}.out(sp::null)).run(),
                      Catch::Contains("stage 2 of 2") && Catch::Contains("stdout"));
    CHECK_THROWS_AS((sp::pipeline{} | sp::command{"cat"}.in(sp::null)).run(), sp::argument_error);
  }
  SECTION("a stage with err(sp::pipe), which nobody would read") {
    CHECK_THROWS_WITH((sp::pipeline{} | sp::command{"cat"}.err(sp::pipe)).run(), Catch::Contains("capture"));
  }
  SECTION("a stage with its own process group, unless process_group = false") {
    auto p = sp::pipeline{} | cat | sp::command{"cat"}.new_process_group();
    CHECK_THROWS_WITH(p.run(), Catch::Contains("process_group"));
    CHECK(p.run({.process_group = false}).success());
  }
  SECTION("bad arguments name the stage and the command") {
    try {
      (sp::pipeline{} | cat | sp::command{"echo", std::string("a\0b", 3)}).run();
      FAIL("no exception");
    } catch (const sp::argument_error& e) {
      CHECK_THAT(e.what(), Catch::Contains("stage 2 of 2") && Catch::Contains("NUL"));
    }
  }
  SECTION("bad options") {
    CHECK_THROWS_AS((sp::pipeline{} | cat).run({.timeout = -1ms}), sp::argument_error);
    CHECK_THROWS_WITH((sp::pipeline{} | cat).run({.input = sp::fd(987)}), Catch::Contains("987"));
    CHECK_THROWS_AS((sp::pipeline{} | cat).run({.output = sp::fd(-1)}), sp::argument_error);
    CHECK_THROWS_AS((sp::pipeline{} | cat).run({.input = sp::pipe_reader{}}), sp::argument_error);
    CHECK_THROWS_AS((sp::pipeline{} | cat).run({.output = sp::output_callback{}}), sp::argument_error);
    CHECK_THROWS_AS(identity_lines().max_line(0), sp::argument_error);
  }
  CHECK(testing::children().empty());
}

TEST_CASE("output is byte-identical to bash running the same pipeline") {
  struct case_t {
    std::string script;
    std::vector<std::vector<std::string>> stages;
  };
  std::vector<case_t> cases{
      {"sort | uniq -c", {{"sort"}, {"uniq", "-c"}}},
      {"grep -E 'an|ig' | cut -d ' ' -f 2,3 | sort", {{"grep", "-E", "an|ig"}, {"cut", "-d", " ", "-f", "2,3"}, {"sort"}}},
      {"tr a-z A-Z", {{"tr", "a-z", "A-Z"}}},
      {"tr -s ' \\t' '\\n' | sort | uniq -c | sort -rn | head -n 5",
       {{"tr", "-s", " \t", "\n"}, {"sort"}, {"uniq", "-c"}, {"sort", "-rn"}, {"head", "-n", "5"}}},
      {"awk '{ s += $2 } END { print s, NR }'", {{"awk", "{ s += $2 } END { print s, NR }"}}},
      {"awk '{ print $3, $1 }' | sort | uniq", {{"awk", "{ print $3, $1 }"}, {"sort"}, {"uniq"}}},
  };
  std::string generated = generated_text(20000);
  std::string no_final_newline = generated.substr(0, generated.size() - 1) + " tail";
  auto which = GENERATE(0, 1, 2);
  const std::string& input = which == 0 ? generated : which == 1 ? std::string() : no_final_newline;
  for (const auto& c : cases) {
    INFO(c.script << " on " << (which == 0 ? "generated text" : which == 1 ? "empty input" : "text without final newline"));
    sp::pipeline p;
    for (const auto& argv : c.stages) p.add(c_cmd(argv));
    auto ours = p.run({.input = input});
    auto theirs = bash(c.script, input);
    CHECK(ours.out == theirs.out);
    CHECK(ours.status.shell_code() == theirs.status.shell_code());
  }
  SECTION("the same through a file, and through an identity transform in the middle") {
    temp_dir dir;
    auto path = dir.write("input.txt", input);
    sp::pipeline p = sp::pipeline{} | c_cmd({"sort"}) | identity_lines() | c_cmd({"uniq", "-c"});
    auto ours = p.run({.input = sp::file(path)});
    CHECK(ours.out == bash("sort | uniq -c", input).out);
    CHECK((sp::pipeline{} | identity_lines()).run({.input = input}).out == input);
    CHECK((sp::pipeline{} | c_cmd({"cat"}) | identity_chunks() | c_cmd({"cat"})).run({.input = input}).out == input);
  }
}

TEST_CASE("yes | head -n 1 finishes at once, and the statuses say why each ended") {
  auto p = sp::pipeline{} | sp::command{"yes"} | sp::command{"head", "-n", "1"};
  auto t0 = std::chrono::steady_clock::now();
  auto r = p.run();
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(elapsed < 1s);
  CHECK(r.out == "y\n");
  REQUIRE(r.stages.size() == 2);
  CHECK(r.stages[0].status == sp::exit_status::signaled(SIGPIPE));  // head left: yes got SIGPIPE
  CHECK(r.stages[0].success());                                    // ...which is not a failure
  CHECK(r.stages[1].status == sp::exit_status::exited(0));
  CHECK(r.success());
  CHECK(r.status == sp::exit_status::exited(0));
  SECTION("sigpipe_is_failure = true counts it, like bash's pipefail") {
    auto strict = p.run({.sigpipe_is_failure = true});
    CHECK_FALSE(strict.success());
    CHECK(strict.status == sp::exit_status::signaled(SIGPIPE));
    CHECK(strict.failed_stage == 0u);
    CHECK(strict.status.shell_code() == bash("yes | head -n 1", "").status.shell_code());
  }
  SECTION("a transform upstream of head ends the same way") {
    auto r2 = (sp::pipeline{} | sp::command{"yes"} | identity_chunks() | sp::command{"head", "-n", "1"}).run();
    CHECK(r2.out == "y\n");
    CHECK(r2.stages[1].status == sp::exit_status::signaled(SIGPIPE));
    CHECK(r2.success());
  }
}

TEST_CASE("1 GiB through cat | cat | cat with the parent's RSS flat") {
  const std::size_t n = big_bytes();
  bool transform_stage = GENERATE(false, true);
  sp::pipeline p = sp::pipeline{} | testing::helper({"out-bytes", std::to_string(n)}) | sp::command{"cat"};
  if (transform_stage) p.add(identity_chunks());
  p.add(sp::command{"cat"});
  p.add(sp::command{"cat"});

  const bool peak_reset = reset_peak_rss();
  const long rss_before = proc_status_kb("VmRSS");
  const long hwm_before = proc_status_kb("VmHWM");
  pattern_checker check;
  auto t0 = std::chrono::steady_clock::now();
  auto r = p.run({.output = [&](std::string_view d) { check(d); }});
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  const long hwm_after = proc_status_kb("VmHWM");
  std::printf("[pipeline] %s: %zu MiB in %lld ms (%.0f MiB/s), RSS before %ld kB, peak %ld kB%s\n",
              p.to_string().c_str(), n >> 20, static_cast<long long>(ms.count()),
              (n >> 20) * 1000.0 / std::max<long long>(1, ms.count()), rss_before, hwm_after,
              peak_reset ? "" : " (peak not resettable)");
  CHECK(r.success());
  CHECK(check.offset == n);
  CHECK(check.ok);
  // Flat: the bytes are streamed, never accumulated. 32 MiB is a wide margin for
  // thread stacks and allocator noise; a leak of the stream would be 1 GiB.
  const long bound_kb = 32 * 1024;
  if (peak_reset)
    CHECK(hwm_after - rss_before < bound_kb);
  else
    CHECK(hwm_after <= std::max(hwm_before, rss_before + bound_kb));
}

TEST_CASE("backpressure: a consumer that stops reading stalls the producer") {
  // The consumer never reads and exits after 300 ms. Meanwhile `yes` can only fill
  // the pipes: the transform sees at most a pipe's worth plus its own buffers.
  std::atomic<std::size_t> seen{0};
  auto counting = sp::transform(
      [&](std::string_view d, sp::emitter& emit) {
        seen += d.size();
        emit(d);
      },
      "count");
  auto r = (sp::pipeline{} | sp::command{"yes"} | counting | testing::helper({"sleep", "300"})).run();
  CHECK(seen.load() < (std::size_t(1) << 20));
  CHECK(r.stages[0].status == sp::exit_status::signaled(SIGPIPE));
  CHECK(r.stages[1].status == sp::exit_status::signaled(SIGPIPE));  // the transform's reader left
  CHECK(r.stages[2].status == sp::exit_status::exited(0));
  CHECK(r.success());
}

TEST_CASE("a missing program in the middle: a spawn_error naming stage and command, nothing started") {
  auto p = sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{"no-such-program-xyz", "-x"} |
           sp::command{"cat"};
  try {
    p.spawn();
    FAIL("no exception");
  } catch (const sp::pipeline_spawn_error& e) {
    CHECK(e.stage() == 1);
    CHECK(e.command() == "no-such-program-xyz -x");
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK(e.step() == "resolve program");
    CHECK(e.pipeline() == p.to_string());
    CHECK_THAT(e.what(), Catch::Contains("stage 2 of 3") && Catch::Contains("no-such-program-xyz"));
    CHECK_THAT(e.cause(), Catch::StartsWith("cannot start 'no-such-program-xyz -x'"));
  }
  CHECK(testing::children().empty());  // validated first: the sleeper never started
  CHECK_THROWS_AS(p.run(), sp::spawn_error);
}

TEST_CASE("a stage failing at exec after others started: they are killed and reaped") {
  temp_dir dir;
  auto script = dir.write("bad-interpreter", "#!/nonexistent/interpreter\n");
  fs::permissions(script, fs::perms::owner_all);
  auto p = sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{script.string()} |
           testing::helper({"sleep", "60000"});
  auto t0 = std::chrono::steady_clock::now();
  try {
    p.run();
    FAIL("no exception");
  } catch (const sp::pipeline_spawn_error& e) {
    CHECK(e.stage() == 1);
    CHECK(e.step() == "exec");
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(testing::children().empty());  // the first sleeper is gone, reaped
}

TEST_CASE("running out of fds at any point: a pipeline_spawn_error, nothing left behind") {
  // Lower RLIMIT_NOFILE so that the fds run out somewhere while the stages start,
  // at a different point for each budget. Whatever the point, the error names a
  // stage and every stage already started is gone.
  if (ubsan_vptr_checks()) {
    WARN("skipped: UBSan's vptr check needs free fds of its own");
    return;
  }
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
  // The free fd numbers, lowest first: a limit of free[b] leaves exactly b free fds.
  auto open_now = testing::open_fds();
  std::vector<int> free_fds;
  for (int fd = 0; free_fds.size() < 41; ++fd)
    if (!open_now.count(fd)) free_fds.push_back(fd);
  sp::pipeline p;
  for (int i = 0; i < 6; ++i) p.add(sp::command{"cat"});
  p.add(identity_chunks());
  p.add(sp::command{"cat"});
  std::set<std::size_t> failed_stages;
  int succeeded = 0, failed = 0;
  for (int budget = 0; budget <= 40; ++budget) {
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(free_fds[static_cast<std::size_t>(budget)]);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    try {
      auto r = p.run({.input = "x\n"});
      ::setrlimit(RLIMIT_NOFILE, &old);
      CHECK(r.out == "x\n");
      ++succeeded;
    } catch (const sp::spawn_error& e) {
      ::setrlimit(RLIMIT_NOFILE, &old);
      CHECK(e.code() == std::errc::too_many_files_open);
      ++failed;
      if (auto* pe = dynamic_cast<const sp::pipeline_spawn_error*>(&e)) failed_stages.insert(pe->stage());
    } catch (...) {
      ::setrlimit(RLIMIT_NOFILE, &old);
      throw;
    }
    CHECK(testing::children().empty());
    CHECK(testing::open_fds() == open_now);
  }
  CHECK(succeeded > 0);  // with enough fds it works
  CHECK(failed > 0);
  REQUIRE(failed_stages.size() > 2);   // it ran out at several different stages
  CHECK(*failed_stages.rbegin() > 0);  // including after some had started
}

TEST_CASE("a transform that throws fails the pipeline with that error and stops the rest") {
  bool line_fn = GENERATE(false, true);
  int calls = 0;
  sp::transform failing = line_fn ? sp::transform(
                                        [&](std::string_view) -> std::optional<std::string> {
                                          if (++calls == 1000) throw std::runtime_error("bad line on purpose");
                                          return "x";
                                        },
                                        "fails")
                                  : sp::transform(
                                        [&](std::string_view, sp::emitter& emit) {
                                          if (++calls == 3) throw std::runtime_error("bad chunk on purpose");
                                          emit("x");
                                        },
                                        "fails");
  // An endless producer and a consumer that would wait forever: only stopping them ends it.
  auto p = sp::pipeline{} | sp::command{"yes"} | failing | testing::helper({"cat", "sleep", "60000"});
  auto t0 = std::chrono::steady_clock::now();
  auto h = p.spawn();
  CHECK_THROWS_WITH(h.wait(), Catch::Contains("on purpose"));
  CHECK_THROWS_AS(h.wait(), std::runtime_error);  // every time
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  auto st = h.statuses();
  CHECK(st[1] == sp::exit_status::exited(1));
  CHECK(st[2] == sp::exit_status::signaled(SIGKILL));
  CHECK(h.finished());
  SECTION("run() throws it too") {
    calls = 0;
    CHECK_THROWS_WITH(p.run(), Catch::Contains("on purpose"));
  }
}

TEST_CASE("an output callback that throws fails the pipeline the same way") {
  auto p = sp::pipeline{} | sp::command{"yes"} | sp::command{"cat"};
  CHECK_THROWS_WITH(p.run({.output = [](std::string_view) { throw std::logic_error("callback says no"); }}),
                    "callback says no");
}

TEST_CASE("a stage that exits non-zero: pipefail status, failed stage, check()") {
  auto p = sp::pipeline{} | testing::helper({"out", "a"}) | testing::helper({"err", "oops", "exit", "3"}) |
           sp::command{"cat"};
  auto r = p.run({.err = sp::capture});
  CHECK(r.status == sp::exit_status::exited(3));
  CHECK(r.failed_stage == 1u);
  CHECK(r.first_failure() == 1u);
  CHECK(r.stages[1].failed);
  CHECK_FALSE(r.stages[2].failed);
  CHECK(r.stages[1].err == "oops\n");
  try {
    r.check();
    FAIL("no exception");
  } catch (const sp::pipeline_error& e) {
    CHECK(e.stage() == 1);
    CHECK(e.status() == sp::exit_status::exited(3));
    CHECK(e.command() == r.stages[1].command);
    CHECK_THAT(e.what(), Catch::Contains("stage 2 of 3") && Catch::Contains("exited with code 3") &&
                             Catch::Contains("oops"));
  }
  CHECK_THROWS_AS(p.run({.err = sp::null, .check = true}), sp::pipeline_error);
  SECTION("pipefail: the rightmost failure is the status, the leftmost the first failure") {
    auto r2 = (sp::pipeline{} | sp::command{"sh", "-c", "exit 2"} | sp::command{"sh", "-c", "exit 3"} |
               sp::command{"cat"})
                  .run();
    CHECK(r2.status == sp::exit_status::exited(3));
    CHECK(r2.failed_stage == 1u);
    CHECK(r2.first_failure() == 0u);
    CHECK(r2.status.shell_code() == bash("sh -c 'exit 2' | sh -c 'exit 3' | cat", "").status.shell_code());
  }
}

TEST_CASE("success_codes: grep finding nothing is an answer, not a failure") {
  const std::string lines = "alpha\nbeta\n";
  auto grep_none = sp::command{"grep", "zeta"};  // exits 1: no line matched
  SECTION("grep with no match in the middle: accepted, the stage still reports code 1") {
    auto p = sp::pipeline{} | sp::command{"cat"} | sp::command(grep_none).success_codes({0, 1}) |
             sp::command{"wc", "-l"};
    auto r = p.run({.input = lines, .check = true});
    CHECK(r.success());
    CHECK(r.status == sp::exit_status::exited(0));
    CHECK_FALSE(r.failed_stage);
    CHECK_FALSE(r.first_failure());
    CHECK(r.stages[1].status == sp::exit_status::exited(1));
    CHECK_FALSE(r.stages[1].failed);
    CHECK(r.stages[1].success());
    CHECK(r.out.find('0') != std::string::npos);
    // Not accepted: the same pipeline fails at grep, as bash's pipefail says.
    auto plain = (sp::pipeline{} | sp::command{"cat"} | grep_none | sp::command{"wc", "-l"}).run({.input = lines});
    CHECK(plain.status == sp::exit_status::exited(1));
    CHECK(plain.status.shell_code() == bash("cat | grep zeta | wc -l", lines).status.shell_code());
    CHECK(plain.first_failure() == 1u);
    CHECK(plain.stages[1].failed);
    CHECK_THROWS_AS(
        (sp::pipeline{} | sp::command{"cat"} | grep_none | sp::command{"wc", "-l"}).run({.input = lines, .check = true}),
        sp::pipeline_error);
  }
  SECTION("grep with no match at the end, built with add()") {
    sp::pipeline p;
    p.add(sp::command{"cat"}).add(sp::command(grep_none).success_codes({0, 1}));
    auto r = p.run({.input = lines, .check = true});
    CHECK(r.success());
    CHECK(r.out.empty());
    CHECK(r.stages[1].status == sp::exit_status::exited(1));
    CHECK_FALSE(r.first_failure());
    // A match is still success (0 is in the set), and an error of grep's (2) is not.
    CHECK(p.run({.input = "zeta\n"}).out == "zeta\n");
    sp::pipeline bad;
    bad.add(sp::command{"cat"}).add(sp::command{"grep", "x", "/nonexistent/file"}.success_codes({0, 1}));
    auto rb = bad.run({.input = lines, .err = sp::null});
    CHECK(rb.status == sp::exit_status::exited(2));
    CHECK(rb.first_failure() == 1u);
  }
  SECTION("sh -c 'exit 3': accepted with {0, 3}, not with {0, 1}; pipefail skips accepted stages") {
    auto exit3 = sp::command{"sh", "-c", "cat >/dev/null; exit 3"};
    auto ok = (sp::pipeline{} | sp::command{"sh", "-c", "exit 2"} | sp::command(exit3).success_codes({0, 3}) |
               sp::command{"cat"})
                  .run();
    // The rightmost failure is now stage 0 (exit 2), and it is also the first.
    CHECK(ok.status == sp::exit_status::exited(2));
    CHECK(ok.failed_stage == 0u);
    CHECK(ok.first_failure() == 0u);
    CHECK(ok.stages[1].status == sp::exit_status::exited(3));
    CHECK_FALSE(ok.stages[1].failed);
    auto not_ok = (sp::pipeline{} | sp::command{"true"} | sp::command(exit3).success_codes({0, 1}) |
                   sp::command{"cat"});
    try {
      not_ok.run({.check = true});
      FAIL("no exception");
    } catch (const sp::pipeline_error& e) {
      CHECK(e.stage() == 1);
      CHECK(e.status() == sp::exit_status::exited(3));
      CHECK_THAT(e.what(), Catch::Contains("stage 2 of 3") && Catch::Contains("exited with code 3"));
    }
    // The set replaces {0}: with {3} alone, exiting 0 is a failure.
    auto only3 = (sp::pipeline{} | sp::command{"true"}.success_codes({3})).run();
    CHECK(only3.first_failure() == 0u);
    CHECK(only3.status == sp::exit_status::exited(0));
    CHECK_FALSE(only3.success());
  }
  SECTION("a stage killed by a signal is never accepted, whatever the codes") {
    auto r = (sp::pipeline{} | sp::command{"sh", "-c", "kill -TERM $$"}.success_codes({0, 1, 15, 143})).run();
    CHECK(r.stages[0].status == sp::exit_status::signaled(SIGTERM));
    CHECK(r.first_failure() == 0u);
    CHECK(r.status == sp::exit_status::signaled(SIGTERM));
  }
  SECTION("bad sets are argument_errors naming the command, before anything starts") {
    const auto grep = sp::command{"grep", "x"};
    const std::vector<int> empty, too_big{0, 256}, negative{-1};
    CHECK_THROWS_AS(sp::command(grep).success_codes(empty), sp::argument_error);
    CHECK_THROWS_WITH(sp::command(grep).success_codes(empty), Catch::Contains("grep x") && Catch::Contains("empty"));
    CHECK_THROWS_WITH(sp::command(grep).success_codes(too_big), Catch::Contains("grep x") && Catch::Contains("256"));
    CHECK_THROWS_WITH(sp::command(grep).success_codes(negative), Catch::Contains("grep x") && Catch::Contains("-1"));
    auto c = sp::command{"grep", "x"}.success_codes({1, 0, 1, 255});
    CHECK(c.success_codes() == std::vector<int>{0, 1, 255});
    CHECK(sp::command{"true"}.success_codes() == std::vector<int>{0});
    CHECK(c.is_success(sp::exit_status::exited(1)));
    CHECK_FALSE(c.is_success(sp::exit_status::exited(2)));
    CHECK_FALSE(c.is_success(sp::exit_status::signaled(1)));
  }
  CHECK(testing::children().empty());
}

TEST_CASE("the timeout kills the whole pipeline, the stages' children too") {
  // The last stage's shell forks a sleep that holds the output pipe: only a signal
  // to the whole group ends it in time.
  auto p = sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{"sh", "-c", "sleep 60; true"} |
           sp::command{"cat"};
  auto t0 = std::chrono::steady_clock::now();
  try {
    p.run({.timeout = 300ms});
    FAIL("no exception");
  } catch (const sp::timeout_error& e) {
    CHECK(e.timeout() == 300ms);
    CHECK(e.status() == sp::exit_status::signaled(SIGKILL));
    CHECK_THAT(e.what(), Catch::Contains("timed out after 300 ms"));
  }
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(elapsed >= 300ms);
  CHECK(elapsed < 5s);
  SECTION("through a handle: wait() throws, statuses say SIGKILL") {
    auto h = p.spawn({.timeout = 200ms});
    CHECK_THROWS_AS(h.wait(), sp::timeout_error);
    for (auto& s : h.statuses()) CHECK(s == sp::exit_status::signaled(SIGKILL));
  }
  SECTION("a transform is stopped too") {
    auto h = (sp::pipeline{} | sp::command{"sleep", "60"} | identity_lines() | sp::command{"cat"})
                 .spawn({.timeout = 200ms});
    CHECK_THROWS_AS(h.wait(), sp::timeout_error);
    CHECK(h.statuses()[1].has_value());
  }
}

TEST_CASE("each stage gets exactly fds 0, 1 and 2") {
  // Every stage lists its fds, then copies its input: one line per stage arrives.
  auto lister = [] { return testing::helper({"list-fds", "cat"}); };
  auto with_transform = GENERATE(false, true);
  auto err_mode = GENERATE(as<sp::stage_stderr>{}, sp::inherit, sp::capture, sp::merge_with_out);
  sp::pipeline p = sp::pipeline{} | lister() | lister();
  if (with_transform) p.add(identity_lines());
  p.add(lister());
  auto r = p.run({.input = "", .err = err_mode});
  CHECK(r.out == "0 1 2\n0 1 2\n0 1 2\n");
  CHECK(r.success());
  SECTION("with every kind of input and output") {
    temp_dir dir;
    auto in = dir.write("in", "");
    auto r2 = p.run({.input = sp::file(in), .output = sp::file(dir.path / "out"), .err = err_mode});
    CHECK(slurp(dir.path / "out") == "0 1 2\n0 1 2\n0 1 2\n");
  }
}

TEST_CASE("the parent keeps no pipe end of a command stage") {
  auto pipes_before = count_pipes(fd_kinds());
  auto h = (sp::pipeline{} | testing::helper({"sleep", "60000"}) | sp::command{"cat"} | sp::command{"cat"})
               .spawn({.output = sp::null});
  CHECK(count_pipes(fd_kinds()) == pipes_before);
  h.terminate(2s);
}

TEST_CASE("all stages share one process group; one signal reaches them and their children") {
  // Stage 1 forks a grandchild and prints its pid; the others pass lines on at once.
  auto p = sp::pipeline{} | testing::helper({"grandchild-pid", "print-pgid", "sleep", "60000"}) |
           testing::helper({"print-pgid", "echo-lines"}) | testing::helper({"echo-lines"});
  auto link = sp::detail::make_pipe();
  auto h = p.spawn({.output = sp::fd(link.write.get())});
  link.write.reset();
  sp::pipe_reader lines(std::move(link.read));
  auto pids = h.pids();
  REQUIRE(pids.size() == 3);
  CHECK(h.pgid() == pids[0]);
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    auto l = lines.read_line_for(10s);
    REQUIRE(l);
    got.push_back(*l);
  }
  // Stage 2 printed its pgid first; then stage 1's grandchild pid and pgid came through.
  CHECK(got[0] == std::to_string(h.pgid()));
  CHECK(got[2] == std::to_string(h.pgid()));
  int grandchild = std::stoi(got[1]);
  sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(grandchild));
  REQUIRE(gfd);
  REQUIRE(h.wait_for(50ms) == std::nullopt);
  for (auto s : h.statuses()) CHECK_FALSE(s);

  REQUIRE(::kill(-h.pgid(), SIGTERM) == 0);  // one signal, to the group
  auto r = h.wait();
  for (auto& s : r.stages) CHECK(s.status == sp::exit_status::signaled(SIGTERM));
  CHECK(r.status == sp::exit_status::signaled(SIGTERM));
  CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);  // gone too
  SECTION("process_group = false keeps the stages in our group") {
    auto r2 = (sp::pipeline{} | testing::helper({"print-pgid", "cat"}) | testing::helper({"print-pgid", "cat"}))
                  .run({.process_group = false});
    auto us = std::to_string(::getpgrp());
    CHECK(r2.out == us + "\n" + us + "\n");
  }
}

TEST_CASE("running pipeline: statuses, wait_for, signal, terminate, done_fd") {
  // Stage 1 ignores SIGTERM and says when it is ready; stage 2 passes that line on.
  auto p = sp::pipeline{} | testing::helper({"ignore-term", "ready", "sleep", "60000"}) |
           testing::helper({"echo-lines"});
  auto link = sp::detail::make_pipe();
  auto h = p.spawn({.output = sp::fd(link.write.get())});
  link.write.reset();
  sp::pipe_reader out(std::move(link.read));
  CHECK(h.valid());
  CHECK(h.size() == 2);
  CHECK(h.command_line() == p.to_string());
  REQUIRE(out.read_line_for(10s) == "ready");
  CHECK(h.statuses() == std::vector<std::optional<sp::exit_status>>{std::nullopt, std::nullopt});
  CHECK_FALSE(h.finished());
  CHECK(sp::detail::poll_one(h.done_fd(), POLLIN, sp::detail::clock::now()) == 0);
  CHECK(h.wait_for(20ms) == std::nullopt);
  CHECK_THROWS_AS(h.wait_for(-1ms), sp::argument_error);

  auto t0 = std::chrono::steady_clock::now();
  auto r = h.terminate(300ms);
  CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);  // stage 1 held out for the grace period
  CHECK(r.stages[0].status == sp::exit_status::signaled(SIGKILL));
  CHECK(r.stages[1].status == sp::exit_status::signaled(SIGTERM));
  CHECK(h.finished());
  CHECK(sp::detail::poll_one(h.done_fd(), POLLIN, sp::detail::clock::now()) != 0);
  CHECK_FALSE(h.signal(SIGTERM));  // nothing left to signal
  CHECK(h.wait().stages[0].status == sp::exit_status::signaled(SIGKILL));

  SECTION("signal() reaches every stage") {
    auto h2 = (sp::pipeline{} | testing::helper({"sleep", "60000"}) | testing::helper({"sleep", "60000"}))
                  .spawn({.process_group = false});
    CHECK(h2.pgid() == 0);
    CHECK(h2.signal(SIGUSR1));
    for (auto& s : h2.wait().stages) CHECK(s.status == sp::exit_status::signaled(SIGUSR1));
  }
}

TEST_CASE("destroying a running pipeline kills and reaps it") {
  auto t0 = std::chrono::steady_clock::now();
  {
    auto h = (sp::pipeline{} | testing::helper({"sleep", "60000"}) | identity_chunks() | sp::command{"cat"})
                 .spawn({.input = sp::inherit});
    CHECK_FALSE(h.finished());
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(testing::children().empty());
  sp::running_pipeline empty;
  CHECK_FALSE(empty.valid());
  CHECK_THROWS_AS(empty.wait(), sp::argument_error);
}

TEST_CASE("transforms: lines, chunks, the end") {
  auto run = [](sp::transform t, std::string input) {
    return (sp::pipeline{} | std::move(t)).run({.input = std::move(input)}).out;
  };
  SECTION("a line function gets lines without '\\n'; its output gets one back") {
    std::vector<std::string> seen;
    auto upper = sp::transform([&](std::string_view l) -> std::optional<std::string> {
      seen.emplace_back(l);
      std::string u(l);
      for (auto& ch : u) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      return u;
    });
    CHECK(run(upper, "ab\n\ncd\r\nlast") == "AB\n\nCD\r\nLAST");  // no '\n' added to the last line
    CHECK(seen == std::vector<std::string>{"ab", "", "cd\r", "last"});
    CHECK(run(upper, "") == "");
    CHECK(run(upper, "x\n") == "X\n");
  }
  SECTION("nullopt drops a line") {
    auto no_comments = sp::transform([](std::string_view l) -> std::optional<std::string> {
      if (l.starts_with("#")) return std::nullopt;
      return std::string(l);
    });
    CHECK(run(no_comments, "a\n# b\nc\n#d") == "a\nc\n");
  }
  SECTION("long lines across many reads arrive whole, up to max_line") {
    std::string big(300000, 'x');
    std::vector<std::size_t> sizes;
    auto len = sp::transform([&](std::string_view l) -> std::optional<std::string> {
      sizes.push_back(l.size());
      return std::to_string(l.size());
    });
    auto out = (sp::pipeline{} | sp::command{"cat"} | len).run({.input = big + "\nshort\n" + big}).out;
    CHECK(out == "300000\n5\n300000");
    auto limited = sp::transform([](std::string_view l) -> std::optional<std::string> { return std::string(l); });
    limited.max_line(1000);
    CHECK_THROWS_AS(run(limited, big + "\n"), std::length_error);
  }
  SECTION("a chunk function emits what it likes; at_end runs once at the end") {
    std::size_t total = 0;
    auto counter = sp::transform([&](std::string_view d, sp::emitter&) { total += d.size(); }, "count")
                       .at_end([&](sp::emitter& emit) { emit(std::to_string(total) + " bytes\n"); });
    std::string input(1'000'000, 'z');
    CHECK((sp::pipeline{} | sp::command{"cat"} | counter | sp::command{"cat"}).run({.input = input}).out ==
          "1000000 bytes\n");
  }
  SECTION("two transforms in a row, and transforms around commands") {
    auto twice = sp::transform([](std::string_view l) -> std::optional<std::string> {
      return std::string(l) + std::string(l);
    });
    CHECK((sp::pipeline{} | twice | twice).run({.input = "a\nb\n"}).out == "aaaa\nbbbb\n");
    CHECK((sp::pipeline{} | twice | sp::command{"sort", "-r"} | twice).run({.input = "a\nb\n"}).out ==
          "bbbb\naaaa\n");
  }
}

TEST_CASE("input: a string, a file, an fd, a pipe_reader, nothing") {
  // The first stage is a command (the fd goes to the child) or a transform (we read it).
  bool first_transform = GENERATE(false, true);
  auto p = first_transform ? sp::pipeline{} | identity_chunks() | sp::command{"cat"}
                           : sp::pipeline{} | sp::command{"cat"} | sp::command{"cat"};
  temp_dir dir;
  auto path = dir.write("in.txt", "from a file\n");
  SECTION("string") { CHECK(p.run({.input = "text\n"}).out == "text\n"); }
  SECTION("file") { CHECK(p.run({.input = sp::file(path)}).out == "from a file\n"); }
  SECTION("a missing file") {
    try {
      p.run({.input = sp::file(dir.path / "missing")});
      FAIL("no exception");
    } catch (const sp::pipeline_spawn_error& e) {
      CHECK(e.stage() == 0);
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK_THAT(e.what(), Catch::Contains("missing"));
    }
  }
  SECTION("fd (the caller keeps it)") {
    sp::detail::unique_fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    CHECK(p.run({.input = sp::fd(f.get())}).out == "from a file\n");
    CHECK(::fcntl(f.get(), F_GETFD) >= 0);
  }
  SECTION("another process's stdout") {
    auto src = testing::helper({"out", "one", "out", "two"}).out(sp::pipe).spawn();
    CHECK(p.run({.input = std::move(src.out())}).out == "one\ntwo\n");
    CHECK(src.wait().success());
  }
  SECTION("another process's stdout: a description shared with another fd is not changed") {
    // The first command gets a blocking copy of the pipe; the caller's other fd of
    // the same open file description stays non-blocking.
    auto src = testing::helper({"out", "one"}).out(sp::pipe).spawn();
    sp::detail::unique_fd other(::fcntl(src.out().fd(), F_DUPFD_CLOEXEC, 0));
    REQUIRE((::fcntl(other.get(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(p.run({.input = std::move(src.out())}).out == "one\n");
    CHECK((::fcntl(other.get(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(src.wait().success());
  }
  SECTION("a pipe_reader holding bytes read already: they come first") {
    auto src = testing::helper({"out", "first", "sleep", "100", "out", "second"}).out(sp::pipe).spawn();
    sp::pipe_reader r = std::move(src.out());
    while (r.buffered().empty()) {
      sp::detail::poll_one(r.fd(), POLLIN, std::nullopt);
      r.fill();
    }
    CHECK(p.run({.input = std::move(r)}).out == "first\nsecond\n");
    src.wait();
  }
  SECTION("null (the default): end of input at once") { CHECK(p.run().out.empty()); }
}

TEST_CASE("output: capture, a callback, a file, an fd, nothing") {
  bool last_transform = GENERATE(false, true);
  auto p = last_transform ? sp::pipeline{} | sp::command{"cat"} | identity_chunks()
                          : sp::pipeline{} | sp::command{"cat"} | sp::command{"cat"};
  const std::string text = generated_text(5000);  // more than a pipe holds
  temp_dir dir;
  SECTION("capture (the default)") { CHECK(p.run({.input = text}).out == text); }
  SECTION("callback") {
    std::string got;
    auto r = p.run({.input = text, .output = [&](std::string_view d) { got += d; }});
    CHECK(got == text);
    CHECK(r.out.empty());
  }
  SECTION("file, truncated or appended") {
    auto path = dir.write("out.txt", "old content that is longer\n");
    p.run({.input = "new\n", .output = sp::file(path)});
    CHECK(slurp(path) == "new\n");
    p.run({.input = "more\n", .output = sp::file(path, sp::file_mode::append)});
    CHECK(slurp(path) == "new\nmore\n");
  }
  SECTION("fd (the caller keeps it)") {
    auto path = dir.path / "fd.txt";
    sp::detail::unique_fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    p.run({.input = text, .output = sp::fd(f.get())});
    CHECK(slurp(path) == text);
  }
  SECTION("null") {
    auto r = p.run({.input = text, .output = sp::null});
    CHECK(r.out.empty());
    CHECK(r.success());
  }
}

TEST_CASE("stderr of each stage: capture, merge into the next stage, null, the command's own") {
  auto p = sp::pipeline{} | testing::helper({"err", "e0", "out", "o0"}) |
           testing::helper({"err", "e1", "cat"}) | testing::helper({"cat"}).err(sp::null);
  SECTION("capture: per stage") {
    auto r = p.run({.err = sp::capture});
    CHECK(r.out == "o0\n");
    CHECK(r.stages[0].err == "e0\n");
    CHECK(r.stages[1].err == "e1\n");
    CHECK(r.stages[2].err.empty());
  }
  SECTION("merge: 2>&1 into the next stage") {
    auto r = p.run({.err = sp::merge_with_out});
    CHECK(r.out == "e1\ne0\no0\n");
  }
  SECTION("null") {
    auto r = p.run({.err = sp::null});
    CHECK(r.out == "o0\n");
    CHECK(r.stages[0].err.empty());
  }
  SECTION("lots of stderr from every stage does not block anything") {
    auto noisy = sp::pipeline{} | testing::helper({"err-bytes", "1000000", "out", "done"}) |
                 testing::helper({"err-bytes", "1000000", "cat"});
    auto r = noisy.run({.err = sp::capture, .timeout = 20s});
    CHECK(r.out == "done\n");
    CHECK(r.stages[0].err.size() == 1000000);
    CHECK(r.stages[1].err.size() == 1000000);
  }
}

TEST_CASE("the timeout policy: a signal first, SIGKILL after the grace to what is left of the group") {
  using policy = sp::timeout_policy;
  using clk = std::chrono::steady_clock;
  SECTION("stages that exit on SIGTERM within the grace are not SIGKILLed") {
    auto p = sp::pipeline{} |
             sp::command{"sh", "-c", "trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done"} |
             sp::command{"cat"};
    auto t0 = clk::now();
    try {
      p.run({.timeout = 1s, .on_timeout = policy::kill_with(SIGTERM, 10s)});
      FAIL("no exception");
    } catch (const sp::pipeline_timeout_error& e) {
      REQUIRE(e.out().starts_with("ready\n"));  // the trap was set in time
      const auto& r = e.result();
      CHECK(r.timed_out);
      CHECK(r.stages[0].status == sp::exit_status::exited(3));
      CHECK(r.stages[1].status == sp::exit_status::signaled(SIGTERM));
      CHECK(r.stages[0].killed);
      CHECK(r.stages[1].killed);
      CHECK(e.killed());
      CHECK_FALSE(e.outcome().escalated);
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 1000 ms; sent SIGTERM"));
    }
    CHECK(clk::now() - t0 < 8s);
  }
  SECTION("a group member ignoring SIGTERM gets SIGKILL at the end of the grace") {
    // The stage exits on SIGTERM; the grandchild it forked first ignores it.
    auto link = sp::detail::make_pipe();
    auto h = (sp::pipeline{} |
              testing::helper({"ignore-term", "grandchild-pid", "term-exits-after", "0", "ready", "sleep", "60000"}))
                 .spawn({.output = sp::fd(link.write.get()), .timeout = 1s,
                         .on_timeout = policy::kill_with(SIGTERM, 500ms)});
    link.write.reset();
    sp::pipe_reader out(std::move(link.read));
    auto g = out.read_line_for(10s);
    REQUIRE(g);
    sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(std::stoi(*g)));
    REQUIRE(gfd);
    REQUIRE(out.read_line_for(10s) == "ready");
    auto t0 = clk::now();
    try {
      h.wait();
      FAIL("no exception");
    } catch (const sp::pipeline_timeout_error& e) {
      CHECK(e.result().stages[0].status == sp::exit_status::exited(0));  // its handler ran
      CHECK(e.result().stages[0].killed);
      CHECK(e.outcome().escalated);  // for the grandchild
      CHECK_THAT(e.what(), Catch::EndsWith("; sent SIGTERM, then SIGKILL after 500 ms"));
    }
    CHECK(clk::now() - t0 >= 400ms);  // the grace ran (from the deadline, a little before t0)
    CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  }
  SECTION("wait_for(t, policy): SIGTERM ignored, then SIGKILL; per stage killed") {
    auto link = sp::detail::make_pipe();
    auto h = (sp::pipeline{} | testing::helper({"ignore-term", "ready", "sleep", "60000"}) |
              testing::helper({"echo-lines"}))
                 .spawn({.output = sp::fd(link.write.get())});
    link.write.reset();
    sp::pipe_reader out(std::move(link.read));
    REQUIRE(out.read_line_for(10s) == "ready");
    auto t0 = clk::now();
    try {
      h.wait_for(50ms, policy::kill_with(SIGTERM, 300ms));
      FAIL("no exception");
    } catch (const sp::pipeline_timeout_error& e) {
      const auto& r = e.result();
      CHECK(r.stages[0].status == sp::exit_status::signaled(SIGKILL));
      CHECK(r.stages[1].status == sp::exit_status::signaled(SIGTERM));
      CHECK(r.stages[0].killed);
      CHECK(r.stages[1].killed);
      CHECK(e.outcome().escalated);
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 50 ms; sent SIGTERM, then SIGKILL after 300 ms"));
    }
    CHECK(clk::now() - t0 >= 350ms);
    CHECK(h.finished());
    CHECK_FALSE(h.wait().timed_out);  // the options had no timeout: wait() now just returns
  }
  SECTION("wait_for(t, leave_running()): nothing is sent, the handle still owns the pipeline") {
    auto h = (sp::pipeline{} | sp::command{"sleep", "10"} | sp::command{"cat"}).spawn();
    try {
      h.wait_for(50ms, policy::leave_running());
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.still_running());
      CHECK_FALSE(e.killed());
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 50 ms; still running: left to the caller, who owns it"));
    }
    CHECK_FALSE(h.finished());
    for (pid_t pid : h.pids()) CHECK(::kill(pid, 0) == 0);
    auto r = h.terminate(5s);
    CHECK(r.stages[0].status == sp::exit_status::signaled(SIGTERM));
    CHECK(r.stages[0].killed);  // terminate() is the library's doing too
    CHECK_FALSE(r.timed_out);
  }
  SECTION("the default says what it did; a pipeline stopped by a signal() of yours is not `killed`") {
    try {
      (sp::pipeline{} | sp::command{"sleep", "10"}).run({.timeout = 100ms});
      FAIL("no exception");
    } catch (const sp::pipeline_timeout_error& e) {
      CHECK(e.result().stages[0].status == sp::exit_status::signaled(SIGKILL));
      CHECK(e.result().stages[0].killed);
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 100 ms; sent SIGKILL"));
    }
    auto h = (sp::pipeline{} | sp::command{"sleep", "10"}).spawn();
    CHECK(h.signal(SIGTERM));
    auto r = h.wait();
    CHECK(r.stages[0].status == sp::exit_status::signaled(SIGTERM));
    CHECK_FALSE(r.stages[0].killed);
  }
  SECTION("leave_running() and bad policies in the options are refused before anything starts") {
    auto p = sp::pipeline{} | sp::command{"sleep", "10"};
    CHECK_THROWS_AS(p.run({.timeout = 10ms, .on_timeout = policy::leave_running()}), sp::argument_error);
    CHECK_THROWS_AS(p.spawn({.on_timeout = policy::kill_with(0)}), sp::argument_error);
    CHECK_THROWS_AS(p.spawn({.on_timeout = policy::kill_with(SIGTERM, -1ms)}), sp::argument_error);
    CHECK(testing::children().empty());
  }
}

namespace {
// A cgroup tree here, or why not (then the test WARNs and returns).
std::optional<std::string> no_cgroup_tree() {
  try {
    sp::command{"true"}.tree({.use = sp::tree_mechanism::cgroup}).spawn().wait();
    return std::nullopt;
  } catch (const sp::spawn_error& e) {
    return std::string(e.what());
  }
}
// Gone: no such process, or a zombie that init has not reaped yet (not ours to reap).
bool gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  return line.size() > line.rfind(')') + 2 && line[line.rfind(')') + 2] == 'Z';
}
pid_t read_pid(const fs::path& p) {
  std::ifstream f(p);
  long v = 0;
  f >> v;
  return static_cast<pid_t>(v);
}
}  // namespace

TEST_CASE("wait_for_tree: the pipeline returns after what its stages left running") {
  if (auto why = no_cgroup_tree()) {
    WARN("skipped: no writable cgroup v2 on this machine: " << *why);
    return;
  }
  temp_dir dir;
  // The daemon writes its pid, waits for the stage's end of a FIFO to close (the stage
  // exiting), then until the stage's pid is gone (reaped), then for a byte on the FIFO
  // "go", then writes late.txt: it outlives the stage by construction, holds none of
  // its pipes, and needs no sleep. The stage is not the first: the first leads the
  // process group, and its zombie is held until the pipeline is destroyed.
  const std::string daemon_stage =
      "mkfifo f; c=$$; (sh -c \"echo \\$\\$ > pid; cat f; while kill -0 $c 2>/dev/null; do :; done; "
      "read x < go; echo late > late.txt\" >/dev/null 2>&1 </dev/null &); exec 3>f; echo early";
  REQUIRE(::mkfifo((dir.path / "go").c_str(), 0600) == 0);
  SECTION("with wait_for_tree: returns once the grandchild is gone") {
    auto h = (sp::pipeline{} | sp::command{"true"} | sp::command{"sh", "-c", daemon_stage}.cwd(dir.path) |
              sp::command{"cat"})
                 .spawn({.timeout = 30s, .wait_for_tree = true});
    // The daemon opens "go" only after its stage exited and was reaped.
    const int go = ::open((dir.path / "go").c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(go >= 0);
    CHECK(h.statuses()[1] == sp::exit_status::exited(0));
    // The stages are gone, the daemon is not: not done. (Without wait_for_tree,
    // done_fd turns readable as soon as cat has copied "early".)
    pollfd done{h.done_fd(), POLLIN, 0};
    CHECK(::poll(&done, 1, 200) == 0);
    REQUIRE(::write(go, "x\n", 2) == 2);
    ::close(go);
    auto r = h.wait();
    CHECK(r.success());
    CHECK(r.out == "early\n");
    REQUIRE(r.stages.size() == 3);
    CHECK_FALSE(r.stages[0].descendants_outlived);
    CHECK(r.stages[1].descendants_outlived);
    CHECK_FALSE(r.stages[2].descendants_outlived);
    const pid_t daemon = read_pid(dir.path / "pid");
    REQUIRE(daemon > 0);
    CHECK(gone(daemon));
    std::ifstream late(dir.path / "late.txt");
    std::string text;
    std::getline(late, text);
    CHECK(text == "late");
  }
  SECTION("a stage with its own tree() reports the leftover without wait_for_tree") {
    auto r = (sp::pipeline{} | sp::command{"true"} | sp::command{"sh", "-c", daemon_stage}.cwd(dir.path).tree() | sp::command{"cat"})
                 .run({.timeout = 30s});
    CHECK(r.success());
    CHECK(r.out == "early\n");
    CHECK(r.stages[1].descendants_outlived);
    // Not waited for: the tree was killed when the pipeline finished.
    const pid_t daemon = read_pid(dir.path / "pid");
    REQUIRE(daemon > 0);
    CHECK(gone(daemon));
  }
  SECTION("a stage without descendants") {
    auto r = (sp::pipeline{} | sp::command{"echo", "hi"} | sp::command{"cat"}).run({.wait_for_tree = true});
    CHECK(r.out == "hi\n");
    CHECK_FALSE(r.stages[0].descendants_outlived);
    CHECK_FALSE(r.stages[1].descendants_outlived);
  }
  SECTION("a daemon that never ends: killed with the trees at the timeout") {
    auto t0 = std::chrono::steady_clock::now();
    try {
      (sp::pipeline{} | sp::command{"sh", "-c", "sleep 1000 >/dev/null 2>&1 </dev/null & echo $!"} |
       sp::command{"cat"})
          .run({.timeout = 300ms, .wait_for_tree = true});
      FAIL("no timeout");
    } catch (const sp::pipeline_timeout_error& e) {
      CHECK(e.timeout() == 300ms);
      const auto& r = e.result();
      CHECK(r.timed_out);
      REQUIRE(r.stages.size() == 2);
      CHECK(r.stages[0].status == sp::exit_status::exited(0));
      CHECK(r.stages[0].descendants_outlived);
      const pid_t sleeper = static_cast<pid_t>(std::stol(r.out));
      CHECK(gone(sleeper));
    }
    auto elapsed = std::chrono::steady_clock::now() - t0;
    CHECK(elapsed >= 300ms);
    CHECK(elapsed < 5s);
  }
}
