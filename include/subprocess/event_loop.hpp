// subprocess/event_loop.hpp - drive many children's streams from one thread.
//
// Reading three children's output, writing to a fourth's stdin, noticing when any of
// them exits and doing something every second, without a thread per pipe: one thread
// waits (epoll) until any of those can make progress, then runs your callback for it.
// Watch output (on_data, on_line, on_close), exits (on_exit), both (on_complete),
// timers (after, every), any fd (watch); write without blocking (writer) and move
// data with backpressure (pump); post() work from other threads.
//
//   ```cpp
//   sp::process p;  // really sp::command{"ping", "-c", "3", "localhost"}.out(sp::pipe).spawn()
//   sp::event_loop loop;
//   loop.on_line(p.out(), [](std::string_view line) { std::cout << line << '\n'; });
//   loop.on_exit(p, [](sp::exit_status st) { std::cout << st << '\n'; });
//   loop.after(10s, [&] { p.kill(); });      // a timer
//   loop.run();                              // returns when nothing is left to wait for
//   ```
//
// Errors: registering throws argument_error (a bad fd, an empty process handle,
// on_data and on_line on one stream) or sp::error (epoll). An exception thrown by a
// callback propagates out of run(); the loop stays usable and the next run() goes on
// where it stopped (see run()). A failed write is an io_error out of run() unless
// writer_options::on_error takes it. A child whose exit status the kernel discarded
// is an sp::error out of run(), once, unless on_exit was given on_lost (see on_exit()).
// Blocking: only run(), run_forever() and run_for() block. A callback must not block:
// it would stall every stream.
// Threads: callbacks run on the thread that called run(), one at a time; adding and
// removing watches and timers from inside callbacks is safe, even a callback removing
// its own watch. Only post() and stop() may be called from other threads.
// Ownership: the loop owns nothing it was not given. Readers, writers and processes
// stay yours and must outlive their watches (remove() a watch first, or let it end:
// stream watches end at EOF, exit watches at exit). It never closes a reader; writers
// are closed only by end().
// Embedding: native_handle() is one fd to watch from any other loop (epoll, libuv,
// Qt...), dispatch() runs what is ready without blocking.
// Cost: one epoll fd and one eventfd per loop (and a timerfd once embedded); per
// event one epoll_wait plus the reads or writes it enables; no busy loop and no
// thread per stream.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include "detail/buffer.hpp"
#include "detail/eventfd.hpp"
#include "detail/exit_watch.hpp"
#include "detail/poll.hpp"
#include "detail/sigpipe.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "process.hpp"
#include "stream.hpp"

namespace subprocess {

// Options of event_loop::writer().
struct writer_options {
  std::size_t high_water_mark = 64 * 1024;
  // Called if a write fails (EPIPE: the child stopped reading). The queue is dropped
  // and the pipe closed. Without it, the io_error propagates out of run().
  std::function<void(const io_error&)> on_error{};
};

// Options of event_loop::pump().
struct pump_options {
  std::size_t high_water_mark = 64 * 1024;
  // Close the destination writer when the source ends (Node's pipe() default).
  bool end = true;
  // Called once everything has been read and written, or on error (with it).
  std::function<void(std::exception_ptr)> on_finish{};
};

class event_loop {
 public:
  // Identifies a watch, timer, writer or pump; 0 is never used.
  using id = std::uint64_t;
  using clock = std::chrono::steady_clock;

