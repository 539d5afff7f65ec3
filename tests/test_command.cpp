#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

// Run the spawn-path tests once per back end.
static sp::spawn_backend any_backend() {
  return GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
}

TEST_CASE("arguments reach the program exactly, with no shell in between") {
  auto b = any_backend();
  std::vector<std::string> args{"print-args", "plain", "with space", "it's", "\"dq\"", "$HOME",
                                "*", "", "semi;colon", "back\\slash", "ünïcödé"};
  auto r = sp::run(testing::helper(args).backend(b));
  std::string expected;
  for (std::size_t i = 1; i < args.size(); ++i) expected += args[i] + "\n";
  CHECK(r.out == expected);
}

TEST_CASE("program lookup") {
  auto b = any_backend();
  SECTION("a bare name is searched in PATH") {
    CHECK(sp::run(sp::command{"echo", "found"}.backend(b)).out == "found\n");
  }
  SECTION("missing programs are a spawn_error, ENOENT") {
    try {
      sp::command{"no-such-program-xyz", "--flag"}.backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.command() == "no-such-program-xyz --flag");
      CHECK_THAT(e.what(), Catch::Contains("no-such-program-xyz") && Catch::Contains("PATH"));
    }
  }
  SECTION("a file without execute permission is EACCES") {
    auto p = fs::temp_directory_path() / ("sp_noexec_" + std::to_string(::getpid()));
    std::ofstream(p) << "#!/bin/sh\necho hi\n";
    fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
    try {
      sp::command{p.string()}.backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::permission_denied);
    }
    fs::remove(p);
  }
  SECTION("a directory is not a program") {
    CHECK_THROWS_AS(sp::command{"/tmp"}.backend(b).spawn(), sp::spawn_error);
  }
  SECTION("a script with a missing interpreter fails at exec, in the parent") {
    auto p = fs::temp_directory_path() / ("sp_badinterp_" + std::to_string(::getpid()));
    std::ofstream(p) << "#!/nonexistent/interpreter\n";
    fs::permissions(p, fs::perms::owner_all);
    try {
      sp::command{p.string()}.backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.step() == "exec");
    }
    fs::remove(p);
  }
  SECTION("a relative path is relative to the parent's directory, even with cwd()") {
    auto helper = fs::path(testing::helper_path());
    auto old = fs::current_path();
    fs::current_path(helper.parent_path());
    auto r = sp::run(sp::command{"./" + helper.filename().string(), "print-cwd"}.cwd("/").backend(b));
    fs::current_path(old);
    CHECK(r.out == "/\n");
  }
}

TEST_CASE("find_program: where spawn() would find a program") {
  auto helper = fs::path(testing::helper_path());
  SECTION("searched in the given PATH, first match wins") {
    auto found = sp::find_program(helper.filename().string(),
                                  "/nonexistent-dir:" + helper.parent_path().string() + ":/bin");
    REQUIRE(found);
    CHECK(*found == helper);
  }
  SECTION("the parent's PATH by default; the result is what spawn() runs") {
    auto sh = sp::find_program("sh");
    REQUIRE(sh);
    CHECK(sh->is_absolute());
    CHECK(sp::run(sp::command{sh->string(), "-c", "echo ok"}).out == "ok\n");
  }
  SECTION("missing, not executable, a directory: nullopt") {
    CHECK_FALSE(sp::find_program("no-such-program-xyz"));
    CHECK_FALSE(sp::find_program("sh", "/nonexistent-dir"));
    auto p = fs::temp_directory_path() / ("sp_noexec_fp_" + std::to_string(::getpid()));
    std::ofstream(p) << "#!/bin/sh\n";
    fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
    CHECK_FALSE(sp::find_program(p.filename().string(), p.parent_path().string()));
    CHECK_FALSE(sp::find_program(p.string()));
    fs::remove(p);
    CHECK_FALSE(sp::find_program("/tmp"));
  }
  SECTION("a name with a slash is checked, not searched") {
    REQUIRE(sp::find_program(helper.string()));
    CHECK(*sp::find_program(helper.string()) == helper);
  }
  SECTION("an empty name is an argument_error") {
    CHECK_THROWS_AS(sp::find_program(""), sp::argument_error);
  }
}

