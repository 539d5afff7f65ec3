// Shared test utilities: the helper programs, fd and child-process accounting, node.
#pragma once

#include <set>
#include <sstream>
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

#if defined(IPC_HELPER_PATH)  // tests made with subprocess_test(... IPC)
// ipc_helper (tests/helper/ipc_helper.cpp) with these actions and a channel.
inline subprocess::command ipc_child(std::vector<std::string> actions) {
  actions.insert(actions.begin(), IPC_HELPER_PATH);
  return subprocess::command(std::move(actions)).ipc();
}
#endif
#if defined(IPC_SCRIPTS_DIR)
// A script of tests/ipc (Node programs).
inline std::string script(const char* name) { return std::string(IPC_SCRIPTS_DIR) + "/" + name; }
#endif

// Is node on PATH? Tests tagged [node] start with REQUIRE_NODE(): without node they
// say so (WARN) and end, never pass silently; ctest runs them as <name>_node, reported
// as skipped when CMake found no node (subprocess_test(... NODE_TESTS)).
inline bool have_node() { return subprocess::find_program("node").has_value(); }
#define REQUIRE_NODE()                                                \
  do {                                                                \
    if (!::testing::have_node()) {                                    \
      WARN("node is not installed: this Node test did not run");      \
      return;                                                         \
    }                                                                 \
  } while (0)

// What `os << x` prints.
template <class T>
std::string printed(const T& x) {
  std::ostringstream os;
  os << x;
  return os.str();
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
