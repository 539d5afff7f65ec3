// Whole-tree control (tree.hpp): a child and every descendant, including a
// double-forked setsid daemon, killed, frozen and measured through a cgroup v2 of
// its own; subreaper mode in a forked test child (so this program never becomes a
// subreaper); the errors for limits whose controller is not enabled. Every pid
// is learnt from the processes themselves (through a pipe), every death is seen
// through a pidfd: nothing sleeps.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

// A shell whose grandchild leaves its session (setsid) and whose middle process
// exits at once: the daemon is re-parented away from the child. It prints the
// daemon's pid on its first line, then the child execs sleep.
const char* const daemon_script =
    "(setsid sh -c 'echo $$; exec sleep 1000 >/dev/null' &); exec sleep 1000";

sp::command daemon_shell(sp::tree_options o = {}) {
  return sp::command::shell(daemon_script).out(sp::pipe).tree(std::move(o));
}

pid_t read_pid(sp::process& p) {
  auto line = p.out().read_line();
  REQUIRE(line);
  return static_cast<pid_t>(std::stol(std::string(*line)));
}

int pidfd_of(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// True once the process behind `pidfd` has exited (its pidfd polls readable).
bool exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// A cgroup tree here, or why not (then the caller WARNs and returns).
std::optional<std::string> no_cgroup() {
  try {
    auto p = sp::command{"true"}.tree({.use = sp::tree_mechanism::cgroup}).spawn();
    p.wait();
    return std::nullopt;
  } catch (const sp::spawn_error& e) {
    return std::string(e.what());
  }
}
#define REQUIRE_CGROUP()                                                 \
  do {                                                                   \
    if (auto why_ = no_cgroup()) {                                       \
      WARN("skipped: no writable cgroup v2 on this machine: " << *why_); \
      return;                                                            \
    }                                                                    \
  } while (0)

std::string session_of(pid_t pid) {
  return std::to_string(::getsid(pid));
}

}  // namespace

TEST_CASE(
    "cgroup tree: kill() reaches a double-forked setsid daemon; the cgroup goes with the handle") {
  REQUIRE_CGROUP();
  fs::path dir;
  int daemon_fd = -1;
  {
    auto p = daemon_shell().spawn();
    REQUIRE(p.tree().mechanism() == sp::tree_mechanism::cgroup);
    CHECK_THAT(p.tree().to_string(), Contains("cgroup v2 /"));
    dir = p.tree().cgroup_path();
    CHECK(fs::is_directory(dir));
    const pid_t daemon = read_pid(p);
    daemon_fd = pidfd_of(daemon);
    REQUIRE(daemon_fd >= 0);
    // It left the child's session and is no longer its descendant by parent links.
    CHECK(session_of(daemon) != session_of(p.pid()));
    auto pids = p.tree().pids();
    CHECK(std::find(pids.begin(), pids.end(), daemon) != pids.end());
    CHECK(std::find(pids.begin(), pids.end(), p.pid()) != pids.end());
    // A plain kill() of the child's group would miss it; the tree does not.
    p.tree().kill();
    CHECK(exited(daemon_fd));
    CHECK(p.tree().pids().empty());
    CHECK(p.wait().signal() == SIGKILL);
    CHECK(fs::is_directory(dir));  // still there while the handle lives (usage() reads it)
  }
  CHECK_FALSE(fs::exists(dir));
  ::close(daemon_fd);
}

TEST_CASE("cgroup tree: the handle's destructor kills every member and removes the cgroup") {
  REQUIRE_CGROUP();
  fs::path dir;
  int daemon_fd = -1;
  {
    auto p = daemon_shell().spawn();
    dir = p.tree().cgroup_path();
    daemon_fd = pidfd_of(read_pid(p));
    REQUIRE(daemon_fd >= 0);
  }
  CHECK(exited(daemon_fd));
  CHECK_FALSE(fs::exists(dir));
  ::close(daemon_fd);
}

