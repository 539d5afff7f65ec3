// tests/bench/pool.cpp - figure 6: a pool of 2 worker processes running trivial tasks
// (square a number), tasks per second.
//
// Every implementation starts its 2 workers and warms up before the clock starts; a
// sample is the time from the first task handed over to the last answer received,
// answers checked (the sum of the squares).
//   sp::worker_pool    workers are this binary (--role pool-worker) running
//                      ipc::serve(); 100,000 submit() futures, then wait_idle();
//                      max_in_flight 1 (a worker gets its next task once it answered)
//                      and 64 (pipelined); and the same with submit() callbacks
//                      instead of futures (std::promise costs a futex call per task:
//                      libstdc++ fulfils it through pthread_once)
//   raw C++ loop       2 children (--role raw-square) on socketpairs, 8-byte binary
//                      requests and answers, one in flight per worker, one poll()
//                      loop: the floor for one-in-flight dispatch
//   Python             multiprocessing.Pool(2).imap_unordered(square, range(n),
//                      chunksize=1) (peers/peer.py)
//   Node               2 child_process.fork() workers, all n tasks sent up front
//                      ({id, n} messages, answers matched by id; peers/peer.js)
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <subprocess/pool.hpp>
#include <subprocess/subprocess.hpp>

#include "bench.hpp"

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;

