// subprocess/detail/spawn.hpp - starting a child: the two back ends. Not public API.
//
// Everything the child needs (program path, argv, envp, the fd moves, flags) is
// computed by the parent first (command.hpp). The child side here then does only
// async-signal-safe system calls: no allocation, no locks, no exceptions.
//
// Back end 1, posix_spawn: glibc implements it with clone(CLONE_VM|CLONE_VFORK)
// on a separate stack, so its cost does not grow with the parent's memory, and it
// reports exec failures as its return value (and reaps the failed child). Used
// whenever the options fit its attributes and file actions.
//
// Back end 2, clone_vfork: our own clone(CLONE_VM|CLONE_VFORK) for what
// posix_spawn cannot express (PR_SET_PDEATHSIG; a pidfd obtained atomically with
// the child through CLONE_PIDFD, needed when SIGCHLD is ignored and the kernel may
// reap the child before a pidfd_open could run). Same cost profile. The parent
// blocks every signal around the clone so no handler can run in the child while it
// shares the parent's memory; the child resets all dispositions to SIG_DFL before
// unblocking. Failures are written into the shared plan and the child exits 127;
// the parent reaps it and reports the errno.
#pragma once

#include <cstdint>
#include <cstring>

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "syscall.hpp"
#include "unique_fd.hpp"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SUBPROCESS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define SUBPROCESS_TSAN 1
#endif
#if defined(SUBPROCESS_TSAN)
#include <dlfcn.h>
#endif

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

enum class child_step : int {
  none, stack, sigmask, pidfd, setsid, setpgid, pdeathsig, dup, chdir, close_fds, exec,
  spawner_thread, ctty
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
    case child_step::close_fds: return "close inherited fds";
    case child_step::exec: return "exec";
    case child_step::spawner_thread: return "start the spawner thread";
    case child_step::ctty: return "acquire the controlling terminal";
  }
  return "spawn";
}

// An inclusive range of fds to close in the child: the gaps between mapped targets.
struct fd_range {
  int lo;
  int hi;
};

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
  // ---- pty (pty.hpp): fd 0, a terminal's slave, becomes the controlling terminal
  // of the new session (needs setsid). The clone child asks with ioctl(TIOCSCTTY);
  // posix_spawn cannot, so its file actions re-open this path on fd 0 without
  // O_NOCTTY after the moves: glibc runs setsid before the file actions, and a
  // session leader without a terminal that opens one acquires it.
  const char* ctty = nullptr;
  // Set when another thread (the spawner) clones for the caller: the caller's nice
  // value and CPU affinity, applied in the child (best effort: lowering the nice
  // value below the cloning thread's needs CAP_SYS_NICE or RLIMIT_NICE; then the
  // child keeps the cloning thread's).
  bool set_nice = false;
  int nice = 0;
  bool set_affinity = false;
  cpu_set_t affinity{};
  // Written by the clone child on failure; read by the parent after the vfork.
  int err = 0;
  child_step step = child_step::none;
};

enum class spawn_method { automatic, posix_spawn, clone_vfork };

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
};

// ---------------------------------------------------------------- child side --

// Closes every fd >= from: close_range (Linux 5.9), else /proc/self/fd read with
// raw getdents64 (opendir may allocate), else a loop bounded by RLIMIT_NOFILE.
SUBPROCESS_CHILD_CODE inline int child_close_from(int from, int limit) noexcept {
#if defined(SYS_close_range)
  if (::syscall(SYS_close_range, static_cast<unsigned>(from), ~0U, 0U) == 0) return 0;
#endif
  int dir = static_cast<int>(
      ::syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir >= 0) {
    alignas(8) char buf[4096];
    for (;;) {
      long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        struct linux_dirent64 {
          std::uint64_t ino;
          std::int64_t off;
          unsigned short reclen;
          unsigned char type;
          char name[1];
        };
        auto* d = reinterpret_cast<linux_dirent64*>(buf + off);
        int fd = 0;
        bool num = d->name[0] != '\0';
        for (const char* c = d->name; *c; ++c) {
          if (*c < '0' || *c > '9') {
            num = false;
            break;
          }
          fd = fd * 10 + (*c - '0');
        }
        if (num && fd >= from && fd != dir) ::syscall(SYS_close, fd);
        off += d->reclen;
      }
    }
    ::syscall(SYS_close, dir);
    return 0;
  }
  for (int fd = from; fd < limit; ++fd) ::syscall(SYS_close, fd);
  return 0;
}

