// subprocess/detail/unique_fd.hpp - an owning file descriptor. Not public API.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>
#include <utility>

#include "../error.hpp"
#include "syscall.hpp"

namespace subprocess::detail {

class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) sys::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Both ends close-on-exec; the caller decides which end goes to a child.
struct fd_pair {
  unique_fd read, write;
};
inline fd_pair make_pipe() {
  int fds[2];
  if (sys::pipe2(fds, 0) != 0) throw_errno(errno, "pipe2");
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

// A pipe whose reader finds it full (a fast producer) is enlarged to this; the
// default is 64 KiB. The writer then runs 16x longer between reads, so both sides
// sleep and wake less. Best effort: past the per-user pipe limit (EPERM) the pipe
// keeps its size. Used by run() captures and pipeline pumps.
inline constexpr std::size_t big_pipe = 1024 * 1024;
inline void enlarge_pipe(int fd) noexcept {
  sys::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(big_pipe));
}

inline void set_nonblocking(int fd, bool on) {
  int flags = sys::fcntl(fd, F_GETFL);
  if (flags < 0) throw_errno(errno, "fcntl(F_GETFL)");
  int want = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && sys::fcntl(fd, F_SETFL, want) < 0) throw_errno(errno, "fcntl(F_SETFL)");
}

}  // namespace subprocess::detail
