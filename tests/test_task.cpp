// C++20 coroutines (issue 16): sp::task, sync_wait, and the awaitables driven by
// sp::event_loop (exit, line, chunk, write), each cancellable with a std::stop_token.
#include <catch2/catch.hpp>

#include <thread>

#include <subprocess/subprocess.hpp>
#include <subprocess/task.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

sp::task<int> forty_two() { co_return 42; }
sp::task<void> thrower() {
  throw std::runtime_error("boom");
  co_return;
}
sp::task<int> add_chain(int n) {
  if (n == 0) co_return 0;
  co_return 1 + co_await add_chain(n - 1);
}
sp::task<long> loop_sum(int n) {  // many synchronous completions in one frame
  long sum = 0;
  for (int i = 0; i < n; ++i) sum += co_await forty_two();
  co_return sum;
}

bool is_canceled(const sp::canceled_error& e) { return e.code() == std::errc::operation_canceled; }

}  // namespace

TEST_CASE("task: values, exceptions, laziness, long chains") {
  sp::event_loop loop;
  CHECK(sp::sync_wait(loop, forty_two()) == 42);
  CHECK_THROWS_WITH(sp::sync_wait(loop, thrower()), "boom");
  CHECK(sp::sync_wait(loop, add_chain(1000)) == 1000);
  CHECK(sp::sync_wait(loop, loop_sum(10000)) == 420000L);
  bool started = false;
  auto lazy = [&]() -> sp::task<void> {
    started = true;
    co_return;
  };
  {
    auto t = lazy();
    CHECK_FALSE(started);  // lazy: nothing runs until awaited
  }
  CHECK_FALSE(started);  // destroyed unstarted
  sp::sync_wait(loop, lazy());
  CHECK(started);
  SECTION("a task waiting for something the loop does not drive") {
    auto stuck = []() -> sp::task<void> { co_await std::suspend_always{}; };
    CHECK_THROWS_AS(sp::sync_wait(loop, stuck()), sp::argument_error);
  }
}

TEST_CASE("co_await a child's exit") {
  sp::event_loop loop;
  SECTION("status") {
    auto p = sp::command::shell("exit 3").spawn();
    auto st = sp::sync_wait(loop, [&]() -> sp::task<sp::exit_status> { co_return co_await sp::async_wait(loop, p); }());
    CHECK(st.code() == 3);
  }
  SECTION("already collected: at once") {
    auto p = sp::command{"true"}.spawn();
    p.wait();
    auto st = sp::sync_wait(loop, [&]() -> sp::task<sp::exit_status> { co_return co_await sp::async_wait(loop, p); }());
    CHECK(st.success());
  }
  SECTION("several children, one after the other, and output in between") {
    auto job = [&]() -> sp::task<std::string> {
      std::string all;
      for (int i = 0; i < 3; ++i) {
        auto p = sp::command::shell("echo run" + std::to_string(i)).out(sp::pipe).spawn();
        while (auto line = co_await sp::async_read_line(loop, p.out())) all += *line + ";";
        auto st = co_await sp::async_wait(loop, p);
        all += std::to_string(st.code().value_or(-1)) + ";";
      }
      co_return all;
    };
    CHECK(sp::sync_wait(loop, job()) == "run0;0;run1;0;run2;0;");
  }
}

TEST_CASE("co_await lines and chunks") {
  sp::event_loop loop;
  SECTION("lines: CRLF kept, a last line without newline, then nullopt") {
    auto p = sp::command{"printf", "a\r\n\nlong line\nlast"}.out(sp::pipe).spawn();
    auto lines = sp::sync_wait(loop, [&]() -> sp::task<std::vector<std::string>> {
      std::vector<std::string> v;
      while (auto l = co_await sp::async_read_line(loop, p.out())) v.push_back(*l);
      co_return v;
    }());
    CHECK(lines == std::vector<std::string>{"a\r", "", "long line", "last"});
    p.wait();
  }
  SECTION("lines arriving one at a time (the child waits for each ack)") {
    auto p = testing::helper({"out", "one", "wait-line", "out", "two"}).in(sp::pipe).out(sp::pipe).spawn();
    auto got = sp::sync_wait(loop, [&]() -> sp::task<std::string> {
      auto first = co_await sp::async_read_line(loop, p.out());
      co_await sp::async_write(loop, p.in(), "ack\n");
      auto second = co_await sp::async_read_line(loop, p.out());
      auto end = co_await sp::async_read_line(loop, p.out());
      co_return *first + "," + *second + "," + (end ? "more" : "eof");
    }());
    CHECK(got == "one,two,eof");
    p.wait();
  }
  SECTION("chunks: everything, bounded by max, then nullopt") {
    auto p = testing::helper({"out-bytes", "300000"}).out(sp::pipe).spawn();
    auto [total, biggest] = sp::sync_wait(loop, [&]() -> sp::task<std::pair<std::size_t, std::size_t>> {
      std::size_t t = 0, b = 0;
      while (auto c = co_await sp::async_read_some(loop, p.out(), {}, 4096)) {
        CHECK_FALSE(c->empty());
        t += c->size();
        b = std::max(b, c->size());
      }
      co_return std::pair{t, b};
    }());
    CHECK(total == 300000);
    CHECK(biggest <= 4096);
    p.wait();
  }
}

