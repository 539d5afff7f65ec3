// subprocess/command.hpp - what to start, and spawn() to start it.
//
// A command is a description: the program, its arguments and the options it runs
// with. Nothing happens until spawn() (or sp::run()). Commands are values: copy one,
// change the copy, start it as often as you like. There is no shell: arguments reach
// the program exactly as given, so untrusted input cannot inject commands; ask for one
// with command::shell("ls *.log | wc -l").
//
//   ```cpp
//   auto p = sp::command{"grep", "-n", "error"}        // argv: no shell involved
//              .cwd("/var/log")
//              .env(sp::environment::only({"PATH"}).set("LC_ALL", "C"))
//              .in(sp::pipe).out(sp::pipe).err(sp::merge_with_out)
//              .spawn();
//   for (std::string_view line : p.out().lines()) std::cout << line << '\n';
//   std::cout << p.wait() << '\n';           // "exited with code 0"
//   ```
//
// Options (each returns the command, so they chain; each is described where it is
// declared below): arg/args, cwd, env, in/out/err (stdio.hpp), map_fd,
// new_process_group, join_process_group, new_session, kill_on_parent_death, ipc,
// tree (tree.hpp), success_codes, backend; credentials, limits and start state: uid, gid, groups,
// umask, limit, nice, cpu_affinity, arg0, blocked_signals, pre_exec. The program is
// looked up in PATH like execvp() does (see the constructor); find_program() does
// the same lookup on its own. plan() shows what spawn() would do.
//
// Errors: bad input (empty argv, a NUL byte, a bad fd or signal number, conflicting
// options) is an argument_error, from the option itself or from spawn(); nothing is
// started. Anything that stops the child from starting (program not found or not
// executable, bad working directory, a file to open, a setting the kernel refuses,
// exec itself) is a spawn_error
// thrown in the parent, with the errno and the step that failed, never a child
// exiting 127; no child is left behind. validate() runs the same checks without
// starting anything.
// Blocking: spawn() returns as soon as the child has been exec'd; it never waits for
// the child to run (opening a FIFO given as sp::file waits for its other side).
// Threads: spawn() is const and thread-safe; concurrent spawns never leak one child's
// pipe into another, since every fd the library creates is close-on-exec from birth.
// Cost: posix_spawn (vfork-like) when the options allow, else the library's own
// clone(CLONE_VM|CLONE_VFORK) path: the cost does not grow with the parent's memory.
// The child inherits only fds 0-2 and the ones you mapped, with default signals
// (details at spawn()).
#pragma once

#include <algorithm>
#include <bitset>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <sys/stat.h>

#include "detail/signal_table.hpp"
#include "detail/spawn.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "environment.hpp"
#include "error.hpp"
#include "process.hpp"
#include "stdio.hpp"

namespace subprocess {

// Which spawn path to use. automatic is right for everyone; the others exist for
// tests and benchmarks.
enum class spawn_backend { automatic, posix_spawn, clone_vfork };

namespace detail {
struct pty_access;  // pty.hpp: spawn_in_pty()

// Characters a POSIX shell never treats specially inside a word. ASCII only and
// independent of the locale (std::isalnum is not).
inline bool shell_safe_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
}
// Words that mean something else in command position: reserved words (POSIX and
// bash) and anything with '=' (NAME=value would be an assignment, not a program).
inline bool shell_special_command_word(std::string_view w) noexcept {
  if (w.find('=') != std::string_view::npos) return true;
  for (std::string_view r : {"case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in",
                             "then", "until", "while", "function", "select", "time", "coproc"})
    if (w == r) return true;
  return false;
}
}  // namespace detail

namespace detail {
struct child_fds;
}

// Quotes one word for a POSIX shell: unchanged if it is made only of safe
// characters, otherwise in single quotes ('it'\''s').
inline std::string shell_quote(std::string_view s) {
  if (s.empty()) return "''";
  bool safe = std::all_of(s.begin(), s.end(), detail::shell_safe_char);
  if (safe) return std::string(s);
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  q += '\'';
  return q;
}

class command {
 public:
  // The program and its arguments: command{"ls", "-l", "/tmp"}.
  //
  // argv[0] is looked up like execvp() does: a name without '/' is searched in PATH
  // (the child's PATH when you set an environment, else ours, else /bin:/usr/bin), a
  // name with '/' is used as it is. A relative path such as "./tool" is relative to
  // the parent's working directory, even with cwd() set (predictable; Python's and
  // Node's rules differ by platform). Lookup happens in the parent, so "not found" is
  // a spawn_error before anything starts. The program and the working directory are
  // checked with the effective ids, as execve and chdir use them (faccessat
  // AT_EACCESS), not with the real ones.
  command(std::initializer_list<std::string> argv) : argv_(argv) {}
  explicit command(std::vector<std::string> argv) : argv_(std::move(argv)) {}

  // /bin/sh -c script: for pipes, globs and redirections written as shell text.
  // Without it there is no shell: spaces, quotes, '$' and '*' in arguments are just
  // characters. Never pass untrusted text here; quote it with shell_quote() if you must.
  static command shell(std::string script) {
    command c{"/bin/sh", "-c", std::move(script)};
    c.shell_ = true;
    return c;
  }
  // This very program again (/proc/self/exe) with these arguments: the C++ way to
  // write Node's fork(__filename). argv[0] is the path of the running executable.
  static command self(std::vector<std::string> args = {}) {
    char buf[PATH_MAX];
    ssize_t n = detail::sys::readlink("/proc/self/exe", buf, sizeof buf);
    std::vector<std::string> argv{n > 0 && static_cast<std::size_t>(n) < sizeof buf
                                      ? std::string(buf, static_cast<std::size_t>(n))
                                      : std::string("/proc/self/exe")};
    argv.insert(argv.end(), std::make_move_iterator(args.begin()),
                std::make_move_iterator(args.end()));
    command c(std::move(argv));
    c.program_ = "/proc/self/exe";
    return c;
  }

