// The fuzz targets' properties (tests/fuzz/properties.hpp) over their seed
// corpora and the inputs of every bug they (or a review) found, with any
// compiler; plus the one check a pure-C++ property cannot make: a real /bin/sh
// reads command::to_string() back as the same argv.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <subprocess/subprocess.hpp>

#include "../tests/fuzz/properties.hpp"
#if defined(SP_FUZZ_IPC)
#include "../tests/fuzz/properties_ipc.hpp"
#endif
#include "testing.hpp"

namespace sp = subprocess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Every file under tests/fuzz/{corpus,regressions}/<target>/.
std::vector<fs::path> inputs(const std::string& target) {
  std::vector<fs::path> v;
  for (const char* kind : {"corpus", "regressions"}) {
    fs::path d = fs::path(SUBPROCESS_FUZZ_DIR) / kind / target;
    if (!fs::exists(d)) continue;
    for (const auto& e : fs::directory_iterator(d))
      if (e.is_regular_file()) v.push_back(e.path());
  }
  return v;
}

template <class Check>
std::size_t replay(const std::string& target, Check check) {
  auto files = inputs(target);
  for (const auto& f : files) {
    INFO(f.string());
    CHECK_NOTHROW(check(slurp(f)));
  }
  return files.size();
}

}  // namespace

TEST_CASE("fuzz corpora and regression inputs still pass their properties") {
  CHECK(replay("env_parse", fuzz::check_env_parse) >= 10);
  CHECK(replay("env_expand", fuzz::check_env_expand) >= 10);
  CHECK(replay("shell_quote", fuzz::check_shell_quote) >= 10);
#if defined(SP_FUZZ_IPC)
  CHECK(replay("json_decode", fuzz::check_json_decode) >= 10);
  CHECK(replay("ipc_framing", fuzz::check_ipc_framing) >= 10);
#endif
}

TEST_CASE("regression: deeply nested ${X:-...} defaults are an error, not a stack overflow") {
  // 200,000 levels (1.2 MB of text) crashed expand() with SIGSEGV and 20,000 took
  // half a second (quadratic): found while writing the expand fuzz target.
  std::string s;
  for (int i = 0; i < 200000; ++i) s += "${X:-";
  s += "v";
  s += std::string(200000, '}');
  auto env = sp::environment::empty();
  CHECK_THROWS_WITH(env.expand(s), Catch::Contains("nested more than 32"));
  std::string ok;
  for (int i = 0; i < sp::environment::max_expand_depth; ++i) ok += "${X:-";
  ok += "v" + std::string(static_cast<std::size_t>(sp::environment::max_expand_depth), '}');
  CHECK(env.expand(ok) == "v");
}

TEST_CASE("regression: a program name sh would read as an assignment or reserved word") {
  CHECK(sp::command{"A=b", "true"}.to_string() == "'A=b' true");
  CHECK(sp::command{"if", "x"}.to_string() == "'if' x");
  CHECK(sp::command{"x", "if", "A=b"}.to_string() == "x if A=b");  // arguments are fine as they are
  // Before the fix sh ran `true` with A=b set (exit 0): now it looks for a program
  // called "A=b" and does not find it (127), like the argv asked.
  CHECK(sp::run(sp::command::shell(sp::command{"A=b", "true"}.to_string())).status ==
        sp::exit_status::exited(127));
  CHECK(sp::run(sp::command::shell(sp::command{"if", "true"}.to_string())).status ==
        sp::exit_status::exited(127));
}

TEST_CASE("to_string() read back by a real /bin/sh gives the same argv") {
  // printf '%s\0' ARGS... prints each argument NUL-terminated: split and compare.
  std::mt19937 rng(12345);
  const std::string alphabet =
      std::string("aZ09 _-=+@%:,./~#!*?[]{}()<>|&;$`\\\"'\t\n") + "\x01\x7f\xc3\xa9";
  auto random_arg = [&] {
    std::string a;
    std::size_t n = rng() % 12;
    for (std::size_t i = 0; i < n; ++i) a += alphabet[rng() % alphabet.size()];
    return a;
  };
  for (int round = 0; round < 20; ++round) {
    std::vector<std::string> args;
    for (int i = 0; i < 25; ++i) args.push_back(random_arg());
    if (round == 0)
      args = {"", "'", "''", "it's", "a'b'c", "$(reboot)", "`id`", "${HOME}", "*", "~", "#"};
    std::vector<std::string> argv{"printf", "%s\\0"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string line = sp::command(argv).to_string();
    auto r = sp::run(sp::command::shell(line), {.timeout = 10s});
    INFO(line);
    REQUIRE(r.success());
    std::vector<std::string> back;
    std::size_t start = 0;
    for (std::size_t i = 0; i < r.out.size(); ++i)
      if (r.out[i] == '\0') {
        back.push_back(r.out.substr(start, i - start));
        start = i + 1;
      }
    CHECK(back == args);
  }
}

TEST_CASE("regression: after 'export', a '#' or CR cannot start a variable name") {
  // Found by fuzz_env_parse: "export #=x" defined a variable named "#", which
  // cannot be written back (a line starting with '#' is a comment).
  CHECK_THROWS_AS(sp::environment::parse("export #=x\n"), sp::argument_error);
  CHECK_THROWS_AS(sp::environment::parse("export \rX=1\n"), sp::argument_error);
  CHECK(sp::environment::parse("export X=1 # ok\n").get("X") == "1");
}
