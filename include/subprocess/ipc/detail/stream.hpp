// subprocess/ipc/detail/stream.hpp - the socket under an ipc::channel: its buffers
// and locks, writing (whole messages, never blocking unless asked, never SIGPIPE),
// reading, and framing (one message per '\n'-terminated line, with the limits and
// errors described at class channel). Free functions over one struct, shared by the
// channel and by channel::reader. Not public API.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "../../error.hpp"
#include "../../detail/mapped_buffer.hpp"
#include "../../detail/poll.hpp"
#include "../../detail/syscall.hpp"
#include "../../detail/unique_fd.hpp"
#include "wire.hpp"

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::channel_error;
using subprocess::ipc::channel_options;
using rpc_message = json_codec::rpc_parts;

// One channel's socket and buffers. The read side is guarded by rmu, the write side
// by wmu; a function that says "Requires rmu" is called holding it.
struct stream {
  subprocess::detail::unique_fd fd;
  channel_options opts;
  std::string label;  // "ipc channel to 'cmd'"
  std::atomic<bool> closed{false};
  // read side (rmu)
  mutable timed_lock rmu;
  subprocess::detail::mapped_buffer rbuf;
  std::size_t scanned = 0;  // bytes of the current line already searched for '\n'
  bool peer_done = false;   // end of stream (or reset) seen
  std::atomic<bool> shut_down{false};  // we shut it down after an oversized message
  std::exception_ptr read_error;
  std::optional<channel_error> torn;  // the peer ended in the middle of a message
  // write side (wmu)
  mutable std::mutex wmu;
  subprocess::detail::mapped_buffer wbuf;
  bool write_broken = false;     // EPIPE seen
  std::atomic<int> nacks{0};     // NODE_HANDLE_NACKs owed to the peer
};

[[noreturn]] inline void throw_closed(const stream& s, const std::string& why) {
  SUBPROCESS_THROW(channel_error(errc::channel_closed, s.opts.name, s.label + ": cannot send: " + why));
}
inline void check_writable(stream& s) {
  if (s.closed.load()) throw_closed(s, "the channel is closed");
  if (s.shut_down) throw_closed(s, "the channel was shut down after a protocol error");
  if (s.write_broken) throw_closed(s, "the peer closed the channel");
}
[[noreturn]] inline void throw_send_error(stream& s, int err) {
  s.wbuf.clear();
  if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
    s.write_broken = true;
    throw_closed(s, "the peer closed the channel");
  }
  SUBPROCESS_THROW(channel_error(std::error_code(err, std::system_category()), s.opts.name,
                      s.label + ": send failed: " +
                          std::error_code(err, std::system_category()).message()));
}

inline constexpr std::size_t read_chunk = 64 * 1024;
inline constexpr std::size_t read_budget = 4 * 1024 * 1024;

