// subprocess/detail/pipeline/exit_watch.hpp - has a pipeline stage exited? Not public API.
//
// TODO(watcher): the shared siginfo -> exit_status conversion and the pidfd watcher
// with its fallback (detail/) replace both functions here; the supervisor
// (supervisor.hpp) calls only peek_exit().
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <system_error>

#include <sys/types.h>
#include <sys/wait.h>

#include "../../error.hpp"
#include "../../exit_status.hpp"
#include "../syscall.hpp"

namespace subprocess::detail {

// TODO(watcher): the one shared conversion.
inline exit_status status_from_siginfo(const siginfo_t& info) noexcept {
  if (info.si_code == CLD_EXITED) return exit_status::exited(info.si_status);
  return exit_status::signaled(info.si_status, info.si_code == CLD_DUMPED);
}

// TODO(watcher): how stage `command` (pid, and pidfd or -1) ended, without reaping
// it (WNOWAIT) and without blocking; nullopt while it runs. Throws error if waitid
// fails. Through the pidfd when there is one: a pid can be reused once reaped
// elsewhere.
inline std::optional<exit_status> peek_exit(int pidfd, pid_t pid, const std::string& command) {
  siginfo_t info{};
  int r = sys::no_eintr([&] {
    return pidfd >= 0 ? sys::waitid_pidfd(pidfd, &info, WEXITED | WNOHANG | WNOWAIT)
                      : sys::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
  });
  if (r < 0 && errno == EINVAL && pidfd >= 0)  // no P_PIDFD (Linux 5.3)
    r = sys::no_eintr([&] {
      return sys::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    });
  if (r < 0) {
    std::error_code ec(errno, std::system_category());
    throw error(ec, command, "waitid for '" + command + "' failed: " + ec.message());
  }
  if (info.si_pid == 0) return std::nullopt;  // still running
  return status_from_siginfo(info);
}

}  // namespace subprocess::detail
