// bench_ipc - round trips of a small message and one-way time of a big one, for the
// ipc channel and its peers, side by side in one run. Not a test: it prints a table.
//
//   bench_ipc [seconds-per-measurement=1] [big-MiB=100]
//
// Round trips per second of a ~32-byte message, one in flight, between a parent and a
// child process, with the two on separate cores (parent on CPU 0, child on CPU 1) and
// both pinned to CPU 0:
//   raw socketpair   write(32 bytes) / read(32 bytes) in C++: the floor of the cost
//   sp channel       ipc::channel send() / receive() of {"s":n,"p":"0123456789abcdef"}
//   sp rpc           ipc::client call("echo", [n]).get() against ipc::serve()
//   node fork        Node parent and child, process.send() / 'message' (json mode)
//   python Pipe      multiprocessing.Pipe send() / recv() (pickle)
// Then the time to send one big message (a string of big-MiB bytes) one way, until the
// receiver has parsed it and acknowledged: C++ to C++, and Node to Node.
// node (with taskset) and python3 are used when installed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sched.h>
#include <unistd.h>

#include <subprocess/ipc.hpp>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using clk = std::chrono::steady_clock;

namespace {

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) std::perror("sched_setaffinity");
}

bool have(const char* prog) {
  int err = 0;
  const char* path = std::getenv("PATH");
  return !sp::detail::find_program(prog, path ? path : "/bin:/usr/bin", err).empty();
}

void full_read(int fd, char* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) std::exit(0);
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}
void full_write(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r <= 0) std::exit(0);
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

// ---- child roles
int child(const std::string& role, int cpu) {
  pin(cpu);
  if (role == "raw") {
    char buf[32];
    for (;;) {
      full_read(3, buf, sizeof buf);
      full_write(3, buf, sizeof buf);
    }
  }
  auto ch = ipc::connect_to_parent({.max_message_size = std::size_t{1} << 30, .internal_messages = false, .name = {}});
  if (role == "channel") {
    while (auto m = ch.receive()) ch.send(*m);
  } else if (role == "rpc") {
    ipc::serve(ch, {{"echo", [](const json& p) { return p; }}});
  } else if (role == "sink") {
    while (auto m = ch.receive()) ch.send({{"got", (*m)["data"].get_ref<const std::string&>().size()}});
  }
  return 0;
}

double seconds_per_run = 1.0;

template <class Step>
double rate(Step step) {
  for (int i = 0; i < 2000; ++i) step(i);  // warm up
  auto t0 = clk::now();
  std::uint64_t n = 0;
  for (;;) {
    for (int i = 0; i < 1000; ++i) step(static_cast<int>(n++));
    double el = std::chrono::duration<double>(clk::now() - t0).count();
    if (el >= seconds_per_run) return static_cast<double>(n) / el;
  }
}

double raw_rate(int child_cpu) {
  int sv[2];
  sp::detail::sys::socketpair(AF_UNIX, SOCK_STREAM, sv);
  sp::detail::unique_fd mine(sv[0]), theirs(sv[1]);
  auto p = sp::command::self({"--child", "raw", std::to_string(child_cpu)}).map_fd(3, theirs.get()).spawn();
  theirs.reset();
  char buf[32] = "0123456789abcdef0123456789abcde";
  double r = rate([&](int) {
    full_write(mine.get(), buf, sizeof buf);
    full_read(mine.get(), buf, sizeof buf);
  });
  mine.reset();
  p.wait();
  return r;
}

double channel_rate(int child_cpu) {
  auto p = sp::command::self({"--child", "channel", std::to_string(child_cpu)}).ipc().spawn();
  ipc::channel ch(p);
  double r = rate([&](int i) {
    ch.send({{"s", i}, {"p", "0123456789abcdef"}});
    if (!ch.receive()) std::abort();
  });
  ch.close();
  p.wait();
  return r;
}

double rpc_rate(int child_cpu) {
  auto p = sp::command::self({"--child", "rpc", std::to_string(child_cpu)}).ipc().spawn();
  double r;
  {
    ipc::client c(p);
    r = rate([&](int i) { c.call("echo", json::array({i}), std::chrono::seconds(10)).get(); });
  }
  p.wait();
  return r;
}

const char* node_js = R"js('use strict';
// node bench.js pingpong|big <seconds|MiB> <child-cpu>    (run under taskset -c 0)
const { spawn } = require('child_process');
const [mode, arg, cpu] = process.argv.slice(2);
if (mode === 'child') {
  process.on('message', (m) => {
    if (m.data !== undefined) process.send({ got: m.data.length });
    else process.send(m);
  });
  return;
}
const child = spawn('taskset', ['-c', cpu, process.execPath, __filename, 'child'],
                    { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] });
if (mode === 'pingpong') {
  const secs = Number(arg);
  let n = 0, t0 = 0, warm = 2000;
  child.on('message', () => {
    n++;
    if (warm > 0 && --warm === 0) { n = 0; t0 = process.hrtime.bigint(); }
    if (t0 !== 0 && n % 1000 === 0) {
      const el = Number(process.hrtime.bigint() - t0) / 1e9;
      if (el >= secs) { console.log((n / el).toFixed(0)); child.disconnect(); return; }
    }
    child.send({ s: n, p: '0123456789abcdef' });
  });
  child.send({ s: 0, p: '0123456789abcdef' });
} else {
  const data = 'x'.repeat(Number(arg) * 1024 * 1024);
  const t0 = process.hrtime.bigint();
  child.on('message', (m) => {
    console.log((Number(process.hrtime.bigint() - t0) / 1e9).toFixed(3));
    child.disconnect();
  });
  child.send({ data });
}
)js";

