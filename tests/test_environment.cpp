#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <subprocess/environment.hpp>
#include <subprocess/run.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {
// Sets a variable in this test process for the duration of a test.
struct scoped_setenv {
  std::string name;
  scoped_setenv(const char* n, const char* v) : name(n) { ::setenv(n, v, 1); }
  ~scoped_setenv() { ::unsetenv(name.c_str()); }
};
std::string child_env(const sp::environment& env, const std::string& name) {
  return sp::run(testing::helper({"print-env", name}).env(env)).out;
}
}  // namespace

TEST_CASE("environment builders") {
  scoped_setenv a("SP_TEST_A", "alpha"), s("SP_TEST_SECRET", "hunter2");

  SECTION("inherit copies this process's environment") {
    auto e = sp::environment::inherit();
    CHECK(e.get("SP_TEST_A") == "alpha");
    CHECK(e.contains("PATH"));
    CHECK(child_env(e, "SP_TEST_A") == "alpha\n");
  }
  SECTION("empty gives the child nothing") {
    auto e = sp::environment::empty();
    CHECK(e.is_empty());
    CHECK(sp::run(testing::helper({"print-env-all"}).env(e)).out.empty());
  }
  SECTION("only() whitelists names that are set") {
    auto e = sp::environment::only({"PATH", "SP_TEST_A", "SP_TEST_NOT_SET"});
    CHECK(e.size() == 2);
    CHECK(e.get("SP_TEST_A") == "alpha");
    CHECK_FALSE(e.contains("SP_TEST_SECRET"));
    CHECK(child_env(e, "SP_TEST_SECRET") == "<unset>\n");
  }
  SECTION("set, unset, get, contains, merge") {
    auto e = sp::environment::empty().set("X", "1").set("Y", "2");
    e.set("X", "3").unset("Y").unset("NEVER_SET");
    CHECK(e.get("X") == "3");
    CHECK_FALSE(e.get("Y").has_value());
    CHECK_FALSE(e.contains("Y"));
    auto other = sp::environment::empty().set("X", "4").set("Z", "5");
    e.merge(other);
    CHECK(e.get("X") == "4");
    CHECK(e.get("Z") == "5");
    CHECK(sp::run(testing::helper({"print-env-all"}).env(e)).out == "X=4\nZ=5\n");
  }
  SECTION("values with spaces, quotes, newlines and '=' reach the child intact") {
    std::string v = "a b 'c' \"d\" $HOME =x\nline2";
    CHECK(child_env(sp::environment::empty().set("V", v), "V") == v + "\n");
  }
  SECTION("building never touches the real environment") {
    sp::environment::inherit().set("SP_TEST_A", "changed").unset("PATH");
    CHECK(std::string(std::getenv("SP_TEST_A")) == "alpha");
    CHECK(std::getenv("PATH") != nullptr);
  }
  SECTION("an empty environment still finds programs through /bin:/usr/bin") {
    auto r = sp::run(sp::command{"sh", "-c", "echo ok"}.env(sp::environment::empty()));
    CHECK(r.out == "ok\n");
  }
  SECTION("the child's PATH is used for the program lookup") {
    auto r = sp::run(sp::command{"sp_helper", "out", "found"}.env(sp::environment::empty().set(
        "PATH", std::filesystem::path(testing::helper_path()).parent_path().string())));
    CHECK(r.out == "found\n");
  }
}

TEST_CASE("environment rejects bad names and values, naming the variable") {
  auto e = sp::environment::empty();
  CHECK_THROWS_WITH(e.set("A=B", "x"), Catch::Contains("'A=B'") && Catch::Contains("'='"));
  CHECK_THROWS_WITH(e.set("", "x"), Catch::Contains("empty"));
  CHECK_THROWS_WITH(e.set(std::string("A\0B", 3), "x"), Catch::Contains("NUL"));
  CHECK_THROWS_WITH(e.set("NAME", std::string("v\0w", 3)), Catch::Contains("'NAME'") && Catch::Contains("NUL"));
  CHECK_THROWS_AS(e.unset("A=B"), sp::argument_error);
  CHECK_THROWS_AS(sp::environment::only({"BAD=NAME"}), sp::argument_error);
  CHECK(e.is_empty());
}

TEST_CASE("environment::expand") {
  auto e = sp::environment::empty()
               .set("HOME", "/home/me")
               .set("APP", "MyApp")
               .set("EMPTY", "")
               .set("V", "1.2.3");
  CHECK(e.expand("$HOME/bin") == "/home/me/bin");
  CHECK(e.expand("${APP} v${V}") == "MyApp v1.2.3");
  CHECK(e.expand("/var/log/${APP}-${STAGE:-staging}.log") == "/var/log/MyApp-staging.log");
  CHECK(e.expand("${EMPTY:-fallback}") == "fallback");
  CHECK(e.expand("${EMPTY-fallback}").empty());
  CHECK(e.expand("${UNSET-fallback}") == "fallback");
  CHECK(e.expand("${UNSET:-${APP}}") == "MyApp");
  CHECK(e.expand("$UNSET|") == "|");
  CHECK(e.expand("cost: $$5") == "cost: $5");
  CHECK(e.expand("trailing $") == "trailing $");
  CHECK(e.expand("$1 and $-") == "$1 and $-");
  CHECK(e.expand("${APP:?must be set}") == "MyApp");
  CHECK_THROWS_WITH(e.expand("${NOPE:?must be set}"), Catch::Contains("'NOPE'") && Catch::Contains("must be set"));
  CHECK_THROWS_WITH(e.expand("${APP"), Catch::Contains("unterminated"));
  CHECK_THROWS_AS(e.expand("${}"), sp::argument_error);
  CHECK_THROWS_AS(e.expand("${A B}"), sp::argument_error);
  SECTION("set_expanded builds values from others") {
    e.set_expanded("APP_FULL", "$APP v$V");
    CHECK(e.get("APP_FULL") == "MyApp v1.2.3");
  }
}

