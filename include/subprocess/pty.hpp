// subprocess/pty.hpp - run a program on a pseudo-terminal, and talk to it (expect).
//
// Some programs act differently without a terminal: a shell shows no prompt, python
// buffers its output, a pager or a password prompt will not start. spawn_in_pty()
// starts the child on a new pseudo-terminal, like Python's pty/pexpect and Node's
// node-pty: its stdin, stdout and stderr are the terminal, it leads a new session
// with that terminal as its controlling tty (`tty` prints /dev/pts/N; ^C sent to it
// interrupts its foreground job), and you hold the master: what the child prints you
// read, what you send the child reads as typed input.
//
//   ```cpp
//   auto sh = sp::spawn_in_pty(sp::command{"sh", "-i"}.env(sp::environment::inherit().set("PS1", "$ ")),
//                              {.rows = 24, .cols = 80});
//   sh.expect("$ ", 2s);                              // the prompt
//   sh.sendline("echo $((6 * 7))");
//   auto m = sh.expect(sp::pattern::regex(R"((\d+)\r\n)"), 2s);
//   std::cout << m.group(1) << '\n';                  // "42" (a terminal ends lines \r\n)
//   sh.resize(40, 120);                               // sh gets SIGWINCH
//   sh.send_eof();                                    // ^D at the prompt: sh exits
//   std::cout << sh.wait() << '\n';                   // "exited with code 0"
//   ```
//
// Errors: opening or setting up the terminal fails as a spawn_error naming the step;
// an expect that cannot match is an expect_error saying what it waited for, from
// which command, and why it gave up ("timed out after 2s waiting for /\$ / from
// 'sh -i'", or the output ended, or max_buffer bytes came without a match), carrying
// the unmatched output. The child's hang-up (EIO on the master) is the normal end of
// output, never an error. Writing after the child is gone is an io_error.
// Blocking: expect(), expect_eof(), read_some() and send() wait at most their timeout
// (the options' default, 30 s, when none is given; durations saturate); wait() waits
// for the child while reading its output, so it never blocks on a full terminal.
// Threads: one thread at a time per pty_process. Memory: output waiting to be matched
// is bounded by max_buffer (default 1 MiB).
// Event loops: output() is a pipe_reader and input() a pipe_writer on the master, for
// event_loop::on_data/on_line/writer (end of output is an ordinary close there too).
// Differences from pexpect: no spawn through a shell string (use command::shell), a
// terminal that echoes by default (echo = false turns it off), a bounded buffer.
#pragma once

#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/ioctl.h>
#include <termios.h>

#include "command.hpp"
#include "detail/deadline.hpp"
#include "detail/poll.hpp"
#include "detail/sigpipe.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "process.hpp"
#include "stream.hpp"

namespace subprocess {

struct pty_options {
  // The terminal's initial size, as `stty size` reports it.
  unsigned short rows = 24;
  unsigned short cols = 80;
  // The terminal echoes what you send (as a real one does); false turns ECHO off.
  bool echo = true;
  // Output read but not yet matched by expect() is at most this many bytes; reaching
  // it without a match is an expect_error. wait() keeps the last max_buffer bytes.
  std::size_t max_buffer = std::size_t(1) << 20;
  // The timeout of expect(), expect_eof(), read_some() and send() called without one.
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
};

// What expect() waits for: exact text (what a plain string converts to) or a regular
// expression (ECMAScript). Shown in errors as "text" or /regex/.
class pattern {
 public:
  pattern(std::string_view text) : text_(text), shown_(quoted(text)) {}  // NOLINT: implicit
  pattern(const char* text) : pattern(std::string_view(text)) {}        // NOLINT
  pattern(const std::string& text) : pattern(std::string_view(text)) {}  // NOLINT
  // A std::regex has no text to show: errors say /(regex)/.
  pattern(std::regex re) : re_(std::move(re)), shown_("/(regex)/") {}  // NOLINT
  // A regular expression from its source, which errors then show: /\$ /. A bad one
  // is an argument_error.
  static pattern regex(std::string_view source,
                       std::regex::flag_type flags = std::regex::ECMAScript) {
    SUBPROCESS_TRY {
      pattern p{std::regex(source.begin(), source.end(), flags)};
      p.shown_ = "/" + std::string(source) + "/";
      return p;
    } SUBPROCESS_CATCH(const std::regex_error&, e) {
      SUBPROCESS_THROW(argument_error("", "pattern::regex: bad regular expression /" + std::string(source) +
                                   "/: " + e.what()));
    }
  }
  const std::string& to_string() const noexcept { return shown_; }
  bool is_regex() const noexcept { return re_.has_value(); }