namespace {

std::int64_t expected_sum(std::uint64_t n) {
  std::int64_t s = 0;
  for (std::uint64_t i = 0; i < n; ++i) s += static_cast<std::int64_t>(i * i);
  return s;
}

// ---- worker roles

int pool_worker(int, char**) {
  auto ch = ipc::connect_to_parent();
  ipc::serve(ch, {{"square", [](const json& p) -> json {
                     auto n = p.at(0).get<std::int64_t>();
                     return n * n;
                   }}});
  return 0;
}

bool full_io(int fd, void* p, std::size_t n, bool write) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = write ? ::send(fd, c, n, MSG_NOSIGNAL) : ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

int raw_worker(int, char**) {
  std::int64_t v;
  while (full_io(3, &v, sizeof v, false)) {
    v *= v;
    if (!full_io(3, &v, sizeof v, true)) break;
  }
  return 0;
}

// ---- implementations

// futures: submit() -> std::future per task; else submit(method, params, callback).
std::vector<bench::sample> sp_pool(const bench::request& r, std::size_t max_in_flight,
                                   bool futures = true) {
  const std::uint64_t n = r.param;
  sp::worker_pool pool(sp::command::self({"--role", "pool-worker"}),
                       {.min_workers = 2, .max_in_flight = max_in_flight});
  {
    std::vector<std::future<json>> warm;
    for (int i = 0; i < 1000; ++i) warm.push_back(pool.submit("square", {i}));
    for (auto& f : warm) f.get();
  }
  std::vector<bench::sample> out;
  std::vector<std::future<json>> fs;
  fs.reserve(n);
  for (int it = 0; it < r.iterations; ++it) {
    fs.clear();
    std::int64_t sum = 0;
    std::atomic<std::int64_t> csum{0};
    auto t0 = bench::clock::now();
    if (futures) {
      for (std::uint64_t i = 0; i < n; ++i) fs.push_back(pool.submit("square", {i}));
      pool.wait_idle();
      for (auto& f : fs) sum += f.get().get<std::int64_t>();
    } else {
      for (std::uint64_t i = 0; i < n; ++i)
        pool.submit("square", {i}, [&csum](ipc::reply rep) {  // on the pool's I/O thread
          csum.fetch_add(rep.value().get<std::int64_t>(), std::memory_order_relaxed);
        });
      pool.wait_idle();
      sum = csum.load();
    }
    out.push_back({double(bench::elapsed_ns(t0)), 0});
    if (sum != expected_sum(n)) throw std::runtime_error("worker_pool: wrong sum of squares");
  }
  pool.shutdown(std::chrono::seconds(5));
  return out;
}

std::vector<bench::sample> raw_loop(const bench::request& r) {
  const std::uint64_t n = r.param;
  struct child {
    sp::process p;
    sp::detail::unique_fd fd;
  };
  std::vector<child> kids;
  for (int k = 0; k < 2; ++k) {
    int sv[2];
    if (sp::detail::sys::socketpair(AF_UNIX, SOCK_STREAM, sv) != 0)
      throw std::runtime_error("socketpair");
    sp::detail::unique_fd mine(sv[0]), theirs(sv[1]);
    auto p = sp::command::self({"--role", "raw-square"}).map_fd(3, theirs.get()).spawn();
    kids.push_back({std::move(p), std::move(mine)});
  }
  // One round: tasks 0..count-1, one in flight per child. Returns the sum.
  auto run = [&](std::uint64_t count) {
    std::uint64_t next = 0, done = 0;
    std::int64_t sum = 0;
    pollfd fds[2];
    for (int k = 0; k < 2; ++k) {
      fds[k] = {kids[k].fd.get(), POLLIN, 0};
      if (next < count) {
        std::int64_t v = static_cast<std::int64_t>(next++);
        if (!full_io(fds[k].fd, &v, sizeof v, true)) throw std::runtime_error("raw: send");
      }
    }
    while (done < count) {
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) throw std::runtime_error("raw: poll");
      for (auto& f : fds) {
        if (!(f.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        std::int64_t v;
        if (!full_io(f.fd, &v, sizeof v, false)) throw std::runtime_error("raw: a worker died");
        sum += v;
        ++done;
        if (next < count) {
          v = static_cast<std::int64_t>(next++);
          if (!full_io(f.fd, &v, sizeof v, true)) throw std::runtime_error("raw: send");
        }
      }
    }
    return sum;
  };
  run(1000);  // warm up
  std::vector<bench::sample> out;
  for (int it = 0; it < r.iterations; ++it) {
    auto t0 = bench::clock::now();
    std::int64_t sum = run(n);
    out.push_back({double(bench::elapsed_ns(t0)), 0});
    if (sum != expected_sum(n)) throw std::runtime_error("raw: wrong sum of squares");
  }
  for (auto& k : kids) k.fd.reset();  // EOF: they exit
  for (auto& k : kids) k.p.wait();
  return out;
}

[[maybe_unused]] const bool registered = [] {
  bench::register_role("pool-worker", pool_worker);
  bench::register_role("raw-square", raw_worker);
  bench::register_impl("pool/sp_mif1", [](const bench::request& r) { return sp_pool(r, 1); });
  bench::register_impl("pool/sp_mif64", [](const bench::request& r) { return sp_pool(r, 64); });
  bench::register_impl("pool/sp_mif1_cb",
                       [](const bench::request& r) { return sp_pool(r, 1, false); });
  bench::register_impl("pool/sp_mif64_cb",
                       [](const bench::request& r) { return sp_pool(r, 64, false); });
  bench::register_impl("pool/raw", raw_loop);
  return true;
}();

// --------------------------------------------------------------- the plan --

const char* const mif1_label = "sp::worker_pool, max_in_flight 1 (futures)";
const char* const mif64_label = "sp::worker_pool, max_in_flight 64 (futures)";
const char* const raw_label =
    "raw C++ loop: socketpairs, 8-byte messages, one in flight per worker";
const char* const py_label = "Python multiprocessing.Pool(2).imap_unordered, chunksize 1";
const char* const node_label = "Node, 2 fork()ed workers, all tasks sent up front";

bench::phase pool_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "pool";
  ph.rounds = ctx.smoke ? 1 : 5;
  const std::uint64_t tasks = ctx.smoke ? 2000 : 100000;
  bench::benchmark b;
  b.id = "pool";
  b.title = ctx.smoke ? "worker pool, 2 workers, 2,000 trivial tasks"
                      : "worker pool, 2 workers, 100,000 trivial tasks (tasks/s, higher is better)";
  b.kind = bench::unit::rate;
  b.rate_unit = "tasks/s";
  b.bytes = tasks;
  b.baseline = raw_label;
  struct impl {
    const char* label;
    const char* peer;
    const char* key;
  };
  const impl list[] = {
      {mif1_label, "cpp", "pool/sp_mif1"},
      {mif64_label, "cpp", "pool/sp_mif64"},
      {"sp::worker_pool, max_in_flight 1 (callbacks)", "cpp", "pool/sp_mif1_cb"},
      {"sp::worker_pool, max_in_flight 64 (callbacks)", "cpp", "pool/sp_mif64_cb"},
      {raw_label, "cpp", "pool/raw"},
      {py_label, "python", "pool/mp_pool"},
      {node_label, "node", "pool/fork2"},
  };
  for (auto& i : list) {
    bench::row r;
    r.label = i.label;
    r.server = {i.peer, 0, "pool"};
    r.key = i.key;
    r.iterations = 1;
    r.param = tasks;
    b.rows.push_back(r);
  }
  b.note =
      "a task squares a number; each implementation starts its 2 workers and warms up before "
      "timing; a sample is all tasks, from the first handed over to the last answer, answers "
      "checked. The worker_pool rows are JSON-RPC over the ipc channel (one request and one "
      "answer object per task), with heartbeats on; the raw loop moves 8 bytes each way.";
  ph.benchmarks.push_back(b);
  using G = bench::goal;
  ph.goals.push_back(G{"6. worker_pool, max_in_flight 1 >= 0.9x the raw one-in-flight loop", "pool",
                       mif1_label, "pool", raw_label, std::nullopt, 0.9, false});
  ph.goals.push_back(G{"6. worker_pool, max_in_flight 64 >= 500,000 tasks/s", "pool", mif64_label,
                       "", "", std::nullopt, 500000.0, false});
  ph.goals.push_back(G{"6. worker_pool, max_in_flight 64 >= 3x Node", "pool", mif64_label, "pool",
                       node_label, std::nullopt, 3.0, false});
  ph.goals.push_back(G{"6. worker_pool, max_in_flight 64 >= 7x Python", "pool", mif64_label, "pool",
                       py_label, std::nullopt, 7.0, false});
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(50, pool_plan);

}  // namespace
