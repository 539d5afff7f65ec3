// subprocess/detail/spawn/clone_vfork.hpp - the clone_vfork back end. Not public API.
//
// Our own clone(CLONE_VM|CLONE_VFORK) for what posix_spawn cannot express
// (PR_SET_PDEATHSIG; credentials, limits, umask, nice value, CPU affinity, a
// pre_exec hook; a pidfd obtained atomically with the child through CLONE_PIDFD,
// needed when SIGCHLD is ignored and the kernel may reap the child before a
// pidfd_open could run). No memory is copied: the cost does not grow with the
// parent's memory. The parent blocks every signal around the clone so no handler
// can run in the child while it shares the parent's memory; the child resets all
// dispositions to SIG_DFL before unblocking. The child runs only raw system calls
// on the prepared child_plan (no allocation, no locks, no exceptions, no errno of
// its own: it shares the parent thread's). A failure is written into the shared
// plan (errno, step, which limit) and the child exits 127; the parent reaps it and
// reports the errno.
#pragma once

#include <cstdint>

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "plan.hpp"

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

namespace subprocess::detail {

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


SUBPROCESS_CHILD_CODE inline int child_fail(child_plan* p, child_step s, int err) noexcept {
  p->err = err;
  p->step = s;
  ::syscall(SYS_exit_group, 127);
  return 127;
}

// The errno a test wants step `s` to fail with (0: make the call). Always 0 unless
// built with SUBPROCESS_FAULT_INJECTION (see child_fault() in syscall.hpp).
SUBPROCESS_CHILD_CODE inline int child_injected(const child_plan* p, child_step s) noexcept {
  return p->faults[static_cast<int>(s)];
}

// Makes step `s`'s system call, r = its result: false (and the failure recorded)
// when it failed or a test injected a failure.
#define SUBPROCESS_CHILD_STEP(p, s, call)                                   \
  do {                                                                      \
    if (int injected_ = child_injected(p, s)) return child_fail(p, s, injected_); \
    if ((call) < 0) return child_fail(p, s, errno);                         \
  } while (0)

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
  // tree(): into the tree's cgroup first. The parent is suspended (vfork) and we
  // have started nothing yet, so no descendant can be born outside it: as race-free
  // as clone3(CLONE_INTO_CGROUP), without a clone3 that needs its own stack setup.
  if (p->cgroup_procs >= 0)
    SUBPROCESS_CHILD_STEP(p, child_step::cgroup, ::syscall(SYS_write, p->cgroup_procs, "0", 1));
  if (p->setsid) SUBPROCESS_CHILD_STEP(p, child_step::setsid, ::syscall(SYS_setsid));
  if (p->setpgid) SUBPROCESS_CHILD_STEP(p, child_step::setpgid, ::syscall(SYS_setpgid, 0, p->pgid));
  if (p->caller_nice) ::syscall(SYS_setpriority, PRIO_PROCESS, 0, p->caller_nice_value);
  if (p->caller_affinity) ::syscall(SYS_sched_setaffinity, 0, sizeof p->caller_cpus, &p->caller_cpus);
  for (int i = 0; i < p->n_moves; ++i)
    SUBPROCESS_CHILD_STEP(p, child_step::dup, ::syscall(SYS_dup3, p->moves[i].from, p->moves[i].to, 0));
  if (p->ctty != nullptr) SUBPROCESS_CHILD_STEP(p, child_step::ctty, ::syscall(SYS_ioctl, 0, TIOCSCTTY, 0));
  for (int i = 0; i < p->n_gaps; ++i) {
#if defined(SYS_close_range)
    if (::syscall(SYS_close_range, p->gaps[i].lo, p->gaps[i].hi, 0) == 0) continue;
#endif
    for (int fd = p->gaps[i].lo; fd <= p->gaps[i].hi; ++fd) ::syscall(SYS_close, fd);
  }
  if (p->cwd != nullptr) SUBPROCESS_CHILD_STEP(p, child_step::chdir, ::syscall(SYS_chdir, p->cwd));
  // The settings. Limits, nice value and affinity before the ids: raising a hard
  // limit or lowering the nice value may need the privileges setuid drops. Then
  // setgroups, setgid, setuid, in that order: each needs the privilege the next
  // one gives up. Raw system calls: glibc's setuid() and friends would signal
  // every thread of the parent, whose memory we share (setxid broadcast).
  if (p->set_umask) ::syscall(SYS_umask, p->umask);  // cannot fail
  for (int i = 0; i < p->n_limits; ++i) {
    p->index = i;
    rlimit rl{p->limits[i].soft, p->limits[i].hard};
    SUBPROCESS_CHILD_STEP(p, child_step::setrlimit, ::syscall(SYS_setrlimit, p->limits[i].resource, &rl));
  }
  p->index = -1;
  if (p->set_nice) SUBPROCESS_CHILD_STEP(p, child_step::setpriority, ::syscall(SYS_setpriority, PRIO_PROCESS, 0, p->nice));
  if (p->set_affinity)
    SUBPROCESS_CHILD_STEP(p, child_step::setaffinity, ::syscall(SYS_sched_setaffinity, 0, sizeof p->cpus, &p->cpus));
  if (p->n_groups >= 0)
    SUBPROCESS_CHILD_STEP(p, child_step::setgroups, ::syscall(SYS_setgroups, p->n_groups, p->groups));
  if (p->set_gid) SUBPROCESS_CHILD_STEP(p, child_step::setgid, ::syscall(SYS_setgid, p->gid));
  if (p->set_uid) SUBPROCESS_CHILD_STEP(p, child_step::setuid, ::syscall(SYS_setuid, p->uid));
  // After the ids: the kernel clears the parent-death signal when they change.
  if (p->pdeathsig != 0) {
    SUBPROCESS_CHILD_STEP(p, child_step::pdeathsig,
                          ::syscall(SYS_prctl, PR_SET_PDEATHSIG, p->pdeathsig, 0, 0, 0));
    // The parent may have died before prctl took effect: then nobody will send the
    // signal, so send it ourselves (it stays pending until the mask is cleared).
    if (::syscall(SYS_getppid) != p->parent)
      ::syscall(SYS_kill, ::syscall(SYS_getpid), p->pdeathsig);
  }
  if (p->pre_exec != nullptr) {
    if (int e = p->pre_exec(p->pre_exec_arg)) return child_fail(p, child_step::pre_exec, e);
  }
  child_close_from(p->close_from, p->fd_limit);
  // The initial mask (empty unless blocked_signals()): the kernel's 64-bit set is
  // the first word of glibc's sigset_t.
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &p->sigmask, nullptr, sizeof(unsigned long));
  ::syscall(SYS_execve, p->path, p->argv, p->envp);
  return child_fail(p, child_step::exec, errno);
}
#undef SUBPROCESS_CHILD_STEP

// --------------------------------------------------------------- parent side --

inline bool clone_backend_available() noexcept {
#if defined(__x86_64__) || defined(__aarch64__)
  return true;
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
  plan.index = -1;
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
    fail = {plan.err, plan.step, plan.index};
    return false;
  }
  out.pid = pid;
  out.pidfd = std::move(pfd);
  return true;
}

}  // namespace subprocess::detail
