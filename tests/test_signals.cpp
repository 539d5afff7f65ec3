#include <catch2/catch.hpp>

#include <array>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <thread>

#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <subprocess/signals.hpp>
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;

#if defined(__SANITIZE_THREAD__)
constexpr bool under_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool under_tsan = true;
#else
constexpr bool under_tsan = false;
#endif
#else
constexpr bool under_tsan = false;
#endif
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// sp_helper running `actions`, then "ready" and a long sleep; returns once the
// child has printed "ready", so its signal setup is in place.
sp::process ready_child(std::vector<std::string> actions, bool group = false) {
  actions.insert(actions.end(), {"ready", "sleep", "60000"});
  auto c = testing::helper(std::move(actions)).out(sp::pipe);
  if (group) c.new_process_group();
  auto p = c.spawn();
  REQUIRE(p.out().read_line() == "ready");
  return p;
}

bool blocked_here(int sig) {
  sigset_t m;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &m);
  return sigismember(&m, sig) == 1;
}

std::vector<int> blocked_list() {
  std::vector<int> v;
  for (int s = 1; s <= SIGRTMAX; ++s)
    if (blocked_here(s)) v.push_back(s);
  return v;
}

// A process that is not our child (a grandchild), watched through a pidfd. The
// guard SIGKILLs it when it goes, so a failing test never leaves one behind.
struct foreign_process {
  sp::detail::unique_fd fd;
  explicit foreign_process(const std::optional<std::string>& pid_line)
      : fd(sp::detail::sys::pidfd_open(pid_line ? std::stoi(*pid_line) : -1)) {
    REQUIRE(fd);
  }
  foreign_process(const foreign_process&) = delete;
  ~foreign_process() {
    if (fd) sp::detail::sys::pidfd_send_signal(fd.get(), SIGKILL);
  }
};

// True once it has exited (it is not our child: there is no waitpid for it).
bool gone_within(const foreign_process& p, std::chrono::milliseconds d) {
  return sp::detail::poll_one(p.fd.get(), POLLIN, sp::detail::clock::now() + d) != 0;
}

long long ms(clk::duration d) { return std::chrono::duration_cast<milliseconds>(d).count(); }

}  // namespace

// ------------------------------------------------------------------ names ----

TEST_CASE("signal_name gives the kernel's names") {
  CHECK(sp::signal_name(SIGTERM) == "SIGTERM");
  CHECK(sp::signal_name(SIGKILL) == "SIGKILL");
  CHECK(sp::signal_name(SIGINT) == "SIGINT");
  CHECK(sp::signal_name(SIGCHLD) == "SIGCHLD");  // not the alias SIGCLD
  CHECK(sp::signal_name(SIGABRT) == "SIGABRT");  // not the alias SIGIOT
  CHECK(sp::signal_name(SIGRTMIN) == "SIGRTMIN");
  CHECK(sp::signal_name(SIGRTMIN + 3) == "SIGRTMIN+3");
  CHECK(sp::signal_name(SIGRTMAX) == "SIGRTMAX");
  SECTION("numbers without a name never throw") {
    CHECK(sp::signal_name(0) == "signal 0");
    CHECK(sp::signal_name(32) == "signal 32");
    CHECK(sp::signal_name(99) == "signal 99");
    CHECK(sp::signal_name(-1) == "signal -1");
  }
}