  // More arguments, appended.
  command& arg(std::string a) {
    argv_.push_back(std::move(a));
    return *this;
  }
  command& args(const std::vector<std::string>& more) {
    argv_.insert(argv_.end(), more.begin(), more.end());
    return *this;
  }
  // The child's working directory. Checked in the parent first: missing, empty (""),
  // not a directory or not enterable is a spawn_error, step "chdir", naming it
  // ("to '/x' (no such directory)"), never a "program not found".
  command& cwd(std::filesystem::path dir) {
    cwd_ = std::move(dir);
    return *this;
  }
  // The child's whole environment (default: a copy of ours). See environment.hpp.
  command& env(environment e) {
    env_ = std::move(e);
    return *this;
  }
  // Where the child's stdin, stdout and stderr go (default: inherit): see stdio.hpp.
  //
  // Fds you hand over (in/out/err(sp::fd(n)), map_fd) arrive blocking, as programs
  // expect, and your fd is left exactly as it was: a non-blocking pipe or FIFO (say
  // p.out().fd() of another child, which the library keeps non-blocking) is given to
  // the child as a new open file description of the same pipe, reopened through
  // /proc/self/fd with O_NONBLOCK off, since O_NONBLOCK is shared by every fd of one
  // description. Sockets and terminals cannot be reopened: they go as they are (as
  // does a pipe when /proc is missing), so make those blocking yourself if the child
  // needs it.
  command& in(stdio s) {
    if (std::holds_alternative<merge_with_out_t>(s) || std::holds_alternative<merge_with_err_t>(s))
      SUBPROCESS_THROW(argument_error(to_string(), "stdin cannot be merged with an output stream"));
    stdio_[0] = std::move(s);
    return *this;
  }
  command& out(stdio s) {
    if (std::holds_alternative<merge_with_out_t>(s))
      SUBPROCESS_THROW(argument_error(to_string(), "stdout cannot be merged with itself"));
    stdio_[1] = std::move(s);
    return *this;
  }
  command& err(stdio s) {
    if (std::holds_alternative<merge_with_err_t>(s))
      SUBPROCESS_THROW(argument_error(to_string(), "stderr cannot be merged with itself"));
    stdio_[2] = std::move(s);
    return *this;
  }
  // The child's fd `child_fd` will be a copy of the parent's fd `parent_fd`, which
  // stays open and owned by the caller. For fds 0-2 use in()/out()/err(). It arrives
  // blocking (see in()).
  command& map_fd(int child_fd, int parent_fd) {
    if (child_fd < 3) SUBPROCESS_THROW(argument_error(to_string(), "map_fd: use in()/out()/err() for fds 0-2"));
    if (parent_fd < 0) SUBPROCESS_THROW(argument_error(to_string(), "map_fd: negative parent fd"));
    for (auto& m : fd_maps_)
      if (m.first == child_fd) {
        m.second = parent_fd;
        return *this;
      }
    fd_maps_.emplace_back(child_fd, parent_fd);
    return *this;
  }
  // The child leads a new process group; signal_group(), terminate() and kill() then
  // reach its children too (process.hpp).
  command& new_process_group(bool on = true) {
    new_group_ = on;
    if (on) join_group_.reset();
    return *this;
  }
  // The child joins the existing process group `pgid` (setpgid(0, pgid) before exec),
  // so a signal to the group (kill(-pgid, sig)) reaches it too. The group must exist
  // and belong to our session, else spawn() throws spawn_error (step "setpgid"). This
  // is how a shell puts a pipeline's later stages into the group its first stage
  // leads (pipeline.hpp does this). The
  // child is a member, not the leader: its own terminate()/kill() act on it alone.
  // Replaces new_process_group(); cannot be combined with new_session().
  command& join_process_group(pid_t pgid) {
    if (pgid <= 0) SUBPROCESS_THROW(argument_error(to_string(), "join_process_group: the pgid must be positive"));
    join_group_ = pgid;
    new_group_ = false;
    return *this;
  }
  // setsid(): the child gets a new session and process group, and no controlling tty.
  command& new_session(bool on = true) {
    new_session_ = on;
    return *this;
  }
  // The child gets `sig` when this process dies, whichever thread called spawn(). 0
  // turns it off.
  //
  // It uses PR_SET_PDEATHSIG, which the kernel fires when the *thread* that created
  // the child exits. So the library creates such children on one internal thread of
  // its own, started on first use and alive until the process exits
  // (detail/spawner.hpp): the child goes when this process dies, however short-lived
  // the thread that called spawn(). Such spawns take turns on that thread (one slow
  // exec, a program on a slow file system, delays the others). The child gets the
  // calling thread's nice value and CPU affinity (best effort: a nice value below the
  // spawner thread's needs CAP_SYS_NICE or RLIMIT_NICE, else the child keeps the
  // spawner thread's); its scheduling policy and real-time priority are the spawner
  // thread's (inherited from the thread that first asked for such a child). An
  // execve() by any thread of this process ends the spawner thread too, so these
  // children also get their signal when this process execs another program. A fork()
  // child of this process may use it as well: it gets a spawner of its own. Always
  // takes the clone path (spawn()).
  command& kill_on_parent_death(int sig = SIGKILL) {
    if (sig < 0 || sig >= 65) SUBPROCESS_THROW(argument_error(to_string(), "kill_on_parent_death: bad signal"));
    parent_death_signal_ = sig;
    return *this;
  }
  // Starts the child in a process tree of its own (tree.hpp): p.tree() then kills,
  // signals, freezes or measures the child with every descendant, including those
  // that left its process group or session. It takes the clone_vfork back end (the
  // child joins the tree's cgroup before it runs anything).
  command& tree(tree_options o = {}) {
    tree_ = std::move(o);
    return *this;
  }
  bool in_tree() const noexcept { return tree_.has_value(); }
  // Opens a socketpair message channel at child fd `child_fd` and announces it in
  // NODE_CHANNEL_FD (with NODE_CHANNEL_SERIALIZATION_MODE=json), the way Node's
  // fork() does. Wrap the parent's end with ipc::channel (ipc.hpp).
  command& ipc(int child_fd = 3) {
    if (child_fd < 3) SUBPROCESS_THROW(argument_error(to_string(), "ipc: the channel fd must be 3 or more"));
    ipc_fd_ = child_fd;
    return *this;
  }
  // Which back end starts the child (default automatic: posix_spawn when it can
  // express the options, else clone_vfork). posix_spawn with an option it cannot
  // express (kill_on_parent_death, uid...) is an argument_error naming the option.
  command& backend(spawn_backend b) {
    backend_ = b;
    return *this;
  }

