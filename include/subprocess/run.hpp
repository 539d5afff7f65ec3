// subprocess/run.hpp - run a command to completion and capture what it printed.
//
// Like Python's subprocess.run or Node's execFile: run() spawns the command, writes
// `input` to it, captures stdout and stderr, and waits. communicate(p, input) does the
// same for a process you spawned yourself with pipes.
//
//   ```cpp
//   auto r = sp::run(sp::command{"sort", "-r"}, {.input = "b\na\nc\n", .timeout = 5s});
//   if (r.success()) std::cout << r.out;   // "c\nb\na\n"; r.err holds its stderr
//   r.check();         // throws process_error (status + stderr tail) unless success
//   sp::run(sp::command{"make"}, {.check = true});   // the same, throwing at once
//   ```
//
// Streams you did not set are chosen for capture (stdout and stderr piped; stdin
// carries `input`, or is /dev/null); streams you did set are respected (see run()).
//
// Errors: what command::spawn() throws (spawn_error...); timeout_error, carrying the
// output so far, when the timeout strikes; output_limit_error naming the stream that
// passed max_output (unless on_output_limit is truncate); process_error with .check
// when the exit code is not a success code; argument_error for a negative timeout or
// input while stdin is redirected elsewhere. A child that exits without reading all
// its input is not an error (the rest is dropped, like a shell pipe): its exit status
// tells you what happened.
// Blocking: until the child has exited and its pipes are drained, or until the
// timeout: then the child (its whole process group, if it has one) gets SIGKILL, or
// what on_timeout says (timeout.hpp: SIGTERM, a grace, then SIGKILL), and is reaped.
// Exit is seen through the pidfd, so a grandchild that keeps the pipes open cannot
// hold run() past its timeout; without a timeout, run() reads until every writer of
// the pipes is gone, as a shell's $(...) does. run(cmd, opts, stop_token) ends it
// early the same way, with canceled_error.
// Threads: none are started. The input is written and both outputs are read at the
// same time, from the calling thread, with poll(): nothing deadlocks, whatever the
// sizes. The parent never gets SIGPIPE (it is blocked in the calling thread only
// while there is input to write; your disposition is not changed).
// Cost: output lands in std::strings; capturing N bytes needs about N bytes of memory,
// not the 2N a growing std::string briefly holds (see append_output). A pipe that
// runs full (a fast producer) is enlarged to 1 MiB, for fewer wake-ups and reads.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "command.hpp"
#include "detail/eventfd.hpp"
#include "detail/exit_watch.hpp"
#include "detail/pages.hpp"
#include "detail/poll.hpp"
#include "detail/sigpipe.hpp"
#include "error.hpp"
#include "process.hpp"
#include "timeout.hpp"

namespace subprocess {

enum class output_limit {
  kill,      // kill the child and throw output_limit_error
  truncate,  // keep the first max_output bytes, discard the rest, let it finish
};

struct run_options {
  // Written to the child's stdin, which is then closed. A child that exits without
  // reading it all is not an error: the rest is dropped, like a shell pipe.
  std::optional<std::string> input{};
  // Kill the child (and its group) when it runs longer; throws timeout_error. At the
  // deadline the child is sent SIGKILL, or what on_timeout says (its whole process
  // group if it has one, even when the leader has exited already and only its
  // children still hold the pipes), reaped, and timeout_error is thrown carrying the
  // output so far. Up to milliseconds::max(), which never strikes.
  std::optional<std::chrono::milliseconds> timeout{};
  // What the timeout does (timeout.hpp): SIGKILL at once by default; kill_with(SIGTERM,
  // 2s) sends SIGTERM and SIGKILL 2 s later if the child (its group) is still alive.
  // leave_running() is refused here (run() keeps no handle): see communicate().
  timeout_policy on_timeout{};
  // Throw process_error unless the child exits with code 0 (or one of the
  // command's success_codes()).
  bool check = false;
  // Most bytes captured per stream; unlimited when unset. At the limit the child is
  // killed and output_limit_error says which stream overflowed (it keeps the first
  // max_output bytes); with on_output_limit = truncate the rest is read and thrown
  // away and out_truncated/err_truncated are set.
  std::optional<std::size_t> max_output{};
  output_limit on_output_limit = output_limit::kill;
  // Start the command in a process tree (command::tree(), unless it has one) and wait
  // for its last descendant, not only the child: a daemon it left running is waited
  // for (and killed with the tree at the timeout). Without this, a tree() command's
  // leftovers are killed when run() returns (the handle owns the tree).
  bool wait_for_tree = false;
};

struct run_result {
  std::string command;  // shell-quoted, for messages
  exit_status status = exit_status::exited(0);
  std::string out;
  std::string err;
  bool out_truncated = false;
  bool err_truncated = false;
  // tree() only: descendants were still running when the child exited.
  bool descendants_outlived = false;
  // The exit codes that count as success: run() copies the command's success_codes().
  std::vector<int> success_codes{0};

