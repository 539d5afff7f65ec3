// Lesson 04: environment variables.
//
// Every process carries a list of NAME=value strings and hands a copy to each child
// it starts. This lesson shows how to give a child exactly the environment it
// should have: all of ours, none of ours, a whitelist, computed values, one
// configuration per deployment, and never our secrets.
//
// Run with no arguments. The program starts standard tools (sh) and itself in a
// "worker" role (sp::command::self) to show what a child really receives.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;

namespace {

// Prints what a child wrote, indented (3 spaces, like every section's output).
void show(const std::string& text, int indent = 3) {
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    fmt::print("{:{}}{}\n", "", indent, std::string_view(text).substr(start, nl - start));
    start = nl + 1;
  }
}

void section(int n, const char* title, const char* subtitle) {
  fmt::print("\n{}. {}\n   {}\n", n, title, subtitle);
}

std::string getenv_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// ---- worker roles: what the child side runs ----------------------------------

// Section 4: a child that reads its settings from the environment.
int worker_app_settings() {
  std::string mode = getenv_or("NODE_ENV", "");
  fmt::print("NODE_ENV: {}\n", mode);
  fmt::print("DEBUG: {}\n", getenv_or("DEBUG", ""));
  fmt::print("MAX_WORKERS: {}\n", getenv_or("MAX_WORKERS", ""));
  fmt::print("API_KEY: {}\n", std::getenv("API_KEY") ? "SET" : "NOT SET");
  fmt::print("Running in {} mode\n", mode == "production" ? "PRODUCTION" : "DEVELOPMENT");
  return 0;
}

// Section 6: a child that turns its environment into a typed configuration.
int worker_config() {
  std::string workers = getenv_or("WORKERS", "1");
  fmt::print(
      "{{\"environment\": \"{}\", \"port\": {}, \"database\": \"{}:{}\", \"cache\": {}, "
      "\"workers\": {}}}\n",
      getenv_or("APP_ENV", "?"), std::atoi(getenv_or("PORT", "0").c_str()),
      getenv_or("DB_HOST", "?"), getenv_or("DB_PORT", "?"),
      getenv_or("CACHE_ENABLED", "false") == "true" ? "true" : "false", std::atoi(workers.c_str()));
  return 0;
}

// Section 7: a child that lists everything it received, secrets redacted.
int worker_list_env() {
  fmt::print("{}", sp::environment::inherit().redacted());
  return 0;
}

// ---- the lesson ---------------------------------------------------------------

void inherit_parent_env() {
  section(1, "Inherit Parent Environment", "By default a child gets a copy of the parent's environment");
  // Changing our own environment is fine here: this program has no other threads.
  ::setenv("CUSTOM_VAR", "from-parent", 1);
  ::setenv("APP_ENV", "development", 1);
  auto r = sp::run(sp::command::shell(
      "echo \"CUSTOM_VAR=$CUSTOM_VAR\"; echo \"APP_ENV=$APP_ENV\"; "
      "printf 'PATH=%s' \"$PATH\" | head -c 50; echo ..."));
  show(r.out);
  fmt::print("   (Child inherited all environment variables)\n");
}

void custom_isolated_env() {
  section(2, "Custom Isolated Environment", "The child gets only the variables we list");
  auto env = sp::environment::empty()
                 .set("CUSTOM_VAR", "isolated")
                 .set("APP_ENV", "production")
                 .set("PATH", "/usr/bin:/bin");
  auto r = sp::run(sp::command::shell("echo \"CUSTOM_VAR=$CUSTOM_VAR\"; echo \"APP_ENV=$APP_ENV\"; "
                                      "echo \"HOME=$HOME (empty: not passed)\"")
                       .env(env));
  show(r.out);
}

void selective_inheritance() {
  section(3, "Selective Inheritance", "Pass PATH on, keep the parent's secrets at home");
  ::setenv("API_SECRET", "super-secret-key", 1);
  ::setenv("DB_PASSWORD", "hunter2", 1);
  auto env = sp::environment::only({"PATH"})  // a whitelist: nothing else comes along
                 .set("NODE_ENV", "production")
                 .set("API_URL", "https://api.example.com");
  auto r = sp::run(sp::command::shell(
                       "echo \"API_SECRET='$API_SECRET'\"; echo \"DB_PASSWORD='$DB_PASSWORD'\"; "
                       "echo \"API_URL=$API_URL\"; "
                       "if [ -n \"$PATH\" ]; then echo 'PATH exists: yes'; else echo 'PATH exists: no'; fi")
                       .env(env));
  show(r.out);
}

