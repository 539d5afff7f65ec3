// subprocess/detail/poll.hpp - deadlines and waiting for one fd. Not public API.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "../error.hpp"
#include "deadline.hpp"
#include "syscall.hpp"
#include "unique_fd.hpp"

namespace subprocess::detail {

// poll() that retries EINTR against the same deadline. Returns the number of
// ready fds, 0 once the deadline has passed (a far deadline takes several capped
// polls: see poll_timeout). Other failures are an io_error about `command`.
inline int poll_until(pollfd* fds, nfds_t n, const deadline& dl, std::string_view command = {}) {
  for (;;) {
    int r = sys::poll(fds, n, poll_timeout(dl));
    if (r == 0 && dl && clock::now() < *dl) continue;  // a capped poll, not the deadline
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    int e = errno;
    SUBPROCESS_THROW(io_error(e, std::string(command), "poll"));
  }
}

// Waits until fd has one of `events`; returns revents, or 0 on timeout.
inline short poll_one(int fd, short events, const deadline& dl, std::string_view command = {}) {
  pollfd p{fd, events, 0};
  return poll_until(&p, 1, dl, command) == 0 ? short(0) : p.revents;
}

}  // namespace subprocess::detail
