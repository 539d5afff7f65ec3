// subprocess/stream.hpp - the parent's ends of a child's pipes.
//
// When a stream is set to sp::pipe, the parent gets one end of a kernel pipe:
// p.in() is a pipe_writer (write_all, write_some, close), p.out() and p.err() are
// pipe_readers (read, read_line, lines, read_all).
//
//   ```cpp
//   sp::pipe_writer in;   // p.in() of sp::command{"sort"}.in(sp::pipe).out(sp::pipe).spawn()
//   sp::pipe_reader out;  // and its p.out()
//   in.write_all("b\na\n");
//   in.close();                          // EOF: sort can now produce output
//   for (std::string_view line : out.lines()) std::cout << line << '\n';
//   ```
//
// Close stdin when you are done writing: programs like sort, wc and cat read until
// EOF and will wait for you forever otherwise. A pipe holds about 64 KiB; a child that
// writes more blocks until you read. Writing a lot to its stdin while it writes a lot
// to stdout, from one thread, deadlocks: use sp::run() or sp::communicate(), which
// feed and drain all pipes at once, or an sp::event_loop.
//
// Errors: io_error naming the stream and the command ("read from stdout of 'sort'").
// Writing to a child that exited (or closed its stdin) is an io_error with EPIPE; the
// parent never dies of SIGPIPE, and your SIGPIPE disposition is not changed (SIGPIPE
// is blocked in the writing thread for the duration of the write).
// Blocking: read(), read_line(), lines(), read_all() and write_all() wait with poll();
// read_line_for() gives up after a timeout; write_some() and fill() never wait. The
// parent's ends are non-blocking (O_NONBLOCK) and close-on-exec; fd() hands the
// descriptor to your own event loop (do not mix your own reads with read_line(),
// which buffers).
// Threads: readers and writers are move-only and not thread-safe: one thread uses one
// stream at a time (different streams of one child may be used by different threads).
// Moving one out of the process (auto r = std::move(p.out())) makes you its only owner.
// Destructor: closes the pipe; a child still writing to it then gets EPIPE/SIGPIPE, a
// child reading from it gets EOF.
#pragma once

#include <chrono>
#include <cstring>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "detail/buffer.hpp"
#include "detail/poll.hpp"
#include "detail/sigpipe.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"

namespace subprocess {

namespace detail {
// Tag for the library's own constructors: the fd is non-blocking already.
struct nonblocking_fd_t {
  explicit nonblocking_fd_t() = default;
};
inline constexpr nonblocking_fd_t nonblocking_fd{};
// Tag for a pseudo-terminal's master (pty.hpp): read() failing with EIO there means
// every slave fd has closed (the child hung up): the end of its output, not an error.
struct terminal_master_t {
  explicit terminal_master_t() = default;
};
inline constexpr terminal_master_t terminal_master{};

// set_nonblocking for a stream: failures are io_errors naming the stream.
inline void make_stream_nonblocking(const unique_fd& fd, const std::string& stream,
                                    const std::string& command) {
  if (!fd) return;
  int flags = sys::fcntl(fd.get(), F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK) == 0) flags = sys::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK);
  if (flags < 0) {
    int e = errno;
    SUBPROCESS_THROW(io_error(e, command, "make " + stream + " non-blocking"));
  }
}
}  // namespace detail

class pipe_reader {
 public:
  pipe_reader() = default;
  // Takes ownership of fd and makes it non-blocking. `stream` and `command`
  // name it in error messages ("read from stdout of 'sort'").
  explicit pipe_reader(detail::unique_fd fd, std::string stream = "pipe",
                       std::string command = {})
      : fd_(std::move(fd)), stream_(std::move(stream)), command_(std::move(command)) {
    detail::make_stream_nonblocking(fd_, stream_, command_);
  }
  // For the library: fd is non-blocking already.
  pipe_reader(detail::nonblocking_fd_t, detail::unique_fd fd, std::string stream,
              std::string command) noexcept
      : fd_(std::move(fd)), stream_(std::move(stream)), command_(std::move(command)) {}
  // For pty.hpp: a non-blocking terminal master, where EIO is the end of output.
  pipe_reader(detail::terminal_master_t, detail::unique_fd fd, std::string stream,
              std::string command) noexcept
      : fd_(std::move(fd)), stream_(std::move(stream)), command_(std::move(command)),
        eio_is_eof_(true) {}
  pipe_reader(pipe_reader&& o) noexcept
      : fd_(std::move(o.fd_)), stream_(std::move(o.stream_)), command_(std::move(o.command_)),
        buf_(std::move(o.buf_)), eof_(std::exchange(o.eof_, false)), eio_is_eof_(o.eio_is_eof_) {}
  pipe_reader& operator=(pipe_reader&& o) noexcept {
    fd_ = std::move(o.fd_);
    stream_ = std::move(o.stream_);
    command_ = std::move(o.command_);
    buf_ = std::move(o.buf_);
    eof_ = std::exchange(o.eof_, false);
    eio_is_eof_ = o.eio_is_eof_;
    return *this;
  }

