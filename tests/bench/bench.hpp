// tests/bench/bench.hpp - the benchmark harness shared by every module.
//
// One executable, subprocess_bench, plays two roles:
//   * the driver (no arguments, or --smoke): starts the peer servers, runs the
//     benchmarks in interleaved rounds, prints a Markdown table;
//   * a C++ peer server (--serve): a long-lived process that runs one batch of one
//     implementation per request. Python (peers/peer.py) and Node (peers/peer.js)
//     servers speak the same protocol.
//
// Protocol (one line each way, on fds 3 and 4 so the children we spawn can inherit
// 0-2 harmlessly; fds 0 and 1 of a server are /dev/null):
//   driver -> server   "<module>/<impl> <iterations> <param>[ <arg>]\n"
//                      arg: one module-specific word (ipc: the placement, "split" or
//                      "same"); absent when the row has none
//   server -> driver   "ok <sample> <sample> ...\n"   a sample is "<ns>" or "<ns>:<extra>"
//                      "skip <reason>\n"             not available (never faked)
//                      "fail <message>\n"            it ran and went wrong
// A server announces itself with "ready <pid>\n" once it has touched the memory it
// was asked to hold (--touch-mib N), so the 2 GiB parent is set up before timing.
//
// A module is one .cpp file: it registers server-side implementations with
// register_impl() and driver-side benchmark descriptions with register_plan(). A
// module whose implementations need a child process of their own (the ipc echo
// peer, pool workers) registers it with register_role(): `subprocess_bench --role
// <name> args...` runs it, so command::self() starts it.
// Adding ipc, pool or pipeline benchmarks = adding one file; nothing else changes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <tuple>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

inline std::int64_t elapsed_ns(clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t0).count();
}

// ---------------------------------------------------------------- server side --

struct sample {
  double ns = 0;     // duration of one iteration
  double extra = 0;  // module-specific (capture: peak RSS growth in bytes)
};

struct request {
  int iterations = 1;
  std::uint64_t param = 0;  // module-specific (capture: bytes)
  std::string arg{};        // module-specific word, may be empty (ipc: placement)
};

// Thrown by an implementation that cannot run here ("not installed"): reported as
// skipped, never as a number.
struct skipped : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using impl_fn = std::function<std::vector<sample>(const request&)>;

std::map<std::string, impl_fn>& impls();
inline bool register_impl(std::string key, impl_fn fn) {
  impls().emplace(std::move(key), std::move(fn));
  return true;
}

// Child roles of the C++ binary: `subprocess_bench --role <name> ...` runs fn(argc,
// argv) instead of the driver or the server. For modules whose implementation starts
// processes of its own (command::self({"--role", name, args...})); argv[3...] are
// the role's arguments.
using role_fn = std::function<int(int argc, char** argv)>;
std::map<std::string, role_fn>& roles();
inline bool register_role(std::string name, role_fn fn) {
  roles().emplace(std::move(name), std::move(fn));
  return true;
}

// Versions of the peer libraries compiled in ("Boost 1.81.0"), for the table header.
std::vector<std::string>& versions();
inline bool register_version(std::string v) {
  versions().push_back(std::move(v));
  return true;
}

// ---------------------------------------------------------------- driver side --

// Which server process runs a row: the language, how much memory that process
// touched first, and a role so unrelated benchmarks do not share a process
// (capture leaves heap behind that would make a small parent less small).
struct server_spec {
  std::string peer = "cpp";  // cpp | python | node
  std::uint64_t touch_mib = 0;
  std::string role = "main";
  bool operator<(const server_spec& o) const {
    return std::tie(peer, touch_mib, role) < std::tie(o.peer, o.touch_mib, o.role);
  }
};

struct row {
  std::string label;  // what the table shows
  server_spec server;
  std::string key;  // "<module>/<impl>" sent to the server
  int iterations = 1;  // per round
  std::uint64_t param = 0;
  std::string arg{};  // sent after param when not empty
  // Set when the row cannot run at all (e.g. "not built yet"); no server is asked.
  std::string skip_reason{};
};