TEST_CASE("cgroup tree: signal() reaches every member; freeze() and thaw() show in cgroup.events") {
  REQUIRE_CGROUP();
  auto p = daemon_shell().spawn();
  const pid_t daemon = read_pid(p);
  const std::string events = (p.tree().cgroup_path() / "cgroup.events").string();
  auto frozen_line = [&] {
    std::string s;
    REQUIRE(sp::detail::cgroup::read_file(events, s));
    return sp::detail::cgroup::field(s, "frozen");
  };
  SECTION("freeze and thaw") {
    CHECK_FALSE(p.tree().frozen());
    p.tree().freeze();
    CHECK(frozen_line() == 1);
    CHECK(p.tree().frozen());
    // Frozen, not dead: both are still members.
    CHECK(p.tree().pids().size() == 2);
    p.tree().thaw();
    CHECK(frozen_line() == 0);
    CHECK_FALSE(p.tree().frozen());
  }
  SECTION("kill() of a frozen tree") {
    p.tree().freeze();
    int fd = pidfd_of(daemon);
    p.tree().kill();
    CHECK(exited(fd));
    ::close(fd);
  }
  SECTION("signal(SIGTERM): the daemon and the child both die of it") {
    int fd = pidfd_of(daemon);
    CHECK(p.tree().signal(SIGTERM));
    CHECK(p.wait().signal() == SIGTERM);
    CHECK(p.tree().wait_empty_for(30s));
    CHECK(exited(fd));
    ::close(fd);
  }
}

TEST_CASE(
    "tree().terminate(grace): SIGTERM to every member, SIGKILL only for those that ignore it") {
  REQUIRE_CGROUP();
  SECTION("all of them stop on SIGTERM") {
    auto p = daemon_shell().spawn();
    int fd = pidfd_of(read_pid(p));
    CHECK(p.tree().terminate(30s));
    CHECK(exited(fd));
    CHECK(p.wait().signal() == SIGTERM);
    ::close(fd);
  }
  SECTION("a daemon ignoring SIGTERM is killed at the end of the grace period") {
    auto p = sp::command::shell(
                 "(setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 1000 >/dev/null 2>&1' &); "
                 "exec sleep 1000")
                 .out(sp::pipe)
                 .tree()
                 .spawn();
    int fd = pidfd_of(read_pid(p));
    CHECK_FALSE(p.tree().terminate(200ms));
    CHECK(exited(fd));
    CHECK(p.wait().signal() == SIGTERM);  // the shell itself took SIGTERM
    CHECK_THROWS_AS(p.tree().terminate(-1s), sp::argument_error);
    ::close(fd);
  }
}

TEST_CASE(
    "cgroup tree: usage() after a CPU-burning child; peak memory says when it is unavailable") {
  REQUIRE_CGROUP();
  // A grandchild burns the CPU, so the figure is the tree's, not only the child's.
  auto p = sp::command::shell("sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done'")
               .tree()
               .spawn();
  CHECK(p.wait().success());
  sp::tree_usage u = p.tree().usage();
  CHECK(u.cpu > 10ms);
  CHECK(u.user + u.system <= u.cpu + 1ms);
  CHECK(u.user > 0us);
  if (u.memory_peak) {
    CHECK(*u.memory_peak > 0);
  } else {
    CHECK_THAT(u.to_string(), Contains("peak memory unavailable"));
    WARN("memory.peak not available here: " << u.to_string());
  }
}

TEST_CASE("cgroup tree: limits need their controller; the error names it") {
  REQUIRE_CGROUP();
  std::string why;
  const fs::path parent = sp::detail::cgroup::own_dir(why);
  std::string enabled;
  sp::detail::cgroup::read_file((parent / "cgroup.subtree_control").string(), enabled);
  struct limit_case {
    const char* controller;
    const char* option;
    const char* file;
    sp::tree_options options;
    std::string value;
  };
  const limit_case cases[] = {
      {"memory", "memory_max", "memory.max", {.memory_max = 64u << 20}, std::to_string(64u << 20)},
      {"pids", "pids_max", "pids.max", {.pids_max = 7}, "7"},
      {"cpu", "cpu_max", "cpu.max", {.cpu_max = sp::cpu_quota{50ms, 100ms}}, "50000 100000"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.controller);
    auto cmd = sp::command{"cat", std::string("/proc/self/cgroup")}.tree(c.options);
    if (sp::detail::cgroup::has_word(enabled, c.controller)) {
      auto p = cmd.out(sp::pipe).spawn();
      std::string value;
      REQUIRE(sp::detail::cgroup::read_file((p.tree().cgroup_path() / c.file).string(), value));
      CHECK(value == c.value + "\n");
      p.wait();
      continue;
    }
    WARN("the " << c.controller << " controller is not enabled in " << parent.string()
                << "/cgroup.subtree_control: only its error is checked");
    try {
      cmd.spawn();
      FAIL("spawn() should have thrown");
    } catch (const sp::spawn_error& e) {
      CHECK(e.step() == "tree()");
      CHECK(e.code() == std::errc::operation_not_supported);
      CHECK_THAT(e.what(), Contains(c.option) &&
                               Contains(std::string("the ") + c.controller + " controller"));
    }
  }
}

