// Resource limits: spawning at the fd limit fails cleanly, and a huge fd limit
// does not make spawning slow (the child closes inherited fds with close_range /
// posix_spawn_file_actions_addclosefrom_np, never a loop over every possible fd).
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <exception>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Sets RLIMIT_NOFILE's soft limit for as long as it lives.
struct soft_fd_limit {
  rlimit old{};
  bool ok = false;
  explicit soft_fd_limit(rlim_t soft) {
    ::getrlimit(RLIMIT_NOFILE, &old);
    rlimit r = old;
    r.rlim_cur = soft;
    ok = ::setrlimit(RLIMIT_NOFILE, &r) == 0;
  }
  ~soft_fd_limit() { ::setrlimit(RLIMIT_NOFILE, &old); }
};

// Median wall time of spawning and waiting for `true`, over n runs.
double median_spawn_us(sp::spawn_backend b, int n) {
  std::vector<double> us;
  for (int i = 0; i < n; ++i) {
    auto t0 = clk::now();
    auto p = sp::command{"/bin/true"}.backend(b).spawn();
    p.wait();
    us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

const char* name(sp::spawn_backend b) {
  return b == sp::spawn_backend::posix_spawn ? "posix_spawn" : "clone_vfork";
}

}  // namespace

TEST_CASE("RLIMIT_NOFILE lowered until spawning fails: a clear spawn_error, fd count unchanged") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  auto fds = testing::open_fds();
  // The soft limit that leaves exactly `room` free fd numbers (open fds above it
  // stay usable; new ones must come from below it).
  auto limit_for = [&](int room) {
    for (int l = 1;; ++l) {
      int used =
          static_cast<int>(std::count_if(fds.begin(), fds.end(), [&](int fd) { return fd < l; }));
      if (l - used == room) return l;
    }
  };
  int failures = 0, successes = 0, least_room = -1;
  // UBSan's vptr check probes memory through a pipe the first time it meets a
  // type, which fails when no fd is free and then reports a false "invalid vptr"
  // for the spawn_error thrown at the limit: meet the types here first.
  CHECK(sp::spawn_error(EMFILE, "warm-up", "spawn").code() == std::errc::too_many_files_open);
  // From plenty of room (3 pipes, an ipc socket, a pidfd, some dups) down to none.
  for (int room = 14; room >= 0; --room) {
    INFO(name(b) << ": soft limit " << limit_for(room) << ", leaving " << room << " free fds");
    bool failed = false;
    std::string what;
    // Only the spawn runs under the lowered limit; everything is checked after it
    // is restored (the sanitizers' own checks need a spare fd: UBSan probes memory
    // through a pipe).
    sp::process p;
    std::exception_ptr error;
    {
      soft_fd_limit lim(static_cast<rlim_t>(limit_for(room)));
      REQUIRE(lim.ok);
      try {
        p = testing::helper({"count-stdin"})
                .in(sp::pipe)
                .out(sp::pipe)
                .err(sp::pipe)
                .ipc(3)
                .backend(b)
                .spawn();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) {
      try {
        std::rethrow_exception(error);
      } catch (const sp::spawn_error& e) {
        failed = true;
        what = e.what();
        CHECK(e.code() == std::errc::too_many_files_open);
        CHECK_THAT(e.what(), Catch::Contains("cannot start") && Catch::Contains("sp_helper"));
      } catch (const std::exception& e) {
        FAIL("not a spawn_error: " << e.what());
      }
    } else {
      p.in().close();
      CHECK(p.wait().success());
      CHECK(p.out().read_all() == "0\n");
      p = sp::process();
    }
    (failed ? failures : successes) += 1;
    if (failed && room == 0) WARN(name(b) << " with no fd to spare: " << what);
    if (!failed) least_room = room;
    CHECK(testing::open_fds() == fds);
    CHECK(testing::children().empty());
  }
  CHECK(failures > 0);
  CHECK(successes > 0);
  WARN(name(b) << ": 3 pipes + ipc spawn needs " << least_room << " free fds; tried soft limits "
               << limit_for(0) << ".." << limit_for(14) << ", " << failures << " failed cleanly");
  // And run() reports the same way.
  {
    std::exception_ptr error;
    {
      soft_fd_limit lim(static_cast<rlim_t>(limit_for(2)));
      REQUIRE(lim.ok);
      try {
        sp::run(testing::helper({}).backend(b));
      } catch (...) {
        error = std::current_exception();
      }
    }
    CHECK_THROWS_AS(std::rethrow_exception(error), sp::spawn_error);
  }
  CHECK(testing::open_fds() == fds);
}

TEST_CASE("a huge RLIMIT_NOFILE with fds open near the top does not slow spawning") {
  rlimit hard{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &hard) == 0);
  // 1,048,576 is the container worst case (pain point 6 in PITFALLS.md). Raising
  // the hard limit needs CAP_SYS_RESOURCE; without it, use the highest we may.
  rlim_t want = 1048576;
  {
    rlimit r{want, want};
    rlimit saved = hard;
    if (::setrlimit(RLIMIT_NOFILE, &r) == 0) {
      REQUIRE(::getrlimit(RLIMIT_NOFILE, &hard) == 0);
      (void)saved;
    } else {
      WARN("skipped 1,048,576: cannot raise the hard RLIMIT_NOFILE ("
           << hard.rlim_max << " here); measuring at that instead");
    }
  }
  const rlim_t high = std::min<rlim_t>(hard.rlim_max, want);
  const int runs = 300;
  for (auto b : {sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork}) {
    double base, big;
    {
      soft_fd_limit lim(1024);
      REQUIRE(lim.ok);
      base = median_spawn_us(b, runs);
    }
    {
      soft_fd_limit lim(high);
      REQUIRE(lim.ok);
      // A few fds at the very top, which a close loop would have to reach.
      std::vector<int> top;
      for (int k = 1; k <= 3; ++k) {
        int fd = ::fcntl(0, F_DUPFD_CLOEXEC, static_cast<int>(high) - 10 * k);
        REQUIRE(fd >= static_cast<int>(high) - 10 * k);
        top.push_back(fd);
      }
      // They do not reach the child (it sees only 0, 1, 2).
      auto r = sp::run(testing::helper({"list-fds"}).backend(b));
      CHECK(r.out == "0 1 2\n");
      big = median_spawn_us(b, runs);
      for (int fd : top) ::close(fd);
    }
    WARN(name(b) << ": median spawn+wait of /bin/true " << base << " us at RLIMIT_NOFILE 1024, "
                 << big << " us at " << high << " with fds open near the top (ratio " << big / base
                 << ")");
    CHECK(big < 10 * base);
  }
  ::setrlimit(RLIMIT_NOFILE, &hard);
}