// latency: a sample is the time of one operation (table: us/ms, lower is better);
// throughput: a sample is the time to move `bytes` (MB/s, higher is better);
// rate: a sample is the time to handle a batch of items: the row's param items, or
// `bytes` when param is 0 (items per second, higher is better; the unit's name is
// benchmark::rate_unit).
enum class unit { latency, throughput, rate };

struct benchmark {
  std::string id;     // short name used in goals
  std::string title;  // first column of the table
  unit kind = unit::latency;
  std::uint64_t bytes = 0;      // throughput: bytes moved per iteration; rate: items per sample
  std::string baseline;         // label of the row all ratios are against
  std::vector<row> rows;
  bool show_extra = false;      // capture: show peak RSS growth (extra) per row, against bytes
  bool show_peak_rss = false;   // pipeline: show peak RSS growth (extra) per row, in MiB
  std::string note{};           // printed under the table
  std::string rate_unit{"items/s"};  // unit::rate: what is counted
};

// A goal: row `label` of benchmark `bench` against row `base_label` of
// `base_bench`; met when ratio = median / (base median * base_scale), each in the
// unit the table shows (us, MB/s, items/s), is <= max_ratio (latency) or >= min_ratio
// (throughput, rate). base_scale states proportionality: "4x the bytes in at most
// 1.25x 4x the time" is base_scale 4, max_ratio 1.25. For rss, extra / bytes. With
// base_bench empty (and not rss): the row's own median in the table's unit, against
// max_ratio/min_ratio as absolute bounds.
struct goal {
  std::string text;
  std::string bench, label;
  std::string base_bench, base_label;  // empty for the rss goal
  std::optional<double> max_ratio{}, min_ratio{};
  bool rss = false;
  double base_scale = 1.0;
};

struct plan_context {
  bool smoke = false;
  int rounds = 1;  // filled in by the plan
};

struct phase {
  std::string name;   // for --only
  std::string title{};  // for a skipped module's line in the table
  int rounds = 1;
  std::vector<benchmark> benchmarks;
  std::vector<goal> goals;
  // A module not built yet: printed as one skipped line.
  std::string skipped_module{};
};

using plan_fn = std::function<phase(const plan_context&)>;
std::vector<std::pair<int, plan_fn>>& plans();
inline bool register_plan(int order, plan_fn fn) {
  plans().emplace_back(order, std::move(fn));
  return true;
}

// ------------------------------------------------------------------- helpers --

// Reads VmRSS / VmHWM (bytes) of this process.
std::uint64_t status_bytes(const char* field);
// Resets VmHWM to the current RSS (Linux >= 4.0); false if not possible.
bool reset_peak_rss();

// Peak RSS growth over one sample: reset the high-water mark, note VmRSS, read VmHWM.
struct rss_probe {
  std::uint64_t before = 0;
  rss_probe() {
    reset_peak_rss();
    before = status_bytes("VmRSS");
  }
  double growth() const {
    std::uint64_t hwm = status_bytes("VmHWM");
    return hwm > before ? double(hwm - before) : 1;  // 1: "measured, no growth"
  }
};

// r.iterations samples of once(), which returns how many bytes it moved: anything but
// r.param is an error, never a sample. Each sample carries its peak RSS growth.
template <class F>
std::vector<sample> timed_bytes(const request& r, F&& once) {
  std::vector<sample> v;
  for (int i = 0; i < r.iterations; ++i) {
    rss_probe probe;
    auto t0 = clock::now();
    const std::uint64_t got = once();
    double ns = double(elapsed_ns(t0));
    if (got != r.param)
      throw std::runtime_error("moved " + std::to_string(got) + " bytes, expected " +
                               std::to_string(r.param));
    v.push_back({ns, probe.growth()});
  }
  return v;
}

}  // namespace bench
