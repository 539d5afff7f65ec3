// subprocess/detail/eventfd.hpp - wake-up eventfds. Not public API.
//
// The event loop, the pipeline's threads, the ipc client's reader and the reaper
// wake each other through eventfds. A lost wake-up is a hang (a thread sleeping in
// poll with nobody left to wake it), so notifying retries EINTR, and EAGAIN counts as
// done: an eventfd refuses a write only when its counter is full, and a full
// counter is exactly "readable", which is what the write was for.
#pragma once

#include <cerrno>
#include <cstdint>

#include "syscall.hpp"

namespace subprocess::detail {

// Makes fd readable (adds 1 to its counter). Never fails in a way that loses the
// wake-up: see above.
inline void eventfd_notify(int fd) noexcept {
  (void)sys::no_eintr([fd] { return sys::eventfd_write(fd, 1); });
}

// Resets fd's counter (non-blocking fds only). Nothing to do when it is already 0
// (EAGAIN); a failure leaves it readable, so the next poll simply comes back.
inline void eventfd_drain(int fd) noexcept {
  std::uint64_t v;
  (void)sys::no_eintr([&] { return sys::read(fd, &v, sizeof v); });
}

}  // namespace subprocess::detail
