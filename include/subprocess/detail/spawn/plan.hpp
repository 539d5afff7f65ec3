// subprocess/detail/spawn/plan.hpp - the spawn plan. Not public API.
//
// Starting a child has three parts, kept apart:
//   1. command::plan() (command.hpp) validates the command and computes everything
//      the child needs into a spawn_plan: the program path, argv, envp, the fd
//      layout, the settings, the back end. Every bad-input check happens here,
//      before anything is created, and names the command and the setting.
//   2. command::spawn() opens the fds the plan asks for (pipes, files) and fills a
//      child_plan: plain pointers into the spawn_plan, nothing the child must
//      allocate or look up.
//   3. A back end (posix_spawn.hpp, clone_vfork.hpp) starts the child from the
//      child_plan; its child side runs only async-signal-safe system calls. A
//      failure comes back as a spawn_failure (errno + step), which
//      raise_spawn_failure() turns into the spawn_error the caller sees.
#pragma once

#include <algorithm>
#include <cstdio>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../error.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"

// The vfork child must not run sanitizer instrumentation: it shares the parent's
// memory, including the sanitizer's own state.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8)
#define SUBPROCESS_CHILD_CODE \
  __attribute__((noinline, no_sanitize("address", "thread", "undefined")))
#else
#define SUBPROCESS_CHILD_CODE __attribute__((noinline))
#endif

namespace subprocess::detail {

// dup2(from, to) in the child. The parent arranges that every `from` is above
// every `to`, except for merges (2>&1), which come last.
struct fd_move {
  int from;
  int to;
};

// An inclusive range of fds to close in the child: the gaps between mapped targets.
struct fd_range {
  int lo;
  int hi;
};

// One RLIMIT_* for the child.
struct resource_limit {
  int resource;
  rlim_t soft;
  rlim_t hard;
};

// The steps a start can fail at; step_name() is what spawn_error::step() says.
enum class child_step : int {
  none, stack, sigmask, pidfd, setsid, setpgid, pdeathsig, dup, chdir, exec,
  spawner_thread, setrlimit, setpriority, setaffinity, setgroups, setgid, setuid,
  pre_exec, ctty, cgroup, count_
};

inline const char* step_name(child_step s) noexcept {
  switch (s) {
    case child_step::none: return "spawn";
    case child_step::stack: return "allocate the child's stack";
    case child_step::sigmask: return "block signals";
    case child_step::pidfd: return "pidfd_open";
    case child_step::setsid: return "setsid";
    case child_step::setpgid: return "setpgid";
    case child_step::pdeathsig: return "prctl(PR_SET_PDEATHSIG)";
    case child_step::dup: return "dup2";
    case child_step::chdir: return "chdir";
    case child_step::exec: return "exec";
    case child_step::spawner_thread: return "start the spawner thread";
    case child_step::setrlimit: return "setrlimit";
    case child_step::setpriority: return "setpriority";
    case child_step::setaffinity: return "sched_setaffinity";
    case child_step::setgroups: return "setgroups";
    case child_step::setgid: return "setgid";
    case child_step::setuid: return "setuid";
    case child_step::pre_exec: return "pre_exec hook";
    case child_step::ctty: return "acquire the controlling terminal";
    case child_step::cgroup: return "join the tree's cgroup";
    case child_step::count_: break;
  }
  return "spawn";
}

// "RLIMIT_NOFILE"; "resource 42" for one this table does not know.
inline std::string rlimit_name(int r) {
  static constexpr const char* names[] = {
      "RLIMIT_CPU",    "RLIMIT_FSIZE",   "RLIMIT_DATA",   "RLIMIT_STACK",  "RLIMIT_CORE",
      "RLIMIT_RSS",    "RLIMIT_NPROC",   "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
      "RLIMIT_LOCKS",  "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO",
      "RLIMIT_RTTIME"};
  if (r >= 0 && r < static_cast<int>(sizeof names / sizeof names[0])) return names[r];
  return "resource " + std::to_string(r);
}
inline std::string rlim_text(rlim_t v) {
  return v == RLIM_INFINITY ? std::string("unlimited") : std::to_string(v);
}

// The credentials, limits and start state a command asks for (command.hpp's
// uid(), gid(), groups(), umask(), limit(), nice(), cpu_affinity(), arg0(),
// blocked_signals(), pre_exec()). Validated by command::plan().
struct child_settings {
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  std::optional<std::vector<gid_t>> groups;
  std::optional<mode_t> umask;
  std::vector<resource_limit> limits;  // one per resource, in the order given
  std::optional<int> nice;
  std::optional<std::vector<int>> cpus;
  std::optional<std::string> arg0;
  std::vector<int> blocked_signals;  // the child's initial signal mask
  int (*pre_exec)(void*) = nullptr;
  void* pre_exec_arg = nullptr;

