// tests/bench/stubs.cpp - figures 4-5 (pipelines, ipc): placeholders.
//
// pipeline.hpp and ipc.hpp are written on other branches. Each of these
// benchmarks will be its own module file (pipeline.cpp, ipc.cpp) built like
// spawn.cpp, capture.cpp and pool.cpp: server-side implementations registered with
// bench::register_impl, a plan registered with bench::register_plan, and handlers
// in peers/peer.py and peers/peer.js for the Python and Node peers. Until then the
// table says so instead of showing numbers. When a module lands, delete its line
// here.
#include "bench.hpp"

namespace {

bench::phase not_built(const char* name, const char* title) {
  bench::phase ph;
  ph.name = name;
  ph.title = title;
  ph.skipped_module = "not built yet";
  return ph;
}

[[maybe_unused]] const bool planned =
    bench::register_plan(30, [](const bench::plan_context&) {
      return not_built("pipeline", "4. pipeline of 1 GiB (vs bash; transform stage vs Node)");
    }) &&
    bench::register_plan(40, [](const bench::plan_context&) {
      return not_built("ipc", "5. ipc round trips and a 100 MiB message (vs socketpair, Node, Python)");
    });

}  // namespace
