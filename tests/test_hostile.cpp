// Hostile children: run(), process, shutdown(), pipelines and ipc channels and
// clients keep their timeouts and leak nothing when the child misbehaves (closes its
// stdout, floods stderr, leaves a grandchild holding every pipe, stops itself, leaves
// our process group; an ipc peer sends garbage, stops answering, or leaves a
// grandchild holding the socket). Waiting on such a child must not spin either: the
// CPU time spent waiting is checked where a busy loop was found.
//
// The worker pool gets the same treatment once it lands (pool.hpp): a worker that
// does each of these things must be replaced or failed within the pool's timeouts.
//
// This program is a child subreaper (PR_SET_CHILD_SUBREAPER): a grandchild
// orphaned by its parent becomes *our* child, so the leak listener, which fails
// any test case that leaves a child behind, sees everything a hostile child leaves
// behind too. Tests reap such grandchildren themselves, by pid.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <future>
#include <string>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>

#include <subprocess/subprocess.hpp>
#if defined(SP_HOSTILE_IPC)
#include <subprocess/ipc.hpp>
#include <subprocess/pool.hpp>

#include <filesystem>
#include <fstream>
#include <mutex>
#endif

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;

// In a sanitized build, a child killed while it exits can be in LeakSanitizer's
// exit-time check, which runs in a task it clones. Orphaned by the kill, that task
// is adopted by this subreaper and dies a zombie that nothing here started (seen
// in CI: "child N left behind (state Z)", about 1 run in 15). Children here are
// killed by design, so they skip the check; the other test programs run it in
// theirs. (ASan reads its options at startup: this changes only the children's.)
[[maybe_unused]] const bool no_leak_check_in_children = [] {
  const char* old = std::getenv("ASAN_OPTIONS");
  std::string v = old ? std::string(old) + ":detect_leaks=0" : "detect_leaks=0";
  return ::setenv("ASAN_OPTIONS", v.c_str(), 1) == 0;
}();

// Waits up to `limit` for an adopted grandchild to die on its own (or by the
// library's hand); returns its wait status, or -1 if it is still alive, in which
// case it is killed and reaped so that nothing leaks either way.
int reap_grandchild(pid_t pid, std::chrono::milliseconds limit) {
  auto end = clk::now() + limit;
  int ws = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &ws, WNOHANG);
    if (r == pid) return ws;
    if (r < 0) return -2;  // not our child: the subreaper setting did not take
    if (clk::now() >= end) break;
    std::this_thread::sleep_for(5ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &ws, 0);
  return -1;
}

pid_t first_line_pid(const std::string& out) {
  return static_cast<pid_t>(std::stol(out));
}

// CPU time used so far, in milliseconds: by this thread, or by the whole process
// (library threads included).
double cpu_ms(clockid_t which) {
  timespec ts{};
  ::clock_gettime(which, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}
// Waiting 600 ms costs well under 150 ms of CPU unless something spins.
constexpr double idle_cpu_budget_ms = 150;

}  // namespace

TEST_CASE("the test program adopts orphans") {
  REQUIRE(subreaper);
}

