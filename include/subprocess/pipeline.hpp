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
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <sys/eventfd.h>
#include <sys/wait.h>

#include "command.hpp"
#include "detail/buffer.hpp"
#include "detail/eventfd.hpp"
#include "detail/poll.hpp"
#include "detail/sigpipe.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "process.hpp"
#include "stdio.hpp"
#include "stream.hpp"

namespace subprocess {

// "Collect it for me": output into result.out, a stage's stderr into its result.
struct capture_t {
  friend bool operator==(capture_t, capture_t) = default;
};
inline constexpr capture_t capture{};

namespace detail {
class pump;
}

// What a chunk transform writes with: emit(bytes). Only valid during the call.
class emitter {
 public:
  void operator()(std::string_view data) { fn_(ctx_, data); }
  emitter(const emitter&) = delete;
  emitter& operator=(const emitter&) = delete;

 private:
  friend class detail::pump;
  emitter(void* ctx, void (*fn)(void*, std::string_view)) noexcept : ctx_(ctx), fn_(fn) {}
  void* ctx_;
  void (*fn_)(void*, std::string_view);
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
    if constexpr (std::is_invocable_v<F&, std::string_view, emitter&>)
      chunk_ = chunk_function(std::move(fn));
    else
      line_ = line_function(std::move(fn));
  }

  // Runs once after the last input, with the emitter: flush totals, trailers...
  transform& at_end(end_function fn) {
    end_ = std::move(fn);
    return *this;
  }
  // Longest line a line function accepts (default 64 MiB); longer fails the stage.
  transform& max_line(std::size_t bytes) {
    if (bytes == 0) throw argument_error(to_string(), "max_line must be positive");
    max_line_ = bytes;
    return *this;
  }

  bool is_line_function() const noexcept { return static_cast<bool>(line_); }
  const std::string& name() const noexcept { return name_; }
  std::string to_string() const { return "[" + name_ + "]"; }

 private:
  friend class detail::pump;
  std::string name_;
  chunk_function chunk_;
  line_function line_;
  end_function end_;
  std::size_t max_line_ = std::size_t(64) << 20;
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
//            run() throw timeout_error.
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
struct pipeline_options {
  pipeline_input input{null};
  pipeline_output output{capture};
  stage_stderr err{inherit};
  // The whole pipeline is killed when it runs longer; wait()/run() throw timeout_error.
  std::optional<std::chrono::milliseconds> timeout{};
  // Every stage in one process group, led by the first command stage.
  bool process_group = true;
  // Count a stage (not the last) killed by SIGPIPE as a failure, as bash's pipefail does.
  bool sigpipe_is_failure = false;
  // Throw pipeline_error from run()/wait() unless the pipeline succeeded.
  bool check = false;
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
  std::string err;           // its stderr, with err = sp::capture
  std::exception_ptr error;  // what a transform threw
  bool success() const noexcept { return !failed; }
};

class pipeline_error;

// How the whole pipeline ended.
struct pipeline_result {
  std::string command;  // the pipeline, shell-like: "cat | [square] | sort"
  std::vector<stage_result> stages;
  exit_status status = exit_status::exited(0);  // pipefail: the rightmost failure's status
  std::optional<std::size_t> failed_stage;      // which stage that is (0-based)
  std::string out;                              // with output = sp::capture

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

inline const pipeline_result& pipeline_result::check() const {
  if (auto k = first_failure())
    throw pipeline_error(command, *k, stages.size(), stages[*k].command, stages[*k].status,
                         {out, stages[*k].err});
  return *this;
}

// ============================================================= internals =======
namespace detail {

struct pump_stopped {};      // the pipeline told the pump to stop
struct pump_broken_pipe {};  // the pump's reader went away (EPIPE)

inline constexpr std::size_t pump_chunk = 64 * 1024;

// Signals are for the user's threads. Faults stay deliverable so a crash in a
// transform is reported where it happened (and sanitizers keep their handlers).
inline void block_async_signals() noexcept {
  sigset_t s;
  sigfillset(&s);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&s, sig);
  sys::thread_sigmask(SIG_BLOCK, &s, nullptr);
}

inline unique_fd make_eventfd() {
  unique_fd fd(sys::eventfd(0, EFD_NONBLOCK));
  if (!fd) throw_errno(errno, "eventfd");
  return fd;
}
// A lost signal would leave a pump or the supervisor asleep for good (see
// detail/eventfd.hpp): EINTR is retried.
inline void eventfd_signal(int fd) noexcept { eventfd_notify(fd); }
inline void eventfd_clear(int fd) noexcept { eventfd_drain(fd); }

// Waits until fd has `events`, or throws pump_stopped when stop_fd becomes readable.
inline void wait_or_stop(int fd, short events, int stop_fd) {
  pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
  poll_until(p, 2, std::nullopt);
  if (p[1].revents != 0) throw pump_stopped{};
}

// Where a pump reads: a pipe, a string, an fd (ours or borrowed), or nothing.
class pump_source {
 public:
  void set_reader(pipe_reader r) {
    kind_ = reader;
    reader_ = std::move(r);
  }
  void set_text(std::string t) {
    kind_ = text;
    text_ = std::move(t);
  }
  // A borrowed fd is never closed and its flags are left alone (blocking or not).
  void set_fd(int borrowed) {
    kind_ = raw;
    fd_ = borrowed;
  }
  void set_owned_fd(unique_fd f) {
    kind_ = raw;
    owned_ = std::move(f);
    fd_ = owned_.get();
  }

