// subprocess/error.hpp - what the library throws.
//
// Every exception derives from subprocess::error, which derives from
// std::system_error, so code() carries an errno (std::system_category) or one of the
// library's own conditions (subprocess::errc), and every what() message names the
// command it is about. The kinds are kept apart so callers can catch exactly what they
// can handle: argument_error (bad input, nothing ran), spawn_error (could not start),
// timeout_error, process_error (ran and failed, and you asked for an error),
// output_limit_error, io_error (a pipe read or write failed). Each is described below.
//
//   ```cpp
//   try {
//     // sp::run(sp::command{"make", "-j8"}, {.timeout = 10min}).check();   (run.hpp)
//   } catch (const sp::timeout_error& e) {   // killed at its timeout
//     std::cerr << e.what() << '\n' << e.out();
//   } catch (const sp::process_error& e) {   // ran and failed
//     std::cerr << e.status() << '\n' << e.err();
//   } catch (const sp::spawn_error& e) {     // never started
//     if (e.code() == std::errc::no_such_file_or_directory) std::cerr << "no make?\n";
//   }
//   ```
//
// Contract: exceptions are values (copyable, as std::system_error is); what() never
// throws and shows a NUL byte of a rejected argument as \0. Building one allocates
// its message; nothing here blocks or touches the process. Without exceptions
// (-fno-exceptions): the std::error_code& overloads, see SUBPROCESS_NO_EXCEPTIONS.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "exit_status.hpp"
#include "timeout.hpp"

// Exception-free builds. Compiled with -fno-exceptions (no __cpp_exceptions), or with
// SUBPROCESS_NO_EXCEPTIONS defined, the library spells every throw, try and catch of
// its core headers through the macros below: a throw prints the error's what() to
// stderr and calls std::abort(); try blocks run, catch blocks compile away. Use the
// overloads taking a std::error_code& there (command::spawn, process::wait/wait_for/
// wait_until/signal/kill/terminate, run, ipc::channel::send/receive): they report the
// errors a program can expect (program not found, bad working directory, a refused
// signal, a timeout, a closed channel) through the error_code instead. With
// exceptions those overloads catch and report everything the throwing call raises.
// Without, what still aborts: bad arguments (a programming error, as with
// std::vector::at), the fds spawn() opens (a redirect file that cannot be opened,
// no fds left), running out of memory, and the failures that
// happen deep inside a transfer (run's timeout and output limit, a peer vanishing
// mid-send, a malformed message). The core (error, exit_status, environment, stdio,
// command, process, stream, run, event_loop, signals, pty, ipc/channel) compiles
// without exceptions; pipeline, pool and ipc server/client/heartbeat still need them
// (their futures, transforms and handlers carry exceptions by design).
#if !defined(SUBPROCESS_NO_EXCEPTIONS) && !defined(__cpp_exceptions)
#define SUBPROCESS_NO_EXCEPTIONS 1
#endif
#ifdef SUBPROCESS_NO_EXCEPTIONS
#define SUBPROCESS_THROW(...) ::subprocess::detail::fatal(__VA_ARGS__)
#define SUBPROCESS_TRY if (true)
#define SUBPROCESS_CATCH(Type, name) \
  else if (std::remove_reference_t<Type>* sp_never_ = nullptr) for (Type name = *sp_never_; sp_never_; sp_never_ = nullptr, (void)name)
#define SUBPROCESS_CATCH_ALL else if (false)
#define SUBPROCESS_RETHROW std::abort()
#else
#define SUBPROCESS_THROW(...) throw __VA_ARGS__
#define SUBPROCESS_TRY try
#define SUBPROCESS_CATCH(Type, name) catch (Type name)
#define SUBPROCESS_CATCH_ALL catch (...)
#define SUBPROCESS_RETHROW throw
#endif

namespace subprocess {

namespace detail {
// What a throw becomes without exceptions: the message, then abort.
template <class E>
[[noreturn]] void fatal(const E& e) noexcept {
  std::fprintf(stderr, "subprocess: fatal error (built without exceptions): %s\n", e.what());
  std::abort();
}
}  // namespace detail

// The library's own error conditions (errno values are used where one fits).
enum class errc {
  process_failed = 1,     // exited non-zero or was killed (process_error)
  output_limit_exceeded,  // max_output reached (output_limit_error)
  channel_closed,         // the IPC peer went away
  protocol_error,         // a malformed or oversized IPC message
  remote_error,           // the IPC peer answered a request with an error (JSON-RPC)
};

inline const std::error_category& category() noexcept {
  struct cat final : std::error_category {
    const char* name() const noexcept override { return "subprocess"; }
    std::string message(int c) const override {
      switch (static_cast<errc>(c)) {
        case errc::process_failed: return "process failed";
        case errc::output_limit_exceeded: return "output limit exceeded";
        case errc::channel_closed: return "channel closed";
        case errc::protocol_error: return "protocol error";
        case errc::remote_error: return "remote error";
      }
      return "unknown subprocess error";
    }
  };
  static const cat instance;
  return instance;
}

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), category()};
}

}  // namespace subprocess

