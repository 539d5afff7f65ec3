// Tests for pool.hpp: worker_pool with ipc_helper workers (serve() with the methods
// work/square/spin/stop/exit/...), and Node workers (test cases tagged [node], run by
// ctest as pool_node).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <subprocess/pool.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// An ipc_helper worker: serves JSON-RPC on its channel (the pool adds .ipc()).
sp::command helper_worker(std::vector<std::string> extra = {}) {
  std::vector<std::string> argv{IPC_HELPER_PATH};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back("connect");
  argv.push_back("serve");
  return sp::command(std::move(argv));
}

using testing::script;  // REQUIRE_NODE(): testing.hpp

// Waits (polling the pool's own snapshot, which has no fd to wait on) until pred().
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 10s) {
  auto end = clk::now() + timeout;
  while (!pred()) {
    if (clk::now() >= end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// The pool error a future holds (fails the test if it holds something else).
sp::pool_error pool_error_of(std::future<json>& f) {
  try {
    f.get();
  } catch (const sp::pool_error& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL("expected a pool_error, got: " << e.what());
  }
  FAIL("expected a pool_error, got a result");
  throw std::logic_error("unreachable");
}

// Records events, for the tests that check them.
struct event_log {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<sp::pool_event> events;
  std::function<void(const sp::pool_event&)> fn() {
    return [this](const sp::pool_event& e) {
      std::lock_guard l(mu);
      events.push_back(e);
      cv.notify_all();
    };
  }
  std::size_t count(sp::pool_event_kind k) {
    std::lock_guard l(mu);
    return static_cast<std::size_t>(std::count_if(
        events.begin(), events.end(), [&](const sp::pool_event& e) { return e.kind == k; }));
  }
  bool wait_for(sp::pool_event_kind k, std::size_t n, std::chrono::milliseconds t = 10s) {
    std::unique_lock l(mu);
    return cv.wait_for(l, t, [&] {
      return static_cast<std::size_t>(
                 std::count_if(events.begin(), events.end(),
                               [&](const sp::pool_event& e) { return e.kind == k; })) >= n;
    });
  }
  std::vector<std::size_t> sizes(sp::pool_event_kind k) {
    std::lock_guard l(mu);
    std::vector<std::size_t> v;
    for (auto& e : events)
      if (e.kind == k) v.push_back(e.workers);
    return v;
  }
};

}  // namespace

TEST_CASE("pool: results, errors, and what submit() refuses") {
  sp::worker_pool pool(helper_worker(), {.min_workers = 2});
  CHECK(pool.size() == 2);
  CHECK(pool.pids().size() == 2);

  SECTION("futures and callbacks") {
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 100; ++i) fs.push_back(pool.submit("square", {i}));
    std::mutex mu;
    std::condition_variable cv;
    std::map<int, json> got;
    for (int i = 0; i < 50; ++i)
      pool.submit("square", {{"n", i}}, [&, i](ipc::reply r) {
        std::lock_guard l(mu);
        got[i] = r.ok() ? r.result : json("error");
        cv.notify_all();
      });
    for (int i = 0; i < 100; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == i * i);
    {
      std::unique_lock l(mu);
      REQUIRE(cv.wait_for(l, 10s, [&] { return got.size() == 50; }));
      for (int i = 0; i < 50; ++i) CHECK(got[i] == i * i);
    }
    pool.wait_idle();
    auto st = pool.stats();
    CHECK(st.submitted == 150);
    CHECK(st.completed == 150);
    CHECK(st.failed == 0);
    CHECK(st.queue_depth == 0);
    CHECK(st.in_flight == 0);
    CHECK(st.size == 2);
    CHECK(st.idle == 2);
    CHECK(st.workers_started == 2);
    std::uint64_t per_worker = 0;
    for (auto [pid, n] : st.tasks_per_worker) per_worker += n;
    CHECK(per_worker == 150);
  }
  SECTION("the worker's own error answer is the future's error, not retried") {
    auto f = pool.submit("divide", {{"a", 1}, {"b", 0}});
    try {
      f.get();
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.rpc_code() == ipc::rpc_error::invalid_params);
      CHECK(e.rpc_message() == "division by zero");
      CHECK(e.method() == "divide");
    }
    auto g = pool.submit("nope");
    CHECK_THROWS_AS(g.get(), ipc::rpc_error);
    pool.wait_idle();
    auto st = pool.stats();
    CHECK(st.failed == 2);
    CHECK(st.retried == 0);
    CHECK(st.workers_crashed == 0);
  }
  SECTION("bad params are refused on the caller's thread") {
    CHECK_THROWS_AS(pool.submit("square", 5), sp::argument_error);
    CHECK_THROWS_AS(pool.submit("square", json::array({"\xff"})), sp::argument_error);
    CHECK_THROWS_AS(pool.submit("square", {1}, ipc::reply_fn{}), sp::argument_error);
    CHECK_THROWS_AS(pool.broadcast("pid", json::array({"\xff"})), sp::argument_error);
    CHECK_THROWS_AS(pool.broadcast("pid", 1), sp::argument_error);
    CHECK(pool.stats().submitted == 0);
  }
  SECTION("broadcast reaches every worker once") {
    auto fs = pool.broadcast("pid");
    REQUIRE(fs.size() == 2);
    std::set<pid_t> seen;
    for (auto& f : fs) seen.insert(f.get().get<pid_t>());
    auto pids = pool.pids();
    CHECK(seen == std::set<pid_t>(pids.begin(), pids.end()));
    CHECK(pool.stats().submitted == 0);  // not tasks
  }
}

TEST_CASE("pool: workers know their number; a pool can be moved") {
  sp::worker_pool pool(helper_worker(), {.min_workers = 2});
  std::set<std::string> ids;
  for (auto& f : pool.broadcast("env", {{"name", "SUBPROCESS_WORKER_ID"}}))
    ids.insert(f.get().get<std::string>());
  CHECK(ids == std::set<std::string>{"1", "2"});
  sp::worker_pool moved = std::move(pool);
  CHECK(moved.submit("square", {4}).get() == 16);
  CHECK(moved.size() == 2);
  CHECK_THROWS_AS(pool.submit("square", {1}), sp::argument_error);  // NOLINT: moved from on purpose
}