TEST_CASE("cgroup tree: a failed spawn leaves no cgroup directory behind") {
  REQUIRE_CGROUP();
  std::string why;
  const fs::path parent = sp::detail::cgroup::own_dir(why);
  auto ours = [&] {
    int n = 0;
    const std::string prefix = "sp-" + std::to_string(::getpid()) + "-";
    for (const auto& e : fs::directory_iterator(parent))
      if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
    return n;
  };
  const int before = ours();
  CHECK_THROWS_AS(sp::command{"/no/such/program"}.tree().spawn(), sp::spawn_error);
  CHECK(ours() == before);
  CHECK_THROWS_AS(sp::command{"true"}.tree().backend(sp::spawn_backend::posix_spawn).spawn(),
                  sp::argument_error);
  CHECK(ours() == before);
  // plan() says a tree takes the clone back end.
  CHECK_THAT(sp::command{"true"}.tree().plan().to_string(),
             Contains("clone_vfork (tree())") && Contains("process tree"));
}

TEST_CASE("cgroup tree: under a parent directory the user gives; detach() is refused") {
  REQUIRE_CGROUP();
  std::string why;
  const fs::path parent =
      fs::path(sp::detail::cgroup::own_dir(why)) / ("sp-test-parent-" + std::to_string(::getpid()));
  REQUIRE(::mkdir(parent.c_str(), 0755) == 0);
  {
    auto p = sp::command{"sleep", "1000"}.tree({.cgroup_parent = parent}).spawn();
    CHECK(p.tree().cgroup_path().parent_path() == parent);
    CHECK(p.tree().pids() == std::vector<pid_t>{p.pid()});
    std::string procs;
    REQUIRE(
        sp::detail::cgroup::read_file((p.tree().cgroup_path() / "cgroup.procs").string(), procs));
    CHECK(procs == std::to_string(p.pid()) + "\n");
    CHECK_THROWS_AS(p.detach(), sp::argument_error);
    CHECK_THROWS_AS(sp::command{"true"}.spawn().tree(), sp::argument_error);
  }
  // Only our own empty directory is left: the tree's is gone.
  CHECK(::rmdir(parent.c_str()) == 0);
}

TEST_CASE(
    "run() of a tree: a descendant that outlived the child is reported, and waited for with "
    "wait_for_tree") {
  REQUIRE_CGROUP();
  SECTION("leftovers are reported, and killed when run() returns") {
    auto r = sp::run(sp::command::shell(
                         "(setsid sh -c 'echo $$; exec sleep 1000 >/dev/null 2>&1' &); echo child")
                         .tree(),
                     {.timeout = 30s});
    CHECK(r.success());
    CHECK(r.descendants_outlived);
    const pid_t daemon =
        static_cast<pid_t>(std::stol(r.out.substr(r.out.find_first_of("0123456789"))));
    int fd = pidfd_of(daemon);
    CHECK((fd < 0 || exited(fd)));
    if (fd >= 0) ::close(fd);
  }
  SECTION("wait_for_tree: run() returns after the last descendant") {
    char tmpl[] = "/tmp/sp_tree_XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const fs::path dir = tmpl;
    // The daemon waits for the child's end of a FIFO to close (the child exiting),
    // then until the child's pid is gone (run() reaped it), then writes a file: it
    // outlives the child by construction, with no sleep.
    auto r =
        sp::run(sp::command::shell(
                    "mkfifo f; c=$$; (setsid sh -c \"cat f; while kill -0 $c 2>/dev/null; do :; done; "
                    "echo late > late.txt\" >/dev/null 2>&1 &); exec 3>f; echo child")
                    .cwd(dir),
                {.timeout = 30s, .wait_for_tree = true});
    CHECK(r.success());
    CHECK(r.out == "child\n");
    CHECK(r.descendants_outlived);
    std::string late;
    CHECK(sp::detail::cgroup::read_file((dir / "late.txt").string(), late));
    CHECK(late == "late\n");
    fs::remove_all(dir);
  }
  SECTION("wait_for_tree with a timeout: a daemon that never ends is killed with the tree") {
    try {
      sp::run(sp::command::shell("(setsid sh -c 'exec sleep 1000' >/dev/null 2>&1 &); echo child"),
              {.timeout = 300ms, .wait_for_tree = true});
      FAIL("run() should have timed out");
    } catch (const sp::timeout_error& e) {
      CHECK_THAT(e.what(), Contains("descendants in its tree were still running"));
      CHECK(e.status());
    }
  }
  SECTION("a command without descendants") {
    auto quiet = sp::run(sp::command{"echo", "hi"}.tree(), {.timeout = 30s, .wait_for_tree = true});
    CHECK(quiet.out == "hi\n");
    CHECK_FALSE(quiet.descendants_outlived);
  }
}

