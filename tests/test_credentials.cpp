// Credentials, limits and the child's start state: uid, gid, groups, umask, limit,
// nice, cpu_affinity, arg0, blocked_signals, pre_exec. Checked against real
// programs (id, sh, nice, grep on /proc/self/status, cat /proc/self/cmdline).
// Several cases port CPython's test_subprocess.py (test_user, test_group,
// test_extra_groups, test_umask). Switching users needs root: as anyone else the
// same cases check that the kernel's refusal arrives as a spawn_error naming the step.
#include <catch2/catch.hpp>

#include <csignal>
#include <filesystem>
#include <string>

#include <grp.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// The line of /proc/self/status starting with `key`, as the child sees it.
std::string status_line(sp::command c, const std::string& key) {
  auto r = sp::run(c.arg("^" + key + ":").arg("/proc/self/status"));
  REQUIRE(r.status.success());
  return r.out;
}
sp::command grep() { return sp::command{"grep"}; }

// What spawn() threw, or "" if it started.
template <class E>
std::string thrown(const sp::command& c, E* out = nullptr) {
  try {
    sp::run(c);
  } catch (const E& e) {
    if (out) *out = e;
    return e.what();
  }
  return "";
}

std::string fd_limit_line(rlim_t soft, rlim_t hard) {
  return std::to_string(soft) + "\n" + std::to_string(hard) + "\n";
}

}  // namespace

TEST_CASE("uid, gid and groups: the child runs as the user asked for (CPython test_user, test_group)") {
  const bool root = ::geteuid() == 0;
  SECTION("uid and gid: real, effective, saved and fs ids all switch") {
    auto c = grep().uid(65534).gid(65534);
    if (!root) {
      sp::spawn_error e(0, "", "");
      CHECK_THAT(thrown<sp::spawn_error>(c.arg("Uid").arg("/proc/self/status"), &e), Contains("setgid to 65534"));
      CHECK(e.code() == std::errc::operation_not_permitted);
      return;
    }
    CHECK(status_line(c, "Uid") == "Uid:\t65534\t65534\t65534\t65534\n");
    CHECK(status_line(c, "Gid") == "Gid:\t65534\t65534\t65534\t65534\n");
    CHECK(sp::run(sp::command{"id", "-un"}.uid(65534)).out == "nobody\n");
  }
  SECTION("groups, gid and uid together: setgroups before setgid before setuid") {
    if (!root) {
      WARN("not root: setgroups is refused (EPERM), checked instead");
      CHECK_THAT(thrown<sp::spawn_error>(sp::command{"true"}.groups({1, 2})),
                 Contains("setgroups to 2 groups: Operation not permitted"));
      return;
    }
    // Any other order fails: setgroups and setgid need the privilege setuid drops.
    auto c = grep().groups({1, 2, 3}).gid(65534).uid(65534);
    CHECK(status_line(c, "Groups") == "Groups:\t1 2 3 \n");
    CHECK(status_line(c, "Gid") == "Gid:\t65534\t65534\t65534\t65534\n");
    CHECK(sp::run(sp::command{"id", "-G"}.groups({1, 2, 3}).gid(65534).uid(65534)).out == "65534 1 2 3\n");
  }
  SECTION("groups({}) clears the supplementary groups (CPython test_extra_groups)") {
    if (!root) return;  // checked above as the EPERM case
    CHECK(status_line(grep().groups({}), "Groups") == "Groups:\t \n");
    CHECK(status_line(grep().groups({7}), "Groups") == "Groups:\t7 \n");
  }
  SECTION("as root, uid() without groups() drops root's groups") {
    if (!root) return;
    const gid_t mine[] = {4, 27};
    REQUIRE(::setgroups(2, mine) == 0);
    std::string with = status_line(grep(), "Groups"), dropped = status_line(grep().uid(65534), "Groups");
    ::setgroups(0, nullptr);
    CHECK(with == "Groups:\t4 27 \n");
    CHECK(dropped == "Groups:\t \n");
  }
  SECTION("the back end: clone_vfork, chosen automatically; posix_spawn by hand is refused") {
    CHECK_THAT(sp::command{"id"}.uid(0).plan().to_string(), Contains("via clone_vfork (uid())"));
    CHECK_THAT(sp::command{"id"}.plan().to_string(), Contains("via posix_spawn"));
    CHECK_THAT(thrown<sp::argument_error>(sp::command{"id"}.uid(0).gid(0).backend(sp::spawn_backend::posix_spawn)),
               Contains("command 'id': backend(posix_spawn) cannot apply uid(), gid()"));
  }
}

