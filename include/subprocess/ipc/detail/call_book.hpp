// subprocess/ipc/detail/call_book.hpp - the calls an ipc::client has in flight, and
// how each one ends: registered by id (with its deadline), completed by its answer,
// its timeout or the end of the channel, through a future, a callback (run on the
// reader thread, in order) or a call_sync() caller's slot. The first layer of
// ipc::client (client_reader.hpp reads the channel, client.hpp is the API). Not
// public API.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../../detail/deadline.hpp"
#include "../../detail/eventfd.hpp"
#include "../../detail/unique_fd.hpp"
#include "../../exit_status.hpp"
#include "../common.hpp"

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::call_timeout_error;
using subprocess::ipc::channel_error;
using subprocess::ipc::json;
using subprocess::ipc::reply;
using subprocess::ipc::reply_fn;
using subprocess::ipc::rpc_error;

class call_book {
 protected:
  using clock = subprocess::detail::clock;

  // Where a call_sync() caller waits for its answer (on its stack).
  struct sync_slot {
    std::string method;
    std::chrono::milliseconds timeout{0};
    std::thread::id owner = std::this_thread::get_id();
    std::atomic<bool> done{false};  // set under mu_, read without it
    reply r;                        // (mu_) until done
  };
  struct pending_call {
    std::string method;
    std::chrono::milliseconds timeout{0};
    std::optional<clock::time_point> deadline;
    // call() with a future. Only then: a promise allocates its shared state, and one
    // destroyed unfulfilled stores a broken_promise exception.
    std::optional<std::promise<json>> promise;
    reply_fn fn;
    sync_slot* sync = nullptr;  // call_sync(): complete this instead
  };

  // A lost wake-up would leave the reader asleep past a call's deadline, or close()
  // waiting for it forever: eventfd_notify retries EINTR.
  static void signal(const subprocess::detail::unique_fd& fd) {
    if (fd) subprocess::detail::eventfd_notify(fd.get());
  }
  static void clear(const subprocess::detail::unique_fd& fd) {
    subprocess::detail::eventfd_drain(fd.get());
  }
  void wake() { signal(wake_); }

