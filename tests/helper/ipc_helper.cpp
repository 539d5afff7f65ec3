// ipc_helper - the ipc tests' sparring partner: a child that talks over the channel
// its parent gave it (NODE_CHANNEL_FD), driven by its arguments. Kept apart from
// sp_helper so that sp_helper stays free of nlohmann/json.
//
// It runs its arguments as actions, left to right, and exits 0 at the end:
//
//   print-env           print NODE_CHANNEL_FD and NODE_CHANNEL_SERIALIZATION_MODE
//                       (or <unset>), one per line, to stdout
//   connect             ipc::connect_to_parent(); on failure print the error to stdout
//                       and exit 3
//   print-cloexec       print "cloexec" or "inherit" for the channel fd (after connect)
//   echo                send every message back until the end of the channel
//   echo-n N            send back N messages, then go on with the next action
//   send JSON           send one message
//   serve               answer JSON-RPC until the end of the channel; methods:
//                         add/subtract/multiply/divide {a, b}  (divide by 0: error -32602)
//                         echo <params>      returns params
//                         sleep {ms}         sleeps, then returns ms
//                         exit {code}        exits at once with code, no answer
//                         fail {}            throws std::runtime_error("boom")
//                         big {n}            returns a string of n 'x'
//                         count {}           returns how many calls it has answered
//                         pid {}             returns getpid()
//                         notes {n}          sends n messages {"note": 0..n-1}, then
//                                            returns n
//                         work {ms, n?}      sleeps ms, returns {"pid": getpid(), "ms": ms,
//                                            "n": n} (the pool tests' slow task)
//                         spin {ms}          keeps the CPU busy for ms, returns getpid()
//                         square [n]         returns n*n (also {"n": n})
//                         stop {}            raises SIGSTOP (answers once continued)
//                         garbage {}         writes "garbage\n" on the channel, then
//                                            sleeps (never answers)
//                         env {name}         the variable's value, or null
//                         deep {n}           returns n nested arrays [[[...]]] (deeper
//                                            than the parent's codec accepts for n > 1000)
//   raw TEXT            write TEXT to the channel as it is (\n, \\ and \xNN decoded)
//   raw-bytes N C       write N bytes C (no newline)
//   expect-eof          read and drop messages until the end of the channel
//   receive-one         wait for one message (then go on)
//   close               close the channel
//   sleep MS            sleep MS milliseconds
//   exit N              exit with code N now
//   stop-self           raise SIGSTOP
//   ignore-term         ignore SIGTERM from now on (a worker that must be SIGKILLed)
//   grandchild-pid      fork a grandchild that sleeps forever holding every fd (the
//                       channel too); print its pid to stdout
//   flood-lines         write "garbage\n" to the channel until it breaks
//   serve-nan           a hand-written JSON-RPC loop: "nan" is answered with a line
//                       that is not JSON ("result":NaN), "square"/"pid" as serve()
//   dribble MS          write one byte 'x' to the channel every MS ms, never a newline,
//                       until the parent is gone
//   touch FILE          create FILE containing "done\n" (a marker: the cleanup ran)
//   flood-bytes         write 'x' (no newline ever) to the channel until it breaks
//   on-term-touch FILE  from now on SIGTERM creates FILE (empty) and exits 0: a
//                       marker that SIGTERM came, even when the parent cannot see
//                       the exit status (SIGCHLD ignored)
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <subprocess/ipc.hpp>

namespace ipc = subprocess::ipc;
using json = ipc::json;

namespace {

char term_marker[4096];

extern "C" void on_term(int) {
  int fd = ::open(term_marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);  // async-signal-safe
  if (fd >= 0) ::close(fd);
  ::_exit(0);
}

std::string decode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    if (c == 'n') {
      out += '\n';
    } else if (c == 'x' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

void write_raw(int fd, const std::string& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::_Exit(errno == EPIPE ? 141 : 120);
    }
    off += static_cast<std::size_t>(n);
  }
}

