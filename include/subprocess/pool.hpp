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
// Cost. Per task two heap allocations and, with max_in_flight > 1, a share of the
// send(2)/recv(2) calls; with max_in_flight = 1 every task is a round trip with two
// wake-ups: use max_in_flight > 1 for short tasks. The notes above class worker_pool
// say how dispatch, scaling, retries, hangs, timeouts and shutdown work.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "command.hpp"
#include "environment.hpp"
#include "error.hpp"
#include "event_loop.hpp"
#include "exit_status.hpp"
#include "ipc.hpp"
#include "process.hpp"
#include "signals.hpp"

namespace subprocess {

// ---------------------------------------------------------------------------------
// Errors

// Why a pool task failed (pool_error::kind()).
enum class pool_errc {
  worker_crashed = 1,  // its worker died on every attempt (1 + max_retries)
  task_timeout,        // no answer within task_timeout; the worker was killed
  cancelled,           // shutdown(cancel) or the destructor came first
  shut_down,           // submitted after shutdown()
  queue_full,          // max_queue reached with queue_full_policy::fail
  no_workers,          // no worker could be started
};

inline const std::error_category& pool_category() noexcept {
  struct cat final : std::error_category {
    const char* name() const noexcept override { return "subprocess.pool"; }
    std::string message(int c) const override {
      switch (static_cast<pool_errc>(c)) {
        case pool_errc::worker_crashed:
          return "worker crashed";
        case pool_errc::task_timeout:
          return "task timed out";
        case pool_errc::cancelled:
          return "task cancelled";
        case pool_errc::shut_down:
          return "pool shut down";
        case pool_errc::queue_full:
          return "queue full";
        case pool_errc::no_workers:
          return "no workers";
      }
      return "unknown pool error";
    }
  };
  static const cat instance;
  return instance;
}

inline std::error_code make_error_code(pool_errc e) noexcept {
  return {static_cast<int>(e), pool_category()};
}

}  // namespace subprocess

template <>
struct std::is_error_code_enum<subprocess::pool_errc> : std::true_type {};

namespace subprocess {

// One attempt at a task that ended with its worker's death.
struct pool_attempt {
  pid_t pid = 0;                                     // the worker
  std::optional<exit_status> status = std::nullopt;  // how it ended, when known
  std::string what = {};  // "killed by SIGKILL", "killed: no answer to a heartbeat for 612 ms"
};

// A task failed for a reason of the pool's (kind() says which). command() is the
// pool's name (the worker command line).
//
// Errors a future can hold:
//   ipc::rpc_error        the worker answered with an error (its code and message)
//   ipc::channel_error    (protocol_error) its answer could not be decoded; the
//                         message says why (see "Garbage" at worker_pool)
//   pool_error            kind(): worker_crashed (after every attempt; attempts()
//                         has the statuses), task_timeout, cancelled, shut_down,
//                         queue_full, no_workers (none could be started: the spawn
//                         error is in the message)
//   argument_error        (thrown by submit() itself) params that are not an object,
//                         an array or null, or strings that are not valid UTF-8
class pool_error : public error {
 public:
  pool_error(pool_errc kind, std::string pool, std::string message, std::string method = {},
             std::uint64_t task = 0, std::vector<pool_attempt> attempts = {})
      : error(make_error_code(kind), std::move(pool), std::move(message)),
        kind_(kind),
        method_(std::move(method)),
        task_(task),
        attempts_(std::move(attempts)) {}
  pool_errc kind() const noexcept { return kind_; }
  // The task's method, and its number (1, 2, ... in submission order; 0 if it was
  // never accepted).
  const std::string& method() const noexcept { return method_; }
  std::uint64_t task() const noexcept { return task_; }
  // Every attempt that died, oldest first (worker_crashed; also the attempts before a
  // task_timeout or cancellation).
  const std::vector<pool_attempt>& attempts() const noexcept { return attempts_; }

 private:
  pool_errc kind_;
  std::string method_;
  std::uint64_t task_;
  std::vector<pool_attempt> attempts_;
};

// ---------------------------------------------------------------------------------
// Options, events, statistics

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

// ---------------------------------------------------------------------------------
// worker_pool: the public handle (below) owns a pool_core on the heap, so the pool can
// be moved, and the I/O thread's `this` never changes.

namespace detail {

class pool_core {
 public:
  using json = ipc::json;

  // The public operations of worker_pool (documented there).
  pool_core(command worker, pool_options opts) : cmd_(std::move(worker)), opts_(std::move(opts)) {
    check_options();
    if (opts_.name.empty()) opts_.name = cmd_.to_string();
    if (!cmd_.ipc_fd()) cmd_.ipc();
    cmd_.validate();  // a missing program is a spawn_error before anything starts
    std::promise<void> started;
    auto ready = started.get_future();
    io_ = std::thread([this, &started] { io_main(started); });
    try {
      ready.get();
    } catch (...) {
      io_.join();
      throw;
    }
  }
  pool_core(const pool_core&) = delete;
  pool_core& operator=(const pool_core&) = delete;

  ~pool_core() {
    if (on_io_thread()) {
      std::fputs("subprocess::worker_pool destroyed from its own callback (on its I/O thread)\n",
                 stderr);
      std::abort();
    }
    try {
      shutdown(opts_.shutdown_grace, shutdown_mode::cancel);
    } catch (...) {
      // shutdown() only throws for misuse checked above.
    }
  }

  std::future<json> submit(std::string_view method, json params = nullptr) {
    auto t = make_task(method, std::move(params));
    auto f = t->promise.get_future();
    enqueue(std::move(t));
    return f;
  }
  void submit(std::string_view method, json params, ipc::reply_fn on_done) {
    if (!on_done)
      throw argument_error(opts_.name, "submit '" + std::string(method) + "': empty callback");
    auto t = make_task(method, std::move(params));
    t->fn = std::move(on_done);
    enqueue(std::move(t));
  }

  std::vector<std::future<json>> broadcast(std::string_view method, json params = nullptr) {
    check_params(method, params);
    check_utf8(params);
    std::vector<std::future<json>> out;
    if (on_io_thread()) return do_broadcast(std::string(method), params);
    auto job = std::make_shared<std::promise<std::vector<std::future<json>>>>();
    auto f = job->get_future();
    {
      std::lock_guard l(mu_);
      if (!io_running_) return out;
      loop_.post([this, job, m = std::string(method), p = std::move(params)] {
        job->set_value(do_broadcast(m, p));
      });
    }
    return f.get();
  }

  void wait_idle() {
    std::unique_lock l(mu_);
    idle_cv_.wait(l, [&] { return outstanding_.load() == 0; });
  }
  bool wait_idle_for(std::chrono::nanoseconds timeout) {
    std::unique_lock l(mu_);
    return idle_cv_.wait_until(l, deadline_in(timeout), [&] { return outstanding_.load() == 0; });
  }