TEST_CASE("bad input is rejected before anything starts") {
  CHECK_THROWS_WITH(sp::command{}.spawn(), Catch::Contains("empty command"));
  CHECK_THROWS_WITH(sp::command{""}.spawn(), Catch::Contains("empty"));
  CHECK_THROWS_WITH((sp::command{"echo", std::string("a\0b", 3)}.spawn()),
                    Catch::Contains("argument 1") && Catch::Contains("NUL"));
  CHECK_THROWS_AS(sp::command{"echo"}.cwd(std::string("/t\0mp", 5)).spawn(), sp::argument_error);
  CHECK_THROWS_AS(sp::command{"echo"}.kill_on_parent_death(-1), sp::argument_error);
  CHECK_THROWS_AS(sp::command{"echo"}.ipc(1), sp::argument_error);
  CHECK_THROWS_AS(sp::command{"echo"}.ipc(5).map_fd(5, 0).spawn(), sp::argument_error);
  CHECK_THROWS_AS(
      sp::command{"echo"}.kill_on_parent_death().backend(sp::spawn_backend::posix_spawn).spawn(),
      sp::argument_error);
  CHECK(testing::children().empty());
}

TEST_CASE("working directory") {
  auto b = any_backend();
  CHECK(sp::run(testing::helper({"print-cwd"}).cwd("/usr").backend(b)).out == "/usr\n");
  SECTION("a missing directory is a spawn_error naming it, step chdir") {
    try {
      testing::helper({}).cwd("/nonexistent-dir").backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.step() == "chdir");
      CHECK_THAT(e.what(), Catch::Contains("'/nonexistent-dir' (no such directory)"));
      CHECK_THAT(e.what(), !Catch::Contains("PATH") && !Catch::Contains("exec"));
    }
  }
  SECTION("a file is not a directory") {
    try {
      testing::helper({}).cwd("/etc/passwd").backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::not_a_directory);
      CHECK(e.step() == "chdir");
      CHECK_THAT(e.what(), Catch::Contains("'/etc/passwd' (not a directory)"));
    }
  }
  SECTION("an empty string is a spawn_error saying so, before anything starts") {
    try {
      testing::helper({}).cwd("").backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.step() == "chdir");
      CHECK_THAT(e.what(), Catch::Contains("working directory is an empty string"));
    }
    CHECK_THROWS_AS(testing::helper({}).cwd("").validate(), sp::spawn_error);
  }
  CHECK(testing::children().empty());
}

TEST_CASE("the program and the working directory are checked with the effective ids, as exec uses them") {
  // A set-uid-like helper: real uid nobody, effective uid root. A directory only root
  // may enter, holding a program only root may run: exec and chdir (effective ids)
  // succeed, so the library's own checks must not refuse them (access() would: it
  // checks the real uid).
  if (::geteuid() != 0) {
    WARN("needs root (effective uid 0) to create a real/effective uid split: not checked");
    return;
  }
  const auto dir = fs::temp_directory_path() / ("sp_rootonly_" + std::to_string(::getpid()));
  fs::create_directory(dir);
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
  const auto prog = dir / "sp_helper";
  fs::copy_file(testing::helper_path(), prog);
  fs::permissions(prog, fs::perms::owner_all, fs::perm_options::replace);
  auto r = sp::run(testing::helper({"as-real-uid", "65534", "spawn-cwd", dir.string(), prog.string()}),
                   {.timeout = 30s});
  fs::remove_all(dir);
  CHECK(r.out == dir.string() + "\n");
  CHECK(r.status == sp::exit_status::exited(0));
}

