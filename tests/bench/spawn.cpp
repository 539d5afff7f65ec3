// tests/bench/spawn.cpp - figures 1 and 2: spawn+wait latency of /bin/true, from a
// small parent and from a parent that has touched 2 GiB.
//
// Every implementation starts /bin/true with the parent's stdio inherited (fds 0 and
// 1 of a server are /dev/null) and waits for it; one sample is one spawn+wait. The
// same implementations run in two servers: one small, one that touched 2 GiB before
// answering "ready" (Python and Node servers touch 2 GiB of their own as well).
// Boost.Process and libuv live in spawn_boost.cpp and spawn_uv.cpp.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <subprocess/subprocess.hpp>

#include "bench.hpp"

extern char** environ;

namespace sp = subprocess;

namespace {

constexpr const char* true_path = "/bin/true";

void check_status(int ws, const char* who) {
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
    throw std::runtime_error(std::string(who) + ": /bin/true did not exit 0");
}

template <class F>
std::vector<bench::sample> timed(const bench::request& r, F&& once) {
  std::vector<bench::sample> v;
  v.reserve(static_cast<std::size_t>(r.iterations));
  for (int i = 0; i < r.iterations; ++i) {
    auto t0 = bench::clock::now();
    once();
    v.push_back({double(bench::elapsed_ns(t0)), 0});
  }
  return v;
}

std::vector<bench::sample> sp_run(const bench::request& r) {
  const sp::command cmd{true_path};
  return timed(r, [&] {
    if (!sp::run(cmd).success()) throw std::runtime_error("sp::run: /bin/true failed");
  });
}

std::vector<bench::sample> sp_spawn(const bench::request& r, sp::spawn_backend b) {
  sp::command cmd{true_path};
  cmd.backend(b);
  return timed(r, [&] {
    if (!cmd.spawn().wait().success()) throw std::runtime_error("spawn: /bin/true failed");
  });
}

std::vector<bench::sample> raw_posix_spawn(const bench::request& r) {
  char* argv[] = {const_cast<char*>(true_path), nullptr};
  return timed(r, [&] {
    pid_t pid;
    if (int e = ::posix_spawn(&pid, true_path, nullptr, nullptr, argv, environ))
      throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(e));
    int ws = 0;
    while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    check_status(ws, "posix_spawn");
  });
}

// What run() does, by hand: stdin from /dev/null, stdout and stderr into pipes read
// until end of file, then waitpid. The like-for-like baseline for run(): the pipes
// themselves cost the child something at exec and exit.
std::vector<bench::sample> raw_posix_spawn_piped(const bench::request& r) {
  char* argv[] = {const_cast<char*>(true_path), nullptr};
  auto fail = [](const char* what) { throw std::runtime_error(std::string(what) + ": " + std::strerror(errno)); };
  return timed(r, [&] {
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC), out[2], err[2];
    if (null < 0) fail("open /dev/null");
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) fail("pipe2");
    posix_spawn_file_actions_t fa;
    ::posix_spawn_file_actions_init(&fa);
    ::posix_spawn_file_actions_adddup2(&fa, null, 0);
    ::posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    ::posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    pid_t pid;
    int e = ::posix_spawn(&pid, true_path, &fa, nullptr, argv, environ);
    ::posix_spawn_file_actions_destroy(&fa);
    if (e != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(e));
    ::close(null);
    ::close(out[1]);
    ::close(err[1]);
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    char buf[65536];
    for (int open_fds = 2; open_fds > 0;) {
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        fail("poll");
      }
      for (auto& p : fds)
        if (p.fd >= 0 && p.revents != 0 && ::read(p.fd, buf, sizeof buf) <= 0) {
          ::close(p.fd);
          p.fd = -1;
          --open_fds;
        }
    }
    int ws = 0;
    while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    check_status(ws, "posix_spawn (piped)");
  });
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
template <bool use_vfork>
std::vector<bench::sample> raw_fork_exec(const bench::request& r) {
  char* argv[] = {const_cast<char*>(true_path), nullptr};
  return timed(r, [&] {
    pid_t pid = use_vfork ? ::vfork() : ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      ::execve(true_path, argv, environ);
      ::_exit(127);
    }
    int ws = 0;
    while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    check_status(ws, use_vfork ? "vfork" : "fork");
  });
}
#pragma GCC diagnostic pop

[[maybe_unused]] const bool registered = [] {
  bench::register_impl("spawn/sp_run", sp_run);
  bench::register_impl("spawn/sp_spawn_posix",
                       [](const bench::request& r) { return sp_spawn(r, sp::spawn_backend::posix_spawn); });
  bench::register_impl("spawn/sp_spawn_clone",
                       [](const bench::request& r) { return sp_spawn(r, sp::spawn_backend::clone_vfork); });
  bench::register_impl("spawn/raw_posix_spawn", raw_posix_spawn);
  bench::register_impl("spawn/raw_posix_spawn_piped", raw_posix_spawn_piped);
  bench::register_impl("spawn/raw_vfork", raw_fork_exec<true>);
  bench::register_impl("spawn/raw_fork", raw_fork_exec<false>);
#ifndef SUBPROCESS_BENCH_HAVE_BOOST
  bench::register_impl("spawn/boost", [](const bench::request&) -> std::vector<bench::sample> {
    throw bench::skipped("not installed: libboost1.81-dev");
  });
#endif
#ifndef SUBPROCESS_BENCH_HAVE_LIBUV
  bench::register_impl("spawn/libuv", [](const bench::request&) -> std::vector<bench::sample> {
    throw bench::skipped("not installed: libuv1-dev");
  });
#endif
  return true;
}();

