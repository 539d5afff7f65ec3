// subprocess/detail/pool/outbox.hpp - what the engine owes user code: results,
// events and workers' own messages, collected while pool state is in use and handed
// over (futures fulfilled, callbacks run) once it is settled. Not public API.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "../../pool/events.hpp"
#include "../../pool/options.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class outbox {
 public:
  outbox(const pool_options& o, counters& c, task_queue& q) : opts_(o), counters_(c), queue_(q) {}

  void succeed(task_ptr t, json result) {
    if (!t->broadcast) counters_.completed.fetch_add(1);
    done_.push_back({std::move(t), std::move(result), nullptr});
  }
  void fail(task_ptr t, std::exception_ptr e) {
    if (!t->broadcast) counters_.failed.fetch_add(1);
    done_.push_back({std::move(t), nullptr, e});
  }
  // A pool event; `workers` is the pool's size after it.
  void emit(pool_event_kind k, const worker_link* w, std::size_t workers, std::string message,
            std::uint64_t task = 0, std::optional<exit_status> st = std::nullopt) {
    if (!opts_.on_event) return;
    events_.push_back({k, w ? w->pid : 0, workers, task, st, std::move(message)});
  }
  bool wants_messages() const noexcept { return static_cast<bool>(opts_.on_message); }
  void message(pid_t pid, json m) { notes_.emplace_back(pid, std::move(m)); }

  bool empty() const noexcept { return events_.empty() && done_.empty() && notes_.empty(); }

  // Runs the user code owed: on_event, on_message, then results.
  void deliver() {
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
      pool::deliver(*d.t, std::move(d.result), d.error);
      d.t.reset();
      queue_.fulfilled_one();
    }
  }

 private:
  struct finished {
    task_ptr t;
    json result;
    std::exception_ptr error;
  };

  const pool_options& opts_;
  counters& counters_;
  task_queue& queue_;
  std::vector<finished> done_;
  std::vector<pool_event> events_;
  std::vector<std::pair<pid_t, json>> notes_;  // on_message
};

}  // namespace subprocess::detail::pool
