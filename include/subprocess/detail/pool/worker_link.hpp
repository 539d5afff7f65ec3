// subprocess/detail/pool/worker_link.hpp - one worker of a pool: its process, its
// channel, the tasks in flight on it, and its liveness (heartbeats, the kill and stop
// timers). The I/O thread's own; the engine decides what a worker's fate means for
// the pool. Not public API.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/epoll.h>
#include <sys/types.h>

#include "../../command.hpp"
#include "../../environment.hpp"
#include "../../event_loop.hpp"
#include "../../ipc.hpp"
#include "../../pool/options.hpp"
#include "../../process.hpp"
#include "../../signals.hpp"
#include "engine.hpp"
#include "task.hpp"

namespace subprocess::detail::pool {

enum class wstate {
  ready,     // takes tasks
  draining,  // recycled: no new tasks; closed once its tasks are answered
  closing,   // channel closed by us; waiting for it to exit
  lost,      // its channel ended or we killed it; waiting for its exit
};

class worker_link {
 public:
  worker_link(std::uint64_t serial_no, const pool_options& o, event_loop& loop, engine& owner)
      : serial(serial_no), opts_(o), loop_(loop), owner_(owner) {}
  worker_link(const worker_link&) = delete;
  worker_link& operator=(const worker_link&) = delete;

  // Starts the process (SUBPROCESS_WORKER_ID = serial) and opens its channel. Throws
  // what spawning throws; the process handle kills and reaps a child left behind.
  void start(const command& cmd) {
    command c = cmd;
    environment env = cmd.env() ? *cmd.env() : environment::inherit();
    env.set("SUBPROCESS_WORKER_ID", std::to_string(serial));
    c.env(std::move(env));
    proc = c.spawn();
    ch = ipc::channel(proc, {.max_message_size = opts_.max_message_size,
                             .internal_messages = false,
                             .name = opts_.name});
    pid = proc.pid();
    started = idle_since = last_heard = hb_sent = clock::now();
  }

  // Registers with the loop: the channel and the process's exit go to the engine.
  void watch() {
    events_ = EPOLLIN;
    try {
      watch_ = loop_.watch(ch.fd(), EPOLLIN,
                           [this](std::uint32_t ev) { owner_.on_readable(*this, ev); });
      exit_watch_ = loop_.on_exit(
          proc, [this](exit_status st) { owner_.on_exit(*this, st); },
          // Exited, its status discarded (SIGCHLD ignored) or taken by other code.
          [this](const error&) { owner_.on_exit(*this, std::nullopt); });
    } catch (...) {
      forget();
      throw;
    }
  }
  // Unregisters everything the loop holds about this worker (before it is destroyed).
  void forget() {
    for (auto id : {watch_, exit_watch_, kill_timer_})
      if (id) loop_.remove(id);
    watch_ = exit_watch_ = kill_timer_ = 0;
  }
  void unwatch_channel() {
    if (!watch_) return;
    loop_.remove(watch_);
    watch_ = 0;
  }
  // The loop removed the exit watch when it fired.
  void exited() noexcept { exit_watch_ = 0; }
  // It exited: the kill (or stop) timer is of no more use.
  void cancel_kill() {
    if (kill_timer_) loop_.remove(kill_timer_);
    kill_timer_ = 0;
  }

  bool taking() const noexcept { return state == wstate::ready || state == wstate::draining; }

  // Writes what the channel holds; waits for EPOLLOUT while the socket is full.
  void flush() {
    try {
      set_events(ch.flush() ? EPOLLIN : EPOLLIN | EPOLLOUT);
    } catch (const ipc::channel_error&) {
      set_events(EPOLLIN);  // the peer is gone: reading says so
    }
  }

  // Takes the task an answer is for out of the in-flight list.
  task_ptr answered(std::deque<sent_task>::iterator it) {
    task_ptr t = std::move(it->t);
    const bool was_oldest = it == in_flight.begin();
    in_flight.erase(it);
    ++answered_count;
    if (in_flight.empty())
      idle_since = clock::now();
    else if (was_oldest)
      in_flight.front().since = clock::now();
    return t;
  }