TEST_CASE("signal_number reads names with or without SIG, in any case, and numbers") {
  for (const char* s : {"SIGTERM", "TERM", "sigterm", "term", "SigTerm", "15"}) {
    INFO(s);
    CHECK(sp::signal_number(s) == SIGTERM);
  }
  CHECK(sp::signal_number("SIGKILL") == 9);
  CHECK(sp::signal_number("hup") == SIGHUP);
  CHECK(sp::signal_number("SIGIOT") == SIGABRT);
  CHECK(sp::signal_number("CLD") == SIGCHLD);
  CHECK(sp::signal_number("SIGPOLL") == SIGIO);
  CHECK(sp::signal_number("SIGRTMIN") == SIGRTMIN);
  CHECK(sp::signal_number("RTMIN+2") == SIGRTMIN + 2);
  CHECK(sp::signal_number("sigrtmax-1") == SIGRTMAX - 1);
  CHECK(sp::signal_number("SIGRTMAX") == SIGRTMAX);
  CHECK(sp::signal_number(std::to_string(SIGRTMAX)) == SIGRTMAX);

  SECTION("every Linux signal survives name -> number and number -> number") {
    int checked = 0;
    for (int s = 1; s <= SIGRTMAX; ++s) {
      INFO("signal " << s);
      CHECK(sp::signal_number(std::to_string(s)) == s);
      if (s > SIGSYS && s < SIGRTMIN) continue;  // 32, 33: glibc's own, no name
      CHECK(sp::signal_number(sp::signal_name(s)) == s);
      CHECK(sp::signal_name(s).rfind("SIG", 0) == 0);
      ++checked;
    }
    CHECK(checked == SIGRTMAX - (SIGRTMIN - SIGSYS - 1));
  }
  SECTION("anything else is an argument_error that quotes the input") {
    for (std::string bad : std::vector<std::string>{"SIGFOO", "", "SIG", "0", "65", "-1", "1000", " TERM", "TERM ",
                            "SIGSIGTERM", "RTMIN+", "RTMIN-1", "RTMAX+1", "SIGRTMIN+31",
                            "SIGRTMAX-31", "SIGRTMIN+x", std::string("TERM\0x", 6)}) {
      INFO("input: " << bad);
      CHECK_THROWS_AS(sp::signal_number(bad), sp::argument_error);
      try {
        sp::signal_number(bad);
      } catch (const sp::argument_error& e) {
        std::string shown = bad;
        if (auto nul = shown.find('\0'); nul != std::string::npos) shown.replace(nul, 1, "\\0");
        CHECK_THAT(e.what(), Catch::Contains("'" + shown + "'"));
      }
    }
  }
}

// -------------------------------------------------------------- terminate ----

