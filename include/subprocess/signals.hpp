// subprocess/signals.hpp - signal names, stopping many children, receiving signals.
//
// For the moment a program has to stop, politely first and by force at a deadline:
// signal_name()/signal_number() convert names and numbers; shutdown() stops many
// children within one grace period; signal_set receives signals as data from a
// signalfd instead of in a handler; forward_and_shutdown() is a supervisor's main loop.
//
//   ```cpp
//   sp::signal_set signals{SIGINT, SIGTERM};   // top of main(), before any thread starts
//   std::vector<sp::process> workers;          // filled by sp::command{...}.spawn()
//   auto r = sp::forward_and_shutdown(signals, workers, 5s);  // wait, pass it on, stop all
//   if (r.received) std::cout << "stopped by " << r.received->name() << '\n';
//   std::cout << r.shutdown << '\n';  // "3 processes stopped in 12 ms: 3 gracefully, ..."
//   sp::shutdown(workers, 2s);        // no signal needed: SIGTERM to all, SIGKILL at 2 s
//   std::cout << sp::signal_number("term") << ' ' << sp::signal_name(15) << '\n';  // "15 SIGTERM"
//   ```
//
// Errors: bad arguments (an unknown signal name, SIGKILL or SIGSTOP in a set, a null,
// empty or repeated process, a negative grace period) are argument_error, thrown
// before any signal is sent. A failing system call (a signal that cannot be sent,
// signalfd) is sp::error. signal_name() never throws.
// Blocking: shutdown() returns once every process is gone: within the grace period,
// plus what SIGKILL takes. forward_and_shutdown() first waits, without a limit, for a
// signal or for every child to exit. signal_set::wait() blocks; try_read(),
// read_pending() and fd() never do (for event loops).
// Threads: every thread must block the set's signals. A signal sent to the process
// goes to any one thread that does not block it (default action: the process ends)
// and the signalfd never sees it. So create the signal_set, or call
// block_signals_in_this_thread(), at the top of main() before any thread starts:
// threads inherit the mask. While shutdown() runs, other threads may only signal()
// its processes. Children start with an empty mask and default dispositions.
// Cost: one poll() loop over every child's pidfd and pipes, so fifty children take
// one grace period, not fifty. No handler is ever installed.
// Destructor: ~signal_set unblocks only the signals it blocked and discards those of
// them that arrived unread (deliver_unread_on_destroy() delivers them instead).
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <sys/signalfd.h>

#include "detail/exit_watch.hpp"
#include "detail/pgroup.hpp"
#include "detail/poll.hpp"
#include "detail/signal_table.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "process.hpp"

namespace subprocess {

// ================================================================ names =====

// The kernel's name: "SIGTERM", "SIGRTMIN+3". Never throws: a number with no name
// comes back as "signal 99" (32 and 33 have none; glibc keeps them for itself).
inline std::string signal_name(int sig) { return detail::signal_name_of(sig); }

// Accepts what people write in config files and on command lines: "SIGTERM", "TERM",
// "sigterm", "term" (case does not matter, the SIG prefix is optional), the aliases
// SIGIOT, SIGPOLL and SIGCLD, "SIGRTMIN", "SIGRTMIN+3", "SIGRTMAX-1", and decimal
// numbers "15" (1 to SIGRTMAX). Anything else is an argument_error that quotes the
// input: "unknown signal 'SIGFOO'".
inline int signal_number(std::string_view name) {
  auto fail = [&]() -> int {
    SUBPROCESS_THROW(argument_error("", "unknown signal '" + std::string(name) +
                                 "' (expected a name such as SIGTERM or TERM, or a number 1-" +
                                 std::to_string(SIGRTMAX) + ")"));
  };
  auto parse_uint = [](std::string_view s, int& out) {
    if (s.empty() || s.size() > 3) return false;
    out = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      out = out * 10 + (c - '0');
    }
    return true;
  };
  int n = 0;
  if (parse_uint(name, n)) return n >= 1 && n <= SIGRTMAX ? n : fail();
  std::string up(name);
  for (char& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string_view s(up);
  if (s.starts_with("SIG")) s.remove_prefix(3);
  if (s.empty()) return fail();
  for (const auto& e : detail::signal_table)
    if (e.name.substr(3) == s) return e.number;
  if (s.starts_with("RTMIN") || s.starts_with("RTMAX")) {
    const bool min = s[4] == 'N';
    std::string_view rest = s.substr(5);
    if (rest.empty()) return min ? SIGRTMIN : SIGRTMAX;
    if (rest[0] != (min ? '+' : '-') || !parse_uint(rest.substr(1), n)) return fail();
    int sig = min ? SIGRTMIN + n : SIGRTMAX - n;
    if (sig >= SIGRTMIN && sig <= SIGRTMAX) return sig;
  }
  return fail();
}

// ============================================================== shutdown ====

// How one process ended in shutdown().
struct shutdown_entry {
  pid_t pid;
  std::string command;  // shell-quoted command line
  // How it ended. For a group leader: the leader's status. nullopt: it exited, but
  // the kernel discarded its status (SIGCHLD ignored or SA_NOCLDWAIT in this process,
  // or other code reaped it); see process.hpp.
  std::optional<exit_status> status;
  // False if it had exited before shutdown() started (nothing was sent to it).
  bool was_running;
  // SIGKILL was sent: it, or a process left in its group, was alive at the deadline.
  bool needed_sigkill;
  // From the start of shutdown() until it (and its group) was gone.
  std::chrono::milliseconds exited_after;
};

struct shutdown_result {
  // One entry per process, in the order they were given.
  std::vector<shutdown_entry> processes;
  // How long shutdown() took.
  std::chrono::milliseconds elapsed{0};

