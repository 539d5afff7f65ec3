// subprocess/pipeline.hpp - shell pipelines, with the safety of a library.
//
// A pipeline is a row of stages, each reading what the previous one wrote. A stage is
// a command (a child process) or a transform (a function running in this process).
//
//   ```cpp
//   auto r = (sp::pipeline{} | sp::command{"grep", "ERROR"} | sp::command{"sort"}
//             | sp::command{"uniq", "-c"})
//                .run({.input = sp::file("app.log"), .timeout = 10s});
//   std::cout << r.out;      // what the last stage printed
//   std::cout << r.status;   // pipefail: the rightmost failure, or "exited with code 0"
//   std::cout << r.stages[1].status;   // how `sort` ended
//   ```
//
// Errors. Everything is checked before anything starts: an empty pipeline and bad
// options are argument_errors; a missing program in stage k is a pipeline_spawn_error
// (stage() is k) and nothing has run. run() and wait() throw timeout_error at
// options.timeout (every stage killed and reaped first), rethrow what a transform or
// the output callback threw (the pipeline is stopped first), and throw pipeline_error
// for a failed pipeline when options.check is set. Otherwise a failed stage is no
// exception: read result.status (pipefail; a producer killed by SIGPIPE is no failure)
// and result.stages[k].status (see "Exit status" at stage_result). On every path no
// child, zombie, thread or fd is left behind.
//
// Blocking. run() blocks until every stage has ended; spawn() returns at once with a
// running_pipeline (wait(), wait_for(), done_fd() for an event loop). The parent's
// side (string input, captured output, transforms) runs on library threads, so
// nothing deadlocks on a full pipe, whether or not you are in wait().
//
// Threads. A pipeline is a value: build it in one thread, run it from any thread, as
// often as you like. Transforms and the output callback run on library threads, one
// call at a time per function, with asynchronous signals blocked.
//
// Cost. Adjacent commands are joined by kernel pipes (their bytes never pass through
// this process); the pipeline costs a thread that waits for the children, one more to
// read captured output, and one per transform, whose buffers are bounded: memory stays
// flat however much flows. The details are at class pipeline.
//
// Destructor. Destroying a running_pipeline that has not finished kills and reaps it
// (like process); a transform or output callback that blocks forever makes it wait.
#pragma once

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "command.hpp"
#include "detail/pipeline/pump.hpp"
#include "detail/pipeline/state.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "process.hpp"
#include "stdio.hpp"
#include "stream.hpp"
#include "timeout.hpp"

namespace subprocess {

// "Collect it for me": output into result.out, a stage's stderr into its result.
struct capture_t {
  friend bool operator==(capture_t, capture_t) = default;
};
inline constexpr capture_t capture{};

class transform;
namespace detail {
class launcher;
}

// What a chunk transform writes with: emit(bytes). Only valid during the call.
class emitter {
 public:
  void operator()(std::string_view data) { port_(data); }
  emitter(const emitter&) = delete;
  emitter& operator=(const emitter&) = delete;

 private:
  friend class transform;
  explicit emitter(detail::emit_port port) noexcept : port_(port) {}
  detail::emit_port port_;
};

// A stage that runs a function in this process.
//
// Transforms. sp::transform(fn) runs fn in the parent, on a thread of its own,
// over the bytes flowing between two stages. fn is either
//   * a line function: std::optional<std::string>(std::string_view line), called
//     for every line without its '\n'; what it returns is written followed by '\n',
//     nullopt drops the line. A last line without '\n' is passed too and its output
//     gets no '\n' (like sed). Lines longer than max_line() (64 MiB) fail the stage.
//   * a chunk function: void(std::string_view data, sp::emitter& emit), called for
//     every chunk read (any size up to 64 KiB; chunks do not follow lines); call
//     emit(bytes) as often as you like. at_end(fn(emitter&)) runs once at the end.
//
//   auto square = sp::transform([](std::string_view n) -> std::optional<std::string> {
//     int v = std::stoi(std::string(n));
//     return std::to_string(v) + " -> " + std::to_string(v * v);
//   }, "square");
//   (sp::pipeline{} | sp::command{"seq", "3"} | square).run().out;   // "1 -> 1\n2 -> 4\n3 -> 9\n"
class transform {
 public:
  using chunk_function = std::function<void(std::string_view, emitter&)>;
  using line_function = std::function<std::optional<std::string>(std::string_view)>;
  using end_function = std::function<void(emitter&)>;

