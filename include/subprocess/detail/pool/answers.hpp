// subprocess/detail/pool/answers.hpp - reads a worker's channel: matches each
// answer to its task in flight (by JSON-RPC id, or by order with the plain protocol),
// settles that task, and tells a bad answer (one task fails) from garbage (the worker
// is broken). Not public API.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <sys/epoll.h>

#include "../../error.hpp"
#include "../../ipc.hpp"
#include "../../pool/options.hpp"
#include "engine.hpp"
#include "outbox.hpp"
#include "scaler.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class answer_reader {
 public:
  answer_reader(const pool_options& o, outbox& out, scaler& sc, engine& owner)
      : opts_(o), out_(out), scaler_(sc), owner_(owner) {}

  // The channel is ready: writes what waits, then one read per wake-up
  // (level-triggered: a busy worker cannot starve the others). True if the channel
  // has ended.
  bool readable(worker_link& w, std::uint32_t ev) {
    if (ev & EPOLLOUT) w.flush();
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return false;
    w.ch.read_available();
    drain(w);
    return w.ch.eof();
  }

  // Takes every message the socket holds now (answers sent before it died are still
  // results).
  void read_all(worker_link& w) {
    if (!w.ch.is_open()) return;
    while (w.ch.read_available() > 0) drain(w);
    drain(w);
  }

 private:
  bool plain() const noexcept { return opts_.protocol == worker_protocol::plain; }

  // Decodes the complete messages buffered. Each one is a sign of life (last_heard);
  // a partial line is not, so a worker dribbling bytes without ever finishing a
  // message still misses its heartbeat. The partial line is bounded by
  // max_message_size: beyond it the channel reports an oversized message and the
  // worker is killed as malformed.
  void drain(worker_link& w) {
    bool heard = false;
    for (;;) {
      try {
        if (plain()) {
          auto m = w.ch.try_receive();
          if (!m) break;
          heard = true;
          incoming_plain(w, std::move(*m));
          continue;
        }
        if (!w.ch.try_receive_rpc(msg_)) break;
      } catch (const ipc::channel_error& e) {
        if (e.code() != errc::protocol_error) break;  // died mid-message: its exit says more
        const bool taking = w.taking();
        if (w.ch.eof()) {
          // The channel is finished: an oversized message (longer than
          // max_message_size: the channel shut itself down), or a bad line was the
          // peer's last. Its task fails with the error; the worker is of no more use.
          if (taking) {
            bad_answer(w, e, false);
            owner_.kill(w, stop_why::hung, std::string("killed: ") + e.what());
          }
          break;
        }
        heard = true;  // a whole line, if not a good one
        // One answer that cannot be decoded fails its task; the worker stays.
        if (taking && bad_answer(w, e, true)) continue;
        // Anything else malformed (a stray printf, a corrupted peer, a flood) means the
        // worker is broken: killed and replaced; its tasks are retried like a crashed
        // worker's.
        if (taking)
          owner_.kill(w, stop_why::hung,
                      "killed: a malformed message on its channel (" + e.sample() + ")");
        break;  // on its way out: the rest is garbage too (and costly to parse)
      }
      heard = true;
      incoming(w, msg_);
    }
    if (heard) w.last_heard = clock::now();
  }

  // A line that failed to decode, attributed to a task in flight: with the plain
  // protocol the next message is the answer to the oldest task; with JSON-RPC the line
  // must show the id of a task in flight ("id":N within its first 64 bytes, where
  // serve() and Node put it). That task fails with the channel_error; true then.
  bool bad_answer(worker_link& w, const ipc::channel_error& e, bool kept) {
    if (w.in_flight.empty()) return false;
    auto it = w.in_flight.begin();
    if (!plain()) {
      auto id = top_level_id(e.sample());
      if (!id) return false;
      it = std::find_if(w.in_flight.begin(), w.in_flight.end(),
                        [&](const sent_task& t) { return t.rpc_id == *id; });
      if (it == w.in_flight.end()) return false;
    }
    task_ptr t = answered(w, it);
    const std::string what = "task " + std::to_string(t->id) + " ('" + t->method +
                             "') failed: worker " + std::to_string(w.pid) +
                             " answered with a message that cannot be decoded: " + e.what() +
                             (kept ? " (the worker was kept)" : " (the worker was killed)");
    out_.fail(std::move(t), std::make_exception_ptr(ipc::channel_error(
                                errc::protocol_error, opts_.name, what, e.sample())));
    if (kept) drained(w);
    return true;
  }

  // The value of the "id" key of the top-level object in the first bytes of a line
  // (a channel_error's sample: bytes that are not printable ASCII, and '\\', are
  // written \xNN). Keys of nested objects, and text inside strings, do not count.
  static std::optional<std::uint64_t> top_level_id(std::string_view s) {
    if (s.empty() || s[0] != '{') return std::nullopt;
    int depth = 0;
    bool in_string = false, key_next = false;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (c == '\\') {  // \xNN: one original byte; a backslash escapes the next one
        const bool backslash = s.substr(i, 4) == "\\x5c";
        i += 3;
        if (backslash && in_string && i + 1 < s.size()) i += s[i + 1] == '\\' ? 4 : 1;
        continue;
      }
      if (in_string) {
        if (c == '"') in_string = false;
        continue;
      }
      if (c == '"') {
        if (depth == 1 && key_next && s.substr(i, 4) == "\"id\"") {
          std::size_t k = i + 4;
          while (k < s.size() && (s[k] == ' ' || s[k] == ':')) ++k;
          std::uint64_t id = 0;
          std::size_t digits = 0;
          for (; k < s.size() && s[k] >= '0' && s[k] <= '9' && digits < 19; ++k, ++digits)
            id = id * 10 + static_cast<std::uint64_t>(s[k] - '0');
          if (digits == 0 || k == s.size() || (s[k] != ',' && s[k] != '}' && s[k] != ' '))
            return std::nullopt;
          return id;
        }
        in_string = true;
        key_next = false;
        continue;
      }
      if (c == '{' || c == '[') {
        ++depth;
        key_next = c == '{';
      } else if (c == '}' || c == ']') {
        --depth;
      } else if (c == ',') {
        key_next = depth == 1;
      } else if (c == ':') {
        key_next = false;
      }
    }
    return std::nullopt;
  }

  task_ptr answered(worker_link& w, std::deque<sent_task>::iterator it) {
    scaler_.heard_answer();
    return w.answered(it);
  }

  // A recycled worker that has answered its last task is closed.
  static void drained(worker_link& w) {
    if (w.state == wstate::draining && w.in_flight.empty()) w.close(stop_why::recycled);
  }

  // worker_protocol::plain: the message is the answer to the oldest task, or, with
  // none in flight, a message of the worker's own (on_message).
  void incoming_plain(worker_link& w, json m) {
    if (w.in_flight.empty()) {
      if (out_.wants_messages()) out_.message(w.pid, std::move(m));
      return;
    }
    out_.succeed(answered(w, w.in_flight.begin()), std::move(m));
    drained(w);
  }

  void incoming(worker_link& w, ipc::channel::rpc_message& m) {
    using kind = ipc::channel::rpc_message::kind;
    if (m.k == kind::response) {
      if (m.id.is_number_unsigned()) {
        const auto id = m.id.get<std::uint64_t>();
        if (id == w.hb_id) {
          w.hb_id = 0;
          scaler_.heard_answer();
          return;
        }
        auto it = std::find_if(w.in_flight.begin(), w.in_flight.end(),
                               [id](const sent_task& s) { return s.rpc_id == id; });
        if (it == w.in_flight.end()) return;  // an answer we no longer wait for
        task_ptr t = answered(w, it);
        if (!m.error.is_null()) {
          auto err = rpc_failure(m.error, w, *t);
          out_.fail(std::move(t), err);
        } else {
          out_.succeed(std::move(t), std::move(m.result));
        }
        drained(w);
        return;
      }
    }
    if (!out_.wants_messages()) return;
    json whole;  // the message as the worker sent it, less "jsonrpc"
    if (m.k == kind::other) {
      whole = std::move(m.whole);
    } else {
      whole = json::object();
      if (m.has_id) whole["id"] = m.id;
      if (m.k == kind::request) {
        whole["method"] = m.method;
        if (!m.params.is_null()) whole["params"] = std::move(m.params);
      } else if (!m.error.is_null()) {
        whole["error"] = std::move(m.error);
      } else {
        whole["result"] = std::move(m.result);
      }
    }
    out_.message(w.pid, std::move(whole));
  }

  // The worker answered with a JSON-RPC error object (or something else in its place).
  std::exception_ptr rpc_failure(const json& e, const worker_link& w, const task& t) const {
    int code = ipc::rpc_error::internal_error;
    std::string message = "(no message)";
    json data = nullptr;
    if (e.is_object()) {
      if (auto c = e.find("code"); c != e.end() && c->is_number_integer()) code = c->get<int>();
      if (auto s = e.find("message"); s != e.end() && s->is_string())
        message = s->get<std::string>();
      if (auto d = e.find("data"); d != e.end()) data = *d;
    } else {
      message = e.dump();
    }
    return std::make_exception_ptr(ipc::rpc_error(code, std::move(message), std::move(data),
                                                  opts_.name + " (worker " + std::to_string(w.pid) + ")",
                                                  t.method, t.id));
  }

  const pool_options& opts_;
  outbox& out_;
  scaler& scaler_;
  engine& owner_;
  ipc::channel::rpc_message msg_;  // reused for every message read
};

}  // namespace subprocess::detail::pool
