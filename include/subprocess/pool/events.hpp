// subprocess/pool/events.hpp - what a worker_pool tells you: events and statistics.
// Part of pool.hpp (include that).
//
// pool_options::on_event receives a pool_event for each thing that happens to the
// workers (started, crashed, hung, recycled, retired) and to tasks (retried, timed
// out); worker_pool::stats() returns a pool_stats: counters since the start and the
// current state, taken together. Each prints as one readable line.
//
//   ```cpp
//   sp::pool_event ev{.kind = sp::pool_event_kind::worker_crashed, .pid = 4242, .workers = 3,
//                     .message = "worker 4242 killed by SIGKILL"};
//   std::cout << ev << "\n";   // worker_crashed (workers 3): worker 4242 killed by SIGKILL
//   sp::pool_stats s;
//   s.completed = 120;
//   std::cout << sp::to_string(s) << "\n";   // workers 0 (busy 0, idle 0), queued 0, completed 120, ...
//   ```
//
// Contract: plain values, no I/O, no locks; events are delivered on the pool's I/O
// thread (see pool.hpp), a stats() snapshot may be read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>

#include <sys/types.h>

#include "../detail/printing.hpp"
#include "../exit_status.hpp"

namespace subprocess {

enum class pool_event_kind {
  worker_started,   // a worker process was started
  worker_stopped,   // a worker the pool asked to stop (retired, recycled, shutdown) ended
  worker_crashed,   // a worker died by itself (status says how)
  worker_hung,      // a worker was killed: no heartbeat answer, a task timed out, garbage
  worker_recycled,  // a worker reached max_tasks_per_worker; it gets no more tasks
  scaled_up,        // a worker was added because tasks were waiting (workers = new size)
  scaled_down,      // an idle worker was retired (workers = new size)
  task_retried,     // a task of a dead worker was queued again
  task_timed_out,   // a task failed with task_timeout
  spawn_failed,     // a worker could not be started (message says why); retried later
};

inline const char* to_string(pool_event_kind k) noexcept {
  switch (k) {
    case pool_event_kind::worker_started:
      return "worker_started";
    case pool_event_kind::worker_stopped:
      return "worker_stopped";
    case pool_event_kind::worker_crashed:
      return "worker_crashed";
    case pool_event_kind::worker_hung:
      return "worker_hung";
    case pool_event_kind::worker_recycled:
      return "worker_recycled";
    case pool_event_kind::scaled_up:
      return "scaled_up";
    case pool_event_kind::scaled_down:
      return "scaled_down";
    case pool_event_kind::task_retried:
      return "task_retried";
    case pool_event_kind::task_timed_out:
      return "task_timed_out";
    case pool_event_kind::spawn_failed:
      return "spawn_failed";
  }
  return "unknown";
}

struct pool_event {
  pool_event_kind kind = pool_event_kind::worker_started;
  pid_t pid = 0;            // the worker concerned, if any
  std::size_t workers = 0;  // workers taking tasks after the event (the pool's size)
  std::uint64_t task = 0;   // the task concerned, if any
  std::optional<exit_status> status = std::nullopt;  // how the worker ended, if it did
  std::string message = {};                          // one readable line
};

struct pool_stats {
  std::uint64_t submitted = 0;  // tasks accepted
  std::uint64_t completed = 0;  // fulfilled with a result
  std::uint64_t failed = 0;     // fulfilled with an error (every kind, including the two below)
  std::uint64_t timed_out = 0;  // failed with task_timeout
  std::uint64_t cancelled = 0;  // failed with cancelled
  std::uint64_t rejected = 0;   // refused by submit(): queue full or shut down (not in submitted)
  std::uint64_t retried = 0;    // times a task was queued again after its worker died
  std::uint64_t workers_started = 0;
  std::uint64_t workers_crashed = 0;   // died by themselves
  std::uint64_t workers_hung = 0;      // killed by the pool: heartbeat silence, task timeout, garbage
  std::uint64_t workers_replaced = 0;  // started in place of a crashed, hung or recycled one
  std::uint64_t workers_recycled = 0;  // retired after max_tasks_per_worker
  std::uint64_t workers_retired = 0;   // retired after idle_timeout
  std::size_t size = 0;                // workers taking tasks
  std::size_t busy = 0;                // of those, with a task in flight
  std::size_t idle = 0;                // of those, with none
  std::size_t queue_depth = 0;         // tasks waiting for a worker
  std::size_t in_flight = 0;           // tasks sent and not answered yet
  // Tasks answered by each live worker (retired or dead workers are dropped).
  std::map<pid_t, std::uint64_t> tasks_per_worker = {};
};

// "workers 4 (busy 2, idle 2), queued 10, completed 120, failed 1, retried 3"
inline std::string to_string(const pool_stats& s) {
  return "workers " + std::to_string(s.size) + " (busy " + std::to_string(s.busy) + ", idle " +
         std::to_string(s.idle) + "), queued " + std::to_string(s.queue_depth) + ", completed " +
         std::to_string(s.completed) + ", failed " + std::to_string(s.failed) + ", retried " +
         std::to_string(s.retried);
}
// "worker_crashed (workers 3): worker 4242 killed by SIGKILL": the kind, the pool's
// size after the event, and the event's message.
inline std::string to_string(const pool_event& e) {
  std::string t = std::string(to_string(e.kind)) + " (workers " + std::to_string(e.workers) + ")";
  if (!e.message.empty()) t += ": " + e.message;
  return t;
}

// operator<< only: fmt.hpp does not include the pool (it would force nlohmann/json on
// every fmt user); with fmt, print these through fmt::streamed(x) (<fmt/ostream.h>).
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, pool_event_kind k) {
  return detail::put_text(os, to_string(k));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_stats& s) {
  return detail::put_text(os, to_string(s));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_event& e) {
  return detail::put_text(os, to_string(e));
}

}  // namespace subprocess
