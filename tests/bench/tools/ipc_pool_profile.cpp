// tests/bench/tools/ipc_pool_profile.cpp - standalone drivers for profiling the ipc
// round trip and worker_pool rows of the benchmark suite. Built with the benchmarks
// (target ipc_pool_profile, so it keeps compiling), or by hand:
//
//   g++ -std=c++20 -O3 -DNDEBUG -g -Iinclude tests/bench/tools/ipc_pool_profile.cpp -o drv -lpthread
//   drv raw|channel|sync|future N     parent and child pinned to CPU 0 (NOPIN=1: not),
//                                     200 warm-up round trips, then N
//   drv pool_raw|pool_mif1|pool_mif1_cb N   2 workers, max_in_flight 1, unpinned,
//                                     1000 warm-up tasks, then N
// The loops are noinline functions named parent_* / child_*, so
//   valgrind --tool=callgrind --trace-children=yes --toggle-collect='*parent_*'
//            --toggle-collect='child_*' ./drv channel 5000     (one command line)
// counts the user-space instructions of the round trips only (divide by N + 200), and
//   perf stat -e context-switches,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,...
//   strace -f -c ./drv future 20000
// count switches and system calls per round trip.
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <subprocess/ipc.hpp>
#include <subprocess/pool.hpp>
#include <subprocess/subprocess.hpp>
namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
static std::string self_path;
static void pin0() {
  if (getenv("NOPIN")) return;
  cpu_set_t s; CPU_ZERO(&s); CPU_SET(0, &s); sched_setaffinity(0, sizeof s, &s);
}
static bool full_io(int fd, void* p, std::size_t n, bool write) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = write ? ::send(fd, c, n, MSG_NOSIGNAL) : ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r; n -= static_cast<std::size_t>(r);
  }
  return true;
}
__attribute__((noinline)) void child_raw_loop() { char b[32]; while (full_io(3, b, 32, false) && full_io(3, b, 32, true)) {} }
__attribute__((noinline)) void child_channel_loop(ipc::channel& ch) { while (auto m = ch.receive()) ch.send(*m); }
__attribute__((noinline)) void child_serve_loop(ipc::channel& ch) { ipc::serve(ch, {{"echo", [](const json& p) { return p; }}}); }
__attribute__((noinline)) void child_square_loop(ipc::channel& ch) {
  ipc::serve(ch, {{"square", [](const json& p) -> json { auto n = p.at(0).get<std::int64_t>(); return n * n; }}});
}
__attribute__((noinline)) void child_rawsq_loop() { std::int64_t v; while (full_io(3, &v, 8, false)) { v *= v; if (!full_io(3, &v, 8, true)) break; } }

__attribute__((noinline)) void parent_raw_loop(int fd, int n) {
  char buf[32] = "0123456789abcdef0123456789abcde";
  for (int i = 0; i < n; ++i) { full_io(fd, buf, 32, true); full_io(fd, buf, 32, false); }
}
__attribute__((noinline)) void parent_channel_loop(ipc::channel& ch, int n) {
  for (int i = 0; i < n; ++i) {
    json msg; msg["s"] = i; msg["p"] = "0123456789abcdef";
    ch.send(msg);
    auto m = ch.receive();
    if (!m) abort();
  }
}
template <bool sync>
__attribute__((noinline)) void parent_rpc_loop(ipc::client& c, int n) {
  for (int i = 0; i < n; ++i) {
    json params = json::array(); params.push_back(i);
    json res = sync ? c.call_sync("echo", std::move(params), std::chrono::seconds(10))
                    : c.call("echo", std::move(params), std::chrono::seconds(10)).get();
    if (!res.is_array()) abort();
  }
}
__attribute__((noinline)) void parent_pool_loop(sp::worker_pool& pool, int n, bool futures) {
  if (futures) {
    std::vector<std::future<json>> fs; fs.reserve(n);
    for (int i = 0; i < n; ++i) fs.push_back(pool.submit("square", {i}));
    pool.wait_idle();
    for (auto& f : fs) f.get();
  } else {
    std::atomic<long> s{0};
    for (int i = 0; i < n; ++i) pool.submit("square", {i}, [&s](ipc::reply r) { s += r.value().get<long>(); });
    pool.wait_idle();
  }
}
__attribute__((noinline)) long parent_pool_raw_loop(int* fds2, int count) {
  long next = 0, done = 0, sum = 0;
  pollfd fds[2];
  for (int k = 0; k < 2; ++k) { fds[k] = {fds2[k], POLLIN, 0}; long v = next++; full_io(fds[k].fd, &v, 8, true); }
  while (done < count) {
    ::poll(fds, 2, -1);
    for (auto& f : fds) {
      if (!(f.revents & POLLIN)) continue;
      long v; full_io(f.fd, &v, 8, false); sum += v; ++done;
      if (next < count) { v = next++; full_io(f.fd, &v, 8, true); }
    }
  }
  return sum;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s raw|channel|sync|future|pool_raw|pool_mif1|pool_mif1_cb N\n", argv[0]);
    return 2;
  }
  char rp[4096]; self_path = realpath("/proc/self/exe", rp) ? rp : argv[0];
  if (getenv("DRV_SELF")) self_path = getenv("DRV_SELF");
  std::string mode = argv[1];
  if (mode == "--child") {
    std::string r = argv[2];
    if (r != "sq" && r != "rawsq") pin0();
    if (r == "raw") child_raw_loop();
    else if (r == "rawsq") child_rawsq_loop();
    else { auto ch = ipc::connect_to_parent();
      if (r == "channel") child_channel_loop(ch); else if (r == "serve") child_serve_loop(ch); else child_square_loop(ch); }
    return 0;
  }
  int n = std::atoi(argv[2]);
  auto cmd = [&](const char* role) { return sp::command{self_path, "--child", role}.in(sp::null).out(sp::null); };
  if (mode == "raw") {
    pin0();
    int sv[2]; socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    auto p = cmd("raw").map_fd(3, sv[1]).spawn(); close(sv[1]);
    parent_raw_loop(sv[0], 200); parent_raw_loop(sv[0], n); close(sv[0]); p.wait();
  } else if (mode == "channel") {
    pin0();
    auto p = cmd("channel").ipc().spawn();
    { ipc::channel ch(p); parent_channel_loop(ch, 200); parent_channel_loop(ch, n); }
    p.wait();
  } else if (mode == "sync" || mode == "future") {
    pin0();
    auto p = cmd("serve").ipc().spawn();
    { ipc::client c(p);
      if (mode == "sync") { parent_rpc_loop<true>(c, 200); parent_rpc_loop<true>(c, n); }
      else { parent_rpc_loop<false>(c, 200); parent_rpc_loop<false>(c, n); } }
    p.wait();
  } else if (mode == "pool_mif1" || mode == "pool_mif1_cb") {
    sp::worker_pool pool(sp::command{self_path, "--child", "sq"}, {.min_workers = 2, .max_in_flight = 1});
    parent_pool_loop(pool, 1000, true);
    parent_pool_loop(pool, n, mode == "pool_mif1");
    pool.shutdown(std::chrono::seconds(5));
  } else if (mode == "pool_raw") {
    int fds[2]; std::vector<sp::process> ps;
    for (int k = 0; k < 2; ++k) { int sv[2]; socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
      ps.push_back(cmd("rawsq").map_fd(3, sv[1]).spawn()); close(sv[1]); fds[k] = sv[0]; }
    parent_pool_raw_loop(fds, 1000); parent_pool_raw_loop(fds, n);
    close(fds[0]); close(fds[1]); for (auto& p : ps) p.wait();
  }
  return 0;
}
