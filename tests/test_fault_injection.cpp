// Fault injection: the library keeps its promises when system calls fail.
// Built with -DSUBPROCESS_FAULT_INJECTION (see tests/support/fault_injection.hpp);
// the leak listener still checks fds and children after every test case, and the
// sweeps below also check them after every single injected fault.
#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "fault_injection.hpp"
#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::faults::attempt;
using testing::faults::call;
using testing::faults::census;
using testing::faults::kind_faults;
using testing::faults::name;
using testing::faults::out_of;
using testing::faults::plan;
using testing::faults::scope;
using testing::faults::try_once;

namespace {

std::string numbered_lines(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "line " + std::to_string(i) + "\n";
  return s;
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string t = (fs::temp_directory_path() / "sp_fault_XXXXXX").string();
    path = ::mkdtemp(t.data());
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("EINTR on every read, write, poll, open and wait is retried transparently") {
  // Calls 1, 3, 5... of each kind fail with EINTR: every call is interrupted once
  // and only its retry gets through.
  plan p;
  for (call c : {call::read, call::write, call::poll, call::waitpid, call::waitid, call::epoll_wait,
                 call::open, call::sigtimedwait})
    p.fail_every(c, 2, EINTR);
  const std::string input = numbered_lines(30000);  // ~300 KB: many reads and writes

  SECTION("run() with input, stdout and stderr") {
    scope s(p);
    auto r = sp::run(testing::helper({"cat", "err", "done"}), {.input = input, .timeout = 60s});
    CHECK(r.success());
    CHECK(r.out == input);
    CHECK(r.err == "done\n");
  }
  SECTION("communicate() on a hand-spawned process") {
    scope s(p);
    auto q = sp::command{"sort", "-r"}.in(sp::pipe).out(sp::pipe).err(sp::pipe).spawn();
    auto r = sp::communicate(q, "b\na\nc\n", {.timeout = 60s});
    CHECK(r.out == "c\nb\na\n");
    CHECK(r.success());
  }
  SECTION("wait() drains output; wait_for() honours its deadline") {
    scope s(p);
    auto w = testing::helper({"out-bytes", "300000"}).out(sp::pipe).spawn();
    CHECK(w.wait().success());
    CHECK(w.out().read_all().size() == 300000);
    auto q = testing::helper({"sleep", "60000"}).spawn();
    auto t0 = clk::now();
    CHECK_FALSE(q.wait_for(200ms));
    auto dt = clk::now() - t0;
    CHECK(dt >= 200ms);
    CHECK(dt < 3s);
    q.kill();
    CHECK(q.wait().signal() == SIGKILL);
  }
  SECTION("read_line, read_line_for and write_all") {
    scope s(p);
    auto e = testing::helper({"echo-lines"}).in(sp::pipe).out(sp::pipe).spawn();
    for (int i = 0; i < 200; ++i) {
      e.in().write_all("line " + std::to_string(i) + "\n");
      auto l = e.out().read_line();
      REQUIRE(l);
      CHECK(*l == "line " + std::to_string(i));
    }
    auto t0 = clk::now();
    CHECK_FALSE(e.out().read_line_for(150ms));
    CHECK(clk::now() - t0 >= 150ms);
    CHECK_FALSE(e.out().eof());
    e.in().close();
    CHECK_FALSE(e.out().read_line());
    CHECK(e.wait().success());
  }
  SECTION("run() timeouts are still honoured") {
    scope s(p);
    auto t0 = clk::now();
    CHECK_THROWS_AS(sp::run(testing::helper({"out", "x", "sleep", "60000"}), {.timeout = 300ms}),
                    sp::timeout_error);
    auto dt = clk::now() - t0;
    CHECK(dt >= 300ms);
    CHECK(dt < 3s);
  }
  SECTION("stdio files and .env files are opened and read despite EINTR") {
    temp_dir d;
    {
      scope s(p);
      auto r = sp::run(testing::helper({"out", "to file"}).out(sp::file(d.path / "out.txt")));
      CHECK(r.success());
      auto again = sp::run(sp::command{"cat"}.in(sp::file(d.path / "out.txt")));
      CHECK(again.out == "to file\n");
      CHECK(p.injected(call::open) >= 2);
    }
    CHECK(p.injected(call::read) > 0);
  }
  INFO("injected: read " << p.injected(call::read) << ", write " << p.injected(call::write)
                         << ", poll " << p.injected(call::poll) << ", waitpid "
                         << p.injected(call::waitpid));
  CHECK(p.injected(call::read) > 0);
  CHECK(p.injected(call::poll) + p.injected(call::waitpid) > 0);
}

TEST_CASE("EINTR in the reaper thread never drops a detached child (regression)") {
  // Before the fix, the reaper took waitpid() == -1 (EINTR) for "gone" and
  // forgot the child, which then stayed a zombie.
  static plan p;  // static: the reaper thread may look at it after the scope ends
  p.clear();
  p.fail_every(call::waitpid, 1, EINTR, 5).fail_every(call::waitid, 1, EINTR, 5).fail_every(call::epoll_wait, 2, EINTR, 5);
  auto child = testing::helper({"sleep", "100"}).spawn();
  const pid_t pid = child.pid();
  child.detach();  // the child runs 100 ms more: the faults below hit the reaper's waitpid
  {
    scope s(p, scope::all_threads);
    for (int i = 0; i < 500 && sp::detail::reaper::instance().pending() > 0; ++i)
      std::this_thread::sleep_for(10ms);
  }
  CHECK(sp::detail::reaper::instance().pending() == 0);
  CHECK(p.injected(call::waitpid) + p.injected(call::waitid) > 0);  // waitid: through the pidfd
  for (auto k : testing::children()) CHECK(k.pid != pid);
}

TEST_CASE("a storm of real signals without SA_RESTART changes nothing") {
  // The same promise as above with the kernel's own EINTRs: SIGALRM every 200 us.
  static std::atomic<long> alarms{0};
  alarms = 0;
  struct sigaction sa {
  }, old{};
  sa.sa_handler = [](int) { alarms.fetch_add(1, std::memory_order_relaxed); };
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls fail with EINTR
  REQUIRE(::sigaction(SIGALRM, &sa, &old) == 0);
  struct storm {
    storm() {
      itimerval it{{0, 200}, {0, 200}};
      ::setitimer(ITIMER_REAL, &it, nullptr);
    }
    ~storm() {
      itimerval off{};
      ::setitimer(ITIMER_REAL, &off, nullptr);
    }
  };
  const std::string input = numbered_lines(30000);
  {
    storm s;
    for (int i = 0; i < 5; ++i) {
      auto r = sp::run(testing::helper({"sleep", "20", "cat"}), {.input = input, .timeout = 60s});
      CHECK(r.out == input);
    }
    auto q = testing::helper({"sleep", "60000"}).spawn();
    auto t0 = clk::now();
    CHECK_FALSE(q.wait_for(300ms));
    CHECK(clk::now() - t0 < 3s);
    auto t1 = clk::now();
    CHECK_THROWS_AS(sp::run(testing::helper({"sleep", "60000"}), {.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t1 < 3s);
  }
  ::sigaction(SIGALRM, &old, nullptr);
  INFO("SIGALRMs delivered: " << alarms.load());
  CHECK(alarms.load() > 100);
}

TEST_CASE("spurious EAGAIN from read and write is waited out, not an error") {
  plan p;
  p.fail_every(call::read, 2, EAGAIN).fail_every(call::write, 2, EAGAIN);
  scope s(p);
  const std::string input = numbered_lines(20000);
  auto r = sp::run(testing::helper({"cat"}), {.input = input, .timeout = 60s});
  CHECK(r.out == input);
  auto e = testing::helper({"echo-lines"}).in(sp::pipe).out(sp::pipe).spawn();
  e.in().write_all("hello\n");
  CHECK(e.out().read_line() == "hello");
  e.in().close();
  CHECK(e.wait().success());
  CHECK(p.injected(call::read) > 0);
  CHECK(p.injected(call::write) > 0);
}

TEST_CASE("every fd the spawn path creates can fail: a clear spawn_error, nothing leaked") {
  temp_dir d;
  struct fd_pair {
    int fds[2] = {-1, -1};
    fd_pair() { REQUIRE(::pipe2(fds, O_CLOEXEC) == 0); }
    ~fd_pair() {
      ::close(fds[0]);
      ::close(fds[1]);
    }
  } extra_pipe;
  const int* extra = extra_pipe.fds;
  // A relative program path with cwd() also exercises getcwd.
  std::string rel = fs::relative(testing::helper_path()).string();
  if (rel.find('/') == std::string::npos) rel = "./" + rel;
  struct config {
    std::string name;
    std::function<sp::command()> make;
    // kill_on_parent_death spawns on the library's spawner thread: count and fail
    // the calls of every thread.
    scope::who who = scope::this_thread;
  };
  std::vector<config> configs = {
      {"3 pipes + ipc + mapped fd, posix_spawn",
       [&] {
         return testing::helper({"count-stdin"})
             .in(sp::pipe)
             .out(sp::pipe)
             .err(sp::pipe)
             .ipc(3)
             .map_fd(5, extra[0])
             .backend(sp::spawn_backend::posix_spawn);
       }},
      {"3 pipes + ipc + mapped fd, clone_vfork",
       [&] {
         return testing::helper({"count-stdin"})
             .in(sp::pipe)
             .out(sp::pipe)
             .err(sp::pipe)
             .ipc(3)
             .map_fd(5, extra[0])
             .backend(sp::spawn_backend::clone_vfork);
       }},
      {"null + file + merge + cwd + env, posix_spawn",
       [&] {
         return sp::command{rel, "out", "x"}
             .in(sp::null)
             .out(sp::file(d.path / "o"))
             .err(sp::merge_with_out)
             .cwd(d.path)
             .env(sp::environment::inherit().set("A", "1"))
             .backend(sp::spawn_backend::posix_spawn);
       }},
      {"null + file + merge + cwd + group, clone_vfork",
       [&] {
         return sp::command{rel, "out", "x"}
             .in(sp::null)
             .out(sp::file(d.path / "o", sp::file_mode::append))
             .err(sp::merge_with_out)
             .cwd(d.path)
             .new_process_group()
             .backend(sp::spawn_backend::clone_vfork);
       }},
      {"program found in PATH, kill_on_parent_death",
       [&] { return sp::command{"true"}.in(sp::pipe).out(sp::pipe).kill_on_parent_death(); },
       scope::all_threads}};
  // The errnos each kind is failed with, and which of its calls must stop the
  // spawn when they fail (-1: all; 1: only the first, e.g. blocking signals before
  // the clone, not restoring them after; 0: none, a failure may be tolerated).
  const std::vector<kind_faults> kinds = {
      out_of(call::pipe2),
      out_of(call::open),
      out_of(call::dup),
      out_of(call::socketpair),
      out_of(call::pidfd_open),
      out_of(call::clone),
      out_of(call::posix_spawn),
      out_of(call::mmap),
      {call::sigmask, {EINVAL}, 1},
      {call::fcntl, {EBADF, EINVAL}, -1},
      {call::access, {EIO, ENOMEM}, -1},
      {call::stat, {EIO, ENOMEM}, -1},
      {call::getcwd, {ENOMEM}, -1},
      {call::getrlimit, {EFAULT}, 0},
      {call::munmap, {EINVAL}, 0},
      {call::close, {EIO}, 0},
  };
  long faults = 0;
  for (const auto& cfg : configs) {
    auto op = [&] {
      auto p = cfg.make().spawn();
      p.in().close();
      p.wait();
    };
    auto counts = census(op, cfg.who);
    CHECK(counts.count(call::posix_spawn) + counts.count(call::clone) == 1);
    for (const auto& k : kinds) {
      auto it = counts.find(k.kind);
      if (it == counts.end()) continue;
      for (long n = 1; n <= it->second; ++n) {
        for (int err : k.errs) {
          auto fds_before = testing::open_fds();
          plan p;
          p.fail_nth(k.kind, n, err);
          attempt a = try_once(p, op, cfg.who);
          INFO(cfg.name << ": " << name(k.kind) << " call " << n << " of " << it->second
                        << " fails with " << std::error_code(err, std::system_category()).message()
                        << " -> " << (a.ok ? "ok" : a.what));
          faults += p.injected(k.kind);
          // Every must_fail kind is only called on the way to the child: its failure
          // must stop the spawn with that errno. The others may be tolerated.
          if (k.must_fail < 0 || n <= k.must_fail) {
            CHECK(a.spawn_error);
            CHECK(a.code == err);
          } else {
            CHECK((a.ok || a.spawn_error));
          }
          CHECK((a.ok || a.what.find("cannot start") != std::string::npos));
          CHECK(testing::open_fds() == fds_before);
          CHECK(testing::children().empty());
        }
      }
    }
  }
  WARN("spawn-path faults injected: " << faults);
  CHECK(faults > 50);
}

TEST_CASE("ENOMEM/EAGAIN from posix_spawn and clone: clear error, no half-started child") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  const call k = b == sp::spawn_backend::posix_spawn ? call::posix_spawn : call::clone;
  for (int err : {ENOMEM, EAGAIN}) {
    sigset_t mask_before, mask_after;
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_before);
    plan p;
    p.fail_nth(k, 1, err);
    scope s(p);
    try {
      testing::helper({"out", "x"}).in(sp::pipe).out(sp::pipe).err(sp::pipe).backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code().value() == err);
      CHECK(e.step() == "spawn");
      CHECK_THAT(e.what(), Catch::Contains("cannot start") && Catch::Contains("sp_helper"));
    }
    CHECK(testing::children().empty());  // at once: nothing to wait for
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_after);
    for (int sig = 1; sig < NSIG; ++sig)
      CHECK(sigismember(&mask_before, sig) == sigismember(&mask_after, sig));
  }
  SECTION("pidfd_open failing after posix_spawn: the child is killed and reaped") {
    plan p;
    p.fail_nth(call::pidfd_open, 1, EMFILE);
    scope s(p);
    try {
      testing::helper({"sleep", "60000"}).backend(sp::spawn_backend::posix_spawn).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(e.step() == "pidfd_open");
    }
    CHECK(testing::children().empty());
  }
}