  // Makes more bytes visible in view(); false at the end of the input.
  bool more(int stop_fd) {
    switch (kind_) {
      case none: return false;
      case reader:
        for (;;) {
          // After a short read the pipe is empty: a read now would only fail with
          // EAGAIN, so wait first (a system call saved per chunk while the producer
          // is the slower side).
          if (drained_) wait_or_stop(reader_.fd(), POLLIN, stop_fd);
          ssize_t r = reader_.fill(pump_chunk);
          drained_ = r < 0 || (r > 0 && static_cast<std::size_t>(r) < pump_chunk);
          // A full read: the producer is the faster side (chunks stay 64 KiB).
          if (r > 0 && !drained_ && !grown_) {
            grown_ = true;
            enlarge_pipe(reader_.fd());
          }
          if (r > 0) return true;
          if (r == 0) return false;
        }
      case text:
        if (avail_ >= text_.size()) return false;
        avail_ = std::min(text_.size(), avail_ + pump_chunk);
        return true;
      case raw:
        if (eof_) return false;
        for (;;) {
          wait_or_stop(fd_, POLLIN, stop_fd);
          ssize_t r = sys::read(fd_, buf_.prepare(pump_chunk), pump_chunk);
          if (r > 0) {
            buf_.commit(static_cast<std::size_t>(r));
            return true;
          }
          if (r == 0) {
            eof_ = true;
            return false;
          }
          if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
          throw io_error(errno, "", "read pipeline input fd " + std::to_string(fd_));
        }
    }
    return false;
  }
  std::string_view view() const noexcept {
    switch (kind_) {
      case reader: return reader_.buffered();
      case text: return std::string_view(text_).substr(pos_, avail_ - pos_);
      case raw: return buf_.view();
      case none: break;
    }
    return {};
  }
  void consume(std::size_t n) noexcept {
    switch (kind_) {
      case reader: reader_.consume(n); break;
      case text: pos_ += n; break;
      case raw: buf_.consume(n); break;
      case none: break;
    }
  }
  void close() noexcept {
    reader_.close();
    owned_.reset();
    fd_ = -1;
    kind_ = none;
  }

 private:
  enum kind_t { none, reader, text, raw };
  kind_t kind_ = none;
  pipe_reader reader_;
  std::string text_;
  std::size_t pos_ = 0, avail_ = 0;
  unique_fd owned_;
  int fd_ = -1;
  byte_buffer buf_;
  bool eof_ = false;
  bool drained_ = false;  // reader: the last read emptied the pipe
  bool grown_ = false;
};

// Where a pump writes: a pipe, a string, a callback, an fd (ours or borrowed), nowhere.
class pump_sink {
 public:
  void set_writer(pipe_writer w) {
    kind_ = writer;
    writer_ = std::move(w);
  }
  void set_capture() { kind_ = captured; }
  void set_callback(output_callback cb) {
    kind_ = callback;
    cb_ = std::move(cb);
  }
  // Borrowed fds may be blocking pipes: after poll says writable, at most PIPE_BUF
  // bytes are written at a time, which never blocks, so a stop is always noticed.
  void set_fd(int borrowed) {
    kind_ = raw;
    fd_ = borrowed;
    max_write_ = PIPE_BUF;
  }
  void set_owned_fd(unique_fd f) {
    kind_ = raw;
    owned_ = std::move(f);
    fd_ = owned_.get();
  }

  void write(std::string_view data, int stop_fd, sigpipe_guard& guard) {
    switch (kind_) {
      case discard: return;
      case captured: text_.append(data); return;
      case callback: cb_(data); return;
      case writer:
        while (!data.empty()) {
          ssize_t n;
          try {
            n = writer_.write_raw(data, guard);
          } catch (const io_error& e) {
            if (e.code() == std::errc::broken_pipe) throw pump_broken_pipe{};
            throw;
          }
          if (n > 0) data.remove_prefix(static_cast<std::size_t>(n));
          // Not all written: the pipe is full, wait for room before the next write.
          if (!data.empty()) wait_or_stop(writer_.fd(), POLLOUT, stop_fd);
        }
        return;
      case raw:
        while (!data.empty()) {
          wait_or_stop(fd_, POLLOUT, stop_fd);
          ssize_t n = sys::write(fd_, data.data(), std::min(data.size(), max_write_));
          if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
          }
          if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
          if (n < 0 && errno == EPIPE) {
            guard.saw_epipe();
            throw pump_broken_pipe{};
          }
          throw io_error(n < 0 ? errno : EIO, "", "write pipeline output fd " + std::to_string(fd_));
        }
        return;
    }
  }
  std::string take_captured() noexcept { return std::move(text_); }
  bool is_capture() const noexcept { return kind_ == captured; }
  void close() noexcept {
    writer_.close();
    owned_.reset();
    fd_ = -1;
  }

