// Lesson 05: process pooling.
//
// Starting a process costs about a millisecond; a pool starts a few workers once and
// hands them task after task. sp::worker_pool does the bookkeeping the Node lesson
// writes by hand: a queue, busy/idle workers, answers matched to their tasks by id,
// scaling up and down, and replacing workers that crash (their tasks run again
// elsewhere).
//
// Run with no arguments. The workers are this program itself (sp::command::self) in
// three roles, each serving JSON-RPC on the channel the pool gives it:
//   --worker cpu                 fib {n}: naive recursive Fibonacci (CPU work)
//   --worker slow                work {duration}: answers after `duration` ms
//   --worker unreliable SEED     task {n}: 30 % of the time prints "Simulating crash
//                                on task n" and exits with code 1, otherwise answers
//                                "success" after 100 ms. Its dice are seeded with SEED
//                                and the worker's number (SUBPROCESS_WORKER_ID, set by
//                                the pool), so a run can be repeated: pass the seed
//                                printed in section 4 as the program's argument.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <subprocess/pool.hpp>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

void section(int n, const char* title, const char* subtitle) {
  fmt::print("\n{}. {}\n   {}\n", n, title, subtitle);
}

long long ms_since(clk::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count();
}

// ---- worker roles: what the child side runs ----------------------------------

long long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

int worker_cpu() {
  auto parent = ipc::connect_to_parent();
  ipc::serve(parent, {{"fib", [](const json& p) -> json {
                         return {{"result", fib(p.at("n").get<int>())}, {"pid", ::getpid()}};
                       }}});
  return 0;  // the pool closed the channel
}

int worker_slow() {
  auto parent = ipc::connect_to_parent();
  ipc::serve(parent, {{"work", [](const json& p) -> json {
                         int d = p.at("duration").get<int>();
                         std::this_thread::sleep_for(std::chrono::milliseconds(d));
                         return {{"duration", d}, {"pid", ::getpid()}};
                       }}});
  return 0;
}

int worker_unreliable(unsigned seed) {
  auto parent = ipc::connect_to_parent();
  const char* id = std::getenv("SUBPROCESS_WORKER_ID");  // 1, 2, 3... set by the pool
  std::mt19937 dice(seed * 1000 + static_cast<unsigned>(id ? std::atoi(id) : 0));
  ipc::serve(parent, {{"task", [&](const json& p) -> json {
                         int n = p.at("n").get<int>();
                         if (dice() % 100 < 30) {
                           std::printf("   Simulating crash on task %d\n", n);  // inherited stdout
                           std::fflush(stdout);
                           std::exit(1);
                         }
                         std::this_thread::sleep_for(100ms);
                         return {{"status", "success"}, {"pid", ::getpid()}};
                       }}});
  return 0;
}

// ---- the lesson ---------------------------------------------------------------

void round_robin_pool() {
  section(1, "Basic Round-Robin Pool",
          "3 CPU workers; fib(30)..fib(35) handed out in turn, two per worker");
  sp::worker_pool pool(sp::command::self({"--worker", "cpu"}),
                       {.min_workers = 3,
                        .dispatch = sp::dispatch_policy::round_robin,
                        .max_in_flight = 2});  // all 6 tasks sent at once, 2 to each worker
  std::vector<std::future<json>> results;
  for (int id = 0; id < 6; ++id) results.push_back(pool.submit("fib", {{"n", 30 + id}}));
  // Each future is its own task's answer, matched by its JSON-RPC id: no mix-ups.
  for (int id = 0; id < 6; ++id) {
    json r = results[static_cast<std::size_t>(id)].get();
    fmt::print("   Task {}: fibonacci({}) = {} [Worker {}]\n", id, 30 + id,
               r["result"].get<long long>(), r["pid"].get<int>());
  }
  fmt::print("   All 6 tasks completed\n");
}  // the pool's destructor closes the channels and reaps the workers

void load_balanced_pool() {
  section(2, "Load-Balanced Pool", "2 slow workers; each task goes to the first idle worker");
  sp::worker_pool pool(sp::command::self({"--worker", "slow"}), {.min_workers = 2});  // least_busy
  const int durations[] = {500, 200, 300, 100, 400};
  auto t0 = clk::now();
  std::vector<std::future<json>> results;
  for (int d : durations) results.push_back(pool.submit("work", {{"duration", d}}));
  for (std::size_t i = 0; i < results.size(); ++i) {
    json r = results[i].get();
    fmt::print("   Task {} completed by worker {} ({}ms)\n", i + 1, r["pid"].get<int>(),
               r["duration"].get<int>());
  }
  fmt::print("   All tasks done in {} ms (1500 ms of work on 2 workers)\n", ms_since(t0));
  for (auto [pid, n] : pool.stats().tasks_per_worker)
    fmt::print("   Worker {}: {} tasks\n", pid, n);
}

