// subprocess/detail/pool/task_queue.hpp - the part of a worker_pool that other
// threads touch: the queue of waiting tasks, admission (max_queue, shutdown), the
// wait for idleness, the counters and the published snapshot of the workers that
// stats() reads. Everything here is under one mutex, so a stats() snapshot is taken
// together. Not public API.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "../../pool/events.hpp"
#include "../deadline.hpp"
#include "task.hpp"

namespace subprocess::detail::pool {

// Counted by the I/O thread, read by stats() from any thread.
struct counters {
  std::atomic<std::uint64_t> completed{0}, failed{0}, timed_out{0}, cancelled{0}, retried{0};
  std::atomic<std::uint64_t> workers_started{0}, workers_crashed{0}, workers_hung{0},
      workers_replaced{0}, workers_recycled{0}, workers_retired{0};
};

// One worker as stats() shows it.
struct published_worker {
  pid_t pid;
  bool taking;
  std::size_t in_flight;
  std::uint64_t completed;
};

class task_queue {
 public:
  enum class admission { queued, full, shut_down };

  // Numbers and queues t, blocking while the queue is full when `block` (a full queue
  // otherwise refuses it); refused after shutdown. wake() runs under the lock when
  // the I/O thread must be told (once until woken()).
  template <class Wake>
  admission push(task_ptr& t, std::size_t max_queue, bool block, Wake&& wake) {
    std::unique_lock l(mu_);
    if (max_queue != 0 && accepting_ && queue_.size() >= max_queue) {
      if (!block) {
        ++rejected_;
        return admission::full;
      }
      ++blocked_;
      space_cv_.wait(l, [&] { return !accepting_ || queue_.size() < max_queue; });
      --blocked_;
    }
    if (!accepting_) {
      ++rejected_;
      return admission::shut_down;
    }
    t->id = ++submitted_;
    outstanding_.fetch_add(1);
    queue_.push_back(std::move(t));
    if (!wake_posted_ && io_running_) {
      wake_posted_ = true;
      wake();
    }
    return admission::queued;
  }
  void woken() {
    std::lock_guard l(mu_);
    wake_posted_ = false;
  }

  // Runs f under the lock if posts to the I/O thread's loop will still run.
  template <class F>
  bool while_running(F&& f) {
    std::lock_guard l(mu_);
    if (!io_running_) return false;
    f();
    return true;
  }
  void set_running(bool on) {
    std::lock_guard l(mu_);
    io_running_ = on;
  }
  // Stops accepting (shutdown): blocked submitters give up; f runs under the lock if
  // the I/O thread still takes posts.
  template <class F>
  void close(F&& f) {
    std::lock_guard l(mu_);
    accepting_ = false;
    space_cv_.notify_all();
    if (io_running_) f();
  }
  // The I/O thread failed: nothing is accepted or posted any more; returns the queue.
  std::deque<task_ptr> abandon() {
    std::lock_guard l(mu_);
    accepting_ = false;
    io_running_ = false;
    space_cv_.notify_all();
    return std::exchange(queue_, {});
  }
  bool accepting() const {
    std::lock_guard l(mu_);
    return accepting_;
  }

  // ---- the I/O thread's side ----------------------------------------------------

  std::size_t size() const {
    std::lock_guard l(mu_);
    return queue_.size();
  }
  // Moves up to `room` tasks into batch; returns how many are still waiting.
  std::size_t take(std::size_t room, std::vector<task_ptr>& batch) {
    std::lock_guard l(mu_);
    while (room > 0 && !queue_.empty()) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
      --room;
    }
    if (blocked_ && !batch.empty()) space_cv_.notify_all();
    return queue_.size();
  }
  // Puts batch[from..] back at the front, in order; returns the queue's size.
  std::size_t put_back(std::vector<task_ptr>& batch, std::size_t from) {
    std::lock_guard l(mu_);
    for (std::size_t k = batch.size(); k > from; --k) queue_.push_front(std::move(batch[k - 1]));
    return queue_.size();
  }
  // Tasks to run again go first, in order.
  void push_front(std::vector<task_ptr>& again) {
    if (again.empty()) return;
    std::lock_guard l(mu_);
    for (auto it = again.rbegin(); it != again.rend(); ++it) queue_.push_front(std::move(*it));
  }
  std::deque<task_ptr> take_all() {
    std::deque<task_ptr> q;
    std::lock_guard l(mu_);
    q.swap(queue_);
    if (blocked_) space_cv_.notify_all();
    return q;
  }

  // ---- outstanding tasks (accepted, not fulfilled yet) ------------------------------

  void add_outstanding() { outstanding_.fetch_add(1); }
  void fulfilled_one() {
    if (outstanding_.fetch_sub(1) == 1) {
      std::lock_guard l(mu_);
      idle_cv_.notify_all();
    }
  }
  void wait_idle() {
    std::unique_lock l(mu_);
    idle_cv_.wait(l, [&] { return outstanding_.load() == 0; });
  }
  bool wait_idle_for(std::chrono::nanoseconds timeout) {
    std::unique_lock l(mu_);
    return idle_cv_.wait_until(l, deadline_in(timeout), [&] { return outstanding_.load() == 0; });
  }

  // ---- statistics ------------------------------------------------------------------

  // Replaces the snapshot of the workers (ws keeps the old one's storage).
  void publish(std::vector<published_worker>& ws, std::size_t in_flight) {
    std::lock_guard l(mu_);
    published_.swap(ws);
    in_flight_ = in_flight;
  }
  pool_stats stats(const counters& c) const {
    pool_stats s;
    std::lock_guard l(mu_);
    s.submitted = submitted_;
    s.rejected = rejected_;
    s.completed = c.completed.load();
    s.failed = c.failed.load();
    s.timed_out = c.timed_out.load();
    s.cancelled = c.cancelled.load();
    s.retried = c.retried.load();
    s.workers_started = c.workers_started.load();
    s.workers_crashed = c.workers_crashed.load();
    s.workers_hung = c.workers_hung.load();
    s.workers_replaced = c.workers_replaced.load();
    s.workers_recycled = c.workers_recycled.load();
    s.workers_retired = c.workers_retired.load();
    s.queue_depth = queue_.size();
    s.in_flight = in_flight_;
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

 private:
  mutable std::mutex mu_;
  std::condition_variable space_cv_;  // submitters waiting for room
  std::condition_variable idle_cv_;   // wait_idle()
  std::deque<task_ptr> queue_;
  std::vector<published_worker> published_;
  std::size_t in_flight_ = 0;
  bool accepting_ = true;
  bool io_running_ = false;  // posts to the loop will run
  bool wake_posted_ = false;
  std::size_t blocked_ = 0;
  std::uint64_t submitted_ = 0, rejected_ = 0;
  std::atomic<std::uint64_t> outstanding_{0};
};

}  // namespace subprocess::detail::pool