  pool_stats stats() const {
    pool_stats s;
    std::lock_guard l(mu_);
    s.submitted = submitted_;
    s.rejected = rejected_;
    s.completed = completed_.load();
    s.failed = failed_.load();
    s.timed_out = timed_out_.load();
    s.cancelled = cancelled_.load();
    s.retried = retried_.load();
    s.workers_started = workers_started_.load();
    s.workers_crashed = workers_crashed_.load();
    s.workers_hung = workers_hung_.load();
    s.workers_replaced = workers_replaced_.load();
    s.workers_recycled = workers_recycled_.load();
    s.workers_retired = workers_retired_.load();
    s.queue_depth = queue_.size();
    s.in_flight = in_flight_pub_;
    for (const auto& w : published_) {
      s.tasks_per_worker[w.pid] = w.completed;
      if (!w.taking) continue;
      ++s.size;
      if (w.in_flight > 0)
        ++s.busy;
      else
        ++s.idle;
    }
    return s;
  }
  std::vector<pid_t> pids() const {
    std::lock_guard l(mu_);
    std::vector<pid_t> v;
    for (const auto& w : published_) v.push_back(w.pid);
    return v;
  }
  bool accepting() const {
    std::lock_guard l(mu_);
    return accepting_;
  }
  const std::string& name() const noexcept { return opts_.name; }

  void shutdown(std::chrono::milliseconds g, shutdown_mode mode) {
    if (on_io_thread())
      throw argument_error(
          opts_.name,
          "worker_pool::shutdown called from a pool callback: it would wait for itself");
    std::lock_guard sl(shutdown_mu_);
    if (!io_.joinable()) return;
    {
      std::lock_guard l(mu_);
      accepting_ = false;
      space_cv_.notify_all();
      if (io_running_) loop_.post([this, g, mode] { begin_shutdown(g, mode); });
    }
    io_.join();
  }

 private:
  using clock = std::chrono::steady_clock;
  using ms = std::chrono::milliseconds;

  struct task {
    std::uint64_t id = 0;
    std::string method;
    json params;
    std::promise<json> promise;
    ipc::reply_fn fn;
    std::vector<pool_attempt> attempts;  // attempts that died
    unsigned charged = 0;                // of those, the ones that count against max_retries
    bool broadcast = false;              // pinned to its worker, never retried
  };
  using task_ptr = std::unique_ptr<task>;

  struct sent_task {
    std::uint64_t rpc_id;
    task_ptr t;
    // When its task_timeout clock started: when it became the oldest unanswered task
    // of its worker (sent to an idle worker, or the one before it was answered).
    clock::time_point since;
  };

  enum class wstate {
    ready,     // takes tasks
    draining,  // recycled: no new tasks; closed once its tasks are answered
    closing,   // channel closed by us; waiting for it to exit
    lost,      // its channel ended or we killed it; waiting for its exit
  };
  enum class stop_why { none, crashed, hung, timed_out, recycled, retired, shutdown };

  struct worker {
    std::uint64_t serial = 0;
    process proc;
    pid_t pid = 0;
    ipc::channel ch;
    event_loop::id watch = 0, exit_watch = 0, kill_timer = 0;
    std::uint32_t events = 0;
    wstate state = wstate::ready;
    stop_why why = stop_why::none;  // set when the pool stops it (or gives up on it)
    std::string why_text;           // for hung workers: what the attempts say
    std::deque<sent_task> in_flight;
    std::uint64_t assigned = 0, answered = 0;
    clock::time_point started, idle_since, last_heard, hb_sent;
    std::uint64_t hb_id = 0;  // the heartbeat awaiting an answer (0: none)
    bool owed = false;        // a replacement was owed for it already
  };

  struct published_worker {
    pid_t pid;
    bool taking;
    std::size_t in_flight;
    std::uint64_t completed;
  };

  // ---- checks -------------------------------------------------------------------

  void check_options() {
    const std::string n = opts_.name.empty() ? cmd_.to_string() : opts_.name;
    auto bad = [&](const std::string& what) { return argument_error(n, "worker_pool: " + what); };
    if (opts_.max_workers == 0) opts_.max_workers = std::max<std::size_t>(opts_.min_workers, 1);
    if (opts_.max_workers < opts_.min_workers) throw bad("max_workers is less than min_workers");
    if (opts_.max_in_flight == 0) throw bad("max_in_flight must be at least 1");
    for (auto [d, what] : {std::pair{opts_.scale_up_cooldown, "scale_up_cooldown"},
                           std::pair{opts_.idle_timeout, "idle_timeout"},
                           std::pair{opts_.heartbeat_interval, "heartbeat_interval"},
                           std::pair{opts_.heartbeat_timeout, "heartbeat_timeout"},
                           std::pair{opts_.task_timeout, "task_timeout"},
                           std::pair{opts_.shutdown_grace, "shutdown_grace"},
                           std::pair{opts_.term_grace, "term_grace"}})
      if (d < ms::zero()) throw bad(std::string(what) + " is negative");
    // Up to ms::max() means "for ever": kept below overflow when added to time points.
    for (ms* d : {&opts_.scale_up_cooldown, &opts_.idle_timeout, &opts_.heartbeat_interval,
                  &opts_.heartbeat_timeout, &opts_.task_timeout, &opts_.shutdown_grace,
                  &opts_.term_grace})
      *d = detail::clamp_forever(*d);
    if (opts_.heartbeat_interval > ms::zero() && opts_.heartbeat_timeout <= ms::zero())
      throw bad("heartbeat_timeout must be positive when heartbeats are on");
    if (opts_.max_message_size == 0) throw bad("max_message_size must be positive");
    if (plain() && opts_.max_in_flight != 1)
      throw bad(
          "max_in_flight must be 1 with worker_protocol::plain (answers carry no id: they are "
          "matched to tasks by order)");
    for (const auto* s : {&cmd_.in(), &cmd_.out(), &cmd_.err()})
      if (*s && std::holds_alternative<pipe_t>(**s))
        throw bad(
            "a worker's stdin, stdout and stderr cannot be sp::pipe (nobody would read or "
            "write it); use inherit, null or a file");
  }

  bool plain() const noexcept { return opts_.protocol == worker_protocol::plain; }

  void check_params(std::string_view method, const json& params) const {
    if (plain()) return;  // the message itself: any JSON value
    if (!(params.is_null() || params.is_array() || params.is_object()))
      throw argument_error(opts_.name,
                           "submit '" + std::string(method) +
                               "': params must be an object, an array or null (JSON-RPC)");
  }

  bool on_io_thread() const noexcept { return io_id_.load() == std::this_thread::get_id(); }

  // ---- submitting (any thread) ----------------------------------------------------