TEST_CASE("terminate: SIGTERM, then SIGKILL decided by whether the child has exited") {
  SECTION("a child that ignores SIGTERM is SIGKILLed after the grace period, within a margin") {
    auto p = ready_child({"ignore-term"});
    auto t0 = clk::now();
    auto st = p.terminate(500ms);
    auto took = clk::now() - t0;
    CHECK(st.signal() == SIGKILL);
    CHECK(took >= 500ms);
    CHECK(took < 500ms + 1500ms);
  }
  SECTION("a child that exits on SIGTERM is not SIGKILLed and not kept waiting") {
    auto p = ready_child({"term-exits-after", "0"});
    auto t0 = clk::now();
    CHECK(p.terminate(10s) == sp::exit_status::exited(0));
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("a stopped child still gets to run its SIGTERM handler (SIGCONT follows)") {
    auto p = testing::helper({"term-exits-after", "0", "ready", "stop-self", "sleep", "60000"})
                 .out(sp::pipe)
                 .spawn();
    REQUIRE(p.out().read_line() == "ready");
    siginfo_t info{};
    REQUIRE(sp::detail::sys::waitid(P_PID, static_cast<id_t>(p.pid()), &info, WSTOPPED | WNOWAIT) == 0);
    REQUIRE(info.si_code == CLD_STOPPED);
    auto t0 = clk::now();
    CHECK(p.terminate(10s) == sp::exit_status::exited(0));
    CHECK(clk::now() - t0 < 5s);
  }
}

TEST_CASE("a grandchild in the child's process group is gone after signal_group / terminate") {
  auto grandchild_of = [](sp::process& p) { return foreign_process(p.out().read_line()); };
  SECTION("signal_group(SIGTERM)") {
    auto p = testing::helper({"grandchild-pid", "sleep", "60000"}).new_process_group().out(sp::pipe).spawn();
    auto g = grandchild_of(p);
    CHECK(p.signal_group(SIGTERM));
    CHECK(p.wait().signal() == SIGTERM);
    CHECK(gone_within(g, 10s));
  }
  SECTION("terminate: the whole group takes SIGTERM") {
    auto p = testing::helper({"grandchild-pid", "ready", "sleep", "60000"}).new_process_group().out(sp::pipe).spawn();
    auto g = grandchild_of(p);
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    CHECK(p.terminate(10s).signal() == SIGTERM);
    CHECK(gone_within(g, 10s));
    CHECK(clk::now() - t0 < 5s);  // nobody needed the deadline
  }
  SECTION("terminate: a grandchild that ignores SIGTERM is SIGKILLed at the deadline") {
    // The grandchild is forked while SIGTERM is ignored; then the leader installs
    // a handler that exits 0. The leader ends gracefully, its child does not.
    auto p = testing::helper({"ignore-term", "grandchild-pid", "term-exits-after", "0", "ready", "sleep", "60000"})
                 .new_process_group()
                 .out(sp::pipe)
                 .spawn();
    auto g = grandchild_of(p);
    REQUIRE(p.out().read_line() == "ready");
    auto t0 = clk::now();
    CHECK(p.terminate(400ms) == sp::exit_status::exited(0));
    auto took = clk::now() - t0;
    CHECK(took >= 400ms);
    CHECK(took < 400ms + 1500ms);
    CHECK(gone_within(g, 10s));
  }
}

// --------------------------------------------------------------- shutdown ----

TEST_CASE("shutdown with SIGCHLD ignored: a discarded status costs nobody their signal or grace") {
  // The kernel reaps every child itself and discards its status: try_wait() throws
  // ECHILD for a child that has exited. shutdown() must still signal, wait for and
  // SIGKILL the others, and say which statuses it could not get.
  testing::sigchld_discarding ignored;
  std::vector<sp::process> ps;
  ps.push_back(testing::helper({"exit", "3"}).spawn());  // gone before shutdown starts
  ps.push_back(ready_child({"term-exits-after", "0"}));
  ps.push_back(ready_child({"ignore-term"}));
  REQUIRE(sp::detail::poll_one(ps[0].pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  auto r = sp::shutdown(ps, 300ms);
  REQUIRE(r.processes.size() == 3);
  CHECK_FALSE(r.processes[0].status);  // discarded by the kernel
  CHECK_FALSE(r.processes[0].was_running);
  CHECK_FALSE(r.processes[1].status);
  CHECK(r.processes[1].was_running);
  CHECK_FALSE(r.processes[1].needed_sigkill);  // SIGTERM reached it, it exited
  CHECK(r.processes[1].exited_after < 300ms);
  CHECK(r.processes[2].needed_sigkill);        // SIGTERM ignored: SIGKILL at the deadline
  CHECK(r.processes[2].exited_after >= 300ms);
  CHECK(r.killed_count() == 1);
  CHECK_THAT(sp::to_string(r.processes[0]), Catch::Contains("status discarded by the kernel"));
}

TEST_CASE("shutdown: one deadline for many processes") {
  SECTION("each entry says how it ended and whether it needed SIGKILL") {
    std::vector<sp::process> ps;
    ps.push_back(ready_child({"term-exits-after", "0"}));
    ps.push_back(ready_child({"ignore-term"}));
    ps.push_back(testing::helper({"exit", "3"}).spawn());
    // The third has exited (pidfd readable) but is not reaped yet.
    REQUIRE(sp::detail::poll_one(ps[2].pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
    auto r = sp::shutdown(ps, 500ms);
    REQUIRE(r.processes.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(r.processes[i].pid == ps[i].pid());
      CHECK(r.processes[i].command == ps[i].command_line());
    }
    CHECK(r.processes[0].status == sp::exit_status::exited(0));
    CHECK(r.processes[0].was_running);
    CHECK_FALSE(r.processes[0].needed_sigkill);
    CHECK(r.processes[0].exited_after < 500ms);
    CHECK(r.processes[1].status->signal() == SIGKILL);
    CHECK(r.processes[1].needed_sigkill);
    CHECK(r.processes[1].exited_after >= 500ms);
    CHECK(r.processes[2].status == sp::exit_status::exited(3));
    CHECK_FALSE(r.processes[2].was_running);
    CHECK_FALSE(r.processes[2].needed_sigkill);
    CHECK(r.killed_count() == 1);
    CHECK_FALSE(r.all_graceful());
    CHECK(r.elapsed >= 500ms);
    CHECK(r.elapsed < 500ms + 1500ms);
    for (auto& p : ps) CHECK(p.status());  // all reaped
  }
  SECTION("it returns as soon as everyone has exited") {
    std::vector<sp::process> ps;
    for (int i = 0; i < 3; ++i) ps.push_back(ready_child({"term-exits-after", "0"}));
    auto t0 = clk::now();
    auto r = sp::shutdown(ps, 20s);
    CHECK(clk::now() - t0 < 5s);
    CHECK(r.all_graceful());
    for (auto& e : r.processes) CHECK(e.status == sp::exit_status::exited(0));
  }
  SECTION("a graceful exit that writes more than a pipe holds is drained, not killed") {
    std::vector<sp::process> ps;
    ps.push_back(ready_child({"term-writes", "1048576"}));
    auto r = sp::shutdown(ps, 20s);
    CHECK(r.processes[0].status == sp::exit_status::exited(0));
    CHECK_FALSE(r.processes[0].needed_sigkill);
    CHECK(ps[0].out().read_all().size() == 1048576);
  }
  SECTION("a group counts until its last member: the leader exits, a grandchild is SIGKILLed") {
    std::vector<sp::process> ps;
    auto c = testing::helper({"ignore-term", "grandchild-pid", "term-exits-after", "0", "ready", "sleep", "60000"})
                 .new_process_group()
                 .out(sp::pipe);
    ps.push_back(c.spawn());
    foreign_process g(ps[0].out().read_line());
    REQUIRE(ps[0].out().read_line() == "ready");
    auto r = sp::shutdown(ps, 400ms);
    CHECK(r.processes[0].status == sp::exit_status::exited(0));
    CHECK(r.processes[0].needed_sigkill);
    CHECK(r.elapsed >= 400ms);
    CHECK(gone_within(g, 10s));
  }
  SECTION("another polite signal") {
    std::vector<sp::process> ps;
    ps.push_back(ready_child({}));
    auto r = sp::shutdown(ps, 10s, {.signal = SIGINT});
    CHECK(r.processes[0].status->signal() == SIGINT);
  }
  SECTION("ranges of pointers, smart pointers, and a braced list") {
    auto a = ready_child({});
    auto b = ready_child({});
    std::vector<sp::process*> ptrs{&a, &b};
    CHECK(sp::shutdown(ptrs, 5s).processes.size() == 2);
    auto c = ready_child({});
    auto d = ready_child({});
    CHECK(sp::shutdown({&c, &d}, 5s).processes[1].status->signal() == SIGTERM);
    std::array<std::unique_ptr<sp::process>, 2> owned{std::make_unique<sp::process>(ready_child({})),
                                                       std::make_unique<sp::process>(ready_child({}))};
    CHECK(sp::shutdown(owned, 5s).all_graceful());
    std::vector<sp::process> v;
    v.push_back(ready_child({}));
    CHECK(sp::shutdown(std::span<sp::process>(v), 5s).processes[0].status->signal() == SIGTERM);
  }
  SECTION("bad input is rejected before anything is sent") {
    auto a = ready_child({});
    sp::process empty;
    std::vector<sp::process*> with_null{&a, nullptr};
    CHECK_THROWS_AS(sp::shutdown({&a}, -1ms), sp::argument_error);
    CHECK_THROWS_AS(sp::shutdown(with_null, 1s), sp::argument_error);
    CHECK_THROWS_AS(sp::shutdown({&a, &empty}, 1s), sp::argument_error);
    CHECK_THROWS_AS(sp::shutdown({&a, &a}, 1s), sp::argument_error);
    CHECK_THROWS_AS(sp::shutdown({&a}, 1s, {.signal = 0}), sp::argument_error);
    CHECK_FALSE(a.wait_for(100ms).has_value());  // still running: nothing was sent
  }
}

TEST_CASE("shutdown of 50 children, half ignoring SIGTERM, takes one grace period, not fifty") {
  constexpr auto grace = 1s;
  std::vector<sp::process> ps;
  for (int i = 0; i < 50; ++i) ps.push_back(ready_child(i % 2 ? std::vector<std::string>{"ignore-term"}
                                                               : std::vector<std::string>{"term-exits-after", "0"}));
  auto t0 = clk::now();
  auto r = sp::shutdown(ps, grace);
  auto took = clk::now() - t0;
  std::fprintf(stderr, "[measure] shutdown of 50 children (25 ignore SIGTERM): %lld ms, grace %lld ms\n",
               ms(took), ms(grace));
  CHECK(r.killed_count() == 25);
  milliseconds slowest_graceful{0};
  for (int i = 0; i < 50; ++i) {
    const auto& e = r.processes[static_cast<std::size_t>(i)];
    INFO("child " << i);
    if (i % 2) {
      CHECK(e.needed_sigkill);
      CHECK(e.status->signal() == SIGKILL);
    } else {
      CHECK_FALSE(e.needed_sigkill);
      CHECK(e.status == sp::exit_status::exited(0));
      slowest_graceful = std::max(slowest_graceful, e.exited_after);
    }
  }
  std::fprintf(stderr, "[measure] slowest graceful exit after SIGTERM: %lld ms\n",
               static_cast<long long>(slowest_graceful.count()));
  CHECK(slowest_graceful < grace);
  CHECK(took >= grace);
  CHECK(took < grace + 1500ms);  // one after another would take 25 grace periods
}

// ------------------------------------------------------------- signal_set ----

TEST_CASE("signal_set receives SIGINT and SIGTERM sent to the test process, in order") {
  struct sigaction before_term {};
  ::sigaction(SIGTERM, nullptr, &before_term);
  sp::signal_set set{SIGINT, SIGTERM};
  CHECK(blocked_here(SIGINT));
  CHECK(blocked_here(SIGTERM));
  CHECK(set.contains(SIGTERM));
  CHECK_FALSE(set.contains(SIGHUP));
  CHECK(set.signals() == std::vector<int>{SIGINT, SIGTERM});
  struct sigaction after_term {};
  ::sigaction(SIGTERM, nullptr, &after_term);
  CHECK(after_term.sa_handler == before_term.sa_handler);  // no handler installed

  SECTION("kill(getpid()), one at a time") {
    REQUIRE(::kill(::getpid(), SIGINT) == 0);
    auto a = set.wait_for(5s);
    REQUIRE(a);
    CHECK(a->signal == SIGINT);
    CHECK(a->name() == "SIGINT");
    CHECK(a->code == SI_USER);
    CHECK(a->sender_pid == ::getpid());
    CHECK(a->sender_uid == ::getuid());
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    auto b = set.wait();
    CHECK(b.signal == SIGTERM);
    CHECK_FALSE(set.try_read());
  }
  SECTION("both pending: SIGINT then SIGTERM") {
    REQUIRE(::kill(::getpid(), SIGINT) == 0);
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    CHECK(set.wait().signal == SIGINT);
    CHECK(set.wait().signal == SIGTERM);
    CHECK(set.read_pending().empty());
  }
  SECTION("read_pending returns everything pending, lowest number first") {
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    REQUIRE(::kill(::getpid(), SIGINT) == 0);
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);  // standard signals do not queue
    auto all = set.read_pending();
    REQUIRE(all.size() == 2);
    CHECK(all[0].signal == SIGINT);
    CHECK(all[1].signal == SIGTERM);
  }
  SECTION("pthread_kill to this thread") {
    REQUIRE(::pthread_kill(::pthread_self(), SIGTERM) == 0);
    auto s = set.try_read();
    REQUIRE(s);
    CHECK(s->signal == SIGTERM);
    CHECK(s->code == SI_TKILL);
  }
  SECTION("sent from another thread, which inherited the blocked mask") {
    bool thread_blocked = false;
    std::thread t([&] {
      thread_blocked = blocked_here(SIGTERM);
      ::kill(::getpid(), SIGTERM);
    });
    t.join();
    CHECK(thread_blocked);
    auto s = set.wait_for(5s);
    REQUIRE(s);
    CHECK(s->signal == SIGTERM);
  }
  SECTION("wait_for times out; try_read and read_pending never block") {
    auto t0 = clk::now();
    CHECK_FALSE(set.wait_for(150ms));
    CHECK(clk::now() - t0 >= 150ms);
    CHECK_FALSE(set.try_read());
    CHECK(set.read_pending().empty());
    CHECK_THROWS_AS(set.wait_for(-1ms), sp::argument_error);
  }
  SECTION("the fd is close-on-exec and non-blocking, and readable when a signal is pending") {
    CHECK((::fcntl(set.fd(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK((::fcntl(set.fd(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(sp::detail::poll_one(set.fd(), POLLIN, sp::detail::clock::now()) == 0);
    ::kill(::getpid(), SIGINT);
    CHECK(sp::detail::poll_one(set.fd(), POLLIN, sp::detail::clock::now() + 5s) != 0);
    CHECK(set.read_pending().size() == 1);
  }
}

TEST_CASE("signal_set: realtime signals queue, in order, with their values") {
  const int rt = SIGRTMIN + 1;
  sp::signal_set set{rt};
  for (int v = 1; v <= 3; ++v) {
    sigval val{};
    val.sival_int = v * 10;
    REQUIRE(::sigqueue(::getpid(), rt, val) == 0);
  }
  auto all = set.read_pending();
  REQUIRE(all.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(all[static_cast<std::size_t>(i)].signal == rt);
    CHECK(all[static_cast<std::size_t>(i)].code == SI_QUEUE);
    CHECK(all[static_cast<std::size_t>(i)].value == (i + 1) * 10);
  }
  CHECK(all[0].name() == "SIGRTMIN+1");
}

TEST_CASE("signal_set restores the signal mask when destroyed") {
  SECTION("only what it blocked is unblocked") {
    const auto before = blocked_list();
    sp::block_signals_in_this_thread({SIGUSR1});  // blocked before the set exists
    {
      sp::signal_set set{SIGUSR1, SIGUSR2};
      CHECK(blocked_here(SIGUSR1));
      CHECK(blocked_here(SIGUSR2));
    }
    CHECK(blocked_here(SIGUSR1));  // it was blocked before: stays blocked
    CHECK_FALSE(blocked_here(SIGUSR2));
    sp::unblock_signals_in_this_thread({SIGUSR1});
    CHECK(blocked_list() == before);
  }
  SECTION("a signal pending before the set was created is read first") {
    sp::block_signals_in_this_thread({SIGUSR1});
    REQUIRE(::raise(SIGUSR1) == 0);  // pending, blocked
    {
      sp::signal_set set{SIGUSR1};
      auto s = set.try_read();
      REQUIRE(s);
      CHECK(s->signal == SIGUSR1);
    }
    sp::unblock_signals_in_this_thread({SIGUSR1});
  }
  SECTION("bad signals are an argument_error and leave the mask alone") {
    const auto before = blocked_list();
    auto make = [](std::initializer_list<int> l) { sp::signal_set s(l); };
    CHECK_THROWS_AS(make({}), sp::argument_error);
    CHECK_THROWS_AS(make({SIGKILL}), sp::argument_error);
    CHECK_THROWS_AS(make({SIGTERM, SIGSTOP}), sp::argument_error);
    CHECK_THROWS_AS(make({0}), sp::argument_error);
    CHECK_THROWS_AS(make({32}), sp::argument_error);
    CHECK_THROWS_AS(make({SIGRTMAX + 1}), sp::argument_error);
    CHECK_THROWS_AS(sp::block_signals_in_this_thread({SIGKILL}), sp::argument_error);
    CHECK_THROWS_WITH(make({SIGKILL}), Catch::Contains("SIGKILL"));
    CHECK(blocked_list() == before);
  }
}

namespace {

// Runs body() in a forked copy of this test program and returns how that copy ended
// (a wait status): a signal whose default action ends the process then ends only the
// copy. body() returns the copy's exit code.
template <class Body>
int in_forked_copy(Body body) {
  const pid_t c = ::fork();
  REQUIRE(c >= 0);
  if (c == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  int ws = 0;
  REQUIRE(::waitpid(c, &ws, 0) == c);
  return ws;
}

// A child of the calling process sends sig to it (a real sender, not raise()), and is
// reaped before this returns: the signal is pending once it does.
bool child_sends_to_parent(int sig) {
  const pid_t k = ::fork();
  if (k < 0) return false;
  if (k == 0) ::_exit(::kill(::getppid(), sig) == 0 ? 0 : 1);
  int ws = 0;
  return ::waitpid(k, &ws, 0) == k && WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

bool pending_here(int sig) {
  sigset_t p;
  ::sigpending(&p);
  return sigismember(&p, sig) == 1;
}

}  // namespace

TEST_CASE("signal_set: unread signals die with the set unless deliver_unread_on_destroy()") {
  SECTION("a SIGTERM, SIGUSR1 and queued realtime signals left unread do not end the process") {
    const int ws = in_forked_copy([] {
      {
        sp::signal_set set{SIGTERM, SIGUSR1, SIGRTMIN};
        if (!child_sends_to_parent(SIGTERM)) return 2;  // process-directed, from another process
        if (::raise(SIGUSR1) != 0) return 3;            // thread-directed
        for (int i = 0; i < 3; ++i)                     // realtime: three queued copies
          if (::sigqueue(::getpid(), SIGRTMIN, sigval{i}) != 0) return 4;
        if (!pending_here(SIGTERM) || !pending_here(SIGUSR1) || !pending_here(SIGRTMIN)) return 5;
      }  // the set goes: before the fix, unblocking SIGTERM here ended the process
      if (blocked_here(SIGTERM) || blocked_here(SIGUSR1) || blocked_here(SIGRTMIN)) return 6;
      if (pending_here(SIGTERM) || pending_here(SIGUSR1) || pending_here(SIGRTMIN)) return 7;
      return 0;
    });
    INFO("wait status " << ws);
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
  }
  SECTION("a signal blocked before the set existed stays pending and blocked") {
    const int ws = in_forked_copy([] {
      sp::block_signals_in_this_thread({SIGUSR2});
      {
        sp::signal_set set{SIGUSR2, SIGUSR1};
        if (!child_sends_to_parent(SIGUSR2)) return 2;
      }
      // Not ours to unblock, so not ours to discard either.
      return blocked_here(SIGUSR2) && pending_here(SIGUSR2) ? 0 : 3;
    });
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
  }
  SECTION("deliver_unread_on_destroy(): the default action happens at destruction") {
    if (under_tsan) {
      WARN("not checked under ThreadSanitizer, which defers signal handlers (Catch2's "
           "SIGTERM handler here) past the point checked; the other builds check it");
      return;
    }
    const int ws = in_forked_copy([] {
      {
        sp::signal_set set{SIGTERM};
        set.deliver_unread_on_destroy();
        if (!child_sends_to_parent(SIGTERM)) return 2;
      }
      return 0;  // not reached: SIGTERM ended us
    });
    CHECK(WIFSIGNALED(ws));
    CHECK(WTERMSIG(ws) == SIGTERM);
  }
  SECTION("deliver_unread_on_destroy(): a handler runs at destruction") {
    if (under_tsan) {
      WARN("not checked under ThreadSanitizer, which defers signal handlers past the "
           "point checked; the other builds check it");
      return;
    }
    const int ws = in_forked_copy([] {
      static volatile sig_atomic_t got = 0;
      struct sigaction sa {};
      sa.sa_handler = [](int) { got = got + 1; };
      ::sigaction(SIGUSR1, &sa, nullptr);
      {
        sp::signal_set set{SIGUSR1};
        set.deliver_unread_on_destroy();
        if (::raise(SIGUSR1) != 0) return 2;
        if (got != 0) return 3;
      }
      return got == 1 ? 0 : 4;
    });
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
  }
  SECTION("a signal read from the set is not delivered again") {
    const int ws = in_forked_copy([] {
      {
        sp::signal_set set{SIGTERM};
        set.deliver_unread_on_destroy();
        if (!child_sends_to_parent(SIGTERM)) return 2;
        auto s = set.try_read();
        if (!s || s->signal != SIGTERM) return 3;
      }
      return 0;
    });
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
  }
}

TEST_CASE("children never inherit the parent's ignored SIGPIPE or a signal_set's blocked signals") {
  struct sigaction ign {}, old_pipe {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old_pipe);
  sp::signal_set set{SIGINT, SIGTERM, SIGUSR1, SIGRTMIN + 2};
  for (auto b : {sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork}) {
    INFO("backend " << static_cast<int>(b));
    auto out = sp::run(testing::helper({"print-signals"}).backend(b)).out;
    CHECK(out == "ignored:\nblocked:\n");
    // And SIGTERM still ends such a child the default way.
    auto p = testing::helper({"ready", "sleep", "60000"}).out(sp::pipe).backend(b).spawn();
    REQUIRE(p.out().read_line() == "ready");
    CHECK(p.signal(SIGTERM));
    CHECK(p.wait().signal() == SIGTERM);
  }
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
}

// ---------------------------------------------------------- the child side ----

TEST_CASE("a worker handles SIGTERM with its own signal_set: finishes the job, reports, exits 0") {
  auto sig = GENERATE(SIGTERM, SIGINT);
  auto p = testing::helper({"graceful-worker", "300"}).out(sp::pipe).spawn();
  REQUIRE(p.out().read_line() == "ready");
  auto t0 = clk::now();
  REQUIRE(p.signal(sig));
  std::vector<std::string> lines;
  while (auto l = p.out().read_line_for(10s)) lines.push_back(*l);
  auto st = p.wait_for(10s);
  REQUIRE(st);
  CHECK(*st == sp::exit_status::exited(0));
  CHECK(clk::now() - t0 < 5s);
  REQUIRE(lines.size() >= 2);
  // The job in hand was finished before the signal was acted on.
  const std::string jobs = lines[lines.size() - 2].substr(4, lines[lines.size() - 2].find(" done") - 4);
  CHECK(lines[lines.size() - 2] == "job " + jobs + " done");
  CHECK(lines.back() == "got " + sp::signal_name(sig) + " after " + jobs + " jobs");
}

// ------------------------------------------------------------- forwarding ----

TEST_CASE("forward_and_shutdown passes the signal on and stops every child") {
  sp::signal_set set{SIGINT, SIGTERM};
  SECTION("SIGTERM: forwarded, one deadline, SIGKILL for the one that ignores it") {
    std::vector<sp::process> ps;
    ps.push_back(ready_child({"term-exits-after", "0"}));
    ps.push_back(ready_child({}));
    ps.push_back(ready_child({"ignore-term"}));
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    auto r = sp::forward_and_shutdown(set, ps, 400ms);
    REQUIRE(r.received);
    CHECK(r.received->signal == SIGTERM);
    CHECK(r.received->sender_pid == ::getpid());
    CHECK_FALSE(r.forced_by_second_signal);
    CHECK(r.shutdown.processes[0].status == sp::exit_status::exited(0));
    CHECK(r.shutdown.processes[1].status->signal() == SIGTERM);
    CHECK(r.shutdown.processes[2].status->signal() == SIGKILL);
    CHECK(r.shutdown.processes[2].needed_sigkill);
    CHECK(r.shutdown.killed_count() == 1);
  }
  SECTION("SIGINT is forwarded as SIGINT") {
    auto a = ready_child({});
    auto b = ready_child({}, true);
    REQUIRE(::kill(::getpid(), SIGINT) == 0);
    auto r = sp::forward_and_shutdown(set, {&a, &b}, 5s);
    REQUIRE(r.received);
    CHECK(r.received->signal == SIGINT);
    CHECK(a.status()->signal() == SIGINT);
    CHECK(b.status()->signal() == SIGINT);
    CHECK(r.shutdown.all_graceful());
  }
  SECTION("children that all exit on their own: nothing received, nothing sent") {
    std::vector<sp::process> ps;
    for (int i = 0; i < 3; ++i) ps.push_back(testing::helper({"sleep", "100", "exit", std::to_string(i)}).spawn());
    auto r = sp::forward_and_shutdown(set, ps, 5s);
    CHECK_FALSE(r.received);
    for (int i = 0; i < 3; ++i) {
      const auto& e = r.shutdown.processes[static_cast<std::size_t>(i)];
      CHECK(e.status == sp::exit_status::exited(i));
      CHECK_FALSE(e.was_running);
      CHECK_FALSE(e.needed_sigkill);
    }
  }
  SECTION("a second signal during the grace period means: SIGKILL now") {
    auto p = ready_child({"ignore", std::to_string(SIGINT), "ignore", std::to_string(SIGTERM)});
    // Both pending: SIGINT is read first and forwarded, SIGTERM then cuts the grace short.
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    REQUIRE(::kill(::getpid(), SIGINT) == 0);
    auto t0 = clk::now();
    auto r = sp::forward_and_shutdown(set, {&p}, 30s);
    CHECK(clk::now() - t0 < 5s);
    REQUIRE(r.received);
    CHECK(r.received->signal == SIGINT);
    CHECK(r.forced_by_second_signal);
    CHECK(r.shutdown.processes[0].needed_sigkill);
    CHECK(p.status()->signal() == SIGKILL);
  }
  SECTION("a terminal's Ctrl-C is not sent again to children in our own process group") {
    // Fake the terminal: a SIGINT with si_code SI_KERNEL (allowed when sent to ourselves).
    auto same_group = ready_child({});
    auto own_group = ready_child({}, true);
    siginfo_t info{};
    info.si_signo = SIGINT;
    info.si_code = SI_KERNEL;
    REQUIRE(::syscall(SYS_rt_sigqueueinfo, ::getpid(), SIGINT, &info) == 0);
    auto r = sp::forward_and_shutdown(set, {&same_group, &own_group}, 300ms);
    REQUIRE(r.received);
    CHECK(r.received->from_kernel());
    // The terminal would have reached same_group itself; we did not, so it lived
    // until the deadline. own_group is in a group the terminal does not reach.
    CHECK(same_group.status()->signal() == SIGKILL);
    CHECK(r.shutdown.processes[0].needed_sigkill);
    CHECK(own_group.status()->signal() == SIGINT);
    CHECK_FALSE(r.shutdown.processes[1].needed_sigkill);
  }
  SECTION("a negative grace period is an argument_error") {
    auto p = ready_child({});
    CHECK_THROWS_AS(sp::forward_and_shutdown(set, {&p}, -1s), sp::argument_error);
  }
  CHECK(set.read_pending().empty());
}

// ------------------------------------------------- kill_on_parent_death ----

TEST_CASE("kill_on_parent_death delivers the chosen signal when the parent is SIGKILLed") {
  // helper -> grandchild (SIGTERM on parent death, prints "got SIGTERM" when it
  // comes). Both write to our pipe.
  auto p = testing::helper({"pdeath-run", std::to_string(SIGTERM), "term-exits-after", "0", "ready",
                            "sleep", "60000"})
               .out(sp::pipe)
               .spawn();
  // Its pid (from the helper) and "ready" (from the grandchild), in either order.
  auto first = p.out().read_line_for(10s), second = p.out().read_line_for(10s);
  REQUIRE(first);
  REQUIRE(second);
  if (*first == "ready") std::swap(first, second);
  REQUIRE(second == "ready");
  foreign_process g(first);
  CHECK_FALSE(gone_within(g, 0ms));
  p.kill();
  CHECK(p.wait().signal() == SIGKILL);
  CHECK(p.out().read_line_for(10s) == "got SIGTERM");
  CHECK(gone_within(g, 10s));
}
