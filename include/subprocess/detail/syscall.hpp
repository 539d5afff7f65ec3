// subprocess/detail/syscall.hpp - the one seam every system call goes through.
//
// Not public API. Each wrapper makes exactly one system call and returns what the
// kernel said (-1 and errno on failure); none of them retries. Callers retry EINTR
// with no_eintr() or with their own deadline arithmetic.
//
// Building with SUBPROCESS_FAULT_INJECTION lets a test install fault_hook, which is
// asked before every call and can make it fail with any errno (see
// tests/support/fault_injection.hpp and tests/test_fault_injection.cpp). Without the
// macro the seam compiles to plain calls.
//
// The rule: every system call the library makes in the parent goes through here,
// so a test can fail any of them. The only exceptions are the raw syscall()s made
// by the vfork child in detail/spawn/clone_vfork.hpp, which shares our memory and
// must not run anything but the kernel call (no hook, no sanitizer, no errno
// games); the parent asks the hook for it in advance (child_fault()).
// When a new header needs a new kind of call, add a wrapper here and a `call`
// enumerator (before count_) with its name in call_name().
#pragma once

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>

#include <cstdlib>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(SUBPROCESS_FAULT_INJECTION)
#include <atomic>
#endif

namespace subprocess::detail::sys {

enum class call : unsigned char {
  read, write, poll, epoll_create, epoll_ctl, epoll_wait, waitid, waitpid, open, close, pipe2,
  socketpair, dup, fcntl, pidfd_open, pidfd_send_signal, kill, posix_spawn, clone, sigmask,
  signalfd, timerfd, eventfd, madvise, access, stat, getcwd, readlink, getrlimit, mmap, munmap,
  sigpending, sigtimedwait, recv, send, shutdown, fstat, mremap, eventfd_write, setsockopt,
  sigaction, sched, openpt, ioctl, mkdir, rmdir, prctl,
  // Made by the clone child (see child_fault below), never through a wrapper.
  setgroups, setgid, setuid, setrlimit, setpriority, setaffinity, cgroup_join, count_
};

inline const char* call_name(call c) noexcept {
  static constexpr const char* names[] = {
      "read", "write", "poll", "epoll_create", "epoll_ctl", "epoll_wait", "waitid", "waitpid",
      "open", "close", "pipe2", "socketpair", "dup", "fcntl", "pidfd_open", "pidfd_send_signal",
      "kill", "posix_spawn", "clone", "sigmask", "signalfd", "timerfd", "eventfd", "madvise", "access",
      "stat", "getcwd", "readlink", "getrlimit", "mmap", "munmap", "sigpending", "sigtimedwait",
      "recv", "send", "shutdown", "fstat", "mremap", "eventfd_write", "setsockopt", "sigaction", "sched",
      "openpt", "ioctl", "mkdir", "rmdir", "prctl",
      "setgroups", "setgid", "setuid", "setrlimit", "setpriority", "setaffinity", "cgroup_join"};
  static_assert(sizeof names / sizeof names[0] == static_cast<std::size_t>(call::count_));
  auto i = static_cast<std::size_t>(c);
  return i < static_cast<std::size_t>(call::count_) ? names[i] : "?";
}

#if defined(SUBPROCESS_FAULT_INJECTION)
// Returns 0 to let the call through, or the errno to fail it with.
using fault_fn = int (*)(call) noexcept;
inline std::atomic<fault_fn> fault_hook{nullptr};
inline int injected(call c) noexcept {
  fault_fn h = fault_hook.load(std::memory_order_relaxed);
  return h != nullptr ? h(c) : 0;
}
#define SUBPROCESS_FAULT_POINT(c)                                      \
  do {                                                                 \
    if (int fault_errno_ = ::subprocess::detail::sys::injected(c)) {   \
      errno = fault_errno_;                                            \
      return -1;                                                       \
    }                                                                  \
  } while (0)
#else
#define SUBPROCESS_FAULT_POINT(c) \
  do {                            \
  } while (0)
#endif

// The calls the clone child makes (setuid, setrlimit...) cannot ask the hook: the
// child shares our memory and runs no library code. The parent asks on its behalf,
// once per call kind, before the clone (child_plan::faults), and the child fails
// that step with the answer instead of making the call. 0 without the macro.
inline int child_fault(call c) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  return injected(c);
#else
  (void)c;
  return 0;
#endif
}

