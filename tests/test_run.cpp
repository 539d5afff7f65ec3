#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <string>

#include <malloc.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

TEST_CASE("run captures stdout and stderr separately") {
  auto r = sp::run(testing::helper({"out", "to out", "err", "to err", "exit", "3"}));
  CHECK(r.out == "to out\n");
  CHECK(r.err == "to err\n");
  CHECK(r.status == sp::exit_status::exited(3));
  CHECK_FALSE(r.success());
  CHECK_THROWS_AS(r.check(), sp::process_error);
  CHECK_THROWS_AS(sp::run(testing::helper({"exit", "1"}), {.check = true}), sp::process_error);
  CHECK(sp::run(testing::helper({}), {.check = true}).success());
}

TEST_CASE("run feeds input") {
  CHECK(sp::run(sp::command{"sort", "-r"}, {.input = "b\na\nc\n"}).out == "c\nb\na\n");
  SECTION("without input, stdin is /dev/null (never the terminal)") {
    CHECK(sp::run(testing::helper({"count-stdin"})).out == "0\n");
  }
  SECTION("input with a redirected stdin is rejected") {
    CHECK_THROWS_AS(sp::run(testing::helper({}).in(sp::null), {.input = "x"}), sp::argument_error);
  }
  SECTION("a child that exits without reading its input is not an error") {
    auto r = sp::run(testing::helper({"exit", "0"}), {.input = std::string(4 << 20, 'x')});
    CHECK(r.success());
  }
}

TEST_CASE("64 MiB in, 64 MiB out on both streams at once: no deadlock") {
  // The child first writes 64 MiB to stderr (stuck unless we drain it while we are
  // still writing its input), then copies 64 MiB of stdin to stdout.
  const std::size_t n = 64u << 20;
  std::string input(n, 'i');
  auto r = sp::run(testing::helper({"err-bytes", std::to_string(n), "cat"}),
                   {.input = input, .timeout = 120s});
  CHECK(r.success());
  CHECK(r.out.size() == n);
  CHECK(r.err.size() == n);
  CHECK(r.out == input);
}

namespace {
std::size_t status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field, 0) == 0) return std::stoul(line.substr(std::strlen(field) + 1));
  return 0;
}
}  // namespace

TEST_CASE("a big capture keeps every byte and needs about its size in memory") {
  // Past the size where run() grows its strings itself (1 MiB), and not a power of
  // two, so the last growth copies most of the output: a plain std::string would
  // hold it twice at that moment (a peak of 128 MiB here, over the bound below).
  const std::size_t n = (96u << 20) + 12345;
  std::ofstream clear("/proc/self/clear_refs");  // resets VmHWM (Linux >= 4.0)
  bool can_measure = clear && (clear << "5" << std::flush);
  // ThreadSanitizer backs every byte the program touches with several bytes of shadow
  // memory, which counts in VmHWM: the figure says nothing about run() there.
#if defined(__SANITIZE_THREAD__)
  can_measure = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
  can_measure = false;
#endif
#endif
  // Earlier test cases left freed memory in the heap that run() could reuse, which
  // would hide growth: hand it back to the kernel first, so the baseline is honest.
  ::malloc_trim(0);
  const std::size_t before_kib = status_kib("VmRSS:");
  auto r = sp::run(testing::helper({"out-bytes", std::to_string(n)}), {.timeout = 120s});
  const std::size_t peak_kib = status_kib("VmHWM:");
  REQUIRE(r.success());
  REQUIRE(r.out.size() == n);
  std::size_t bad = n;  // the helper repeats 'a'..'z' from each 64 KiB block's start
  for (std::size_t i = 0; i < n; ++i)
    if (r.out[i] != static_cast<char>('a' + (i % 65536) % 26)) {
      bad = i;
      break;
    }
  CHECK(bad == n);
  if (can_measure) {
    INFO("peak RSS growth " << (peak_kib - before_kib) / 1024 << " MiB for " << (n >> 20) << " MiB");
    CHECK((peak_kib - before_kib) * 1024 < n + n / 4);
  }
}

TEST_CASE("run respects streams the command set") {
  auto r = sp::run(testing::helper({"out", "a", "err", "b"}).err(sp::merge_with_out));
  CHECK(r.out == "a\nb\n");
  CHECK(r.err.empty());
  auto q = sp::run(testing::helper({"out", "a"}).out(sp::null));
  CHECK(q.out.empty());
}