 private:
  enum kind_t { discard, writer, captured, callback, raw };
  kind_t kind_ = discard;
  pipe_writer writer_;
  std::string text_;
  output_callback cb_;
  unique_fd owned_;
  int fd_ = -1;
  std::size_t max_write_ = std::size_t(1) << 30;
};

struct pipeline_state;

// One parent-side worker on its own thread: source -> (transform or copy) -> sink.
// Transform stages are pumps; so are feeding string input to the first command and
// capturing (or calling back with) the last command's output.
class pump {
 public:
  pump_source source;
  pump_sink sink;
  std::optional<transform> fn;  // empty: copy bytes unchanged
  std::thread thread;
  // Results, written by the pump's thread before `done` is set.
  std::optional<exit_status> status;
  std::exception_ptr error;
  std::atomic<bool> done{false};

  void run(pipeline_state& st) noexcept;

 private:
  static void emit_thunk(void* self, std::string_view d) { static_cast<pump*>(self)->emit(d); }
  void emit(std::string_view d) {
    if (d.empty()) return;
    if (out_.size() + d.size() > pump_chunk) flush();
    if (d.size() >= pump_chunk)
      write(d);
    else
      out_.append(d);
  }
  void flush() {
    if (out_.empty()) return;
    write(out_.view());
    out_.clear();
  }
  // Remembers a stop or broken pipe, so user code that swallows the exception
  // (catch (...)) cannot keep the pump going.
  void write(std::string_view d) {
    check_flags();
    try {
      sink.write(d, stop_fd_, *guard_);
    } catch (const pump_stopped&) {
      stopped_ = true;
      throw;
    } catch (const pump_broken_pipe&) {
      broken_ = true;
      throw;
    }
  }
  void check_flags() const {
    if (stopped_) throw pump_stopped{};
    if (broken_) throw pump_broken_pipe{};
  }
  bool more(const std::atomic<bool>& stopping) {
    if (stopping.load(std::memory_order_relaxed)) throw pump_stopped{};
    return source.more(stop_fd_);
  }
  void work(pipeline_state& st);

  byte_buffer out_;
  int stop_fd_ = -1;
  sigpipe_guard* guard_ = nullptr;
  bool stopped_ = false, broken_ = false;
};

// One stage's bookkeeping. Guarded by pipeline_state::mu where noted.
struct stage_slot {
  std::string command;
  bool is_transform = false;
  pid_t pid = -1;
  process proc;                       // (mu) commands
  std::optional<exit_status> status;  // (mu) commands: known once it exited
  bool reaped = false;                // (mu)
  pipe_reader err;                    // captured stderr (supervisor thread only)
  std::string err_text;               // (supervisor thread only)
  pump* transform_pump = nullptr;
  std::vector<int> success_codes{0};  // the command's success_codes(), ascending
};

// Everything a running pipeline shares between the user's threads, the supervisor
// thread (waits for the children, reads captured stderr, enforces the timeout) and
// the pumps. Never moves once the threads run.
struct pipeline_state {
  std::string command;
  bool sigpipe_is_failure = false, check = false;
  std::optional<std::chrono::milliseconds> timeout;
  deadline dl;

  std::vector<stage_slot> stages;  // sized once, before any thread starts
  std::vector<std::unique_ptr<pump>> pumps;
  pump* output_pump = nullptr;  // the pump whose captured text is result.out
  unique_fd stop_fd = make_eventfd();  // readable once the pumps must stop
  unique_fd wake_fd = make_eventfd();  // pumps -> supervisor: "I am done"
  unique_fd done_fd = make_eventfd();  // readable once everything has finished
  std::size_t leader = SIZE_MAX;       // the stage leading the process group
  pid_t pgid = 0;
  std::size_t commands = 0;
  std::atomic<bool> stopping{false};
  std::atomic<int> stop_signal{SIGKILL};

  std::mutex mu;
  std::condition_variable cv;
  std::size_t exited = 0;  // (mu) command stages whose status is known
  bool aborting = false;   // (mu)
  bool timed_out = false;  // (mu)
  std::exception_ptr first_error;  // (mu)
  bool finished = false;   // (mu)
  pipeline_result result;  // complete once finished

  std::thread supervisor;
  std::once_flag joined;