TEST_CASE("the clone child's setgroups, setgid, setuid, setrlimit, setpriority, sched_setaffinity can fail: a spawn_error naming the step") {
  // Settings any user may apply (its own ids, limits, nice value and CPUs), so
  // only the injected fault can make them fail. setgroups needs CAP_SETGID: not
  // root, it fails anyway, with the same step and errno.
  rlimit core{};
  REQUIRE(::getrlimit(RLIMIT_CORE, &core) == 0);
  const int nice = ::getpriority(PRIO_PROCESS, 0);
  cpu_set_t set;
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &set)) ++cpu;
  struct kase {
    call kind;
    sp::command cmd;
    const char* step;
  };
  const sp::command t{"true"};
  const kase cases[] = {
      {call::setgroups, sp::command(t).groups({::getegid()}), "setgroups"},
      {call::setgid, sp::command(t).gid(::getgid()), "setgid"},
      {call::setuid, sp::command(t).uid(::getuid()), "setuid"},
      {call::setrlimit, sp::command(t).limit(RLIMIT_CORE, core.rlim_cur, core.rlim_max), "setrlimit"},
      {call::setpriority, sp::command(t).nice(nice), "setpriority"},
      {call::setaffinity, sp::command(t).cpu_affinity({cpu}), "sched_setaffinity"},
  };
  for (const kase& k : cases) {
    INFO(name(k.kind));
    if (k.kind != call::setgroups || ::geteuid() == 0) CHECK(sp::run(k.cmd).status.success());
    for (bool on_spawner : {false, true}) {
      plan p;
      p.fail_nth(k.kind, 1, EPERM);
      scope s(p);
      try {
        sp::command c = k.cmd;
        if (on_spawner) c.kill_on_parent_death();
        c.spawn();
        FAIL("no exception");
      } catch (const sp::spawn_error& e) {
        CHECK(e.step() == k.step);
        CHECK(e.code() == std::errc::operation_not_permitted);
        CHECK_THAT(e.what(), Catch::Contains("cannot start 'true': ") && Catch::Contains(k.step));
      }
      CHECK(p.injected(k.kind) == 1);
      CHECK(testing::children().empty());
    }
  }
}

