// subprocess/detail/pool/dispatch.hpp - assignment: hands queued tasks to workers
// with room (fewer than max_in_flight in flight), least_busy or round_robin, and
// sends them (one flush per worker for the whole batch). Not public API.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "../../error.hpp"
#include "../../ipc.hpp"
#include "../../pool/options.hpp"
#include "outbox.hpp"
#include "scaler.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class dispatcher {
 public:
  dispatcher(const pool_options& o, worker_list& ws, task_queue& q, outbox& out, scaler& sc)
      : opts_(o), workers_(ws), queue_(q), out_(out), scaler_(sc) {}

  // Hands queued tasks to workers with room; returns how many are still waiting.
  std::size_t dispatch() {
    std::size_t room = 0;
    for (const auto& w : workers_)
      if (w->state == wstate::ready)
        room += opts_.max_in_flight - std::min(opts_.max_in_flight, w->in_flight.size());
    if (room == 0) return queue_.size();
    batch_.clear();
    std::size_t left = queue_.take(room, batch_);
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      worker_link* w = pick();
      if (!w) {  // a worker stopped taking tasks meanwhile (recycled): keep the rest
        left = queue_.put_back(batch_, i);
        break;
      }
      send(*w, std::move(batch_[i]));
      touched_.push_back(w);
    }
    batch_.clear();
    for (worker_link* w : touched_) w->flush();
    touched_.clear();
    return left;
  }

  // Sends t to w (the caller flushes w).
  void send(worker_link& w, task_ptr t) {
    const std::uint64_t id = ++rpc_id_;
    const auto now = clock::now();
    w.in_flight.push_back({id, std::move(t), w.in_flight.empty() ? now : clock::time_point::max()});
    ++w.assigned;
    try {
      if (opts_.protocol == worker_protocol::plain)
        w.ch.enqueue(w.in_flight.back().t->params);
      else
        w.ch.enqueue_request(id, w.in_flight.back().t->method, w.in_flight.back().t->params);
    } catch (const ipc::channel_error&) {
      // The worker is gone; its exit retries the task.
      if (w.state == wstate::ready) {
        scaler_.owe(w);
        w.give_up();
      }
    } catch (const argument_error&) {
      // Checked in submit(), so not expected: the task fails, the pool goes on.
      task_ptr bad = std::move(w.in_flight.back().t);
      w.in_flight.pop_back();
      out_.fail(std::move(bad), std::current_exception());
      return;
    }
    scaler_.count_task(w, *w.in_flight.back().t);
  }

  // One call on every worker taking tasks: not a task (not retried, not counted).
  std::vector<std::future<json>> broadcast(const std::string& method, const json& params) {
    std::vector<std::future<json>> out;
    for (auto& wp : workers_) {
      worker_link& w = *wp;
      if (w.state != wstate::ready) continue;
      auto t = std::make_unique<task>();
      t->method = method;
      t->params = params;
      t->broadcast = true;
      out.push_back(t->promise.get_future());
      queue_.add_outstanding();
      send(w, std::move(t));
      w.flush();
    }
    return out;
  }

  // Request ids, shared with heartbeats.
  std::uint64_t& rpc_ids() noexcept { return rpc_id_; }

 private:
  worker_link* pick() {
    const std::size_t n = workers_.size();
    worker_link* best = nullptr;
    std::size_t best_at = 0;
    for (std::size_t k = 0; k < n; ++k) {
      std::size_t i = (cursor_ + k) % n;
      worker_link* w = workers_[i].get();
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

  const pool_options& opts_;
  worker_list& workers_;
  task_queue& queue_;
  outbox& out_;
  scaler& scaler_;
  std::uint64_t rpc_id_ = 0;
  std::size_t cursor_ = 0;
  std::vector<task_ptr> batch_;
  std::vector<worker_link*> touched_;
};

}  // namespace subprocess::detail::pool
