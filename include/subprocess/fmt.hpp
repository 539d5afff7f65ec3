// subprocess/fmt.hpp - fmt formatters for the library's value types.  [needs fmt]
//
// fmt::formatter specialisations for exit_status, command, spawn_backend, environment,
// signal_info, shutdown_entry, shutdown_result, forward_result, output_limit,
// timeout_policy, timeout_outcome, cancel_policy, tree_mechanism, tree_usage, pattern,
// run_result, transform, pipeline, stage_result and pipeline_result.
// Each prints the same text as the type's to_string() and operator<< (both declared next to
// the type, whose comments show the text; `std::cout << x` needs no fmt).
//
//   ```cpp
//   sp::command cmd{"uname", "-r"};
//   std::cout << fmt::format("running {}\n", cmd);           // "running uname -r"
//   fmt::print("[{:>20}]\n", sp::exit_status::exited(3));     // "[  exited with code 3]"
//   fmt::print("{}\n", sp::run(cmd));  // "'uname -r' exited with code 0 (out 7 bytes, ...)"
//   ```
//
// A string's format spec applies to the whole text: "{:>30}", "{:-^40}", "{:.20}".
// Captured output (run_result::out, pipeline_result::out, stderr) is never part of the
// text: it can be large, binary or secret; print it yourself. The environment's
// formatter always redacts ("API_TOKEN=***REDACTED***", one line per variable):
// printing an environment is how secrets end up in logs; iterate it yourself if you
// really need the values. Errors need nothing: print e.what().
//
// The types of ipc.hpp and pool.hpp (pool_stats, pool_event, pool_event_kind,
// pool_attempt, dispatch_policy, queue_full_policy, shutdown_mode, worker_protocol,
// ipc::broadcast_result, ipc::beat) have operator<< and to_string() in their own
// headers, but no formatter here: this header would otherwise pull in nlohmann/json
// for every fmt user. Print them with fmt::streamed (fmt 9 or later, <fmt/ostream.h>):
// fmt::print("{}\n", fmt::streamed(pool.stats())).
//
// Contract: formatting throws only what fmt throws (std::bad_alloc, or
// fmt::format_error for a bad spec given through fmt::runtime: a literal one does not
// compile); it never blocks and reads nothing but the value, so it is as thread-safe
// as reading the value. Cost: the value's to_string() text (one std::string), then
// fmt's string formatting of it.
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

#include "command.hpp"
#include "environment.hpp"
#include "exit_status.hpp"
#include "pipeline.hpp"
#include "process.hpp"
#include "pty.hpp"
#include "run.hpp"
#include "signals.hpp"
#include "timeout.hpp"
#include "tree.hpp"

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
struct fmt::formatter<subprocess::timeout_policy>
    : subprocess::detail::text_formatter<subprocess::timeout_policy> {};
template <>
struct fmt::formatter<subprocess::transform> : subprocess::detail::text_formatter<subprocess::transform> {};
template <>
struct fmt::formatter<subprocess::pipeline> : subprocess::detail::text_formatter<subprocess::pipeline> {};
template <>
struct fmt::formatter<subprocess::stage_result> : subprocess::detail::text_formatter<subprocess::stage_result> {};
template <>
struct fmt::formatter<subprocess::pipeline_result> : subprocess::detail::text_formatter<subprocess::pipeline_result> {};
template <>
struct fmt::formatter<subprocess::timeout_outcome>
    : subprocess::detail::text_formatter<subprocess::timeout_outcome> {};
template <>
struct fmt::formatter<subprocess::cancel_policy> : subprocess::detail::text_formatter<subprocess::cancel_policy> {};
template <>
struct fmt::formatter<subprocess::tree_mechanism> : subprocess::detail::text_formatter<subprocess::tree_mechanism> {};
template <>
struct fmt::formatter<subprocess::tree_usage> : subprocess::detail::text_formatter<subprocess::tree_usage> {};
template <>
struct fmt::formatter<subprocess::pattern> : subprocess::detail::text_formatter<subprocess::pattern> {};
