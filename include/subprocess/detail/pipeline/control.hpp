// subprocess/detail/pipeline/control.hpp - how a pipeline's pumps are stopped and
// report back. Not public API.
//
// A pump (pump.hpp) is a library thread that may sit in poll() on a full or empty
// pipe. The pipeline stops it through an eventfd every such poll also watches;
// unwinding out of the user's transform code is by two tag exceptions.
#pragma once

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <exception>
#include <optional>

#include <sys/eventfd.h>

#include "../../error.hpp"
#include "../poll.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"

namespace subprocess::detail {

struct pump_stopped {};      // the pipeline told the pump to stop
struct pump_broken_pipe {};  // the pump's reader went away (EPIPE)

inline constexpr std::size_t pump_chunk = 64 * 1024;

// Signals are for the user's threads. Faults stay deliverable so a crash in a
// transform is reported where it happened (and sanitizers keep their handlers).
inline void block_async_signals() noexcept {
  sigset_t s;
  sigfillset(&s);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&s, sig);
  sys::thread_sigmask(SIG_BLOCK, &s, nullptr);
}

inline unique_fd make_eventfd() {
  unique_fd fd(sys::eventfd(0, EFD_NONBLOCK));
  if (!fd) throw_errno(errno, "eventfd");
  return fd;
}

// Waits until fd has `events`, or throws pump_stopped when stop_fd becomes readable.
inline void wait_or_stop(int fd, short events, int stop_fd) {
  pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
  poll_until(p, 2, std::nullopt);
  if (p[1].revents != 0) throw pump_stopped{};
}

// What a pump shares with its pipeline (pipeline_state, state.hpp, is one). The
// eventfds are notified with eventfd_notify (detail/eventfd.hpp): a lost wake-up
// would leave a pump or the supervisor asleep for good.
class pump_owner {
 public:
  unique_fd stop_fd = make_eventfd();  // readable once the pumps must stop
  unique_fd wake_fd = make_eventfd();  // pumps -> supervisor: "I am done"
  std::atomic<bool> stopping{false};
  std::atomic<int> stop_signal{SIGKILL};  // the status a stopped transform reports

  // A pump failed with e: remember it, stop everything.
  virtual void fail(std::exception_ptr e) noexcept = 0;

 protected:
  pump_owner() = default;
  ~pump_owner() = default;
  pump_owner(const pump_owner&) = delete;
  pump_owner& operator=(const pump_owner&) = delete;
};

}  // namespace subprocess::detail
