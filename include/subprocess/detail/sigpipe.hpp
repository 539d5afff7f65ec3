// subprocess/detail/sigpipe.hpp - write to a pipe without dying of SIGPIPE. Not public API.
//
// Writing to a pipe whose reader is gone raises SIGPIPE, whose default action
// kills the whole process. MSG_NOSIGNAL exists only for sockets, and changing the
// process-wide disposition behind the user's back is not ours to do. So while a
// library write is in progress SIGPIPE is blocked in the calling thread only;
// if our write failed with EPIPE, the SIGPIPE it raised (thread-directed, so it
// is pending in this thread) is consumed before the old mask comes back. A
// SIGPIPE that was already pending before we started is left alone.
#pragma once

#include <csignal>
#include <ctime>
#include <string>

#include "../error.hpp"
#include "syscall.hpp"

namespace subprocess::detail {

class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&set_);
    sigaddset(&set_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    was_pending_ = sys::sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    restore_ = sys::thread_sigmask(SIG_BLOCK, &set_, &old_) == 0;
    if (!restore_) errno_ = errno;
  }
  // Throws io_error if SIGPIPE could not be blocked: writing then could kill the
  // whole process, which is worse than not writing.
  void check(const std::string& command) const {
    if (!restore_) SUBPROCESS_THROW(io_error(errno_, command, "block SIGPIPE before writing"));
  }
  // Call when a write failed with EPIPE.
  void saw_epipe() noexcept { epipe_ = true; }
  ~sigpipe_guard() {
    int saved_errno = errno;
    if (epipe_ && !was_pending_) {
      timespec zero{0, 0};
      while (sys::sigtimedwait(&set_, nullptr, &zero) == -1 && errno == EINTR) {
      }
    }
    if (restore_) sys::thread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved_errno;
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

 private:
  sigset_t set_, old_;
  int errno_ = 0;
  bool was_pending_ = false, restore_ = false, epipe_ = false;
};

}  // namespace subprocess::detail