  // Finds the pattern in `s`: true with the match's offset, length and groups.
  bool search(std::string_view s, std::size_t& pos, std::size_t& len,
              std::vector<std::string>& groups) const {
    if (!re_) {
      std::size_t p = s.find(text_);
      if (p == std::string_view::npos) return false;
      pos = p, len = text_.size();
      groups.assign(1, text_);
      return true;
    }
    std::cmatch m;
    if (!std::regex_search(s.data(), s.data() + s.size(), m, *re_)) return false;
    pos = static_cast<std::size_t>(m.position(0)), len = static_cast<std::size_t>(m.length(0));
    groups.clear();
    for (const auto& g : m) groups.emplace_back(g.matched ? g.str() : std::string());
    return true;
  }

  // s in double quotes, with control bytes escaped ("\r\n", "\x1b").
  static std::string quoted(std::string_view s) {
    std::string q = "\"";
    for (unsigned char c : s) {
      if (c == '\r') q += "\\r";
      else if (c == '\n') q += "\\n";
      else if (c == '\t') q += "\\t";
      else if (c == '"' || c == '\\') (q += '\\') += static_cast<char>(c);
      else if (c < 0x20 || c == 0x7f) {
        char b[8];
        std::snprintf(b, sizeof b, "\\x%02x", c);
        q += b;
      } else {
        q += static_cast<char>(c);
      }
    }
    return q + "\"";
  }

 private:
  std::string text_;
  std::optional<std::regex> re_;
  std::string shown_;
};

// What errors show: "ready" (in its quotes), /\$ /, /(regex)/.
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pattern& p) {
  return detail::put_text(os, p.to_string());
}

// What expect() found.
struct expect_match {
  std::string before;               // the output before the match
  std::string match;                // the matched text
  std::vector<std::string> groups;  // [0] the match; for a regex, then its groups
  std::size_t index = 0;            // which pattern matched (expect_any)
  // Group i ("" if it did not take part, or there is no such group).
  std::string_view group(std::size_t i) const noexcept {
    return i < groups.size() ? std::string_view(groups[i]) : std::string_view();
  }
};

// expect() gave up. why(): timeout (code std::errc::timed_out), eof (the output
// ended: std::errc::no_message), buffer_full (max_buffer bytes without a match:
// errc::output_limit_exceeded). output() is the unmatched output it saw.
class expect_error : public error {
 public:
  enum class reason { timeout, eof, buffer_full };
  expect_error(reason why, std::string command, const std::string& message, std::string output)
      : error(code_of(why), std::move(command), message), why_(why), output_(std::move(output)) {}
  reason why() const noexcept { return why_; }
  const std::string& output() const noexcept { return output_; }

 private:
  static std::error_code code_of(reason r) {
    if (r == reason::timeout) return std::make_error_code(std::errc::timed_out);
    if (r == reason::eof) return std::make_error_code(std::errc::no_message);
    return make_error_code(errc::output_limit_exceeded);
  }
  reason why_;
  std::string output_;
};

