// subprocess/ipc/channel.hpp - a message channel between processes, Node-compatible.
// Needs nlohmann/json (CMake target subprocess::ipc).
//
// A channel carries JSON messages both ways over a Unix socket, in the wire format of
// Node.js's process.send() in "json" serialization mode (compact JSON + '\n'): a C++
// parent can drive a Node child, a Node parent a C++ child, and C++ can talk to C++.
//
//   ```cpp
//   auto p = sp::command{"./worker"}.ipc().spawn();   // the child's end at fd 3
//   sp::ipc::channel ch(p);
//   ch.send({{"hello", "world"}});
//   std::optional<sp::ipc::json> reply = ch.receive();  // nullopt: the child is gone
//   ch.close();                                          // the child sees the end
//   p.wait();
//   // the child (Node: process.on('message', m => process.send({echo: m}))):
//   auto up = sp::ipc::connect_to_parent();   // early in main(), before threads
//   while (auto msg = up.receive()) up.send({{"echo", *msg}});
//   ```
//
// Errors. channel_error: errc::channel_closed for sending to a peer that is gone (never
// SIGPIPE) or on a closed channel; errc::protocol_error for a message that is not valid
// JSON (that message only: the channel goes on) or longer than max_message_size (the
// channel is shut down); std::errc::not_connected from connect_to_parent() without a
// channel. argument_error for sending invalid UTF-8 (nothing is sent). The peer exiting
// is no error: receive() returns nullopt once its messages have been read.
// Blocking. send(), receive() and receive_for() block (in poll or recv, never
// spinning); a send() waiting for room keeps reading, so two peers sending to each
// other do not deadlock. fd(), read_available(), try_receive(), post() and flush() are
// a non-blocking core for event loops; ipc::attach() (attach.hpp) plugs a channel in.
// Threads: any number may send (each message is written whole) and receive (they take
// turns); close() from any thread wakes blocked calls; never move or destroy a channel
// another thread uses. The destructor closes the channel. Cost: a message is one
// send(2) and usually one recv(2) plus its JSON; big strings are not copied on the way
// out. The details are at class channel and connect_to_parent().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../command.hpp"  // command::ipc() opens the channels this header uses
#include "../detail/deadline.hpp"
#include "../detail/mapped_buffer.hpp"
#include "../detail/poll.hpp"
#include "../detail/syscall.hpp"
#include "../detail/unique_fd.hpp"
#include "../error.hpp"
#include "../process.hpp"
#include "common.hpp"
#include "detail/envelope.hpp"
#include "detail/stream.hpp"
#include "detail/wire.hpp"

namespace subprocess::ipc {

// A message already serialized for the wire (JSON + '\n'): encode once, send to many.
// Made by channel::encode() (and by ipc::client for its requests). Move-only.
class encoded {
 public:
  // Takes bytes already framed: one message's JSON and its '\n'.
  explicit encoded(subprocess::detail::mapped_buffer framed) noexcept : buf_(std::move(framed)) {}
  std::string_view bytes() const noexcept { return buf_.view(); }
  std::size_t size() const noexcept { return buf_.size(); }

