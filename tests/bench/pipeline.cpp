// tests/bench/pipeline.cpp - figure 4: 1 GiB through a pipeline.
//
// All commands: `head -c N /dev/zero | cat | cat | cat`, its output counted by this
// process (the sink reads and counts, keeps nothing):
//   sp::pipeline    the four command stages, output = a callback that counts
//   bash            `bash -c 'head ... | cat | cat | cat'`, its stdout read by a plain
//                   blocking read() loop here
// One identity transform in the parent: `head -c N /dev/zero | cat | [identity] |
// cat | cat`, counted the same way:
//   sp::pipeline    sp::transform(chunk function that emits its input)
//   raw C++         the same processes joined by hand-made pipes, a thread copying
//                   with blocking read()/write() in 64 KiB steps: the limit
//   Node            spawn() with child stdio shared by fd between adjacent commands,
//                   cat.stdout.pipe(new Transform(...)).pipe(cat.stdin) (peers/peer.js)
// A sample is spawn to the last byte counted and every process reaped. Each sample
// also reports the peak RSS growth of the process doing the work (VmHWM after, with
// the peak reset through /proc/self/clear_refs first, minus VmRSS before).
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include <subprocess/pipeline.hpp>
#include <subprocess/subprocess.hpp>

#include "bench.hpp"

namespace sp = subprocess;

namespace {

sp::command head_cmd(std::uint64_t n) { return sp::command{"head", "-c", std::to_string(n), "/dev/zero"}; }
sp::command cat_cmd() { return sp::command{"cat"}; }

std::uint64_t run_counting(const sp::pipeline& p) {
  std::uint64_t count = 0;
  sp::pipeline_options o;
  o.output = sp::output_callback([&](std::string_view d) { count += d.size(); });
  auto r = p.run(std::move(o));
  if (!r.success()) throw std::runtime_error(r.command + ": " + r.status.to_string());
  return count;
}

std::vector<bench::sample> sp_commands(const bench::request& r) {
  const auto p = sp::pipeline{} | head_cmd(r.param) | cat_cmd() | cat_cmd() | cat_cmd();
  return bench::timed_bytes(r, [&] { return run_counting(p); });
}

std::vector<bench::sample> sp_transform(const bench::request& r) {
  const auto identity = sp::transform([](std::string_view d, sp::emitter& emit) { emit(d); }, "identity");
  const auto p = sp::pipeline{} | head_cmd(r.param) | cat_cmd() | identity | cat_cmd() | cat_cmd();
  return bench::timed_bytes(r, [&] { return run_counting(p); });
}

// Reads fd (blocking) to the end, counting.
std::uint64_t count_all(int fd) {
  std::vector<char> buf(128 << 10);
  std::uint64_t n = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r > 0) {
      n += static_cast<std::uint64_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(std::string("read: ") + std::strerror(errno));
    return n;
  }
}

void set_blocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) throw std::runtime_error("fcntl failed");
}

std::vector<bench::sample> bash_commands(const bench::request& r) {
  const std::string script = "head -c " + std::to_string(r.param) + " /dev/zero | cat | cat | cat";
  return bench::timed_bytes(r, [&] {
    auto p = sp::command{"bash", "-c", script}.in(sp::null).out(sp::pipe).spawn();
    set_blocking(p.out().fd());
    std::uint64_t n = count_all(p.out().fd());
    if (auto st = p.wait(); !st.success()) throw std::runtime_error("bash " + st.to_string());
    return n;
  });
}

struct pipe_fds {
  sp::detail::unique_fd read, write;
  pipe_fds() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    read.reset(p[0]);
    write.reset(p[1]);
  }
};

// head | cat | <copy loop on a thread here> | cat | cat | <count here>
std::uint64_t raw_transform_once(std::uint64_t n) {
  pipe_fds a, b, c, d, e;
  auto head = head_cmd(n).in(sp::null).out(sp::fd(a.write.get())).spawn();
  a.write.reset();
  auto cat1 = cat_cmd().in(sp::fd(a.read.get())).out(sp::fd(b.write.get())).spawn();
  a.read.reset();
  b.write.reset();
  auto cat2 = cat_cmd().in(sp::fd(c.read.get())).out(sp::fd(d.write.get())).spawn();
  c.read.reset();
  d.write.reset();
  auto cat3 = cat_cmd().in(sp::fd(d.read.get())).out(sp::fd(e.write.get())).spawn();
  d.read.reset();
  e.write.reset();
  std::string copy_error;
  std::thread copier([&] {
    sigset_t s;  // EPIPE instead of SIGPIPE if cat2 went away
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &s, nullptr);
    std::vector<char> buf(64 << 10);
    for (;;) {
      ssize_t got = ::read(b.read.get(), buf.data(), buf.size());
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      const char* p = buf.data();
      while (got > 0) {
        ssize_t w = ::write(c.write.get(), p, static_cast<std::size_t>(got));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          copy_error = std::string("write: ") + std::strerror(errno);
          got = 0;
          break;
        }
        p += w;
        got -= w;
      }
      if (!copy_error.empty()) break;
    }
    c.write.reset();  // cat2 sees the end
  });
  std::uint64_t counted = count_all(e.read.get());
  copier.join();
  for (auto* p : {&head, &cat1, &cat2, &cat3})
    if (auto st = p->wait(); !st.success()) throw std::runtime_error("raw pipeline: a stage " + st.to_string());
  if (!copy_error.empty()) throw std::runtime_error(copy_error);
  return counted;
}

