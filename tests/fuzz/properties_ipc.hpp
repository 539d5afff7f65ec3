// The properties of the ipc fuzz targets (they need nlohmann/json, so they live apart
// from properties.hpp), shared with the normal test suite: test_fuzz_corpus.cpp
// replays every corpus and regression input through them, with any compiler.
//
//   check_json_decode(bytes)   the channel's JSON codec against nlohmann::ordered_json::parse
//   check_ipc_framing(bytes)   a channel's receive path against a reference splitter
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <sys/socket.h>

#include <subprocess/ipc.hpp>

#include "properties.hpp"

namespace fuzz {

using json = subprocess::ipc::json;  // nlohmann::ordered_json: keys in order
namespace codec = subprocess::detail::json_codec;

// ---------------------------------------------------------------- JSON decoding --

// Nesting depth: 0 for a scalar, 1 for [] or {}, 2 for [[]]... (iterative: fuzz
// inputs may nest thousands of levels).
inline std::size_t nesting_depth(const json& root) {
  std::size_t deepest = 0;
  std::vector<std::pair<const json*, std::size_t>> todo{{&root, 0}};
  while (!todo.empty()) {
    auto [v, d] = todo.back();
    todo.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, d + 1);
    for (const auto& c : *v) todo.emplace_back(&c, d + 1);
  }
  return deepest;
}

// The same value and the same types all the way down: unsigned, signed and double
// numbers are different things here (nlohmann's == calls 1 and 1.0 equal), and so are
// 0.0 and -0.0.
inline bool same_value(const json& a, const json& b) {
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case json::value_t::object: {
      if (a.size() != b.size()) return false;
      auto i = a.begin();
      auto j = b.begin();
      for (; i != a.end(); ++i, ++j)
        if (i.key() != j.key() || !same_value(*i, *j)) return false;
      return true;
    }
    case json::value_t::array: {
      if (a.size() != b.size()) return false;
      for (std::size_t k = 0; k < a.size(); ++k)
        if (!same_value(a[k], b[k])) return false;
      return true;
    }
    case json::value_t::number_float: {
      double x = a.get<double>(), y = b.get<double>();
      return std::memcmp(&x, &y, sizeof x) == 0;
    }
    default:
      return a == b;
  }
}

// The text with each lone UTF-16 surrogate escape (\uD800-\uDFFF not in a high-low
// pair) replaced by \uFFFD: what the codec decodes them to, and nlohmann refuses.
// Outside strings a backslash is an error either way, so the text is not parsed.
inline std::string without_lone_surrogates(std::string_view t) {
  auto hex4 = [&](std::size_t at) -> long {
    if (at + 4 > t.size()) return -1;
    long v = 0;
    for (std::size_t k = at; k < at + 4; ++k) {
      const char c = t[k];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return -1;
    }
    return v;
  };
  std::string out;
  for (std::size_t i = 0; i < t.size();) {
    if (t[i] != '\\' || i + 1 >= t.size()) {
      out += t[i++];
      continue;
    }
    const long cp = t[i + 1] == 'u' ? hex4(i + 2) : -1;
    if (cp < 0xD800 || cp > 0xDFFF) {  // another escape: copied as it is
      out.append(t.substr(i, 2));
      i += 2;
      continue;
    }
    if (cp <= 0xDBFF && i + 7 < t.size() && t[i + 6] == '\\' && t[i + 7] == 'u') {
      const long lo = hex4(i + 8);
      if (lo >= 0xDC00 && lo <= 0xDFFF) {  // a pair
        out.append(t.substr(i, 12));
        i += 12;
        continue;
      }
    }
    out += "\\ufffd";
    i += 6;
  }
  return out;
}

// The same text as nlohmann writes it, but -0.0 as "0" (JSON.stringify's way).
inline std::string reference_dump(const json& v) {
  std::string s = v.dump();
  // nlohmann writes -0.0 as "-0.0"; outside strings that can only be the number.
  std::string out;
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      out += c;
      if (c == '\\') out += s[++i];
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
      out += c;
    } else if (s.compare(i, 4, "-0.0") == 0 && (i + 4 == s.size() || s[i + 4] == ',' || s[i + 4] == ']' || s[i + 4] == '}')) {
      out += '0';
      i += 3;
    } else {
      out += c;
    }
  }
  return out;
}

