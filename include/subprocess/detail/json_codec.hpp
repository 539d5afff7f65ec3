// subprocess/detail/json_codec.hpp - fast, strict JSON text <-> nlohmann::json for the
// ipc channel. Not public API.
//
// Why not nlohmann's own parse()/dump()? They handle strings one byte at a time
// (~140 MB/s parsing, ~270 MB/s dumping here), which made a 100 MiB message slower
// than Node's JSON.parse. These scan strings 8 bytes at a time and copy plain runs
// whole. The result is the same: parse() accepts exactly what nlohmann accepts
// (RFC 8259, UTF-8 validated, surrogate pairs checked) and builds the same value
// (non-negative integers unsigned, negative ones signed, the rest double; a repeated
// key keeps its last value); dump() writes exactly what nlohmann's dump() writes
// (tests/test_ipc.cpp compares them on random and mutated documents). Two
// differences: nesting deeper than max_depth is an error here, because recursing
// over such a value (in parse, in dump, in user code) could exhaust the stack; and a
// NUL byte after the value is an error here (nlohmann stops reading at a NUL byte and
// accepts "1\0garbage"; JSON.parse refuses it, and so do we).
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pages.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace subprocess::detail::json_codec {

using json = nlohmann::json;

inline constexpr std::size_t default_max_depth = 1000;

// A parse or encoding error: what() says what and where.
class error : public std::runtime_error {
 public:
  error(const std::string& what, std::size_t offset)
      : std::runtime_error(what + " at byte " + std::to_string(offset)), offset_(offset) {}
  std::size_t offset() const noexcept { return offset_; }

 private:
  std::size_t offset_;
};

// The end of the prefix of [p, end) made of bytes that need no attention inside a
// JSON string: ASCII 0x20..0x7f except '"' and '\\'. 16 bytes per step with SSE2
// (every x86-64), else 8 with plain 64-bit arithmetic.
inline const char* plain_run(const char* p, const char* end) noexcept {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), last_control = _mm_set1_epi8(0x1f);
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                     _mm_cmpeq_epi8(_mm_min_epu8(v, last_control), v));  // <= 0x1f
    const int mask = _mm_movemask_epi8(hit) | _mm_movemask_epi8(v);  // top bit: >= 0x80
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
#endif
  constexpr std::uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  while (end - p >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    const std::uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
    // Set in a byte's top bit when: the byte is >= 0x80, < 0x20, '"' or '\\'. Exact
    // about whether any byte qualifies, which is all this needs.
    const std::uint64_t special = (v | ((v - ones * 0x20) & ~v) | ((q - ones) & ~q) |
                                   ((b - ones) & ~b)) & highs;
    if (special) break;
    p += 8;
  }
  while (p < end) {
    auto c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') break;
    ++p;
  }
  return p;
}

// Length of the valid UTF-8 sequence starting at s (s[0] >= 0x80), or 0 if invalid.
// RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF.
inline std::size_t utf8_sequence(const unsigned char* s, std::size_t left) noexcept {
  auto in = [&](std::size_t i, unsigned lo, unsigned hi) { return i < left && s[i] >= lo && s[i] <= hi; };
  const unsigned c = s[0];
  if (c >= 0xC2 && c <= 0xDF) return in(1, 0x80, 0xBF) ? 2 : 0;
  if (c == 0xE0) return in(1, 0xA0, 0xBF) && in(2, 0x80, 0xBF) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
    return in(1, 0x80, 0xBF) && in(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xED) return in(1, 0x80, 0x9F) && in(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xF0) return in(1, 0x90, 0xBF) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return in(1, 0x80, 0xBF) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  if (c == 0xF4) return in(1, 0x80, 0x8F) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  return 0;
}

// The parts of a JSON-RPC 2.0 message, decoded without building an object (a
// std::map) for its envelope: only params, result and error become json values. See
// parse_rpc().
struct rpc_parts {
  enum class kind { other, request, response };
  kind k = kind::other;
  json id = nullptr;
  bool has_id = false;
  std::string method;       // request
  json params = nullptr;    // request (null when absent)
  json result = nullptr;    // response
  json error = nullptr;     // response (null when absent or null)
  json whole = nullptr;     // other: the whole message
  void clear() {
    k = kind::other;
    id = nullptr;
    has_id = false;
    method.clear();
    params = nullptr;
    result = nullptr;
    error = nullptr;
    whole = nullptr;
  }
};