namespace detail {
// command.hpp's hook (its private settings): the slave on the stdio slots left unset,
// a new session, and the slave as the controlling terminal.
struct pty_access {
  static command prepare(command c, int slave, const std::string& path) {
    for (auto& s : c.stdio_)
      if (!s) s = fd(slave);
    c.new_session_ = true;
    c.controlling_tty_ = path;
    return c;
  }
};

// "2s", "1.5s", "250ms".
inline std::string describe_duration(clock::duration d) {
  const auto ms = saturating_ceil<std::chrono::milliseconds>(d).count();
  if (ms < 1000) return std::to_string(ms) + "ms";
  std::string s = std::to_string(ms / 1000);
  if (ms % 1000 != 0) {
    char frac[8];
    std::snprintf(frac, sizeof frac, ".%03d", static_cast<int>(ms % 1000));
    std::string f(frac);
    while (f.back() == '0') f.pop_back();
    s += f;
  }
  return s + "s";
}
}  // namespace detail

class pty_process;
pty_process spawn_in_pty(const command& cmd, pty_options opts = {});

class pty_process {
 public:
  pty_process() = default;
  pty_process(pty_process&&) noexcept = default;
  pty_process& operator=(pty_process&&) noexcept = default;
  // Closes the master (the child sees a hang-up: SIGHUP), then the process handle
  // kills and reaps a child still running (process.hpp).
  ~pty_process() = default;

  // The child (pid, signal, wait...). It leads its own session and process group.
  subprocess::process& child() noexcept { return proc_; }
  // The master, read side: the child's output. A pipe_reader whose end of stream is
  // the child's hang-up; expect() reads through its buffer too.
  pipe_reader& output() noexcept { return out_; }
  // The master, write side (a second fd of it): the child's input. Closing it does
  // not end the child's input: send_eof() does.
  pipe_writer& input() noexcept { return in_; }
  // The slave's path, "/dev/pts/N", as the child's `tty` prints it.
  const std::string& terminal_name() const noexcept { return slave_; }
  const std::string& command_line() const noexcept { return cmd_; }

  // The window size; resize() makes the kernel send SIGWINCH to the terminal's
  // foreground process group.
  std::pair<unsigned short, unsigned short> size() const {
    winsize ws{};
    if (detail::sys::ioctl(out_.fd(), TIOCGWINSZ, &ws) != 0)
      SUBPROCESS_THROW(io_error(errno, cmd_, "read the terminal size"));
    return {ws.ws_row, ws.ws_col};
  }
  void resize(unsigned short rows, unsigned short cols) {
    winsize ws{};
    ws.ws_row = rows, ws.ws_col = cols;
    if (detail::sys::ioctl(out_.fd(), TIOCSWINSZ, &ws) != 0)
      SUBPROCESS_THROW(io_error(errno, cmd_, "resize the terminal"));
  }