TEST_CASE("hostile: a child that closes its stdout but keeps running") {
  SECTION("run() with a timeout stops at the timeout") {
    auto t0 = clk::now();
    try {
      sp::run(testing::helper({"out", "before", "close-out", "sleep", "60000"}),
              {.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "before\n");
      REQUIRE(e.status());
      CHECK(e.status()->signal() == SIGKILL);
    }
    auto dt = clk::now() - t0;
    CHECK(dt >= 300ms);
    CHECK(dt < 3s);
  }
  SECTION("wait_for() with its output unread does not spin (regression)") {
    // Before the fix wait() kept polling a pipe at end of file while the bytes it had
    // drained sat in the buffer: POLLHUP at once, for ever, 100% CPU until the exit.
    auto p = testing::helper({"out", "before", "close-out", "sleep", "60000"}).out(sp::pipe).spawn();
    const double c0 = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
    CHECK_FALSE(p.wait_for(600ms));
    const double used = cpu_ms(CLOCK_THREAD_CPUTIME_ID) - c0;
    INFO("CPU while waiting: " << used << " ms");
    CHECK(used < idle_cpu_budget_ms);
    CHECK(p.out().read_line() == "before");  // the drained bytes are still there
    p.kill();
    CHECK(p.wait().signal() == SIGKILL);
  }
  SECTION("shutdown() and forward_and_shutdown() do not spin on it either (regression)") {
    auto p = testing::helper({"ignore-term", "out", "x", "close-out", "sleep", "60000"}).out(sp::pipe).spawn();
    auto q = testing::helper({"out", "y", "close-out", "sleep", "600"}).out(sp::pipe).spawn();
    double c0 = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
    {
      sp::signal_set set{SIGUSR2};
      auto f = sp::forward_and_shutdown(set, {&q}, 1s);  // q exits by itself after 600 ms
      CHECK_FALSE(f.received);
    }
    double used = cpu_ms(CLOCK_THREAD_CPUTIME_ID) - c0;
    INFO("CPU in forward_and_shutdown: " << used << " ms");
    CHECK(used < idle_cpu_budget_ms);
    c0 = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
    auto r = sp::shutdown({&p}, 600ms);
    used = cpu_ms(CLOCK_THREAD_CPUTIME_ID) - c0;
    INFO("CPU in shutdown: " << used << " ms");
    CHECK(used < idle_cpu_budget_ms);
    CHECK(r.processes[0].needed_sigkill);
  }
  SECTION("run() without a timeout waits for the exit, not just for EOF") {
    auto r = sp::run(testing::helper({"close-out", "sleep", "200", "err", "bye", "exit", "4"}));
    CHECK(r.status == sp::exit_status::exited(4));
    CHECK(r.err == "bye\n");
  }
}

TEST_CASE("hostile: a child that floods stderr only") {
  SECTION("timeout with a truncating cap: bounded memory, prompt return") {
    auto t0 = clk::now();
    try {
      sp::run(
          testing::helper({"err-flood"}),
          {.timeout = 300ms, .max_output = 1 << 20, .on_output_limit = sp::output_limit::truncate});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.err().size() == (1u << 20));
      CHECK(e.out().empty());
    }
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a killing cap names stderr") {
    try {
      sp::run(testing::helper({"err-flood"}), {.timeout = 30s, .max_output = 1 << 20});
      FAIL("no exception");
    } catch (const sp::output_limit_error& e) {
      CHECK(e.stream() == "stderr");
      CHECK(e.err().size() == (1u << 20));
    }
  }
  SECTION("stdout is still readable line by line while stderr is full") {
    auto p = testing::helper({"out", "hello", "err-flood"}).out(sp::pipe).err(sp::pipe).spawn();
    CHECK(p.out().read_line_for(10s) == "hello");
    auto t0 = clk::now();
    CHECK(p.terminate(1s).signal() == SIGTERM);
    CHECK(clk::now() - t0 < 3s);
  }
}

TEST_CASE("hostile: a child that leaves a grandchild holding every pipe, and exits") {
  const std::string input(1 << 20, 'i');  // more than the pipe holds: the write blocks
  SECTION("run(): the timeout holds; without a group the grandchild is not ours to kill") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      sp::run(testing::helper({"grandchild-pid"}), {.input = input, .timeout = 500ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status() == sp::exit_status::exited(0));
      CHECK_THAT(e.what(), Catch::Contains("still holds its output open"));
      g = first_line_pid(e.out());
    }
    auto dt = clk::now() - t0;
    CHECK(dt >= 500ms);
    CHECK(dt < 3s);
    REQUIRE(g > 0);
    CHECK(reap_grandchild(g, 0ms) == -1);  // still alive: we kill it here
  }
  SECTION("run() with a process group: the timeout kills the orphaned group members too") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      sp::run(testing::helper({"grandchild-pid"}).new_process_group(),
              {.input = input, .timeout = 500ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      g = first_line_pid(e.out());
    }
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(g > 0);
    int ws = reap_grandchild(g, 3000ms);
    REQUIRE(ws >= 0);
    CHECK(WIFSIGNALED(ws));
    CHECK(WTERMSIG(ws) == SIGKILL);
  }
  SECTION("wait() returns at the child's exit, not at EOF") {
    auto p = testing::helper({"grandchild-pid"}).in(sp::pipe).out(sp::pipe).err(sp::pipe).spawn();
    auto t0 = clk::now();
    auto st = p.wait_for(10s);
    CHECK(clk::now() - t0 < 3s);
    CHECK(st == sp::exit_status::exited(0));
    auto line = p.out().read_line_for(5s);
    REQUIRE(line);
    CHECK(reap_grandchild(first_line_pid(*line), 0ms) == -1);
  }
}

