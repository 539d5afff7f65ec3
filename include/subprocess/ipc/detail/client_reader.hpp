// subprocess/ipc/detail/client_reader.hpp - the second layer of ipc::client: who
// reads the channel, and when. One reader thread per client polls the socket, its
// wake-up eventfd and the peer's pidfd; a call_sync() caller reads the socket itself
// while it waits (see "call() or call_sync()" in client.hpp). Both take the complete
// messages under the channel's read lock (channel::reader), match answers to calls
// (call_book) and hand everything else to the callbacks. Not public API.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <sys/wait.h>

#include "../../detail/deadline.hpp"
#include "../../detail/exit_watch.hpp"
#include "../../detail/poll.hpp"
#include "../../detail/syscall.hpp"
#include "../../detail/unique_fd.hpp"
#include "../../exit_status.hpp"
#include "../channel.hpp"
#include "../common.hpp"
#include "call_book.hpp"
#include "json_codec.hpp"

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::channel;
using subprocess::ipc::client_options;

class client_reader : protected call_book {
 protected:
  client_reader(channel ch, client_options opts) : ch_(std::move(ch)), opts_(std::move(opts)) {
    name_ = opts_.name.empty() ? ch_.name() : opts_.name;
  }

  // How long the reader thread leaves the socket to call_sync() after the last one
  // returned (see "call() or call_sync()").
  static constexpr std::chrono::milliseconds sync_linger{5};
  // How long call_sync() may sit in recv() before it looks at anything else.
  static constexpr std::chrono::milliseconds recv_period{50};
  // While calls are being made, the reader wakes at least this often (see loop()).
  static constexpr std::chrono::seconds idle_tick{1};

  // An answer to a call, decoded without building its envelope (see take_messages()).
  struct answer_item {
    std::uint64_t id;
    json result;
    json error;  // null: a success
  };
  // A message read from the channel, or the error reading it.
  using incoming_item = std::variant<json, answer_item, channel_error>;

  // ---- reading, by the reader thread or by a caller inside call_sync()

  // Takes the complete messages (and errors) buffered now, until `until`: a peer
  // flooding garbage can leave megabytes of lines buffered, each one an error to
  // build (microseconds each, more under sanitizers), so taking them all could hold
  // a call's deadline (and close()) back for seconds. Returns false if it stopped
  // with complete lines left (the caller comes back for them without waiting for the
  // socket; false may also mean that none is left). An answer to a call (an unsigned id) is decoded without building its
  // envelope (json_codec::parse_rpc); anything else is handed on whole. Requires the
  // read lock.
  bool take_messages(channel::reader& r, std::vector<incoming_item>& out, clock::time_point until) {
    namespace codec = subprocess::detail::json_codec;
    channel::rpc_message m;
    for (unsigned taken = 1;; ++taken) {
      if (stopping_.load(std::memory_order_relaxed)) return true;  // close(): the rest is dropped
      // The clock is read every 16 lines (a few microseconds of work at most).
      if (taken % 16 == 0 && clock::now() >= until) return false;
      try {
        const bool got = r.next_line([&](std::string_view line) {
          codec::parse_rpc(line, m);
          if (m.k == channel::rpc_message::kind::response && m.id.is_number_unsigned()) {
            out.emplace_back(answer_item{m.id.get<std::uint64_t>(), std::move(m.result), std::move(m.error)});
            return true;
          }
          // Rare (a request from the peer, an odd id): the message as it was written.
          json whole = m.k == channel::rpc_message::kind::other ? std::move(m.whole) : codec::parse(line);
          if (r.pass_over(whole)) return false;
          out.emplace_back(std::move(whole));
          return true;
        });
        if (!got) return true;
      } catch (const channel_error& e) {
        out.emplace_back(e);
        if (r.drained()) return true;
      }
    }
  }
  // How long the reader thread takes buffered messages before it looks at the
  // deadlines of calls again.
  static constexpr std::chrono::milliseconds take_slice{2};