 private:
  subprocess::detail::mapped_buffer buf_;
};

// ---------------------------------------------------------------------------------
// channel
//
// The notes below hold for every channel, whichever side opened it.
//
// Node's internal messages (objects whose "cmd" starts with "NODE_", used for handle
// passing and cluster) are passed over, as Node's own 'message' event does; set
// channel_options::internal_messages to see them. Handles (sockets, servers) cannot be
// passed to a C++ process: the kernel drops the fd, and the channel answers
// NODE_HANDLE_NACK as Node would, so a Node parent gives up instead of stalling.
//
// Framing, and what can go wrong on the wire:
//   * Reassembly is linear: each byte is scanned for '\n' once, however the message
//     was split, so a 100 MiB message costs what its bytes cost.
//   * A line that is not valid JSON (or nests deeper than max_nesting_depth) is a
//     channel_error (errc::protocol_error) for that message only, whose sample() holds
//     its first bytes; the channel stays usable: is_open() true, send() works, the
//     next receive() reads the next line.
//   * A message longer than channel_options::max_message_size (default 64 MiB) is a
//     channel_error (errc::protocol_error), and the channel is shut down, since the
//     rest of that message cannot be told from the next one: the peer sees the end;
//     is_open() is false, send() throws channel_error (errc::channel_closed),
//     receive() returns nullopt and eof() is true from then on (close() still frees it).
//   * The peer dying (or closing its end) in the middle of a message ends the channel
//     as Node's 'disconnect' does, after the messages that did arrive: receive()
//     returns nullopt, never a hang and never an exception for it; end_error() then
//     holds the torn bytes (Node drops them silently).
//   * Sending to a peer that is gone is a channel_error (errc::channel_closed), never
//     SIGPIPE: writes use send(MSG_NOSIGNAL).
//   * Sending a string that is not valid UTF-8 is an argument_error; nothing is sent.
//   * Messages are parsed strictly (RFC 8259, UTF-8 checked), like
//     nlohmann::ordered_json::parse, and read
//     as Node means them: object keys keep their order (see ipc::json), a lone UTF-16
//     surrogate escape ("\ud83d", which JSON.stringify writes for half a pair) is
//     U+FFFD as Node makes it, -0 is written 0. Nesting deeper than
//     max_nesting_depth (10,000) is a protocol error for that message (Node itself
//     writes at most ~4,100 levels); no depth is a stack overflow: the codec never
//     recurses.
//
// What it costs. A message is one send(2) on one side and usually one recv(2) on the
// other, plus JSON: serializing a small message is cheap next to the system calls;
// parsing it builds an nlohmann value (a few heap allocations). A big string is
// scanned once by send(), which writes it from the message itself (no copy), and
// copied once by the receiver into its std::string. A small message's round trip is
// dominated by the wake-up of the other process, as for a raw socketpair; the README
// has the measurements. A channel keeps up to 64 KiB of buffer between messages; a
// bigger buffer lives in its own mapping, grows without copying and is given back
// after use.
//
// Blocking and non-blocking use. send(), receive(), receive_for() block (in poll or
// recv, never spinning). For an event loop, the same channel has a non-blocking core:
//   fd()              the socket, to watch for readability (and writability)
//   read_available()  reads what the socket holds now, never blocks
//   try_receive()     the next complete message already read, or nullopt
//   post(msg)         sends what fits now and queues the rest; never blocks
//   enqueue(msg)      queues only (enqueue many, flush once: one send(2) for all);
//                     enqueue_request(id, method, params) and enqueue_response(id,
//                     result) queue a JSON-RPC request or answer from its parts
//   flush()           writes queued bytes that fit now; wants_write() says if any remain
//                     (flush_all() writes them all, waiting for room)
//   try_receive_rpc() like try_receive() for JSON-RPC traffic: a request's or an
//                     answer's envelope is decoded into a small struct instead of a
//                     json object (receive_rpc() blocks)
// On readable: read_available(), then try_receive() until it returns nullopt (the
// buffer may hold many messages); eof() then says the peer is gone. On writable:
// flush(). ipc::attach() (attach.hpp) does exactly this for an event loop.
//
// Deadlock freedom. A blocking send() to a peer that is itself busy sending to us
// would deadlock two programs that each wait for the other to read. While send()
// waits for room it therefore also reads incoming bytes into the receive buffer
// (up to max_message_size), unless another thread is inside receive() at that
// moment. Those messages are returned by the next receive()/try_receive(). If you
// watch fd() yourself, use post() rather than send(), or call try_receive() after a
// send(): bytes read ahead no longer make the socket readable.
//
// Thread safety. Sending (send, post, flush) may happen from any number of threads:
// each message is written whole, never interleaved with another. Receiving (receive,
// receive_for, try_receive, read_available) may also be called from several threads;
// they take turns. The intended use is one reading thread while others send.
// close() may be called from any thread and wakes blocked calls. Moving or
// destroying a channel while another thread uses it is not allowed.

class channel {
 public:
  // An empty channel (is_open() false).
  channel() = default;
  // Takes ownership of a connected stream socket (AF_UNIX SOCK_STREAM, as created by
  // command::ipc() or Node). Throws argument_error if fd is not a socket.
  explicit channel(subprocess::detail::unique_fd fd, channel_options opts = {})
      : s_(std::make_unique<stream>()) {
    namespace sys = subprocess::detail::sys;
    struct stat st {};
    if (!fd || sys::fstat(fd.get(), &st) != 0 || !S_ISSOCK(st.st_mode))
      SUBPROCESS_THROW(argument_error(opts.name, "ipc channel: fd " + std::to_string(fd.get()) +
                                          " is not an open socket"));
    if (opts.max_message_size == 0)
      SUBPROCESS_THROW(argument_error(opts.name, "ipc channel: max_message_size must be positive"));
    s_->fd = std::move(fd);
    s_->opts = std::move(opts);
    s_->label = detail::ipc_wire::describe(s_->opts.name);
  }
  // The parent's end of a child started with command::ipc(). Named after the command.
  explicit channel(process& p, channel_options opts = {})
      : channel(take(p), with_name(std::move(opts), p.command_line())) {}

