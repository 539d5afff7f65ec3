// subprocess/environment.hpp - the environment a child starts with.
//
// Every process has a list of NAME=value strings (its environment) that it hands down
// to its children. By default a child gets a copy of its parent's. That is convenient
// and also how secrets leak: the API token in your shell ends up in every tool you
// start. environment lets you say exactly what the child gets (command::env()).
//
//   ```cpp
//   auto env = sp::environment::inherit()            // start from ours...
//                  .set("LC_ALL", "C")                // ...change one
//                  .unset("AWS_SECRET_ACCESS_KEY");   // ...drop one
//   auto min = sp::environment::only({"PATH", "HOME"})  // whitelist: the safe default
//                  .set("APP_ENV", "production");
//   std::string bin = env.expand("${HOME}/bin:$PATH");  // shell-style, no shell involved
//   std::cout << env.redacted();   // printable: secrets and URL passwords hidden
//   // sp::command{"printenv"}.env(min).spawn();        (command.hpp)
//   ```
//
// from_file(".env") reads KEY=value lines; each function is described below.
//
// An environment is a value: copies are independent, and building one never touches
// the real environment of this process (no setenv, which is not thread-safe). Names
// are case-sensitive and kept sorted.
// Errors: invalid input is rejected at once with an argument_error naming the
// variable: an empty name, a name containing '=' or a NUL byte, a value containing a
// NUL byte. expand() and from_file() report bad text the same way (from_file() names
// the file and line).
// Blocking: only from_file() does I/O (it reads the file).
// Threads: inherit() and only() read this process's environment (environ). Like
// getenv, they race with a concurrent setenv/putenv in another thread; C++ programs
// should not call setenv once threads run.
// Cost: a sorted map of strings; inherit() copies the whole environment; expand() is
// linear in the text.
#pragma once

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "detail/printing.hpp"
#include "detail/syscall.hpp"
#include "detail/unique_fd.hpp"
#include "error.hpp"

extern "C" char** environ;  // NOLINT: POSIX declares it only with _GNU_SOURCE

namespace subprocess {

class environment {
 public:
  using map_type = std::map<std::string, std::string, std::less<>>;

  // An empty environment: the child gets no variables at all (not even PATH;
  // the library still finds the program with the PATH you give, or /bin:/usr/bin).
  static environment empty() { return environment(); }

  // A copy of this process's environment, taken now.
  static environment inherit() {
    environment e;
    for (char** p = environ; p != nullptr && *p != nullptr; ++p) {
      std::string_view kv(*p);
      auto eq = kv.find('=');
      if (eq == std::string_view::npos || eq == 0) continue;  // malformed entries are skipped
      // getenv() returns the first of duplicate entries; keep the same one.
      e.vars_.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
    }
    return e;
  }

  // Only these variables of this process's environment (those that are set).
  // The safe default for children that should not see your secrets.
  static environment only(std::initializer_list<std::string_view> names) {
    return only(std::vector<std::string_view>(names));
  }
  template <class Range>
  static environment only(const Range& names) {
    environment all = inherit(), e;
    for (std::string_view n : names) {
      check_name(n);
      if (auto it = all.vars_.find(n); it != all.vars_.end()) e.vars_.insert(*it);
    }
    return e;
  }

  // Parses a .env file: NAME=value lines, '#' comments, blank lines, an optional
  // "export " prefix, 'single-quoted' (literal) and "double-quoted" values
  // (\n \t \" \\ escapes; may span lines). No interpolation happens: use expand().
  // Errors name the file and line.
  static environment from_file(const std::filesystem::path& path) {
    auto fail = [&](int e) {
      SUBPROCESS_THROW(argument_error("", "cannot read environment file '" + path.string() +
                                   "': " + detail::errno_text(e)));
    };
    detail::unique_fd fd(detail::sys::no_eintr([&] { return detail::sys::open(path.c_str(), O_RDONLY); }));
    if (!fd) fail(errno);
    std::string text;
    char buf[16384];
    for (;;) {
      ssize_t n = detail::sys::no_eintr([&] { return detail::sys::read(fd.get(), buf, sizeof buf); });
      if (n == 0) break;
      if (n < 0) fail(errno);
      text.append(buf, static_cast<std::size_t>(n));
    }
    return parse(text, path.string());
  }
  // Same as from_file, from text. `origin` names the source in error messages.
  static environment parse(std::string_view text, std::string_view origin = "<string>");