SUBPROCESS_CHILD_CODE inline int child_fail(child_plan* p, child_step s) noexcept {
  p->err = errno;
  p->step = s;
  ::syscall(SYS_exit_group, 127);
  return 127;
}

SUBPROCESS_CHILD_CODE inline int clone_child_main(void* arg) noexcept {
  auto* p = static_cast<child_plan*>(arg);
  // Every signal to its default action. The parent blocked all signals before the
  // clone, so nothing can be delivered to a handler while we share its memory.
  for (int sig = 1; sig < 65; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
#if defined(__x86_64__) || defined(__aarch64__)
    struct {
      void* handler;
      unsigned long flags;
      void* restorer;
      unsigned long mask;
    } dfl{nullptr /* SIG_DFL */, 0, nullptr, 0};
    ::syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof(unsigned long));
#else
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(sig, &dfl, nullptr);
#endif
  }
  if (p->setsid && ::syscall(SYS_setsid) < 0) return child_fail(p, child_step::setsid);
  if (p->setpgid && ::syscall(SYS_setpgid, 0, p->pgid) < 0) return child_fail(p, child_step::setpgid);
  if (p->set_nice) ::syscall(SYS_setpriority, PRIO_PROCESS, 0, p->nice);
  if (p->set_affinity) ::syscall(SYS_sched_setaffinity, 0, sizeof p->affinity, &p->affinity);
  if (p->pdeathsig != 0) {
    if (::syscall(SYS_prctl, PR_SET_PDEATHSIG, p->pdeathsig, 0, 0, 0) < 0)
      return child_fail(p, child_step::pdeathsig);
    // The parent may have died before prctl took effect: then nobody will send the
    // signal, so send it ourselves (it stays pending until the mask is cleared).
    if (::syscall(SYS_getppid) != p->parent)
      ::syscall(SYS_kill, ::syscall(SYS_getpid), p->pdeathsig);
  }
  for (int i = 0; i < p->n_moves; ++i)
    if (::syscall(SYS_dup3, p->moves[i].from, p->moves[i].to, 0) < 0) return child_fail(p, child_step::dup);
  if (p->ctty != nullptr && ::syscall(SYS_ioctl, 0, TIOCSCTTY, 0) < 0) return child_fail(p, child_step::ctty);
  for (int i = 0; i < p->n_gaps; ++i) {
#if defined(SYS_close_range)
    if (::syscall(SYS_close_range, p->gaps[i].lo, p->gaps[i].hi, 0) == 0) continue;
#endif
    for (int fd = p->gaps[i].lo; fd <= p->gaps[i].hi; ++fd) ::syscall(SYS_close, fd);
  }
  if (p->cwd != nullptr && ::syscall(SYS_chdir, p->cwd) < 0) return child_fail(p, child_step::chdir);
  child_close_from(p->close_from, p->fd_limit);
  unsigned long empty_mask = 0;
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, nullptr, sizeof empty_mask);
  ::syscall(SYS_execve, p->path, p->argv, p->envp);
  return child_fail(p, child_step::exec);
}

// --------------------------------------------------------------- parent side --

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

inline bool clone_backend_available() noexcept {
#if defined(__x86_64__) || defined(__aarch64__)
  return true;
#else
  return false;
#endif
}

inline bool posix_spawn_backend_available() noexcept {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  return true;  // addchdir_np (2.29), addclosefrom_np (2.34), SETSID (2.26)
#else
  return false;
#endif
}