  // Heartbeats (json_rpc, heartbeat_interval > 0): pings a worker not heard from for
  // heartbeat_interval; returns why it is hung if a ping stayed unanswered for
  // heartbeat_timeout. Ping ids come from the pool's request ids.
  std::optional<std::string> heartbeat(clock::time_point now, std::uint64_t& rpc_id) {
    if (hb_id != 0 && last_heard >= hb_sent) hb_id = 0;  // heard from it since: alive
    if (hb_id != 0 && now - hb_sent > opts_.heartbeat_timeout) {
      auto silent = std::chrono::duration_cast<ms>(now - hb_sent).count();
      return "killed: no answer to a heartbeat for " + std::to_string(silent) + " ms";
    }
    if (hb_id == 0 && now - std::max(last_heard, hb_sent) >= opts_.heartbeat_interval) {
      hb_id = ++rpc_id;
      hb_sent = now;
      try {
        ch.enqueue_request(hb_id, "rpc.heartbeat", json{{"beat", hb_id}});
      } catch (const ipc::channel_error&) {
      }
      flush();
    }
    return std::nullopt;
  }
  // Its oldest task ran past task_timeout.
  bool overdue(clock::time_point now) const {
    return opts_.task_timeout > ms::zero() && !in_flight.empty() &&
           now - in_flight.front().since > opts_.task_timeout;
  }

  // ---- stopping it -------------------------------------------------------------------

  // It is of no more use (its channel ended, a send failed): a moment to exit by
  // itself (so its status is its own), then SIGKILL.
  void give_up() {
    state = wstate::lost;
    schedule_kill(ms(1000));
  }
  // Broken: SIGKILL now.
  void kill(stop_why w, std::string text) {
    why = w;
    why_text = std::move(text);
    state = wstate::lost;
    try {
      proc.kill();
    } catch (...) {
    }
  }
  // Stopped gracefully: channel closed, shutdown_grace to exit, then SIGTERM (and
  // SIGCONT, in case it is stopped), then SIGKILL term_grace later.
  void close(stop_why w) {
    why = w;
    state = wstate::closing;
    unwatch_channel();
    ch.close();
    if (kill_timer_) return;
    kill_timer_ = loop_.after(opts_.shutdown_grace, [this] {
      owner_.guarded([this] {
        kill_timer_ = 0;
        try {
          send_tree(proc, SIGTERM);
          send_tree(proc, SIGCONT);
        } catch (...) {
        }
        schedule_kill(opts_.term_grace);
      });
    });
  }

  // ---- state (the engine's parts read and change it) ---------------------------------

  std::uint64_t serial = 0;
  process proc;
  pid_t pid = 0;
  ipc::channel ch;
  wstate state = wstate::ready;
  stop_why why = stop_why::none;  // set when the pool stops it (or gives up on it)
  std::string why_text;           // for hung workers: what the attempts say
  std::deque<sent_task> in_flight;
  std::uint64_t assigned = 0, answered_count = 0;
  clock::time_point started, idle_since, last_heard, hb_sent;
  std::uint64_t hb_id = 0;  // the heartbeat awaiting an answer (0: none)
  bool owed = false;        // a replacement was owed for it already

 private:
  void set_events(std::uint32_t ev) {
    if (watch_ == 0 || events_ == ev) return;
    loop_.modify(watch_, ev);
    events_ = ev;
  }
  void schedule_kill(ms after) {
    if (kill_timer_) return;
    kill_timer_ = loop_.after(after, [this] {
      owner_.guarded([this] {
        kill_timer_ = 0;
        try {
          proc.kill();
        } catch (...) {
        }
      });
    });
  }

  const pool_options& opts_;
  event_loop& loop_;
  engine& owner_;
  event_loop::id watch_ = 0, exit_watch_ = 0, kill_timer_ = 0;
  std::uint32_t events_ = 0;
};

using worker_list = std::vector<std::unique_ptr<worker_link>>;

// Workers taking tasks (not recycled, closing or lost): the pool's size.
inline std::size_t live(const worker_list& ws) {
  std::size_t n = 0;
  for (const auto& w : ws)
    if (w->state == wstate::ready) ++n;
  return n;
}

}  // namespace subprocess::detail::pool
