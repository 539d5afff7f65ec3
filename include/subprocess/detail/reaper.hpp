// subprocess/detail/reaper.hpp - reaps detached children. Not public API.
//
// A child that exits stays a zombie until its parent waits for it. process::detach()
// promises "no zombie" without making the caller wait, so detached children are
// handed to one background thread, started on the first detach() and never
// stopped, which waits on their pidfds (or polls them every 50 ms where the kernel
// has no pidfds) and reaps each one as it exits. It only ever waits for pids it
// was given: never waitpid(-1), which would steal other code's children.
#pragma once

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "syscall.hpp"
#include "unique_fd.hpp"

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
    std::uint64_t one = 1;
    (void)!sys::write(wake_.get(), &one, sizeof one);
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

  void start() {
    ep_.reset(sys::epoll_create());
    wake_.reset(sys::eventfd(0, EFD_NONBLOCK));
    if (!ep_ || !wake_) throw_errno(errno, "reaper: epoll/eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ~std::uint64_t(0);
    sys::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
    std::thread([this] { run(); }).detach();
    started_ = true;
  }

  void run() {
    sigset_t all;
    sigfillset(&all);
    sys::thread_sigmask(SIG_BLOCK, &all, nullptr);  // signals are for the user's threads
    for (;;) {
      bool polling;
      {
        std::lock_guard lock(mu_);
        polling = !without_fd_.empty();
      }
      epoll_event evs[16];
      int n = sys::epoll_wait(ep_.get(), evs, 16, polling ? 50 : -1);
      std::lock_guard lock(mu_);
      for (int i = 0; i < n; ++i) {
        if (evs[i].data.u64 == ~std::uint64_t(0)) {
          std::uint64_t v;
          (void)!sys::read(wake_.get(), &v, sizeof v);
          continue;
        }
        auto pid = static_cast<pid_t>(evs[i].data.u64);
        for (auto it = with_fd_.begin(); it != with_fd_.end(); ++it) {
          if (it->pid != pid) continue;
          int ws;
          if (sys::waitpid(pid, &ws, WNOHANG) != 0) {  // reaped, or not ours any more
            sys::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, it->pidfd.get(), nullptr);
            with_fd_.erase(it);
          }
          break;
        }
      }
      for (auto it = without_fd_.begin(); it != without_fd_.end();) {
        int ws;
        if (sys::waitpid(*it, &ws, WNOHANG) != 0)
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
