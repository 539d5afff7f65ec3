#include <catch2/catch.hpp>

#include <csignal>

#include <subprocess/exit_status.hpp>

#include "testing.hpp"

namespace sp = subprocess;

TEST_CASE("exit_status keeps exits and signal deaths apart") {
  SECTION("exited") {
    auto s = sp::exit_status::exited(3);
    CHECK_FALSE(s.success());
    CHECK(s.exited_normally());
    CHECK_FALSE(s.killed());
    CHECK(s.code() == 3);
    CHECK_FALSE(s.signal().has_value());
    CHECK(s.shell_code() == 3);
    CHECK(s.to_string() == "exited with code 3");
  }
  SECTION("success is exit code 0 only") {
    CHECK(sp::exit_status::exited(0).success());
    CHECK(sp::exit_status::exited(0).to_string() == "exited with code 0");
  }
  SECTION("signaled") {
    auto s = sp::exit_status::signaled(SIGKILL);
    CHECK_FALSE(s.success());
    CHECK(s.killed());
    CHECK_FALSE(s.code().has_value());
    CHECK(s.signal() == SIGKILL);
    CHECK(s.shell_code() == 128 + SIGKILL);
    CHECK(s.to_string() == "killed by SIGKILL");
    CHECK(sp::exit_status::signaled(SIGSEGV, true).to_string() == "killed by SIGSEGV (core dumped)");
    CHECK(sp::exit_status::signaled(SIGRTMIN + 2).to_string() == "killed by SIGRTMIN+2");
  }
  SECTION("equality is by value") {
    CHECK(sp::exit_status::exited(1) == sp::exit_status::exited(1));
    CHECK(sp::exit_status::exited(1) != sp::exit_status::exited(2));
    CHECK(sp::exit_status::exited(9) != sp::exit_status::signaled(9));
  }
  SECTION("from a waitpid status word") {
    CHECK(sp::exit_status::from_wait_status(7 << 8) == sp::exit_status::exited(7));
    CHECK(sp::exit_status::from_wait_status(SIGTERM) == sp::exit_status::signaled(SIGTERM));
    CHECK(sp::exit_status::from_wait_status(SIGABRT | 0x80) == sp::exit_status::signaled(SIGABRT, true));
  }
  SECTION("from what waitid says") {
    auto info = [](int code, int status) {
      siginfo_t si{};
      si.si_code = code;
      si.si_status = status;
      return si;
    };
    CHECK(sp::exit_status::from_siginfo(info(CLD_EXITED, 7)) == sp::exit_status::exited(7));
    CHECK(sp::exit_status::from_siginfo(info(CLD_KILLED, SIGTERM)) == sp::exit_status::signaled(SIGTERM));
    CHECK(sp::exit_status::from_siginfo(info(CLD_DUMPED, SIGABRT)) == sp::exit_status::signaled(SIGABRT, true));
  }
}

TEST_CASE("exit_status of real children") {
  using sp::command;
  SECTION("exit codes 0..255 come through") {
    for (int code : {0, 1, 42, 255}) {
      auto st = testing::helper({"exit", std::to_string(code)}).spawn().wait();
      CHECK(st == sp::exit_status::exited(code));
    }
  }
  SECTION("a signal death is reported as such, not as 128+N") {
    auto st = testing::helper({"kill-self", std::to_string(SIGTERM)}).spawn().wait();
    CHECK(st.signal() == SIGTERM);
    CHECK_FALSE(st.code().has_value());
    CHECK(st.to_string() == "killed by SIGTERM");
  }
}