void auto_scaling_pool() {
  section(3, "Auto-Scaling Pool", "2 to 4 slow workers: more when tasks wait, fewer when idle");
  auto on_event = [](const sp::pool_event& e) {  // runs on the pool's own thread
    if (e.kind == sp::pool_event_kind::scaled_up)
      fmt::print("   Scaled UP to {} workers\n", e.workers);
    if (e.kind == sp::pool_event_kind::scaled_down)
      fmt::print("   Scaled DOWN to {} workers\n", e.workers);
  };
  sp::worker_pool pool(sp::command::self({"--worker", "slow"}),
                       {.min_workers = 2,
                        .max_workers = 4,
                        .scale_up_cooldown = 50ms,  // at most one new worker per 50 ms
                        .idle_timeout = 100ms,      // retire workers idle this long
                        .on_event = on_event});
  auto burst = [&](int count, int duration) {  // submits them all, waits for all
    auto t0 = clk::now();
    std::vector<std::future<json>> results;
    for (int i = 0; i < count; ++i)
      results.push_back(pool.submit("work", {{"duration", duration}}));
    for (auto& r : results) r.get();
    return ms_since(t0);
  };
  long long took = burst(8, 300);  // tasks 1-8
  fmt::print("   First burst complete: 8 tasks of 300 ms in {} ms\n", took);
  fmt::print("   Waiting for scale-down...\n");
  std::this_thread::sleep_for(500ms);
  took = burst(3, 200);  // tasks 9-11
  fmt::print("   Second burst complete: 3 tasks of 200 ms in {} ms ({} workers)\n", took,
             pool.size());
}

void resilient_pool(unsigned seed) {
  section(4, "Resilient Pool with Error Recovery",
          "Workers crash 30% of the time; their tasks run again elsewhere");
  fmt::print("   Random seed: {} (run `05-process-pooling {}` to repeat these crashes)\n", seed,
             seed);
  auto on_event = [](const sp::pool_event& e) {
    if (e.kind == sp::pool_event_kind::worker_crashed)
      fmt::print("   [Pool] Worker {} crashed! Replacing...\n", e.pid);
  };
  sp::worker_pool pool(sp::command::self({"--worker", "unreliable", std::to_string(seed)}),
                       {.min_workers = 2,
                        .max_retries = 20,  // the original retries forever; 0.3^21: never reached
                        .on_event = on_event});
  std::vector<std::future<json>> results;
  for (int n = 1; n <= 10; ++n) results.push_back(pool.submit("task", {{"n", n}}));
  int completed = 0;
  for (auto& r : results) {
    try {
      r.get();
      ++completed;
    } catch (const sp::pool_error& e) {  // only if every attempt crashed
      fmt::print("   {}\n", e.what());
    }
  }
  if (completed == 10) fmt::print("   All tasks completed successfully!\n");
  auto st = pool.stats();
  fmt::print("   Stats: Created={}, Crashed={}, Completed={}\n", st.workers_started,
             st.workers_crashed, st.completed);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "--worker") {
    std::string role = argv[2];
    if (role == "cpu") return worker_cpu();
    if (role == "slow") return worker_slow();
    if (role == "unreliable" && argc == 4)
      return worker_unreliable(static_cast<unsigned>(std::stoul(argv[3])));
    fmt::print(stderr, "unknown worker role {}\n", role);
    return 2;
  }
  // Line by line, so our lines and the workers' (same stdout) keep their order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const unsigned seed = argc == 2 ? static_cast<unsigned>(std::stoul(argv[1])) : 2024;
  fmt::print("=== Process Pooling Examples ===\n");
  round_robin_pool();
  load_balanced_pool();
  auto_scaling_pool();
  resilient_pool(seed);
  fmt::print("\n=== All Examples Completed ===\n");
  fmt::print("\nKey concepts:\n");
  fmt::print(
      "   - Round robin hands tasks out in turn; load balancing gives each to an idle worker\n");
  fmt::print(
      "   - Answers are matched to tasks by id, so a worker may hold several tasks at once\n");
  fmt::print("   - Auto-scaling adds workers while tasks wait and retires idle ones\n");
  fmt::print("   - A crashed worker is replaced and its task runs again on another worker\n");
  fmt::print("   - Size a pool by the work: about one worker per core for CPU-bound tasks\n");
  return 0;
}
