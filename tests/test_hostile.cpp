// Hostile children: run() and process keep their timeouts and leak nothing when
// the child misbehaves (closes its stdout, floods stderr, leaves a grandchild
// holding every pipe, stops itself, leaves our process group).
//
// This program is a child subreaper (PR_SET_CHILD_SUBREAPER): a grandchild
// orphaned by its parent becomes *our* child, so the leak listener, which fails
// any test case that leaves a child behind, sees everything a hostile child leaves
// behind too. Tests reap such grandchildren themselves, by pid.
#include <catch2/catch.hpp>

#include <csignal>
#include <string>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;

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
