// subprocess/ipc/client.hpp - calls methods of the process at the other end of a
// channel (JSON-RPC 2.0): futures, callbacks or a blocking call_sync(), each with a
// timeout. Needs nlohmann/json (CMake target subprocess::ipc).
//
//   ```cpp
//   auto p = sp::command::self({"--worker"}).ipc().spawn();   // the worker runs ipc::serve()
//   sp::ipc::client calc(p);                                   // takes p's channel
//   sp::ipc::json sum = calc.call_sync("add", {{"a", 5}, {"b", 3}}, 5s);
//   std::future<sp::ipc::json> f = calc.call("add", {{"a", 5}, {"b", 3}}, 5s);
//   calc.notify("log", {{"text", "hi"}});                      // no answer expected
//   std::cout << sum << ' ' << f.get() << '\n';
//   calc.close();                                              // the worker sees the end
//   p.wait();
//   ```
//
// Errors: a call's future (or call_sync()) throws rpc_error (the peer answered an
// error), call_timeout_error, or channel_error (the peer went away; status() says how
// it ended when the client was built from the process). argument_error for params
// that are not an object, an array or null, or a timeout that is not positive.
// Blocking: call(), notify() never block (what the socket cannot take now is written
// later); call_sync() and a future's get() wait for the answer. Threads: everything
// may be called from any thread; one reader thread per client runs the callbacks.
// Cost: a call is one send(2); call_sync() reads the answer on the calling thread,
// without a thread hand-off. The details are at class client.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "../detail/deadline.hpp"
#include "../detail/mapped_buffer.hpp"
#include "../detail/syscall.hpp"
#include "../error.hpp"
#include "../process.hpp"
#include "channel.hpp"
#include "common.hpp"
#include "detail/client_reader.hpp"
#include "detail/envelope.hpp"

namespace subprocess::ipc {

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
//
// Built in layers (ipc/detail/): call_book.hpp keeps the calls in flight and ends
// each one; client_reader.hpp reads the channel (through channel::reader) on the
// reader thread or on a call_sync() caller; this class is the API.
class client : private detail::ipc_wire::client_reader {
 public:
  explicit client(channel ch, client_options opts = {}) : client_reader(std::move(ch), std::move(opts)) {
    start();
  }
  // Takes p's channel and watches p's exit (through a copy of its pidfd). p must
  // outlive nothing here: the client keeps working after p is destroyed.
  explicit client(process& p, client_options opts = {}) : client_reader(channel(p), std::move(opts)) {
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
    subprocess::detail::mapped_buffer b;
    detail::ipc_wire::append_request(b, id, method, params, name_);
    b.push_back('\n');
    return encoded(std::move(b));
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
};

}  // namespace subprocess::ipc

namespace subprocess::detail::ipc_wire {
using subprocess::ipc::client;
inline client& as_client(client& c) noexcept { return c; }
inline client& as_client(client* c) noexcept { return *c; }
inline client& as_client(const std::unique_ptr<client>& c) noexcept { return *c; }
inline client& as_client(std::reference_wrapper<client> c) noexcept { return c.get(); }
}  // namespace subprocess::detail::ipc_wire

namespace subprocess::ipc {

// Calls the same method on every client in the range (of client&, client*,
// std::unique_ptr<client> or std::reference_wrapper<client>): one future per client,
// in order. A client whose peer is gone gives a failed future; the others still run.
template <std::ranges::input_range R>
std::vector<std::future<json>> call_all(R&& clients, std::string_view method, const json& params,
                                        std::chrono::milliseconds timeout) {
  std::vector<std::future<json>> fs;
  for (auto&& c : clients) fs.push_back(detail::ipc_wire::as_client(c).call(method, params, timeout));
  return fs;
}

}  // namespace subprocess::ipc
