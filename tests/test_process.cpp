#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <sys/wait.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

TEST_CASE("wait, try_wait, wait_for") {
  SECTION("wait returns the status and caches it") {
    auto p = testing::helper({"exit", "7"}).spawn();
    CHECK(p.pid() > 0);
    CHECK(p.pidfd() >= 0);
    CHECK(p.wait() == sp::exit_status::exited(7));
    CHECK(p.wait() == sp::exit_status::exited(7));
    CHECK(p.try_wait() == sp::exit_status::exited(7));
    CHECK(p.status() == sp::exit_status::exited(7));
  }
  SECTION("try_wait does not block") {
    auto p = testing::helper({"wait-stdin-eof"}).in(sp::pipe).spawn();
    auto t0 = clk::now();
    CHECK_FALSE(p.try_wait().has_value());
    CHECK(clk::now() - t0 < 500ms);
    p.in().close();
    CHECK(p.wait().success());
  }
  SECTION("wait_for times out while the child runs, then succeeds") {
    auto p = testing::helper({"sleep", "600", "exit", "4"}).spawn();
    auto t0 = clk::now();
    CHECK_FALSE(p.wait_for(200ms).has_value());
    auto waited = clk::now() - t0;
    CHECK(waited >= 200ms);
    CHECK(waited < 590ms);
    CHECK(p.wait_for(10s) == sp::exit_status::exited(4));
  }
  SECTION("wait closes stdin first, so a child reading to EOF can finish") {
    auto p = testing::helper({"count-stdin"}).in(sp::pipe).out(sp::pipe).spawn();
    p.in().write_all("12345");
    CHECK(p.wait().success());
    CHECK(p.out().read_all() == "5\n");
  }
  SECTION("wait never deadlocks on output the process still owns") {
    // 4 MiB on each stream is far more than a pipe holds.
    auto p = testing::helper({"out-bytes", "4194304", "err-bytes", "4194304"})
                 .out(sp::pipe)
                 .err(sp::pipe)
                 .spawn();
    CHECK(p.wait().success());
    CHECK(p.out().read_all().size() == 4194304);
    CHECK(p.err().read_all().size() == 4194304);
  }
  SECTION("negative timeouts are rejected") {
    auto p = testing::helper({}).spawn();
    CHECK_THROWS_AS(p.wait_for(-1ms), sp::argument_error);
    CHECK_THROWS_AS(p.terminate(-1s), sp::argument_error);
    p.wait();
  }
}

TEST_CASE("signals go through the pidfd and never after the reap") {
  auto p = testing::helper({"sleep", "60000"}).spawn();
  CHECK(p.signal(SIGTERM));
  CHECK(p.wait().signal() == SIGTERM);
  // Reaped: its pid may belong to someone else now. Nothing is sent.
  CHECK_FALSE(p.signal(SIGKILL));
}

TEST_CASE("a recycled pid is never signalled or waited for") {
  // The race pidfds close: a child is reaped behind the library's back (a
  // waitpid(-1) elsewhere, or SIGCHLD set to SIG_IGN), its pid goes to a new process,
  // and then the old handle is used. Here the new process gets the very same pid on
  // purpose (root can choose the next pid through /proc/sys/kernel/ns_last_pid).
  auto a = testing::helper({"sleep", "60000"}).spawn();
  const pid_t pid = a.pid();
  REQUIRE(a.pidfd() >= 0);
  REQUIRE(::kill(pid, SIGKILL) == 0);
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED) == 0);  // reaped by "someone else"
  std::optional<sp::process> b;
  for (int attempt = 0; attempt < 100 && !b; ++attempt) {
    std::ofstream last("/proc/sys/kernel/ns_last_pid");
    if (!(last << (pid - 1) << std::flush)) break;
    last.close();
    auto c = testing::helper({"sleep", "60000"}).spawn();
    if (c.pid() == pid) b = std::move(c);  // else another process took it first: again
  }
  if (!b) {
    WARN("skipped: cannot choose the next pid (needs root, or another process keeps taking it)");
    CHECK_FALSE(a.signal(SIGKILL));
    a.detach();  // the reaper finds it gone
    return;
  }
  // The old handle now names a live, unrelated process by number.
  CHECK_FALSE(a.signal(SIGKILL));  // the pidfd knows its process is gone: nothing sent
  CHECK(testing::alive(pid));
  CHECK_THROWS_AS(a.try_wait(), sp::error);  // it cannot be waited for (ECHILD)...
  CHECK(testing::alive(pid));
  CHECK_FALSE(b->try_wait());  // ...and b was not reaped in its place
  { auto gone = std::move(a); }  // the destructor neither kills nor reaps b
  CHECK(testing::alive(pid));
  CHECK_FALSE(b->wait_for(100ms));
  b->kill();
  CHECK(b->wait().signal() == SIGKILL);
}