TEST_CASE("pool: bad options and programs are refused before anything runs") {
  CHECK_THROWS_AS(sp::worker_pool(sp::command{"/nonexistent/worker"}), sp::spawn_error);
  CHECK_THROWS_AS(sp::worker_pool(helper_worker(), {.min_workers = 3, .max_workers = 2}),
                  sp::argument_error);
  CHECK_THROWS_AS(sp::worker_pool(helper_worker(), {.max_in_flight = 0}), sp::argument_error);
  CHECK_THROWS_AS(sp::worker_pool(helper_worker(), {.task_timeout = -1ms}), sp::argument_error);
  CHECK_THROWS_AS(sp::worker_pool(helper_worker().out(sp::pipe)), sp::argument_error);
  // A program that exists but cannot be executed fails in exec: a spawn_error too.
  CHECK_THROWS_AS(sp::worker_pool(sp::command{"/etc/hostname"}), sp::spawn_error);
}

TEST_CASE("pool: chaos: workers SIGKILLed at random while 2,000 tasks run") {
  constexpr int tasks = 2000;
  event_log log;
  sp::worker_pool pool(
      helper_worker(),
      {.min_workers = 4, .heartbeat_interval = 200ms, .max_retries = 3, .on_event = log.fn()});
  std::atomic<bool> stop{false};
  std::atomic<int> kills{0};
  // One kill per 4 settled tasks (and at most one per 2-8 ms): the kill rate follows
  // the pool's progress, so a slow machine or a sanitizer build (where starting a
  // worker costs 10x more) sees the same mix of kills and work instead of a massacre.
  std::thread killer([&] {
    std::mt19937 rng(12345);
    std::uint64_t next_kill_at = 0;
    while (!stop.load()) {
      auto st = pool.stats();
      auto pids = pool.pids();
      if (st.completed + st.failed >= next_kill_at && !pids.empty()) {
        pid_t victim = pids[rng() % pids.size()];
        if (::kill(victim, SIGKILL) == 0) ++kills;
        next_kill_at = st.completed + st.failed + 4;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2 + rng() % 6));
    }
  });
  auto t0 = clk::now();
  std::vector<std::future<json>> fs;
  fs.reserve(tasks);
  // Tasks of 1 ms, so most kills hit a worker with a task in flight, and every 10th of
  // 15 ms: those die often enough to run out of retries now and then.
  for (int i = 0; i < tasks; ++i)
    fs.push_back(pool.submit("work", {{"ms", i % 10 == 9 ? 15 : 1}, {"n", i}}));
  int ok = 0, failed = 0;
  for (int i = 0; i < tasks; ++i) {
    auto& f = fs[static_cast<std::size_t>(i)];
    REQUIRE(f.wait_for(60s) == std::future_status::ready);
    try {
      json r = f.get();
      CHECK(r["n"] == i);  // its own answer, matched by id
      ++ok;
    } catch (const sp::pool_error& e) {
      ++failed;
      // Every failure is a task whose every attempt (1 + max_retries) died.
      CHECK(e.kind() == sp::pool_errc::worker_crashed);
      CHECK(e.attempts().size() == 4);
      for (auto& a : e.attempts()) {
        REQUIRE(a.status);
        CHECK(a.status->signal() == SIGKILL);
      }
      CHECK_THAT(e.what(), Catch::Contains("died on every attempt (4)"));
    }
  }
  stop = true;
  killer.join();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0);
  pool.wait_idle();
  CHECK(ok + failed == tasks);
  // The pool returns to its size.
  CHECK(eventually([&] { return pool.stats().size == 4; }));
  auto st = pool.stats();
  CHECK(st.submitted == tasks);
  CHECK(st.completed + st.failed == tasks);
  CHECK(st.completed == static_cast<std::uint64_t>(ok));
  CHECK(st.queue_depth == 0);
  CHECK(st.in_flight == 0);
  CHECK(kills.load() >= tasks / 10);  // the chaos really happened
  CHECK(st.workers_crashed >= 1);
  CHECK(st.workers_started == 4 + st.workers_replaced);
  WARN("chaos: " << tasks << " tasks, " << kills.load() << " kills, " << st.workers_crashed
                 << " crashed workers, " << st.retried << " retries, " << failed
                 << " failed (all 4 attempts died), " << st.workers_replaced << " replacements, "
                 << took.count() << " ms");
  // Every future was fulfilled once: a second get() would throw future_error.
  CHECK_FALSE(fs[0].valid());
}

TEST_CASE("pool: a hung worker (SIGSTOP) is found by the heartbeat and replaced") {
  event_log log;
  const auto interval = 100ms, timeout = 500ms;
  sp::worker_pool pool(helper_worker(), {.min_workers = 2,
                                         .heartbeat_interval = interval,
                                         .heartbeat_timeout = timeout,
                                         .max_retries = 2,  // retries are opt-in
                                         .on_event = log.fn()});
  SECTION("stopped while busy: its task completes on another worker") {
    auto f = pool.submit("work", {{"ms", 400}});
    pid_t victim = 0;
    REQUIRE(eventually([&] {
      auto st = pool.stats();
      return st.busy == 1;
    }));
    // The busy one: the other is idle. Ask the idle one for its pid through broadcast.
    auto pids = pool.pids();
    REQUIRE(pids.size() == 2);
    auto idle = pool.broadcast("pid");
    std::set<pid_t> answered;
    for (auto& g : idle)
      if (g.wait_for(300ms) == std::future_status::ready) answered.insert(g.get().get<pid_t>());
    for (pid_t p : pids)
      if (!answered.count(p)) victim = p;
    REQUIRE(victim != 0);
    auto stopped_at = clk::now();
    REQUIRE(::kill(victim, SIGSTOP) == 0);
    REQUIRE(log.wait_for(sp::pool_event_kind::worker_hung, 1, 10s));
    auto detected = clk::now() - stopped_at;
    INFO("hung worker detected after "
         << std::chrono::duration_cast<std::chrono::milliseconds>(detected).count() << " ms");
    CHECK(detected < interval + timeout + 1000ms);  // generous margin for a loaded machine
    json r = f.get();
    CHECK(r["pid"] != victim);
    CHECK(r["ms"] == 400);
    CHECK(eventually([&] { return pool.stats().size == 2; }));
    auto st = pool.stats();
    CHECK(st.workers_hung == 1);
    CHECK(st.workers_crashed == 0);
    CHECK(st.workers_replaced == 1);
    CHECK(st.retried == 1);
    CHECK(st.completed == 1);
    auto now_pids = pool.pids();
    CHECK(std::find(now_pids.begin(), now_pids.end(), victim) == now_pids.end());
  }
  SECTION("a long handler keeps answering heartbeats: not hung") {
    auto f = pool.submit("spin", {{"ms", 1500}});  // 3x the heartbeat timeout, CPU-bound
    CHECK(f.get().get<pid_t>() > 0);
    CHECK(log.count(sp::pool_event_kind::worker_hung) == 0);
    CHECK(pool.stats().workers_hung == 0);
  }
}

