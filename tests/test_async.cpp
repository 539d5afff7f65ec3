// Async integration (issue 16): the event loop driven by another loop, and the
// "complete" event (exit observed and every output pipe at EOF).
#include <catch2/catch.hpp>

#include <thread>

#include <sys/epoll.h>

#include <subprocess/event_loop.hpp>
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

// A foreign epoll loop that knows nothing of subprocess but one fd.
struct foreign_loop {
  sp::detail::unique_fd ep{::epoll_create1(EPOLL_CLOEXEC)};
  explicit foreign_loop(sp::event_loop& loop) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &loop;
    REQUIRE(::epoll_ctl(ep.get(), EPOLL_CTL_ADD, loop.native_handle(), &ev) == 0);
  }
  // Waits (at most 10 s: a hang fails the test) and dispatches what woke it.
  // Returns false when the wait timed out.
  bool turn() {
    epoll_event ev{};
    int n = ::epoll_wait(ep.get(), &ev, 1, 10000);
    if (n <= 0) return false;
    static_cast<sp::event_loop*>(ev.data.ptr)->dispatch();
    return true;
  }
};

}  // namespace

TEST_CASE("embedding: a foreign epoll loop drives children's output and exits") {
  sp::event_loop loop;
  foreign_loop outer(loop);
  auto a = testing::helper({"out", "a1", "out", "a2"}).out(sp::pipe).spawn();
  auto b = sp::command::shell("echo b1; exit 3").out(sp::pipe).spawn();
  std::vector<std::string> lines;
  std::vector<int> codes;
  loop.on_line(a.out(), [&](std::string_view l) { lines.emplace_back(l); });
  loop.on_line(b.out(), [&](std::string_view l) { lines.emplace_back(l); });
  loop.on_exit(a, [&](sp::exit_status s) { codes.push_back(s.code().value_or(-1)); });
  loop.on_exit(b, [&](sp::exit_status s) { codes.push_back(s.code().value_or(-1)); });
  int turns = 0;
  while (!loop.idle() && codes.size() < 2) {
    REQUIRE(outer.turn());
    ++turns;
  }
  // Streams may end after the exits: finish them the same way.
  while (!loop.idle()) REQUIRE(outer.turn());
  std::sort(lines.begin(), lines.end());
  CHECK(lines == std::vector<std::string>{"a1", "a2", "b1"});
  std::sort(codes.begin(), codes.end());
  CHECK(codes == std::vector<int>{0, 3});
  CHECK(turns >= 1);
  CHECK_FALSE(loop.dispatch());  // nothing left: dispatch says so and returns at once
}

TEST_CASE("embedding: timers and posts from other threads make the fd readable") {
  sp::event_loop loop;
  foreign_loop outer(loop);
  SECTION("a timer, with nothing else registered") {
    bool fired = false;
    auto t0 = std::chrono::steady_clock::now();
    loop.after(30ms, [&] { fired = true; });
    while (!fired) REQUIRE(outer.turn());
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
  }
  SECTION("a timer added after the loop went idle, from a callback") {
    int fired = 0;
    loop.after(1ms, [&] {
      ++fired;
      loop.after(20ms, [&] { ++fired; });
    });
    while (fired < 2) REQUIRE(outer.turn());
  }
  SECTION("post() from another thread") {
    bool ran = false;
    std::thread t([&] { loop.post([&] { ran = true; }); });
    while (!ran) REQUIRE(outer.turn());
    t.join();
  }
  SECTION("a cancelled timer does not wake it") {
    auto id = loop.after(20ms, [] { FAIL("cancelled timer ran"); });
    loop.after(60ms, [] {});
    loop.cancel(id);
    epoll_event ev{};
    REQUIRE(loop.dispatch());  // arms the timerfd for the 60 ms one
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(::epoll_wait(outer.ep.get(), &ev, 1, 10000) == 1);
    CHECK(std::chrono::steady_clock::now() - t0 >= 35ms);
    CHECK_FALSE(loop.dispatch());
  }
}

TEST_CASE("embedding: dispatch() inside a callback is refused") {
  sp::event_loop loop;
  bool threw = false;
  loop.post([&] {
    try {
      loop.dispatch();
    } catch (const sp::argument_error&) {
      threw = true;
    }
  });
  loop.run();
  CHECK(threw);
}

