// subprocess/ipc.hpp - message channels between processes (Node-compatible) and
// JSON-RPC on top. Needs nlohmann/json (CMake target subprocess::ipc).
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
//
// Blocking. send(), receive() and receive_for() block (in poll or recv, never
// spinning); a send() waiting for room keeps reading, so two peers sending to each
// other do not deadlock. fd(), read_available(), try_receive(), post() and flush() are
// a non-blocking core for event loops; ipc::attach() plugs a channel into one.
// Threads: any number may send (each message is written whole) and receive (they take
// turns); close() from any thread wakes blocked calls; never move or destroy a channel
// another thread uses. The destructor closes the channel. Cost: a message is one
// send(2) and usually one recv(2) plus its JSON; big strings are not copied on the way
// out. The details are at class channel and connect_to_parent().
//
// On top of channels (each described where it is defined, below):
//   ipc::serve(ch, handlers)      answers JSON-RPC 2.0 requests (the child side)
//   ipc::client                   call() -> std::future<json>, call_sync(), notify()
//   ipc::heartbeat                pings a client's peer, reports one that stops answering
//   ipc::broadcast(channels, msg) one message to many channels
//   ipc::attach(loop, ch, ...)    plugs a channel into an event loop
#pragma once

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>
#include <sys/epoll.h>

#include "detail/eventfd.hpp"
#include "detail/json_codec.hpp"
#include "detail/mapped_buffer.hpp"
#include "detail/poll.hpp"
#include "detail/syscall.hpp"
#include "command.hpp"  // command::ipc() opens the channels this header uses
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "process.hpp"

namespace subprocess::ipc {

// The value of a message: nlohmann::ordered_json, so that an object keeps its keys in
// the order they came (and are given), both ways, as a JavaScript object does.
// nlohmann::json (keys sorted) converts to it and back implicitly, at the cost of a
// copy. One difference from JavaScript remains: JS puts keys that look like array
// indices ("1", "2") first, in ascending order, whatever order they were written in;
// this keeps every key where it came (so {"b":1,"1":2} sent to Node is {"1":2,"b":1}
// there, and Node never sends such keys after others).
using json = nlohmann::ordered_json;

// The deepest nesting a message may have, both ways: [] is 1 level, [[]] 2. Deeper
// is a protocol error for that message only (the channel goes on), and sending one
// is an argument_error (nothing is sent). Node 20 cannot JSON.stringify more than
// about 4,200 levels; parsing and writing here never recurse, whatever the depth.
inline constexpr std::size_t max_nesting_depth = subprocess::detail::json_codec::default_max_depth;

// ---------------------------------------------------------------------------------
// Options and errors

inline constexpr std::size_t default_max_message_size = std::size_t{64} << 20;  // 64 MiB

struct channel_options {
  // The longest message accepted, in bytes (its '\n' not counted). A longer one is a
  // protocol error and shuts the channel down. Bounds the memory a peer can make us use.
  std::size_t max_message_size = default_max_message_size;
  // Deliver Node's internal messages ({"cmd": "NODE_..."}) too. Default: skip them.
  bool internal_messages = false;
  // What the channel leads to, for error messages: the command line for a child
  // (set for you by channel(process&)), "parent" for connect_to_parent().
  std::string name = {};
};

// Something went wrong on a channel. code() is errc::channel_closed (the peer is gone,
// or the channel was closed), errc::protocol_error (a malformed or oversized
// message), std::errc::not_connected (connect_to_parent() without a channel), or an
// errno from the socket. command() is the channel's name.
class channel_error : public error {
 public:
  channel_error(std::error_code ec, std::string name, std::string message, std::string sample = {},
                std::optional<subprocess::exit_status> status = std::nullopt)
      : error(ec, std::move(name), std::move(message)),
        sample_(std::move(sample)),
        status_(status) {}
  // The first bytes of the offending message (protocol errors, truncated messages),
  // with non-printable bytes escaped as \xNN.
  const std::string& sample() const noexcept { return sample_; }
  // How the peer process ended, when that is known (rpc client with a process).
  const std::optional<subprocess::exit_status>& status() const noexcept { return status_; }

 private:
  std::string sample_;
  std::optional<subprocess::exit_status> status_;
};

namespace detail {

inline std::string describe(const std::string& name) {
  return name.empty() ? std::string("ipc channel") : "ipc channel to '" + name + "'";
}

// The first bytes of a message, printable: for error messages.
inline std::string sample_of(std::string_view bytes, std::size_t max = 64) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < bytes.size() && i < max; ++i) {
    auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s += static_cast<char>(c);
    } else {
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  if (bytes.size() > max) s += "...";
  return s;
}

// Node's isInternal(): an object whose "cmd" is a string longer than "NODE_" that
// starts with it.
inline bool is_internal(const json& m) {
  if (!m.is_object()) return false;
  auto it = m.find("cmd");
  if (it == m.end() || !it->is_string()) return false;
  const auto& cmd = it->get_ref<const std::string&>();
  return cmd.size() > 5 && cmd.compare(0, 5, "NODE_") == 0;
}

// Compact JSON (exactly what j.dump() gives), appended to out; invalid UTF-8 is bad
// input.
template <class Out>
void dump_to(Out& out, const json& j, const std::string& name) {
  try {
    subprocess::detail::json_codec::dump(j, out);
  } catch (const subprocess::detail::json_codec::error& e) {
    const std::string what = e.what();
    throw argument_error(name, what.find("UTF-8") != std::string::npos
                                   ? "cannot send a message with a string that is not valid UTF-8 (" + what + ")"
                                   : "cannot send this message: " + what);
  } catch (const json::type_error& e) {
    throw argument_error(name, std::string("cannot send this message (") + e.what() + ")");
  }
}

// A JSON-RPC request {"jsonrpc":"2.0","id":id,"method":...,"params":...} written
// straight from its parts (no json object is built); params null: omitted; no id: a
// notification. Appends no '\n'. params must be an object, an array or null.
template <class Out>
void append_request(Out& b, std::optional<std::uint64_t> id, std::string_view method,
                    const json& params, const std::string& name) {
  if (!(params.is_null() || params.is_array() || params.is_object()))
    throw argument_error(name, "call '" + std::string(method) +
                                   "': params must be an object, an array or null (JSON-RPC)");
  b.append("{\"jsonrpc\":\"2.0\",");
  if (id) {
    char digits[24];
    auto r = std::to_chars(digits, digits + sizeof digits, *id);
    b.append("\"id\":");
    b.append(digits, static_cast<std::size_t>(r.ptr - digits));
    b.push_back(',');
  }
  b.append("\"method\":");
  try {
    subprocess::detail::json_codec::dump_string(method, b);  // no json string built for it
  } catch (const subprocess::detail::json_codec::error& e) {
    throw argument_error(name, std::string("cannot send a method name that is not valid UTF-8 (") +
                                   e.what() + ")");
  }
  if (!params.is_null()) {
    b.append(",\"params\":");
    dump_to(b, params, name);
  }
  b.push_back('}');
}

}  // namespace detail

namespace detail {
// A lock that can be waited for with a deadline (std::timed_mutex semantics). Taking
// and releasing it uncontended is one atomic exchange each; only a thread that has to
// wait uses the mutex and condition variable. (Not std::timed_mutex: libstdc++ builds
// it on pthread_mutex_clocklock, which ThreadSanitizer does not understand.)
class timed_lock {
 public:
  void lock() {
    if (try_lock()) return;
    std::unique_lock l(m_);
    waiters_.fetch_add(1);
    cv_.wait(l, [&] { return try_lock(); });
    waiters_.fetch_sub(1);
  }
  bool try_lock() {
    bool expected = false;
    return held_.compare_exchange_strong(expected, true);
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    if (try_lock()) return true;
    std::unique_lock l(m_);
    waiters_.fetch_add(1);
    bool ok = cv_.wait_until(l, t, [&] { return try_lock(); });
    waiters_.fetch_sub(1);
    return ok;
  }
  void unlock() {
    held_.store(false);
    // Sequentially consistent with the waiter's fetch_add and its try_lock: either it
    // sees the lock free, or this sees it waiting (and it is asleep, or about to be,
    // under m_ when notified).
    if (waiters_.load() > 0) {
      std::lock_guard l(m_);
      cv_.notify_all();
    }
  }

 private:
  std::atomic<bool> held_{false};
  std::atomic<int> waiters_{0};
  std::mutex m_;
  std::condition_variable cv_;
};
}  // namespace detail

// A message already serialized for the wire (JSON + '\n'): encode once, send to many.
// Made by channel::encode(). Move-only.
class encoded {
 public:
  std::string_view bytes() const noexcept { return buf_.view(); }
  std::size_t size() const noexcept { return buf_.size(); }

 private:
  friend class channel;
  friend class client;
  encoded() = default;
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
// flush(). ipc::attach() below does exactly this for an event loop.
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
      : s_(std::make_unique<state>()) {
    namespace sys = subprocess::detail::sys;
    struct stat st {};
    if (!fd || sys::fstat(fd.get(), &st) != 0 || !S_ISSOCK(st.st_mode))
      throw argument_error(opts.name, "ipc channel: fd " + std::to_string(fd.get()) +
                                          " is not an open socket");
    if (opts.max_message_size == 0)
      throw argument_error(opts.name, "ipc channel: max_message_size must be positive");
    s_->fd = std::move(fd);
    s_->opts = std::move(opts);
    s_->label = detail::describe(s_->opts.name);
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
    encoded e;
    detail::dump_to(e.buf_, msg, name);
    e.buf_.push_back('\n');
    return e;
  }