TEST_CASE("co_await a write: backpressure and a child that stopped reading") {
  sp::event_loop loop;
  SECTION("4 MiB into wc -c, far more than a pipe holds") {
    auto p = sp::command{"wc", "-c"}.in(sp::pipe).out(sp::pipe).spawn();
    std::string data(4 << 20, 'x');
    auto out = sp::sync_wait(loop, [&]() -> sp::task<std::string> {
      co_await sp::async_write(loop, p.in(), data);
      p.in().close();
      auto line = co_await sp::async_read_line(loop, p.out());
      co_await sp::async_wait(loop, p);
      co_return line.value_or("");
    }());
    CHECK(out == std::to_string(4 << 20));
  }
  SECTION("EPIPE: io_error, no SIGPIPE") {
    auto p = sp::command{"true"}.in(sp::pipe).spawn();
    auto job = [&]() -> sp::task<void> {
      co_await sp::async_wait(loop, p);
      co_await sp::async_write(loop, p.in(), std::string(100000, 'x'));
    };
    try {
      sp::sync_wait(loop, job());
      FAIL("no error");
    } catch (const sp::io_error& e) {
      CHECK(e.code() == std::errc::broken_pipe);
    }
  }
}

TEST_CASE("cancelling an await: canceled_error, the child kept") {
  sp::event_loop loop;
  std::stop_source src;
  SECTION("the exit") {
    auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
    loop.after(5ms, [&] { src.request_stop(); });
    auto job = [&]() -> sp::task<void> { co_await sp::async_wait(loop, p, src.get_token()); };
    try {
      sp::sync_wait(loop, job());
      FAIL("not canceled");
    } catch (const sp::canceled_error& e) {
      CHECK(is_canceled(e));
    }
    CHECK_FALSE(p.try_wait());  // still running, still ours
    CHECK(loop.idle());         // the exit watch is gone
    p.in().close();
    CHECK(p.wait().success());
  }
  SECTION("a line: what comes later is still there") {
    auto p = testing::helper({"wait-line", "out", "later"}).in(sp::pipe).out(sp::pipe).spawn();
    loop.after(5ms, [&] { src.request_stop(); });
    CHECK_THROWS_AS(sp::sync_wait(loop, [&]() -> sp::task<void> {
                      co_await sp::async_read_line(loop, p.out(), src.get_token());
                    }()),
                    sp::canceled_error);
    p.in().write_all("go\n");
    auto line = sp::sync_wait(loop, [&]() -> sp::task<std::optional<std::string>> {
      co_return co_await sp::async_read_line(loop, p.out());
    }());
    CHECK(line == "later");
    p.wait();
  }
  SECTION("a write to a child that does not read") {
    auto p = sp::command{"sleep", "30"}.in(sp::pipe).spawn();
    std::string data(1 << 20, 'x');
    loop.after(5ms, [&] { src.request_stop(); });
    CHECK_THROWS_AS(sp::sync_wait(loop, [&]() -> sp::task<void> {
                      co_await sp::async_write(loop, p.in(), data, src.get_token());
                    }()),
                    sp::canceled_error);
    CHECK_FALSE(p.try_wait());
    p.kill();
    p.wait();
  }
  SECTION("stop requested before the await: at once, nothing registered") {
    auto p = sp::command{"true"}.out(sp::pipe).spawn();
    src.request_stop();
    CHECK_THROWS_AS(sp::sync_wait(loop, [&]() -> sp::task<void> {
                      co_await sp::async_read_some(loop, p.out(), src.get_token());
                    }()),
                    sp::canceled_error);
    CHECK(loop.idle());
    p.wait();
  }
  SECTION("from another thread, racing with the await (TSan)") {
    for (int i = 0; i < 100; ++i) {
      std::stop_source s;
      auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
      std::thread t([&] { s.request_stop(); });
      CHECK_THROWS_AS(sp::sync_wait(loop, [&]() -> sp::task<void> {
                        co_await sp::async_wait(loop, p, s.get_token());
                      }()),
                      sp::canceled_error);
      t.join();
      p.in().close();
      p.wait();
    }
    loop.run();  // a cancellation posted after its await completed: nothing to do
    CHECK(loop.idle());
  }
}

TEST_CASE("a task destroyed with a pending await unregisters it") {
  sp::event_loop loop;
  auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
  loop.after(5ms, [] { throw std::runtime_error("callback failed"); });
  CHECK_THROWS_WITH(sp::sync_wait(loop, [&]() -> sp::task<void> { co_await sp::async_wait(loop, p); }()),
                    "callback failed");
  CHECK(loop.idle());
  p.in().close();
  p.wait();
}
