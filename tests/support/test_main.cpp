// Catch2 main for every test binary. A listener checks after each test case that
// the process has exactly the fds it had before and no child processes (running or
// zombie): every test gets the leak checks without writing them.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <dirent.h>
#include <unistd.h>

#include "testing.hpp"

namespace testing {

std::set<int> open_fds() {
  std::set<int> fds;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return fds;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.' && std::atoi(e->d_name) != dirfd(d)) fds.insert(std::atoi(e->d_name));
  closedir(d);
  return fds;
}

std::vector<child_info> children() {
  std::vector<child_info> kids;
  const int me = getpid();
  DIR* d = opendir("/proc");
  if (!d) return kids;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string s;
    if (!std::getline(f, s)) continue;
    auto rp = s.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream rest(s.substr(rp + 2));
    char state;
    int ppid;
    rest >> state >> ppid;
    if (ppid == me) kids.push_back({std::atoi(e->d_name), state});
  }
  closedir(d);
  return kids;
}

bool alive(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return false;
  auto rp = s.rfind(')');
  return rp != std::string::npos && rp + 2 < s.size() && s[rp + 2] != 'Z' && s[rp + 2] != 'X';
}

}  // namespace testing

namespace {

int leak_failures = 0;

std::string link_of(const std::string& path) {
  char buf[256] = {};
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// A sanitizer starts a symbolizer the first time it symbolizes a stack (for a
// report, or to match a suppression) and keeps it, with a pipe each way, for the
// life of the process. Neither it nor its pipes belong to the test.
bool sanitizer_helper(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(f, comm);
  return comm.rfind("llvm-symbolizer", 0) == 0 || comm == "addr2line";
}

struct census {
  std::vector<testing::child_info> kids;  // without sanitizer helpers
  std::set<std::string> helper_pipes;     // "pipe:[ino]" of their stdin/stdout
};

census take_census() {
  census c;
  for (auto k : testing::children()) {
    if (k.state != 'Z' && sanitizer_helper(k.pid)) {
      for (int fd : {0, 1}) c.helper_pipes.insert(link_of("/proc/" + std::to_string(k.pid) + "/fd/" + std::to_string(fd)));
      continue;
    }
    c.kids.push_back(k);
  }
  return c;
}

struct leak_listener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  std::set<int> before;

  void testCaseStarting(const Catch::TestCaseInfo&) override { before = testing::open_fds(); }

  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    // Detached children are reaped by a background thread; give it a moment.
    auto c = take_census();
    for (int i = 0; i < 100 && !c.kids.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      c = take_census();
    }
    auto& kids = c.kids;
    auto after = testing::open_fds();
    for (auto it = after.begin(); it != after.end();) {
      if (!before.count(*it) && c.helper_pipes.count(link_of("/proc/self/fd/" + std::to_string(*it))))
        it = after.erase(it);
      else
        ++it;
    }
    if (after == before && kids.empty()) return;
    ++leak_failures;
    std::fprintf(stderr, "\nLEAK in test case \"%s\":\n", stats.testInfo.name.c_str());
    for (int fd : after)
      if (!before.count(fd)) {
        std::fprintf(stderr, "  fd %d left open (%s)\n", fd, link_of("/proc/self/fd/" + std::to_string(fd)).c_str());
      }
    for (int fd : before)
      if (!after.count(fd)) std::fprintf(stderr, "  fd %d was closed by the test\n", fd);
    for (auto k : kids) std::fprintf(stderr, "  child %d left behind (state %c)\n", k.pid, k.state);
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(leak_listener)

int main(int argc, char** argv) {
  subprocess::detail::reaper::instance().ensure_started();
  int result = Catch::Session().run(argc, argv);
  if (leak_failures > 0) {
    std::fprintf(stderr, "%d test case(s) leaked fds or child processes\n", leak_failures);
    return result != 0 ? result : 1;
  }
  return result;
}