TEST_CASE("pool: task timeout fails the task and replaces its worker") {
  event_log log;
  sp::worker_pool pool(
      helper_worker(),
      {.min_workers = 1, .max_in_flight = 2, .task_timeout = 300ms, .on_event = log.fn()});
  auto t0 = clk::now();
  auto slow = pool.submit("work", {{"ms", 5000}});
  auto behind = pool.submit("work", {{"ms", 10}});  // pipelined behind it on the same worker
  auto e = pool_error_of(slow);
  auto took = clk::now() - t0;
  CHECK(e.kind() == sp::pool_errc::task_timeout);
  CHECK(e.code() == sp::pool_errc::task_timeout);
  CHECK_THAT(e.what(), Catch::Contains("timed out after 300 ms"));
  CHECK(took >= 300ms);
  CHECK(took < 3s);
  // The other task was a victim: retried on the replacement, not charged.
  CHECK(behind.get()["ms"] == 10);
  auto st = pool.stats();
  CHECK(st.timed_out == 1);
  CHECK(st.workers_hung == 1);
  CHECK(eventually([&] { return pool.stats().size == 1; }));
  CHECK(log.count(sp::pool_event_kind::task_timed_out) == 1);
}

TEST_CASE("pool: autoscaling on queue depth, down after idle_timeout") {
  SECTION("8 tasks of 300 ms on min 2 / max 4: up to 4, back to 2") {
    event_log log;
    sp::worker_pool pool(helper_worker(), {.min_workers = 2,
                                           .max_workers = 4,
                                           .scale_up_cooldown = 50ms,
                                           .idle_timeout = 300ms,
                                           .on_event = log.fn()});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 8; ++i) fs.push_back(pool.submit("work", {{"ms", 300}}));
    std::set<pid_t> used;
    for (auto& f : fs) used.insert(f.get()["pid"].get<pid_t>());
    CHECK(used.size() == 4);
    auto ups = log.sizes(sp::pool_event_kind::scaled_up);
    CHECK(ups == std::vector<std::size_t>{3, 4});
    CHECK(pool.stats().workers_started == 4);
    CHECK(eventually([&] { return pool.stats().size == 2; }, 5s));
    auto downs = log.sizes(sp::pool_event_kind::scaled_down);
    CHECK(downs == std::vector<std::size_t>{3, 2});
    CHECK(pool.stats().workers_retired == 2);
    CHECK(log.wait_for(sp::pool_event_kind::worker_stopped, 2));  // they exit
  }
  SECTION("6 tasks of 300 ms on 2 workers: queued, at least 800 ms") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 2});
    auto t0 = clk::now();
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(pool.submit("work", {{"ms", 300}}));
    std::this_thread::sleep_until(t0 + 100ms);
    CHECK(pool.stats().queue_depth > 0);
    CHECK(pool.stats().busy == 2);
    for (auto& f : fs) f.get();
    CHECK(clk::now() - t0 >= 800ms);
  }
}

TEST_CASE("pool: dispatch policies") {
  SECTION("least_busy sends work to idle workers first") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 3, .max_in_flight = 4});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 3; ++i) fs.push_back(pool.submit("work", {{"ms", 300}}));
    std::set<pid_t> used;
    for (auto& f : fs) used.insert(f.get()["pid"].get<pid_t>());
    CHECK(used.size() == 3);  // one each, though each worker had room for 4
  }
  SECTION("round_robin cycles through the workers") {
    sp::worker_pool pool(
        helper_worker(),
        {.min_workers = 3, .dispatch = sp::dispatch_policy::round_robin, .max_in_flight = 4});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 9; ++i) fs.push_back(pool.submit("work", {{"ms", 1}}));
    std::vector<pid_t> order;
    for (auto& f : fs) order.push_back(f.get()["pid"].get<pid_t>());
    for (int i = 3; i < 9; ++i)
      CHECK(order[static_cast<std::size_t>(i)] == order[static_cast<std::size_t>(i - 3)]);
    CHECK(std::set<pid_t>(order.begin(), order.end()).size() == 3);
  }
  SECTION("max_in_flight = 1 never gives a busy worker a second task") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 2});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 4; ++i) fs.push_back(pool.submit("work", {{"ms", 150}}));
    std::this_thread::sleep_for(50ms);
    auto st = pool.stats();
    CHECK(st.in_flight == 2);
    CHECK(st.queue_depth == 2);
    for (auto& f : fs) f.get();
  }
}

TEST_CASE("pool: max_in_flight > 1 pipelines requests to one worker") {
  sp::worker_pool pool(helper_worker(), {.min_workers = 1, .max_in_flight = 8});
  std::vector<std::future<json>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(pool.submit("work", {{"ms", 100}}));
  CHECK(eventually([&] { return pool.stats().in_flight == 8; }, 2s));  // all sent at once
  CHECK(pool.stats().queue_depth == 0);
  for (auto& f : fs) f.get();
  std::vector<std::future<json>> many;
  for (int i = 0; i < 5000; ++i) many.push_back(pool.submit("square", {i}));
  for (int i = 0; i < 5000; ++i)
    CHECK(many[static_cast<std::size_t>(i)].get() == static_cast<std::int64_t>(i) * i);
}

TEST_CASE("pool: Node workers", "[node]") {
  REQUIRE_NODE();
  event_log log;
  sp::worker_pool pool(sp::command{"node", script("rpc_worker.js")}, {.min_workers = 2,
                                                                      .max_in_flight = 4,
                                                                      .heartbeat_interval = 100ms,
                                                                      .heartbeat_timeout = 2s,
                                                                      .max_retries = 2,
                                                                      .on_event = log.fn()});
  std::vector<std::future<json>> fs;
  for (int i = 0; i < 200; ++i) fs.push_back(pool.submit("add", {{"a", i}, {"b", 1}}));
  for (int i = 0; i < 200; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == i + 1);
  CHECK_THROWS_AS(pool.submit("divide", {{"a", 1}, {"b", 0}}).get(), ipc::rpc_error);
  // Node runs a worker's pipelined tasks concurrently: 4 sleeps of 300 ms on one
  // worker take about 300 ms, not 1.2 s.
  auto t0 = clk::now();
  std::vector<std::future<json>> sleeps;
  for (int i = 0; i < 8; ++i) sleeps.push_back(pool.submit("sleep", {{"ms", 300}}));
  for (auto& f : sleeps) CHECK(f.get() == 300);
  CHECK(clk::now() - t0 < 1100ms);
  // A Node worker that dies: its task is retried on another Node worker.
  auto pids = pool.pids();
  auto dying = pool.submit("sleep", {{"ms", 500}});
  std::this_thread::sleep_for(100ms);
  for (pid_t p : pids) ::kill(p, SIGKILL);
  CHECK(dying.get() == 500);
  CHECK(pool.stats().retried >= 1);
  CHECK(eventually([&] { return pool.stats().size == 2; }));
  pool.shutdown(2s);
}