TEST_CASE("any single failing call in run(): a subprocess::error or the right result, no leak") {
  const std::string input = "hello\n";
  auto op = [&] {
    auto r = sp::run(testing::helper({"cat", "err", "e"}), {.input = input, .timeout = 20s});
    if (r.out != input || r.err != "e\n" || !r.success()) throw std::runtime_error("wrong result");
  };
  auto counts = census(op);
  long faults = 0, attempts = 0;
  for (auto [kind, n_calls] : counts) {
    for (long n = 1; n <= n_calls; ++n) {
      auto fds_before = testing::open_fds();
      plan p;
      p.fail_nth(kind, n, testing::faults::typical_errno(kind));
      auto t0 = clk::now();
      attempt a = try_once(p, op, scope::this_thread);
      INFO(name(kind) << " call " << n << " of " << n_calls << " -> " << (a.ok ? "ok" : a.what));
      ++attempts;
      faults += p.injected(kind);
      CHECK((a.ok || a.library_error));
      CHECK(clk::now() - t0 < 10s);
      CHECK(testing::open_fds() == fds_before);
      CHECK(testing::children().empty());
    }
  }
  WARN("run() single-fault sweep: " << attempts << " attempts over " << counts.size()
                                    << " kinds of call, " << faults << " faults injected");
  CHECK(faults >= 20);
}

