// subprocess/ipc/detail/wire.hpp - small pieces the ipc headers share: how a channel
// is named in messages, printable samples of bad input, Node's internal messages,
// writing a message's JSON, and the read-side lock. Not public API.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <string_view>

#include "../../error.hpp"
#include "../common.hpp"
#include "json_codec.hpp"

namespace subprocess::detail::ipc_wire {

using subprocess::ipc::json;

inline std::string describe(const std::string& name) {
  return name.empty() ? std::string("ipc channel") : "ipc channel to '" + name + "'";
}

// The first bytes of a message, printable: for error messages.
inline std::string sample_of(std::string_view bytes, std::size_t max = 64) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < bytes.size() && i < max; ++i) {
    auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s += static_cast<char>(c);
    } else {
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  if (bytes.size() > max) s += "...";
  return s;
}

// Node's isInternal(): an object whose "cmd" is a string longer than "NODE_" that
// starts with it.
inline bool is_internal(const json& m) {
  if (!m.is_object()) return false;
  auto it = m.find("cmd");
  if (it == m.end() || !it->is_string()) return false;
  const auto& cmd = it->get_ref<const std::string&>();
  return cmd.size() > 5 && cmd.compare(0, 5, "NODE_") == 0;
}

// Compact JSON (exactly what j.dump() gives), appended to out; invalid UTF-8 is bad
// input.
template <class Out>
void dump_to(Out& out, const json& j, const std::string& name) {
  SUBPROCESS_TRY {
    subprocess::detail::json_codec::dump(j, out);
  } SUBPROCESS_CATCH(const subprocess::detail::json_codec::error&, e) {
    const std::string what = e.what();
    SUBPROCESS_THROW(argument_error(name, what.find("UTF-8") != std::string::npos
                                   ? "cannot send a message with a string that is not valid UTF-8 (" + what + ")"
                                   : "cannot send this message: " + what));
  } SUBPROCESS_CATCH(const json::type_error&, e) {
    SUBPROCESS_THROW(argument_error(name, std::string("cannot send this message (") + e.what() + ")"));
  }
}

// A lock that can be waited for with a deadline (std::timed_mutex semantics). Taking
// and releasing it uncontended is one atomic exchange each; only a thread that has to
// wait uses the mutex and condition variable. (Not std::timed_mutex: libstdc++ builds
// it on pthread_mutex_clocklock, which ThreadSanitizer does not understand.)
class timed_lock {
 public:
  void lock() {
    if (try_lock()) return;
    std::unique_lock l(m_);
    waiters_.fetch_add(1);
    cv_.wait(l, [&] { return try_lock(); });
    waiters_.fetch_sub(1);
  }
  bool try_lock() {
    bool expected = false;
    return held_.compare_exchange_strong(expected, true);
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    if (try_lock()) return true;
    std::unique_lock l(m_);
    waiters_.fetch_add(1);
    bool ok = cv_.wait_until(l, t, [&] { return try_lock(); });
    waiters_.fetch_sub(1);
    return ok;
  }
  void unlock() {
    held_.store(false);
    // Sequentially consistent with the waiter's fetch_add and its try_lock: either it
    // sees the lock free, or this sees it waiting (and it is asleep, or about to be,
    // under m_ when notified).
    if (waiters_.load() > 0) {
      std::lock_guard l(m_);
      cv_.notify_all();
    }
  }

 private:
  std::atomic<bool> held_{false};
  std::atomic<int> waiters_{0};
  std::mutex m_;
  std::condition_variable cv_;
};

}  // namespace subprocess::detail::ipc_wire
