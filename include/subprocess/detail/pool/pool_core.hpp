// subprocess/detail/pool/pool_core.hpp - the engine of a worker_pool: the I/O
// thread and the coordinator of its parts (task_queue, worker_link, answer_reader,
// dispatcher, failure_policy, scaler, shutdown_ladder). The public handle
// (worker_pool) owns one on the heap, so the pool can be moved and the I/O thread's
// `this` never changes. Not public API.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "../../command.hpp"
#include "../../error.hpp"
#include "../../event_loop.hpp"
#include "../../ipc.hpp"
#include "../../pool/error.hpp"
#include "../../pool/events.hpp"
#include "../../pool/options.hpp"
#include "answers.hpp"
#include "checks.hpp"
#include "dispatch.hpp"
#include "engine.hpp"
#include "failure_policy.hpp"
#include "outbox.hpp"
#include "scaler.hpp"
#include "shutdown.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail {

class pool_core final : private pool::engine {
 public:
  using json = ipc::json;

  // The public operations of worker_pool (documented there).
  pool_core(command worker, pool_options opts) : cmd_(std::move(worker)), opts_(std::move(opts)) {
    pool::check_options(cmd_, opts_);
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
    if (on_io_thread()) return do_broadcast(std::string(method), params);
    auto job = std::make_shared<std::promise<std::vector<std::future<json>>>>();
    auto f = job->get_future();
    const bool posted = queue_.while_running([&] {
      loop_.post([this, job, m = std::string(method), p = std::move(params)] {
        job->set_value(do_broadcast(m, p));
      });
    });
    if (!posted) return {};
    return f.get();
  }

  void wait_idle() { queue_.wait_idle(); }
  bool wait_idle_for(std::chrono::nanoseconds timeout) { return queue_.wait_idle_for(timeout); }
  pool_stats stats() const { return queue_.stats(counters_); }
  std::vector<pid_t> pids() const { return queue_.pids(); }
  bool accepting() const { return queue_.accepting(); }
  const std::string& name() const noexcept { return opts_.name; }

  void shutdown(std::chrono::milliseconds g, shutdown_mode mode) {
    if (on_io_thread())
      throw argument_error(
          opts_.name,
          "worker_pool::shutdown called from a pool callback: it would wait for itself");
    std::lock_guard sl(shutdown_mu_);
    if (!io_.joinable()) return;
    queue_.close([&] {
      loop_.post([this, g, mode] { guarded([&] { ladder_.begin(g, mode); }); });
    });
    io_.join();
  }

 private:
  using clock = pool::clock;
  using ms = pool::ms;
  using worker_link = pool::worker_link;

  bool plain() const noexcept { return opts_.protocol == worker_protocol::plain; }
  void check_params(std::string_view method, const json& params) const {
    pool::check_params(opts_, method, params);
    pool::check_utf8(opts_, params);
  }

  bool on_io_thread() const noexcept { return io_id_.load() == std::this_thread::get_id(); }

  // ---- submitting (any thread) ----------------------------------------------------

  pool::task_ptr make_task(std::string_view method, json params) {
    check_params(method, params);
    auto t = std::make_unique<pool::task>();
    t->method = std::string(method);
    t->params = std::move(params);
    return t;
  }

  void enqueue(pool::task_ptr t) {
    const bool block = opts_.when_full == queue_full_policy::block && !on_io_thread();
    switch (queue_.push(t, opts_.max_queue, block, [this] { loop_.post([this] { on_wake(); }); })) {
      case pool::task_queue::admission::queued:
        return;
      case pool::task_queue::admission::full:
        failures_.refuse(*t, pool_errc::queue_full,
                         "rejected: the queue is full (max_queue " + std::to_string(opts_.max_queue) +
                             ")");
        return;
      case pool::task_queue::admission::shut_down:
        failures_.refuse(*t, pool_errc::shut_down, "rejected: the pool is shut down");
        return;
    }
  }

  // ---- the I/O thread ----------------------------------------------------------------