// Retries a call while it fails with EINTR. For calls without a timeout only.
template <class F>
auto no_eintr(F&& f) {
  for (;;) {
    auto r = f();
    if (!(r == -1 && errno == EINTR)) return r;
  }
}

inline ssize_t read(int fd, void* buf, std::size_t n) noexcept {
  SUBPROCESS_FAULT_POINT(call::read);
  return ::read(fd, buf, n);
}
inline ssize_t pread(int fd, void* buf, std::size_t n, off_t off) noexcept {
  SUBPROCESS_FAULT_POINT(call::read);
  return ::pread(fd, buf, n, off);
}
inline ssize_t write(int fd, const void* buf, std::size_t n) noexcept {
  SUBPROCESS_FAULT_POINT(call::write);
  return ::write(fd, buf, n);
}
inline int poll(pollfd* fds, nfds_t n, int timeout_ms) noexcept {
  SUBPROCESS_FAULT_POINT(call::poll);
  return ::poll(fds, n, timeout_ms);
}
inline int epoll_create() noexcept {
  SUBPROCESS_FAULT_POINT(call::epoll_create);
  return ::epoll_create1(EPOLL_CLOEXEC);
}
inline int epoll_ctl(int ep, int op, int fd, epoll_event* ev) noexcept {
  SUBPROCESS_FAULT_POINT(call::epoll_ctl);
  return ::epoll_ctl(ep, op, fd, ev);
}
inline int epoll_wait(int ep, epoll_event* evs, int n, int timeout_ms) noexcept {
  SUBPROCESS_FAULT_POINT(call::epoll_wait);
  return ::epoll_wait(ep, evs, n, timeout_ms);
}
inline int waitid(idtype_t type, id_t id, siginfo_t* info, int options) noexcept {
  SUBPROCESS_FAULT_POINT(call::waitid);
  return ::waitid(type, id, info, options);
}
// waitid(P_PIDFD, pidfd, ...) (Linux 5.4; EINVAL before): waits for exactly the
// process behind the pidfd, never for whoever got its pid after it was reaped.
inline int waitid_pidfd(int pidfd, siginfo_t* info, int options) noexcept {
  return sys::waitid(static_cast<idtype_t>(3 /* P_PIDFD, spelled out for older C libraries */),
                     static_cast<id_t>(pidfd), info, options);
}
// Sockets (the ipc channel). flags: MSG_DONTWAIT, MSG_NOSIGNAL...
inline ssize_t recv(int fd, void* buf, std::size_t n, int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::recv);
  return ::recv(fd, buf, n, flags);
}
inline ssize_t send(int fd, const void* buf, std::size_t n, int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::send);
  return ::send(fd, buf, n, flags);
}
// Gathered send (several buffers in one call); fails like send().
inline ssize_t sendmsg(int fd, const msghdr* m, int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::send);
  return ::sendmsg(fd, m, flags);
}
inline int shutdown(int fd, int how) noexcept {
  SUBPROCESS_FAULT_POINT(call::shutdown);
  return ::shutdown(fd, how);
}
inline int setsockopt(int fd, int level, int name, const void* value, socklen_t len) noexcept {
  SUBPROCESS_FAULT_POINT(call::setsockopt);
  return ::setsockopt(fd, level, name, value, len);
}
inline int fstat(int fd, struct stat* st) noexcept {
  SUBPROCESS_FAULT_POINT(call::fstat);
  return ::fstat(fd, st);
}
inline void* mremap(void* old, std::size_t old_n, std::size_t new_n) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::mremap)) {
    errno = e;
    return MAP_FAILED;
  }
