// subprocess/detail/process_tree.hpp - the types of tree.hpp (its manual is there).
//
// Kept apart from tree.hpp because command.hpp and process.hpp need them, and
// tree.hpp includes those two. The types here are public API: include
// <subprocess/tree.hpp> (or subprocess.hpp) to use them.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include <sys/prctl.h>

#include "../error.hpp"
#include "cgroup.hpp"
#include "poll.hpp"
#include "printing.hpp"
#include "signal_table.hpp"
#include "syscall.hpp"
#include "unique_fd.hpp"

namespace subprocess {

enum class tree_mechanism { cgroup, subreaper };

// "cgroup v2", "subreaper".
inline const char* to_string(tree_mechanism m) noexcept {
  return m == tree_mechanism::cgroup ? "cgroup v2" : "subreaper";
}
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os,
                                             tree_mechanism m) {
  return detail::put_text(os, to_string(m));
}

// cpu.max: at most `quota` of CPU time per `period` (quota 50ms per 100ms: half a CPU).
struct cpu_quota {
  std::chrono::microseconds quota{};
  std::chrono::microseconds period{100000};
};

struct tree_options {
  // nullopt: a cgroup if one can be created, else subreaper mode if this process is
  // a child subreaper, else spawn() throws. cgroup or subreaper: that one, or throw.
  std::optional<tree_mechanism> use{};
  // Where to create the cgroup; empty: this process's own cgroup v2 directory.
  std::filesystem::path cgroup_parent{};
  // Limits (cgroup only): each needs its controller enabled in the parent's
  // cgroup.subtree_control, else spawn() throws naming the controller.
  std::optional<std::uint64_t> memory_max{};  // bytes (memory.max)
  std::optional<std::uint64_t> pids_max{};    // processes (pids.max)
  std::optional<cpu_quota> cpu_max{};         // cpu.max
};

// What the tree used, from cpu.stat and memory.peak.
struct tree_usage {
  std::chrono::microseconds cpu{}, user{}, system{};
  std::optional<std::uint64_t> memory_peak{};  // bytes; nullopt: no memory.peak here
  // "cpu 1200 us (user 1000, system 200); peak memory unavailable (no memory.peak)"
  std::string to_string() const {
    std::string s = "cpu " + std::to_string(cpu.count()) + " us (user " +
                    std::to_string(user.count()) + ", system " + std::to_string(system.count()) +
                    "); peak memory ";
    return s + (memory_peak
                    ? std::to_string(*memory_peak) + " bytes"
                    : std::string("unavailable (no memory.peak: memory controller not enabled)"));
  }
};
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const tree_usage& u) {
  return detail::put_text(os, u.to_string());
}

// Makes this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER): orphans of
// its descendants are re-parented to it instead of to init. Process-wide and for
// the rest of its life unless undone with become_subreaper(false); it must reap
// what it adopts (a process_tree reaps its own). Throws subprocess::error on failure.
inline void become_subreaper(bool on = true) {
  if (detail::sys::prctl(PR_SET_CHILD_SUBREAPER, on ? 1UL : 0UL) != 0)
    detail::throw_errno(errno, "prctl(PR_SET_CHILD_SUBREAPER)");
}
inline bool is_subreaper() {
  int v = 0;
  if (detail::sys::prctl(PR_GET_CHILD_SUBREAPER, reinterpret_cast<unsigned long>(&v)) != 0)
    detail::throw_errno(errno, "prctl(PR_GET_CHILD_SUBREAPER)");
  return v != 0;
}

class command;

// A child and its descendants. Owned by the child's process handle (process::tree()).
class process_tree {
 public:
  process_tree(const process_tree&) = delete;
  process_tree& operator=(const process_tree&) = delete;
  ~process_tree() { destroy(); }