  channel(channel&&) noexcept = default;
  channel& operator=(channel&& o) noexcept {
    if (this != &o) {
      close();
      s_ = std::move(o.s_);
    }
    return *this;
  }
  ~channel() { close(); }

  // Open until close(), or until an oversized message shut it down (then send()
  // throws and receive() returns nullopt, see the notes above class channel). A
  // channel whose peer has gone stays open (receive() returns nullopt; send()
  // throws) until closed.
  bool is_open() const noexcept { return s_ && s_->fd && !s_->closed.load() && !s_->shut_down.load(); }
  // The socket, for your own poll/epoll. -1 when empty or closed.
  int fd() const noexcept { return s_ && !s_->closed.load() ? s_->fd.get() : -1; }
  const std::string& name() const noexcept {
    static const std::string none;
    return s_ ? s_->opts.name : none;
  }
  std::size_t max_message_size() const noexcept {
    return s_ ? s_->opts.max_message_size : default_max_message_size;
  }

  // Serializes msg once (compact JSON + '\n'). Throws argument_error for invalid UTF-8.
  static encoded encode(const json& msg, const std::string& name = {}) {
    subprocess::detail::mapped_buffer b;
    detail::ipc_wire::dump_to(b, msg, name);
    b.push_back('\n');
    return encoded(std::move(b));
  }

