// The text of every kind of error, provoked against real programs: each message says
// what failed, timed out or was refused, names the command (or the setting) and, where
// the errno alone leaves people guessing, what to check. Whole texts where they are
// stable; the parts that name the command and the step where a path or a pid varies.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>
#ifdef SP_MSG_IPC
#include <subprocess/ipc.hpp>
#include <subprocess/pool.hpp>
#endif

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using Catch::Contains;
using Catch::EndsWith;
using Catch::StartsWith;

namespace {
// what() of the error f throws as E; fails the test if it throws nothing or another kind.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no error thrown");
  return {};
}
}  // namespace

TEST_CASE("every error message says what failed and names the command") {
  SECTION("spawn_error: the step, what it was about, the errno and what to check") {
    CHECK(message_of<sp::spawn_error>([] { sp::command{"no-such-prog-xyz", "-v"}.spawn(); }) ==
          "cannot start 'no-such-prog-xyz -v': resolve program 'no-such-prog-xyz' in PATH: "
          "No such file or directory");
    CHECK(message_of<sp::spawn_error>([] { sp::command{"/nonexistent/prog", "x"}.spawn(); }) ==
          "cannot start '/nonexistent/prog x': exec '/nonexistent/prog': No such file or directory");
    // A file without the x bit, and one with it that is no program at all.
    char path[] = "/tmp/sp_msg_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "hello\n", 6) == 6);
    REQUIRE(fchmod(fd, 0644) == 0);
    REQUIRE(close(fd) == 0);
    const std::string p = path;
    CHECK(message_of<sp::spawn_error>([&] { sp::command{p}.spawn(); }) ==
          "cannot start '" + p + "': exec '" + p +
              "' (not executable, or a directory on its path cannot be searched): Permission denied");
    REQUIRE(chmod(path, 0755) == 0);
    CHECK(message_of<sp::spawn_error>([&] { sp::command{p}.spawn(); }) ==
          "cannot start '" + p + "': exec '" + p +
              "' (not a binary, nor a script starting with #!): Exec format error");
    unlink(path);
    CHECK(message_of<sp::spawn_error>([] { sp::command{"true"}.cwd("/nonexistent-dir").spawn(); }) ==
          "cannot start 'true': chdir to '/nonexistent-dir' (no such directory): No such file or directory");
    CHECK(message_of<sp::spawn_error>([] { sp::command{"true"}.in(sp::file("/nonexistent/in")).spawn(); }) ==
          "cannot start 'true': open stdin file '/nonexistent/in': No such file or directory");
  }
  SECTION("argument_error: the command (when there is one) and what is wrong with the input") {
    CHECK(message_of<sp::argument_error>([] { sp::command{std::vector<std::string>{}}.spawn(); }) ==
          "empty command: argv has no program");
    CHECK(message_of<sp::argument_error>([] { sp::command{"echo", std::string("a\0b", 3)}.spawn(); }) ==
          "command 'echo 'a\\0b'': argument 1 contains a NUL byte");
    CHECK(message_of<sp::argument_error>([] { sp::environment{}.set("A=B", "x"); }) ==
          "environment variable name 'A=B' contains '='");
    CHECK(message_of<sp::argument_error>([] { sp::run(sp::command{"true"}, {.timeout = -1ms}); }) ==
          "command 'true': negative timeout");
    CHECK(message_of<sp::argument_error>([] { sp::process{}.wait(); }) == "wait() on an empty process handle");
  }
  SECTION("timeout_error, process_error, output_limit_error from run()") {
    CHECK(message_of<sp::timeout_error>([] { sp::run(sp::command{"sleep", "5"}, {.timeout = 100ms}); }) ==
          "'sleep 5' timed out after 100 ms; sent SIGKILL");
    CHECK(message_of<sp::process_error>([] {
            sp::run(sp::command{"sh", "-c", "echo 'disk full' >&2; exit 2"}, {.check = true});
          }) == "'sh -c 'echo '\\''disk full'\\'' >&2; exit 2'' exited with code 2: disk full");
    CHECK(message_of<sp::process_error>([] { sp::run(sp::command{"sh", "-c", "kill -9 $$"}, {.check = true}); }) ==
          "'sh -c 'kill -9 $$'' killed by SIGKILL");
    CHECK(message_of<sp::output_limit_error>([] { sp::run(sp::command{"yes"}, {.max_output = 1000}); }) ==
          "'yes' wrote more than 1000 bytes to stdout; it was killed");
  }
  SECTION("io_error: the stream, the command, and why a pipe broke") {
    auto p = sp::command{"true"}.in(sp::pipe).spawn();
    p.wait();  // closes stdin
    CHECK(message_of<sp::io_error>([&] { p.in().write_all("x"); }) ==
          "write to closed stdin of 'true': Bad file descriptor");
    auto q = sp::command{"sh", "-c", "exec 0<&-; sleep 5"}.in(sp::pipe).spawn();
    CHECK(message_of<sp::io_error>([&] {
            for (;;) q.in().write_all(std::string(65536, 'x'));
          }) == "write to stdin of 'sh -c 'exec 0<&-; sleep 5'' (the child closed it or exited): Broken pipe");
    q.kill();
    q.wait();
  }
  SECTION("pipeline errors name the stage and its command") {
    CHECK(message_of<sp::pipeline_error>([] {
            (sp::pipeline{} | sp::command{"sh", "-c", "exit 1"} | sp::command{"cat"}).run({.check = true});
          }) == "pipeline stage 1 of 2 failed: 'sh -c 'exit 1'' exited with code 1");
    CHECK(message_of<sp::pipeline_spawn_error>([] {
            (sp::pipeline{} | sp::command{"true"} | sp::command{"no-such-prog-xyz"}).run();
          }) == "pipeline stage 2 of 2: cannot start 'no-such-prog-xyz': resolve program 'no-such-prog-xyz' "
                "in PATH: No such file or directory");
  }
#ifdef SP_MSG_IPC
  const std::string helper = IPC_HELPER_PATH;
  SECTION("ipc: channel_error (peer gone, malformed), rpc_error, call_timeout_error") {
    {
      auto p = sp::command{helper, "connect"}.ipc().spawn();
      sp::ipc::channel ch(p);
      p.wait();
      CHECK(message_of<sp::ipc::channel_error>([&] {
              for (;;) ch.send({{"a", 1}});
            }) == "ipc channel to '" + helper + " connect': cannot send: the peer closed the channel");
    }
    {
      auto p = sp::command{helper, "connect", "raw", "garbage\\n"}.ipc().spawn();
      sp::ipc::channel ch(p);
      CHECK(message_of<sp::ipc::channel_error>([&] { ch.receive(); }) ==
            "ipc channel to '" + helper + " connect raw 'garbage\\n'': malformed message ('garbage'): "
            "unexpected character at byte 0");
      p.wait();
    }
    auto p = sp::command{helper, "connect", "serve"}.ipc().spawn();
    sp::ipc::client c(p);
    const std::string peer = helper + " connect serve";
    CHECK(message_of<sp::ipc::rpc_error>([&] { c.call_sync("divide", {{"a", 1}, {"b", 0}}, 5s); }) ==
          "call 'divide' (id 1) to '" + peer + "' failed with error -32602: division by zero");
    CHECK(message_of<sp::ipc::call_timeout_error>([&] { c.call_sync("sleep", {{"ms", 2000}}, 100ms); }) ==
          "call 'sleep' (id 2) to '" + peer + "' timed out: no reply within 100 ms");
    CHECK(message_of<sp::ipc::channel_error>([&] { c.call_sync("exit", {{"code", 3}}, 5s); }) ==
          "call 'exit' (id 3) got no reply: '" + peer + "' exited with code 3");
    p.wait();
  }
  SECTION("pool_error: each kind says which task, which pool, and why") {
    const sp::command worker{helper, "connect", "serve"};
    const std::string name = helper + " connect serve";
    sp::worker_pool pool(worker, {.min_workers = 1, .task_timeout = 200ms});
    auto timed_out = pool.submit("sleep", {{"ms", 5000}});
    CHECK_THAT(message_of<sp::pool_error>([&] { timed_out.get(); }),
               StartsWith("pool '" + name + "': task 1 ('sleep') timed out after 200 ms on worker ") &&
                   EndsWith("; the worker was killed and replaced"));
    auto crashed = pool.submit("exit", {{"code", 7}});
    CHECK_THAT(message_of<sp::pool_error>([&] { crashed.get(); }),
               StartsWith("pool '" + name + "': task 2 ('exit') failed: its worker died on every attempt (1): "
                          "worker ") &&
                   EndsWith(" exited with code 7"));
    auto running = pool.submit("sleep", {{"ms", 5000}});
    auto queued = pool.submit("sleep", {{"ms", 5000}});
    pool.shutdown(0ms, sp::shutdown_mode::cancel);
    CHECK_THAT(message_of<sp::pool_error>([&] { running.get(); }),
               StartsWith("pool '" + name + "': task 3 ('sleep') cancelled: pool shut down"));
    CHECK_THAT(message_of<sp::pool_error>([&] { queued.get(); }),
               StartsWith("pool '" + name + "': task 4 ('sleep') cancelled: pool shut down"));
    auto late = pool.submit("echo", {1});
    CHECK(message_of<sp::pool_error>([&] { late.get(); }) ==
          "pool '" + name + "': task 'echo' rejected: the pool is shut down");
    CHECK(message_of<sp::spawn_error>([] { sp::worker_pool bad(sp::command{"/nonexistent/worker"}); }) ==
          "cannot start '/nonexistent/worker': exec '/nonexistent/worker': No such file or directory");
  }
#endif
}