  // Sends sig to every stage not reaped yet, and to the group while its leader is
  // unreaped (the leader's pid is then still the group's id, so it cannot have been
  // reused). Returns whether anything was signalled.
  bool signal_all_locked(int sig) noexcept {
    bool any = false;
    for (auto& s : stages) {
      if (s.is_transform || s.reaped || !s.proc.valid()) continue;
      try {
        if (s.proc.signal(sig)) any = true;
      } catch (...) {
      }
    }
    if (pgid > 0 && leader != SIZE_MAX && !stages[leader].reaped && sys::kill(-pgid, sig) == 0)
      any = true;
    return any;
  }
  // Stops everything: signals the stages, tells the pumps to stop.
  void abort_locked(int sig) noexcept {
    if (!aborting) {
      aborting = true;
      stop_signal.store(sig);
    }
    stopping.store(true);
    signal_all_locked(sig);
    eventfd_signal(stop_fd.get());
    eventfd_signal(wake_fd.get());
  }
  // A pump or the supervisor failed: remember the first error, stop everything.
  void fail(std::exception_ptr e) noexcept {
    std::lock_guard lk(mu);
    if (!first_error) first_error = std::move(e);
    abort_locked(SIGKILL);
  }

  void supervise() noexcept;

 private:
  void loop();
  void check_exit(std::size_t k);
  void drain_err(stage_slot& s, int rounds);
  void build_result();
};

inline void pump::run(pipeline_state& st) noexcept {
  block_async_signals();
  stop_fd_ = st.stop_fd.get();
  try {
    sigpipe_guard guard;
    guard_ = &guard;
    work(st);
  } catch (const pump_stopped&) {
    status = exit_status::signaled(st.stop_signal.load());
  } catch (const pump_broken_pipe&) {
    status = exit_status::signaled(SIGPIPE);
  } catch (...) {
    error = std::current_exception();
    status = exit_status::exited(1);
    st.fail(error);
  }
  guard_ = nullptr;
  // Closing both ends now is what tells the neighbours: EOF downstream, EPIPE upstream.
  source.close();
  sink.close();
  out_.clear();
  out_.shrink();
  done.store(true, std::memory_order_release);
  eventfd_signal(st.wake_fd.get());
}

inline void pump::work(pipeline_state& st) {
  if (!fn) {  // plain copy: write what was read, no batching
    while (more(st.stopping)) {
      std::string_view v = source.view();
      write(v);
      source.consume(v.size());
    }
    status = exit_status::exited(0);
    return;
  }
  emitter em(this, &pump::emit_thunk);
  if (fn->line_) {
    const auto& line_fn = fn->line_;
    std::size_t scanned = 0;  // bytes at the front of view() known to hold no '\n'
    while (more(st.stopping)) {
      std::string_view v = source.view();
      std::size_t start = 0;
      for (std::size_t nl; (nl = v.find('\n', std::max(start, scanned))) != std::string_view::npos;
           start = nl + 1) {
        if (auto r = line_fn(v.substr(start, nl - start))) {
          emit(*r);
          emit("\n");
        }
        check_flags();
      }
      source.consume(start);
      scanned = v.size() - start;
      if (scanned > fn->max_line_)
        throw std::length_error("transform " + fn->to_string() + ": a line longer than " +
                                std::to_string(fn->max_line_) + " bytes (see max_line())");
      flush();
    }
    std::string_view rest = source.view();  // a last line without '\n'
    if (!rest.empty())
      if (auto r = line_fn(rest)) emit(*r);
  } else {
    while (more(st.stopping)) {
      std::string_view v = source.view();
      fn->chunk_(v, em);
      check_flags();
      source.consume(v.size());
      flush();
    }
  }
  flush();
  if (fn->end_) {
    fn->end_(em);
    check_flags();
    flush();
  }
  status = exit_status::exited(0);
}

inline exit_status status_from_siginfo(const siginfo_t& info) noexcept {
  if (info.si_code == CLD_EXITED) return exit_status::exited(info.si_status);
  return exit_status::signaled(info.si_status, info.si_code == CLD_DUMPED);
}

// Looks at stage k without reaping it (WNOWAIT). A stage that exited is reaped at
// once, except the group leader: it stays a zombie until every other stage is gone,
// which keeps the group's id from being reused while we may still signal the group.
inline void pipeline_state::check_exit(std::size_t k) {
  stage_slot& s = stages[k];
  siginfo_t info{};
  // Through the pidfd when there is one: a pid can be reused once reaped elsewhere.
  const int pidfd = s.proc.pidfd();
  int r = sys::no_eintr([&] {
    return pidfd >= 0 ? sys::waitid_pidfd(pidfd, &info, WEXITED | WNOHANG | WNOWAIT)
                      : sys::waitid(P_PID, static_cast<id_t>(s.pid), &info, WEXITED | WNOHANG | WNOWAIT);
  });
  if (r < 0 && errno == EINVAL && pidfd >= 0)  // no P_PIDFD (Linux 5.3)
    r = sys::no_eintr([&] {
      return sys::waitid(P_PID, static_cast<id_t>(s.pid), &info, WEXITED | WNOHANG | WNOWAIT);
    });
  if (r < 0) {
    std::error_code ec(errno, std::system_category());
    throw error(ec, s.command, "waitid for '" + s.command + "' failed: " + ec.message());
  }
  if (info.si_pid == 0) return;  // still running
  {
    std::lock_guard lk(mu);
    s.status = status_from_siginfo(info);
    ++exited;
    if (k != leader) {
      s.proc.try_wait();
      s.reaped = true;
    }
    if (leader != SIZE_MAX && exited == commands && !stages[leader].reaped) {
      stages[leader].proc.try_wait();
      stages[leader].reaped = true;
    }
  }
  cv.notify_all();
}

inline void pipeline_state::drain_err(stage_slot& s, int rounds) {
  while (rounds-- > 0 && s.err.is_open()) {
    ssize_t r = s.err.fill(pump_chunk);
    if (r == 0) s.err.close();  // end of file: release the fd now
    if (r <= 0) return;
    s.err_text.append(s.err.buffered());
    s.err.consume(s.err.buffered().size());
  }
}

inline void pipeline_state::loop() {
  std::vector<pollfd> fds;
  std::vector<std::size_t> who;  // per fd: SIZE_MAX wake, k a stage's pidfd, n + k its stderr
  const std::size_t n = stages.size();
  for (;;) {
    fds.clear();
    who.clear();
    fds.push_back({wake_fd.get(), POLLIN, 0});
    who.push_back(SIZE_MAX);
    bool tick = false;  // a stage without pidfd: look every 50 ms
    bool all_exited;
    {
      std::lock_guard lk(mu);
      for (std::size_t k = 0; k < n; ++k) {
        if (stages[k].is_transform || stages[k].status) continue;
        if (stages[k].proc.pidfd() >= 0) {
          fds.push_back({stages[k].proc.pidfd(), POLLIN, 0});
          who.push_back(k);
        } else {
          tick = true;
        }
      }
      all_exited = exited == commands;
    }
    bool errs_open = false;
    for (std::size_t k = 0; k < n; ++k)
      if (stages[k].err.is_open() && !stages[k].err.eof()) {
        errs_open = true;
        fds.push_back({stages[k].err.fd(), POLLIN, 0});
        who.push_back(n + k);
      }
    bool pumps_done = std::all_of(pumps.begin(), pumps.end(), [](const std::unique_ptr<pump>& p) {
      return p->done.load(std::memory_order_acquire);
    });
    if (all_exited && pumps_done && !errs_open) return;
    const bool stopped = stopping.load();
    if (all_exited && stopped && errs_open) {
      // Killed, and something (a grandchild outside our reach) still holds a stderr
      // pipe: take what is there and stop waiting for end-of-file.
      for (auto& s : stages) {
        drain_err(s, 16);
        s.err.close();
      }
      continue;
    }
    deadline wake = (!stopped && dl) ? dl : std::nullopt;
    if (tick) {
      auto soon = clock::now() + std::chrono::milliseconds(50);
      if (!wake || soon < *wake) wake = soon;
    }
    poll_until(fds.data(), static_cast<nfds_t>(fds.size()), wake);
    if (!stopped && dl && clock::now() >= *dl) {
      std::lock_guard lk(mu);
      if (!aborting) {
        timed_out = true;
        abort_locked(SIGKILL);
      }
      continue;
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      if (who[i] == SIZE_MAX)
        eventfd_clear(wake_fd.get());
      else if (who[i] >= n)
        drain_err(stages[who[i] - n], 4);
      else
        check_exit(who[i]);
    }
    if (tick)
      for (std::size_t k = 0; k < n; ++k)
        if (!stages[k].is_transform && !stages[k].status) check_exit(k);
  }
}

inline void pipeline_state::build_result() {
  pipeline_result r;
  r.command = command;
  const std::size_t n = stages.size();
  std::lock_guard lk(mu);
  for (std::size_t k = 0; k < n; ++k) {
    stage_slot& s = stages[k];
    stage_result sr;
    sr.command = s.command;
    sr.is_transform = s.is_transform;
    sr.pid = s.pid;
    if (s.is_transform) {
      sr.status = s.transform_pump->status.value_or(exit_status::signaled(stop_signal.load()));
      sr.error = s.transform_pump->error;
    } else {
      sr.status = s.status.value_or(exit_status::signaled(SIGKILL));
    }
    sr.err = std::move(s.err_text);
    auto code = sr.status.code();
    sr.failed = !(code && std::binary_search(s.success_codes.begin(), s.success_codes.end(), *code)) &&
                !(sr.status.signal() == SIGPIPE && k + 1 < n && !sigpipe_is_failure);
    if (sr.failed) {
      r.status = sr.status;
      r.failed_stage = k;
    }
    r.stages.push_back(std::move(sr));
  }
  if (output_pump) r.out = output_pump->sink.take_captured();
  result = std::move(r);
}

inline void pipeline_state::supervise() noexcept {
  block_async_signals();
  try {
    loop();
  } catch (...) {
    fail(std::current_exception());
    // Everything was sent SIGKILL: reap what is left, blocking.
    for (auto& s : stages) {
      if (s.is_transform || !s.proc.valid()) continue;
      bool reaped;
      {
        std::lock_guard lk(mu);
        reaped = s.reaped;
      }
      if (reaped) continue;
      std::optional<exit_status> st;
      try {
        st = s.proc.wait();
      } catch (...) {
      }
      std::lock_guard lk(mu);
      if (!s.status) {
        s.status = st;
        ++exited;
      }
      s.reaped = true;
    }
  }
  for (auto& p : pumps)
    if (p->thread.joinable()) p->thread.join();
  try {
    build_result();
  } catch (...) {
    std::lock_guard lk(mu);
    if (!first_error) first_error = std::current_exception();
  }
  {
    std::lock_guard lk(mu);
    finished = true;
  }
  cv.notify_all();
  eventfd_signal(done_fd.get());
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
    auto& st = state();
    {
      std::unique_lock lk(st.mu);
      if (!st.finished) {
        if (st.commands == 0) {
          st.abort_locked(SIGTERM);
        } else {
          st.signal_all_locked(SIGTERM);
          st.signal_all_locked(SIGCONT);  // SIGTERM stays pending in a stopped stage
        }
        if (!st.cv.wait_until(lk, detail::deadline_in(grace), [&] { return st.finished; }))
          st.abort_locked(SIGKILL);
      }
    }
    return wait();
  }

