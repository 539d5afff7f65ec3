// subprocess/detail/spawner.hpp - the thread that starts kill_on_parent_death children.
// Not public API.
//
// PR_SET_PDEATHSIG fires when the *thread* that created the child exits, not when
// the process does (the kernel reparents the child to another thread of ours and
// sends the signal anyway). A child started from a short-lived worker thread would
// be killed as soon as that thread finished. So every kill_on_parent_death child is
// created by this one internal thread, which lives as long as the process: its
// death is the process's death.
//
// The thread is started on first use only (programs that never ask for
// kill_on_parent_death never get it), with every signal blocked, and is never
// joined: it waits on a condition variable until the process exits. Its state is
// leaked on purpose, so no static destructor can pull it from under the thread at
// exit. A caller hands over the prepared child_plan (which stays on the caller's
// stack: the caller blocks until the answer is back) and gets the result back as
// spawn_clone would have returned it; concurrent callers take turns.
//
// After fork() the child process has no spawner thread, and the copied state is
// unusable there: the condition variable still counts the parent's thread as a
// waiter (notify_all() would block for ever), and a mutex another thread of the
// parent held at the fork stays locked for ever. So an instance belongs to the
// process that created it (home_): a process that finds another process's instance
// installs a fresh one (compare-and-swap, no lock to inherit) and leaks the old one
// without touching its locks. The fresh instance starts its own thread.
//
// Costs and limits, by design: turn_ is held across the vfork of each child, so one
// slow exec (a program on a slow file system) delays the other kill_on_parent_death
// spawns of the process. execve() from any thread ends every other thread, the
// spawner thread too: these children then get their parent-death signal when this
// process execs, not only when it dies (as with PR_SET_PDEATHSIG from any thread).
// Per-thread attributes the kernel copies from the creating thread into the child:
// the caller's nice value and CPU affinity are carried over (child_plan::caller_nice,
// caller_affinity), so the child gets the caller's, not the spawner thread's. Others (the
// scheduling policy and real-time priority, the thread's capabilities, its
// seccomp filters, its per-thread rlimits do not exist) are the spawner thread's,
// which it took from the thread that first asked for a kill_on_parent_death child.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>

#include "spawn/clone_vfork.hpp"
#include "syscall.hpp"
#include "../error.hpp"

namespace subprocess::detail {

class spawner {
 public:
  // This process's instance (leaked on purpose: see above).
  static spawner& instance() {
    static std::atomic<spawner*> current{nullptr};
    const pid_t me = sys::getpid();
    spawner* s = current.load(std::memory_order_acquire);
    while (s == nullptr || s->home_ != me) {
      // None yet, or the parent's (we are a fork child): never touch its locks.
      auto* fresh = new spawner(me);
      if (current.compare_exchange_strong(s, fresh, std::memory_order_acq_rel)) return *fresh;
      delete fresh;  // another thread of ours installed one first: s is now that one
    }
    return *s;
  }

  // spawn_clone(plan, out, fail), run on the spawner thread. False with fail set on
  // failure, including failure to start the thread (step spawner_thread).
  bool spawn(child_plan& plan, spawned& out, spawn_failure& fail) {
    // The caller's per-thread attributes, which the child would otherwise take from
    // the spawner thread. A failed query just leaves that one out.
    plan.caller_nice = sys::thread_nice(&plan.caller_nice_value) == 0;
    plan.caller_affinity = sys::thread_affinity(sizeof plan.caller_cpus, &plan.caller_cpus) == 0;
    std::lock_guard turn(turn_);  // one job at a time
    std::unique_lock lock(mu_);
    if (!started_ && !start(fail)) return false;
    job j{&plan, &out, &fail};
    job_ = &j;
    cv_.notify_all();
    cv_.wait(lock, [&] { return j.done; });
    return j.ok;
  }

 private:
  struct job {
    child_plan* plan;
    spawned* out;
    spawn_failure* fail;
    bool ok = false;
    bool done = false;
  };

  explicit spawner(pid_t home) : home_(home) {}

  // Under mu_. The thread is created with every signal blocked: no handler of the
  // program's ever runs on it.
  bool start(spawn_failure& fail) {
    sigset_t all, old;
    sigfillset(&all);
    if (sys::thread_sigmask(SIG_SETMASK, &all, &old) != 0) {
      fail = {errno, child_step::spawner_thread};
      return false;
    }
    int err = 0;
    SUBPROCESS_TRY {
      std::thread([this] { run(); }).detach();
    } SUBPROCESS_CATCH(const std::system_error&, e) {
      err = e.code().value() != 0 ? e.code().value() : EAGAIN;
    } SUBPROCESS_CATCH_ALL {
      err = ENOMEM;
    }
    sys::thread_sigmask(SIG_SETMASK, &old, nullptr);
    if (err != 0) {
      fail = {err, child_step::spawner_thread};
      return false;
    }
    started_ = true;
    return true;
  }

  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return job_ != nullptr; });
      job* j = job_;
      job_ = nullptr;
      lock.unlock();
      bool ok = spawn_clone(*j->plan, *j->out, *j->fail);
      lock.lock();
      j->ok = ok;
      j->done = true;
      cv_.notify_all();
    }
  }

  std::mutex turn_;
  std::mutex mu_;
  std::condition_variable cv_;
  job* job_ = nullptr;
  const pid_t home_;     // the process this instance belongs to
  bool started_ = false;  // the thread runs (under mu_)
};

}  // namespace subprocess::detail