TEST_CASE("pool: shutdown with work queued") {
  SECTION("cancel: queued tasks fail at once, running ones finish within grace") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 1});
    auto running = pool.submit("work", {{"ms", 200}});
    std::vector<std::future<json>> queued;
    for (int i = 0; i < 5; ++i) queued.push_back(pool.submit("work", {{"ms", 200}}));
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    auto t0 = clk::now();
    pool.shutdown(2s, sp::shutdown_mode::cancel);
    CHECK(clk::now() - t0 < 1500ms);
    CHECK(running.get()["ms"] == 200);
    for (auto& f : queued) {
      auto e = pool_error_of(f);
      CHECK(e.kind() == sp::pool_errc::cancelled);
      CHECK_THAT(e.what(), Catch::Contains("cancelled: pool shut down"));
    }
    auto st = pool.stats();
    CHECK(st.cancelled == 5);
    CHECK(st.completed == 1);
    CHECK(st.size == 0);
    CHECK(pool.pids().empty());
  }
  SECTION("cancel: a task still running at the end of the grace period is cancelled") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 1});
    auto running = pool.submit("work", {{"ms", 5000}});
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    auto t0 = clk::now();
    pool.shutdown(300ms, sp::shutdown_mode::cancel);
    CHECK(clk::now() - t0 < 2s);
    auto e = pool_error_of(running);
    CHECK(e.kind() == sp::pool_errc::cancelled);
    CHECK_THAT(e.what(), Catch::Contains("while it was running on worker"));
  }
  SECTION("finish: every queued task completes first") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 2});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(pool.submit("work", {{"ms", 100}}));
    pool.shutdown(2s);  // finish is the default
    for (auto& f : fs) {
      REQUIRE(f.wait_for(0s) == std::future_status::ready);
      CHECK(f.get()["ms"] == 100);
    }
    CHECK(pool.stats().completed == 6);
  }
  SECTION("submit after shutdown fails with shut_down; shutdown is idempotent") {
    sp::worker_pool pool(helper_worker());
    pool.shutdown();
    CHECK_FALSE(pool.accepting());
    auto f = pool.submit("square", {2});
    auto e = pool_error_of(f);
    CHECK(e.kind() == sp::pool_errc::shut_down);
    bool called = false;
    pool.submit("square", {2}, [&](ipc::reply r) { called = !r.ok(); });  // on this thread
    CHECK(called);
    CHECK(pool.broadcast("pid").empty());
    CHECK(pool.stats().rejected == 2);
    pool.shutdown();
  }
  SECTION("workers that ignore SIGTERM are SIGKILLed at the end of the grace period") {
    event_log log;
    sp::worker_pool pool(helper_worker({"ignore-term"}), {.min_workers = 2, .on_event = log.fn()});
    auto t0 = clk::now();
    pool.shutdown(200ms);
    // The channel close makes serve() return: they exit by themselves, well before SIGKILL.
    CHECK(clk::now() - t0 < 2s);
    CHECK(log.count(sp::pool_event_kind::worker_stopped) == 2);
  }
}

TEST_CASE("pool: max_queue, blocking or failing fast") {
  SECTION("fail: the future holds queue_full") {
    sp::worker_pool pool(
        helper_worker(),
        {.min_workers = 1, .max_queue = 2, .when_full = sp::queue_full_policy::fail});
    auto a = pool.submit("work", {{"ms", 300}});
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    auto b = pool.submit("work", {{"ms", 1}});
    auto c = pool.submit("work", {{"ms", 1}});
    auto d = pool.submit("work", {{"ms", 1}});  // the queue holds b and c
    auto e = pool_error_of(d);
    CHECK(e.kind() == sp::pool_errc::queue_full);
    CHECK_THAT(e.what(), Catch::Contains("max_queue 2"));
    CHECK(a.get()["ms"] == 300);
    CHECK(b.get()["ms"] == 1);
    CHECK(c.get()["ms"] == 1);
    CHECK(pool.stats().rejected == 1);
  }
  SECTION("block: submit() waits for room") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 1, .max_queue = 1});
    auto a = pool.submit("work", {{"ms", 300}});
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    auto b = pool.submit("work", {{"ms", 1}});
    auto t0 = clk::now();
    auto c = pool.submit("work", {{"ms", 1}});  // waits until a is done and b is sent
    CHECK(clk::now() - t0 >= 150ms);
    CHECK(a.get()["ms"] == 300);
    CHECK(c.get()["ms"] == 1);
  }
  SECTION("block: shutdown wakes a blocked submit(), which fails with shut_down") {
    sp::worker_pool pool(helper_worker(), {.min_workers = 1, .max_queue = 1});
    auto a = pool.submit("work", {{"ms", 400}});
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    auto b = pool.submit("work", {{"ms", 1}});
    std::future<json> c;
    std::thread t([&] { c = pool.submit("work", {{"ms", 1}}); });
    std::this_thread::sleep_for(100ms);
    pool.shutdown(2s, sp::shutdown_mode::cancel);
    t.join();
    CHECK(pool_error_of(c).kind() == sp::pool_errc::shut_down);
    CHECK(pool_error_of(b).kind() == sp::pool_errc::cancelled);
    CHECK(a.get()["ms"] == 400);
  }
}