TEST_CASE("umask: the child's file creation mask (CPython test_umask)") {
  CHECK(sp::run(sp::command{"sh", "-c", "umask"}.umask(027)).out == "0027\n");
  CHECK(sp::run(sp::command{"sh", "-c", "umask"}.umask(0)).out == "0000\n");
  // A file the child creates gets 0666 & ~umask.
  fs::path dir = fs::temp_directory_path() / ("sp_umask_" + std::to_string(::getpid()));
  fs::create_directory(dir);
  auto f = dir / "made";
  sp::run(sp::command{"touch", f.string()}.umask(0077)).check();
  struct stat st {};
  REQUIRE(::stat(f.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  fs::remove_all(dir);
}

TEST_CASE("limit: any RLIMIT_*, soft and hard") {
  rlimit cur{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &cur) == 0);
  const rlim_t hard = std::min<rlim_t>(cur.rlim_max, 512);
  SECTION("ulimit in the child shows both") {
    auto r = sp::run(sp::command{"sh", "-c", "ulimit -n; ulimit -Hn"}.limit(RLIMIT_NOFILE, 64, hard));
    CHECK(r.out == fd_limit_line(64, hard));
    CHECK(sp::run(sp::command{"sh", "-c", "ulimit -c"}.limit(RLIMIT_CORE, 0)).out == "0\n");
  }
  SECTION("several limits; a second limit() for a resource replaces the first") {
    auto c = sp::command{"sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"}
                 .limit(RLIMIT_NOFILE, 10, 20)
                 .limit(RLIMIT_CORE, 0, RLIM_INFINITY)
                 .limit(RLIMIT_NOFILE, 32, 64);
    CHECK(sp::run(c).out == "32\n64\n0\n");
  }
  SECTION("one the kernel refuses is a spawn_error naming the limit") {
    // Above fs.nr_open: refused even to root.
    const rlim_t huge = rlim_t{1} << 40;
    sp::spawn_error e(0, "", "");
    CHECK(thrown<sp::spawn_error>(sp::command{"true"}.limit(RLIMIT_NOFILE, huge, huge), &e) ==
          "cannot start 'true': setrlimit RLIMIT_NOFILE (soft " + std::to_string(huge) + ", hard " +
              std::to_string(huge) + "): Operation not permitted");
    CHECK(e.step() == "setrlimit");
    CHECK(e.code() == std::errc::operation_not_permitted);
  }
}

TEST_CASE("nice: the child's nice value, absolute") {
  int mine = ::getpriority(PRIO_PROCESS, 0);
  CHECK(sp::run(sp::command{"nice"}.nice(std::min(mine + 5, 19))).out == std::to_string(std::min(mine + 5, 19)) + "\n");
  if (::geteuid() == 0) {
    CHECK(sp::run(sp::command{"nice"}.nice(-5)).out == "-5\n");
  } else {
    WARN("not root: a lower nice value is refused, checked instead");
    CHECK_THAT(thrown<sp::spawn_error>(sp::command{"nice"}.nice(-20)), Contains("setpriority (nice -20)"));
  }
}

TEST_CASE("cpu_affinity: the CPUs the child may run on") {
  cpu_set_t set;
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  int first = 0;
  while (!CPU_ISSET(first, &set)) ++first;
  CHECK(status_line(grep().cpu_affinity({first}), "Cpus_allowed_list") ==
        "Cpus_allowed_list:\t" + std::to_string(first) + "\n");
  // No CPU of the set exists: the kernel says EINVAL, reported with the step.
  sp::spawn_error e(0, "", "");
  CHECK_THAT(thrown<sp::spawn_error>(sp::command{"true"}.cpu_affinity({CPU_SETSIZE - 1}), &e),
             Contains("sched_setaffinity: Invalid argument"));
  CHECK(e.code() == std::errc::invalid_argument);
}

TEST_CASE("arg0: argv[0] differs from the program run, on both back ends") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  auto r = sp::run(sp::command{"cat", "/proc/self/cmdline"}.arg0("kitty").backend(b));
  CHECK(r.out == std::string("kitty\0/proc/self/cmdline\0", 25));
  // sh -c with nothing after the script takes $0 from its argv[0]; a leading '-'
  // is how login shells are named.
  CHECK(sp::run(sp::command{"sh", "-c", "echo $0"}.arg0("-sh").backend(b)).out == "-sh\n");
  CHECK_THAT(sp::command{"cat"}.arg0("kitty").plan().to_string(), Contains("exec '" + sp::find_program("cat")->string() + "' as 'kitty'"));
}