  // Strings must be valid UTF-8: found here, on the caller's thread, not later. (The
  // serializer run into a sink that keeps nothing: no allocation.)
  void check_utf8(const json& params) const {
    struct discard {
      void append(const char*, std::size_t) noexcept {}
      void push_back(char) noexcept {}
      std::size_t size() const noexcept { return 0; }
      void reserve(std::size_t) noexcept {}
    } sink;
    if (!params.is_null()) detail::ipc_wire::dump_to(sink, params, opts_.name);
  }

  task_ptr make_task(std::string_view method, json params) {
    check_params(method, params);
    check_utf8(params);
    auto t = std::make_unique<task>();
    t->method = std::string(method);
    t->params = std::move(params);
    return t;
  }

  void enqueue(task_ptr t) {
    std::unique_lock l(mu_);
    if (opts_.max_queue != 0 && accepting_ && queue_.size() >= opts_.max_queue) {
      if (opts_.when_full == queue_full_policy::fail || on_io_thread()) {
        ++rejected_;
        l.unlock();
        refuse(*t, pool_errc::queue_full,
               "rejected: the queue is full (max_queue " + std::to_string(opts_.max_queue) + ")");
        return;
      }
      ++blocked_;
      space_cv_.wait(l, [&] { return !accepting_ || queue_.size() < opts_.max_queue; });
      --blocked_;
    }
    if (!accepting_) {
      ++rejected_;
      l.unlock();
      refuse(*t, pool_errc::shut_down, "rejected: the pool is shut down");
      return;
    }
    t->id = ++submitted_;
    outstanding_.fetch_add(1);
    queue_.push_back(std::move(t));
    if (!wake_posted_ && io_running_) {
      wake_posted_ = true;
      loop_.post([this] { on_wake(); });
    }
  }

  void refuse(task& t, pool_errc kind, const std::string& why) {
    auto e = std::make_exception_ptr(
        pool_error(kind, opts_.name, "task '" + t.method + "' " + why, t.method, 0));
    deliver(t, nullptr, e);
  }

  static void deliver(task& t, json result, std::exception_ptr e) {
    if (t.fn) {
      try {
        t.fn(ipc::reply{std::move(result), e});
      } catch (...) {
        // A callback must not throw; nobody could be told.
      }
    } else if (e) {
      t.promise.set_exception(e);
    } else {
      t.promise.set_value(std::move(result));
    }
  }

  // ---- the I/O thread ----------------------------------------------------------------

  void io_main(std::promise<void>& started) {
    io_id_.store(std::this_thread::get_id());
    try {
      for (std::size_t i = 0; i < opts_.min_workers; ++i) start_worker(false, true);
      tick_ = choose_tick();
      loop_.every(tick_, [this] { guarded([this] { on_tick(); }); });
      {
        std::lock_guard l(mu_);
        io_running_ = true;
      }
      publish();
    } catch (...) {
      workers_.clear();  // each process handle kills and reaps its child
      started.set_exception(std::current_exception());
      io_id_.store(std::thread::id());
      return;
    }
    started.set_value();
    try {
      loop_.run_forever();
    } catch (const std::exception& e) {
      fatal(e.what());
    } catch (...) {
      fatal("unknown exception");
    }
    // Posts that raced with the end (broadcast jobs, wake-ups) still run, and find
    // the pool stopped.
    try {
      loop_.run_for(ms(0));
    } catch (...) {
    }
    io_id_.store(std::thread::id());
  }

  ms choose_tick() const {
    ms t = ms(100);
    if (opts_.heartbeat_interval > ms::zero() && !plain())
      t = std::min({t, opts_.heartbeat_interval / 2, opts_.heartbeat_timeout / 4});
    if (opts_.task_timeout > ms::zero()) t = std::min(t, opts_.task_timeout / 5);
    if (opts_.max_workers > opts_.min_workers) t = std::min(t, opts_.idle_timeout / 4);
    return std::clamp(t, ms(2), ms(100));
  }

  // Every loop callback of the pool runs through this: the work, then dispatch, then
  // user code (events, results) at a point where no pool state is in use.
  template <class F>
  void guarded(F&& f) {
    f();
    settle();
  }

  void on_wake() {
    guarded([this] {
      std::lock_guard l(mu_);
      wake_posted_ = false;
    });
  }

  void settle() {
    for (;;) {
      pump();
      if (stopping_) check_shutdown();
      publish();
      if (events_.empty() && done_.empty() && notes_.empty()) return;
      auto evs = std::move(events_);
      events_.clear();
      auto notes = std::move(notes_);
      notes_.clear();
      auto done = std::move(done_);
      done_.clear();
      for (auto& ev : evs) {
        if (!opts_.on_event) break;
        try {
          opts_.on_event(ev);
        } catch (...) {
        }
      }
      for (auto& [pid, m] : notes) {
        try {
          opts_.on_message(pid, m);
        } catch (...) {
        }
      }
      for (auto& d : done) {
        deliver(*d.t, std::move(d.result), d.error);
        d.t.reset();
        if (outstanding_.fetch_sub(1) == 1) {
          std::lock_guard l(mu_);
          idle_cv_.notify_all();
        }
      }
      if (stop_now_) return;
    }
  }

  // Something went wrong inside the pool itself: fail everything, stop everything.
  void fatal(const std::string& why) {
    stopping_ = stop_now_ = true;
    std::vector<task_ptr> all;
    {
      std::lock_guard l(mu_);
      accepting_ = false;
      io_running_ = false;
      space_cv_.notify_all();
      for (auto& t : queue_) all.push_back(std::move(t));
      queue_.clear();
    }
    for (auto& w : workers_) {
      forget(*w);
      for (auto& s : w->in_flight) all.push_back(std::move(s.t));
    }
    for (auto& t : all) {
      if (!t) continue;
      auto e = std::make_exception_ptr(
          pool_error(pool_errc::cancelled, opts_.name,
                     "task " + std::to_string(t->id) + " ('" + t->method +
                         "') cancelled: the pool's I/O thread failed: " + why,
                     t->method, t->id, t->attempts));
      if (!t->broadcast) {
        failed_.fetch_add(1);
        cancelled_.fetch_add(1);
      }
      deliver(*t, nullptr, e);
      if (outstanding_.fetch_sub(1) == 1) {
        std::lock_guard l(mu_);
        idle_cv_.notify_all();
      }
    }
    workers_.clear();
    publish();
  }

  // ---- workers -------------------------------------------------------------------

  std::size_t live() const {
    std::size_t n = 0;
    for (const auto& w : workers_)
      if (w->state == wstate::ready) ++n;
    return n;
  }

  void emit(pool_event_kind k, const worker* w, std::string message, std::uint64_t task = 0,
            std::optional<exit_status> st = std::nullopt) {
    if (!opts_.on_event) return;
    events_.push_back({k, w ? w->pid : 0, live(), task, st, std::move(message)});
  }