namespace {

// The state letter of our child `pid` ('Z': a zombie), or 0 if there is none.
char child_state(pid_t pid) {
  for (auto k : testing::children())
    if (k.pid == pid) return k.state;
  return 0;
}

}  // namespace

TEST_CASE("a group leader's pid is never recycled as a group id while its handle lives") {
  // After a group leader exits and its group empties, the kernel may hand its pid to
  // a new process, which can lead a group of that same number; signal_group() would
  // then kill(-pgid) a stranger's group. Here the new process is asked for that very
  // pid (root chooses the next pid through /proc/sys/kernel/ns_last_pid). Before the
  // fix wait() reaped the leader, the new group leader got the pid, and
  // signal_group(SIGKILL) on the old handle killed it.
  std::optional<sp::process> leader = testing::helper({"exit", "0"}).new_process_group().spawn();
  const pid_t pgid = leader->pid();
  CHECK(leader->wait() == sp::exit_status::exited(0));
  CHECK(child_state(pgid) == 'Z');  // held: the pid and the group id stay reserved
  CHECK_FALSE(leader->signal(SIGKILL));  // its status is collected: nothing is sent to it

  std::vector<sp::process> others;
  bool could_choose = false, got_it = false;
  for (int attempt = 0; attempt < 20 && !got_it; ++attempt) {
    std::ofstream last("/proc/sys/kernel/ns_last_pid");
    if (!(last << (pgid - 1) << std::flush)) break;
    last.close();
    could_choose = true;
    auto c = testing::helper({"sleep", "60000"}).new_process_group().spawn();
    got_it = c.pid() == pgid;
    others.push_back(std::move(c));
  }
  if (!could_choose) WARN("cannot choose the next pid (needs root): only the held zombie is checked");
  CHECK_FALSE(got_it);  // the leader's zombie keeps the number
  leader->signal_group(SIGKILL);  // reaches the leader's own (empty) group only
  // Every new group leader still runs: none of their pidfds turns readable (exited)
  // within 200 ms, far more than a SIGKILL takes.
  std::vector<pollfd> fds;
  for (auto& o : others) fds.push_back({o.pidfd(), POLLIN, 0});
  CHECK(sp::detail::poll_until(fds.data(), fds.size(), clk::now() + 200ms) == 0);
  leader.reset();  // the handle goes: now the leader is reaped
  CHECK(child_state(pgid) == 0);
}

TEST_CASE("a group leader's zombie is held by every way of waiting, and reaped when the handle goes") {
  auto leader = [] {
    return testing::helper({"term-exits-after", "0", "ready", "sleep", "60000"})
        .new_process_group()
        .out(sp::pipe)
        .spawn();
  };
  auto ready = [](sp::process& p) { REQUIRE(p.out().read_line() == "ready"); };
  const int release = GENERATE(0, 1, 2);  // how the handle lets go: destroyed, assigned over, detached
  std::optional<sp::process> p = leader();
  ready(*p);
  const pid_t pid = p->pid();
  SECTION("wait") {
    p->signal_group(SIGTERM);
    CHECK(p->wait() == sp::exit_status::exited(0));
  }
  SECTION("try_wait") {
    p->signal_group(SIGTERM);
    REQUIRE(sp::detail::poll_one(p->pidfd(), POLLIN, clk::now() + 10s) != 0);
    CHECK(p->try_wait() == sp::exit_status::exited(0));
  }
  SECTION("wait_for") {
    p->signal_group(SIGTERM);
    CHECK(p->wait_for(10s) == sp::exit_status::exited(0));
  }
  SECTION("terminate") { CHECK(p->terminate(10s) == sp::exit_status::exited(0)); }
  SECTION("shutdown") { CHECK(sp::shutdown({&*p}, 10s).all_graceful()); }
  SECTION("event_loop::on_exit") {
    sp::event_loop loop;
    std::optional<sp::exit_status> st;
    loop.on_exit(*p, [&](sp::exit_status s) { st = s; });
    p->signal_group(SIGTERM);
    loop.run();
    CHECK(st == sp::exit_status::exited(0));
  }
  CHECK(child_state(pid) == 'Z');
  CHECK(p->signal_group(0));  // its own group: the zombie is still in it
  if (release == 0) p.reset();
  if (release == 1) *p = sp::process();
  if (release == 2) p->detach();
  CHECK(child_state(pid) == 0);
}