  // Sends one message, waiting while the socket is full (see "Deadlock freedom").
  // Throws channel_error if the peer is gone or the channel is closed.
  void send(const json& msg) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    flush_blocking(s);
    // Straight into the (empty) queue: no allocation per message. Long runs of plain
    // characters in strings are not copied: msg lives until we return, so they are
    // sent from it (a 100 MiB string is scanned once, never copied or faulted in).
    detail::ipc_wire::gather g{s.wbuf, {}, 0};
    SUBPROCESS_TRY {
      detail::ipc_wire::dump_to(g, msg, s.opts.name);
      s.wbuf.push_back('\n');
    } SUBPROCESS_CATCH_ALL {
      s.wbuf.clear();
      SUBPROCESS_RETHROW;
    }
    if (g.borrowed.empty())
      flush_blocking(s);
    else
      write_gathered(s, g);
  }
  // The same with a message encoded once (for sending it to many channels).
  void send_encoded(const encoded& msg) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    flush_blocking(s);
    write_blocking(s, msg.bytes());
  }

  // The next message; blocks until one arrives. nullopt at the end: the peer closed
  // the channel (or exited) and every message it sent has been returned, or the
  // channel was closed (end_error() says whether the peer died in the middle of a
  // message). Throws channel_error for a malformed or oversized message (see the
  // notes above class channel).
  std::optional<json> receive() { return receive_until(std::nullopt); }
  // The same, giving up after `timeout`. nullopt then means "nothing yet" if !eof(),
  // and the end if eof().
  template <class Rep, class Period>
  std::optional<json> receive_for(std::chrono::duration<Rep, Period> timeout) {
    if (timeout < timeout.zero()) SUBPROCESS_THROW(argument_error(name(), "receive_for: negative timeout"));
    return receive_until(subprocess::detail::deadline_in(timeout));
  }
  std::optional<json> receive_until(const subprocess::detail::deadline& dl) {
    std::optional<json> m;
    wait_for_message(dl, [&](stream& s) { return (m = next_locked(s)).has_value(); });
    return m;
  }

  // ---- without exceptions (error.hpp): send and receive reporting through `ec` ----
  // false / nullopt with `ec` set where send() and receive() throw: errc::
  // channel_closed (the channel is empty, closed, or the peer closed it),
  // errc::protocol_error (a malformed or oversized message), std::errc::
  // invalid_argument (invalid UTF-8 to send, a negative timeout). nullopt with `ec`
  // clear is the end of the channel, as for receive(). Built without exceptions, a
  // channel already known to be closed is reported here; a peer that goes away
  // during the send, or a malformed message, still aborts (error.hpp).
  bool send(const json& msg, std::error_code& ec) noexcept {
    if (!is_open() || s_->write_broken) return ec = errc::channel_closed, false;
    return subprocess::detail::report_to(ec, false, [&] { return send(msg), true; });
  }
  std::optional<json> receive(std::error_code& ec) noexcept {
    return subprocess::detail::report_to(ec, std::optional<json>(), [&] { return receive(); });
  }
  template <class Rep, class Period>
  std::optional<json> receive_for(std::chrono::duration<Rep, Period> timeout, std::error_code& ec) noexcept {
    if (timeout < timeout.zero()) return ec = std::make_error_code(std::errc::invalid_argument), std::nullopt;
    return subprocess::detail::report_to(ec, std::optional<json>(), [&] { return receive_for(timeout); });
  }

  // ---- JSON-RPC without the cost of an object per envelope ---------------------------
  // A request or an answer, decoded from its wire text without building a json object
  // for the envelope (only params, result or error become json values), which makes
  // small requests and answers several times cheaper to receive. serve() and
  // worker_pool use these. k says what arrived: request (method, params, and id when
  // has_id; a notification without), response (id, and result or error), or other
  // (anything else, in whole: batches, plain messages, malformed requests). Errors,
  // internal messages and the end of the channel behave as for receive().
  using rpc_message = subprocess::detail::json_codec::rpc_parts;
  // The next message (blocking); false at the end.
  bool receive_rpc(rpc_message& out) {
    return wait_for_message(std::nullopt, [&](stream& s) { return next_rpc_locked(s, out); });
  }
  // The next complete message already read, never reading the socket; false if none.
  bool try_receive_rpc(rpc_message& out) {
    if (!s_) return false;
    std::lock_guard rl(s_->rmu);
    return next_rpc_locked(*s_, out);
  }

  // How the peer ended the channel, once eof(): nullopt when it ended at a message
  // boundary (or the channel was closed here, or nothing ended yet). Otherwise a
  // channel_error (errc::channel_closed) saying it closed the channel (or died) in
  // the middle of a message: sample() holds the first bytes of the torn message and
  // what() says how many arrived. receive() does not throw it: the end of a channel
  // is not an error of the reader's (Node: 'disconnect', the bytes dropped).
  std::optional<channel_error> end_error() const {
    if (!s_) return std::nullopt;
    std::lock_guard rl(s_->rmu);
    return s_->torn;
  }

  // True once the peer has finished (closed its end or exited) and every message has
  // been taken, or the channel was closed.
  bool eof() const {
    if (!s_ || s_->closed.load()) return true;
    std::lock_guard rl(s_->rmu);
    return s_->peer_done && s_->rbuf.empty() && !s_->read_error;
  }

  // Closes the channel: the peer sees the end (Node: 'disconnect'). Wakes threads
  // blocked in send()/receive() (they return nullopt or throw channel_error). Queued
  // bytes not yet written are dropped. Idempotent.
  void close() noexcept {
    if (!s_ || !s_->fd) return;
    stream& s = *s_;
    if (s.closed.exchange(true)) return;
    subprocess::detail::sys::shutdown(s.fd.get(), SHUT_RDWR);  // wakes blocked pollers
    std::lock_guard rl(s.rmu);
    std::lock_guard wl(s.wmu);
    s.fd.reset();
    s.rbuf.clear();
    s.rbuf.shrink();
    s.wbuf.clear();
    s.wbuf.shrink();
  }

  // ---- the non-blocking core (event loops) ----------------------------------------
  // Reads what the socket holds now into the receive buffer; never blocks. Returns
  // the number of bytes read (0: nothing available, or the end). Reads at most a few
  // MiB per call so one busy peer cannot starve others; call again while the fd
  // stays readable.
  std::size_t read_available() {
    if (!s_) return 0;
    std::lock_guard rl(s_->rmu);
    return read_locked(*s_);
  }
  // The next complete message in the receive buffer, or nullopt if none is complete
  // yet (or at the end: see eof()). Never reads the socket. Throws like receive().
  std::optional<json> try_receive() {
    if (!s_) return std::nullopt;
    std::lock_guard rl(s_->rmu);
    return next_locked(*s_);
  }
  // Sends what fits into the socket now and queues the rest; never blocks. Returns
  // true if nothing is left queued. Queued bytes go out with the next flush(),
  // post() or send(). Throws channel_error if the peer is gone.
  bool post(const json& msg) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    serialize(s, msg);
    return write_some(s);
  }
  bool post_encoded(const encoded& msg) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    if (!write_some(s)) {  // older bytes first
      s.wbuf.append(msg.bytes());
      return false;
    }
    std::string_view rest = msg.bytes();
    rest.remove_prefix(write_now(s, rest));
    if (!rest.empty()) s.wbuf.append(rest);
    return rest.empty();
  }
  // Queues msg without writing anything: the next flush(), post() or send() writes
  // it. To send many messages at once, enqueue() them and flush() once: one send(2)
  // for all of them instead of one each. Never blocks; throws like post().
  void enqueue(const json& msg) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    serialize(s, msg);
  }
  // The same for a JSON-RPC request, serialized straight from its parts (no json
  // object is built, params are not copied): {"jsonrpc":"2.0","id":id,"method":
  // method,"params":params}, params omitted when null. For callers that keep their
  // own table of pending calls on an event loop (worker_pool does). Throws
  // argument_error if params is not an object, an array or null, or holds invalid
  // UTF-8 (nothing is queued then); channel_error like post().
  void enqueue_request(std::uint64_t id, std::string_view method, const json& params) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    const std::size_t before = s.wbuf.size();
    SUBPROCESS_TRY {
      detail::ipc_wire::append_request(s.wbuf, id, method, params, s.opts.name);
      s.wbuf.push_back('\n');
    } SUBPROCESS_CATCH_ALL {
      s.wbuf.truncate(before);
      SUBPROCESS_RETHROW;
    }
  }
  // The same for the answer to a request: {"jsonrpc":"2.0","id":id,"result":result},
  // or, with is_error, {"jsonrpc":"2.0","id":id,"error":result}. For servers on an
  // event loop (and serve()). Throws like enqueue_request().
  void enqueue_response(const json& id, const json& result, bool is_error = false) {
    stream& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    const std::size_t before = s.wbuf.size();
    SUBPROCESS_TRY {
      detail::ipc_wire::append_response(s.wbuf, id, result, is_error, s.opts.name);
      s.wbuf.push_back('\n');
    } SUBPROCESS_CATCH_ALL {
      s.wbuf.truncate(before);
      SUBPROCESS_RETHROW;
    }
  }
  // Writes everything queued, waiting for room as send() does (and, like it, reading
  // incoming bytes meanwhile: see "Deadlock freedom"). Throws channel_error if the
  // peer is gone.
  void flush_all() {
    if (!s_ || s_->closed.load()) return;
    stream& s = *s_;
    std::lock_guard wl(s.wmu);
    if (s.wbuf.empty() && s.nacks.load() == 0) return;
    check_writable(s);
    flush_blocking(s);
  }
  // Writes queued bytes that fit now; never blocks. True when the queue is empty.
  bool flush() {
    if (!s_ || s_->closed.load()) return true;
    stream& s = *s_;
    std::lock_guard wl(s.wmu);
    if (s.wbuf.empty() && s.nacks.load() == 0) return true;
    check_writable(s);
    return write_some(s);
  }
  // Bytes are queued (watch the fd for writability and flush()).
  bool wants_write() const {
    if (!s_ || s_->closed.load()) return false;
    std::lock_guard wl(s_->wmu);
    return !s_->wbuf.empty();
  }
  std::size_t queued_bytes() const {
    if (!s_) return 0;
    std::lock_guard wl(s_->wmu);
    return s_->wbuf.size();
  }

  // ---- for protocol layers built on a channel (ipc::client) -----------------------
  // Exclusive use of the receiving side: the lock receive() takes, and what may be
  // done holding it (read the socket, take the next framed line). Made unlocked; the
  // destructor unlocks. The channel must not be empty. Ordinary use never needs it.
  class reader {
   public:
    explicit reader(channel& ch) : s_(*ch.s_), lock_(s_.rmu, std::defer_lock) {}
    bool try_lock() { return lock_.try_lock(); }
    bool try_lock_until(subprocess::detail::clock::time_point t) { return lock_.try_lock_until(t); }
    void lock() { lock_.lock(); }
    void unlock() { lock_.unlock(); }

    // Reads what the socket holds (block: the first recv waits); bytes read.
    std::size_t read(bool block = false) { return detail::ipc_wire::read_locked(s_, block); }
    // Hands the next complete line to decode(line), which returns false to pass it
    // over; false when no complete line is buffered. Throws as receive() does.
    template <class Decode>
    bool next_line(Decode&& decode) {
      return detail::ipc_wire::next_line_locked(s_, std::forward<Decode>(decode));
    }
    // m is an internal message the channel does not deliver (see internal_messages).
    bool pass_over(const json& m) { return detail::ipc_wire::pass_over(s_, m); }
    bool peer_done() const noexcept { return s_.peer_done; }
    // The peer is done and every byte it sent was taken.
    bool drained() const noexcept { return s_.peer_done && s_.rbuf.empty(); }
    // Nothing more will come: closed here, or drained without a read error.
    bool at_end() const noexcept { return s_.closed.load() || (drained() && !s_.read_error); }
    bool closed() const noexcept { return s_.closed.load(); }
    int fd() const noexcept { return s_.fd.get(); }

   private:
    detail::ipc_wire::stream& s_;
    std::unique_lock<detail::ipc_wire::timed_lock> lock_;
  };

 private:
  using stream = detail::ipc_wire::stream;

  // Waits (in recv or poll) until next(state) takes a message; false at the end, or
  // at the deadline.
  template <class Next>
  bool wait_for_message(const subprocess::detail::deadline& dl, Next&& next) {
    if (!s_) return false;
    stream& s = *s_;
    // Copied out of the optional: g++ 12 -O3 otherwise warns (falsely) that *dl may be
    // read uninitialized once serve()'s call without a deadline is inlined.
    const bool timed = dl.has_value();
    const auto until = dl.value_or(subprocess::detail::clock::time_point::max());
    std::unique_lock rl(s.rmu, std::defer_lock);
    if (timed) {
      if (!rl.try_lock_until(until)) return false;
    } else {
      rl.lock();
    }
    for (bool tried = false;; tried = true) {
      if (next(s)) return true;
      if (s.peer_done || s.closed.load()) return false;
      // After one look at the socket the deadline holds, even while bytes keep coming
      // (a peer sending a long message faster than we read).
      if (tried && timed && subprocess::detail::clock::now() >= until) return false;
      // Without a deadline, wait inside recv(); close() from another thread wakes it.
      if (read_locked(s, !timed) > 0 || s.peer_done) continue;
      if (subprocess::detail::poll_one(s.fd.get(), POLLIN, dl) == 0) return false;
    }
  }

  static subprocess::detail::unique_fd take(process& p) {
    auto fd = p.take_channel_fd();
    if (!fd)
      SUBPROCESS_THROW(argument_error(p.command_line(),
                           "no ipc channel: start the command with .ipc() (and take the "
                           "channel only once)"));
    return fd;
  }
  static channel_options with_name(channel_options o, const std::string& n) {
    if (o.name.empty()) o.name = n;
    return o;
  }

  stream& live(const char* what) {
    if (!s_) SUBPROCESS_THROW(channel_error(errc::channel_closed, {}, std::string("ipc channel: ") + what +
                                                            " on an empty channel"));
    return *s_;
  }

  std::unique_ptr<stream> s_;
};