TEST_CASE("blocked_signals: the child starts with SIGTERM blocked, on both back ends") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  SECTION("SigBlk shows the mask; the default is empty") {
    CHECK(status_line(grep().blocked_signals({SIGTERM}).backend(b), "SigBlk") == "SigBlk:\t0000000000004000\n");
    CHECK(status_line(grep().blocked_signals({SIGTERM, SIGUSR1}).backend(b), "SigBlk") ==
          "SigBlk:\t0000000000004200\n");
    CHECK(status_line(grep().backend(b), "SigBlk") == "SigBlk:\t0000000000000000\n");
  }
  SECTION("a SIGTERM sent at once stays pending: cat is not killed by it") {
    auto p = sp::command{"cat"}.in(sp::pipe).out(sp::pipe).blocked_signals({SIGTERM}).backend(b).spawn();
    CHECK(p.signal(SIGTERM));
    p.in().write_all("still here\n");
    p.in().close();
    CHECK(p.out().read_line() == "still here");
    CHECK(p.wait().code() == 0);
  }
}

namespace {
int say_hello(void* text) {
  const char* s = static_cast<const char*>(text);
  ssize_t n = ::write(1, s, std::char_traits<char>::length(s));  // async-signal-safe
  return n < 0 ? errno : 0;
}
}  // namespace

TEST_CASE("pre_exec: a hook in the child before exec") {
  SECTION("it runs in the child, with the child's fds in place") {
    static char text[] = "hello from the hook\n";
    auto r = sp::run(sp::command{"echo", "then echo"}.pre_exec(say_hello, text));
    CHECK(r.out == "hello from the hook\nthen echo\n");
  }
  SECTION("a non-zero return is an errno, reported like an exec failure; nothing runs") {
    sp::spawn_error e(0, "", "");
    CHECK(thrown<sp::spawn_error>(sp::command{"touch", "/nonexistent-sp"}.pre_exec([](void*) { return EPERM; }),
                                  &e) == "cannot start 'touch /nonexistent-sp': pre_exec hook: Operation not permitted");
    CHECK(e.step() == "pre_exec hook");
    CHECK(e.code() == std::errc::operation_not_permitted);
  }
  SECTION("it takes clone_vfork; posix_spawn by hand is refused") {
    CHECK_THAT(sp::command{"true"}.pre_exec(say_hello).plan().to_string(), Contains("via clone_vfork (pre_exec())"));
    CHECK_THAT(thrown<sp::argument_error>(sp::command{"true"}.pre_exec(say_hello).backend(sp::spawn_backend::posix_spawn)),
               Contains("backend(posix_spawn) cannot apply pre_exec()"));
  }
  SECTION("with kill_on_parent_death too (the spawner thread's clone)") {
    static char text[] = "hook\n";
    CHECK(sp::run(sp::command{"true"}.pre_exec(say_hello, text).kill_on_parent_death()).out == "hook\n");
  }
}

