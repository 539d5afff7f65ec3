// tests/bench/ipc.cpp - figure 5: ipc round trips of a small message, and one big
// message one way.
//
// Round trips. A parent and a child process bounce a ~32-byte message, one in
// flight; a sample is the time of a batch of round trips (the table shows round
// trips per second). Two placements, chosen per row by the request's arg:
//   split   the parent (all its threads) on the first CPU it may use, the child on
//           the second: every message is a cross-core wake-up
//   same    both on the first CPU: every message is a context switch
// The parent pins itself (sched_setaffinity) for the batch and restores its mask
// after; the child pins itself first thing. Implementations:
//   raw socketpair  write(32 bytes) / read(32 bytes) in C++: the floor
//   sp channel      ipc::channel send() / receive() of {"s":i,"p":"0123456789abcdef"},
//                   the message built per round trip; the child echoes what it parsed
//   sp rpc          ipc::client call_sync("echo", [i]) and call("echo", [i]).get()
//                   against ipc::serve()
//   Node / Python   in peers/peer.js (fork() IPC, json) and peers/peer.py
//                   (multiprocessing.Pipe, pickle)
//
// One big message. The parent sends {"data": "<N bytes>"} one way; the child parses
// it and answers its length; a sample is the time from send until that answer
// arrived (the message is built before timing). Placement "split". A raw socketpair
// moving N bytes (the child counts them) is the floor; Node (peers/peer.js) the peer.
// Linear time: the same at a quarter of the size must take a quarter of the time.
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <subprocess/ipc.hpp>
#include <subprocess/subprocess.hpp>

#include "bench.hpp"

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;

namespace {

// ---------------------------------------------------------------- placement --

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) throw std::runtime_error("sched_getaffinity failed");
  std::vector<int> v;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) v.push_back(c);
  return v;
}

void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0)
    throw std::runtime_error("sched_setaffinity(" + std::to_string(cpu) + ") failed: " + std::strerror(errno));
}

// Pins the calling thread (and the threads it starts) for its lifetime.
class pinned {
 public:
  explicit pinned(int cpu) {
    CPU_ZERO(&old_);
    sched_getaffinity(0, sizeof old_, &old_);
    pin_to(cpu);
  }
  pinned(const pinned&) = delete;
  pinned& operator=(const pinned&) = delete;
  ~pinned() { sched_setaffinity(0, sizeof old_, &old_); }

 private:
  cpu_set_t old_;
};

struct placement {
  int parent = 0, child = 0;
};

placement place(const std::string& arg) {
  auto cpus = allowed_cpus();
  if (cpus.empty()) throw std::runtime_error("no CPU to run on");
  if (arg == "same") return {cpus[0], cpus[0]};
  if (arg == "split") {
    if (cpus.size() < 2) throw bench::skipped("needs 2 CPUs");
    return {cpus[0], cpus[1]};
  }
  throw std::runtime_error("unknown placement '" + arg + "' (split or same)");
}

// ------------------------------------------------------------------ helpers --

void read_full(int fd, char* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw std::runtime_error("raw socket: short read");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}
void write_full(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw std::runtime_error("raw socket: short write");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

struct socket_pair {
  sp::detail::unique_fd mine, theirs;
  socket_pair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair failed");
    mine.reset(sv[0]);
    theirs.reset(sv[1]);
  }
};

sp::command start_child(const char* role, int cpu, std::vector<std::string> more = {}) {
  std::vector<std::string> a{"--role", role, std::to_string(cpu)};
  a.insert(a.end(), more.begin(), more.end());
  return sp::command::self(a).in(sp::null).out(sp::null);
}

// Runs `warm` round trips, then `iterations` batches of `per_batch` (the row's
// param); a sample is the time of one batch.
template <class Step>
std::vector<bench::sample> batches(const bench::request& r, int warm, Step step) {
  for (int i = 0; i < warm; ++i) step(i);
  std::vector<bench::sample> v;
  const auto per_batch = static_cast<int>(r.param);
  for (int k = 0; k < r.iterations; ++k) {
    auto t0 = bench::clock::now();
    for (int i = 0; i < per_batch; ++i) step(i);
    v.push_back({double(bench::elapsed_ns(t0)), 0});
  }
  return v;
}

constexpr int warm_round_trips = 200;
const char* const payload = "0123456789abcdef";

// -------------------------------------------------------------- child roles --