ipc::handler_map methods(int& answered, ipc::channel& ch) {
  auto num = [](const json& p, const char* k) { return p.at(k).get<double>(); };
  return {
      {"add", [&, num](const json& p) -> json { ++answered; return num(p, "a") + num(p, "b"); }},
      {"subtract", [&, num](const json& p) -> json { ++answered; return num(p, "a") - num(p, "b"); }},
      {"multiply", [&, num](const json& p) -> json { ++answered; return num(p, "a") * num(p, "b"); }},
      {"divide",
       [&, num](const json& p) -> json {
         ++answered;
         if (num(p, "b") == 0) throw ipc::rpc_error(ipc::rpc_error::invalid_params, "division by zero", json{{"a", p["a"]}});
         return num(p, "a") / num(p, "b");
       }},
      {"echo", [&](const json& p) -> json { ++answered; return p; }},
      {"sleep",
       [&](const json& p) -> json {
         ++answered;
         std::this_thread::sleep_for(std::chrono::milliseconds(p.at("ms").get<int>()));
         return p.at("ms");
       }},
      {"exit", [](const json& p) -> json { std::fflush(stdout); std::_Exit(p.at("code").get<int>()); }},
      {"fail", [](const json&) -> json { throw std::runtime_error("boom"); }},
      {"big", [&](const json& p) -> json { ++answered; return std::string(p.at("n").get<std::size_t>(), 'x'); }},
      {"count", [&](const json&) -> json { return ++answered; }},
      {"pid", [&](const json&) -> json { ++answered; return ::getpid(); }},
      {"notes",
       [&](const json& p) -> json {
         ++answered;
         const int n = p.at("n").get<int>();
         for (int k = 0; k < n; ++k) ch.send({{"note", k}});
         return n;
       }},
      {"work",
       [&](const json& p) -> json {
         ++answered;
         int ms = p.at("ms").get<int>();
         std::this_thread::sleep_for(std::chrono::milliseconds(ms));
         return {{"pid", ::getpid()}, {"ms", ms}, {"n", p.value("n", json(nullptr))}};
       }},
      {"spin",
       [&](const json& p) -> json {
         ++answered;
         auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(p.at("ms").get<int>());
         volatile std::uint64_t x = 0;
         while (std::chrono::steady_clock::now() < end) x = x + 1;
         return ::getpid();
       }},
      {"square",
       [&](const json& p) -> json {
         ++answered;
         auto n = (p.is_array() ? p.at(0) : p.at("n")).get<std::int64_t>();
         return n * n;
       }},
      {"stop", [&](const json&) -> json { ++answered; std::raise(SIGSTOP); return ::getpid(); }},
      {"garbage",
       [&](const json&) -> json {
         write_raw(ch.fd(), "garbage\n");  // not JSON; then no answer until killed
         for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
       }},
      {"deep",
       [&](const json& p) -> json {
         ++answered;
         json v = json::array();
         for (std::size_t k = 1; k < p.at("n").get<std::size_t>(); ++k) v = json::array({std::move(v)});
         return v;
       }},
      {"env",
       [&](const json& p) -> json {
         ++answered;
         const char* v = std::getenv(p.at("name").get<std::string>().c_str());
         return v ? json(v) : json(nullptr);
       }},
  };
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  ipc::channel ch;
  int answered = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::string& act = a[i];
    auto next = [&] { return i + 1 < a.size() ? a[++i] : std::string(); };
    if (act == "print-env") {
      const char* fd = std::getenv("NODE_CHANNEL_FD");
      const char* mode = std::getenv("NODE_CHANNEL_SERIALIZATION_MODE");
      std::printf("%s\n%s\n", fd ? fd : "<unset>", mode ? mode : "<unset>");
      std::fflush(stdout);
    } else if (act == "connect") {
      try {
        ch = ipc::connect_to_parent();
      } catch (const ipc::channel_error& e) {
        std::printf("%s\n", e.what());
        return 3;
      }
    } else if (act == "print-cloexec") {
      int flags = ::fcntl(ch.fd(), F_GETFD);
      std::printf("%s\n", (flags & FD_CLOEXEC) ? "cloexec" : "inherit");
      std::fflush(stdout);
    } else if (act == "echo") {
      while (auto m = ch.receive()) ch.send(*m);
    } else if (act == "echo-n") {
      int n = std::stoi(next());
      for (int k = 0; k < n; ++k)
        if (auto m = ch.receive()) ch.send(*m);
    } else if (act == "send") {
      ch.send(json::parse(next()));
    } else if (act == "serve") {
      ipc::serve(ch, methods(answered, ch));
    } else if (act == "serve-nan") {
      // A JSON-RPC worker written by hand, as in a language whose serializer writes
      // NaN (Python's json.dumps does): method "nan" is answered with a line that
      // names its id but is not JSON; "square" and "pid" as serve() does; any other
      // request (a heartbeat) with null.
      while (auto m = ch.receive()) {
        if (!m->is_object() || !m->contains("id") || !m->contains("method")) continue;
        const json id = m->at("id");
        const std::string method = m->at("method").get<std::string>();
        if (method == "nan") {
          write_raw(ch.fd(), "{\"jsonrpc\":\"2.0\",\"id\":" + id.dump() + ",\"result\":NaN}\n");
          continue;
        }
        json result = nullptr;
        if (method == "square") {
          const json& q = m->at("params");
          auto n = (q.is_array() ? q.at(0) : q.at("n")).get<std::int64_t>();
          result = n * n;
        } else if (method == "pid") {
          result = ::getpid();
        }
        ch.send(json{{"jsonrpc", "2.0"}, {"id", id}, {"result", result}});
      }
    } else if (act == "raw") {
      write_raw(ch.fd(), decode(next()));
    } else if (act == "raw-bytes") {
      std::size_t n = std::stoul(next());
      std::string c = next();
      write_raw(ch.fd(), std::string(n, c.empty() ? 'x' : c[0]));
    } else if (act == "expect-eof") {
      for (;;) {
        try {
          if (!ch.receive()) break;
        } catch (const ipc::channel_error&) {
          if (ch.eof()) break;
        }
      }
    } else if (act == "receive-one") {
      (void)ch.receive();
    } else if (act == "close") {
      ch.close();
    } else if (act == "sleep") {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(next())));
    } else if (act == "exit") {
      std::fflush(stdout);
      std::_Exit(std::stoi(next()));
    } else if (act == "stop-self") {
      std::raise(SIGSTOP);
    } else if (act == "grandchild-pid") {
      int sync[2];
      if (::pipe(sync) != 0) return 4;
      pid_t g = ::fork();
      if (g == 0) {
        ::close(sync[1]);  // tells the parent the grandchild is set up
        for (;;) ::pause();
      }
      ::close(sync[1]);
      char c;
      while (::read(sync[0], &c, 1) < 0 && errno == EINTR) {
      }
      ::close(sync[0]);
      std::printf("%d\n", static_cast<int>(g));
      std::fflush(stdout);
    } else if (act == "flood-lines") {
      std::string lines;
      for (int k = 0; k < 4096; ++k) lines += "garbage\n";
      for (;;) write_raw(ch.fd(), lines);  // exits 141 when the parent is gone
    } else if (act == "dribble") {
      const int ms = std::stoi(next());
      for (;;) {
        write_raw(ch.fd(), "x");  // exits 141 when the parent is gone
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      }
    } else if (act == "touch") {
      std::FILE* f = std::fopen(next().c_str(), "w");
      if (!f || std::fputs("done\n", f) < 0 || std::fclose(f) != 0) return 5;
    } else if (act == "flood-bytes") {
      const std::string chunk(1 << 16, 'x');
      for (;;) write_raw(ch.fd(), chunk);  // exits 141 when the parent is gone
    } else if (act == "on-term-touch") {
      const std::string f = next();
      if (f.empty() || f.size() >= sizeof term_marker) return 6;
      f.copy(term_marker, f.size());
      term_marker[f.size()] = '\0';
      struct sigaction sa {};
      sa.sa_handler = on_term;
      ::sigaction(SIGTERM, &sa, nullptr);
    } else if (act == "ignore-term") {
      std::signal(SIGTERM, SIG_IGN);
    } else {
      std::fprintf(stderr, "ipc_helper: unknown action '%s'\n", act.c_str());
      return 2;
    }
  }
  return 0;
}
