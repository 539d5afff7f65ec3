// tests/bench/spawn_boost.cpp - Boost.Process v2 (Debian libboost1.81-dev, header-only)
// as a peer for figures 1 and 2. Its default launcher on Linux uses fork() and a
// CLOEXEC error pipe. One io_context for all iterations, as an application would.
// Boost 1.81's process/v2 headers with BOOST_PROCESS_USE_STD_FS (so that nothing
// needs linking) forget a few includes and names; supply them first.
#include <boost/optional.hpp>
#include <type_traits>
namespace boost::process::v2 {
using std::decay;
using std::is_convertible;
}  // namespace boost::process::v2

#include <boost/asio/io_context.hpp>
#include <boost/process/v2/process.hpp>
#include <boost/version.hpp>

#include <stdexcept>
#include <string>

#include "bench.hpp"

namespace bp = boost::process::v2;

namespace {

std::vector<bench::sample> boost_spawn(const bench::request& r) {
  boost::asio::io_context ctx;
  std::vector<bench::sample> v;
  for (int i = 0; i < r.iterations; ++i) {
    auto t0 = bench::clock::now();
    bp::process proc(ctx, "/bin/true", {});
    if (proc.wait() != 0) throw std::runtime_error("boost: /bin/true failed");
    v.push_back({double(bench::elapsed_ns(t0)), 0});
  }
  return v;
}

[[maybe_unused]] const bool registered =
    bench::register_impl("spawn/boost", boost_spawn) &&
    bench::register_version("Boost " + std::to_string(BOOST_VERSION / 100000) + "." +
                            std::to_string(BOOST_VERSION / 100 % 1000) + "." + std::to_string(BOOST_VERSION % 100));

}  // namespace
