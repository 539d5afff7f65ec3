#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;

namespace {
struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("sp_stdio_" + std::to_string(::getpid()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() { fs::remove_all(path); }
};
std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }
}  // namespace

TEST_CASE("stdin settings") {
  SECTION("null: the child reads EOF at once") {
    auto r = sp::run(testing::helper({"count-stdin"}).in(sp::null));
    CHECK(r.out == "0\n");
  }
  SECTION("file") {
    temp_dir d;
    spit(d.path / "in.txt", "hello file\n");
    auto r = sp::run(testing::helper({"cat"}).in(sp::file(d.path / "in.txt")));
    CHECK(r.out == "hello file\n");
  }
  SECTION("a missing input file is a spawn_error naming the file, before anything starts") {
    try {
      sp::run(testing::helper({"cat"}).in(sp::file("/nonexistent/in.txt")));
      FAIL("no exception");
    } catch (const sp::spawn_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK_THAT(e.what(), Catch::Contains("/nonexistent/in.txt") && Catch::Contains("stdin"));
    }
  }
  SECTION("an fd of the parent") {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(::write(fds[1], "via fd\n", 7) == 7);
    ::close(fds[1]);
    auto r = sp::run(testing::helper({"cat"}).in(sp::fd(fds[0])));
    ::close(fds[0]);
    CHECK(r.out == "via fd\n");
  }
  SECTION("stdin cannot be merged") {
    CHECK_THROWS_AS(testing::helper({}).in(sp::merge_with_out), sp::argument_error);
  }
}

TEST_CASE("stdout and stderr settings") {
  temp_dir d;
  SECTION("null discards") {
    auto r = sp::run(testing::helper({"out", "x", "err", "y"}).out(sp::null).err(sp::null));
    CHECK(r.out.empty());
    CHECK(r.err.empty());
    CHECK(r.success());
  }
  SECTION("file truncates by default") {
    spit(d.path / "o.txt", "old content that is long\n");
    sp::run(testing::helper({"out", "new"}).out(sp::file(d.path / "o.txt")));
    CHECK(slurp(d.path / "o.txt") == "new\n");
  }
  SECTION("file in append mode") {
    spit(d.path / "o.txt", "first\n");
    sp::run(testing::helper({"out", "second"}).out(sp::file(d.path / "o.txt", sp::file_mode::append)));
    CHECK(slurp(d.path / "o.txt") == "first\nsecond\n");
  }
  SECTION("an unwritable output file is a spawn_error") {
    CHECK_THROWS_WITH(sp::run(testing::helper({}).out(sp::file("/nonexistent/dir/o.txt"))),
                      Catch::Contains("/nonexistent/dir/o.txt") && Catch::Contains("stdout"));
  }
  SECTION("stderr merged into stdout keeps the order of writes") {
    auto r = sp::run(testing::helper({"out", "1", "err", "2", "out", "3"}).err(sp::merge_with_out));
    CHECK(r.out == "1\n2\n3\n");
    CHECK(r.err.empty());
  }
  SECTION("stdout merged into stderr") {
    auto r = sp::run(testing::helper({"out", "1", "err", "2"}).out(sp::merge_with_err));
    CHECK(r.err == "1\n2\n");
    CHECK(r.out.empty());
  }
  SECTION("merge into a file") {
    sp::run(testing::helper({"out", "a", "err", "b"})
                .out(sp::file(d.path / "both.txt"))
                .err(sp::merge_with_out));
    CHECK(slurp(d.path / "both.txt") == "a\nb\n");
  }
  SECTION("merging both ways at once is rejected") {
    CHECK_THROWS_AS(testing::helper({}).out(sp::merge_with_err).err(sp::merge_with_out).spawn(),
                    sp::argument_error);
  }
  SECTION("swapping stdout and stderr through fds works (sources never clobbered)") {
    int o[2], e[2];
    REQUIRE(::pipe2(o, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(e, O_CLOEXEC) == 0);
    auto p = testing::helper({"out", "to-out", "err", "to-err"}).out(sp::fd(e[1])).err(sp::fd(o[1])).spawn();
    ::close(o[1]);
    ::close(e[1]);
    CHECK(p.wait().success());
    sp::pipe_reader ro{sp::detail::unique_fd(o[0])}, re{sp::detail::unique_fd(e[0])};
    CHECK(ro.read_all() == "to-err\n");
    CHECK(re.read_all() == "to-out\n");
  }
  SECTION("an fd that is not open is a spawn_error") {
    CHECK_THROWS_AS(testing::helper({}).out(sp::fd(987)).spawn(), sp::spawn_error);
  }
}

TEST_CASE("map_fd gives the child extra fds") {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  auto p = sp::command::shell("echo through-fd-5 >&5").map_fd(5, fds[1]).spawn();
  ::close(fds[1]);
  CHECK(p.wait().success());
  sp::pipe_reader r{sp::detail::unique_fd(fds[0])};
  CHECK(r.read_all() == "through-fd-5\n");
  SECTION("the child sees exactly 0, 1, 2 and the mapped fd") {
    int z = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    auto out = sp::run(testing::helper({"list-fds"}).map_fd(7, z)).out;
    ::close(z);
    CHECK(out == "0 1 2 7\n");
  }
  SECTION("bad mappings are rejected") {
    CHECK_THROWS_AS(testing::helper({}).map_fd(1, 0), sp::argument_error);
    CHECK_THROWS_AS(testing::helper({}).map_fd(4, -1), sp::argument_error);
    CHECK_THROWS_AS(testing::helper({}).map_fd(4, 999).spawn(), sp::spawn_error);
  }
}

TEST_CASE("fds between mapped fds are closed too, with either back end") {
  auto b = GENERATE(sp::spawn_backend::posix_spawn, sp::spawn_backend::clone_vfork);
  // Non-close-on-exec fds at 3..6 in the parent (as ctest hands us some).
  int z = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::vector<int> leaky;
  for (int i = 0; i < 4; ++i) leaky.push_back(::fcntl(z, F_DUPFD, 3));
  auto out = sp::run(testing::helper({"list-fds"}).map_fd(100, z).backend(b)).out;
  for (int f : leaky) ::close(f);
  ::close(z);
  CHECK(out == "0 1 2 100\n");
}