TEST_CASE("pool: max_tasks_per_worker recycles workers") {
  event_log log;
  sp::worker_pool pool(helper_worker(),
                       {.min_workers = 2, .max_tasks_per_worker = 5, .on_event = log.fn()});
  std::map<pid_t, int> per_pid;
  for (int round = 0; round < 4; ++round) {
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 5; ++i) fs.push_back(pool.submit("work", {{"ms", 5}}));
    for (auto& f : fs) ++per_pid[f.get()["pid"].get<pid_t>()];
  }
  for (auto [pid, n] : per_pid) CHECK(n <= 5);
  CHECK(per_pid.size() >= 4);
  pool.wait_idle();
  auto st = pool.stats();
  CHECK(st.workers_recycled >= 2);
  CHECK(st.workers_crashed == 0);
  CHECK(st.workers_replaced == st.workers_recycled);
  CHECK(eventually([&] { return pool.stats().size == 2; }));
  CHECK(log.count(sp::pool_event_kind::worker_recycled) == st.workers_recycled);
}

TEST_CASE("pool: the destructor with work in flight") {
  std::vector<std::future<json>> fs;
  std::vector<pid_t> pids;
  auto t0 = clk::now();
  {
    sp::worker_pool pool(helper_worker(), {.min_workers = 2, .shutdown_grace = 500ms});
    for (int i = 0; i < 10; ++i) fs.push_back(pool.submit("work", {{"ms", 3000}}));
    REQUIRE(eventually([&] { return pool.stats().in_flight == 2; }));
    pids = pool.pids();
  }
  CHECK(clk::now() - t0 < 4s);  // within about twice the grace period, not 15 s of work
  for (auto& f : fs) {
    REQUIRE(f.wait_for(0s) == std::future_status::ready);
    CHECK(pool_error_of(f).kind() == sp::pool_errc::cancelled);
  }
  for (pid_t p : pids) CHECK_FALSE(testing::alive(p));
}

