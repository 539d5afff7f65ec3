// subprocess/detail/pool/engine.hpp - what the parts of a worker_pool's engine ask of
// the coordinator (pool_core): every loop callback runs through guarded(), and a
// broken worker is killed, counted, reported and replaced in one place.
// Not public API.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "../../exit_status.hpp"
#include "../../pool/options.hpp"

namespace subprocess::detail::pool {

class worker_link;

// Why the pool stopped a worker (or gave up on it).
enum class stop_why { none, crashed, hung, timed_out, recycled, retired, shutdown };

// Where the pool is in its life; the shutdown ladder moves it on, the others look.
struct phase {
  bool stopping = false;  // shutdown() has begun
  bool stop_now = false;  // the last step: channels closed, workers being stopped
  shutdown_mode mode = shutdown_mode::finish;
  bool cancelling() const noexcept { return stopping && mode == shutdown_mode::cancel; }
};

class engine {
 public:
  // Runs f, then settles the pool: dispatch, shutdown progress, then user code
  // (events, results) at a point where no pool state is in use. Every loop callback
  // of the pool runs through here.
  template <class F>
  void guarded(F&& f) {
    run_guarded(&f, [](void* p) { (*static_cast<std::remove_reference_t<F>*>(p))(); });
  }

  // A worker's channel is readable (or writable again), or its process ended
  // (st: nullopt if its status cannot be had: SIGCHLD ignored).
  virtual void on_readable(worker_link& w, std::uint32_t events) = 0;
  virtual void on_exit(worker_link& w, std::optional<exit_status> st) = 0;
  // A worker is broken (no heartbeat answer, garbage, a task timed out): killed,
  // counted, reported and replaced.
  virtual void kill(worker_link& w, stop_why why, std::string text) = 0;

 protected:
  ~engine() = default;
  virtual void run_guarded(void* f, void (*call)(void*)) = 0;
};

}  // namespace subprocess::detail::pool
