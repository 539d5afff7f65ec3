// subprocess/fmt.hpp - fmt formatters for the library's value types.  [needs fmt]
//
//   #include <subprocess/fmt.hpp>
//   fmt::print("{}\n", p.wait());          // "exited with code 0"
//   fmt::print("running {}\n", cmd);       // the shell-quoted command line
//   fmt::print("{}", env);                 // NAME=value lines, secrets redacted
//   fmt::print("{}\n", sp::run(cmd));      // "'uname -r' exited with code 0 (out 7 bytes, err 0 bytes)"
//
// Every formatter prints the same text as the type's operator<< (declared next to the
// type, so `std::cout << x` needs no fmt) and as its to_string(). They accept a
// string's format spec, applied to the whole text: "{:>30}", "{:-^40}", "{:.20}".
//
//   type (header)                     text
//   exit_status (exit_status.hpp)     exited with code 3 | killed by SIGSEGV (core dumped)
//   command (command.hpp)             echo 'a b'     (shell-quoted; the environment is not shown)
//   spawn_backend (command.hpp)       automatic | posix_spawn | clone_vfork
//   environment (environment.hpp)     API_TOKEN=***REDACTED***\nUSER=me\n   (one line per variable)
//   signal_info (signals.hpp)         SIGTERM from pid 4242 (uid 1000) | SIGINT from the kernel
//                                     | SIGUSR1 from pid 4242 (uid 1000), value 7
//   shutdown_entry (signals.hpp)      pid 4242 'sleep 10' killed by SIGTERM after 3 ms
//                                     [, needed SIGKILL] | pid 4243 'true' exited with code 0, had already exited
//   shutdown_result (signals.hpp)     3 processes stopped in 2004 ms: 2 gracefully, 1 needed SIGKILL
//   forward_result (signals.hpp)      SIGTERM from pid 4242 (uid 1000); <shutdown_result>[, forced by a second signal]
//   output_limit (run.hpp)            kill | truncate
//   run_result (run.hpp)              'ls /tmp' exited with code 0 (out 1234 bytes[, truncated], err 0 bytes)
//   transform (pipeline.hpp)          [square]
//   pipeline (pipeline.hpp)           grep -v '^#' | [square] | sort -n
//   stage_result (pipeline.hpp)       'grep x' (pid 4242) exited with code 1, failed
//                                     | [square] exited with code 1, threw: bad line, failed
//   pipeline_result (pipeline.hpp)    'cat | sort' exited with code 0 (2 stages, out 12 bytes)
//                                     | 'false | cat' failed at stage 1 of 2: 'false' (pid 4242) exited with code 1 (out 0 bytes)
//
// Captured output (run_result::out, pipeline_result::out, stderr) is never part of the
// text: it can be large, binary or secret. Print it yourself.
//
// The environment formatter always redacts: printing an environment is how
// secrets end up in logs. Iterate it yourself if you really need the values.
//
// The types of ipc.hpp and pool.hpp (pool_stats, pool_event, pool_event_kind,
// pool_attempt, dispatch_policy, queue_full_policy, shutdown_mode, worker_protocol,
// ipc::broadcast_result, ipc::beat) have operator<< and to_string() in their own
// headers, but no formatter here: this header would otherwise pull in nlohmann/json
// for every fmt user. Print them with fmt::streamed (fmt 9 or later):
//
//   #include <fmt/ostream.h>
//   fmt::print("{}\n", fmt::streamed(pool.stats()));
//   // "workers 4 (busy 2, idle 2), queued 10, completed 120, failed 1, retried 3"
//
// Errors need nothing: print e.what().
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

#include "command.hpp"
#include "environment.hpp"
#include "exit_status.hpp"
#include "pipeline.hpp"
#include "run.hpp"
#include "signals.hpp"

namespace subprocess::detail {

// The text of a value: its to_string() member, or the to_string() beside it.
template <class T>
std::string fmt_text(const T& x) {
  if constexpr (requires { x.to_string(); })
    return x.to_string();
  else
    return std::string(subprocess::to_string(x));
}
// Never the values: redacted().
inline std::string fmt_text(const environment& e) { return e.redacted(); }

// A string's formatter (and its format spec) applied to the value's text.
template <class T>
struct text_formatter : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const T& x, Ctx& ctx) const {
    const std::string text = fmt_text(x);
    return fmt::formatter<std::string_view>::format(std::string_view(text), ctx);
  }
};

}  // namespace subprocess::detail

template <>
struct fmt::formatter<subprocess::exit_status> : subprocess::detail::text_formatter<subprocess::exit_status> {};
template <>
struct fmt::formatter<subprocess::command> : subprocess::detail::text_formatter<subprocess::command> {};
template <>
struct fmt::formatter<subprocess::spawn_backend> : subprocess::detail::text_formatter<subprocess::spawn_backend> {};
template <>
struct fmt::formatter<subprocess::environment> : subprocess::detail::text_formatter<subprocess::environment> {};
template <>
struct fmt::formatter<subprocess::signal_info> : subprocess::detail::text_formatter<subprocess::signal_info> {};
template <>
struct fmt::formatter<subprocess::shutdown_entry> : subprocess::detail::text_formatter<subprocess::shutdown_entry> {};
template <>
struct fmt::formatter<subprocess::shutdown_result> : subprocess::detail::text_formatter<subprocess::shutdown_result> {};
template <>
struct fmt::formatter<subprocess::forward_result> : subprocess::detail::text_formatter<subprocess::forward_result> {};
template <>
struct fmt::formatter<subprocess::output_limit> : subprocess::detail::text_formatter<subprocess::output_limit> {};
template <>
struct fmt::formatter<subprocess::run_result> : subprocess::detail::text_formatter<subprocess::run_result> {};
template <>
struct fmt::formatter<subprocess::transform> : subprocess::detail::text_formatter<subprocess::transform> {};
template <>
struct fmt::formatter<subprocess::pipeline> : subprocess::detail::text_formatter<subprocess::pipeline> {};
template <>
struct fmt::formatter<subprocess::stage_result> : subprocess::detail::text_formatter<subprocess::stage_result> {};
template <>
struct fmt::formatter<subprocess::pipeline_result> : subprocess::detail::text_formatter<subprocess::pipeline_result> {};
