// tests/bench/main.cpp - subprocess_bench: the driver and the C++ peer server.
//
//   subprocess_bench                 run every benchmark, print a Markdown table
//   subprocess_bench --smoke         tiny sizes, one round: checks that every
//                                    implementation runs; no timing claims
//   subprocess_bench --only spawn,capture   run only these phases
//   subprocess_bench --verbose              also each request's wall time (stderr)
//   subprocess_bench --serve --touch-mib N  (internal) a C++ peer server
//   subprocess_bench --role NAME args...    (internal) a child role of a module
//
// See bench.hpp for the protocol. Samples are collected in interleaved rounds: in
// each round every implementation runs a short batch, in a rotating order, so a
// burst of noise from the shared machine hits all of them alike; the table shows
// medians over all samples and ratios against a baseline measured in the same run.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include <subprocess/subprocess.hpp>

#include "bench.hpp"

namespace sp = subprocess;

#ifndef SUBPROCESS_BENCH_PEERS_DIR
#define SUBPROCESS_BENCH_PEERS_DIR "peers"
#endif

namespace bench {

std::map<std::string, impl_fn>& impls() {
  static std::map<std::string, impl_fn> m;
  return m;
}
std::map<std::string, role_fn>& roles() {
  static std::map<std::string, role_fn> m;
  return m;
}
std::vector<std::string>& versions() {
  static std::vector<std::string> v;
  return v;
}
std::vector<std::pair<int, plan_fn>>& plans() {
  static std::vector<std::pair<int, plan_fn>> v;
  return v;
}

std::uint64_t status_bytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  std::size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':')
      return std::stoull(line.substr(n + 1)) * 1024;
  return 0;
}

bool reset_peak_rss() {
  int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

}  // namespace bench

