// asio.hpp / boost_asio.hpp (issue 16): a child's exit, lines, chunks and writes as
// asio operations, with callbacks, use_awaitable and use_future. Built twice: for
// standalone asio (test_asio) and for Boost.Asio (test_boost_asio, SP_TEST_BOOST_ASIO).
#include <catch2/catch.hpp>

#include <fcntl.h>

#include <future>
#include <thread>

#if defined(SP_TEST_BOOST_ASIO)
#include <subprocess/boost_asio.hpp>
namespace net = boost::asio;
namespace spa = subprocess::boost_asio;
using ec_t = boost::system::error_code;
#if defined(BOOST_ASIO_HAS_CO_AWAIT)
#define SP_TEST_CO_AWAIT 1
#endif
#else
#include <subprocess/asio.hpp>
namespace net = ::asio;
namespace spa = subprocess::asio;
using ec_t = std::error_code;
#if defined(ASIO_HAS_CO_AWAIT)
#define SP_TEST_CO_AWAIT 1
#endif
#endif
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {
bool fd_open(int fd) { return fd >= 0 && ::fcntl(fd, F_GETFD) >= 0; }
}  // namespace

TEST_CASE("asio: callbacks") {
  net::io_context io;
  auto p = sp::command::shell("echo one; echo two; printf three; exit 3").out(sp::pipe).spawn();
  std::vector<std::string> lines;
  ec_t end;
  std::function<void()> next = [&] {
    spa::async_read_line(io.get_executor(), p.out(), [&](ec_t ec, std::string line) {
      if (ec) {
        end = ec;
        return;
      }
      lines.push_back(line);
      next();
    });
  };
  next();
  std::optional<sp::exit_status> st;
  spa::async_wait(io.get_executor(), p, [&](ec_t ec, sp::exit_status s) {
    CHECK_FALSE(ec);
    st = s;
  });
  bool ran_inline = true;
  spa::async_wait(io.get_executor(), p, [&](ec_t, sp::exit_status) { ran_inline = false; });
  CHECK(ran_inline);  // never inside the initiating call
  io.run();
  CHECK(lines == std::vector<std::string>{"one", "two", "three"});
  CHECK(end == net::error::eof);
  REQUIRE(st);
  CHECK(st->code() == 3);
  CHECK(fd_open(p.out().fd()));  // asio had duplicates only
  CHECK(fd_open(p.pidfd()));
}

TEST_CASE("asio: use_awaitable, with backpressure") {
#if !defined(SP_TEST_CO_AWAIT)
  // asio enables its coroutines for clang only with libc++ (<experimental/coroutine>):
  // clang 14 with libstdc++ has no asio::awaitable.
  WARN("asio was configured without coroutine support by this compiler: use_awaitable not tested");
#else
  net::io_context io;
  auto p = sp::command{"wc", "-c"}.in(sp::pipe).out(sp::pipe).spawn();
  std::string data(4 << 20, 'x');
  std::string answer;
  std::size_t written = 0;
  int code = -1;
  std::exception_ptr failed;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        auto ex = co_await net::this_coro::executor;
        written = co_await spa::async_write(ex, p.in(), data, net::use_awaitable);
        p.in().close();
        answer = co_await spa::async_read_line(ex, p.out(), net::use_awaitable);
        auto st = co_await spa::async_wait(ex, p, net::use_awaitable);
        code = st.code().value_or(-1);
      },
      [&](std::exception_ptr e) { failed = e; });
  io.run();
  CHECK_FALSE(failed);
  CHECK(written == data.size());
  CHECK(answer == std::to_string(data.size()));
  CHECK(code == 0);
#endif
}

TEST_CASE("asio: use_future, the io_context run by another thread") {
  net::io_context io;
  auto work = net::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  auto p = testing::helper({"out-bytes", "100000", "exit", "5"}).out(sp::pipe).spawn();
  std::size_t total = 0;
  for (;;) {
    auto f = spa::async_read_some(io.get_executor(), p.out(), 8192, net::use_future);
    try {
      std::string chunk = f.get();
      CHECK(chunk.size() <= 8192);
      total += chunk.size();
#if defined(SP_TEST_BOOST_ASIO)
    } catch (const boost::system::system_error& e) {
#else
    } catch (const std::system_error& e) {
#endif
      CHECK(e.code() == net::error::eof);
      break;
    }
  }
  auto st = spa::async_wait(io.get_executor(), p, net::use_future).get();
  work.reset();
  runner.join();
  CHECK(total == 100000);
  CHECK(st.code() == 5);
}

TEST_CASE("asio: errors as error codes") {
  net::io_context io;
  SECTION("EPIPE: a child that stopped reading") {
    auto p = sp::command::shell("exec 0<&-; echo closed").in(sp::pipe).out(sp::pipe).spawn();
    REQUIRE(p.out().read_line() == "closed");  // its stdin is closed now
    std::string data(100000, 'x');
    ec_t got;
    spa::async_write(io.get_executor(), p.in(), data, [&](ec_t ec, std::size_t) { got = ec; });
    io.run();
    CHECK(got == std::errc::broken_pipe);
    p.wait();
  }
  SECTION("cancelled through a cancellation slot: operation_aborted, the child kept") {
    auto p = testing::helper({"wait-line"}).in(sp::pipe).spawn();
    net::cancellation_signal sig;
    ec_t got;
    spa::async_wait(io.get_executor(), p,
                    net::bind_cancellation_slot(sig.slot(), [&](ec_t ec, sp::exit_status) { got = ec; }));
    net::steady_timer t(io, 5ms);
    t.async_wait([&](ec_t) { sig.emit(net::cancellation_type::terminal); });
    io.run();
    CHECK(got == net::error::operation_aborted);
    CHECK_FALSE(p.try_wait());  // still running
    CHECK(fd_open(p.pidfd()));
    p.in().close();
    CHECK(p.wait().success());
  }
}
