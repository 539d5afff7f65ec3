// tests/bench/stubs.cpp - placeholders for modules that cannot run in this build.
//
// Every figure has its own module file (spawn.cpp, capture.cpp, pipeline.cpp, ipc.cpp,
// pool.cpp). The ipc and worker pool modules need nlohmann/json: without it, their
// lines of the table say so instead of showing numbers.
#include "bench.hpp"

namespace {

#ifndef SUBPROCESS_BENCH_HAVE_IPC
bench::phase not_built(const char* name, const char* title) {
  bench::phase ph;
  ph.name = name;
  ph.title = title;
  ph.skipped_module = "not built: nlohmann-json3-dev is not installed";
  return ph;
}

[[maybe_unused]] const bool planned =
    bench::register_plan(40, [](const bench::plan_context&) {
      return not_built("ipc", "5. ipc round trips and a 100 MiB message (vs socketpair, Node, Python)");
    }) &&
    bench::register_plan(50, [](const bench::plan_context&) {
      return not_built("pool", "6. worker pool, 2 workers, trivial tasks (vs raw C++, Node, Python)");
    });
#endif

}  // namespace