  // Sends one message, waiting while the socket is full (see "Deadlock freedom").
  // Throws channel_error if the peer is gone or the channel is closed.
  void send(const json& msg) {
    state& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    flush_blocking(s);
    // Straight into the (empty) queue: no allocation per message. Long runs of plain
    // characters in strings are not copied: msg lives until we return, so they are
    // sent from it (a 100 MiB string is scanned once, never copied or faulted in).
    gather g{s.wbuf, {}, 0};
    try {
      detail::dump_to(g, msg, s.opts.name);
      s.wbuf.push_back('\n');
    } catch (...) {
      s.wbuf.clear();
      throw;
    }
    if (g.borrowed.empty())
      flush_blocking(s);
    else
      write_gathered(s, g);
  }
  // The same with a message encoded once (for sending it to many channels).
  void send_encoded(const encoded& msg) {
    state& s = live("send");
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
    if (timeout < timeout.zero()) throw argument_error(name(), "receive_for: negative timeout");
    return receive_until(subprocess::detail::deadline_in(timeout));
  }
  std::optional<json> receive_until(const subprocess::detail::deadline& dl) {
    std::optional<json> m;
    wait_for_message(dl, [&](state& s) { return (m = next_locked(s)).has_value(); });
    return m;
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
    return wait_for_message(std::nullopt, [&](state& s) { return next_rpc_locked(s, out); });
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
    state& s = *s_;
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
    state& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    serialize(s, msg);
    return write_some(s);
  }
  bool post_encoded(const encoded& msg) {
    state& s = live("send");
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
    state& s = live("send");
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
    state& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    const std::size_t before = s.wbuf.size();
    try {
      detail::append_request(s.wbuf, id, method, params, s.opts.name);
      s.wbuf.push_back('\n');
    } catch (...) {
      s.wbuf.truncate(before);
      throw;
    }
  }
  // The same for the answer to a request: {"jsonrpc":"2.0","id":id,"result":result},
  // or, with is_error, {"jsonrpc":"2.0","id":id,"error":result}. For servers on an
  // event loop (and serve()). Throws like enqueue_request().
  void enqueue_response(const json& id, const json& result, bool is_error = false) {
    state& s = live("send");
    std::lock_guard wl(s.wmu);
    check_writable(s);
    const std::size_t before = s.wbuf.size();
    try {
      s.wbuf.append("{\"jsonrpc\":\"2.0\",\"id\":");
      detail::dump_to(s.wbuf, id, s.opts.name);
      s.wbuf.append(is_error ? ",\"error\":" : ",\"result\":");
      detail::dump_to(s.wbuf, result, s.opts.name);
      s.wbuf.append("}\n");
    } catch (...) {
      s.wbuf.truncate(before);
      throw;
    }
  }
  // Writes everything queued, waiting for room as send() does (and, like it, reading
  // incoming bytes meanwhile: see "Deadlock freedom"). Throws channel_error if the
  // peer is gone.
  void flush_all() {
    if (!s_ || s_->closed.load()) return;
    state& s = *s_;
    std::lock_guard wl(s.wmu);
    if (s.wbuf.empty() && s.nacks.load() == 0) return;
    check_writable(s);
    flush_blocking(s);
  }
  // Writes queued bytes that fit now; never blocks. True when the queue is empty.
  bool flush() {
    if (!s_ || s_->closed.load()) return true;
    state& s = *s_;
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

 private:
  struct state {
    subprocess::detail::unique_fd fd;
    channel_options opts;
    std::string label;  // "ipc channel to 'cmd'"
    std::atomic<bool> closed{false};
    // read side (rmu)
    mutable detail::timed_lock rmu;
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

  // Waits (in recv or poll) until next(state) takes a message; false at the end, or
  // at the deadline.
  template <class Next>
  bool wait_for_message(const subprocess::detail::deadline& dl, Next&& next) {
    if (!s_) return false;
    state& s = *s_;
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
      throw argument_error(p.command_line(),
                           "no ipc channel: start the command with .ipc() (and take the "
                           "channel only once)");
    return fd;
  }
  static channel_options with_name(channel_options o, const std::string& n) {
    if (o.name.empty()) o.name = n;
    return o;
  }

  state& live(const char* what) {
    if (!s_) throw channel_error(errc::channel_closed, {}, std::string("ipc channel: ") + what +
                                                            " on an empty channel");
    return *s_;
  }

  [[noreturn]] static void throw_closed(const state& s, const std::string& why) {
    throw channel_error(errc::channel_closed, s.opts.name, s.label + ": cannot send: " + why);
  }
  static void check_writable(state& s) {
    if (s.closed.load()) throw_closed(s, "the channel is closed");
    if (s.shut_down) throw_closed(s, "the channel was shut down after a protocol error");
    if (s.write_broken) throw_closed(s, "the peer closed the channel");
  }
  [[noreturn]] static void throw_send_error(state& s, int err) {
    s.wbuf.clear();
    if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
      s.write_broken = true;
      throw_closed(s, "the peer closed the channel");
    }
    throw channel_error(std::error_code(err, std::system_category()), s.opts.name,
                        s.label + ": send failed: " +
                            std::error_code(err, std::system_category()).message());
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
  static void write_gathered(state& s, const gather& g) {
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
  static std::size_t write_now(state& s, std::string_view data) {
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
  static void serialize(state& s, const json& msg) {
    const std::size_t before = s.wbuf.size();
    try {
      detail::dump_to(s.wbuf, msg, s.opts.name);
      s.wbuf.push_back('\n');
    } catch (...) {
      s.wbuf.truncate(before);
      throw;
    }
  }
  // NACKs owed to Node join the queue at its end: always a message boundary.
  static void pay_nacks(state& s) {
    static constexpr std::string_view nack = "{\"cmd\":\"NODE_HANDLE_NACK\"}\n";
    for (int n = s.nacks.exchange(0); n > 0; --n) s.wbuf.append(nack);
  }
  // Writes as much of the queue as fits now. True when the queue is empty.
  static bool write_some(state& s) {
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
  static void flush_blocking(state& s) {
    while (!write_some(s)) wait_writable(s);
  }
  // Writes all of data, waiting for room.
  static void write_blocking(state& s, std::string_view data) {
    while (!data.empty()) {
      std::size_t n = write_now(s, data);
      data.remove_prefix(n);
      if (n == 0) wait_writable(s);
    }
  }
  // Waits until the socket takes more bytes. Meanwhile reads incoming bytes into the
  // receive buffer unless another thread is reading (see "Deadlock freedom").
  static void wait_writable(state& s) {
    std::unique_lock rl(s.rmu, std::try_to_lock);
    bool drain = rl.owns_lock() && !s.peer_done &&
                 s.rbuf.size() < s.opts.max_message_size + read_chunk;
    pollfd p{s.fd.get(), static_cast<short>(POLLOUT | (drain ? POLLIN : 0)), 0};
    subprocess::detail::poll_until(&p, 1, std::nullopt);
    if (drain && (p.revents & POLLIN)) read_locked(s);
  }

  static constexpr std::size_t read_chunk = 64 * 1024;
  static constexpr std::size_t read_budget = 4 * 1024 * 1024;

  // Reads what is available, up to the budget. Requires rmu.
  // block: the first recv waits for data (one system call instead of poll + recv;
  // returns at once anyway if the fd itself is O_NONBLOCK).
  static std::size_t read_locked(state& s, bool block = false) {
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

  [[noreturn]] static void oversized(state& s, std::size_t size, bool exact) {
    std::string sample = detail::sample_of(s.rbuf.view());
    s.rbuf.clear();
    s.rbuf.shrink();
    s.scanned = 0;
    s.peer_done = true;
    s.shut_down = true;
    subprocess::detail::sys::shutdown(s.fd.get(), SHUT_RDWR);
    throw channel_error(errc::protocol_error, s.opts.name,
                        s.label + ": a message of " + (exact ? "" : "at least ") +
                            std::to_string(size) + " bytes exceeds the limit of " +
                            std::to_string(s.opts.max_message_size) +
                            " bytes; the channel was shut down",
                        std::move(sample));
  }

  // The next complete message in the buffer. Requires rmu.
  static std::optional<json> next_locked(state& s) {
    json m;
    if (!next_line_locked(s, [&](std::string_view line) {
          m = subprocess::detail::json_codec::parse(line);
          return !(!s.opts.internal_messages && detail::is_internal(m) && skip_internal(s, m));
        }))
      return std::nullopt;
    return m;
  }
  // The same, decoded as JSON-RPC (see rpc_message). Requires rmu.
  static bool next_rpc_locked(state& s, rpc_message& out) {
    return next_line_locked(s, [&](std::string_view line) {
      subprocess::detail::json_codec::parse_rpc(line, out);
      return !(out.k == rpc_message::kind::other && !s.opts.internal_messages &&
               detail::is_internal(out.whole) && skip_internal(s, out.whole));
    });
  }
  // An internal message we pass over (always true; a NODE_HANDLE is answered).
  static bool skip_internal(state& s, const json& m) {
    if (m["cmd"] == "NODE_HANDLE") owe_nack(s);
    return true;
  }

  // Framing: finds the next complete line and hands it to decode(line), which
  // returns false to pass the message over. True once a message was decoded; false
  // when no complete message is buffered. Throws for malformed, oversized and
  // truncated messages (see the notes above class channel). Requires rmu.
  template <class Decode>
  static bool next_line_locked(state& s, Decode&& decode) {
    for (;;) {
      if (s.closed.load()) return false;
      std::string_view b = s.rbuf.view();
      std::size_t nl = b.find('\n', s.scanned);
      if (nl == std::string_view::npos) {
        s.scanned = b.size();
        if (b.size() > s.opts.max_message_size) oversized(s, b.size(), false);
        if (s.peer_done) {
          if (!b.empty()) {  // the end, with a torn message: kept for end_error()
            std::string sample = detail::sample_of(b);
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
      try {
        keep = decode(line);
      } catch (const subprocess::detail::json_codec::error& e) {
        std::string sample = detail::sample_of(line);
        s.rbuf.consume(nl + 1);
        s.scanned = 0;
        throw channel_error(errc::protocol_error, s.opts.name,
                            s.label + ": malformed message ('" + sample + "'): " + e.what(), sample);
      }
      s.rbuf.consume(nl + 1);
      s.scanned = 0;
      if (nl >= (std::size_t{1} << 20) && s.rbuf.empty()) s.rbuf.shrink();
      if (keep) return true;
    }
  }
  // A NODE_HANDLE arrived but its fd was dropped (we never accept fds): tell Node,
  // as Node itself does when a handle is lost, so it stops waiting for an ACK.
  static void owe_nack(state& s) {
    s.nacks.fetch_add(1);
    std::unique_lock wl(s.wmu, std::try_to_lock);
    if (!wl.owns_lock() || s.write_broken || s.shut_down || s.closed.load()) return;
    try {
      write_some(s);
    } catch (const channel_error&) {
      // The peer is gone; the reader learns that from the stream.
    }
  }

  std::unique_ptr<state> s_;
  friend class client;
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
    throw fail(
        "NODE_CHANNEL_FD is not set. Start this program with sp::command{...}.ipc(), or from "
        "Node with fork() or spawn(cmd, args, {stdio: ['pipe', 'pipe', 'pipe', 'ipc']}) "
        "(connect_to_parent() consumes the variable, so it works once per process)");
  std::string_view sv(v);
  int fd = 0;
  bool ok = !sv.empty() && sv.size() <= 9;
  for (char c : sv) {
    if (c < '0' || c > '9') ok = false;
    fd = fd * 10 + (c - '0');
  }
  if (!ok) throw fail("NODE_CHANNEL_FD='" + std::string(sv) + "' is not a file descriptor number");
  if (const char* mode = std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
      mode && std::string_view(mode) != "json")
    throw fail("the parent uses serialization '" + std::string(mode) +
               "'; only 'json' is supported (Node: spawn/fork with {serialization: 'json'}, "
               "the default)");
  if (sys::fcntl(fd, F_GETFD) < 0)
    throw fail("NODE_CHANNEL_FD=" + std::to_string(fd) + " but fd " + std::to_string(fd) +
               " is not open");
  struct stat st {};
  if (sys::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
    throw fail("NODE_CHANNEL_FD=" + std::to_string(fd) + " but fd " + std::to_string(fd) +
               " is not a socket");
  sys::fcntl(fd, F_SETFD, FD_CLOEXEC);
  ::unsetenv("NODE_CHANNEL_FD");
  ::unsetenv("NODE_CHANNEL_SERIALIZATION_MODE");
  if (opts.name.empty()) opts.name = "parent";
  return channel(subprocess::detail::unique_fd(fd), std::move(opts));
}

// ---------------------------------------------------------------------------------
// broadcast: one message to many channels.

struct broadcast_result {
  std::size_t delivered = 0;
  // Index (in the order given) and error of each channel that failed.
  std::vector<std::pair<std::size_t, std::exception_ptr>> failed = {};
  bool ok() const noexcept { return failed.empty(); }
};

namespace detail {
inline channel& as_channel(channel& c) noexcept { return c; }
inline channel& as_channel(channel* c) noexcept { return *c; }
inline channel& as_channel(std::reference_wrapper<channel> c) noexcept { return c.get(); }
}  // namespace detail

// Sends msg to every channel in the range (of channel, channel* or
// std::reference_wrapper<channel>). The message is serialized once; all channels are
// written at the same time, so a slow reader does not delay the others, and the call
// returns when every channel has taken the whole message or failed. A failed channel
// (peer gone) is reported in the result, not thrown: the others still get the message.
template <std::ranges::input_range R>
broadcast_result broadcast(R&& channels, const json& msg) {
  broadcast_result res;
  encoded e = channel::encode(msg);
  std::vector<std::pair<std::size_t, channel*>> waiting;
  std::size_t i = 0;
  for (auto&& c : channels) {
    channel& ch = detail::as_channel(c);
    try {
      if (ch.post_encoded(e))
        ++res.delivered;
      else
        waiting.emplace_back(i, &ch);
    } catch (...) {
      res.failed.emplace_back(i, std::current_exception());
    }
    ++i;
  }
  while (!waiting.empty()) {
    std::vector<pollfd> fds;
    for (auto& w : waiting) fds.push_back({w.second->fd(), POLLOUT, 0});
    bool any_closed = std::any_of(fds.begin(), fds.end(), [](const pollfd& p) { return p.fd < 0; });
    if (!any_closed) subprocess::detail::poll_until(fds.data(), fds.size(), std::nullopt);
    std::vector<std::pair<std::size_t, channel*>> still;
    for (std::size_t k = 0; k < waiting.size(); ++k) {
      auto [idx, ch] = waiting[k];
      try {
        if (fds[k].fd < 0)  // closed by another thread meanwhile
          throw channel_error(errc::channel_closed, ch->name(),
                              detail::describe(ch->name()) + ": cannot send: the channel is closed");
        if (fds[k].revents == 0)
          still.push_back(waiting[k]);
        else if (ch->flush())
          ++res.delivered;
        else
          still.push_back(waiting[k]);
      } catch (...) {
        res.failed.emplace_back(idx, std::current_exception());
      }
    }
    waiting = std::move(still);
  }
  std::sort(res.failed.begin(), res.failed.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return res;
}

// ---------------------------------------------------------------------------------
// JSON-RPC 2.0 on a channel.
//
// Requests are {"jsonrpc":"2.0","id":7,"method":"add","params":{"a":1,"b":2}}; the
// answer is {"jsonrpc":"2.0","id":7,"result":3} or {"jsonrpc":"2.0","id":7,"error":
// {"code":-32601,"message":"Method not found: 'add'","data":...}}. A request without
// an id is a notification: no answer. Any program that reads and writes these shapes
// over the channel (a Node worker with process.on('message') and process.send()) is
// a peer.

// An error answer. On the client side it is what the peer answered (what() names the
// call); on the server side a handler throws it to choose the code and data.
class rpc_error : public error {
 public:
  // The codes JSON-RPC 2.0 defines. -32000 to -32099 are for server errors;
  // anything else is yours.
  static constexpr int parse_error = -32700;
  static constexpr int invalid_request = -32600;
  static constexpr int method_not_found = -32601;
  static constexpr int invalid_params = -32602;
  static constexpr int internal_error = -32603;
  static constexpr int server_error = -32000;  // serve(): a handler threw an exception

  // For handlers: throw rpc_error(rpc_error::invalid_params, "b must not be zero").
  rpc_error(int code, std::string message, json data = nullptr)
      : rpc_error(code, std::move(message), std::move(data), {}, {}, 0) {}
  // The peer answered call `method` (id) with this error.
  rpc_error(int code, std::string message, json data, std::string peer, std::string method,
            std::uint64_t id)
      : error(errc::remote_error, peer,
              method.empty() ? "rpc error " + std::to_string(code) + ": " + message
                             : "call '" + method + "' (id " + std::to_string(id) + ") to '" +
                                   peer + "' failed with error " + std::to_string(code) + ": " +
                                   message),
        rpc_code_(code),
        rpc_message_(std::move(message)),
        data_(std::move(data)),
        method_(std::move(method)) {}
  int rpc_code() const noexcept { return rpc_code_; }
  const std::string& rpc_message() const noexcept { return rpc_message_; }
  const json& data() const noexcept { return data_; }
  // The method called (client side); empty on the server side.
  const std::string& method() const noexcept { return method_; }

 private:
  int rpc_code_;
  std::string rpc_message_;
  json data_;
  std::string method_;
};

// A call got no answer in time. The late answer, if it comes, is dropped.
class call_timeout_error : public error {
 public:
  call_timeout_error(std::string peer, std::string method, std::uint64_t id,
                     std::chrono::milliseconds timeout)
      : error(std::make_error_code(std::errc::timed_out), peer,
              "call '" + method + "' (id " + std::to_string(id) + ") to '" + peer +
                  "' timed out: no reply within " + std::to_string(timeout.count()) + " ms"),
        method_(std::move(method)),
        timeout_(timeout) {}
  const std::string& method() const noexcept { return method_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

 private:
  std::string method_;
  std::chrono::milliseconds timeout_;
};

// ---- the server side ------------------------------------------------------------

// A method: takes the request's params (null when there were none), returns the
// result. Throw rpc_error to choose the error code; any other exception becomes an
// error answer too (see serve()).
using handler = std::function<json(const json& params)>;
using handler_map = std::map<std::string, handler, std::less<>>;

struct serve_options {
  // Messages that are not requests (no "method"), e.g. plain process.send() data.
  // Without it they are ignored.
  std::function<void(const json&)> on_message = {};
  // Bad input from the peer. serve() has already answered a malformed line with a
  // -32700 error (id null) and goes on with the next message.
  std::function<void(const channel_error&)> on_error = {};
};

namespace detail {

inline json rpc_failure(const json& id, int code, std::string message, const json& data = nullptr) {
  json err = {{"code", code}, {"message", std::move(message)}};
  if (!data.is_null()) err["data"] = data;
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(err)}};
}

inline bool is_request(const json& m) { return m.is_object() && m.contains("method"); }

inline json heartbeat_result() {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  return {{"time", ms}, {"pid", subprocess::detail::sys::getpid()}};
}

// Runs the handler of `method`: its result, or (is_error) the error object to answer
// with. Exceptions become error answers (see serve()).
struct outcome {
  json value;
  bool is_error = false;
};
inline outcome run_handler(const std::string& method, const json& params, const handler_map& handlers) {
  auto err = [](int code, std::string message, const json& data = nullptr) {
    json e = {{"code", code}, {"message", std::move(message)}};
    if (!data.is_null()) e["data"] = data;
    return outcome{std::move(e), true};
  };
  auto h = handlers.find(method);
  try {
    if (h != handlers.end()) return {h->second(params), false};
    if (method == "rpc.heartbeat") return {heartbeat_result(), false};  // built in: see serve()
    return err(rpc_error::method_not_found, "Method not found: '" + method + "'");
  } catch (const rpc_error& e) {
    return err(e.rpc_code(), e.rpc_message(), e.data());
  } catch (const json::exception& e) {
    // Usually params["x"].get<int>() on the wrong shape.
    return err(rpc_error::invalid_params, std::string("Invalid params: ") + e.what());
  } catch (const std::exception& e) {
    return err(rpc_error::server_error, e.what());
  } catch (...) {
    return err(rpc_error::internal_error, "unknown exception in handler");
  }
}

// Answers one request given as a json object (batches, malformed requests);
// nullopt for a notification (no answer, even on error).
inline std::optional<json> answer(const json& req, const handler_map& handlers) {
  if (!req.is_object()) return rpc_failure(nullptr, rpc_error::invalid_request, "Invalid Request");
  auto idit = req.find("id");
  const bool has_id = idit != req.end();
  json id = has_id ? *idit : json(nullptr);
  auto mit = req.find("method");
  if (mit == req.end() || !mit->is_string() || (has_id && (id.is_object() || id.is_array())))
    return rpc_failure(has_id && !(id.is_object() || id.is_array()) ? id : json(nullptr),
                       rpc_error::invalid_request, "Invalid Request");
  static const json no_params = nullptr;
  auto pit = req.find("params");
  outcome o = run_handler(mit->get_ref<const std::string&>(), pit == req.end() ? no_params : *pit, handlers);
  if (!has_id) return std::nullopt;
  return json{{"jsonrpc", "2.0"}, {"id", id}, {o.is_error ? "error" : "result", std::move(o.value)}};
}

}  // namespace detail

namespace detail {

// Which heartbeat requests serve() answers by itself: "rpc.heartbeat" with an id,
// when the handlers do not define that method.
inline bool is_builtin_heartbeat(const channel::rpc_message& m, bool builtin) {
  return builtin && m.k == channel::rpc_message::kind::request && m.has_id && m.method == "rpc.heartbeat";
}

// serve()'s second thread: answers heartbeats while a handler runs.
//
// The serving thread reads and runs handlers as before; it only marks the time it
// spends inside a handler (enter/leave: an uncontended mutex, no system call). The
// watchdog sleeps, ticking every `tick` while requests are being handled and parking
// (no ticks at all) after a second without any. When it sees the same handler still
// running at two ticks in a row, it reads the channel itself (non-blocking core,
// holding its mutex so that leave() cannot slip between a read and the hand-over):
// heartbeat requests are answered at once, everything else is kept, in order, for
// the serving thread, which takes it before reading the channel again.
class serve_watchdog {
 public:
  struct item {
    std::optional<channel::rpc_message> message;  // a message, or
    std::optional<channel_error> error;           // what reading it raised
  };
  static constexpr auto tick = std::chrono::milliseconds(20);
  static constexpr int park_after = 50;                 // idle ticks (one second)
  static constexpr std::size_t max_kept = 100000;       // a flooding peer waits

  explicit serve_watchdog(channel& ch) : ch_(ch) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::system_error&) {
      // No thread to spare: heartbeats are then answered between handlers only.
    }
  }
  serve_watchdog(const serve_watchdog&) = delete;
  serve_watchdog& operator=(const serve_watchdog&) = delete;
  ~serve_watchdog() {
    {
      std::lock_guard l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void enter() {
    bool wake;
    {
      std::lock_guard l(m_);
      busy_ = true;
      ++seq_;
      wake = parked_;
    }
    if (wake) cv_.notify_one();
  }
  // Heartbeats the watchdog answered.
  std::size_t beats_answered() const noexcept { return beats_.load(std::memory_order_relaxed); }
  // Ends the handler; appends what the watchdog read meanwhile to `backlog`.
  void leave(std::deque<item>& backlog) {
    std::lock_guard l(m_);
    busy_ = false;
    for (auto& i : kept_) backlog.push_back(std::move(i));
    kept_.clear();
  }

 private:
  void run() {
    std::unique_lock l(m_);
    std::uint64_t seen = 0;
    bool fresh = true;  // seen is not a handler we watched for a whole tick
    int idle = 0;
    while (!stop_) {
      if (!busy_) {
        if (++idle > park_after) {
          parked_ = true;
          cv_.wait(l, [&] { return stop_ || busy_; });
          parked_ = false;
          idle = 0;
          fresh = true;  // a handler that just started gets a tick first
          continue;
        }
        cv_.wait_for(l, tick);
        continue;
      }
      idle = 0;
      if (fresh || seq_ != seen) {
        seen = seq_;
        fresh = false;
        cv_.wait_for(l, tick);
        continue;
      }
      read_for_handler(l);
    }
  }

  // Called with m_ held and the same handler running for a tick or more.
  void read_for_handler(std::unique_lock<std::mutex>& l) {
    std::vector<json> beats;  // the ids to answer
    bool at_end = false;
    if (kept_.size() < max_kept) {
      ch_.read_available();
      for (;;) {
        channel::rpc_message m;
        try {
          if (!ch_.try_receive_rpc(m)) break;
        } catch (const channel_error& e) {
          kept_.push_back({std::nullopt, e});
          if (ch_.eof()) break;
          continue;
        }
        if (is_builtin_heartbeat(m, true))
          beats.push_back(std::move(m.id));
        else
          kept_.push_back({std::move(m), std::nullopt});
      }
      at_end = ch_.eof() || !ch_.is_open();
    }
    const bool full = kept_.size() >= max_kept;
    l.unlock();
    for (const auto& id : beats) {
      try {
        ch_.enqueue_response(id, heartbeat_result());
        ch_.flush_all();
        beats_.fetch_add(1, std::memory_order_relaxed);
      } catch (const channel_error&) {
        // The peer is gone; the serving thread learns it from the channel.
      }
    }
    if (at_end || full) {
      // Nothing more to read for now (a socket at its end stays readable: no poll).
      l.lock();
      cv_.wait_for(l, tick, [&] { return stop_ || !busy_; });
      return;
    }
    subprocess::detail::poll_one(ch_.fd(), POLLIN, subprocess::detail::clock::now() + tick);
    l.lock();
  }

  channel& ch_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool busy_ = false;    // the serving thread is inside a handler
  bool parked_ = false;  // the watchdog sleeps without a timeout
  std::uint64_t seq_ = 0;  // handlers entered
  std::deque<item> kept_;  // read by the watchdog, for the serving thread
  std::atomic<std::size_t> beats_{0};
  std::thread thread_;
};

}  // namespace detail

// Answers JSON-RPC requests arriving on ch with `handlers`, one at a time in arrival
// order, until the peer closes the channel (or exits); then returns the number of
// requests answered. This is the loop of a worker process:
//
//   int main() {
//     auto ch = sp::ipc::connect_to_parent();
//     sp::ipc::serve(ch, {
//       {"add", [](const json& p) { return p["a"].get<double>() + p["b"].get<double>(); }},
//       {"divide", [](const json& p) -> json {
//          if (p["b"] == 0) throw sp::ipc::rpc_error(-32602, "division by zero");
//          return p["a"].get<double>() / p["b"].get<double>(); }},
//     });
//   }
//
// What the peer gets back:
//   unknown method                  error -32601 "Method not found: 'name'"
//   handler throws rpc_error        that code, message and data
//   handler throws json::exception  -32602 "Invalid params: ..." (a params["x"] of the
//                                   wrong type)
//   handler throws anything else    -32000 with the exception's what()
//   a line that is not JSON         -32700 with id null, then serve() goes on
//   not a request object            -32600 "Invalid Request"
// Batches (a JSON array of requests) are answered with an array. Notifications (no id)
// run their handler and get no answer. If the peer goes away while an answer is being
// sent, serve() returns. Blocking; handlers, on_message and on_error run on the
// calling thread, one at a time.
//
// Cost. Requests are decoded without building a json object for their envelope
// (channel::receive_rpc), answers are written from their parts (enqueue_response),
// and the answers to requests that arrived together are written together, with one
// send(2), as soon as no further request is waiting in the buffer, and never more than
// 1 ms after the first of them was ready. A peer that pipelines requests (worker_pool
// with max_in_flight > 1) thus costs a fraction of a system call per request.
//
// Heartbeats. "rpc.heartbeat" is built in (answers {"time": ms since 1970, "pid": ...})
// unless you handle it yourself, and it is answered even while a handler is busy: a
// worker in the middle of a 10-minute job still looks alive to ipc::heartbeat and to
// worker_pool. For that, serve() runs a second thread for as long as it runs. It costs
// nothing per request beyond an uncontended mutex: the thread ticks every 20 ms while
// requests keep coming, sleeps for good after a second without any, and reads the
// channel only when one handler has run for 20-40 ms; it answers heartbeats arriving
// then within about 20 ms, and keeps every other message, in order, for the handlers.
// What this does and does not tell the peer: a stopped (SIGSTOP), dead or wedged
// process answers nothing; a handler stuck forever in a live process (a deadlock, an
// endless loop) does not stop the heartbeats, so bound the time of a task on the
// caller's side (worker_pool's task_timeout, a call's timeout). If you define
// "rpc.heartbeat" yourself, it is an ordinary method: answered in turn, after the
// handler that is running. If the thread cannot be started (no threads left),
// serve() runs without it and heartbeats wait for the handler that is running.
inline std::size_t serve(channel& ch, const handler_map& handlers, const serve_options& opts = {}) {
  using kind = channel::rpc_message::kind;
  const bool builtin_heartbeat = handlers.find("rpc.heartbeat") == handlers.end();
  std::size_t answered = 0;
  std::optional<detail::serve_watchdog> watchdog;
  if (builtin_heartbeat) watchdog.emplace(ch);
  std::deque<detail::serve_watchdog::item> backlog;  // read by the watchdog
  auto done = [&] { return answered + (watchdog ? watchdog->beats_answered() : 0); };
  // User code (handlers, on_message, on_error) runs between enter() and leave().
  struct in_handler {
    std::optional<detail::serve_watchdog>& w;
    std::deque<detail::serve_watchdog::item>& backlog;
    explicit in_handler(std::optional<detail::serve_watchdog>& wd,
                        std::deque<detail::serve_watchdog::item>& b)
        : w(wd), backlog(b) {
      if (w) w->enter();
    }
    ~in_handler() {
      if (w) w->leave(backlog);
    }
  };
  // Answers are queued while more requests wait in the buffer, and written together
  // (one send(2)) when the buffer is empty, or 1 ms after the first of them: a slow
  // handler never holds back the answers before it.
  using sclock = std::chrono::steady_clock;
  bool queued = false;
  sclock::time_point first_queued{};
  auto flush = [&] {
    if (!queued) return true;
    queued = false;
    try {
      ch.flush_all();
      return true;
    } catch (const channel_error&) {
      return false;  // the peer is gone
    }
  };
  auto queue = [&](auto&& enqueue) {
    try {
      enqueue();
    } catch (const channel_error&) {
      return false;
    }
    if (!queued) {
      queued = true;
      first_queued = sclock::now();
    } else if (sclock::now() - first_queued >= std::chrono::milliseconds(1)) {
      return flush();
    }
    return true;
  };
  auto reply_json = [&](const json& m) { return queue([&] { ch.enqueue(m); }); };
  auto on_bad_input = [&](const channel_error& e) {
    if (e.code() == make_error_code(errc::protocol_error) && !ch.eof()) {
      if (!reply_json(detail::rpc_failure(nullptr, rpc_error::parse_error, "Parse error",
                                          json{{"sample", e.sample()}})))
        return false;
    }
    if (opts.on_error) {
      in_handler h(watchdog, backlog);
      opts.on_error(e);
    }
    return true;
  };
  channel::rpc_message m;
  for (;;) {
    if (!backlog.empty()) {
      auto item = std::move(backlog.front());
      backlog.pop_front();
      if (item.error) {
        if (!on_bad_input(*item.error)) return done();
        continue;
      }
      m = std::move(*item.message);
    } else {
      try {
        if (!ch.try_receive_rpc(m)) {  // nothing buffered: write the answers, then wait
          if (!flush()) return done();
          if (!ch.receive_rpc(m)) return done();
        }
      } catch (const channel_error& e) {
        if (!on_bad_input(e)) return done();
        if (ch.eof()) {
          flush();
          return done();
        }
        continue;
      }
    }
    if (m.k == kind::request) {
      ++answered;
      if (detail::is_builtin_heartbeat(m, builtin_heartbeat)) {
        if (!queue([&] { ch.enqueue_response(m.id, detail::heartbeat_result()); })) return done();
        continue;
      }
      detail::outcome o;
      {
        in_handler h(watchdog, backlog);
        o = detail::run_handler(m.method, m.params, handlers);
      }
      if (m.has_id) {
        bool ok = queue([&] {
          try {
            ch.enqueue_response(m.id, o.value, o.is_error);
          } catch (const argument_error& e) {  // a result that cannot be sent (invalid UTF-8)
            ch.enqueue_response(m.id, json{{"code", rpc_error::internal_error}, {"message", e.what()}}, true);
          }
        });
        if (!ok) return done();
      }
    } else if (m.k == kind::other && detail::is_request(m.whole)) {  // e.g. a method that is not a string
      ++answered;
      std::optional<json> r;
      {
        in_handler h(watchdog, backlog);
        r = detail::answer(m.whole, handlers);
      }
      if (r && !reply_json(*r)) return done();
    } else if (m.k == kind::other && m.whole.is_array() && !m.whole.empty() &&
               std::any_of(m.whole.begin(), m.whole.end(), [](const json& x) { return detail::is_request(x); })) {
      json replies = json::array();
      {
        in_handler h(watchdog, backlog);
        for (const auto& req : m.whole) {
          ++answered;
          if (auto r = detail::answer(req, handlers)) replies.push_back(std::move(*r));
        }
      }
      if (!replies.empty() && !reply_json(replies)) return done();
    } else if (opts.on_message) {
      json whole = m.k == kind::other ? std::move(m.whole)
                                      : json{{"jsonrpc", "2.0"}, {"id", m.id}, {"result", m.result}};
      if (m.k == kind::response && !m.error.is_null()) {
        whole.erase("result");
        whole["error"] = m.error;
      }
      in_handler h(watchdog, backlog);
      opts.on_message(whole);
    }
  }
}

// ---- the client side ------------------------------------------------------------

// Pass as a call's timeout to wait for as long as it takes.
inline constexpr std::chrono::milliseconds no_timeout = std::chrono::milliseconds::max();

// The outcome of a call, for callbacks: the result, or the error.
struct reply {
  json result = nullptr;
  std::exception_ptr error = nullptr;  // rpc_error, call_timeout_error or channel_error
  bool ok() const noexcept { return !error; }
  // The result; rethrows the error.
  const json& value() const {
    if (error) std::rethrow_exception(error);
    return result;
  }
};
using reply_fn = std::function<void(reply)>;

struct client_options {
  // For call() without a timeout. no_timeout waits forever.
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  // Messages from the peer that are not answers to our calls (its notifications, or
  // plain messages). Runs on the client's reader thread.
  std::function<void(const json&)> on_message = {};
  // Bad input from the peer (malformed lines...). The client carries on. Runs on the
  // reader thread.
  std::function<void(const channel_error&)> on_error = {};
  // After the channel ends, how long to wait for the peer process to exit so that
  // the failed calls can say how it ended (client(process&) only).
  std::chrono::milliseconds exit_grace = std::chrono::milliseconds(500);
  // What the peer is called in error messages. Default: the channel's name (for
  // client(process&), the command line).
  std::string name = {};
};

// Calls methods of the process at the other end of a channel.
//
//   auto p = sp::command::self({"--worker"}).ipc().spawn();
//   sp::ipc::client calc(p);                                // takes p's channel
//   json sum = calc.call_sync("add", {{"a", 5}, {"b", 3}}, 5s);   // 8, or throws
//   std::future<json> f = calc.call("add", {{"a", 5}, {"b", 3}}, 5s);
//   f.get();                        // 8, or throws rpc_error / call_timeout_error /
//                                   // channel_error (the peer exited: e.status())
//   calc.notify("log", {{"text", "hi"}});                   // no answer expected
//   calc.call("add", {1, 2}, 5s, [](sp::ipc::reply r) {     // callback instead of a
//     if (r.ok()) use(r.result);                            // future: runs on the
//   });                                                     // reader thread
//
// How it works. Calls write their request at once from the calling thread (never
// blocking: what the socket cannot take now is queued and written later) and
// register the id; any number of calls may be in flight, from any number of threads.
// One reader thread per client, owned by it, polls the socket, the client's own
// wake-up eventfd and (with client(process&)) the peer's pidfd; it matches answers to
// calls by id, fulfils futures, runs callbacks, and fails calls whose timeout passed.
// The reader thread sleeps in poll() when nothing happens (after the last call
// it looks once more, a second later: the calls in between need not wake it).
//
// call() or call_sync()? call() returns at once; the answer reaches your future
// through the reader thread: one thread hand-off per call. call_sync() waits on the
// calling thread, and that thread reads the socket itself while it waits: no
// hand-off, so a caller that waits for each answer anyway (one call at a time) comes
// close to a raw socket ping-pong (only the JSON costs more). Where the two processes
// share a CPU the difference is large (a hand-off is one more context switch:
// call().get() makes 40-60% of the round trips per second of call_sync() there).
// Both may be mixed, from any threads: while a call_sync() is reading, the answers it
// reads for other calls go to their futures, and callbacks and messages that are not
// answers are passed to the reader thread, so callbacks still run there and in
// order. One consequence: for a few milliseconds after a call_sync() returns, the
// reader thread leaves the socket to the next call_sync() (so a loop of them never
// wakes it), so a message that is not an answer may wait that long for on_message.
//
// When the peer goes away. Every pending call fails with channel_error
// (errc::channel_closed) saying why: "'worker' exited with code 1", "killed by
// SIGKILL" (status() carries the exit_status, when the client was built from the
// process and the process ended within exit_grace), or "closed the channel". The
// pidfd is watched too, so a peer that dies while a grandchild keeps the socket open
// still fails the calls. Later calls fail at once the same way; notify() throws.
//
// Thread safety: everything may be called from any thread. Callbacks (reply_fn,
// on_message, on_error) run on the reader thread: keep them short, and do not destroy
// the client from one. A call on a client that is already closed runs its callback
// at once on the calling thread.
class client {
 public:
  explicit client(channel ch, client_options opts = {})
      : ch_(std::move(ch)), opts_(std::move(opts)), name_(opts_.name.empty() ? ch_.name() : opts_.name) {
    start();
  }
  // Takes p's channel and watches p's exit (through a copy of its pidfd). p must
  // outlive nothing here: the client keeps working after p is destroyed.
  explicit client(process& p, client_options opts = {})
      : ch_(p), opts_(std::move(opts)), name_(opts_.name.empty() ? ch_.name() : opts_.name) {
    if (p.pidfd() >= 0) {
      pidfd_.reset(subprocess::detail::sys::dup_above(p.pidfd(), 3));
      if (!pidfd_) subprocess::detail::throw_errno(errno, "ipc client: dup the pidfd of '" + name_ + "'");
    }
    start();
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;
  // Closes (see close()).
  ~client() { close(); }

  // Calls `method` with `params` (an object, an array, or null for none). The future
  // holds the result, or throws rpc_error (the peer answered an error),
  // call_timeout_error, or channel_error (the peer went away).
  std::future<json> call(std::string_view method, json params = nullptr) {
    return call(method, std::move(params), opts_.timeout);
  }
  std::future<json> call(std::string_view method, json params, std::chrono::milliseconds timeout) {
    pending_call pc;
    auto f = pc.promise.emplace().get_future();
    start_call(method, std::move(params), timeout, std::move(pc));
    return f;
  }
  // The same with a callback instead of a future (runs on the reader thread).
  void call(std::string_view method, json params, std::chrono::milliseconds timeout,
            reply_fn on_reply) {
    if (!on_reply) throw argument_error(name_, "call '" + std::string(method) + "': empty callback");
    pending_call pc;
    pc.fn = std::move(on_reply);
    start_call(method, std::move(params), timeout, std::move(pc));
  }

  // Calls `method` and waits for the answer on this thread, which reads the socket
  // itself meanwhile (see "call() or call_sync()" above). Returns the result; throws
  // what call(...).get() would throw: rpc_error, call_timeout_error, channel_error.
  json call_sync(std::string_view method, json params = nullptr) {
    return call_sync(method, std::move(params), opts_.timeout);
  }
  json call_sync(std::string_view method, json params, std::chrono::milliseconds timeout) {
    if (timeout <= std::chrono::milliseconds::zero())
      throw argument_error(name_, "call '" + std::string(method) + "': the timeout must be positive");
    const std::uint64_t id = next_id_.fetch_add(1);
    encoded line = request_text(method, params, id);
    sync_slot slot;
    slot.method = std::string(method);
    slot.timeout = timeout;
    const subprocess::detail::deadline dl =
        timeout == no_timeout ? subprocess::detail::deadline{} : subprocess::detail::deadline_in(timeout);
    {
      std::lock_guard lk(mu_);
      if (closed_ || stop_)
        std::rethrow_exception(gone_error(std::string(method), id, why_.empty() ? "the client was closed" : why_,
                                          status_, name_));
      pending_call pc;
      pc.method = std::string(method);
      pc.timeout = timeout;
      pc.sync = &slot;
      pending_.emplace(id, std::move(pc));
      ++sync_pending_;
      ++sync_callers_;
    }
    // From here on `slot` is known to other threads: leave only once it is done.
    struct leave {
      client& c;
      std::uint64_t id;
      sync_slot& slot;
      ~leave() { c.end_sync(id, slot); }
    } guard{*this, id, slot};
    bool queued = false;
    try {
      queued = !ch_.post_encoded(line);
    } catch (const channel_error&) {
      // The peer is gone: reading says so, with the reason.
    }
    if (queued) {  // whoever reads also writes what is queued
      signal(direct_wake_);
      wake();
    }
    wait_for(slot, id, dl);
    if (slot.r.error) std::rethrow_exception(slot.r.error);
    return std::move(slot.r.result);
  }

  // Sends a notification (a request without id: no answer). Throws channel_error if
  // the peer is gone.
  void notify(std::string_view method, json params = nullptr) {
    encoded line = request_text(method, params, std::nullopt);
    {
      std::lock_guard lk(mu_);
      if (closed_)
        throw channel_error(errc::channel_closed, name_,
                            "notify '" + std::string(method) + "': " + why_, {}, status_);
    }
    if (!ch_.post_encoded(line)) {
      signal(direct_wake_);
      wake();
    }
  }

  // Stops the reader thread, fails pending calls ("the client was closed") and
  // closes the channel: the peer sees the end. Idempotent.
  void close() {
    stopping_.store(true);
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    wake();
    if (reader_.joinable() && reader_.get_id() != std::this_thread::get_id()) reader_.join();
    fail_all("the client was closed", std::nullopt);
    ch_.close();
  }

  // False once the peer went away or close() was called.
  bool connected() const {
    std::lock_guard lk(mu_);
    return !closed_ && !stop_;
  }
  // Calls waiting for an answer.
  std::size_t pending() const {
    std::lock_guard lk(mu_);
    return pending_.size();
  }
  // How the peer ended, once the client knows (client(process&) only).
  std::optional<subprocess::exit_status> peer_status() const {
    std::lock_guard lk(mu_);
    return status_;
  }
  const std::string& name() const noexcept { return name_; }

 private:
  using clock = subprocess::detail::clock;
  // How long the reader thread leaves the socket to call_sync() after the last one
  // returned (see "call() or call_sync()").
  static constexpr std::chrono::milliseconds sync_linger{5};
  // How long call_sync() may sit in recv() before it looks at anything else.
  static constexpr std::chrono::milliseconds recv_period{50};
  // While calls are being made, the reader wakes at least this often (see loop()).
  static constexpr std::chrono::seconds idle_tick{1};

  // Where a call_sync() caller waits for its answer (on its stack).
  struct sync_slot {
    std::string method;
    std::chrono::milliseconds timeout{0};
    std::thread::id owner = std::this_thread::get_id();
    std::atomic<bool> done{false};  // set under mu_, read without it
    reply r;                        // (mu_) until done
  };
  struct pending_call {
    std::string method;
    std::chrono::milliseconds timeout{0};
    std::optional<clock::time_point> deadline;
    // call() with a future. Only then: a promise allocates its shared state, and one
    // destroyed unfulfilled stores a broken_promise exception.
    std::optional<std::promise<json>> promise;
    reply_fn fn;
    sync_slot* sync = nullptr;  // call_sync(): complete this instead
  };
  // An answer to a call, decoded without building its envelope (see take_messages()).
  struct answer_item {
    std::uint64_t id;
    json result;
    json error;  // null: a success
  };
  // A message read from the channel, or the error reading it.
  using incoming_item = std::variant<json, answer_item, channel_error>;

  void start() {
    namespace sys = subprocess::detail::sys;
    if (!ch_.is_open()) throw argument_error(name_, "ipc client: the channel is not open");
    wake_.reset(sys::eventfd(0, EFD_NONBLOCK));
    if (!wake_) subprocess::detail::throw_errno(errno, "ipc client: eventfd");
    direct_wake_.reset(sys::eventfd(0, EFD_NONBLOCK));
    if (!direct_wake_) subprocess::detail::throw_errno(errno, "ipc client: eventfd");
    // call_sync() waits in recv() itself when it can (one system call per answer, as
    // a raw ping-pong makes), looking at its deadline and the pidfd every recv_period.
    // Only on a blocking socket, and the client owns it: no one else's recv changes.
    const int fl = sys::fcntl(ch_.fd(), F_GETFL);
    const timeval tv{0, static_cast<suseconds_t>(std::chrono::microseconds(recv_period).count())};
    timed_recv_ = fl >= 0 && !(fl & O_NONBLOCK) &&
                  sys::setsockopt(ch_.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0;
    reader_ = std::thread([this] { run(); });
  }

  encoded request_text(std::string_view method, const json& params,
                       std::optional<std::uint64_t> id) const {
    encoded e;
    detail::append_request(e.buf_, id, method, params, name_);
    e.buf_.push_back('\n');
    return e;
  }

  void start_call(std::string_view method, json params, std::chrono::milliseconds timeout,
                  pending_call pc) {
    if (timeout <= std::chrono::milliseconds::zero())
      throw argument_error(name_, "call '" + std::string(method) + "': the timeout must be positive");
    const std::uint64_t id = next_id_.fetch_add(1);
    encoded line = request_text(method, params, id);
    pc.method = std::string(method);
    pc.timeout = timeout;
    if (timeout != no_timeout) pc.deadline = subprocess::detail::deadline_in(timeout);
    bool wake_reader = false;
    {
      std::unique_lock lk(mu_);
      if (closed_ || stop_) {
        auto err = gone_error(pc.method, id, why_.empty() ? "the client was closed" : why_, status_);
        lk.unlock();
        if (pc.fn)
          call_quietly([&] { pc.fn(reply{nullptr, err}); });
        else
          pc.promise->set_exception(err);
        return;
      }
      if (pc.deadline) {
        deadlines_.emplace(*pc.deadline, id);
        if (!armed_ || *pc.deadline < *armed_) wake_reader = true;
      }
      if (!watching_) wake_reader = true;  // it left the socket to call_sync()
      pending_.emplace(id, std::move(pc));
    }
    try {
      if (!ch_.post_encoded(line)) {
        wake_reader = true;
        signal(direct_wake_);
      }
    } catch (const channel_error&) {
      // The peer is gone: the reader sees the end of the channel and fails this call
      // with the reason (and the exit status).
      wake_reader = true;
    }
    if (wake_reader) wake();
  }

  // A lost wake-up would leave the reader asleep past a call's deadline, or close()
  // waiting for it forever: eventfd_notify retries EINTR.
  static void signal(const subprocess::detail::unique_fd& fd) {
    if (fd) subprocess::detail::eventfd_notify(fd.get());
  }
  static void clear(const subprocess::detail::unique_fd& fd) {
    subprocess::detail::eventfd_drain(fd.get());
  }
  void wake() { signal(wake_); }

  template <class F>
  static void call_quietly(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      // A callback must not throw; there is nobody to tell.
    }
  }

  static std::exception_ptr gone_error(const std::string& method, std::uint64_t id,
                                       const std::string& why,
                                       std::optional<subprocess::exit_status> st,
                                       const std::string& peer = {}) {
    return std::make_exception_ptr(channel_error(
        errc::channel_closed, peer,
        "call '" + method + "' (id " + std::to_string(id) + ") got no reply: " + why, {}, st));
  }

  // Removes a pending call. Requires mu_.
  std::optional<pending_call> take_locked(std::uint64_t id) {
    auto it = pending_.find(id);
    if (it == pending_.end()) return std::nullopt;
    if (it->second.deadline) deadlines_.erase({*it->second.deadline, id});
    if (it->second.sync) --sync_pending_;
    std::optional<pending_call> pc(std::move(it->second));
    pending_.erase(it);
    return pc;
  }

  // Runs f on the reader thread: now if this is it (or it has finished), else it is
  // queued for it, in order. `direct`: read by a call_sync() caller, which holds the
  // read lock: always queued (even on the reader thread, inside a callback), so that
  // a callback never runs with the read lock held.
  void on_reader(std::function<void()> f, bool direct) {
    bool queued = false, first = false;
    {
      std::lock_guard lk(mu_);
      if (!reader_exited_ && (direct || std::this_thread::get_id() != reader_id_)) {
        first = deferred_.empty();
        deferred_.push_back(std::move(f));
        queued = true;
      }
    }
    if (!queued)
      call_quietly(f);
    else if (first)
      wake();
  }
  void run_deferred() {
    std::vector<std::function<void()>> todo;
    {
      std::lock_guard lk(mu_);
      todo.swap(deferred_);
    }
    for (auto& f : todo) call_quietly(f);
  }

  // Completes a call. Callbacks run on the reader thread.
  void complete(pending_call& pc, reply r, bool direct = false) {
    if (pc.sync) {
      const bool mine = pc.sync->owner == std::this_thread::get_id();
      {
        std::lock_guard lk(mu_);
        pc.sync->r = std::move(r);
        pc.sync->done.store(true);
      }
      if (!mine) {  // its caller may be waiting in poll() as the one reading the socket
        sync_cv_.notify_all();
        signal(direct_wake_);
      }
    } else if (pc.fn) {
      on_reader([fn = std::move(pc.fn), r = std::move(r)]() mutable { fn(std::move(r)); }, direct);
    } else if (r.error) {
      pc.promise->set_exception(r.error);
    } else {
      pc.promise->set_value(std::move(r.result));
    }
  }

  // ---- reading, by the reader thread or by a caller inside call_sync()

  // Takes the complete messages (and errors) buffered now, until `until`: a peer
  // flooding garbage can leave megabytes of lines buffered, each one an error to
  // build (microseconds each, more under sanitizers), so taking them all could hold
  // a call's deadline (and close()) back for seconds. Returns false if it stopped
  // with complete lines left (the caller comes back for them without waiting for the
  // socket; false may also mean that none is left). An answer to a call (an unsigned id) is decoded without building its
  // envelope (json_codec::parse_rpc); anything else is handed on whole. Requires the
  // read lock.
  bool take_messages(channel::state& s, std::vector<incoming_item>& out, clock::time_point until) {
    namespace codec = subprocess::detail::json_codec;
    channel::rpc_message m;
    for (unsigned taken = 1;; ++taken) {
      if (stopping_.load(std::memory_order_relaxed)) return true;  // close(): the rest is dropped
      // The clock is read every 16 lines (a few microseconds of work at most).
      if (taken % 16 == 0 && clock::now() >= until) return false;
      try {
        const bool got = channel::next_line_locked(s, [&](std::string_view line) {
          codec::parse_rpc(line, m);
          if (m.k == channel::rpc_message::kind::response && m.id.is_number_unsigned()) {
            out.emplace_back(answer_item{m.id.get<std::uint64_t>(), std::move(m.result), std::move(m.error)});
            return true;
          }
          // Rare (a request from the peer, an odd id): the message as it was written.
          json whole = m.k == channel::rpc_message::kind::other ? std::move(m.whole) : codec::parse(line);
          if (!s.opts.internal_messages && detail::is_internal(whole) && channel::skip_internal(s, whole))
            return false;
          out.emplace_back(std::move(whole));
          return true;
        });
        if (!got) return true;
      } catch (const channel_error& e) {
        out.emplace_back(e);
        if (s.peer_done && s.rbuf.empty()) return true;
      }
    }
  }
  // How long the reader thread takes buffered messages before it looks at the
  // deadlines of calls again.
  static constexpr std::chrono::milliseconds take_slice{2};
  static bool at_end(const channel::state& s) {
    return s.closed.load() || (s.peer_done && s.rbuf.empty() && !s.read_error);
  }

  void dispatch(std::vector<incoming_item>& items, bool direct) {
    for (auto& item : items) {
      if (stopping_.load(std::memory_order_relaxed)) break;  // close() is waiting
      if (auto* e = std::get_if<channel_error>(&item)) {
        if (opts_.on_error) on_reader([this, e = *e] { opts_.on_error(e); }, direct);
      } else if (auto* a = std::get_if<answer_item>(&item)) {
        if (a->error.is_null())
          answered(a->id, reply{std::move(a->result), nullptr}, direct);
        else
          answered_error(a->id, a->error, direct);
      } else {
        incoming(std::move(std::get<json>(item)), direct);
      }
    }
    items.clear();
  }

  // The reader thread's read: only when no call_sync() caller is reading (nullopt
  // if one is). Returns the bytes read.
  // Complete lines left buffered by a take_messages() that ran out of time: the
  // reader thread takes them before it waits for the socket again.
  std::optional<std::size_t> read_some() {
    channel::state& s = *ch_.s_;
    std::vector<incoming_item> items;
    std::size_t n = 0;
    {
      std::unique_lock rl(s.rmu, std::try_to_lock);
      if (!rl.owns_lock()) return std::nullopt;
      // Nothing new is read while earlier lines wait (the buffer stays bounded).
      if (!backlog_) n = channel::read_locked(s);
      backlog_ = !take_messages(s, items, clock::now() + take_slice);
    }
    dispatch(items, false);
    return n + (backlog_ ? 1 : 0);  // not 0 while lines wait: drain() comes back
  }
  // Reads until the socket is empty; false if a call_sync() caller is reading.
  bool drain() {
    for (;;) {
      auto n = read_some();
      if (!n) return false;
      if (*n == 0) return true;
    }
  }
  // The channel ended and every message was taken (a call_sync() caller reading:
  // false, it will see the end itself).
  bool ended() {
    channel::state& s = *ch_.s_;
    std::unique_lock rl(s.rmu, std::try_to_lock);
    return rl.owns_lock() && at_end(s);
  }

  // A call_sync() caller waits for its answer: it reads the socket itself while no
  // other caller does, else it waits to be told.
  void wait_for(sync_slot& slot, std::uint64_t id, const subprocess::detail::deadline& dl) {
    std::unique_lock lk(mu_);
    for (;;) {
      if (slot.done.load()) return;
      if (dl && clock::now() >= *dl) {
        if (take_locked(id)) {
          slot.r = reply{nullptr,
                         std::make_exception_ptr(call_timeout_error(name_, slot.method, id, slot.timeout))};
          slot.done.store(true);
          return;
        }
        sync_cv_.wait(lk, [&] { return slot.done.load(); });  // being completed right now
        return;
      }
      if (!direct_active_ && !closed_) {
        direct_active_ = true;
        lk.unlock();
        try {
          read_until(slot, dl);
        } catch (...) {
          lk.lock();
          direct_active_ = false;
          sync_cv_.notify_all();
          throw;
        }
        lk.lock();
        direct_active_ = false;
        sync_cv_.notify_all();  // another caller may read now
        continue;
      }
      if (dl)
        sync_cv_.wait_until(lk, *dl);
      else
        sync_cv_.wait(lk);
    }
  }
  void read_until(const sync_slot& slot, const subprocess::detail::deadline& dl) {
    channel::state& s = *ch_.s_;
    std::unique_lock rl(s.rmu, std::defer_lock);
    if (dl) {
      if (!rl.try_lock_until(*dl)) return;
    } else {
      rl.lock();
    }
    std::vector<incoming_item> items;
    const auto until = dl.value_or(clock::time_point::max());
    for (;;) {
      // In slices: what was taken is dispatched (which costs about as much again)
      // before the deadline is looked at.
      const bool all = take_messages(s, items, std::min(until, clock::now() + take_slice));
      dispatch(items, true);
      if (slot.done.load()) return;
      if (!all) {
        if (clock::now() < until) continue;
        backlog_ = true;  // out of time with lines left: the caller times out; the
        return;           // reader thread (or the next call) takes the rest
      }
      if (at_end(s)) {
        rl.unlock();
        if (!s.closed.load()) peer_gone(wait_status());
        return;
      }
      if (dl && clock::now() >= *dl) return;
      if (timed_recv_ && (!dl || *dl - clock::now() > 2 * recv_period) && !ch_.wants_write()) {
        // The common case: wait in recv() (the peer dying, close(), the deadline are
        // noticed within recv_period, see start()).
        if (channel::read_locked(s, true) > 0 || s.peer_done) continue;
      }
      pollfd fds[3];
      nfds_t n = 0;
      fds[n++] = {s.fd.get(), static_cast<short>(POLLIN | (ch_.wants_write() ? POLLOUT : 0)), 0};
      fds[n++] = {direct_wake_.get(), POLLIN, 0};
      if (pidfd_) fds[n++] = {pidfd_.get(), POLLIN, 0};
      subprocess::detail::poll_until(fds, n, dl);
      if (fds[1].revents) clear(direct_wake_);
      if (fds[0].revents & POLLOUT) {
        try {
          ch_.flush();
        } catch (const channel_error&) {
          // The peer is gone; reading says so in a moment.
        }
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) channel::read_locked(s);
      if (n == 3 && fds[2].revents) {  // the peer process exited
        while (channel::read_locked(s) > 0) {
          take_messages(s, items, until);
          dispatch(items, true);
        }
        take_messages(s, items, until);
        dispatch(items, true);
        rl.unlock();
        peer_gone(peek_status());
        return;
      }
    }
  }

  // Back from call_sync(): the slot must not be referenced by anyone once we leave.
  void end_sync(std::uint64_t id, sync_slot& slot) noexcept {
    std::unique_lock lk(mu_);
    if (!slot.done.load() && !take_locked(id))
      sync_cv_.wait(lk, [&] { return slot.done.load(); });  // someone is completing it
    --sync_callers_;
    last_sync_end_ = clock::now();
    // Other calls need the reader thread watching the socket again.
    const bool wake_reader = !watching_ && (pending_.size() > sync_pending_ || exit_seen_);
    lk.unlock();
    if (wake_reader) wake();
  }

  // ---- the reader thread
  void run() {
    {
      std::lock_guard lk(mu_);
      reader_id_ = std::this_thread::get_id();
    }
    try {
      loop();
    } catch (const std::exception& e) {  // poll failed, out of memory...: fail loudly
      fail_all(std::string("the client's reader failed: ") + e.what(), std::nullopt);
    }
    std::vector<std::function<void()>> rest;
    {
      std::lock_guard lk(mu_);
      reader_exited_ = true;  // from now on callbacks run where they complete
      rest.swap(deferred_);
    }
    for (auto& f : rest) call_quietly(f);
  }
  void loop() {
    for (;;) {
      run_deferred();
      subprocess::detail::deadline dl;
      bool watch, exited;
      const bool queued = ch_.wants_write();
      {
        std::lock_guard lk(mu_);
        if (stop_ || closed_) return;
        const auto now = clock::now();
        if (!deadlines_.empty()) {
          dl = deadlines_.begin()->first;
        } else if (const auto ids = next_id_.load(); ids != ids_at_tick_) {
          // Calls were made since we last looked: sleep at most idle_tick, so that the
          // next call (its deadline usually later than that) need not wake us to arm
          // its timer (an eventfd write, a poll and a read per call: a context switch
          // per call where the caller shares our CPU). After a quiet tick we sleep
          // without a timer again, and the next call wakes us.
          ids_at_tick_ = ids;
          dl = now + idle_tick;
        }
        const bool syncing = sync_callers_ > 0 || direct_active_;
        const bool lingering = pending_.size() == sync_pending_ && last_sync_end_ &&
                               now < *last_sync_end_ + sync_linger;
        watch = !syncing && (!lingering || queued);
        if (!watch) {  // look again soon: the socket must not stay unwatched
          auto again = (syncing ? now : *last_sync_end_) + sync_linger;
          if (!dl || again < *dl) dl = again;
        }
        armed_ = dl;
        watching_ = watch;
        exited = exit_seen_;
      }
      if (exited && drain()) {  // the peer exited while a call_sync() caller was reading
        peer_gone(peek_status());
        return;
      }
      pollfd fds[3];
      nfds_t n = 0;
      fds[n++] = {watch ? ch_.fd() : -1, static_cast<short>(POLLIN | (queued ? POLLOUT : 0)), 0};
      fds[n++] = {wake_.get(), POLLIN, 0};
      if (pidfd_ && !exited) fds[n++] = {pidfd_.get(), POLLIN, 0};
      const bool backlog = watch && backlog_.load(std::memory_order_relaxed);
      subprocess::detail::poll_until(fds, n, backlog ? subprocess::detail::deadline(clock::now()) : dl);
      if (backlog) fds[0].revents |= POLLIN;  // take the lines left buffered
      if (fds[1].revents) clear(wake_);
      if (fds[0].revents & POLLOUT) {
        try {
          ch_.flush();
        } catch (const channel_error&) {
          // The peer is gone; reading says so in a moment.
        }
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) read_some();
      if (n == 3 && fds[2].revents) {  // the peer process exited
        if (drain()) {  // answers it sent before dying
          peer_gone(peek_status());
          return;
        }
        std::lock_guard lk(mu_);  // a call_sync() caller is reading: it sees it too
        exit_seen_ = true;
        continue;
      }
      if (watch && ended()) {
        peer_gone(wait_status());
        return;
      }
      expire(clock::now());
    }
  }

  void incoming(json m, bool direct) {
    if (m.is_object() && !m.contains("method")) {
      auto idit = m.find("id");
      if (idit != m.end() && idit->is_number_unsigned()) {
        const auto id = idit->get<std::uint64_t>();
        if (auto e = m.find("error"); e != m.end() && !e->is_null()) {
          answered_error(id, *e, direct);
        } else {
          auto r = m.find("result");
          answered(id, reply{r != m.end() ? std::move(*r) : json(nullptr), nullptr}, direct);
        }
        return;
      }
    }
    if (opts_.on_message) on_reader([this, m = std::move(m)] { opts_.on_message(m); }, direct);
  }

  // An answer for call `id` arrived. An answer to a call that timed out is dropped.
  void answered(std::uint64_t id, reply r, bool direct) {
    std::optional<pending_call> pc;
    {
      std::lock_guard lk(mu_);
      pc = take_locked(id);
    }
    if (pc) complete(*pc, std::move(r), direct);
  }
  // The same for an error answer (its "error" member, not null).
  void answered_error(std::uint64_t id, const json& e, bool direct) {
    int code = rpc_error::internal_error;
    std::string message = "(no message)";
    json data = nullptr;
    if (e.is_object()) {
      if (auto c = e.find("code"); c != e.end() && c->is_number_integer()) code = c->get<int>();
      if (auto t = e.find("message"); t != e.end() && t->is_string()) message = t->get<std::string>();
      if (auto d = e.find("data"); d != e.end()) data = *d;
    } else {
      message = e.dump();
    }
    std::optional<pending_call> pc;
    {
      std::lock_guard lk(mu_);
      pc = take_locked(id);
    }
    if (pc)
      complete(*pc,
               reply{nullptr, std::make_exception_ptr(rpc_error(code, std::move(message), std::move(data), name_,
                                                                pc->method, id))},
               direct);
  }

  void expire(clock::time_point now) {
    std::vector<std::pair<std::uint64_t, pending_call>> late;
    {
      std::lock_guard lk(mu_);
      while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        auto id = deadlines_.begin()->second;
        if (auto pc = take_locked(id))
          late.emplace_back(id, std::move(*pc));
        else
          deadlines_.erase(deadlines_.begin());
      }
    }
    for (auto& [id, pc] : late)
      complete(pc, reply{nullptr, std::make_exception_ptr(
                                      call_timeout_error(name_, pc.method, id, pc.timeout))});
  }

  // The peer's exit status without reaping it (the process object still does that).
  std::optional<subprocess::exit_status> peek_status() const {
    if (!pidfd_) return std::nullopt;
    siginfo_t si{};
    // 3 is P_PIDFD (Linux 5.4); spelled out for older C libraries.
    namespace sys = subprocess::detail::sys;
    if (sys::no_eintr([&] {
          return sys::waitid(static_cast<idtype_t>(3), static_cast<id_t>(pidfd_.get()), &si,
                             WEXITED | WNOWAIT | WNOHANG);
        }) != 0 ||
        si.si_pid == 0)
      return std::nullopt;
    if (si.si_code == CLD_EXITED) return subprocess::exit_status::exited(si.si_status);
    if (si.si_code == CLD_KILLED) return subprocess::exit_status::signaled(si.si_status);
    if (si.si_code == CLD_DUMPED) return subprocess::exit_status::signaled(si.si_status, true);
    return std::nullopt;
  }
  // The channel ended: give the process a moment to finish exiting.
  std::optional<subprocess::exit_status> wait_status() const {
    if (!pidfd_) return std::nullopt;
    subprocess::detail::poll_one(pidfd_.get(), POLLIN, subprocess::detail::deadline_in(opts_.exit_grace));
    return peek_status();
  }

  void peer_gone(std::optional<subprocess::exit_status> st) {
    std::string why = st ? "'" + name_ + "' " + st->to_string() : "'" + name_ + "' closed the channel";
    if (auto torn = ch_.end_error()) why += " (in the middle of a message: " + torn_part(torn->what()) + ")";
    fail_all(why, st);
  }
  // "N bytes of it arrived: '...'" from end_error()'s message.
  static std::string torn_part(const std::string& what) {
    static constexpr std::string_view mark = " in the middle of a message (";
    const auto at = what.rfind(mark);
    if (at == std::string::npos || what.back() != ')') return what;
    return what.substr(at + mark.size(), what.size() - at - mark.size() - 1);
  }
  void fail_all(const std::string& why, std::optional<subprocess::exit_status> st) {
    std::unordered_map<std::uint64_t, pending_call> calls;
    {
      std::lock_guard lk(mu_);
      if (!closed_) {
        closed_ = true;
        why_ = why;
        status_ = st;
      }
      calls.swap(pending_);
      deadlines_.clear();
      sync_pending_ = 0;
    }
    wake();  // the reader thread stops (when this is not it)
    for (auto& [id, pc] : calls) complete(pc, reply{nullptr, gone_error(pc.method, id, why_, status_, name_)});
  }

  channel ch_;
  client_options opts_;
  std::string name_;
  subprocess::detail::unique_fd pidfd_;
  subprocess::detail::unique_fd wake_;         // -> the reader thread
  subprocess::detail::unique_fd direct_wake_;  // -> the call_sync() caller reading
  mutable std::mutex mu_;
  std::condition_variable sync_cv_;  // call_sync() callers: an answer, or the reading is free
  std::unordered_map<std::uint64_t, pending_call> pending_;
  std::set<std::pair<clock::time_point, std::uint64_t>> deadlines_;
  std::atomic<std::uint64_t> next_id_{1};
  std::atomic<bool> stopping_{false};  // close() was called (read without mu_)
  std::optional<clock::time_point> armed_;  // what the reader sleeps until
  std::uint64_t ids_at_tick_ = 0;           // next_id_ when the reader last armed idle_tick
  bool stop_ = false;
  bool closed_ = false;
  std::string why_;
  std::optional<subprocess::exit_status> status_;
  // call_sync() (all mu_)
  std::size_t sync_pending_ = 0;    // entries of pending_ that are call_sync()s
  std::size_t sync_callers_ = 0;    // threads inside call_sync()
  bool direct_active_ = false;      // one of them reads the socket
  bool watching_ = true;            // the reader thread polls the socket
  bool exit_seen_ = false;          // the reader saw the pidfd while a caller read
  std::optional<clock::time_point> last_sync_end_;
  // the reader thread's queue (mu_)
  std::vector<std::function<void()>> deferred_;
  std::thread::id reader_id_;
  bool reader_exited_ = false;
  bool timed_recv_ = false;  // set once in start()
  std::atomic<bool> backlog_{false};  // complete lines left buffered (read lock)
  std::thread reader_;
};

namespace detail {
inline client& as_client(client& c) noexcept { return c; }
inline client& as_client(client* c) noexcept { return *c; }
inline client& as_client(const std::unique_ptr<client>& c) noexcept { return *c; }
inline client& as_client(std::reference_wrapper<client> c) noexcept { return c.get(); }
inline channel& as_channel(const std::unique_ptr<channel>& c) noexcept { return *c; }
}  // namespace detail

// Calls the same method on every client in the range (of client&, client*,
// std::unique_ptr<client> or std::reference_wrapper<client>): one future per client,
// in order. A client whose peer is gone gives a failed future; the others still run.
template <std::ranges::input_range R>
std::vector<std::future<json>> call_all(R&& clients, std::string_view method, const json& params,
                                        std::chrono::milliseconds timeout) {
  std::vector<std::future<json>> fs;
  for (auto&& c : clients) fs.push_back(detail::as_client(c).call(method, params, timeout));
  return fs;
}

// ---------------------------------------------------------------------------------
// heartbeat: is the peer still answering?

struct beat {
  std::uint64_t number = 0;                // 1, 2, 3, ...
  std::chrono::microseconds latency{0};    // round trip of this ping
  json reply = nullptr;                    // what the peer answered
};

struct heartbeat_options {
  std::chrono::milliseconds interval = std::chrono::seconds(1);  // one ping per interval
  std::chrono::milliseconds timeout = std::chrono::seconds(3);   // silence that counts as unresponsive
  std::string method = "rpc.heartbeat";                          // serve() answers it by itself
  std::function<void(const beat&)> on_beat = {};
  std::function<void(std::chrono::milliseconds silent_for)> on_unresponsive = {};
};

// Pings a client's peer every interval (the first ping at once) with a call to
// `method` and measures each round trip. When no answer has arrived for longer than
// `timeout` (a hung, stopped or dead peer), on_unresponsive is called, once per
// silence: an answer arriving later makes the peer responsive again. Detection takes
// at most timeout plus a few milliseconds after the last answer.
//
//   sp::ipc::heartbeat hb(worker, {.interval = 1s, .timeout = 3s,
//       .on_beat = [](const sp::ipc::beat& b) { log(b.latency); },
//       .on_unresponsive = [&](auto silent) { restart(worker); }});
//
// It runs one thread of its own; both callbacks run on it (so they may call the
// client, but must not destroy the heartbeat). Stop it (or destroy it) before the
// client: declare it after the client.
class heartbeat {
 public:
  heartbeat(client& c, heartbeat_options opts)
      : c_(c), opts_(std::move(opts)), sh_(std::make_shared<shared>()) {
    if (opts_.interval <= std::chrono::milliseconds::zero() ||
        opts_.timeout <= std::chrono::milliseconds::zero())
      throw argument_error(c.name(), "heartbeat: interval and timeout must be positive");
    opts_.interval = subprocess::detail::clamp_forever(opts_.interval);  // no overflow in next +=
    opts_.timeout = subprocess::detail::clamp_forever(opts_.timeout);
    sh_->last_reply = std::chrono::steady_clock::now();
    thread_ = std::thread([this] { run(); });
  }
  heartbeat(const heartbeat&) = delete;
  heartbeat& operator=(const heartbeat&) = delete;
  ~heartbeat() { stop(); }

  // Stops pinging; idempotent. Callbacks do not run after it returns.
  void stop() {
    {
      std::lock_guard lk(sh_->mu);
      sh_->stop = true;
    }
    sh_->cv.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }
  // False from on_unresponsive until the next answer.
  bool responsive() const {
    std::lock_guard lk(sh_->mu);
    return !sh_->reported;
  }
  // Answers received.
  std::uint64_t beats() const {
    std::lock_guard lk(sh_->mu);
    return sh_->beats;
  }
  std::optional<std::chrono::microseconds> last_latency() const {
    std::lock_guard lk(sh_->mu);
    return sh_->last_latency;
  }

 private:
  // Shared with the reply callbacks, which may outlive the heartbeat.
  struct shared {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<beat> arrived;
    std::chrono::steady_clock::time_point last_reply;
    bool stop = false;
    bool reported = false;  // on_unresponsive called for the current silence
    std::uint64_t beats = 0;
    std::optional<std::chrono::microseconds> last_latency;
  };

  void run() {
    using sclock = std::chrono::steady_clock;
    auto next = sclock::now();
    std::uint64_t seq = 0;
    std::unique_lock lk(sh_->mu);
    for (;;) {
      while (!sh_->arrived.empty()) {
        auto got = std::move(sh_->arrived);
        sh_->arrived.clear();
        lk.unlock();
        if (opts_.on_beat)
          for (const auto& b : got) opts_.on_beat(b);
        lk.lock();
      }
      if (sh_->stop) return;
      auto now = sclock::now();
      if (now >= next) {
        const std::uint64_t n = ++seq;
        lk.unlock();
        auto sent = sclock::now();
        std::weak_ptr<shared> w = sh_;
        c_.call(opts_.method, json{{"beat", n}}, opts_.timeout, [w, n, sent](reply r) {
          auto sh = w.lock();
          if (!sh || !r.ok()) return;
          auto at = sclock::now();
          std::lock_guard g(sh->mu);
          auto lat = std::chrono::duration_cast<std::chrono::microseconds>(at - sent);
          sh->arrived.push_back(beat{n, lat, std::move(r.result)});
          sh->last_reply = at;
          sh->reported = false;
          ++sh->beats;
          sh->last_latency = lat;
          sh->cv.notify_all();
        });
        lk.lock();
        next += opts_.interval;
        if (next <= now) next = now + opts_.interval;  // fell behind: do not burst
        continue;
      }
      auto silent_until = sh_->last_reply + opts_.timeout;
      if (!sh_->reported && now > silent_until) {
        sh_->reported = true;
        auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - sh_->last_reply);
        lk.unlock();
        if (opts_.on_unresponsive) opts_.on_unresponsive(silent);
        lk.lock();
        continue;
      }
      auto wake_at = next;
      if (!sh_->reported) wake_at = std::min(wake_at, silent_until + std::chrono::milliseconds(1));
      sh_->cv.wait_until(lk, wake_at, [&] { return sh_->stop || !sh_->arrived.empty(); });
    }
  }

  client& c_;
  heartbeat_options opts_;
  std::shared_ptr<shared> sh_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------
// attach: a channel in an event loop.

struct channel_callbacks {
  std::function<void(json)> on_message = {};
  // Bad input (a malformed or oversized message). An oversized message also ends the
  // channel: on_close follows.
  std::function<void(const channel_error&)> on_error = {};
  // The peer is gone and every message was delivered. The channel is unwatched. If
  // the peer died in the middle of a message, the channel's end_error() says so.
  std::function<void()> on_close = {};
};

// Watches a channel in an event loop: any Loop with
//   id watch(int fd, std::uint32_t epoll_events, fn(std::uint32_t revents))
//   void unwatch(id)
// (level-triggered, unwatch allowed from inside a callback), such as sp::event_loop:
//
//   sp::event_loop loop;
//   auto a = sp::ipc::attach(loop, ch, {.on_message = [&](sp::ipc::json m) { ... }});
//   loop.run();   // returns once the peer has gone (on_close) and nothing else is left
// Messages go to on_message on the loop's thread; send() never blocks: what the socket
// cannot take now is written when it becomes writable. The channel must outlive the
// attachment. Do not destroy the attachment from one of its callbacks; detach() it.
template <class Loop>
class attachment {
 public:
  attachment(Loop& loop, channel& ch, channel_callbacks cb)
      : loop_(loop), ch_(ch), cb_(std::move(cb)) {
    if (!ch_.is_open()) throw argument_error(ch_.name(), "attach: the channel is not open");
    watch(ch_.wants_write());
  }
  attachment(const attachment&) = delete;
  attachment& operator=(const attachment&) = delete;
  ~attachment() { detach(); }

  // Sends without blocking (channel::post); throws channel_error if the peer is gone.
  void send(const json& msg) {
    if (!ch_.post(msg) && !out_ && watching_) watch(true);
  }
  // Stops watching (the channel stays open).
  void detach() {
    if (watching_) loop_.unwatch(id_);
    watching_ = false;
  }
  bool attached() const noexcept { return watching_; }

 private:
  using id_type = decltype(std::declval<Loop&>().watch(
      0, std::uint32_t{}, std::declval<std::function<void(std::uint32_t)>>()));

  void watch(bool out) {
    if (watching_) loop_.unwatch(id_);
    watching_ = false;  // stays false if watch() throws (epoll_ctl: ENOMEM, ENOSPC)
    std::uint32_t ev = EPOLLIN | (out ? std::uint32_t{EPOLLOUT} : 0u);
    id_ = loop_.watch(ch_.fd(), ev, std::function<void(std::uint32_t)>(
                                        [this](std::uint32_t revents) { ready(revents); }));
    watching_ = true;
    out_ = out;
  }
  void error(const channel_error& e) {
    if (cb_.on_error) cb_.on_error(e);
  }
  void ready(std::uint32_t revents) {
    if (revents & EPOLLOUT) {
      try {
        if (ch_.flush()) watch(false);
      } catch (const channel_error& e) {
        watch(false);  // the peer is gone: reading reports the end
        error(e);
      }
    }
    if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) || !watching_) return;
    ch_.read_available();
    for (;;) {
      try {
        auto m = ch_.try_receive();
        if (!m) break;
        if (cb_.on_message) cb_.on_message(std::move(*m));
      } catch (const channel_error& e) {
        error(e);
      }
      if (!watching_) return;  // a callback detached us
    }
    if (ch_.eof()) {
      detach();
      if (cb_.on_close) cb_.on_close();
    }
  }

  Loop& loop_;
  channel& ch_;
  channel_callbacks cb_;
  id_type id_{};
  bool watching_ = false;
  bool out_ = false;
};

template <class Loop>
std::unique_ptr<attachment<Loop>> attach(Loop& loop, channel& ch, channel_callbacks cb) {
  return std::make_unique<attachment<Loop>>(loop, ch, std::move(cb));
}

// ---- printing: one line each ------------------------------------------------------
// operator<< only: fmt.hpp does not include this header (it would force nlohmann/json
// on every fmt user); with fmt, print these through fmt::streamed(x) (<fmt/ostream.h>).

// "delivered 3, failed 1 (channel 2: <what>)": each failed channel's index (in the
// order given) and error.
inline std::string to_string(const broadcast_result& r) {
  std::string t = "delivered " + std::to_string(r.delivered) + ", failed " + std::to_string(r.failed.size());
  if (r.failed.empty()) return t;
  t += " (";
  for (std::size_t i = 0; i < r.failed.size(); ++i) {
    if (i) t += "; ";
    t += "channel " + std::to_string(r.failed[i].first) + ": ";
    try {
      if (r.failed[i].second) std::rethrow_exception(r.failed[i].second);
      t += "unknown error";
    } catch (const std::exception& e) {
      t += e.what();
    } catch (...) {
      t += "unknown error";
    }
  }
  return t + ")";
}
// "beat 3: 412 us" (the ping's number and round trip; the reply is not printed).
inline std::string to_string(const beat& b) {
  return "beat " + std::to_string(b.number) + ": " + std::to_string(b.latency.count()) + " us";
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const broadcast_result& r) {
  return subprocess::detail::put_text(os, to_string(r));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const beat& b) {
  return subprocess::detail::put_text(os, to_string(b));
}

}  // namespace subprocess::ipc