  // fn is a chunk function (data, emit) or a line function (line -> optional output).
  // `name` is what to_string() shows: [name].
  template <class F>
    requires(std::is_invocable_v<F&, std::string_view, emitter&> ||
             std::is_invocable_r_v<std::optional<std::string>, F&, std::string_view>)
  explicit transform(F fn, std::string name = "transform") : name_(std::move(name)) {
    body_.label = to_string();
    if constexpr (std::is_invocable_v<F&, std::string_view, emitter&>) {
      // The engine knows no emitter: it hands each call a port, wrapped here.
      if (chunk_function f{std::move(fn)})
        body_.chunk = [f = std::move(f)](std::string_view data, detail::emit_port port) {
          emitter em(port);
          f(data, em);
        };
    } else {
      body_.line = line_function(std::move(fn));
    }
  }

  // Runs once after the last input, with the emitter: flush totals, trailers...
  transform& at_end(end_function fn) {
    body_.end = nullptr;
    if (fn)
      body_.end = [f = std::move(fn)](detail::emit_port port) {
        emitter em(port);
        f(em);
      };
    return *this;
  }
  // Longest line a line function accepts (default 64 MiB); longer fails the stage.
  transform& max_line(std::size_t bytes) {
    if (bytes == 0) throw argument_error(to_string(), "max_line must be positive");
    body_.max_line = bytes;
    return *this;
  }

  bool is_line_function() const noexcept { return static_cast<bool>(body_.line); }
  const std::string& name() const noexcept { return name_; }
  std::string to_string() const { return "[" + name_ + "]"; }

