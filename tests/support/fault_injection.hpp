// Fault injection for tests built with -DSUBPROCESS_FAULT_INJECTION.
//
// The library asks detail::sys::fault_hook before every system call it makes
// (detail/syscall.hpp). This file installs that hook and lets a test describe
// which calls fail:
//
//   testing::faults::plan p;
//   p.fail_every(call::read, 2, EINTR)      // calls 1, 3, 5... of read() get EINTR
//    .fail_nth(call::pipe2, 2, EMFILE);     // the 2nd pipe2() gets EMFILE
//   {
//     testing::faults::scope s(p);          // this thread only (the default)
//     sp::run(...);
//   }
//   p.calls(call::read); p.injected(call::read);
//
// A plan counts the calls of each kind it sees, so a test can first run an
// operation under an empty plan to learn how many calls of each kind it makes,
// then fail each one in turn (see census() in test_fault_injection.cpp).
// scope(p, scope::all_threads) also reaches the library's own threads (the
// reaper) and is what headers with worker threads (event_loop, pool, pipeline)
// will use. A per-thread plan wins over an all-threads plan.
//
// Every injected fault is also added to a program-wide tally, printed when the
// test program exits ("fault injection: N faults injected: read=..., ...").
//
// The sweeps of test_fault_injection*.cpp share the rest: census() counts the calls
// an operation makes, try_once() runs it under one fault and says how it ended, and
// the fault tables: typical_errno() (what a failing call of each kind says, for the
// single-fault sweeps) and out_of() (the errnos of a call that makes an fd, a process
// or memory when the system runs short).
#pragma once

#if !defined(SUBPROCESS_FAULT_INJECTION)
#error "fault_injection.hpp needs -DSUBPROCESS_FAULT_INJECTION (for the library too)"
#endif

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <functional>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <subprocess/detail/syscall.hpp>
#include <subprocess/error.hpp>

namespace testing::faults {

using call = subprocess::detail::sys::call;
inline constexpr std::size_t n_kinds = static_cast<std::size_t>(call::count_);
inline constexpr std::size_t idx(call c) {
  return static_cast<std::size_t>(c);
}

// Faults injected by every plan of this program, per kind.
inline std::array<std::atomic<long>, n_kinds> tally{};

struct tally_printer {
  ~tally_printer() {
    long total = 0;
    std::string s;
    for (std::size_t i = 0; i < n_kinds; ++i) {
      long n = tally[i].load();
      if (n == 0) continue;
      total += n;
      s += std::string(s.empty() ? "" : ", ") +
           subprocess::detail::sys::call_name(static_cast<call>(i)) + "=" + std::to_string(n);
    }
    std::fprintf(stderr, "fault injection: %ld faults injected: %s\n", total, s.c_str());
  }
};
inline tally_printer print_tally_at_exit;

class plan {
 public:
  static constexpr std::size_t max_rules = 32;

  // The nth call (1-based) of `kind` fails with err.
  plan& fail_nth(call kind, long n, int err) { return add({kind, err, n, 0, 1}); }
  // Calls first, first+period, first+2*period... of `kind` fail with err, at most
  // `times` times (-1: no limit). period 2 interrupts every call once and lets its
  // retry through; period 1 fails every call.
  plan& fail_every(call kind, long period, int err, long times = -1, long first = 1) {
    return add({kind, err, first, period, times});
  }
  // Forget the rules and the counts.
  void clear() noexcept {
    n_rules_ = 0;
    for (auto& c : calls_) c = 0;
    for (auto& c : injected_) c = 0;
  }

  long calls(call k) const noexcept { return calls_[idx(k)].load(); }
  long injected(call k) const noexcept { return injected_[idx(k)].load(); }
  long injected_total() const noexcept {
    long t = 0;
    for (auto& c : injected_) t += c.load();
    return t;
  }

  // The hook's decision for one call: 0 or an errno. Thread-safe.
  int on_call(call k) noexcept {
    long n = ++calls_[idx(k)];
    for (std::size_t i = 0; i < n_rules_; ++i) {
      rule& r = rules_[i];
      if (r.kind != k || n < r.first) continue;
      if (r.every == 0 ? n != r.first : (n - r.first) % r.every != 0) continue;
      if (r.times >= 0 && r.fired.fetch_add(1) >= r.times) continue;
      ++injected_[idx(k)];
      ++tally[idx(k)];
      return r.err;
    }
    return 0;
  }