TEST_CASE("a child that is not a group leader is reaped as soon as it is waited for") {
  auto p = testing::helper({"exit", "0"}).spawn();
  p.wait();
  CHECK(child_state(p.pid()) == 0);
}

TEST_CASE("signal from another thread while one thread waits") {
  auto p = testing::helper({"sleep", "60000"}).spawn();
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    p.kill();
  });
  auto st = p.wait();
  killer.join();
  CHECK(st.signal() == SIGKILL);
}

TEST_CASE("terminate: SIGTERM, then SIGKILL after the grace period") {
  SECTION("a child that exits on SIGTERM is not SIGKILLed") {
    auto p = testing::helper({"term-exits-after", "0", "ready", "sleep", "60000"}).out(sp::pipe).spawn();
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    auto st = p.terminate(5s);
    CHECK(st == sp::exit_status::exited(0));
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a child that ignores SIGTERM is SIGKILLed after the grace period") {
    auto p = testing::helper({"ignore-term", "ready", "sleep", "60000"}).out(sp::pipe).spawn();
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    auto st = p.terminate(300ms);
    auto took = clk::now() - t0;
    CHECK(st.signal() == SIGKILL);
    CHECK(took >= 300ms);
    CHECK(took < 300ms + 2s);
  }
  SECTION("terminate of an exited child just returns its status") {
    auto p = testing::helper({"exit", "2"}).spawn();
    p.wait();
    CHECK(p.terminate(1s) == sp::exit_status::exited(2));
  }
}

TEST_CASE("process groups: signal_group reaches grandchildren") {
  auto p = testing::helper({"grandchild-pid", "sleep", "60000"}).new_process_group().out(sp::pipe).spawn();
  auto line = p.out().read_line();
  REQUIRE(line);
  int g = std::stoi(*line);
  sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(g));
  REQUIRE(gfd);
  CHECK(p.signal_group(SIGTERM));
  CHECK(p.wait().signal() == SIGTERM);
  // The grandchild was reparented; it is gone when its pidfd turns readable.
  CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  SECTION("signal_group needs a group leader") {
    auto q = testing::helper({}).spawn();
    CHECK_THROWS_AS(q.signal_group(SIGTERM), sp::argument_error);
    q.wait();
  }
}

TEST_CASE("the destructor kills and reaps a running child") {
  int pid;
  {
    auto p = testing::helper({"sleep", "60000"}).spawn();
    pid = p.pid();
    CHECK(testing::alive(pid));
  }
  CHECK_FALSE(testing::alive(pid));
  // (the leak listener also checks that no zombie remains)
  SECTION("even one that ignores SIGTERM") {
    auto p = testing::helper({"ignore-term", "sleep", "60000"}).spawn();
  }
  SECTION("and the whole group when it leads one") {
    sp::detail::unique_fd gfd;
    {
      auto p = testing::helper({"grandchild-pid", "sleep", "60000"}).new_process_group().out(sp::pipe).spawn();
      gfd.reset(sp::detail::sys::pidfd_open(std::stoi(*p.out().read_line())));
      REQUIRE(gfd);
    }
    CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  }
}

TEST_CASE("detach lets the child run and still leaves no zombie") {
  auto p = testing::helper({"sleep", "200"}).spawn();
  int pid = p.pid();
  p.detach();
  CHECK_FALSE(p.valid());
  CHECK(testing::alive(pid));
  // The reaper thread collects it when it exits; the leak listener checks no
  // child (zombie or not) remains after the test.
  SECTION("an empty handle refuses operations") {
    CHECK_THROWS_AS(p.wait(), sp::argument_error);
    CHECK_THROWS_AS(p.signal(SIGTERM), sp::argument_error);
  }
}

TEST_CASE("move semantics") {
  auto p = testing::helper({"exit", "5"}).spawn();
  int pid = p.pid();
  sp::process q = std::move(p);
  CHECK_FALSE(p.valid());
  CHECK(q.pid() == pid);
  CHECK(q.wait() == sp::exit_status::exited(5));
  SECTION("assigning over a running process kills and reaps the old child") {
    auto a = testing::helper({"sleep", "60000"}).spawn();
    int old = a.pid();
    a = testing::helper({"exit", "1"}).spawn();
    CHECK_FALSE(testing::alive(old));
    CHECK(a.wait() == sp::exit_status::exited(1));
  }
}

TEST_CASE("a stopped child can still be waited with a timeout and killed") {
  auto p = testing::helper({"stop-self", "exit", "0"}).spawn();
  CHECK_FALSE(p.wait_for(200ms).has_value());
  p.kill();
  CHECK(p.wait().signal() == SIGKILL);
}