 private:
  friend class detail::launcher;
  std::string name_;
  detail::transform_body body_;
};

// One stage of a pipeline.
using stage = std::variant<command, transform>;

// Receives the pipeline's output as it comes (on a library thread).
using output_callback = std::function<void(std::string_view)>;
// Where the first stage reads from.
using pipeline_input = std::variant<null_t, inherit_t, std::string, file, fd, pipe_reader>;
// Where the last stage writes to.
using pipeline_output = std::variant<capture_t, inherit_t, null_t, file, fd, output_callback>;
// Where each command stage's stderr goes (unless the command sets err() itself).
using stage_stderr = std::variant<inherit_t, null_t, capture_t, merge_with_out_t>;

// Options (pipeline_options, given to run() or spawn()):
//   input    sp::null (default: a child never steals your terminal), a std::string,
//            sp::file(path), sp::fd(n) (yours; keep it open until the end), a
//            pipe_reader (for example another process's out(), moved in), sp::inherit.
//   output   sp::capture (default: into result.out), sp::inherit, sp::null,
//            sp::file(path[, mode]), sp::fd(n), or a callback(std::string_view)
//            that receives the bytes as they come (on a library thread).
//   err      every command stage's stderr, unless the command sets err() itself:
//            sp::inherit (default), sp::null, sp::capture (into result.stages[k].err)
//            or sp::merge_with_out (2>&1: into the next stage, or the output).
//   timeout  for the whole pipeline: at the deadline every stage is killed (SIGKILL,
//            the whole group), transforms are stopped, all is reaped, and wait() /
//            run() throw pipeline_timeout_error (a timeout_error with the result).
//   on_timeout  what the timeout sends (timeout.hpp): kill_with(SIGTERM, 2s) sends
//            SIGTERM (and SIGCONT) to every stage and the group, then SIGKILL to
//            whatever of them is left after 2 s. leave_running() is refused here;
//            spawn() and running_pipeline::wait_for(t, policy) offer it.
//   process_group (default true): every stage in one process group, which the
//            first command stage leads and the later ones join, so one signal
//            (signal(), terminate(), the timeout) reaches the stages and the
//            processes they started. The group is a background job of your
//            terminal: a stage reading the terminal (input = sp::inherit) is stopped
//            by SIGTTIN, and Ctrl-C reaches only your program. Set it to false to
//            keep the stages in your group (and to keep a command's own
//            new_process_group()/new_session(), which are refused otherwise).
//   sigpipe_is_failure (default false): see "Exit status" below.
//   check    throw pipeline_error from run()/wait() unless the pipeline succeeded.
//   wait_for_tree  each command stage runs in its own process tree (command::tree(),
//            tree.hpp, unless it has one), and run()/wait() return only once every
//            stage's tree is empty too: what the stages left running (a daemon) is
//            waited for within the timeout, and killed with the trees at it (then
//            pipeline_timeout_error). The wait happens after the stages exit; a
//            terminate() during it is not seen before the trees empty or the deadline.
struct pipeline_options {
  pipeline_input input{null};
  pipeline_output output{capture};
  stage_stderr err{inherit};
  // The whole pipeline is killed when it runs longer; wait()/run() throw timeout_error.
  std::optional<std::chrono::milliseconds> timeout{};
  // What the timeout sends: SIGKILL at once by default (timeout.hpp).
  timeout_policy on_timeout{};
  // Every stage in one process group, led by the first command stage.
  bool process_group = true;
  // Count a stage (not the last) killed by SIGPIPE as a failure, as bash's pipefail does.
  bool sigpipe_is_failure = false;
  // Throw pipeline_error from run()/wait() unless the pipeline succeeded.
  bool check = false;
  // Wait until each command stage's process tree is empty (see above).
  bool wait_for_tree = false;
};

// Exit status. result.stages[k].status says how each stage ended; result.status is
// the pipeline's, with pipefail semantics: the status of the rightmost stage that
// failed, or "exited with code 0" if none did. One choice differs from bash's
// pipefail: a stage killed by SIGPIPE, other than the last, is not a failure. That
// is what happens to `yes` in `yes | head -n 1` when head has what it needs and
// exits: the normal way for a producer to learn that nobody wants more. Set
// sigpipe_is_failure = true to count it (bash's `set -o pipefail`). A transform's
// status mimics a process: exited(0) when it finished, signaled(SIGPIPE) when its
// reader went away, exited(1) when fn threw, and the pipeline's signal when it was
// stopped. result.first_failure() is the leftmost failing stage, usually the cause.
//
// Accepted exit codes. A command's success_codes() are the codes that count as
// success for that stage (default {0}): `grep` exits 1 when nothing matched, which
// is an answer, not a failure:
//
//   auto r = (sp::pipeline{} | sp::command{"cat", "app.log"}
//             | sp::command{"grep", "FATAL"}.success_codes({0, 1})
//             | sp::command{"wc", "-l"}).run({.check = true});   // "0\n", no throw
//
// Such a stage is not failed: it is left out of the pipefail status, first_failure(),
// success() and check; its own status still says "exited with code 1". A stage
// killed by a signal is never accepted (only the SIGPIPE rule can excuse it). It is
// set on the command, so `|`, add() and run(cmd) all honour it the same way.
//
// How one stage ended (result.stages[k]):
struct stage_result {
  std::string command;  // shell-quoted command line, or "[name]" for a transform
  bool is_transform = false;
  pid_t pid = -1;  // -1 for a transform
  exit_status status = exit_status::exited(0);
  // Counts as a failure under the pipeline's rules (the command's success_codes(),
  // the SIGPIPE rule above).
  bool failed = false;
  // The library signalled it while it ran: the timeout, terminate(), a failed stage
  // stopping the rest (Node's `killed`). A signal() of yours does not count.
  bool killed = false;
  std::string err;           // its stderr, with err = sp::capture
  std::exception_ptr error;  // what a transform threw
  // The stage ran in a tree (wait_for_tree, or command::tree()) and a descendant of
  // it was still running when it exited.
  bool descendants_outlived = false;
  bool success() const noexcept { return !failed; }
};

// How the whole pipeline ended.
struct pipeline_result {
  std::string command;  // the pipeline, shell-like: "cat | [square] | sort"
  std::vector<stage_result> stages;
  exit_status status = exit_status::exited(0);  // pipefail: the rightmost failure's status
  std::optional<std::size_t> failed_stage;      // which stage that is (0-based)
  std::string out;                              // with output = sp::capture
  bool timed_out = false;  // the timeout struck (then wait() threw pipeline_timeout_error)