TEST_CASE("timeouts") {
  SECTION("the child is killed and reaped; the output so far is kept") {
    auto t0 = clk::now();
    try {
      sp::run(testing::helper({"out", "started", "sleep", "60000"}), {.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "started\n");
      CHECK(e.status()->signal() == SIGKILL);
    }
    CHECK(clk::now() - t0 < 5s);
  }
  SECTION("a grandchild holding the pipes cannot hold run() past its timeout") {
    auto t0 = clk::now();
    try {
      sp::run(testing::helper({"grandchild", "5000", "out", "parent done"}), {.timeout = 500ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "parent done\n");
      CHECK(e.status() == sp::exit_status::exited(0));
      CHECK_THAT(e.what(), Catch::Contains("still holds its output open"));
    }
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("with a process group, the whole group is killed at the timeout") {
    auto t0 = clk::now();
    CHECK_THROWS_AS(sp::run(testing::helper({"grandchild", "60000", "sleep", "60000"}).new_process_group(),
                            {.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("an exited leader's group still holding the pipes is killed at the timeout") {
    auto p = testing::helper({"grandchild-pid", "out", "leader done"})
                 .new_process_group()
                 .out(sp::pipe)
                 .err(sp::pipe)
                 .spawn();
    int g = std::stoi(*p.out().read_line());
    sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(g));
    REQUIRE(gfd);
    CHECK_THROWS_AS(sp::communicate(p, {}, {.timeout = 300ms}), sp::timeout_error);
    CHECK(p.status() == sp::exit_status::exited(0));
    CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  }
  SECTION("a fast child is not affected") {
    CHECK(sp::run(testing::helper({"out", "x"}), {.timeout = 10s}).out == "x\n");
  }
  SECTION("negative timeouts are rejected before anything starts") {
    CHECK_THROWS_AS(sp::run(testing::helper({}), {.timeout = -1ms}), sp::argument_error);
    CHECK(testing::children().empty());
  }
}

TEST_CASE("max_output") {
  SECTION("kill: output_limit_error names the stream and keeps the prefix") {
    try {
      sp::run(testing::helper({"out", "small", "err-bytes", "10000000"}), {.max_output = 1000});
      FAIL("no exception");
    } catch (const sp::output_limit_error& e) {
      CHECK(e.stream() == "stderr");
      CHECK(e.err().size() == 1000);
      CHECK(e.err().substr(0, 5) == "abcde");
      CHECK(e.code() == sp::errc::output_limit_exceeded);
      REQUIRE(e.status().has_value());
    }
  }
  SECTION("truncate: the child finishes, the rest is dropped") {
    auto r = sp::run(testing::helper({"out-bytes", "5000000", "out", "x"}),
                     {.max_output = 100, .on_output_limit = sp::output_limit::truncate});
    CHECK(r.success());
    CHECK(r.out.size() == 100);
    CHECK(r.out_truncated);
    CHECK_FALSE(r.err_truncated);
  }
  SECTION("exactly at the limit is fine") {
    auto r = sp::run(testing::helper({"out-bytes", "100"}), {.max_output = 100});
    CHECK(r.out.size() == 100);
    CHECK_FALSE(r.out_truncated);
  }
}

TEST_CASE("run honours the command's success_codes in success() and check") {
  auto grep_none = sp::command{"grep", "zeta"};
  auto r = sp::run(sp::command(grep_none).success_codes({0, 1}), {.input = "alpha\n", .check = true});
  CHECK(r.success());
  CHECK(r.status == sp::exit_status::exited(1));
  CHECK(r.success_codes == std::vector<int>{0, 1});
  CHECK_THROWS_AS(sp::run(grep_none, {.input = "alpha\n", .check = true}), sp::process_error);
  auto r2 = sp::run(sp::command{"sh", "-c", "exit 3"}.success_codes({0, 1}));
  CHECK_FALSE(r2.success());
  CHECK_THROWS_AS(r2.check(), sp::process_error);
  auto r3 = sp::run(sp::command{"sh", "-c", "kill -TERM $$"}.success_codes({0, 143}));
  CHECK(r3.status == sp::exit_status::signaled(SIGTERM));
  CHECK_FALSE(r3.success());
}

TEST_CASE("communicate on a process spawned by hand") {
  auto p = sp::command{"tr", "a-z", "A-Z"}.in(sp::pipe).out(sp::pipe).err(sp::pipe).spawn();
  auto r = sp::communicate(p, "hello\n");
  CHECK(r.out == "HELLO\n");
  CHECK(r.success());
  CHECK(r.command == "tr a-z A-Z");
  SECTION("with a timeout") {
    auto q = testing::helper({"sleep", "60000"}).out(sp::pipe).spawn();
    CHECK_THROWS_AS(sp::communicate(q, {}, {.timeout = 200ms}), sp::timeout_error);
    CHECK(q.status().has_value());
  }
}

TEST_CASE("the timeout policy: which signal, the grace, the group, or leave it running") {
  using policy = sp::timeout_policy;
  const char* trap_term = "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done";
  SECTION("a child trapping SIGTERM gets it and exits 3 within the grace") {
    auto t0 = clk::now();
    try {
      sp::run(sp::command{"sh", "-c", trap_term}, {.timeout = 1s, .on_timeout = policy::kill_with(SIGTERM, 10s)});
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      REQUIRE(e.out().starts_with("ready\n"));  // the trap was set before the timeout
      CHECK(e.out() == "ready\ngot TERM\n");
      CHECK(e.status() == sp::exit_status::exited(3));
      CHECK(e.killed());
      CHECK_FALSE(e.outcome().escalated);
      CHECK_THAT(e.what(), Catch::EndsWith("' timed out after 1000 ms; sent SIGTERM"));
    }
    CHECK(clk::now() - t0 < 8s);
  }
  SECTION("a child ignoring SIGTERM is SIGKILLed after the grace, with its group") {
    auto t0 = clk::now();
    try {
      sp::run(testing::helper({"ignore-term", "grandchild", "60000", "out", "ready", "sleep", "60000"})
                  .new_process_group(),
              {.timeout = 300ms, .on_timeout = policy::kill_with(SIGTERM, 500ms)});
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status()->signal() == SIGKILL);
      CHECK(e.killed());
      CHECK(e.outcome().escalated);
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 300 ms; sent SIGTERM, then SIGKILL after 500 ms"));
    }
    CHECK(clk::now() - t0 >= 800ms);
    CHECK(clk::now() - t0 < 5s);
  }
  SECTION("Node's exec timeout: killSignal SIGKILL is today's default, and says so") {
    try {
      sp::run(sp::command{"sleep", "10"}, {.timeout = 100ms, .on_timeout = policy::kill_with(SIGKILL)});
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status()->signal() == SIGKILL);
      CHECK(e.killed());
      CHECK(std::string(e.what()) == "'sleep 10' timed out after 100 ms; sent SIGKILL");
    }
  }
  SECTION("Node's exec timeout not expired: a policy changes nothing for a child that ends in time") {
    auto r = sp::run(sp::command{"sh", "-c", "echo done"}, {.timeout = 10s, .on_timeout = policy::kill_with(SIGTERM, 1s)});
    CHECK(r.out == "done\n");
    CHECK(r.success());
  }
  SECTION("run() refuses leave_running (it keeps no handle) and bad policies, before anything starts") {
    CHECK_THROWS_AS(sp::run(sp::command{"sleep", "10"}, {.timeout = 10ms, .on_timeout = policy::leave_running()}),
                    sp::argument_error);
    CHECK_THROWS_AS(sp::run(sp::command{"true"}, {.on_timeout = policy::kill_with(-3)}), sp::argument_error);
    CHECK_THROWS_AS(sp::run(sp::command{"true"}, {.on_timeout = policy::kill_with(SIGTERM, -5ms)}),
                    sp::argument_error);
    CHECK(testing::children().empty());
  }
  SECTION("CPython test_communicate_timeout: leave_running keeps the child; communicate again gets the rest") {
    auto p = sp::command{"sh", "-c", "echo first; sleep 2; echo second; echo err >&2"}
                 .out(sp::pipe)
                 .err(sp::pipe)
                 .spawn();
    try {
      sp::communicate(p, {}, {.timeout = 300ms, .on_timeout = policy::leave_running()});
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.still_running());
      CHECK_FALSE(e.killed());
      CHECK(e.out() == "first\n");
      CHECK_THAT(e.what(), Catch::Contains("still running: left to the caller, who owns it"));
    }
    CHECK(::kill(p.pid(), 0) == 0);
    auto r = sp::communicate(p);
    CHECK(r.out == "second\n");
    CHECK(r.err == "err\n");
    CHECK(r.success());
  }
}
