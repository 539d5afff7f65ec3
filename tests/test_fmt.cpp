// Tests for fmt.hpp (the fmt formatters) and for the operator<< beside each value
// type: both print the same one-line text, checked here on values from real runs.
#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <iomanip>
#include <optional>
#include <sstream>
#include <stdexcept>

#include <poll.h>
#include <unistd.h>

#include <fmt/ostream.h>

#include <subprocess/fmt.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

// fmt and operator<< agree, and this is the text.
template <class T>
std::string both(const T& x) {
  const std::string f = fmt::format("{}", x);
  CHECK(testing::printed(x) == f);
  return f;
}

// A helper child that has printed "ready" (so its SIGTERM handling is set up).
sp::process ready_child(std::vector<std::string> actions) {
  actions.insert(actions.end(), {"ready", "sleep", "60000"});
  auto p = testing::helper(std::move(actions)).out(sp::pipe).spawn();
  REQUIRE(p.out().read_line() == "ready");
  return p;
}

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

}  // namespace

TEST_CASE("fmt formatters") {
  CHECK(fmt::format("{}", sp::exit_status::exited(3)) == "exited with code 3");
  CHECK(fmt::format("{}", sp::exit_status::signaled(SIGKILL)) == "killed by SIGKILL");
  CHECK(fmt::format("[{:>20}]", sp::exit_status::exited(0)) == "[  exited with code 0]");
  CHECK(fmt::format("{}", sp::command{"echo", "a b"}) == "echo 'a b'");
  auto env = sp::environment::empty().set("USER", "me").set("API_TOKEN", "t0ps3cret");
  auto s = fmt::format("{}", env);
  CHECK(s == "API_TOKEN=***REDACTED***\nUSER=me\n");
  CHECK(s.find("t0ps3cret") == std::string::npos);
  auto st = testing::helper({"exit", "9"}).spawn().wait();
  CHECK(fmt::format("child {}", st) == "child exited with code 9");
}