  bool success() const noexcept { return !failed_stage.has_value(); }
  // The leftmost failing stage (0-based): usually the cause of the others' failures.
  std::optional<std::size_t> first_failure() const noexcept {
    for (std::size_t k = 0; k < stages.size(); ++k)
      if (stages[k].failed) return k;
    return std::nullopt;
  }
  // Throws pipeline_error about the first failing stage unless success(); returns *this.
  const pipeline_result& check() const;
};

namespace detail {
inline std::string stage_label(std::size_t k, std::size_t n) {
  return "pipeline stage " + std::to_string(k + 1) + " of " + std::to_string(n);
}
}  // namespace detail

// Stage k could not be started. A spawn_error (code() is the errno, step() the step
// that failed, command() the stage's command) that also says which stage.
class pipeline_spawn_error : public spawn_error {
 public:
  pipeline_spawn_error(const spawn_error& e, std::size_t stage, std::size_t stages,
                       std::string pipeline)
      : spawn_error(e), stage_(stage), pipeline_(std::move(pipeline)), cause_(e.what()),
        message_(detail::stage_label(stage, stages) + ": " + cause_) {}
  const char* what() const noexcept override { return message_.c_str(); }
  // The stage's index in the pipeline, from 0 (messages count from 1).
  std::size_t stage() const noexcept { return stage_; }
  const std::string& pipeline() const noexcept { return pipeline_; }
  // The message without the stage prefix: "cannot start 'x': resolve program ...".
  const std::string& cause() const noexcept { return cause_; }

 private:
  std::size_t stage_;
  std::string pipeline_, cause_, message_;
};

// The pipeline ran and a stage failed, and you asked for an error (check). A
// process_error about that stage: command(), status() and err() are the stage's.
class pipeline_error : public process_error {
 public:
  pipeline_error(std::string pipeline, std::size_t stage, std::size_t stages,
                 std::string stage_command, exit_status status, captured_output output)
      : process_error(std::move(stage_command), status, std::move(output)),
        stage_(stage),
        pipeline_(std::move(pipeline)),
        message_(detail::stage_label(stage, stages) + " failed: " + process_error::what()) {}
  const char* what() const noexcept override { return message_.c_str(); }
  std::size_t stage() const noexcept { return stage_; }
  const std::string& pipeline() const noexcept { return pipeline_; }

 private:
  std::size_t stage_;
  std::string pipeline_, message_;
};

// The pipeline's timeout struck: a timeout_error (killed(), outcome(), out(), and
// err(), every stage's captured stderr in a row) that also carries the result: how
// each stage ended and which the library killed (result().stages[k].killed).
class pipeline_timeout_error : public timeout_error {
 public:
  pipeline_timeout_error(timeout_error e, pipeline_result r)
      : timeout_error(std::move(e)), result_(std::move(r)) {}
  const pipeline_result& result() const noexcept { return result_; }