  // Starts one worker. initial: a spawn_error propagates (the constructor's); else it
  // is reported, and retried after a backoff. Returns the worker or nullptr.
  worker* start_worker(bool replacing, bool initial = false) {
    auto w = std::make_unique<worker>();
    w->serial = ++serial_;
    try {
      command c = cmd_;
      environment env = cmd_.env() ? *cmd_.env() : environment::inherit();
      env.set("SUBPROCESS_WORKER_ID", std::to_string(w->serial));
      c.env(std::move(env));
      w->proc = c.spawn();
      w->ch = ipc::channel(w->proc, {.max_message_size = opts_.max_message_size,
                                     .internal_messages = false,
                                     .name = opts_.name});
    } catch (const std::exception& e) {
      if (initial) throw;
      spawn_failed(e.what());
      return nullptr;
    }
    spawn_failing_ = false;
    spawn_error_.clear();
    w->pid = w->proc.pid();
    w->started = w->idle_since = w->last_heard = w->hb_sent = clock::now();
    worker* raw = w.get();
    raw->events = EPOLLIN;
    try {
      raw->watch = loop_.watch(raw->ch.fd(), EPOLLIN, [this, raw](std::uint32_t ev) {
        guarded([&] { on_channel(*raw, ev); });
      });
      raw->exit_watch = loop_.on_exit(
          raw->proc, [this, raw](exit_status st) { guarded([&] { on_exit(*raw, st); }); },
          // Exited, its status discarded (SIGCHLD ignored) or taken by other code.
          [this, raw](const error&) { guarded([&] { on_exit(*raw, std::nullopt); }); });
    } catch (...) {
      forget(*raw);  // the process handle kills and reaps the child
      throw;
    }
    workers_.push_back(std::move(w));
    workers_started_.fetch_add(1);
    if (replacing) workers_replaced_.fetch_add(1);
    emit(pool_event_kind::worker_started, raw,
         "worker " + std::to_string(raw->pid) + " started" + (replacing ? " (a replacement)" : ""));
    return raw;
  }

  void spawn_failed(const std::string& why) {
    spawn_error_ = why;
    if (!spawn_failing_) backoff_ = ms(50);
    spawn_failing_ = true;
    emit(pool_event_kind::spawn_failed, nullptr, "cannot start a worker: " + why);
    retry_after(backoff_);
    backoff_ = std::min(backoff_ * 2, ms(5000));
    if (live() == 0)
      fail_queue(pool_errc::no_workers, "failed: no worker could be started: " + why);
  }

  // Schedules one more look at the pool's size (replacements, scale-up).
  void retry_after(ms d) {
    if (retry_timer_) return;
    retry_timer_ = loop_.after(d, [this] {
      guarded([this] {
        retry_timer_ = 0;
        maintain();
      });
    });
  }

  // Starts workers the pool needs: up to min_workers, plus one for waiting tasks.
  void maintain() {
    if (stopping_ && stop_mode_ == shutdown_mode::cancel) return;
    if (spawn_failing_ && retry_timer_) return;  // backing off
    while (live() < opts_.min_workers ||
           (owed_ > 0 && queued() > 0 && live() < opts_.max_workers)) {
      if (crash_loop_ > 1) {  // workers keep dying young without answering: slow down
        auto d = std::min(ms(100) * (1 << std::min(crash_loop_ - 2, 6)), ms(5000));
        auto since = clock::now() - last_early_death_;
        if (since < d) {
          retry_after(std::chrono::duration_cast<ms>(d - since) + ms(1));
          return;
        }
      }
      bool replacing = owed_ > 0;
      if (!start_worker(replacing)) return;
      if (replacing) --owed_;
    }
    if (live() >= opts_.min_workers && queued() == 0) owed_ = 0;
  }

  std::size_t queued() const {
    std::lock_guard l(mu_);
    return queue_.size();
  }

  void set_events(worker& w, std::uint32_t ev) {
    if (w.watch == 0 || w.events == ev) return;
    loop_.modify(w.watch, ev);
    w.events = ev;
  }

  void flush(worker& w) {
    try {
      set_events(w, w.ch.flush() ? EPOLLIN : EPOLLIN | EPOLLOUT);
    } catch (const ipc::channel_error&) {
      set_events(w, EPOLLIN);  // the peer is gone: reading says so
    }
  }

  void on_channel(worker& w, std::uint32_t ev) {
    if (ev & EPOLLOUT) flush(w);
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    // One read per wake-up (level-triggered: a busy worker cannot starve the others).
    // Bytes are not signs of life: only complete messages are (see drain()).
    w.ch.read_available();
    drain(w);
    if (w.ch.eof()) channel_ended(w);
  }

  // Takes every message the socket holds now.
  void read_all(worker& w) {
    if (!w.ch.is_open()) return;
    while (w.ch.read_available() > 0) drain(w);
    drain(w);
  }

