// subprocess/pool/options.hpp - how a worker_pool behaves: pool_options and its policies.
// Part of pool.hpp (include that); needs nlohmann/json.
//
// Every field has a default that suits a small pool of serve() workers: one worker,
// one task at a time per worker, heartbeats every second, no retries, no task
// timeout. The notes above class worker_pool (pool.hpp) say what each setting does.
//
//   ```cpp
//   sp::pool_options o{.min_workers = 2, .max_workers = 8, .max_in_flight = 4};
//   o.task_timeout = 30s;
//   o.max_retries = 1;   // only for idempotent tasks
//   o.on_event = [](const sp::pool_event& e) { std::cout << e << "\n"; };
//   std::cout << o.dispatch << " " << sp::to_string(o.protocol) << "\n";   // least_busy json_rpc
//   ```
//
// Contract: plain values; the worker_pool constructor checks them (argument_error
// naming the setting: negative durations, max_workers < min_workers, max_in_flight
// 0, or more than 1 with worker_protocol::plain). Durations up to milliseconds::max()
// mean "for ever". on_event and on_message run on the pool's I/O thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <iosfwd>
#include <string>

#include <sys/types.h>

#include "../detail/printing.hpp"
#include "../ipc.hpp"
#include "events.hpp"

namespace subprocess {

// Dispatch. A task goes to a worker with room: fewer than max_in_flight tasks of the
// pool's in flight on it. least_busy (default) picks the worker with the fewest tasks
// in flight, rotating among equals, so idle workers are used first; round_robin takes
// the next worker with room in a fixed cycle. max_in_flight = 1 (default) sends a
// worker its next task only once it has answered the last one. A larger value
// pipelines: the worker finds its next request already waiting when it finishes one,
// which hides the round trip and lets one send(2)/recv(2) carry many tasks. A serve()
// worker still runs its tasks one at a time, in order; a Node worker may run them
// concurrently.
enum class dispatch_policy { least_busy, round_robin };
enum class queue_full_policy { block, fail };
enum class shutdown_mode { finish, cancel };
// The protocol a worker speaks (options.protocol), one JSON message per line:
//   json_rpc (default): the pool sends {"jsonrpc":"2.0","id":N,"method":M,"params":P}
//     (submit(M, P)); the worker answers {"jsonrpc":"2.0","id":N,"result":R} or
//     {"jsonrpc":"2.0","id":N,"error":{"code":C,"message":S}}, with the same id, in
//     any order. It must also answer the pool's pings the same way: requests with
//     method "rpc.heartbeat" (params {"beat":N}; any result will do). serve() does all
//     of this; tests/ipc/rpc_worker.js is the same in 30 lines of Node. A worker that
//     cannot answer pings needs heartbeat_interval = 0 (or the plain protocol).
//     Messages that are not answers go to options.on_message.
//   plain: for workers that know nothing of JSON-RPC, written the way Node course
//     workers are: process.on('message', m => process.send(result)). The pool sends
//     P itself (any JSON value; M only names the task in errors and events), and the
//     worker's next message is the answer, whatever it holds. Answers carry no id, so
//     max_in_flight must be 1 (the constructor refuses more); no heartbeats are sent
//     (heartbeat_interval is ignored: use task_timeout against hangs); a worker
//     cannot fail a task other than by what its answer says.
//     The rule: a plain worker sends nothing but answers, exactly one per message
//     received, in order. A message of its own (a {ready: true} at start, a progress
//     note) that arrives while a task is in flight IS taken as that task's answer,
//     and every later answer of that worker then goes to the task before it. Only a
//     message arriving when nothing is in flight goes to on_message, and whether
//     something is in flight is a race. Workers that talk on their own need json_rpc
//     (their own messages carry no id, so they go to on_message, never to a task).
enum class worker_protocol {
  json_rpc,  // JSON-RPC 2.0 requests and answers matched by id; heartbeats
  plain,     // the message is params itself, the worker's next message is the answer
};


struct pool_options {
  std::size_t min_workers = 1;
  // 0: the same as min_workers (a fixed-size pool).
  std::size_t max_workers = 0;
  dispatch_policy dispatch = dispatch_policy::least_busy;
  // Tasks sent to one worker before it has answered (1: one at a time).
  std::size_t max_in_flight = 1;
  // json_rpc (default) or plain (Node's process.on('message') / process.send()
  // workers that know nothing of JSON-RPC; needs max_in_flight = 1, no heartbeats).
  worker_protocol protocol = worker_protocol::json_rpc;
  // Scale up at most once per cooldown.
  std::chrono::milliseconds scale_up_cooldown = std::chrono::milliseconds(100);
  // Retire a worker idle this long (never below min_workers).
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(10);
  // Ping a worker not heard from for this long; 0 turns heartbeats off (always off
  // with worker_protocol::plain).
  std::chrono::milliseconds heartbeat_interval = std::chrono::seconds(1);
  // A ping unanswered this long: the worker is hung (killed and replaced).
  std::chrono::milliseconds heartbeat_timeout = std::chrono::seconds(3);
  // A task unanswered this long fails; its worker is killed (see "Task timeout" at
  // worker_pool). 0: none.
  std::chrono::milliseconds task_timeout = std::chrono::milliseconds(0);
  // Times a task is sent again after its worker died with it. 0 by default: a task
  // that ran partway on a worker that died may not be safe to run twice (a payment, a
  // file append); opt in for idempotent tasks.
  unsigned max_retries = 0;
  // Recycle a worker after this many tasks; 0: never.
  std::size_t max_tasks_per_worker = 0;
  // At most this many tasks wait for a worker; 0: no limit.
  std::size_t max_queue = 0;
  queue_full_policy when_full = queue_full_policy::block;
  // For the destructor's shutdown, and for a retired or recycled worker to exit after
  // its channel is closed (then SIGTERM).
  std::chrono::milliseconds shutdown_grace = std::chrono::seconds(5);
  // After that grace, a worker still running gets SIGTERM, and SIGKILL this much later.
  std::chrono::milliseconds term_grace = std::chrono::seconds(1);
  // Pool events (see pool_event_kind); runs on the I/O thread.
  std::function<void(const pool_event&)> on_event = {};
  // Messages from a worker that are not answers (its own notifications); I/O thread.
  std::function<void(pid_t, const ipc::json&)> on_message = {};
  // Bytes a worker's single message may have (ipc::channel_options::max_message_size).
  std::size_t max_message_size = ipc::default_max_message_size;
  // What the pool is called in errors; default: the worker command line.
  std::string name = {};
};

inline const char* to_string(dispatch_policy d) noexcept {
  return d == dispatch_policy::least_busy ? "least_busy" : d == dispatch_policy::round_robin ? "round_robin" : "unknown";
}
inline const char* to_string(queue_full_policy q) noexcept {
  return q == queue_full_policy::block ? "block" : q == queue_full_policy::fail ? "fail" : "unknown";
}
inline const char* to_string(shutdown_mode m) noexcept {
  return m == shutdown_mode::finish ? "finish" : m == shutdown_mode::cancel ? "cancel" : "unknown";
}
inline const char* to_string(worker_protocol p) noexcept {
  return p == worker_protocol::json_rpc ? "json_rpc" : p == worker_protocol::plain ? "plain" : "unknown";
}

template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, dispatch_policy d) {
  return detail::put_text(os, to_string(d));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, queue_full_policy q) {
  return detail::put_text(os, to_string(q));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, shutdown_mode m) {
  return detail::put_text(os, to_string(m));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, worker_protocol p) {
  return detail::put_text(os, to_string(p));
}

}  // namespace subprocess