TEST_CASE("every bad setting is an argument_error naming the command and the setting; nothing starts") {
  sp::command c{"id"};
  auto problem = [&](auto&& set) -> std::string {
    try {
      sp::command copy = c;
      set(copy);
      copy.validate();
    } catch (const sp::argument_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      return e.what();
    }
    return "(accepted)";
  };
  CHECK(problem([](auto& x) { x.uid(static_cast<uid_t>(-1)); }) == "command 'id': uid: -1 is not a user id");
  CHECK(problem([](auto& x) { x.gid(static_cast<gid_t>(-1)); }) == "command 'id': gid: -1 is not a group id");
  CHECK(problem([](auto& x) { x.groups({1, static_cast<gid_t>(-1)}); }) == "command 'id': groups: -1 is not a group id");
  CHECK_THAT(problem([](auto& x) { x.groups(std::vector<gid_t>(70000, 1)); }),
             Contains("command 'id': groups: 70000 groups, the system allows"));
  CHECK(problem([](auto& x) { x.umask(01000); }) == "command 'id': umask: 512 is not a mask (0 to 0777)");
  CHECK(problem([](auto& x) { x.limit(99, 1); }) == "command 'id': limit: 99 is not an RLIMIT_* resource");
  CHECK(problem([](auto& x) { x.limit(-1, 1); }) == "command 'id': limit: -1 is not an RLIMIT_* resource");
  CHECK(problem([](auto& x) { x.limit(RLIMIT_NOFILE, 20, 10); }) ==
        "command 'id': limit RLIMIT_NOFILE: the soft limit 20 is above the hard limit 10");
  CHECK(problem([](auto& x) { x.limit(RLIMIT_CORE, RLIM_INFINITY, 0); }) ==
        "command 'id': limit RLIMIT_CORE: the soft limit unlimited is above the hard limit 0");
  CHECK(problem([](auto& x) { x.nice(20); }) == "command 'id': nice: 20 is not a nice value (-20 to 19)");
  CHECK(problem([](auto& x) { x.nice(-21); }) == "command 'id': nice: -21 is not a nice value (-20 to 19)");
  CHECK(problem([](auto& x) { x.cpu_affinity({}); }) == "command 'id': cpu_affinity: no CPUs given");
  CHECK(problem([](auto& x) { x.cpu_affinity({0, -1}); }) ==
        "command 'id': cpu_affinity: -1 is not a CPU number (0 to " + std::to_string(CPU_SETSIZE - 1) + ")");
  CHECK(problem([](auto& x) { x.arg0(std::string("a\0b", 3)); }) == "command 'id': arg0 contains a NUL byte");
  CHECK(problem([](auto& x) { x.blocked_signals({SIGKILL}); }) ==
        "command 'id': blocked_signals: SIGKILL cannot be blocked");
  CHECK(problem([](auto& x) { x.blocked_signals({SIGTERM, SIGSTOP}); }) ==
        "command 'id': blocked_signals: SIGSTOP cannot be blocked");
  CHECK(problem([](auto& x) { x.blocked_signals({32}); }) == "command 'id': blocked_signals: 32 is not a signal to block");
  CHECK(problem([](auto& x) { x.blocked_signals({0}); }) == "command 'id': blocked_signals: 0 is not a signal to block");
  CHECK(problem([](auto& x) { x.blocked_signals({65}); }) == "command 'id': blocked_signals: 65 is not a signal to block");
  CHECK(problem([](auto& x) { x.pre_exec(nullptr); }) == "command 'id': pre_exec: the hook is a null pointer");
  CHECK(problem([](auto& x) { x.umask(022).nice(1).backend(sp::spawn_backend::posix_spawn); }) ==
        "command 'id': backend(posix_spawn) cannot apply umask(), nice(): leave the backend automatic "
        "(clone_vfork does)");
  // posix_spawn can do these two itself.
  CHECK(problem([](auto& x) { x.arg0("x").blocked_signals({SIGTERM}).backend(sp::spawn_backend::posix_spawn); }) ==
        "(accepted)");
}

TEST_CASE("plan(): what spawn() would do, printable") {
  auto text = sp::command{"sh", "-c", "true"}
                  .umask(022)
                  .limit(RLIMIT_CORE, 0)
                  .nice(3)
                  .cpu_affinity({0})
                  .blocked_signals({SIGTERM})
                  .plan()
                  .to_string();
  CHECK_THAT(text, Contains("spawn 'sh -c true': exec '" + sp::find_program("sh")->string() +
                            "' via clone_vfork (umask(), limit(), nice(), cpu_affinity())"));
  CHECK_THAT(text, Contains("; umask 0022; RLIMIT_CORE 0/0; nice 3; cpus 0; blocked signals 15; fds >= 3 closed"));
}
