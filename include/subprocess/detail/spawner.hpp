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
// spawn_clone would have returned it; concurrent callers take turns. After fork() a
// child process has no such thread: it notices (the pid changed) and starts its own.
#pragma once

#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>

#include "spawn.hpp"
#include "syscall.hpp"

namespace subprocess::detail {

class spawner {
 public:
  static spawner& instance() {
    static spawner* s = new spawner();  // leaked on purpose: see above
    return *s;
  }

  // spawn_clone(plan, out, fail), run on the spawner thread. False with fail set on
  // failure, including failure to start the thread (step spawner_thread).
  bool spawn(child_plan& plan, spawned& out, spawn_failure& fail) {
    std::lock_guard turn(turn_);  // one job at a time
    std::unique_lock lock(mu_);
    if (owner_ != sys::getpid() && !start(fail)) return false;
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

  spawner() = default;

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
    try {
      std::thread([this] { run(); }).detach();
    } catch (const std::system_error& e) {
      err = e.code().value() != 0 ? e.code().value() : EAGAIN;
    } catch (...) {
      err = ENOMEM;
    }
    sys::thread_sigmask(SIG_SETMASK, &old, nullptr);
    if (err != 0) {
      fail = {err, child_step::spawner_thread};
      return false;
    }
    owner_ = sys::getpid();
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
  pid_t owner_ = 0;  // the process the thread runs in (0: none yet)
};

}  // namespace subprocess::detail