// The channel's parser accepts exactly what nlohmann::ordered_json::parse accepts and
// builds the same value (keys in the same order), except for the documented
// differences: a lone surrogate escape is U+FFFD (checked by giving nlohmann the text
// with \ufffd in its place), nesting deeper than the limit is refused, and so is any
// NUL byte (nlohmann stops reading at a NUL after a value; a NUL is never valid JSON
// anyway). What it accepts, dump() writes back as nlohmann's dump() does (but -0.0 as
// "0"), and that text parses as nlohmann parses it.
inline void check_json_decode(std::string_view text) {
  std::optional<json> ours;
  std::string our_error;
  try {
    ours = codec::parse(text);
  } catch (const codec::error& e) {
    our_error = e.what();
  }
  if (text.find('\0') != std::string_view::npos) {
    require(!ours, "a text with a NUL byte was accepted");
    return;
  }
  const std::string ref_text = without_lone_surrogates(text);
  std::optional<json> ref;
  try {
    ref = json::parse(ref_text.begin(), ref_text.end());
  } catch (const json::exception&) {  // parse_error, and out_of_range for 1e400
  }
  if (ref && nesting_depth(*ref) > codec::default_max_depth) {
    require(!ours, "nesting deeper than the limit was accepted");
    require(our_error.find("nested too deeply") != std::string::npos,
            "refused for the wrong reason: " + our_error);
    return;
  }
  require(ref.has_value() == ours.has_value(),
          ref ? "nlohmann accepts, the codec refuses: " + our_error : "the codec accepts, nlohmann refuses");
  if (!ours) return;
  require(same_value(*ref, *ours), "a different value than nlohmann's: " + ours->dump() + " vs " + ref->dump());
  std::string text_back;
  codec::dump(*ours, text_back);
  require(text_back == reference_dump(*ours), "dump() differs from nlohmann's: " + text_back);
  // Parsed again, the dumped text gives what nlohmann gives for it (not always the
  // value we started from: -0 is a signed 0 and dumps as "0", which reads back unsigned).
  require(same_value(codec::parse(text_back), json::parse(text_back)),
          "dump() does not parse back as nlohmann parses it: " + text_back);
}

// ----------------------------------------------------------------- ipc framing --

// One thing the receiving side reports: a message, or an error (its errc).
struct frame_event {
  std::optional<json> message;
  std::error_code error;
  bool operator==(const frame_event& o) const {
    if (message.has_value() != o.message.has_value() || error != o.error) return false;
    return !message || same_value(*message, *o.message);
  }
  std::string describe() const { return message ? "message " + message->dump() : "error " + error.message(); }
};

inline std::string describe(const std::vector<frame_event>& v) {
  std::string s;
  for (const auto& e : v) s += "  " + e.describe() + "\n";
  return s;
}

// The fuzz input: a header, then the byte stream the peer sends.
//   byte 0: the channel's max_message_size: 64 MiB if it is 0, else 1..255;
//           bit 7 of byte 1: internal_messages (deliver Node's NODE_ messages)
//   byte 1: seeds the pieces the stream is split into (1 to 64 bytes, sometimes more)
struct framing_input {
  std::size_t max_message_size = subprocess::ipc::default_max_message_size;
  bool internal_messages = false;
  std::uint32_t seed = 1;
  std::string_view stream;
};

inline framing_input framing_input_of(std::string_view data) {
  framing_input in;
  if (data.size() < 2) {
    in.stream = data;
    return in;
  }
  auto b0 = static_cast<unsigned char>(data[0]), b1 = static_cast<unsigned char>(data[1]);
  if (b0 != 0) in.max_message_size = b0;
  in.internal_messages = (b1 & 0x80) != 0;
  in.seed = 1u + (b1 & 0x7f);
  in.stream = data.substr(2);
  return in;
}