  // The settings posix_spawn cannot express, by the name of their option: they take
  // the clone_vfork back end. "" when there are none.
  std::string clone_only() const {
    std::string s;
    auto add = [&](bool on, const char* name) {
      if (!on) return;
      if (!s.empty()) s += ", ";
      s += name;
    };
    add(uid.has_value(), "uid()");
    add(gid.has_value(), "gid()");
    add(groups.has_value(), "groups()");
    add(umask.has_value(), "umask()");
    add(!limits.empty(), "limit()");
    add(nice.has_value(), "nice()");
    add(cpus.has_value(), "cpu_affinity()");
    add(pre_exec != nullptr, "pre_exec()");
    return s;
  }
};

// Which back end starts the child.
enum class spawn_method { posix_spawn, clone_vfork, spawner };

inline const char* method_name(spawn_method m) noexcept {
  switch (m) {
    case spawn_method::posix_spawn: return "posix_spawn";
    case spawn_method::clone_vfork: return "clone_vfork";
    case spawn_method::spawner: return "clone_vfork on the spawner thread";
  }
  return "?";
}

// Everything the child needs, as plain pointers (into a spawn_plan and the fds
// spawn() opened): what the back ends read. The clone child writes its failure
// into err/step/index; the parent reads them after the vfork.
struct child_plan {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;  // nullptr: the parent's
  const fd_move* moves = nullptr;
  int n_moves = 0;
  const fd_range* gaps = nullptr;  // closed after the moves
  int n_gaps = 0;
  int close_from = 3;  // every fd >= this is closed in the child
  int fd_limit = 0;    // RLIMIT_NOFILE, for the last-resort close loop
  bool setsid = false;
  bool setpgid = false;
  pid_t pgid = 0;  // with setpgid: 0 leads a new group, >0 joins that existing group
  int pdeathsig = 0;
  pid_t parent = 0;
  // pty.hpp: fd 0, a terminal's slave, becomes the controlling terminal of the new
  // session (needs setsid). The clone child asks with ioctl(TIOCSCTTY); posix_spawn
  // cannot, so its file actions re-open this path on fd 0 without O_NOCTTY after the
  // moves: glibc runs setsid before the file actions, and a session leader without a
  // terminal that opens one acquires it.
  const char* ctty = nullptr;
  // Set when another thread (the spawner) clones for the caller: the caller's nice
  // value and CPU affinity, applied in the child (best effort: lowering the nice
  // value below the cloning thread's needs CAP_SYS_NICE or RLIMIT_NICE; then the
  // child keeps the cloning thread's). The user's nice()/cpu_affinity() below win.
  bool caller_nice = false;
  int caller_nice_value = 0;
  bool caller_affinity = false;
  cpu_set_t caller_cpus{};
  // The settings (child_settings); each failure is reported.
  bool set_umask = false;
  mode_t umask = 0;
  const resource_limit* limits = nullptr;
  int n_limits = 0;
  bool set_nice = false;
  int nice = 0;
  bool set_affinity = false;
  cpu_set_t cpus{};
  const gid_t* groups = nullptr;
  int n_groups = -1;  // -1: leave the supplementary groups alone
  bool set_gid = false;
  gid_t gid = 0;
  bool set_uid = false;
  uid_t uid = 0;
  sigset_t sigmask{};  // the child's initial signal mask (empty by default)
  int (*pre_exec)(void*) = nullptr;
  void* pre_exec_arg = nullptr;
  // tree(): the cgroup.procs of the tree's cgroup, written "0" by the child first
  // thing (it moves itself, before it can start anything); -1: stay where we are.
  int cgroup_procs = -1;
  // Fault injection (tests): the errno each step fails with instead of its call.
  int faults[static_cast<int>(child_step::count_)] = {};
  // Written by the clone child on failure; read by the parent after the vfork.
  int err = 0;
  child_step step = child_step::none;
  int index = -1;  // with step setrlimit: which limit
};

struct spawned {
  pid_t pid = -1;
  unique_fd pidfd;  // may be empty: the kernel lacks pidfds, or `lost`
  // posix_spawn started the child, but it had exited and been reaped by the kernel
  // (SIGCHLD ignored) or by other code before pidfd_open (which then failed, or
  // found the pid given to a process that is not our child): it ran, its status is
  // gone. Not detected: the pid reused by another child of ours in that instant.
  bool lost = false;
};

struct spawn_failure {
  int err = 0;
  child_step step = child_step::none;
  int index = -1;  // with step setrlimit: which limit
};

inline bool reap_blocking(pid_t pid, int* status = nullptr) noexcept {
  int ws = 0;
  for (;;) {
    pid_t r = sys::waitpid(pid, &ws, 0);
    if (r == pid) {
      if (status) *status = ws;
      return true;
    }
    if (r < 0 && errno == EINTR) continue;
    return false;
  }
}

// ------------------------------------------------- lookups done in the parent --

inline bool is_executable_file(const std::string& p, int& err) {
  if (sys::access(p.c_str(), X_OK) != 0) {
    err = errno;
    return false;
  }
  struct stat st;
  if (sys::stat(p.c_str(), &st) != 0) {
    err = errno;
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    err = EACCES;
    return false;
  }
  return true;
}

// The parent's working directory, for re-basing relative program paths.
inline std::string current_dir(const std::string& cmdline) {
  std::string buf(256, '\0');
  for (;;) {
    if (sys::getcwd(buf.data(), buf.size()) != nullptr) {
      buf.resize(std::char_traits<char>::length(buf.c_str()));
      return buf;
    }
    if (errno != ERANGE) {
      int e = errno;
      SUBPROCESS_THROW(spawn_error(e, cmdline, "resolve program", "(cannot read the current directory)"));
    }
    buf.resize(buf.size() * 2);
  }
}

// execvp's search, done in the parent. Returns "" and sets err on failure. A name
// with a '/' is not searched and not checked: exec itself reports ENOENT/EACCES.
inline std::string find_program(const std::string& name, std::string_view path, int& err) {
  if (name.find('/') != std::string::npos) return name;
  bool denied = false;
  std::string cand;
  for (std::size_t start = 0;;) {
    std::size_t end = path.find(':', start);
    std::string_view dir = path.substr(start, end == std::string_view::npos ? end : end - start);
    cand.assign(dir.empty() ? "." : dir);
    cand += '/';
    cand += name;
    int e = 0;
    if (is_executable_file(cand, e)) return cand;
    if (e == EACCES) denied = true;
    // Like execvp: ENOENT/ENOTDIR mean "not here, keep looking"; anything else
    // (ENOMEM, EIO, ELOOP...) is a real error worth reporting as it is.
    if (e != ENOENT && e != ENOTDIR && e != EACCES) {
      err = e;
      return {};
    }
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  err = denied ? EACCES : ENOENT;
  return {};
}

// An fd the caller hands to a child (in/out/err(fd(n)), map_fd) must arrive the way
// a plain program expects it: blocking. O_NONBLOCK belongs to the open file
// description, which the child would share with the caller (a pipe_reader's end is
// non-blocking, so `cat`/`grep` reading it would fail with EAGAIN), and clearing it
// there would change an fd the caller still uses. So a non-blocking pipe or FIFO
// gets a new description of the same pipe for the child: open("/proc/self/fd/N"),
// O_NONBLOCK cleared on the copy only. Returns that fd (close-on-exec, the caller
// owns it), or -1: give the child `n` itself (it is blocking already, or it is not
// a pipe, or the reopen failed: no /proc, EACCES, ENXIO for a write end nobody
// reads). Sockets and terminals cannot be reopened this way and are passed as they
// are. `flags` is F_GETFL of n. Costs nothing for a blocking fd; three calls else.
inline int blocking_copy_for_child(int n, int flags) {
  if ((flags & O_NONBLOCK) == 0) return -1;
  struct stat st;
  if (sys::fstat(n, &st) != 0 || !S_ISFIFO(st.st_mode)) return -1;
  const std::string path = "/proc/self/fd/" + std::to_string(n);
  // O_NONBLOCK for the open itself: opening a FIFO end must never wait for a partner.
  int copy = sys::open(path.c_str(), (flags & O_ACCMODE) | O_NONBLOCK);
  if (copy < 0) return -1;
  if (sys::fcntl(copy, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    sys::close(copy);
    return -1;
  }
  return copy;
}

// What is wrong with a working directory, checked in the parent ("" if nothing
// seen; then err is untouched): "to 'dir' (no such directory)" and the like, with
// err set to the errno a chdir() would give.
inline std::string cwd_problem(const std::filesystem::path& dir, int& err) {
  const std::string quoted = "to '" + dir.string() + "'";
  if (dir.empty()) {
    err = ENOENT;
    return "to '' (the working directory is an empty string; leave cwd() unset to run in "
           "the parent's)";
  }
  struct stat st;
  if (sys::stat(dir.c_str(), &st) != 0) {
    err = errno;
    return quoted + (err == ENOENT ? " (no such directory)" : "");
  }
  if (!S_ISDIR(st.st_mode)) {
    err = ENOTDIR;
    return quoted + " (not a directory)";
  }
  if (sys::access(dir.c_str(), X_OK) != 0) {
    err = errno;
    return quoted + " (cannot enter it)";
  }
  return {};
}

// The kernel refused exec with E2BIG: say how big argv and the environment are, and
// the limits (the total, about a quarter of RLIMIT_STACK; each string at most 32
// pages, MAX_ARG_STRLEN).
inline std::string too_big_detail(const std::string& path, char* const* argv, char* const* envp) {
  auto measure = [](char* const* v, std::size_t& bytes, std::size_t& count, std::size_t& longest) {
    for (; v != nullptr && *v != nullptr; ++v, ++count) {
      std::size_t n = std::char_traits<char>::length(*v) + 1;
      bytes += n + sizeof(char*);
      longest = std::max(longest, n);
    }
  };
  std::size_t abytes = 0, acount = 0, ebytes = 0, ecount = 0, longest = 0;
  measure(argv, abytes, acount, longest);
  measure(envp, ebytes, ecount, longest);
  long limit = ::sysconf(_SC_ARG_MAX);
  constexpr std::size_t max_string = 32 * 4096;  // MAX_ARG_STRLEN, with its NUL
  return "'" + path + "': the argument list and environment are too large for the kernel (" +
         std::to_string(acount) + " arguments, " + std::to_string(abytes) + " bytes; " +
         std::to_string(ecount) + " environment variables, " + std::to_string(ebytes) +
         " bytes; together at most " + (limit > 0 ? std::to_string(limit) : std::string("?")) +
         " bytes; longest single string " + std::to_string(longest) + " bytes, at most " +
         std::to_string(max_string) + ")";
}

// A command line short enough for an error message: a huge one (E2BIG) is cut.
inline std::string abbreviated(const std::string& cmdline, std::size_t argc) {
  constexpr std::size_t keep = 200;
  if (cmdline.size() <= keep) return cmdline;
  return cmdline.substr(0, keep) + "... (" + std::to_string(argc) + " arguments, " +
         std::to_string(cmdline.size()) + " characters)";
}

// A C-style, null-terminated array of pointers into strings that outlive it.
inline std::vector<char*> c_array(const std::vector<std::string>& v) {
  std::vector<char*> a;
  a.reserve(v.size() + 1);
  for (const auto& s : v) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  return a;
}

// ------------------------------------------------------------- the spawn plan --

// A validated command, ready to start: built by command::plan(), which throws
// argument_error or spawn_error for anything wrong before anything is created.
// Owns its strings; to_string() prints it (for logs and tests).
struct spawn_plan {
  std::string cmdline;  // shell-quoted, for errors
  std::string path;     // the program to exec, resolved
  std::vector<std::string> argv;                  // argv[0] is arg0() when set
  std::optional<std::vector<std::string>> env;    // NAME=value; nullopt: our environ
  std::optional<std::filesystem::path> cwd;
  std::optional<pid_t> join_group;
  bool new_group = false;  // new_process_group() (without new_session())
  bool new_session = false;
  int pdeathsig = 0;
  child_settings settings;
  spawn_method method = spawn_method::posix_spawn;
  std::string why;          // why that back end ("" for the default one)
  std::vector<fd_range> gaps;  // fds between the mapped targets, closed in the child
  int close_from = 3;          // one above the highest target fd
  bool autoreap = false;       // SIGCHLD ignored at planning time (process.hpp)
  bool clear_groups = false;   // uid() without groups() by root: no supplementary groups
  std::string ctty;            // pty.hpp: the terminal's slave path ("" for none)
  bool tree = false;           // tree(): the child joins a process tree (tree.hpp)

  // The back ends' view: pointers into this plan and into the given arrays, which
  // must outlive it.
  child_plan raw(const std::vector<char*>& argv_c, const std::vector<char*>& envp_c,
                 const std::vector<fd_move>& moves) const {
    child_plan p;
    p.path = path.c_str();
    p.argv = argv_c.data();
    p.envp = env ? envp_c.data() : environ;
    p.cwd = cwd ? cwd->c_str() : nullptr;
    p.moves = moves.data();
    p.n_moves = static_cast<int>(moves.size());
    p.gaps = gaps.data();
    p.n_gaps = static_cast<int>(gaps.size());
    p.close_from = close_from;
    p.setsid = new_session;
    p.setpgid = (new_group || join_group) && !new_session;
    p.pgid = join_group.value_or(0);
    p.pdeathsig = pdeathsig;
    if (pdeathsig != 0) p.parent = sys::getpid();
    p.ctty = ctty.empty() ? nullptr : ctty.c_str();
    const child_settings& c = settings;
    p.set_umask = c.umask.has_value();
    p.umask = c.umask.value_or(0);
    p.limits = c.limits.data();
    p.n_limits = static_cast<int>(c.limits.size());
    p.set_nice = c.nice.has_value();
    p.nice = c.nice.value_or(0);
    p.set_affinity = c.cpus.has_value();
    CPU_ZERO(&p.cpus);
    if (c.cpus)
      for (int cpu : *c.cpus) CPU_SET(static_cast<std::size_t>(cpu), &p.cpus);
    if (c.groups) {
      p.groups = c.groups->data();
      p.n_groups = static_cast<int>(c.groups->size());
    } else if (clear_groups) {
      p.n_groups = 0;
    }
    p.set_gid = c.gid.has_value();
    p.gid = c.gid.value_or(0);
    p.set_uid = c.uid.has_value();
    p.uid = c.uid.value_or(0);
    sigemptyset(&p.sigmask);
    for (int sig : c.blocked_signals) sigaddset(&p.sigmask, sig);  // validated
    p.pre_exec = c.pre_exec;
    p.pre_exec_arg = c.pre_exec_arg;
    return p;
  }

  std::string to_string() const {
    std::string s = "spawn '" + cmdline + "': exec '" + path + "'";
    if (!argv.empty() && settings.arg0) s += " as '" + argv[0] + "'";
    s += " via " + std::string(method_name(method));
    if (!why.empty()) s += " (" + why + ")";
    if (cwd) s += "; cwd '" + cwd->string() + "'";
    if (env) s += "; " + std::to_string(env->size()) + " environment variables";
    if (new_session) s += "; new session";
    if (!ctty.empty()) s += "; controlling terminal " + ctty;
    if (new_group) s += "; new process group";
    if (join_group) s += "; joins process group " + std::to_string(*join_group);
    if (pdeathsig) s += "; signal " + std::to_string(pdeathsig) + " on parent death";
    if (tree) s += "; in a process tree";
    const child_settings& c = settings;
    if (c.umask) s += "; umask " + octal(*c.umask);
    for (const auto& l : c.limits)
      s += "; " + rlimit_name(l.resource) + " " + rlim_text(l.soft) + "/" + rlim_text(l.hard);
    if (c.nice) s += "; nice " + std::to_string(*c.nice);
    if (c.cpus) s += "; cpus " + list(*c.cpus);
    if (c.groups) s += "; groups " + list(*c.groups);
    if (c.gid) s += "; gid " + std::to_string(*c.gid);
    if (c.uid) s += "; uid " + std::to_string(*c.uid);
    if (!c.blocked_signals.empty()) s += "; blocked signals " + list(c.blocked_signals);
    if (c.pre_exec) s += "; pre_exec hook";
    s += "; fds >= " + std::to_string(close_from) + " closed";
    return s;
  }

 private:
  static std::string octal(mode_t m) {
    char b[8];
    std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m));
    return b;
  }
  template <class T>
  static std::string list(const std::vector<T>& v) {
    std::string s;
    for (const T& x : v) {
      if (!s.empty()) s += ',';
      s += std::to_string(x);
    }
    return s.empty() ? "(none)" : s;
  }
};

// Turns a back end's failure into the spawn_error the caller sees: the step that
// failed, with what it was about ("setuid to 65534", "chdir to '/x'").
[[noreturn]] inline void raise_spawn_failure(const spawn_plan& plan, const child_plan& cp,
                                             const spawn_failure& fail) {
  std::string cmdline = plan.cmdline;
  std::string step = step_name(fail.step), what;
  const child_settings& c = plan.settings;
  switch (fail.step) {
    case child_step::exec: {
      what = "'" + plan.path + "'";
      // posix_spawn reports chdir failures as its return value too: if the directory
      // is (now) missing or cannot be entered, that was the step that failed.
      int e = 0;
      std::string why = plan.cwd && fail.err != E2BIG ? cwd_problem(*plan.cwd, e) : std::string();
      if (!why.empty()) {
        step = "chdir";
        what = why;
      } else if (fail.err == E2BIG) {
        what = too_big_detail(plan.path, cp.argv, cp.envp);
        cmdline = abbreviated(cmdline, plan.argv.size());
      }
      break;
    }
    case child_step::chdir: {
      int e = 0;
      what = cwd_problem(*plan.cwd, e);
      if (what.empty()) what = "to '" + plan.cwd->string() + "'";
      break;
    }
    case child_step::setuid: what = "to " + std::to_string(c.uid.value_or(0)); break;
    case child_step::setgid: what = "to " + std::to_string(c.gid.value_or(0)); break;
    case child_step::setgroups:
      what = "to " + std::to_string(c.groups ? c.groups->size() : 0) + " groups";
      break;
    case child_step::setpriority: what = "(nice " + std::to_string(c.nice.value_or(0)) + ")"; break;
    case child_step::setrlimit:
      if (fail.index >= 0 && fail.index < static_cast<int>(c.limits.size())) {
        const resource_limit& l = c.limits[static_cast<std::size_t>(fail.index)];
        what = rlimit_name(l.resource) + " (soft " + rlim_text(l.soft) + ", hard " + rlim_text(l.hard) + ")";
      }
      break;
    default: break;
  }
  // posix_spawn reports a failed setpgid as its return value too (EPERM: the group
  // is gone or in another session); say which.
  if (plan.join_group && (fail.step == child_step::exec || fail.step == child_step::setpgid) &&
      (fail.err == EPERM || fail.err == ESRCH)) {
    step = "setpgid";
    what = "to join process group " + std::to_string(*plan.join_group);
  }
  SUBPROCESS_THROW(spawn_error(fail.err, cmdline, step, what));
}

}  // namespace subprocess::detail
