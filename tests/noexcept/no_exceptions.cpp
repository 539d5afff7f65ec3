// no_exceptions - the error_code overloads in a program built with -fno-exceptions
// (tests/CMakeLists.txt). Every check prints what failed and the program exits 1;
// no Catch2 here: it is built without exceptions. Real programs: sh, sleep, echo,
// the ipc_helper (with nlohmann/json).
#include <subprocess/run.hpp>
#ifdef NOEXC_IPC
#include <subprocess/ipc/channel.hpp>
#endif

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string_view>
#include <system_error>

#include <sys/stat.h>
#include <unistd.h>

#ifdef __cpp_exceptions
#error "this test must be built with -fno-exceptions"
#endif
#ifndef SUBPROCESS_NO_EXCEPTIONS
#error "SUBPROCESS_NO_EXCEPTIONS is not detected"
#endif

namespace sp = subprocess;
using namespace std::chrono_literals;

static int failures = 0;
#define EXPECT(cond)                                                 \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                    \
    }                                                                \
  } while (0)

int main(int argc, char** argv) {
  std::error_code ec;
  // What a throw becomes (the test no_exceptions_abort): the message, then abort.
  if (argc > 1 && std::string_view(argv[1]) == "abort") {
    (void)sp::command{std::vector<std::string>{}}.spawn();  // argument_error: no error_code path
    return 0;
  }

  // A child that fails: its status, no error.
  {
    std::optional<sp::process> p = sp::command{"sh", "-c", "exit 3"}.spawn(ec);
    EXPECT(p && !ec);
    if (p) {
      std::optional<sp::exit_status> st = p->wait(ec);
      EXPECT(!ec && st && st->code() == 3);
    }
  }
  // A program that cannot be started: the errno, no crash, nothing left behind.
  {
    EXPECT(!sp::command{"no-such-program-xyz"}.spawn(ec) && ec == std::errc::no_such_file_or_directory);
    ec.clear();
    EXPECT(!sp::command{"/nonexistent/prog"}.spawn(ec) && ec == std::errc::no_such_file_or_directory);
    ec.clear();
    // A file that is not executable (this program's source directory is not ours to
    // write to: a file of our own in /tmp, mode 0644).
    char path[] = "/tmp/no_exceptions_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0 && fchmod(fd, 0644) == 0 && close(fd) == 0);
    EXPECT(!sp::command{path}.spawn(ec) && ec == std::errc::permission_denied);
    unlink(path);
    ec.clear();
    EXPECT(!sp::command{"true"}.cwd("/nonexistent-dir").spawn(ec) && ec == std::errc::no_such_file_or_directory);
  }
  // A wait that times out is no error; then a signal, a kill, terminate().
  {
    std::optional<sp::process> p = sp::command{"sleep", "5"}.spawn(ec);
    EXPECT(p && !ec);
    if (p) {
      EXPECT(!p->wait_for(50ms, ec) && !ec);
      EXPECT(!p->wait_until(std::chrono::system_clock::now() + 10ms, ec) && !ec);
      EXPECT(!p->wait_for(-1ms, ec) && ec == std::errc::invalid_argument);
      EXPECT(p->signal(SIGTERM, ec) && !ec);
      std::optional<sp::exit_status> st = p->wait(ec);
      EXPECT(!ec && st && st->signal() == SIGTERM);
      EXPECT(!p->signal(SIGTERM, ec) && !ec);  // reaped: nothing sent, no error
    }
    p = sp::command{"sleep", "5"}.spawn(ec);
    if (p) {
      p->kill(ec);
      EXPECT(!ec);
      std::optional<sp::exit_status> st = p->wait_for(5s, ec);
      EXPECT(!ec && st && st->signal() == SIGKILL);
    }
    p = sp::command{"sleep", "5"}.spawn(ec);
    if (p) {
      std::optional<sp::exit_status> st = p->terminate(2s, ec);
      EXPECT(!ec && st && st->signal() == SIGTERM);
    }
    sp::process empty;
    EXPECT(!empty.wait(ec) && ec == std::errc::invalid_argument);
    EXPECT(!empty.signal(SIGTERM, ec) && ec == std::errc::invalid_argument);
  }
  // run(): capture, check, a program that cannot be started.
  {
    sp::run_result r = sp::run(sp::command{"echo", "hi"}, {}, ec);
    EXPECT(!ec && r.out == "hi\n" && r.success());
    r = sp::run(sp::command{"sh", "-c", "echo oops >&2; exit 2"}, {.check = true}, ec);
    EXPECT(ec == sp::errc::process_failed && r.status.code() == 2 && r.err == "oops\n");
    r = sp::run(sp::command{"no-such-program-xyz"}, {}, ec);
    EXPECT(ec == std::errc::no_such_file_or_directory);
    r = sp::run(sp::command{"true"}, {.timeout = -1ms}, ec);
    EXPECT(ec == std::errc::invalid_argument);
  }
#ifdef NOEXC_IPC
  // The IPC channel: send and receive, then the end of the channel.
  {
    std::optional<sp::process> p = sp::command{IPC_HELPER_PATH, "connect", "echo-n", "1"}.ipc().spawn(ec);
    EXPECT(p && !ec);
    if (p) {
      sp::ipc::channel ch(*p);
      EXPECT(ch.send({{"hello", "world"}}, ec) && !ec);
      std::optional<sp::ipc::json> m = ch.receive(ec);
      EXPECT(!ec && m && (*m)["hello"] == "world");
      m = ch.receive_for(5s, ec);
      EXPECT(!ec && !m && ch.eof());  // the helper exited: the end, no error
      ch.close();
      EXPECT(!ch.send({{"late", true}}, ec) && ec == sp::errc::channel_closed);
      std::optional<sp::exit_status> st = p->wait(ec);
      EXPECT(!ec && st && st->success());
    }
  }
#endif
  if (failures == 0) std::puts("no_exceptions: all checks passed");
  return failures == 0 ? 0 : 1;
}
