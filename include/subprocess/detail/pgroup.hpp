// subprocess/detail/pgroup.hpp - is anyone left in a process group? Not public API.
//
// After a group leader exits, the rest of its group (its children, now orphans) may
// live on. terminate() and shutdown() wait for them until the grace period ends and
// then SIGKILL the group. They are not our children, so there is no pidfd or
// waitpid for them: we ask kill(-pgid, 0), and because that also counts zombies
// (an orphan's new parent may be slow to reap it, or never reap it if PID 1 is not
// an init), a yes is confirmed by looking for a live member in /proc.
//
// Only called after the leader has exited. Its process handle keeps the leader's
// zombie unreaped for as long as the handle exists (process.hpp: "A group leader's
// zombie is kept"), and while that zombie exists the kernel cannot give its pid to
// a new process, as a pid or as a group id: `pgid` is always the leader's own group,
// never a stranger's that reused the number. The zombie itself is not a live member.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <dirent.h>

#include "syscall.hpp"
#include "unique_fd.hpp"

namespace subprocess::detail {

// Is there a process in group `pgid` that has not exited? A group whose only
// members we may not signal (EPERM) counts as empty: we could not stop them anyway.
// When /proc cannot be read to the end (out of fds, an error), the answer is yes:
// trusting kill() only costs waiting until the deadline and a SIGKILL to the group,
// while a wrong no would leave a live member behind unkilled.
inline bool group_has_live_members(pid_t pgid) {
  if (sys::kill(-pgid, 0) != 0) return false;
  DIR* proc;
  while ((proc = sys::opendir("/proc")) == nullptr && errno == EINTR) {
  }
  if (proc == nullptr) return true;  // no /proc, or no fd left: trust kill()
  struct closer {
    DIR* d;
    ~closer() { sys::closedir(d); }
  } close_proc{proc};
  char path[sizeof "/proc//stat" + sizeof(dirent::d_name)];
  char buf[512];
  for (;;) {
    errno = 0;
    dirent* e = sys::readdir(proc);
    if (e == nullptr) {
      if (errno == EINTR) continue;
      return errno != 0;  // 0: the end, nobody alive found; else unsure: yes
    }
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    std::snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    unique_fd fd(sys::no_eintr([&] { return sys::open(path, O_RDONLY); }));
    if (!fd) {
      if (errno == ENOENT || errno == ESRCH) continue;  // it went away meanwhile
      return true;
    }
    ssize_t n = sys::no_eintr([&] { return sys::read(fd.get(), buf, sizeof buf - 1); });
    if (n < 0 && errno != ESRCH) return true;
    if (n <= 0) continue;
    buf[n] = '\0';
    // "pid (comm) S ppid pgrp ...": comm may contain anything, so parse after the last ')'.
    const char* rp = std::strrchr(buf, ')');
    if (rp == nullptr || rp[1] != ' ') continue;
    char state = rp[2];
    char* end = nullptr;
    std::strtol(rp + 3, &end, 10);              // ppid
    long pgrp = std::strtol(end, nullptr, 10);  // pgrp
    if (pgrp == pgid && state != 'Z' && state != 'X') return true;
  }
}

}  // namespace subprocess::detail