  // The descriptor, for your own poll/epoll; -1 once closed. Non-blocking.
  int fd() const noexcept { return fd_.get(); }
  bool is_open() const noexcept { return static_cast<bool>(fd_); }
  // True once the writing side has closed and everything buffered was consumed.
  bool eof() const noexcept { return (eof_ || !fd_) && buf_.empty(); }
  // Closes the pipe. A child still writing to it then gets EPIPE/SIGPIPE.
  void close() noexcept {
    fd_.reset();
    buf_.clear();
    buf_.shrink();
  }

  // Reads up to buf.size() bytes, blocking until at least one is available.
  // Returns 0 at end of stream.
  std::size_t read(std::span<char> buf) {
    if (buf.empty()) return 0;
    if (!buf_.empty()) {
      std::size_t n = std::min(buf.size(), buf_.size());
      std::memcpy(buf.data(), buf_.view().data(), n);
      buf_.consume(n);
      return n;
    }
    for (;;) {
      ssize_t r = read_some(buf.data(), buf.size());
      if (r >= 0) return static_cast<std::size_t>(r);
      wait_readable(std::nullopt);
    }
  }

  // Reads everything until end of stream.
  std::string read_all() {
    while (fill_until_eof(std::nullopt)) {
    }
    std::string s(buf_.view());
    buf_.clear();
    return s;
  }

  // The next line without its '\n', or nullopt at end of stream. Lines are split on
  // '\n' only; a '\r' before it is kept (CRLF is data); a last line without '\n' is
  // still returned.
  std::optional<std::string> read_line() { return read_line_until(std::nullopt); }
  // Same, giving up after `timeout`: nullopt then means "no full line yet" if
  // !eof(), or end of stream if eof(). A partial line stays buffered.
  template <class Rep, class Period>
  std::optional<std::string> read_line_for(std::chrono::duration<Rep, Period> timeout) {
    return read_line_until(detail::deadline_in(timeout));
  }

  // An input range of lines: for (std::string_view line : r.lines()) ...
  class line_range;
  line_range lines();

  // --- for event loops and drains; most users never need these ---------------
  // Reads what is available now into the internal buffer, without blocking.
  // Returns bytes read (>0), 0 at end of stream, -1 if nothing is available yet.
  ssize_t fill(std::size_t max = chunk) {
    if (!fd_ || eof_) return 0;
    ssize_t r = read_some(buf_.prepare(max), max);
    if (r > 0) buf_.commit(static_cast<std::size_t>(r));
    return r;
  }
  // Bytes buffered and not yet consumed.
  std::string_view buffered() const noexcept { return buf_.view(); }
  // The writing side has closed (data may still be buffered; eof() says both).
  bool input_ended() const noexcept { return eof_ || !fd_; }
  // Drops n buffered bytes (after looking at them with buffered()).
  void consume(std::size_t n) noexcept { buf_.consume(n); }
  const std::string& stream() const noexcept { return stream_; }
  const std::string& command() const noexcept { return command_; }

 private:
  static constexpr std::size_t chunk = 64 * 1024;

