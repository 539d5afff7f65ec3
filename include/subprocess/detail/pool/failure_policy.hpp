// subprocess/detail/pool/failure_policy.hpp - what becomes of tasks that cannot get
// an answer: those of a worker that died (retried up to max_retries, or failed with
// every attempt listed), a task that timed out, tasks cancelled or refused. Every
// task ends here or with an answer, exactly once. Not public API.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../../exit_status.hpp"
#include "../../pool/error.hpp"
#include "../../pool/options.hpp"
#include "engine.hpp"
#include "outbox.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class failure_policy {
 public:
  failure_policy(const pool_options& o, const phase& ph, const worker_list& ws, task_queue& q,
                 outbox& out, counters& c, engine& owner)
      : opts_(o), phase_(ph), workers_(ws), queue_(q), out_(out), counters_(c), owner_(owner) {}

  static std::string ended(const std::optional<exit_status>& st) {
    return st ? st->to_string() : std::string(unknown_status);
  }

  // w died (st: how, if known) with tasks in flight: each is queued again (first in
  // line) while it has retries left, else fails. A task that timed out elsewhere
  // killed w: its other tasks are victims, not charged a retry.
  void worker_died(worker_link& w, const std::optional<exit_status>& st) {
    std::string what = w.why_text.empty() ? ended(st) : w.why_text + " (" + ended(st) + ")";
    const bool charge = w.why != stop_why::timed_out;
    std::vector<task_ptr> again;
    for (auto& s : w.in_flight) {
      task_ptr t = std::move(s.t);
      t->attempts.push_back({w.pid, st, what});
      if (charge) ++t->charged;
      if (t->broadcast || t->charged > opts_.max_retries) {
        auto err = crashed_error(*t, w);
        out_.fail(std::move(t), err);
      } else if (phase_.cancelling()) {
        cancel(std::move(t), "");
      } else {
        counters_.retried.fetch_add(1);
        out_.emit(pool_event_kind::task_retried, &w, live(workers_),
                  "task " + std::to_string(t->id) + " ('" + t->method +
                      "') queued again after worker " + std::to_string(w.pid) + " " + what,
                  t->id);
        again.push_back(std::move(t));
      }
    }
    w.in_flight.clear();
    queue_.push_front(again);
  }

  // The oldest task of w ran past task_timeout: it fails, and w (which may be stuck
  // in it) is killed; its other tasks are retried when it is dead, uncharged.
  void time_out(worker_link& w) {
    task_ptr t = std::move(w.in_flight.front().t);
    w.in_flight.pop_front();
    t->attempts.push_back({w.pid, std::nullopt, "timed out; the worker was killed"});
    if (!t->broadcast) counters_.timed_out.fetch_add(1);
    const auto limit = std::to_string(opts_.task_timeout.count());
    const std::string what = "task " + std::to_string(t->id) + " ('" + t->method +
                             "') timed out after " + limit + " ms on worker " +
                             std::to_string(w.pid);
    out_.emit(pool_event_kind::task_timed_out, &w, live(workers_), what, t->id);
    auto e = std::make_exception_ptr(pool_error(pool_errc::task_timeout, opts_.name,
                                                what + "; the worker was killed and replaced",
                                                t->method, t->id, t->attempts));
    const std::uint64_t id = t->id;
    out_.fail(std::move(t), e);
    owner_.kill(w, stop_why::timed_out, "killed: task " + std::to_string(id) + " timed out");
  }

  void cancel(task_ptr t, const std::string& where) {
    counters_.cancelled.fetch_add(1);
    auto e =
        std::make_exception_ptr(pool_error(pool_errc::cancelled, opts_.name,
                                           "task " + std::to_string(t->id) + " ('" + t->method +
                                               "') cancelled: pool shut down" + where,
                                           t->method, t->id, t->attempts));
    out_.fail(std::move(t), e);
  }

  // Every queued task fails with `kind`.
  void fail_queue(pool_errc kind, const std::string& why) {
    std::deque<task_ptr> q = queue_.take_all();
    for (auto& t : q) {
      if (kind == pool_errc::cancelled) {
        cancel(std::move(t), "");
        continue;
      }
      auto e = std::make_exception_ptr(pool_error(
          kind, opts_.name, "task " + std::to_string(t->id) + " ('" + t->method + "') " + why,
          t->method, t->id, t->attempts));
      out_.fail(std::move(t), e);
    }
  }

  // The pool's I/O thread failed: t fails now (no loop is left to deliver it later).
  void abandon(task_ptr t, const std::string& why) {
    auto e = std::make_exception_ptr(
        pool_error(pool_errc::cancelled, opts_.name,
                   "task " + std::to_string(t->id) + " ('" + t->method +
                       "') cancelled: the pool's I/O thread failed: " + why,
                   t->method, t->id, t->attempts));
    if (!t->broadcast) {
      counters_.failed.fetch_add(1);
      counters_.cancelled.fetch_add(1);
    }
    deliver(*t, nullptr, e);
    queue_.fulfilled_one();
  }

  // submit() refused t (queue full, shut down): failed at once, on the caller's
  // thread (reads only the options: safe from any thread).
  void refuse(task& t, pool_errc kind, const std::string& why) const {
    auto e = std::make_exception_ptr(
        pool_error(kind, opts_.name, "task '" + t.method + "' " + why, t.method, 0));
    deliver(t, nullptr, e);
  }

 private:
  static constexpr const char* unknown_status =
      "exited with an unknown status (the kernel discarded it: SIGCHLD is ignored, or "
      "other code reaped it)";

  std::exception_ptr crashed_error(const task& t, const worker_link& w) const {
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

  const pool_options& opts_;
  const phase& phase_;
  const worker_list& workers_;
  task_queue& queue_;
  outbox& out_;
  counters& counters_;
  engine& owner_;
};

}  // namespace subprocess::detail::pool