// argv: <cpu>
int child_raw_echo(const std::vector<std::string>& args) {
  pin_to(std::stoi(args.at(0)));
  char buf[32];
  try {
    for (;;) {
      read_full(3, buf, sizeof buf);
      write_full(3, buf, sizeof buf);
    }
  } catch (const std::runtime_error&) {
    return 0;  // the parent closed its end
  }
}

// argv: <cpu> <bytes>: counts bytes until <bytes>, answers one byte, repeats.
int child_raw_sink(const std::vector<std::string>& args) {
  pin_to(std::stoi(args.at(0)));
  const std::uint64_t n = std::stoull(args.at(1));
  std::vector<char> buf(1 << 20);
  for (;;) {
    std::uint64_t got = 0;
    while (got < n) {
      ssize_t r = ::read(3, buf.data(), std::min<std::uint64_t>(buf.size(), n - got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return 0;
      got += static_cast<std::uint64_t>(r);
    }
    char ack = 'k';
    if (::send(3, &ack, 1, MSG_NOSIGNAL) != 1) return 0;
  }
}

ipc::channel_options big_options() {
  return {.max_message_size = std::size_t{1} << 30, .internal_messages = false, .name = {}};
}

// argv: <cpu>: echoes every message as it was parsed.
int child_channel_echo(const std::vector<std::string>& args) {
  pin_to(std::stoi(args.at(0)));
  auto ch = ipc::connect_to_parent();
  while (auto m = ch.receive()) ch.send(*m);
  return 0;
}

// argv: <cpu>: answers "echo" with its params.
int child_rpc_echo(const std::vector<std::string>& args) {
  pin_to(std::stoi(args.at(0)));
  auto ch = ipc::connect_to_parent();
  ipc::serve(ch, {{"echo", [](const json& p) { return p; }}});
  return 0;
}

// argv: <cpu>: answers {"got": length of "data"} for every message.
int child_channel_sink(const std::vector<std::string>& args) {
  pin_to(std::stoi(args.at(0)));
  auto ch = ipc::connect_to_parent(big_options());
  while (auto m = ch.receive()) ch.send({{"got", (*m)["data"].get_ref<const std::string&>().size()}});
  return 0;
}

// ------------------------------------------------------------ round trips --

std::vector<bench::sample> raw_round_trips(const bench::request& r) {
  auto pl = place(r.arg);
  pinned pin(pl.parent);
  socket_pair s;
  auto p = start_child("ipc_raw_echo", pl.child).map_fd(3, s.theirs.get()).spawn();
  s.theirs.reset();
  char buf[32] = "0123456789abcdef0123456789abcde";
  std::vector<bench::sample> v;
  std::string failure;
  try {
    v = batches(r, warm_round_trips, [&](int) {
      write_full(s.mine.get(), buf, sizeof buf);
      read_full(s.mine.get(), buf, sizeof buf);
    });
  } catch (const std::exception& e) {
    failure = e.what();
  }
  s.mine.reset();  // the child sees the end and exits
  auto st = p.wait();
  if (!failure.empty()) throw std::runtime_error(failure + " (child " + st.to_string() + ")");
  return v;
}

std::vector<bench::sample> channel_round_trips(const bench::request& r) {
  auto pl = place(r.arg);
  pinned pin(pl.parent);
  auto p = start_child("ipc_channel_echo", pl.child).ipc().spawn();
  std::vector<bench::sample> v;
  {
    ipc::channel ch(p);
    v = batches(r, warm_round_trips, [&](int i) {
      json msg;  // (m["k"] = v: nlohmann's {{"s", i}, ...} copies through temporaries, +0.2 us)
      msg["s"] = i;
      msg["p"] = payload;
      ch.send(msg);
      auto m = ch.receive();
      if (!m || !m->is_object()) throw std::runtime_error("sp channel: no echo");
    });
  }
  if (auto st = p.wait(); !st.success()) throw std::runtime_error("echo child " + st.to_string());
  return v;
}

template <bool sync>
std::vector<bench::sample> rpc_round_trips(const bench::request& r) {
  auto pl = place(r.arg);
  pinned pin(pl.parent);  // before the client: its reader thread inherits the mask
  auto p = start_child("ipc_rpc_echo", pl.child).ipc().spawn();
  std::vector<bench::sample> v;
  {
    ipc::client c(p);
    v = batches(r, warm_round_trips, [&](int i) {
      json res;
      json params = json::array();
      params.push_back(i);
      if constexpr (sync)
        res = c.call_sync("echo", std::move(params), std::chrono::seconds(10));
      else
        res = c.call("echo", std::move(params), std::chrono::seconds(10)).get();
      if (!res.is_array()) throw std::runtime_error("sp rpc: wrong answer");
    });
  }
  if (auto st = p.wait(); !st.success()) throw std::runtime_error("rpc child " + st.to_string());
  return v;
}

// ------------------------------------------------------------ one big message --

std::vector<bench::sample> channel_big(const bench::request& r) {
  auto pl = place("split");
  pinned pin(pl.parent);
  auto p = start_child("ipc_channel_sink", pl.child).ipc().spawn();
  std::vector<bench::sample> v;
  {
    ipc::channel ch(p, big_options());
    const json msg = {{"data", std::string(r.param, 'x')}};
    for (int k = 0; k < r.iterations; ++k) {
      auto t0 = bench::clock::now();
      ch.send(msg);
      auto ack = ch.receive();
      double ns = double(bench::elapsed_ns(t0));
      if (!ack || (*ack)["got"] != r.param) throw std::runtime_error("sp channel: wrong answer to the big message");
      v.push_back({ns, 0});
    }
  }
  if (auto st = p.wait(); !st.success()) throw std::runtime_error("sink child " + st.to_string());
  return v;
}

std::vector<bench::sample> raw_big(const bench::request& r) {
  auto pl = place("split");
  pinned pin(pl.parent);
  socket_pair s;
  auto p = start_child("ipc_raw_sink", pl.child, {std::to_string(r.param)}).map_fd(3, s.theirs.get()).spawn();
  s.theirs.reset();
  const std::string data(r.param, 'x');
  std::vector<bench::sample> v;
  std::string failure;
  try {
    for (int k = 0; k < r.iterations; ++k) {
      auto t0 = bench::clock::now();
      write_full(s.mine.get(), data.data(), data.size());
      char ack;
      read_full(s.mine.get(), &ack, 1);
      v.push_back({double(bench::elapsed_ns(t0)), 0});
    }
  } catch (const std::exception& e) {
    failure = e.what();
  }
  s.mine.reset();
  auto st = p.wait();
  if (!failure.empty()) throw std::runtime_error(failure + " (child " + st.to_string() + ")");
  return v;
}

// A child role taking its arguments (after `--role <name>`) as strings.
bench::role_fn role(int (*fn)(const std::vector<std::string>&)) {
  return [fn](int argc, char** argv) { return fn(std::vector<std::string>(argv + 3, argv + argc)); };
}

[[maybe_unused]] const bool registered = [] {
  bench::register_role("ipc_raw_echo", role(child_raw_echo));
  bench::register_role("ipc_raw_sink", role(child_raw_sink));
  bench::register_role("ipc_channel_echo", role(child_channel_echo));
  bench::register_role("ipc_rpc_echo", role(child_rpc_echo));
  bench::register_role("ipc_channel_sink", role(child_channel_sink));
  bench::register_impl("ipc/raw", raw_round_trips);
  bench::register_impl("ipc/channel", channel_round_trips);
  bench::register_impl("ipc/rpc_future", rpc_round_trips<false>);
  bench::register_impl("ipc/rpc_sync", rpc_round_trips<true>);
  bench::register_impl("ipc/big_channel", channel_big);
  bench::register_impl("ipc/big_raw", raw_big);
  return true;
}();

// --------------------------------------------------------------- the plan --

const char* const raw_label = "raw socketpair ping-pong (C++)";
const char* const channel_label = "sp::ipc::channel send()+receive()";
const char* const rpc_sync_label = "sp::ipc::client call_sync()";
const char* const rpc_future_label = "sp::ipc::client call().get()";
const char* const node_label = "Node fork(), process.send / 'message' (json)";
const char* const python_label = "Python multiprocessing.Pipe (pickle)";

const char* const big_channel_label = "sp::ipc::channel send(), child parses";
const char* const big_quarter_label = "sp::ipc::channel, a quarter of the size";
const char* const big_node_label = "Node fork(), child.send(), child parses";
const char* const big_raw_label = "raw socketpair, bytes only (C++)";

bench::phase ipc_plan(const bench::plan_context& ctx) {
  bench::phase ph;
  ph.name = "ipc";
  ph.title = "5. ipc round trips and a big message";
  ph.rounds = ctx.smoke ? 1 : 12;
  struct impl {
    const char* label;
    const char* peer;
    const char* key;
  };
  const impl list[] = {
      {channel_label, "cpp", "ipc/channel"},   {rpc_sync_label, "cpp", "ipc/rpc_sync"},
      {rpc_future_label, "cpp", "ipc/rpc_future"}, {raw_label, "cpp", "ipc/raw"},
      {node_label, "node", "ipc/fork"},        {python_label, "python", "ipc/pipe"},
  };
  for (const char* where : {"split", "same"}) {
    bench::benchmark b;
    b.id = std::string("ipc_") + where;
    b.title = std::string(where == std::string("split") ? "ipc round trips, processes on 2 cores"
                                                          : "ipc round trips, both on 1 core") +
              " (per second, higher is better)";
    b.kind = bench::unit::rate;
    b.rate_unit = "round trips/s";
    b.baseline = raw_label;
    for (auto& i : list) {
      bench::row r;
      r.label = i.label;
      r.server = {i.peer, 0, "ipc"};
      r.key = i.key;
      r.iterations = ctx.smoke ? 1 : 3;
      // round trips per sample: a cross-core round trip takes ~10x longer
      r.param = ctx.smoke ? 50 : where == std::string("split") ? 1000 : 5000;
      r.arg = where;
      b.rows.push_back(r);
    }
    ph.benchmarks.push_back(b);
  }
  ph.benchmarks[0].note =
      "a sample is a batch of round trips of a ~32-byte message, one in flight (C++: "
      "{\"p\":\"0123456789abcdef\",\"s\":i} built per round trip with m[\"s\"] = i; Node {s: i, p: '...'}; "
      "Python the same dict, pickled); the child echoes what it parsed; rpc: call(\"echo\", [i]) against "
      "serve(). 2 cores: parent on the first CPU, child "
      "on the second; 1 core: both on the first (sched_setaffinity; Node's child under taskset).";

  const std::uint64_t big = ctx.smoke ? (1u << 20) : (100u << 20);
  bench::benchmark b;
  b.id = "ipc_big";
  b.title = ctx.smoke ? "one 1 MiB message one way, until parsed and answered"
                      : "one 100 MiB message one way, until parsed and answered (lower is better)";
  b.kind = bench::unit::latency;
  b.baseline = big_node_label;
  const impl big_list[] = {
      {big_channel_label, "cpp", "ipc/big_channel"},
      {big_quarter_label, "cpp", "ipc/big_channel"},
      {big_node_label, "node", "ipc/big"},
      {big_raw_label, "cpp", "ipc/big_raw"},
  };
  for (auto& i : big_list) {
    bench::row r;
    r.label = i.label;
    r.server = {i.peer, 0, "ipc_big"};
    r.key = i.key;
    r.iterations = 1;
    r.param = i.label == big_quarter_label ? big / 4 : big;
    r.arg = "split";
    b.rows.push_back(r);
  }
  b.note = "{\"data\": \"xxx...\"} built before timing; a sample is send() until the child's answer "
           "(its parsed length) arrived; parent and child on separate cores. The quarter-size row "
           "checks linear time.";
  ph.benchmarks.push_back(b);

  using G = bench::goal;
  for (const char* where : {"split", "same"}) {
    const std::string id = std::string("ipc_") + where;
    const std::string place_text = where == std::string("split") ? ", 2 cores" : ", 1 core";
    ph.goals.push_back(G{"5. channel >= 0.85x raw socketpair" + place_text, id, channel_label, id, raw_label,
                         std::nullopt, 0.85, false, 1.0});
    ph.goals.push_back(G{"5. rpc call_sync() >= 0.85x raw socketpair" + place_text, id, rpc_sync_label, id,
                         raw_label, std::nullopt, 0.85, false, 1.0});
    ph.goals.push_back(G{"5. rpc call().get() >= 0.85x raw socketpair" + place_text, id, rpc_future_label, id,
                         raw_label, std::nullopt, 0.85, false, 1.0});
    ph.goals.push_back(G{"5. channel >= 1.5x Node json" + place_text, id, channel_label, id, node_label,
                         std::nullopt, 1.5, false, 1.0});
  }
  ph.goals.push_back(G{"5. big message: Node's time / ours >= 3 (ours <= 0.33x)", "ipc_big", big_channel_label,
                       "ipc_big", big_node_label, 1.0 / 3, std::nullopt, false, 1.0});
  ph.goals.push_back(G{"5. big message in linear time: t(N) <= 1.25 x 4 x t(N/4)", "ipc_big", big_channel_label,
                       "ipc_big", big_quarter_label, 1.25, std::nullopt, false, 4.0});
  return ph;
}

[[maybe_unused]] const bool planned = bench::register_plan(40, ipc_plan);

}  // namespace