  // Types `data`, waiting while the terminal's input queue is full (at most the
  // timeout: expect_error). io_error once the child has hung up. A terminal in its
  // default (canonical) mode takes lines of up to 4095 bytes; it drops the rest.
  void send(std::string_view data) { send(data, opts_.timeout); }
  template <class Rep, class Period>
  void send(std::string_view data, std::chrono::duration<Rep, Period> timeout) {
    const auto d = checked(timeout, "send");
    const auto dl = detail::deadline_in(d);
    detail::sigpipe_guard guard;
    while (!data.empty()) {
      ssize_t n = in_.write_raw(data, guard);
      if (n > 0) {
        data.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (detail::clock::now() >= dl || detail::poll_one(in_.fd(), POLLOUT, dl, cmd_) == 0)
        SUBPROCESS_THROW(expect_error(expect_error::reason::timeout, cmd_,
                           "timed out after " + detail::describe_duration(d) +
                               " writing to the terminal of '" + cmd_ + "' (it reads no input)",
                           std::string(out_.buffered())));
    }
  }
  // The line and "\n" (the terminal turns it into the Enter key the program expects).
  void sendline(std::string_view line = {}) {
    std::string s(line);
    s += '\n';
    send(s);
  }
  // Control-<c>: send_control('c') is ^C (SIGINT to the foreground job, with the
  // terminal's default settings), 'z' ^Z, 'd' ^D, '\\' ^\ (SIGQUIT), '[' ESC.
  void send_control(char c) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c == '?') {
      send("\x7f");
      return;
    }
    if (c < '@' || c > '_') SUBPROCESS_THROW(argument_error(cmd_, std::string("send_control: no control character for '") + c + "'"));
    send(std::string(1, static_cast<char>(c & 0x1f)));
  }
  // ^D (VEOF): at the start of a line a reading program sees end of input.
  void send_eof() { send("\x04"); }

  // Waits until the output contains `p` (the earliest match among `ps` for
  // expect_any); returns what came before it and the match, and consumes both. A
  // regex is searched in all unmatched output each time more arrives.
  expect_match expect(const pattern& p) { return expect(p, opts_.timeout); }
  template <class Rep, class Period>
  expect_match expect(const pattern& p, std::chrono::duration<Rep, Period> timeout) {
    const pattern* one[] = {&p};
    return expect_impl(one, 1, checked(timeout, "expect"));
  }
  expect_match expect_any(std::initializer_list<pattern> ps) { return expect_any(ps, opts_.timeout); }
  template <class Rep, class Period>
  expect_match expect_any(std::initializer_list<pattern> ps, std::chrono::duration<Rep, Period> timeout) {
    std::vector<const pattern*> v;
    for (const auto& p : ps) v.push_back(&p);
    if (v.empty()) SUBPROCESS_THROW(argument_error(cmd_, "expect_any: no pattern"));
    return expect_impl(v.data(), v.size(), checked(timeout, "expect_any"));
  }
  // Everything until the child hangs up (all its output, then EIO on the master).
  std::string expect_eof() { return expect_eof(opts_.timeout); }
  template <class Rep, class Period>
  std::string expect_eof(std::chrono::duration<Rep, Period> timeout) {
    const auto d = checked(timeout, "expect_eof");
    const auto dl = detail::deadline_in(d);
    while (!out_.input_ended()) {
      if (out_.buffered().size() >= opts_.max_buffer)
        fail(expect_error::reason::buffer_full, "the end of output", d);
      if (!fill_until(dl)) fail(expect_error::reason::timeout, "the end of output", d);
    }
    return take(out_.buffered().size());
  }
  // What is available: what arrived and was not consumed yet, else what arrives
  // within the timeout. "" on timeout or at the end of output (then eof() is true).
  std::string read_some() { return read_some(opts_.timeout); }
  template <class Rep, class Period>
  std::string read_some(std::chrono::duration<Rep, Period> timeout) {
    const auto dl = detail::deadline_in(checked(timeout, "read_some"));
    if (out_.buffered().empty()) fill_until(dl);
    return take(out_.buffered().size());
  }
  // Output read and not consumed yet.
  std::string_view buffered() const noexcept { return out_.buffered(); }
  // The child has hung up and everything it wrote was consumed.
  bool eof() const noexcept { return out_.eof(); }
  // Bytes wait() had to drop to keep max_buffer (the oldest go first).
  std::size_t dropped() const noexcept { return dropped_; }

  // Waits for the child to exit, reading its output meanwhile (kept in buffered(),
  // the last max_buffer bytes), and reads what it left in the terminal before it is
  // reaped. wait_for() gives up after the timeout (nullopt).
  exit_status wait() { return *wait_until(std::nullopt); }
  template <class Rep, class Period>
  std::optional<exit_status> wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::deadline_in(checked(timeout, "wait_for")));
  }

 private:
  friend pty_process spawn_in_pty(const command& cmd, pty_options opts);

  template <class Rep, class Period>
  detail::clock::duration checked(std::chrono::duration<Rep, Period> t, const char* what) const {
    if (t < t.zero()) SUBPROCESS_THROW(argument_error(cmd_, std::string(what) + ": negative timeout"));
    return detail::to_clock_duration(t);
  }

  std::string take(std::size_t n) {
    std::string s(out_.buffered().substr(0, n));
    out_.consume(n);
    return s;
  }

  // Reads more into the buffer, without passing max_buffer. False on timeout.
  bool fill_until(const detail::deadline& dl) {
    for (;;) {
      const std::size_t room = opts_.max_buffer - std::min(opts_.max_buffer, out_.buffered().size());
      if (room == 0) return true;
      ssize_t r = out_.fill(std::min<std::size_t>(room, 64 * 1024));
      if (r >= 0) return true;  // data, or the end (input_ended())
      if (dl && detail::clock::now() >= *dl) return false;
      if (detail::poll_one(out_.fd(), POLLIN, dl, cmd_) == 0) return false;
    }
  }

  [[noreturn]] void fail(expect_error::reason why, const std::string& what, detail::clock::duration d) {
    std::string_view seen = out_.buffered();
    std::string tail = seen.size() > 80 ? "..." + pattern::quoted(seen.substr(seen.size() - 80))
                                        : pattern::quoted(seen);
    std::string m;
    if (why == expect_error::reason::timeout)
      m = "timed out after " + detail::describe_duration(d) + " waiting for " + what + " from '" + cmd_ + "'";
    else if (why == expect_error::reason::eof)
      m = "the output of '" + cmd_ + "' ended before " + what + " appeared";
    else
      m = std::to_string(seen.size()) + " bytes of output from '" + cmd_ + "' without " + what +
          " (max_buffer)";
    SUBPROCESS_THROW(expect_error(why, cmd_, m + "; the last output was " + tail, std::string(seen)));
  }

  expect_match expect_impl(const pattern* const* ps, std::size_t n, detail::clock::duration d) {
    const auto dl = detail::deadline_in(d);
    std::string what;
    for (std::size_t i = 0; i < n; ++i) what += (i ? " or " : "") + ps[i]->to_string();
    std::vector<std::string> groups;
    for (;;) {
      std::string_view b = out_.buffered();
      expect_match best;
      std::size_t best_pos = std::string_view::npos, best_len = 0;
      for (std::size_t i = 0; i < n; ++i) {
        std::size_t pos = 0, len = 0;
        if (ps[i]->search(b, pos, len, groups) && pos < best_pos) {
          best_pos = pos, best_len = len;
          best.groups = groups;
          best.index = i;
        }
      }
      if (best_pos != std::string_view::npos) {
        best.before = std::string(b.substr(0, best_pos));
        best.match = std::string(b.substr(best_pos, best_len));
        out_.consume(best_pos + best_len);
        return best;
      }
      if (out_.input_ended()) fail(expect_error::reason::eof, what, d);
      if (b.size() >= opts_.max_buffer) fail(expect_error::reason::buffer_full, what, d);
      if (!fill_until(dl)) fail(expect_error::reason::timeout, what, d);
    }
  }

  // One read into the buffer, dropping the oldest output beyond max_buffer.
  ssize_t fill_window() {
    ssize_t r = out_.fill(64 * 1024);
    if (out_.buffered().size() > opts_.max_buffer) {
      std::size_t excess = out_.buffered().size() - opts_.max_buffer;
      out_.consume(excess);
      dropped_ += excess;
    }
    return r;
  }

  std::optional<exit_status> wait_until(const detail::deadline& dl) {
    if (!proc_.valid()) SUBPROCESS_THROW(argument_error("", "wait() on an empty pty_process"));
    for (;;) {
      if (auto st = proc_.try_wait()) {
        // Exited: what it wrote is in the terminal (a read flushes the kernel's queue
        // first). Take it now, bounded: a grandchild may still be writing.
        for (int i = 0; i < 64 && !out_.input_ended() && fill_window() > 0; ++i) {
        }
        return st;
      }
      if (dl && detail::clock::now() >= *dl) return std::nullopt;
      // Both the output and the pidfd; without a pidfd, try_wait() every 10 ms.
      pollfd fds[2] = {{out_.input_ended() ? -1 : out_.fd(), POLLIN, 0}, {proc_.pidfd(), POLLIN, 0}};
      detail::deadline slice = dl;
      if (proc_.pidfd() < 0) {
        auto soon = detail::deadline_in(std::chrono::milliseconds(10));
        if (!slice || soon < *slice) slice = soon;
      }
      detail::poll_until(fds, 2, slice, cmd_);
      if (fds[0].revents != 0) fill_window();
    }
  }

  subprocess::process proc_;
  pipe_reader out_;
  pipe_writer in_;
  std::string slave_;
  std::string cmd_;
  pty_options opts_;
  std::size_t dropped_ = 0;
};