namespace {
using testing::sigchld_discarding;
bool says_status_discarded(const sp::error& e) {
  return e.code() == std::errc::no_child_process &&
         std::string_view(e.what()).find("SIGCHLD") != std::string_view::npos;
}
}  // namespace

TEST_CASE("SIGCHLD ignored: a child that started is never a spawn failure; wait says why no status") {
  const bool nocldwait = GENERATE(false, true);
  const auto b = GENERATE(sp::spawn_backend::automatic, sp::spawn_backend::posix_spawn,
                          sp::spawn_backend::clone_vfork);
  sigchld_discarding discard(nocldwait);
  SECTION("quick children: every spawn succeeds, and each child ran exactly once") {
    // The kernel reaps each child the moment it exits, possibly before spawn() has
    // its pidfd. Each child writes one line into our pipe: lines == successes.
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    constexpr int n = 150;
    int started = 0, failed = 0, clear_wait_errors = 0;
    for (int i = 0; i < n; ++i) {
      try {
        auto p = testing::helper({"out", "x"}).out(sp::fd(fds[1])).backend(b).spawn();
        ++started;
        try {
          p.wait();
        } catch (const sp::error& e) {
          if (says_status_discarded(e) && std::string_view(e.what()).find(testing::helper_path()) !=
                                              std::string_view::npos)
            ++clear_wait_errors;
        }
      } catch (const sp::spawn_error&) {
        ++failed;
      }
    }
    ::close(fds[1]);
    std::string lines;
    char buf[4096];
    for (ssize_t k; (k = ::read(fds[0], buf, sizeof buf)) > 0;) lines.append(buf, static_cast<std::size_t>(k));
    ::close(fds[0]);
    CHECK(failed == 0);
    CHECK(started == n);
    CHECK(std::count(lines.begin(), lines.end(), '\n') == n);
    CHECK(clear_wait_errors == n);
  }
  SECTION("a running child: try_wait is empty while it runs; wait waits for it, then says why") {
    auto p = testing::helper({"wait-line", "out", "done"}).in(sp::pipe).out(sp::pipe).backend(b).spawn();
    CHECK(p.pidfd() >= 0);
    CHECK_FALSE(p.try_wait().has_value());
    p.in().write_all("go\n");
    try {
      p.wait();
      FAIL("wait() returned a status the kernel had discarded");
    } catch (const sp::error& e) {
      CHECK(says_status_discarded(e));
      CHECK_THAT(e.what(), Catch::Contains("discarded") && Catch::Contains("wait-line"));
    }
    // wait() returned only once the child had exited: its output is complete.
    CHECK(p.out().read_all() == "done\n");
    CHECK_FALSE(p.signal(SIGTERM));  // gone: nothing is signalled
    CHECK_THROWS_MATCHES(p.wait_for(1s), sp::error, Catch::Predicate<sp::error>(says_status_discarded));
  }
  SECTION("the destructor kills a running child without throwing or hanging; detach is fine") {
    { auto p = testing::helper({"sleep", "60000"}).backend(b).spawn(); }
    auto q = testing::helper({}).backend(b).spawn();
    if (q.pidfd() >= 0) CHECK(sp::detail::poll_one(q.pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
    CHECK_NOTHROW(q.detach());
  }
  CHECK(testing::children().empty());
}

// A shell that answers SIGTERM with "got TERM" and exit 3, once it has said "ready".
static sp::command term_trapper() {
  return sp::command{"sh", "-c", "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done"}
      .out(sp::pipe);
}

TEST_CASE("wait_for with a timeout policy: which signal, the grace, or leave it running") {
  using policy = sp::timeout_policy;
  SECTION("a child trapping SIGTERM exits 3 within the grace: killed, not escalated") {
    auto p = term_trapper().spawn();
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    try {
      p.wait_for(100ms, policy::kill_with(SIGTERM, 10s));
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status() == sp::exit_status::exited(3));
      CHECK(e.killed());
      CHECK_FALSE(e.outcome().escalated);
      CHECK_FALSE(e.still_running());
      CHECK(e.code() == std::errc::timed_out);
      CHECK(std::string(e.what()) == "'" + p.command_line() + "' timed out after 100 ms; sent SIGTERM");
    }
    CHECK(clk::now() - t0 < 5s);
    CHECK(p.out().read_all() == "got TERM\n");
  }
  SECTION("a child ignoring SIGTERM is SIGKILLed after the grace, its whole group too") {
    auto p = testing::helper({"ignore-term", "grandchild-pid", "ready", "sleep", "60000"})
                 .new_process_group()
                 .out(sp::pipe)
                 .spawn();
    sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(std::stoi(*p.out().read_line())));
    REQUIRE(gfd);
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    try {
      p.wait_for(50ms, policy::kill_with(SIGTERM, 300ms));
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status()->signal() == SIGKILL);
      CHECK(e.killed());
      CHECK(e.outcome().escalated);
      CHECK_THAT(e.what(), Catch::EndsWith("timed out after 50 ms; sent SIGTERM, then SIGKILL after 300 ms"));
    }
    CHECK(clk::now() - t0 >= 300ms);
    CHECK(clk::now() - t0 < 5s);
    // The grandchild (in the group, ignoring SIGTERM too) got SIGKILL: its pidfd says gone.
    CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  }
  SECTION("leave_running: nothing is sent, the child runs on and the caller still owns it") {
    auto p = sp::command{"sleep", "10"}.spawn();
    try {
      p.wait_for(50ms, policy::leave_running());
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.still_running());
      CHECK_FALSE(e.killed());
      CHECK_FALSE(e.status());
      CHECK(std::string(e.what()) ==
            "'sleep 10' timed out after 50 ms; still running: left to the caller, who owns it");
    }
    CHECK(::kill(p.pid(), 0) == 0);
    CHECK_FALSE(p.try_wait());
    p.kill();
    CHECK(p.wait().signal() == SIGKILL);
  }
  SECTION("CPython test_wait_timeout: a short timeout throws, then wait() gets code 0") {
    auto p = sp::command{"sleep", "0.3"}.spawn();
    CHECK_THROWS_AS(p.wait_for(1ms, policy::leave_running()), sp::timeout_error);
    CHECK(p.wait() == sp::exit_status::exited(0));
  }
  SECTION("a child that ends in time returns its status; no signal is sent") {
    auto p = term_trapper().spawn();
    auto q = sp::command{"true"}.spawn();
    CHECK(q.wait_for(10s, policy::kill_with(SIGTERM, 1s)) == sp::exit_status::exited(0));
    p.kill();
  }
  SECTION("the default policy is SIGKILL at once") {
    auto p = sp::command{"sleep", "10"}.spawn();
    try {
      p.wait_for(20ms, policy{});
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status()->signal() == SIGKILL);
      CHECK(e.killed());
      CHECK_THAT(e.what(), Catch::EndsWith("; sent SIGKILL"));
    }
  }
  SECTION("Node's killSignal: any signal number, a bad one is an argument_error") {
    auto p = sp::command{"sleep", "10"}.spawn();
    CHECK_THROWS_AS(p.wait_for(1ms, policy::kill_with(0)), sp::argument_error);
    CHECK_THROWS_AS(p.wait_for(1ms, policy::kill_with(SIGRTMAX + 1)), sp::argument_error);
    CHECK_THROWS_AS(p.wait_for(1ms, policy::kill_with(SIGTERM, -1ms)), sp::argument_error);
    CHECK_THROWS_AS(p.wait_for(-1ms, policy{}), sp::argument_error);
    CHECK_FALSE(p.try_wait());  // nothing was sent
    try {
      p.wait_for(1ms, policy::kill_with(SIGUSR1, 10s));
      FAIL("no timeout_error");
    } catch (const sp::timeout_error& e) {
      CHECK(e.status()->signal() == SIGUSR1);
    }
  }
  SECTION("stop() applies a policy at once; terminate(grace) is kill_with(SIGTERM, grace)") {
    auto p = term_trapper().spawn();
    REQUIRE(p.out().read_line() == "ready");
    auto o = p.stop(policy::kill_with(SIGTERM, 10s));
    CHECK(o.status == sp::exit_status::exited(3));
    CHECK(o.killed);
    auto again = p.stop(policy{});  // ended: nothing to send
    CHECK_FALSE(again.killed);
    CHECK(again.status == sp::exit_status::exited(3));
  }
}

TEST_CASE("timeout_policy prints what it does") {
  CHECK(sp::timeout_policy{}.to_string() == "SIGKILL");
  CHECK(sp::timeout_policy::kill_with(SIGTERM, 2s).to_string() == "SIGTERM, then SIGKILL after 2000 ms");
  CHECK(sp::timeout_policy::kill_with(SIGKILL, 2s).to_string() == "SIGKILL");
  CHECK(sp::timeout_policy::leave_running().to_string() == "leave running");
  std::ostringstream os;
  os << sp::timeout_policy::kill_with(SIGINT, 500ms);
  CHECK(os.str() == "SIGINT, then SIGKILL after 500 ms");
  CHECK(sp::timeout_policy{} == sp::timeout_policy::kill_with(SIGKILL));
}