// Reads what is available, up to the budget. Requires rmu.
// block: the first recv waits for data (one system call instead of poll + recv;
// returns at once anyway if the fd itself is O_NONBLOCK).
inline std::size_t read_locked(stream& s, bool block = false) {
  namespace sys = subprocess::detail::sys;
  std::size_t total = 0;
  int flags = block ? 0 : MSG_DONTWAIT;
  while (!s.peer_done && !s.closed.load()) {
    // A big message in progress: read in bigger steps (fewer system calls).
    std::size_t want = std::max(read_chunk, std::min(s.rbuf.size(), std::size_t{16} << 20));
    char* p = s.rbuf.prepare(want);
    ssize_t r = sys::recv(s.fd.get(), p, want, std::exchange(flags, MSG_DONTWAIT));
    if (r > 0) {
      s.rbuf.commit(static_cast<std::size_t>(r));
      total += static_cast<std::size_t>(r);
      if (static_cast<std::size_t>(r) < want || total >= read_budget) break;
      continue;
    }
    if (r == 0) {
      s.peer_done = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    int e = errno;
    s.peer_done = true;
    if (e != ECONNRESET && e != ENOTCONN)  // reset: the peer died, like the end
      s.read_error = std::make_exception_ptr(channel_error(
          std::error_code(e, std::system_category()), s.opts.name,
          s.label + ": receive failed: " + std::error_code(e, std::system_category()).message()));
    break;
  }
  return total;
}

// Waits until the socket takes more bytes. Meanwhile reads incoming bytes into the
// receive buffer unless another thread is reading (see "Deadlock freedom").
inline void wait_writable(stream& s) {
  std::unique_lock rl(s.rmu, std::try_to_lock);
  bool drain = rl.owns_lock() && !s.peer_done &&
               s.rbuf.size() < s.opts.max_message_size + read_chunk;
  pollfd p{s.fd.get(), static_cast<short>(POLLOUT | (drain ? POLLIN : 0)), 0};
  subprocess::detail::poll_until(&p, 1, std::nullopt);
  if (drain && (p.revents & POLLIN)) read_locked(s);
}

// A message being serialized for send(): owned bytes go to the queue; a long plain
// run of a string is recorded as a piece of the message itself, placed before the
// queue's byte `at`.
struct gather {
  subprocess::detail::mapped_buffer& buf;
  struct piece {
    std::size_t at;
    const char* p;
    std::size_t n;
  };
  std::vector<piece> borrowed;
  std::size_t borrowed_bytes;
  static constexpr std::size_t borrow_min = 64 * 1024;

  void append(const char* p, std::size_t n) { buf.append(p, n); }
  void append_borrowed(const char* p, std::size_t n) {
    if (n < borrow_min) return buf.append(p, n);
    borrowed.push_back({buf.size(), p, n});
    borrowed_bytes += n;
  }
  void push_back(char c) { buf.push_back(c); }
  std::size_t size() const noexcept { return buf.size() + borrowed_bytes; }
  void reserve(std::size_t) noexcept {}  // long strings are not copied
};
// Writes the queue with the borrowed pieces in their places, waiting for room;
// empties the queue.
inline void write_gathered(stream& s, const gather& g) {
  namespace sys = subprocess::detail::sys;
  constexpr std::size_t max_iov = 64;
  const std::string_view own = s.wbuf.view();
  std::size_t piece = 0;     // next borrowed piece
  std::size_t own_pos = 0;   // bytes of the queue written
  std::size_t piece_pos = 0; // bytes of borrowed[piece] written
  for (;;) {
    iovec iov[max_iov];
    std::size_t n = 0, o = own_pos, k = piece, kp = piece_pos;
    while (n < max_iov) {
      const std::size_t own_end = k < g.borrowed.size() ? g.borrowed[k].at : own.size();
      if (o < own_end) {
        iov[n++] = {const_cast<char*>(own.data() + o), own_end - o};
        o = own_end;
      } else if (k < g.borrowed.size()) {
        iov[n++] = {const_cast<char*>(g.borrowed[k].p + kp), g.borrowed[k].n - kp};
        ++k;
        kp = 0;
      } else {
        break;
      }
    }
    if (n == 0) break;
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t w = sys::sendmsg(s.fd.get(), &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait_writable(s);
        continue;
      }
      throw_send_error(s, errno);
    }
    // Advance over what was written.
    auto left = static_cast<std::size_t>(w);
    while (left > 0) {
      const std::size_t own_end = piece < g.borrowed.size() ? g.borrowed[piece].at : own.size();
      if (own_pos < own_end) {
        const std::size_t t = std::min(left, own_end - own_pos);
        own_pos += t;
        left -= t;
      } else {
        const std::size_t t = std::min(left, g.borrowed[piece].n - piece_pos);
        piece_pos += t;
        left -= t;
        if (piece_pos == g.borrowed[piece].n) {
          ++piece;
          piece_pos = 0;
        }
      }
    }
  }
  s.wbuf.clear();
  s.wbuf.shrink();
}