 private:
  struct rule {
    call kind{};
    int err = 0;
    long first = 1, every = 0, times = 1;
    std::atomic<long> fired{0};
    rule() = default;
    rule(call k, int e, long f, long ev, long t) : kind(k), err(e), first(f), every(ev), times(t) {}
    rule& operator=(const rule& o) {
      kind = o.kind, err = o.err, first = o.first, every = o.every, times = o.times;
      fired = 0;
      return *this;
    }
  };
  plan& add(const rule& r) {
    if (n_rules_ == max_rules) throw std::length_error("fault plan: too many rules");
    rules_[n_rules_++] = r;
    return *this;
  }
  std::array<rule, max_rules> rules_{};
  std::size_t n_rules_ = 0;
  std::array<std::atomic<long>, n_kinds> calls_{}, injected_{};
};

namespace detail {
inline thread_local plan* this_thread_plan = nullptr;
inline std::atomic<plan*> all_threads_plan{nullptr};
inline int hook(call c) noexcept {
  plan* p = this_thread_plan;
  if (p == nullptr) p = all_threads_plan.load(std::memory_order_acquire);
  return p != nullptr ? p->on_call(c) : 0;
}
}  // namespace detail

// Installs a plan for as long as it lives. Do not change the plan's rules while a
// scope holds it.
class scope {
 public:
  enum who { this_thread, all_threads };
  explicit scope(plan& p, who w = this_thread) : who_(w) {
    subprocess::detail::sys::fault_hook.store(&detail::hook);
    if (w == this_thread)
      detail::this_thread_plan = &p;
    else
      detail::all_threads_plan.store(&p, std::memory_order_release);
  }
  ~scope() {
    if (who_ == this_thread)
      detail::this_thread_plan = nullptr;
    else
      detail::all_threads_plan.store(nullptr, std::memory_order_release);
  }
  scope(const scope&) = delete;
  scope& operator=(const scope&) = delete;

 private:
  who who_;
};

inline const char* name(call c) { return subprocess::detail::sys::call_name(c); }

// What one attempt under a fault did.
struct attempt {
  bool ok = false;
  bool spawn_error = false;
  bool library_error = false;  // a subprocess::error (spawn_error included)
  bool bad_alloc = false;
  int code = 0;
  std::string what;
};

// Runs op with p installed for `who` and says how it ended.
inline attempt try_once(plan& p, const std::function<void()>& op, scope::who who) {
  attempt a;
  scope s(p, who);
  try {
    op();
    a.ok = true;
  } catch (const subprocess::spawn_error& e) {
    a.spawn_error = a.library_error = true;
    a.code = e.code().value();
    a.what = e.what();
  } catch (const subprocess::error& e) {
    a.library_error = true;
    a.code = e.code().value();
    a.what = e.what();
  } catch (const std::bad_alloc&) {
    a.bad_alloc = true;
    a.what = "std::bad_alloc";
  } catch (const std::exception& e) {
    a.what = std::string("not a subprocess::error: ") + e.what();
  }
  return a;
}

// The calls op makes, per kind, with no fault injected. Counted in `into` if given
// (a plan that must outlive library threads still looking at it), else in a plan of
// its own.
inline std::map<call, long> census(const std::function<void()>& op, scope::who who = scope::this_thread,
                                   plan* into = nullptr) {
  plan own;
  plan& p = into != nullptr ? *into : own;
  {
    scope s(p, who);
    op();
  }
  std::map<call, long> m;
  for (std::size_t i = 0; i < n_kinds; ++i)
    if (long n = p.calls(static_cast<call>(i))) m[static_cast<call>(i)] = n;
  return m;
}

// The errno a call of kind c fails with in a single-fault sweep: one it really
// returns, the likeliest.
inline int typical_errno(call c) {
  switch (c) {
    case call::pipe2:
    case call::open:
    case call::dup:
    case call::pidfd_open:
    case call::eventfd:
    case call::epoll_create:
    case call::signalfd:
    case call::socketpair:
      return EMFILE;
    case call::posix_spawn:
    case call::clone:
      return EAGAIN;
    case call::mmap:
    case call::mremap:
    case call::poll:
    case call::epoll_ctl:
      return ENOMEM;
    case call::waitpid:
    case call::waitid:
    case call::sigmask:
      return EINVAL;
    case call::kill:
    case call::pidfd_send_signal:
      return EPERM;
    case call::eventfd_write:
      // The only ways an eventfd write fails: EINTR, and EAGAIN when the counter is
      // full, i.e. when the fd is readable already (see detail/eventfd.hpp).
      return EINTR;
    default:
      return EIO;
  }
}

// One kind of call and the errnos to fail it with. must_fail: which of its calls must
// stop the operation when they fail (-1: all; 1: only the first; 0: none, a failure
// may be tolerated).
struct kind_faults {
  call kind;
  std::vector<int> errs;
  long must_fail = -1;
};

// A call that makes something, failing because the system runs short of it: fds
// (EMFILE, ENFILE), processes or memory (ENOMEM, EAGAIN).
inline kind_faults out_of(call c, long must_fail = -1) {
  switch (c) {
    case call::clone:
      return {c, {ENOMEM, EAGAIN, EMFILE}, must_fail};
    case call::posix_spawn:
      return {c, {ENOMEM, EAGAIN}, must_fail};
    case call::mmap:
      return {c, {ENOMEM}, must_fail};
    default:  // pipe2, open, dup, socketpair, pidfd_open, eventfd...
      return {c, {EMFILE, ENFILE}, must_fail};
  }
}

}  // namespace testing::faults