// Starts `cmd` on a new pseudo-terminal of `opts.rows` x `opts.cols`. stdin is
// always the terminal (setting in() is an argument_error); stdout and stderr are too
// unless the command sets them (say err(sp::pipe) to keep errors apart: then
// child().err()). The child leads a new session (so join_process_group() cannot be
// combined) with the terminal as its controlling tty; on both spawn back ends.
// The parent keeps only the master (close-on-exec, non-blocking); the slave is
// closed here once the child has it, so the child's exit is the end of output.
inline pty_process spawn_in_pty(const command& cmd, pty_options opts) {
  std::string cmdline = cmd.to_string();
  if (opts.max_buffer == 0) SUBPROCESS_THROW(argument_error(cmdline, "spawn_in_pty: max_buffer must be positive"));
  if (opts.timeout.count() < 0) SUBPROCESS_THROW(argument_error(cmdline, "spawn_in_pty: negative timeout"));
  if (cmd.in()) SUBPROCESS_THROW(argument_error(cmdline, "spawn_in_pty: stdin is the terminal; leave in() unset"));
  auto fail = [&](const char* step, const std::string& detail = {}) {
    int e = errno;
    SUBPROCESS_THROW(spawn_error(e, cmdline, step, detail));
  };
  detail::unique_fd master(detail::sys::posix_openpt(O_RDWR | O_NOCTTY));
  if (!master) fail("open a pseudo-terminal", "(posix_openpt)");
  if (detail::sys::grantpt(master.get()) != 0) fail("grantpt");
  if (detail::sys::unlockpt(master.get()) != 0) fail("unlockpt");
  char name[128];
  if (detail::sys::ptsname_r(master.get(), name, sizeof name) != 0) fail("ptsname");
  winsize ws{};
  ws.ws_row = opts.rows, ws.ws_col = opts.cols;
  if (detail::sys::ioctl(master.get(), TIOCSWINSZ, &ws) != 0) fail("set the terminal size");
  int fl = detail::sys::fcntl(master.get(), F_GETFL);
  if (fl < 0 || detail::sys::fcntl(master.get(), F_SETFL, fl | O_NONBLOCK) != 0)
    fail("make the terminal non-blocking");
  detail::unique_fd writer(detail::sys::dup_above(master.get(), 0));
  if (!writer) fail("dup the terminal");
  detail::unique_fd slave(detail::sys::open(name, O_RDWR | O_NOCTTY));
  if (!slave) fail("open the terminal", std::string("'") + name + "'");
  if (!opts.echo) {
    termios t{};
    if (detail::sys::ioctl(slave.get(), TCGETS, &t) != 0) fail("read the terminal settings");
    t.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOE | ECHOK | ECHONL);
    if (detail::sys::ioctl(slave.get(), TCSETS, &t) != 0) fail("turn echo off");
  }
  pty_process t;
  t.proc_ = detail::pty_access::prepare(cmd, slave.get(), name).spawn();
  slave.reset();  // the child's now: its hang-up is our end of output
  t.out_ = pipe_reader(detail::terminal_master, std::move(master), "terminal", cmdline);
  t.in_ = pipe_writer(detail::nonblocking_fd, std::move(writer), "terminal", cmdline);
  t.slave_ = name;
  t.cmd_ = std::move(cmdline);
  t.opts_ = opts;
  return t;
}

}  // namespace subprocess