  template <class F>
  static void call_quietly(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      // A callback must not throw; there is nobody to tell.
    }
  }

  static std::exception_ptr gone_error(const std::string& method, std::uint64_t id,
                                       const std::string& why,
                                       std::optional<subprocess::exit_status> st,
                                       const std::string& peer = {}) {
    return std::make_exception_ptr(channel_error(
        errc::channel_closed, peer,
        "call '" + method + "' (id " + std::to_string(id) + ") got no reply: " + why, {}, st));
  }

  // Removes a pending call. Requires mu_.
  std::optional<pending_call> take_locked(std::uint64_t id) {
    auto it = pending_.find(id);
    if (it == pending_.end()) return std::nullopt;
    if (it->second.deadline) deadlines_.erase({*it->second.deadline, id});
    if (it->second.sync) --sync_pending_;
    std::optional<pending_call> pc(std::move(it->second));
    pending_.erase(it);
    return pc;
  }

  // Runs f on the reader thread: now if this is it (or it has finished), else it is
  // queued for it, in order. `direct`: read by a call_sync() caller, which holds the
  // read lock: always queued (even on the reader thread, inside a callback), so that
  // a callback never runs with the read lock held.
  void on_reader(std::function<void()> f, bool direct) {
    bool queued = false, first = false;
    {
      std::lock_guard lk(mu_);
      if (!reader_exited_ && (direct || std::this_thread::get_id() != reader_id_)) {
        first = deferred_.empty();
        deferred_.push_back(std::move(f));
        queued = true;
      }
    }
    if (!queued)
      call_quietly(f);
    else if (first)
      wake();
  }
  void run_deferred() {
    std::vector<std::function<void()>> todo;
    {
      std::lock_guard lk(mu_);
      todo.swap(deferred_);
    }
    for (auto& f : todo) call_quietly(f);
  }

  // Completes a call. Callbacks run on the reader thread.
  void complete(pending_call& pc, reply r, bool direct = false) {
    if (pc.sync) {
      const bool mine = pc.sync->owner == std::this_thread::get_id();
      {
        std::lock_guard lk(mu_);
        pc.sync->r = std::move(r);
        pc.sync->done.store(true);
      }
      if (!mine) {  // its caller may be waiting in poll() as the one reading the socket
        sync_cv_.notify_all();
        signal(direct_wake_);
      }
    } else if (pc.fn) {
      on_reader([fn = std::move(pc.fn), r = std::move(r)]() mutable { fn(std::move(r)); }, direct);
    } else if (r.error) {
      pc.promise->set_exception(r.error);
    } else {
      pc.promise->set_value(std::move(r.result));
    }
  }

  // An answer for call `id` arrived. An answer to a call that timed out is dropped.
  void answered(std::uint64_t id, reply r, bool direct) {
    std::optional<pending_call> pc;
    {
      std::lock_guard lk(mu_);
      pc = take_locked(id);
    }
    if (pc) complete(*pc, std::move(r), direct);
  }
  // The same for an error answer (its "error" member, not null).
  void answered_error(std::uint64_t id, const json& e, bool direct) {
    int code = rpc_error::internal_error;
    std::string message = "(no message)";
    json data = nullptr;
    if (e.is_object()) {
      if (auto c = e.find("code"); c != e.end() && c->is_number_integer()) code = c->get<int>();
      if (auto t = e.find("message"); t != e.end() && t->is_string()) message = t->get<std::string>();
      if (auto d = e.find("data"); d != e.end()) data = *d;
    } else {
      message = e.dump();
    }
    std::optional<pending_call> pc;
    {
      std::lock_guard lk(mu_);
      pc = take_locked(id);
    }
    if (pc)
      complete(*pc,
               reply{nullptr, std::make_exception_ptr(rpc_error(code, std::move(message), std::move(data), name_,
                                                                pc->method, id))},
               direct);
  }

  void expire(clock::time_point now) {
    std::vector<std::pair<std::uint64_t, pending_call>> late;
    {
      std::lock_guard lk(mu_);
      while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        auto id = deadlines_.begin()->second;
        if (auto pc = take_locked(id))
          late.emplace_back(id, std::move(*pc));
        else
          deadlines_.erase(deadlines_.begin());
      }
    }
    for (auto& [id, pc] : late)
      complete(pc, reply{nullptr, std::make_exception_ptr(
                                      call_timeout_error(name_, pc.method, id, pc.timeout))});
  }

  // Fails every pending call with `why`; the first reason (and status) sticks.
  void fail_all(const std::string& why, std::optional<subprocess::exit_status> st) {
    std::unordered_map<std::uint64_t, pending_call> calls;
    {
      std::lock_guard lk(mu_);
      if (!closed_) {
        closed_ = true;
        why_ = why;
        status_ = st;
      }
      calls.swap(pending_);
      deadlines_.clear();
      sync_pending_ = 0;
    }
    wake();  // the reader thread stops (when this is not it)
    for (auto& [id, pc] : calls) complete(pc, reply{nullptr, gone_error(pc.method, id, why_, status_, name_)});
  }

  std::string name_;                           // the peer, for error messages
  subprocess::detail::unique_fd wake_;         // -> the reader thread
  subprocess::detail::unique_fd direct_wake_;  // -> the call_sync() caller reading
  mutable std::mutex mu_;
  std::condition_variable sync_cv_;  // call_sync() callers: an answer, or the reading is free
  std::unordered_map<std::uint64_t, pending_call> pending_;
  std::set<std::pair<clock::time_point, std::uint64_t>> deadlines_;
  std::atomic<std::uint64_t> next_id_{1};
  bool stop_ = false;
  bool closed_ = false;
  std::string why_;
  std::optional<subprocess::exit_status> status_;
  std::size_t sync_pending_ = 0;  // entries of pending_ that are call_sync()s (mu_)
  // the reader thread's queue (mu_)
  std::vector<std::function<void()>> deferred_;
  std::thread::id reader_id_;
  bool reader_exited_ = false;
};

}  // namespace subprocess::detail::ipc_wire