 private:
  pipeline_result result_;
};

inline const pipeline_result& pipeline_result::check() const {
  if (auto k = first_failure())
    throw pipeline_error(command, *k, stages.size(), stages[*k].command, stages[*k].status,
                         {out, stages[*k].err});
  return *this;
}


namespace detail {
// The result of a pipeline whose supervisor has finished (the rules: "Exit status").
inline pipeline_result collect_result(pipeline_state& st) {
  pipeline_result r;
  r.command = st.command;
  const std::size_t n = st.stages.size();
  std::lock_guard lk(st.mu);
  for (std::size_t k = 0; k < n; ++k) {
    stage_slot& s = st.stages[k];
    stage_result sr;
    sr.command = s.command;
    sr.is_transform = s.is_transform;
    sr.pid = s.pid;
    if (s.is_transform) {
      sr.status = s.transform_pump->status.value_or(exit_status::signaled(st.stop_signal.load()));
      sr.error = s.transform_pump->error;
    } else {
      sr.status = s.status.value_or(exit_status::signaled(SIGKILL));
    }
    sr.err = std::move(s.err_text);
    sr.killed = s.killed;
    sr.descendants_outlived = s.outlived;
    auto code = sr.status.code();
    sr.failed = !(code && std::binary_search(s.success_codes.begin(), s.success_codes.end(), *code)) &&
                !(sr.status.signal() == SIGPIPE && k + 1 < n && !st.sigpipe_is_failure);
    if (sr.failed) {
      r.status = sr.status;
      r.failed_stage = k;
    }
    r.stages.push_back(std::move(sr));
  }
  if (st.output_pump) r.out = st.output_pump->sink.take_captured();
  r.timed_out = st.timed_out;
  return r;
}
}  // namespace detail

// ======================================================== running pipeline ====

// A started pipeline. Move-only.
//
// The running pipeline. spawn() returns a running_pipeline: wait(), wait_for(d),
// statuses() (live), signal(sig), terminate(grace), pids(), pgid(), and done_fd()
// (readable once everything has finished: put it in a poll set or an event loop,
// then call wait(), which returns at once). Destroying a running pipeline that has
// not finished kills and reaps it (like process). A transform function or output
// callback that blocks forever cannot be interrupted: wait() and the destructor then
// wait for it.
class running_pipeline {
 public:
  running_pipeline() = default;
  running_pipeline(running_pipeline&&) noexcept = default;
  running_pipeline& operator=(running_pipeline&& o) noexcept {
    if (this != &o) {
      finish();
      st_ = std::move(o.st_);
      result_ = std::move(o.result_);
    }
    return *this;
  }
  running_pipeline(const running_pipeline&) = delete;
  running_pipeline& operator=(const running_pipeline&) = delete;
  // Kills and reaps a pipeline that has not finished; never leaves anything behind.
  ~running_pipeline() { finish(); }

  bool valid() const noexcept { return st_ != nullptr; }
  std::size_t size() const { return state().stages.size(); }
  const std::string& command_line() const { return state().command; }
  // Each stage's pid; -1 for transform stages.
  std::vector<pid_t> pids() const {
    std::vector<pid_t> v;
    for (const auto& s : state().stages) v.push_back(s.pid);
    return v;
  }
  // The process group every stage is in (the first command stage's pid); 0 with
  // process_group = false or no command stage.
  pid_t pgid() const { return state().pgid; }

  // How each stage ended so far: nullopt while it is still running.
  std::vector<std::optional<exit_status>> statuses() const {
    auto& st = state();
    std::lock_guard lk(st.mu);
    std::vector<std::optional<exit_status>> v;
    for (const auto& s : st.stages) {
      if (!s.is_transform)
        v.push_back(s.status);
      else if (s.transform_pump->done.load(std::memory_order_acquire))
        v.push_back(s.transform_pump->status);
      else
        v.push_back(std::nullopt);
    }
    return v;
  }
  // Everything has finished (stages reaped, transforms and captures done).
  bool finished() const {
    auto& st = state();
    std::lock_guard lk(st.mu);
    return st.finished;
  }
  // An eventfd, readable once finished(): for poll/epoll or an event loop.
  int done_fd() const { return state().done_fd.get(); }

