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
    if (ppid != me) continue;
    // A sanitizer's symbolizer (started by the runtime itself) is not the test's child.
    std::string comm;
    std::getline(std::ifstream(std::string("/proc/") + e->d_name + "/comm"), comm);
    if (comm.find("symbolizer") != std::string::npos || comm == "addr2line") continue;
    kids.push_back({std::atoi(e->d_name), state});
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

struct leak_listener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  std::set<int> before;
  std::set<int> kids_before;  // e.g. a sanitizer's symbolizer, started before the test

  static std::set<int> child_pids() {
    std::set<int> s;
    for (auto k : testing::children()) s.insert(k.pid);
    return s;
  }

  void testCaseStarting(const Catch::TestCaseInfo&) override {
    before = testing::open_fds();
    kids_before = child_pids();
  }

  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    auto new_kids = [&] {
      std::vector<testing::child_info> v;
      for (auto k : testing::children())
        if (!kids_before.count(k.pid)) v.push_back(k);
      return v;
    };
    // Detached children are reaped by a background thread; give it a moment.
    auto kids = new_kids();
    for (int i = 0; i < 100 && !kids.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      kids = new_kids();
    }
    auto after = testing::open_fds();
    if (after == before && kids.empty()) return;
    ++leak_failures;
    std::fprintf(stderr, "\nLEAK in test case \"%s\":\n", stats.testInfo.name.c_str());
    for (int fd : after)
      if (!before.count(fd)) {
        char buf[256] = {};
        auto link = "/proc/self/fd/" + std::to_string(fd);
        (void)!readlink(link.c_str(), buf, sizeof buf - 1);
        std::fprintf(stderr, "  fd %d left open (%s)\n", fd, buf);
      }
    for (int fd : before)
      if (!after.count(fd)) std::fprintf(stderr, "  fd %d was closed by the test\n", fd);
    for (auto k : kids) std::fprintf(stderr, "  child %d left behind (state %c)\n", k.pid, k.state);
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(leak_listener)

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SP_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SP_TEST_SANITIZED 1
#endif
#endif
#if defined(SP_TEST_SANITIZED)
// The sanitizer runtimes start an external symbolizer process (with two pipes) the
// first time they symbolize a stack, e.g. to match a suppression. Start it now, so
// the leak listener counts it as part of the baseline rather than as a leak.
extern "C" int __sanitizer_symbolize_pc(void* pc, const char* fmt, char* out, std::size_t n);
static void start_sanitizer_symbolizer() {
  char buf[256];
  __sanitizer_symbolize_pc(reinterpret_cast<void*>(&start_sanitizer_symbolizer), "%F", buf, sizeof buf);
}
#else
static void start_sanitizer_symbolizer() {}
#endif

int main(int argc, char** argv) {
  subprocess::detail::reaper::instance().ensure_started();
  start_sanitizer_symbolizer();
  int result = Catch::Session().run(argc, argv);
  if (leak_failures > 0) {
    std::fprintf(stderr, "%d test case(s) leaked fds or child processes\n", leak_failures);
    return result != 0 ? result : 1;
  }
  return result;
}