TEST_CASE("an argument list too large for the kernel is a spawn_error that says so, with sizes") {
  auto b = any_backend();
  // Too much in total, or one string over the kernel's 128 KiB per-string limit.
  // The total limit (fs/exec.c) is RLIMIT_STACK / 4, but at most 3/4 of _STK_LIM
  // (6 MiB: what an unlimited stack gets) and at least 128 KiB: go past it by 50
  // strings of 10000 bytes, whatever the stack limit.
  const bool one_huge = GENERATE(false, true);
  std::vector<std::string> args{"print-args"};
  rlimit stack{};
  REQUIRE(::getrlimit(RLIMIT_STACK, &stack) == 0);
  const unsigned long long max_total = std::max<unsigned long long>(
      std::min<unsigned long long>(6ULL << 20, stack.rlim_cur / 4), 128ULL << 10);
  const int many = static_cast<int>(max_total / 10000) + 50;
  if (one_huge)
    args.push_back(std::string(200 * 1024, 'x'));
  else
    for (int i = 0; i < many; ++i) args.push_back(std::string(10000, 'a' + i % 26));
  INFO("total limit " << max_total << " bytes, " << args.size() << " arguments");
  try {
    testing::helper(args).backend(b).spawn();
    FAIL("no exception");
  } catch (const sp::spawn_error& e) {
    // Checked as bools: a failing check must not print a message of megabytes.
    const std::string_view what = e.what();
    INFO(what.substr(0, 600));
    CHECK(e.code() == std::errc::argument_list_too_long);
    CHECK(e.step() == "exec");
    CHECK(what.find("argument list and environment are too large") != what.npos);
    CHECK(what.find(std::to_string(args.size() + 1) + " arguments") != what.npos);
    CHECK(what.find("longest single string") != what.npos);
    CHECK(what.find("sp_helper") != what.npos);
    CHECK(what.size() < 1000);  // the command line is cut, not pasted whole
  }
  CHECK(testing::children().empty());
}

TEST_CASE("shell commands") {
  auto r = sp::run(sp::command::shell("echo one; echo two | tr a-z A-Z; exit 3"));
  CHECK(r.out == "one\nTWO\n");
  CHECK(r.status == sp::exit_status::exited(3));
  CHECK(sp::command::shell("echo 'hi'").is_shell());
  CHECK(sp::command::shell("echo 'hi'").to_string() == "/bin/sh -c 'echo '\\''hi'\\'''");
}

TEST_CASE("command::self runs this program again") {
  auto c = sp::command::self({"--list-test-names-only"});
  CHECK(c.argv()[0] == fs::read_symlink("/proc/self/exe").string());
  auto r = sp::run(c);
  CHECK(r.status.code().has_value());  // Catch2 exits with the number of tests listed
  CHECK_THAT(r.out, Catch::Contains("command::self runs this program again"));
}

TEST_CASE("to_string quotes like a shell, and the shell agrees") {
  sp::command c{"printf", "%s|", "a b", "it's", "", "$x", "plain-1.0/x=y:z,w@h%"};
  CHECK(c.to_string() == "printf '%s|' 'a b' 'it'\\''s' '' '$x' plain-1.0/x=y:z,w@h%");
  auto r = sp::run(sp::command::shell(c.to_string()));
  CHECK(r.out == "a b|it's||$x|plain-1.0/x=y:z,w@h%|");
}

TEST_CASE("the child gets only the fds it was given") {
  auto b = any_backend();
  // An fd opened without O_CLOEXEC, as careless libraries do.
  int leaky = ::open("/dev/null", O_RDONLY);
  int high = ::fcntl(leaky, F_DUPFD, 900);
  REQUIRE(high >= 900);
  auto out = sp::run(testing::helper({"list-fds"}).backend(b)).out;
  ::close(leaky);
  ::close(high);
  CHECK(out == "0 1 2\n");
}

TEST_CASE("an fd handed to a child arrives blocking; the caller's fd keeps its flags") {
  // The producer waits for our go, so its stdout pipe is empty when the consumer
  // first reads: with the non-blocking description of p.out() shared, cat would fail
  // at once with EAGAIN ("Resource temporarily unavailable").
  auto b = any_backend();
  auto producer = testing::helper({"wait-line", "out", "hello"}).in(sp::pipe).out(sp::pipe).spawn();
  const int handed = producer.out().fd();
  REQUIRE((::fcntl(handed, F_GETFL) & O_NONBLOCK) != 0);
  const bool via_map_fd = GENERATE(false, true);
  auto consumer = via_map_fd ? sp::command{"sh", "-c", "exec cat <&3"}.map_fd(3, handed)
                             : sp::command{"cat"}.in(sp::fd(handed));
  auto p = consumer.out(sp::pipe).err(sp::pipe).backend(b).spawn();
  // Our description is as it was: still non-blocking.
  CHECK((::fcntl(handed, F_GETFL) & O_NONBLOCK) != 0);
  producer.out().close();
  producer.in().write_all("go\n");
  CHECK(p.out().read_all() == "hello\n");
  CHECK(p.err().read_all() == "");
  CHECK(p.wait().success());
  CHECK(producer.wait().success());
}

