// tests/bench/spawn_uv.cpp - libuv's uv_spawn (Debian libuv1-dev) as a peer for
// figures 1 and 2: one loop, uv_spawn, run the loop until the exit callback.
#include <uv.h>

#include <stdexcept>
#include <string>

#include "bench.hpp"

namespace {

struct exit_info {
  bool done = false;
  int64_t status = -1;
};

std::vector<bench::sample> uv_spawn_bench(const bench::request& r) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) throw std::runtime_error("uv_loop_init failed");
  std::vector<bench::sample> v;
  char prog[] = "/bin/true";
  char* args[] = {prog, nullptr};
  std::string error;
  for (int i = 0; i < r.iterations && error.empty(); ++i) {
    auto t0 = bench::clock::now();
    uv_process_t child;
    exit_info info;
    child.data = &info;
    uv_process_options_t opts{};
    opts.file = prog;
    opts.args = args;
    opts.exit_cb = [](uv_process_t* p, int64_t status, int) {
      static_cast<exit_info*>(p->data)->done = true;
      static_cast<exit_info*>(p->data)->status = status;
      uv_close(reinterpret_cast<uv_handle_t*>(p), nullptr);
    };
    if (int e = uv_spawn(&loop, &child, &opts); e != 0) {
      error = std::string("uv_spawn: ") + uv_strerror(e);
      uv_close(reinterpret_cast<uv_handle_t*>(&child), nullptr);
      uv_run(&loop, UV_RUN_DEFAULT);
      break;
    }
    uv_run(&loop, UV_RUN_DEFAULT);  // returns once the child exited and its handle closed
    if (!info.done || info.status != 0) error = "libuv: /bin/true failed";
    v.push_back({double(bench::elapsed_ns(t0)), 0});
  }
  uv_loop_close(&loop);
  if (!error.empty()) throw std::runtime_error(error);
  return v;
}

[[maybe_unused]] const bool registered =
    bench::register_impl("spawn/libuv", uv_spawn_bench) &&
    bench::register_version(std::string("libuv ") + uv_version_string());

}  // namespace