  // ---- credentials, limits and the child's start state. Each value is checked here
  // (argument_error naming the option; nothing starts). Each is applied in the child
  // before exec, in the order umask, limits, nice, affinity, groups, gid, uid,
  // pre_exec; a failure there is a spawn_error in the parent naming the step and the
  // errno, like an exec failure ("setuid to 65534: Operation not permitted"). All
  // but arg0() and blocked_signals() take the clone_vfork back end.
  //
  // The child's user id (setuid) and group id (setgid). As root, uid() without
  // groups() also clears the supplementary groups (setgroups(0)): a child that drops
  // to `nobody` does not keep root's groups (Rust does this; Python keeps them).
  command& uid(uid_t u) {
    if (u == static_cast<uid_t>(-1)) SUBPROCESS_THROW(argument_error(to_string(), "uid: -1 is not a user id"));
    settings_.uid = u;
    return *this;
  }
  command& gid(gid_t g) {
    if (g == static_cast<gid_t>(-1)) SUBPROCESS_THROW(argument_error(to_string(), "gid: -1 is not a group id"));
    settings_.gid = g;
    return *this;
  }
  // The supplementary groups (setgroups); {} clears them. Python's extra_groups.
  command& groups(std::vector<gid_t> gs) {
    const long max = ::sysconf(_SC_NGROUPS_MAX);
    if (max > 0 && gs.size() > static_cast<std::size_t>(max))
      SUBPROCESS_THROW(argument_error(to_string(), "groups: " + std::to_string(gs.size()) +
                                            " groups, the system allows " + std::to_string(max)));
    for (gid_t g : gs)
      if (g == static_cast<gid_t>(-1)) SUBPROCESS_THROW(argument_error(to_string(), "groups: -1 is not a group id"));
    settings_.groups = std::move(gs);
    return *this;
  }
  // The child's file mode creation mask, 0 to 0777 (umask(022)).
  command& umask(mode_t mask) {
    if ((mask & ~mode_t{0777}) != 0)
      SUBPROCESS_THROW(argument_error(to_string(), "umask: " + std::to_string(mask) + " is not a mask (0 to 0777)"));
    settings_.umask = mask;
    return *this;
  }
  // A resource limit, soft and hard (setrlimit; RLIM_INFINITY for none):
  // limit(RLIMIT_NOFILE, 256, 1024), limit(RLIMIT_CORE, 0). Raising a hard limit
  // needs CAP_SYS_RESOURCE. A second call for the same resource replaces the first.
  command& limit(int resource, rlim_t soft, rlim_t hard) {
    if (resource < 0 || resource >= RLIM_NLIMITS)
      SUBPROCESS_THROW(argument_error(to_string(), "limit: " + std::to_string(resource) + " is not an RLIMIT_* resource"));
    if (soft > hard)
      SUBPROCESS_THROW(argument_error(to_string(), "limit " + detail::rlimit_name(resource) + ": the soft limit " +
                                            detail::rlim_text(soft) + " is above the hard limit " +
                                            detail::rlim_text(hard)));
    auto& ls = settings_.limits;
    ls.erase(std::remove_if(ls.begin(), ls.end(), [&](auto& l) { return l.resource == resource; }), ls.end());
    ls.push_back({resource, soft, hard});
    return *this;
  }
  command& limit(int resource, rlim_t both) { return limit(resource, both, both); }
  // The child's nice value, -20 (most favourable) to 19: an absolute value
  // (setpriority), not an increment like nice(1). Below the parent's needs
  // CAP_SYS_NICE or RLIMIT_NICE.
  command& nice(int value) {
    if (value < -20 || value > 19)
      SUBPROCESS_THROW(argument_error(to_string(), "nice: " + std::to_string(value) + " is not a nice value (-20 to 19)"));
    settings_.nice = value;
    return *this;
  }
  // The CPUs the child may run on (sched_setaffinity): cpu_affinity({0, 2}).
  command& cpu_affinity(std::vector<int> cpus) {
    if (cpus.empty()) SUBPROCESS_THROW(argument_error(to_string(), "cpu_affinity: no CPUs given"));
    for (int c : cpus)
      if (c < 0 || c >= CPU_SETSIZE)
        SUBPROCESS_THROW(argument_error(to_string(), "cpu_affinity: " + std::to_string(c) + " is not a CPU number (0 to " +
                                              std::to_string(CPU_SETSIZE - 1) + ")"));
    settings_.cpus = std::move(cpus);
    return *this;
  }
  // The child's argv[0], when it should differ from the program run (login shells
  // use "-sh"; busybox-style programs look at it). The program is still found from
  // the first argument.
  command& arg0(std::string name) {
    if (name.find('\0') != std::string::npos) SUBPROCESS_THROW(argument_error(to_string(), "arg0 contains a NUL byte"));
    settings_.arg0 = std::move(name);
    return *this;
  }
  // The child's initial signal mask (default: empty): a child that must not die of
  // SIGTERM before it has installed its handler starts with SIGTERM blocked and
  // unblocks it itself. SIGKILL and SIGSTOP cannot be blocked; 32 and 33 belong to
  // the C library.
  command& blocked_signals(std::vector<int> sigs) {
    for (int s : sigs) {
      if (s == SIGKILL || s == SIGSTOP)
        SUBPROCESS_THROW(argument_error(to_string(), "blocked_signals: " + detail::signal_name_of(s) + " cannot be blocked"));
      if (s < 1 || s > SIGRTMAX || (s > 31 && s < SIGRTMIN))
        SUBPROCESS_THROW(argument_error(to_string(), "blocked_signals: " + std::to_string(s) + " is not a signal to block"));
    }
    settings_.blocked_signals = std::move(sigs);
    return *this;
  }
  // Runs fn(arg) in the child just before exec (after every setting above, before
  // the inherited fds are closed); a non-zero return is an errno, reported like an
  // exec failure (step "pre_exec hook") and the child is not run. Takes the
  // clone_vfork back end, whose child SHARES THE PARENT'S MEMORY while the calling
  // thread waits: fn may only make async-signal-safe calls (man signal-safety) on
  // memory prepared in advance: no allocation, no locks, no stdio, no exceptions, no
  // thread-local state. Rust's CommandExt::pre_exec and Python's preexec_fn carry
  // the same warning; a captureless lambda converts.
  command& pre_exec(int (*fn)(void*), void* arg = nullptr) {
    if (fn == nullptr) SUBPROCESS_THROW(argument_error(to_string(), "pre_exec: the hook is a null pointer"));
    settings_.pre_exec = fn;
    settings_.pre_exec_arg = arg;
    return *this;
  }
  // The exit codes that count as success (default {0}) wherever the library judges
  // one: run()'s success() and check, a pipeline's pipefail status, first_failure()
  // and check. `grep` exits 1 when nothing matched: success_codes({0, 1}). The set
  // replaces {0} (list 0 if you want it); the status itself still says "exited with
  // code 1". A process killed by a signal never succeeds. Each code must be 0..255
  // and the set non-empty, else argument_error.
  command& success_codes(const std::vector<int>& codes) {
    if (codes.empty())
      SUBPROCESS_THROW(argument_error(to_string(), "success_codes: the set is empty (nothing could succeed)"));
    std::bitset<256> set;
    for (int c : codes) {
      if (c < 0 || c > 255)
        SUBPROCESS_THROW(argument_error(to_string(), "success_codes: " + std::to_string(c) +
                                              " is not an exit code (0..255)"));
      set.set(static_cast<std::size_t>(c));
    }
    success_codes_ = set;
    return *this;
  }