namespace {
// Before the pidfd_open that follows posix_spawn: reap the child as other code of
// the process would (waitpid(-1)), and optionally give its pid to a stranger (a
// process that is not our child: a grandchild whose parent has exited, leading a
// process group of its own) by setting ns_last_pid just before it is forked.
std::atomic<bool> reuse_armed{false};
bool reuse_wanted = false;
pid_t reuse_reaped = 0, reuse_stranger = 0;
int reap_and_reuse_hook(call c) noexcept {
  if (c != call::pidfd_open || !reuse_armed.exchange(false)) return 0;
  int ws = 0;
  reuse_reaped = ::waitpid(-1, &ws, 0);
  if (reuse_reaped <= 0 || !reuse_wanted) return 0;
  char last[16];
  const int len = std::snprintf(last, sizeof last, "%d", reuse_reaped - 1);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return 0;
  const pid_t mid = ::fork();
  if (mid == 0) {
    const int fd = ::open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) (void)!::write(fd, last, static_cast<size_t>(len));
    const pid_t g = ::fork();
    if (g == 0) {
      ::setpgid(0, 0);
      ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    (void)!::write(fds[1], &g, sizeof g);
    ::_exit(0);
  }
  ::close(fds[1]);
  pid_t g = 0;
  if (mid > 0 && ::read(fds[0], &g, sizeof g) == sizeof g) reuse_stranger = g;
  ::close(fds[0]);
  if (mid > 0) ::waitpid(mid, nullptr, 0);
  return 0;
}
}  // namespace