// ---------------------------------------------------------------------------------
// The child side: the channel our parent gave us.

// How a child finds its channel. command::ipc(fd) creates a socketpair, puts the
// child's end at `fd` (default 3) and sets NODE_CHANNEL_FD=fd and
// NODE_CHANNEL_SERIALIZATION_MODE=json, exactly what Node's fork() and
// spawn(..., {stdio: [..., 'ipc']}) do. A Node child opens it by itself (process.send,
// process.on('message')); a C++ child calls ipc::connect_to_parent(), which, like
// Node, unsets both variables (so grandchildren do not inherit a stale fd number) and
// marks the fd close-on-exec. Call it early in main(), before starting threads:
// unsetenv() is not safe while other threads read the environment. Node's
// "advanced" (V8) serialization is not supported; connect_to_parent() says so.
//
// Opens the channel announced in NODE_CHANNEL_FD, like Node does at startup: checks
// it, marks it close-on-exec and unsets NODE_CHANNEL_FD and
// NODE_CHANNEL_SERIALIZATION_MODE (so programs we start do not inherit them). Works
// once per process. Throws channel_error (std::errc::not_connected) with an
// explanation when the program was not started with a channel, when the parent
// wants Node's "advanced" serialization, or when the fd is not a socket.
// Not thread-safe (it changes the environment): call it early in main().
inline channel connect_to_parent(channel_options opts = {}) {
  namespace sys = subprocess::detail::sys;
  auto fail = [](const std::string& why) {
    return channel_error(std::make_error_code(std::errc::not_connected), "parent",
                         "no ipc channel to the parent: " + why);
  };
  const char* v = std::getenv("NODE_CHANNEL_FD");
  if (!v)
    SUBPROCESS_THROW(fail(
        "NODE_CHANNEL_FD is not set. Start this program with sp::command{...}.ipc(), or from "
        "Node with fork() or spawn(cmd, args, {stdio: ['pipe', 'pipe', 'pipe', 'ipc']}) "
        "(connect_to_parent() consumes the variable, so it works once per process)"));
  std::string_view sv(v);
  int fd = 0;
  bool ok = !sv.empty() && sv.size() <= 9;
  for (char c : sv) {
    if (c < '0' || c > '9') ok = false;
    fd = fd * 10 + (c - '0');
  }
  if (!ok) SUBPROCESS_THROW(fail("NODE_CHANNEL_FD='" + std::string(sv) + "' is not a file descriptor number"));
  if (const char* mode = std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
      mode && std::string_view(mode) != "json")
    SUBPROCESS_THROW(fail("the parent uses serialization '" + std::string(mode) +
               "'; only 'json' is supported (Node: spawn/fork with {serialization: 'json'}, "
               "the default)"));
  if (sys::fcntl(fd, F_GETFD) < 0)
    SUBPROCESS_THROW(fail("NODE_CHANNEL_FD=" + std::to_string(fd) + " but fd " + std::to_string(fd) +
               " is not open"));
  struct stat st {};
  if (sys::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
    SUBPROCESS_THROW(fail("NODE_CHANNEL_FD=" + std::to_string(fd) + " but fd " + std::to_string(fd) +
               " is not a socket"));
  sys::fcntl(fd, F_SETFD, FD_CLOEXEC);
  ::unsetenv("NODE_CHANNEL_FD");
  ::unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
  if (opts.name.empty()) opts.name = "parent";
  return channel(subprocess::detail::unique_fd(fd), std::move(opts));
}

}  // namespace subprocess::ipc