  const std::vector<std::string>& argv() const noexcept { return argv_; }
  const std::optional<std::filesystem::path>& cwd() const noexcept { return cwd_; }
  const std::optional<environment>& env() const noexcept { return env_; }
  // The stream settings; nullopt means "the default of whatever starts it"
  // (spawn(): inherit; run(): see run.hpp).
  const std::optional<stdio>& in() const noexcept { return stdio_[0]; }
  const std::optional<stdio>& out() const noexcept { return stdio_[1]; }
  const std::optional<stdio>& err() const noexcept { return stdio_[2]; }
  // True with new_process_group(), new_session() or join_process_group().
  bool has_process_group() const noexcept { return new_group_ || new_session_ || join_group_; }
  // The group set with join_process_group(), if any.
  const std::optional<pid_t>& joined_process_group() const noexcept { return join_group_; }
  const std::optional<int>& ipc_fd() const noexcept { return ipc_fd_; }
  bool is_shell() const noexcept { return shell_; }
  // The exit codes that count as success, ascending (default {0}).
  std::vector<int> success_codes() const {
    std::vector<int> v;
    for (std::size_t c = 0; c < success_codes_.size(); ++c)
      if (success_codes_.test(c)) v.push_back(static_cast<int>(c));
    return v;
  }
  // Whether `st` counts as success for this command: it exited with one of
  // success_codes(). A signal death never does.
  bool is_success(const exit_status& st) const noexcept {
    auto c = st.code();
    return c && *c >= 0 && *c < 256 && success_codes_.test(static_cast<std::size_t>(*c));
  }

