// subprocess/detail/pool/task.hpp - one task of a worker_pool, from submit() to the
// moment its future (or callback) is fulfilled. Not public API.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../../ipc.hpp"
#include "../../pool/error.hpp"

namespace subprocess::detail::pool {

using clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;
using json = ipc::json;

struct task {
  std::uint64_t id = 0;
  std::string method;
  json params;
  std::promise<json> promise;
  ipc::reply_fn fn;
  std::vector<pool_attempt> attempts;  // attempts that died
  unsigned charged = 0;                // of those, the ones that count against max_retries
  bool broadcast = false;              // pinned to its worker, never retried
};
using task_ptr = std::unique_ptr<task>;

// A task sent to a worker and not answered yet.
struct sent_task {
  std::uint64_t rpc_id;
  task_ptr t;
  // When its task_timeout clock started: when it became the oldest unanswered task
  // of its worker (sent to an idle worker, or the one before it was answered).
  clock::time_point since;
};

// Fulfils the task's future, or calls its callback (which must not throw: nobody
// could be told).
inline void deliver(task& t, json result, std::exception_ptr e) {
  if (t.fn) {
    try {
      t.fn(ipc::reply{std::move(result), e});
    } catch (...) {
    }
  } else if (e) {
    t.promise.set_exception(e);
  } else {
    t.promise.set_value(std::move(result));
  }
}

}  // namespace subprocess::detail::pool
