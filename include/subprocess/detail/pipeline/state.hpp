// subprocess/detail/pipeline/state.hpp - what a running pipeline shares. Not public API.
//
// One pipeline_state per run, shared by the user's threads (running_pipeline), the
// supervisor thread (supervisor.hpp: waits for the children, reads captured
// stderr, enforces the timeout) and the pumps (pump.hpp). It never moves once the
// threads run. Stopping: abort_locked() signals every stage and wakes every pump.
#pragma once

#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../../exit_status.hpp"
#include "../../process.hpp"
#include "../../stream.hpp"
#include "../../timeout.hpp"
#include "../deadline.hpp"
#include "../eventfd.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "control.hpp"
#include "pump.hpp"

namespace subprocess::detail {

// One stage's bookkeeping. Guarded by pipeline_state::mu where noted.
struct stage_slot {
  std::string command;
  bool is_transform = false;
  pid_t pid = -1;
  process proc;                       // (mu) commands
  std::optional<exit_status> status;  // (mu) commands: known once it exited
  bool reaped = false;                // (mu)
  bool killed = false;                // (mu) signalled by the library (timeout, terminate)
  bool outlived = false;              // (mu) its tree had members when it exited
  pipe_reader err;                    // captured stderr (supervisor thread only)
  std::string err_text;               // (supervisor thread only)
  pump* transform_pump = nullptr;
  std::vector<int> success_codes{0};  // the command's success_codes(), ascending
};

struct pipeline_state final : pump_owner {
  std::string command;
  bool sigpipe_is_failure = false, check = false, wait_for_tree = false;
  std::optional<std::chrono::milliseconds> timeout;
  timeout_policy on_timeout;
  deadline dl;

  std::vector<stage_slot> stages;  // sized once, before any thread starts
  std::vector<std::unique_ptr<pump>> pumps;
  pump* output_pump = nullptr;         // the pump whose captured text is result.out
  unique_fd done_fd = make_eventfd();  // readable once everything has finished
  std::size_t leader = SIZE_MAX;       // the stage leading the process group
  pid_t pgid = 0;
  std::size_t commands = 0;

  std::mutex mu;
  std::condition_variable cv;
  std::size_t exited = 0;          // (mu) command stages whose status is known
  bool aborting = false;           // (mu)
  bool timed_out = false;          // (mu)
  // (mu) The timeout sent a signal other than SIGKILL: SIGKILL follows at kill_at
  // unless every stage and the rest of the group are gone by then (escalated: it did).
  deadline kill_at;
  bool escalated = false;
  std::exception_ptr first_error;  // (mu)
  bool finished = false;           // (mu)

  std::thread supervisor;
  std::once_flag joined;

  // Sends sig to every stage not reaped yet, and to the group while its leader is
  // unreaped (the leader's pid is then still the group's id, so it cannot have been
  // reused). Returns whether anything was signalled. `by_library`: a stage still
  // running is marked killed (stage_result::killed).
  bool signal_all_locked(int sig, bool by_library = false) noexcept {
    bool any = false;
    for (auto& s : stages) {
      if (s.is_transform || s.reaped || !s.proc.valid()) continue;
      try {
        if (s.proc.signal(sig)) {
          any = true;
          if (by_library && !s.status) s.killed = true;
        }
      } catch (...) {
      }
    }
    if (pgid > 0 && leader != SIZE_MAX && !stages[leader].reaped && sys::kill(-pgid, sig) == 0)
      any = true;
    return any;
  }
  // Stops everything: signals the stages, tells the pumps to stop.
  void abort_locked(int sig) noexcept {
    if (!aborting) {
      aborting = true;
      stop_signal.store(sig);
    }
    stopping.store(true);
    signal_all_locked(sig, true);
    eventfd_notify(stop_fd.get());
    eventfd_notify(wake_fd.get());
  }
  // The timeout's grace is running: the leader stays unreaped, so its group can
  // still be sent SIGKILL at kill_at.
  bool grace_pending_locked() const noexcept { return kill_at && !escalated; }
  // A pump or the supervisor failed: remember the first error, stop everything.
  void fail(std::exception_ptr e) noexcept override {
    std::lock_guard lk(mu);
    if (!first_error) first_error = std::move(e);
    abort_locked(SIGKILL);
  }
};

}  // namespace subprocess::detail