// What the channel must report for this stream, from the rules in ipc.hpp written
// out plainly: lines end at '\n'; a line (or an unfinished one) longer than the limit
// is a protocol error and nothing more is read; a line that is not JSON is a protocol
// error and the next line is read; Node's internal messages are skipped unless asked
// for; bytes left without a '\n' at the end are a torn message: not an error thrown,
// but the channel's end_error() (channel_closed) once it has ended.
inline std::vector<frame_event> reference_frames(const framing_input& in) {
  using subprocess::errc;
  std::vector<frame_event> out;
  std::string_view s = in.stream;
  for (;;) {
    std::size_t nl = s.find('\n');
    if (nl == std::string_view::npos) {
      if (s.size() > in.max_message_size)
        out.push_back({std::nullopt, make_error_code(errc::protocol_error)});
      else if (!s.empty())
        out.push_back({std::nullopt, make_error_code(errc::channel_closed)});
      return out;
    }
    if (nl > in.max_message_size) {
      out.push_back({std::nullopt, make_error_code(errc::protocol_error)});
      return out;
    }
    std::string_view line = s.substr(0, nl);
    s.remove_prefix(nl + 1);
    json m;
    try {
      m = codec::parse(line);
    } catch (const codec::error&) {
      out.push_back({std::nullopt, make_error_code(errc::protocol_error)});
      continue;
    }
    if (!in.internal_messages && subprocess::detail::ipc_wire::is_internal(m)) continue;
    out.push_back({std::move(m), {}});
  }
}

// Feeds the stream into a real channel through a socketpair, in pieces, taking every
// message or error as soon as it is complete (the event-loop way: read_available()
// then try_receive() until nothing), and compares with reference_frames().
inline void check_ipc_framing(std::string_view data) {
  namespace sys = subprocess::detail::sys;
  const framing_input in = framing_input_of(data);
  int sv[2];
  require(sys::socketpair(AF_UNIX, SOCK_STREAM, sv) == 0, "socketpair failed");
  subprocess::detail::unique_fd peer(sv[1]);
  subprocess::ipc::channel ch{subprocess::detail::unique_fd{sv[0]},
                              {.max_message_size = in.max_message_size,
                               .internal_messages = in.internal_messages,
                               .name = "fuzz"}};
  std::vector<frame_event> got;
  bool ended = false;  // shut down after an oversized message: nothing more to read
  auto take = [&] {
    for (;;) {
      try {
        auto m = ch.try_receive();
        if (!m) return;
        got.push_back({std::move(*m), {}});
      } catch (const subprocess::ipc::channel_error& e) {
        got.push_back({std::nullopt, e.code()});
        if (e.code() == subprocess::errc::protocol_error && ch.eof()) ended = true;
      }
    }
  };
  std::uint32_t rng = in.seed * 2654435761u;
  auto next_piece = [&] {
    rng = rng * 1103515245u + 12345u;
    std::uint32_t r = rng >> 16;
    return (r % 8 == 0) ? 1 + r % 4096 : 1 + r % 64;
  };
  std::string_view rest = in.stream;
  while (!rest.empty() && !ended) {
    std::string_view piece = rest.substr(0, std::min<std::size_t>(next_piece(), rest.size()));
    rest.remove_prefix(piece.size());
    while (!piece.empty() && !ended) {
      ssize_t n = sys::send(peer.get(), piece.data(), piece.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) piece.remove_prefix(static_cast<std::size_t>(n));
      else if (n < 0 && errno != EAGAIN && errno != EINTR) ended = true;  // it shut down
      ch.read_available();
      take();
    }
  }
  sys::shutdown(peer.get(), SHUT_WR);  // the end of the stream
  for (int round = 0; round < 100 && !ended && !ch.eof(); ++round) {
    ch.read_available();
    take();
  }
  require(ended || ch.eof(), "the channel did not see the end of the stream");
  if (auto torn = ch.end_error()) got.push_back({std::nullopt, torn->code()});
  auto expect = reference_frames(in);
  require(got == expect, "the channel reported\n" + describe(got) + "the reference splitter says\n" +
                             describe(expect));
}

}  // namespace fuzz
