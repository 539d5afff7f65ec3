// subprocess/timeout.hpp - what to do with a child when its timeout strikes.
//
// A timeout_policy says which signal goes first, how long the child then gets
// before SIGKILL (the grace), or that it is left running for the caller. run(),
// communicate(), process::wait_for(t, policy) and pipelines take one.
//
//   ```cpp
//   auto term = sp::timeout_policy::kill_with(SIGTERM, 2s);  // SIGTERM; 2 s later SIGKILL
//   std::cout << term << '\n';                    // "SIGTERM, then SIGKILL after 2000 ms"
//   auto keep = sp::timeout_policy::leave_running();  // send nothing; the caller owns it
//     // p.wait_for(100ms, term) then throws timeout_error (process.hpp):
//     // "'sleep 10' timed out after 100 ms; sent SIGTERM, then SIGKILL after 2000 ms"
//     // sp::run(cmd, {.timeout = 1min, .on_timeout = term});   (run.hpp)
//   ```
//
// The default is what run() and pipelines always did: SIGKILL at once. kill_with(sig,
// grace): sig (followed by SIGCONT, so a stopped child runs its handler), then, if the
// child (or, for a group leader, anyone in its group) is still alive after `grace`,
// SIGKILL; the group when the child leads one. The grace is watched through the pidfd
// (no sleeping loop); durations saturate (milliseconds::max() is for ever).
// leave_running(): nothing is sent, timeout_error says the child is still running and
// that the caller owns it (Python's Popen.wait(timeout)); only where the caller holds
// the child: process::wait_for, communicate(p, ...), running_pipeline::wait_for.
// run() and pipeline::run() refuse it (argument_error): the child they own would be
// killed anyway when they return.
// Errors: a signal that is not a valid signal number, or a negative grace, is an
// argument_error naming the command, when the policy is used. Cost: a value (16 bytes).
#pragma once

#include <chrono>
#include <csignal>
#include <optional>
#include <string>

#include "detail/printing.hpp"
#include "detail/signal_table.hpp"
#include "exit_status.hpp"

namespace subprocess {

struct timeout_policy {
  int signal = SIGKILL;                // sent first
  std::chrono::milliseconds grace{0};  // then SIGKILL after this, if still alive
  bool kill = true;                    // false: leave it running (leave_running())

  // sig, then SIGKILL after `grace` if it is still alive.
  static timeout_policy kill_with(int sig, std::chrono::milliseconds grace = {}) noexcept {
    return {sig, grace, true};
  }
  // Send nothing: the caller still owns the running child.
  static timeout_policy leave_running() noexcept { return {SIGKILL, {}, false}; }

  // The signal escalates to SIGKILL: a signal other than SIGKILL comes first.
  bool escalates() const noexcept { return kill && signal != SIGKILL; }
  // "SIGKILL", "SIGTERM, then SIGKILL after 2000 ms", "leave running".
  std::string to_string() const {
    if (!kill) return "leave running";
    if (!escalates()) return "SIGKILL";
    return detail::signal_name_of(signal) + ", then SIGKILL after " +
           std::to_string(grace.count()) + " ms";
  }
  friend bool operator==(const timeout_policy&, const timeout_policy&) = default;
};

template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os,
                                             const timeout_policy& p) {
  return detail::put_text(os, p.to_string());
}

// What the library did when a timeout struck (timeout_error carries it).
struct timeout_outcome {
  std::optional<exit_status> status;  // how the child ended; nullopt if still running
  bool killed = false;                // the library sent the policy's signal (Node's `killed`)
  bool escalated = false;             // ... and then SIGKILL, the grace having passed
  bool still_running = false;         // leave_running: nothing sent, the caller owns the child
  // "killed by SIGTERM; signal sent", "killed by SIGKILL; signal sent, then SIGKILL",
  // "still running; left to the caller", "exited with code 0" (it ended by itself).
  std::string to_string() const {
    std::string s = status ? status->to_string() : std::string("still running");
    if (killed) s += "; signal sent";
    if (escalated) s += ", then SIGKILL";
    if (still_running) s += "; left to the caller";
    return s;
  }
};

template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os,
                                             const timeout_outcome& o) {
  return detail::put_text(os, o.to_string());
}

namespace detail {
// "sent SIGKILL", "sent SIGTERM", "sent SIGTERM, then SIGKILL after 500 ms", "still
// running: left to the caller, who owns it"; "" when nothing was sent (it had ended).
inline std::string describe(const timeout_policy& p, const timeout_outcome& o) {
  if (o.still_running) return "still running: left to the caller, who owns it";
  if (!o.killed) return "";
  std::string s = "sent " + signal_name_of(p.escalates() ? p.signal : SIGKILL);
  if (o.escalated) s += ", then SIGKILL after " + std::to_string(p.grace.count()) + " ms";
  return s;
}
}  // namespace detail

}  // namespace subprocess