  // Waits until everything has finished and returns the result (a copy: call it
  // again and you get the same). Rethrows what a transform or the output callback
  // threw; throws timeout_error if the timeout struck, pipeline_error with check.
  pipeline_result wait() {
    join();
    return outcome(false);
  }
  // The same, giving up after `timeout` (nullopt: still running).
  template <class Rep, class Period>
  std::optional<pipeline_result> wait_for(std::chrono::duration<Rep, Period> timeout) {
    if (timeout < timeout.zero())
      throw argument_error(command_line(), "negative timeout for wait_for");
    auto& st = state();
    {
      std::unique_lock lk(st.mu);
      if (!st.cv.wait_until(lk, detail::deadline_in(timeout), [&] { return st.finished; })) return std::nullopt;
    }
    return wait();
  }
  // Waits at most `timeout`, then applies `policy` (timeout.hpp) to every stage and
  // their group and throws: kill_with(sig, grace) sends sig, then SIGKILL to what is
  // left after the grace, and throws pipeline_timeout_error once all is reaped;
  // leave_running() sends nothing and throws timeout_error (still_running()): the
  // pipeline runs on, this handle still owns it (wait() again, or terminate()).
  template <class Rep, class Period>
  pipeline_result wait_for(std::chrono::duration<Rep, Period> timeout,
                           const timeout_policy& policy) {
    if (timeout < timeout.zero())
      throw argument_error(command_line(), "negative timeout for wait_for");
    detail::check_policy(policy, command_line());
    if (auto r = wait_for(timeout)) return std::move(*r);
    const auto ms = detail::saturating_ceil<std::chrono::milliseconds>(timeout);
    timeout_outcome o;
    if (!policy.kill) {
      o.still_running = true;
      throw timeout_error(command_line(), ms, policy, std::move(o), {});
    }
    o.escalated =
        stop_with(policy.escalates() ? policy.signal : SIGKILL, detail::deadline_in(policy.grace));
    join();
    auto& st = *st_;
    if (st.first_error) std::rethrow_exception(st.first_error);
    pipeline_result r = result_;
    r.timed_out = true;
    throw timeout_for(ms, policy, std::move(o), std::move(r));
  }

  // Sends sig to every stage still running (and to their whole process group).
  // Returns false if nothing was signalled.
  bool signal(int sig) {
    auto& st = state();
    std::lock_guard lk(st.mu);
    return st.signal_all_locked(sig);
  }
  // SIGTERM to every stage (the whole group), followed by SIGCONT so that a stopped
  // stage runs its handler too; if the pipeline has not finished after `grace`,
  // SIGKILL and the transforms are stopped. Then as wait().
  template <class Rep = long, class Period = std::ratio<1>>
  pipeline_result terminate(std::chrono::duration<Rep, Period> grace = std::chrono::seconds(5)) {
    if (grace < grace.zero()) throw argument_error(command_line(), "negative grace period for terminate");
    stop_with(SIGTERM, detail::deadline_in(grace));
    return wait();
  }

 private:
  friend class pipeline;
  explicit running_pipeline(std::unique_ptr<detail::pipeline_state> st) noexcept
      : st_(std::move(st)) {}

  // sig to every stage (and the group; SIGKILL also stops the transforms), then
  // SIGKILL and the transforms stopped if it has not finished by dl. True if that
  // last step was needed.
  bool stop_with(int sig, detail::clock::time_point dl) {
    auto& st = state();
    std::unique_lock lk(st.mu);
    if (st.finished) return false;
    if (st.commands == 0 || sig == SIGKILL) {
      st.abort_locked(sig);
    } else {
      st.signal_all_locked(sig, true);
      st.signal_all_locked(SIGCONT);  // sig stays pending in a stopped stage
    }
    if (st.cv.wait_until(lk, dl, [&] { return st.finished; })) return false;
    st.abort_locked(SIGKILL);
    return true;
  }
  // The error for a timeout after which `r` is how it ended.
  pipeline_timeout_error timeout_for(std::chrono::milliseconds ms, const timeout_policy& policy,
                                     timeout_outcome o, pipeline_result r) const {
    std::string err;
    for (const auto& s : r.stages) {
      err += s.err;
      o.killed = o.killed || s.killed;
    }
    o.status = r.status;
    return {timeout_error(r.command, ms, policy, std::move(o), {r.out, std::move(err)}),
            std::move(r)};
  }