#endif
  return ::mremap(old, old_n, new_n, MREMAP_MAYMOVE);
}
inline pid_t waitpid(pid_t pid, int* status, int options) noexcept {
  SUBPROCESS_FAULT_POINT(call::waitpid);
  return ::waitpid(pid, status, options);
}
inline int open(const char* path, int flags, mode_t mode = 0) noexcept {
  SUBPROCESS_FAULT_POINT(call::open);
  return ::open(path, flags | O_CLOEXEC, mode);
}
inline int close(int fd) noexcept {
  // close() is never retried on EINTR: on Linux the fd is gone either way, so an
  // injected failure closes it too (a fault must not invent an fd leak).
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::close)) {
    ::close(fd);
    errno = e;
    return -1;
  }
#endif
  return ::close(fd);
}
inline int pipe2(int fds[2], int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::pipe2);
  return ::pipe2(fds, flags | O_CLOEXEC);
}
inline int socketpair(int domain, int type, int fds[2]) noexcept {
  SUBPROCESS_FAULT_POINT(call::socketpair);
  return ::socketpair(domain, type | SOCK_CLOEXEC, 0, fds);
}
// dup to the lowest free fd >= min_fd, close-on-exec.
inline int dup_above(int fd, int min_fd) noexcept {
  SUBPROCESS_FAULT_POINT(call::dup);
  return ::fcntl(fd, F_DUPFD_CLOEXEC, min_fd);
}
inline int fcntl(int fd, int cmd, int arg = 0) noexcept {
  SUBPROCESS_FAULT_POINT(call::fcntl);
  return ::fcntl(fd, cmd, arg);
}
inline int madvise(void* addr, std::size_t len, int advice) noexcept {
  SUBPROCESS_FAULT_POINT(call::madvise);
  return ::madvise(addr, len, advice);
}
inline int pidfd_open(pid_t pid) noexcept {
  SUBPROCESS_FAULT_POINT(call::pidfd_open);
#if defined(SYS_pidfd_open)
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}
inline int pidfd_send_signal(int pidfd, int sig) noexcept {
  SUBPROCESS_FAULT_POINT(call::pidfd_send_signal);
#if defined(SYS_pidfd_send_signal)
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
#else
  (void)pidfd, (void)sig;
  errno = ENOSYS;
  return -1;
#endif
}
inline int eventfd(unsigned initval, int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::eventfd);
  return ::eventfd(initval, flags | EFD_CLOEXEC);
}
inline int timerfd_create() noexcept {
  SUBPROCESS_FAULT_POINT(call::timerfd);
  return ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
}
inline int timerfd_settime(int fd, int flags, const itimerspec* value) noexcept {
  SUBPROCESS_FAULT_POINT(call::timerfd);
  return ::timerfd_settime(fd, flags, value, nullptr);
}
// write(2) of 8 bytes to an eventfd: a kind of its own, because an eventfd write
// fails with EAGAIN only when the counter is full (the fd is readable then anyway),
// unlike a pipe write; tests can fail the two independently (see detail/eventfd.hpp).
inline ssize_t eventfd_write(int fd, std::uint64_t value) noexcept {
  SUBPROCESS_FAULT_POINT(call::eventfd_write);
  return ::write(fd, &value, sizeof value);
}
inline int kill(pid_t pid, int sig) noexcept {
  SUBPROCESS_FAULT_POINT(call::kill);
  return ::kill(pid, sig);
}
// Returns an errno value like posix_spawn itself (0 on success).
inline int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                       const posix_spawnattr_t* attr, char* const argv[],
                       char* const envp[]) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::posix_spawn)) return e;