TEST_CASE("the child starts with default signal dispositions and an empty mask") {
  auto b = any_backend();
  struct sigaction ign {}, old_pipe{}, old_usr1{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old_pipe);
  ::sigaction(SIGUSR1, &ign, &old_usr1);
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  sigaddset(&block, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &block, &old_mask);
  auto out = sp::run(testing::helper({"print-signals"}).backend(b)).out;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGUSR1, &old_usr1, nullptr);
  CHECK(out == "ignored:\nblocked:\n");
}

namespace {
// The kernel's struct sigaction (x86_64/aarch64 layout), for the raw system call:
// glibc's sigaction() refuses 32 and 33, the real-time signals it keeps for itself.
struct kernel_sigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};
int raw_sigaction(int sig, const kernel_sigaction* act, kernel_sigaction* old) {
  return static_cast<int>(::syscall(SYS_rt_sigaction, sig, act, old, sizeof(unsigned long)));
}
extern "C" void noop_handler(int) {}
}  // namespace

TEST_CASE("every signal 1..SIGRTMAX is default and unblocked in the child, 32 and 33 too") {
  // The parent ignores (or handles) every catchable signal, glibc's reserved 32 and
  // 33 included, and blocks them all. SIGCHLD is handled, never ignored: ignoring it
  // would make the kernel discard the child's status. Each back end must give the
  // child all-default dispositions (SigIgn 0; handlers are reset by exec itself) and
  // an empty mask. glibc's posix_spawn used to leave 32 and 33 ignored.
  auto b = any_backend();
  const bool ignore = GENERATE(true, false);
  REQUIRE(SIGRTMAX == 64);
  // A handler installed by glibc gives us its restorer, needed for a raw handler.
  struct sigaction via_libc {}, old_usr1{};
  via_libc.sa_handler = noop_handler;
  REQUIRE(::sigaction(SIGUSR1, &via_libc, &old_usr1) == 0);
  kernel_sigaction handled{};
  REQUIRE(raw_sigaction(SIGUSR1, nullptr, &handled) == 0);
  REQUIRE(::sigaction(SIGUSR1, &old_usr1, nullptr) == 0);
  kernel_sigaction ign{};
  ign.handler = reinterpret_cast<void*>(SIG_IGN);
  kernel_sigaction saved[65]{};
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    REQUIRE(raw_sigaction(sig, nullptr, &saved[sig]) == 0);
    REQUIRE(raw_sigaction(sig, ignore && sig != SIGCHLD ? &ign : &handled, nullptr) == 0);
  }
  unsigned long all = ~0UL, old_mask = 0;
  REQUIRE(::syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, &old_mask, sizeof all) == 0);
  std::string out;
  try {
    out = sp::run(testing::helper({"print-sigstate"}).backend(b)).out;
  } catch (...) {
  }
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old_mask, nullptr, sizeof old_mask);
  for (int sig = 1; sig <= 64; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) raw_sigaction(sig, &saved[sig], nullptr);
  CHECK(out == "SigIgn: 0000000000000000\nSigBlk: 0000000000000000\n");
}

TEST_CASE("process groups and sessions") {
  auto b = any_backend();
  SECTION("new_process_group: pgid == pid") {
    auto p = testing::helper({"print-pgid"}).new_process_group().out(sp::pipe).backend(b).spawn();
    CHECK(p.is_group_leader());
    auto line = p.out().read_line();
    CHECK(line == std::to_string(p.pid()));
    p.wait();
  }
  SECTION("new_session: sid == pid") {
    auto p = testing::helper({"print-sid"}).new_session().out(sp::pipe).backend(b).spawn();
    CHECK(p.out().read_line() == std::to_string(p.pid()));
    p.wait();
  }
  SECTION("default: same group as the parent") {
    auto p = testing::helper({"print-pgid"}).out(sp::pipe).backend(b).spawn();
    CHECK_FALSE(p.is_group_leader());
    CHECK(p.out().read_line() == std::to_string(::getpgrp()));
    p.wait();
  }
}

