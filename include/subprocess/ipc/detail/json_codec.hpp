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

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "json_dump.hpp"
#include "json_scan.hpp"

namespace subprocess::detail::json_codec {

// Builds values from a scanner's tokens.
class parser : scanner {
 public:
  parser(std::string_view text, std::size_t max_depth) : scanner(text), max_depth_(max_depth) {}

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


  void enter() {
    if (++depth_ > max_depth_)
      SUBPROCESS_THROW(error(too_deep(max_depth_), static_cast<std::size_t>(p_ - begin_)));
  }


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

}  // namespace subprocess::detail::json_codec