  // One non-blocking read(2): >0 bytes, 0 at EOF (and marks eof_), -1 would block.
  ssize_t read_some(char* p, std::size_t n) {
    if (!fd_ || eof_) return 0;
    for (;;) {
      ssize_t r = detail::sys::read(fd_.get(), p, n);
      if (r > 0) return r;
      if (r == 0 || (errno == EIO && eio_is_eof_)) {
        eof_ = true;
        return 0;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
      SUBPROCESS_THROW(io_error(errno, command_, "read from " + stream_));
    }
  }
  bool wait_readable(const detail::deadline& dl) {
    return detail::poll_one(fd_.get(), POLLIN, dl, command_) != 0;
  }
  // Reads more into the buffer, waiting until the deadline. False at EOF or timeout.
  bool fill_until_eof(const detail::deadline& dl) {
    for (;;) {
      ssize_t r = fill();
      if (r > 0) return true;
      if (r == 0) return false;
      if (dl && detail::clock::now() >= *dl) return false;  // even if poll keeps saying "ready"
      if (!wait_readable(dl)) return false;
    }
  }
  std::optional<std::string> read_line_until(const detail::deadline& dl) {
    std::size_t scanned = 0;
    for (;;) {
      std::string_view b = buf_.view();
      std::size_t nl = b.find('\n', scanned);
      if (nl != std::string_view::npos) {
        std::string line(b.substr(0, nl));
        buf_.consume(nl + 1);
        return line;
      }
      scanned = b.size();
      if (eof_ || !fd_) {
        if (b.empty()) return std::nullopt;
        std::string line(b);
        buf_.clear();
        return line;
      }
      if (!fill_until_eof(dl) && !eof_) return std::nullopt;  // timed out
    }
  }

  detail::unique_fd fd_;
  std::string stream_;
  std::string command_;
  detail::byte_buffer buf_;
  bool eof_ = false;
  bool eio_is_eof_ = false;  // a terminal master (pty.hpp)
};

class pipe_reader::line_range {
 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using reference = const std::string&;
    using pointer = const std::string*;
    iterator() = default;
    explicit iterator(pipe_reader* r) : r_(r) { ++*this; }
    reference operator*() const noexcept { return line_; }
    pointer operator->() const noexcept { return &line_; }
    iterator& operator++() {
      if (auto l = r_->read_line()) {
        line_ = std::move(*l);
      } else {
        r_ = nullptr;
      }
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& a, std::default_sentinel_t) noexcept {
      return a.r_ == nullptr;
    }

   private:
    pipe_reader* r_ = nullptr;
    std::string line_;
  };
  explicit line_range(pipe_reader* r) : r_(r) {}
  iterator begin() { return iterator(r_); }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  pipe_reader* r_;
};

inline pipe_reader::line_range pipe_reader::lines() { return line_range(this); }

class pipe_writer {
 public:
  pipe_writer() = default;
  explicit pipe_writer(detail::unique_fd fd, std::string stream = "pipe",
                       std::string command = {})
      : fd_(std::move(fd)), stream_(std::move(stream)), command_(std::move(command)) {
    detail::make_stream_nonblocking(fd_, stream_, command_);
  }
  // For the library: fd is non-blocking already.
  pipe_writer(detail::nonblocking_fd_t, detail::unique_fd fd, std::string stream,
              std::string command) noexcept
      : fd_(std::move(fd)), stream_(std::move(stream)), command_(std::move(command)) {}
  pipe_writer(pipe_writer&&) noexcept = default;
  pipe_writer& operator=(pipe_writer&&) noexcept = default;

  int fd() const noexcept { return fd_.get(); }
  bool is_open() const noexcept { return static_cast<bool>(fd_); }
  // Closes the pipe: the child reads end of file.
  void close() noexcept { fd_.reset(); }

  // Writes everything, waiting while the pipe is full. Throws io_error (EPIPE)
  // if the child is no longer reading.
  void write_all(std::string_view data) {
    detail::sigpipe_guard guard;
    guard.check(command_);
    while (!data.empty()) {
      ssize_t n = write_raw(data, guard);
      if (n > 0) {
        data.remove_prefix(static_cast<std::size_t>(n));
      } else {
        detail::poll_one(fd_.get(), POLLOUT, std::nullopt, command_);
      }
    }
  }
  // Writes what fits now without waiting; returns the number of bytes written
  // (0 if the pipe is full). Throws io_error (EPIPE) if the reader is gone.
  std::size_t write_some(std::string_view data) {
    if (data.empty()) return 0;
    detail::sigpipe_guard guard;
    guard.check(command_);
    ssize_t n = write_raw(data, guard);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  const std::string& stream() const noexcept { return stream_; }
  const std::string& command() const noexcept { return command_; }

  // For loops that already hold a sigpipe_guard: one write(2), >0 bytes or -1
  // when the pipe is full; throws io_error on any other failure.
  ssize_t write_raw(std::string_view data, detail::sigpipe_guard& guard) {
    if (!fd_) SUBPROCESS_THROW(io_error(EBADF, command_, "write to closed " + stream_));
    for (;;) {
      ssize_t n = detail::sys::write(fd_.get(), data.data(), data.size());
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
      int e = errno;
      if (e == EPIPE) guard.saw_epipe();
      SUBPROCESS_THROW(io_error(e, command_, "write to " + stream_));
    }
  }

 private:
  detail::unique_fd fd_;
  std::string stream_;
  std::string command_;
};

}  // namespace subprocess