  tree_mechanism mechanism() const noexcept { return mechanism_; }
  // The cgroup directory; empty in subreaper mode.
  const std::filesystem::path& cgroup_path() const noexcept { return dir_; }
  // "cgroup v2 /sys/fs/cgroup/sp-12-1", "subreaper (SUBPROCESS_TREE=12.1)".
  std::string to_string() const {
    return mechanism_ == tree_mechanism::cgroup ? "cgroup v2 " + dir_.string()
                                                : "subreaper (" + cookie_ + ")";
  }

  // The members alive now (not zombies), the child included while it runs.
  std::vector<pid_t> pids() {
    if (mechanism_ == tree_mechanism::cgroup)
      return detail::cgroup::parse_pids(read("cgroup.procs"));
    std::vector<pid_t> v;
    for (const auto& e : members()) v.push_back(e.pid);
    return v;
  }
  bool empty() { return pids().empty(); }

  // Sends sig to every member; true if any was signalled. Members started while
  // this runs are signalled too (it repeats until a pass finds nobody new).
  bool signal(int sig) {
    std::set<pid_t> done;
    for (bool fresh = true; fresh;) {
      fresh = false;
      for (pid_t pid : pids())
        if (done.insert(pid).second) {
          fresh = true;
          if (detail::sys::kill(pid, sig) != 0 && errno != ESRCH)
            detail::throw_errno(errno, cmdline_,
                                "cannot send " + detail::signal_name_of(sig) + " to " +
                                    std::to_string(pid) + " of the tree of '" + cmdline_ + "'");
        }
    }
    return !done.empty();
  }

  // SIGKILL to every member, then waits until none is left (adopted orphans reaped).
  // cgroup: cgroup.kill (Linux 5.14), else freeze, kill each, thaw.
  void kill() {
    if (mechanism_ == tree_mechanism::cgroup) {
      int e = detail::cgroup::write_file(file("cgroup.kill"), "1");
      if (e == ENOENT) {
        freeze();
        signal(SIGKILL);
        thaw();
      } else if (e != 0) {
        fail(e, "write 1 to", "cgroup.kill");
      }
      wait_events("populated", 0);
      return;
    }
    for (;;) {
      std::vector<detail::cgroup::proc_entry> live = members();
      reap_adopted();
      if (live.empty()) return;
      std::vector<detail::unique_fd> fds;
      for (const auto& m : live) {
        detail::unique_fd fd(detail::sys::pidfd_open(m.pid));
        if (!fd || detail::sys::pidfd_send_signal(fd.get(), SIGKILL) != 0) continue;  // gone
        fds.push_back(std::move(fd));
      }
      for (auto& fd : fds) detail::poll_one(fd.get(), POLLIN, std::nullopt, cmdline_);
    }
  }

  // SIGTERM to every member (then SIGCONT, so a stopped one can act on it), waits up
  // to `grace` for the tree to empty, then kill(). True if nobody needed SIGKILL.
  // Node's tree-kill, with the escalation it leaves to you. argument_error for a
  // negative grace period.
  template <class Rep = long, class Period = std::ratio<1>>
  bool terminate(std::chrono::duration<Rep, Period> grace = std::chrono::seconds(5)) {
    if (grace < grace.zero())
      SUBPROCESS_THROW(argument_error(cmdline_, "negative grace period for tree().terminate()"));
    const detail::deadline dl = detail::deadline_in(grace);
    signal(SIGTERM);
    signal(SIGCONT);
    if (wait_empty_until(dl)) return true;
    kill();
    return false;
  }

