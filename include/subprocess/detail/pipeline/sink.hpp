// subprocess/detail/pipeline/sink.hpp - where a pump writes. Not public API.
//
// A pipe to the next stage, the captured output string, the user's output
// callback, a plain fd (a file we opened, or a borrowed fd such as the user's or
// stdout), or nowhere.
#pragma once

#include <algorithm>
#include <cerrno>
#include <climits>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include "../../error.hpp"
#include "../../stream.hpp"
#include "../sigpipe.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "control.hpp"

namespace subprocess::detail {

// Where a pump writes: a pipe, a string, a callback, an fd (ours or borrowed), nowhere.
class pump_sink {
 public:
  void set_writer(pipe_writer w) {
    kind_ = writer;
    writer_ = std::move(w);
  }
  void set_capture() { kind_ = captured; }
  void set_callback(std::function<void(std::string_view)> cb) {
    kind_ = callback;
    cb_ = std::move(cb);
  }
  // Borrowed fds may be blocking pipes: after poll says writable, at most PIPE_BUF
  // bytes are written at a time, which never blocks, so a stop is always noticed.
  void set_fd(int borrowed) {
    kind_ = raw;
    fd_ = borrowed;
    max_write_ = PIPE_BUF;
  }
  void set_owned_fd(unique_fd f) {
    kind_ = raw;
    owned_ = std::move(f);
    fd_ = owned_.get();
  }

  void write(std::string_view data, int stop_fd, sigpipe_guard& guard) {
    switch (kind_) {
      case discard: return;
      case captured: text_.append(data); return;
      case callback: cb_(data); return;
      case writer:
        while (!data.empty()) {
          ssize_t n;
          try {
            n = writer_.write_raw(data, guard);
          } catch (const io_error& e) {
            if (e.code() == std::errc::broken_pipe) throw pump_broken_pipe{};
            throw;
          }
          if (n > 0) data.remove_prefix(static_cast<std::size_t>(n));
          // Not all written: the pipe is full, wait for room before the next write.
          if (!data.empty()) wait_or_stop(writer_.fd(), POLLOUT, stop_fd);
        }
        return;
      case raw:
        while (!data.empty()) {
          wait_or_stop(fd_, POLLOUT, stop_fd);
          ssize_t n = sys::write(fd_, data.data(), std::min(data.size(), max_write_));
          if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
          }
          if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
          if (n < 0 && errno == EPIPE) {
            guard.saw_epipe();
            throw pump_broken_pipe{};
          }
          throw io_error(n < 0 ? errno : EIO, "", "write pipeline output fd " + std::to_string(fd_));
        }
        return;
    }
  }
  std::string take_captured() noexcept { return std::move(text_); }
  void close() noexcept {
    writer_.close();
    owned_.reset();
    fd_ = -1;
  }

 private:
  enum kind_t { discard, writer, captured, callback, raw };
  kind_t kind_ = discard;
  pipe_writer writer_;
  std::string text_;
  std::function<void(std::string_view)> cb_;
  unique_fd owned_;
  int fd_ = -1;
  std::size_t max_write_ = std::size_t(1) << 30;
};

}  // namespace subprocess::detail
