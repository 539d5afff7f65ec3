// subprocess/process.hpp - a running (or finished) child process.
//
// command::spawn() returns a process. It owns the child (its pid, a pidfd) and the
// parent's ends of any pipes. It is move-only.
//
//   ```cpp
//   sp::process p;   // empty until p = sp::command{"sleep", "10"}.spawn(); (command.hpp)
//   std::cout << "pid " << p.pid() << '\n';
//   if (auto st = p.wait_for(2s))            // it exited within 2 s
//     std::cout << *st << '\n';
//   else                                     // SIGTERM, then SIGKILL if it ignores that
//     std::cout << p.terminate(5s) << '\n';  // for 5 s: "killed by SIGTERM"
//   ```
//
// Errors: a call on an empty handle, or a negative timeout or grace period, is an
// argument_error. When the exit status cannot be had (this process ignores SIGCHLD,
// or other code reaped the child), wait() and friends throw subprocess::error with
// code ECHILD (see wait()). signal() returns false, not an error, once the child is
// gone.
// Blocking: wait() blocks until the child exits (wait(stop_token): or a stop is
// asked: canceled_error, the child kept), try_wait() never blocks, wait_for(),
// wait_until() and terminate() block at most their time; wait_for(t, policy) then
// applies a timeout_policy (timeout.hpp) and throws timeout_error (durations saturate:
// hours::max() is for ever). They poll the pidfd: no busy loop, no SIGCHLD handler.
// Waiting never deadlocks on output: it closes the child's stdin and drains the
// stdout/stderr pipes the process still owns (see wait()). Signals go through the
// pidfd, so a recycled pid is never hit (see signal()); a group leader's exited zombie
// is kept until the handle goes (see is_group_leader()).
// Destructor: a child still running is sent SIGKILL (its group, if it leads one; its
// whole tree, with command::tree()) and reaped, so a handle never leaks a running child or a zombie; detach() lets the
// child run on instead. It blocks only as long as the kernel takes to deliver
// SIGKILL, and never throws.
// Threads: one thread at a time, except that signal(), signal_group() and kill() may
// be called from another thread while one thread is in wait().
// Cost: a few system calls per call; no thread of its own (detach() uses one shared
// reaper thread). To stop many children at one deadline use sp::shutdown()
// (signals.hpp); for capture with timeouts and input, sp::run() (run.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include "detail/eventfd.hpp"
#include "detail/exit_watch.hpp"
#include "detail/pgroup.hpp"
#include "detail/process_tree.hpp"
#include "detail/poll.hpp"
#include "detail/reaper.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "stream.hpp"
#include "timeout.hpp"

namespace subprocess {

namespace detail {
// A policy's settings are checked where it is used. `refusing_leave`: the caller
// owns no handle to the child afterwards, so leave_running() would be a lie.
inline void check_policy(const timeout_policy& p, const std::string& command,
                         const char* refusing_leave = nullptr) {
  if (p.signal <= 0 || p.signal > SIGRTMAX)
    SUBPROCESS_THROW(argument_error(command,
                         "timeout policy: " + std::to_string(p.signal) + " is not a signal number"));
  if (p.grace < p.grace.zero())
    SUBPROCESS_THROW(argument_error(command, "timeout policy: negative grace period"));
  if (!p.kill && refusing_leave)
    SUBPROCESS_THROW(argument_error(command, std::string("timeout_policy::leave_running() with ") +
                                      refusing_leave +
                                      ", which keeps no handle to the child: spawn() it and use "
                                      "wait_for(timeout, policy) or communicate()"));
}
}  // namespace detail

class command;

// What a wait ended by a stop token does to the child: nothing (keep: it runs on, and
// is still yours to wait for) or kill (SIGKILL, to its group if it leads one, and reap).
enum class cancel_policy { keep, kill };
// "keep", "kill".
inline const char* to_string(cancel_policy p) noexcept { return p == cancel_policy::kill ? "kill" : "keep"; }
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, cancel_policy p) {
  return detail::put_text(os, to_string(p));
}