  event_loop() {
    ep_.reset(detail::sys::epoll_create());
    if (!ep_) detail::throw_errno(errno, "event_loop: epoll_create1");
    wake_.reset(detail::sys::eventfd(0, EFD_NONBLOCK));
    if (!wake_) detail::throw_errno(errno, "event_loop: eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;  // id 0: the wake-up eventfd
    if (detail::sys::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0)
      detail::throw_errno(errno, "event_loop: epoll_ctl");
  }
  event_loop(const event_loop&) = delete;
  event_loop& operator=(const event_loop&) = delete;

  // ---- any fd -----------------------------------------------------------------

  // Calls fn(revents) whenever fd (a signalfd, a socket, an IPC channel...) is ready
  // for `events` (EPOLLIN, EPOLLOUT, ...; level-triggered). EPOLLHUP/EPOLLERR are
  // always reported.
  id watch(int fd, std::uint32_t events, std::function<void(std::uint32_t)> fn) {
    if (fd < 0) SUBPROCESS_THROW(argument_error("", "event_loop::watch: bad fd " + std::to_string(fd)));
    auto w = std::make_shared<fd_watch>();
    w->fd = fd;
    w->events = events;
    w->fn = std::move(fn);
    id i = next_id_++;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = i;
    if (detail::sys::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      detail::throw_errno(errno, "event_loop: watch fd " + std::to_string(fd));
    watches_.emplace(i, std::move(w));
    return i;
  }
  // Changes the events of a watch (0 pauses it without removing it).
  void modify(id i, std::uint32_t events) {
    auto it = watches_.find(i);
    if (it == watches_.end() || it->second->events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = i;
    if (detail::sys::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, it->second->fd, &ev) != 0)
      detail::throw_errno(errno, "event_loop: modify watch");
    it->second->events = events;
  }

  // Removes any watch, timer, writer or pump by its id. Unknown ids are ignored, so
  // removing twice (or after it finished on its own) is harmless.
  void remove(id i) {
    if (auto it = groups_.find(i); it != groups_.end()) {
      auto parts = std::move(it->second);
      groups_.erase(it);
      for (id part : parts) remove(part);
    }
    if (auto it = watches_.find(i); it != watches_.end()) {
      detail::sys::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, it->second->fd, nullptr);
      it->second->removed = true;
      watches_.erase(it);
    }
    if (auto it = timers_.find(i); it != timers_.end()) timers_.erase(it);  // heap entry goes stale
    if (auto it = streams_.find(i); it != streams_.end()) {
      auto s = it->second;
      streams_.erase(it);
      remove(s->watch);
      s->removed = true;
    }
    if (auto it = writers_.find(i); it != writers_.end()) {
      auto w = it->second;
      writers_.erase(it);
      remove(w->watch);
      w->removed = true;
    }
    if (auto it = exits_.find(i); it != exits_.end()) {
      auto e = it->second;
      exits_.erase(it);
      remove(e->watch);
      remove(e->poll_timer);
    }
  }

  // remove() by the name adapters such as ipc::attach() expect of a loop.
  void unwatch(id i) { remove(i); }

  // ---- streams ----------------------------------------------------------------

  // fn(chunk) for output as it arrives. The chunk is valid during the call only.
  id on_data(pipe_reader& r, std::function<void(std::string_view)> fn) {
    auto s = stream_for(r, "on_data");
    if (s->on_line) SUBPROCESS_THROW(argument_error(r.command(), "on_data and on_line on the same stream"));
    s->on_data = std::move(fn);
    return s->self;
  }
  // fn(line) for each line, without its '\n'. Lines are split on '\n' only; a '\r'
  // before it is kept (CRLF is data); a last line without '\n' is delivered at EOF.
  id on_line(pipe_reader& r, std::function<void(std::string_view)> fn) {
    auto s = stream_for(r, "on_line");
    if (s->on_data) SUBPROCESS_THROW(argument_error(r.command(), "on_data and on_line on the same stream"));
    s->on_line = std::move(fn);
    return s->self;
  }
  // fn() once the stream has ended (after its last data or line callback).
  id on_close(pipe_reader& r, std::function<void()> fn) {
    auto s = stream_for(r, "on_close");
    s->on_close = std::move(fn);
    return s->self;
  }
  // Stops/restarts reading a stream (its data waits in the kernel pipe meanwhile,
  // and a child writing more eventually blocks: that is backpressure).
  void pause(id stream) { set_paused(stream, true); }
  void resume(id stream) { set_paused(stream, false); }

  // ---- processes --------------------------------------------------------------

  // fn(status) once the child has exited; the child is reaped first. If it was
  // reaped already, fn runs on the next loop iteration. If its status cannot be had
  // (SIGCHLD ignored, or reaped by other code), the watch ends and the error is
  // thrown out of run() once.
  //
  // SIGCHLD ignored: if this process sets SIGCHLD to SIG_IGN (or SA_NOCLDWAIT), the
  // kernel discards every child's exit status (see process.hpp). An exit watch then
  // still fires when the child exits, but has no status to give: the watch is removed,
  // fn is not called, and the subprocess::error the process handle reports (code
  // std::errc::no_child_process, "... the kernel discarded its status ...") is thrown
  // out of run() once, like a callback's exception: the loop stays usable and the next
  // run() goes on with the other watches. The same happens when other code reaped the
  // child (a waitpid(-1) elsewhere). To handle it in place instead, use the overload
  // with on_lost. No exit status is ever made up.
  id on_exit(process& p, std::function<void(exit_status)> fn) {
    return on_exit(p, std::move(fn), nullptr);
  }
  // The same, but if the child's status cannot be had, on_lost(error) is called
  // (once, instead of fn) and run() throws nothing.
  id on_exit(process& p, std::function<void(exit_status)> fn,
             std::function<void(const error&)> on_lost) {
    if (!p.valid()) SUBPROCESS_THROW(argument_error("", "event_loop::on_exit: empty process handle"));
    auto e = std::make_shared<exit_watch>();
    e->proc = &p;
    e->fn = std::move(fn);
    e->on_lost = std::move(on_lost);
    id i = next_id_++;
    exits_.emplace(i, e);
    auto check = [this, i] { check_exit(i); };
    SUBPROCESS_TRY {
      if (p.status()) {
        e->poll_timer = after(std::chrono::milliseconds(0), check);  // reaped already
      } else if (p.pidfd() < 0) {  // no pidfd (an old kernel): look on the exit_poll schedule
        e->poll_timer = after(e->backoff.next(), check);
      } else {
        e->watch = watch(p.pidfd(), EPOLLIN, [check](std::uint32_t) { check(); });
      }
    } SUBPROCESS_CATCH_ALL {
      exits_.erase(i);  // a half-registered exit watch would keep run() going forever
      SUBPROCESS_RETHROW;
    }
    return i;
  }

  // fn(status, out, err) once the child has exited AND its stdout and stderr pipes
  // have both reached EOF, as Node's 'close' event: a grandchild holding the pipe
  // open delays it. out and err are everything read from p.out() and p.err() (empty
  // for a stream that is not an open pipe); the loop owns those two streams until
  // then (not with on_data/on_line on them). remove(id) drops all three watches. A
  // lost exit status behaves as in on_exit(p, fn): thrown out of run(), fn not called.
  id on_complete(process& p, std::function<void(exit_status, std::string, std::string)> fn) {
    if (!p.valid()) SUBPROCESS_THROW(argument_error("", "event_loop::on_complete: empty process handle"));
    struct state {
      std::function<void(exit_status, std::string, std::string)> fn;
      std::optional<exit_status> status;
      std::string out, err;
      int pending = 1;  // the exit, plus each pipe
    };
    auto st = std::make_shared<state>();
    st->fn = std::move(fn);
    id self = next_id_++;
    auto& parts = groups_[self];
    auto finish_one = [this, st, self] {
      if (--st->pending != 0) return;
      groups_.erase(self);
      st->fn(*st->status, std::move(st->out), std::move(st->err));
    };
    SUBPROCESS_TRY {
      for (auto stream : {std::pair{&p.out(), &st->out}, std::pair{&p.err(), &st->err}}) {
        pipe_reader* r = stream.first;
        std::string* buf = stream.second;  // not a structured binding: clang 14 cannot capture those
        if (!r->is_open()) continue;
        ++st->pending;
        parts.push_back(on_data(*r, [buf](std::string_view d) { buf->append(d); }));
        on_close(*r, finish_one);
      }
      parts.push_back(on_exit(p, [st, finish_one](exit_status s) {
        st->status = s;
        finish_one();
      }));
    } SUBPROCESS_CATCH_ALL {
      remove(self);
      SUBPROCESS_RETHROW;
    }
    return self;
  }

  // ---- timers -----------------------------------------------------------------

  // fn() once after d, or every d. Any duration; duration::max() never fires.
  template <class Rep, class Period>
  id after(std::chrono::duration<Rep, Period> d, std::function<void()> fn) {
    return add_timer(detail::to_clock_duration(d), std::move(fn), false);
  }
  template <class Rep, class Period>
  id every(std::chrono::duration<Rep, Period> d, std::function<void()> fn) {
    return add_timer(detail::to_clock_duration(d), std::move(fn), true);
  }
  void cancel(id timer) { remove(timer); }

  // ---- writing ------------------------------------------------------------------

  // A non-blocking writer over w, like Node's writable streams: write(data) queues
  // what the pipe cannot take yet and returns false once the queue holds
  // high_water_mark bytes or more; on_drain(fn) tells you when it has emptied again;
  // end() closes the pipe after everything queued is written. The loop writes
  // whenever the pipe has room, so a child that writes while you write to it can never
  // deadlock you.
  class writer_handle;
  writer_handle writer(pipe_writer& w, writer_options opts = {});
  writer_handle writer(pipe_writer& w, std::size_t high_water_mark);

  // ---- pumps (backpressure) -------------------------------------------------------

  using transform_fn = std::function<std::string(std::string_view)>;
  using sink_fn = std::function<void(std::string_view chunk, std::function<void()> done)>;

  // reader -> [transform] -> writer: moves data from one child's output, optionally
  // through an in-process transform, into another's input. The destination is wrapped
  // in a writer with the pump's high-water mark; reading stops while it holds that
  // many bytes or more and resumes on drain, so a slow consumer stalls the producer
  // through the kernel pipe, as `yes | slow` does in a shell, and memory stays bounded
  // by the high-water mark.
  id pump(pipe_reader& from, pipe_writer& to, transform_fn transform = {}, pump_options opts = {});
  // reader -> sink(chunk, done): the same into your own asynchronous consumer. The
  // sink receives one chunk (at most high_water_mark bytes) and no more data is read
  // until it calls done().
  id pump(pipe_reader& from, sink_fn sink, pump_options opts = {});

  // ---- running ------------------------------------------------------------------

  // Runs until there is nothing left to wait for (no watches, timers, streams,
  // writers with queued data, or posted callbacks), or until stop().
  //
  // An exception thrown by a callback propagates out of run(); the loop stays usable
  // and the next run() goes on with what comes next: the chunk or line the callback
  // was given counts as delivered (never handed over twice), an exit callback or a
  // one-shot timer has run (a repeating timer keeps its schedule), posted callbacks
  // after the throwing one still run. A watch(fd) is level-triggered: it is called
  // again while the fd stays ready, so read what you were woken for before throwing.
  void run() { run_until(std::nullopt, false); }
  // Runs until stop() only; an idle loop sleeps until something is posted.
  void run_forever() { run_until(std::nullopt, true); }
  // Runs for at most d. Returns true if it stopped because nothing was left to do.
  template <class Rep, class Period>
  bool run_for(std::chrono::duration<Rep, Period> d) {
    return run_until(detail::deadline_in(d), false);
  }
  // ---- embedding in another loop ------------------------------------------------

  // One fd that is readable whenever this loop has something to do (a stream, an
  // exit, a due timer, a posted callback): watch it for reading in your own loop and
  // call dispatch() when it is. Its first call adds a timerfd to the loop, so that due
  // timers make the fd readable too. Never block on it yourself, never close it.
  //   epoll: epoll_event ev{EPOLLIN, {.ptr = &loop}};
  //          epoll_ctl(ep, EPOLL_CTL_ADD, loop.native_handle(), &ev);  // ready: loop.dispatch()
  //   libuv: uv_poll_init(uv, &h, loop.native_handle()); h.data = &loop;
  //          uv_poll_start(&h, UV_READABLE, [](uv_poll_t* h, int, int) {
  //            static_cast<sp::event_loop*>(h->data)->dispatch(); });
  //   Qt:    auto* n = new QSocketNotifier(loop.native_handle(), QSocketNotifier::Read, parent);
  //          QObject::connect(n, &QSocketNotifier::activated, [&loop] { loop.dispatch(); });
  int native_handle() {
    if (!timer_fd_) {
      detail::unique_fd t(detail::sys::timerfd_create());
      if (!t) detail::throw_errno(errno, "event_loop: timerfd_create");
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = timer_fd_id;
      if (detail::sys::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, t.get(), &ev) != 0)
        detail::throw_errno(errno, "event_loop: epoll_ctl timerfd");
      timer_fd_ = std::move(t);
      arm_timer_fd();
    }
    return ep_.get();
  }
  // Runs what is ready now and returns without waiting: the ready fds' callbacks,
  // posted callbacks and due timers. Returns true while something is left to wait for
  // (what keeps run() going). Callbacks' exceptions propagate as from run(). Not from
  // inside a callback (argument_error), and on the loop's thread like run().
  bool dispatch() {
    if (running_) SUBPROCESS_THROW(argument_error("", "event_loop::dispatch called from inside a callback"));
    running_ = true;
    struct reset {
      event_loop* l;
      ~reset() {
        l->running_ = false;
        l->arm_timer_fd();
      }
    } guard{this};
    stop_.store(false, std::memory_order_release);
    epoll_event evs[64];
    int n = detail::sys::epoll_wait(ep_.get(), evs, 64, 0);
    if (n < 0 && errno != EINTR) detail::throw_errno(errno, "event_loop: epoll_wait");
    // Events first: they drain the wake-up eventfd, so a post() racing with this call
    // either runs below or makes the fd readable again.
    if (n > 0) dispatch_events(evs, n);
    if (stop_.load(std::memory_order_acquire)) return has_work();
    run_posted();
    run_due_timers();
    return has_work();
  }