template <>
struct std::is_error_code_enum<subprocess::errc> : std::true_type {};

namespace subprocess {

// Base of everything the library throws. what() is the whole message.
class error : public std::system_error {
 public:
  error(std::error_code ec, std::string command, std::string message)
      : std::system_error(ec), command_(std::move(command)), message_(visible(std::move(message))) {}
  // The command line (shell-quoted) the error is about; empty if none.
  const std::string& command() const noexcept { return command_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  // what() is a C string: show a NUL byte (possible in a rejected argument) as \0.
  static std::string visible(std::string m) {
    for (std::size_t i = m.find('\0'); i != std::string::npos; i = m.find('\0', i + 2))
      m.replace(i, 1, "\\0");
    return m;
  }
  std::string command_;
  std::string message_;
};

// Bad input, rejected before anything was started: an empty argv, a NUL byte in an
// argument, an environment variable name containing '=', a negative timeout. Nothing
// ran. code() is std::errc::invalid_argument.
class argument_error : public error {
 public:
  argument_error(std::string command, const std::string& problem)
      : error(std::make_error_code(std::errc::invalid_argument), command,
              command.empty() ? problem : "command '" + command + "': " + problem) {}
};

// The child could not be started: program not found, not executable, bad working
// directory, fd limit... code() is the errno; step() says which step failed ("exec",
// "chdir", "open stdout file", ...). No child is left behind.
class spawn_error : public error {
 public:
  spawn_error(int err, std::string command, std::string step, const std::string& detail = {})
      : error(std::error_code(err, std::system_category()), command,
              "cannot start '" + command + "': " + step + (detail.empty() ? "" : " " + detail) +
                  hint(err, step) + ": " + std::error_code(err, std::system_category()).message()),
        step_(std::move(step)) {}
  // Which step failed: "resolve program", "exec", "chdir", "open stdin file", ...
  const std::string& step() const noexcept { return step_; }

 private:
  // What to do about the errnos whose text alone leaves people guessing.
  static const char* hint(int err, const std::string& step) noexcept {
    if (step != "exec" && step != "resolve program") return "";
    if (err == ENOEXEC) return " (not a binary, nor a script starting with #!)";
    if (err == EACCES) return " (not executable, or a directory on its path cannot be searched)";
    return "";
  }
  std::string step_;
};

// A pipe read or write failed, e.g. EPIPE when the child closed its end or exited
// before reading all its input.
class io_error : public error {
 public:
  io_error(int err, std::string command, const std::string& what_failed)
      : error(std::error_code(err, std::system_category()), command,
              what_failed + (command.empty() ? "" : " of '" + command + "'") +
                  (err == EPIPE ? " (the child closed it or exited)" : "") + ": " +
                  std::error_code(err, std::system_category()).message()) {}
};

// A wait was given up because its std::stop_token was asked to stop (co_await ...
// with a stop token, process::wait(stop)). The child is untouched: still running,
// still yours. code() is std::errc::operation_canceled.
class canceled_error : public error {
 public:
  canceled_error(std::string command, const std::string& what_canceled)
      : error(std::make_error_code(std::errc::operation_canceled), command,
              what_canceled + (command.empty() ? "" : " of '" + command + "'") + ": canceled") {}
};

namespace detail {

// The errno's text, as std::system_category() gives it: "No such file or directory".
inline std::string errno_text(int err) { return std::error_code(err, std::system_category()).message(); }

// The one way the library raises a failed system call (the spawn path has
// spawn_error, which adds the step): a subprocess::error whose code() is the
// errno, about `command` ("" if none), with the message "<what>: <errno text>".
// `what` names the operation and what it was about ("cannot send SIGTERM to 'x'").
[[noreturn]] inline void throw_errno(int err, std::string command, const std::string& what) {
  SUBPROCESS_THROW(error(std::error_code(err, std::system_category()), std::move(command), what + ": " + errno_text(err)));
}
[[noreturn]] inline void throw_errno(int err, const std::string& what) { throw_errno(err, "", what); }

// The error_code overloads: runs f and returns its value; an error it raises goes to
// `ec` instead (its code(); std::errc::not_enough_memory for bad_alloc) and `failed`
// is returned. Without exceptions f runs bare: the overloads keep the errors they
// report off the throwing path themselves (see SUBPROCESS_NO_EXCEPTIONS above).
template <class R, class F>
R report_to(std::error_code& ec, R failed, F&& f) noexcept {
  ec.clear();
  SUBPROCESS_TRY { return f(); }
  SUBPROCESS_CATCH(const std::system_error&, e) { ec = e.code(); }
  SUBPROCESS_CATCH(const std::bad_alloc&, e) { ec = std::make_error_code(std::errc::not_enough_memory); }
  return failed;
}

}  // namespace detail

// Output captured from a child, as far as it got.
struct captured_output {
  std::string out;
  std::string err;
};

// The child ran past its timeout. By default (timeout_policy{}) it was killed and
// reaped before this was thrown; the message says what was done ("; sent SIGTERM,
// then SIGKILL after 500 ms") or that it is still running and yours (leave_running).
// Carries the output captured so far. code() is std::errc::timed_out.
class timeout_error : public error {
 public:
  timeout_error(std::string command, std::chrono::milliseconds timeout,
                std::optional<exit_status> status, captured_output output,
                const std::string& note = {})
      : timeout_error(std::move(command), timeout, timeout_policy{}, timeout_outcome{status, true},
                      std::move(output), note, false) {}
  // After `policy` was applied, with `outcome`.
  timeout_error(std::string command, std::chrono::milliseconds timeout,
                const timeout_policy& policy, timeout_outcome outcome, captured_output output,
                const std::string& note = {}, bool say_what_was_done = true)
      : error(std::make_error_code(std::errc::timed_out), command,
              "'" + command + "' timed out after " + std::to_string(timeout.count()) + " ms" +
                  (note.empty() ? "" : " (" + note + ")") +
                  action(say_what_was_done ? detail::describe(policy, outcome) : std::string())),
        timeout_(timeout),
        outcome_(std::move(outcome)),
        output_(std::move(output)) {}
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  // How the child ended after it was killed (nullopt if it could not be reaped, or
  // is still running).
  const std::optional<exit_status>& status() const noexcept { return outcome_.status; }
  // The library signalled it (Node's `killed`); false if it had ended by itself.
  bool killed() const noexcept { return outcome_.killed; }
  // leave_running: it was left running; whoever holds its handle owns it.
  bool still_running() const noexcept { return outcome_.still_running; }
  // All of it: status, killed, escalated (SIGKILL after the grace), still_running.
  const timeout_outcome& outcome() const noexcept { return outcome_; }
  // Output captured before the timeout.
  const std::string& out() const noexcept { return output_.out; }
  const std::string& err() const noexcept { return output_.err; }

