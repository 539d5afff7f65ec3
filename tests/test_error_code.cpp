// The error_code overloads (error.hpp, "Exception-free builds") in a normal build:
// the same failures the throwing calls raise come back in the error_code, with the
// same code(); nothing throws. tests/noexcept/no_exceptions.cpp runs the same calls
// built with -fno-exceptions.
#include <catch2/catch.hpp>

#include <csignal>

#include <subprocess/subprocess.hpp>
#ifdef SP_EC_IPC
#include <subprocess/ipc/channel.hpp>
#endif

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

TEST_CASE("error_code overloads report what the throwing calls throw") {
  std::error_code ec = std::make_error_code(std::errc::io_error);  // cleared on success
  SECTION("spawn: a status is no error; a program that cannot start is its errno") {
    std::optional<sp::process> p = sp::command{"sh", "-c", "exit 3"}.spawn(ec);
    REQUIRE(p);
    CHECK(!ec);
    std::optional<sp::exit_status> st = p->wait(ec);
    CHECK(!ec);
    CHECK(st == sp::exit_status::exited(3));
    CHECK_FALSE(sp::command{"no-such-program-xyz"}.spawn(ec));
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK_FALSE(sp::command{"/nonexistent/prog"}.spawn(ec));
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK_FALSE(sp::command{"true"}.cwd("/nonexistent-dir").spawn(ec));
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK_FALSE(sp::command{"true"}.in(sp::file("/nonexistent/in")).spawn(ec));  // fd setup
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK_FALSE(sp::command{std::vector<std::string>{}}.spawn(ec));  // an argument_error
    CHECK(ec == std::errc::invalid_argument);
  }
  SECTION("wait_for times out without an error; signal, kill, terminate") {
    std::optional<sp::process> p = sp::command{"sleep", "5"}.spawn(ec);
    REQUIRE(p);
    CHECK_FALSE(p->wait_for(50ms, ec));
    CHECK(!ec);
    CHECK_FALSE(p->wait_for(-1ms, ec));
    CHECK(ec == std::errc::invalid_argument);
    CHECK(p->signal(SIGTERM, ec));
    CHECK(!ec);
    CHECK(p->wait(ec) == sp::exit_status::signaled(SIGTERM));
    CHECK_FALSE(p->signal(SIGTERM, ec));  // reaped: nothing sent, no error
    CHECK(!ec);
    p = sp::command{"sleep", "5"}.new_process_group().spawn(ec);
    REQUIRE(p);
    p->kill(ec);
    CHECK(!ec);
    CHECK(p->wait_until(std::chrono::steady_clock::now() + 5s, ec) == sp::exit_status::signaled(SIGKILL));
    p = testing::helper({"ignore-term", "out", "ready", "sleep", "5000"}).out(sp::pipe).spawn(ec);
    REQUIRE(p);
    CHECK(p->out().read_line() == "ready");  // SIGTERM is ignored from here on
    CHECK(p->terminate(200ms, ec) == sp::exit_status::signaled(SIGKILL));
    CHECK(!ec);
    sp::process empty;
    CHECK_FALSE(empty.wait(ec));
    CHECK(ec == std::errc::invalid_argument);
    CHECK_FALSE(empty.terminate(1s, ec));
    CHECK(ec == std::errc::invalid_argument);
  }
  SECTION("run: the result, with ec set where run() would throw") {
    sp::run_result r = sp::run(sp::command{"echo", "hi"}, {}, ec);
    CHECK(!ec);
    CHECK(r.out == "hi\n");
    r = sp::run(sp::command{"sh", "-c", "echo oops >&2; exit 2"}, {.check = true}, ec);
    CHECK(ec == sp::errc::process_failed);
    CHECK(r.status == sp::exit_status::exited(2));
    CHECK(r.err == "oops\n");
    r = sp::run(testing::helper({"out", "partial", "sleep", "5000"}), {.timeout = 200ms}, ec);
    CHECK(ec == std::errc::timed_out);
    CHECK(r.out == "partial\n");
    CHECK(r.status == sp::exit_status::signaled(SIGKILL));
    r = sp::run(sp::command{"yes"}, {.max_output = 100}, ec);
    CHECK(ec == sp::errc::output_limit_exceeded);
    CHECK(r.out.size() == 100);
    r = sp::run(sp::command{"no-such-program-xyz"}, {}, ec);
    CHECK(ec == std::errc::no_such_file_or_directory);
  }
#ifdef SP_EC_IPC
  SECTION("channel: send and receive, the end, a closed channel, a malformed message") {
    std::optional<sp::process> p = testing::ipc_child({"connect", "echo-n", "1"}).spawn(ec);
    REQUIRE(p);
    sp::ipc::channel ch(*p);
    CHECK(ch.send({{"hello", "world"}}, ec));
    CHECK(!ec);
    std::optional<sp::ipc::json> m = ch.receive(ec);
    CHECK(!ec);
    CHECK(m == sp::ipc::json{{"hello", "world"}});
    CHECK_FALSE(ch.receive_for(5s, ec));  // the end: no error
    CHECK(!ec);
    CHECK(ch.eof());
    CHECK_FALSE(ch.send({{"late", true}}, ec));
    CHECK(ec == sp::errc::channel_closed);
    CHECK(p->wait(ec) == sp::exit_status::exited(0));
    p = testing::ipc_child({"connect", "raw", "garbage\\n", "expect-eof"}).spawn(ec);
    REQUIRE(p);
    sp::ipc::channel bad(*p);
    CHECK_FALSE(bad.receive(ec));
    CHECK(ec == sp::errc::protocol_error);
    bad.close();
    CHECK(p->wait(ec));
  }
#endif
}
