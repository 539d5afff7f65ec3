// subprocess/detail/poll.hpp - deadlines and waiting for one fd. Not public API.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "../error.hpp"
#include "syscall.hpp"
#include "unique_fd.hpp"

namespace subprocess::detail {

using clock = std::chrono::steady_clock;
using deadline = std::optional<clock::time_point>;

inline deadline deadline_after(std::optional<std::chrono::nanoseconds> d) {
  if (!d) return std::nullopt;
  return clock::now() + *d;
}

// Milliseconds to give poll() for a deadline: -1 for none, rounded up so a poll
// never returns before the deadline has passed.
inline int poll_timeout(const deadline& dl) {
  if (!dl) return -1;
  auto left = *dl - clock::now();
  if (left <= clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(ms);
}

// poll() that retries EINTR against the same deadline. Returns the number of
// ready fds, 0 on timeout. Other failures are an io_error about `command`.
inline int poll_until(pollfd* fds, nfds_t n, const deadline& dl, std::string_view command = {}) {
  for (;;) {
    int r = sys::poll(fds, n, poll_timeout(dl));
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    int e = errno;
    throw io_error(e, std::string(command), "poll");
  }
}

// Waits until fd has one of `events`; returns revents, or 0 on timeout.
inline short poll_one(int fd, short events, const deadline& dl, std::string_view command = {}) {
  pollfd p{fd, events, 0};
  return poll_until(&p, 1, dl, command) == 0 ? short(0) : p.revents;
}

}  // namespace subprocess::detail