TEST_CASE("a posix_spawn child reaped by other code before pidfd_open is lost, never a stranger") {
  // "Other code" is a waitpid(-1) run just before the library's pidfd_open.
  const bool stranger = GENERATE(false, true);
  INFO((stranger ? "its pid given to a stranger" : "its pid still free"));
  const auto old_hook = sp::detail::sys::fault_hook.load();
  if (stranger && ::access("/proc/sys/kernel/ns_last_pid", W_OK) != 0) {
    WARN("cannot write /proc/sys/kernel/ns_last_pid (needs CAP_SYS_ADMIN): stranger case not checked");
    return;
  }
  reuse_wanted = stranger;
  sp::process p;
  sp::detail::unique_fd stranger_fd;
  for (int attempt = 0; attempt < 20; ++attempt) {
    reuse_reaped = reuse_stranger = 0;
    reuse_armed = true;
    sp::detail::sys::fault_hook.store(&reap_and_reuse_hook);
    p = testing::helper({"exit", "0"}).new_process_group().backend(sp::spawn_backend::posix_spawn).spawn();
    sp::detail::sys::fault_hook.store(old_hook);
    REQUIRE(reuse_reaped == p.pid());
    if (!stranger) break;
    stranger_fd.reset(sp::detail::sys::pidfd_open(reuse_stranger));
    REQUIRE(stranger_fd);
    if (reuse_stranger == p.pid()) break;
    // Another process of the system took the pid first: try again.
    sp::detail::sys::pidfd_send_signal(stranger_fd.get(), SIGKILL);
    stranger_fd.reset();
  }
  if (stranger) REQUIRE(reuse_stranger == p.pid());
  // Nothing is sent to the pid or its group: it is not ours.
  CHECK_FALSE(p.signal(SIGKILL));
  CHECK_FALSE(p.signal_group(SIGKILL));
  try {
    p.wait();
    FAIL("no exception");
  } catch (const sp::error& e) {
    CHECK(e.code() == std::errc::no_child_process);
    CHECK_THAT(e.what(), Catch::Contains("other code of this process reaped it"));
    CHECK_THAT(e.what(), !Catch::Contains("SIGCHLD"));
  }
  p = sp::process();  // the destructor path: no kill either
  if (stranger) {
    CHECK(sp::detail::poll_one(stranger_fd.get(), POLLIN, sp::detail::clock::now()) == 0);  // alive
    CHECK(testing::alive(reuse_stranger));
    sp::detail::sys::pidfd_send_signal(stranger_fd.get(), SIGKILL);
  }
}

TEST_CASE("a pipeline's first stage gets its pipe_reader input blocking even when /proc cannot reopen it") {
  // The reader is non-blocking (the library's end of src's stdout). Its reopen
  // through /proc/self/fd fails here (EACCES on open): the pipeline owns the reader,
  // so it clears O_NONBLOCK on it instead of handing the child a pipe that EAGAINs.
  auto src = testing::helper({"out", "one"}).out(sp::pipe).spawn();
  REQUIRE((::fcntl(src.out().fd(), F_GETFL) & O_NONBLOCK) != 0);
  plan p;
  p.fail_every(call::open, 1, EACCES);
  std::string out;
  {
    scope s(p);
    out = (sp::pipeline{} | testing::helper({"stdin-flags", "cat"})).run({.input = std::move(src.out())}).out;
  }
  CHECK(p.injected(call::open) >= 1);
  CHECK(out == "blocking\none\n");  // and it read the pipe to its end
  CHECK(src.wait().success());
}

TEST_CASE("a failed wait does not disarm the destructor (regression)") {
  // Before the fix any waitpid failure marked the child as reaped: signal() then
  // refused to send and the destructor blocked forever on a child it never killed.
  auto t0 = clk::now();
  {
    auto q = testing::helper({"sleep", "60000"}).spawn();
    plan p;
    // waitid: through the pidfd; waitpid: without one. EIO stands for any failure
    // other than ECHILD (which means someone else reaped it).
    p.fail_nth(call::waitid, 1, EIO).fail_nth(call::waitpid, 1, EIO);
    {
      scope s(p);
      CHECK_THROWS_AS(q.try_wait(), sp::error);
    }
    CHECK(q.signal(0));  // still ours, still signalled through its pidfd
  }                      // destructor: SIGKILL and reap
  CHECK(clk::now() - t0 < 5s);
}

TEST_CASE("if SIGPIPE cannot be blocked, writing is refused rather than risked (regression)") {
  // A child that has exited: writing to its stdin raises SIGPIPE. Before the fix a
  // failed pthread_sigmask was ignored and the write killed the whole test program.
  auto q = testing::helper({"exit", "0"}).in(sp::pipe).spawn();
  auto in = std::move(q.in());
  q.wait();
  plan p;
  p.fail_every(call::sigmask, 1, EINVAL);
  scope s(p);
  try {
    in.write_all("x");
    FAIL("no exception");
  } catch (const sp::io_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("SIGPIPE"));
  }
}