// ThreadSanitizer intercepts clone() and treats it as fork(), which corrupts its
// state when the child shares our memory (and makes TSan abort the program when
// it next starts a thread); under TSan call glibc's clone directly. Ask libc
// itself: with gcc the TSan runtime is a shared library loaded before libc, so
// dlsym(RTLD_NEXT) would find its interceptor again (clang links it statically).
inline sys::clone_fn real_clone() noexcept {
#if defined(SUBPROCESS_TSAN)
  static sys::clone_fn fn = [] {
    void* libc = ::dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void* f = libc != nullptr ? ::dlsym(libc, "clone") : nullptr;
    return reinterpret_cast<sys::clone_fn>(f != nullptr ? f : ::dlsym(RTLD_NEXT, "clone"));
  }();
  return fn;
#else
  return &::clone;
#endif
}

inline bool spawn_clone(child_plan& plan, spawned& out, spawn_failure& fail) {
  constexpr std::size_t stack_size = 64 * 1024;
  void* stack = sys::mmap_anonymous(stack_size, MAP_STACK);
  if (stack == MAP_FAILED) {
    fail = {errno, child_step::stack};
    return false;
  }
  (void)sys::getpid();  // binds syscall() now, not lazily inside the child
  plan.err = 0;
  plan.step = child_step::none;
  // Block everything, glibc's internal signals too (hence the raw syscall). If that
  // fails, do not clone: a handler could then run in the child on our memory.
  unsigned long all = ~0UL, old = 0;
  if (sys::raw_sigprocmask(SIG_SETMASK, &all, &old) != 0) {
    fail = {errno, child_step::sigmask};
    sys::munmap(stack, stack_size);
    return false;
  }
  int pidfd = -1;
  pid_t pid = -1;
  void* top = static_cast<char*>(stack) + stack_size;
#if defined(CLONE_PIDFD)
  pid = sys::clone(real_clone(), clone_child_main, top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD,
                   &plan, &pidfd);
  if (pid < 0 && errno == EINVAL)  // kernel < 5.2
#endif
    pid = sys::clone(real_clone(), clone_child_main, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &plan,
                     nullptr);
  int clone_errno = errno;
  // Restoring the old mask cannot fail: it is the mask we just read.
  sys::raw_sigprocmask(SIG_SETMASK, &old, nullptr);
  sys::munmap(stack, stack_size);
  if (pid < 0) {
    fail = {clone_errno, child_step::none};
    return false;
  }
  unique_fd pfd(pidfd);
  if (plan.err != 0) {
    // The child failed before or at exec and exited 127: reap it, report why. By its
    // pidfd when there is one: with SIGCHLD ignored the kernel has reaped it already
    // and its pid may be another child's by now.
    int r = -1;
    if (pfd) {
      siginfo_t info{};
      while ((r = sys::waitid_pidfd(pfd.get(), &info, WEXITED)) != 0 && errno == EINTR) {
      }
    }
    if (r != 0 && (!pfd || errno == EINVAL)) reap_blocking(pid);  // EINVAL: no P_PIDFD
    fail = {plan.err, plan.step};
    return false;
  }
  out.pid = pid;
  out.pidfd = std::move(pfd);
  return true;
}

// False if the process behind pidfd is not (or no longer) a child of ours: waitid
// (P_PIDFD, WNOHANG | WNOWAIT) fails with ECHILD for anyone else's process, and
// otherwise changes nothing (a running child reports si_pid 0; a zombie stays).
// True when it cannot tell (a kernel without P_PIDFD, any other failure).
inline bool pidfd_is_own_child(int pidfd) noexcept {
  siginfo_t info{};
  int r;
  while ((r = sys::waitid_pidfd(pidfd, &info, WEXITED | WNOHANG | WNOWAIT)) != 0 && errno == EINTR) {
  }
  return r == 0 || errno != ECHILD;
}

// posix_spawn closes gap fds one action each; past this many, use clone_vfork.
inline constexpr int max_posix_spawn_gap_fds = 64;

