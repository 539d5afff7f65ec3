#include <catch2/catch.hpp>

#include <subprocess/fmt.hpp>

#include "testing.hpp"

namespace sp = subprocess;

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
