// subprocess/task.hpp - C++20 coroutines over sp::event_loop.
//
// sp::task<T> is a lazy coroutine: it starts when awaited (or run by sync_wait), its
// co_return value or exception comes out of the co_await. The awaitables below are
// driven by an sp::event_loop: a child's exit, a line or a chunk from a pipe_reader,
// a write (with backpressure) to a pipe_writer.
//
//   ```cpp
//   sp::event_loop loop;
//   sp::process p;  // really sp::command{"sh", "-c", "echo hi; exit 3"}.out(sp::pipe).spawn()
//   auto job = [&]() -> sp::task<int> {
//     while (auto line = co_await sp::async_read_line(loop, p.out())) std::cout << *line << '\n';
//     sp::exit_status st = co_await sp::async_wait(loop, p);
//     co_return st.code().value_or(-1);
//   };
//   int code = sp::sync_wait(loop, job());  // runs the loop until job() is done: 3
//   ```
//
// Cancelling: each awaitable takes an optional std::stop_token. A stop request (from
// any thread) resumes the coroutine, on the loop's thread, with sp::canceled_error
// (code() std::errc::operation_canceled). The child is KEPT: cancelling a wait does
// not kill or reap it; a canceled read leaves what it had buffered in the reader; a
// canceled write may have written part of its data.
// Errors: what the blocking calls throw (io_error, sp::error for a lost status).
// Blocking: nothing blocks but sync_wait(), which runs the loop. A coroutine resumes
// inside the loop's callbacks: the same rule applies, do not block in it.
// Threads: tasks and awaitables belong to the loop's thread; only stop requests may
// come from others. The loop, the process and the streams must outlive the awaits.
// Cost: a task is one coroutine frame; each await registers one loop watch (no thread,
// no copy of the data written; a read returns a new std::string).
#pragma once

#include <coroutine>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include "detail/pipe_read.hpp"
#include "error.hpp"
#include "event_loop.hpp"
#include "exit_status.hpp"
#include "process.hpp"
#include "stream.hpp"

namespace subprocess {

template <class T = void>
class task;

namespace detail {

struct task_promise_base {
  std::coroutine_handle<> continuation = std::noop_coroutine();
  std::exception_ptr error;
  event_loop* stop_when_done = nullptr;  // set by sync_wait

  std::suspend_always initial_suspend() noexcept { return {}; }
  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto& p = h.promise();
      if (p.stop_when_done) p.stop_when_done->stop();
      return p.continuation;  // symmetric transfer: no stack growth along await chains
    }
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { error = std::current_exception(); }
  void rethrow_if_failed() {
    if (error) std::rethrow_exception(error);
  }
};

template <class T>
struct task_promise : task_promise_base {
  std::optional<T> value;
  task<T> get_return_object() noexcept;
  template <class U = T>
  void return_value(U&& v) {
    value.emplace(std::forward<U>(v));
  }
  T result() {
    rethrow_if_failed();
    return std::move(*value);
  }
};

template <>
struct task_promise<void> : task_promise_base {
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void result() { rethrow_if_failed(); }
};

}  // namespace detail

// A lazy coroutine returning T. Move-only; destroying a task that has not finished
// destroys its frame (its pending await is unregistered from the loop).
template <class T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;

  task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  task& operator=(task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~task() {
    if (h_) h_.destroy();
  }

  bool done() const noexcept { return !h_ || h_.done(); }

  auto operator co_await() noexcept {
    struct awaiter {
      std::coroutine_handle<promise_type> h;
      bool await_ready() noexcept { return !h || h.done(); }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
        h.promise().continuation = caller;
        return h;  // start (or go on with) the task
      }
      T await_resume() {
        if (!h) throw argument_error("", "co_await on an empty (moved-from) task");
        return h.promise().result();
      }
    };
    return awaiter{h_};
  }

 private:
  friend struct detail::task_promise<T>;
  template <class U>
  friend U sync_wait(event_loop& loop, task<U> t);
  explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}
}  // namespace detail