 private:
  friend class pipeline;
  explicit running_pipeline(std::unique_ptr<detail::pipeline_state> st) noexcept
      : st_(std::move(st)) {}

  detail::pipeline_state& state() const {
    if (!st_) throw argument_error("", "use of an empty running_pipeline");
    return *st_;
  }
  void join() {
    auto& st = state();
    std::call_once(st.joined, [&] { st.supervisor.join(); });
  }
  // After join(): the result, or the error the pipeline ended with.
  pipeline_result outcome(bool move) {
    auto& st = *st_;
    if (st.first_error) std::rethrow_exception(st.first_error);
    if (st.timed_out) {
      std::string err;
      for (const auto& s : st.result.stages) err += s.err;
      throw timeout_error(st.command, *st.timeout, st.result.status, {st.result.out, std::move(err)});
    }
    if (st.check) st.result.check();
    return move ? std::move(st.result) : st.result;
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

// An argument_error about stage k, keeping the command and the original problem.
[[noreturn]] inline void throw_stage_argument_error(const argument_error& e, std::size_t k,
                                                    std::size_t n) {
  std::string msg = e.what();
  std::string prefix = "command '" + e.command() + "': ";
  if (!e.command().empty() && msg.compare(0, prefix.size(), prefix) == 0) msg.erase(0, prefix.size());
  throw argument_error(e.command(), stage_label(k, n) + ": " + msg);
}

inline void check_fd_open(int n, const std::string& cmd, const char* what) {
  if (n < 0 || sys::fcntl(n, F_GETFD) < 0)
    throw argument_error(cmd, std::string(what) + " fd " + std::to_string(n) + " is not open");
}

inline unique_fd open_for_pipeline(const file& f, bool for_output, const std::string& cmd) {
  file_mode m = f.mode.value_or(for_output ? file_mode::truncate : file_mode::read);
  int flags = m == file_mode::read       ? O_RDONLY
              : m == file_mode::truncate ? O_WRONLY | O_CREAT | O_TRUNC
                                         : O_WRONLY | O_CREAT | O_APPEND;
  unique_fd fd(sys::no_eintr([&] { return sys::open(f.path.c_str(), flags, 0666); }));
  if (!fd)
    throw spawn_error(errno, cmd, for_output ? "open output file" : "open input file",
                      "'" + f.path.string() + "'");
  return fd;
}

}  // namespace detail

inline running_pipeline pipeline::spawn(pipeline_options opts) const {
  using detail::pump;
  const std::size_t n = stages_.size();
  if (n == 0)
    throw argument_error("", "empty pipeline: add at least one stage (| or add()) before running it");
  const std::string whole = to_string();
  if (opts.timeout && opts.timeout->count() < 0) throw argument_error(whole, "negative timeout");
  const bool first_is_transform = std::holds_alternative<transform>(stages_.front());
  const bool last_is_transform = std::holds_alternative<transform>(stages_.back());

  // ---- check everything before starting anything
  if (auto* r = std::get_if<pipe_reader>(&opts.input); r && !r->is_open())
    throw argument_error(whole, "input: the pipe_reader is closed");
  if (auto* d = std::get_if<fd>(&opts.input)) detail::check_fd_open(d->number, whole, "input");
  if (auto* d = std::get_if<fd>(&opts.output)) detail::check_fd_open(d->number, whole, "output");
  if (auto* cb = std::get_if<output_callback>(&opts.output); cb && !*cb)
    throw argument_error(whole, "output: the callback is empty");
  for (std::size_t k = 0; k < n; ++k) {
    const command* c = std::get_if<command>(&stages_[k]);
    if (!c) continue;
    if (c->in() || c->out())
      throw argument_error(c->to_string(), detail::stage_label(k, n) +
                                               ": the pipeline connects stdin and stdout; set "
                                               "pipeline_options input/output instead of in()/out()");
    if (c->err() && std::holds_alternative<pipe_t>(*c->err()))
      throw argument_error(c->to_string(), detail::stage_label(k, n) +
                                               ": err(sp::pipe) would never be read; use "
                                               "pipeline_options err = sp::capture");
    if (opts.process_group && c->has_process_group())
      throw argument_error(c->to_string(), detail::stage_label(k, n) +
                                               ": has a process group or session of its own; set "
                                               "pipeline_options process_group = false to keep it");
    try {
      c->validate();
    } catch (const spawn_error& e) {
      throw pipeline_spawn_error(e, k, n, whole);
    } catch (const argument_error& e) {
      detail::throw_stage_argument_error(e, k, n);
    }
  }
  // Files a transform reads or writes are opened by us, now.
  detail::unique_fd in_file, out_file;
  try {
    if (auto* f = std::get_if<file>(&opts.input); f && first_is_transform)
      in_file = detail::open_for_pipeline(*f, false, "[transform]");
    if (auto* f = std::get_if<file>(&opts.output); f && last_is_transform)
      out_file = detail::open_for_pipeline(*f, true, "[transform]");
  } catch (const spawn_error& e) {
    throw pipeline_spawn_error(e, in_file ? n - 1 : 0, n, whole);
  }

  std::unique_ptr<detail::pipeline_state> st;
  try {
    st = std::make_unique<detail::pipeline_state>();
  } catch (const std::system_error& e) {  // eventfd: out of fds; no stage involved yet
    throw spawn_error(e.code().value(), whole, "create eventfd");
  }
  st->command = whole;
  st->sigpipe_is_failure = opts.sigpipe_is_failure;
  st->check = opts.check;
  st->timeout = opts.timeout;
  st->dl = detail::deadline_in(opts.timeout);
  st->stages.resize(n);
  for (std::size_t k = 0; k < n; ++k)
    if (const command* c = std::get_if<command>(&stages_[k]))
      st->stages[k].success_codes = c->success_codes();
  auto new_pump = [&]() -> pump* {
    st->pumps.push_back(std::make_unique<pump>());
    return st->pumps.back().get();
  };

  // A pipe for stage k; running out of fds is stage k's spawn_error.
  auto make_link = [&](std::size_t k, const std::string& cmd) {
    try {
      return detail::make_pipe();
    } catch (const std::system_error& e) {
      throw pipeline_spawn_error(spawn_error(e.code().value(), cmd, "create pipe"), k, n, whole);
    }
  };

  // ---- start the stages, left to right. On any exception `st` is destroyed: each
  // started process is killed (the leader's kill reaches the whole group) and
  // reaped, every fd closed; no thread has been started yet.
  detail::unique_fd upstream;  // the read end that feeds stage k (k > 0)
  for (std::size_t k = 0; k < n; ++k) {
    detail::stage_slot& slot = st->stages[k];
    const bool last = k + 1 == n;

    if (auto* t = std::get_if<transform>(&stages_[k])) {
      pump* p = new_pump();
      p->fn = *t;
      slot.is_transform = true;
      slot.command = t->to_string();
      slot.transform_pump = p;
      if (k > 0) {
        p->source.set_reader(pipe_reader(std::move(upstream), "stdin", slot.command));
      } else if (auto* s = std::get_if<std::string>(&opts.input)) {
        p->source.set_text(std::move(*s));
      } else if (auto* r = std::get_if<pipe_reader>(&opts.input)) {
        p->source.set_reader(std::move(*r));
      } else if (std::holds_alternative<file>(opts.input)) {
        p->source.set_owned_fd(std::move(in_file));
      } else if (auto* d = std::get_if<fd>(&opts.input)) {
        p->source.set_fd(d->number);
      } else if (std::holds_alternative<inherit_t>(opts.input)) {
        p->source.set_fd(0);
      }  // null: no source, immediate end of input
      if (!last) {
        auto link = make_link(k, slot.command);
        p->sink.set_writer(pipe_writer(std::move(link.write), "stdout", slot.command));
        upstream = std::move(link.read);
      } else if (std::holds_alternative<capture_t>(opts.output)) {
        p->sink.set_capture();
        st->output_pump = p;
      } else if (auto* cb = std::get_if<output_callback>(&opts.output)) {
        p->sink.set_callback(std::move(*cb));
      } else if (std::holds_alternative<file>(opts.output)) {
        p->sink.set_owned_fd(std::move(out_file));
      } else if (auto* d = std::get_if<fd>(&opts.output)) {
        p->sink.set_fd(d->number);
      } else if (std::holds_alternative<inherit_t>(opts.output)) {
        p->sink.set_fd(1);
      }  // null: discard
      continue;
    }

    command c = std::get<command>(stages_[k]);
    slot.command = c.to_string();
    // The parent's copies of this child's ends: closed as soon as it is started.
    detail::unique_fd child_in, child_out, child_err;
    pipe_reader handed_reader;  // a pipe_reader input given to the child directly

    if (k > 0) {
      child_in = std::move(upstream);
      c.in(fd(child_in.get()));
    } else if (std::holds_alternative<null_t>(opts.input)) {
      c.in(null);
    } else if (std::holds_alternative<inherit_t>(opts.input)) {
      c.in(inherit);
    } else if (auto* f = std::get_if<file>(&opts.input)) {
      c.in(*f);
    } else if (auto* d = std::get_if<fd>(&opts.input)) {
      c.in(*d);
    } else if (auto* s = std::get_if<std::string>(&opts.input)) {
      auto link = make_link(k, slot.command);
      child_in = std::move(link.read);
      c.in(fd(child_in.get()));
      pump* p = new_pump();
      p->source.set_text(std::move(*s));
      p->sink.set_writer(pipe_writer(std::move(link.write), "stdin", slot.command));
    } else if (auto* r = std::get_if<pipe_reader>(&opts.input)) {
      if (r->buffered().empty()) {
        // Hand the pipe itself to the child: no copy through us, and blocking, as a
        // program expects: a new description of it (see command.hpp), so the one
        // this reader shares with any other holder is not touched. If that reopen
        // fails (no /proc), clear O_NONBLOCK on the reader's own description: we
        // own the reader, and the child would get EAGAIN otherwise.
        handed_reader = std::move(*r);
        const int hfd = handed_reader.fd();
        const int fl = detail::sys::fcntl(hfd, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK) != 0) {
          child_in.reset(detail::blocking_copy_for_child(hfd, fl));
          if (!child_in) detail::sys::fcntl(hfd, F_SETFL, fl & ~O_NONBLOCK);
        }
        c.in(fd(child_in ? child_in.get() : hfd));
      } else {
        // It holds bytes read already: they, then the rest, go through a pump.
        auto link = make_link(k, slot.command);
        child_in = std::move(link.read);
        c.in(fd(child_in.get()));
        pump* p = new_pump();
        p->source.set_reader(std::move(*r));
        p->sink.set_writer(pipe_writer(std::move(link.write), "stdin", slot.command));
      }
    }

    if (!last) {
      auto link = make_link(k, slot.command);
      child_out = std::move(link.write);
      upstream = std::move(link.read);
      c.out(fd(child_out.get()));
    } else if (std::holds_alternative<null_t>(opts.output)) {
      c.out(null);
    } else if (std::holds_alternative<inherit_t>(opts.output)) {
      c.out(inherit);
    } else if (auto* f = std::get_if<file>(&opts.output)) {
      c.out(*f);
    } else if (auto* d = std::get_if<fd>(&opts.output)) {
      c.out(*d);
    } else {  // capture or callback: a pump reads the last stage's stdout
      auto link = make_link(k, slot.command);
      child_out = std::move(link.write);
      c.out(fd(child_out.get()));
      pump* p = new_pump();
      p->source.set_reader(pipe_reader(std::move(link.read), "stdout", slot.command));
      if (auto* cb = std::get_if<output_callback>(&opts.output)) {
        p->sink.set_callback(std::move(*cb));
      } else {
        p->sink.set_capture();
        st->output_pump = p;
      }
    }

    if (!c.err()) {
      if (std::holds_alternative<null_t>(opts.err)) {
        c.err(null);
      } else if (std::holds_alternative<merge_with_out_t>(opts.err)) {
        c.err(merge_with_out);
      } else if (std::holds_alternative<capture_t>(opts.err)) {
        auto link = make_link(k, slot.command);
        child_err = std::move(link.write);
        c.err(fd(child_err.get()));
        slot.err = pipe_reader(std::move(link.read), "stderr", slot.command);
      }
    }

    if (opts.process_group) {
      if (st->leader == SIZE_MAX)
        c.new_process_group();
      else
        c.join_process_group(st->pgid);
    }
    try {
      slot.proc = c.spawn();
    } catch (const spawn_error& e) {
      throw pipeline_spawn_error(e, k, n, whole);
    } catch (const argument_error& e) {
      detail::throw_stage_argument_error(e, k, n);
    }
    slot.pid = slot.proc.pid();
    ++st->commands;
    if (opts.process_group && st->leader == SIZE_MAX) {
      st->leader = k;
      st->pgid = slot.pid;
    }
    // child_in, child_out, child_err and handed_reader close here: from now on only
    // the child holds those ends.
  }

  // ---- start the threads: the pumps, then the supervisor
  detail::pipeline_state* s = st.get();
  try {
    for (auto& p : st->pumps) {
      pump* q = p.get();
      q->thread = std::thread([s, q] { q->run(*s); });
    }
    st->supervisor = std::thread([s] { s->supervise(); });
  } catch (...) {
    {
      std::lock_guard lk(st->mu);
      st->abort_locked(SIGKILL);
    }
    for (auto& p : st->pumps)
      if (p->thread.joinable()) p->thread.join();
    throw;  // `st` kills and reaps the stages
  }
  return running_pipeline(std::move(st));
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