  // Sets (or replaces) one variable.
  environment& set(std::string_view name, std::string_view value) & {
    check_name(name);
    check_value(name, value);
    vars_.insert_or_assign(std::string(name), std::string(value));
    return *this;
  }
  environment&& set(std::string_view name, std::string_view value) && {
    return std::move(set(name, value));
  }
  // Removes one variable; no error if it is not set.
  environment& unset(std::string_view name) & {
    check_name(name);
    if (auto it = vars_.find(name); it != vars_.end()) vars_.erase(it);
    return *this;
  }
  environment&& unset(std::string_view name) && { return std::move(unset(name)); }
  // Copies every variable of `other` in, replacing those with the same name.
  environment& merge(const environment& other) & {
    for (const auto& [k, v] : other.vars_) vars_.insert_or_assign(k, v);
    return *this;
  }
  environment&& merge(const environment& other) && { return std::move(merge(other)); }

  std::optional<std::string> get(std::string_view name) const {
    auto it = vars_.find(name);
    return it == vars_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  bool contains(std::string_view name) const { return vars_.find(name) != vars_.end(); }
  std::size_t size() const noexcept { return vars_.size(); }
  bool is_empty() const noexcept { return vars_.empty(); }
  // Iterates (name, value) pairs in name order.
  map_type::const_iterator begin() const noexcept { return vars_.begin(); }
  map_type::const_iterator end() const noexcept { return vars_.end(); }

  // Shell-style interpolation against this environment, without a shell:
  //   $NAME, ${NAME}          the value, or "" if unset
  //   ${NAME:-default}        default if NAME is unset or empty (default is expanded too)
  //   ${NAME-default}         default if NAME is unset
  //   ${NAME:?message}        argument_error naming NAME if it is unset or empty
  //   $$                      a literal '$'
  // A '$' not followed by a name or '{' stays as it is. "${" without "}" is an error,
  // and so are defaults nested more than max_expand_depth deep (hostile input
  // could otherwise exhaust the stack). Cost: linear in the text.
  std::string expand(std::string_view text) const { return expand_at(text, 0); }
  static constexpr int max_expand_depth = 32;

  // set(name, expand(text)): build a value from others.
  environment& set_expanded(std::string_view name, std::string_view text) & {
    return set(name, expand(text));
  }

  // True for names that look like they hold secrets. The rule, on the name in upper
  // case: it contains SECRET, PASS (PASSWORD, PASSWD, DB_PASS, PASSPHRASE), PWD
  // (MYSQL_PWD), TOKEN, KEY or CREDENTIAL, and is not exactly PWD or OLDPWD (the
  // shell's working directories, not secrets). It errs towards hiding: BYPASS_CACHE
  // and KEYBOARD_LAYOUT are hidden too.
  static bool is_secret_name(std::string_view name) {
    std::string up(name);
    std::transform(up.begin(), up.end(), up.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    if (up == "PWD" || up == "OLDPWD") return false;
    for (std::string_view w : {"SECRET", "PASS", "PWD", "TOKEN", "KEY", "CREDENTIAL"})
      if (up.find(w) != std::string::npos) return true;
    return false;
  }
  // `value` with the credentials of the URLs in it hidden. In every
  // "scheme://userinfo@host..." (userinfo: what comes between "://" and the last '@'
  // before the next '/', '?', '#' or blank), the password of "user:password@" becomes
  // ***REDACTED*** (the user name stays: postgres://app:***REDACTED***@db/prod), and a
  // userinfo without ':' is hidden whole (it is often a token:
  // https://***REDACTED***@github.com). A password holding an unencoded '/', '?' or
  // '#' (invalid in a URL) is not recognised.
  static std::string redact_url_credentials(std::string_view value) {
    std::string out;
    std::size_t from = 0;  // copied up to here
    for (std::size_t i = value.find("://"); i != std::string_view::npos;
         i = value.find("://", std::max(i + 3, from))) {
      const std::size_t start = i + 3;
      std::size_t end = start;
      while (end < value.size() && value[end] != '/' && value[end] != '?' && value[end] != '#' &&
             !std::isspace(static_cast<unsigned char>(value[end])))
        ++end;
      const std::size_t at = value.substr(start, end - start).rfind('@');
      if (at == std::string_view::npos || at == 0) continue;
      const std::string_view userinfo = value.substr(start, at);
      const std::size_t colon = userinfo.find(':');
      const std::size_t hide_from = colon == std::string_view::npos ? start : start + colon + 1;
      out.append(value.substr(from, hide_from - from));
      out += "***REDACTED***";
      from = start + at;  // the '@' onwards
    }
    out.append(value.substr(from));
    return out;
  }
  // One "NAME=value" line per variable, safe to log: the values of secret-looking
  // names (is_secret_name) are replaced by ***REDACTED***, and in every other value
  // the credentials of URLs are hidden (redact_url_credentials).
  std::string redacted() const {
    std::string s;
    for (const auto& [k, v] : vars_) {
      s += k;
      s += '=';
      s += is_secret_name(k) ? std::string("***REDACTED***") : redact_url_credentials(v);
      s += '\n';
    }
    return s;
  }

  friend bool operator==(const environment&, const environment&) = default;

  // Throws argument_error unless `name` is a usable variable name.
  static void check_name(std::string_view name) {
    if (name.empty()) SUBPROCESS_THROW(argument_error("", "environment variable name is empty"));
    if (name.find('\0') != std::string_view::npos)
      SUBPROCESS_THROW(argument_error("", "environment variable name '" + printable(name) +
                                   "' contains a NUL byte"));
    if (name.find('=') != std::string_view::npos)
      SUBPROCESS_THROW(argument_error("", "environment variable name '" + std::string(name) +
                                   "' contains '='"));
  }
  static void check_value(std::string_view name, std::string_view value) {
    if (value.find('\0') != std::string_view::npos)
      SUBPROCESS_THROW(argument_error("", "value of environment variable '" + std::string(name) +
                                   "' contains a NUL byte"));
  }

 private:
  static std::string printable(std::string_view s) {
    std::string r;
    for (char c : s) r += c == '\0' ? std::string_view("\\0") : std::string_view(&c, 1);
    return r;
  }
  std::string expand_at(std::string_view text, int nesting) const;
  map_type vars_;
};

inline std::string environment::expand_at(std::string_view t, int nesting) const {
  if (nesting > max_expand_depth)
    SUBPROCESS_THROW(argument_error("", "variable references nested more than " +
                                 std::to_string(max_expand_depth) + " deep"));
  auto is_name_start = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; };
  auto is_name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  std::string out;
  out.reserve(t.size());
  std::size_t i = 0;
  while (i < t.size()) {
    char c = t[i];
    if (c != '$' || i + 1 == t.size()) {
      out += c;
      ++i;
      continue;
    }
    char n = t[i + 1];
    if (n == '$') {
      out += '$';
      i += 2;
    } else if (is_name_start(n)) {
      std::size_t j = i + 1;
      while (j < t.size() && is_name_char(t[j])) ++j;
      if (auto it = vars_.find(t.substr(i + 1, j - i - 1)); it != vars_.end()) out += it->second;
      i = j;
    } else if (n == '{') {
      // Find the matching '}', allowing nested ${...} inside a default.
      std::size_t j = i + 2, depth = 1;
      for (; j < t.size(); ++j) {
        if (t[j] == '{' && t[j - 1] == '$') ++depth;
        if (t[j] == '}' && --depth == 0) break;
      }
      if (j >= t.size())
        SUBPROCESS_THROW(argument_error("", "unterminated '${' in \"" + std::string(t) + "\""));
      std::string_view body = t.substr(i + 2, j - i - 2);
      std::size_t k = 0;
      while (k < body.size() && is_name_char(body[k])) ++k;
      std::string_view name = body.substr(0, k), op = body.substr(k);
      if (name.empty() || !is_name_start(name[0]))
        SUBPROCESS_THROW(argument_error("", "bad variable reference '${" + std::string(body) + "}'"));
      auto it = vars_.find(name);
      bool set = it != vars_.end(), nonempty = set && !it->second.empty();
      if (op.empty()) {
        if (set) out += it->second;
      } else if (op.starts_with(":-")) {
        out += nonempty ? it->second : expand_at(op.substr(2), nesting + 1);
      } else if (op.starts_with("-")) {
        out += set ? it->second : expand_at(op.substr(1), nesting + 1);
      } else if (op.starts_with(":?")) {
        if (!nonempty) {
          std::string msg(op.substr(2));
          SUBPROCESS_THROW(argument_error("", "environment variable '" + std::string(name) + "' " +
                                       (msg.empty() ? "is not set" : expand_at(msg, nesting + 1))));
        }
        out += it->second;
      } else {
        SUBPROCESS_THROW(argument_error("", "bad variable reference '${" + std::string(body) + "}'"));
      }
      i = j + 1;
    } else {
      out += '$';
      ++i;
    }
  }
  return out;
}

inline environment environment::parse(std::string_view text, std::string_view origin) {
  environment env;
  std::size_t i = 0, line = 1;
  auto fail = [&](const std::string& what) {
    SUBPROCESS_THROW(argument_error("", std::string(origin) + ":" + std::to_string(line) + ": " + what));
  };
  auto skip_blanks = [&] {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
  };
  auto rest_of_line_is_comment = [&] {
    skip_blanks();
    if (i < text.size() && text[i] == '#')
      while (i < text.size() && text[i] != '\n') ++i;
    if (i < text.size() && text[i] == '\r') ++i;
    if (i < text.size() && text[i] != '\n') fail("unexpected text after closing quote");
  };
  while (i < text.size()) {
    skip_blanks();
    if (i < text.size() && (text[i] == '\n' || text[i] == '\r' || text[i] == '#')) {
      while (i < text.size() && text[i] != '\n') ++i;
      ++i, ++line;
      continue;
    }
    if (i >= text.size()) break;
    if (text.substr(i).starts_with("export ") || text.substr(i).starts_with("export\t")) {
      i += 7;
      skip_blanks();
      // What would make a line a comment or blank cannot start a name either
      // ("export #=x" once defined a variable named "#"; found by fuzzing).
      if (i < text.size() && (text[i] == '#' || text[i] == '\r')) fail("expected NAME=value after 'export'");
    }
    std::size_t start = i;
    while (i < text.size() && text[i] != '=' && text[i] != '\n' && text[i] != ' ' &&
           text[i] != '\t')
      ++i;
    std::string_view name = text.substr(start, i - start);
    skip_blanks();
    if (name.empty() || i >= text.size() || text[i] != '=') fail("expected NAME=value");
    ++i;  // '='
    skip_blanks();
    std::string value;
    std::size_t start_line = line;
    if (i < text.size() && text[i] == '\'') {
      std::size_t end = text.find('\'', i + 1);
      if (end == std::string_view::npos) fail("unterminated single quote");
      value = text.substr(i + 1, end - i - 1);
      line += static_cast<std::size_t>(std::count(value.begin(), value.end(), '\n'));
      i = end + 1;
      rest_of_line_is_comment();
    } else if (i < text.size() && text[i] == '"') {
      ++i;
      for (;; ++i) {
        if (i >= text.size()) {
          line = start_line;
          fail("unterminated double quote");
        }
        char c = text[i];
        if (c == '"') break;
        if (c == '\n') ++line;
        if (c == '\\' && i + 1 < text.size()) {
          char e = text[++i];
          switch (e) {
            case 'n': value += '\n'; break;
            case 't': value += '\t'; break;
            case 'r': value += '\r'; break;
            default: value += e; break;  // \" \\ \$ and anything else: the character
          }
        } else {
          value += c;
        }
      }
      ++i;  // closing quote
      rest_of_line_is_comment();
    } else {
      std::size_t s = i;
      while (i < text.size() && text[i] != '\n') {
        // " #" starts a comment in an unquoted value; "a#b" is a value.
        if (text[i] == '#' && i > s && (text[i - 1] == ' ' || text[i - 1] == '\t')) break;
        ++i;
      }
      std::string_view v = text.substr(s, i - s);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r'))
        v.remove_suffix(1);
      value = v;
      while (i < text.size() && text[i] != '\n') ++i;
    }
    SUBPROCESS_TRY {
      env.set(name, value);
    } SUBPROCESS_CATCH(const argument_error&, e) {
      fail(e.what());
    }
    ++i, ++line;  // newline
  }
  return env;
}

// Prints redacted(), never the secret values: printing an environment is how secrets
// end up in logs. fmt::format("{}", env) with <subprocess/fmt.hpp> prints the same.
template <class Traits>
std::basic_ostream<char, Traits>& operator<<(std::basic_ostream<char, Traits>& os, const environment& e) {
  return detail::put_text(os, e.redacted());
}

}  // namespace subprocess