TEST_CASE("pool: workers that cannot be started later do not spin") {
  // A copy of the helper that we delete once the pool runs: replacements then fail.
  char tmpl[] = "/tmp/pool-test-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);
  auto exe = dir / "worker";
  std::filesystem::copy_file(IPC_HELPER_PATH, exe);
  std::filesystem::permissions(exe, std::filesystem::perms::owner_all);
  event_log log;
  {
    sp::worker_pool pool(sp::command{exe.string(), "connect", "serve"},
                         {.min_workers = 1, .max_retries = 2, .on_event = log.fn()});
    std::filesystem::remove_all(dir);
    auto victim = pool.pids().at(0);
    auto f = pool.submit("work", {{"ms", 2000}});
    REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
    ::kill(victim, SIGKILL);
    auto e = pool_error_of(f);
    CHECK(e.kind() == sp::pool_errc::no_workers);
    CHECK_THAT(e.what(), Catch::Contains("no worker could be started"));
    CHECK(log.wait_for(sp::pool_event_kind::spawn_failed, 1));
    std::this_thread::sleep_for(500ms);
    // Backing off: 50, 100, 200 ms... a handful of attempts, not thousands.
    CHECK(log.count(sp::pool_event_kind::spawn_failed) <= 6);
    auto g = pool.submit("square", {3});
    CHECK(pool_error_of(g).kind() == sp::pool_errc::no_workers);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("pool: workers that die at once are restarted with a backoff") {
  event_log log;
  sp::worker_pool pool(sp::command{"sh", "-c", "exit 3"},
                       {.min_workers = 1, .max_retries = 1, .on_event = log.fn()});
  auto f = pool.submit("square", {3});
  auto e = pool_error_of(f);
  CHECK(e.kind() == sp::pool_errc::worker_crashed);
  REQUIRE(e.attempts().size() == 2);
  CHECK(e.attempts()[0].status == sp::exit_status::exited(3));
  std::this_thread::sleep_for(1s);
  // Without the backoff this would be thousands of spawns.
  CHECK(pool.stats().workers_started < 15);
}

TEST_CASE("pool: retries are opt-in: by default a task whose worker died fails at once") {
  event_log log;
  sp::worker_pool pool(helper_worker(), {.min_workers = 1, .on_event = log.fn()});
  auto victim = pool.pids().at(0);
  auto f = pool.submit("work", {{"ms", 2000}});
  REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
  ::kill(victim, SIGKILL);
  auto e = pool_error_of(f);
  CHECK(e.kind() == sp::pool_errc::worker_crashed);
  CHECK(e.attempts().size() == 1);  // run once, not again behind the user's back
  CHECK(pool.stats().retried == 0);
  CHECK(log.count(sp::pool_event_kind::task_retried) == 0);
}

TEST_CASE("pool: events say what happened") {
  event_log log;
  std::vector<std::string> lines;
  sp::worker_pool pool(helper_worker(),
                       {.min_workers = 1, .max_workers = 2, .max_retries = 2, .on_event = log.fn()});
  REQUIRE(log.wait_for(sp::pool_event_kind::worker_started, 1));
  auto victim = pool.pids().at(0);
  auto f = pool.submit("work", {{"ms", 1000}});
  REQUIRE(eventually([&] { return pool.stats().in_flight == 1; }));
  ::kill(victim, SIGKILL);
  CHECK(f.get()["ms"] == 1000);
  REQUIRE(log.wait_for(sp::pool_event_kind::worker_crashed, 1));
  REQUIRE(log.wait_for(sp::pool_event_kind::task_retried, 1));
  std::lock_guard l(log.mu);
  auto crashed = std::find_if(log.events.begin(), log.events.end(), [](auto& e) {
    return e.kind == sp::pool_event_kind::worker_crashed;
  });
  CHECK(crashed->pid == victim);
  REQUIRE(crashed->status);
  CHECK(crashed->status->signal() == SIGKILL);
  CHECK_THAT(crashed->message, Catch::Contains("killed by SIGKILL"));
  CHECK(std::string(sp::to_string(crashed->kind)) == "worker_crashed");
}

TEST_CASE("pool: callbacks may submit more work; shutdown from one is refused") {
  std::promise<std::string> refused;
  std::atomic<bool> once{false};
  std::mutex mu;
  std::condition_variable cv;
  int chain = 0;
  sp::worker_pool* self = nullptr;
  sp::worker_pool pool(helper_worker(), {.min_workers = 1});
  self = &pool;
  std::function<void(ipc::reply)> next = [&](ipc::reply r) {
    if (!once.exchange(true)) {
      try {
        self->shutdown();
      } catch (const sp::argument_error& e) {
        refused.set_value(e.what());
      }
    }
    std::lock_guard l(mu);
    if (r.ok() && ++chain < 20) self->submit("square", {chain}, next);
    cv.notify_all();
  };
  pool.submit("square", {0}, next);
  std::unique_lock l(mu);
  CHECK(cv.wait_for(l, 10s, [&] { return chain == 20; }));
  l.unlock();
  CHECK_THAT(refused.get_future().get(), Catch::Contains("would wait for itself"));
}

TEST_CASE("pool: messages from workers that are not answers go to on_message") {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<pid_t, json>> got;
  sp::worker_pool pool(
      sp::command{IPC_HELPER_PATH, "connect", "send", R"({"event":"ready"})", "send",
                  R"({"jsonrpc":"2.0","method":"progress","params":{"done":1}})", "serve"},
      {.min_workers = 1, .on_message = [&](pid_t pid, const json& m) {
         std::lock_guard l(mu);
         got.emplace_back(pid, m);
         cv.notify_all();
       }});
  std::unique_lock l(mu);
  REQUIRE(cv.wait_for(l, 10s, [&] { return got.size() == 2; }));
  CHECK(got[0].first == pool.pids().at(0));
  CHECK(got[0].second == json{{"event", "ready"}});
  CHECK(got[1].second ==
        json{{"method", "progress"}, {"params", {{"done", 1}}}});  // "jsonrpc" left out
  l.unlock();
  CHECK(pool.submit("square", {7}).get() == 49);  // and tasks still work
}

TEST_CASE("pool: min_workers = 0 starts a worker on demand and retires it when idle") {
  event_log log;
  sp::worker_pool pool(helper_worker(), {.min_workers = 0,
                                         .max_workers = 2,
                                         .idle_timeout = 200ms,
                                         .on_event = log.fn()});
  CHECK(pool.size() == 0);
  auto t0 = clk::now();
  CHECK(pool.submit("square", {6}).get() == 36);
  CHECK(clk::now() - t0 < 2s);  // dispatched to the new worker at once (no tick to wait for)
  CHECK(pool.stats().workers_started == 1);
  CHECK(eventually([&] { return pool.stats().size == 0; }, 5s));
  CHECK(log.wait_for(sp::pool_event_kind::scaled_down, 1));
  CHECK(log.wait_for(sp::pool_event_kind::worker_stopped, 1));
}

// ---- issue 13: the pool at its edges ------------------------------------------------

namespace {

// A fresh directory for marker files, removed at the end.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    static std::atomic<int> n{0};
    path = std::filesystem::temp_directory_path() /
           ("sp-pool-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// The status of the one worker_stopped event (fails the test unless there is one).
std::optional<sp::exit_status> stopped_status(event_log& log) {
  std::lock_guard l(log.mu);
  std::vector<sp::pool_event> stopped;
  for (auto& e : log.events)
    if (e.kind == sp::pool_event_kind::worker_stopped) stopped.push_back(e);
  REQUIRE(stopped.size() == 1);
  return stopped.front().status;
}

}  // namespace

TEST_CASE("pool: only complete messages are signs of life") {
  event_log log;
  SECTION("a worker dribbling a byte every 5 ms, never a newline, misses its heartbeat") {
    sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "dribble", "5"},
                         {.min_workers = 1,
                          .heartbeat_interval = 50ms,
                          .heartbeat_timeout = 200ms,
                          .on_event = log.fn()});
    REQUIRE(log.wait_for(sp::pool_event_kind::worker_hung, 1, 5s));
    {
      std::lock_guard l(log.mu);
      auto it = std::find_if(log.events.begin(), log.events.end(), [](const sp::pool_event& e) {
        return e.kind == sp::pool_event_kind::worker_hung;
      });
      CHECK_THAT(it->message, Catch::Contains("no answer to a heartbeat"));
    }
    CHECK(pool.stats().workers_hung >= 1);
    // Replaced, as any hung worker is.
    CHECK(log.wait_for(sp::pool_event_kind::worker_started, 2, 5s));
  }
  SECTION("a partial line longer than max_message_size: killed as malformed at once") {
    sp::worker_pool pool(
        sp::command{IPC_HELPER_PATH, "connect", "raw-bytes", "100000", "x", "sleep", "60000"},
        {.min_workers = 1, .heartbeat_interval = 0ms, .on_event = log.fn(), .max_message_size = 4096});
    REQUIRE(log.wait_for(sp::pool_event_kind::worker_hung, 1, 5s));
    {
      std::lock_guard l(log.mu);
      auto it = std::find_if(log.events.begin(), log.events.end(), [](const sp::pool_event& e) {
        return e.kind == sp::pool_event_kind::worker_hung;
      });
      CHECK_THAT(it->message, Catch::Contains("exceeds the limit of 4096 bytes"));
    }
    auto st = pool.stats();
    CHECK(st.workers_hung >= 1);
    CHECK(st.workers_crashed == 0);  // killed by the pool, not left to die of a closed channel
  }
}

TEST_CASE("pool: shutdown closes channels and waits the grace before SIGTERM and SIGKILL") {
  temp_dir dir;
  event_log log;
  SECTION("a worker that cleans up after the disconnect exits by itself (exited 0)") {
    const auto marker = dir.path / "cleaned";
    {
      // serve() returns when the channel closes; then 300 ms of "cleanup", a marker file.
      sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "serve", "sleep", "300", "touch",
                                       marker.string()},
                           {.min_workers = 1, .on_event = log.fn()});
      CHECK(pool.submit("square", {3}).get() == 9);
      auto t0 = clk::now();
      pool.shutdown(3s);
      auto took = clk::now() - t0;
      CHECK(took >= 300ms);
      CHECK(took < 2500ms);  // it did not wait for the deadline: the worker was gone
    }
    CHECK(std::filesystem::exists(marker));
    CHECK(stopped_status(log) == sp::exit_status::exited(0));
  }
  // Workers that ignore the disconnect; they say when they are set up (ignore-term).
  std::promise<void> ready;
  auto on_message = [&](pid_t, const json&) { ready.set_value(); };
  SECTION("a worker that ignores the disconnect gets SIGTERM at the end of the grace") {
    sp::worker_pool pool(
        sp::command{IPC_HELPER_PATH, "connect", "send", "{\"ready\":1}", "sleep", "60000"},
        {.min_workers = 1,
         .heartbeat_interval = 0ms,
         .term_grace = 5s,
         .on_event = log.fn(),
         .on_message = on_message});
    REQUIRE(ready.get_future().wait_for(10s) == std::future_status::ready);
    auto t0 = clk::now();
    pool.shutdown(300ms);
    auto took = clk::now() - t0;
    CHECK(took >= 300ms);
    CHECK(took < 3s);
    CHECK(stopped_status(log) == sp::exit_status::signaled(SIGTERM));
  }
  SECTION("one that ignores SIGTERM too gets SIGKILL term_grace later") {
    sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "ignore-term", "connect", "send",
                                     "{\"ready\":1}", "sleep", "60000"},
                         {.min_workers = 1,
                          .heartbeat_interval = 0ms,
                          .term_grace = 300ms,
                          .on_event = log.fn(),
                          .on_message = on_message});
    REQUIRE(ready.get_future().wait_for(10s) == std::future_status::ready);
    auto t0 = clk::now();
    pool.shutdown(200ms);
    auto took = clk::now() - t0;
    CHECK(took >= 500ms);
    CHECK(took < 3s);
    CHECK(stopped_status(log) == sp::exit_status::signaled(SIGKILL));
  }
  SECTION("a recycled worker lingering after its channel closed: SIGTERM after shutdown_grace") {
    sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "serve", "sleep", "60000"},
                         {.min_workers = 1,
                          .max_tasks_per_worker = 1,
                          .shutdown_grace = 200ms,
                          .term_grace = 5s,
                          .on_event = log.fn()});
    const auto pid = pool.submit("pid").get().get<pid_t>();
    REQUIRE(log.wait_for(sp::pool_event_kind::worker_stopped, 1, 5s));
    std::lock_guard l(log.mu);
    for (auto& e : log.events)
      if (e.kind == sp::pool_event_kind::worker_stopped) {
        INFO(e.message);
        CHECK(e.pid == pid);
        CHECK(e.status == sp::exit_status::signaled(SIGTERM));
      }
  }
}

