// subprocess/exit_status.hpp - how a process ended.
//
// A child process ends in one of two ways, and exit_status keeps them apart (as
// Rust's std::process::ExitStatus does) instead of folding both into one int: it
// exited (it called exit(code) or returned from main; code is 0..255), or a signal
// killed it (SIGKILL, SIGTERM, SIGSEGV, ...), maybe writing a core dump.
//
//   ```cpp
//   sp::exit_status st = sp::exit_status::signaled(SIGTERM);  // as p.wait() returns it
//   if (st.success()) std::cout << "ok\n";                    // exited with code 0
//   if (auto c = st.code()) std::cout << "code " << *c << '\n';      // it exited
//   if (auto s = st.signal()) std::cout << "signal " << *s << '\n';  // it was killed
//   std::cout << st << '\n';    // "killed by SIGTERM", "exited with code 3"
//   std::cout << st.shell_code() << '\n';   // 143: what a shell's $? would say
//   ```
//
// Contract: a small value type (copy it, compare it, store it); nothing throws
// except to_string() and printing, which allocate. code() never reports a signal
// death as 128+N: that is a convention of the shell, not what the kernel said;
// shell_code() gives you that number when you need to mimic a shell.
#pragma once

#include <optional>
#include <string>

#include <signal.h>
#include <sys/wait.h>

#include "detail/printing.hpp"
#include "detail/signal_table.hpp"

namespace subprocess {

class exit_status {
 public:
  // The process exited with this code (0..255).
  static constexpr exit_status exited(int code) noexcept { return exit_status(code, 0, false); }
  // The process was ended by this signal.
  static constexpr exit_status signaled(int sig, bool core_dumped = false) noexcept {
    return exit_status(0, sig, core_dumped);
  }
  // From the int that waitpid() fills in. A stopped/continued status is not an end
  // state and must not be passed here.
  static constexpr exit_status from_wait_status(int ws) noexcept {
    if (WIFSIGNALED(ws)) return signaled(WTERMSIG(ws), WCOREDUMP(ws));
    return exited(WEXITSTATUS(ws));
  }
  // From what waitid() fills in for a child that ended (si_code CLD_EXITED,
  // CLD_KILLED or CLD_DUMPED; not a stopped/continued one, and not si_pid 0).
  static exit_status from_siginfo(const siginfo_t& info) noexcept {
    if (info.si_code == CLD_EXITED) return exited(info.si_status);
    return signaled(info.si_status, info.si_code == CLD_DUMPED);
  }

  // Exited with code 0.
  constexpr bool success() const noexcept { return signal_ == 0 && code_ == 0; }
  constexpr bool exited_normally() const noexcept { return signal_ == 0; }
  constexpr bool killed() const noexcept { return signal_ != 0; }

  // The exit code if the process exited; nullopt if a signal killed it.
  constexpr std::optional<int> code() const noexcept {
    return signal_ == 0 ? std::optional<int>(code_) : std::nullopt;
  }
  // The signal number if a signal killed it; nullopt if it exited.
  constexpr std::optional<int> signal() const noexcept {
    return signal_ != 0 ? std::optional<int>(signal_) : std::nullopt;
  }
  constexpr bool core_dumped() const noexcept { return core_; }
  // The number a POSIX shell puts in $?: the code, or 128 + signal.
  constexpr int shell_code() const noexcept { return signal_ != 0 ? 128 + signal_ : code_; }

  // "exited with code 0", "killed by SIGTERM", "killed by SIGSEGV (core dumped)".
  std::string to_string() const {
    if (signal_ == 0) return "exited with code " + std::to_string(code_);
    std::string s = "killed by " + detail::signal_name_of(signal_);
    if (core_) s += " (core dumped)";
    return s;
  }

  friend constexpr bool operator==(const exit_status&, const exit_status&) noexcept = default;

 private:
  constexpr exit_status(int code, int sig, bool core) noexcept
      : code_(code), signal_(sig), core_(core) {}
  int code_;
  int signal_;
  bool core_;
};

// Prints to_string(); so does fmt::format("{}", st) with <subprocess/fmt.hpp>.
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const exit_status& s) {
  return detail::put_text(os, s.to_string());
}

}  // namespace subprocess