TEST_CASE("hostile: a child that stops itself (SIGSTOP)") {
  SECTION("run() kills it at the timeout") {
    auto t0 = clk::now();
    try {
      sp::run(testing::helper({"out", "x", "stop-self", "sleep", "60000"}), {.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "x\n");
      REQUIRE(e.status());
      CHECK(e.status()->signal() == SIGKILL);
    }
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a stop is not an exit; terminate() continues it so it can handle SIGTERM") {
    auto p = testing::helper({"term-exits-after", "0", "stop-self", "sleep", "60000"})
                 .out(sp::pipe)
                 .spawn();
    siginfo_t info{};
    // The kernel tells us when it has stopped (WNOWAIT: the library's wait is unaffected).
    REQUIRE(::waitid(P_PID, static_cast<id_t>(p.pid()), &info, WSTOPPED | WNOWAIT) == 0);
    CHECK(info.si_code == CLD_STOPPED);
    CHECK_FALSE(p.wait_for(100ms));
    auto t0 = clk::now();
    auto st = p.terminate(20s);
    // Before the fix: SIGTERM stayed pending in the stopped child for the whole
    // grace period, then SIGKILL. Now SIGCONT follows SIGTERM and it exits cleanly.
    CHECK(st == sp::exit_status::exited(0));
    CHECK(clk::now() - t0 < 5s);
    CHECK(p.out().read_all() == "got SIGTERM\n");
  }
}

TEST_CASE("hostile: a child that changes its process group") {
  SECTION("leaving our group does not escape run()'s timeout (pidfd signal)") {
    auto t0 = clk::now();
    CHECK_THROWS_AS(sp::run(testing::helper({"setpgid", "sleep", "60000"}), {.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a grandchild escaping the group kill cannot hold run() past the timeout") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      sp::run(testing::helper({"grandchild-pid-newpgrp", "sleep", "60000"}).new_process_group(),
              {.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      REQUIRE(e.status());
      CHECK(e.status()->signal() == SIGKILL);
      g = first_line_pid(e.out());
    }
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(g > 0);
    // It left the group, so the group kill could not reach it (the documented limit
    // of process groups); it is still alive and reaped here.
    CHECK(reap_grandchild(g, 0ms) == -1);
  }
}

// ------------------------------------------------------------------ pipelines --

TEST_CASE("hostile pipelines: a stage that closes its stdout but keeps running") {
  SECTION("the timeout holds; what it printed arrives") {
    auto t0 = clk::now();
    try {
      (sp::pipeline{} | testing::helper({"out", "before", "close-out", "sleep", "60000"}) | sp::command{"cat"})
          .run({.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "before\n");
    }
    CHECK(clk::now() - t0 >= 300ms);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("without a timeout it ends at the stage's exit, and waiting does not spin") {
    const double c0 = cpu_ms(CLOCK_PROCESS_CPUTIME_ID);
    auto r = (sp::pipeline{} | testing::helper({"out", "x", "close-out", "sleep", "600", "exit", "3"}) |
              sp::command{"cat"})
                 .run();
    const double used = cpu_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
    INFO("CPU: " << used << " ms");
    CHECK(used < idle_cpu_budget_ms);
    CHECK(r.stages[0].status == sp::exit_status::exited(3));
    CHECK(r.status == sp::exit_status::exited(3));
    CHECK(r.out == "x\n");
  }
}

TEST_CASE("hostile pipelines: a stage that floods stderr") {
  SECTION("stderr captured while stdout flows: no deadlock") {
    auto r = (sp::pipeline{} | testing::helper({"err-bytes", "4000000", "out-bytes", "1000000"}) |
              sp::command{"cat"})
                 .run({.err = sp::capture, .timeout = 60s});
    CHECK(r.success());
    CHECK(r.stages[0].err.size() == 4000000);
    CHECK(r.out.size() == 1000000);
  }
  SECTION("an endless flood: the timeout holds") {
    auto t0 = clk::now();
    try {
      (sp::pipeline{} | testing::helper({"out", "x", "err-flood"}) | sp::command{"cat"})
          .run({.err = sp::null, .timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.out() == "x\n");
    }
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("merged into a stage that stops reading: SIGPIPE ends the flood") {
    auto r = (sp::pipeline{} | testing::helper({"err-flood"}) | sp::command{"head", "-c", "1000"})
                 .run({.err = sp::merge_with_out, .timeout = 30s});
    CHECK(r.out.size() == 1000);
    CHECK(r.stages[0].status.signal() == SIGPIPE);
    CHECK(r.success());  // a producer killed by SIGPIPE is not a failure
  }
}

TEST_CASE("hostile pipelines: a stage that leaves a grandchild holding every pipe, and exits") {
  SECTION("in the pipeline's process group: the timeout kills the grandchild too") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      (sp::pipeline{} | testing::helper({"grandchild-pid"}) | sp::command{"cat"})
          .run({.err = sp::capture, .timeout = 500ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      g = first_line_pid(e.out());
    }
    CHECK(clk::now() - t0 >= 500ms);
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(g > 0);
    int ws = reap_grandchild(g, 3000ms);
    REQUIRE(ws >= 0);
    CHECK(WIFSIGNALED(ws));
    CHECK(WTERMSIG(ws) == SIGKILL);
  }
  SECTION("outside any group of ours: the timeout still holds; the grandchild is not ours to kill") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      (sp::pipeline{} | testing::helper({"grandchild-pid"}) | sp::command{"cat"})
          .run({.err = sp::capture, .timeout = 500ms, .process_group = false});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      g = first_line_pid(e.out());
    }
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(g > 0);
    CHECK(reap_grandchild(g, 0ms) == -1);  // still alive: we kill it here
  }
}

TEST_CASE("hostile pipelines: a stage that stops itself (SIGSTOP)") {
  SECTION("the timeout kills it") {
    auto t0 = clk::now();
    CHECK_THROWS_AS((sp::pipeline{} | testing::helper({"out", "x", "stop-self", "sleep", "60000"}) |
                     sp::command{"cat"})
                        .run({.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("terminate() continues it so it can handle SIGTERM (regression)") {
    // SIGPIPE ignored: cat gets the same SIGTERM and may be gone before the stage
    // writes "got SIGTERM" (its write then fails with EPIPE instead of killing it).
    auto h = (sp::pipeline{} |
              testing::helper({"ignore", "13", "term-exits-after", "0", "stop-self", "sleep", "60000"}) |
              sp::command{"cat"})
                 .spawn({.output = sp::null});
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(h.pids()[0]), &info, WSTOPPED | WNOWAIT) == 0);
    CHECK(info.si_code == CLD_STOPPED);
    auto t0 = clk::now();
    // Before the fix SIGTERM stayed pending in the stopped stage for the whole grace
    // period, then SIGKILL.
    auto r = h.terminate(20s);
    CHECK(clk::now() - t0 < 5s);
    CHECK(r.stages[0].status == sp::exit_status::exited(0));
  }
}

TEST_CASE("hostile pipelines: a stage that changes its process group") {
  SECTION("leaving the pipeline's group does not escape the timeout (pidfd signal)") {
    auto t0 = clk::now();
    CHECK_THROWS_AS((sp::pipeline{} | testing::helper({"setpgid", "sleep", "60000"}) | sp::command{"cat"})
                        .run({.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a grandchild escaping the group cannot hold the pipeline past the timeout") {
    auto t0 = clk::now();
    pid_t g = -1;
    try {
      (sp::pipeline{} | testing::helper({"grandchild-pid-newpgrp", "sleep", "60000"}) | sp::command{"cat"})
          .run({.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      g = first_line_pid(e.out());
    }
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(g > 0);
    CHECK(reap_grandchild(g, 0ms) == -1);  // out of reach of the group kill, as documented
  }
}

// ------------------------------------------------------------------------ ipc --
#if defined(SP_HOSTILE_IPC)

namespace ipc = subprocess::ipc;
using json = ipc::json;

namespace {
using testing::ipc_child;
void wait_stopped(pid_t pid) {
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &info, WSTOPPED | WNOWAIT) == 0);
  REQUIRE(info.si_code == CLD_STOPPED);
}
}  // namespace

TEST_CASE("hostile ipc peers: one that leaves a grandchild holding the socket, and exits") {
  SECTION("client: a pending call fails at the peer's exit, with its status") {
    auto p = ipc_child({"connect", "grandchild-pid", "receive-one", "exit", "3"}).out(sp::pipe).spawn();
    auto line = p.out().read_line_for(10s);
    REQUIRE(line);
    const pid_t g = first_line_pid(*line);
    {
      ipc::client c(p);
      auto t0 = clk::now();
      auto f = c.call("add", {{"a", 1}, {"b", 2}}, 30s);
      try {
        f.get();
        FAIL("no error");
      } catch (const ipc::channel_error& e) {
        CHECK(e.status() == sp::exit_status::exited(3));
      }
      CHECK(clk::now() - t0 < 3s);  // not the call's 30 s: the pidfd said it
      CHECK_FALSE(c.connected());
    }
    CHECK(p.wait() == sp::exit_status::exited(3));
    CHECK(reap_grandchild(g, 0ms) == -1);
  }
  SECTION("channel: receive_for keeps its deadline while the socket stays open") {
    auto p = ipc_child({"connect", "grandchild-pid", "send", R"({"last":1})", "exit", "0"}).out(sp::pipe).spawn();
    auto line = p.out().read_line_for(10s);
    REQUIRE(line);
    const pid_t g = first_line_pid(*line);
    ipc::channel ch(p);
    CHECK(ch.receive_for(10s) == json{{"last", 1}});
    CHECK(p.wait() == sp::exit_status::exited(0));
    auto t0 = clk::now();
    CHECK_FALSE(ch.receive_for(300ms));
    CHECK(clk::now() - t0 >= 300ms);
    CHECK(clk::now() - t0 < 3s);
    CHECK_FALSE(ch.eof());  // the grandchild still holds the other end
    CHECK(reap_grandchild(g, 0ms) == -1);
    CHECK_FALSE(ch.receive_for(10s));  // now the end comes
    CHECK(ch.eof());
  }
}

TEST_CASE("hostile ipc peers: one that stops itself (SIGSTOP)") {
  auto p = ipc_child({"connect", "stop-self", "serve"}).spawn();
  wait_stopped(p.pid());
  SECTION("client: every call times out on time; close() returns at once") {
    ipc::client c(p);
    auto t0 = clk::now();
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(c.call("add", {{"a", i}, {"b", 1}}, 300ms));
    for (auto& f : fs) CHECK_THROWS_AS(f.get(), ipc::call_timeout_error);
    CHECK(clk::now() - t0 < 3s);
    auto t1 = clk::now();
    c.close();
    CHECK(clk::now() - t1 < 1s);
  }
  SECTION("channel: receive_for keeps its deadline; post() never blocks on a full socket") {
    ipc::channel ch(p);
    auto t0 = clk::now();
    CHECK_FALSE(ch.receive_for(300ms));
    CHECK(clk::now() - t0 >= 300ms);
    json big = {{"b", std::string(1 << 20, 'x')}};
    auto t1 = clk::now();
    bool all_sent = true;
    for (int i = 0; i < 8; ++i) all_sent = ch.post(big) && all_sent;
    CHECK_FALSE(all_sent);
    CHECK(ch.queued_bytes() > 0);
    CHECK_FALSE(ch.flush());
    CHECK(clk::now() - t1 < 1s);
  }
  p.kill();
  CHECK(p.wait().signal() == SIGKILL);
}

TEST_CASE("hostile ipc peers: one that floods malformed lines") {
  auto p = ipc_child({"connect", "flood-lines"}).spawn();
  SECTION("client: errors are reported, a call's deadline holds, close() is prompt") {
    std::atomic<long> errors{0};
    ipc::client c(p, {.timeout = 30s,
                      .on_message = {},
                      .on_error = [&](const ipc::channel_error&) { ++errors; },
                      .exit_grace = 500ms,
                      .name = {}});
    auto t0 = clk::now();
    CHECK_THROWS_AS(c.call("add", {{"a", 1}, {"b", 2}}, 300ms).get(), ipc::call_timeout_error);
    CHECK(clk::now() - t0 < 3s);
    CHECK(errors.load() > 100);
    auto t1 = clk::now();
    c.close();
    CHECK(clk::now() - t1 < 2s);
  }
  SECTION("channel: each line is a protocol error and the channel stays usable") {
    ipc::channel ch(p);
    for (int i = 0; i < 1000; ++i) {
      try {
        (void)ch.receive_for(10s);
        FAIL("no error");
      } catch (const ipc::channel_error& e) {
        CHECK(e.code() == sp::errc::protocol_error);
        CHECK(e.sample() == "garbage");
      }
    }
  }
  p.kill();
  p.wait();
}


// ---- the worker pool's workers ---------------------------------------------------

TEST_CASE("hostile pool workers: one that leaves a grandchild holding its channel, then dies") {
  // The grandchild keeps the socket open, so the channel never ends: only the
  // worker's pidfd can tell the pool that the task's worker is gone.
  char tmpl[] = "/tmp/sp-hostile-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::filesystem::path dir = tmpl, pids = dir / "grandchildren";
  const auto before = testing::children();  // a sanitizer's symbolizer, say
  {
    sp::worker_pool pool(
        sp::command{IPC_HELPER_PATH, "connect", "grandchild-pid", "serve"}.out(
            sp::file(pids, sp::file_mode::append)),
        {.min_workers = 2, .max_retries = 1});
    auto t0 = clk::now();
    auto f = pool.submit("exit", {{"code", 3}});  // the worker exits without answering
    try {
      f.get();
      FAIL("no error");
    } catch (const sp::pool_error& e) {
      CHECK(e.kind() == sp::pool_errc::worker_crashed);
      REQUIRE(e.attempts().size() == 2);
      for (auto& a : e.attempts()) CHECK(a.status == sp::exit_status::exited(3));
    }
    CHECK(clk::now() - t0 < 5s);  // not a heartbeat timeout: the pidfd said it
    CHECK(pool.submit("add", {{"a", 1}, {"b", 2}}).get() == 3);
    auto t1 = clk::now();
    pool.shutdown();
    CHECK(clk::now() - t1 < 5s);
  }
  // The two workers that died left grandchildren that are still alive, as they
  // should be (they are not the pool's): reaped here. Their replacements forked one
  // too, but shutdown may have killed them before they wrote its pid: every other
  // adopted process is reaped as well.
  std::ifstream in(pids);
  int grandchildren = 0;
  for (std::string line; std::getline(in, line);) {
    ++grandchildren;
    CHECK(reap_grandchild(first_line_pid(line), 0ms) == -1);
  }
  CHECK(grandchildren >= 2);
  for (auto& c : testing::children())
    if (std::none_of(before.begin(), before.end(), [&](auto& b) { return b.pid == c.pid; }))
      (void)reap_grandchild(c.pid, 0ms);
  std::filesystem::remove_all(dir);
}

TEST_CASE("hostile pool workers: one that writes garbage on its channel") {
  // A malformed line means a broken worker: killed at once (its bytes must not count
  // as signs of life, or a worker flooding garbage would never be replaced) and its
  // task retried; here every attempt meets garbage, so the task fails.
  std::mutex mu;
  std::vector<std::string> hung;
  sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "serve"},
                       {.min_workers = 2,
                        .max_retries = 1,
                        .on_event = [&](const sp::pool_event& e) {
                          if (e.kind != sp::pool_event_kind::worker_hung) return;
                          std::lock_guard l(mu);
                          hung.push_back(e.message);
                        }});
  auto f = pool.submit("garbage", json::object());
  REQUIRE(f.wait_for(60s) == std::future_status::ready);
  try {
    f.get();
    FAIL("no error");
  } catch (const sp::pool_error& e) {
    CHECK(e.kind() == sp::pool_errc::worker_crashed);
    CHECK(e.attempts().size() == 2);
    for (auto& a : e.attempts()) CHECK_THAT(a.what, Catch::Contains("malformed"));
  }
  CHECK(pool.stats().workers_hung == 2);
  {
    std::lock_guard l(mu);
    REQUIRE(hung.size() == 2);
    CHECK_THAT(hung.front(), Catch::Contains("malformed message on its channel (garbage)"));
  }
  CHECK(pool.submit("add", {{"a", 1}, {"b", 2}}).get() == 3);  // replaced, working
}

#endif  // SP_HOSTILE_IPC