class parser {
 public:
  parser(std::string_view text, std::size_t max_depth)
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()), max_depth_(max_depth) {}

  json document() {
    json v = value();
    ws();
    if (p_ != end_) fail("unexpected text after the value");
    return v;
  }

  // The envelope of a request ({"jsonrpc", "id"?, "method": string, "params"?}) or of
  // an answer ({"jsonrpc", "id", "result" | "error"}), keys in any order. False for
  // anything else (another key, a method that is not a string, not an object...):
  // the caller then parses the text whole. Throws for text that is not JSON.
  bool rpc(rpc_parts& out) {
    ws();
    if (p_ == end_ || *p_ != '{') return false;
    enter();
    ++p_;
    bool has_method = false, has_result = false, has_error = false;
    std::string buf;  // a key with escapes, decoded
    ws();
    if (p_ < end_ && *p_ == '}') return false;
    for (;;) {
      ws();
      if (p_ == end_ || *p_ != '"') fail("expected a string key");
      // A string_view, not a std::string: std::string == "literal" is an out-of-line
      // compare() with strlen, which with the copy was a quarter of this function.
      const std::string_view key = key_view(buf);
      ws();
      if (p_ == end_ || *p_ != ':') fail("expected ':'");
      ++p_;
      if (key == "jsonrpc") {
        ws();
        if (p_ == end_ || *p_ != '"') return false;
        key_view(buf);  // checked, not kept ("2.0")
      } else if (key == "id") {
        out.id = value();
        out.has_id = true;
      } else if (key == "method") {
        ws();
        if (p_ == end_ || *p_ != '"') return false;
        out.method.clear();
        string(out.method);
        has_method = true;
      } else if (key == "params") {
        out.params = value();
      } else if (key == "result") {
        out.result = value();
        has_result = true;
      } else if (key == "error") {
        out.error = value();
        has_error = true;
      } else {
        return false;
      }
      if (object_ends()) break;
    }
    --depth_;
    ws();
    if (p_ != end_) fail("unexpected text after the value");
    if (has_method && !has_result && !has_error && !(out.has_id && (out.id.is_object() || out.id.is_array()))) {
      out.k = rpc_parts::kind::request;
      return true;
    }
    if (!has_method && out.has_id && (has_result || has_error)) {
      out.k = rpc_parts::kind::response;
      return true;
    }
    return false;
  }

 private:
  // After an object member: true at the closing '}', false after a ',' (more follow).
  bool object_ends() {
    ws();
    if (p_ == end_) fail("unexpected end of input");
    if (*p_ == ',') {
      ++p_;
      return false;
    }
    if (*p_ == '}') {
      ++p_;
      return true;
    }
    fail("expected ',' or '}'");
  }

  [[noreturn]] void fail(const char* what) const {
    throw error(what, static_cast<std::size_t>(p_ - begin_));
  }
  void ws() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  static bool digit(char c) noexcept { return c >= '0' && c <= '9'; }

  json value() {
    ws();
    if (p_ == end_) fail("unexpected end of input");
    switch (*p_) {
      case '{': return object();
      case '[': return array();
      case '"': {
        json s(json::value_t::string);  // the string is parsed straight into the value
        string(s.get_ref<std::string&>());
        return s;
      }
      case 't': literal("true"); return json(true);
      case 'f': literal("false"); return json(false);
      case 'n': literal("null"); return json(nullptr);
      default:
        if (*p_ == '-' || digit(*p_)) return number();
        fail("unexpected character");
    }
  }

  void literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() || std::memcmp(p_, word.data(), word.size()) != 0)
      fail("invalid literal");
    p_ += word.size();
  }

  void enter() {
    if (++depth_ > max_depth_) fail("nested too deeply");
  }

  json object() {
    enter();
    ++p_;
    json obj(json::value_t::object);
    auto& o = obj.get_ref<json::object_t&>();
    ws();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      --depth_;
      return obj;
    }
    for (;;) {
      ws();
      if (p_ == end_ || *p_ != '"') fail("expected a string key");
      std::string key;
      string(key);
      ws();
      if (p_ == end_ || *p_ != ':') fail("expected ':'");
      ++p_;
      json v = value();
      // Keys in order (as nlohmann writes them) go at the end without a search; a
      // repeated key keeps the last value.
      if (o.empty() || o.rbegin()->first < key)
        o.emplace_hint(o.end(), std::move(key), std::move(v));
      else
        o.insert_or_assign(std::move(key), std::move(v));
      if (object_ends()) break;
    }
    --depth_;
    return obj;
  }

  json array() {
    enter();
    ++p_;
    json arr = json::array();
    auto& a = arr.get_ref<json::array_t&>();
    ws();
    if (p_ < end_ && *p_ == ']') {
      ++p_;
      --depth_;
      return arr;
    }
    for (;;) {
      a.push_back(value());
      ws();
      if (p_ == end_) fail("unexpected end of input");
      if (*p_ == ',') {
        ++p_;
        continue;
      }
      if (*p_ == ']') {
        ++p_;
        break;
      }
      fail("expected ',' or ']'");
    }
    --depth_;
    return arr;
  }

  json number() {
    const char* start = p_;
    bool neg = false, is_float = false;
    if (*p_ == '-') {
      neg = true;
      ++p_;
    }
    if (p_ == end_) fail("invalid number");
    if (*p_ == '0') {
      ++p_;
    } else if (digit(*p_)) {
      while (p_ < end_ && digit(*p_)) ++p_;
    } else {
      fail("invalid number");
    }
    if (p_ < end_ && *p_ == '.') {
      is_float = true;
      ++p_;
      if (p_ == end_ || !digit(*p_)) fail("invalid number");
      while (p_ < end_ && digit(*p_)) ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      is_float = true;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !digit(*p_)) fail("invalid number");
      while (p_ < end_ && digit(*p_)) ++p_;
    }
    if (!is_float) {
      if (neg) {
        std::int64_t v = 0;
        auto r = std::from_chars(start, p_, v);
        if (r.ec == std::errc() && r.ptr == p_) return json(v);
      } else {
        std::uint64_t v = 0;
        auto r = std::from_chars(start, p_, v);
        if (r.ec == std::errc() && r.ptr == p_) return json(v);
      }
    }
    // A fraction, an exponent, or an integer too big for 64 bits: a double.
    double d = 0;
    auto r = std::from_chars(start, p_, d);
    if (r.ec == std::errc::result_out_of_range) {
      std::string tmp(start, p_);
      d = std::strtod(tmp.c_str(), nullptr);  // underflow: 0 or -0, as nlohmann gives
      if (d > 1.0 || d < -1.0) {
        p_ = start;
        fail("number overflow");  // nlohmann refuses these too
      }
    }
    return json(d);
  }

  unsigned hex4() {
    if (end_ - p_ < 4) fail("invalid \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<unsigned>(c - 'A' + 10);
      else
        fail("invalid \\u escape");
    }
    return v;
  }

  static void put_utf8(unsigned cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void escape(std::string& out) {
    ++p_;  // the backslash
    if (p_ == end_) fail("unterminated string");
    switch (*p_++) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': {
        unsigned cp = hex4();
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u')
            fail("a high surrogate \\uD800-\\uDBFF must be followed by a low one");
          p_ += 2;
          unsigned lo = hex4();
          if (lo < 0xDC00 || lo > 0xDFFF)
            fail("a high surrogate \\uD800-\\uDBFF must be followed by a low one");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          fail("a low surrogate \\uDC00-\\uDFFF without a high one");
        }
        put_utf8(cp, out);
        return;
      }
      default:
        --p_;
        fail("invalid escape");
    }
  }

  // The string at p_: a view of the text when it is plain (no escapes, ASCII: the
  // common case for keys), else decoded into buf. Validates like string().
  std::string_view key_view(std::string& buf) {
    const char* run = p_ + 1;
    const char* e = plain_run(run, end_);
    if (e < end_ && *e == '"') {
      p_ = e + 1;
      return {run, static_cast<std::size_t>(e - run)};
    }
    buf.clear();
    string(buf);
    return buf;
  }

  void string(std::string& out) {
    ++p_;  // the opening quote
    {
      // The common case, a string without escapes or non-ASCII bytes: one exact copy.
      const char* run = p_;
      p_ = plain_run(p_, end_);
      if (p_ < end_ && *p_ == '"') {
        const auto n = static_cast<std::size_t>(p_ - run);
        if (n >= (std::size_t{1} << 20)) {  // fresh memory: make it present in one go
          out.reserve(n);
          populate_pages(out.data(), n);
        }
        out.assign(run, n);
        ++p_;
        return;
      }
      out.assign(run, p_);
    }
    for (;;) {
      const char* run = p_;
      p_ = plain_run(p_, end_);
      out.append(run, p_);
      if (p_ == end_) fail("unterminated string");
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return;
      }
      if (c == '\\') {
        escape(out);
        continue;
      }
      if (c < 0x20) fail("control character in a string");
      std::size_t n = utf8_sequence(reinterpret_cast<const unsigned char*>(p_),
                                    static_cast<std::size_t>(end_ - p_));
      if (n == 0) fail("invalid UTF-8");
      out.append(p_, n);
      p_ += n;
    }
  }

  const char* begin_;
  const char* p_;
  const char* end_;
  std::size_t depth_ = 0;
  std::size_t max_depth_;
};

