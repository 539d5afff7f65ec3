// subprocess/detail/pipeline/supervisor.hpp - the thread that waits for a
// pipeline's children. Not public API.
//
// It polls every stage's pidfd (a stage without one is looked at every 50 ms),
// the stderr pipes it captures and the pumps' wake-up eventfd; at the deadline it
// applies the timeout policy (SIGKILL; or a signal, then SIGKILL after the grace to
// whatever of the stages and their group is left), and once every stage has exited
// and every pump is done it joins the pumps and marks the pipeline finished. A stage that exited is
// reaped at once, except the process group's leader: it stays a zombie until every other stage is
// gone (and the timeout's grace, if running, is over), which keeps the group's id from being reused
// while the group may still be signalled.
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "../deadline.hpp"
#include "../eventfd.hpp"
#include "../exit_watch.hpp"
#include "../pgroup.hpp"
#include "../poll.hpp"
#include "control.hpp"
#include "pump.hpp"
#include "state.hpp"

namespace subprocess::detail {

class supervisor {
 public:
  explicit supervisor(pipeline_state& st) noexcept : st_(st) {}

  // The supervisor thread's body. On return, finished is set and done_fd readable.
  void run() noexcept {
    block_async_signals();
    try {
      loop();
      if (st_.wait_for_tree) wait_trees();
    } catch (...) {
      st_.fail(std::current_exception());
      reap_all();
    }
    for (auto& p : st_.pumps)
      if (p->thread.joinable()) p->thread.join();
    {
      std::lock_guard lk(st_.mu);
      st_.finished = true;
    }
    st_.cv.notify_all();
    eventfd_notify(st_.done_fd.get());
  }

 private:
  void loop() {
    auto& stages = st_.stages;
    std::vector<pollfd> fds;
    std::vector<std::size_t> who;  // per fd: SIZE_MAX wake, k a stage's pidfd, n + k its stderr
    const std::size_t n = stages.size();
    exit_poll backoff;  // for stages without a pidfd
    for (;;) {
      fds.clear();
      who.clear();
      fds.push_back({st_.wake_fd.get(), POLLIN, 0});
      who.push_back(SIZE_MAX);
      bool tick = false;  // a stage without pidfd: look on the exit_poll schedule
      bool all_exited;
      {
        std::lock_guard lk(st_.mu);
        for (std::size_t k = 0; k < n; ++k) {
          if (stages[k].is_transform || stages[k].status) continue;
          if (stages[k].proc.pidfd() >= 0) {
            fds.push_back({stages[k].proc.pidfd(), POLLIN, 0});
            who.push_back(k);
          } else {
            tick = true;
          }
        }
        all_exited = st_.exited == st_.commands;
      }
      bool errs_open = false;
      for (std::size_t k = 0; k < n; ++k)
        if (stages[k].err.is_open() && !stages[k].err.eof()) {
          errs_open = true;
          fds.push_back({stages[k].err.fd(), POLLIN, 0});
          who.push_back(n + k);
        }
      bool pumps_done = std::all_of(st_.pumps.begin(), st_.pumps.end(), [](const std::unique_ptr<pump>& p) {
        return p->done.load(std::memory_order_acquire);
      });
      deadline kill_at;
      {
        std::lock_guard lk(st_.mu);
        if (st_.grace_pending_locked()) kill_at = st_.kill_at;
      }
      // The timeout's grace: SIGKILL at its end, unless the stages and the rest of
      // their group are gone before (no fd tells that: looked at on exit_poll's schedule).
      if (kill_at) {
        const bool expired = clock::now() >= *kill_at;
        const bool alive = (expired || all_exited) && (!all_exited || group_alive());
        if (expired || (all_exited && !alive)) {
          end_grace(expired && alive);
          continue;
        }
      }
      if (all_exited && pumps_done && !errs_open && !kill_at) return;
      const bool stopped = st_.stopping.load();
      if (all_exited && stopped && errs_open) {
        // Killed, and something (a grandchild outside our reach) still holds a stderr
        // pipe: take what is there and stop waiting for end-of-file.
        for (auto& s : stages) {
          drain_err(s, 16);
          s.err.close();
        }
        continue;
      }
      deadline wake = (!stopped && st_.dl) ? st_.dl : std::nullopt;
      if (kill_at && (!wake || *kill_at < *wake)) wake = kill_at;
      if (tick || (kill_at && all_exited)) {
        auto soon = tick ? backoff.next_time() : group_poll_.next_time();
        if (!wake || soon < *wake) wake = soon;
      }
      poll_until(fds.data(), static_cast<nfds_t>(fds.size()), wake);
      if (!stopped && st_.dl && clock::now() >= *st_.dl) {
        std::lock_guard lk(st_.mu);
        if (!st_.aborting) {
          st_.timed_out = true;
          const timeout_policy& pol = st_.on_timeout;
          st_.abort_locked(pol.escalates() ? pol.signal : SIGKILL);
          if (pol.escalates()) {
            st_.signal_all_locked(SIGCONT);  // a stopped stage runs its handler
            st_.kill_at = deadline_in(pol.grace);
            group_poll_.reset();
          }
        }
        continue;
      }
      for (std::size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        if (who[i] == SIZE_MAX)
          eventfd_drain(st_.wake_fd.get());
        else if (who[i] >= n)
          drain_err(stages[who[i] - n], 4);
        else
          check_exit(who[i]);
      }
      if (tick)
        for (std::size_t k = 0; k < n; ++k)
          if (!stages[k].is_transform && !stages[k].status) check_exit(k);
    }
  }