TEST_CASE("subreaper mode: without become_subreaper() it is refused, naming the remedy") {
  int was = 0;
  REQUIRE(::prctl(PR_GET_CHILD_SUBREAPER, &was) == 0);
  if (was != 0) {
    WARN("this test program is a subreaper already: the refusal cannot be seen");
    return;
  }
  try {
    sp::command{"true"}.tree({.use = sp::tree_mechanism::subreaper}).spawn();
    FAIL("spawn() should have thrown");
  } catch (const sp::spawn_error& e) {
    CHECK(e.step() == "tree()");
    CHECK_THAT(e.what(), Contains("become_subreaper()"));
  }
  CHECK_FALSE(sp::is_subreaper());
}

// Runs `body` in a forked child of this test program (so the subreaper setting
// stays there) and returns what it reported: "" for success, else the failure.
template <class F>
std::string in_forked_child(F body) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    std::string err;
    try {
      err = body();
    } catch (const std::exception& e) {
      err = std::string("exception: ") + e.what();
    }
    if (::write(p[1], err.data(), err.size()) < 0) _exit(3);
    _exit(err.empty() ? 0 : 1);
  }
  ::close(p[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) != 0;)
    if (n > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  int ws = 0;
  REQUIRE(::waitpid(pid, &ws, 0) == pid);
  CHECK(WIFEXITED(ws));
  return out;
}

TEST_CASE("subreaper mode (in a forked child): finds, kills and reaps the adopted daemon") {
  std::string failure = in_forked_child([]() -> std::string {
    sp::become_subreaper();
    if (!sp::is_subreaper()) return "is_subreaper() false after become_subreaper()";
    auto p = daemon_shell({.use = sp::tree_mechanism::subreaper}).spawn();
    if (p.tree().mechanism() != sp::tree_mechanism::subreaper)
      return "mechanism " + p.tree().to_string();
    if (!p.tree().cgroup_path().empty()) return "a cgroup path in subreaper mode";
    auto line = p.out().read_line();
    if (!line) return "no pid from the daemon";
    const pid_t daemon = static_cast<pid_t>(std::stol(std::string(*line)));
    int fd = pidfd_of(daemon);
    if (fd < 0) return "pidfd_open of the daemon failed";
    // Its middle process exited: the daemon is our (adopted) child now, and a member.
    auto pids = p.tree().pids();
    if (std::find(pids.begin(), pids.end(), daemon) == pids.end())
      return "daemon not among the members";
    if (std::find(pids.begin(), pids.end(), p.pid()) == pids.end())
      return "child not among the members";
    p.tree().freeze();
    if (!p.tree().frozen()) return "not frozen (SIGSTOP) after freeze()";
    p.tree().thaw();
    p.tree().kill();
    if (!exited(fd)) return "the daemon survived kill()";
    // Reaped by the tree: waiting for it again finds nothing to wait for.
    siginfo_t info{};
    if (::syscall(SYS_waitid, P_PIDFD, fd, &info, WEXITED | WNOHANG, nullptr) == 0)
      return "the daemon was not reaped";
    ::close(fd);
    if (p.wait().signal() != SIGKILL) return "the child was not killed";
    try {
      p.tree().usage();
      return "usage() in subreaper mode did not throw";
    } catch (const sp::error& e) {
      if (std::string(e.what()).find("needs the cgroup mechanism") == std::string::npos)
        return e.what();
    }
    sp::become_subreaper(false);
    return sp::is_subreaper() ? "still a subreaper" : "";
  });
  CHECK(failure == "");
}