  void dispatch(std::vector<incoming_item>& items, bool direct) {
    for (auto& item : items) {
      if (stopping_.load(std::memory_order_relaxed)) break;  // close() is waiting
      if (auto* e = std::get_if<channel_error>(&item)) {
        if (opts_.on_error) on_reader([this, e = *e] { opts_.on_error(e); }, direct);
      } else if (auto* a = std::get_if<answer_item>(&item)) {
        if (a->error.is_null())
          answered(a->id, reply{std::move(a->result), nullptr}, direct);
        else
          answered_error(a->id, a->error, direct);
      } else {
        incoming(std::move(std::get<json>(item)), direct);
      }
    }
    items.clear();
  }

  // The reader thread's read: only when no call_sync() caller is reading (nullopt
  // if one is). Returns the bytes read.
  // Complete lines left buffered by a take_messages() that ran out of time: the
  // reader thread takes them before it waits for the socket again.
  std::optional<std::size_t> read_some() {
    std::vector<incoming_item> items;
    std::size_t n = 0;
    {
      channel::reader r(ch_);
      if (!r.try_lock()) return std::nullopt;
      // Nothing new is read while earlier lines wait (the buffer stays bounded).
      if (!backlog_) n = r.read();
      backlog_ = !take_messages(r, items, clock::now() + take_slice);
    }
    dispatch(items, false);
    return n + (backlog_ ? 1 : 0);  // not 0 while lines wait: drain() comes back
  }
  // Reads until the socket is empty; false if a call_sync() caller is reading.
  bool drain() {
    for (;;) {
      auto n = read_some();
      if (!n) return false;
      if (*n == 0) return true;
    }
  }
  // The channel ended and every message was taken (a call_sync() caller reading:
  // false, it will see the end itself).
  bool ended() {
    channel::reader r(ch_);
    return r.try_lock() && r.at_end();
  }

  // A call_sync() caller waits for its answer: it reads the socket itself while no
  // other caller does, else it waits to be told.
  void wait_for(sync_slot& slot, std::uint64_t id, const subprocess::detail::deadline& dl) {
    std::unique_lock lk(mu_);
    for (;;) {
      if (slot.done.load()) return;
      if (dl && clock::now() >= *dl) {
        if (take_locked(id)) {
          slot.r = reply{nullptr,
                         std::make_exception_ptr(call_timeout_error(name_, slot.method, id, slot.timeout))};
          slot.done.store(true);
          return;
        }
        sync_cv_.wait(lk, [&] { return slot.done.load(); });  // being completed right now
        return;
      }
      if (!direct_active_ && !closed_) {
        direct_active_ = true;
        lk.unlock();
        try {
          read_until(slot, dl);
        } catch (...) {
          lk.lock();
          direct_active_ = false;
          sync_cv_.notify_all();
          throw;
        }
        lk.lock();
        direct_active_ = false;
        sync_cv_.notify_all();  // another caller may read now
        continue;
      }
      if (dl)
        sync_cv_.wait_until(lk, *dl);
      else
        sync_cv_.wait(lk);
    }
  }
  void read_until(const sync_slot& slot, const subprocess::detail::deadline& dl) {
    channel::reader r(ch_);
    if (dl) {
      if (!r.try_lock_until(*dl)) return;
    } else {
      r.lock();
    }
    std::vector<incoming_item> items;
    const auto until = dl.value_or(clock::time_point::max());
    for (;;) {
      // In slices: what was taken is dispatched (which costs about as much again)
      // before the deadline is looked at.
      const bool all = take_messages(r, items, std::min(until, clock::now() + take_slice));
      dispatch(items, true);
      if (slot.done.load()) return;
      if (!all) {
        if (clock::now() < until) continue;
        backlog_ = true;  // out of time with lines left: the caller times out; the
        return;           // reader thread (or the next call) takes the rest
      }
      if (r.at_end()) {
        r.unlock();
        if (!r.closed()) peer_gone(wait_status());
        return;
      }
      if (dl && clock::now() >= *dl) return;
      if (timed_recv_ && (!dl || *dl - clock::now() > 2 * recv_period) && !ch_.wants_write()) {
        // The common case: wait in recv() (the peer dying, close(), the deadline are
        // noticed within recv_period, see start()).
        if (r.read(true) > 0 || r.peer_done()) continue;
      }
      pollfd fds[3];
      nfds_t n = 0;
      fds[n++] = {r.fd(), static_cast<short>(POLLIN | (ch_.wants_write() ? POLLOUT : 0)), 0};
      fds[n++] = {direct_wake_.get(), POLLIN, 0};
      if (pidfd_) fds[n++] = {pidfd_.get(), POLLIN, 0};
      subprocess::detail::poll_until(fds, n, dl);
      if (fds[1].revents) clear(direct_wake_);
      if (fds[0].revents & POLLOUT) {
        try {
          ch_.flush();
        } catch (const channel_error&) {
          // The peer is gone; reading says so in a moment.
        }
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) r.read();
      if (n == 3 && fds[2].revents) {  // the peer process exited
        while (r.read() > 0) {
          take_messages(r, items, until);
          dispatch(items, true);
        }
        take_messages(r, items, until);
        dispatch(items, true);
        r.unlock();
        peer_gone(peek_status());
        return;
      }
    }
  }