TEST_CASE("pool: worker_protocol::plain: workers that answer each message with one message") {
  // ipc_helper's "echo" knows nothing of JSON-RPC: it sends every message back.
  event_log log;
  std::atomic<int> notes{0};
  sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "echo"},
                       {.min_workers = 2,
                        .protocol = sp::worker_protocol::plain,
                        .heartbeat_interval = 20ms,  // ignored: plain workers get no pings
                        .heartbeat_timeout = 100ms,
                        .on_event = log.fn(),
                        .on_message = [&](pid_t, const json&) { ++notes; }});
  CHECK(pool.submit("double", 21).get() == 21);  // any JSON value is a message
  CHECK(pool.submit("obj", {{"a", 1}}).get() == json{{"a", 1}});
  CHECK(pool.submit("str", "text").get() == "text");
  // Long enough for several heartbeat timeouts: nobody is pinged, nobody is killed.
  auto t0 = clk::now();
  int n = 0;
  while (clk::now() - t0 < 400ms) {
    CHECK(pool.submit("n", n).get() == n);
    ++n;
  }
  auto st = pool.stats();
  CHECK(st.workers_hung == 0);
  CHECK(st.workers_started == 2);
  CHECK(notes == 0);  // no ping came back as a stray message
  // Answers carry no id, so only one task at a time per worker.
  CHECK_THROWS_AS(sp::worker_pool(sp::command{IPC_HELPER_PATH, "connect", "echo"},
                                  {.max_in_flight = 2, .protocol = sp::worker_protocol::plain}),
                  sp::argument_error);
}

TEST_CASE("pool: a plain Node worker (process.on('message') -> process.send())", "[node]") {
  REQUIRE_NODE();
  temp_dir dir;
  event_log log;
  const auto marker = dir.path / "node-cleaned";
  std::set<pid_t> pids_before;
  {
    sp::worker_pool pool(sp::command{"node", script("plain_worker.js"), marker.string()},
                         {.min_workers = 2,
                          .protocol = sp::worker_protocol::plain,
                          .on_event = log.fn()});
    std::vector<std::future<json>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit("fib", i));
    const int fib[] = {0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181};
    for (int i = 0; i < 20; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == fib[i]);
    auto pids = pool.pids();
    pids_before.insert(pids.begin(), pids.end());
    CHECK(pool.stats().workers_hung == 0);
    // The workers clean up on 'disconnect' (200 ms) and exit: the grace lets them.
    pool.shutdown(3s);
  }
  CHECK(std::filesystem::exists(marker));
  std::lock_guard l(log.mu);
  int stopped = 0;
  for (auto& e : log.events) {
    if (e.kind != sp::pool_event_kind::worker_stopped) continue;
    ++stopped;
    CHECK(pids_before.count(e.pid) == 1);
    REQUIRE(e.status);
    CHECK(*e.status == sp::exit_status::exited(0));
  }
  CHECK(stopped == 2);
}

TEST_CASE("pool: one answer that cannot be decoded fails its task; the worker stays") {
  event_log log;
  // A worker whose serializer writes NaN (as Python's json.dumps does) for one answer.
  sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "serve-nan"},
                       {.min_workers = 1, .max_in_flight = 4, .on_event = log.fn()});
  const auto pid = pool.submit("pid").get().get<pid_t>();
  auto before = pool.submit("square", {2});
  auto bad = pool.submit("nan");
  auto after = pool.submit("square", {3});
  CHECK(before.get() == 4);
  try {
    bad.get();
    FAIL("no error");
  } catch (const ipc::channel_error& e) {
    CHECK(e.code() == sp::errc::protocol_error);
    CHECK_THAT(e.what(), Catch::Contains("('nan')") && Catch::Contains("cannot be decoded") &&
                             Catch::Contains("the worker was kept"));
  }
  CHECK(after.get() == 9);
  CHECK(pool.submit("pid").get().get<pid_t>() == pid);
  auto st = pool.stats();
  CHECK(st.workers_hung == 0);
  CHECK(st.workers_crashed == 0);
  CHECK(st.workers_started == 1);
  CHECK(st.failed == 1);
  CHECK(st.size == 1);
  CHECK(pool.pids() == std::vector<pid_t>{pid});
  CHECK(log.count(sp::pool_event_kind::worker_hung) == 0);
}

