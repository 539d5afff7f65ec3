// subprocess/pool.hpp - a pool of worker processes: submit tasks, get futures.
// Needs nlohmann/json (CMake target subprocess::ipc).
//
// A worker is any program started with an ipc channel that answers the pool's
// messages: a C++ program running ipc::serve(), this very program in a worker role
// (command::self), or a Node script. The pool starts the workers, hands them tasks,
// keeps their number between min_workers and max_workers, notices workers that crash
// or hang, replaces them and runs their tasks again elsewhere.
//
//   ```cpp
//   using json = sp::ipc::json;
//   sp::worker_pool pool(sp::command::self({"--worker"}), {.min_workers = 2, .max_workers = 8});
//   std::future<json> f = pool.submit("fib", {{"n", 30}});
//   json r = f.get();   // the worker's result, or throws (see Errors)
//   // the worker side (the same program, when main() sees "--worker"):
//   auto ch = sp::ipc::connect_to_parent();
//   sp::ipc::serve(ch, {{"fib", [](const json& p) -> json { return p.at("n"); }}});
//   ```
//
// Errors. The constructor throws argument_error for bad options and spawn_error if the
// program cannot be started (nothing is left running); submit() throws argument_error
// for bad params. A future holds the result or one of: ipc::rpc_error (the worker
// answered with an error; not retried), ipc::channel_error (its answer could not be
// decoded), pool_error (kind(): worker_crashed after every attempt, task_timeout,
// cancelled, shut_down, queue_full, no_workers). Every future (or callback) is
// fulfilled exactly once. A task whose worker died fails (worker_crashed) unless you
// opt into retries (max_retries > 0): a retried task may run more than once, so opt
// in for idempotent tasks only.
//
// Blocking and threads. submit() queues and returns, from any thread; it blocks only
// when max_queue is full with queue_full_policy::block. The pool owns one I/O thread
// (an sp::event_loop) that fulfils futures and runs callbacks and on_event: they must
// not block for long, nor call shutdown() or destroy the pool.
//
// Destructor. shutdown(options.shutdown_grace, shutdown_mode::cancel): queued tasks
// fail, channels close, workers get the grace, then SIGTERM, then SIGKILL; it returns
// within about shutdown_grace + term_grace. Call shutdown(grace, shutdown_mode::finish)
// first to finish the queue.
//
// Cost. Two heap allocations per task; use max_in_flight > 1 for short tasks. The
// notes above class worker_pool say how it works; pool_options, pool_event,
// pool_stats and pool_error have their own headers in pool/.
#pragma once

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

#include "command.hpp"
#include "detail/deadline.hpp"
#include "detail/pool/pool_core.hpp"
#include "error.hpp"
#include "ipc.hpp"
#include "pool/error.hpp"
#include "pool/events.hpp"
#include "pool/options.hpp"

