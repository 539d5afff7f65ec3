// tests/bench/capture.cpp - figure 3: capture 1 GiB of a child's stdout into memory.
//
// The child is `head -c N /dev/zero` in every row. One sample is spawn + capture of
// all N bytes + wait; each sample also reports how much the process's peak RSS grew
// during it (VmHWM after, minus VmRSS before, with the peak reset through
// /proc/self/clear_refs first), shown against the captured size.
//
// The raw loops are the limit a hand-written C program reaches: posix_spawn with
// stdout and stderr piped, poll() on both, read() straight into a buffer grown with
// realloc (glibc grows large blocks with mremap: no copy, no zero fill, only the
// pages written become resident). One with the pipe enlarged to 1 MiB
// (F_SETPIPE_SZ), one with the default 64 KiB pipe.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <subprocess/subprocess.hpp>

#include "bench.hpp"

extern char** environ;

namespace sp = subprocess;

namespace {

sp::command head_cmd(std::uint64_t n) { return sp::command{"head", "-c", std::to_string(n), "/dev/zero"}; }

std::vector<bench::sample> sp_run(const bench::request& r) {
  return bench::timed_bytes(r, [&] {
    auto res = sp::run(head_cmd(r.param));
    if (!res.success()) throw std::runtime_error("head failed: " + res.status.to_string());
    return res.out.size();
  });
}

std::vector<bench::sample> sp_loop(const bench::request& r) {
  return bench::timed_bytes(r, [&] {
    auto p = head_cmd(r.param).in(sp::null).out(sp::pipe).err(sp::pipe).spawn();
    std::string out, err;
    sp::event_loop loop;
    loop.on_data(p.out(), [&](std::string_view chunk) { out.append(chunk); });
    loop.on_data(p.err(), [&](std::string_view chunk) { err.append(chunk); });
    bool ok = false;
    loop.on_exit(p, [&](sp::exit_status st) { ok = st.success(); });
    loop.run();
    if (!ok) throw std::runtime_error("head failed");
    return out.size();
  });
}

// The loop's own cost: the same, with the data counted and dropped.
std::vector<bench::sample> sp_loop_count(const bench::request& r) {
  return bench::timed_bytes(r, [&] {
    auto p = head_cmd(r.param).in(sp::null).out(sp::pipe).err(sp::pipe).spawn();
    std::size_t out = 0, err = 0;
    sp::event_loop loop;
    loop.on_data(p.out(), [&](std::string_view chunk) { out += chunk.size(); });
    loop.on_data(p.err(), [&](std::string_view chunk) { err += chunk.size(); });
    bool ok = false;
    loop.on_exit(p, [&](sp::exit_status st) { ok = st.success(); });
    loop.run();
    if (!ok || err != 0) throw std::runtime_error("head failed");
    return out;
  });
}

// posix_spawnp with stdout and stderr piped; poll both; read into a realloc'd buffer.
std::size_t raw_capture(std::uint64_t n, int pipe_size) {
  std::string count = std::to_string(n);
  char head[] = "head";
  char c[] = "-c";
  char zero[] = "/dev/zero";
  char* argv[] = {head, c, count.data(), zero, nullptr};
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  if (pipe_size > 0 && ::fcntl(out[0], F_SETPIPE_SZ, pipe_size) < 0)
    throw std::runtime_error(std::string("F_SETPIPE_SZ: ") + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  pid_t pid;
  int e = ::posix_spawnp(&pid, head, &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  if (e != 0) {
    ::close(out[0]);
    ::close(err[0]);
    throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(e));
  }
  std::size_t cap = 1 << 20, len = 0, err_len = 0;
  char* buf = static_cast<char*>(std::malloc(cap));
  char err_buf[4096];
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("poll");
    }
    if (fds[0].revents) {
      if (cap - len < (1 << 20)) {
        cap *= 2;
        buf = static_cast<char*>(std::realloc(buf, cap));
        if (!buf) throw std::bad_alloc();
      }
      ssize_t r = ::read(out[0], buf + len, cap - len);
      if (r > 0) len += static_cast<std::size_t>(r);
      if (r == 0) {
        ::close(out[0]);
        fds[0].fd = -1;
      }
    }
    if (fds[1].revents) {
      ssize_t r = ::read(err[0], err_buf, sizeof err_buf);
      if (r > 0) err_len += static_cast<std::size_t>(r);
      if (r == 0) {
        ::close(err[0]);
        fds[1].fd = -1;
      }
    }
  }
  std::free(buf);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || err_len != 0) throw std::runtime_error("head failed");
  return len;
}