TEST_CASE("pool: a bad line is an answer only if its top-level id is a task's") {
  // The nested {"id": 1} is not the envelope's id: this line answers nothing, it is
  // garbage, and the worker that wrote it is killed (its task then fails, no retries).
  sp::worker_pool pool(sp::command{IPC_HELPER_PATH, "connect", "receive-one", "raw",
                                   "{\"jsonrpc\":\"2.0\",\"result\":[{\"id\":1}],\"x\":\"\\xff\"}\\n",
                                   "sleep", "60000"},
                       {.min_workers = 1, .heartbeat_interval = 0ms, .max_retries = 0});
  auto f = pool.submit("anything");
  auto e = pool_error_of(f);
  CHECK(e.kind() == sp::pool_errc::worker_crashed);
  REQUIRE(e.attempts().size() == 1);
  CHECK_THAT(e.attempts()[0].what, Catch::Contains("malformed message on its channel"));
  CHECK(pool.stats().workers_hung >= 1);
}

// ---- SIGCHLD ignored: workers whose exit status the kernel discards --------------------

using sigchld_ignored = testing::sigchld_discarding;

TEST_CASE("pool: SIGCHLD ignored: a crashed worker is an exit with an unknown status; the pool goes on") {
  sigchld_ignored ignored;
  event_log log;
  sp::worker_pool pool(helper_worker(), {.min_workers = 1, .max_retries = 1, .on_event = log.fn()});
  CHECK(pool.submit("square", {3}).get() == 9);
  // The worker exits in the middle of the task; so does the one it is retried on.
  auto f = pool.submit("exit", {{"code", 3}});
  auto e = pool_error_of(f);
  CHECK(e.kind() == sp::pool_errc::worker_crashed);
  REQUIRE(e.attempts().size() == 2);
  for (const auto& a : e.attempts()) {
    CHECK_FALSE(a.status.has_value());
    CHECK(a.what.find("unknown status") != std::string::npos);
  }
  // Replaced: the pool takes and runs tasks as before.
  CHECK(pool.submit("square", {4}).get() == 16);
  CHECK(pool.submit("square", {5}).get() == 25);
  auto st = pool.stats();
  CHECK(st.workers_crashed == 2);
  CHECK(st.retried == 1);
  CHECK(st.size == 1);
  {
    std::lock_guard l(log.mu);
    for (auto& ev : log.events)
      if (ev.kind == sp::pool_event_kind::worker_crashed) {
        INFO(ev.message);
        CHECK_FALSE(ev.status.has_value());
      }
  }
  auto t0 = clk::now();
  pool.shutdown(3s);  // the worker exits on the disconnect; its status is lost too
  CHECK(clk::now() - t0 < 2s);
  CHECK(log.count(sp::pool_event_kind::worker_stopped) == 1);
}

TEST_CASE("pool: shutdown: a worker whose status is lost costs the others neither their grace nor SIGTERM") {
  sigchld_ignored ignored;
  temp_dir dir;
  const auto marker = dir.path / "term";
  // Worker 1 exits at the disconnect (its status is discarded); worker 2 lingers,
  // and leaves a marker when SIGTERM comes.
  sp::worker_pool pool(
      sp::command{"sh", "-c",
                  "if [ \"$SUBPROCESS_WORKER_ID\" = 1 ]; then exec \"$0\" connect serve; "
                  "else exec \"$0\" on-term-touch \"$1\" connect serve sleep 60000; fi",
                  IPC_HELPER_PATH, marker.string()},
      {.min_workers = 2, .term_grace = 5s});
  // Both serve (and worker 2 has its SIGTERM handler): each answers a broadcast.
  auto fs = pool.broadcast("pid");
  REQUIRE(fs.size() == 2);
  for (auto& f : fs) CHECK(f.get().get<pid_t>() > 0);
  auto t0 = clk::now();
  pool.shutdown(200ms);
  auto took = clk::now() - t0;
  CHECK(std::filesystem::exists(marker));  // SIGTERM, at the end of the grace
  CHECK(took >= 200ms);
  CHECK(took < 3s);  // and it ended the worker: no SIGKILL term_grace later
}

// ---------------------------------------------------------------------------------
// Printing: operator<< (beside each type in pool.hpp), one line each.

using testing::printed;

TEST_CASE("pool: stats and events and attempts and the option enums print as one line") {
  event_log log;
  sp::worker_pool pool(helper_worker(), {.min_workers = 2, .max_retries = 0, .on_event = log.fn()});
  CHECK(pool.submit("square", {3}).get() == 9);
  auto f = pool.submit("exit", {{"code", 5}});
  auto e = pool_error_of(f);
  REQUIRE(e.attempts().size() == 1);
  const auto& a = e.attempts()[0];
  CHECK(printed(a) == "worker " + std::to_string(a.pid) + " exited with code 5");
  REQUIRE(log.wait_for(sp::pool_event_kind::worker_started, 3));  // the replacement

  auto st = pool.stats();
  CHECK(st.completed == 1);
  CHECK(st.failed == 1);
  CHECK(st.queue_depth == 0);
  CHECK(printed(st) == "workers " + std::to_string(st.size) + " (busy " + std::to_string(st.busy) + ", idle " +
                           std::to_string(st.idle) + "), queued 0, completed 1, failed 1, retried 0");
  sp::pool_stats made;
  made.size = 4;
  made.busy = 2;
  made.idle = 2;
  made.queue_depth = 10;
  made.completed = 120;
  made.failed = 1;
  made.retried = 3;
  CHECK(printed(made) == "workers 4 (busy 2, idle 2), queued 10, completed 120, failed 1, retried 3");

  std::optional<sp::pool_event> crashed;
  {
    std::lock_guard l(log.mu);
    for (auto& ev : log.events)
      if (ev.kind == sp::pool_event_kind::worker_crashed) crashed = ev;
  }
  REQUIRE(crashed);
  CHECK(crashed->message == "worker " + std::to_string(a.pid) + " exited with code 5");
  CHECK(printed(*crashed) ==
        "worker_crashed (workers " + std::to_string(crashed->workers) + "): worker " + std::to_string(a.pid) +
            " exited with code 5");
  CHECK(printed(sp::pool_event{}) == "worker_started (workers 0)");

  CHECK(printed(sp::pool_event_kind::task_timed_out) == "task_timed_out");
  CHECK(printed(sp::dispatch_policy::least_busy) == "least_busy");
  CHECK(printed(sp::dispatch_policy::round_robin) == "round_robin");
  CHECK(printed(sp::queue_full_policy::block) == "block");
  CHECK(printed(sp::queue_full_policy::fail) == "fail");
  CHECK(printed(sp::shutdown_mode::finish) == "finish");
  CHECK(printed(sp::shutdown_mode::cancel) == "cancel");
  CHECK(printed(sp::worker_protocol::json_rpc) == "json_rpc");
  CHECK(printed(sp::worker_protocol::plain) == "plain");
}
