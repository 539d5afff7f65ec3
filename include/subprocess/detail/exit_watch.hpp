// subprocess/detail/exit_watch.hpp - the one way to watch a child's exit. Not public API.
//
//   exit_watcher w(pid, pidfd);        pidfd -1: by pid (kernels without pidfds)
//   w.check(collect::reap)             has it exited? never blocks (WNOHANG)
//   w.collect_now(collect::keep)       blocks until it has exited (a zombie: at once)
//   w.wait_until(dl, how, ...)         blocks until it exits or dl passes, polling up
//                                      to two more fds (its pipes) meanwhile
//   exit_poll                          how often to look when nothing can be polled
//   throw_wait_failure(errno, cmd)     the error for a wait that failed
//
// Through the pidfd when there is one: once someone else has reaped the child its pid
// may be another process's, and waitid(P_PIDFD) then fails with ECHILD where
// waitpid(pid) would wait for (and reap) that stranger. A kernel without P_PIDFD
// (5.3) says EINVAL: asked again by pid. Only ever the pid we were given: never
// waitpid(-1), which would steal other code's children.
//
// collect::keep is waitid's WNOWAIT: the status is read and the zombie stays, which
// keeps the pid (and a group leader's group id) from being given to anyone else
// (process.hpp: "A group leader's zombie is kept").
//
// ECHILD means the status is gone: the kernel discarded it (this process ignores
// SIGCHLD or set SA_NOCLDWAIT: children_autoreaped()) or other code reaped the child.
// throw_wait_failure() says which.
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "../error.hpp"
#include "../exit_status.hpp"
#include "deadline.hpp"
#include "poll.hpp"
#include "syscall.hpp"

namespace subprocess::detail {

// True if the kernel reaps our children itself and discards their status: SIGCHLD
// is set to SIG_IGN, or SA_NOCLDWAIT is set. One system call (rt_sigaction, read only).
inline bool children_autoreaped() noexcept {
  struct sigaction sa {};
  if (sys::sigaction(SIGCHLD, nullptr, &sa) != 0) return false;
  return sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT) != 0;
}

// Collecting a status reaps the child, or keeps its zombie (WNOWAIT).
enum class collect { reap, keep };

// What the kernel said about one child.
struct exit_check {
  std::optional<exit_status> status;  // it has exited (and is reaped unless kept)
  int error = 0;                      // the wait failed with this errno (ECHILD: status gone)
  bool running() const noexcept { return !status && error == 0; }
};

// How often to look again where no fd tells us (no pidfd; the rest of a process
// group once its leader is gone): after 1 ms, doubling to every 50 ms. A short-lived
// child is seen at once, a long-lived one costs at most 20 looks a second.
class exit_poll {
 public:
  static constexpr clock::duration first = std::chrono::milliseconds(1);
  static constexpr clock::duration longest = std::chrono::milliseconds(50);
  // The next interval (then the one after is twice as long, up to `longest`).
  clock::duration next() noexcept {
    const clock::duration d = step_;
    step_ = std::min(step_ * 2, longest);
    return d;
  }
  // When to look next, from `now`.
  clock::time_point next_time(clock::time_point now = clock::now()) noexcept {
    return saturating_add(now, next());
  }
  // A new child to watch: look soon again.
  void reset() noexcept { step_ = first; }

 private:
  clock::duration step_ = first;
};

// One child of ours, by pidfd (-1: none) and pid (<= 0: none; then only the pidfd).
class exit_watcher {
 public:
  exit_watcher(pid_t pid, int pidfd) noexcept : pid_(pid), pidfd_(pidfd) {}

  // The fd that polls readable (POLLIN) once the child has exited; -1 without a
  // pidfd: look with check() on an exit_poll schedule instead.
  int fd() const noexcept { return pidfd_; }

  // Has it exited? Collects the status if so. Never blocks.
  exit_check check(collect how = collect::reap) const noexcept { return ask(how, false); }
  // Blocks until it has exited, then collects the status.
  exit_check collect_now(collect how = collect::reap) const noexcept { return ask(how, true); }