// One JSON value (whitespace around it allowed). Throws json_codec::error.
inline json parse(std::string_view text, std::size_t max_depth = default_max_depth) {
  return parser(text, max_depth).document();
}

// One JSON-RPC message: a request or an answer decoded into its parts (k request or
// response), anything else parsed whole into out.whole (k other). Accepts and rejects
// exactly what parse() does. Throws json_codec::error.
inline void parse_rpc(std::string_view text, rpc_parts& out, std::size_t max_depth = default_max_depth) {
  out.clear();
  if (parser(text, max_depth).rpc(out)) return;
  out.clear();
  out.whole = parse(text, max_depth);
}

// Output for dump(): std::string, or anything with append(const char*, size_t),
// push_back(char), size() and reserve(total). An output that also has
// append_borrowed(const char*, size_t) gets the plain runs of strings that way: the
// bytes belong to the value being dumped, so it may refer to them instead of copying
// while the value lives (the ipc channel sends big strings straight from it).
template <class Out>
void put(Out& out, std::string_view s) {
  out.append(s.data(), s.size());
}
template <class Out>
void put_run(Out& out, const char* p, std::size_t n) {
  if constexpr (requires { out.append_borrowed(p, n); })
    out.append_borrowed(p, n);
  else
    out.append(p, n);
}

