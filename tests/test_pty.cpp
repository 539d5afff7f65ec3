// pty.hpp: children on a pseudo-terminal, and expect.
#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

sp::spawn_backend any_backend() {
  return GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
}

// An interactive sh with a known prompt and nothing read at start-up.
sp::command interactive_sh() {
  return sp::command{"sh", "-i"}.env(
      sp::environment::inherit().set("PS1", "$ ").set("TERM", "dumb").unset("ENV"));
}

// Where an fd of this process points.
std::string fd_target(int fd) {
  std::error_code ec;
  return fs::read_symlink("/proc/self/fd/" + std::to_string(fd), ec).string();
}

}  // namespace

TEST_CASE("a child on a terminal: the terminal is its stdio and controlling tty, it leads a session") {
  auto b = any_backend();
  INFO("backend " << b);
  SECTION("tty prints the slave's path") {
    auto t = sp::spawn_in_pty(sp::command{"tty"}.backend(b));
    CHECK_THAT(t.terminal_name(), Catch::StartsWith("/dev/pts/"));
    CHECK(t.expect_eof(5s) == t.terminal_name() + "\r\n");
    CHECK(t.wait().success());
  }
  SECTION("stdin, stdout and stderr are terminals") {
    auto t = sp::spawn_in_pty(sp::command::shell("test -t 0 && test -t 1 && test -t 2 && echo yes").backend(b));
    CHECK(t.expect_eof(5s) == "yes\r\n");
    CHECK(t.wait().success());
  }
  SECTION("/proc: pgrp == session == pid, a tty, and its group in the foreground") {
    auto t = sp::spawn_in_pty(sp::command::shell("cat /proc/$$/stat").backend(b));
    std::string stat = t.expect_eof(5s);
    CHECK(t.wait().success());
    // pid (comm) state ppid pgrp session tty_nr tpgid
    std::istringstream in(stat.substr(stat.rfind(')') + 2));
    char state = 0;
    long ppid = 0, pgrp = 0, session = 0, tty_nr = 0, tpgid = 0;
    in >> state >> ppid >> pgrp >> session >> tty_nr >> tpgid;
    CHECK(pgrp == t.child().pid());
    CHECK(session == t.child().pid());
    CHECK(tty_nr != 0);
    CHECK(tpgid == t.child().pid());
    CHECK(ppid == ::getpid());
    CHECK(t.child().is_group_leader());
  }
}

TEST_CASE("only the master stays in the parent, close-on-exec; the child gets fds 0-2 only") {
  auto b = any_backend();
  auto before = testing::open_fds();
  auto t = sp::spawn_in_pty(testing::helper({"list-fds"}).backend(b));
  auto after = testing::open_fds();
  int master_fds = 0;
  for (int fd : after) {
    if (before.count(fd)) continue;
    std::string target = fd_target(fd);
    CHECK(target != t.terminal_name());  // never the slave
    if (target == "/dev/ptmx" || target.find("ptmx") != std::string::npos) {
      ++master_fds;
      CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
      CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    }
  }
  CHECK(master_fds == 2);  // output() and input()
  CHECK(t.expect_eof(5s) == "0 1 2\r\n");
  CHECK(t.wait().success());
}

TEST_CASE("window size: initial, resize, SIGWINCH") {
  auto b = any_backend();
  SECTION("stty size shows the initial size") {
    auto t = sp::spawn_in_pty(sp::command{"stty", "size"}.backend(b), {.rows = 33, .cols = 101});
    CHECK(t.size() == std::pair<unsigned short, unsigned short>{33, 101});
    CHECK(t.expect_eof(5s) == "33 101\r\n");
    CHECK(t.wait().success());
  }
  SECTION("resize: the child gets SIGWINCH and sees the new size; ^C ends it") {
    auto t = sp::spawn_in_pty(
        sp::command::shell("trap 'echo WINCH; stty size' WINCH; echo ready; while :; do sleep 0.05; done")
            .backend(b));
    t.expect("ready\r\n", 5s);
    t.resize(40, 120);
    CHECK(t.size() == std::pair<unsigned short, unsigned short>{40, 120});
    auto m = t.expect(sp::pattern::regex(R"(WINCH\r\n(\d+ \d+)\r\n)"), 5s);
    CHECK(m.group(1) == "40 120");
    t.send_control('c');  // SIGINT to the foreground group: sh and its sleep
    auto st = t.wait();
    CHECK(st.signal() == SIGINT);
  }
}