  detail::pipeline_state& state() const {
    if (!st_) throw argument_error("", "use of an empty running_pipeline");
    return *st_;
  }
  // Once: waits for the supervisor, then collects the result.
  void join() {
    auto& st = state();
    std::call_once(st.joined, [&] {
      st.supervisor.join();
      try {
        result_ = detail::collect_result(st);
      } catch (...) {
        std::lock_guard lk(st.mu);
        if (!st.first_error) st.first_error = std::current_exception();
      }
    });
  }
  // After join(): the result, or the error the pipeline ended with.
  pipeline_result outcome(bool move) {
    auto& st = *st_;
    if (st.first_error) std::rethrow_exception(st.first_error);
    if (st.timed_out) {
      timeout_outcome o;
      o.escalated = st.escalated;
      throw timeout_for(*st.timeout, st.on_timeout, std::move(o), result_);
    }
    if (st.check) result_.check();
    return move ? std::move(result_) : result_;
  }
  pipeline_result take() {
    join();
    return outcome(true);
  }
  void finish() noexcept {
    if (!st_) return;
    {
      std::lock_guard lk(st_->mu);
      if (!st_->finished) st_->abort_locked(SIGKILL);
    }
    join();
    st_.reset();
  }

  std::unique_ptr<detail::pipeline_state> st_;
  pipeline_result result_;  // complete after join()
};
// ================================================================ pipeline ====

// A pipeline: the stages, built with `|` or, from data, with add():
//
//   sp::pipeline p;
//   for (auto& argv : steps) p.add(sp::command(argv));
//   std::cout << p.to_string();           // grep ERROR | cut -d ' ' -f 2 | sort
//
// How the bytes flow, and what it costs.
//   * Two adjacent commands are joined by a kernel pipe that the parent creates
//     (close-on-exec) and hands to the children: their bytes never pass through this
//     process, and the parent closes its copies of the ends right after each spawn,
//     so a stage sees end-of-file exactly when its writer is gone. An all-command
//     pipeline moves its bytes as fast as the same shell pipeline; here it costs a
//     thread that waits for the children (and one more that reads the output when
//     you capture it or take it with a callback).
//   * A transform stage reads from a pipe, calls fn, and writes into the next pipe,
//     with bounded buffers (a 64 KiB chunk in, up to 64 KiB of output batched):
//     a slow consumer fills its pipe, the transform blocks writing, stops reading,
//     and the producer blocks in turn. Backpressure holds end to end; memory stays
//     flat however much flows (except a line function's current line). A pipe the
//     parent reads from and finds full is enlarged to 1 MiB (best effort, within
//     the per-user pipe limit): the fast producer runs longer between reads, so
//     both sides sleep and wake less. That much more can sit in the kernel pipe
//     before backpressure reaches the producer; this process's memory is unchanged.
//   * The parent side (feeding string input, capturing output, capturing stderr,
//     transforms) runs on library threads: the pipeline makes progress whether or
//     not you are in wait(), so nothing deadlocks on a full pipe.
//
// Errors. Everything is checked before anything starts: an empty pipeline and bad
// options are argument_errors; every command is validated (arguments, program found
// in PATH, cwd) first, so a missing program in stage k is a pipeline_spawn_error
// (a spawn_error; stage() is k) and nothing has run. If a stage still fails to
// start (exec fails, fd limit), the stages already started are killed and reaped
// before spawn() throws. An exception thrown by a transform (or by the output
// callback) stops the pipeline: every stage is killed, the others stopped, all
// reaped, and wait()/run() rethrow that exception. On every path no child, zombie,
// thread or fd is left behind.
//
// Thread safety. A pipeline is a value: build it in one thread, run it from any
// thread, as often as you like (each run copies the commands and transforms; a
// transform's captured references are shared by every run). running_pipeline:
// signal(), terminate(), statuses() and wait() may be called from different threads.
// Transform functions and the output callback run on library threads, one call at
// a time per function, with asynchronous signals blocked.
class pipeline {
 public:
  pipeline() = default;
  explicit pipeline(std::vector<stage> stages) : stages_(std::move(stages)) {}