TEST_CASE("fmt and operator<<: the same text for every value type") {
  SECTION("exit_status, command, spawn_backend, output_limit") {
    CHECK(both(sp::exit_status::exited(3)) == "exited with code 3");
    CHECK(both(sp::exit_status::signaled(SIGSEGV, true)) == "killed by SIGSEGV (core dumped)");
    CHECK(both(testing::helper({"exit", "7"}).spawn().wait()) == "exited with code 7");
    CHECK(both(sp::command{"echo", "a b", "it's"}) == "echo 'a b' 'it'\\''s'");
    CHECK(both(sp::spawn_backend::automatic) == "automatic");
    CHECK(both(sp::spawn_backend::posix_spawn) == "posix_spawn");
    CHECK(both(sp::spawn_backend::clone_vfork) == "clone_vfork");
    CHECK(both(sp::output_limit::kill) == "kill");
    CHECK(both(sp::output_limit::truncate) == "truncate");
    CHECK(both(sp::timeout_policy{}) == "SIGKILL");
    CHECK(both(sp::timeout_policy::kill_with(SIGTERM, 2s)) == "SIGTERM, then SIGKILL after 2000 ms");
    CHECK(both(sp::timeout_policy::leave_running()) == "leave running");
    // What fmt.hpp's manual tells fmt users to do for the pool/ipc types, which have
    // operator<< but no formatter: fmt::streamed finds the operator<< template.
    CHECK(fmt::format("{}", fmt::streamed(sp::exit_status::exited(2))) == "exited with code 2");
    CHECK(fmt::format("[{:>10}]", fmt::streamed(sp::output_limit::kill)) == "[      kill]");
  }
  SECTION("timeout_outcome, cancel_policy, tree_mechanism, tree_usage, pattern") {
    sp::timeout_outcome o;
    CHECK(both(o) == "still running");
    o.still_running = true;
    CHECK(both(o) == "still running; left to the caller");
    // From a real timeout: SIGTERM, ignored, then SIGKILL after the grace.
    auto t = sp::timeout_policy::kill_with(SIGTERM, 50ms);
    CHECK(both(t) == "SIGTERM, then SIGKILL after 50 ms");
    try {
      sp::run(testing::helper({"ignore-term", "sleep", "60000"}), {.timeout = 300ms, .on_timeout = t});
      FAIL("no timeout");
    } catch (const sp::timeout_error& e) {
      // (SIGTERM alone if the helper had not reached ignore-term yet: a loaded machine)
      CHECK(both(e.outcome()) == (e.outcome().escalated ? "killed by SIGKILL; signal sent, then SIGKILL"
                                                         : "killed by SIGTERM; signal sent"));
    }
    CHECK(both(sp::timeout_outcome{.status = sp::exit_status::exited(0)}) == "exited with code 0");
    CHECK(both(sp::cancel_policy::keep) == "keep");
    CHECK(both(sp::cancel_policy::kill) == "kill");
    CHECK(both(sp::tree_mechanism::cgroup) == "cgroup v2");
    CHECK(both(sp::tree_mechanism::subreaper) == "subreaper");
    sp::tree_usage u{.cpu = 1200us, .user = 1000us, .system = 200us, .memory_peak = 4096};
    CHECK(both(u) == "cpu 1200 us (user 1000, system 200); peak memory 4096 bytes");
    u.memory_peak.reset();
    CHECK(both(u).ends_with("peak memory unavailable (no memory.peak: memory controller not enabled)"));
    CHECK(both(sp::pattern("ready\n")) == "\"ready\\n\"");
    CHECK(both(sp::pattern::regex("\\$ ")) == "/\\$ /");
    CHECK(fmt::format("[{:>9}]", sp::pattern("ok")) == "[     \"ok\"]");
  }
  SECTION("the format spec of a string applies to the whole text") {
    CHECK(fmt::format("[{:<12}]", sp::spawn_backend::automatic) == "[automatic   ]");
    CHECK(fmt::format("[{:*^14}]", sp::command{"echo", "a b"}) == "[**echo 'a b'**]");
    CHECK(fmt::format("[{:.6}]", sp::exit_status::exited(1)) == "[exited]");
    // operator<< honours width and fill the same way.
    std::ostringstream os;
    os << '[' << std::setw(20) << sp::exit_status::exited(0) << ']';
    CHECK(os.str() == "[  exited with code 0]");
    os.str("");
    os << '[' << std::left << std::setfill('.') << std::setw(13) << sp::command{"echo", "a b"} << ']';
    CHECK(os.str() == "[echo 'a b'...]");
  }
  SECTION("environment: always redacted, one line per variable") {
    auto env = sp::environment::empty()
                   .set("USER", "me")
                   .set("API_TOKEN", "t0ps3cret")
                   .set("DB", "postgres://admin:hunter2@db/app");
    const auto text = both(env);
    CHECK(text == "API_TOKEN=***REDACTED***\nDB=postgres://admin:***REDACTED***@db/app\nUSER=me\n");
    CHECK(text.find("t0ps3cret") == std::string::npos);
    CHECK(text.find("hunter2") == std::string::npos);
    // The command's text never shows its environment.
    CHECK(both(sp::command{"env"}.env(env)) == "env");
  }
  SECTION("signal_info: the sender, or the kernel, and a sigqueue value") {
    sp::signal_set set{SIGUSR1, SIGUSR2};
    REQUIRE(::kill(::getpid(), SIGUSR1) == 0);
    auto a = set.wait_for(5s);
    REQUIRE(a);
    CHECK(both(*a) == "SIGUSR1 from pid " + std::to_string(::getpid()) + " (uid " + std::to_string(::getuid()) + ")");
    sigval val{};
    val.sival_int = 7;
    REQUIRE(::sigqueue(::getpid(), SIGUSR2, val) == 0);
    auto b = set.wait_for(5s);
    REQUIRE(b);
    CHECK(both(*b) ==
          "SIGUSR2 from pid " + std::to_string(::getpid()) + " (uid " + std::to_string(::getuid()) + "), value 7");
    sp::signal_info k;
    k.signal = SIGINT;
    k.code = SI_KERNEL;
    CHECK(both(k) == "SIGINT from the kernel");
    CHECK(fmt::format("{:>8}|", sp::signal_info{.signal = SIGHUP}) == "  SIGHUP|");
  }
  SECTION("shutdown_entry and shutdown_result, from a real shutdown") {
    std::vector<sp::process> ps;
    ps.push_back(ready_child({"term-exits-after", "0"}));
    ps.push_back(ready_child({"ignore-term"}));
    ps.push_back(testing::helper({"exit", "3"}).spawn());
    pollfd pfd{ps[2].pidfd(), POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 10000) == 1);  // exited, not reaped yet
    auto r = sp::shutdown(ps, 300ms);
    REQUIRE(r.processes.size() == 3);
    const auto& e = r.processes;
    CHECK(both(e[0]) == "pid " + std::to_string(e[0].pid) + " '" + ps[0].command_line() +
                            "' exited with code 0 after " + ms(e[0].exited_after));
    CHECK(both(e[1]) == "pid " + std::to_string(e[1].pid) + " '" + ps[1].command_line() +
                            "' killed by SIGKILL after " + ms(e[1].exited_after) + ", needed SIGKILL");
    CHECK(both(e[2]) == "pid " + std::to_string(e[2].pid) + " '" + ps[2].command_line() +
                            "' exited with code 3, had already exited");
    CHECK(both(r) == "3 processes stopped in " + ms(r.elapsed) + ": 2 gracefully, 1 needed SIGKILL");
    std::vector<sp::process> one;
    one.push_back(ready_child({}));
    auto r1 = sp::shutdown(one, 10s);
    CHECK(both(r1) == "1 process stopped in " + ms(r1.elapsed) + ": 1 gracefully, 0 needed SIGKILL");
    CHECK(both(r1.processes[0]).ends_with("' killed by SIGTERM after " + ms(r1.processes[0].exited_after)));
  }
  SECTION("forward_result, from a real forward_and_shutdown") {
    sp::signal_set set{SIGTERM};
    auto p = ready_child({});
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    auto r = sp::forward_and_shutdown(set, {&p}, 10s);
    REQUIRE(r.received);
    CHECK(both(r) == "SIGTERM from pid " + std::to_string(::getpid()) + " (uid " + std::to_string(::getuid()) +
                         "); 1 process stopped in " + ms(r.shutdown.elapsed) + ": 1 gracefully, 0 needed SIGKILL");
    auto q = testing::helper({"exit", "0"}).spawn();
    auto quiet = sp::forward_and_shutdown(set, {&q}, 10s);
    REQUIRE_FALSE(quiet.received);
    CHECK(both(quiet) == "no signal (every process exited by itself); 1 process stopped in " +
                             ms(quiet.shutdown.elapsed) + ": 1 gracefully, 0 needed SIGKILL");
  }
  SECTION("run_result: the status and the sizes, never the output") {
    auto r = sp::run(sp::command{"sh", "-c", "printf secret; printf xy >&2; exit 2"});
    CHECK(both(r) == "'sh -c 'printf secret; printf xy >&2; exit 2'' exited with code 2 (out 6 bytes, err 2 bytes)");
    auto t = sp::run(sp::command{"printf", "abcdef"},
                     {.max_output = 4, .on_output_limit = sp::output_limit::truncate});
    REQUIRE(t.out_truncated);
    CHECK(both(t) == "'printf abcdef' exited with code 0 (out 4 bytes, truncated, err 0 bytes)");
    CHECK(fmt::format("{:.20}", t) == "'printf abcdef' exit");
  }
  SECTION("pipeline, transform, stage_result and pipeline_result, from real pipelines") {
    auto square = sp::transform(
        [](std::string_view n) -> std::optional<std::string> {
          if (n == "bad") throw std::runtime_error("bad line");
          const int v = std::stoi(std::string(n));
          return std::to_string(v * v);
        },
        "square");
    CHECK(both(square) == "[square]");
    auto p = sp::pipeline{} | sp::command{"printf", "1\\n2\\n"} | square | sp::command{"sort", "-r"};
    CHECK(both(p) == "printf '1\\n2\\n' | [square] | sort -r");
    auto r = p.run();
    REQUIRE(r.success());
    CHECK(r.out == "4\n1\n");
    CHECK(both(r) == "'printf '1\\n2\\n' | [square] | sort -r' exited with code 0 (3 stages, out 4 bytes)");
    CHECK(both(r.stages[0]) == "'printf '1\\n2\\n'' (pid " + std::to_string(r.stages[0].pid) + ") exited with code 0");
    CHECK(both(r.stages[1]) == "[square] exited with code 0");

    auto f = (sp::pipeline{} | sp::command{"sh", "-c", "echo 5; exit 4"} | square | sp::command{"cat"}).run();
    REQUIRE(f.first_failure() == 0u);
    CHECK(f.out == "25\n");
    const std::string first =
        "'sh -c 'echo 5; exit 4'' (pid " + std::to_string(f.stages[0].pid) + ") exited with code 4";
    CHECK(both(f.stages[0]) == first + ", failed");
    CHECK(both(f.stages[1]) == "[square] exited with code 0");
    CHECK(both(f.stages[2]) == "'cat' (pid " + std::to_string(f.stages[2].pid) + ") exited with code 0");
    CHECK(both(f) == "'sh -c 'echo 5; exit 4' | [square] | cat' failed at stage 1 of 3: " + first + " (out 3 bytes)");

    // run() rethrows what a transform threw; the stage_result it leaves says so.
    CHECK_THROWS_WITH((sp::pipeline{} | sp::command{"echo", "bad"} | square).run(), "bad line");
    sp::stage_result threw;
    threw.command = "[square]";
    threw.is_transform = true;
    threw.status = sp::exit_status::exited(1);
    threw.failed = true;
    threw.error = std::make_exception_ptr(std::runtime_error("bad line"));
    CHECK(both(threw) == "[square] exited with code 1, threw: bad line, failed");

    // A stage killed by SIGPIPE is not a failure (unless sigpipe_is_failure).
    auto y = (sp::pipeline{} | sp::command{"yes"} | sp::command{"head", "-n", "1"}).run();
    REQUIRE(y.success());
    CHECK(both(y.stages[0]) == "'yes' (pid " + std::to_string(y.stages[0].pid) + ") killed by SIGPIPE");
    CHECK(both(y) == "'yes | head -n 1' exited with code 0 (2 stages, out 2 bytes)");
  }
}