TEST_CASE("join_process_group: a child joins a group another child leads") {
  auto b = any_backend();
  auto leader = testing::helper({"sleep", "60000"}).new_process_group().backend(b).spawn();
  SECTION("the member's pgid is the leader's pid; one group signal reaches both") {
    auto member = testing::helper({"print-pgid", "sleep", "60000"})
                      .join_process_group(leader.pid())
                      .out(sp::pipe)
                      .backend(b)
                      .spawn();
    CHECK_FALSE(member.is_group_leader());
    CHECK(member.out().read_line() == std::to_string(leader.pid()));
    CHECK(leader.signal_group(SIGTERM));
    CHECK(member.wait().signal() == SIGTERM);
    CHECK(leader.wait().signal() == SIGTERM);
  }
  SECTION("new_process_group() after join_process_group() replaces it") {
    auto c = testing::helper({"print-pgid"}).join_process_group(leader.pid()).new_process_group();
    CHECK_FALSE(c.joined_process_group());
    auto p = c.out(sp::pipe).backend(b).spawn();
    CHECK(p.out().read_line() == std::to_string(p.pid()));
    p.wait();
  }
  leader.kill();
  leader.wait();
}

TEST_CASE("join_process_group: errors") {
  auto b = any_backend();
  SECTION("a group that does not exist is a spawn_error (setpgid, ESRCH) before anything starts") {
    // A running child that leads no group: no group has its pid as pgid.
    auto other = testing::helper({"sleep", "60000"}).spawn();
    try {
      testing::helper({}).join_process_group(other.pid()).backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.step() == "setpgid");
      CHECK(e.code() == std::errc::no_such_process);
      CHECK_THAT(e.what(), Catch::Contains("process group " + std::to_string(other.pid())));
    }
    CHECK_THROWS_AS(testing::helper({}).join_process_group(other.pid()).validate(), sp::spawn_error);
    other.kill();
    other.wait();
    CHECK(testing::children().empty());
  }
  SECTION("a group in another session fails in the child (EPERM), reported as setpgid") {
    // The group exists, so the parent's check passes; setpgid in the child refuses.
    auto other = testing::helper({"sleep", "60000"}).new_session().spawn();
    try {
      testing::helper({}).join_process_group(other.pid()).backend(b).spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.step() == "setpgid");
      CHECK(e.code() == std::errc::operation_not_permitted);
    }
    other.kill();
    other.wait();
  }
  SECTION("bad input") {
    CHECK_THROWS_AS(testing::helper({}).join_process_group(0), sp::argument_error);
    CHECK_THROWS_AS(testing::helper({}).join_process_group(-5), sp::argument_error);
    CHECK_THROWS_WITH(testing::helper({}).join_process_group(::getpgrp()).new_session().spawn(),
                      Catch::Contains("new_session"));
  }
}

TEST_CASE("validate() checks without starting anything") {
  CHECK_NOTHROW(sp::command{"sh", "-c", "exit 0"}.validate());
  CHECK_THROWS_AS(sp::command{"no-such-program-xyz"}.validate(), sp::spawn_error);
  CHECK_THROWS_AS(sp::command{}.validate(), sp::argument_error);
  CHECK_THROWS_AS(sp::command{"sh"}.cwd("/nonexistent-dir").validate(), sp::spawn_error);
  CHECK(testing::children().empty());
}

TEST_CASE("kill_on_parent_death: the child goes when its parent dies") {
  // helper -> grandchild with kill_on_parent_death(SIGKILL). SIGKILL the helper (no
  // chance to clean up); the kernel must kill the grandchild. A pidfd of the
  // grandchild tells us when it is gone, without sleeping.
  auto p = testing::helper({"pdeath-child", std::to_string(SIGKILL), "sleep", "60000"})
               .out(sp::pipe)
               .spawn();
  auto line = p.out().read_line();
  REQUIRE(line);
  int grandchild = std::stoi(*line);
  sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(grandchild));
  REQUIRE(gfd);
  CHECK(testing::alive(grandchild));
  p.kill();
  CHECK(p.wait().signal() == SIGKILL);
  CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
}