TEST_CASE("on_complete: the exit and all output, in one callback") {
  sp::event_loop loop;
  SECTION("stdout and stderr") {
    auto p = sp::command::shell("echo out1; echo err1 >&2; echo out2; exit 4")
                 .out(sp::pipe)
                 .err(sp::pipe)
                 .spawn();
    int calls = 0;
    loop.on_complete(p, [&](sp::exit_status s, std::string out, std::string err) {
      ++calls;
      CHECK(s.code() == 4);
      CHECK(out == "out1\nout2\n");
      CHECK(err == "err1\n");
    });
    loop.run();
    CHECK(calls == 1);
  }
  SECTION("no pipes: the exit alone") {
    auto p = sp::command{"true"}.spawn();
    bool called = false;
    loop.on_complete(p, [&](sp::exit_status s, std::string out, std::string err) {
      called = s.success() && out.empty() && err.empty();
    });
    loop.run();
    CHECK(called);
  }
  SECTION("a grandchild holds stdout open after the child exited") {
    // The child starts a grandchild sharing its stdout, which waits for a line on
    // fd 3 (the child's stdin: sh gives background jobs /dev/null as fd 0), then
    // exits. Only once we have seen the exit do we let the grandchild go.
    auto p = sp::command::shell("exec 3<&0; echo first; (read x <&3; echo late) & exit 0")
                 .in(sp::pipe)
                 .out(sp::pipe)
                 .spawn();
    bool exited = false, complete = false;
    std::string got;
    sp::event_loop::id poll_id = 0;
    loop.on_complete(p, [&](sp::exit_status s, std::string out, std::string) {
      CHECK(exited);
      CHECK(s.success());
      got = std::move(out);
      complete = true;
      loop.remove(poll_id);
    });
    // on_complete's exit watch collects the status (status() is set then): notice it.
    poll_id = loop.every(1ms, [&] {
      if (!exited && p.status()) {
        exited = true;
        CHECK_FALSE(complete);  // the grandchild still holds stdout
        p.in().write_all("go\n");
        p.in().close();
      }
    });
    loop.run_for(10s);  // a hang fails below
    CHECK(complete);
    CHECK(got == "first\nlate\n");
  }
  SECTION("remove() drops it") {
    auto p = sp::command{"echo", "x"}.out(sp::pipe).spawn();
    auto id = loop.on_complete(p, [&](sp::exit_status, std::string, std::string) { FAIL("called"); });
    loop.remove(id);
    CHECK(loop.idle());
    p.wait();
  }
}

TEST_CASE("stop tokens on the blocking calls: process::wait and run") {
  SECTION("wait(stop) from another thread: canceled_error, the child kept") {
    auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
    std::stop_source src;
    std::thread t([&] { src.request_stop(); });
    // in_ would be closed by wait(): move stdin out so the child keeps waiting.
    sp::pipe_writer in = std::move(p.in());
    try {
      p.wait(src.get_token());
      FAIL("not canceled");
    } catch (const sp::canceled_error& e) {
      CHECK(e.code() == std::errc::operation_canceled);
      CHECK_THAT(e.what(), Catch::Contains("wait of"));
    }
    t.join();
    CHECK_FALSE(p.try_wait());
    in.write_all("go\n");
    CHECK(p.wait().success());
  }
  SECTION("wait(stop, kill): the child killed and reaped") {
    auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
    sp::pipe_writer in = std::move(p.in());
    std::stop_source src;
    src.request_stop();
    CHECK_THROWS_AS(p.wait(src.get_token(), sp::cancel_policy::kill), sp::canceled_error);
    REQUIRE(p.status());
    CHECK(p.status()->signal() == SIGKILL);
  }
  SECTION("an exited child wins over a stop request") {
    auto p = sp::command{"true"}.spawn();
    REQUIRE(p.wait_for(10s));  // collected: any later wait returns it
    std::stop_source src;
    src.request_stop();
    CHECK(p.wait(src.get_token()).success());
  }
  SECTION("wait(stop) that is never asked to stop: the status") {
    std::stop_source src;
    auto p = sp::command::shell("exit 7").spawn();
    CHECK(p.wait(src.get_token()).code() == 7);
  }
  SECTION("run(): a stop request kills the child") {
    std::stop_source src;
    std::thread t([&] { src.request_stop(); });
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(sp::run(sp::command{"sleep", "30"}, {}, src.get_token()), sp::canceled_error);
    t.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  }
  SECTION("run(): a token never stopped changes nothing") {
    std::stop_source src;
    auto r = sp::run(sp::command{"echo", "hi"}, {}, src.get_token());
    CHECK(r.out == "hi\n");
  }
}
