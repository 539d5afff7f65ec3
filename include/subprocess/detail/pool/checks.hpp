// subprocess/detail/pool/checks.hpp - what a worker_pool refuses before anything
// runs: bad options (the constructor) and bad params (submit(), on the caller's
// thread), as argument_error naming the setting or the task. Not public API.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "../../command.hpp"
#include "../../error.hpp"
#include "../../ipc.hpp"
#include "../../pool/options.hpp"
#include "../../stdio.hpp"
#include "../deadline.hpp"
#include "task.hpp"

namespace subprocess::detail::pool {

// Also settles max_workers (0: min_workers) and clamps "for ever" durations.
inline void check_options(const command& cmd, pool_options& opts) {
  const std::string n = opts.name.empty() ? cmd.to_string() : opts.name;
  auto bad = [&](const std::string& what) { return argument_error(n, "worker_pool: " + what); };
  if (opts.max_workers == 0) opts.max_workers = std::max<std::size_t>(opts.min_workers, 1);
  if (opts.max_workers < opts.min_workers) throw bad("max_workers is less than min_workers");
  if (opts.max_in_flight == 0) throw bad("max_in_flight must be at least 1");
  for (auto [d, what] : {std::pair{opts.scale_up_cooldown, "scale_up_cooldown"},
                         std::pair{opts.idle_timeout, "idle_timeout"},
                         std::pair{opts.heartbeat_interval, "heartbeat_interval"},
                         std::pair{opts.heartbeat_timeout, "heartbeat_timeout"},
                         std::pair{opts.task_timeout, "task_timeout"},
                         std::pair{opts.shutdown_grace, "shutdown_grace"},
                         std::pair{opts.term_grace, "term_grace"}})
    if (d < ms::zero()) throw bad(std::string(what) + " is negative");
  // Up to ms::max() means "for ever": kept below overflow when added to time points.
  for (ms* d : {&opts.scale_up_cooldown, &opts.idle_timeout, &opts.heartbeat_interval,
                &opts.heartbeat_timeout, &opts.task_timeout, &opts.shutdown_grace,
                &opts.term_grace})
    *d = detail::clamp_forever(*d);
  if (opts.heartbeat_interval > ms::zero() && opts.heartbeat_timeout <= ms::zero())
    throw bad("heartbeat_timeout must be positive when heartbeats are on");
  if (opts.max_message_size == 0) throw bad("max_message_size must be positive");
  if (opts.protocol == worker_protocol::plain && opts.max_in_flight != 1)
    throw bad(
        "max_in_flight must be 1 with worker_protocol::plain (answers carry no id: they are "
        "matched to tasks by order)");
  for (const auto* s : {&cmd.in(), &cmd.out(), &cmd.err()})
    if (*s && std::holds_alternative<pipe_t>(**s))
      throw bad(
          "a worker's stdin, stdout and stderr cannot be sp::pipe (nobody would read or "
          "write it); use inherit, null or a file");
}

// JSON-RPC params are an object, an array or null; a plain message is any value.
inline void check_params(const pool_options& opts, std::string_view method, const json& params) {
  if (opts.protocol == worker_protocol::plain) return;
  if (!(params.is_null() || params.is_array() || params.is_object()))
    throw argument_error(opts.name,
                         "submit '" + std::string(method) +
                             "': params must be an object, an array or null (JSON-RPC)");
}

// Strings must be valid UTF-8: found here, on the caller's thread, not later. (The
// serializer run into a sink that keeps nothing: no allocation.)
inline void check_utf8(const pool_options& opts, const json& params) {
  struct discard {
    void append(const char*, std::size_t) noexcept {}
    void push_back(char) noexcept {}
    std::size_t size() const noexcept { return 0; }
    void reserve(std::size_t) noexcept {}
  } sink;
  if (!params.is_null()) detail::ipc_wire::dump_to(sink, params, opts.name);
}

}  // namespace subprocess::detail::pool