TEST_CASE("kill_on_parent_death: a child spawned from a short-lived thread outlives that thread") {
  // PR_SET_PDEATHSIG fires when the thread that created the child exits. The child
  // echoes lines back; if the thread's exit had sent it SIGKILL, our line would get
  // no answer (EOF) and its status would be "killed by SIGKILL".
  sp::process p;
  pid_t tid = 0;
  std::thread([&] {
    tid = static_cast<pid_t>(::syscall(SYS_gettid));
    p = testing::helper({"echo-lines"}).in(sp::pipe).out(sp::pipe).kill_on_parent_death(SIGKILL).spawn();
  }).join();
  // join() returns when the thread's tid is cleared, a little before the kernel
  // finishes its exit (and sends the parent-death signals). /proc/self/task/<tid>
  // goes only after that: wait for it, so the check below cannot come too early.
  const std::string task = "/proc/self/task/" + std::to_string(tid);
  const auto limit = clk::now() + 10s;
  while (::access(task.c_str(), F_OK) == 0 && clk::now() < limit) std::this_thread::yield();
  REQUIRE(::access(task.c_str(), F_OK) != 0);
  CHECK_NOTHROW(p.in().write_all("still here\n"));
  CHECK(p.out().read_line() == std::optional<std::string>("still here"));
  p.in().close();
  CHECK(p.wait() == sp::exit_status::exited(0));
}

// SIGKILL is pending for pid (sent, not yet acted on): /proc/<pid>/status SigPnd/ShdPnd.
static bool sigkill_pending(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("SigPnd:", 0) == 0 || line.rfind("ShdPnd:", 0) == 0)
      if ((std::stoull(line.substr(7), nullptr, 16) >> (SIGKILL - 1)) & 1) return true;
  return false;
}

TEST_CASE("kill_on_parent_death from a thread: the child still goes when the parent process dies") {
  auto p = testing::helper({"pdeath-thread", std::to_string(SIGKILL), "sleep", "60000"}).out(sp::pipe).spawn();
  auto line = p.out().read_line();
  REQUIRE(line);
  int grandchild = std::stoi(*line);
  sp::detail::unique_fd gfd(sp::detail::sys::pidfd_open(grandchild));
  REQUIRE(gfd);
  // The helper printed the pid only after its spawning thread's exit was complete
  // (/proc/self/task/<tid> gone): a parent-death signal would have been sent by then,
  // so the grandchild would be dead, or about to die with SIGKILL pending.
  CHECK(testing::alive(grandchild));
  CHECK_FALSE(sigkill_pending(grandchild));
  p.kill();
  CHECK(p.wait().signal() == SIGKILL);
  CHECK(sp::detail::poll_one(gfd.get(), POLLIN, sp::detail::clock::now() + 10s) != 0);
}

TEST_CASE("kill_on_parent_death works in a fork() child of a process that used it") {
  // The helper has a spawner thread and a second thread spawning through it while it
  // forks; each fork child (alarm(5) ends it if it hangs) must spawn one itself. The
  // copied spawner state is unusable there (a condition variable waiting for the
  // parent's thread, a lock another thread held at the fork).
  auto r = sp::run(testing::helper({"pdeath-fork", "5"}), {.timeout = 30s});
  CHECK(r.out == "0\n0\n0\n0\n0\n");
  CHECK(r.status == sp::exit_status::exited(0));
}

TEST_CASE("kill_on_parent_death: the child gets the caller's nice value and CPU affinity") {
  // The helper starts its spawner thread first, then changes its own thread's nice
  // value (to 7) and pins it to one CPU before spawning print-sched.
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  int first = 0;
  while (!CPU_ISSET(first, &set)) ++first;
  errno = 0;
  const int nice = ::getpriority(PRIO_PROCESS, 0);
  REQUIRE(errno == 0);
  const int want = std::max(nice, 7);  // raising it needs no privilege
  auto r = sp::run(testing::helper({"pdeath-nice", std::to_string(want)}), {.timeout = 30s});
  CHECK(r.out == "nice " + std::to_string(want) + " cpus " + std::to_string(first) + "\n");
  CHECK(r.status == sp::exit_status::exited(0));
}

TEST_CASE("spawning from many threads at once") {
  // 8 threads x 200 children, each child listing its fds: a pipe created by one
  // thread must never show up in another thread's child.
  constexpr int threads = 8, per_thread = 200;
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        auto b = (i + t) % 2 ? sp::spawn_backend::posix_spawn : sp::spawn_backend::clone_vfork;
        auto r = sp::run(testing::helper({"list-fds"}).backend(b), {.input = "x"});
        (r.out == "0 1 2\n" && r.success() ? ok : bad)++;
      }
    });
  for (auto& t : pool) t.join();
  CHECK(bad == 0);
  CHECK(ok == threads * per_thread);
}