  // Stops every member. cgroup: the freezer (cgroup.freeze), invisible to them;
  // returns once cgroup.events says frozen. subreaper: SIGSTOP to each (a parent
  // waiting with WUNTRACED sees it), returns once /proc shows all stopped.
  void freeze() {
    if (mechanism_ == tree_mechanism::cgroup) {
      if (int e = detail::cgroup::write_file(file("cgroup.freeze"), "1"))
        fail(e, "write 1 to", "cgroup.freeze");
      wait_events("frozen", 1);
      return;
    }
    // SIGSTOP takes effect when each is next scheduled: look until all are stopped
    // (members started meanwhile get theirs), 1 ms doubling to 50 ms between looks.
    for (auto step = std::chrono::milliseconds(1);;
         step = std::min(step * 2, std::chrono::milliseconds(50))) {
      bool all = true;
      for (const auto& m : members())
        if (m.state != 'T' && m.state != 't') {
          all = false;
          if (detail::sys::kill(m.pid, SIGSTOP) != 0 && errno != ESRCH)
            detail::throw_errno(
                errno, cmdline_,
                "cannot stop " + std::to_string(m.pid) + " of the tree of '" + cmdline_ + "'");
        }
      if (all) return;
      detail::poll_until(nullptr, 0, detail::clock::now() + step);
    }
  }
  void thaw() {
    if (mechanism_ == tree_mechanism::cgroup) {
      if (int e = detail::cgroup::write_file(file("cgroup.freeze"), "0"))
        fail(e, "write 0 to", "cgroup.freeze");
    } else {
      signal(SIGCONT);
    }
  }
  // cgroup: cgroup.events says frozen. subreaper: every member is stopped.
  bool frozen() {
    if (mechanism_ == tree_mechanism::cgroup)
      return detail::cgroup::field(read("cgroup.events"), "frozen") == 1;
    auto live = members();
    for (const auto& m : live)
      if (m.state != 'T' && m.state != 't') return false;
    return !live.empty();
  }