  // Shell-quoted command line: pasting it into sh runs the same argv. The program
  // name is also quoted when sh would read it as something else ("if", "A=b").
  std::string to_string() const {
    std::string s;
    for (std::size_t i = 0; i < argv_.size(); ++i) {
      if (i) s += ' ';
      std::string q = shell_quote(argv_[i]);
      if (i == 0 && q == argv_[0] && detail::shell_special_command_word(q)) q = "'" + q + "'";
      s += q;
    }
    return s;
  }

  // Starts the child. Throws argument_error for bad input (nothing started) and
  // spawn_error if it cannot start (nothing left behind).
  //
  // What the child gets. Every fd is closed in the child except 0, 1, 2 and the ones
  // you mapped: fds your program opened without O_CLOEXEC do not leak into it. Every
  // signal 1..SIGRTMAX is at its default disposition (an ignored SIGPIPE is not
  // inherited; nor are glibc's reserved 32 and 33, which plain posix_spawn leaves
  // ignored) and the signal mask is empty (unless blocked_signals()), on both back
  // ends.
  //
  // How it starts. posix_spawn() (glibc: clone(CLONE_VM|CLONE_VFORK), so the cost
  // does not grow with the parent's memory) whenever the options allow; otherwise
  // (kill_on_parent_death; uid, gid, groups, umask, limit, nice, cpu_affinity,
  // pre_exec; SIGCHLD ignored or SA_NOCLDWAIT, where only clone's CLONE_PIDFD gets a
  // pidfd before the kernel can reap the child) the library's own
  // clone(CLONE_VM|CLONE_VFORK) path, whose child runs only async-signal-safe system
  // calls prepared in advance. The choice costs one read-only rt_sigaction per spawn.
  // Either way a failure of exec, chdir or any other step is a spawn_error in the
  // parent with the errno and the step, and no child is left behind. An argument list
  // plus environment the kernel refuses (E2BIG) is a spawn_error saying so, with
  // their sizes and the limits.
  //
  // Thread-safe: every fd the library creates is close-on-exec from birth, so
  // concurrent spawns never leak one child's pipe into another.
  process spawn() const;
  // The same without exceptions (error.hpp): nullopt with `ec` set (the errno: no such
  // file, permission denied, a bad working directory...) where spawn() would throw.
  // Built without exceptions, the failures of starting the program (resolving it, the
  // working directory, the group to join, exec and every step in the child) come back
  // here; bad arguments and the parent running out of fds still abort there.
  std::optional<process> spawn(std::error_code& ec) const noexcept;

  // Checks everything spawn() can check without starting anything: the arguments,
  // the options, that the program exists and is executable (PATH lookup), that the
  // working directory exists, that a group to join exists. Throws what spawn() would
  // throw. Passing does not guarantee spawn() succeeds (files change, exec can still
  // fail), but it catches the common mistakes before a group of children is started:
  // for callers that start several children and want every one checked before the
  // first runs.
  void validate() const { (void)plan(); }

  // What spawn() would do, validated as validate() does: the resolved program, the
  // settings, the back end and why (to_string() prints it for logs and tests). The
  // plan's type lives in detail/ and is not promised; its text is for people.
  detail::spawn_plan plan() const;

 private:
  std::vector<std::string> argv_;
  std::optional<std::string> program_;  // exec this instead of resolving argv[0]
  std::optional<std::filesystem::path> cwd_;
  std::optional<environment> env_;
  std::optional<stdio> stdio_[3];
  std::vector<std::pair<int, int>> fd_maps_;
  std::optional<int> ipc_fd_;
  std::optional<pid_t> join_group_;
  int parent_death_signal_ = 0;
  std::optional<tree_options> tree_;
  bool new_group_ = false;
  bool new_session_ = false;
  bool shell_ = false;
  spawn_backend backend_ = spawn_backend::automatic;
  detail::child_settings settings_;
  std::bitset<256> success_codes_{1};  // bit c: exit code c is success
  // ---- pty (pty.hpp): spawn_in_pty() sets the terminal's slave path here, puts the
  // slave on the unset stdio slots and asks for a new session; spawn() then makes
  // the slave (fd 0) the child's controlling terminal (child_plan::ctty).
  friend struct detail::pty_access;
  std::string controlling_tty_;

  // Opens the fds the child gets (pipes, files, copies) for a validated plan.
  detail::child_fds open_fds(const detail::spawn_plan& plan) const;
  // plan() and spawn(); with `ec` a failure to start goes there instead of a throw.
  detail::spawn_plan plan(std::error_code* ec) const;
  std::optional<process> spawn(std::error_code* ec) const;
};


// Where spawn() would find `name`: execvp's search over `path` (PATH's format; the
// parent's PATH, or "/bin:/usr/bin" without one, when not given), done the way
// spawn() does it. A name with a '/' is not searched, only checked. nullopt when it
// is nowhere, or not an executable file (EACCES); any other failure of the lookup
// (ENOMEM, ELOOP...) is a spawn_error naming the program.
//
//   if (!sp::find_program("node")) std::puts("node is not installed");
inline std::optional<std::filesystem::path> find_program(const std::string& name,
                                                         std::optional<std::string_view> path = {}) {
  if (name.empty()) SUBPROCESS_THROW(argument_error("", "find_program: the program name is empty"));
  std::string search;
  if (path) {
    search = *path;
  } else {
    const char* p = std::getenv("PATH");
    search = p ? p : "/bin:/usr/bin";
  }
  int err = 0;
  std::string found;
  if (name.find('/') != std::string::npos) {
    if (detail::is_executable_file(name, err)) found = name;
  } else {
    found = detail::find_program(name, search, err);
  }
  if (!found.empty()) return std::filesystem::path(found);
  if (err == ENOENT || err == ENOTDIR || err == EACCES) return std::nullopt;
  SUBPROCESS_THROW(spawn_error(err, name, "resolve program", "'" + name + "'"));
}