// --------------------------------------------------------------- the plan --

const char* const sp_run_label = "sp::run() (stdin null, stdout+stderr piped)";
const char* const sp_posix_label = "sp::command::spawn()+wait(), posix_spawn back end";
const char* const sp_clone_label = "sp::command::spawn()+wait(), clone_vfork back end";
const char* const raw_ps_label = "raw posix_spawn + waitpid";
const char* const raw_piped_label = "raw posix_spawn, stdin null, stdout+stderr piped, poll/read + waitpid";

bench::phase spawn_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "spawn";
  // Many short rounds: a burst of load from elsewhere then lands on every row alike.
  ph.rounds = ctx.smoke ? 1 : 60;
  const std::uint64_t big = ctx.smoke ? 64 : 2048;  // MiB touched by the "big" parents
  struct impl {
    const char* label;
    const char* peer;
    const char* key;
    bool forks;  // copies page tables: slow in a big parent, so fewer iterations
  };
  const impl list[] = {
      {sp_run_label, "cpp", "spawn/sp_run", false},
      {sp_posix_label, "cpp", "spawn/sp_spawn_posix", false},
      {sp_clone_label, "cpp", "spawn/sp_spawn_clone", false},
      {raw_ps_label, "cpp", "spawn/raw_posix_spawn", false},
      {raw_piped_label, "cpp", "spawn/raw_posix_spawn_piped", false},
      {"raw vfork + execve + waitpid", "cpp", "spawn/raw_vfork", false},
      {"raw fork + execve + waitpid", "cpp", "spawn/raw_fork", true},
      {"Boost.Process v2 (bp::process + wait)", "cpp", "spawn/boost", true},
      {"libuv uv_spawn + exit callback", "cpp", "spawn/libuv", true},
      {"Python subprocess.run", "python", "spawn/run", false},
      {"Node child_process.spawn, await 'exit'", "node", "spawn/spawn", true},
  };
  for (int big_parent = 0; big_parent < 2; ++big_parent) {
    bench::benchmark b;
    b.id = big_parent ? "spawn_2g" : "spawn";
    b.title = big_parent ? (ctx.smoke ? "spawn+wait, parent touched 64 MiB" : "spawn+wait, parent touched 2 GiB")
                         : "spawn+wait /bin/true, small parent";
    b.kind = bench::unit::latency;
    b.baseline = raw_ps_label;
    for (auto& i : list) {
      bench::row r;
      r.label = i.label;
      r.server = {i.peer, big_parent ? big : 0, "spawn"};
      r.key = i.key;
      r.iterations = ctx.smoke ? 2 : (big_parent && i.forks ? 1 : 5);
      b.rows.push_back(r);
    }
    ph.benchmarks.push_back(b);
  }
  ph.benchmarks[1].note =
      "in the big-parent rows every process (the C++ server, Python, Node) touched the memory "
      "itself before timing; ratio is against raw posix_spawn in that same big parent. Peers that "
      "fork copy the page tables of the whole parent on every spawn.";
  using G = bench::goal;
  ph.goals.push_back(G{"1. spawn()+wait() (posix_spawn) <= 1.05x raw posix_spawn, small parent", "spawn",
                       sp_posix_label, "spawn", raw_ps_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"1. spawn()+wait() (clone_vfork) <= 1.05x raw posix_spawn, small parent", "spawn",
                       sp_clone_label, "spawn", raw_ps_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"1. run() <= 1.05x raw posix_spawn, small parent (run also makes 2 pipes)",
                       "spawn", sp_run_label, "spawn", raw_ps_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"1. run() <= 1.05x the same pipes by hand (raw posix_spawn, poll/read)", "spawn",
                       sp_run_label, "spawn", raw_piped_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"2. spawn()+wait() (posix_spawn), 2 GiB parent <= 1.05x small parent", "spawn_2g",
                       sp_posix_label, "spawn", sp_posix_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"2. spawn()+wait() (clone_vfork), 2 GiB parent <= 1.05x small parent", "spawn_2g",
                       sp_clone_label, "spawn", sp_clone_label, 1.05, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"2. run(), 2 GiB parent <= 1.05x small parent", "spawn_2g", sp_run_label, "spawn",
                       sp_run_label, 1.05, std::nullopt, false, 1.0});
  for (const char* peer : {"Boost.Process v2 (bp::process + wait)", "libuv uv_spawn + exit callback",
                           "Node child_process.spawn, await 'exit'"}) {
    ph.goals.push_back(G{std::string("2. ") + peer + " / spawn()+wait(), 2 GiB parent >= 50x", "spawn_2g",
                         peer, "spawn_2g", sp_posix_label, std::nullopt, 50.0, false, 1.0});
  }
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(10, spawn_plan);

}  // namespace