#endif
  return ::posix_spawn(pid, path, fa, attr, argv, envp);
}
inline int signalfd(int fd, const sigset_t* mask, int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::signalfd);
  return ::signalfd(fd, mask, flags | SFD_CLOEXEC);
}
inline pid_t getpgid(pid_t pid) noexcept { return ::getpgid(pid); }
// Cannot fail.
inline pid_t getpgrp() noexcept { return ::getpgrp(); }
inline int thread_sigmask(int how, const sigset_t* set, sigset_t* old) noexcept {
  // pthread_sigmask returns an errno value; map it to the -1/errno convention.
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::sigmask)) {
    errno = e;
    return -1;
  }
#endif
  int e = ::pthread_sigmask(how, set, old);
  if (e != 0) {
    errno = e;
    return -1;
  }
  return 0;
}

// pthread_sigmask can only block the signals glibc lets users block; the clone back
// end must block glibc's internal ones too, so it uses the raw system call.
inline int raw_sigprocmask(int how, const unsigned long* set, unsigned long* old) noexcept {
  SUBPROCESS_FAULT_POINT(call::sigmask);
  return static_cast<int>(::syscall(SYS_rt_sigprocmask, how, set, old, sizeof(unsigned long)));
}
// Reads (act == nullptr) or sets a signal's disposition; the library only reads.
inline int sigaction(int sig, const struct sigaction* act, struct sigaction* old) noexcept {
  SUBPROCESS_FAULT_POINT(call::sigaction);
  return ::sigaction(sig, act, old);
}
inline int sigpending(sigset_t* set) noexcept {
  SUBPROCESS_FAULT_POINT(call::sigpending);
  return ::sigpending(set);
}
inline int sigtimedwait(const sigset_t* set, siginfo_t* info, const timespec* timeout) noexcept {
  SUBPROCESS_FAULT_POINT(call::sigtimedwait);
  return ::sigtimedwait(set, info, timeout);
}
// Checked with the effective ids (AT_EACCESS), as execve and chdir will be, not
// with the real ones as access() does (they differ in a set-uid program).
inline int access(const char* path, int mode) noexcept {
  SUBPROCESS_FAULT_POINT(call::access);
  return ::faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}
inline int stat(const char* path, struct stat* st) noexcept {
  SUBPROCESS_FAULT_POINT(call::stat);
  return ::stat(path, st);
}
// getcwd into buf; nullptr and errno on failure (ERANGE: buf too small).
inline char* getcwd(char* buf, std::size_t n) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::getcwd)) {
    errno = e;
    return nullptr;
  }
#endif
  return ::getcwd(buf, n);
}
// Directory listing (a scan of /proc). opendir opens an fd (fails like open),
// readdir reads entries with getdents64 (fails like read: nullptr with errno set; at
// the end nullptr with errno unchanged), closedir closes the fd.
inline DIR* opendir(const char* path) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::open)) {
    errno = e;
    return nullptr;
  }
#endif
  return ::opendir(path);
}
inline dirent* readdir(DIR* d) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::read)) {
    errno = e;
    return nullptr;
  }
#endif
  return ::readdir(d);
}
inline int closedir(DIR* d) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::close)) {
    ::closedir(d);  // like close(): the directory is gone either way
    errno = e;
    return -1;
  }