[[maybe_unused]] const bool registered = [] {
  bench::register_impl("capture/sp_run", sp_run);
  bench::register_impl("capture/sp_event_loop", sp_loop);
  bench::register_impl("capture/sp_event_loop_count", sp_loop_count);
  bench::register_impl("capture/raw_1m", [](const bench::request& r) {
    return bench::timed_bytes(r, [&] { return raw_capture(r.param, 1 << 20); });
  });
  bench::register_impl("capture/raw_64k", [](const bench::request& r) {
    return bench::timed_bytes(r, [&] { return raw_capture(r.param, 0); });
  });
  return true;
}();

// --------------------------------------------------------------- the plan --

const char* const run_label = "sp::run() (stdout and stderr piped)";
const char* const odd_label = "sp::run(), 64 KiB more than that (not a power of two)";
const char* const raw1m_label = "raw poll/read loop, 1 MiB pipe";
const char* const py_both_label = "Python subprocess.run(capture_output=True)";
const char* const node_label = "Node spawn, 'data' events, Buffer.concat";

bench::phase capture_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "capture";
  ph.rounds = ctx.smoke ? 1 : 7;
  const std::uint64_t bytes = ctx.smoke ? (4u << 20) : (1ull << 30);
  bench::benchmark b;
  b.id = "capture";
  b.title = ctx.smoke ? "capture 4 MiB of stdout" : "capture 1 GiB of stdout (MB/s, higher is better)";
  b.kind = bench::unit::throughput;
  b.bytes = bytes;
  b.baseline = raw1m_label;
  b.show_extra = true;
  struct impl {
    const char* label;
    const char* peer;
    const char* key;
  };
  const impl list[] = {
      {run_label, "cpp", "capture/sp_run"},
      {"sp::event_loop on_data, appending to a std::string", "cpp", "capture/sp_event_loop"},
      {"sp::event_loop on_data, counting bytes only (the loop's own cost)", "cpp",
       "capture/sp_event_loop_count"},
      {raw1m_label, "cpp", "capture/raw_1m"},
      {"raw poll/read loop, default 64 KiB pipe", "cpp", "capture/raw_64k"},
      {py_both_label, "python", "capture/capture_output"},
      {"Python subprocess.run(stdout=PIPE)", "python", "capture/stdout_pipe"},
      {node_label, "node", "capture/data_events"},
  };
  for (auto& i : list) {
    bench::row r;
    r.label = i.label;
    r.server = {i.peer, 0, "capture"};
    r.key = i.key;
    r.iterations = 1;
    r.param = bytes;
    b.rows.push_back(r);
  }
  // 1 GiB is a power of two: a string that doubles from 64 KiB lands exactly on it
  // and never copies its full contents. One more run() row at an unlucky size shows
  // the general case.
  bench::row odd;
  odd.label = odd_label;
  odd.server = {"cpp", 0, "capture"};
  odd.key = "capture/sp_run";
  odd.param = bytes + (64u << 10);
  b.rows.insert(b.rows.begin() + 1, odd);
  b.note = "the child is `head -c N /dev/zero`; a sample is spawn + capture + wait. Peak RSS growth "
           "is the largest over the samples. Every implementation pays for fresh memory "
           "(page faults, or populating it in bulk as run() does past 1 MiB).";
  ph.benchmarks.push_back(b);
  using G = bench::goal;
  ph.goals.push_back(G{"3. run() capture >= 0.9x the raw 1 MiB-pipe loop", "capture", run_label, "capture",
                       raw1m_label, std::nullopt, 0.9, false, 1.0});
  ph.goals.push_back(G{"3. run() capture >= 2x Python capture_output", "capture", run_label, "capture",
                       py_both_label, std::nullopt, 2.0, false, 1.0});
  ph.goals.push_back(G{"3. run() capture >= 2x Node", "capture", run_label, "capture", node_label,
                       std::nullopt, 2.0, false, 1.0});
  ph.goals.push_back(G{"3. run() peak RSS growth <= 1.1x the captured size", "capture", run_label, "", "",
                       1.1, std::nullopt, true, 1.0});
  ph.goals.push_back(G{"3. the same at 1 GiB + 64 KiB", "capture", odd_label, "", "", 1.1, std::nullopt, true, 1.0});
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(20, capture_plan);

}  // namespace