TEST_CASE("^C written to the master interrupts the foreground job") {
  auto b = any_backend();
  SECTION("sleep 100") {
    auto t = sp::spawn_in_pty(sp::command{"sleep", "100"}.backend(b));
    t.send_control('c');
    auto st = t.wait_for(5s);
    REQUIRE(st);
    CHECK(st->signal() == SIGINT);
  }
  SECTION("cat, after it has echoed a line") {
    auto t = sp::spawn_in_pty(sp::command{"cat"}.backend(b));
    t.sendline("hello");
    t.expect("hello\r\nhello\r\n", 5s);  // the terminal's echo, then cat's copy
    t.send_control('c');
    CHECK(t.wait().signal() == SIGINT);
  }
  SECTION("^D at the start of a line is end of input") {
    auto t = sp::spawn_in_pty(sp::command{"cat"}.backend(b), {.echo = false});
    t.sendline("secret");
    t.expect("secret\r\n", 5s);
    t.send_eof();
    CHECK(t.expect_eof(5s).empty());  // echo off: only cat's copy came
    CHECK(t.wait().success());
  }
}

TEST_CASE("the child's hang-up (EIO) is a clean end of output, with all of it") {
  auto b = any_backend();
  const std::size_t n = 100 * 1024;
  auto writer = [&] {
    return sp::command::shell("head -c " + std::to_string(n) + " /dev/zero | tr '\\0' x").backend(b);
  };
  SECTION("expect_eof") {
    auto t = sp::spawn_in_pty(writer());
    std::string out = t.expect_eof(std::chrono::hours::max());  // "for ever": saturates
    CHECK(out.size() == n);
    CHECK(out.find_first_not_of('x') == std::string::npos);
    CHECK(t.eof());
    CHECK(t.wait().success());
  }
  SECTION("wait() reads while it waits, and everything left before reaping") {
    auto t = sp::spawn_in_pty(writer());
    CHECK(t.wait().success());
    CHECK(t.buffered().size() == n);
    CHECK(t.dropped() == 0);
  }
  SECTION("output left in the terminal survives the child being reaped") {
    auto t = sp::spawn_in_pty(sp::command::shell("head -c 3000 /dev/zero | tr '\\0' y").backend(b));
    CHECK(t.child().wait().success());  // the process handle alone: nothing read yet
    CHECK(t.expect_eof(5s).size() == 3000);
  }
  SECTION("an event_loop sees data, then an ordinary close") {
    auto t = sp::spawn_in_pty(writer());
    sp::event_loop loop;
    std::size_t got = 0;
    bool closed = false;
    std::optional<sp::exit_status> st;
    loop.on_data(t.output(), [&](std::string_view chunk) { got += chunk.size(); });
    loop.on_close(t.output(), [&] { closed = true; });
    loop.on_exit(t.child(), [&](sp::exit_status s) { st = s; });
    loop.run();
    CHECK(got == n);
    CHECK(closed);
    REQUIRE(st);
    CHECK(st->success());
  }
}

TEST_CASE("event_loop: write to the terminal with a writer, read lines") {
  auto t = sp::spawn_in_pty(sp::command{"cat"}, {.echo = false});
  sp::event_loop loop;
  auto to_cat = loop.writer(t.input());
  std::vector<std::string> lines;
  loop.on_line(t.output(), [&](std::string_view l) {
    lines.emplace_back(l);
    if (lines.size() == 2) to_cat.write("\x04");  // ^D: cat's input ends
  });
  to_cat.write("one\ntwo\n");
  loop.run();
  CHECK(lines == std::vector<std::string>{"one\r", "two\r"});
  CHECK(t.wait().success());
}