#endif
  return ::closedir(d);
}
inline ssize_t readlink(const char* path, char* buf, std::size_t n) noexcept {
  SUBPROCESS_FAULT_POINT(call::readlink);
  return ::readlink(path, buf, n);
}
// Creating and removing cgroup directories (tree.hpp).
inline int mkdir(const char* path, mode_t mode) noexcept {
  SUBPROCESS_FAULT_POINT(call::mkdir);
  return ::mkdir(path, mode);
}
inline int rmdir(const char* path) noexcept {
  SUBPROCESS_FAULT_POINT(call::rmdir);
  return ::rmdir(path);
}
// prctl with integer arguments (PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER).
inline int prctl(int option, unsigned long arg) noexcept {
  SUBPROCESS_FAULT_POINT(call::prctl);
  return static_cast<int>(::syscall(SYS_prctl, option, arg, 0UL, 0UL, 0UL));
}
inline int getrlimit(int resource, rlimit* rl) noexcept {
  SUBPROCESS_FAULT_POINT(call::getrlimit);
  return ::getrlimit(resource, rl);
}
// An anonymous private read/write mapping (ipc buffers; with MAP_STACK, the clone
// back end's child stack). MAP_FAILED on failure.
inline void* mmap_anonymous(std::size_t n, int extra_flags = 0) noexcept {
#if defined(SUBPROCESS_FAULT_INJECTION)
  if (int e = injected(call::mmap)) {
    errno = e;
    return MAP_FAILED;
  }
#endif
  return ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
}
inline int munmap(void* p, std::size_t n) noexcept {
  SUBPROCESS_FAULT_POINT(call::munmap);
  return ::munmap(p, n);
}
// clone(CLONE_VM|CLONE_VFORK...) through `fn` (glibc's clone, or the real one under
// TSan). The child runs child(arg) on `stack_top`; pidfd receives the pidfd when
// CLONE_PIDFD is in flags.
using clone_fn = int (*)(int (*)(void*), void*, int, void*, ...);
inline pid_t clone(clone_fn fn, int (*child)(void*), void* stack_top, int flags, void* arg,
                   int* pidfd) noexcept {
  SUBPROCESS_FAULT_POINT(call::clone);
  return pidfd != nullptr ? fn(child, stack_top, flags, arg, pidfd) : fn(child, stack_top, flags, arg);
}
// The calling thread's nice value (getpriority; -1 with errno set on failure, since
// -1 is also a nice value) and CPU affinity.
inline int thread_nice(int* nice) noexcept {
  SUBPROCESS_FAULT_POINT(call::sched);
  errno = 0;
  const int n = ::getpriority(PRIO_PROCESS, 0);
  if (n == -1 && errno != 0) return -1;
  *nice = n;
  return 0;
}
inline int thread_affinity(std::size_t size, void* mask) noexcept {
  SUBPROCESS_FAULT_POINT(call::sched);
  return static_cast<int>(::syscall(SYS_sched_getaffinity, 0, size, mask) < 0 ? -1 : 0);
}
// Pseudo-terminals (pty.hpp). posix_openpt opens /dev/ptmx (flags gain O_CLOEXEC);
// grantpt, unlockpt and ptsname_r are ioctls on the master in glibc, so they fail
// as kind `ioctl`, like the window-size and termios ioctls.
inline int posix_openpt(int flags) noexcept {
  SUBPROCESS_FAULT_POINT(call::openpt);
  return ::posix_openpt(flags | O_CLOEXEC);
}
inline int grantpt(int master) noexcept {
  SUBPROCESS_FAULT_POINT(call::ioctl);
  return ::grantpt(master);
}
inline int unlockpt(int master) noexcept {
  SUBPROCESS_FAULT_POINT(call::ioctl);
  return ::unlockpt(master);
}
// -1 with errno set on failure (ptsname_r itself returns the errno).
inline int ptsname_r(int master, char* buf, std::size_t n) noexcept {
  SUBPROCESS_FAULT_POINT(call::ioctl);
  if (int e = ::ptsname_r(master, buf, n)) {
    errno = e;
    return -1;
  }
  return 0;
}
inline int ioctl(int fd, unsigned long request, void* arg) noexcept {
  SUBPROCESS_FAULT_POINT(call::ioctl);
  return ::ioctl(fd, request, arg);
}

// Cannot fail; here so that every call the library makes is in one place.
inline pid_t getpid() noexcept { return static_cast<pid_t>(::syscall(SYS_getpid)); }
inline uid_t geteuid() noexcept { return ::geteuid(); }

}  // namespace subprocess::detail::sys