  // How many needed SIGKILL.
  std::size_t killed_count() const noexcept {
    return static_cast<std::size_t>(std::count_if(processes.begin(), processes.end(),
                                                  [](const auto& e) { return e.needed_sigkill; }));
  }
  // True if every process stopped within the grace period (or had already exited).
  bool all_graceful() const noexcept { return killed_count() == 0; }
};

struct shutdown_options {
  // The polite signal, sent first. SIGKILL follows at the deadline.
  int signal = SIGTERM;
};

namespace detail {

// The element types a process range may hold.
inline process* as_process_ptr(process& p) noexcept { return &p; }
inline process* as_process_ptr(process* p) noexcept { return p; }
inline process* as_process_ptr(const std::unique_ptr<process>& p) noexcept { return p.get(); }
inline process* as_process_ptr(const std::shared_ptr<process>& p) noexcept { return p.get(); }
inline process* as_process_ptr(std::reference_wrapper<process> p) noexcept { return &p.get(); }

template <class R>
concept process_range = std::ranges::input_range<R> && requires(std::ranges::range_reference_t<R> e) {
  { detail::as_process_ptr(e) } -> std::same_as<process*>;
};

struct stop_target {
  process* p;
  bool skip_polite = false;    // it has the polite signal already (forward_and_shutdown)
  bool was_running = true;
  bool reaped = false;
  bool lost = false;           // exited, status discarded by the kernel
  bool killed = false;
  bool done = false;
  clock::time_point ended{};
};

inline std::vector<stop_target> collect_targets(std::vector<process*> ps, const char* who) {
  std::vector<stop_target> ts;
  ts.reserve(ps.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    const std::string what = std::string(who) + ": process #" + std::to_string(i);
    if (ps[i] == nullptr) SUBPROCESS_THROW(argument_error("", what + " is a null pointer"));
    if (!ps[i]->valid())
      SUBPROCESS_THROW(argument_error("", what + " is an empty handle (moved from or detached)"));
    ts.push_back({ps[i]});
  }
  std::sort(ps.begin(), ps.end());
  if (std::adjacent_find(ps.begin(), ps.end()) != ps.end())
    SUBPROCESS_THROW(argument_error("", std::string(who) + ": the same process is listed twice"));
  return ts;
}

template <class Range>
std::vector<process*> process_pointers(Range&& r) {
  std::vector<process*> ps;
  for (auto&& e : r) ps.push_back(as_process_ptr(e));
  return ps;
}

inline void check_signal_arg(int sig, const char* who) {
  if (sig < 1 || sig > SIGRTMAX)
    SUBPROCESS_THROW(argument_error("", std::string(who) + ": " + std::to_string(sig) + " is not a signal"));
}

inline void send_tree(process& p, int sig) {
  if (p.is_group_leader())
    p.signal_group(sig);
  else
    p.signal(sig);
}

// The engine of shutdown() and forward_and_shutdown(): see shutdown().
// `interrupt_fd`, if >= 0, is polled during the grace period; when it is readable
// and on_interrupt() returns true, the deadline moves to now.
template <class OnInterrupt>
shutdown_result stop_all(std::vector<stop_target>& ts, int sig, clock::duration grace,
                         int interrupt_fd, OnInterrupt&& on_interrupt) {
  using std::chrono::milliseconds;
  const auto t0 = clock::now();
  clock::time_point dl = saturating_add(t0, grace);
  bool forced = false;
  auto finish = [](stop_target& t) {
    t.done = true;
    t.ended = clock::now();
  };
  // A leader that is gone may leave the rest of its group behind: they count too,
  // until the deadline. After SIGKILL they are not ours to wait for.
  auto check_group = [&](stop_target& t) {
    if (forced || !t.p->is_group_leader() || !group_has_live_members(t.p->pid())) finish(t);
  };
  // try_wait(), where an exit whose status the kernel discarded (ECHILD: SIGCHLD
  // ignored, or reaped by other code) is an exit too: one such child must not cost
  // the others their signal, grace period or SIGKILL.
  auto exited = [](stop_target& t) {
    SUBPROCESS_TRY {
      return t.p->try_wait().has_value();
    } SUBPROCESS_CATCH(const error&, e) {
      if (e.code() != std::errc::no_child_process) SUBPROCESS_RETHROW;
      t.lost = true;
      return true;
    }
  };
  // Reaps t if it has exited (never blocks).
  auto poll_exit = [&](stop_target& t) {
    if (t.reaped || !exited(t)) return;
    t.reaped = true;
    check_group(t);
  };

  // 1. Everyone at once: reap the ones already gone, signal the rest.
  for (auto& t : ts) {
    if (!exited(t)) continue;
    t.was_running = false;
    t.reaped = t.done = true;
    t.ended = t0;
  }
  for (auto& t : ts) {
    if (t.done) continue;
    t.p->in().close();
    if (t.skip_polite) continue;
    send_tree(*t.p, sig);
    if (sig != SIGKILL && sig != SIGCONT) send_tree(*t.p, SIGCONT);
  }

  // 2. One poll loop over every pidfd (and the pipes to drain) until all are gone.
  std::vector<pollfd> fds;
  std::vector<pipe_reader*> drain;       // per fds entry: the pipe to drain, or null
  std::vector<int> exit_slot(ts.size());  // per target: its pidfd's index in fds, or -1
  // Groups whose leader is gone and children without a pidfd are checked on a timer.
  exit_poll backoff;
  clock::time_point next_check = t0;
  for (;;) {
    if (std::all_of(ts.begin(), ts.end(), [](const stop_target& t) { return t.done; })) break;
    if (!forced && clock::now() >= dl) {
      // 3. The deadline. Look once more (so a child that exited just now is not
      // counted as killed), then SIGKILL everything still alive.
      for (auto& t : ts) {
        if (t.done) continue;
        if (t.reaped)
          check_group(t);
        else
          poll_exit(t);
      }
      forced = true;
      for (auto& t : ts) {
        if (t.done) continue;
        send_tree(*t.p, SIGKILL);
        t.killed = true;
        if (t.reaped) finish(t);  // only other members of its group were left
      }
      continue;
    }
    fds.clear();
    drain.clear();
    bool timer = false;
    for (std::size_t i = 0; i < ts.size(); ++i) {
      stop_target& t = ts[i];
      exit_slot[i] = -1;
      if (t.done) continue;
      if (t.reaped || t.p->pidfd() < 0) timer = true;
      if (t.reaped) continue;
      if (t.p->pidfd() >= 0) {
        exit_slot[i] = static_cast<int>(fds.size());
        fds.push_back({t.p->pidfd(), POLLIN, 0});
        drain.push_back(nullptr);
      }
      for (pipe_reader* r : {&t.p->out(), &t.p->err()}) {
        if (!r->is_open() || r->input_ended()) continue;  // not eof(): see process.hpp, add_drains
        fds.push_back({r->fd(), POLLIN, 0});
        drain.push_back(r);
      }
    }
    const int interrupt_slot = interrupt_fd >= 0 && !forced ? static_cast<int>(fds.size()) : -1;
    if (interrupt_slot >= 0) {
      fds.push_back({interrupt_fd, POLLIN, 0});
      drain.push_back(nullptr);
    }
    deadline wake;
    if (!forced) wake = dl;
    if (timer && (!wake || next_check < *wake)) wake = next_check;
    poll_until(fds.data(), static_cast<nfds_t>(fds.size()), wake);
    const bool check_now = timer && clock::now() >= next_check;
    if (check_now) next_check = backoff.next_time();
    for (std::size_t k = 0; k < fds.size(); ++k)
      if (fds[k].revents != 0 && drain[k] != nullptr)
        for (int round = 0; round < 4 && drain[k]->fill() > 0; ++round) {  // bounded: see wait()
        }
    if (interrupt_slot >= 0 && fds[interrupt_slot].revents != 0 && on_interrupt()) dl = clock::now();
    for (std::size_t i = 0; i < ts.size(); ++i) {
      stop_target& t = ts[i];
      if (t.done) continue;
      if (!t.reaped) {
        if (exit_slot[i] < 0 ? check_now : fds[exit_slot[i]].revents != 0) poll_exit(t);
      } else if (check_now) {
        check_group(t);  // on the timer only: it may scan /proc
      }
    }
  }

  shutdown_result res;
  res.elapsed = std::chrono::duration_cast<milliseconds>(clock::now() - t0);
  res.processes.reserve(ts.size());
  for (auto& t : ts)
    res.processes.push_back({t.p->pid(), t.p->command_line(),
                             t.lost ? std::nullopt : t.p->status(), t.was_running,
                             t.killed, std::chrono::duration_cast<milliseconds>(t.ended - t0)});
  return res;
}

template <class Rep, class Period>
clock::duration checked_grace(std::chrono::duration<Rep, Period> grace, const char* who) {
  if (grace < grace.zero()) SUBPROCESS_THROW(argument_error("", std::string(who) + ": negative grace period"));
  return to_clock_duration(grace);
}

inline shutdown_result shutdown_impl(std::vector<process*> ps, clock::duration grace,
                                     const shutdown_options& opts) {
  check_signal_arg(opts.signal, "shutdown");
  auto ts = collect_targets(std::move(ps), "shutdown");
  return stop_all(ts, opts.signal, grace, -1, [] { return false; });
}

}  // namespace detail

// Stops every process in `processes` within one grace period: the polite signal
// (SIGTERM) to all at once, SIGKILL at the shared deadline to whoever has not
// exited, everyone reaped.
//
//   sp::shutdown_result r = sp::shutdown(workers, 2s);
//   for (auto& w : r.processes)
//     std::cout << w << '\n';  // "pid 4242 'sleep 10' killed by SIGTERM after 3 ms"
//
// What happens, for every process at the same moment:
//   1. A child that has already exited is just reaped (was_running = false; a group
//      leader's zombie is kept until its handle goes, see process.hpp).
//   2. Its stdin is closed (as wait() does) and it gets SIGTERM followed by SIGCONT,
//      so a stopped child runs its handler too. A group leader (new_process_group()
//      or new_session()) gets them sent to its whole group.
//   3. One deadline, start + grace, is shared by all. A single poll() loop watches
//      every pidfd and reaps each child the moment it exits, while draining the
//      stdout/stderr pipes the process handles still own (a child blocked on a full
//      pipe could otherwise not finish its graceful exit).
//   4. At the deadline, every process that has not exited, and every group that still
//      has a live member after its leader exited, gets SIGKILL (needed_sigkill =
//      true); then those are reaped. Whether SIGKILL is needed is decided by whether
//      the child has exited, never by whether a signal was sent.
// shutdown_options::signal picks another polite signal (SIGINT, SIGHUP...).
//
// Pass the processes as any range whose elements are process, process*,
// std::unique_ptr<process>, std::shared_ptr<process> or
// std::reference_wrapper<process> (a std::vector<sp::process>, an array, a
// std::vector<sp::process*>...), or as a braced list of pointers: shutdown({&a, &b}, 1s).
// The result lists them in the same order. A null pointer, an empty (moved-from or
// detached) handle or a process listed twice is an argument_error, and then nothing
// was sent to anyone.
//
// Thread safety: shutdown() uses the processes as wait() does; meanwhile other
// threads may only signal() them. It throws sp::error if a signal cannot be sent
// (not expected for your own children). A child whose status the kernel discarded
// (SIGCHLD ignored, or reaped by other code) counts as exited: its entry's status is
// nullopt, and it costs the others neither their signal, grace period nor SIGKILL.
//
// Cost: one poll() over 1 to 3 fds per process per wake-up. Members of a group other
// than the leader are not our children, so there is no pidfd for them: once a
// leader has exited, shutdown() asks kill(-pgid, 0) and scans /proc, 1 ms doubling to
// 50 ms, until the group is empty or the deadline comes. After SIGKILL the leader is
// waited for without a time limit (SIGKILL cannot be refused, but a process stuck in
// the kernel, state D, dies only when the kernel lets go of it); other group members
// are not waited for.
template <class Processes, class Rep, class Period>
  requires detail::process_range<Processes>
shutdown_result shutdown(Processes&& processes, std::chrono::duration<Rep, Period> grace,
                         const shutdown_options& opts = {}) {
  auto g = detail::checked_grace(grace, "shutdown");
  return detail::shutdown_impl(detail::process_pointers(processes), g, opts);
}
// shutdown({&server, &worker}, 2s)
template <class Rep, class Period>
shutdown_result shutdown(std::initializer_list<process*> processes,
                         std::chrono::duration<Rep, Period> grace, const shutdown_options& opts = {}) {
  auto g = detail::checked_grace(grace, "shutdown");
  return detail::shutdown_impl(std::vector<process*>(processes), g, opts);
}

// ============================================================ signal_set ====

// One received signal.
struct signal_info {
  int signal = 0;
  // How it was sent: SI_USER (kill), SI_QUEUE (sigqueue), SI_TKILL (raise,
  // pthread_kill), SI_KERNEL (the kernel, e.g. the terminal's Ctrl-C)...
  int code = 0;
  // Who sent it (kill, sigqueue, tgkill); 0 when the kernel did.
  pid_t sender_pid = 0;
  uid_t sender_uid = 0;
  // The int value passed to sigqueue() (SI_QUEUE only).
  int value = 0;