TEST_CASE("expect drives an interactive shell") {
  auto b = any_backend();
  auto sh = sp::spawn_in_pty(interactive_sh().backend(b));
  auto first = sh.expect("$ ", 5s);
  sh.sendline("echo $((6 * 7))");
  auto m = sh.expect(sp::pattern::regex(R"((\d+)\r\n)"), 5s);
  CHECK(m.group(1) == "42");
  CHECK_THAT(m.before, Catch::Contains("echo $((6 * 7))"));  // the terminal echoed our line
  sh.expect("$ ", 5s);
  // expect_any: the earliest match wins, index says which (quotes keep the echo of
  // the command line from matching).
  sh.sendline("echo le''ft; echo ri''ght");
  auto any = sh.expect_any({"right\r\n", sp::pattern::regex("l.ft\\r\\n")}, 5s);
  CHECK(any.index == 1);
  CHECK(any.match == "left\r\n");
  sh.expect("$ ", 5s);
  sh.sendline("tty");
  CHECK(sh.expect(sp::pattern::regex(R"(/dev/pts/\d+)"), 5s).match == sh.terminal_name());
  sh.expect("$ ", 5s);
  sh.sendline("exit 3");
  sh.expect_eof(5s);
  CHECK(sh.wait().code() == 3);
}

TEST_CASE("expect drives python3 -i") {
  if (!sp::find_program("python3")) {
    WARN("python3 is not installed: python3 -i not driven");
    return;
  }
  auto py = sp::spawn_in_pty(
      sp::command{"python3", "-i", "-q"}.env(sp::environment::inherit().set("TERM", "dumb").unset("PYTHONSTARTUP")));
  py.expect(">>> ", 10s);
  py.sendline("print(sum(range(10)))");
  CHECK(py.expect(sp::pattern::regex(R"(\r\n(\d+)\r\n)"), 10s).group(1) == "45");
  py.expect(">>> ", 10s);
  py.send_eof();
  py.expect_eof(10s);
  CHECK(py.wait().success());
}

TEST_CASE("expect errors say what was awaited, from which command, and why it gave up") {
  SECTION("timeout") {
    auto sh = sp::spawn_in_pty(sp::command{"sh", "-i"}.env(sp::environment::inherit().set("PS1", "> ").unset("ENV")));
    sh.expect("> ", 5s);
    auto t0 = std::chrono::steady_clock::now();
    try {
      sh.expect(sp::pattern::regex(R"(\$ )"), 300ms);
      FAIL("no exception");
    } catch (const sp::expect_error& e) {
      CHECK(e.why() == sp::expect_error::reason::timeout);
      CHECK(e.code() == std::errc::timed_out);
      CHECK_THAT(e.what(), Catch::StartsWith("timed out after 300ms waiting for /\\$ / from 'sh -i'"));
    }
    CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);
    CHECK(sp::detail::describe_duration(2s) == "2s");
    CHECK(sp::detail::describe_duration(1500ms) == "1.5s");
    CHECK(sp::detail::describe_duration(sp::detail::to_clock_duration(std::chrono::hours::max())).back() == 's');
    sh.sendline("exit");
    CHECK(sh.wait().success());
  }
  SECTION("the output ended first") {
    auto t = sp::spawn_in_pty(sp::command{"echo", "hi"});
    try {
      t.expect("bye", 5s);
      FAIL("no exception");
    } catch (const sp::expect_error& e) {
      CHECK(e.why() == sp::expect_error::reason::eof);
      CHECK(e.output() == "hi\r\n");
      CHECK_THAT(e.what(), Catch::Contains("the output of 'echo hi' ended before \"bye\" appeared") &&
                               Catch::Contains("the last output was \"hi\\r\\n\""));
    }
    CHECK(t.wait().success());
  }
  SECTION("bad input is rejected before anything starts") {
    CHECK_THROWS_AS(sp::spawn_in_pty(sp::command{"cat"}.in(sp::pipe)), sp::argument_error);
    CHECK_THROWS_AS(sp::spawn_in_pty(sp::command{"cat"}, {.max_buffer = 0}), sp::argument_error);
    CHECK_THROWS_AS(sp::pattern::regex("("), sp::argument_error);
    CHECK_THROWS_AS(sp::spawn_in_pty(sp::command{"true"}.join_process_group(::getpgrp())), sp::argument_error);
    auto t = sp::spawn_in_pty(sp::command{"cat"});
    CHECK_THROWS_AS(t.expect("x", -1s), sp::argument_error);
    CHECK_THROWS_AS(t.send_control('1'), sp::argument_error);
  }
  SECTION("a program that is not there is a spawn_error, nothing leaked") {
    CHECK_THROWS_AS(sp::spawn_in_pty(sp::command{"/nonexistent/prog"}), sp::spawn_error);
  }
}