void env_for_child_programs() {
  section(4, "Environment for Child Programs", "The same program, configured two ways");
  auto dev = sp::environment::inherit()
                 .set("NODE_ENV", "development")
                 .set("DEBUG", "*")
                 .set("MAX_WORKERS", "2")
                 .unset("API_KEY");
  auto prod = sp::environment::inherit()
                  .set("NODE_ENV", "production")
                  .set("DEBUG", "app:error")
                  .set("MAX_WORKERS", "8")
                  .set("API_KEY", "prod-api-key");
  fmt::print("   Development run:\n");
  show(sp::run(sp::command::self({"--worker", "app-settings"}).env(dev), {.check = true}).out, 5);
  fmt::print("   Production run:\n");
  show(sp::run(sp::command::self({"--worker", "app-settings"}).env(prod), {.check = true}).out, 5);
}

void interpolation() {
  section(5, "Variable Interpolation", "Build values from other values, without a shell");
  auto env = sp::environment::only({"PATH"}).set("APP_NAME", "MyApp").set("APP_VERSION", "1.2.3");
  env.set_expanded("APP_FULL", "${APP_NAME} v${APP_VERSION}");
  // ${DEPLOY_ENV:-staging}: the default applies because DEPLOY_ENV is not set.
  env.set_expanded("LOG_FILE", "/var/log/${APP_NAME}-${DEPLOY_ENV:-staging}.log");
  auto r = sp::run(sp::command::shell("echo \"APP_NAME=$APP_NAME\"; echo \"APP_VERSION=$APP_VERSION\"; "
                                      "echo \"APP_FULL=$APP_FULL\"; echo \"LOG_FILE=$LOG_FILE\"")
                       .env(env));
  show(r.out);
}

void configuration_pattern() {
  section(6, "Configuration Pattern", "One .env file per deployment, loaded with environment::from_file");
  // The config files live in a private temporary directory, removed at the end.
  char tmpl[] = "/tmp/lesson04-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);
  std::ofstream(dir / "development.env") << "APP_ENV=development\nPORT=3000\nDB_HOST=localhost\n"
                                            "DB_PORT=5432\nCACHE_ENABLED=false\n";
  std::ofstream(dir / "staging.env") << "APP_ENV=staging\nPORT=8080\nDB_HOST=staging-db.example.com\n"
                                        "DB_PORT=5432\nCACHE_ENABLED=true\nWORKERS=2\n";
  std::ofstream(dir / "production.env") << "# production\nAPP_ENV=production\nPORT=80\n"
                                           "DB_HOST=prod-db.example.com\nDB_PORT=5432\n"
                                           "CACHE_ENABLED=true\nWORKERS=8\n";
  for (const char* name : {"development", "staging", "production"}) {
    auto env = sp::environment::only({"PATH"}).merge(
        sp::environment::from_file(dir / (std::string(name) + ".env")));
    auto r = sp::run(sp::command::self({"--worker", "config"}).env(env), {.check = true});
    fmt::print("   {}:\n", name);
    show(r.out, 5);
  }
  std::filesystem::remove_all(dir);
}

void security_best_practice() {
  section(7, "Security Best Practice", "Whitelist what a child needs; never pass secrets by accident");
  fmt::print("   BAD PRACTICE (not executed): .env(sp::environment::inherit())\n");
  fmt::print("   passes every secret of the parent to the child.\n\n");
  ::setenv("DB_SECRET", "db-secret-value", 1);
  ::setenv("API_SECRET", "api-secret-value", 1);
  fmt::print("   GOOD PRACTICE: only PATH, NODE_ENV and APP_NAME\n");
  auto env = sp::environment::only({"PATH"}).set("NODE_ENV", "production").set("APP_NAME", "SecureApp");
  auto r = sp::run(sp::command::self({"--worker", "list-env"}).env(env), {.check = true});
  fmt::print("   The child received:\n");
  show(r.out, 5);
  fmt::print("\n   Best practices:\n");
  fmt::print("   1. Whitelist variables: environment::only({{...}})\n");
  fmt::print("   2. Never pass secrets a child does not need\n");
  fmt::print("   3. Give children a minimal PATH\n");
  fmt::print("   4. Keep one configuration per environment\n");
  fmt::print("   5. Validate values (${{NAME:?message}} fails loudly when one is missing)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--worker") {
    std::string role = argv[2];
    if (role == "app-settings") return worker_app_settings();
    if (role == "config") return worker_config();
    if (role == "list-env") return worker_list_env();
    fmt::print(stderr, "unknown worker role {}\n", role);
    return 2;
  }
  fmt::print("=== Environment Variables Examples ===\n");
  inherit_parent_env();
  custom_isolated_env();
  selective_inheritance();
  env_for_child_programs();
  interpolation();
  configuration_pattern();
  security_best_practice();
  fmt::print("\n=== All Examples Completed ===\n");
  return 0;
}