  // Back from call_sync(): the slot must not be referenced by anyone once we leave.
  void end_sync(std::uint64_t id, sync_slot& slot) noexcept {
    std::unique_lock lk(mu_);
    if (!slot.done.load() && !take_locked(id))
      sync_cv_.wait(lk, [&] { return slot.done.load(); });  // someone is completing it
    --sync_callers_;
    last_sync_end_ = clock::now();
    // Other calls need the reader thread watching the socket again.
    const bool wake_reader = !watching_ && (pending_.size() > sync_pending_ || exit_seen_);
    lk.unlock();
    if (wake_reader) wake();
  }


  // ---- the reader thread
  void run() {
    {
      std::lock_guard lk(mu_);
      reader_id_ = std::this_thread::get_id();
    }
    try {
      loop();
    } catch (const std::exception& e) {  // poll failed, out of memory...: fail loudly
      fail_all(std::string("the client's reader failed: ") + e.what(), std::nullopt);
    }
    std::vector<std::function<void()>> rest;
    {
      std::lock_guard lk(mu_);
      reader_exited_ = true;  // from now on callbacks run where they complete
      rest.swap(deferred_);
    }
    for (auto& f : rest) call_quietly(f);
  }
  void loop() {
    for (;;) {
      run_deferred();
      subprocess::detail::deadline dl;
      bool watch, exited;
      const bool queued = ch_.wants_write();
      {
        std::lock_guard lk(mu_);
        if (stop_ || closed_) return;
        const auto now = clock::now();
        if (!deadlines_.empty()) {
          dl = deadlines_.begin()->first;
        } else if (const auto ids = next_id_.load(); ids != ids_at_tick_) {
          // Calls were made since we last looked: sleep at most idle_tick, so that the
          // next call (its deadline usually later than that) need not wake us to arm
          // its timer (an eventfd write, a poll and a read per call: a context switch
          // per call where the caller shares our CPU). After a quiet tick we sleep
          // without a timer again, and the next call wakes us.
          ids_at_tick_ = ids;
          dl = now + idle_tick;
        }
        const bool syncing = sync_callers_ > 0 || direct_active_;
        const bool lingering = pending_.size() == sync_pending_ && last_sync_end_ &&
                               now < *last_sync_end_ + sync_linger;
        watch = !syncing && (!lingering || queued);
        if (!watch) {  // look again soon: the socket must not stay unwatched
          auto again = (syncing ? now : *last_sync_end_) + sync_linger;
          if (!dl || again < *dl) dl = again;
        }
        armed_ = dl;
        watching_ = watch;
        exited = exit_seen_;
      }
      if (exited && drain()) {  // the peer exited while a call_sync() caller was reading
        peer_gone(peek_status());
        return;
      }
      pollfd fds[3];
      nfds_t n = 0;
      fds[n++] = {watch ? ch_.fd() : -1, static_cast<short>(POLLIN | (queued ? POLLOUT : 0)), 0};
      fds[n++] = {wake_.get(), POLLIN, 0};
      if (pidfd_ && !exited) fds[n++] = {pidfd_.get(), POLLIN, 0};
      const bool backlog = watch && backlog_.load(std::memory_order_relaxed);
      subprocess::detail::poll_until(fds, n, backlog ? subprocess::detail::deadline(clock::now()) : dl);
      if (backlog) fds[0].revents |= POLLIN;  // take the lines left buffered
      if (fds[1].revents) clear(wake_);
      if (fds[0].revents & POLLOUT) {
        try {
          ch_.flush();
        } catch (const channel_error&) {
          // The peer is gone; reading says so in a moment.
        }
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) read_some();
      if (n == 3 && fds[2].revents) {  // the peer process exited
        if (drain()) {  // answers it sent before dying
          peer_gone(peek_status());
          return;
        }
        std::lock_guard lk(mu_);  // a call_sync() caller is reading: it sees it too
        exit_seen_ = true;
        continue;
      }
      if (watch && ended()) {
        peer_gone(wait_status());
        return;
      }
      expire(clock::now());
    }
  }