// One send(2) attempt: bytes written, 0 if the socket is full. Throws on errors.
inline std::size_t write_now(stream& s, std::string_view data) {
  namespace sys = subprocess::detail::sys;
  while (!data.empty()) {
    ssize_t n = sys::send(s.fd.get(), data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw_send_error(s, errno);
  }
  return 0;
}
// Appends msg + '\n' to the queue; on failure (invalid UTF-8) the queue is as it was.
inline void serialize(stream& s, const json& msg) {
  const std::size_t before = s.wbuf.size();
  SUBPROCESS_TRY {
    dump_to(s.wbuf, msg, s.opts.name);
    s.wbuf.push_back('\n');
  } SUBPROCESS_CATCH_ALL {
    s.wbuf.truncate(before);
    SUBPROCESS_RETHROW;
  }
}
// NACKs owed to Node join the queue at its end: always a message boundary.
inline void pay_nacks(stream& s) {
  static constexpr std::string_view nack = "{\"cmd\":\"NODE_HANDLE_NACK\"}\n";
  for (int n = s.nacks.exchange(0); n > 0; --n) s.wbuf.append(nack);
}
// Writes as much of the queue as fits now. True when the queue is empty.
inline bool write_some(stream& s) {
  pay_nacks(s);
  while (!s.wbuf.empty()) {
    std::size_t n = write_now(s, s.wbuf.view());
    if (n == 0) return false;
    s.wbuf.consume(n);
  }
  s.wbuf.shrink();
  return true;
}
// Writes the whole queue, waiting for room.
inline void flush_blocking(stream& s) {
  while (!write_some(s)) wait_writable(s);
}
// Writes all of data, waiting for room.
inline void write_blocking(stream& s, std::string_view data) {
  while (!data.empty()) {
    std::size_t n = write_now(s, data);
    data.remove_prefix(n);
    if (n == 0) wait_writable(s);
  }
}

[[noreturn]] inline void oversized(stream& s, std::size_t size, bool exact) {
  std::string sample = sample_of(s.rbuf.view());
  s.rbuf.clear();
  s.rbuf.shrink();
  s.scanned = 0;
  s.peer_done = true;
  s.shut_down = true;
  subprocess::detail::sys::shutdown(s.fd.get(), SHUT_RDWR);
  SUBPROCESS_THROW(channel_error(errc::protocol_error, s.opts.name,
                      s.label + ": a message of " + (exact ? "" : "at least ") +
                          std::to_string(size) + " bytes exceeds the limit of " +
                          std::to_string(s.opts.max_message_size) +
                          " bytes; the channel was shut down",
                      std::move(sample)));
}

// A NODE_HANDLE arrived but its fd was dropped (we never accept fds): tell Node,
// as Node itself does when a handle is lost, so it stops waiting for an ACK.
inline void owe_nack(stream& s) {
  s.nacks.fetch_add(1);
  std::unique_lock wl(s.wmu, std::try_to_lock);
  if (!wl.owns_lock() || s.write_broken || s.shut_down || s.closed.load()) return;
  SUBPROCESS_TRY {
    write_some(s);
  } SUBPROCESS_CATCH(const channel_error&, sp_unused_) {
    // The peer is gone; the reader learns that from the stream.
  }
}

// An internal message we pass over (always true; a NODE_HANDLE is answered).
inline bool skip_internal(stream& s, const json& m) {
  if (m["cmd"] == "NODE_HANDLE") owe_nack(s);
  return true;
}

// Whether to pass m over: an internal message (Node's {"cmd": "NODE_..."}) the
// channel does not deliver (a NODE_HANDLE is answered).
inline bool pass_over(stream& s, const json& m) {
  return !s.opts.internal_messages && is_internal(m) && skip_internal(s, m);
}

// Framing: finds the next complete line and hands it to decode(line), which
// returns false to pass the message over. True once a message was decoded; false
// when no complete message is buffered. Throws for malformed, oversized and
// truncated messages (see the notes above class channel, channel.hpp). Requires rmu.
template <class Decode>
inline bool next_line_locked(stream& s, Decode&& decode) {
  for (;;) {
    if (s.closed.load()) return false;
    std::string_view b = s.rbuf.view();
    std::size_t nl = b.find('\n', s.scanned);
    if (nl == std::string_view::npos) {
      s.scanned = b.size();
      if (b.size() > s.opts.max_message_size) oversized(s, b.size(), false);
      if (s.peer_done) {
        if (!b.empty()) {  // the end, with a torn message: kept for end_error()
          std::string sample = sample_of(b);
          std::size_t n = b.size();
          s.rbuf.clear();
          s.rbuf.shrink();
          s.scanned = 0;
          s.torn.emplace(errc::channel_closed, s.opts.name,
                         s.label + ": the peer closed the channel in the middle of a "
                                   "message (" + std::to_string(n) +
                             " bytes of it arrived: '" + sample + "')",
                         sample);
        }
        if (s.read_error) std::rethrow_exception(std::exchange(s.read_error, nullptr));
      }
      return false;
    }
    if (nl > s.opts.max_message_size) oversized(s, nl, true);
    std::string_view line = b.substr(0, nl);
    bool keep;
    SUBPROCESS_TRY {
      keep = decode(line);
    } SUBPROCESS_CATCH(const subprocess::detail::json_codec::error&, e) {
      std::string sample = sample_of(line);
      s.rbuf.consume(nl + 1);
      s.scanned = 0;
      SUBPROCESS_THROW(channel_error(errc::protocol_error, s.opts.name,
                          s.label + ": malformed message ('" + sample + "'): " + e.what(), sample));
    }
    s.rbuf.consume(nl + 1);
    s.scanned = 0;
    if (nl >= (std::size_t{1} << 20) && s.rbuf.empty()) s.rbuf.shrink();
    if (keep) return true;
  }
}

// The next complete message in the buffer. Requires rmu.
inline std::optional<json> next_locked(stream& s) {
  json m;
  if (!next_line_locked(s, [&](std::string_view line) {
        m = subprocess::detail::json_codec::parse(line);
        return !pass_over(s, m);
      }))
    return std::nullopt;
  return m;
}
// The same, decoded as JSON-RPC (see rpc_message). Requires rmu.
inline bool next_rpc_locked(stream& s, rpc_message& out) {
  return next_line_locked(s, [&](std::string_view line) {
    subprocess::detail::json_codec::parse_rpc(line, out);
    return !(out.k == rpc_message::kind::other && pass_over(s, out.whole));
  });
}

}  // namespace subprocess::detail::ipc_wire
