// tests/bench/async.cpp - the cost of waiting for a child's exit asynchronously:
// the blocking wait(), an event_loop callback, a co_await in an sp::task, and asio
// (a callback and use_awaitable) when asio is found. One sample is one spawn of
// /bin/true plus its wait; one loop (or io_context) serves a whole batch, so the
// rows differ only in how the exit is waited for.
#include <stdexcept>

#include <subprocess/subprocess.hpp>
#include <subprocess/task.hpp>
#if defined(SUBPROCESS_BENCH_HAVE_ASIO)
#include <subprocess/asio.hpp>
#endif

#include "bench.hpp"

namespace sp = subprocess;

namespace {

const sp::command& true_cmd() {
  static const sp::command c{"/bin/true"};
  return c;
}

template <class F>
std::vector<bench::sample> timed(const bench::request& r, F&& once) {
  std::vector<bench::sample> v;
  for (int i = 0; i < r.iterations; ++i) {
    auto t0 = bench::clock::now();
    once();
    v.push_back({double(bench::elapsed_ns(t0)), 0});
  }
  return v;
}

void expect_success(bool ok, const char* who) {
  if (!ok) throw std::runtime_error(std::string(who) + ": /bin/true did not exit 0");
}

std::vector<bench::sample> blocking(const bench::request& r) {
  return timed(r, [] { expect_success(true_cmd().spawn().wait().success(), "wait"); });
}

std::vector<bench::sample> callback(const bench::request& r) {
  sp::event_loop loop;
  return timed(r, [&] {
    auto p = true_cmd().spawn();
    bool ok = false;
    loop.on_exit(p, [&](sp::exit_status st) { ok = st.success(); });
    loop.run();
    expect_success(ok, "on_exit");
  });
}

std::vector<bench::sample> coroutine(const bench::request& r) {
  sp::event_loop loop;
  return timed(r, [&] {
    auto p = true_cmd().spawn();
    auto t = [&]() -> sp::task<bool> { co_return (co_await sp::async_wait(loop, p)).success(); };
    expect_success(sp::sync_wait(loop, t()), "co_await async_wait");
  });
}

#if defined(SUBPROCESS_BENCH_HAVE_ASIO)
std::vector<bench::sample> asio_callback(const bench::request& r) {
  ::asio::io_context io;
  return timed(r, [&] {
    auto p = true_cmd().spawn();
    bool ok = false;
    sp::asio::async_wait(io.get_executor(), p, [&](std::error_code ec, sp::exit_status st) { ok = !ec && st.success(); });
    io.restart();
    io.run();
    expect_success(ok, "asio async_wait");
  });
}
std::vector<bench::sample> asio_awaitable(const bench::request& r) {
#if !defined(ASIO_HAS_CO_AWAIT)
  (void)r;
  throw bench::skipped("asio without coroutines for this compiler");
#else
  ::asio::io_context io;
  return timed(r, [&] {
    auto p = true_cmd().spawn();
    bool ok = false;
    ::asio::co_spawn(
        io,
        [&]() -> ::asio::awaitable<void> {
          auto st = co_await sp::asio::async_wait(io.get_executor(), p, ::asio::use_awaitable);
          ok = st.success();
        },
        ::asio::detached);
    io.restart();
    io.run();
    expect_success(ok, "asio use_awaitable");
  });
#endif
}
#endif

[[maybe_unused]] const bool registered = [] {
  bench::register_impl("async/wait", blocking);
  bench::register_impl("async/on_exit", callback);
  bench::register_impl("async/co_await", coroutine);
#if defined(SUBPROCESS_BENCH_HAVE_ASIO)
  bench::register_impl("async/asio_callback", asio_callback);
  bench::register_impl("async/asio_awaitable", asio_awaitable);
#else
  for (const char* k : {"async/asio_callback", "async/asio_awaitable"})
    bench::register_impl(k, [](const bench::request&) -> std::vector<bench::sample> {
      throw bench::skipped("not installed: libasio-dev");
    });
#endif
  return true;
}();

const char* const wait_label = "spawn + process::wait() (blocking)";

bench::phase async_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "async";
  ph.rounds = ctx.smoke ? 1 : 40;
  bench::benchmark b;
  b.id = "async_exit";
  b.title = "spawn /bin/true, wait for its exit asynchronously";
  b.kind = bench::unit::latency;
  b.baseline = wait_label;
  const std::pair<const char*, const char*> list[] = {
      {wait_label, "async/wait"},
      {"spawn + event_loop::on_exit callback", "async/on_exit"},
      {"spawn + co_await sp::async_wait (sp::task, sync_wait)", "async/co_await"},
      {"spawn + sp::asio::async_wait, callback", "async/asio_callback"},
      {"spawn + sp::asio::async_wait, use_awaitable", "async/asio_awaitable"},
  };
  for (auto& [label, key] : list) {
    bench::row r;
    r.label = label;
    r.server = {"cpp", 0, "async"};
    r.key = key;
    r.iterations = ctx.smoke ? 2 : 10;
    b.rows.push_back(r);
  }
  ph.benchmarks.push_back(b);
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(60, async_plan);

}  // namespace
