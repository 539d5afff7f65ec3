// subprocess/ipc/detail/watchdog.hpp - serve()'s second thread, which answers
// heartbeats while a handler runs (see serve() in server.hpp). Not public API.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "../../detail/poll.hpp"
#include "../../detail/syscall.hpp"
#include "../channel.hpp"

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::channel;
using subprocess::ipc::channel_error;

// What serve() answers to "rpc.heartbeat" by itself.
inline json heartbeat_result() {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  return {{"time", ms}, {"pid", subprocess::detail::sys::getpid()}};
}

// Which heartbeat requests serve() answers by itself: "rpc.heartbeat" with an id,
// when the handlers do not define that method.
inline bool is_builtin_heartbeat(const channel::rpc_message& m, bool builtin) {
  return builtin && m.k == channel::rpc_message::kind::request && m.has_id && m.method == "rpc.heartbeat";
}

// serve()'s second thread: answers heartbeats while a handler runs.
//
// The serving thread reads and runs handlers as before; it only marks the time it
// spends inside a handler (enter/leave: an uncontended mutex, no system call). The
// watchdog sleeps, ticking every `tick` while requests are being handled and parking
// (no ticks at all) after a second without any. When it sees the same handler still
// running at two ticks in a row, it reads the channel itself (non-blocking core,
// holding its mutex so that leave() cannot slip between a read and the hand-over):
// heartbeat requests are answered at once, everything else is kept, in order, for
// the serving thread, which takes it before reading the channel again.
class serve_watchdog {
 public:
  struct item {
    std::optional<channel::rpc_message> message;  // a message, or
    std::optional<channel_error> error;           // what reading it raised
  };
  static constexpr auto tick = std::chrono::milliseconds(20);
  static constexpr int park_after = 50;                 // idle ticks (one second)
  static constexpr std::size_t max_kept = 100000;       // a flooding peer waits

  explicit serve_watchdog(channel& ch) : ch_(ch) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::system_error&) {
      // No thread to spare: heartbeats are then answered between handlers only.
    }
  }
  serve_watchdog(const serve_watchdog&) = delete;
  serve_watchdog& operator=(const serve_watchdog&) = delete;
  ~serve_watchdog() {
    {
      std::lock_guard l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void enter() {
    bool wake;
    {
      std::lock_guard l(m_);
      busy_ = true;
      ++seq_;
      wake = parked_;
    }
    if (wake) cv_.notify_one();
  }
  // Heartbeats the watchdog answered.
  std::size_t beats_answered() const noexcept { return beats_.load(std::memory_order_relaxed); }
  // Ends the handler; appends what the watchdog read meanwhile to `backlog`.
  void leave(std::deque<item>& backlog) {
    std::lock_guard l(m_);
    busy_ = false;
    for (auto& i : kept_) backlog.push_back(std::move(i));
    kept_.clear();
  }

 private:
  void run() {
    std::unique_lock l(m_);
    std::uint64_t seen = 0;
    bool fresh = true;  // seen is not a handler we watched for a whole tick
    int idle = 0;
    while (!stop_) {
      if (!busy_) {
        if (++idle > park_after) {
          parked_ = true;
          cv_.wait(l, [&] { return stop_ || busy_; });
          parked_ = false;
          idle = 0;
          fresh = true;  // a handler that just started gets a tick first
          continue;
        }
        cv_.wait_for(l, tick);
        continue;
      }
      idle = 0;
      if (fresh || seq_ != seen) {
        seen = seq_;
        fresh = false;
        cv_.wait_for(l, tick);
        continue;
      }
      read_for_handler(l);
    }
  }

  // Called with m_ held and the same handler running for a tick or more.
  void read_for_handler(std::unique_lock<std::mutex>& l) {
    std::vector<json> beats;  // the ids to answer
    bool at_end = false;
    if (kept_.size() < max_kept) {
      ch_.read_available();
      for (;;) {
        channel::rpc_message m;
        try {
          if (!ch_.try_receive_rpc(m)) break;
        } catch (const channel_error& e) {
          kept_.push_back({std::nullopt, e});
          if (ch_.eof()) break;
          continue;
        }
        if (is_builtin_heartbeat(m, true))
          beats.push_back(std::move(m.id));
        else
          kept_.push_back({std::move(m), std::nullopt});
      }
      at_end = ch_.eof() || !ch_.is_open();
    }
    const bool full = kept_.size() >= max_kept;
    l.unlock();
    for (const auto& id : beats) {
      try {
        ch_.enqueue_response(id, heartbeat_result());
        ch_.flush_all();
        beats_.fetch_add(1, std::memory_order_relaxed);
      } catch (const channel_error&) {
        // The peer is gone; the serving thread learns it from the channel.
      }
    }
    if (at_end || full) {
      // Nothing more to read for now (a socket at its end stays readable: no poll).
      l.lock();
      cv_.wait_for(l, tick, [&] { return stop_ || !busy_; });
      return;
    }
    subprocess::detail::poll_one(ch_.fd(), POLLIN, subprocess::detail::clock::now() + tick);
    l.lock();
  }

  channel& ch_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool busy_ = false;    // the serving thread is inside a handler
  bool parked_ = false;  // the watchdog sleeps without a timeout
  std::uint64_t seq_ = 0;  // handlers entered
  std::deque<item> kept_;  // read by the watchdog, for the serving thread
  std::atomic<std::size_t> beats_{0};
  std::thread thread_;
};

}  // namespace subprocess::detail::ipc_wire