inline detail::spawn_plan command::plan() const { return plan(nullptr); }

namespace detail {
// A spawn_error of plan() or spawn(): thrown, or its code() stored in *ec.
inline void fail_spawn(std::error_code* ec, spawn_error e) {
  if (ec == nullptr) SUBPROCESS_THROW(std::move(e));
  *ec = e.code();
}
}  // namespace detail

inline detail::spawn_plan command::plan(std::error_code* ec) const {
  detail::spawn_plan plan;
  plan.cmdline = to_string();
  const std::string& cmdline = plan.cmdline;
  // ---- bad input: argument_error, naming the argument or the option
  if (argv_.empty()) SUBPROCESS_THROW(argument_error("", "empty command: argv has no program"));
  if (argv_[0].empty()) SUBPROCESS_THROW(argument_error(cmdline, "the program name is empty"));
  for (std::size_t i = 0; i < argv_.size(); ++i)
    if (argv_[i].find('\0') != std::string::npos)
      SUBPROCESS_THROW(argument_error(cmdline, "argument " + std::to_string(i) + " contains a NUL byte"));
  if (cwd_ && cwd_->native().find('\0') != std::string::npos)
    SUBPROCESS_THROW(argument_error(cmdline, "the working directory contains a NUL byte"));
  if (std::holds_alternative<merge_with_err_t>(stdio_[1].value_or(inherit)) &&
      std::holds_alternative<merge_with_out_t>(stdio_[2].value_or(inherit)))
    SUBPROCESS_THROW(argument_error(cmdline, "stdout and stderr cannot both be merged into each other"));
  if (ipc_fd_)
    for (auto [c, p] : fd_maps_)
      if (c == *ipc_fd_)
        SUBPROCESS_THROW(argument_error(cmdline, "fd " + std::to_string(c) + " is mapped and used for ipc"));
  if (join_group_ && new_session_)
    SUBPROCESS_THROW(argument_error(cmdline, "join_process_group() cannot be combined with new_session()"));

  // ---- the fd layout: fds 0-2 and the mapped ones; everything between and above
  // them is closed in the child.
  std::vector<int> targets{0, 1, 2};
  for (auto [c, p] : fd_maps_) {
    (void)p;
    targets.push_back(c);
  }
  if (ipc_fd_) targets.push_back(*ipc_fd_);
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  plan.close_from = targets.back() + 1;
  int gap_fds = 0;
  for (std::size_t i = 1; i < targets.size(); ++i)
    if (targets[i] > targets[i - 1] + 1) {
      plan.gaps.push_back({targets[i - 1] + 1, targets[i] - 1});
      gap_fds += targets[i] - targets[i - 1] - 1;
    }

  // ---- the back end. With SIGCHLD ignored (or SA_NOCLDWAIT) the kernel reaps a
  // child the moment it exits, so a pidfd_open after posix_spawn can come too late
  // (and even find the pid reused): take the clone path, which gets the pidfd
  // atomically (CLONE_PIDFD). One read-only rt_sigaction per plan.
  if (backend_ == spawn_backend::posix_spawn && parent_death_signal_ != 0)
    SUBPROCESS_THROW(argument_error(cmdline, "kill_on_parent_death() cannot use the posix_spawn backend"));
  plan.autoreap = detail::children_autoreaped();
  using detail::spawn_method;
  const std::string clone_only = settings_.clone_only();
  if (backend_ == spawn_backend::posix_spawn && !clone_only.empty())
    SUBPROCESS_THROW(argument_error(cmdline, "backend(posix_spawn) cannot apply " + clone_only +
                                      ": leave the backend automatic (clone_vfork does)"));
  if (backend_ == spawn_backend::posix_spawn && tree_)
    SUBPROCESS_THROW(argument_error(
        cmdline, "backend(posix_spawn) cannot start a child in a tree(): leave the backend automatic"));
  if (parent_death_signal_ != 0) {
    plan.method = spawn_method::spawner;
    plan.why = "kill_on_parent_death()";
  } else if (tree_) {
    plan.method = spawn_method::clone_vfork;
    plan.why = "tree()";
  } else if (!clone_only.empty()) {
    plan.method = spawn_method::clone_vfork;
    plan.why = clone_only;
  } else if (backend_ == spawn_backend::clone_vfork) {
    plan.method = spawn_method::clone_vfork;
    plan.why = "backend(clone_vfork)";
  } else if (!detail::posix_spawn_backend_available()) {
    plan.method = spawn_method::clone_vfork;
    plan.why = "no posix_spawn with closefrom here";
  } else if (backend_ == spawn_backend::automatic && gap_fds > detail::max_posix_spawn_gap_fds) {
    plan.method = spawn_method::clone_vfork;
    plan.why = std::to_string(gap_fds) + " fds to close between the mapped ones";
  } else if (backend_ == spawn_backend::automatic && plan.autoreap && detail::clone_backend_available()) {
    plan.method = spawn_method::clone_vfork;
    plan.why = "SIGCHLD is ignored: pidfd from CLONE_PIDFD";
  }
  if (plan.method != spawn_method::posix_spawn && !detail::clone_backend_available())
    return detail::fail_spawn(ec, spawn_error(ENOSYS, cmdline, "spawn", "(no spawn backend for this platform)")), plan;

  // ---- the program and the working directory: spawn_error, as exec would fail
  if (program_) {
    plan.path = *program_;
  } else {
    std::string search;
    if (env_) {
      search = env_->get("PATH").value_or("/bin:/usr/bin");
    } else {
      const char* p = std::getenv("PATH");
      search = p ? p : "/bin:/usr/bin";
    }
    int err = 0;
    plan.path = detail::find_program(argv_[0], search, err);
    if (plan.path.empty())
      return detail::fail_spawn(ec, spawn_error(err, cmdline, "resolve program",
                                                argv_[0].find('/') == std::string::npos
                                                    ? "'" + argv_[0] + "' in PATH"
                                                    : "'" + argv_[0] + "'")),
             plan;
  }
  if (cwd_ && plan.path[0] != '/' && plan.path.find('/') != std::string::npos)
    plan.path = detail::current_dir(cmdline) + "/" + plan.path;  // relative to the parent
  if (cwd_) {
    int e = 0;
    std::string why = detail::cwd_problem(*cwd_, e);
    if (!why.empty()) return detail::fail_spawn(ec, spawn_error(e, cmdline, "chdir", why)), plan;
  }
  // kill(-pgid, 0) fails with ESRCH when no such group exists: say so now, clearly,
  // rather than as a failed exec.
  if (join_group_ && detail::sys::kill(-*join_group_, 0) != 0 && errno == ESRCH)
    return detail::fail_spawn(ec, spawn_error(ESRCH, cmdline, "setpgid",
                                                    "to join process group " + std::to_string(*join_group_))),
           plan;

  // ---- what the child gets
  plan.argv = argv_;
  if (env_ || ipc_fd_) {
    environment e = env_ ? *env_ : environment::inherit();
    if (ipc_fd_) {
      e.set("NODE_CHANNEL_FD", std::to_string(*ipc_fd_));
      e.set("NODE_CHANNEL_SERIALIZATION_MODE", "json");
    }
    plan.env.emplace();
    plan.env->reserve(e.size());
    for (const auto& [k, v] : e) plan.env->push_back(k + "=" + v);
  }
  plan.cwd = cwd_;
  plan.join_group = join_group_;
  plan.new_group = new_group_ && !new_session_;
  plan.new_session = new_session_;
  plan.ctty = controlling_tty_;  // pty.hpp
  plan.pdeathsig = parent_death_signal_;
  plan.tree = tree_.has_value();
  plan.settings = settings_;
  if (settings_.arg0) plan.argv[0] = *settings_.arg0;
  plan.clear_groups = settings_.uid && !settings_.groups && detail::sys::geteuid() == 0;
  return plan;
}

