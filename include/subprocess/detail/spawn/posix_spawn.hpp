// subprocess/detail/spawn/posix_spawn.hpp - the posix_spawn back end. Not public API.
//
// glibc implements posix_spawn with clone(CLONE_VM|CLONE_VFORK) on a separate
// stack, so its cost does not grow with the parent's memory, and it reports exec
// failures as its return value (and reaps the failed child). It can express the fd
// moves and closes, the working directory, setsid, the process group, the signal
// mask and default dispositions: command::plan() picks it whenever the command
// asks for nothing more (credentials, limits, umask, nice value, CPU affinity, a
// pre_exec hook and PR_SET_PDEATHSIG take clone_vfork.hpp).
#pragma once

#include <cstring>

#include <signal.h>
#include <fcntl.h>
#include <spawn.h>

#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "plan.hpp"

namespace subprocess::detail {

inline bool posix_spawn_backend_available() noexcept {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  return true;  // addchdir_np (2.29), addclosefrom_np (2.34), SETSID (2.26)
#else
  return false;
#endif
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
  sigset_t all;
  std::memset(&all, 0xff, sizeof all);
  e = e ? e : posix_spawnattr_setflags(&attr, flags);
  e = e ? e : posix_spawnattr_setsigmask(&attr, &plan.sigmask);  // empty unless blocked_signals()
  e = e ? e : posix_spawnattr_setsigdefault(&attr, &all);
  if (plan.setpgid) e = e ? e : posix_spawnattr_setpgroup(&attr, plan.pgid);
  for (int i = 0; i < plan.n_moves && !e; ++i)
    e = posix_spawn_file_actions_adddup2(&fa, plan.moves[i].from, plan.moves[i].to);
  if (plan.ctty) e = e ? e : posix_spawn_file_actions_addopen(&fa, 0, plan.ctty, O_RDWR, 0);  // pty.hpp
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
