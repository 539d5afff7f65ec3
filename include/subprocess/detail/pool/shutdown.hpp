// subprocess/detail/pool/shutdown.hpp - the shutdown ladder: stop accepting; finish
// the queue (finish) or cancel it (cancel, running tasks get the grace); then close
// every channel, give the workers the grace to exit by themselves, SIGTERM (and
// SIGCONT), SIGKILL term_grace later, all reaped. Not public API.
#pragma once

#include <algorithm>
#include <chrono>
#include <csignal>
#include <string>
#include <system_error>
#include <vector>

#include "../../error.hpp"
#include "../../event_loop.hpp"
#include "../../pool/error.hpp"
#include "../../pool/options.hpp"
#include "../../process.hpp"
#include "../../signals.hpp"
#include "../deadline.hpp"
#include "engine.hpp"
#include "failure_policy.hpp"
#include "outbox.hpp"
#include "scaler.hpp"
#include "task_queue.hpp"
#include "worker_link.hpp"

namespace subprocess::detail::pool {

class shutdown_ladder {
 public:
  shutdown_ladder(const pool_options& o, phase& ph, worker_list& ws, task_queue& q, outbox& out,
                  failure_policy& failures, scaler& sc, event_loop& loop, engine& owner)
      : opts_(o), phase_(ph), workers_(ws), queue_(q), out_(out), failures_(failures),
        scaler_(sc), loop_(loop), owner_(owner) {}

  // On the I/O thread, once shutdown() has stopped the queue from accepting.
  void begin(ms grace, shutdown_mode mode) {
    if (phase_.stopping) return;
    phase_.stopping = true;
    phase_.mode = mode;
    grace_ = grace;
    deadline_ = clock::now() + grace;
    scaler_.cancel_cooldown();
    if (mode == shutdown_mode::cancel) {
      failures_.fail_queue(pool_errc::cancelled, "");
      timer_ = loop_.after(grace, [this] {
        owner_.guarded([this] {
          timer_ = 0;
          final_stop();
        });
      });
    }
  }

  // After each loop callback while stopping: the last step once nothing is left to
  // wait for.
  void check() {
    if (phase_.stop_now) return;
    for (const auto& w : workers_)
      if (!w->in_flight.empty()) return;
    if (phase_.mode == shutdown_mode::finish && queue_.size() > 0) return;
    final_stop();
  }

 private:
  void final_stop() {
    if (phase_.stop_now) return;
    phase_.stop_now = true;
    if (timer_) loop_.remove(timer_);
    timer_ = 0;
    scaler_.cancel_timers();
    // Tasks still running (cancel mode, at the deadline) are cancelled.
    for (auto& w : workers_)
      for (auto& s : w->in_flight)
        failures_.cancel(std::move(s.t), " while it was running on worker " + std::to_string(w->pid));
    // Anything that raced into the queue (retries) goes too.
    failures_.fail_queue(pool_errc::cancelled, "");
    std::vector<process*> procs;
    for (auto& w : workers_) {
      w->in_flight.clear();
      w->forget();
      w->ch.close();  // a serve() loop returns, a Node worker sees 'disconnect'
      if (w->proc.valid() && !w->proc.status()) procs.push_back(&w->proc);
    }
    // The ladder: the workers have their channel closed, and get the grace period to
    // exit by themselves (a Node worker cleaning up on 'disconnect'); then SIGTERM;
    // then, term_grace later, SIGKILL.
    auto left = std::chrono::duration_cast<ms>(deadline_ - clock::now());
    ms g = phase_.mode == shutdown_mode::finish ? grace_ : std::max(left, std::min(grace_, ms(100)));
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
      out_.emit(pool_event_kind::worker_stopped, w.get(), live(workers_),
                "worker " + std::to_string(w->pid) + " " +
                    (w->proc.status() ? w->proc.status()->to_string() : std::string("stopped")),
                0, w->proc.status());
    }
    queue_.set_running(false);
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
  // Each wait goes through process (and so detail::exit_watcher).
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

  const pool_options& opts_;
  phase& phase_;
  worker_list& workers_;
  task_queue& queue_;
  outbox& out_;
  failure_policy& failures_;
  scaler& scaler_;
  event_loop& loop_;
  engine& owner_;
  ms grace_{0};
  clock::time_point deadline_{};
  event_loop::id timer_ = 0;
};

}  // namespace subprocess::detail::pool