std::vector<bench::sample> raw_transform(const bench::request& r) {
  return bench::timed_bytes(r, [&] { return raw_transform_once(r.param); });
}

[[maybe_unused]] const bool registered = [] {
  bench::register_impl("pipeline/sp_commands", sp_commands);
  bench::register_impl("pipeline/bash_commands", bash_commands);
  bench::register_impl("pipeline/sp_transform", sp_transform);
  bench::register_impl("pipeline/raw_transform", raw_transform);
  return true;
}();

// --------------------------------------------------------------- the plan --

const char* const sp_label = "sp::pipeline, 4 commands, output to a counting callback";
const char* const bash_label = "bash -c 'head | cat | cat | cat', stdout counted by read()";
const char* const sp_t_label = "sp::pipeline with sp::transform(identity chunk function)";
const char* const raw_t_label = "raw C++: hand-made pipes, a thread copying with read()/write()";
const char* const node_t_label = "Node: spawn() with shared stdio, .pipe(new Transform(...))";

bench::phase pipeline_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "pipeline";
  ph.title = "4. pipeline of 1 GiB";
  ph.rounds = ctx.smoke ? 1 : 7;
  const std::uint64_t bytes = ctx.smoke ? (4u << 20) : (1ull << 30);
  struct impl {
    const char* label;
    const char* peer;
    const char* key;
  };
  auto make = [&](const char* id, std::string title, const char* baseline, std::initializer_list<impl> list) {
    bench::benchmark b;
    b.id = id;
    b.title = std::move(title);
    b.kind = bench::unit::throughput;
    b.bytes = bytes;
    b.baseline = baseline;
    b.show_peak_rss = true;
    for (auto& i : list) {
      bench::row r;
      r.label = i.label;
      r.server = {i.peer, 0, "pipeline"};
      r.key = i.key;
      r.iterations = 1;
      r.param = bytes;
      b.rows.push_back(r);
    }
    return b;
  };
  const std::string size = ctx.smoke ? "4 MiB" : "1 GiB";
  ph.benchmarks.push_back(make("pipeline", "pipeline: " + size + " through head | cat | cat | cat (MB/s)",
                               bash_label,
                               {{sp_label, "cpp", "pipeline/sp_commands"},
                                {bash_label, "cpp", "pipeline/bash_commands"}}));
  ph.benchmarks.push_back(make("pipeline_t", "pipeline: " + size + " through head | cat | [identity] | cat | cat (MB/s)",
                               node_t_label,
                               {{sp_t_label, "cpp", "pipeline/sp_transform"},
                                {raw_t_label, "cpp", "pipeline/raw_transform"},
                                {node_t_label, "node", "pipeline/transform"}}));
  ph.benchmarks[0].note =
      "the source is `head -c N /dev/zero`; the sink counts in the benchmarking process; a sample is "
      "spawn to the last byte counted and every stage reaped. Peak RSS growth is that of the process "
      "running the pipeline (for bash: the C++ process reading its output), largest over the samples.";
  ph.benchmarks[1].note =
      "the transform runs in the benchmarking process and passes each chunk on unchanged; the "
      "commands next to each other share a kernel pipe in every row.";
  using G = bench::goal;
  ph.goals.push_back(G{"4. all-command pipeline >= 0.95x bash", "pipeline", sp_label, "pipeline", bash_label,
                       std::nullopt, 0.95, false, 1.0});
  ph.goals.push_back(G{"4. pipeline with an identity transform >= 2x Node", "pipeline_t", sp_t_label, "pipeline_t",
                       node_t_label, std::nullopt, 2.0, false, 1.0});
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(30, pipeline_plan);

}  // namespace