// Runs the loop until t is done; returns its value or rethrows its exception. A
// callback's exception leaves run() and this, as from event_loop::run() (t is then
// destroyed with its pending await). If the loop runs out of things to wait for
// before t is done (t awaits something this loop does not drive), argument_error.
template <class T>
T sync_wait(event_loop& loop, task<T> t) {
  auto h = t.h_;
  if (!h) throw argument_error("", "sync_wait on an empty (moved-from) task");
  h.promise().stop_when_done = &loop;
  if (!h.done()) h.resume();
  while (!h.done()) {
    if (loop.run_for(event_loop::clock::duration::max()) && !h.done())
      throw argument_error("", "sync_wait: the task waits for something its loop does not drive");
  }
  return h.promise().result();
}

namespace detail {

// What every loop awaitable shares: the registration, the stop callback, and the
// hand-over between the loop's callbacks (or a cancellation) and the coroutine.
// A callback captures `this`: the awaiter lives in the coroutine frame and does not
// move once suspended, and its destructor unregisters it.
class loop_awaiter {
 public:
  loop_awaiter(event_loop& loop, std::stop_token stop) : loop_(&loop), stop_(std::move(stop)) {}
  loop_awaiter(const loop_awaiter&) = delete;
  loop_awaiter& operator=(const loop_awaiter&) = delete;
  ~loop_awaiter() {
    if (state_ && !state_->done) {
      state_->done = true;  // a cancellation already posted finds nothing to do
      loop_->remove(state_->reg);
    }
  }

 protected:
  struct state {
    event_loop* loop = nullptr;
    std::coroutine_handle<> h;
    event_loop::id reg = 0;
    bool done = false, canceled = false;
  };
  // From the stop-requesting thread: hand the cancellation to the loop's thread.
  struct canceler {
    std::shared_ptr<state> s;
    void operator()() const noexcept {
      s->loop->post([s = s] {
        if (s->done) return;
        s->done = true;
        s->canceled = true;
        s->loop->remove(s->reg);
        s->h.resume();
      });
    }
  };

  bool stop_requested() const noexcept { return stop_.stop_requested(); }
  // await_suspend: register(h) returns the loop registration to resume through.
  template <class Register>
  void suspend(std::coroutine_handle<> h, Register&& reg) {
    state_ = std::make_shared<state>();
    state_->loop = loop_;
    state_->h = h;
    state_->reg = reg();
    if (stop_.stop_possible()) stop_cb_.emplace(stop_, canceler{state_});
  }
  // From a loop callback: the operation is over (result or error stored): resume.
  void complete() {
    state_->done = true;
    loop_->remove(state_->reg);
    state_->h.resume();  // may destroy *this: nothing after it
  }
  // await_resume: a cancellation (or a stop requested before the await) throws.
  void throw_if_canceled(const std::string& command, const std::string& what) const {
    if ((state_ && state_->canceled) || (!state_ && stop_requested())) throw canceled_error(command, what);
  }
  void rethrow_if_failed() const {
    if (error_) std::rethrow_exception(error_);
  }

  event_loop* loop_;
  std::exception_ptr error_;

 private:
  std::stop_token stop_;
  std::shared_ptr<state> state_;
  std::optional<std::stop_callback<canceler>> stop_cb_;  // destroyed first: waits for a running request
};

class exit_awaiter : loop_awaiter {
 public:
  exit_awaiter(event_loop& loop, process& p, std::stop_token stop)
      : loop_awaiter(loop, std::move(stop)), p_(&p) {}
  bool await_ready() const noexcept { return stop_requested() || p_->status().has_value(); }
  void await_suspend(std::coroutine_handle<> h) {
    suspend(h, [this] {
      return loop_->on_exit(
          *p_,
          [this](exit_status s) {
            status_ = s;
            complete();
          },
          [this](const error& e) {
            error_ = std::make_exception_ptr(e);
            complete();
          });
    });
  }
  exit_status await_resume() {
    if (!status_ && p_->status()) return *p_->status();  // collected before the await
    throw_if_canceled(p_->command_line(), "co_await the exit");
    rethrow_if_failed();
    return *status_;
  }