  // Makes run() return after the current callback. Thread-safe.
  void stop() {
    stop_.store(true, std::memory_order_release);
    wake();
  }
  // Runs fn on the loop thread, soon. Thread-safe.
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(post_mu_);
      posted_.push_back(std::move(fn));
    }
    wake();
  }
  // True when nothing is registered.
  bool idle() const {
    std::lock_guard lock(post_mu_);
    return watches_.empty() && timers_.empty() && exits_.empty() && posted_.empty();
  }

 private:
  struct fd_watch {
    int fd = -1;
    std::uint32_t events = 0;
    std::function<void(std::uint32_t)> fn;
    bool removed = false;
  };
  struct stream_watch {
    id self = 0, watch = 0;
    pipe_reader* reader = nullptr;
    std::function<void(std::string_view)> on_data, on_line;
    std::function<void()> on_close;
    std::size_t max_read = 64 * 1024;
    std::size_t line_scan = 0;
    std::size_t held = 0;      // bytes handed to an async sink, consumed on done()
    bool hold_chunks = false;  // set by pump(reader, sink)
    bool paused = false, removed = false;
  };
  struct exit_watch {
    process* proc = nullptr;
    std::function<void(exit_status)> fn;
    std::function<void(const error&)> on_lost;
    id watch = 0, poll_timer = 0;
    detail::exit_poll backoff;  // without a pidfd: when to look again
  };
  struct timer {
    clock::duration period{};
    std::function<void()> fn;
    bool repeat = false;
  };
  struct heap_entry {
    clock::time_point due;
    id timer;
    bool operator>(const heap_entry& o) const { return due > o.due; }
  };
  struct writer_state {
    id self = 0, watch = 0;
    pipe_writer* w = nullptr;
    detail::byte_buffer queue;
    std::size_t hwm = 0;
    bool ending = false, removed = false, above_hwm = false;
    std::vector<std::function<void()>> drain_fns;
    std::function<void()> on_finish;
    std::function<void(const io_error&)> on_error;
  };

  std::shared_ptr<stream_watch> stream_for(pipe_reader& r, const char* what) {
    for (auto& [i, s] : streams_)
      if (s->reader == &r) return s;
    if (!r.is_open()) SUBPROCESS_THROW(argument_error(r.command(), std::string("event_loop::") + what + ": the " +
                                                            r.stream() + " pipe is not open"));
    auto s = std::make_shared<stream_watch>();
    s->reader = &r;
    s->self = next_id_++;
    streams_.emplace(s->self, s);
    id self = s->self;
    SUBPROCESS_TRY {
      s->watch = watch(r.fd(), EPOLLIN, [this, self](std::uint32_t) { on_stream_ready(self); });
    } SUBPROCESS_CATCH_ALL {
      streams_.erase(self);  // epoll_ctl failed (ENOMEM, ENOSPC): nothing registered
      SUBPROCESS_RETHROW;
    }
    // Data already buffered in the reader (from an earlier read_line) is delivered too.
    if (!r.buffered().empty() || r.eof()) post([this, self] { deliver_stream(self, false); });
    return s;
  }

  void set_paused(id i, bool paused) {
    auto it = streams_.find(i);
    if (it == streams_.end() || it->second->paused == paused) return;
    it->second->paused = paused;
    modify(it->second->watch, paused || it->second->held ? 0u : std::uint32_t(EPOLLIN));
    if (!paused && !it->second->reader->buffered().empty())
      post([this, i] { deliver_stream(i, false); });
  }

  void release_held(id i) {
    auto it = streams_.find(i);
    if (it == streams_.end() || it->second->held == 0) return;  // done() called twice
    auto s = it->second;
    s->reader->consume(s->held);
    s->held = 0;
    if (!s->paused) modify(s->watch, EPOLLIN);
    // Deliver what is buffered (or the end of stream) soon, outside the sink's call.
    post([this, i] { deliver_stream(i, false); });
  }

  void on_stream_ready(id i) {
    auto it = streams_.find(i);
    if (it == streams_.end()) return;
    auto s = it->second;  // keeps the state alive if a callback removes the watch
    // Read a bounded amount per wake-up so one busy stream cannot starve the others.
    for (int round = 0; round < 4 && !s->removed && !s->paused && s->held == 0; ++round) {
      ssize_t r = s->reader->fill(s->max_read);
      if (r < 0) break;
      deliver_stream(i, r == 0);
      if (r == 0) return;
    }
  }

  // Hands buffered data to the callbacks; at EOF also the last partial line and close.
  void deliver_stream(id i, bool eof) {
    auto it = streams_.find(i);
    if (it == streams_.end()) return;
    auto s = it->second;
    pipe_reader& r = *s->reader;
    eof = eof || r.input_ended();
    if (s->on_data) {
      while (!s->removed && !s->paused && s->held == 0 && !r.buffered().empty()) {
        std::string_view chunk = r.buffered();
        std::size_t n = chunk.size();
        if (s->hold_chunks) {  // the chunk stays valid until the sink calls done()
          s->held = n;
          modify(s->watch, 0);
        }
        SUBPROCESS_TRY {
          s->on_data(chunk);
        } SUBPROCESS_CATCH_ALL {
          consumed_by_throw(i, *s, n);
          SUBPROCESS_RETHROW;
        }
        if (!s->removed && !s->hold_chunks) r.consume(n);
      }
    } else if (s->on_line) {
      for (;;) {
        if (s->removed || s->paused) break;
        std::string_view b = r.buffered();
        std::size_t nl = b.find('\n', s->line_scan);
        if (nl == std::string_view::npos) {
          s->line_scan = b.size();
          break;
        }
        s->line_scan = 0;
        SUBPROCESS_TRY {
          s->on_line(b.substr(0, nl));
        } SUBPROCESS_CATCH_ALL {
          consumed_by_throw(i, *s, nl + 1);
          SUBPROCESS_RETHROW;
        }
        if (!s->removed) r.consume(nl + 1);
      }
      if (eof && !s->removed && !s->paused && !r.buffered().empty()) {
        std::string_view rest = r.buffered();
        std::size_t n = rest.size();
        s->line_scan = 0;
        SUBPROCESS_TRY {
          s->on_line(rest);
        } SUBPROCESS_CATCH_ALL {
          consumed_by_throw(i, *s, n);
          SUBPROCESS_RETHROW;
        }
        if (!s->removed) r.consume(n);
      }
    } else if (!s->on_close) {
      r.consume(r.buffered().size());
    }
    if (eof && !s->removed && !s->paused && s->held == 0 && r.buffered().empty()) {
      auto close_fn = std::move(s->on_close);
      remove(i);
      if (close_fn) close_fn();
    }
  }

  // A data or line callback threw: what it was given counts as delivered (it is not
  // handed over again by the next run()), and what is left in the reader's buffer, or
  // the end of the stream, is delivered by the next run() even if the pipe has nothing
  // more to say.
  void consumed_by_throw(id i, stream_watch& s, std::size_t n) {
    if (s.removed) return;  // the callback removed its watch: the buffer is the owner's
    if (s.hold_chunks) {
      if (s.held == 0) return;  // the sink called done() before throwing: consumed
      s.held = 0;
      if (!s.paused) modify(s.watch, EPOLLIN);
    }
    s.reader->consume(n);
    s.line_scan = 0;
    if (!s.reader->buffered().empty() || s.reader->input_ended())
      post([this, i] { deliver_stream(i, false); });
  }

  void check_exit(id i) {
    auto it = exits_.find(i);
    if (it == exits_.end()) return;
    auto e = it->second;
    // Without a pidfd: the next look is booked first, so that a failure below
    // (thrown out of run()) leaves the watch in place.
    if (e->watch == 0 && !e->proc->status())
      e->poll_timer = after(e->backoff.next(), [this, i] { check_exit(i); });
    std::optional<exit_status> st;
    SUBPROCESS_TRY {
      st = e->proc->try_wait();
    } SUBPROCESS_CATCH(const error&, err) {
      // The child has exited and its status is gone for good (SIGCHLD ignored, or
      // reaped by other code): asking again would only throw again. The watch ends
      // here, and the error is delivered once. Any other failure leaves the watch in
      // place: the child is still ours, and the next wake-up asks again.
      if (err.code() != std::errc::no_child_process) SUBPROCESS_RETHROW;
      remove(i);
      if (!e->on_lost) SUBPROCESS_RETHROW;
      e->on_lost(err);
      return;
    }
    if (!st) return;
    remove(i);
    e->fn(*st);
  }

  id add_timer(clock::duration d, std::function<void()> fn, bool repeat) {
    if (d < clock::duration::zero()) SUBPROCESS_THROW(argument_error("", "event_loop: negative timer duration"));
    if (repeat && d == clock::duration::zero())
      SUBPROCESS_THROW(argument_error("", "event_loop::every: the period must be positive"));
    id i = next_id_++;
    timers_.emplace(i, timer{d, std::move(fn), repeat});
    heap_.push({detail::saturating_add(clock::now(), d), i});
    if (timer_fd_ && !running_ && heap_.top().timer == i) arm_timer_fd();  // else armed on return
    return i;
  }

  void run_due_timers() {
    auto now = clock::now();
    while (!heap_.empty() && heap_.top().due <= now) {
      heap_entry e = heap_.top();
      heap_.pop();
      auto it = timers_.find(e.timer);
      if (it == timers_.end()) continue;  // cancelled
      std::function<void()> fn;
      if (it->second.repeat) {
        heap_.push({std::max(detail::saturating_add(e.due, it->second.period), now), e.timer});
        fn = it->second.fn;  // a copy: the callback may cancel its own timer
      } else {
        fn = std::move(it->second.fn);
        timers_.erase(it);
      }
      fn();
    }
  }

  void run_posted() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard lock(post_mu_);
      batch.swap(posted_);
    }
    for (std::size_t k = 0; k < batch.size(); ++k) {
      SUBPROCESS_TRY {
        batch[k]();
      } SUBPROCESS_CATCH_ALL {
        // Keep the rest for the next iteration, then let the error out of run().
        std::lock_guard lock(post_mu_);
        posted_.insert(posted_.begin(), std::make_move_iterator(batch.begin() + k + 1),
                       std::make_move_iterator(batch.end()));
        SUBPROCESS_RETHROW;
      }
    }
  }

  // A lost wake-up would leave run_forever() asleep with a posted callback or a
  // stop() waiting: eventfd_notify retries EINTR.
  void wake() { detail::eventfd_notify(wake_.get()); }

  // Watches with no events (idle writers, paused streams) do not keep run() going.
  bool has_work() const {
    if (!timers_.empty() || !exits_.empty()) return true;
    for (const auto& [i, s] : streams_)
      if (s->held != 0) return true;  // a sink will call done(), maybe through post()
    for (const auto& [i, w] : watches_)
      if (w->events != 0) return true;
    std::lock_guard lock(post_mu_);
    return !posted_.empty();
  }

  int next_timeout(const std::optional<clock::time_point>& until, bool forever) {
    {
      std::lock_guard lock(post_mu_);
      if (!posted_.empty()) return 0;
    }
    std::optional<clock::time_point> due = until;
    while (!heap_.empty() && !timers_.count(heap_.top().timer)) heap_.pop();  // drop cancelled
    if (!heap_.empty() && (!due || heap_.top().due < *due)) due = heap_.top().due;
    if (!due) return forever || has_work() ? -1 : 0;
    return detail::poll_timeout(due);
  }

  bool run_until(std::optional<clock::time_point> until, bool forever) {
    if (running_) SUBPROCESS_THROW(argument_error("", "event_loop::run called from inside a callback"));
    running_ = true;
    struct reset {
      event_loop* l;
      ~reset() {
        l->running_ = false;
        l->arm_timer_fd();
      }
    } guard{this};
    stop_.store(false, std::memory_order_release);
    epoll_event evs[64];
    for (;;) {
      run_posted();
      run_due_timers();
      if (stop_.load(std::memory_order_acquire)) return false;
      if (!forever && !has_work()) return true;
      if (until && clock::now() >= *until) return false;
      int n = detail::sys::epoll_wait(ep_.get(), evs, 64, next_timeout(until, forever));
      if (n < 0) {
        if (errno == EINTR) continue;
        detail::throw_errno(errno, "event_loop: epoll_wait");
      }
      dispatch_events(evs, n);
    }
  }

  void dispatch_events(const epoll_event* evs, int n) {
    for (int k = 0; k < n; ++k) {
      id i = evs[k].data.u64;
      if (i == 0) {
        detail::eventfd_drain(wake_.get());
        continue;
      }
      if (i == timer_fd_id) {
        std::uint64_t expirations;
        (void)detail::sys::read(timer_fd_.get(), &expirations, sizeof expirations);  // EAGAIN: fine
        continue;
      }
      auto it = watches_.find(i);
      if (it == watches_.end()) continue;  // removed earlier in this batch
      auto w = it->second;                 // alive even if the callback removes it
      w->fn(evs[k].events);
      if (stop_.load(std::memory_order_acquire)) break;
    }
  }

  // Embedded (native_handle() was called): the timerfd fires when the earliest timer
  // is due, so the epoll fd turns readable then. Failing to arm it cannot be reported
  // from where this runs (a destructor); settime fails only for a bad fd or value.
  void arm_timer_fd() noexcept {
    if (!timer_fd_) return;
    while (!heap_.empty() && !timers_.count(heap_.top().timer)) heap_.pop();  // drop cancelled
    itimerspec its{};
    if (!heap_.empty()) {
      its.it_value = detail::to_timespec(heap_.top().due.time_since_epoch());
      if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;  // 0 disarms
    }
    (void)detail::sys::timerfd_settime(timer_fd_.get(), TFD_TIMER_ABSTIME, &its);
  }

  // writer internals (defined below the handle)
  void writer_flush(id i);
  bool writer_write(id i, std::string_view data);
  void writer_end(id i, std::function<void()> on_finish);

  static constexpr id timer_fd_id = ~id{0};  // never handed out: ids count up from 1
  detail::unique_fd ep_, wake_, timer_fd_;
  id next_id_ = 1;
  std::unordered_map<id, std::shared_ptr<fd_watch>> watches_;
  std::unordered_map<id, std::shared_ptr<stream_watch>> streams_;
  std::unordered_map<id, std::shared_ptr<exit_watch>> exits_;
  std::unordered_map<id, std::shared_ptr<writer_state>> writers_;
  std::unordered_map<id, timer> timers_;
  std::unordered_map<id, std::vector<id>> groups_;  // on_complete: its watches
  std::priority_queue<heap_entry, std::vector<heap_entry>, std::greater<>> heap_;
  mutable std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> stop_{false};
  bool running_ = false;
};

