// subprocess/ipc/detail/json_dump.hpp - the writing half of the JSON codec: what
// nlohmann's dump() writes, faster, without recursion (see json_codec.hpp for how it
// differs). Not public API.
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>

#include "../../error.hpp"
#include "json_scan.hpp"

namespace subprocess::detail::json_codec {

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
      SUBPROCESS_THROW(error("invalid UTF-8 in a string", static_cast<std::size_t>(p - s.data())));
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
    if (j.is_structured() && max_depth == 0) SUBPROCESS_THROW(error(too_deep(max_depth), out.size()));
    return dump_leaf(j, out);
  }
  struct frame {
    const json* v;
    std::size_t i;  // members written
  };
  small_stack<frame, 32> stack;
  auto check_depth = [&] {
    if (stack.size() >= max_depth) SUBPROCESS_THROW(error(too_deep(max_depth), out.size()));
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
