// subprocess/pool/error.hpp - why a worker_pool task failed: pool_error and pool_errc.
// Part of pool.hpp (include that); needs nlohmann/json only through it.
//
// A task's future holds its result or an exception. The pool's own reasons are a
// pool_error whose kind() is a pool_errc; attempts() lists every attempt that died
// with its worker (pid, exit status, a readable line). The other errors a future can
// hold are ipc::rpc_error (the worker answered with an error) and ipc::channel_error
// (its answer could not be decoded).
//
//   ```cpp
//   try {
//     throw sp::pool_error(sp::pool_errc::task_timeout, "workers", "task 7 timed out", "fib", 7);
//   } catch (const sp::pool_error& e) {
//     if (e.kind() == sp::pool_errc::task_timeout) std::cout << e.task() << " " << e.method() << "\n";
//     for (const sp::pool_attempt& a : e.attempts()) std::cout << sp::to_string(a) << "\n";
//   }
//   ```
//
// Contract: plain values, no I/O; pool_category() is one static instance, safe from
// any thread; errors compare with std::error_code (e.code() == sp::pool_errc::cancelled).
#pragma once

#include <cstdint>
#include <optional>
#include <iosfwd>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "../detail/printing.hpp"
#include "../error.hpp"
#include "../exit_status.hpp"

namespace subprocess {

// Why a pool task failed (pool_error::kind()).
enum class pool_errc {
  worker_crashed = 1,  // its worker died on every attempt (1 + max_retries)
  task_timeout,        // no answer within task_timeout; the worker was killed
  cancelled,           // shutdown(cancel) or the destructor came first
  shut_down,           // submitted after shutdown()
  queue_full,          // max_queue reached with queue_full_policy::fail
  no_workers,          // no worker could be started
};

inline const std::error_category& pool_category() noexcept {
  struct cat final : std::error_category {
    const char* name() const noexcept override { return "subprocess.pool"; }
    std::string message(int c) const override {
      switch (static_cast<pool_errc>(c)) {
        case pool_errc::worker_crashed:
          return "worker crashed";
        case pool_errc::task_timeout:
          return "task timed out";
        case pool_errc::cancelled:
          return "task cancelled";
        case pool_errc::shut_down:
          return "pool shut down";
        case pool_errc::queue_full:
          return "queue full";
        case pool_errc::no_workers:
          return "no workers";
      }
      return "unknown pool error";
    }
  };
  static const cat instance;
  return instance;
}

inline std::error_code make_error_code(pool_errc e) noexcept {
  return {static_cast<int>(e), pool_category()};
}

}  // namespace subprocess

template <>
struct std::is_error_code_enum<subprocess::pool_errc> : std::true_type {};

namespace subprocess {

// One attempt at a task that ended with its worker's death.
struct pool_attempt {
  pid_t pid = 0;                                     // the worker
  std::optional<exit_status> status = std::nullopt;  // how it ended, when known
  std::string what = {};  // "killed by SIGKILL", "killed: no answer to a heartbeat for 612 ms"
};

// A task failed for a reason of the pool's (kind() says which). command() is the
// pool's name (the worker command line); what() starts with it: "pool 'name': ...".
//
// Errors a future can hold:
//   ipc::rpc_error        the worker answered with an error (its code and message)
//   ipc::channel_error    (protocol_error) its answer could not be decoded; the
//                         message says why (see "Garbage" at worker_pool)
//   pool_error            kind(): worker_crashed (after every attempt; attempts()
//                         has the statuses), task_timeout, cancelled, shut_down,
//                         queue_full, no_workers (none could be started: the spawn
//                         error is in the message)
//   argument_error        (thrown by submit() itself) params that are not an object,
//                         an array or null, or strings that are not valid UTF-8
class pool_error : public error {
 public:
  pool_error(pool_errc kind, std::string pool, std::string message, std::string method = {},
             std::uint64_t task = 0, std::vector<pool_attempt> attempts = {})
      : error(make_error_code(kind), pool, pool.empty() ? message : "pool '" + pool + "': " + message),
        kind_(kind),
        method_(std::move(method)),
        task_(task),
        attempts_(std::move(attempts)) {}
  pool_errc kind() const noexcept { return kind_; }
  // The task's method, and its number (1, 2, ... in submission order; 0 if it was
  // never accepted).
  const std::string& method() const noexcept { return method_; }
  std::uint64_t task() const noexcept { return task_; }
  // Every attempt that died, oldest first (worker_crashed; also the attempts before a
  // task_timeout or cancellation).
  const std::vector<pool_attempt>& attempts() const noexcept { return attempts_; }

 private:
  pool_errc kind_;
  std::string method_;
  std::uint64_t task_;
  std::vector<pool_attempt> attempts_;
};

// "worker 4242 killed by SIGKILL"
inline std::string to_string(const pool_attempt& a) { return "worker " + std::to_string(a.pid) + " " + a.what; }

template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pool_attempt& a) {
  return detail::put_text(os, to_string(a));
}

}  // namespace subprocess
