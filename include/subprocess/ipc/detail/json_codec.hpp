// subprocess/ipc/detail/json_codec.hpp - fast, strict JSON text <-> nlohmann::ordered_json
// for the ipc channel. Not public API.
//
// Why not nlohmann's own parse()/dump()? They handle strings one byte at a time
// (~140 MB/s parsing, ~270 MB/s dumping here), which made a 100 MiB message slower
// than Node's JSON.parse. These scan strings 8 bytes at a time and copy plain runs
// whole. What they accept and build is what nlohmann::ordered_json::parse() gives
// (RFC 8259, UTF-8 validated; non-negative integers unsigned, negative ones signed,
// the rest double; an object keeps its keys in the order they came, and a repeated
// key stays where it first came with its last value, as JSON.parse does); dump()
// writes what ordered_json::dump() writes (tests/test_ipc.cpp and the fuzz target
// compare them). The differences, each made to read and write what Node does:
//   * A lone UTF-16 surrogate escape ("\ud83d" without its pair, which JSON.stringify
//     writes for a string holding half a pair) decodes to U+FFFD, the replacement
//     character Node itself writes for it when it encodes such a string as UTF-8;
//     nlohmann refuses the whole text.
//   * -0.0 is written "0", as JSON.stringify(-0) writes it (nlohmann: "-0.0").
//   * Nesting deeper than max_depth (default 10,000) is an error, both ways: a value
//     that deep could exhaust the stack of code that recurses over it (nlohmann's
//     copy, ==, dump(), your own). The codec itself never recurses: parse() and
//     dump() keep their own stack, so no depth crashes them.
//   * A NUL byte after the value is an error (nlohmann stops reading at a NUL byte
//     and accepts "1\0garbage"; JSON.parse refuses it, and so do we).
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../detail/pages.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace subprocess::detail::json_codec {

// Objects keep their keys in order: nlohmann::ordered_json (subprocess::ipc::json).
using json = nlohmann::ordered_json;
using object_t = json::object_t;
using array_t = json::array_t;

// The deepest nesting accepted (and sent): [] is 1 level, [[]] 2. Node 20's
// JSON.stringify gives up at about 4,200 levels (its stack, default size), so this
// covers anything a Node peer can send; its JSON.parse has no limit.
inline constexpr std::size_t default_max_depth = 10000;

inline std::string too_deep(std::size_t max_depth) {
  return "nested too deeply (more than " + std::to_string(max_depth) + " levels of arrays and objects)";
}

// A stack that keeps its first N entries inline (no allocation for the usual few
// levels of nesting) and spills the rest to the heap.
template <class T, std::size_t N>
class small_stack {
 public:
  void push(T v) {
    if (n_ < N)
      in_[n_] = v;
    else
      spill_.push_back(v);
    ++n_;
  }
  T& top() noexcept { return n_ <= N ? in_[n_ - 1] : spill_.back(); }
  void pop() noexcept {
    if (n_ > N) spill_.pop_back();
    --n_;
  }
  std::size_t size() const noexcept { return n_; }

 private:
  T in_[N];
  std::vector<T> spill_;
  std::size_t n_ = 0;
};

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
    json v;
    value(v);
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
        value(out.id);
        out.has_id = true;
      } else if (key == "method") {
        ws();
        if (p_ == end_ || *p_ != '"') return false;
        out.method.clear();
        string(out.method);
        has_method = true;
      } else if (key == "params") {
        value(out.params);
      } else if (key == "result") {
        value(out.result);
        has_result = true;
      } else if (key == "error") {
        value(out.error);
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

  // Parses one value into `root` (null on entry). Iterative: the containers being
  // filled are kept on stack_, so no depth of nesting recurses. A container is put
  // into its parent first and filled in place (moving a finished one up would cost a
  // move per element); its address stays valid while it is being filled, since its
  // parent grows only after it is complete.
  void value(json& root) {
    const std::size_t base = stack_.size();
    json* slot = &root;
    for (;;) {
      ws();
      if (p_ == end_) fail("unexpected end of input");
      switch (*p_) {
        case '[': {
          enter();
          ++p_;
          *slot = json(json::value_t::array);
          ws();
          if (p_ < end_ && *p_ == ']') {
            ++p_;
            --depth_;
            break;
          }
          stack_.push(slot);
          auto& a = slot->get_ref<array_t&>();
          a.reserve(4);  // fewer reallocations for the usual few elements
          slot = &a.emplace_back();
          continue;
        }
        case '{': {
          enter();
          ++p_;
          *slot = json(json::value_t::object);
          ws();
          if (p_ < end_ && *p_ == '}') {
            ++p_;
            --depth_;
            break;
          }
          stack_.push(slot);
          slot = &member(*slot);
          continue;
        }
        case '"': {
          *slot = json(json::value_t::string);  // the string is parsed straight into the value
          string(slot->get_ref<std::string&>());
          break;
        }
        case 't': literal("true"); *slot = true; break;
        case 'f': literal("false"); *slot = false; break;
        case 'n': literal("null"); *slot = nullptr; break;  // (a repeated key: not null yet)
        default:
          if (*p_ == '-' || digit(*p_)) {
            number(*slot);
            break;
          }
          fail("unexpected character");
      }
      // A value is complete: close the containers it completes, then go on with the
      // next element of the innermost one still open.
      for (;;) {
        if (stack_.size() == base) return;
        json* top = stack_.top();
        ws();
        if (p_ == end_) fail("unexpected end of input");
        const char c = *p_;
        if (top->is_array()) {
          if (c == ',') {
            ++p_;
            slot = &top->get_ref<array_t&>().emplace_back();
            break;
          }
          if (c != ']') fail("expected ',' or ']'");
        } else {
          if (c == ',') {
            ++p_;
            slot = &member(*top);
            break;
          }
          if (c != '}') fail("expected ',' or '}'");
          unique_keys(top->get_ref<object_t&>());
        }
        ++p_;
        --depth_;
        stack_.pop();
      }
    }
  }

  // Reads `"key":` and appends the member (null) to obj; returns its value.
  json& member(json& obj) {
    ws();
    if (p_ == end_ || *p_ != '"') fail("expected a string key");
    std::string key;
    string(key);
    ws();
    if (p_ == end_ || *p_ != ':') fail("expected ':'");
    ++p_;
    // Appended without looking for the key (that search would make parsing an
    // object quadratic); repeated keys are merged when the object is complete.
    auto& o = obj.get_ref<object_t&>();
    // Fewer reallocations for the usual few members (a reallocation copies the keys:
    // they are const in the pair).
    if (o.empty()) o.reserve(4);
    return o.object_t::Container::emplace_back(std::move(key), nullptr).second;
  }

  // A repeated key keeps the place where it first came and the last value (as
  // JSON.parse and nlohmann's ordered_json do). Rare: looked for cheaply first.
  static void unique_keys(object_t& o) {
    const std::size_t n = o.size();
    if (n < 2) return;
    bool repeated = false;
    if (n <= 16) {
      for (std::size_t i = 1; i < n && !repeated; ++i)
        for (std::size_t j = 0; j < i; ++j)
          if (o.begin()[static_cast<std::ptrdiff_t>(i)].first == o.begin()[static_cast<std::ptrdiff_t>(j)].first) {
            repeated = true;
            break;
          }
    } else {
      std::unordered_set<std::string_view> seen;
      seen.reserve(n);
      for (const auto& kv : o)
        if (!seen.insert(kv.first).second) {
          repeated = true;
          break;
        }
    }
    if (!repeated) return;
    object_t::Container merged;
    merged.reserve(n);
    std::unordered_map<std::string_view, std::size_t> at;  // views of o's keys, which stay put
    for (auto& kv : o) {
      auto [it, first] = at.try_emplace(kv.first, merged.size());
      if (first)
        merged.emplace_back(kv.first, std::move(kv.second));
      else
        merged[it->second].second = std::move(kv.second);
    }
    static_cast<object_t::Container&>(o).swap(merged);
  }

  void literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() || std::memcmp(p_, word.data(), word.size()) != 0)
      fail("invalid literal");
    p_ += word.size();
  }

  void enter() {
    if (++depth_ > max_depth_)
      throw error(too_deep(max_depth_), static_cast<std::size_t>(p_ - begin_));
  }

  void number(json& out) {
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
        if (r.ec == std::errc() && r.ptr == p_) {
          out = v;
          return;
        }
      } else {
        std::uint64_t v = 0;
        auto r = std::from_chars(start, p_, v);
        if (r.ec == std::errc() && r.ptr == p_) {
          out = v;
          return;
        }
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
    out = d;
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

  // The value of 4 hex digits at p (end_ - p >= 4), or 0x10000 if they are not.
  static unsigned peek_hex4(const char* p) noexcept {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = p[i];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<unsigned>(c - 'A' + 10);
      else
        return 0x10000;
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
        if (cp >= 0xD800 && cp <= 0xDFFF) {
          // A high surrogate followed by a low one is one code point; a lone one (half
          // a pair: JSON.stringify writes those as escapes) becomes U+FFFD, as Node
          // makes it when it writes the string as UTF-8. What follows a lone high
          // surrogate is left for the next round (it may be any escape).
          unsigned lo = 0;
          if (cp <= 0xDBFF && end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u' &&
              (lo = peek_hex4(p_ + 2)) >= 0xDC00 && lo <= 0xDFFF) {
            p_ += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else {
            cp = 0xFFFD;
          }
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
  small_stack<json*, 32> stack_;  // the containers value() is filling
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

// A value that is not an array or an object with members. Requires !j.is_structured()
// || j.empty().
template <class Out>
void dump_leaf(const json& j, Out& out) {
  switch (j.type()) {
    case json::value_t::object: put(out, "{}"); return;
    case json::value_t::array: put(out, "[]"); return;
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
    case json::value_t::number_float:
      if (j.get<double>() == 0) {  // 0.0 and -0.0: JSON.stringify(-0) is "0"
        put(out, std::signbit(j.get<double>()) ? "0" : "0.0");
        return;
      }
      [[fallthrough]];
    default:
      put(out, j.dump());  // floats (nlohmann's shortest form, non-finite as null), binary
      return;
  }
}

// Appends what j.dump() gives (but -0.0 as "0"). Iterative: no depth of nesting
// recurses. Throws json_codec::error for invalid UTF-8 and for nesting deeper than
// max_depth (what was appended before is left in out).
template <class Out>
void dump(const json& j, Out& out, std::size_t max_depth = default_max_depth) {
  if (!j.is_structured() || j.empty()) {
    if (j.is_structured() && max_depth == 0) throw error(too_deep(max_depth), out.size());
    return dump_leaf(j, out);
  }
  struct frame {
    const json* v;
    std::size_t i;  // members written
  };
  small_stack<frame, 32> stack;
  auto check_depth = [&] {
    if (stack.size() >= max_depth) throw error(too_deep(max_depth), out.size());
  };
  check_depth();
  out.push_back(j.is_array() ? '[' : '{');
  stack.push({&j, 0});
  // Writes the members of the innermost open container up to its next non-empty
  // container, which is opened (pushed: `f` is not used after that).
  while (stack.size() > 0) {
    frame& f = stack.top();
    const json& v = *f.v;
    const json* open = nullptr;
    // Writes one member's value; a non-empty container is left to be opened instead.
    auto member = [&](const json& c) {
      if (c.is_structured()) {
        check_depth();
        if (!c.empty()) {
          open = &c;
          return false;
        }
      }
      dump_leaf(c, out);
      return true;
    };
    if (v.is_array()) {
      const auto& a = v.get_ref<const array_t&>();
      while (f.i < a.size()) {
        if (f.i != 0) out.push_back(',');
        if (!member(a[f.i++])) break;
      }
      if (!open) out.push_back(']');
    } else {
      const auto& o = v.get_ref<const object_t&>();
      while (f.i < o.size()) {
        if (f.i != 0) out.push_back(',');
        const auto& kv = o.begin()[static_cast<std::ptrdiff_t>(f.i++)];
        dump_string(kv.first, out);
        out.push_back(':');
        if (!member(kv.second)) break;
      }
      if (!open) out.push_back('}');
    }
    if (open) {
      out.push_back(open->is_array() ? '[' : '{');
      stack.push({open, 0});
    } else {
      stack.pop();
    }
  }
}

}  // namespace subprocess::detail::json_codec