TEST_CASE("communicate() refuses to write input when SIGPIPE cannot be blocked") {
  auto q = testing::helper({"exit", "0"}).in(sp::pipe).out(sp::pipe).spawn();
  CHECK(q.out().read_all().empty());  // EOF: it has exited
  plan p;
  p.fail_every(call::sigmask, 1, EINVAL);
  scope s(p);
  CHECK_THROWS_AS(sp::communicate(q, "x"), sp::io_error);
}

TEST_CASE("an injected close() failure still closes the fd (the seam models Linux)") {
  auto before = testing::open_fds();
  plan p;
  p.fail_every(call::close, 1, EINTR);
  {
    scope s(p);
    auto r = sp::run(testing::helper({"out", "x"}));
    CHECK(r.out == "x\n");
  }
  CHECK(p.injected(call::close) > 3);
  CHECK(testing::open_fds() == before);
}

TEST_CASE("kernels without pidfds: the fallbacks wait, time out and reap correctly") {
  // pidfd_open failing with ENOSYS (kernel < 5.3) and clone rejecting CLONE_PIDFD
  // with EINVAL (kernel < 5.2) put every process on the waitpid-polling paths.
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  plan p;
  p.fail_every(call::pidfd_open, 1, ENOSYS);
  p.fail_every(call::clone, 2, EINVAL);  // the first try (with CLONE_PIDFD) of each spawn
  scope s(p);
  SECTION("run() with input and output") {
    const std::string input = numbered_lines(20000);
    auto r =
        sp::run(testing::helper({"cat", "err", "e"}).backend(b), {.input = input, .timeout = 30s});
    CHECK(r.out == input);
    CHECK(r.err == "e\n");
  }
  SECTION("wait_for() honours its deadline, terminate() escalates") {
    auto q = testing::helper({"ignore-term", "sleep", "60000"}).backend(b).spawn();
    CHECK(q.pidfd() == -1);
    auto t0 = clk::now();
    CHECK_FALSE(q.wait_for(200ms));
    CHECK(clk::now() - t0 < 3s);
    CHECK(q.terminate(200ms).signal() == SIGKILL);
  }
  SECTION("run() timeouts") {
    auto t0 = clk::now();
    CHECK_THROWS_AS(sp::run(testing::helper({"sleep", "60000"}).backend(b), {.timeout = 300ms}),
                    sp::timeout_error);
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("detach(): the reaper polls for it") {
    testing::helper({"sleep", "50"}).backend(b).spawn().detach();
    for (int i = 0; i < 300 && sp::detail::reaper::instance().pending() > 0; ++i)
      std::this_thread::sleep_for(10ms);
    CHECK(sp::detail::reaper::instance().pending() == 0);
  }
  SECTION("event_loop::on_exit() looks on the exit_poll schedule") {
    auto q = testing::helper({"sleep", "50"}).backend(b).spawn();
    REQUIRE(q.pidfd() == -1);
    sp::event_loop loop;
    std::optional<sp::exit_status> st;
    loop.on_exit(q, [&](sp::exit_status e) { st = e; });
    auto t0 = clk::now();
    CHECK(loop.run_for(10s));
    CHECK(st == sp::exit_status::exited(0));
    CHECK(clk::now() - t0 < 3s);
  }
  SECTION("shutdown(): one deadline, SIGKILL for the one that ignores SIGTERM") {
    std::vector<sp::process> ps;
    ps.push_back(testing::helper({"ready", "sleep", "60000"}).backend(b).out(sp::pipe).spawn());
    ps.push_back(testing::helper({"ignore-term", "ready", "sleep", "60000"}).backend(b).out(sp::pipe).spawn());
    for (auto& q : ps) REQUIRE(q.out().read_line_for(10s) == "ready");
    auto t0 = clk::now();
    auto r = sp::shutdown(ps, 300ms);
    CHECK(clk::now() - t0 < 3s);
    REQUIRE(r.processes.size() == 2);
    CHECK(r.processes[0].status == sp::exit_status::signaled(SIGTERM));
    CHECK(r.processes[1].status == sp::exit_status::signaled(SIGKILL));
  }
  CHECK(p.injected(call::pidfd_open) + p.injected(call::clone) > 0);
}

TEST_CASE("a pipe that never stops being readable cannot hold a deadline (regression)") {
  // poll() says readable and every read() says EAGAIN: the deterministic model of a
  // child writing faster than we read, where poll() never times out. Before the fix
  // run(), wait_for() and read_line_for() only noticed their deadline when poll()
  // timed out, so they ran on for as long as the output kept coming (here: until
  // the plan's 50 million faults ran out, tens of seconds).
  // Each op gets a child of its own whose output waits in the pipe.
  auto child = [] {
    auto q = testing::helper({"out-bytes", "1000", "sleep", "60000"}).out(sp::pipe).spawn();
    REQUIRE(sp::detail::poll_one(q.out().fd(), POLLIN, clk::now() + 10s) != 0);
    return q;
  };
  auto timed = [](const std::function<void()>& op) {
    plan p;
    p.fail_every(call::read, 1, EAGAIN, 50'000'000);
    scope s(p);
    auto t0 = clk::now();
    op();
    auto dt = clk::now() - t0;
    CHECK(dt >= 300ms);
    CHECK(dt < 3s);
    CHECK(p.injected(call::read) > 0);
  };
  auto a = child();
  timed([&] { CHECK_FALSE(a.wait_for(300ms)); });
  auto b = child();
  timed([&] { CHECK_FALSE(b.out().read_line_for(300ms)); });
  timed([&] {
    CHECK_THROWS_AS(sp::run(testing::helper({"out-bytes", "1000", "sleep", "60000"}), {.timeout = 300ms}),
                    sp::timeout_error);
  });
}

TEST_CASE("every call spawn_in_pty makes before the child runs can fail: a clear spawn_error, nothing leaked") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  auto op = [&] {
    auto t = sp::spawn_in_pty(sp::command{"true"}.backend(b), {.echo = false});
    t.wait();
  };
  auto counts = census(op);
  CHECK(counts[call::openpt] == 1);
  CHECK(counts[call::ioctl] == 6);  // grantpt, unlockpt, ptsname_r, TIOCSWINSZ, TCGETS, TCSETS
  struct kind_faults {
    call kind;
    std::vector<int> errs;
  };
  const std::vector<kind_faults> kinds = {
      {call::openpt, {EMFILE, ENOSPC}}, {call::ioctl, {EIO, ENOTTY}}, {call::open, {EMFILE, ENXIO}},
      {call::fcntl, {EBADF}},           {call::dup, {EMFILE}},         {call::posix_spawn, {ENOMEM}},
      {call::clone, {EAGAIN}},          {call::pidfd_open, {EMFILE}}};
  long faults = 0;
  for (const auto& k : kinds) {
    auto it = counts.find(k.kind);
    if (it == counts.end()) continue;
    for (long n = 1; n <= it->second; ++n) {
      for (int err : k.errs) {
        auto fds_before = testing::open_fds();
        plan p;
        p.fail_nth(k.kind, n, err);
        attempt a = try_once(p, op, scope::this_thread);
        INFO(sp::to_string(b) << ": " << name(k.kind) << " call " << n << " of " << it->second << " fails with "
                              << std::error_code(err, std::system_category()).message() << " -> "
                              << (a.ok ? "ok" : a.what));
        faults += p.injected(k.kind);
        CHECK(a.spawn_error);
        CHECK(a.code == err);
        CHECK_THAT(a.what, Catch::StartsWith("cannot start 'true'"));
        CHECK(testing::open_fds() == fds_before);
        CHECK(testing::children().empty());
      }
    }
  }
  CHECK(faults > 15);
}

