// subprocess/detail/pool/scaler.hpp - the pool's size: min_workers always, one more
// worker while tasks wait (at most one per scale_up_cooldown, up to max_workers),
// idle workers retired after idle_timeout, workers recycled after
// max_tasks_per_worker, replacements for workers lost, and the backoff that keeps a
// broken worker program (spawn failures, workers dying young) from making the pool
// spin. Not public API.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "../../command.hpp"
#include "../../event_loop.hpp"
#include "../../pool/error.hpp"
#include "../../pool/options.hpp"
#include "engine.hpp"
#include "failure_policy.hpp"
#include "outbox.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class scaler {
 public:
  scaler(const command& cmd, const pool_options& o, const phase& ph, worker_list& ws, task_queue& q,
         outbox& out, counters& c, failure_policy& failures, event_loop& loop, engine& owner)
      : cmd_(cmd), opts_(o), phase_(ph), workers_(ws), queue_(q), out_(out), counters_(c),
        failures_(failures), loop_(loop), owner_(owner) {}

  // Starts one worker. initial: a spawn_error propagates (the constructor's); else it
  // is reported, and retried after a backoff. Returns the worker or nullptr.
  worker_link* start_worker(bool replacing, bool initial = false) {
    auto w = std::make_unique<worker_link>(++serial_, opts_, loop_, owner_);
    try {
      w->start(cmd_);
    } catch (const std::exception& e) {
      if (initial) throw;
      spawn_failed(e.what());
      return nullptr;
    }
    spawn_failing_ = false;
    spawn_error_.clear();
    w->watch();
    worker_link* raw = w.get();
    workers_.push_back(std::move(w));
    counters_.workers_started.fetch_add(1);
    if (replacing) counters_.workers_replaced.fetch_add(1);
    out_.emit(pool_event_kind::worker_started, raw, live(workers_),
              "worker " + std::to_string(raw->pid) + " started" + (replacing ? " (a replacement)" : ""));
    return raw;
  }
  // Workers started so far (SUBPROCESS_WORKER_ID of the last one).
  std::uint64_t started() const noexcept { return serial_; }

  // w stopped taking tasks without the pool wanting fewer workers: one replacement.
  void owe(worker_link& w) {
    if (w.owed) return;
    w.owed = true;
    ++owed_;
  }
  // An answer (or a heartbeat's): workers are not dying young in a row.
  void heard_answer() noexcept { crash_loop_ = 0; }
  // A worker that died (or was killed) young before answering anything.
  void young_death(const worker_link& w, clock::time_point now) {
    if (w.answered_count == 0 && now - w.started < std::chrono::seconds(1)) {
      ++crash_loop_;
      last_early_death_ = now;
    }
  }

  // Starts workers the pool needs: up to min_workers, plus one for waiting tasks.
  void maintain() {
    if (phase_.cancelling()) return;
    if (spawn_failing_ && retry_timer_) return;  // backing off
    while (live(workers_) < opts_.min_workers ||
           (owed_ > 0 && queue_.size() > 0 && live(workers_) < opts_.max_workers)) {
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
    if (live(workers_) >= opts_.min_workers && queue_.size() == 0) owed_ = 0;
  }

  // Tasks are waiting and every worker is full: one more worker, if allowed now.
  void scale_up() {
    if (live(workers_) >= opts_.max_workers || spawn_failing_) return;
    if (live(workers_) < opts_.min_workers || owed_ > 0) {
      maintain();
      return;
    }
    const auto now = clock::now();
    if (scaled_once_ && now - last_scale_up_ < opts_.scale_up_cooldown) {
      if (!cooldown_timer_) {
        auto d = std::chrono::duration_cast<ms>(opts_.scale_up_cooldown - (now - last_scale_up_)) +
                 ms(1);
        cooldown_timer_ = loop_.after(d, [this] { owner_.guarded([this] { cooldown_timer_ = 0; }); });
      }
      return;
    }
    if (worker_link* w = start_worker(false)) {
      scaled_once_ = true;
      last_scale_up_ = now;
      out_.emit(pool_event_kind::scaled_up, w, live(workers_),
                "scaled up to " + std::to_string(live(workers_)) + " workers");
    }
  }

  // Retires the workers idle for idle_timeout, oldest first, never below min_workers.
  void scale_down(clock::time_point now) {
    if (opts_.max_workers == opts_.min_workers && opts_.min_workers > 0) return;
    for (;;) {
      if (live(workers_) <= opts_.min_workers || queue_.size() > 0) return;
      worker_link* oldest = nullptr;
      for (auto& wp : workers_) {
        worker_link& w = *wp;
        if (w.state != wstate::ready || !w.in_flight.empty() ||
            now - w.idle_since < opts_.idle_timeout)
          continue;
        if (!oldest || w.idle_since < oldest->idle_since) oldest = &w;
      }
      if (!oldest) return;
      oldest->close(stop_why::retired);
      counters_.workers_retired.fetch_add(1);
      out_.emit(pool_event_kind::scaled_down, oldest, live(workers_),
                "scaled down to " + std::to_string(live(workers_)) + " workers");
    }
  }

  // After a task was sent to w: its max_tasks_per_worker-th gets it recycled (no more
  // tasks; closed once they are answered; replaced).
  void count_task(worker_link& w, const task& t) {
    if (t.broadcast || opts_.max_tasks_per_worker == 0 ||
        w.assigned < opts_.max_tasks_per_worker || w.state != wstate::ready)
      return;
    w.state = wstate::draining;
    counters_.workers_recycled.fetch_add(1);
    owe(w);  // pump() starts the replacement
    out_.emit(pool_event_kind::worker_recycled, &w, live(workers_),
              "worker " + std::to_string(w.pid) + " recycled after " + std::to_string(w.assigned) +
                  " tasks");
  }

  // ---- spawn failures --------------------------------------------------------------

  // Reported, retried after 50 ms, 100 ms, ... up to 5 s; with no worker running,
  // the waiting tasks fail with no_workers.
  void spawn_failed(const std::string& why) {
    spawn_error_ = why;
    if (!spawn_failing_) backoff_ = ms(50);
    spawn_failing_ = true;
    out_.emit(pool_event_kind::spawn_failed, nullptr, live(workers_), "cannot start a worker: " + why);
    retry_after(backoff_);
    backoff_ = std::min(backoff_ * 2, ms(5000));
    if (live(workers_) == 0)
      failures_.fail_queue(pool_errc::no_workers, "failed: no worker could be started: " + why);
  }
  // No worker runs and none can be started: the waiting tasks fail.
  void fail_if_hopeless() {
    if (spawn_failing_ && live(workers_) == 0 && !phase_.cancelling())
      failures_.fail_queue(pool_errc::no_workers,
                           "failed: no worker could be started: " + spawn_error_);
  }

  void cancel_cooldown() {
    if (cooldown_timer_) loop_.remove(cooldown_timer_);
    cooldown_timer_ = 0;
  }
  void cancel_timers() {
    for (const auto t : {retry_timer_, cooldown_timer_})
      if (t) loop_.remove(t);
    retry_timer_ = cooldown_timer_ = 0;
  }

 private:
  // Schedules one more look at the pool's size (replacements, scale-up).
  void retry_after(ms d) {
    if (retry_timer_) return;
    retry_timer_ = loop_.after(d, [this] {
      owner_.guarded([this] {
        retry_timer_ = 0;
        maintain();
      });
    });
  }

  const command& cmd_;
  const pool_options& opts_;
  const phase& phase_;
  worker_list& workers_;
  task_queue& queue_;
  outbox& out_;
  counters& counters_;
  failure_policy& failures_;
  event_loop& loop_;
  engine& owner_;

  std::uint64_t serial_ = 0;
  std::size_t owed_ = 0;  // replacements owed for workers lost
  int crash_loop_ = 0;    // workers that died young in a row, without answering
  clock::time_point last_early_death_{}, last_scale_up_{};
  bool scaled_once_ = false;
  bool spawn_failing_ = false;
  std::string spawn_error_;
  ms backoff_{50};
  event_loop::id retry_timer_ = 0, cooldown_timer_ = 0;
};

}  // namespace subprocess::detail::pool
