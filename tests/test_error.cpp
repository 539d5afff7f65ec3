#include <catch2/catch.hpp>

#include <subprocess/error.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

TEST_CASE("every error is a std::system_error that names the command") {
  SECTION("spawn_error carries errno and the step") {
    try {
      sp::command{"/nonexistent/prog", "x"}.spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.command() == "/nonexistent/prog x");
      CHECK(e.step() == "exec");  // a path is not searched: exec reports it
      CHECK_THAT(e.what(), Catch::Contains("/nonexistent/prog"));
      const std::system_error& base = e;
      CHECK(base.code().category() == std::system_category());
    }
    try {
      sp::command{"nonexistent-prog-xyz"}.spawn();
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(e.step() == "resolve program");
      CHECK_THAT(e.what(), Catch::Contains("nonexistent-prog-xyz") && Catch::Contains("PATH"));
      const std::system_error& base = e;
      CHECK(base.code().category() == std::system_category());
    }
  }
  SECTION("timeout_error carries the output so far") {
    try {
      sp::run(testing::helper({"out", "partial", "sleep", "5000"}), {.timeout = 300ms});
      FAIL("no exception");
    } catch (const sp::timeout_error& e) {
      CHECK(e.code() == std::errc::timed_out);
      CHECK(e.out() == "partial\n");
      CHECK(e.timeout() == 300ms);
      REQUIRE(e.status().has_value());
      CHECK(e.status()->signal() == SIGKILL);
      CHECK_THAT(e.what(), Catch::Contains("sp_helper"));
      CHECK_THAT(e.what(), Catch::Contains("timed out after 300 ms"));
    }
  }
  SECTION("process_error carries the status and the tail of stderr") {
    try {
      sp::run(testing::helper({"err", "it broke", "exit", "4"}), {.check = true});
      FAIL("no exception");
    } catch (const sp::process_error& e) {
      CHECK(e.code() == sp::errc::process_failed);
      CHECK(e.code().category().name() == std::string("subprocess"));
      CHECK(e.status() == sp::exit_status::exited(4));
      CHECK(e.err() == "it broke\n");
      CHECK_THAT(e.what(), Catch::Contains("exited with code 4"));
      CHECK_THAT(e.what(), Catch::Contains("it broke"));
    }
  }
  SECTION("process_error keeps the message short for huge stderr") {
    try {
      sp::run(testing::helper({"err-bytes", "100000", "exit", "1"}), {.check = true});
      FAIL("no exception");
    } catch (const sp::process_error& e) {
      CHECK(e.err().size() == 100000);
      CHECK(std::string(e.what()).size() < 1000);
    }
  }
  SECTION("argument_error is std::errc::invalid_argument") {
    try {
      sp::command{}.spawn();
      FAIL("no exception");
    } catch (const sp::argument_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains("empty command"));
    }
  }
  SECTION("all of them can be caught as subprocess::error") {
    CHECK_THROWS_AS(sp::command{"/no/such"}.spawn(), sp::error);
    CHECK_THROWS_AS(sp::command{}.spawn(), sp::error);
  }
}
