// subprocess/detail/reaper.hpp - reaps detached children. Not public API.
//
// A child that exits stays a zombie until its parent waits for it. process::detach()
// promises "no zombie" without making the caller wait, so detached children are
// handed to one background thread, started on the first detach() and never
// stopped, which waits on their pidfds (or polls them on the exit_poll schedule where
// the kernel has no pidfds) and reaps each one as it exits. It only ever waits for pids it
// was given: never waitpid(-1), which would steal other code's children.
#pragma once

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/epoll.h>

#include "eventfd.hpp"
#include "exit_watch.hpp"
#include "syscall.hpp"
#include "unique_fd.hpp"
#include "../error.hpp"

namespace subprocess::detail {

class reaper {
 public:
  static reaper& instance() {
    static reaper* r = new reaper();  // leaked on purpose: its thread outlives static destructors
    return *r;
  }

  // Starts the thread now rather than on the first adopt() (its two fds then exist
  // from the start; tests that count fds call this first).
  void ensure_started() {
    std::lock_guard lock(mu_);
    if (!started_) start();
  }

  void adopt(pid_t pid, unique_fd pidfd) {
    std::lock_guard lock(mu_);
    if (!started_) start();
    if (pidfd) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid));
      if (sys::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, pidfd.get(), &ev) == 0) {
        with_fd_.push_back({pid, std::move(pidfd)});
        return;
      }
    }
    without_fd_.push_back(pid);
    // A lost wake-up would leave this child a zombie until the next adopt().
    eventfd_notify(wake_.get());
  }

  // Number of children not reaped yet (for tests).
  std::size_t pending() {
    std::lock_guard lock(mu_);
    return with_fd_.size() + without_fd_.size();
  }

 private:
  struct entry {
    pid_t pid;
    unique_fd pidfd;
  };

  // Throws std::system_error if the thread or its fds cannot be created; nothing
  // is kept then, and the next call tries again.
  void start() {
    unique_fd ep(sys::epoll_create());
    if (!ep) throw_errno(errno, "reaper: epoll_create");
    unique_fd wake(sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) throw_errno(errno, "reaper: eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ~std::uint64_t(0);
    if (sys::epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0)
      throw_errno(errno, "reaper: epoll_ctl");
    ep_ = std::move(ep);
    wake_ = std::move(wake);
    SUBPROCESS_TRY {
      std::thread([this] { run(); }).detach();
    } SUBPROCESS_CATCH_ALL {
      ep_.reset();
      wake_.reset();
      SUBPROCESS_RETHROW;
    }
    started_ = true;
  }

  // Reaps pid if it has exited (through its pidfd if it has one: exit_watcher).
  // True when it is gone (reaped now, or not ours any more); false while it runs.
  // EINTR is retried: treating it as "gone" would drop a child that then stays a zombie.
  static bool reap_if_exited(pid_t pid, int pidfd = -1) noexcept {
    return !exit_watcher(pid, pidfd).check().running();
  }

  void run() {
    sigset_t all;
    sigfillset(&all);
    sys::thread_sigmask(SIG_BLOCK, &all, nullptr);  // signals are for the user's threads
    exit_poll backoff;  // for the children without a pidfd
    for (;;) {
      bool polling;
      {
        std::lock_guard lock(mu_);
        polling = !without_fd_.empty();
      }
      const int timeout =
          polling ? static_cast<int>(saturating_ceil<std::chrono::milliseconds>(backoff.next()).count()) : -1;
      epoll_event evs[16];
      int n = sys::epoll_wait(ep_.get(), evs, 16, timeout);
      std::lock_guard lock(mu_);
      for (int i = 0; i < n; ++i) {
        if (evs[i].data.u64 == ~std::uint64_t(0)) {
          eventfd_drain(wake_.get());
          backoff.reset();  // a child was adopted: look at it soon
          continue;
        }
        auto pid = static_cast<pid_t>(evs[i].data.u64);
        for (auto it = with_fd_.begin(); it != with_fd_.end(); ++it) {
          if (it->pid != pid) continue;
          if (reap_if_exited(pid, it->pidfd.get())) {
            sys::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, it->pidfd.get(), nullptr);
            with_fd_.erase(it);
          }
          break;
        }
      }
      for (auto it = without_fd_.begin(); it != without_fd_.end();) {
        if (reap_if_exited(*it))
          it = without_fd_.erase(it);
        else
          ++it;
      }
    }
  }

  std::mutex mu_;
  bool started_ = false;
  unique_fd ep_, wake_;
  std::vector<entry> with_fd_;
  std::vector<pid_t> without_fd_;
};

}  // namespace subprocess::detail
