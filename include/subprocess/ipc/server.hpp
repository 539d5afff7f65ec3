// subprocess/ipc/server.hpp - the answering side: serve() answers JSON-RPC 2.0
// requests on a channel (the loop of a worker process), broadcast() sends one message
// to many channels. Needs nlohmann/json (CMake target subprocess::ipc).
//
// Requests are {"jsonrpc":"2.0","id":7,"method":"add","params":{"a":1,"b":2}}; the
// answer is {"jsonrpc":"2.0","id":7,"result":3} or {..."error":{"code":-32601,
// "message":"Method not found: 'add'","data":...}}. Any program that reads and writes
// these shapes over the channel (a Node worker with process.on('message') and
// process.send()) is a peer.
//
//   ```cpp
//   auto ch = sp::ipc::connect_to_parent();   // a worker, started with .ipc()
//   std::size_t answered = sp::ipc::serve(ch, {
//       {"add", [](const sp::ipc::json& p) -> sp::ipc::json { return p["a"].get<int>() + p["b"].get<int>(); }},
//       {"fail", [](const sp::ipc::json&) -> sp::ipc::json { throw sp::ipc::rpc_error(-32602, "no"); }},
//   });                                       // returns when the parent closes the channel
//   std::vector<sp::ipc::channel> workers;    // the parent side: one message to all
//   sp::ipc::broadcast_result r = sp::ipc::broadcast(workers, {{"type", "reload"}});
//   ```
//
// Errors: serve() throws nothing for the peer's mistakes: it answers them (see the
// table at serve()) and reports them to serve_options::on_error; it returns when the
// peer goes away. broadcast() reports failed channels in its result, never throws
// for them. Blocking: both block (serve() until the channel ends; broadcast() until
// every channel took the message or failed). Threads: serve() runs handlers on the
// calling thread, one at a time, plus one thread of its own for heartbeats (see
// serve()). Cost: requests are decoded without a json object for their envelope;
// answers to requests that arrived together go out in one send(2).
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <ranges>
#include <string>
#include <utility>
#include <vector>

#include "../detail/poll.hpp"
#include "../detail/printing.hpp"
#include "channel.hpp"
#include "common.hpp"
#include "detail/envelope.hpp"
#include "detail/watchdog.hpp"

namespace subprocess::ipc {

// ---------------------------------------------------------------------------------
// broadcast: one message to many channels.

struct broadcast_result {
  std::size_t delivered = 0;
  // Index (in the order given) and error of each channel that failed.
  std::vector<std::pair<std::size_t, std::exception_ptr>> failed = {};
  bool ok() const noexcept { return failed.empty(); }
};

}  // namespace subprocess::ipc

namespace subprocess::detail::ipc_wire {
using subprocess::ipc::channel;
inline channel& as_channel(channel& c) noexcept { return c; }
inline channel& as_channel(channel* c) noexcept { return *c; }
inline channel& as_channel(std::reference_wrapper<channel> c) noexcept { return c.get(); }
inline channel& as_channel(const std::unique_ptr<channel>& c) noexcept { return *c; }
}  // namespace subprocess::detail::ipc_wire

namespace subprocess::ipc {

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
    channel& ch = detail::ipc_wire::as_channel(c);
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
                              detail::ipc_wire::describe(ch->name()) + ": cannot send: the channel is closed");
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
// JSON-RPC 2.0, the server side.

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

}  // namespace subprocess::ipc

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::handler_map;
using subprocess::ipc::rpc_error;

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

}  // namespace subprocess::detail::ipc_wire

namespace subprocess::ipc {

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
  std::optional<detail::ipc_wire::serve_watchdog> watchdog;
  if (builtin_heartbeat) watchdog.emplace(ch);
  std::deque<detail::ipc_wire::serve_watchdog::item> backlog;  // read by the watchdog
  auto done = [&] { return answered + (watchdog ? watchdog->beats_answered() : 0); };
  // User code (handlers, on_message, on_error) runs between enter() and leave().
  struct in_handler {
    std::optional<detail::ipc_wire::serve_watchdog>& w;
    std::deque<detail::ipc_wire::serve_watchdog::item>& backlog;
    explicit in_handler(std::optional<detail::ipc_wire::serve_watchdog>& wd,
                        std::deque<detail::ipc_wire::serve_watchdog::item>& b)
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
      if (!reply_json(detail::ipc_wire::rpc_failure(nullptr, rpc_error::parse_error, "Parse error",
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
      if (detail::ipc_wire::is_builtin_heartbeat(m, builtin_heartbeat)) {
        if (!queue([&] { ch.enqueue_response(m.id, detail::ipc_wire::heartbeat_result()); })) return done();
        continue;
      }
      detail::ipc_wire::outcome o;
      {
        in_handler h(watchdog, backlog);
        o = detail::ipc_wire::run_handler(m.method, m.params, handlers);
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
    } else if (m.k == kind::other && detail::ipc_wire::is_request(m.whole)) {  // e.g. a method that is not a string
      ++answered;
      std::optional<json> r;
      {
        in_handler h(watchdog, backlog);
        r = detail::ipc_wire::answer(m.whole, handlers);
      }
      if (r && !reply_json(*r)) return done();
    } else if (m.k == kind::other && m.whole.is_array() && !m.whole.empty() &&
               std::any_of(m.whole.begin(), m.whole.end(), [](const json& x) { return detail::ipc_wire::is_request(x); })) {
      json replies = json::array();
      {
        in_handler h(watchdog, backlog);
        for (const auto& req : m.whole) {
          ++answered;
          if (auto r = detail::ipc_wire::answer(req, handlers)) replies.push_back(std::move(*r));
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

// ---- printing: one line ----------------------------------------------------------
// operator<< only: fmt.hpp does not include this header (it would force nlohmann/json
// on every fmt user); with fmt, print it through fmt::streamed(x) (<fmt/ostream.h>).

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
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const broadcast_result& r) {
  return subprocess::detail::put_text(os, to_string(r));
}

}  // namespace subprocess::ipc
