// Shared test utilities: the helper program, fd and child-process accounting.
#pragma once

#include <set>
#include <string>
#include <vector>

#include <signal.h>

#include <subprocess/subprocess.hpp>

namespace testing {

// Path of tests/helper/sp_helper, set by CMake.
inline const char* helper_path() { return SP_HELPER_PATH; }

// sp_helper with these actions.
inline subprocess::command helper(std::vector<std::string> actions) {
  actions.insert(actions.begin(), helper_path());
  return subprocess::command(std::move(actions));
}

// The fds open in this process.
std::set<int> open_fds();
// Pids whose parent is this process (running or zombie), with their state letter.
struct child_info {
  int pid;
  char state;
};
std::vector<child_info> children();
// Is there a process with this pid (that is not a zombie)?
bool alive(int pid);

// For one scope, the kernel discards every child's exit status: SIGCHLD set to
// SIG_IGN (or, with nocldwait, SA_NOCLDWAIT). Restored after.
struct sigchld_discarding {
  struct sigaction old {};
  explicit sigchld_discarding(bool nocldwait = false) {
    struct sigaction sa {};
    sa.sa_handler = nocldwait ? SIG_DFL : SIG_IGN;
    sa.sa_flags = nocldwait ? SA_NOCLDWAIT : 0;
    ::sigaction(SIGCHLD, &sa, &old);
  }
  ~sigchld_discarding() { ::sigaction(SIGCHLD, &old, nullptr); }
  sigchld_discarding(const sigchld_discarding&) = delete;
  sigchld_discarding& operator=(const sigchld_discarding&) = delete;
};

}  // namespace testing