 private:
  static std::string action(const std::string& a) { return a.empty() ? a : "; " + a; }
  std::chrono::milliseconds timeout_;
  timeout_outcome outcome_;
  captured_output output_;
};

// The child ran and failed (non-zero exit, or killed by a signal) and the caller asked
// for that to be an error (check()). Carries the exit_status and the captured output;
// what() ends with (at most) the last 512 bytes of its stderr. code() is errc::process_failed.
class process_error : public error {
 public:
  process_error(std::string command, exit_status status, captured_output output)
      : error(errc::process_failed, command, describe(command, status, output.err)),
        status_(status),
        output_(std::move(output)) {}
  exit_status status() const noexcept { return status_; }
  const std::string& out() const noexcept { return output_.out; }
  const std::string& err() const noexcept { return output_.err; }

 private:
  static std::string describe(const std::string& command, exit_status st, const std::string& err) {
    std::string m = "'" + command + "' " + st.to_string();
    if (!err.empty()) {
      // The last few lines of stderr usually say why; keep the message short.
      constexpr std::size_t tail = 512;
      std::string_view e(err);
      while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.remove_suffix(1);
      if (e.size() > tail) {
        e = e.substr(e.size() - tail);
        m += ": ...";
      } else {
        m += ": ";
      }
      m += e;
    }
    return m;
  }
  exit_status status_;
  captured_output output_;
};

// The child wrote more than the allowed max_output on one stream; it was killed.
// code() is errc::output_limit_exceeded.
class output_limit_error : public error {
 public:
  output_limit_error(std::string command, std::string stream, std::size_t limit,
                     std::optional<exit_status> status, captured_output output)
      : error(errc::output_limit_exceeded, command,
              "'" + command + "' wrote more than " + std::to_string(limit) + " bytes to " +
                  stream + "; it was killed"),
        stream_(std::move(stream)),
        status_(status),
        output_(std::move(output)) {}
  // "stdout" or "stderr".
  const std::string& stream() const noexcept { return stream_; }
  const std::optional<exit_status>& status() const noexcept { return status_; }
  // The first max_output bytes of each stream.
  const std::string& out() const noexcept { return output_.out; }
  const std::string& err() const noexcept { return output_.err; }

 private:
  std::string stream_;
  std::optional<exit_status> status_;
  captured_output output_;
};

}  // namespace subprocess