namespace subprocess {

// worker_pool: how it works.
//
// The pool adds .ipc() to the command itself (unless you chose a channel fd with
// .ipc(fd)). Workers inherit stdin/stdout/stderr by default; sp::pipe is refused for
// them (nobody would read the pipe, and a worker writing to it would stall). Each
// worker finds its number in the environment variable SUBPROCESS_WORKER_ID: 1, 2, 3...
// in the order the pool started them, replacements included (to tell workers apart in
// logs, or to seed a random generator per worker).
//
// Size. The pool starts min_workers workers (the constructor throws the spawn_error
// if the program cannot be started; nothing is left running). While tasks wait in the
// queue (all workers' capacity is taken) and fewer than max_workers run, it starts one
// more worker, then at most one per scale_up_cooldown. A worker that has had nothing to
// do for idle_timeout is retired (its channel closed), never below min_workers. If a
// worker cannot be started later on (the program is gone, no processes left), the pool
// reports spawn_failed, tries again after 50 ms, 100 ms, ... up to 5 s, and while no
// worker runs at all it fails the waiting tasks with pool_error no_workers. Workers
// that die right after starting, before answering anything, are restarted with a
// growing delay too (100 ms doubling to 5 s): a broken worker program never makes the
// pool spin.
//
// Failures, retries and exactly-once. Every future (or callback) is fulfilled exactly
// once, with the result or with an error saying why. When a worker dies (crashes,
// is killed, exits) its tasks in flight are sent again to other workers, up to
// max_retries times each (0 by default: no retry); a task whose every attempt died fails with a pool_error
// (worker_crashed) listing each attempt's worker and exit status. A dead worker is
// replaced (if the pool would fall below min_workers, or tasks are waiting). A task
// the worker answered with a JSON-RPC error fails with that ipc::rpc_error and is not
// retried: the worker did run it. Because a retried task may have run partway (or
// even to the end) on the worker that died before answering, execution is
// at-least-once once retries are on: make tasks idempotent before you set
// max_retries.
//
// Hangs. Every heartbeat_interval the pool pings each worker it has not heard from
// for that long (rpc.heartbeat, which serve() answers by itself, even while a handler
// is busy; see ipc.hpp). A worker with a ping unanswered for heartbeat_timeout (a
// stopped process, a wedged one) is killed (SIGKILL), counted as hung, and handled as
// a crash: its tasks are retried elsewhere. Only complete messages count as signs of
// life: a worker that writes bytes but never finishes a line (one byte every few ms,
// no newline) misses its ping all the same. A Node worker answers from its event loop,
// so a Node handler that keeps the CPU busy delays its pings: give Node workers a
// heartbeat_timeout longer than their longest synchronous task.
//
// Garbage. A line that cannot be decoded and shows the id of a task in flight in its
// first 64 bytes ("id":N, where serve() and Node put it) is one bad answer: that task
// fails with an ipc::channel_error (protocol_error) saying what the codec refused
// (invalid UTF-8, nesting deeper than 1000...), and the worker stays. With the plain
// protocol a bad line is the answer to the task in flight. Any other line that is not
// JSON (a stray printf to the wrong fd, a corrupted peer, a flood) means the worker is
// broken: it is killed, counted as hung, and its tasks are retried, as for a crash. A
// worker's unfinished line is held in memory up to max_message_size bytes (64 MiB by
// default; plus at most one read of 4 MiB before the check): longer, and the worker
// is killed the same way (its task, if the line shows its id, fails with the error).
//
// Task timeout. With task_timeout, a task unanswered that long fails with pool_error
// (task_timeout); its worker, which may be stuck in it, is killed and replaced, and
// its other tasks in flight are retried without counting against their max_retries.
// The timed-out task itself is not retried (it would most likely time out again and
// kill another worker). The clock of a task starts when its worker can start it: when
// it is sent to a worker with nothing else in flight, or, with max_in_flight > 1,
// when the worker answers the task sent before it. That is exact for serve() workers
// (one task at a time, in order); for workers that run tasks concurrently (Node) it
// is the clock of the oldest unanswered task, which keeps running while later ones
// complete. Checked every few ms (a tenth of the timeout, at most every 100 ms).
//
// Recycling. With max_tasks_per_worker = N a worker gets no more tasks after its N-th;
// once it has answered them all its channel is closed (a serve() loop returns, a Node
// worker sees 'disconnect') and a fresh worker takes its place, like Python's
// max_tasks_per_child. Useful for workers that leak memory.
//
// Queue limit. With max_queue = N, at most N tasks wait for a worker. submit() then
// blocks until there is room (queue_full_policy::block, the default) or fails at once
// (fail: the future holds pool_error queue_full). Tasks that are retried do not count.
//
// SIGCHLD ignored. If the program sets SIGCHLD to SIG_IGN (or SA_NOCLDWAIT), the
// kernel discards every worker's exit status (see process.hpp). The pool works all
// the same: a worker that exits is noticed through its pidfd and handled as an exit
// with an unknown status (a crash, or a stop if the pool asked for it), so it is
// replaced and its tasks are retried or fail as above; pool_event::status and
// pool_attempt::status are then nullopt, and messages say "exited with an unknown
// status". Shutdown climbs the same ladder worker by worker, so one worker whose
// status is lost never costs the others their grace period or their SIGTERM.
//
// Shutdown. shutdown(grace, mode) stops accepting (later submits fail with
// pool_error shut_down), then:
//   finish (the default): every queued and running task completes first;
//   cancel: queued tasks fail at once with pool_error cancelled ("cancelled: pool
//           shut down"); running tasks may finish until `grace` has passed, the
//           rest then fail the same way.
// Then every channel is closed (a serve() loop returns, a Node worker sees
// 'disconnect') and the workers get the grace period to exit by themselves and clean
// up (cancel: what is left of it, at least 100 ms); those still running then get
// SIGTERM (and SIGCONT), and SIGKILL term_grace later (options.term_grace, 1 s by
// default); all are reaped. A worker that exits within the grace is never signalled:
// its worker_stopped event carries its own status. The destructor calls
// shutdown(options.shutdown_grace, shutdown_mode::cancel): it never waits for queued
// work, and it returns within about shutdown_grace + term_grace (plus 100 ms) even if
// the workers hang. Call shutdown(grace, shutdown_mode::finish) first when the queue
// must be finished; wait_idle() waits for every task submitted so far. Retired and
// recycled workers are stopped the same way: channel closed, shutdown_grace, SIGTERM,
// term_grace, SIGKILL.
//
// Events and statistics. options.on_event is told what happens (pool_event: a worker
// started, crashed, hung, was recycled; the pool scaled up or down, to how many; a
// task was retried or timed out; a spawn failed), with a readable message. stats()
// returns counters (submitted, completed, failed, retried, timed out, workers started,
// crashed, hung, replaced, recycled, retired) and the current state (size, busy, idle,
// queue depth, tasks in flight, tasks answered by each live worker), taken together;
// pids() lists the live workers. broadcast(method, params) calls one method on every
// worker (to reload a configuration, to ask for their statistics).
//
// Threads. The pool owns one I/O thread. It runs an sp::event_loop that watches every
// worker's channel and pidfd and the timers (heartbeats, timeouts, idle scale-down,
// cooldowns), and it starts and stops the workers (a spawn briefly blocks it: about a
// millisecond). submit() may be called from any thread: it queues the task under a
// mutex and wakes the loop; it blocks only when max_queue is full with the block
// policy. Futures are fulfilled, and submit callbacks and on_event run, on the I/O
// thread, never while the pool holds a lock: they may call submit(), broadcast(),
// stats() and pids(), but must not block for long (they hold up every worker) and
// must not call shutdown() or destroy the pool (that throws argument_error: it would
// wait for itself). Exceptions they throw are caught and dropped. A task refused at
// submit (queue full, pool shut down) is failed at once on the calling thread.
//
// What it costs. Per task: two heap allocations (the task, its future); the request
// is serialized straight into the worker's socket buffer (params are not copied) and
// the answer's envelope is decoded without building a json object for it (see
// channel::try_receive_rpc); fulfilling a std::future costs one futex call (libstdc++
// runs std::promise through pthread_once), which the callback form of submit()
// avoids. send(2) and recv(2) are shared by all the tasks that are ready at the same
// moment, on both sides (serve() writes its answers together too). With
// max_in_flight 1 every task is a round trip with two wake-ups, and the rate is what
// the scheduler allows: use max_in_flight > 1 for short tasks. The measured rates
// are in the README (tests/bench, figure 6).
class worker_pool {
 public:
  using json = ipc::json;