  // Exited with one of success_codes() (code 0 unless the command says otherwise).
  bool success() const noexcept {
    auto c = status.code();
    return c && std::find(success_codes.begin(), success_codes.end(), *c) != success_codes.end();
  }
  // Throws process_error unless success(); returns *this.
  const run_result& check() const {
    if (!success()) SUBPROCESS_THROW(process_error(command, status, {out, err}));
    return *this;
  }
};

struct communicate_options {
  std::optional<std::chrono::milliseconds> timeout{};
  // As run_options::on_timeout; leave_running() is allowed: timeout_error then says
  // the child is still running and p still owns it (wait, kill or communicate again;
  // the output read so far is in the error).
  timeout_policy on_timeout{};
  std::optional<std::size_t> max_output{};
  output_limit on_output_limit = output_limit::kill;
};

namespace detail {

struct capture {
  pipe_reader* reader;
  std::string* sink;
  bool* truncated;
  const char* name;
  std::size_t read_size = 64 * 1024;  // grows to big_pipe once the pipe runs full
};

// sink += data, for output that may be large. Two costs dominate a big capture:
//  * A std::string grows by allocating twice its capacity and copying, so for a
//    moment it holds its contents twice: capturing 1 GiB could need 2 GiB.
//  * Every page written for the first time is a page fault. Taken one by one from
//    user space (a memcpy into fresh memory) they cost more than the copy itself.
// So past 1 MiB we grow the string ourselves: 4x rather than 2x (capacity never
// written is address space, not memory), so less is copied; in 1 MiB pieces, each
// copied piece of the old buffer handed back to the kernel at once, so the peak
// stays near the captured size (the old buffer is freed right after and nothing
// reads the released pages); and every range is populated in one madvise call
// before it is written, instead of faulting page by page. The hand-over is early
// (1 MiB) because the small strings a std::string outgrows stay resident in
// malloc's heap once freed: past 1 MiB that leftover is at most about 1 MiB.
// Not done: asking for transparent huge pages (MADV_HUGEPAGE). Measured, it is a
// little faster on warm memory but several times slower right after another process
// freed its memory, because the kernel then compacts memory synchronously.
inline void append_output(std::string& sink, std::string_view data) {
  constexpr std::size_t large = 1024 * 1024, piece = 1024 * 1024;
  if (sink.size() < large) {
    sink.append(data);
    return;
  }
  if (sink.capacity() - sink.size() < data.size()) {
    const std::size_t need = sink.size() + data.size();
    std::string bigger;
    SUBPROCESS_TRY {
      bigger.reserve(std::max(need, 4 * sink.capacity()));
    } SUBPROCESS_CATCH(const std::bad_alloc&, sp_unused_) {  // strict overcommit: ask for what a string would
      bigger.reserve(std::max(need, 2 * sink.capacity()));
    }
    for (std::size_t off = 0; off < sink.size(); off += piece) {
      std::size_t n = std::min(piece, sink.size() - off);
      populate_pages(bigger.data() + off, n);
      bigger.append(sink.data() + off, n);
      advise_pages(sink.data() + off, n, MADV_DONTNEED);
    }
    sink = std::move(bigger);
  }
  populate_pages(sink.data() + sink.size(), data.size());
  sink.append(data);
}

// Moves what c's reader holds into its sink, up to max_output. Returns false when
// the limit was hit under output_limit::kill.
inline bool keep_buffered(capture& c, const communicate_options& o) {
  std::string_view got = c.reader->buffered();
  std::size_t room = o.max_output ? (*o.max_output > c.sink->size() ? *o.max_output - c.sink->size() : 0)
                                  : got.size();
  append_output(*c.sink, got.substr(0, std::min(room, got.size())));
  c.reader->consume(got.size());
  if (room < got.size()) {
    *c.truncated = true;
    if (o.on_output_limit == output_limit::kill) return false;
  }
  return true;
}

// Reads what is available on one captured stream into its sink, at most
// `rounds` reads so a fast writer cannot starve the other fds. Returns false when
// the limit was hit under output_limit::kill.
inline bool drain_into(capture& c, const communicate_options& o, int rounds = 4) {
  while (rounds-- > 0) {
    ssize_t r = c.reader->fill(c.read_size);
    if (r <= 0) return true;
    // The pipe was full: a fast producer. Enlarge it and read that much at a time.
    if (c.read_size < big_pipe && static_cast<std::size_t>(r) >= c.read_size) {
      enlarge_pipe(c.reader->fd());
      c.read_size = big_pipe;
    }
    if (!keep_buffered(c, o)) return false;
  }
  return true;
}

}  // namespace detail

// Feeds `input` to p.in() (then closes it), captures p.out() and p.err() (those that
// are open pipes), waits for the child, and returns everything. The process must
// have been spawned with the pipes you want used.
//
// With a std::stop_token: a stop request (from any thread) ends it early: the child
// is killed (its group too) and reaped, and canceled_error (std::errc::
// operation_canceled) is thrown; the output so far is dropped.
inline run_result communicate(process& p, std::string_view input, const communicate_options& opts,
                              std::stop_token stop) {
  if (!p.valid()) SUBPROCESS_THROW(argument_error("", "communicate() on an empty process handle"));
  if (opts.timeout && *opts.timeout < std::chrono::milliseconds::zero())
    SUBPROCESS_THROW(argument_error(p.command_line(), "negative timeout"));
  detail::check_policy(opts.on_timeout, p.command_line());
  run_result res;
  res.command = p.command_line();
  const detail::deadline dl = detail::deadline_in(opts.timeout);
  detail::capture caps[2] = {{&p.out(), &res.out, &res.out_truncated, "stdout", 64 * 1024},
                             {&p.err(), &res.err, &res.err_truncated, "stderr", 64 * 1024}};
  // Take what wait() may have buffered already.
  for (auto& c : caps) {
    c.sink->append(c.reader->buffered());
    c.reader->consume(c.reader->buffered().size());
  }
  pipe_writer& in = p.in();
  if (input.empty()) in.close();

  auto fail_and_reap = [&](const char* why) -> std::optional<exit_status> {
    (void)why;
    p.kill();
    std::optional<exit_status> st;
    SUBPROCESS_TRY {
      st = p.wait_until(detail::clock::now() + std::chrono::seconds(5));
    } SUBPROCESS_CATCH(const error&, sp_unused_) {
    }
    return st;
  };
  // The timeout struck: apply the policy, take the last output, throw. `note` says
  // why the pipes were still open after the child had exited.
  auto expire = [&](const std::string& note) {
    timeout_outcome o;
    SUBPROCESS_TRY {
      o = p.stop(opts.on_timeout);
    } SUBPROCESS_CATCH(const error&, sp_unused_) {  // could not be reaped: still, it was signalled
      o.killed = true;
    }
    for (auto& c : caps) {  // what stop() drained while waiting, then one more read
      detail::keep_buffered(c, opts);
      detail::drain_into(c, opts, 1);
    }
    SUBPROCESS_THROW(timeout_error(res.command, *opts.timeout, opts.on_timeout, std::move(o),
                        {res.out, res.err}, note));
  };

  // SIGPIPE is blocked (per thread) only while there is input to write.
  std::optional<detail::sigpipe_guard> guard;
  if (in.is_open()) {
    guard.emplace();
    guard->check(res.command);
  }
  // A stop token wakes poll() through an eventfd (made only when the token can stop).
  detail::unique_fd stop_fd;
  if (stop.stop_possible()) {
    stop_fd.reset(detail::sys::eventfd(0, EFD_NONBLOCK));
    if (!stop_fd) detail::throw_errno(errno, "communicate: eventfd for the stop token of '" + res.command + "'");
  }
  struct notify {
    int fd;
    void operator()() const noexcept {
      if (fd >= 0) detail::eventfd_notify(fd);
    }
  };
  std::stop_callback<notify> on_stop(stop, notify{stop_fd.get()});
  bool was_late = false;
  detail::exit_poll backoff;  // without a pidfd: when to look at the child again
  for (;;) {
    pollfd fds[5];
    int n = 0, in_i = -1, pid_i = -1, cap_i[2] = {-1, -1};
    if (in.is_open()) {
      in_i = n;
      fds[n++] = {in.fd(), POLLOUT, 0};
    }
    for (int i = 0; i < 2; ++i)
      if (caps[i].reader->is_open() && !caps[i].reader->eof()) {
        cap_i[i] = n;
        fds[n++] = {caps[i].reader->fd(), POLLIN, 0};
      }
    bool exited = p.status().has_value();
    if (n == 0 && exited) break;
    if (!exited && p.pidfd() >= 0) {
      pid_i = n;
      fds[n++] = {p.pidfd(), POLLIN, 0};
    }
    int stop_i = -1;
    if (stop_fd) {
      stop_i = n;
      fds[n++] = {stop_fd.get(), POLLIN, 0};
    }
    if (n == 0) {  // no pidfd and no pipes left: just wait
      if (!p.wait_until(dl)) expire({});
      break;
    }
    // Without a pidfd, look at the child now and then while pipes are open.
    detail::deadline wake = dl;
    if (!exited && p.pidfd() < 0) {
      auto soon = backoff.next_time();
      if (!wake || soon < *wake) wake = soon;
    }
    int ready = detail::poll_until(fds, static_cast<nfds_t>(n), wake, res.command);
    // Past the deadline, what poll() reported is handled once more (a child that
    // finished right at the deadline still succeeds), then it is a timeout, whether or
    // not poll() timed out: a pipe that never stops being readable (a child writing
    // faster than we read) must not keep run() past its timeout.
    if (stop_i >= 0 && fds[stop_i].revents != 0) {
      if (!p.status()) fail_and_reap("canceled");
      if (p.is_group_leader()) detail::sys::kill(-p.pid(), SIGKILL);  // whoever holds its pipes
      SUBPROCESS_THROW(canceled_error(res.command, "run"));
    }
    const bool late = dl && detail::clock::now() >= *dl;
    if (late && (ready == 0 || was_late)) {
      // Exited, but its pipes are still held: by its own process group, if it has one
      // (p holds the leader's zombie, so the group id is still ours), which the
      // timeout covers too (process::stop()).
      const std::optional<exit_status> had = p.status();
      expire(had ? had->to_string() + ", but a process it started still holds its output open"
                 : std::string());
    }
    was_late = late;
    if (in_i >= 0 && fds[in_i].revents != 0) {
      SUBPROCESS_TRY {
        ssize_t w = in.write_raw(input, *guard);
        if (w > 0) input.remove_prefix(static_cast<std::size_t>(w));
        if (input.empty()) in.close();
      } SUBPROCESS_CATCH(const io_error&, e) {
        if (e.code() != std::errc::broken_pipe) SUBPROCESS_RETHROW;
        in.close();  // the child stopped reading; its exit status will say why
      }
    }
    for (int i = 0; i < 2; ++i) {
      if (cap_i[i] < 0 || fds[cap_i[i]].revents == 0) continue;
      if (!detail::drain_into(caps[i], opts)) {
        std::size_t limit = *opts.max_output;
        auto st = fail_and_reap("output limit");
        SUBPROCESS_THROW(output_limit_error(res.command, caps[i].name, limit, st, {res.out, res.err}));
      }
    }
    if ((pid_i >= 0 && fds[pid_i].revents != 0) || p.pidfd() < 0) {
      // tree(): members left when the child exited; looked at before the reap.
      const bool busy = p.has_tree() && !p.tree().empty();
      p.try_wait();
      if (p.status() && busy) res.descendants_outlived = true;
    }
  }
  res.status = p.wait();
  return res;
}
inline run_result communicate(process& p, std::string_view input = {}, const communicate_options& opts = {}) {
  return communicate(p, input, opts, std::stop_token());
}

// Spawns cmd, feeds opts.input, captures stdout and stderr, waits. Streams you did
// not set are chosen for capture: stdout and stderr are piped and captured; stdin is a
// pipe carrying `input`, or /dev/null when there is no input (a child never steals
// your terminal's input). Streams you did set (out(sp::inherit),
// err(sp::merge_with_out), a file, ...) are respected. See run_options for the
// timeout and the output limit.
// With a std::stop_token: a stop request ends it as for communicate(): the child is
// killed and reaped, canceled_error is thrown (run() cannot keep a child it never
// hands out).
inline run_result run(command cmd, const run_options& opts, std::stop_token stop) {
  if (opts.timeout && *opts.timeout < std::chrono::milliseconds::zero())
    SUBPROCESS_THROW(argument_error(cmd.to_string(), "negative timeout"));
  detail::check_policy(opts.on_timeout, cmd.to_string(), "run()");
  if (opts.input && cmd.in() && !std::holds_alternative<pipe_t>(*cmd.in()))
    SUBPROCESS_THROW(argument_error(cmd.to_string(), "input given but stdin is redirected elsewhere"));
  if (!cmd.in()) {
    if (opts.input)
      cmd.in(pipe);
    else
      cmd.in(null);
  }
  if (!cmd.out()) cmd.out(pipe);
  if (!cmd.err()) cmd.err(pipe);
  if (opts.wait_for_tree && !cmd.in_tree()) cmd.tree();
  const detail::deadline dl = detail::deadline_in(opts.timeout);
  process p = cmd.spawn();
  run_result r = communicate(p, opts.input ? std::string_view(*opts.input) : std::string_view(),
                             {opts.timeout, opts.on_timeout, opts.max_output, opts.on_output_limit},
                             std::move(stop));
  if (p.has_tree() && !p.tree().empty()) {
    r.descendants_outlived = true;
    if (opts.wait_for_tree && !p.tree().wait_empty_until(dl)) {
      p.tree().kill();
      SUBPROCESS_THROW(timeout_error(r.command, opts.timeout.value_or(std::chrono::milliseconds::zero()),
                          r.status, {r.out, r.err},
                          r.status.to_string() + ", but descendants in its tree were still running"));
    }
  }
  r.success_codes = cmd.success_codes();
  if (opts.check) r.check();
  return r;
}
inline run_result run(command cmd, const run_options& opts = {}) {
  return run(std::move(cmd), opts, std::stop_token());
}

// ---- without exceptions (error.hpp): run() reporting through `ec` -----------------
// run(cmd, opts) with the error in `ec` instead of thrown: the result with `ec` clear
// on success; with opts.check, a failed child sets errc::process_failed (the result
// holds its status and output); a timeout sets std::errc::timed_out and an output
// limit errc::output_limit_exceeded, the result holding the output so far; a spawn
// failure sets its errno (the result is empty). Built without exceptions, the spawn
// failures, bad options and check come back here, but a timeout, an output limit or
// a failing pipe still abort (communicate() raises them; see error.hpp).
inline run_result run(command cmd, const run_options& opts, std::error_code& ec) noexcept {
  run_result r;
  r.command = cmd.to_string();
  return detail::report_to(ec, r, [&]() -> run_result {
    SUBPROCESS_TRY {
      if ((opts.timeout && *opts.timeout < std::chrono::milliseconds::zero()) ||
          (opts.input && cmd.in() && !std::holds_alternative<pipe_t>(*cmd.in())))
        return ec = std::make_error_code(std::errc::invalid_argument), r;
      if (!cmd.in()) cmd.in(opts.input ? stdio(pipe) : stdio(null));
      if (!cmd.out()) cmd.out(pipe);
      if (!cmd.err()) cmd.err(pipe);
      std::optional<process> p = cmd.spawn(ec);
      if (!p) return r;
      r = communicate(*p, opts.input ? std::string_view(*opts.input) : std::string_view(),
                      {opts.timeout, opts.on_timeout, opts.max_output, opts.on_output_limit});
      r.success_codes = cmd.success_codes();
      if (opts.check && !r.success()) ec = errc::process_failed;
    }
    SUBPROCESS_CATCH(const timeout_error&, e) {
      ec = e.code();
      r.out = e.out(), r.err = e.err();
      if (e.status()) r.status = *e.status();
    }
    SUBPROCESS_CATCH(const output_limit_error&, e) {
      ec = e.code();
      r.out = e.out(), r.err = e.err();
      if (e.status()) r.status = *e.status();
    }
    return r;
  });
}

// ---- printing: one line each; operator<< prints what fmt.hpp's formatters print ----

// "kill", "truncate".
inline const char* to_string(output_limit l) noexcept {
  return l == output_limit::kill ? "kill" : l == output_limit::truncate ? "truncate" : "unknown";
}
// "'ls -l /tmp' exited with code 0 (out 1234 bytes, err 0 bytes)"; a truncated stream
// says so: "(out 65536 bytes, truncated, err 0 bytes)". The output itself is never
// printed (it may be large, binary or secret): print r.out for that.
inline std::string to_string(const run_result& r) {
  return "'" + r.command + "' " + r.status.to_string() + " (out " + std::to_string(r.out.size()) + " bytes" +
         (r.out_truncated ? ", truncated" : "") + ", err " + std::to_string(r.err.size()) + " bytes" +
         (r.err_truncated ? ", truncated" : "") + ")";
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, output_limit l) {
  return detail::put_text(os, to_string(l));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const run_result& r) {
  return detail::put_text(os, to_string(r));
}

}  // namespace subprocess