  // "SIGTERM"
  std::string name() const { return signal_name(signal); }
  // Generated by the kernel rather than sent by a process (a terminal's Ctrl-C).
  bool from_kernel() const noexcept { return code == SI_KERNEL; }
};

namespace detail {

// Validates and builds a mask; see signal_set for what is refused.
inline sigset_t signal_mask_of(std::span<const int> sigs, const char* who) {
  if (sigs.empty()) SUBPROCESS_THROW(argument_error("", std::string(who) + ": no signals given"));
  sigset_t m;
  sigemptyset(&m);
  for (int s : sigs) {
    if (s == SIGKILL || s == SIGSTOP)
      SUBPROCESS_THROW(argument_error("", std::string(who) + ": " + signal_name(s) + " cannot be blocked or caught"));
    if (s < 1 || s > SIGRTMAX || (s > SIGSYS && s < SIGRTMIN))
      SUBPROCESS_THROW(argument_error("", std::string(who) + ": " + std::to_string(s) +
                                   " is not a signal a program can receive"));
    sigaddset(&m, s);
  }
  return m;
}

inline void change_thread_mask(int how, const sigset_t& m, const char* what) {
  if (sys::thread_sigmask(how, &m, nullptr) != 0) throw_errno(errno, what);
}

inline signal_info to_signal_info(const signalfd_siginfo& si) noexcept {
  signal_info i;
  i.signal = static_cast<int>(si.ssi_signo);
  i.code = si.ssi_code;
  i.sender_pid = static_cast<pid_t>(si.ssi_pid);
  i.sender_uid = static_cast<uid_t>(si.ssi_uid);
  i.value = si.ssi_int;
  return i;
}

}  // namespace detail

// Blocks these signals in the calling thread, for good (until you unblock them).
// Call it at the top of main(), before starting threads: threads inherit the mask
// of the thread that starts them, so none of them can take a signal meant for a
// signal_set. Throws argument_error for SIGKILL, SIGSTOP and non-signals.
inline void block_signals_in_this_thread(std::initializer_list<int> signals) {
  auto m = detail::signal_mask_of({signals.begin(), signals.size()}, "block_signals_in_this_thread");
  detail::change_thread_mask(SIG_BLOCK, m, "pthread_sigmask(SIG_BLOCK)");
}
// The reverse. A signal pending in this thread or the process is delivered at once.
inline void unblock_signals_in_this_thread(std::initializer_list<int> signals) {
  auto m = detail::signal_mask_of({signals.begin(), signals.size()}, "unblock_signals_in_this_thread");
  detail::change_thread_mask(SIG_UNBLOCK, m, "pthread_sigmask(SIG_UNBLOCK)");
}

// Receives signals as data. A signal normally interrupts whatever the program is
// doing and runs a handler, in which almost nothing is safe to do. signal_set turns
// signals into data: it blocks the signals in the calling thread (pthread_sigmask), so
// they stay pending instead of being delivered, and opens a signalfd (close-on-exec,
// non-blocking) from which they are read as signal_info records. It never installs a
// handler.
//
//   sp::signal_set signals{SIGINT, SIGTERM};   // blocks them in this thread
//   ... start threads and children ...
//   sp::signal_info s = signals.wait();        // s.signal == SIGTERM, s.sender_pid
//   // or in an event loop:
//   loop.watch(signals.fd(), EPOLLIN, [&](auto) {
//     for (auto& s : signals.read_pending()) handle(s);
//   });
//
// THE RULE: every thread must block these signals. A signal sent to the process
// (kill, Ctrl-C, systemd, docker stop) goes to any one thread that does not block
// it; if such a thread exists, the signal is delivered there (default action: the
// process ends) and the signalfd never sees it. New threads inherit the mask of the
// thread that creates them, so the easy way is to create the signal_set, or to call
// block_signals_in_this_thread({SIGINT, SIGTERM}), at the top of main() before any
// thread starts (threads that libraries start later inherit it too). Children are
// unaffected: the library starts every child with an empty signal mask and default
// dispositions.
//
// Destruction unblocks exactly the signals the set blocked (signals that were blocked
// before the set existed stay blocked) and closes the fd. A signal of the set that
// arrived while the set existed and was not read is discarded first: it was meant for
// the set, and unblocking it would otherwise run its default action (a SIGTERM or
// SIGUSR1 left pending would end the process the moment the set goes). To have such
// signals delivered normally instead (your handler runs, or the default action), call
// deliver_unread_on_destroy() before the set goes. A signal that arrives while the
// destructor runs counts as arriving after it.
//
// Other things to know:
//   * Signals already pending when the set is created (because they were blocked
//     earlier, say by block_signals_in_this_thread) are read first.
//   * Standard signals do not queue: three SIGTERMs sent before you read arrive as
//     one, and several different pending ones come out lowest number first (SIGINT
//     before SIGTERM). Realtime signals (SIGRTMIN+n) queue and keep their order and
//     their sigqueue() value.
//   * A thread reads the signals sent to the process and those sent to that thread
//     (pthread_kill, raise); read from the thread that created the set to see both.
//   * A signal whose disposition is SIG_IGN is discarded by the kernel before it
//     could be blocked: a program started with nohup never sees SIGHUP here, and a
//     background job of a non-interactive shell never sees SIGINT.
//   * SIGKILL and SIGSTOP cannot be blocked, and glibc reserves 32 and 33: these are
//     an argument_error. Blocking SIGSEGV, SIGBUS, SIGFPE or SIGILL does not stop a
//     crash from killing the process.
//   * Not copyable or movable: it is a scope, like std::lock_guard. Destroy it on the
//     thread that created it (elsewhere the creating thread's mask is left as it is).
//   * Thread safety: wait/try_read/read_pending may be called from several threads;
//     each signal is read by exactly one of them.
class signal_set {
 public:
  // Blocks `signals` in this thread and opens a signalfd for them. Throws
  // argument_error for an empty list, SIGKILL, SIGSTOP or a non-signal.
  signal_set(std::initializer_list<int> signals)
      : signal_set(std::span<const int>(signals.begin(), signals.size())) {}
  explicit signal_set(std::span<const int> signals)
      : set_(detail::signal_mask_of(signals, "signal_set")), owner_(std::this_thread::get_id()) {
    sigset_t old;
    if (detail::sys::thread_sigmask(SIG_BLOCK, &set_, &old) != 0)
      detail::throw_errno(errno, "signal_set: pthread_sigmask");
    // Remember only what we changed, so the destructor leaves the rest alone.
    sigemptyset(&added_);
    for (int s = 1; s <= SIGRTMAX; ++s)
      if (sigismember(&set_, s) == 1 && sigismember(&old, s) != 1) sigaddset(&added_, s);
    fd_.reset(detail::sys::signalfd(-1, &set_, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd_) {
      int e = errno;
      detail::sys::thread_sigmask(SIG_UNBLOCK, &added_, nullptr);
      detail::throw_errno(e, "signal_set: signalfd");
    }
  }
  signal_set(const signal_set&) = delete;
  signal_set& operator=(const signal_set&) = delete;
  // Discards the unread signals this set blocked (unless deliver_unread_on_destroy()
  // was called), unblocks them (not those that were blocked before) and closes the fd.
  ~signal_set() {
    if (std::this_thread::get_id() == owner_) {
      if (!deliver_unread_) discard_unread();
      detail::sys::thread_sigmask(SIG_UNBLOCK, &added_, nullptr);
    }
    fd_.reset();
  }

  // Opt-in: at destruction, signals of the set that arrived and were not read are
  // delivered as if the set had never existed (a handler runs; with none, the default
  // action: SIGTERM, SIGINT, SIGUSR1... end the process). By default they are discarded.
  void deliver_unread_on_destroy(bool deliver = true) noexcept { deliver_unread_ = deliver; }

  // Readable while a signal is pending. Non-blocking, close-on-exec; owned by the set.
  int fd() const noexcept { return fd_.get(); }
  bool contains(int sig) const noexcept {
    return sig >= 1 && sig <= SIGRTMAX && sigismember(&set_, sig) == 1;
  }
  // The signals in the set, in increasing order.
  std::vector<int> signals() const {
    std::vector<int> v;
    for (int s = 1; s <= SIGRTMAX; ++s)
      if (sigismember(&set_, s) == 1) v.push_back(s);
    return v;
  }

  // Blocks until one of the signals arrives.
  signal_info wait() { return *wait_until(std::nullopt); }
  // Waits at most `timeout`; nullopt if no signal came.
  template <class Rep, class Period>
  std::optional<signal_info> wait_for(std::chrono::duration<Rep, Period> timeout) {
    if (timeout < timeout.zero()) SUBPROCESS_THROW(argument_error("", "signal_set::wait_for: negative timeout"));
    return wait_until(detail::deadline_in(timeout));
  }
  // Waits until `t` (any clock; time_point::max() is for ever); nullopt if no signal came.
  template <class Clock, class Duration>
  std::optional<signal_info> wait_until(const std::chrono::time_point<Clock, Duration>& t) {
    return wait_until(detail::deadline(detail::to_deadline(t)));
  }
  std::optional<signal_info> wait_until(const detail::deadline& dl) {
    for (bool tried = false;; tried = true) {
      if (auto s = try_read()) return s;
      // Readable but nothing to read (another thread took it): the deadline still holds.
      if (tried && dl && detail::clock::now() >= *dl) return std::nullopt;
      if (detail::poll_one(fd_.get(), POLLIN, dl) == 0) return std::nullopt;
    }
  }

  // One pending signal, or nullopt. Never blocks.
  std::optional<signal_info> try_read() {
    signalfd_siginfo si;
    ssize_t n = read_some(&si, sizeof si);
    if (n <= 0) return std::nullopt;
    return detail::to_signal_info(si);
  }
  // Every pending signal (lowest number first, realtime ones in arrival order).
  // Never blocks; empty if none. The "handle readiness" step for an event loop.
  std::vector<signal_info> read_pending() {
    std::vector<signal_info> out;
    signalfd_siginfo si[16];
    for (;;) {
      ssize_t n = read_some(si, sizeof si);
      if (n <= 0) return out;
      for (std::size_t i = 0; i < static_cast<std::size_t>(n) / sizeof(signalfd_siginfo); ++i)
        out.push_back(detail::to_signal_info(si[i]));
    }
  }

 private:
  ssize_t read_some(void* p, std::size_t len) {
    for (;;) {
      ssize_t n = detail::sys::read(fd_.get(), p, len);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      detail::throw_errno(errno, "signal_set: read from signalfd");
    }
  }

  // Takes every pending signal of added_ (the ones the destructor unblocks) from this
  // thread and from the process: sigtimedwait() with a zero timeout, until none is
  // left. Realtime signals queue, so each queued one is taken.
  void discard_unread() noexcept {
    if (sigisemptyset(&added_)) return;
    const timespec now{0, 0};
    for (;;) {
      siginfo_t info;
      if (detail::sys::sigtimedwait(&added_, &info, &now) > 0) continue;
      if (errno != EINTR) return;  // EAGAIN: none left
    }
  }

  sigset_t set_;
  sigset_t added_;
  std::thread::id owner_;
  detail::unique_fd fd_;
  bool deliver_unread_ = false;
};

// ============================================================ forwarding ====

struct forward_result {
  // The signal that started the shutdown; nullopt if every child exited on its own
  // before any signal came (then nothing was sent to them).
  std::optional<signal_info> received;
  // A second signal arrived during the grace period, and everyone still running
  // was SIGKILLed at once.
  bool forced_by_second_signal = false;
  // How each child ended, as shutdown() reports it.
  shutdown_result shutdown;
};

namespace detail {

inline forward_result forward_impl(signal_set& set, std::vector<process*> ps, clock::duration grace) {
  auto ts = collect_targets(std::move(ps), "forward_and_shutdown");
  forward_result res;
  // Phase 1: wait for a signal, or for every child to exit, draining their pipes
  // meanwhile as wait() does.
  std::vector<pollfd> fds;
  std::vector<pipe_reader*> drains;
  exit_poll backoff;  // for the children without a pidfd
  for (;;) {
    if ((res.received = set.try_read())) break;
    bool all_exited = true, timer = false;
    fds.assign(1, pollfd{set.fd(), POLLIN, 0});
    drains.assign(1, nullptr);
    for (auto& t : ts) {
      if (t.p->try_wait()) continue;
      all_exited = false;
      if (t.p->pidfd() >= 0) {
        fds.push_back({t.p->pidfd(), POLLIN, 0});
        drains.push_back(nullptr);
      } else {
        timer = true;
      }
      for (pipe_reader* r : {&t.p->out(), &t.p->err()}) {
        if (!r->is_open() || r->input_ended()) continue;  // not eof(): see process.hpp, add_drains
        fds.push_back({r->fd(), POLLIN, 0});
        drains.push_back(r);
      }
    }
    if (all_exited) break;
    deadline wake;
    if (timer) wake = backoff.next_time();
    poll_until(fds.data(), static_cast<nfds_t>(fds.size()), wake);
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0 && drains[i] != nullptr)
        for (int round = 0; round < 4 && drains[i]->fill() > 0; ++round) {  // bounded: see wait()
        }
  }
  if (!res.received) {  // nothing to forward: just collect the statuses
    res.shutdown = stop_all(ts, SIGTERM, grace, -1, [] { return false; });
    return res;
  }
  // Phase 2: forward it and shut everyone down. A keyboard signal from the terminal
  // already reached every child in our foreground process group.
  const int sig = res.received->signal;
  if (res.received->from_kernel() && (sig == SIGINT || sig == SIGQUIT)) {
    const pid_t ours = sys::getpgrp();
    for (auto& t : ts)
      if (!t.p->status() && sys::getpgid(t.p->pid()) == ours) t.skip_polite = true;
  }
  res.shutdown = stop_all(ts, sig, grace, set.fd(), [&] {
    if (set.read_pending().empty()) return false;
    res.forced_by_second_signal = true;
    return true;
  });
  return res;
}

}  // namespace detail

// A supervisor's wait: blocks until a signal from `signals` arrives or every
// process has exited by itself; on a signal, forwards it to every process (its
// group if it leads one) and shuts them down like shutdown() with `grace`: one
// deadline, SIGKILL for stragglers. The processes are given as to shutdown().
//
//   int main() {
//     sp::signal_set signals{SIGINT, SIGTERM};          // before any thread starts
//     std::vector<sp::process> workers = start_workers();
//     auto r = sp::forward_and_shutdown(signals, workers, 5s);
//     if (r.received) std::cout << "stopped by " << r.received->name() << '\n';
//   }
//
// A second signal from the set during the grace period means "now": everyone still
// running is SIGKILLed at once (forced_by_second_signal). Children in our own process
// group are not sent a SIGINT or SIGQUIT that the terminal generated (si_code
// SI_KERNEL, from Ctrl-C or Ctrl-\): the terminal sent it to the whole foreground
// group, so they already have it, and a second copy could look like a second Ctrl-C
// to them. They still get SIGKILL at the deadline.
//
// The child side needs nothing special: a worker can hold its own signal_set{SIGTERM},
// finish the job in hand when it reads SIGTERM, report, and exit 0 (see
// examples/03-process-signals.cpp).
template <class Processes, class Rep, class Period>
  requires detail::process_range<Processes>
forward_result forward_and_shutdown(signal_set& signals, Processes&& processes,
                                    std::chrono::duration<Rep, Period> grace) {
  auto g = detail::checked_grace(grace, "forward_and_shutdown");
  return detail::forward_impl(signals, detail::process_pointers(processes), g);
}
template <class Rep, class Period>
forward_result forward_and_shutdown(signal_set& signals, std::initializer_list<process*> processes,
                                    std::chrono::duration<Rep, Period> grace) {
  auto g = detail::checked_grace(grace, "forward_and_shutdown");
  return detail::forward_impl(signals, std::vector<process*>(processes), g);
}

// ---- printing: one line each; operator<< prints what fmt.hpp's formatters print ----

// "SIGTERM from pid 4242 (uid 1000)", "SIGUSR1 from pid 4242 (uid 1000), value 7",
// "SIGINT from the kernel".
inline std::string to_string(const signal_info& s) {
  std::string t = s.name();
  if (s.from_kernel())
    t += " from the kernel";
  else if (s.sender_pid > 0)
    t += " from pid " + std::to_string(s.sender_pid) + " (uid " + std::to_string(s.sender_uid) + ")";
  if (s.code == SI_QUEUE) t += ", value " + std::to_string(s.value);
  return t;
}
// "pid 4242 'sleep 10' killed by SIGTERM after 3 ms",
// "pid 4243 'sh -c ...' killed by SIGKILL after 2001 ms, needed SIGKILL",
// "pid 4244 'true' exited with code 0, had already exited".
inline std::string to_string(const shutdown_entry& e) {
  std::string t = "pid " + std::to_string(e.pid) + " '" + e.command + "' " +
                  (e.status ? e.status->to_string() : std::string("exited (status discarded by the kernel)"));
  if (!e.was_running) return t + ", had already exited";
  t += " after " + std::to_string(e.exited_after.count()) + " ms";
  if (e.needed_sigkill) t += ", needed SIGKILL";
  return t;
}
// "3 processes stopped in 2004 ms: 2 gracefully, 1 needed SIGKILL" (a process that
// had already exited counts as graceful).
inline std::string to_string(const shutdown_result& r) {
  const std::size_t n = r.processes.size(), killed = r.killed_count();
  return std::to_string(n) + (n == 1 ? " process" : " processes") + " stopped in " +
         std::to_string(r.elapsed.count()) + " ms: " + std::to_string(n - killed) + " gracefully, " +
         std::to_string(killed) + " needed SIGKILL";
}
// "SIGTERM from pid 4242 (uid 1000); 2 processes stopped in 5 ms: 2 gracefully, 0 needed
// SIGKILL", with ", forced by a second signal" when one came; "no signal (every process
// exited by itself); 1 process stopped in 0 ms: ..." otherwise.
inline std::string to_string(const forward_result& r) {
  std::string t = r.received ? to_string(*r.received) : std::string("no signal (every process exited by itself)");
  t += "; " + to_string(r.shutdown);
  if (r.forced_by_second_signal) t += ", forced by a second signal";
  return t;
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const signal_info& s) {
  return detail::put_text(os, to_string(s));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const shutdown_entry& e) {
  return detail::put_text(os, to_string(e));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const shutdown_result& r) {
  return detail::put_text(os, to_string(r));
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const forward_result& r) {
  return detail::put_text(os, to_string(r));
}

}  // namespace subprocess