 private:
  process* p_;
  std::optional<exit_status> status_;
};

// A line or a chunk (detail/pipe_read.hpp), or end of stream.
class read_awaiter : loop_awaiter {
 public:
  read_awaiter(event_loop& loop, pipe_reader& r, std::stop_token stop, bool line, std::size_t max)
      : loop_awaiter(loop, std::move(stop)), rd_{&r, line, max} {}
  bool await_ready() {
    if (stop_requested()) return true;
    try {
      return rd_.pull();
    } catch (...) {
      error_ = std::current_exception();
      return true;
    }
  }
  void await_suspend(std::coroutine_handle<> h) {
    suspend(h, [this] {
      return loop_->watch(rd_.r->fd(), EPOLLIN, [this](std::uint32_t) {
        try {
          if (!rd_.pull()) return;
        } catch (...) {
          error_ = std::current_exception();
        }
        complete();
      });
    });
  }
  // A line (without '\n'), a chunk, or nullopt at end of stream.
  std::optional<std::string> await_resume() {
    throw_if_canceled(rd_.r->command(), (rd_.line ? "co_await a line from " : "co_await a read from ") + rd_.r->stream());
    rethrow_if_failed();
    return rd_.take();
  }

 private:
  pipe_read rd_;
};

class write_awaiter : loop_awaiter {
 public:
  write_awaiter(event_loop& loop, pipe_writer& w, std::string_view data, std::stop_token stop)
      : loop_awaiter(loop, std::move(stop)), w_(&w), data_(data) {}
  bool await_ready() {
    if (stop_requested()) return true;
    try {
      return push();
    } catch (...) {
      error_ = std::current_exception();
      return true;
    }
  }
  void await_suspend(std::coroutine_handle<> h) {
    suspend(h, [this] {
      return loop_->watch(w_->fd(), EPOLLOUT, [this](std::uint32_t) {
        try {
          if (!push()) return;
        } catch (...) {
          error_ = std::current_exception();
        }
        complete();
      });
    });
  }
  void await_resume() {
    throw_if_canceled(w_->command(), "co_await a write to " + w_->stream());
    rethrow_if_failed();
  }

 private:
  // Writes what fits now; true once everything is written.
  bool push() {
    if (data_.empty()) return true;
    sigpipe_guard guard;
    while (!data_.empty()) {
      ssize_t n = w_->write_raw(data_, guard);
      if (n < 0) return false;  // full: wait for room (the child reads at its pace)
      data_.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  pipe_writer* w_;
  std::string_view data_;
};

}  // namespace detail

// co_await: the child's exit status, once it has exited (it is reaped). A status the
// kernel discarded (SIGCHLD ignored) is the sp::error process::wait() throws.
inline detail::exit_awaiter async_wait(event_loop& loop, process& p, std::stop_token stop = {}) {
  return {loop, p, std::move(stop)};
}
// co_await: the next line without its '\n' (as read_line(): CRLF kept, a last line
// without '\n' returned), nullopt at end of stream.
inline detail::read_awaiter async_read_line(event_loop& loop, pipe_reader& r, std::stop_token stop = {}) {
  return {loop, r, std::move(stop), true, 64 * 1024};
}
// co_await: what is available (at least one byte, at most max), nullopt at end of stream.
inline detail::read_awaiter async_read_some(event_loop& loop, pipe_reader& r, std::stop_token stop = {},
                                            std::size_t max = 64 * 1024) {
  return {loop, r, std::move(stop), false, max};
}
// co_await: all of data written; the coroutine waits while the pipe is full (the
// child reads at its pace: backpressure). data must stay valid until then. A child
// that stopped reading: io_error (EPIPE); this process never gets SIGPIPE.
inline detail::write_awaiter async_write(event_loop& loop, pipe_writer& w, std::string_view data,
                                         std::stop_token stop = {}) {
  return {loop, w, data, std::move(stop)};
}

}  // namespace subprocess