inline bool spawn_posix(const child_plan& plan, spawned& out, spawn_failure& fail) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  if (int e = posix_spawn_file_actions_init(&fa)) {
    fail = {e, child_step::none};
    return false;
  }
  if (int e = posix_spawnattr_init(&attr)) {
    posix_spawn_file_actions_destroy(&fa);
    fail = {e, child_step::none};
    return false;
  }
  int e = 0;
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (plan.setsid) flags |= POSIX_SPAWN_SETSID;
  if (plan.setpgid) flags |= POSIX_SPAWN_SETPGROUP;
  // Every signal back to SIG_DFL in the child, glibc's two reserved real-time
  // signals (32 and 33) included. sigfillset() and sigaddset() leave those two out,
  // and glibc's posix_spawn then sets them to SIG_IGN in the child (whatever the
  // parent does with them), an ignore that survives exec. The child tests the set bit
  // by bit, so a set with every bit on resets them too: no extra system call.
  sigset_t none, all;
  sigemptyset(&none);
  std::memset(&all, 0xff, sizeof all);
  e = e ? e : posix_spawnattr_setflags(&attr, flags);
  e = e ? e : posix_spawnattr_setsigmask(&attr, &none);
  e = e ? e : posix_spawnattr_setsigdefault(&attr, &all);
  if (plan.setpgid) e = e ? e : posix_spawnattr_setpgroup(&attr, plan.pgid);
  for (int i = 0; i < plan.n_moves && !e; ++i)
    e = posix_spawn_file_actions_adddup2(&fa, plan.moves[i].from, plan.moves[i].to);
  if (plan.ctty) e = e ? e : posix_spawn_file_actions_addopen(&fa, 0, plan.ctty, O_RDWR, 0);  // pty
  // glibc ignores EBADF from these closes: a gap fd need not be open.
  for (int i = 0; i < plan.n_gaps && !e; ++i)
    for (int fd = plan.gaps[i].lo; fd <= plan.gaps[i].hi && !e; ++fd)
      e = posix_spawn_file_actions_addclose(&fa, fd);
  if (plan.cwd) e = e ? e : posix_spawn_file_actions_addchdir_np(&fa, plan.cwd);
  e = e ? e : posix_spawn_file_actions_addclosefrom_np(&fa, plan.close_from);
  pid_t pid = -1;
  if (!e) e = sys::posix_spawn(&pid, plan.path, &fa, &attr, plan.argv, plan.envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (e != 0) {
    // glibc has already reaped a child whose exec failed. EAGAIN and ENOMEM come
    // from creating the child (process limit, memory), not from exec: say so.
    fail = {e, e == EAGAIN || e == ENOMEM ? child_step::none : child_step::exec};
    return false;
  }
  out.pid = pid;
  out.pidfd.reset(sys::pidfd_open(pid));
  if (!out.pidfd && errno == ESRCH) {
    // The child ran and is gone already, reaped without us: with SIGCHLD ignored (or
    // SA_NOCLDWAIT) the kernel does that the moment it exits. That is a start, not a
    // failure: reporting failure would make the caller run it a second time. Its pid
    // may belong to someone else by now, so the process never uses it (see `lost`).
    // command::spawn() takes the clone path in that mode, so this is only the
    // posix_spawn back end chosen by hand, or SIGCHLD ignored by another thread
    // during the spawn.
    out.lost = true;
    return true;
  }
  if (out.pidfd && !pidfd_is_own_child(out.pidfd.get())) {
    // The child was reaped (SIGCHLD ignored, or a waitpid(-1) elsewhere) and its pid
    // already given to a process that is not our child: the pidfd refers to that
    // stranger, which must never be waited for or signalled. Lost, as above.
    out.pidfd.reset();
    out.lost = true;
    return true;
  }
  if (!out.pidfd && errno != ENOSYS) {
    int err = errno;
    sys::kill(pid, SIGKILL);
    reap_blocking(pid);
    fail = {err, child_step::pidfd};
    return false;
  }
  return true;
#else
  (void)plan, (void)out;
  fail = {ENOSYS, child_step::none};
  return false;
#endif
}

}  // namespace subprocess::detail
