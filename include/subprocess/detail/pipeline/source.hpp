// subprocess/detail/pipeline/source.hpp - where a pump reads. Not public API.
//
// A pipe from the previous stage (or the user's pipe_reader), the input string, or
// a plain fd (a file we opened, or a borrowed fd such as the user's or stdin).
// A pipe that the pump finds full is enlarged once (see enlarge_pipe).
#pragma once

#include <algorithm>
#include <cerrno>
#include <string>
#include <string_view>
#include <utility>

#include "../../error.hpp"
#include "../../stream.hpp"
#include "../buffer.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "control.hpp"

namespace subprocess::detail {

// Where a pump reads: a pipe, a string, an fd (ours or borrowed), or nothing.
class pump_source {
 public:
  void set_reader(pipe_reader r) {
    kind_ = reader;
    reader_ = std::move(r);
  }
  void set_text(std::string t) {
    kind_ = text;
    text_ = std::move(t);
  }
  // A borrowed fd is never closed and its flags are left alone (blocking or not).
  void set_fd(int borrowed) {
    kind_ = raw;
    fd_ = borrowed;
  }
  void set_owned_fd(unique_fd f) {
    kind_ = raw;
    owned_ = std::move(f);
    fd_ = owned_.get();
  }

  // Makes more bytes visible in view(); false at the end of the input.
  bool more(int stop_fd) {
    switch (kind_) {
      case none: return false;
      case reader:
        for (;;) {
          // After a short read the pipe is empty: a read now would only fail with
          // EAGAIN, so wait first (a system call saved per chunk while the producer
          // is the slower side).
          if (drained_) wait_or_stop(reader_.fd(), POLLIN, stop_fd);
          ssize_t r = reader_.fill(pump_chunk);
          drained_ = r < 0 || (r > 0 && static_cast<std::size_t>(r) < pump_chunk);
          // A full read: the producer is the faster side (chunks stay 64 KiB).
          if (r > 0 && !drained_ && !grown_) {
            grown_ = true;
            enlarge_pipe(reader_.fd());
          }
          if (r > 0) return true;
          if (r == 0) return false;
        }
      case text:
        if (avail_ >= text_.size()) return false;
        avail_ = std::min(text_.size(), avail_ + pump_chunk);
        return true;
      case raw:
        if (eof_) return false;
        for (;;) {
          wait_or_stop(fd_, POLLIN, stop_fd);
          ssize_t r = sys::read(fd_, buf_.prepare(pump_chunk), pump_chunk);
          if (r > 0) {
            buf_.commit(static_cast<std::size_t>(r));
            return true;
          }
          if (r == 0) {
            eof_ = true;
            return false;
          }
          if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
          throw io_error(errno, "", "read pipeline input fd " + std::to_string(fd_));
        }
    }
    return false;
  }
  std::string_view view() const noexcept {
    switch (kind_) {
      case reader: return reader_.buffered();
      case text: return std::string_view(text_).substr(pos_, avail_ - pos_);
      case raw: return buf_.view();
      case none: break;
    }
    return {};
  }
  void consume(std::size_t n) noexcept {
    switch (kind_) {
      case reader: reader_.consume(n); break;
      case text: pos_ += n; break;
      case raw: buf_.consume(n); break;
      case none: break;
    }
  }
  void close() noexcept {
    reader_.close();
    owned_.reset();
    fd_ = -1;
    kind_ = none;
  }

 private:
  enum kind_t { none, reader, text, raw };
  kind_t kind_ = none;
  pipe_reader reader_;
  std::string text_;
  std::size_t pos_ = 0, avail_ = 0;
  unique_fd owned_;
  int fd_ = -1;
  byte_buffer buf_;
  bool eof_ = false;
  bool drained_ = false;  // reader: the last read emptied the pipe
  bool grown_ = false;
};

}  // namespace subprocess::detail
