// The properties the fuzz targets check, shared with the normal test suite
// (test_fuzz_corpus.cpp replays every corpus and regression input through them,
// with any compiler). Each check_* takes raw fuzz bytes and throws
// property_failure when the library breaks a promise; the library's own
// argument_error for bad input is an allowed outcome, not a failure.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <subprocess/command.hpp>
#include <subprocess/environment.hpp>

namespace fuzz {

struct property_failure : std::logic_error {
  using std::logic_error::logic_error;
};

inline void require(bool ok, const std::string& what) {
  if (!ok) throw property_failure(what);
}

// ---------------------------------------------------------------- .env parser --

// Writes an environment back as .env text that parse() must read back exactly:
// every value double-quoted with \\ \" \n \r \t escapes.
inline std::string to_dotenv(const subprocess::environment& env) {
  std::string s;
  for (const auto& [k, v] : env) {
    s += k;
    s += "=\"";
    for (char c : v) {
      switch (c) {
        case '\\':
          s += "\\\\";
          break;
        case '"':
          s += "\\\"";
          break;
        case '\n':
          s += "\\n";
          break;
        case '\r':
          s += "\\r";
          break;
        case '\t':
          s += "\\t";
          break;
        default:
          s += c;
      }
    }
    s += "\"\n";
  }
  return s;
}

// parse() either rejects the text with argument_error or returns variables that
// are all valid, and writing those back and parsing again gives the same set.
inline void check_env_parse(std::string_view text) {
  subprocess::environment env;
  try {
    env = subprocess::environment::parse(text, "fuzz");
  } catch (const subprocess::argument_error&) {
    return;
  }
  for (const auto& [k, v] : env) {
    require(!k.empty(), "empty name accepted");
    require(k.find('=') == std::string::npos && k.find('\0') == std::string::npos,
            "bad name accepted: " + k);
    require(v.find('\0') == std::string::npos, "NUL in value accepted for " + k);
  }
  std::string again = to_dotenv(env);
  subprocess::environment back;
  try {
    back = subprocess::environment::parse(again, "round trip");
  } catch (const subprocess::argument_error& e) {
    throw property_failure(std::string("round trip rejected: ") + e.what() + "\n" + again);
  }
  require(back == env, "round trip changed the environment:\n" + again);
}

// ------------------------------------------------------------------ expand() --

// A fixed environment to expand against: set, empty, and values that look like
// references themselves (expand must not expand its results again).
inline subprocess::environment expand_env() {
  return subprocess::environment::empty()
      .set("A", "alpha")
      .set("EMPTY", "")
      .set("REF", "${A}")
      .set("DOLLAR", "$")
      .set("_u9", "under");
}

// expand() either rejects the text with argument_error or returns a string;
// text without '$' comes back unchanged; a reference to a variable whose value
// contains "${A}" yields that text literally (no second expansion).
inline void check_env_expand(std::string_view text) {
  auto env = expand_env();
  std::string out;
  try {
    out = env.expand(text);
  } catch (const subprocess::argument_error&) {
    return;
  }
  if (text.find('$') == std::string_view::npos) require(out == text, "text without '$' changed");
  // Wrapping in a known reference must give "alpha" + the same result (or an error).
  try {
    std::string wrapped = env.expand(std::string("${A}") + std::string(text));
    require(wrapped == "alpha" + out, "expansion depends on what precedes it");
  } catch (const subprocess::argument_error&) {
    throw property_failure("prefix ${A} turned a valid text into an error");
  }
}

// ------------------------------------------------------------ shell quoting --

// A reference reader for the sh words command::to_string() produces, written
// from the POSIX rules rather than from the quoting code: words separated by
// one space; in a word, '...' quotes everything up to the next ', a backslash
// quotes the next character, and any other character stands for itself only
// if POSIX gives it no special meaning there. Returns false (and why) when the
// text would not mean "exactly these words" to sh.
struct parsed_words {
  std::vector<std::string> words;
  bool first_word_quoted = false;
};

inline bool sh_plain_char(unsigned char c, bool word_start) {
  if (c < 0x20 || c >= 0x7f) return false;  // controls, DEL, non-ASCII: leave to quotes
  if (std::string_view("|&;<>()$`\\\"' \t\n*?[]{}!^").find(static_cast<char>(c)) !=
      std::string_view::npos)
    return false;
  if (word_start && (c == '#' || c == '~')) return false;
  return true;
}

inline parsed_words parse_sh_words(std::string_view s) {
  parsed_words r;
  std::size_t i = 0;
  while (i <= s.size()) {
    std::string w;
    bool quoted = false;
    std::size_t start = i;
    while (i < s.size() && s[i] != ' ') {
      char c = s[i];
      if (c == '\'') {
        std::size_t end = s.find('\'', i + 1);
        require(end != std::string_view::npos, "unterminated single quote");
        w.append(s.substr(i + 1, end - i - 1));
        i = end + 1;
        quoted = true;
      } else if (c == '\\') {
        require(i + 1 < s.size() && s[i + 1] != '\n', "dangling backslash");
        w += s[i + 1];
        i += 2;
        quoted = true;
      } else {
        require(sh_plain_char(static_cast<unsigned char>(c), i == start),
                "unquoted special character '" + std::string(1, c) + "'");
        w += c;
        ++i;
      }
    }
    require(i > start, "empty word (two spaces, or a leading/trailing space)");
    if (r.words.empty()) r.first_word_quoted = quoted;
    r.words.push_back(std::move(w));
    if (i == s.size()) break;
    ++i;  // the space
  }
  return r;
}

inline bool sh_reserved_or_assignment(std::string_view w) {
  if (w.find('=') != std::string_view::npos) return true;
  for (std::string_view r :
       {"case",  "do",    "done",     "elif",   "else", "esac",   "fi", "for", "if", "in", "then",
        "until", "while", "function", "select", "time", "coproc", "!",  "{",   "}",  "[[", "]]"})
    if (w == r) return true;
  return false;
}

// Bytes split on NUL into an argv (arguments cannot contain NUL); to_string()
// read back by the reference reader must give the same argv, and the program
// name must not be read by sh as an assignment or a reserved word.
inline std::vector<std::string> argv_from_bytes(std::string_view data) {
  std::vector<std::string> argv;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= data.size(); ++i)
    if (i == data.size() || data[i] == '\0') {
      argv.emplace_back(data.substr(start, i - start));
      start = i + 1;
    }
  return argv;
}

inline void check_shell_quote(std::string_view data) {
  auto argv = argv_from_bytes(data);
  std::string line = subprocess::command(argv).to_string();
  parsed_words p = parse_sh_words(line);
  require(p.words == argv, "to_string() does not read back as the same argv: " + line);
  require(p.first_word_quoted || !sh_reserved_or_assignment(p.words[0]),
          "sh would not run the program named '" + p.words[0] + "': " + line);
  for (const auto& a : argv) {
    std::string q = subprocess::shell_quote(a);
    auto one = parse_sh_words(q);
    require(one.words.size() == 1 && one.words[0] == a, "shell_quote() of one word: " + q);
  }
}

}  // namespace fuzz