namespace {

// ===================================================================== server ==

volatile char* g_touched = nullptr;  // kept so the touched memory stays mapped

void touch_memory(std::uint64_t mib) {
  if (mib == 0) return;
  std::size_t n = static_cast<std::size_t>(mib) << 20;
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("cannot map " + std::to_string(mib) + " MiB");
  std::memset(p, 1, n);  // every page resident and dirty, as in a real big parent
  g_touched = static_cast<char*>(p);
}

bool write_line(int fd, const std::string& s) {
  std::string l = s + "\n";
  const char* p = l.data();
  std::size_t left = l.size();
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  return true;
}

std::string fmt_num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

int serve(std::uint64_t touch_mib) {
  constexpr int req_fd = 3, rep_fd = 4;
  ::fcntl(req_fd, F_SETFD, FD_CLOEXEC);  // children we start must not hold the protocol
  ::fcntl(rep_fd, F_SETFD, FD_CLOEXEC);
  touch_memory(touch_mib);
  std::string who = "C++ ";
#if defined(__clang__)
  who += "clang++ " __clang_version__;
#elif defined(__GNUC__)
  who += "g++ " __VERSION__;
#endif
  for (auto& v : bench::versions()) who += ", " + v;
  write_line(rep_fd, "ready " + std::to_string(::getpid()) + " " + who);
  FILE* in = ::fdopen(req_fd, "r");
  if (!in) return 1;
  char* line = nullptr;
  std::size_t cap = 0;
  while (::getline(&line, &cap, in) > 0) {
    std::istringstream is(line);
    std::string key;
    bench::request req;
    is >> key >> req.iterations >> req.param >> req.arg;
    std::string reply;
    auto it = bench::impls().find(key);
    if (it == bench::impls().end()) {
      reply = "fail unknown implementation " + key;
    } else {
      try {
        auto samples = it->second(req);
        reply = "ok";
        for (auto& s : samples) {
          // (appending piecewise: g++ 12 -O3 warns falsely (-Wrestrict) on "x" + string&&)
          reply += ' ';
          reply += fmt_num(s.ns);
          if (s.extra != 0) {
            reply += ':';
            reply += fmt_num(s.extra);
          }
        }
      } catch (const bench::skipped& e) {
        reply = std::string("skip ") + e.what();
      } catch (const std::exception& e) {
        reply = std::string("fail ") + e.what();
      }
    }
    for (char& c : reply)
      if (c == '\n') c = ' ';
    if (!write_line(rep_fd, reply)) break;
  }
  std::free(line);
  return 0;
}

// ===================================================================== driver ==

struct server {
  sp::process proc;
  sp::pipe_writer req;
  sp::pipe_reader rep;
  std::string version;
  std::string dead;  // why it cannot be used ("not installed", a crash, ...)
};

struct result {
  std::vector<bench::sample> samples;
  std::string skip, fail;
};

std::string peers_dir = SUBPROCESS_BENCH_PEERS_DIR;
bool verbose = false;  // --verbose: each request's wall time on stderr

std::unique_ptr<server> start_server(const bench::server_spec& s, std::chrono::seconds timeout) {
  auto srv = std::make_unique<server>();
  std::vector<std::string> args{"--touch-mib", std::to_string(s.touch_mib)};
  sp::command cmd{"true"};
  if (s.peer == "cpp") {
    std::vector<std::string> a{"--serve"};
    a.insert(a.end(), args.begin(), args.end());
    cmd = sp::command::self(a);
  } else if (s.peer == "python") {
    std::vector<std::string> a{"python3", peers_dir + "/peer.py"};
    a.insert(a.end(), args.begin(), args.end());
    cmd = sp::command(a);
  } else if (s.peer == "node") {
    std::vector<std::string> a{"node", "--expose-gc", peers_dir + "/peer.js"};
    a.insert(a.end(), args.begin(), args.end());
    cmd = sp::command(a);
  }
  int to_child[2], from_child[2];
  if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe2 failed");
  sp::detail::unique_fd c_in(to_child[0]), c_out(from_child[1]);
  srv->req = sp::pipe_writer(sp::detail::unique_fd(to_child[1]), "requests", s.peer);
  srv->rep = sp::pipe_reader(sp::detail::unique_fd(from_child[0]), "replies", s.peer);
  cmd.in(sp::null).out(sp::null).map_fd(3, c_in.get()).map_fd(4, c_out.get());
  try {
    srv->proc = cmd.spawn();
  } catch (const sp::spawn_error& e) {
    if (e.code() == std::errc::no_such_file_or_directory) {
      srv->dead = "skipped (not installed)";
      return srv;
    }
    throw;
  }
  c_in.reset();
  c_out.reset();
  auto line = srv->rep.read_line_for(timeout);
  if (!line || line->rfind("ready ", 0) != 0) {
    srv->dead = "server did not start" + (line ? ": " + *line : std::string());
    srv->proc.kill();
    srv->proc.wait();
    return srv;
  }
  auto sp1 = line->find(' ', 6);
  srv->version = sp1 == std::string::npos ? "" : line->substr(sp1 + 1);
  return srv;
}

void ask(server& srv, const bench::row& r, result& out, std::chrono::seconds timeout) {
  if (!srv.dead.empty()) {
    if (srv.dead.rfind("skipped", 0) == 0)
      out.skip = srv.dead;
    else
      out.fail = srv.dead;
    return;
  }
  try {
    srv.req.write_all(r.key + " " + std::to_string(r.iterations) + " " + std::to_string(r.param) +
                      (r.arg.empty() ? "" : " " + r.arg) + "\n");
  } catch (const sp::io_error& e) {
    srv.dead = std::string("server died: ") + e.what();
    out.fail = srv.dead;
    return;
  }
  auto line = srv.rep.read_line_for(timeout);
  if (!line) {
    srv.dead = srv.rep.eof() ? "server died" : "server timed out";
    out.fail = srv.dead;
    return;
  }
  std::istringstream is(*line);
  std::string word;
  is >> word;
  std::string rest;
  std::getline(is, rest);
  if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
  if (word == "skip") {
    out.skip = "skipped (" + rest + ")";
  } else if (word == "fail") {
    out.fail = rest;
  } else if (word == "ok") {
    std::istringstream vs(rest);
    std::string tok;
    while (vs >> tok) {
      bench::sample s;
      auto colon = tok.find(':');
      s.ns = std::stod(tok.substr(0, colon));
      if (colon != std::string::npos) s.extra = std::stod(tok.substr(colon + 1));
      out.samples.push_back(s);
    }
  } else {
    out.fail = "bad reply: " + *line;
  }
}

void stop_server(server& srv) {
  if (!srv.proc.valid()) return;
  srv.req.close();  // EOF: the server exits
  if (!srv.proc.wait_for(std::chrono::seconds(10))) {
    srv.proc.kill();
    srv.proc.wait();
  }
}

// ---------------------------------------------------------------- reporting --

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Per-sample figure in the unit the table shows: microseconds, MB/s, or items per
// second. A row's own param, when set, is its byte (item) count (a row may move a
// different size).
std::vector<double> values(const bench::benchmark& b, const bench::row* row, const result& r) {
  double bytes = double(row && row->param ? row->param : b.bytes);
  std::vector<double> v;
  for (auto& s : r.samples) {
    switch (b.kind) {
      case bench::unit::latency: v.push_back(s.ns / 1e3); break;
      case bench::unit::throughput: v.push_back(bytes / s.ns * 1e3); break;
      case bench::unit::rate: v.push_back(bytes / s.ns * 1e9); break;
    }
  }
  return v;
}

const bench::row* find_row(const bench::benchmark& b, const std::string& label) {
  for (auto& r : b.rows)
    if (r.label == label) return &r;
  return nullptr;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string show_latency(double us) {
  if (us >= 10000) return fmt("%.1f ms", us / 1000);
  if (us >= 1000) return fmt("%.2f ms", us / 1000);
  return fmt("%.0f us", us);
}
std::string show_rate(double per_s, const std::string& unit) {
  std::string digits = fmt("%.0f", per_s), grouped;  // 512,345 tasks/s
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  return grouped + " " + unit;
}
std::string show(const bench::benchmark& b, double v) {
  switch (b.kind) {
    case bench::unit::latency: return show_latency(v);
    case bench::unit::throughput: return fmt("%.0f MB/s", v);
    case bench::unit::rate: return show_rate(v, b.rate_unit);
  }
  return "?";
}

std::string read_first(const char* path, const char* key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) {
      auto c = line.find(':');
      std::string v = c == std::string::npos ? line : line.substr(c + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "?";
}

std::string machine_header(bool smoke) {
  utsname u{};
  ::uname(&u);
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  double load[3] = {0, 0, 0};
  ::getloadavg(load, 3);
  std::ostringstream o;
  o << (smoke ? "## subprocess benchmarks: SMOKE RUN (tiny sizes, no timing claims)\n\n"
              : "## subprocess benchmarks\n\n");
  o << "- machine: " << ::sysconf(_SC_NPROCESSORS_ONLN) << " CPUs, "
    << read_first("/proc/cpuinfo", "model name") << ", kernel " << u.release << " (" << u.machine
    << ")\n";
  o << "- date: " << date << "; load average at start " << fmt("%.2f", load[0]) << "\n";
  return o.str();
}

struct run_state {
  std::map<std::string, std::map<std::string, result>> results;  // bench id -> label -> result
  std::map<std::string, std::string> versions;                  // peer -> version
  bool failed = false;
};

const result* find_result(const run_state& st, const std::string& b, const std::string& l) {
  auto i = st.results.find(b);
  if (i == st.results.end()) return nullptr;
  auto j = i->second.find(l);
  return j == i->second.end() ? nullptr : &j->second;
}

const bench::benchmark* find_bench(const std::vector<bench::phase>& phases, const std::string& id) {
  for (auto& p : phases)
    for (auto& b : p.benchmarks)
      if (b.id == id) return &b;
  return nullptr;
}

std::optional<double> median_of(const std::vector<bench::phase>& phases, const run_state& st,
                                const std::string& bid, const std::string& label) {
  auto* b = find_bench(phases, bid);
  auto* r = find_result(st, bid, label);
  if (!b || !r || r->samples.empty()) return std::nullopt;
  return median(values(*b, find_row(*b, label), *r));
}

// A Markdown table cell: a '|' in a title ("head | cat") would split the cell.
std::string cell(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

void print_report(const std::vector<bench::phase>& phases, const run_state& st, bool smoke,
                  const std::string& header) {
  std::ostringstream o;
  o << header;
  if (!st.versions.empty()) {
    o << "- peers:";
    bool first = true;
    for (auto& [peer, v] : st.versions) {
      o << (first ? " " : "; ") << peer << ": " << v;
      first = false;
    }
    o << "\n";
  }
  o << "- medians over all samples; min-max over all samples; ratio = median / median of the "
       "row marked 1.00 (the baseline named in the benchmark), measured in this same run, "
       "implementations interleaved round by round\n\n";
  o << "| benchmark | implementation | median | min-max | ratio | notes |\n";
  o << "|---|---|---:|---:|---:|---|\n";
  for (auto& ph : phases) {
    if (!ph.skipped_module.empty()) {
      o << "| " << cell(ph.title.empty() ? ph.name : ph.title) << " | - | - | - | - | skipped: " << ph.skipped_module << " |\n";
      continue;
    }
    for (auto& b : ph.benchmarks) {
      std::string base_bench = b.id, base_label = b.baseline;
      auto base = median_of(phases, st, base_bench, base_label);
      for (auto& r : b.rows) {
        const result* res = find_result(st, b.id, r.label);
        o << "| " << cell(b.title) << " | " << cell(r.label) << " | ";
        if (!res || (!res->skip.empty() && res->samples.empty())) {
          o << "- | - | - | " << (res ? res->skip : "not run") << " |\n";
          continue;
        }
        if (!res->fail.empty()) {
          o << "- | - | - | FAILED: " << res->fail << " |\n";
          continue;
        }
        auto v = values(b, &r, *res);
        double m = median(v);
        auto [mn, mx] = std::minmax_element(v.begin(), v.end());
        o << show(b, m) << " | " << show(b, *mn) << " - " << show(b, *mx) << " | ";
        if (base && *base > 0)
          o << fmt("%.2f", m / *base);
        else
          o << "-";
        o << " | n=" << v.size();
        if (r.label == b.baseline) o << "; baseline";
        if (b.show_extra && b.bytes > 0) {
          std::vector<double> ex;
          for (auto& s : res->samples) ex.push_back(s.extra);
          double peak = *std::max_element(ex.begin(), ex.end());
          double bytes = double(r.param ? r.param : b.bytes);
          o << "; peak RSS growth " << fmt("%.0f MiB", peak / 1048576.0) << " = "
            << fmt("%.2fx", peak / bytes) << " the output";
        }
        if (b.show_peak_rss) {
          double peak = 0;
          for (auto& s : res->samples) peak = std::max(peak, s.extra);
          o << "; peak RSS growth " << fmt("%.1f MiB", peak / 1048576.0);
        }
        o << " |\n";
      }
    }
  }
  // Goals
  bool any_goal = false;
  for (auto& ph : phases) any_goal = any_goal || !ph.goals.empty();
  if (any_goal) {
    o << "\n| goal | measured | " << (smoke ? "(smoke: not judged)" : "met?") << " |\n|---|---:|---|\n";
    for (auto& ph : phases)
      for (auto& g : ph.goals) {
        std::optional<double> val;
        if (g.rss) {
          auto* r = find_result(st, g.bench, g.label);
          auto* b = find_bench(phases, g.bench);
          auto* row = b ? find_row(*b, g.label) : nullptr;
          if (r && row && !r->samples.empty() && (row->param || b->bytes)) {
            double peak = 0;
            for (auto& s : r->samples) peak = std::max(peak, s.extra);
            val = peak / double(row->param ? row->param : b->bytes);
          }
        } else if (g.base_bench.empty()) {
          val = median_of(phases, st, g.bench, g.label);  // an absolute bound
        } else {
          auto a = median_of(phases, st, g.bench, g.label);
          auto b = median_of(phases, st, g.base_bench, g.base_label);
          if (a && b && *b > 0) val = *a / (*b * g.base_scale);
        }
        o << "| " << cell(g.text) << " | ";
        if (!val) {
          o << "- | not measured |\n";
          continue;
        }
        if (!g.rss && g.base_bench.empty())
          o << show(*find_bench(phases, g.bench), *val) << " | ";
        else
          o << fmt("%.2fx", *val) << " | ";
        bool met = (!g.max_ratio || *val <= *g.max_ratio) && (!g.min_ratio || *val >= *g.min_ratio);
        o << (smoke ? "-" : met ? "yes" : "**no**") << " |\n";
      }
  }
  for (auto& ph : phases)
    for (auto& b : ph.benchmarks)
      if (!b.note.empty()) o << "\n" << b.title << ": " << b.note << "\n";
  std::cout << o.str() << std::flush;
}

int drive(bool smoke, const std::set<std::string>& only) {
  auto& registered = bench::plans();
  std::sort(registered.begin(), registered.end(),
            [](auto& a, auto& b) { return a.first < b.first; });
  bench::plan_context ctx;
  ctx.smoke = smoke;
  std::vector<bench::phase> phases;
  for (auto& [order, fn] : registered) {
    (void)order;
    auto ph = fn(ctx);
    if (!only.empty() && !only.count(ph.name)) continue;
    phases.push_back(std::move(ph));
  }
  const std::string header = machine_header(smoke);  // date and load at the start
  run_state st;
  const auto start_timeout = std::chrono::seconds(smoke ? 60 : 120);
  const auto req_timeout = std::chrono::seconds(smoke ? 60 : 600);
  for (auto& ph : phases) {
    if (!ph.skipped_module.empty()) continue;
    std::cerr << "bench: phase " << ph.name << "\n";
    // Start every server the phase needs at once (touching 2 GiB takes a while).
    std::map<bench::server_spec, std::unique_ptr<server>> servers;
    for (auto& b : ph.benchmarks)
      for (auto& r : b.rows)
        if (r.skip_reason.empty() && !servers.count(r.server))
          servers[r.server] = start_server(r.server, start_timeout);
    for (auto& [spec, srv] : servers)
      if (srv->dead.empty() && !srv->version.empty()) st.versions[spec.peer] = srv->version;
    // The rows, flattened; each round starts one further along (ABC, BCA, CAB, ...).
    std::vector<std::pair<bench::benchmark*, bench::row*>> order;
    for (auto& b : ph.benchmarks)
      for (auto& r : b.rows) {
        auto& res = st.results[b.id][r.label];
        if (!r.skip_reason.empty())
          res.skip = r.skip_reason;
        else
          order.emplace_back(&b, &r);
      }
    for (int round = 0; round < ph.rounds; ++round) {
      std::cerr << "bench:   round " << round + 1 << "/" << ph.rounds << "\n";
      for (std::size_t k = 0; k < order.size(); ++k) {
        auto [b, r] = order[(k + static_cast<std::size_t>(round)) % order.size()];
        auto& res = st.results[b->id][r->label];
        if (!res.skip.empty() || !res.fail.empty()) continue;
        auto t0 = bench::clock::now();
        ask(*servers[r->server], *r, res, req_timeout);
        if (!res.fail.empty()) std::cerr << "bench: " << r->label << ": FAILED: " << res.fail << "\n";
        if (verbose)
          std::cerr << "bench:     " << fmt("%.2f s ", double(bench::elapsed_ns(t0)) / 1e9) << b->id << ": "
                    << r->label << "\n";
      }
    }
    for (auto& [spec, srv] : servers) stop_server(*srv);
  }
  for (auto& [b, rows] : st.results)
    for (auto& [l, r] : rows)
      if (!r.fail.empty()) st.failed = true;
  print_report(phases, st, smoke, header);
  return st.failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 3 && std::string(argv[1]) == "--role") {
      auto it = bench::roles().find(argv[2]);
      if (it == bench::roles().end()) {
        std::cerr << "subprocess_bench: unknown role " << argv[2] << "\n";
        return 2;
      }
      try {
        return it->second(argc, argv);
      } catch (const std::exception& e) {
        std::cerr << "subprocess_bench --role " << argv[2] << ": " << e.what() << "\n";
        return 1;
      }
    }
    bool serve_mode = false, smoke = false;
    std::uint64_t touch = 0;
    std::set<std::string> only;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--serve") {
        serve_mode = true;
      } else if (a == "--touch-mib" && i + 1 < argc) {
        touch = std::stoull(argv[++i]);
      } else if (a == "--verbose") {
        verbose = true;
      } else if (a == "--smoke") {
        smoke = true;
      } else if (a == "--peers" && i + 1 < argc) {
        peers_dir = argv[++i];
      } else if (a == "--only" && i + 1 < argc) {
        std::stringstream ss(argv[++i]);
        std::string w;
        while (std::getline(ss, w, ',')) only.insert(w);
      } else {
        std::cerr << "usage: subprocess_bench [--smoke] [--only phase,...] [--peers dir] [--verbose]\n";
        return 2;
      }
    }
    return serve_mode ? serve(touch) : drive(smoke, only);
  } catch (const std::exception& e) {
    std::cerr << "subprocess_bench: " << e.what() << "\n";
    return 1;
  }
}