namespace detail {
// The fds spawn() opens for one child. `owned` closes everything opened for the
// child when spawn() returns or throws: every fd is owned the moment it exists, so
// no failure leaks one.
struct child_fds {
  std::vector<unique_fd> owned;
  std::vector<fd_move> moves;  // applied in order in the child
  pipe_writer in;
  pipe_reader out, err;
  unique_fd channel;  // the parent's end of the ipc socketpair
};
}  // namespace detail

inline detail::child_fds command::open_fds(const detail::spawn_plan& plan) const {
  const std::string& cmdline = plan.cmdline;
  detail::child_fds fds;
  std::vector<detail::fd_move> merges;
  fds.owned.reserve(16 + fd_maps_.size());
  fds.moves.reserve(8 + fd_maps_.size());
  int devnull = -1;  // opened once, shared by the slots that want it
  auto own = [&](int fd) {
    fds.owned.emplace_back(fd);
    return fd;
  };
  // Every spawn_error here is a failed call: its errno, the step, what it was about.
  auto fail = [&](std::string step, const std::string& what = {}) {
    int e = errno;
    SUBPROCESS_THROW(spawn_error(e, cmdline, std::move(step), what));
  };
  static constexpr const char* names[3] = {"stdin", "stdout", "stderr"};
  for (int slot = 0; slot < 3; ++slot) {
    const stdio& s = stdio_[slot] ? *stdio_[slot] : stdio(inherit);
    const std::string name = names[slot];
    if (std::holds_alternative<inherit_t>(s)) continue;
    if (std::holds_alternative<null_t>(s)) {
      if (devnull < 0) {
        devnull = detail::sys::no_eintr([] { return detail::sys::open("/dev/null", O_RDWR); });
        if (devnull < 0) fail("open /dev/null");
        own(devnull);
      }
      fds.moves.push_back({devnull, slot});
    } else if (std::holds_alternative<pipe_t>(s)) {
      int p[2];
      if (detail::sys::pipe2(p, 0) != 0) fail("create " + name + " pipe");
      detail::unique_fd parent(slot == 0 ? p[1] : p[0]);
      fds.moves.push_back({own(slot == 0 ? p[0] : p[1]), slot});
      // The parent's end only: O_NONBLOCK lives in the open file description, and
      // the child's end must stay blocking.
      if (detail::sys::fcntl(parent.get(), F_SETFL, O_NONBLOCK) != 0)
        fail("make " + name + " pipe non-blocking");
      if (slot == 0)
        fds.in = pipe_writer(detail::nonblocking_fd, std::move(parent), "stdin", cmdline);
      else if (slot == 1)
        fds.out = pipe_reader(detail::nonblocking_fd, std::move(parent), "stdout", cmdline);
      else
        fds.err = pipe_reader(detail::nonblocking_fd, std::move(parent), "stderr", cmdline);
    } else if (auto* f = std::get_if<file>(&s)) {
      file_mode m = f->mode.value_or(slot == 0 ? file_mode::read : file_mode::truncate);
      int flags = m == file_mode::read       ? O_RDONLY
                  : m == file_mode::truncate ? O_WRONLY | O_CREAT | O_TRUNC
                                             : O_WRONLY | O_CREAT | O_APPEND;
      // Retried on EINTR: opening a FIFO blocks until the other side opens it.
      int fd = detail::sys::no_eintr([&] { return detail::sys::open(f->path.c_str(), flags, 0666); });
      if (fd < 0) fail("open " + name + " file", "'" + f->path.string() + "'");
      fds.moves.push_back({own(fd), slot});
    } else if (auto* d = std::get_if<fd>(&s)) {
      int fl = d->number < 0 ? -1 : detail::sys::fcntl(d->number, F_GETFL);
      if (fl < 0) {
        if (d->number < 0) errno = EBADF;
        fail(name + " fd", std::to_string(d->number));
      }
      int copy = detail::blocking_copy_for_child(d->number, fl);
      fds.moves.push_back({copy >= 0 ? own(copy) : d->number, slot});
    } else if (std::holds_alternative<merge_with_out_t>(s)) {
      merges.push_back({1, 2});
    } else if (std::holds_alternative<merge_with_err_t>(s)) {
      merges.push_back({2, 1});
    }
  }
  for (auto [c, p] : fd_maps_) {
    int fl = detail::sys::fcntl(p, F_GETFL);
    if (fl < 0) fail("map fd", std::to_string(p) + (errno == EBADF ? " (not open in the parent)" : ""));
    int copy = detail::blocking_copy_for_child(p, fl);
    fds.moves.push_back({copy >= 0 ? own(copy) : p, c});
  }
  if (ipc_fd_) {
    int sv[2];
    if (detail::sys::socketpair(AF_UNIX, SOCK_STREAM, sv) != 0) fail("create ipc socketpair");
    fds.channel.reset(sv[0]);
    fds.moves.push_back({own(sv[1]), *ipc_fd_});
  }
  // Move every source above every target, so applying the moves in order never
  // overwrites a source that a later move still needs (e.g. swapping 1 and 2, or a
  // pipe that landed on fd 0 because the parent had closed its stdin).
  for (auto& m : fds.moves) {
    if (m.from < plan.close_from) {
      int up = detail::sys::dup_above(m.from, plan.close_from);
      if (up < 0) fail("dup fd", std::to_string(m.from));
      m.from = own(up);
    }
  }
  // A merge (2>&1) copies a target that is in place by then, so it comes last.
  fds.moves.insert(fds.moves.end(), merges.begin(), merges.end());
  return fds;
}