TEST_CASE("environment::from_file parses .env files") {
  auto dir = std::filesystem::temp_directory_path() / ("sp_env_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / ".env";
  {
    std::ofstream f(path);
    f << "# a comment\n"
         "\n"
         "PLAIN=value\n"
         "  SPACED  =  padded value   \n"
         "export EXPORTED=yes\n"
         "SINGLE='no $expansion \\n here'\n"
         "DOUBLE=\"line1\\nline2 \\\"q\\\"\"\n"
         "MULTI=\"a\n"
         "b\"\n"
         "INLINE=value # comment\n"
         "HASH=a#b\n"
         "EMPTY=\n"
         "QUOTED_COMMENT='x' # c\n"
         "CRLF=dos\r\n";
  }
  auto e = sp::environment::from_file(path);
  CHECK(e.get("PLAIN") == "value");
  CHECK(e.get("SPACED") == "padded value");
  CHECK(e.get("EXPORTED") == "yes");
  CHECK(e.get("SINGLE") == "no $expansion \\n here");
  CHECK(e.get("DOUBLE") == "line1\nline2 \"q\"");
  CHECK(e.get("MULTI") == "a\nb");
  CHECK(e.get("INLINE") == "value");
  CHECK(e.get("HASH") == "a#b");
  CHECK(e.get("EMPTY") == "");
  CHECK(e.get("QUOTED_COMMENT") == "x");
  CHECK(e.get("CRLF") == "dos");
  CHECK(e.size() == 11);

  SECTION("errors name the file and the line") {
    CHECK_THROWS_WITH(sp::environment::parse("A=1\nnot a pair\n", "cfg.env"),
                      Catch::Contains("cfg.env:2") && Catch::Contains("NAME=value"));
    CHECK_THROWS_WITH(sp::environment::parse("A=\"open\n", "x.env"), Catch::Contains("x.env:1") &&
                                                                     Catch::Contains("unterminated"));
    CHECK_THROWS_WITH(sp::environment::parse("A='x' junk\n"), Catch::Contains("after closing quote"));
    CHECK_THROWS_WITH(sp::environment::from_file(dir / "missing.env"), Catch::Contains("missing.env"));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("environment::redacted hides secret-looking values") {
  auto e = sp::environment::empty()
               .set("PATH", "/usr/bin")
               .set("DB_PASSWORD", "pw")
               .set("api_token", "t")
               .set("AWS_SECRET_ACCESS_KEY", "k")
               .set("GITHUB_CREDENTIALS", "c")
               .set("SSH_KEY_PATH", "p");
  CHECK(e.redacted() ==
        "AWS_SECRET_ACCESS_KEY=***REDACTED***\n"
        "DB_PASSWORD=***REDACTED***\n"
        "GITHUB_CREDENTIALS=***REDACTED***\n"
        "PATH=/usr/bin\n"
        "SSH_KEY_PATH=***REDACTED***\n"
        "api_token=***REDACTED***\n");
  CHECK(sp::environment::is_secret_name("MY_API_KEY"));
  CHECK_FALSE(sp::environment::is_secret_name("HOME"));
}

TEST_CASE("environment::redacted: PASS/PWD names and passwords in URLs") {
  auto e = sp::environment::empty()
               .set("DB_PASS", "a")
               .set("MYSQL_PWD", "b")
               .set("PASSWD", "c")
               .set("PGPASSWORD", "d")
               .set("gpg_passphrase", "e")
               .set("PWD", "/home/me/src")
               .set("OLDPWD", "/home/me")
               .set("DATABASE_URL", "postgres://app:s3cret@db.example:5432/prod?sslmode=require")
               .set("GIT_REMOTE", "https://ghp_abc123@github.com/me/repo.git")
               .set("REDIS_NODES", "redis://:pw1@h1:6379,redis://u:p@w2@h2/0")
               .set("HOMEPAGE", "https://example.com/users/@me")
               .set("PLAIN_URL", "https://example.com:8080/x");
  CHECK(e.redacted() ==
        "DATABASE_URL=postgres://app:***REDACTED***@db.example:5432/prod?sslmode=require\n"
        "DB_PASS=***REDACTED***\n"
        "GIT_REMOTE=https://***REDACTED***@github.com/me/repo.git\n"
        "HOMEPAGE=https://example.com/users/@me\n"
        "MYSQL_PWD=***REDACTED***\n"
        "OLDPWD=/home/me\n"
        "PASSWD=***REDACTED***\n"
        "PGPASSWORD=***REDACTED***\n"
        "PLAIN_URL=https://example.com:8080/x\n"
        "PWD=/home/me/src\n"
        "REDIS_NODES=redis://:***REDACTED***@h1:6379,redis://u:***REDACTED***@h2/0\n"
        "gpg_passphrase=***REDACTED***\n");
  CHECK_FALSE(sp::environment::is_secret_name("pwd"));
  CHECK(sp::environment::is_secret_name("PWD_FILE"));
  // Only the printout is redacted: the child gets the real values.
  auto r = sp::run(sp::command{"printenv", "DATABASE_URL", "MYSQL_PWD"}.env(e), {.timeout = 10s});
  CHECK(r.out == "postgres://app:s3cret@db.example:5432/prod?sslmode=require\nb\n");
}