  // Records stage k's status if it has exited, and reaps it (see the top).
  void check_exit(std::size_t k) {
    stage_slot& s = st_.stages[k];
    // WNOWAIT: the status is read here, the zombie reaped below (see the top).
    const exit_check seen = exit_watcher(s.pid, s.proc.pidfd()).check(collect::keep);
    if (seen.error != 0) throw_wait_failure(seen.error, s.command);
    const std::optional<exit_status> status = seen.status;
    if (!status) return;  // still running
    // Its tree's members now (it is a zombie, so not one of them), before the reap.
    const bool outlived = s.proc.has_tree() && !s.proc.tree().empty();
    {
      std::lock_guard lk(st_.mu);
      s.status = status;
      s.outlived = outlived;
      ++st_.exited;
      const std::size_t leader = st_.leader;
      if (k != leader) {
        s.proc.try_wait();
        s.reaped = true;
      }
      if (!st_.grace_pending_locked()) reap_leader_locked();
    }
    st_.cv.notify_all();
  }

  // wait_for_tree, every stage gone: wait until each stage's tree is empty, within the
  // deadline; at it (or after the timeout struck already) kill the trees: timed out.
  void wait_trees() {
    bool late = false;
    {
      std::lock_guard lk(st_.mu);
      late = st_.timed_out;
    }
    for (auto& s : st_.stages)
      if (!late && s.proc.has_tree() && !s.proc.tree().wait_empty_until(st_.dl)) late = true;
    if (!late) return;
    for (auto& s : st_.stages)
      if (s.proc.has_tree()) s.proc.tree().kill();
    std::lock_guard lk(st_.mu);
    st_.timed_out = true;
  }

  // Once every stage has exited (and no grace is pending), the group's leader goes.
  void reap_leader_locked() {
    const std::size_t leader = st_.leader;
    if (leader != SIZE_MAX && st_.exited == st_.commands && !st_.stages[leader].reaped) {
      st_.stages[leader].proc.try_wait();
      st_.stages[leader].reaped = true;
    }
  }
  // Does anything live on in the stages' group? (Its leader is held, so the id is ours.)
  bool group_alive() const {
    std::size_t leader;
    {
      std::lock_guard lk(st_.mu);
      leader = st_.leader;
      if (leader == SIZE_MAX || st_.stages[leader].reaped) return false;
    }
    return group_has_live_members(st_.pgid);
  }
  // The grace is over: SIGKILL to whatever is left if `kill`, then the leader may go.
  void end_grace(bool kill) {
    std::lock_guard lk(st_.mu);
    if (kill && st_.signal_all_locked(SIGKILL, true)) st_.escalated = true;
    st_.kill_at.reset();
    reap_leader_locked();
  }

  void drain_err(stage_slot& s, int rounds) {
    while (rounds-- > 0 && s.err.is_open()) {
      ssize_t r = s.err.fill(pump_chunk);
      if (r == 0) s.err.close();  // end of file: release the fd now
      if (r <= 0) return;
      s.err_text.append(s.err.buffered());
      s.err.consume(s.err.buffered().size());
    }
  }

  // After a failure everything was sent SIGKILL: reap what is left, blocking.
  void reap_all() noexcept {
    for (auto& s : st_.stages) {
      if (s.is_transform || !s.proc.valid()) continue;
      bool reaped;
      {
        std::lock_guard lk(st_.mu);
        reaped = s.reaped;
      }
      if (reaped) continue;
      std::optional<exit_status> status;
      try {
        status = s.proc.wait();
      } catch (...) {
      }
      std::lock_guard lk(st_.mu);
      if (!s.status) {
        s.status = status;
        ++st_.exited;
      }
      s.reaped = true;
    }
  }

  pipeline_state& st_;
  exit_poll group_poll_;  // looking at the group during the grace, once the stages are gone
};

}  // namespace subprocess::detail