namespace {
// This program's tree cgroups ("sp-<pid>-<n>") under its own cgroup v2.
int tree_dirs() {
  std::string why;
  const fs::path parent = sp::detail::cgroup::own_dir(why);
  if (parent.empty()) return 0;
  int n = 0;
  const std::string prefix = "sp-" + std::to_string(::getpid()) + "-";
  for (const auto& e : fs::directory_iterator(parent))
    if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}
}  // namespace

TEST_CASE("tree(): mkdir, the child's cgroup join, the cgroup files, rmdir and prctl can fail: a clear error, no child and no cgroup left behind") {
  try {
    sp::command{"true"}.tree({.use = sp::tree_mechanism::cgroup}).spawn().wait();
  } catch (const sp::spawn_error& e) {
    WARN("skipped: no writable cgroup v2 here: " << e.what());
    return;
  }
  const int before = tree_dirs();
  const sp::command t = sp::command{"true"}.tree({.use = sp::tree_mechanism::cgroup});
  SECTION("mkdir: the cgroup cannot be created") {
    plan p;
    p.fail_nth(call::mkdir, 1, EACCES);
    attempt a = try_once(p, [&] { t.spawn(); }, scope::this_thread);
    CHECK(a.spawn_error);
    CHECK(a.code == EACCES);
    CHECK_THAT(a.what, Catch::Contains("tree()") && Catch::Contains("cannot create the cgroup"));
    // Automatic choice: no cgroup, and this program is no subreaper: both reasons.
    plan q;
    q.fail_nth(call::mkdir, 1, EACCES);
    attempt b = try_once(q, [&] { sp::command{"true"}.tree().spawn(); }, scope::this_thread);
    CHECK(b.spawn_error);
    CHECK_THAT(b.what, Catch::Contains("cannot create the cgroup") && Catch::Contains("become_subreaper()"));
  }
  SECTION("the child cannot join the cgroup (clone child, and on the spawner thread)") {
    for (bool on_spawner : {false, true}) {
      plan p;
      p.fail_nth(call::cgroup_join, 1, EACCES);
      sp::command c = t;
      if (on_spawner) c.kill_on_parent_death();
      attempt a = try_once(p, [&] { c.spawn(); }, scope::this_thread);
      CHECK(a.spawn_error);
      CHECK(a.code == EACCES);
      CHECK_THAT(a.what, Catch::Contains("join the tree's cgroup"));
      CHECK(p.injected(call::cgroup_join) == 1);
      CHECK(testing::children().empty());
    }
  }
  SECTION("rmdir: EBUSY once is retried") {
    plan p;
    p.fail_nth(call::rmdir, 1, EBUSY);
    attempt a = try_once(p, [&] { t.spawn().wait(); }, scope::this_thread);
    CHECK(a.ok);
    CHECK(p.injected(call::rmdir) == 1);
  }
  SECTION("any single open, read, write, poll or mkdir of spawn + kill + destroy") {
    auto op = [&] {
      auto q = sp::command{"sh", "-c", "(setsid sleep 1000 &); exec sleep 1000"}
                   .tree({.use = sp::tree_mechanism::cgroup})
                   .spawn();
      q.tree().freeze();
      q.tree().thaw();
      q.tree().kill();
      q.wait();
    };
    auto counts = census(op);
    for (call kind : {call::open, call::read, call::write, call::poll, call::mkdir}) {
      for (long nth = 1; nth <= counts[kind]; ++nth) {
        INFO(name(kind) << " #" << nth);
        plan p;
        p.fail_nth(kind, nth, EIO);
        attempt a = try_once(p, op, scope::this_thread);
        CHECK((a.ok || a.library_error));
        CHECK(tree_dirs() == before);
        CHECK(testing::children().empty());
      }
    }
  }
  SECTION("ENOENT from any single open of spawn + kill: an error, or the daemon is dead (cgroup.kill missing: freeze, kill each, thaw)") {
    pid_t daemon = -1;
    auto op = [&] {
      auto q = sp::command::shell("(setsid sh -c 'echo $$; exec sleep 1000 >/dev/null 2>&1' &); exec sleep 1000")
                   .out(sp::pipe)
                   .tree({.use = sp::tree_mechanism::cgroup})
                   .spawn();
      auto line = q.out().read_line();
      REQUIRE(line);
      daemon = static_cast<pid_t>(std::stol(std::string(*line)));
      q.tree().kill();
      int fd = static_cast<int>(::syscall(SYS_pidfd_open, daemon, 0));
      pollfd pfd{fd, POLLIN, 0};
      CHECK((fd < 0 || ::poll(&pfd, 1, 0) == 1));  // exited
      if (fd >= 0) ::close(fd);
    };
    auto counts = census(op);
    for (long nth = 1; nth <= counts[call::open]; ++nth) {
      INFO("open #" << nth);
      plan p;
      p.fail_nth(call::open, nth, ENOENT);
      attempt a = try_once(p, op, scope::this_thread);
      CHECK((a.ok || a.library_error));
      CHECK(tree_dirs() == before);
    }
  }
  SECTION("prctl: become_subreaper() and is_subreaper() report it") {
    plan p;
    p.fail_every(call::prctl, 1, EPERM);
    attempt a = try_once(p, [] { sp::become_subreaper(); }, scope::this_thread);
    CHECK(a.library_error);
    CHECK_THAT(a.what, Catch::Contains("PR_SET_CHILD_SUBREAPER"));
    attempt b = try_once(p, [] { (void)sp::is_subreaper(); }, scope::this_thread);
    CHECK(b.library_error);
    CHECK_FALSE(sp::is_subreaper());
  }
  CHECK(tree_dirs() == before);
}

TEST_CASE("a pty_process retries EINTR everywhere, and reports a failed resize") {
  auto t = sp::spawn_in_pty(sp::command{"cat"}, {.echo = false});
  {
    plan p;
    p.fail_every(call::read, 2, EINTR).fail_every(call::poll, 2, EINTR).fail_every(call::write, 2, EINTR);
    scope s(p);
    t.sendline("hello");
    CHECK(t.expect("hello\r\n", 5s).before.empty());
    t.send_eof();
    CHECK(t.expect_eof(5s).empty());
    CHECK(p.injected(call::read) + p.injected(call::write) > 1);
  }
  CHECK(t.wait().success());
  auto u = sp::spawn_in_pty(sp::command{"cat"});
  {
    plan p;
    p.fail_nth(call::ioctl, 1, EIO);
    scope s(p);
    try {
      u.resize(10, 10);
      FAIL("no exception");
    } catch (const sp::io_error& e) {
      CHECK(e.code().value() == EIO);
      CHECK_THAT(e.what(), Catch::StartsWith("resize the terminal of 'cat'"));
    }
  }
}