class process {
 public:
  // An empty handle (no child). Assign a spawned process to it.
  process() = default;
  process(process&& o) noexcept { *this = std::move(o); }
  process& operator=(process&& o) noexcept {
    if (this != &o) {
      finish();
      pid_ = std::exchange(o.pid_, -1);
      pidfd_ = std::move(o.pidfd_);
      status_ = std::exchange(o.status_, std::nullopt);
      reaped_.store(o.reaped_.load());
      zombie_held_ = std::exchange(o.zombie_held_, false);
      group_leader_ = o.group_leader_;
      command_ = std::move(o.command_);
      in_ = std::move(o.in_);
      out_ = std::move(o.out_);
      err_ = std::move(o.err_);
      channel_fd_ = std::move(o.channel_fd_);
      autoreaped_ = o.autoreaped_;
      lost_ = o.lost_;
      tree_ = std::move(o.tree_);
    }
    return *this;
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  // Destructor policy: a child still running is sent SIGKILL (its group, if it leads
  // one) and reaped: a process handle never leaks a running child or a zombie. Call
  // detach() to let the child run on instead; a background thread then reaps it when
  // it exits. Blocks only for as long as the kernel takes to deliver SIGKILL.
  ~process() { finish(); }

  // False for a default-constructed or moved-from handle.
  bool valid() const noexcept { return pid_ > 0; }
  pid_t pid() const noexcept { return pid_; }
  // The pidfd, or -1 on kernels without pidfds. Poll it for POLLIN: readable once
  // the child has exited. Owned by the process; do not close it.
  int pidfd() const noexcept { return pidfd_.get(); }
  // The command line, shell-quoted, as used in error messages.
  const std::string& command_line() const noexcept { return command_; }
  // Started with new_process_group() or new_session(): its pgid is its pid.
  //
  // A group leader's zombie is kept while the handle lives. The group's id is the
  // leader's pid; once the leader is reaped and its group is empty, the kernel may
  // give that number to a new process, whose own group a later kill(-pgid) would hit.
  // So for a group leader, wait()/try_wait()/wait_for() (and everything built on them:
  // terminate(), shutdown(), run(), event_loop::on_exit) collect the exit status
  // without reaping (waitid with WNOWAIT): status() is set, signal() returns false,
  // and the exited leader stays a zombie, which keeps its pid and its group id
  // reserved. The leader is reaped when the handle is destroyed, assigned over or
  // detached, never earlier; until then signal_group() can only reach its own group.
  // A child that is not a group leader is reaped as soon as its status is collected.
  bool is_group_leader() const noexcept { return group_leader_; }

  // The child's whole tree (started with command::tree()); argument_error otherwise.
  // The handle owns it: when the handle goes, members still alive are killed and the
  // tree's cgroup is removed (tree.hpp).
  process_tree& tree() {
    if (!tree_) SUBPROCESS_THROW(argument_error(command_, "tree() needs a child started with command::tree()"));
    return *tree_;
  }
  bool has_tree() const noexcept { return tree_ != nullptr; }

  // The parent's pipe ends (closed/empty unless the stream was sp::pipe).
  pipe_writer& in() noexcept { return in_; }
  pipe_reader& out() noexcept { return out_; }
  pipe_reader& err() noexcept { return err_; }

  // The parent's end of the IPC socket (command::ipc()), for ipc::channel.
  detail::unique_fd take_channel_fd() noexcept { return std::move(channel_fd_); }

  // The exit status if it has been collected already (by wait(), try_wait()...).
  const std::optional<exit_status>& status() const noexcept { return status_; }

  // Blocks until the child exits; reaps it (collects its exit status so it does not
  // linger as a zombie; a group leader is reaped later, when the handle goes: see
  // is_group_leader()). Once collected, the status is cached and every later call of
  // wait(), try_wait() or wait_for() returns it.
  //
  // wait() and wait_for() never deadlock on output. Before waiting they close the
  // child's stdin if the process still owns that pipe (a child reading to EOF would
  // otherwise wait for you while you wait for it). While waiting they read any
  // stdout/stderr pipe the process still owns into its buffer, so a child writing
  // more than a pipe holds can finish; read it afterwards with p.out().read_all().
  // If you read a pipe from another thread, move it out first
  // (auto r = std::move(p.out())) so wait() leaves it alone. For capture with
  // timeouts and input, use sp::run() or sp::communicate().
  //
  // SIGCHLD ignored. If this process sets SIGCHLD to SIG_IGN or uses SA_NOCLDWAIT,
  // the kernel reaps children itself the moment they exit and throws their status
  // away. Spawning still works (and never reports a child that ran as a failure), but
  // no exit status can be had: wait() and wait_for() wait until the child has exited
  // and then throw subprocess::error with code ECHILD (std::errc::no_child_process),
  // saying so; try_wait() returns nullopt while it runs and throws once it has
  // exited. (CPython returns 0 there, claiming a success nobody saw; we would rather
  // say we do not know.) The destructor still kills a running child, and never
  // throws. Restore SIGCHLD's default to get statuses back.
  exit_status wait() { return *wait_until(std::nullopt); }
  // wait(), ending early when `stop` is asked to stop (from any thread, even before
  // the call): then canceled_error (std::errc::operation_canceled) is thrown and the
  // child is kept, or killed and reaped with cancel_policy::kill. A child that has
  // exited by then wins: its status is returned. Costs an eventfd per call.
  exit_status wait(std::stop_token stop, cancel_policy policy = cancel_policy::keep) {
    if (!stop.stop_possible()) return wait();
    check_valid("wait");
    if (status_) return *status_;
    detail::unique_fd ev(detail::sys::eventfd(0, EFD_NONBLOCK));
    if (!ev) detail::throw_errno(errno, "wait: eventfd for the stop token of '" + command_ + "'");
    struct notify {
      int fd;
      void operator()() const noexcept { detail::eventfd_notify(fd); }
    };
    std::stop_callback<notify> on_stop(stop, notify{ev.get()});  // runs now if already asked
    in_.close();
    if (lost_) throw_status_discarded();
    const detail::collect how = collecting(false);
    settle(watcher().wait_until(
               std::nullopt, how, command_,
               [&](pollfd* fds) {
                 int n = add_drains(fds);
                 fds[n] = pollfd{ev.get(), POLLIN, 0};
                 return n + 1;
               },
               [&](const pollfd* fds, int n) {
                 drain_ready(fds, n - 1);
                 return fds[n - 1].revents != 0;  // stop requested
               }),
           how);
    if (status_) return *status_;
    if (policy == cancel_policy::kill) {
      kill();
      wait();
    }
    SUBPROCESS_THROW(canceled_error(command_, "wait"));
  }
  // Reaps the child if it has exited; never blocks.
  std::optional<exit_status> try_wait() {
    if (!status_) reap(false);
    return status_;
  }
  // Waits at most `timeout`; nullopt if the child is still running. Durations and
  // deadlines (here, wait_until with a time point of any clock, terminate's grace)
  // saturate: anything up to the type's max() (hours::max(), time_point::max())
  // means "for ever", never an overflow.
  template <class Rep, class Period>
  std::optional<exit_status> wait_for(std::chrono::duration<Rep, Period> timeout) {
    if (timeout < timeout.zero()) SUBPROCESS_THROW(argument_error(command_, "negative timeout for wait_for"));
    return wait_until(detail::deadline_in(timeout));
  }
  // Waits at most `timeout`, then applies `policy` (timeout.hpp) and throws
  // timeout_error: kill_with(sig, grace) sends sig (its group, if it leads one), then
  // SIGKILL after the grace, and reaps it (e.status(), e.killed()); leave_running()
  // sends nothing and the child is still yours (e.still_running(): wait() or kill()
  // it), as Python's Popen.wait(timeout). A child that has exited by the time the
  // policy would act returns its status. Output drained meanwhile stays in out()/err().
  template <class Rep, class Period>
  exit_status wait_for(std::chrono::duration<Rep, Period> timeout, const timeout_policy& policy) {
    if (timeout < timeout.zero()) SUBPROCESS_THROW(argument_error(command_, "negative timeout for wait_for"));
    detail::check_policy(policy, command_);
    if (auto st = wait_until(detail::deadline_in(timeout))) return *st;
    timeout_outcome o = stop(policy);
    if (o.status && !o.killed) return *o.status;
    SUBPROCESS_THROW(timeout_error(command_, detail::saturating_ceil<std::chrono::milliseconds>(timeout),
                        policy, std::move(o), {}));
  }
  // Waits until `t` (any clock; time_point::max() is for ever); nullopt if the child
  // is still running then.
  template <class Clock, class Duration>
  std::optional<exit_status> wait_until(const std::chrono::time_point<Clock, Duration>& t) {
    return wait_until(detail::deadline(detail::to_deadline(t)));
  }
  std::optional<exit_status> wait_until(const detail::deadline& dl) {
    check_valid("wait");
    if (status_) return status_;
    in_.close();
    if (lost_) throw_status_discarded();
    const detail::collect how = collecting(false);
    settle(watcher().wait_until(
               dl, how, command_, [this](pollfd* fds) { return add_drains(fds); },
               [this](const pollfd* fds, int n) { drain_ready(fds, n); }),
           how);
    return status_;
  }

  // Sends sig to the child. Returns false (sending nothing) if the child has been
  // reaped already; a child that exited but is not reaped yet accepts and ignores it.
  // It goes through the pidfd (pidfd_send_signal), so it can never hit an unrelated
  // process that reused the pid. With new_process_group() or new_session(),
  // signal_group(sig) reaches the child's whole process group (its children too), and
  // terminate()/kill() and the destructor act on the group. To stop many children at
  // once, with one deadline, use sp::shutdown() from signals.hpp.
  bool signal(int sig) {
    check_valid("signal");
    if (reaped_.load(std::memory_order_acquire)) return false;
    int r = pidfd_ ? detail::sys::pidfd_send_signal(pidfd_.get(), sig) : detail::sys::kill(pid_, sig);
    if (r == 0) return true;
    const int e = errno;
    if (e == ESRCH) return false;
    detail::throw_errno(e, command_, "cannot send " + detail::signal_name_of(sig) + " to '" + command_ + "'");
  }
  // Sends sig to the child's process group (requires new_process_group() or
  // new_session()). Also signals the child itself through its pidfd, in case it
  // moved to another group. Returns false if nothing was signalled (the exited
  // leader's zombie counts as a member until the handle reaps it: see above).
  bool signal_group(int sig) {
    check_valid("signal_group");
    if (!group_leader_)
      SUBPROCESS_THROW(argument_error(command_, "signal_group() needs a child started with "
                                     "new_process_group() or new_session()"));
    bool any = signal(sig);
    // The leader's pid is also the pgid, and it cannot be reused while the leader is
    // unreaped: it is running, or its zombie is held (zombie_held_). Only if someone
    // else reaped it (ECHILD) may the number be another group's by now: nothing is sent.
    if (reaped_.load(std::memory_order_acquire) && !zombie_held_) return any;
    if (detail::sys::kill(-pid_, sig) == 0) any = true;
    return any;
  }
  // SIGKILL to the child (its group if it leads one). Does not wait.
  void kill() {
    if (group_leader_)
      signal_group(SIGKILL);
    else
      signal(SIGKILL);
  }
  // Asks the child to stop with SIGTERM (its group if it leads one), waits up to
  // `grace`, then sends SIGKILL if it has not exited, and reaps it. Whether SIGKILL
  // is needed is decided by whether the child has exited, not by whether a signal was
  // sent. Returns how it ended: "killed by SIGKILL" means it ignored SIGTERM.
  //
  // SIGTERM is followed by SIGCONT (as systemd does), so a stopped child gets to run
  // its SIGTERM handler instead of waiting to be SIGKILLed. For a group leader the
  // grace period covers the whole group: if the leader exits but other members (say
  // a grandchild that ignores SIGTERM) are still alive at the deadline, the group is
  // SIGKILLed; the returned status is still the leader's. For many processes at once
  // use sp::shutdown() (signals.hpp), which shares one deadline among them all.
  template <class Rep = long, class Period = std::ratio<1>>
  exit_status terminate(std::chrono::duration<Rep, Period> grace = std::chrono::seconds(5)) {
    check_valid("terminate");
    if (grace < grace.zero()) SUBPROCESS_THROW(argument_error(command_, "negative grace period for terminate"));
    if (status_) return *status_;
    return *stop_until(SIGTERM, detail::deadline_in(grace)).status;
  }
  // Does what a timeout with `policy` does, now: kill_with(sig, grace) is terminate()
  // with sig (SIGKILL at once for the default policy); leave_running() sends nothing.
  // A group leader that has exited while its group lives on (children holding its
  // pipes): the group gets the same treatment. Says what was done: killed is false
  // if nothing was left to signal.
  timeout_outcome stop(const timeout_policy& policy) {
    check_valid("stop");
    detail::check_policy(policy, command_);
    timeout_outcome o;
    o.status = try_wait();
    if (o.status && !(zombie_held_ && detail::group_has_live_members(pid_))) return o;
    if (!policy.kill) {
      o.still_running = true;
      return o;
    }
    return stop_until(policy.escalates() ? policy.signal : SIGKILL,
                      detail::deadline_in(policy.grace));
  }

  // Lets the child run on after this handle is gone; a background thread reaps it
  // when it exits. The handle becomes empty; pipes owned by it are closed.
  //
  // Throws subprocess::error if the reaper thread cannot be started (no threads or
  // fds left); the handle then still owns the child.
  void detach() {
    check_valid("detach");
    if (tree_) SUBPROCESS_THROW(argument_error(command_, "detach() of a child started with tree(): the tree is killed with its handle"));
    if (!status_) {
      SUBPROCESS_TRY {
        reap(false);
      } SUBPROCESS_CATCH(const error&, e) {
        // Exited, and its status was thrown away (SIGCHLD ignored): nothing to reap.
        if (e.code() != std::errc::no_child_process) SUBPROCESS_RETHROW;
        release();
        return;
      }
    }
    if (zombie_held_) {
      release_zombie();
    } else if (!status_) {
      SUBPROCESS_TRY {
        detail::reaper::instance().ensure_started();
      } SUBPROCESS_CATCH(const std::system_error&, e) {
        SUBPROCESS_THROW(error(e.code(), command_, "cannot detach '" + command_ + "': " + e.what()));
      }
      detail::reaper::instance().adopt(pid_, std::move(pidfd_));
    }
    release();
  }

  // ---- without exceptions (error.hpp): the same, reporting through `ec` ----------
  // nullopt / false with `ec` set where the calls above throw: std::errc::
  // invalid_argument (an empty handle, a negative duration), no_child_process (the
  // status was discarded: SIGCHLD ignored), or the errno of the failed call. A wait
  // that times out is no error: nullopt with `ec` clear. These never throw and, built
  // without exceptions, never abort.
  std::optional<exit_status> wait(std::error_code& ec) noexcept { return wait_until(detail::deadline(), ec); }
  template <class Rep, class Period>
  std::optional<exit_status> wait_for(std::chrono::duration<Rep, Period> timeout, std::error_code& ec) noexcept {
    if (timeout < timeout.zero()) return ec = std::make_error_code(std::errc::invalid_argument), std::nullopt;
    return wait_until(detail::deadline_in(timeout), ec);
  }
  template <class Clock, class Duration>
  std::optional<exit_status> wait_until(const std::chrono::time_point<Clock, Duration>& t,
                                        std::error_code& ec) noexcept {
    return wait_until(detail::deadline(detail::to_deadline(t)), ec);
  }
  std::optional<exit_status> wait_until(const detail::deadline& dl, std::error_code& ec) noexcept {
    // report_to: a failing poll() or pipe read (rare: no memory) is reported too.
    return detail::report_to(ec, std::optional<exit_status>(), [&] { return wait_quietly(dl, ec); });
  }
  // As signal(sig): false when nothing was sent (reaped already, or `ec` set).
  bool signal(int sig, std::error_code& ec) noexcept {
    ec.clear();
    if (pid_ <= 0) return ec = std::make_error_code(std::errc::invalid_argument), false;
    if (reaped_.load(std::memory_order_acquire)) return false;
    int r = pidfd_ ? detail::sys::pidfd_send_signal(pidfd_.get(), sig) : detail::sys::kill(pid_, sig);
    if (r == 0) return true;
    if (errno != ESRCH) ec = std::error_code(errno, std::system_category());
    return false;
  }
  // SIGKILL to the child (its group if it leads one), as kill().
  void kill(std::error_code& ec) noexcept { send_to_tree(SIGKILL, ec); }
  // As terminate(grace); nullopt with `ec` set if a signal or the wait failed.
  template <class Rep = long, class Period = std::ratio<1>>
  std::optional<exit_status> terminate(std::chrono::duration<Rep, Period> grace, std::error_code& ec) noexcept {
    if (pid_ <= 0 || grace < grace.zero()) return ec = std::make_error_code(std::errc::invalid_argument), std::nullopt;
    return detail::report_to(ec, std::optional<exit_status>(), [&] { return terminate_quietly(grace, ec); });
  }

 private:
  template <class Rep, class Period>
  std::optional<exit_status> terminate_quietly(std::chrono::duration<Rep, Period> grace, std::error_code& ec) {
    if (status_) return status_;
    const detail::deadline dl = detail::deadline_in(grace);
    if (send_to_tree(SIGTERM, ec), send_to_tree(SIGCONT, ec), ec) return std::nullopt;
    std::optional<exit_status> st = wait_until(dl, ec);
    if (ec) return std::nullopt;
    if (st && (!group_leader_ || wait_group_until(dl))) return st;
    if (send_to_tree(SIGKILL, ec), ec) return std::nullopt;
    return st ? st : wait(ec);
  }
  std::optional<exit_status> wait_quietly(const detail::deadline& dl, std::error_code& ec) {
    if (pid_ <= 0) return ec = std::make_error_code(std::errc::invalid_argument), std::nullopt;
    if (status_) return status_;
    in_.close();
    if (lost_) return ec = std::make_error_code(std::errc::no_child_process), std::nullopt;
    const detail::collect how = collecting(false);
    const detail::exit_check r = watcher().wait_until(
        dl, how, command_, [this](pollfd* fds) { return add_drains(fds); },
        [this](const pollfd* fds, int n) { drain_ready(fds, n); });
    if (r.status) {
      settle(r, how);  // cannot throw: there is a status
    } else if (r.error != 0) {
      if (r.error == ECHILD) reaped_.store(true, std::memory_order_release);
      ec = std::error_code(r.error, std::system_category());
    }
    return status_;
  }
  void send_to_tree(int sig, std::error_code& ec) noexcept {
    signal(sig, ec);
    if (ec || !group_leader_ || (reaped_.load(std::memory_order_acquire) && !zombie_held_)) return;
    detail::sys::kill(-pid_, sig);  // as signal_group(): the group may be empty by now
  }
  // ---- end of the error_code overloads

 private:
  friend class command;
  // autoreaped: SIGCHLD was ignored (or SA_NOCLDWAIT) when it was spawned. lost: it
  // had exited and been reaped by the time pidfd_open ran (see detail::spawned).
  process(pid_t pid, detail::unique_fd pidfd, std::string cmd, bool group_leader, pipe_writer in,
          pipe_reader out, pipe_reader err, detail::unique_fd channel, bool autoreaped = false,
          bool lost = false) noexcept
      : pid_(pid), pidfd_(std::move(pidfd)), group_leader_(group_leader), command_(std::move(cmd)),
        in_(std::move(in)), out_(std::move(out)), err_(std::move(err)),
        channel_fd_(std::move(channel)), autoreaped_(autoreaped), lost_(lost) {
    // Its pid may already belong to another process: never signal or wait for it.
    if (lost_) reaped_.store(true, std::memory_order_relaxed);
  }

  void check_valid(const char* what) const {
    if (pid_ <= 0) SUBPROCESS_THROW(argument_error("", std::string(what) + "() on an empty process handle"));
  }
  bool send_to_tree(int sig) { return group_leader_ ? signal_group(sig) : signal(sig); }
  // sig to the child (its group), then, unless sig is SIGKILL, SIGCONT (a stopped
  // child runs its handler), and SIGKILL if it, or anyone in its group, is alive at
  // dl. Reaps it. The wait is the exit watcher's (wait_until).
  timeout_outcome stop_until(int sig, const detail::deadline& dl) {
    timeout_outcome o;
    o.killed = send_to_tree(sig);
    if (sig != SIGKILL) {
      send_to_tree(SIGCONT);
      o.status = wait_until(dl);
      if (o.status && (!group_leader_ || wait_group_until(dl))) return o;
      send_to_tree(SIGKILL);
      o.escalated = true;
    }
    if (!o.status) o.status = wait();
    return o;
  }
  // After the leader was reaped: waits until no live process is left in its group.
  // False if some are still alive at the deadline. No pidfds exist for them, so this
  // polls (detail::exit_poll).
  bool wait_group_until(const detail::deadline& dl) {
    detail::exit_poll backoff;
    while (detail::group_has_live_members(pid_)) {
      auto now = detail::clock::now();
      if (now >= *dl) return false;
      detail::deadline next = std::min(*dl, backoff.next_time(now));
      detail::poll_until(nullptr, 0, next);  // a sleep that respects the deadline
    }
    return true;
  }

  detail::exit_watcher watcher() const noexcept { return {pid_, pidfd_.get()}; }
  // A group leader's status is collected with WNOWAIT, unless `final`: its zombie is
  // then held (zombie_held_) until release_zombie() (see is_group_leader()).
  detail::collect collecting(bool final) const noexcept {
    return group_leader_ && !final ? detail::collect::keep : detail::collect::reap;
  }
  // Reaps our own child only (detail::exit_watcher: through the pidfd when there is
  // one). blocking=false: WNOHANG.
  void reap(bool blocking, bool final = false) {
    if (lost_) throw_status_discarded();
    const detail::collect how = collecting(final);
    settle(blocking ? watcher().collect_now(how) : watcher().check(how), how);
  }
  // Takes in what the watcher found: a status, "still running", or a failure.
  void settle(const detail::exit_check& r, detail::collect how) {
    if (r.status) {
      status_ = r.status;
      zombie_held_ = how == detail::collect::keep;  // published by the release store below
      reaped_.store(true, std::memory_order_release);
      return;
    }
    if (r.error == 0) return;  // still running
    // ECHILD: someone else reaped it, the pid may be reused: never signal it
    // again. Any other failure changes nothing: the child is still ours, and the
    // destructor must still be able to kill it.
    if (r.error == ECHILD) reaped_.store(true, std::memory_order_release);
    detail::throw_wait_failure(r.error, command_, autoreaped_);
  }
  [[noreturn]] void throw_status_discarded() const { detail::throw_status_discarded(command_, autoreaped_); }

  // Output pipes the process owns are drained while waiting (see wait()).
  int add_drains(pollfd* fds) {
    int n = 0;
    // input_ended(), not eof(): drained bytes stay buffered for the caller, and a
    // pipe at end of file polls readable (POLLHUP) at once, for ever: watching it
    // again would spin until the child exits.
    for (pipe_reader* r : {&out_, &err_})
      if (r->is_open() && !r->input_ended()) fds[n++] = pollfd{r->fd(), POLLIN, 0};
    return n;
  }
  void drain_ready(const pollfd* fds, int n) {
    for (int i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      pipe_reader& r = fds[i].fd == out_.fd() ? out_ : err_;
      // A bounded amount per wake-up: a child writing faster than we read must not
      // keep us here past the deadline.
      for (int round = 0; round < 4 && r.fill() > 0; ++round) {
      }
    }
  }

  void release() noexcept {
    tree_.reset();  // kills what is left of the tree, removes its cgroup
    pid_ = -1;
    pidfd_.reset();
    in_.close();
    out_.close();
    err_.close();
    channel_fd_.reset();
  }
  // The held zombie of an exited group leader goes: from here on signal_group()
  // cannot be called (the handle is being destroyed, assigned over or detached).
  void release_zombie() noexcept {
    if (!zombie_held_) return;
    SUBPROCESS_TRY {
      reap(true, true);  // a zombie: returns at once
    } SUBPROCESS_CATCH_ALL {
      // ECHILD: someone else reaped it after all. Nothing is left to do.
    }
    zombie_held_ = false;
  }
  // The destructor policy: kill and reap a child still running.
  void finish() noexcept {
    if (pid_ <= 0) return;
    if (!status_) {
      SUBPROCESS_TRY {
        kill();
        reap(true, true);
      } SUBPROCESS_CATCH_ALL {
        // Nothing more can be done; the kernel reaps it when we exit.
      }
    }
    release_zombie();
    release();
  }

  pid_t pid_ = -1;
  detail::unique_fd pidfd_;
  std::optional<exit_status> status_;
  // The status is known (collected, or someone else reaped the child): signal() sends nothing.
  std::atomic<bool> reaped_{false};
  // An exited group leader's zombie, not reaped yet: its pid and group id stay ours.
  bool zombie_held_ = false;
  bool group_leader_ = false;
  std::string command_;
  pipe_writer in_;
  pipe_reader out_, err_;
  detail::unique_fd channel_fd_;
  bool autoreaped_ = false;
  bool lost_ = false;
  std::unique_ptr<process_tree> tree_;
};

}  // namespace subprocess
