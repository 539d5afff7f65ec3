// subprocess/ipc/detail/json_scan.hpp - the lexical half of the JSON codec: the
// types both directions share, fast scanning of plain string runs and UTF-8, and
// the scanner that reads literals, numbers and strings (json_codec.hpp builds values
// from them). Not public API.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../error.hpp"
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

// Reads the tokens of a JSON text: whitespace, literals, numbers, strings (escapes
// and UTF-8 checked). Throws error with the offset where the text went wrong.
class scanner {
 protected:
  explicit scanner(std::string_view text)
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  [[noreturn]] void fail(const char* what) const {
    SUBPROCESS_THROW(error(what, static_cast<std::size_t>(p_ - begin_)));
  }
  void ws() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  static bool digit(char c) noexcept { return c >= '0' && c <= '9'; }

  void literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() || std::memcmp(p_, word.data(), word.size()) != 0)
      fail("invalid literal");
    p_ += word.size();
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
};

}  // namespace subprocess::detail::json_codec
