// subprocess/ipc/heartbeat.hpp - is the peer still answering? Pings a client's peer
// at an interval and reports one that stops answering. Needs nlohmann/json (CMake
// target subprocess::ipc).
//
//   ```cpp
//   auto p = sp::command::self({"--worker"}).ipc().spawn();  // runs ipc::serve()
//   sp::ipc::client worker(p);
//   sp::ipc::heartbeat hb(worker, {.interval = 1s, .timeout = 3s, .method = "rpc.heartbeat",
//       .on_beat = [](const sp::ipc::beat& b) { std::cout << b << '\n'; },
//       .on_unresponsive = [&](std::chrono::milliseconds) { p.kill(); }});
//   std::this_thread::sleep_for(5s);
//   hb.stop();                    // before the client goes
//   ```
//
// The peer answers "rpc.heartbeat" (serve() does by itself, even while a handler is
// busy; a Node worker answers it like any method). Errors: argument_error for an
// interval or timeout that is not positive; a ping that fails is a silence, never an
// exception. Blocking: nothing blocks but stop(), which waits for a callback that is
// running. Threads: one thread of its own, where both callbacks run. Cost: one call
// per interval.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../detail/deadline.hpp"
#include "../detail/printing.hpp"
#include "../error.hpp"
#include "client.hpp"
#include "common.hpp"

namespace subprocess::ipc {

struct beat {
  std::uint64_t number = 0;                // 1, 2, 3, ...
  std::chrono::microseconds latency{0};    // round trip of this ping
  json reply = nullptr;                    // what the peer answered
};

struct heartbeat_options {
  std::chrono::milliseconds interval = std::chrono::seconds(1);  // one ping per interval
  std::chrono::milliseconds timeout = std::chrono::seconds(3);   // silence that counts as unresponsive
  std::string method = "rpc.heartbeat";                          // serve() answers it by itself
  std::function<void(const beat&)> on_beat = {};
  std::function<void(std::chrono::milliseconds silent_for)> on_unresponsive = {};
};

// Pings a client's peer every interval (the first ping at once) with a call to
// `method` and measures each round trip. When no answer has arrived for longer than
// `timeout` (a hung, stopped or dead peer), on_unresponsive is called, once per
// silence: an answer arriving later makes the peer responsive again. Detection takes
// at most timeout plus a few milliseconds after the last answer.
//
//   sp::ipc::heartbeat hb(worker, {.interval = 1s, .timeout = 3s, .method = "rpc.heartbeat",
//       .on_beat = [](const sp::ipc::beat& b) { log(b.latency); },
//       .on_unresponsive = [&](auto silent) { restart(worker); }});
//
// It runs one thread of its own; both callbacks run on it (so they may call the
// client, but must not destroy the heartbeat). Stop it (or destroy it) before the
// client: declare it after the client.
class heartbeat {
 public:
  heartbeat(client& c, heartbeat_options opts)
      : c_(c), opts_(std::move(opts)), sh_(std::make_shared<shared>()) {
    if (opts_.interval <= std::chrono::milliseconds::zero() ||
        opts_.timeout <= std::chrono::milliseconds::zero())
      throw argument_error(c.name(), "heartbeat: interval and timeout must be positive");
    opts_.interval = subprocess::detail::clamp_forever(opts_.interval);  // no overflow in next +=
    opts_.timeout = subprocess::detail::clamp_forever(opts_.timeout);
    sh_->last_reply = std::chrono::steady_clock::now();
    thread_ = std::thread([this] { run(); });
  }
  heartbeat(const heartbeat&) = delete;
  heartbeat& operator=(const heartbeat&) = delete;
  ~heartbeat() { stop(); }

  // Stops pinging; idempotent. Callbacks do not run after it returns.
  void stop() {
    {
      std::lock_guard lk(sh_->mu);
      sh_->stop = true;
    }
    sh_->cv.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }
  // False from on_unresponsive until the next answer.
  bool responsive() const {
    std::lock_guard lk(sh_->mu);
    return !sh_->reported;
  }
  // Answers received.
  std::uint64_t beats() const {
    std::lock_guard lk(sh_->mu);
    return sh_->beats;
  }
  std::optional<std::chrono::microseconds> last_latency() const {
    std::lock_guard lk(sh_->mu);
    return sh_->last_latency;
  }

 private:
  // Shared with the reply callbacks, which may outlive the heartbeat.
  struct shared {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<beat> arrived;
    std::chrono::steady_clock::time_point last_reply;
    bool stop = false;
    bool reported = false;  // on_unresponsive called for the current silence
    std::uint64_t beats = 0;
    std::optional<std::chrono::microseconds> last_latency;
  };

  void run() {
    using sclock = std::chrono::steady_clock;
    auto next = sclock::now();
    std::uint64_t seq = 0;
    std::unique_lock lk(sh_->mu);
    for (;;) {
      while (!sh_->arrived.empty()) {
        auto got = std::move(sh_->arrived);
        sh_->arrived.clear();
        lk.unlock();
        if (opts_.on_beat)
          for (const auto& b : got) opts_.on_beat(b);
        lk.lock();
      }
      if (sh_->stop) return;
      auto now = sclock::now();
      if (now >= next) {
        const std::uint64_t n = ++seq;
        lk.unlock();
        auto sent = sclock::now();
        std::weak_ptr<shared> w = sh_;
        c_.call(opts_.method, json{{"beat", n}}, opts_.timeout, [w, n, sent](reply r) {
          auto sh = w.lock();
          if (!sh || !r.ok()) return;
          auto at = sclock::now();
          std::lock_guard g(sh->mu);
          auto lat = std::chrono::duration_cast<std::chrono::microseconds>(at - sent);
          sh->arrived.push_back(beat{n, lat, std::move(r.result)});
          sh->last_reply = at;
          sh->reported = false;
          ++sh->beats;
          sh->last_latency = lat;
          sh->cv.notify_all();
        });
        lk.lock();
        next += opts_.interval;
        if (next <= now) next = now + opts_.interval;  // fell behind: do not burst
        continue;
      }
      auto silent_until = sh_->last_reply + opts_.timeout;
      if (!sh_->reported && now > silent_until) {
        sh_->reported = true;
        auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - sh_->last_reply);
        lk.unlock();
        if (opts_.on_unresponsive) opts_.on_unresponsive(silent);
        lk.lock();
        continue;
      }
      auto wake_at = next;
      if (!sh_->reported) wake_at = std::min(wake_at, silent_until + std::chrono::milliseconds(1));
      sh_->cv.wait_until(lk, wake_at, [&] { return sh_->stop || !sh_->arrived.empty(); });
    }
  }

  client& c_;
  heartbeat_options opts_;
  std::shared_ptr<shared> sh_;
  std::thread thread_;
};

// "beat 3: 412 us" (the ping's number and round trip; the reply is not printed).
// operator<< only: fmt.hpp does not include ipc headers; with fmt, print through
// fmt::streamed(b) (<fmt/ostream.h>).
inline std::string to_string(const beat& b) {
  return "beat " + std::to_string(b.number) + ": " + std::to_string(b.latency.count()) + " us";
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const beat& b) {
  return subprocess::detail::put_text(os, to_string(b));
}

}  // namespace subprocess::ipc