  // Blocks until it exits (and collects the status) or `dl` passes (running() then;
  // no deadline: for ever). Meanwhile add(pollfd* fds) may put up to three more fds to
  // poll at fds[0..], returning how many, and ready(const pollfd* fds, int n) sees
  // them after each wake-up: this is how process::wait() drains a child's pipes. If
  // ready returns bool, true gives up the wait (running(), unless the child exited in
  // the same wake-up): how a stop token ends it. A failing poll() is an io_error
  // about `command`.
  template <class Add, class Ready>
  exit_check wait_until(const deadline& dl, collect how, std::string_view command, Add&& add,
                        Ready&& ready) const {
    // Copied out of the optional: g++ 12 -O2 otherwise warns (falsely) that *dl may be
    // used uninitialized when the caller passes nullopt.
    const clock::time_point until = dl.value_or(clock::time_point::max());
    const int own = pidfd_ >= 0 ? 1 : 0;  // the pidfd takes fds[0]
    exit_poll backoff;
    for (;;) {
      deadline wake = dl;
      if (!own) {
        exit_check r = check(how);
        if (!r.running()) return r;
        const clock::time_point now = clock::now();
        if (now >= until) return {};
        wake = std::min(until, backoff.next_time(now));
      }
      pollfd fds[4] = {{pidfd_, POLLIN, 0}, {}, {}, {}};
      const int n = own + static_cast<int>(add(fds + own));
      const int woke = poll_until(fds, static_cast<nfds_t>(n), wake, command);
      bool give_up = false;
      if constexpr (std::is_same_v<std::invoke_result_t<Ready&, const pollfd*, int>, bool>)
        give_up = ready(static_cast<const pollfd*>(fds + own), n - own);
      else
        ready(static_cast<const pollfd*>(fds + own), n - own);
      if (own && fds[0].revents != 0) return collect_now(how);  // exited: returns at once
      if (give_up) return {};
      // Not only when poll() times out: a pipe that never stops being readable (a
      // child flooding its output) would otherwise keep us past the deadline.
      if (own && (woke == 0 || clock::now() >= until)) return {};
    }
  }
  exit_check wait_until(const deadline& dl, collect how = collect::reap,
                        std::string_view command = {}) const {
    return wait_until(dl, how, command, [](pollfd*) { return 0; }, [](const pollfd*, int) {});
  }

 private:
  // One question to the kernel, EINTR retried. Without WNOWAIT and without a pidfd
  // it is waitpid(pid), else waitid().
  exit_check ask(collect how, bool block) const noexcept {
    const int flags = WEXITED | (block ? 0 : WNOHANG) | (how == collect::keep ? WNOWAIT : 0);
    for (bool by_pidfd = pidfd_ >= 0;;) {
      if (!by_pidfd && pid_ <= 0) return {std::nullopt, EINVAL};
      if (by_pidfd || how == collect::keep) {
        siginfo_t info{};
        const int r = by_pidfd ? sys::waitid_pidfd(pidfd_, &info, flags)
                               : sys::waitid(P_PID, static_cast<id_t>(pid_), &info, flags);
        if (r == 0) {
          if (info.si_pid == 0) return {};  // still running
          return {exit_status::from_siginfo(info), 0};
        }
      } else {
        int ws = 0;
        const pid_t r = sys::waitpid(pid_, &ws, block ? 0 : WNOHANG);
        if (r == pid_) return {exit_status::from_wait_status(ws), 0};
        if (r == 0) return {};  // still running
      }
      if (errno == EINTR) continue;
      if (errno == EINVAL && by_pidfd) {  // a kernel without P_PIDFD (5.3): by pid, then
        by_pidfd = false;
        continue;
      }
      return {std::nullopt, errno};
    }
  }

  pid_t pid_;
  int pidfd_;
};

// The status of `command` is gone. Blames SIGCHLD only if children are (or were,
// when it was spawned: `autoreaped`) reaped by the kernel; otherwise other code of
// this process reaped the child.
[[noreturn]] inline void throw_status_discarded(const std::string& command, bool autoreaped = false) {
  const std::error_code ec(ECHILD, std::system_category());
  if (!autoreaped && !children_autoreaped())
    SUBPROCESS_THROW(error(ec, command,
                "cannot get the exit status of '" + command +
                    "': it has exited, and other code of this process reaped it (a "
                    "waitpid(-1) or wait() elsewhere?) before its status could be read"));
  SUBPROCESS_THROW(error(ec, command,
              "cannot get the exit status of '" + command +
                  "': it has exited, but the kernel discarded its status because this "
                  "process ignores SIGCHLD (SIG_IGN) or set SA_NOCLDWAIT; restore SIGCHLD's "
                  "default disposition to wait for children"));
}

// The error for waiting for `command` that failed with errno `e` (exit_check::error).
// ECHILD with children reaped by the kernel is throw_status_discarded(); any other
// failure changes nothing: the child is still ours.
[[noreturn]] inline void throw_wait_failure(int e, const std::string& command, bool autoreaped = false) {
  if (e == ECHILD && (autoreaped || children_autoreaped())) throw_status_discarded(command, true);
  const std::error_code ec(e, std::system_category());
  SUBPROCESS_THROW(error(ec, command,
              "waiting for '" + command + "' failed" +
                  (e == ECHILD ? " (was it reaped by other code calling waitpid(-1)?)" : "") + ": " +
                  ec.message()));
}

}  // namespace subprocess::detail