const char* python_py = R"py(import os, sys, time
from multiprocessing import Pipe, Process
def child(conn, cpu):
    os.sched_setaffinity(0, {cpu})
    while True:
        try:
            m = conn.recv()
        except EOFError:
            return
        conn.send(m)
if __name__ == '__main__':
    secs, cpu = float(sys.argv[1]), int(sys.argv[2])
    os.sched_setaffinity(0, {0})
    a, b = Pipe()
    p = Process(target=child, args=(b, cpu))
    p.start()
    msg = {'s': 0, 'p': '0123456789abcdef'}
    for i in range(2000):
        a.send(msg); a.recv()
    n, t0 = 0, time.perf_counter()
    while True:
        for i in range(1000):
            a.send(msg); a.recv()
        n += 1000
        el = time.perf_counter() - t0
        if el >= secs:
            break
    print(int(n / el))
    a.close()
    p.terminate()
    p.join()
)py";

double run_number(sp::command c) {
  auto r = sp::run(c, {.timeout = std::chrono::seconds(600)});
  if (!r.status.success()) {
    std::fprintf(stderr, "%s failed: %s %s\n", c.to_string().c_str(), r.status.to_string().c_str(), r.err.c_str());
    return -1;
  }
  return std::atof(r.out.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--child") return child(argv[2], std::atoi(argv[3]));
  if (argc > 1) seconds_per_run = std::atof(argv[1]);
  int big_mib = argc > 2 ? std::atoi(argv[2]) : 100;
  const bool node = have("node") && have("taskset");
  const bool python = have("python3");

  char tmpl[] = "/tmp/bench_ipc-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);
  std::ofstream(dir / "bench.js") << node_js;
  std::ofstream(dir / "bench.py") << python_py;

  std::printf("Round trips per second, ~32-byte message, one in flight (%.1f s each)\n\n", seconds_per_run);
  std::printf("%-16s %16s %16s\n", "", "separate cores", "one core");
  double raw[2] = {}, chan[2] = {}, nod[2] = {};
  struct row { const char* name; double v[2]; };
  std::vector<row> rows;
  for (int placement = 0; placement < 2; ++placement) {
    int child_cpu = placement == 0 ? 1 : 0;
    pin(0);  // the parent on CPU 0; each child pins itself
    raw[placement] = raw_rate(child_cpu);
    chan[placement] = channel_rate(child_cpu);
    double rpc = rpc_rate(child_cpu);
    nod[placement] = node ? run_number(sp::command{"taskset", "-c", "0", "node", (dir / "bench.js").string(), "pingpong",
                                                   std::to_string(seconds_per_run), std::to_string(child_cpu)})
                          : -1;
    double py = python ? run_number(sp::command{"python3", (dir / "bench.py").string(),
                                                std::to_string(seconds_per_run), std::to_string(child_cpu)})
                       : -1;
    if (placement == 0) {
      rows = {{"raw socketpair", {raw[0], 0}}, {"sp channel", {chan[0], 0}}, {"sp rpc", {rpc, 0}},
              {"node fork", {nod[0], 0}}, {"python Pipe", {py, 0}}};
    } else {
      rows[0].v[1] = raw[1];
      rows[1].v[1] = chan[1];
      rows[2].v[1] = rpc;
      rows[3].v[1] = nod[1];
      rows[4].v[1] = py;
    }
  }
  cpu_set_t all;
  CPU_ZERO(&all);
  for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &all);
  sched_setaffinity(0, sizeof all, &all);
  for (auto& r : rows) {
    std::printf("%-16s", r.name);
    for (double v : r.v) {
      if (v < 0)
        std::printf(" %16s", "(not installed)");
      else
        std::printf(" %16.0f", v);
    }
    std::printf("\n");
  }
  std::printf("\nsp channel / raw:  %.2fx separate, %.2fx one core\n", chan[0] / raw[0], chan[1] / raw[1]);
  if (node) std::printf("sp channel / node: %.2fx separate, %.2fx one core\n", chan[0] / nod[0], chan[1] / nod[1]);

  std::printf("\nOne %d MiB message, one way, until parsed and acknowledged (separate cores)\n", big_mib);
  pin(0);
  {
    auto p = sp::command::self({"--child", "sink", "1"}).ipc().spawn();
    ipc::channel ch(p, {.max_message_size = std::size_t{1} << 30, .internal_messages = false, .name = {}});
    json big = {{"data", std::string(static_cast<std::size_t>(big_mib) << 20, 'x')}};
    auto t0 = clk::now();
    ch.send(big);
    auto ack = ch.receive();
    double cpp = std::chrono::duration<double>(clk::now() - t0).count();
    ch.close();
    p.wait();
    std::printf("%-16s %10.3f s   (%s)\n", "sp channel", cpp, ack ? ack->dump().c_str() : "no ack");
    if (node) {
      double n = run_number(sp::command{"taskset", "-c", "0", "node", (dir / "bench.js").string(), "big",
                                        std::to_string(big_mib), "1"});
      std::printf("%-16s %10.3f s\n", "node fork", n);
      std::printf("\nsp channel is %.1fx faster than node for the big message\n", n / cpp);
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}