inline process command::spawn() const { return *spawn(nullptr); }

inline std::optional<process> command::spawn(std::error_code& ec) const noexcept {
  return detail::report_to(ec, std::optional<process>(), [&] { return spawn(&ec); });
}

inline std::optional<process> command::spawn(std::error_code* ec) const {
  detail::spawn_plan plan = this->plan(ec);  // validated; nothing created yet
  if (ec && *ec) return std::nullopt;
  // tree(): the cgroup (removed again if anything below fails), or the subreaper
  // mode's environment mark.
  std::unique_ptr<process_tree> tree;
  if (tree_) {
    tree.reset(new process_tree(*tree_, plan.cmdline));
    if (!tree->cookie().empty()) {
      if (!plan.env) {
        plan.env.emplace();
        for (char** e = environ; e != nullptr && *e != nullptr; ++e) plan.env->emplace_back(*e);
      }
      plan.env->push_back(tree->cookie());
    }
  }
  detail::child_fds fds = open_fds(plan);
  std::vector<char*> argv = detail::c_array(plan.argv), envp;
  if (plan.env) envp = detail::c_array(*plan.env);
  detail::child_plan raw = plan.raw(argv, envp, fds.moves);
  if (tree) raw.cgroup_procs = tree->procs_fd();
  detail::spawned child = detail::launch(plan, raw, ec);
  if (ec && *ec) return std::nullopt;
  if (tree) tree->attach(child.pid, child.pidfd.get());
  process p(child.pid, std::move(child.pidfd), std::move(plan.cmdline), new_group_ || new_session_,
            std::move(fds.in), std::move(fds.out), std::move(fds.err), std::move(fds.channel),
            plan.autoreap, child.lost);
  p.tree_ = std::move(tree);
  return p;
}

// ---- printing: operator<< prints what fmt.hpp's formatters print -------------------

// "automatic", "posix_spawn", "clone_vfork".
inline const char* to_string(spawn_backend b) noexcept {
  switch (b) {
    case spawn_backend::automatic:
      return "automatic";
    case spawn_backend::posix_spawn:
      return "posix_spawn";
    case spawn_backend::clone_vfork:
      return "clone_vfork";
  }
  return "unknown";
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, spawn_backend b) {
  return detail::put_text(os, to_string(b));
}
// The shell-quoted command line, command::to_string().
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const command& c) {
  return detail::put_text(os, c.to_string());
}

}  // namespace subprocess