  void io_main(std::promise<void>& started) {
    io_id_.store(std::this_thread::get_id());
    try {
      for (std::size_t i = 0; i < opts_.min_workers; ++i) scaler_.start_worker(false, true);
      loop_.every(choose_tick(), [this] { guarded([this] { on_tick(); }); });
      queue_.set_running(true);
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

  // engine: the work, then dispatch, then user code (events, results) at a point
  // where no pool state is in use.
  void run_guarded(void* f, void (*call)(void*)) override {
    call(f);
    settle();
  }

  void on_wake() {
    guarded([this] { queue_.woken(); });
  }

  void settle() {
    for (;;) {
      pump();
      if (phase_.stopping) ladder_.check();
      publish();
      if (out_.empty()) return;
      out_.deliver();
      if (phase_.stop_now) return;
    }
  }

  void pump() {
    if (phase_.stop_now) return;
    // A worker started here (scale-up, replacement) gets the waiting tasks at once: one
    // more pass then.
    for (int pass = 0; pass < 2 && !phase_.cancelling(); ++pass) {
      const std::uint64_t started_before = scaler_.started();
      const std::size_t left = dispatch_.dispatch();
      if (left > 0) scaler_.scale_up();
      if (pool::live(workers_) < opts_.min_workers) scaler_.maintain();
      if (scaler_.started() == started_before || left == 0) break;
    }
    scaler_.fail_if_hopeless();
  }

  // Something went wrong inside the pool itself: fail everything, stop everything.
  void fatal(const std::string& why) {
    phase_.stopping = phase_.stop_now = true;
    std::vector<pool::task_ptr> all;
    for (auto& t : queue_.abandon()) all.push_back(std::move(t));
    for (auto& w : workers_) {
      w->forget();
      for (auto& s : w->in_flight) all.push_back(std::move(s.t));
    }
    for (auto& t : all)
      if (t) failures_.abandon(std::move(t), why);
    workers_.clear();
    publish();
  }

  // What stats() and pids() show: the workers not on their way out.
  void publish() {
    std::size_t in_flight = 0;
    for (const auto& w : workers_)
      for (const auto& s : w->in_flight)
        if (!s.t->broadcast) ++in_flight;
    published_.clear();
    for (const auto& w : workers_) {
      if (w->state == pool::wstate::lost || w->state == pool::wstate::closing) continue;
      published_.push_back({w->pid, w->state == pool::wstate::ready, w->in_flight.size(), w->answered_count});
    }
    queue_.publish(published_, in_flight);
  }

  // ---- workers (engine) ----------------------------------------------------------

  void on_readable(worker_link& w, std::uint32_t ev) override {
    guarded([&] {
      if (answers_.readable(w, ev)) channel_ended(w);
    });
  }

  // The channel ended (the peer closed it or died). Its tasks are dealt with when the
  // process exit is seen, which carries the status.
  void channel_ended(worker_link& w) {
    w.unwatch_channel();
    if (!w.taking()) return;
    scaler_.owe(w);
    w.give_up();  // a worker that closed its channel but lives on is of no use
    scaler_.maintain();
  }

  void kill(worker_link& w, pool::stop_why why, std::string text) override {
    w.kill(why, std::move(text));
    counters_.workers_hung.fetch_add(1);
    out_.emit(pool_event_kind::worker_hung, &w, pool::live(workers_),
              "worker " + std::to_string(w.pid) + " " + w.why_text);
    scaler_.owe(w);
    scaler_.maintain();
  }

  // st: nullopt if the worker's status cannot be had (see "SIGCHLD ignored").
  void on_exit(worker_link& w, std::optional<exit_status> st) override {
    guarded([&] { exited(w, st); });
  }
  void exited(worker_link& w, const std::optional<exit_status>& st) {
    w.exited();
    // Answers it sent before it died are still results.
    if (w.ch.is_open()) {
      answers_.read_all(w);
      w.unwatch_channel();
      w.ch.close();
    }
    w.cancel_kill();
    const auto now = clock::now();
    const std::string line = "worker " + std::to_string(w.pid) + " " + pool::failure_policy::ended(st);
    if (w.why == pool::stop_why::none) {
      w.why = pool::stop_why::crashed;
      counters_.workers_crashed.fetch_add(1);
      scaler_.young_death(w, now);
      out_.emit(pool_event_kind::worker_crashed, &w, pool::live(workers_), line, 0, st);
      scaler_.owe(w);
    } else if (w.why == pool::stop_why::hung) {
      // Reported when it was killed. Killed young without an answer (garbage or a
      // message too long right from the start): restarted with the same backoff.
      scaler_.young_death(w, now);
    } else if (w.why != pool::stop_why::timed_out) {
      out_.emit(pool_event_kind::worker_stopped, &w, pool::live(workers_), line, 0, st);
    }
    failures_.worker_died(w, st);
    auto it = std::find_if(workers_.begin(), workers_.end(),
                           [&](const auto& p) { return p.get() == &w; });
    if (it != workers_.end()) workers_.erase(it);  // &w is gone from here on
    scaler_.maintain();
  }

  // ---- timers --------------------------------------------------------------------

  void on_tick() {
    const auto now = clock::now();
    const bool hb = opts_.heartbeat_interval > ms::zero() && !plain();
    std::vector<std::pair<worker_link*, std::string>> hung;
    std::vector<worker_link*> timed_out;
    for (auto& wp : workers_) {
      worker_link& w = *wp;
      if (!w.taking()) continue;
      if (hb) {
        if (auto why = w.heartbeat(now, dispatch_.rpc_ids())) {
          hung.emplace_back(&w, std::move(*why));
          continue;
        }
      }
      if (w.overdue(now)) timed_out.push_back(&w);
    }
    for (auto& [w, why] : hung) kill(*w, pool::stop_why::hung, why);
    for (worker_link* w : timed_out) failures_.time_out(*w);
    if (!phase_.stopping) scaler_.scale_down(now);
  }

  std::vector<std::future<json>> do_broadcast(const std::string& method, const json& params) {
    if (phase_.stop_now || !queue_.accepting()) return {};
    return dispatch_.broadcast(method, params);
  }

  // ---- members ---------------------------------------------------------------------

  command cmd_;
  pool_options opts_;

  // Shared with other threads.
  pool::task_queue queue_;
  pool::counters counters_;
  std::mutex shutdown_mu_;
  std::atomic<std::thread::id> io_id_{};

  // The I/O thread's own.
  event_loop loop_;
  pool::worker_list workers_;
  pool::phase phase_;
  pool::outbox out_{opts_, counters_, queue_};
  pool::failure_policy failures_{opts_, phase_, workers_, queue_, out_, counters_, *this};
  pool::scaler scaler_{cmd_, opts_, phase_, workers_, queue_, out_, counters_, failures_, loop_, *this};
  pool::answer_reader answers_{opts_, out_, scaler_, *this};
  pool::dispatcher dispatch_{opts_, workers_, queue_, out_, scaler_};
  pool::shutdown_ladder ladder_{opts_, phase_, workers_, queue_, out_, failures_, scaler_, loop_, *this};
  std::vector<pool::published_worker> published_;  // publish()'s scratch

  std::thread io_;  // last: started after everything above exists
};

}  // namespace subprocess::detail