  // Decodes the complete messages buffered. Each one is a sign of life (last_heard);
  // a partial line is not, so a worker dribbling bytes without ever finishing a
  // message still misses its heartbeat. The partial line is bounded by
  // max_message_size: beyond it the channel reports an oversized message and the
  // worker is killed as malformed.
  void drain(worker& w) {
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
        const bool taking = w.state == wstate::ready || w.state == wstate::draining;
        if (w.ch.eof()) {
          // The channel is finished: an oversized message (longer than
          // max_message_size: the channel shut itself down), or a bad line was the
          // peer's last. Its task fails with the error; the worker is of no more use.
          if (taking) {
            bad_answer(w, e, false);
            kill_worker(w, stop_why::hung, std::string("killed: ") + e.what());
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
          kill_worker(w, stop_why::hung,
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
  bool bad_answer(worker& w, const ipc::channel_error& e, bool kept) {
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
    fail(std::move(t), std::make_exception_ptr(ipc::channel_error(
                           errc::protocol_error, opts_.name, what, e.sample())));
    if (kept && w.state == wstate::draining && w.in_flight.empty())
      close_worker(w, stop_why::recycled);
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

  // Takes the task an answer is for out of w's in-flight list.
  task_ptr answered(worker& w, std::deque<sent_task>::iterator it) {
    task_ptr t = std::move(it->t);
    const bool was_oldest = it == w.in_flight.begin();
    w.in_flight.erase(it);
    ++w.answered;
    crash_loop_ = 0;
    if (w.in_flight.empty())
      w.idle_since = clock::now();
    else if (was_oldest)
      w.in_flight.front().since = clock::now();
    return t;
  }

  // worker_protocol::plain: the message is the answer to the oldest task, or, with
  // none in flight, a message of the worker's own (on_message).
  void incoming_plain(worker& w, json m) {
    if (w.in_flight.empty()) {
      if (opts_.on_message) notes_.emplace_back(w.pid, std::move(m));
      return;
    }
    succeed(answered(w, w.in_flight.begin()), std::move(m));
    if (w.state == wstate::draining && w.in_flight.empty()) close_worker(w, stop_why::recycled);
  }

  void incoming(worker& w, ipc::channel::rpc_message& m) {
    using kind = ipc::channel::rpc_message::kind;
    if (m.k == kind::response) {
      if (m.id.is_number_unsigned()) {
        const auto id = m.id.get<std::uint64_t>();
        if (id == w.hb_id) {
          w.hb_id = 0;
          crash_loop_ = 0;
          return;
        }
        auto it = std::find_if(w.in_flight.begin(), w.in_flight.end(),
                               [id](const sent_task& s) { return s.rpc_id == id; });
        if (it == w.in_flight.end()) return;  // an answer we no longer wait for
        task_ptr t = answered(w, it);
        if (!m.error.is_null()) {
          const json* e = &m.error;
          int code = ipc::rpc_error::internal_error;
          std::string message = "(no message)";
          json data = nullptr;
          if (e->is_object()) {
            if (auto c = e->find("code"); c != e->end() && c->is_number_integer())
              code = c->get<int>();
            if (auto s = e->find("message"); s != e->end() && s->is_string())
              message = s->get<std::string>();
            if (auto d = e->find("data"); d != e->end()) data = *d;
          } else {
            message = e->dump();
          }
          auto err = std::make_exception_ptr(ipc::rpc_error(
              code, std::move(message), std::move(data),
              opts_.name + " (worker " + std::to_string(w.pid) + ")", t->method, t->id));
          fail(std::move(t), err);
        } else {
          succeed(std::move(t), std::move(m.result));
        }
        if (w.state == wstate::draining && w.in_flight.empty()) close_worker(w, stop_why::recycled);
        return;
      }
    }
    if (!opts_.on_message) return;
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
    notes_.emplace_back(w.pid, std::move(whole));  // delivered in settle()
  }

  void succeed(task_ptr t, json result) {
    if (!t->broadcast) completed_.fetch_add(1);
    done_.push_back({std::move(t), std::move(result), nullptr});
  }
  void fail(task_ptr t, std::exception_ptr e) {
    if (!t->broadcast) failed_.fetch_add(1);
    done_.push_back({std::move(t), nullptr, e});
  }

  // The channel ended (the peer closed it or died). Its tasks are dealt with when the
  // process exit is seen, which carries the status.
  void channel_ended(worker& w) {
    if (w.watch) {
      loop_.remove(w.watch);
      w.watch = 0;
    }
    if (w.state == wstate::ready || w.state == wstate::draining) {
      w.state = wstate::lost;
      owe(w);
      // A worker that closed its channel but lives on is of no use: give it a moment
      // to exit by itself (so its status is its own), then kill it.
      schedule_kill(w, ms(1000));
      maintain();
    }
  }

  // Unregisters everything the loop holds about w (before w is destroyed).
  void forget(worker& w) {
    for (auto id : {w.watch, w.exit_watch, w.kill_timer})
      if (id) loop_.remove(id);
    w.watch = w.exit_watch = w.kill_timer = 0;
  }

  // w stopped taking tasks without the pool wanting fewer workers: one replacement.
  void owe(worker& w) {
    if (w.owed) return;
    w.owed = true;
    ++owed_;
  }

  void schedule_kill(worker& w, ms after) {
    if (w.kill_timer) return;
    worker* raw = &w;
    w.kill_timer = loop_.after(after, [this, raw] {
      guarded([&] {
        raw->kill_timer = 0;
        try {
          raw->proc.kill();
        } catch (...) {
        }
      });
    });
  }

  // A worker whose channel we closed: `grace` to exit by itself, then SIGTERM (and
  // SIGCONT, in case it is stopped), then SIGKILL term_grace later.
  void schedule_stop(worker& w, ms grace) {
    if (w.kill_timer) return;
    worker* raw = &w;
    w.kill_timer = loop_.after(grace, [this, raw] {
      guarded([&] {
        raw->kill_timer = 0;
        try {
          send_tree(raw->proc, SIGTERM);
          send_tree(raw->proc, SIGCONT);
        } catch (...) {
        }
        schedule_kill(*raw, opts_.term_grace);
      });
    });
  }

  // We stop a worker: gracefully (its channel closed) or by force.
  void close_worker(worker& w, stop_why why) {
    w.why = why;
    w.state = wstate::closing;
    if (w.watch) {
      loop_.remove(w.watch);
      w.watch = 0;
    }
    w.ch.close();
    schedule_stop(w, opts_.shutdown_grace);
    if (why == stop_why::retired) {
      workers_retired_.fetch_add(1);
    }
  }

  void kill_worker(worker& w, stop_why why, std::string text) {
    w.why = why;
    w.why_text = std::move(text);
    w.state = wstate::lost;
    workers_hung_.fetch_add(1);
    emit(pool_event_kind::worker_hung, &w, "worker " + std::to_string(w.pid) + " " + w.why_text);
    try {
      w.proc.kill();
    } catch (...) {
    }
    owe(w);
    maintain();
  }

  // st: nullopt if the worker's status cannot be had (see "SIGCHLD ignored").
  void on_exit(worker& w, std::optional<exit_status> st) {
    w.exit_watch = 0;  // the loop removed it
    // Answers it sent before it died are still results.
    if (w.ch.is_open()) {
      read_all(w);
      if (w.watch) {
        loop_.remove(w.watch);
        w.watch = 0;
      }
      w.ch.close();
    }
    if (w.kill_timer) {
      loop_.remove(w.kill_timer);
      w.kill_timer = 0;
    }
    const bool asked = w.why != stop_why::none;
    const auto now = clock::now();
    if (!asked) {
      w.why = stop_why::crashed;
      workers_crashed_.fetch_add(1);
      young_death(w, now);
      emit(pool_event_kind::worker_crashed, &w,
           "worker " + std::to_string(w.pid) + " " + ended(st), 0, st);
      owe(w);
    } else if (w.why == stop_why::hung || w.why == stop_why::timed_out) {
      // Reported when it was killed. Killed young without an answer (garbage or a
      // message too long right from the start): restarted with the same backoff.
      if (w.why == stop_why::hung) young_death(w, now);
    } else {
      emit(pool_event_kind::worker_stopped, &w,
           "worker " + std::to_string(w.pid) + " " + ended(st), 0, st);
    }
    std::string what =
        w.why_text.empty() ? ended(st) : w.why_text + " (" + ended(st) + ")";
    const bool charge = w.why != stop_why::timed_out;  // victims of another task's timeout
    std::vector<task_ptr> again;
    for (auto& s : w.in_flight) {
      task_ptr t = std::move(s.t);
      t->attempts.push_back({w.pid, st, what});
      if (charge) ++t->charged;
      if (t->broadcast || t->charged > opts_.max_retries) {
        auto err = crashed_error(*t, w);
        fail(std::move(t), err);
      } else if (stopping_ && stop_mode_ == shutdown_mode::cancel) {
        fail_cancelled(std::move(t), "");
      } else {
        retried_.fetch_add(1);
        emit(pool_event_kind::task_retried, &w,
             "task " + std::to_string(t->id) + " ('" + t->method + "') queued again after worker " +
                 std::to_string(w.pid) + " " + what,
             t->id);
        again.push_back(std::move(t));
      }
    }
    w.in_flight.clear();
    if (!again.empty()) {
      std::lock_guard l(mu_);
      for (auto it = again.rbegin(); it != again.rend(); ++it) queue_.push_front(std::move(*it));
    }
    auto it = std::find_if(workers_.begin(), workers_.end(),
                           [&](const auto& p) { return p.get() == &w; });
    if (it != workers_.end()) workers_.erase(it);  // &w is gone from here on
    maintain();
  }

  static std::string ended(const std::optional<exit_status>& st) {
    return st ? st->to_string() : std::string(unknown_status);
  }
  static constexpr const char* unknown_status =
      "exited with an unknown status (the kernel discarded it: SIGCHLD is ignored, or "
      "other code reaped it)";

  // A worker that died (or was killed) young before answering anything.
  void young_death(const worker& w, clock::time_point now) {
    if (w.answered == 0 && now - w.started < std::chrono::seconds(1)) {
      ++crash_loop_;
      last_early_death_ = now;
    }
  }

  std::exception_ptr crashed_error(const task& t, const worker& w) const {
    std::string m = "task " + std::to_string(t.id) + " ('" + t.method + "') failed: ";
    if (t.broadcast) {
      m += "worker " + std::to_string(w.pid) + " died before answering: " + t.attempts.back().what;
    } else {
      m += "its worker died on every attempt (" + std::to_string(t.attempts.size()) + "): ";
      for (std::size_t i = 0; i < t.attempts.size(); ++i) {
        if (i) m += "; ";
        m += "worker " + std::to_string(t.attempts[i].pid) + " " + t.attempts[i].what;
      }
    }
    return std::make_exception_ptr(
        pool_error(pool_errc::worker_crashed, opts_.name, m, t.method, t.id, t.attempts));
  }

  void fail_cancelled(task_ptr t, const std::string& where) {
    cancelled_.fetch_add(1);
    auto e =
        std::make_exception_ptr(pool_error(pool_errc::cancelled, opts_.name,
                                           "task " + std::to_string(t->id) + " ('" + t->method +
                                               "') cancelled: pool shut down" + where,
                                           t->method, t->id, t->attempts));
    fail(std::move(t), e);
  }

  void fail_queue(pool_errc kind, const std::string& why) {
    std::deque<task_ptr> q;
    {
      std::lock_guard l(mu_);
      q.swap(queue_);
      if (blocked_) space_cv_.notify_all();
    }
    for (auto& t : q) {
      if (kind == pool_errc::cancelled) {
        fail_cancelled(std::move(t), "");
        continue;
      }
      auto e = std::make_exception_ptr(pool_error(
          kind, opts_.name, "task " + std::to_string(t->id) + " ('" + t->method + "') " + why,
          t->method, t->id, t->attempts));
      fail(std::move(t), e);
    }
  }

  // ---- dispatch ------------------------------------------------------------------

  worker* pick() {
    const std::size_t n = workers_.size();
    worker* best = nullptr;
    std::size_t best_at = 0;
    for (std::size_t k = 0; k < n; ++k) {
      std::size_t i = (cursor_ + k) % n;
      worker* w = workers_[i].get();
      if (w->state != wstate::ready || w->in_flight.size() >= opts_.max_in_flight) continue;
      if (opts_.dispatch == dispatch_policy::round_robin) {
        best = w;
        best_at = i;
        break;
      }
      if (!best || w->in_flight.size() < best->in_flight.size()) {
        best = w;
        best_at = i;
        if (w->in_flight.empty()) break;
      }
    }
    if (best) cursor_ = (best_at + 1) % n;
    return best;
  }

  void send(worker& w, task_ptr t) {
    const std::uint64_t id = ++rpc_id_;
    const auto now = clock::now();
    w.in_flight.push_back({id, std::move(t), w.in_flight.empty() ? now : clock::time_point::max()});
    ++w.assigned;
    try {
      if (plain())
        w.ch.enqueue(w.in_flight.back().t->params);
      else
        w.ch.enqueue_request(id, w.in_flight.back().t->method, w.in_flight.back().t->params);
    } catch (const ipc::channel_error&) {
      // The worker is gone; its exit retries the task.
      if (w.state == wstate::ready) {
        w.state = wstate::lost;
        owe(w);
        schedule_kill(w, ms(1000));
      }
    } catch (const argument_error&) {
      // Checked in submit(), so not expected: the task fails, the pool goes on.
      task_ptr bad = std::move(w.in_flight.back().t);
      w.in_flight.pop_back();
      fail(std::move(bad), std::current_exception());
      return;
    }
    if (!w.in_flight.back().t->broadcast && opts_.max_tasks_per_worker != 0 &&
        w.assigned >= opts_.max_tasks_per_worker && w.state == wstate::ready) {
      w.state = wstate::draining;
      workers_recycled_.fetch_add(1);
      owe(w);  // pump() starts the replacement
      emit(pool_event_kind::worker_recycled, &w,
           "worker " + std::to_string(w.pid) + " recycled after " + std::to_string(w.assigned) +
               " tasks");
    }
  }

  void pump() {
    if (stop_now_) return;
    // A worker started here (scale-up, replacement) gets the waiting tasks at once: one
    // more pass then.
    for (int pass = 0; pass < 2 && !(stopping_ && stop_mode_ == shutdown_mode::cancel); ++pass) {
      const std::uint64_t started_before = serial_;
      const std::size_t left = dispatch();
      if (left > 0) scale_up(left);
      if (live() < opts_.min_workers) maintain();
      if (serial_ == started_before || left == 0) break;
    }
    if (spawn_failing_ && live() == 0 && !(stopping_ && stop_mode_ == shutdown_mode::cancel))
      fail_queue(pool_errc::no_workers, "failed: no worker could be started: " + spawn_error_);
  }

  // Hands queued tasks to workers with room; returns how many are still waiting.
  std::size_t dispatch() {
    std::size_t room = 0;
    for (const auto& w : workers_)
      if (w->state == wstate::ready)
        room += opts_.max_in_flight - std::min(opts_.max_in_flight, w->in_flight.size());
    if (room == 0) return queued();
    std::size_t left = 0;
    batch_.clear();
    {
      std::lock_guard l(mu_);
      while (room > 0 && !queue_.empty()) {
        batch_.push_back(std::move(queue_.front()));
        queue_.pop_front();
        --room;
      }
      left = queue_.size();
      if (blocked_ && !batch_.empty()) space_cv_.notify_all();
    }
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      worker* w = pick();
      if (!w) {  // a worker stopped taking tasks meanwhile (recycled): keep the rest
        std::lock_guard l(mu_);
        for (std::size_t k = batch_.size(); k > i; --k) queue_.push_front(std::move(batch_[k - 1]));
        left = queue_.size();
        break;
      }
      send(*w, std::move(batch_[i]));
      touched_.push_back(w);
    }
    batch_.clear();
    for (worker* w : touched_) flush(*w);
    touched_.clear();
    return left;
  }

  void scale_up(std::size_t waiting) {
    if (live() >= opts_.max_workers || spawn_failing_) return;
    if (live() < opts_.min_workers || owed_ > 0) {
      maintain();
      return;
    }
    const auto now = clock::now();
    if (scaled_once_ && now - last_scale_up_ < opts_.scale_up_cooldown) {
      if (!cooldown_timer_) {
        auto d = std::chrono::duration_cast<ms>(opts_.scale_up_cooldown - (now - last_scale_up_)) +
                 ms(1);
        cooldown_timer_ = loop_.after(d, [this] { guarded([this] { cooldown_timer_ = 0; }); });
      }
      return;
    }
    (void)waiting;
    if (worker* w = start_worker(false)) {
      scaled_once_ = true;
      last_scale_up_ = now;
      emit(pool_event_kind::scaled_up, w, "scaled up to " + std::to_string(live()) + " workers");
    }
  }

  std::vector<std::future<json>> do_broadcast(const std::string& method, const json& params) {
    std::vector<std::future<json>> out;
    if (stop_now_ || !accepting_now()) return out;
    for (auto& wp : workers_) {
      worker& w = *wp;
      if (w.state != wstate::ready) continue;
      auto t = std::make_unique<task>();
      t->method = method;
      t->params = params;
      t->broadcast = true;
      t->id = 0;
      out.push_back(t->promise.get_future());
      outstanding_.fetch_add(1);
      send(w, std::move(t));
      flush(w);
    }
    return out;
  }

  bool accepting_now() const {
    std::lock_guard l(mu_);
    return accepting_;
  }

  // ---- timers --------------------------------------------------------------------

  void on_tick() {
    const auto now = clock::now();
    const bool hb = opts_.heartbeat_interval > ms::zero() && !plain();
    std::vector<std::pair<worker*, std::string>> hung;
    std::vector<worker*> timed_out;
    for (auto& wp : workers_) {
      worker& w = *wp;
      if (w.state != wstate::ready && w.state != wstate::draining) continue;
      if (hb) {
        if (w.hb_id != 0 && w.last_heard >= w.hb_sent) w.hb_id = 0;  // heard from it since: alive
        if (w.hb_id != 0 && now - w.hb_sent > opts_.heartbeat_timeout) {
          auto silent = std::chrono::duration_cast<ms>(now - w.hb_sent).count();
          hung.emplace_back(
              &w, "killed: no answer to a heartbeat for " + std::to_string(silent) + " ms");
          continue;
        }
        if (w.hb_id == 0 && now - std::max(w.last_heard, w.hb_sent) >= opts_.heartbeat_interval) {
          w.hb_id = ++rpc_id_;
          w.hb_sent = now;
          try {
            w.ch.enqueue_request(w.hb_id, "rpc.heartbeat", json{{"beat", w.hb_id}});
          } catch (const ipc::channel_error&) {
          }
          flush(w);
        }
      }
      if (opts_.task_timeout > ms::zero() && !w.in_flight.empty() &&
          now - w.in_flight.front().since > opts_.task_timeout)
        timed_out.push_back(&w);
    }
    for (auto& [w, why] : hung) kill_worker(*w, stop_why::hung, why);
    for (worker* w : timed_out) time_out(*w);
    if (!stopping_) scale_down(now);
  }

  // The oldest task of w ran past task_timeout: it fails, and w (which may be stuck
  // in it) is killed; its other tasks are retried when it is dead, uncharged.
  void time_out(worker& w) {
    task_ptr t = std::move(w.in_flight.front().t);
    w.in_flight.pop_front();
    t->attempts.push_back({w.pid, std::nullopt, "timed out; the worker was killed"});
    if (!t->broadcast) timed_out_.fetch_add(1);
    const auto limit = std::to_string(opts_.task_timeout.count());
    const std::string what = "task " + std::to_string(t->id) + " ('" + t->method +
                             "') timed out after " + limit + " ms on worker " +
                             std::to_string(w.pid);
    emit(pool_event_kind::task_timed_out, &w, what, t->id);
    auto e = std::make_exception_ptr(pool_error(pool_errc::task_timeout, opts_.name,
                                                what + "; the worker was killed and replaced",
                                                t->method, t->id, t->attempts));
    const std::uint64_t id = t->id;
    fail(std::move(t), e);
    kill_worker(w, stop_why::timed_out, "killed: task " + std::to_string(id) + " timed out");
  }

  void scale_down(clock::time_point now) {
    if (opts_.max_workers == opts_.min_workers && opts_.min_workers > 0) return;
    for (;;) {
      if (live() <= opts_.min_workers || queued() > 0) return;
      worker* oldest = nullptr;
      for (auto& wp : workers_) {
        worker& w = *wp;
        if (w.state != wstate::ready || !w.in_flight.empty() ||
            now - w.idle_since < opts_.idle_timeout)
          continue;
        if (!oldest || w.idle_since < oldest->idle_since) oldest = &w;
      }
      if (!oldest) return;
      close_worker(*oldest, stop_why::retired);
      emit(pool_event_kind::scaled_down, oldest,
           "scaled down to " + std::to_string(live()) + " workers");
    }
  }

  // ---- shutdown ------------------------------------------------------------------

  void begin_shutdown(ms grace, shutdown_mode mode) {
    guarded([&] {
      if (stopping_) return;
      stopping_ = true;
      stop_mode_ = mode;
      grace_ = grace;
      stop_deadline_ = clock::now() + grace;
      if (cooldown_timer_) loop_.remove(cooldown_timer_);
      cooldown_timer_ = 0;
      if (mode == shutdown_mode::cancel) {
        fail_queue(pool_errc::cancelled, "");
        stop_timer_ = loop_.after(grace, [this] {
          guarded([this] {
            stop_timer_ = 0;
            final_stop();
          });
        });
      }
    });
  }

  void check_shutdown() {
    if (stop_now_) return;
    for (const auto& w : workers_)
      if (!w->in_flight.empty()) return;
    if (stop_mode_ == shutdown_mode::finish && queued() > 0) return;
    final_stop();
  }

  void final_stop() {
    if (stop_now_) return;
    stop_now_ = true;
    for (const auto t : {stop_timer_, retry_timer_, cooldown_timer_})
      if (t) loop_.remove(t);
    stop_timer_ = retry_timer_ = cooldown_timer_ = 0;
    // Tasks still running (cancel mode, at the deadline) are cancelled.
    for (auto& w : workers_)
      for (auto& s : w->in_flight)
        fail_cancelled(std::move(s.t), " while it was running on worker " + std::to_string(w->pid));
    // Anything that raced into the queue (retries) goes too.
    fail_queue(pool_errc::cancelled, "");
    std::vector<process*> procs;
    for (auto& w : workers_) {
      w->in_flight.clear();
      forget(*w);
      w->ch.close();  // a serve() loop returns, a Node worker sees 'disconnect'
      if (w->proc.valid() && !w->proc.status()) procs.push_back(&w->proc);
    }
    // The ladder: the workers have their channel closed, and get the grace period to
    // exit by themselves (a Node worker cleaning up on 'disconnect'); then SIGTERM;
    // then, term_grace later, SIGKILL.
    auto left = std::chrono::duration_cast<ms>(stop_deadline_ - clock::now());
    ms g = stop_mode_ == shutdown_mode::finish ? grace_ : std::max(left, std::min(grace_, ms(100)));
    // Each worker on its own: one whose status cannot be had (SIGCHLD ignored) has
    // exited, and must not cost the others their grace period or their SIGTERM.
    const detail::deadline by_themselves = detail::deadline_in(g);
    std::vector<process*> still;
    for (process* p : procs) {
      try {
        if (!p->wait_until(by_themselves)) still.push_back(p);
      } catch (const error& e) {
        if (e.code() != std::errc::no_child_process) still.push_back(p);  // else: it exited
      } catch (...) {
        still.push_back(p);
      }
    }
    stop_all(still, opts_.term_grace);
    for (auto& w : workers_) {
      if (w->proc.status() && w->why == stop_why::none) w->why = stop_why::shutdown;
      emit(pool_event_kind::worker_stopped, w.get(),
           "worker " + std::to_string(w->pid) + " " +
               (w->proc.status() ? w->proc.status()->to_string() : std::string("stopped")),
           0, w->proc.status());
    }
    {
      std::lock_guard l(mu_);
      io_running_ = false;
    }
    workers_.clear();
    loop_.stop();
  }

  // SIGTERM (and SIGCONT) to all, SIGKILL to those still running `grace` later,
  // all reaped. sp::shutdown() does that with one shared deadline, but it throws as
  // soon as one child turns out to have exited without a status (SIGCHLD ignored,
  // or reaped by other code), leaving the rest unstopped. So with SIGCHLD ignored,
  // and if it throws anyway, the ladder is climbed here, one worker at a time and
  // each failure on its own, by the same deadline. (A group leader's group is then
  // not waited for after the leader exits: its zombie is not kept in that mode.)
  static void stop_all(const std::vector<process*>& procs, ms grace) {
    if (procs.empty()) return;
    const detail::deadline dl = detail::deadline_in(grace);
    if (!detail::children_autoreaped()) {
      try {
        subprocess::shutdown(procs, grace);
        return;
      } catch (...) {
        // Someone else reaped one of them; SIGTERM may not have been sent yet.
      }
    }
    for (process* p : procs) {
      try {
        if (p->status()) continue;
        send_tree(*p, SIGTERM);  // nothing is sent to a child known to be gone
        send_tree(*p, SIGCONT);
      } catch (...) {
      }
    }
    for (process* p : procs) {
      try {
        if (p->status() || p->wait_until(dl)) continue;
        p->kill();
        p->wait();
      } catch (...) {
        // Exited, its status discarded: nothing left to stop.
      }
    }
  }

  // ---- the published snapshot -----------------------------------------------------

  void publish() {
    std::lock_guard l(mu_);
    published_.clear();
    in_flight_pub_ = 0;
    for (const auto& w : workers_)
      for (const auto& s : w->in_flight)
        if (!s.t->broadcast) ++in_flight_pub_;
    for (const auto& w : workers_) {
      if (w->state == wstate::lost || w->state == wstate::closing) continue;
      published_.push_back({w->pid, w->state == wstate::ready, w->in_flight.size(), w->answered});
    }
  }

  // ---- members ---------------------------------------------------------------------

  struct finished {
    task_ptr t;
    json result;
    std::exception_ptr error;
  };

  command cmd_;
  pool_options opts_;

  // Shared with other threads (mu_).
  mutable std::mutex mu_;
  std::condition_variable space_cv_;  // submitters waiting for queue room
  std::condition_variable idle_cv_;   // wait_idle()
  std::deque<task_ptr> queue_;
  std::vector<published_worker> published_;
  std::size_t in_flight_pub_ = 0;
  bool accepting_ = true;
  bool io_running_ = false;  // posts to the loop will run
  bool wake_posted_ = false;
  std::size_t blocked_ = 0;
  std::uint64_t submitted_ = 0, rejected_ = 0;
  std::atomic<std::uint64_t> outstanding_{0};
  std::atomic<std::uint64_t> completed_{0}, failed_{0}, timed_out_{0}, cancelled_{0}, retried_{0};
  std::atomic<std::uint64_t> workers_started_{0}, workers_crashed_{0}, workers_hung_{0},
      workers_replaced_{0}, workers_recycled_{0}, workers_retired_{0};
  std::mutex shutdown_mu_;
  std::atomic<std::thread::id> io_id_{};

  // The I/O thread's own.
  event_loop loop_;
  std::vector<std::unique_ptr<worker>> workers_;
  std::vector<task_ptr> batch_;
  std::vector<worker*> touched_;
  std::vector<finished> done_;
  std::vector<pool_event> events_;
  std::vector<std::pair<pid_t, json>> notes_;  // on_message, delivered in settle()
  ipc::channel::rpc_message msg_;              // reused for every message read
  std::uint64_t serial_ = 0, rpc_id_ = 0;
  std::size_t cursor_ = 0;
  std::size_t owed_ = 0;  // replacements owed for workers lost
  int crash_loop_ = 0;    // workers that died young in a row, without answering
  clock::time_point last_early_death_{}, last_scale_up_{}, stop_deadline_{};
  bool scaled_once_ = false;
  bool spawn_failing_ = false;
  std::string spawn_error_;
  ms backoff_{50}, tick_{100}, grace_{0};
  event_loop::id retry_timer_ = 0, cooldown_timer_ = 0, stop_timer_ = 0;
  bool stopping_ = false, stop_now_ = false;
  shutdown_mode stop_mode_ = shutdown_mode::finish;

  std::thread io_;  // last: started after everything above exists
};

}  // namespace detail

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

// ---- printing: one line each ------------------------------------------------------
// operator<< only: fmt.hpp does not include this header (it would force nlohmann/json
// on every fmt user); with fmt, print these through fmt::streamed(x) (<fmt/ostream.h>).

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
// "worker 4242 killed by SIGKILL"
inline std::string to_string(const pool_attempt& a) { return "worker " + std::to_string(a.pid) + " " + a.what; }

template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, pool_event_kind k) {
  return detail::put_text(os, to_string(k));
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
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_stats& s) {
  return detail::put_text(os, to_string(s));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_event& e) {
  return detail::put_text(os, to_string(e));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_attempt& a) {
  return detail::put_text(os, to_string(a));
}

}  // namespace subprocess