  // Appends a stage; returns the pipeline so calls chain.
  pipeline& add(command c) {
    stages_.emplace_back(std::move(c));
    return *this;
  }
  pipeline& add(transform t) {
    stages_.emplace_back(std::move(t));
    return *this;
  }
  pipeline& add(stage s) {
    stages_.push_back(std::move(s));
    return *this;
  }
  friend pipeline operator|(pipeline p, command c) {
    p.add(std::move(c));
    return p;
  }
  friend pipeline operator|(pipeline p, transform t) {
    p.add(std::move(t));
    return p;
  }

  const std::vector<stage>& stages() const noexcept { return stages_; }
  std::size_t size() const noexcept { return stages_.size(); }
  bool empty() const noexcept { return stages_.empty(); }

  // Shell-like: "grep -v '^#' | [square] | sort -n". Commands are shell-quoted;
  // transforms show as [name].
  std::string to_string() const {
    std::string s;
    for (const auto& st : stages_) {
      if (!s.empty()) s += " | ";
      s += std::visit([](const auto& x) { return x.to_string(); }, st);
    }
    return s;
  }

  // Starts every stage; the returned handle owns them. Throws argument_error or
  // pipeline_spawn_error, with nothing left running.
  running_pipeline spawn(pipeline_options opts = {}) const;
  // spawn() and wait(): runs to the end and returns how it went.
  pipeline_result run(pipeline_options opts = {}) const { return spawn(std::move(opts)).take(); }

 private:
  std::vector<stage> stages_;
};

namespace detail {
// Checks, wires and starts everything (detail/pipeline/launch.hpp, included below).
inline std::unique_ptr<pipeline_state> launch_pipeline(const pipeline& p, pipeline_options& opts);
}  // namespace detail

inline running_pipeline pipeline::spawn(pipeline_options opts) const {
  return running_pipeline(detail::launch_pipeline(*this, opts));
}

// ---- printing: one line each; operator<< prints what fmt.hpp's formatters print ----

namespace detail {
inline std::string stage_text(const stage_result& s) {
  if (!s.is_transform) return "'" + s.command + "' (pid " + std::to_string(s.pid) + ") " + s.status.to_string();
  std::string t = s.command + " " + s.status.to_string();
  if (s.error) {
    try {
      std::rethrow_exception(s.error);
    } catch (const std::exception& e) {
      t += ", threw: " + std::string(e.what());
    } catch (...) {
      t += ", threw an exception";
    }
  }
  return t;
}
}  // namespace detail

// "'grep x' (pid 4242) exited with code 1, failed", "'yes' (pid 4243) killed by SIGPIPE",
// "[square] exited with code 1, threw: bad line, failed".
inline std::string to_string(const stage_result& s) {
  return detail::stage_text(s) + (s.failed ? ", failed" : "");
}
// "'cat | sort' exited with code 0 (2 stages, out 12 bytes)"; when it failed, the first
// failing stage (the one check() reports): "'false | cat' failed at stage 1 of 2:
// 'false' (pid 4242) exited with code 1 (out 0 bytes)". The output is not printed.
inline std::string to_string(const pipeline_result& r) {
  const std::string out = "out " + std::to_string(r.out.size()) + " bytes)";
  if (auto k = r.first_failure())
    return "'" + r.command + "' failed at stage " + std::to_string(*k + 1) + " of " +
           std::to_string(r.stages.size()) + ": " + detail::stage_text(r.stages[*k]) + " (" + out;
  return "'" + r.command + "' " + r.status.to_string() + " (" + std::to_string(r.stages.size()) +
         (r.stages.size() == 1 ? " stage, " : " stages, ") + out;
}
// "[name]", transform::to_string().
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const transform& t) {
  return detail::put_text(os, t.to_string());
}
// "grep -v '^#' | [square] | sort -n", pipeline::to_string().
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pipeline& p) {
  return detail::put_text(os, p.to_string());
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const stage_result& s) {
  return detail::put_text(os, to_string(s));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const pipeline_result& r) {
  return detail::put_text(os, to_string(r));
}

}  // namespace subprocess

// The engine's entry (pipeline::spawn), which needs every type above.
#include "detail/pipeline/launch.hpp"