// A JSON string literal, escaped as nlohmann's dump() does. Throws
// json_codec::error for invalid UTF-8.
template <class Out>
void dump_string(std::string_view s, Out& out) {
  static constexpr char hex[] = "0123456789abcdef";
  if (s.size() > 4096) out.reserve(out.size() + s.size() + 64);  // one allocation for a big one
  out.push_back('"');
  const char* p = s.data();
  const char* end = p + s.size();
  for (;;) {
    const char* run = p;
    p = plain_run(p, end);
    put_run(out, run, static_cast<std::size_t>(p - run));
    if (p == end) break;
    const auto c = static_cast<unsigned char>(*p);
    switch (c) {
      case '"': put(out, "\\\""); ++p; continue;
      case '\\': put(out, "\\\\"); ++p; continue;
      case '\b': put(out, "\\b"); ++p; continue;
      case '\f': put(out, "\\f"); ++p; continue;
      case '\n': put(out, "\\n"); ++p; continue;
      case '\r': put(out, "\\r"); ++p; continue;
      case '\t': put(out, "\\t"); ++p; continue;
      default: break;
    }
    if (c < 0x20) {
      put(out, "\\u00");
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
      ++p;
      continue;
    }
    std::size_t n = utf8_sequence(reinterpret_cast<const unsigned char*>(p), static_cast<std::size_t>(end - p));
    if (n == 0)
      throw error("invalid UTF-8 in a string", static_cast<std::size_t>(p - s.data()));
    out.append(p, n);
    p += n;
  }
  out.push_back('"');
}

// Appends exactly what j.dump() gives. Throws json_codec::error for invalid UTF-8.
template <class Out>
void dump(const json& j, Out& out) {
  switch (j.type()) {
    case json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, v] : j.get_ref<const json::object_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        dump_string(k, out);
        out.push_back(':');
        dump(v, out);
      }
      out.push_back('}');
      return;
    }
    case json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& v : j.get_ref<const json::array_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        dump(v, out);
      }
      out.push_back(']');
      return;
    }
    case json::value_t::string: dump_string(j.get_ref<const std::string&>(), out); return;
    case json::value_t::boolean: put(out, j.get<bool>() ? "true" : "false"); return;
    case json::value_t::null: put(out, "null"); return;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: {
      char buf[24];
      auto r = j.is_number_unsigned() ? std::to_chars(buf, buf + sizeof buf, j.get<std::uint64_t>())
                                      : std::to_chars(buf, buf + sizeof buf, j.get<std::int64_t>());
      out.append(buf, static_cast<std::size_t>(r.ptr - buf));
      return;
    }
    default:
      put(out, j.dump());  // floats (nlohmann's shortest form, non-finite as null), binary
      return;
  }
}

}  // namespace subprocess::detail::json_codec