  // Waits until no member is left, up to `timeout`; false if some still run.
  template <class Rep, class Period>
  bool wait_empty_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_empty_until(detail::deadline_in(timeout));
  }
  bool wait_empty_until(const detail::deadline& dl) {
    if (mechanism_ == tree_mechanism::cgroup) return wait_events("populated", 0, dl);
    for (;;) {
      std::vector<detail::cgroup::proc_entry> live = members();
      reap_adopted();
      if (live.empty()) return true;
      detail::unique_fd fd(detail::sys::pidfd_open(live.front().pid));
      if (fd && detail::poll_one(fd.get(), POLLIN, dl, cmdline_) == 0) return false;
    }
  }

  // CPU time of every process that ever ran in the tree, and its peak memory.
  tree_usage usage() {
    if (mechanism_ != tree_mechanism::cgroup)
      SUBPROCESS_THROW(error(std::make_error_code(std::errc::operation_not_supported), cmdline_,
                  "usage() of the tree of '" + cmdline_ + "' needs the cgroup mechanism (it is " +
                      to_string() + ")"));
    tree_usage u;
    const std::string stat = read("cpu.stat");
    u.cpu = std::chrono::microseconds(detail::cgroup::field(stat, "usage_usec"));
    u.user = std::chrono::microseconds(detail::cgroup::field(stat, "user_usec"));
    u.system = std::chrono::microseconds(detail::cgroup::field(stat, "system_usec"));
    std::string peak;
    if (detail::cgroup::read_file(file("memory.peak"), peak))
      u.memory_peak = std::strtoull(peak.c_str(), nullptr, 10);
    return u;
  }

 private:
  friend class command;
  using entry = detail::cgroup::proc_entry;

  // Chooses the mechanism and creates the cgroup (command::spawn(); attach() follows).
  process_tree(const tree_options& o, std::string cmdline) : cmdline_(std::move(cmdline)) {
    static std::atomic<unsigned> counter{0};
    const std::string id = std::to_string(detail::sys::getpid()) + "-" + std::to_string(++counter);
    std::string why;
    if (o.use != tree_mechanism::subreaper) {
      std::filesystem::path parent = o.cgroup_parent;
      if (parent.empty()) parent = detail::cgroup::own_dir(why);
      if (!parent.empty()) {
        check_limits(o, parent);
        std::filesystem::path dir = parent / ("sp-" + id);
        if (detail::sys::mkdir(dir.c_str(), 0755) == 0) {
          dir_ = dir;
          mechanism_ = tree_mechanism::cgroup;
          apply_limits(o);
          procs_.reset(detail::sys::no_eintr(
              [&] { return detail::sys::open(file("cgroup.procs").c_str(), O_WRONLY); }));
          if (!procs_) fail_spawn(errno, "open " + file("cgroup.procs"));
          return;
        }
        why = "cannot create the cgroup '" + dir.string() + "' (" + detail::errno_text(errno) + ")";
      }
      if (o.use == tree_mechanism::cgroup) fail_spawn(errno ? errno : ENOTSUP, why);
    }
    if (!is_subreaper())
      fail_spawn(EPERM, (why.empty() ? "" : why + "; ") +
                            "subreaper mode needs this process to be a child subreaper: call "
                            "sp::become_subreaper() first (a process-wide setting)");
    mechanism_ = tree_mechanism::subreaper;
    cookie_ = "SUBPROCESS_TREE=" + id;
  }
  // After the spawn: the child's pid (and pidfd, to tell when it has exited).
  void attach(pid_t pid, int pidfd) {
    procs_.reset();
    root_ = pid;
    if (pidfd >= 0) root_fd_.reset(detail::sys::dup_above(pidfd, 3));
  }
  int procs_fd() const noexcept { return procs_.get(); }
  const std::string& cookie() const noexcept { return cookie_; }

  [[noreturn]] void fail_spawn(int err, const std::string& what) {
    destroy();
    SUBPROCESS_THROW(spawn_error(err, cmdline_, "tree()", what));
  }
  [[noreturn]] void fail(int err, const std::string& verb, const std::string& name) const {
    detail::throw_errno(err, cmdline_,
                        "process tree of '" + cmdline_ + "': cannot " + verb + " " + file(name));
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  std::string read(const std::string& name) const {
    std::string s;
    if (!detail::cgroup::read_file(file(name), s)) fail(errno, "read", name);
    return s;
  }

  // Each limit needs its controller enabled for the parent's children.
  void check_limits(const tree_options& o, const std::filesystem::path& parent) {
    if (!o.memory_max && !o.pids_max && !o.cpu_max) return;
    std::string enabled, available;
    detail::cgroup::read_file((parent / "cgroup.subtree_control").string(), enabled);
    detail::cgroup::read_file((parent / "cgroup.controllers").string(), available);
    auto need = [&](bool want, const char* controller, const char* option) {
      if (!want || detail::cgroup::has_word(enabled, controller)) return;
      auto trim = [](std::string s) {
        while (!s.empty() && s.back() == '\n') s.pop_back();
        return s.empty() ? std::string("none") : s;
      };
      SUBPROCESS_THROW(spawn_error(EOPNOTSUPP, cmdline_, "tree()",
                        std::string(option) + ": the " + controller +
                            " controller is not enabled for the children of '" + parent.string() +
                            "' (its cgroup.subtree_control: " + trim(enabled) +
                            "; controllers available there: " + trim(available) + ")"));
    };
    need(o.memory_max.has_value(), "memory", "memory_max");
    need(o.pids_max.has_value(), "pids", "pids_max");
    need(o.cpu_max.has_value(), "cpu", "cpu_max");
  }
  void apply_limits(const tree_options& o) {
    auto set = [&](bool want, const std::string& name, const std::string& value) {
      if (!want) return;
      if (int e = detail::cgroup::write_file(file(name), value))
        fail_spawn(e, "write " + value + " to " + file(name));
    };
    set(o.memory_max.has_value(), "memory.max", std::to_string(o.memory_max.value_or(0)));
    set(o.pids_max.has_value(), "pids.max", std::to_string(o.pids_max.value_or(0)));
    if (o.cpu_max)
      set(true, "cpu.max",
          std::to_string(o.cpu_max->quota.count()) + " " +
              std::to_string(o.cpu_max->period.count()));
  }

  // Waits until cgroup.events says `key value`: poll() reports POLLPRI on a change.
  bool wait_events(const char* key, long long value,
                   const detail::deadline& dl = std::nullopt) const {
    detail::unique_fd fd(detail::sys::no_eintr(
        [&] { return detail::sys::open(file("cgroup.events").c_str(), O_RDONLY); }));
    if (!fd) fail(errno, "open", "cgroup.events");
    std::string s;
    for (;;) {
      if (!detail::cgroup::read_fd(fd.get(), s)) fail(errno, "read", "cgroup.events");
      if (detail::cgroup::field(s, key) == value) return true;
      if (detail::poll_one(fd.get(), POLLPRI, dl, cmdline_) == 0) return false;
    }
  }

  // Subreaper mode: the live members. The child and its descendants by parent links
  // (while the child runs), and the orphans adopted by this process that carry the
  // cookie, with their descendants. Adopted ones are remembered (pidfd) for reaping.
  std::vector<entry> members() {
    std::vector<entry> all;
    if (!detail::cgroup::scan_proc(all))
      detail::throw_errno(errno, cmdline_, "process tree of '" + cmdline_ + "': cannot scan /proc");
    const pid_t self = detail::sys::getpid();
    std::set<pid_t> in;
    bool root_running = root_ > 0 && root_fd_ &&
                        detail::poll_one(root_fd_.get(), POLLIN, detail::clock::now()) == 0;
    if (root_running) in.insert(root_);
    for (const entry& e : all) {
      if (e.ppid != self || e.pid == root_) continue;
      if (adopted_.count(e.pid) != 0 ||
          (e.state != 'Z' && detail::cgroup::environ_has(e.pid, cookie_))) {
        if (adopted_.count(e.pid) == 0) {
          detail::unique_fd fd(detail::sys::pidfd_open(e.pid));
          if (fd) adopted_.emplace(e.pid, std::move(fd));
        }
        in.insert(e.pid);
      }
    }
    for (bool grew = true; grew;) {
      grew = false;
      for (const entry& e : all)
        if (in.count(e.ppid) != 0 && in.insert(e.pid).second) grew = true;
    }
    std::vector<entry> live;
    for (const entry& e : all)
      if (in.count(e.pid) != 0 && e.state != 'Z' && e.state != 'X') live.push_back(e);
    return live;
  }
  // Reaps the adopted orphans that have exited (by pidfd: never a stranger).
  void reap_adopted() noexcept {
    for (auto it = adopted_.begin(); it != adopted_.end();) {
      siginfo_t info{};
      int r = detail::sys::waitid_pidfd(it->second.get(), &info, WEXITED | WNOHANG);
      if (r == 0 && info.si_pid == 0) {
        ++it;  // still running
        continue;
      }
      it = adopted_.erase(it);  // reaped, or not ours to reap (ECHILD)
    }
  }

  void destroy() noexcept {
    SUBPROCESS_TRY {
      if (mechanism_ == tree_mechanism::cgroup || root_ > 0) kill();
    } SUBPROCESS_CATCH_ALL {
    }
    procs_.reset();
    if (!dir_.empty()) {
      // EBUSY: a member is still exiting; the kill above waited, so once more at most.
      for (int i = 0; i < 2 && detail::sys::rmdir(dir_.c_str()) != 0 && errno == EBUSY; ++i) {
        SUBPROCESS_TRY {
          wait_events("populated", 0, detail::deadline_in(std::chrono::seconds(5)));
        } SUBPROCESS_CATCH_ALL {
        }
      }
      dir_.clear();
    }
    reap_adopted();
  }

  std::string cmdline_;
  tree_mechanism mechanism_ = tree_mechanism::subreaper;
  std::filesystem::path dir_;  // the cgroup (cgroup mode)
  std::string cookie_;         // SUBPROCESS_TREE=<id> (subreaper mode)
  detail::unique_fd procs_;    // cgroup.procs, until the child has joined
  pid_t root_ = -1;
  detail::unique_fd root_fd_;
  std::map<pid_t, detail::unique_fd> adopted_;
};

}  // namespace subprocess
