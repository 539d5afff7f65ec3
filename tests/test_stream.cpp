#include <catch2/catch.hpp>

#include <csignal>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {
// A reader over a child that prints exactly `text` (through sh's printf).
sp::process printing(const std::string& text) {
  return sp::command{"printf", "%s", text}.out(sp::pipe).spawn();
}
std::vector<std::string> all_lines(sp::pipe_reader& r) {
  std::vector<std::string> v;
  for (std::string_view l : r.lines()) v.emplace_back(l);
  return v;
}
}  // namespace

TEST_CASE("lines: edge cases") {
  using V = std::vector<std::string>;
  SECTION("plain lines") {
    auto p = printing("a\nb\nc\n");
    CHECK(all_lines(p.out()) == V{"a", "b", "c"});
    p.wait();
  }
  SECTION("a last line without newline is still returned") {
    auto p = printing("a\nlast");
    CHECK(all_lines(p.out()) == V{"a", "last"});
    p.wait();
  }
  SECTION("empty lines are lines") {
    auto p = printing("\n\nx\n\n");
    CHECK(all_lines(p.out()) == V{"", "", "x", ""});
    p.wait();
  }
  SECTION("CRLF: the \\r is data") {
    auto p = printing("dos\r\nline\r\n");
    CHECK(all_lines(p.out()) == V{"dos\r", "line\r"});
    p.wait();
  }
  SECTION("no output: no lines") {
    auto p = printing("");
    CHECK(all_lines(p.out()).empty());
    CHECK(p.out().eof());
    p.wait();
  }
  SECTION("lines longer than the read buffer") {
    std::string big(100000, 'x');  // more than the 64 KiB read size
    auto p = testing::helper({"out", big, "out", "short"}).out(sp::pipe).spawn();
    CHECK(all_lines(p.out()) == V{big, "short"});
    p.wait();
  }
  SECTION("lines split across reads arrive whole") {
    // The child writes "par" and "tial\n" in two writes with a pause between.
    auto p = sp::command::shell("printf par; sleep 0.1; printf 'tial\\nnext\\n'").out(sp::pipe).spawn();
    CHECK(all_lines(p.out()) == V{"partial", "next"});
    p.wait();
  }
}

TEST_CASE("read, read_line, read_all mix correctly with buffering") {
  auto p = printing("first\nsecond\nthird");
  CHECK(p.out().read_line() == "first");
  char buf[3];
  CHECK(p.out().read(buf) == 3);
  CHECK(std::string(buf, 3) == "sec");
  CHECK(p.out().read_all() == "ond\nthird");
  CHECK(p.out().read_line() == std::nullopt);
  CHECK(p.out().read(buf) == 0);
  p.wait();
}

TEST_CASE("read_line_for: a reply with a timeout") {
  auto p = testing::helper({"echo-lines"}).in(sp::pipe).out(sp::pipe).spawn();
  SECTION("a request and its reply") {
    for (int i = 0; i < 3; ++i) {
      p.in().write_all("ping " + std::to_string(i) + "\n");
      CHECK(p.out().read_line_for(5s) == "ping " + std::to_string(i));
    }
  }
  SECTION("no reply within the timeout: nullopt and not eof") {
    p.in().write_all("partial without newline");
    CHECK_FALSE(p.out().read_line_for(100ms).has_value());
    CHECK_FALSE(p.out().eof());
    p.in().write_all(" now done\n");
    CHECK(p.out().read_line_for(5s) == "partial without newline now done");
  }
  p.in().close();
  CHECK(p.wait().success());
}

TEST_CASE("writing to a child that exited is an error, not a SIGPIPE death") {
  // SIGPIPE keeps its default disposition (it would kill this test binary).
  struct sigaction sa {};
  ::sigaction(SIGPIPE, nullptr, &sa);
  REQUIRE(sa.sa_handler == SIG_DFL);
  auto p = testing::helper({"exit", "0"}).in(sp::pipe).spawn();
  // Wait for the exit on the pidfd: wait() would close stdin for us.
  REQUIRE(sp::detail::poll_one(p.pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  try {
    std::string lots(1 << 20, 'x');
    p.in().write_all(lots);
    FAIL("no exception");
  } catch (const sp::io_error& e) {
    CHECK(e.code() == std::errc::broken_pipe);
    CHECK_THAT(e.what(), Catch::Contains("stdin") && Catch::Contains("sp_helper"));
  }
  SECTION("no SIGPIPE stays pending and the mask is as it was") {
    sigset_t pending, mask;
    ::sigpending(&pending);
    CHECK(sigismember(&pending, SIGPIPE) == 0);
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
    CHECK(sigismember(&mask, SIGPIPE) == 0);
  }
  SECTION("the disposition was not changed") {
    ::sigaction(SIGPIPE, nullptr, &sa);
    CHECK(sa.sa_handler == SIG_DFL);
  }
}

TEST_CASE("write_some and closed streams") {
  auto p = testing::helper({"count-stdin"}).in(sp::pipe).out(sp::pipe).spawn();
  CHECK(p.in().write_some("abc") == 3);
  CHECK(p.in().write_some("") == 0);
  p.in().close();
  CHECK_FALSE(p.in().is_open());
  CHECK_THROWS_AS(p.in().write_all("x"), sp::io_error);
  CHECK(p.out().read_all() == "3\n");
  p.wait();
  SECTION("streams that were not piped are closed") {
    auto q = testing::helper({}).spawn();
    CHECK_FALSE(q.out().is_open());
    CHECK(q.out().eof());
    CHECK(q.out().read_all().empty());
    q.wait();
  }
}

TEST_CASE("a pipe end can be moved out and read from another thread") {
  auto p = testing::helper({"out-bytes", "1000000"}).out(sp::pipe).spawn();
  sp::pipe_reader r = std::move(p.out());
  CHECK_FALSE(p.out().is_open());
  std::string got;
  std::thread t([&] { got = r.read_all(); });
  CHECK(p.wait().success());
  t.join();
  CHECK(got.size() == 1000000);
}