  // Starts min_workers workers running `worker`. Throws argument_error for bad
  // options, spawn_error if the program cannot be started (nothing is left running).
  explicit worker_pool(command worker, pool_options opts = {})
      : core_(std::make_unique<detail::pool_core>(std::move(worker), std::move(opts))) {}
  // Movable (the I/O thread works on state that stays where it is); a moved-from
  // pool only accepts destruction and assignment.
  worker_pool(worker_pool&&) noexcept = default;
  worker_pool& operator=(worker_pool&&) noexcept = default;
  // shutdown(options.shutdown_grace, shutdown_mode::cancel): queued tasks are
  // cancelled, running ones get the grace period. Must not run on the pool's I/O
  // thread (in one of its callbacks): that aborts the program.
  ~worker_pool() = default;

  // Queues a call of `method` with `params` (an object, an array or null; any JSON
  // value with worker_protocol::plain, where params is the message). The future
  // holds the result or an error (see pool_error). Never blocks, except with
  // max_queue full and queue_full_policy::block. Throws argument_error for bad params.
  std::future<json> submit(std::string_view method, json params = nullptr) {
    return core().submit(method, std::move(params));
  }
  // The same with a callback, called exactly once with the result or the error (on
  // the I/O thread; on the calling thread if the task is refused at once).
  void submit(std::string_view method, json params, ipc::reply_fn on_done) {
    core().submit(method, std::move(params), std::move(on_done));
  }

  // Calls `method` once on every worker taking tasks right now, whatever its load:
  // one future per worker (none when there are no workers, or after shutdown). A
  // broadcast call is not a task: it is not retried (its future fails with
  // worker_crashed if that worker dies) and is not counted in stats().
  std::vector<std::future<json>> broadcast(std::string_view method, json params = nullptr) {
    return core().broadcast(method, std::move(params));
  }

  // Waits until every task submitted so far has been fulfilled.
  void wait_idle() { core().wait_idle(); }
  // The same, giving up after `timeout`; false if tasks are still outstanding.
  template <class Rep, class Period>
  bool wait_idle_for(std::chrono::duration<Rep, Period> timeout) {
    return core().wait_idle_for(detail::saturating_ceil<std::chrono::nanoseconds>(timeout));
  }

  // Counters and the current state, a consistent snapshot (see pool_stats).
  pool_stats stats() const { return core().stats(); }
  // The pids of the live worker processes (taking tasks, or finishing their last
  // ones before being recycled).
  std::vector<pid_t> pids() const { return core().pids(); }
  // Workers taking tasks.
  std::size_t size() const { return core().stats().size; }
  // False once shutdown() has begun.
  bool accepting() const { return core().accepting(); }
  // The pool's name in errors (options.name, or the worker command line).
  const std::string& name() const { return core().name(); }

  // Stops accepting tasks, finishes them (shutdown_mode::finish) or cancels them
  // (cancel), then closes every channel and gives the workers `grace` to exit by
  // themselves (SIGTERM after it, SIGKILL term_grace later), all reaped: see
  // "Shutdown" above. Returns when that is done. Idempotent; a second call waits
  // for the first. Throws argument_error when called from a pool callback.
  template <class Rep = long, class Period = std::ratio<1>>
  void shutdown(std::chrono::duration<Rep, Period> grace = std::chrono::seconds(5),
                shutdown_mode mode = shutdown_mode::finish) {
    if (grace < grace.zero())
      throw argument_error(name(), "worker_pool::shutdown: negative grace period");
    core().shutdown(detail::clamp_forever(detail::saturating_ceil<std::chrono::milliseconds>(grace)), mode);
  }

 private:
  detail::pool_core& core() const {
    if (!core_) throw argument_error("", "worker_pool: used after it was moved from");
    return *core_;
  }
  std::unique_ptr<detail::pool_core> core_;
};

}  // namespace subprocess