TEST_CASE("hostile output cannot grow the buffer without bound") {
  const std::size_t max = 64 * 1024;
  SECTION("expect: max_buffer bytes without a match is an error") {
    auto t = sp::spawn_in_pty(sp::command{"yes"}, {.max_buffer = max});
    try {
      t.expect("never", 10s);
      FAIL("no exception");
    } catch (const sp::expect_error& e) {
      CHECK(e.why() == sp::expect_error::reason::buffer_full);
      CHECK(e.code() == sp::errc::output_limit_exceeded);
      CHECK(e.output().size() == max);
      CHECK_THAT(e.what(), Catch::StartsWith("65536 bytes of output from 'yes' without \"never\" (max_buffer)"));
    }
    CHECK(t.buffered().size() == max);
    CHECK_THROWS_AS(t.expect_eof(10s), sp::expect_error);  // still full
    t.child().kill();
    t.wait();
  }
  SECTION("wait() keeps the last max_buffer bytes and counts the rest") {
    auto t = sp::spawn_in_pty(sp::command::shell("head -c 300000 /dev/zero | tr '\\0' y; printf END"),
                              {.max_buffer = max});
    CHECK(t.wait().success());
    CHECK(t.buffered().size() == max);
    CHECK(t.dropped() == 300003 - max);
    CHECK(t.buffered().substr(max - 3) == "END");
  }
}

TEST_CASE("stdout and stderr can be kept off the terminal") {
  auto t = sp::spawn_in_pty(sp::command::shell("test -t 0 && echo out; echo err >&2").err(sp::pipe));
  CHECK(t.expect_eof(5s) == "out\r\n");
  CHECK(t.child().err().read_all() == "err\n");
  CHECK(t.wait().success());
}

TEST_CASE("a pty_process destroyed while its child runs: the child is gone, nothing leaked") {
  int pid = 0;
  {
    auto t = sp::spawn_in_pty(interactive_sh());
    t.expect("$ ", 5s);
    pid = t.child().pid();
  }
  CHECK_FALSE(testing::alive(pid));
}

TEST_CASE("kill_on_parent_death children (the spawner thread's clone path) get their terminal too") {
  auto t = sp::spawn_in_pty(sp::command{"tty"}.kill_on_parent_death());
  CHECK(t.expect_eof(5s) == t.terminal_name() + "\r\n");
  CHECK(t.wait().success());
}

TEST_CASE("concurrent spawns: no child ever holds another child's terminal") {
  std::vector<std::thread> threads;
  std::atomic<int> bad{0}, done{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      for (int j = 0; j < 5; ++j) {
        auto b = (i + j) % 2 ? sp::spawn_backend::posix_spawn : sp::spawn_backend::clone_vfork;
        auto t = sp::spawn_in_pty(testing::helper({"list-fds"}).backend(b));
        if (t.expect_eof(10s) != "0 1 2\r\n" || !t.wait().success()) ++bad;
        ++done;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(done == 20);
  CHECK(bad == 0);
}