// A non-blocking, queueing writer owned by an event_loop (Node's writable stream).
class event_loop::writer_handle {
 public:
  writer_handle() = default;
  // Queues data and starts writing it. Returns false once the queue holds
  // high_water_mark bytes or more: stop writing and wait for on_drain.
  bool write(std::string_view data) { return loop_->writer_write(id_, data); }
  // fn() whenever the queue has been written out completely after write() returned false.
  void on_drain(std::function<void()> fn) {
    if (auto w = state()) w->drain_fns.push_back(std::move(fn));
  }
  // Closes the pipe once the queue is written (the child then reads EOF); then fn().
  void end(std::function<void()> on_finish = {}) { loop_->writer_end(id_, std::move(on_finish)); }
  // Bytes queued and not yet written.
  std::size_t buffered() const {
    auto w = state();
    return w ? w->queue.size() : 0;
  }
  bool needs_drain() const {
    auto w = state();
    return w && w->above_hwm;
  }
  event_loop::id id() const noexcept { return id_; }

 private:
  friend class event_loop;
  writer_handle(event_loop* l, event_loop::id i) : loop_(l), id_(i) {}
  std::shared_ptr<writer_state> state() const {
    if (!loop_) return nullptr;
    auto it = loop_->writers_.find(id_);
    return it == loop_->writers_.end() ? nullptr : it->second;
  }
  event_loop* loop_ = nullptr;
  event_loop::id id_ = 0;
};

}  // namespace subprocess

// The member functions of the writers and pumps (backpressure), in their own file.
#include "detail/event_loop_writing.hpp"