  void incoming(json m, bool direct) {
    if (m.is_object() && !m.contains("method")) {
      auto idit = m.find("id");
      if (idit != m.end() && idit->is_number_unsigned()) {
        const auto id = idit->get<std::uint64_t>();
        if (auto e = m.find("error"); e != m.end() && !e->is_null()) {
          answered_error(id, *e, direct);
        } else {
          auto r = m.find("result");
          answered(id, reply{r != m.end() ? std::move(*r) : json(nullptr), nullptr}, direct);
        }
        return;
      }
    }
    if (opts_.on_message) on_reader([this, m = std::move(m)] { opts_.on_message(m); }, direct);
  }


  // The peer's exit status without reaping it (the process object still does that).
  std::optional<subprocess::exit_status> peek_status() const {
    if (!pidfd_) return std::nullopt;
    namespace d = subprocess::detail;
    return d::exit_watcher(-1, pidfd_.get()).check(d::collect::keep).status;
  }
  // The channel ended: give the process a moment to finish exiting.
  std::optional<subprocess::exit_status> wait_status() const {
    if (!pidfd_) return std::nullopt;
    namespace d = subprocess::detail;
    return d::exit_watcher(-1, pidfd_.get()).wait_until(d::deadline_in(opts_.exit_grace), d::collect::keep).status;
  }

  void peer_gone(std::optional<subprocess::exit_status> st) {
    std::string why = st ? "'" + name_ + "' " + st->to_string() : "'" + name_ + "' closed the channel";
    if (auto torn = ch_.end_error()) why += " (in the middle of a message: " + torn_part(torn->what()) + ")";
    fail_all(why, st);
  }
  // "N bytes of it arrived: '...'" from end_error()'s message.
  static std::string torn_part(const std::string& what) {
    static constexpr std::string_view mark = " in the middle of a message (";
    const auto at = what.rfind(mark);
    if (at == std::string::npos || what.back() != ')') return what;
    return what.substr(at + mark.size(), what.size() - at - mark.size() - 1);
  }

  channel ch_;
  client_options opts_;
  subprocess::detail::unique_fd pidfd_;  // the peer process, when known
  std::atomic<bool> stopping_{false};    // close() was called (read without mu_)
  std::optional<clock::time_point> armed_;  // what the reader sleeps until (mu_)
  std::uint64_t ids_at_tick_ = 0;           // next_id_ when the reader last armed idle_tick
  // call_sync() (all mu_)
  std::size_t sync_callers_ = 0;    // threads inside call_sync()
  bool direct_active_ = false;      // one of them reads the socket
  bool watching_ = true;            // the reader thread polls the socket
  bool exit_seen_ = false;          // the reader saw the pidfd while a caller read
  std::optional<clock::time_point> last_sync_end_;
  bool timed_recv_ = false;  // set once in start()
  std::atomic<bool> backlog_{false};  // complete lines left buffered (read lock)
  std::thread reader_;
};

}  // namespace subprocess::detail::ipc_wire
