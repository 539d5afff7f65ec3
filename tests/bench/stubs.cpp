// tests/bench/stubs.cpp - placeholders for modules that cannot run in this build.
//
// pool.hpp is written on another branch. Its benchmark will be its own module file
// (pool.cpp) built like ipc.cpp and pipeline.cpp: server-side implementations
// registered with bench::register_impl, a plan registered with bench::register_plan,
// and handlers in peers/peer.py and peers/peer.js for the Python and Node peers.
// Until then the table says so instead of showing numbers. When a module lands,
// delete its line here. The ipc module needs nlohmann/json: without it, its line
// says so.
#include "bench.hpp"

namespace {

bench::phase not_built(const char* name, const char* title) {
  bench::phase ph;
  ph.name = name;
  ph.title = title;
  ph.skipped_module = "not built yet";
  return ph;
}

#ifndef SUBPROCESS_BENCH_HAVE_IPC
[[maybe_unused]] const bool ipc_planned = bench::register_plan(40, [](const bench::plan_context&) {
  bench::phase ph = not_built("ipc", "5. ipc round trips and a 100 MiB message (vs socketpair, Node, Python)");
  ph.skipped_module = "not built: nlohmann-json3-dev is not installed";
  return ph;
});
#endif

[[maybe_unused]] const bool planned =
    bench::register_plan(50, [](const bench::plan_context&) {
      return not_built("pool", "6. worker pool, 2 workers, trivial tasks (vs raw C++, Node, Python)");
    });

}  // namespace
