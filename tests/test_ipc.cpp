// Tests for ipc.hpp: the channel and its framing, connect_to_parent, JSON-RPC client
// and serve(), heartbeat, broadcast, the event-loop adapter, and interop with real
// Node.js (test cases tagged [node], run by ctest as ipc_node).
#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <map>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

#include <poll.h>
#include <sys/epoll.h>

#include <subprocess/ipc.hpp>
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

using testing::ipc_child;
using testing::script;  // REQUIRE_NODE(): testing.hpp

// A connected socketpair: a channel on one end, the raw other end for the test to
// write hostile bytes into.
struct raw_pair {
  ipc::channel ch;
  sp::detail::unique_fd peer;
  explicit raw_pair(ipc::channel_options o = {}) {
    int sv[2];
    REQUIRE(sp::detail::sys::socketpair(AF_UNIX, SOCK_STREAM, sv) == 0);
    ch = ipc::channel(sp::detail::unique_fd(sv[0]), std::move(o));
    peer.reset(sv[1]);
  }
  void write(std::string_view bytes) const {
    while (!bytes.empty()) {
      ssize_t n = ::send(peer.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Everything the peer can read within `wait`.
  std::string read_some(std::chrono::milliseconds wait = 2000ms) const {
    std::string out;
    char buf[65536];
    while (sp::detail::poll_one(peer.get(), POLLIN, clk::now() + wait) != 0) {
      ssize_t n = ::recv(peer.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
      wait = 50ms;
    }
    return out;
  }
};

json assorted(int i) {
  switch (i % 5) {
    case 0: return {{"n", i}, {"text", "message " + std::to_string(i)}};
    case 1: return {{"unicode", "héllo ✓ 日本語 🎉 \u2028"}, {"i", i}};
    case 2: return {{"nested", {{"a", {1, 2, {{"b", {true, false, nullptr}}}}}, {"i", i}}}};
    case 3: return json::array({i, "x", 1.5, json::object()});
    default: return "just a string " + std::to_string(i);
  }
}

// Waits (with a condition variable, not a sleep) until pred() or the timeout.
template <class Pred>
bool wait_until_true(std::mutex& mu, std::condition_variable& cv, std::chrono::milliseconds t,
                     Pred pred) {
  std::unique_lock lk(mu);
  return cv.wait_for(lk, t, pred);
}

}  // namespace

// ---------------------------------------------------------------------------------
// The JSON codec the channel uses must agree with nlohmann's parse() and dump().

namespace {
namespace codec = sp::detail::json_codec;

struct random_json {
  std::mt19937_64 rng;
  explicit random_json(std::uint64_t seed) : rng(seed) {}
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(rng() % n); }
  std::string text() {
    static const std::vector<std::string> atoms = {
        "a", "Z", "0", " ", "\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", std::string(1, '\0'),
        "\x01", "\x1f", "\x7f", "é", "ß", "✓", "日本", "🎉", "\xe2\x80\xa8", "\xef\xbf\xbf",
        "\xf4\x8f\xbf\xbf", "plain ascii run of some length "};
    std::string s;
    for (std::size_t i = below(12); i > 0; --i) s += atoms[below(atoms.size())];
    if (below(20) == 0) s += std::string(below(300), 'x');
    return s;
  }
  json number() {
    switch (below(8)) {
      case 0: return static_cast<std::int64_t>(rng());
      case 1: return static_cast<std::uint64_t>(rng());
      case 2: return std::numeric_limits<std::int64_t>::min();
      case 3: return std::numeric_limits<std::uint64_t>::max();
      case 4: return static_cast<std::int64_t>(below(2000)) - 1000;
      case 5: {
        static const double specials[] = {0.1, -2.5, 1e300, -1e-300, 5e-324, 1.7976931348623157e308,
                                          123456789.123456789, 1e21, 1e-7, 0.0};
        return specials[below(std::size(specials))];
      }
      default: return std::ldexp(static_cast<double>(rng() % 1000000) - 500000.0, static_cast<int>(below(200)) - 100);
    }
  }
  json value(int depth) {
    switch (depth > 4 ? below(5) : below(7)) {
      case 0: return nullptr;
      case 1: return below(2) == 0;
      case 2: return number();
      case 3:
      case 4: return text();
      case 5: {
        json a = json::array();
        for (std::size_t i = below(5); i > 0; --i) a.push_back(value(depth + 1));
        return a;
      }
      default: {
        json o = json::object();
        for (std::size_t i = below(5); i > 0; --i) o[text()] = value(depth + 1);
        return o;
      }
    }
  }
  // A few random edits that tend to land on the interesting cases.
  std::string mutate(std::string s) {
    static const std::string chars = std::string("\"\\{}[],:0123456789-+.eEuntfal \t\r\n/bx", 37) +
                                     std::string("\x00\x1f\x7f\x80\xbf\xc0\xc2\xe0\xed\xf0\xf4\xf5\xff", 13);
    for (std::size_t k = below(3) + 1; k > 0; --k) {
      std::size_t at = s.empty() ? 0 : below(s.size() + 1);
      char c = below(4) == 0 ? static_cast<char>(rng()) : chars[below(chars.size())];
      switch (below(3)) {
        case 0: if (at < s.size()) s[at] = c; break;
        case 1: s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        default: if (at < s.size()) s.erase(at, 1); break;
      }
    }
    return s;
  }
};

std::optional<json> nlohmann_parse(const std::string& t) {
  try {
    return json::parse(t);
  } catch (const json::exception&) {  // parse_error, and out_of_range for 1e400
    return std::nullopt;
  }
}
std::optional<json> codec_parse(const std::string& t) {
  try {
    return codec::parse(t);
  } catch (const codec::error&) {
    return std::nullopt;
  }
}
}  // namespace

TEST_CASE("json codec: the channel's parse and dump agree with nlohmann's") {
  SECTION("random documents: the same text, the same values") {
    random_json gen(12345);
    for (int i = 0; i < 3000; ++i) {
      json v = gen.value(0);
      std::string ours;
      codec::dump(v, ours);
      REQUIRE(ours == v.dump());
      REQUIRE(codec::parse(ours) == v);
    }
  }
  SECTION("mutated documents: accepted and rejected alike") {
    random_json gen(777);
    int accepted = 0, rejected = 0;
    for (int i = 0; i < 20000; ++i) {
      std::string text = gen.mutate(gen.value(0).dump());
      if (text.find('\0') != std::string::npos) continue;  // nlohmann stops at a NUL; see below
      auto a = nlohmann_parse(text), b = codec_parse(text);
      INFO("text: " << sp::detail::ipc_wire::sample_of(text, 200));
      REQUIRE(a.has_value() == b.has_value());
      if (a) {
        REQUIRE(*a == *b);
        ++accepted;
      } else {
        ++rejected;
      }
    }
    CHECK(accepted > 1000);  // the mutations exercise both outcomes
    CHECK(rejected > 1000);
  }
  SECTION("parse_rpc: the same acceptance and the same values as parse, without the envelope object") {
    // Rebuilds the message parse() would give from the parts parse_rpc() decoded.
    auto rebuild = [](const codec::rpc_parts& p) -> json {
      if (p.k == codec::rpc_parts::kind::other) return p.whole;
      json m = json::object();
      if (p.has_id) m["id"] = p.id;
      if (p.k == codec::rpc_parts::kind::request) {
        m["method"] = p.method;
        if (!p.params.is_null()) m["params"] = p.params;
      } else if (!p.error.is_null()) {
        m["error"] = p.error;
      } else {
        m["result"] = p.result;
      }
      return m;
    };
    auto without_envelope_noise = [](json m) {
      if (m.is_object()) {
        m.erase("jsonrpc");
        if (m.contains("params") && m["params"].is_null()) m.erase("params");
        if (m.contains("error") && m["error"].is_null() && m.contains("result")) m.erase("error");
      }
      return m;
    };
    random_json gen(4242);
    int requests = 0, responses = 0, others = 0, rejected = 0;
    for (int i = 0; i < 20000; ++i) {
      json shaped;
      switch (i % 4) {
        case 0: shaped = {{"jsonrpc", "2.0"}, {"id", i}, {"method", gen.text()}, {"params", gen.value(1)}}; break;
        case 1: shaped = {{"jsonrpc", "2.0"}, {"id", i}, {"result", gen.value(1)}}; break;
        case 2: shaped = {{"jsonrpc", "2.0"}, {"id", gen.text()}, {"error", {{"code", -1}, {"message", gen.text()}}}}; break;
        default: shaped = gen.value(0); break;
      }
      std::string text = i % 3 == 0 ? gen.mutate(shaped.dump()) : shaped.dump();
      auto whole = codec_parse(text);
      codec::rpc_parts p;
      bool ok = true;
      try {
        codec::parse_rpc(text, p);
      } catch (const codec::error&) {
        ok = false;
      }
      INFO("text: " << sp::detail::ipc_wire::sample_of(text, 200));
      REQUIRE(ok == whole.has_value());
      if (!ok) {
        ++rejected;
        continue;
      }
      if (p.k == codec::rpc_parts::kind::other) {
        ++others;
        REQUIRE(p.whole == *whole);
      } else {
        (p.k == codec::rpc_parts::kind::request ? requests : responses) += 1;
        REQUIRE(rebuild(p) == without_envelope_noise(*whole));
      }
    }
    CHECK(requests > 2000);
    CHECK(responses > 2000);
    CHECK(others > 2000);
    CHECK(rejected > 1000);
  }
  SECTION("tricky cases") {
    for (std::string t : {"0", "-0", "01", "-", "1.", ".5", "1e", "1e+", "1E-2", "1e400", "-1e400", "1e-400",
                          "18446744073709551615", "18446744073709551616", "-9223372036854775808",
                          "-9223372036854775809", "123456789012345678901234567890", "true", "tru", "nul",
                          "\"\\u0000\"", "\"\\ud83c\\udf89\"",
                          "\"\\uZZZZ\"", "\"\\x\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
                          "\"\xe2\x82\"", "\"tab\there\"", "[1,]", "{\"a\":1,}", "{\"a\":1,\"a\":2}", "[1 2]",
                          "1 2", "", "   ", " [ ] ", "{}", "[[[[]]]]", "\"\\/\"", "{\"a\"}", "{1:2}", "[\"a\"",
                          "\"unterminated", "[1]\r"}) {
      INFO("text: " << sp::detail::ipc_wire::sample_of(t));
      auto a = nlohmann_parse(t), b = codec_parse(t);
      REQUIRE(a.has_value() == b.has_value());
      if (a) {
        CHECK(*a == *b);
        CHECK(a->type() == b->type());
      }
    }
  }
  SECTION("a NUL byte after the value is refused (nlohmann would stop reading there)") {
    CHECK_THROWS_AS(codec::parse(std::string("1\0garbage", 9)), codec::error);
    CHECK_THROWS_AS(codec::parse(std::string("\"a\"\0", 4)), codec::error);
    CHECK_THROWS_AS(codec::parse(std::string("\"\0\"", 3)), codec::error);  // a raw NUL in a string: a control character
  }
  SECTION("number types match: unsigned, signed, double") {
    CHECK(codec::parse("5").is_number_unsigned());
    CHECK(codec::parse("-5").is_number_integer());
    CHECK_FALSE(codec::parse("-5").is_number_unsigned());
    CHECK(codec::parse("5.0").is_number_float());
    CHECK(codec::parse("18446744073709551616").is_number_float());
  }
  SECTION("dump refuses invalid UTF-8 where nlohmann does") {
    random_json gen(99);
    for (int i = 0; i < 5000; ++i) {
      std::string raw = gen.mutate(gen.text());
      json v = raw;
      std::optional<std::string> a, b;
      try {
        a = v.dump();
      } catch (const json::type_error&) {
      }
      try {
        std::string out;
        codec::dump(v, out);
        b = out;
      } catch (const codec::error&) {
      }
      REQUIRE(a == b);
    }
  }
  SECTION("nesting is limited, and no depth recurses") {
    const std::size_t max = ipc::max_nesting_depth;
    CHECK(max >= 5000);  // Node 20 stringifies about 4,200 levels at most
    auto nested = [](std::size_t n) { return std::string(n, '[') + std::string(n, ']'); };
    CHECK_THROWS_WITH(codec::parse(nested(max + 1)), Catch::Contains("nested too deeply"));
    json ok = codec::parse(nested(max));
    std::string back;
    codec::dump(ok, back);
    CHECK(back == nested(max));
    // A million levels: a clear error, not a stack overflow (the codec keeps its own
    // stack; before, it recursed once per level). Objects too.
    CHECK_THROWS_WITH(codec::parse(nested(1000000)), Catch::Contains("nested too deeply"));
    std::string objects;
    for (int i = 0; i < 1000000; ++i) objects += "{\"a\":";
    objects += "1" + std::string(1000000, '}');
    CHECK_THROWS_WITH(codec::parse(objects), Catch::Contains("nested too deeply"));
    // dump() refuses what parse() would refuse, without recursing either (the value is
    // built by hand; nlohmann destroys it without recursing).
    json deep = json::array();
    for (int i = 0; i < 1000000; ++i) deep = json::array({std::move(deep)});
    back.clear();
    CHECK_THROWS_WITH(codec::dump(deep, back), Catch::Contains("nested too deeply"));
  }
  SECTION("objects keep their keys in order; a repeated key keeps its place and its last value") {
    json v = codec::parse(R"({"b":1,"a":2,"c":{"z":1,"y":2}})");
    std::string back;
    codec::dump(v, back);
    CHECK(back == R"({"b":1,"a":2,"c":{"z":1,"y":2}})");
    CHECK(v.begin().key() == "b");
    back.clear();
    codec::dump(codec::parse(R"({"a":1,"b":2,"a":3})"), back);
    CHECK(back == R"({"a":3,"b":2})");  // JSON.parse gives {a: 3, b: 2}
    codec::rpc_parts rp;  // a repeated envelope key: the last value, null too
    codec::parse_rpc(R"({"jsonrpc":"2.0","id":1,"id":null,"method":"m","params":[1],"params":null})", rp);
    CHECK(rp.k == codec::rpc_parts::kind::request);
    CHECK(rp.id.is_null());
    CHECK(rp.params.is_null());
    std::string wide = "{";  // many keys: the repeated-key check uses a hash set
    for (int i = 0; i < 100; ++i) wide += "\"k" + std::to_string(99 - i) + "\":" + std::to_string(i) + ",";
    wide += "\"k50\":\"last\"}";
    json w = codec::parse(wide);
    CHECK(w.size() == 100);
    CHECK(w.begin().key() == "k99");
    CHECK(w["k50"] == "last");
    CHECK(std::next(w.begin(), 49).key() == "k50");
    CHECK(w == json::parse(wide));  // nlohmann's ordered_json agrees
  }
  SECTION("-0 is written 0, as JSON.stringify writes it") {
    std::string out;
    codec::dump(json{{"z", -0.0}, {"p", 0.0}, {"i", codec::parse("-0")}}, out);
    CHECK(out == R"({"z":0,"p":0.0,"i":0})");
  }
  SECTION("lone UTF-16 surrogate escapes (JSON.stringify writes them) decode to U+FFFD, as Node does") {
    const std::string fffd = "\xef\xbf\xbd";
    CHECK(codec::parse(R"("\ud83d")") == fffd);                       // a lone high one
    CHECK(codec::parse(R"("\ude00")") == fffd);                       // a lone low one
    CHECK(codec::parse(R"("a\ud83db")") == "a" + fffd + "b");
    CHECK(codec::parse(R"("\ud83d\ude00")") == "\xf0\x9f\x98\x80");   // a pair: U+1F600
    CHECK(codec::parse(R"("\ude00\ud83d")") == fffd + fffd);         // a pair the wrong way round
    CHECK(codec::parse(R"("\ud83d\ud83d\ude00")") == fffd + "\xf0\x9f\x98\x80");
    CHECK(codec::parse(R"("\ud83d\u0041")") == fffd + "A");          // the next escape is kept
    CHECK(codec::parse(R"("\ud83d\n")") == fffd + "\n");
    CHECK_THROWS_AS(codec::parse(R"("\ud83d\uZZZZ")"), codec::error);  // still strict otherwise
    CHECK_THROWS_AS(codec::parse(R"("\ud83d\u00")"), codec::error);
    codec::rpc_parts p;
    codec::parse_rpc(R"({"jsonrpc":"2.0","id":1,"method":"m\ud800","params":["\udfff"]})", p);
    CHECK(p.method == "m" + fffd);
    CHECK(p.params == json::array({fffd}));
  }
}

TEST_CASE("mapped_buffer: heap, then its own mapping grown with mremap") {
  sp::detail::mapped_buffer b;
  std::string expect;
  b.append("0123456789");
  b.consume(4);  // the live bytes no longer start at the front
  expect = "456789";
  // Grow across the 1 MiB threshold and then by remapping, with the data intact.
  for (int round = 0; round < 5; ++round) {
    std::string chunk(std::size_t{700} << 10, static_cast<char>('a' + round));
    b.append(chunk);
    expect += chunk;
    REQUIRE(b.view() == expect);
    b.consume(3);
    expect.erase(0, 3);
  }
  CHECK(b.size() == expect.size());
  b.truncate(5);
  CHECK(b.view() == expect.substr(0, 5));
  b.push_back('!');
  CHECK(b.view() == expect.substr(0, 5) + "!");
  b.clear();
  b.shrink();  // gives the mapping back
  CHECK(b.empty());
  b.append("again");
  CHECK(b.view() == "again");
  sp::detail::mapped_buffer moved(std::move(b));
  CHECK(moved.view() == "again");
  CHECK(b.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
}

// ---------------------------------------------------------------------------------
// The channel with a C++ child

TEST_CASE("channel: a C++ parent and a C++ child exchange messages") {
  SECTION("many messages, unicode and nested objects, in order") {
    auto p = ipc_child({"connect", "echo"}).spawn();
    ipc::channel ch(p);
    CHECK(ch.is_open());
    CHECK(ch.name() == p.command_line());
    for (int i = 0; i < 1000; ++i) ch.send(assorted(i));
    for (int i = 0; i < 1000; ++i) {
      auto m = ch.receive();
      REQUIRE(m);
      CHECK(*m == assorted(i));
    }
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("a 10 MiB message both ways") {
    auto p = ipc_child({"connect", "echo"}).spawn();
    ipc::channel ch(p);
    json big = {{"data", std::string(10 << 20, 'z')}, {"tail", "end"}};
    ch.send(big);
    auto m = ch.receive();
    REQUIRE(m);
    CHECK(*m == big);
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("big strings are sent from the message itself: escapes, unicode, several, in order") {
    // send() does not copy long plain runs of a string; what arrives must be the same.
    auto p = ipc_child({"connect", "echo"}).spawn();
    ipc::channel ch(p);
    std::string mixed(300 << 10, 'a');
    mixed[0] = '"';
    mixed[100 << 10] = '\n';
    mixed.replace(200 << 10, 2, "\xc3\xa9");  // é
    mixed.back() = '\\';
    const json big = {{"a", mixed},
                      {"b", json::array({std::string(1 << 20, 'b'), "small", std::string(65536, 'c')})},
                      {std::string(70000, 'k'), {{"inner", std::string(65535, 'd')}}}};
    ch.post({{"first", 1}});  // queued bytes go first
    ch.send(big);
    ch.send({{"last", 1}});
    for (int i = 0; i < 4; ++i) ch.send(big);  // more than the socket holds: send() waits
    auto m = ch.receive();
    REQUIRE(m);
    CHECK(*m == json{{"first", 1}});
    m = ch.receive();
    REQUIRE(m);
    CHECK(*m == big);
    CHECK(ch.receive() == json{{"last", 1}});
    for (int i = 0; i < 4; ++i) {
      m = ch.receive();
      REQUIRE(m);
      CHECK(*m == big);
    }
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("both sides send a lot before reading: no deadlock") {
    // The child echoes each message at once while we are still sending; neither side
    // reads for a while. send() reads ahead while it waits, so both make progress.
    auto p = ipc_child({"connect", "echo"}).spawn();
    ipc::channel ch(p);
    const int n = 20000;
    for (int i = 0; i < n; ++i) ch.send({{"i", i}, {"pad", std::string(100, 'p')}});
    for (int i = 0; i < n; ++i) {
      auto m = ch.receive();
      REQUIRE(m);
      REQUIRE((*m)["i"] == i);
    }
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("receive returns nullopt at the end; eof() says so") {
    auto p = ipc_child({"connect", "send", R"({"a":1})", "close", "sleep", "100"}).spawn();
    ipc::channel ch(p);
    auto m = ch.receive();
    REQUIRE(m);
    CHECK(*m == json{{"a", 1}});
    CHECK_FALSE(ch.receive().has_value());
    CHECK(ch.eof());
    CHECK_FALSE(ch.receive().has_value());
    CHECK(p.wait().success());
  }
  SECTION("receive_for times out, then gets the message") {
    auto p = ipc_child({"connect", "sleep", "400", "send", R"({"late":true})", "expect-eof"}).spawn();
    ipc::channel ch(p);
    auto t0 = clk::now();
    CHECK_FALSE(ch.receive_for(100ms).has_value());
    CHECK(clk::now() - t0 >= 100ms);
    CHECK_FALSE(ch.eof());
    auto m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK((*m)["late"] == true);
    CHECK_THROWS_AS(ch.receive_for(-1ms), sp::argument_error);
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("a channel on another fd") {
    auto p = sp::command{IPC_HELPER_PATH, "print-env", "connect", "echo"}.ipc(5).out(sp::pipe).spawn();
    ipc::channel ch(p);
    ch.send({{"x", 5}});
    auto m = ch.receive();
    REQUIRE(m);
    CHECK((*m)["x"] == 5);
    ch.close();
    CHECK(p.wait().success());
    CHECK(p.out().read_all() == "5\njson\n");
  }
  SECTION("a process without a channel") {
    auto p = testing::helper({"exit", "0"}).spawn();
    CHECK_THROWS_AS(ipc::channel(p), sp::argument_error);
    p.wait();
  }
}

// ---------------------------------------------------------------------------------
// Framing, against a raw socket we control byte by byte

TEST_CASE("channel framing: send() writes exactly the compact JSON and a newline") {
  raw_pair rp;
  std::string text;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(rp.peer.get(), buf, sizeof buf, 0);
      if (n <= 0) return;
      text.append(buf, static_cast<std::size_t>(n));
    }
  });
  std::string s1(200000, 'x'), s2(100000, 'y');
  s2[5] = '\t';
  s2[99999] = '"';
  const json msgs[] = {json{{"k", s1}}, json::array({s2, 1, s1}), json(s1 + "\xe2\x82\xac" + s2), json{{"small", 1}}};
  std::string want;
  for (const auto& m : msgs) {
    rp.ch.send(m);
    want += m.dump() + "\n";
  }
  CHECK_THROWS_AS(rp.ch.send(json{{"bad", std::string(100000, 'z') + "\xff"}}), sp::argument_error);
  rp.ch.send(json{{"after", true}});  // nothing of the refused message was sent
  want += "{\"after\":true}\n";
  rp.ch.close();
  reader.join();
  CHECK(text.size() == want.size());
  CHECK(text == want);
}

TEST_CASE("channel framing: split, joined, malformed, oversized, truncated") {
  SECTION("messages split at every byte and joined in one write") {
    raw_pair rp;
    const std::string wire = "{\"a\":[1,2,3]}\n{\"b\":\"é\"}\n\"s\"\n";
    std::vector<json> got;
    for (char c : wire) {
      rp.write(std::string_view(&c, 1));
      while (rp.ch.read_available() == 0) sp::detail::poll_one(rp.ch.fd(), POLLIN, std::nullopt);
      while (auto m = rp.ch.try_receive()) got.push_back(*m);
    }
    REQUIRE(got.size() == 3);
    CHECK(got[0] == json{{"a", {1, 2, 3}}});
    CHECK(got[1] == json{{"b", "é"}});
    CHECK(got[2] == "s");
    rp.write(wire + wire);
    for (int i = 0; i < 6; ++i) CHECK(rp.ch.receive().has_value());
    CHECK_FALSE(rp.ch.try_receive().has_value());
  }
  SECTION("a malformed line is an error with its first bytes; the next line is read") {
    raw_pair rp;
    rp.write("{\"broken\": tru\x01\xff\n{\"ok\":1}\n\n{\"ok\":2}\r\n");
    try {
      rp.ch.receive();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::protocol_error);
      CHECK(e.sample() == "{\"broken\": tru\\x01\\xff");
      CHECK_THAT(e.what(), Catch::Contains("malformed message"));
    }
    CHECK(rp.ch.receive() == json{{"ok", 1}});
    CHECK_THROWS_AS(rp.ch.receive(), ipc::channel_error);  // an empty line is not JSON
    CHECK(rp.ch.receive() == json{{"ok", 2}});             // "\r\n" is fine
  }
  SECTION("a message over the size limit: error, then a clean shutdown") {
    raw_pair rp({.max_message_size = 1000, .internal_messages = false, .name = "hostile"});
    rp.write("{\"small\":1}\n");
    rp.write(std::string(5000, 'x'));  // no newline: the limit is hit while it arrives
    CHECK(rp.ch.receive() == json{{"small", 1}});
    try {
      rp.ch.receive();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::protocol_error);
      CHECK_THAT(e.what(), Catch::Contains("exceeds the limit of 1000 bytes"));
      CHECK_THAT(e.what(), Catch::Contains("'hostile'"));
      CHECK(e.sample().substr(0, 4) == "xxxx");
    }
    CHECK(rp.ch.eof());
    CHECK_FALSE(rp.ch.is_open());
    CHECK_FALSE(rp.ch.receive().has_value());
    CHECK_THROWS_AS(rp.ch.send({{"x", 1}}), ipc::channel_error);
    CHECK(rp.read_some().empty());  // the peer sees the end
  }
  SECTION("a complete line over the limit is refused too") {
    raw_pair rp({.max_message_size = 100, .internal_messages = false, .name = {}});
    rp.write("\"" + std::string(200, 'y') + "\"\n");
    CHECK_THROWS_WITH(rp.ch.receive(), Catch::Contains("a message of 202 bytes exceeds"));
    CHECK_FALSE(rp.ch.receive().has_value());
  }
  SECTION("the peer dies in the middle of a message: the end, not a hang") {
    raw_pair rp;
    rp.write("{\"whole\":true}\n{\"half\":");
    rp.peer.reset();
    CHECK(rp.ch.receive() == json{{"whole", true}});
    CHECK_FALSE(rp.ch.receive().has_value());
    CHECK(rp.ch.eof());
    auto e = rp.ch.end_error();
    REQUIRE(e);
    CHECK(e->code() == sp::errc::channel_closed);
    CHECK(e->sample() == "{\"half\":");
    CHECK_THAT(e->what(), Catch::Contains("in the middle of a message (8 bytes"));
  }
  SECTION("sending to a closed peer is an error, not SIGPIPE") {
    raw_pair rp;
    rp.peer.reset();
    try {
      for (int i = 0; i < 3; ++i) rp.ch.send({{"into", "the void"}});
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::channel_closed);
      CHECK_THAT(e.what(), Catch::Contains("the peer closed the channel"));
    }
    CHECK_THROWS_AS(rp.ch.post({{"x", 1}}), ipc::channel_error);
    sigset_t pending;
    sigpending(&pending);
    CHECK_FALSE(sigismember(&pending, SIGPIPE));
  }
  SECTION("the wire format is Node's: compact JSON, raw UTF-8, one line") {
    raw_pair rp;
    rp.ch.send({{"b", 1}, {"a", "é ✓"}, {"c", {1, nullptr, "x\ny"}}});
    CHECK(rp.read_some() == "{\"b\":1,\"a\":\"é ✓\",\"c\":[1,null,\"x\\ny\"]}\n");  // keys in order
    CHECK_THROWS_AS(rp.ch.send(std::string("\xff\xfe")), sp::argument_error);
    CHECK(rp.read_some(100ms).empty());  // nothing was sent
  }
  SECTION("Node's internal messages are passed over, unless asked for") {
    raw_pair rp;
    rp.write("{\"cmd\":\"NODE_CLUSTER\",\"x\":1}\n{\"cmd\":\"NODE_\"}\n{\"a\":1}\n");
    CHECK(rp.ch.receive() == json{{"cmd", "NODE_"}});  // "NODE_" alone is not internal
    CHECK(rp.ch.receive() == json{{"a", 1}});
    raw_pair all({.max_message_size = ipc::default_max_message_size, .internal_messages = true, .name = {}});
    all.write("{\"cmd\":\"NODE_CLUSTER\"}\n");
    CHECK(all.ch.receive() == json{{"cmd", "NODE_CLUSTER"}});
  }
  SECTION("a handle we cannot take is answered with NODE_HANDLE_NACK, as Node does") {
    raw_pair rp;
    rp.write("{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"x\":1}}\n{\"after\":1}\n");
    CHECK(rp.ch.receive() == json{{"after", 1}});
    CHECK(rp.read_some() == "{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
  }
  SECTION("post, wants_write and flush never block") {
    raw_pair rp;
    std::size_t posted = 0;
    const json m = {{"pad", std::string(1000, 'q')}};
    auto t0 = clk::now();
    while (rp.ch.post(m)) ++posted;  // until the socket is full
    ++posted;
    CHECK(clk::now() - t0 < 5s);
    CHECK(rp.ch.wants_write());
    CHECK(rp.ch.queued_bytes() > 0);
    CHECK_FALSE(rp.ch.flush());  // still full
    for (int i = 0; i < 10; ++i) {
      rp.ch.post(m);
      ++posted;
    }
    // The peer reads; we flush whenever there is room.
    std::string got;
    while (got.size() < posted * (m.dump().size() + 1)) {
      got += rp.read_some(100ms);
      rp.ch.flush();
    }
    CHECK_FALSE(rp.ch.wants_write());
    CHECK(got.size() == posted * (m.dump().size() + 1));
    CHECK(std::count(got.begin(), got.end(), '\n') == static_cast<long>(posted));
  }
  SECTION("enqueue and enqueue_request queue without writing; one flush sends them all") {
    raw_pair rp;
    rp.ch.enqueue({{"a", 1}});
    rp.ch.enqueue_request(7, "add", {{"a", 1}, {"b", 2}});
    rp.ch.enqueue_request(8, "ping", nullptr);
    CHECK(rp.ch.wants_write());
    CHECK(rp.read_some(50ms).empty());  // nothing written yet
    CHECK_THROWS_AS(rp.ch.enqueue_request(9, "add", 5), sp::argument_error);  // params
    CHECK_THROWS_AS(rp.ch.enqueue_request(9, "add", json::array({"\xff"})), sp::argument_error);
    CHECK(rp.ch.flush());
    CHECK(rp.read_some() ==
          "{\"a\":1}\n"
          "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"add\",\"params\":{\"a\":1,\"b\":2}}\n"
          "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\"}\n");
  }
  SECTION("close() wakes a receive() blocked in another thread") {
    raw_pair rp;
    std::optional<json> got = json("not yet");
    std::thread t([&] { got = rp.ch.receive(); });
    std::this_thread::sleep_for(50ms);  // let it block (the result is the same if not)
    rp.ch.close();
    t.join();
    CHECK_FALSE(got.has_value());
    CHECK_FALSE(rp.ch.is_open());
    CHECK(rp.ch.fd() == -1);
    CHECK_THROWS_AS(rp.ch.send(json(1)), ipc::channel_error);
  }
  SECTION("a channel needs a socket") {
    auto pp = sp::detail::make_pipe();
    CHECK_THROWS_AS(ipc::channel(std::move(pp.read)), sp::argument_error);
  }
}

TEST_CASE("channel end: a peer that dies with half a message written ends the channel like Node's 'disconnect'") {
  // ipc_helper writes two whole messages and half of a third, then exits 1.
  auto torn_child = [] {
    return ipc_child({"connect", "send", R"({"n":1})", "send", R"({"n":2})", "raw", R"({"n":3,"te)", "exit", "1"});
  };
  SECTION("receive(): every whole message, then nullopt; the torn bytes in end_error()") {
    auto p = torn_child().spawn();
    ipc::channel ch(p);
    std::vector<json> got;
    while (auto m = ch.receive()) got.push_back(*m);  // before: threw at the reader's loop
    CHECK(got == std::vector<json>{{{"n", 1}}, {{"n", 2}}});
    CHECK(ch.eof());
    auto e = ch.end_error();
    REQUIRE(e);
    CHECK(e->code() == sp::errc::channel_closed);
    CHECK(e->sample() == R"({"n":3,"te)");
    CHECK(p.wait() == sp::exit_status::exited(1));
  }
  SECTION("a clean end has no end_error()") {
    auto p = ipc_child({"connect", "send", R"({"n":1})", "exit", "0"}).spawn();
    ipc::channel ch(p);
    CHECK(ch.receive() == json{{"n", 1}});
    CHECK_FALSE(ch.receive());
    CHECK_FALSE(ch.end_error());
    p.wait();
  }
  SECTION("attach(): the messages, then on_close (not on_error)") {
    auto p = torn_child().spawn();
    ipc::channel ch(p);
    sp::event_loop loop;
    std::vector<json> got;
    int errors = 0, closes = 0;
    auto a = ipc::attach(loop, ch,
                         {.on_message = [&](json m) { got.push_back(std::move(m)); },
                          .on_error = [&](const ipc::channel_error&) { ++errors; },
                          .on_close = [&] { ++closes; }});
    loop.run();
    CHECK(got.size() == 2);
    CHECK(errors == 0);  // before: the torn message was an on_error
    CHECK(closes == 1);
    REQUIRE(ch.end_error());
    CHECK(ch.end_error()->sample() == R"({"n":3,"te)");
    p.wait();
  }
  SECTION("client: pending calls fail saying the peer ended mid-message; on_error is not called") {
    auto p = ipc_child({"connect", "receive-one", "raw", R"({"jsonrpc":"2.0","id":1,"res)", "exit", "1"}).spawn();
    std::atomic<int> errors{0};
    ipc::client c(p, {.timeout = 10s, .on_message = {}, .on_error = [&](const ipc::channel_error&) { ++errors; },
                      .exit_grace = 2s, .name = "torn"});
    try {
      c.call_sync("add", {{"a", 1}, {"b", 2}});
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::channel_closed);
      CHECK(e.status() == sp::exit_status::exited(1));
      CHECK_THAT(e.what(), Catch::Contains("in the middle of a message"));
    }
    CHECK(errors.load() == 0);
    p.wait();
  }
}

TEST_CASE("channel nesting: the limit goes through both ways; a million levels is an error for that message only") {
  auto nested = [](std::size_t levels) {
    json v = json::array();
    for (std::size_t i = 1; i < levels; ++i) v = json::array({std::move(v)});
    return v;
  };
  SECTION("a C++ child echoes a value nested max_nesting_depth deep") {
    auto p = ipc_child({"connect", "echo"}).spawn();
    ipc::channel ch(p);
    const json deep = nested(ipc::max_nesting_depth);
    ch.send(deep);
    auto m = ch.receive_for(10s);
    REQUIRE(m);
    std::string got, want;  // compared as text: nlohmann's == recurses
    sp::detail::json_codec::dump(*m, got);
    sp::detail::json_codec::dump(deep, want);
    CHECK(got == want);
    CHECK_THROWS_WITH(ch.send(nested(ipc::max_nesting_depth + 1)), Catch::Contains("nested too deeply"));
    ch.send({{"after", 1}});  // nothing of the refused message was sent
    CHECK(ch.receive_for(10s) == json{{"after", 1}});
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("a million levels: refused when sent, a protocol error when received; the channel goes on") {
    raw_pair rp;
    CHECK_THROWS_AS(rp.ch.send(nested(1000000)), sp::argument_error);
    rp.ch.send({{"ok", 1}});
    CHECK(rp.read_some() == "{\"ok\":1}\n");
    // 2 MB: more than the socket holds, so written while the channel reads.
    const std::string text = std::string(1000000, '[') + std::string(1000000, ']') + "\n{\"next\":2}\n";
    std::atomic<bool> written{false};
    std::thread writer([&] {  // no Catch assertions off the main thread
      std::string_view rest = text;
      while (!rest.empty()) {
        ssize_t n = ::send(rp.peer.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
        if (n <= 0) return;
        rest.remove_prefix(static_cast<std::size_t>(n));
      }
      written = true;
    });
    try {
      (void)rp.ch.receive();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::protocol_error);
      CHECK_THAT(e.what(), Catch::Contains("nested too deeply"));
    }
    writer.join();
    CHECK(written.load());
    CHECK(rp.ch.is_open());
    CHECK(rp.ch.receive() == json{{"next", 2}});
  }
}

TEST_CASE("channel state after bad input: is_open(), send() and receive() agree") {
  SECTION("an undecodable line: an error for that message; the channel stays usable") {
    auto p = ipc_child({"connect", "raw", "not json\n", "raw", std::string(20000, '[') + "\n", "echo"}).spawn();
    ipc::channel ch(p);
    for (const char* what : {"malformed message", "nested too deeply"}) {
      try {
        (void)ch.receive_for(10s);
        FAIL("no error");
      } catch (const ipc::channel_error& e) {
        CHECK(e.code() == sp::errc::protocol_error);
        CHECK_THAT(e.what(), Catch::Contains(what));
      }
      CHECK(ch.is_open());
    }
    ch.send({{"still", "usable"}});
    CHECK(ch.receive_for(10s) == json{{"still", "usable"}});
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("an oversized message: the channel is shut down, and all three say so") {
    auto p = ipc_child({"connect", "send", R"({"n":1})", "raw-bytes", "5000", "x", "expect-eof"}).spawn();
    ipc::channel ch(p, {.max_message_size = 1000, .internal_messages = false, .name = {}});
    CHECK(ch.receive_for(10s) == json{{"n", 1}});
    CHECK_THROWS_WITH(ch.receive_for(10s), Catch::Contains("exceeds the limit of 1000 bytes"));
    CHECK_FALSE(ch.is_open());  // before: true, while send() threw and receive() ended
    CHECK_FALSE(ch.receive_for(10s));
    CHECK(ch.eof());
    try {
      ch.send({{"x", 1}});
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::channel_closed);
    }
    CHECK(p.wait().success());  // the child saw the end (expect-eof) and exited
  }
}

TEST_CASE("channel framing: reassembly is linear in the message size") {
  // A 16 MiB message fed in 512-byte pieces, the channel reading after each piece.
  // Each byte must be scanned for '\n' once, so a piece costs the same at the end of
  // the message as at its start. A reader that rescans its buffer on every read pays
  // for the whole buffer on each piece: its median piece in the last quarter then
  // costs about 7 times one in the first (measured: 15 s instead of 0.3 s in all).
  // Medians, not totals, so that a hiccup of a busy machine does not decide.
  // Whitespace keeps the final JSON parse cheap.
  raw_pair rp({.max_message_size = std::size_t{64} << 20, .internal_messages = false, .name = {}});
  const std::size_t pieces = (std::size_t{16} << 20) / 512;
  const std::string piece(512, ' ');
  std::vector<double> cost(pieces);
  rp.write("[");
  bool early = false;
  auto start = clk::now();
  for (std::size_t i = 0; i < pieces; ++i) {
    auto t0 = clk::now();
    rp.write(piece);
    while (rp.ch.read_available() == 0) sp::detail::poll_one(rp.ch.fd(), POLLIN, std::nullopt);
    early = early || rp.ch.try_receive().has_value();
    cost[i] = std::chrono::duration<double, std::micro>(clk::now() - t0).count();
  }
  double total = std::chrono::duration<double>(clk::now() - start).count();
  CHECK_FALSE(early);
  rp.write("1]\n");
  auto m = rp.ch.receive();
  REQUIRE(m);
  CHECK(*m == json::array({1}));
  auto median = [&](std::size_t from, std::size_t to) {
    std::vector<double> v(cost.begin() + static_cast<std::ptrdiff_t>(from), cost.begin() + static_cast<std::ptrdiff_t>(to));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  double first = median(0, pieces / 4), last = median(pieces - pieces / 4, pieces);
  INFO("median piece: first quarter " << first << " us, last quarter " << last << " us; all: " << total << " s");
  CHECK(last < 3 * std::max(first, 1.0));
  CHECK(total < 15.0);
}

// ---------------------------------------------------------------------------------
// connect_to_parent

TEST_CASE("connect_to_parent: like Node, and clear errors without a channel") {
  SECTION("it consumes the variables and marks the fd close-on-exec") {
    auto p = ipc_child({"print-env", "connect", "print-env", "print-cloexec"}).out(sp::pipe).spawn();
    CHECK(p.wait().success());
    CHECK(p.out().read_all() == "3\njson\n<unset>\n<unset>\ncloexec\n");
  }
  SECTION("not started with a channel") {
    auto r = sp::run(sp::command{IPC_HELPER_PATH, "connect"}.env(
        sp::environment::inherit().unset("NODE_CHANNEL_FD")));
    CHECK(r.status.code() == 3);
    CHECK_THAT(r.out, Catch::Contains("NODE_CHANNEL_FD is not set"));
    CHECK_THAT(r.out, Catch::Contains(".ipc()"));
  }
  SECTION("bad NODE_CHANNEL_FD values") {
    auto try_env = [](sp::environment e) {
      return sp::run(sp::command{IPC_HELPER_PATH, "connect"}.env(std::move(e))).out;
    };
    auto env = sp::environment::inherit();
    CHECK_THAT(try_env(env.set("NODE_CHANNEL_FD", "three")), Catch::Contains("is not a file descriptor"));
    CHECK_THAT(try_env(env.set("NODE_CHANNEL_FD", "9")), Catch::Contains("fd 9 is not open"));
    CHECK_THAT(try_env(env.set("NODE_CHANNEL_FD", "1")), Catch::Contains("is not a socket"));
  }
  SECTION("Node's 'advanced' serialization is refused with an explanation") {
    int sv[2];
    REQUIRE(sp::detail::sys::socketpair(AF_UNIX, SOCK_STREAM, sv) == 0);
    sp::detail::unique_fd a(sv[0]), b(sv[1]);
    auto r = sp::run(sp::command{IPC_HELPER_PATH, "connect"}
                         .map_fd(3, b.get())
                         .env(sp::environment::inherit()
                                  .set("NODE_CHANNEL_FD", "3")
                                  .set("NODE_CHANNEL_SERIALIZATION_MODE", "advanced")));
    CHECK(r.status.code() == 3);
    CHECK_THAT(r.out, Catch::Contains("serialization 'advanced'; only 'json' is supported"));
  }
}

// ---------------------------------------------------------------------------------
// JSON-RPC: client and serve()

TEST_CASE("rpc: a client calling a C++ worker that runs serve()") {
  auto p = ipc_child({"connect", "serve"}).spawn();
  ipc::client calc(p);
  CHECK(calc.connected());

  SECTION("results") {
    CHECK(calc.call("add", {{"a", 5}, {"b", 3}}, 5s).get() == 8);
    CHECK(calc.call("multiply", {{"a", 7}, {"b", 6}}, 5s).get() == 42);
    CHECK(calc.call("divide", {{"a", 100}, {"b", 4}}, 5s).get() == 25);
    CHECK(calc.call("echo", json::array({1, "two", nullptr})).get() == json::array({1, "two", nullptr}));
    CHECK(calc.call("rpc.heartbeat").get().contains("time"));
    CHECK(calc.pending() == 0);
  }
  SECTION("error answers") {
    try {
      calc.call("divide", {{"a", 1}, {"b", 0}}, 5s).get();
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.code() == sp::errc::remote_error);
      CHECK(e.rpc_code() == ipc::rpc_error::invalid_params);
      CHECK(e.rpc_message() == "division by zero");
      CHECK(e.data() == json{{"a", 1}});
      CHECK(e.method() == "divide");
      CHECK_THAT(e.what(), Catch::Contains("call 'divide' (id "));
    }
    try {
      calc.call("nope", nullptr, 5s).get();
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.rpc_code() == -32601);
      CHECK(e.rpc_message() == "Method not found: 'nope'");
    }
    try {
      calc.call("fail", json::object(), 5s).get();
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.rpc_code() == ipc::rpc_error::server_error);
      CHECK(e.rpc_message() == "boom");
    }
    try {
      calc.call("add", {{"a", "five"}, {"b", 3}}, 5s).get();
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.rpc_code() == ipc::rpc_error::invalid_params);
      CHECK_THAT(e.rpc_message(), Catch::StartsWith("Invalid params"));
    }
    CHECK(calc.call("add", {{"a", 1}, {"b", 1}}, 5s).get() == 2);  // still fine
  }
  SECTION("bad calls are rejected before anything is sent") {
    CHECK_THROWS_AS(calc.call("add", 5), sp::argument_error);  // params: object/array/null
    CHECK_THROWS_AS(calc.call("add", nullptr, 0ms), sp::argument_error);
    CHECK_THROWS_AS(calc.call("add", nullptr, 1s, ipc::reply_fn{}), sp::argument_error);
  }
  SECTION("many calls in flight from many threads, futures and callbacks") {
    constexpr int threads = 8, per_thread = 300;
    std::atomic<int> ok{0};
    std::mutex mu;
    std::condition_variable cv;
    int callbacks = 0;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        std::vector<std::future<json>> fs;
        for (int i = 0; i < per_thread; ++i) {
          if (i % 2 == 0) {
            fs.push_back(calc.call("add", {{"a", t}, {"b", i}}, 10s));
          } else {
            calc.call("add", {{"a", t}, {"b", i}}, 10s, [&, t, i](ipc::reply r) {
              if (r.ok() && r.result == t + i) ++ok;
              std::lock_guard lk(mu);
              ++callbacks;
              cv.notify_all();
            });
          }
        }
        for (int i = 0; i < static_cast<int>(fs.size()); ++i)
          if (fs[i].get() == t + 2 * i) ++ok;
      });
    for (auto& t : ts) t.join();
    CHECK(wait_until_true(mu, cv, 10s, [&] { return callbacks == threads * per_thread / 2; }));
    CHECK(ok == threads * per_thread);
    CHECK(calc.pending() == 0);
  }
  SECTION("a call that gets no answer in time fails; the client goes on") {
    auto t0 = clk::now();
    auto slow = calc.call("sleep", {{"ms", 1500}}, 200ms);
    try {
      slow.get();
      FAIL("no error");
    } catch (const ipc::call_timeout_error& e) {
      CHECK(e.code() == std::errc::timed_out);
      CHECK(e.timeout() == 200ms);
      CHECK(e.method() == "sleep");
      // It says it timed out, which call, and the timeout (before: "got no reply").
      CHECK_THAT(e.what(), Catch::Contains("timed out") && Catch::Contains("call 'sleep'") &&
                               Catch::Contains("200 ms"));
    }
    auto took = clk::now() - t0;
    CHECK(took >= 200ms);
    CHECK(took < 1400ms);
    // The late answer to the timed-out call is dropped; this one is matched by id.
    CHECK(calc.call("add", {{"a", 2}, {"b", 2}}, 5s).get() == 4);
  }
  SECTION("notifications get no answer") {
    calc.notify("add", {{"a", 1}, {"b", 1}});
    calc.notify("count");
    // count answers how many calls the worker has handled: the 2 notifications + this.
    CHECK(calc.call("count", nullptr, 5s).get() == 3);
  }
  SECTION("the peer is killed with calls pending: they fail with its exit status") {
    auto pending = calc.call("sleep", {{"ms", 10000}}, 30s);
    auto queued = calc.call("add", {{"a", 1}, {"b", 1}}, 30s);  // behind the sleep
    auto t0 = clk::now();
    p.kill();
    for (auto* f : {&pending, &queued}) {
      try {
        f->get();
        FAIL("no error");
      } catch (const ipc::channel_error& e) {
        CHECK(e.code() == sp::errc::channel_closed);
        REQUIRE(e.status());
        CHECK(e.status()->signal() == SIGKILL);
        CHECK_THAT(e.what(), Catch::Contains("killed by SIGKILL"));
      }
    }
    CHECK(clk::now() - t0 < 5s);
    CHECK_FALSE(calc.connected());
    CHECK(calc.peer_status() == sp::exit_status::signaled(SIGKILL));
    // Later calls fail at once, saying why.
    CHECK_THROWS_WITH(calc.call("add", {{"a", 1}, {"b", 1}}, 5s).get(),
                      Catch::Contains("killed by SIGKILL"));
    CHECK_THROWS_AS(calc.notify("add"), ipc::channel_error);
  }
  SECTION("the peer exits by itself: the exit code is in the error") {
    auto dying = calc.call("exit", {{"code", 7}}, 30s);
    try {
      dying.get();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      REQUIRE(e.status());
      CHECK(e.status()->code() == 7);
      CHECK_THAT(e.what(), Catch::Contains("call 'exit' (id "));
      CHECK_THAT(e.what(), Catch::Contains("exited with code 7"));
    }
  }
  SECTION("close() fails pending calls and ends the worker") {
    auto slow = calc.call("sleep", {{"ms", 300}}, 30s);
    calc.close();
    CHECK_THROWS_WITH(slow.get(), Catch::Contains("the client was closed"));
    CHECK(p.wait().success());  // serve() returned at the end of the channel
  }
  calc.close();
  p.wait_for(5s);
}

TEST_CASE("rpc: call_sync() waits on the calling thread") {
  auto p = ipc_child({"connect", "serve"}).spawn();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<json> notes;
  ipc::client calc(p, {.timeout = 10s,
                       .on_message =
                           [&](const json& m) {
                             std::lock_guard lk(mu);
                             notes.push_back(m);
                             cv.notify_all();
                           },
                       .on_error = {},
                       .exit_grace = 500ms,
                       .name = {}});

  SECTION("results and error answers, as call().get() gives them") {
    CHECK(calc.call_sync("add", {{"a", 5}, {"b", 3}}, 5s) == 8);
    CHECK(calc.call_sync("echo", json::array({1, "two", nullptr})) == json::array({1, "two", nullptr}));
    CHECK(calc.call_sync("echo") == nullptr);  // no params
    CHECK(calc.call_sync("rpc.heartbeat").contains("time"));
    try {
      calc.call_sync("divide", {{"a", 1}, {"b", 0}}, 5s);
      FAIL("no error");
    } catch (const ipc::rpc_error& e) {
      CHECK(e.rpc_code() == ipc::rpc_error::invalid_params);
      CHECK(e.rpc_message() == "division by zero");
      CHECK(e.data() == json{{"a", 1}});
      CHECK(e.method() == "divide");
    }
    CHECK_THROWS_WITH(calc.call_sync("nope", nullptr, 5s), Catch::Contains("Method not found: 'nope'"));
    CHECK_THROWS_AS(calc.call_sync("add", 5), sp::argument_error);
    CHECK_THROWS_AS(calc.call_sync("add", nullptr, 0ms), sp::argument_error);
    CHECK(calc.pending() == 0);
  }
  SECTION("a call that gets no answer in time fails; the late answer is dropped") {
    auto t0 = clk::now();
    try {
      calc.call_sync("sleep", {{"ms", 1500}}, 200ms);
      FAIL("no error");
    } catch (const ipc::call_timeout_error& e) {
      CHECK(e.timeout() == 200ms);
      CHECK(e.method() == "sleep");
      CHECK_THAT(e.what(), Catch::Contains("timed out") && Catch::Contains("call 'sleep'") &&
                               Catch::Contains("200 ms"));
    }
    auto took = clk::now() - t0;
    CHECK(took >= 200ms);
    CHECK(took < 1400ms);
    CHECK(calc.call_sync("add", {{"a", 2}, {"b", 2}}, 5s) == 4);
    CHECK(calc.pending() == 0);
  }
  SECTION("messages read by call_sync() reach on_message, in order, on the reader thread") {
    CHECK(calc.call_sync("notes", {{"n", 50}}, 5s) == 50);
    CHECK(wait_until_true(mu, cv, 5s, [&] { return notes.size() == 50; }));
    std::lock_guard lk(mu);
    for (int k = 0; k < static_cast<int>(notes.size()); ++k) CHECK(notes[k] == json{{"note", k}});
  }
  SECTION("mixed with call() and callbacks, from many threads") {
    constexpr int threads = 6, per_thread = 200;
    std::atomic<int> ok{0}, callbacks{0};
    std::atomic<bool> callback_on_caller{false};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        const auto me = std::this_thread::get_id();
        for (int i = 0; i < per_thread; ++i) {
          switch ((t + i) % 3) {
            case 0:
              if (calc.call_sync("add", {{"a", t}, {"b", i}}, 10s) == t + i) ++ok;
              break;
            case 1:
              if (calc.call("add", {{"a", t}, {"b", i}}, 10s).get() == t + i) ++ok;
              break;
            default:
              calc.call("add", {{"a", t}, {"b", i}}, 10s, [&, t, i, me](ipc::reply r) {
                if (std::this_thread::get_id() == me) callback_on_caller = true;
                if (r.ok() && r.result == t + i) ++ok;
                std::lock_guard lk(mu);
                ++callbacks;
                cv.notify_all();
              });
          }
        }
      });
    for (auto& t : ts) t.join();
    CHECK(wait_until_true(mu, cv, 10s, [&] { return callbacks == threads * per_thread / 3; }));
    CHECK(ok == threads * per_thread);
    CHECK_FALSE(callback_on_caller);
    CHECK(calc.pending() == 0);
  }
  SECTION("the peer is killed during the call: it fails with the exit status") {
    std::thread killer([&] {
      std::this_thread::sleep_for(100ms);  // the call is under way (a failure would only be a late kill)
      p.kill();
    });
    auto t0 = clk::now();
    try {
      calc.call_sync("sleep", {{"ms", 10000}}, 30s);
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::channel_closed);
      REQUIRE(e.status());
      CHECK(e.status()->signal() == SIGKILL);
    }
    killer.join();
    CHECK(clk::now() - t0 < 5s);
    CHECK_FALSE(calc.connected());
    CHECK_THROWS_WITH(calc.call_sync("add", {{"a", 1}, {"b", 1}}, 5s), Catch::Contains("killed by SIGKILL"));
  }
  SECTION("the peer exits by itself: the exit code is in the error") {
    try {
      calc.call_sync("exit", {{"code", 7}}, 30s);
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      REQUIRE(e.status());
      CHECK(e.status()->code() == 7);
      CHECK_THAT(e.what(), Catch::Contains("exited with code 7"));
    }
  }
  SECTION("close() from another thread ends a waiting call_sync() at once") {
    std::thread closer([&] {
      std::this_thread::sleep_for(100ms);
      calc.close();
    });
    auto t0 = clk::now();
    CHECK_THROWS_WITH(calc.call_sync("sleep", {{"ms", 3000}}, 30s), Catch::Contains("the client was closed"));
    CHECK(clk::now() - t0 < 2s);
    closer.join();
  }
  calc.close();
  p.wait_for(5s);
}

TEST_CASE("rpc: answers and requests written in other shapes than ours") {
  // The client and serve() decode JSON-RPC envelopes without building an object
  // (json_codec::parse_rpc); other key orders, extra keys (the general way), escapes
  // and spaces must give the same answers.
  SECTION("answers") {
    auto p = ipc_child({"connect",
                        "receive-one", "raw", R"({"jsonrpc":"2.0","result":{"a":1},"id":1}\n)",
                        "receive-one", "raw", R"({"id":2,"jsonrpc":"2.0","result":5,"extra":true}\n)",
                        "receive-one", "raw", R"({"id":3 ,"jsonrpc":"2.0","result":[1,2]}\n)",
                        // (raw decodes \n and \\: a JSON escape is written \\u, \\n)
                        "receive-one", "raw", R"({"\\u0069d":4,"jsonrpc":"2.0","result":"x"}\n)",
                        "receive-one", "raw", R"({"id":5,"jsonrpc":"2.0","result":"\\u00e9\\n"}   \n)",
                        "receive-one", "raw", R"({"id":6,"jsonrpc":"2.0","result":{"k":[1,{"z":null}]}}\n)",
                        "expect-eof"})
                 .spawn();
    ipc::client c(p);
    CHECK(c.call_sync("m", nullptr, 5s) == json{{"a", 1}});
    CHECK(c.call("m", nullptr, 5s).get() == 5);
    CHECK(c.call_sync("m", nullptr, 5s) == json::array({1, 2}));
    CHECK(c.call_sync("m", nullptr, 5s) == "x");
    CHECK(c.call("m", nullptr, 5s).get() == "\xc3\xa9\n");
    CHECK(c.call_sync("m", nullptr, 5s) == json{{"k", json::array({1, {{"z", nullptr}}})}});
    c.close();
    CHECK(p.wait().success());
  }
  SECTION("requests") {
    auto p = ipc_child({"connect", "serve"}).spawn();
    ipc::channel ch(p);
    auto ask = [&](std::string text) {
      text += "\n";
      REQUIRE(::send(ch.fd(), text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size()));
      auto r = ch.receive();
      REQUIRE(r);
      return *r;
    };
    CHECK(ask(R"({"id":1,"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2}})")["result"] == 3.0);
    CHECK(ask(R"({"id":2,"jsonrpc":"2.0","method":"ad\u0064","params":{"a":1,"b":2}})")["result"] == 3.0);
    CHECK(ask(R"({"id":3,"jsonrpc":"2.0","method":"echo","params":[1],"x":0})")["result"] == json::array({1}));
    CHECK(ask(R"({"id":4,"jsonrpc":"2.0","method":"echo"})") == json{{"jsonrpc", "2.0"}, {"id", 4}, {"result", nullptr}});
    CHECK(ask(R"({"id":05,"jsonrpc":"2.0","method":"echo"})")["error"]["code"] == -32700);  // not JSON
    CHECK(ask(R"({"id":6,"jsonrpc":"2.0","method":"nope","params":[]})")["error"]["code"] == -32601);
    CHECK(ask(R"({"id":7,"jsonrpc":"2.0","method":"echo","params":{"s":"\ud83d\ude00"}})")["result"]["s"] ==
          "\xf0\x9f\x98\x80");
    ch.close();
    CHECK(p.wait().success());
  }
}

TEST_CASE("rpc: serve() answers bad input and batches") {
  auto p = ipc_child({"connect", "serve"}).spawn();
  ipc::channel ch(p);
  SECTION("a malformed line gets a parse error, then serve() goes on") {
    std::string junk = "this is not json\n";
    REQUIRE(::send(ch.fd(), junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
    ch.send({{"jsonrpc", "2.0"}, {"id", 1}, {"method", "add"}, {"params", {{"a", 1}, {"b", 2}}}});
    auto e = ch.receive();
    REQUIRE(e);
    CHECK((*e)["id"].is_null());
    CHECK((*e)["error"]["code"] == -32700);
    CHECK((*e)["error"]["data"]["sample"] == "this is not json");
    auto r = ch.receive();
    REQUIRE(r);
    CHECK(*r == json{{"jsonrpc", "2.0"}, {"id", 1}, {"result", 3.0}});
  }
  SECTION("invalid requests and string ids") {
    ch.send({{"jsonrpc", "2.0"}, {"id", "abc"}, {"method", 42}});
    auto e = ch.receive();
    REQUIRE(e);
    CHECK((*e)["id"] == "abc");
    CHECK((*e)["error"]["code"] == -32600);
    ch.send({{"jsonrpc", "2.0"}, {"id", "s1"}, {"method", "echo"}, {"params", {{"k", "v"}}}});
    CHECK(ch.receive() == json{{"jsonrpc", "2.0"}, {"id", "s1"}, {"result", {{"k", "v"}}}});
  }
  SECTION("a batch is answered with an array; notifications inside get no answer") {
    ch.send(json::array({
        {{"jsonrpc", "2.0"}, {"id", 1}, {"method", "add"}, {"params", {{"a", 1}, {"b", 1}}}},
        {{"jsonrpc", "2.0"}, {"method", "add"}, {"params", {{"a", 1}, {"b", 1}}}},
        {{"jsonrpc", "2.0"}, {"id", 2}, {"method", "missing"}},
    }));
    auto r = ch.receive();
    REQUIRE(r);
    REQUIRE(r->is_array());
    REQUIRE(r->size() == 2);
    CHECK((*r)[0]["result"] == 2.0);
    CHECK((*r)[1]["error"]["code"] == -32601);
  }
  ch.close();
  CHECK(p.wait().success());
}

TEST_CASE("rpc: a client on a bare channel, and messages that are not answers") {
  auto p = ipc_child({"connect", "send", R"({"event":"ready"})", "serve"}).spawn();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<json> others;
  ipc::client c(ipc::channel(p), {.timeout = 5s,
                                  .on_message =
                                      [&](const json& m) {
                                        std::lock_guard lk(mu);
                                        others.push_back(m);
                                        cv.notify_all();
                                      },
                                  .on_error = {},
                                  .exit_grace = 500ms,
                                  .name = "bare"});
  CHECK(wait_until_true(mu, cv, 5s, [&] { return !others.empty(); }));
  CHECK(others.at(0) == json{{"event", "ready"}});
  CHECK(c.call("add", {{"a", 2}, {"b", 3}}).get() == 5);
  auto dying = c.call("exit", {{"code", 0}});
  // Without the process the client cannot know the exit status, only the end.
  CHECK_THROWS_WITH(dying.get(), Catch::Contains("'bare' closed the channel"));
  CHECK_FALSE(c.peer_status().has_value());
  p.wait();
}

// ---------------------------------------------------------------------------------
// Hostile peers

TEST_CASE("hostile peers: the parent gets errors and keeps working with other channels") {
  auto healthy_p = ipc_child({"connect", "echo"}).spawn();
  ipc::channel healthy(healthy_p);
  auto still_fine = [&](int i) {
    healthy.send({{"still", i}});
    auto m = healthy.receive_for(5s);
    REQUIRE(m);
    CHECK((*m)["still"] == i);
  };

  SECTION("garbage bytes, then a good message") {
    auto p = ipc_child({"connect", "raw", "\\x00\\xff\\x01garbage\\n", "send", R"({"ok":1})", "expect-eof"}).spawn();
    ipc::channel ch(p);
    try {
      ch.receive();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::protocol_error);
      CHECK(e.sample() == "\\x00\\xff\\x01garbage");
    }
    CHECK(ch.receive() == json{{"ok", 1}});
    still_fine(1);
    ch.close();
    CHECK(p.wait().success());
  }
  SECTION("a line over the size limit") {
    auto p = ipc_child({"connect", "raw-bytes", "100000", "x", "expect-eof"}).spawn();
    ipc::channel ch(p, {.max_message_size = 4096, .internal_messages = false, .name = {}});
    CHECK_THROWS_WITH(ch.receive(), Catch::Contains("exceeds the limit of 4096 bytes"));
    CHECK_FALSE(ch.receive().has_value());
    CHECK(p.wait_for(5s).has_value());  // it saw the end of the channel and finished
    still_fine(2);
  }
  SECTION("half a message, then exit") {
    auto p = ipc_child({"connect", "raw", "{\"half\":[1,2", "exit", "0"}).spawn();
    ipc::channel ch(p);
    CHECK_FALSE(ch.receive().has_value());  // the end, as Node's 'disconnect'
    REQUIRE(ch.end_error());
    CHECK_THAT(ch.end_error()->what(), Catch::Contains("in the middle of a message"));
    p.wait();
    still_fine(3);
  }
  SECTION("closing in the middle of a request") {
    auto p = ipc_child({"connect", "receive-one", "close", "sleep", "100"}).spawn();
    ipc::client c(p);
    auto f = c.call("add", {{"a", 1}, {"b", 2}}, 10s);
    try {
      f.get();
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::channel_closed);
      // It closed the channel and exited 100 ms later, within the exit grace.
      CHECK_THAT(e.what(), Catch::Contains("exited with code 0"));
    }
    still_fine(4);
    p.wait();
  }
  SECTION("a peer that never answers") {
    auto p = ipc_child({"connect", "expect-eof"}).spawn();
    ipc::client c(p);
    CHECK_THROWS_AS(c.call("add", {{"a", 1}, {"b", 2}}, 100ms).get(), ipc::call_timeout_error);
    still_fine(5);
  }
  healthy.close();
  CHECK(healthy_p.wait().success());
}

// ---------------------------------------------------------------------------------
// heartbeat

TEST_CASE("client: a call's deadline holds while the peer floods garbage or huge lines") {
  // Before: the client took every line buffered (megabytes of them, each an error to
  // build) before it looked at the deadlines again: a 100 ms call came back after
  // 0.3-2 s (more under ASan).
  constexpr auto timeout = 100ms;
  constexpr auto bound = timeout + 50ms;
  auto check_timeout = [&](auto&& call) {
    auto t0 = clk::now();
    try {
      call();
      FAIL("no error");
    } catch (const ipc::call_timeout_error& e) {
      CHECK(e.timeout() == timeout);
    }
    const auto took = clk::now() - t0;
    const double ms = std::chrono::duration<double, std::milli>(took).count();
    INFO("the call returned after " << ms << " ms");
    CHECK(took >= timeout);
    CHECK(took < bound);
  };
  SECTION("garbage lines") {
    auto p = ipc_child({"connect", "flood-lines"}).spawn();
    std::atomic<long> errors{0};
    {
      ipc::client c(p, {.timeout = 30s, .on_message = {},
                        .on_error = [&](const ipc::channel_error&) { ++errors; }, .exit_grace = 500ms, .name = {}});
      check_timeout([&] { c.call("add", {{"a", 1}, {"b", 2}}, timeout).get(); });
      check_timeout([&] { c.call_sync("add", {{"a", 1}, {"b", 2}}, timeout); });
      check_timeout([&] { c.call("add", {{"a", 1}, {"b", 2}}, timeout).get(); });
      CHECK(errors.load() > 100);
      auto t1 = clk::now();
      c.close();
      CHECK(clk::now() - t1 < 100ms);
    }
    p.kill();
    p.wait();
  }
  SECTION("one endless line (no newline ever)") {
    auto p = ipc_child({"connect", "flood-bytes"}).spawn();
    {
      // A limit the flood does not reach in the time of the test: the call must time
      // out while the line is still arriving.
      ipc::client c(ipc::channel(p, {.max_message_size = std::size_t{4} << 30, .internal_messages = false, .name = {}}));
      check_timeout([&] { c.call("add", {{"a", 1}, {"b", 2}}, timeout).get(); });
      check_timeout([&] { c.call_sync("add", {{"a", 1}, {"b", 2}}, timeout); });
      auto t1 = clk::now();
      c.close();
      CHECK(clk::now() - t1 < 100ms);
    }
    p.kill();
    p.wait();
  }
}

TEST_CASE("heartbeat: latency of each beat, and a stopped peer is noticed") {
  auto p = ipc_child({"connect", "serve"}).spawn();
  ipc::client c(p);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<ipc::beat> beats;
  std::optional<clk::time_point> unresponsive_at;
  std::chrono::milliseconds silence{0};

  SECTION("beats") {
    ipc::heartbeat hb(c, {.interval = 50ms, .timeout = 2s, .method = "rpc.heartbeat",
                          .on_beat = [&](const ipc::beat& b) {
                            std::lock_guard lk(mu);
                            beats.push_back(b);
                            cv.notify_all();
                          },
                          .on_unresponsive = {}});
    REQUIRE(wait_until_true(mu, cv, 5s, [&] { return beats.size() >= 3; }));
    hb.stop();
    std::lock_guard lk(mu);
    CHECK(beats[0].number == 1);
    CHECK(beats[1].number == 2);
    for (const auto& b : beats) {
      CHECK(b.latency > 0us);
      CHECK(b.latency < 2s);
      CHECK(b.reply.contains("time"));
    }
    CHECK(hb.beats() >= 3);
    CHECK(hb.responsive());
    CHECK(hb.last_latency().has_value());
  }
  SECTION("SIGSTOP: unresponsive within timeout + margin; SIGCONT: back") {
    const auto timeout = 500ms;
    ipc::heartbeat hb(c, {.interval = 100ms, .timeout = timeout, .method = "rpc.heartbeat",
                          .on_beat = [&](const ipc::beat& b) {
                            std::lock_guard lk(mu);
                            beats.push_back(b);
                            cv.notify_all();
                          },
                          .on_unresponsive = [&](std::chrono::milliseconds s) {
                            std::lock_guard lk(mu);
                            unresponsive_at = clk::now();
                            silence = s;
                            cv.notify_all();
                          }});
    REQUIRE(wait_until_true(mu, cv, 5s, [&] { return beats.size() >= 2; }));
    auto stopped_at = clk::now();
    REQUIRE(p.signal(SIGSTOP));
    REQUIRE(wait_until_true(mu, cv, 5s, [&] { return unresponsive_at.has_value(); }));
    auto detected = *unresponsive_at - stopped_at;
    INFO("detected after " << std::chrono::duration_cast<std::chrono::milliseconds>(detected).count() << " ms");
    CHECK(detected >= timeout - 150ms);  // the last answer came at most one interval earlier
    CHECK(detected <= timeout + 1000ms);  // generous: a loaded machine delays threads
    CHECK(silence >= timeout);
    CHECK_FALSE(hb.responsive());
    std::size_t before;
    {
      std::lock_guard lk(mu);
      before = beats.size();
    }
    REQUIRE(p.signal(SIGCONT));
    REQUIRE(wait_until_true(mu, cv, 5s, [&] { return beats.size() > before; }));
    CHECK(hb.responsive());
    hb.stop();
  }
  c.close();
  p.wait_for(5s);
}

TEST_CASE("serve: heartbeats are answered while a handler is busy") {
  auto p = ipc_child({"connect", "serve"}).spawn();
  ipc::client c(p);
  SECTION("a heartbeat during a long handler; other requests keep their order") {
    auto slow = c.call("sleep", {{"ms", 1200}}, 10s);
    std::this_thread::sleep_for(100ms);  // let the handler start (the test only gets slower if not)
    auto first = c.call("echo", {{"n", 1}}, 10s);
    auto t0 = clk::now();
    json beat = c.call("rpc.heartbeat", {{"beat", 1}}, 10s).get();
    auto took = clk::now() - t0;
    CHECK(beat["pid"] == p.pid());
    INFO("heartbeat answered after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took < 700ms);  // not after the 1.2 s handler (typically ~20-40 ms)
    auto second = c.call("echo", {{"n", 2}}, 10s);
    CHECK(first.wait_for(0s) != std::future_status::ready);  // still behind the handler
    CHECK(slow.get() == 1200);
    CHECK(first.get() == json{{"n", 1}});
    CHECK(second.get() == json{{"n", 2}});
    // The handlers ran one at a time, in order: count = sleep, echo, echo, count.
    CHECK(c.call("count", nullptr, 5s).get() == 4);
  }
  SECTION("ipc::heartbeat stays happy through a busy handler; SIGSTOP is still noticed") {
    std::mutex mu;
    std::condition_variable cv;
    int beats = 0;
    bool unresponsive = false;
    ipc::heartbeat hb(c, {.interval = 50ms, .timeout = 400ms, .method = "rpc.heartbeat",
                          .on_beat = [&](const ipc::beat&) {
                            std::lock_guard lk(mu);
                            ++beats;
                            cv.notify_all();
                          },
                          .on_unresponsive = [&](std::chrono::milliseconds) {
                            std::lock_guard lk(mu);
                            unresponsive = true;
                            cv.notify_all();
                          }});
    auto busy = c.call("sleep", {{"ms", 1500}}, 10s);
    CHECK(busy.get() == 1500);
    {
      std::lock_guard lk(mu);
      CHECK_FALSE(unresponsive);
      CHECK(beats >= 10);  // ~30 at 50 ms over 1.5 s; generous for a loaded machine
    }
    auto stuck = c.call("sleep", {{"ms", 3000}}, 20s);
    std::this_thread::sleep_for(100ms);
    REQUIRE(p.signal(SIGSTOP));
    CHECK(wait_until_true(mu, cv, 5s, [&] { return unresponsive; }));
    hb.stop();
    REQUIRE(p.signal(SIGCONT));
    CHECK(stuck.get() == 3000);
  }
  SECTION("a notification read during a handler runs in its turn") {
    auto slow = c.call("sleep", {{"ms", 600}}, 10s);
    std::this_thread::sleep_for(100ms);
    c.notify("add", {{"a", 1}, {"b", 1}});
    CHECK(c.call("rpc.heartbeat", nullptr, 10s).get().contains("time"));
    CHECK(slow.get() == 600);
    CHECK(c.call("count", nullptr, 5s).get() == 3);  // sleep, the notification, count
  }
  c.close();
  CHECK(p.wait_for(5s).has_value());
}

// ---------------------------------------------------------------------------------
// broadcast and call_all

TEST_CASE("broadcast: one message to many channels; a dead one is reported") {
  std::vector<sp::process> ps;
  std::vector<ipc::channel> chs;
  for (int i = 0; i < 3; ++i) {
    ps.push_back(ipc_child({"connect", i == 1 ? "close" : "echo"}).spawn());
    chs.emplace_back(ps.back());
  }
  REQUIRE(ps[1].wait_for(5s).has_value());  // the middle one is gone
  SECTION("small") {
    auto r = ipc::broadcast(chs, {{"msg", "hello"}});
    // The dead channel may take one message into its socket before the kernel
    // notices; the second broadcast fails for sure.
    auto r2 = ipc::broadcast(chs, {{"msg", "again"}});
    CHECK(r2.delivered == 2);
    REQUIRE(r2.failed.size() == 1);
    CHECK(r2.failed[0].first == 1);
    CHECK_THROWS_AS(std::rethrow_exception(r2.failed[0].second), ipc::channel_error);
    CHECK(r.delivered + r.failed.size() == 3);
    for (int i : {0, 2}) {
      CHECK(chs[i].receive_for(5s) == json{{"msg", "hello"}});
      CHECK(chs[i].receive_for(5s) == json{{"msg", "again"}});
    }
  }
  SECTION("big, to channels given as pointers") {
    std::vector<ipc::channel*> live{&chs[0], &chs[2]};
    json big = {{"blob", std::string(4 << 20, 'b')}};
    auto r = ipc::broadcast(live, big);
    CHECK(r.ok());
    CHECK(r.delivered == 2);
    CHECK(chs[0].receive_for(10s) == big);
    CHECK(chs[2].receive_for(10s) == big);
  }
  for (auto& ch : chs) ch.close();
  for (auto& p : ps) p.wait_for(5s);
}

TEST_CASE("call_all: the same call to many clients") {
  std::vector<sp::process> ps;
  std::vector<std::unique_ptr<ipc::client>> cs;
  for (int i = 0; i < 3; ++i) {
    ps.push_back(ipc_child({"connect", "serve"}).spawn());
    cs.push_back(std::make_unique<ipc::client>(ps.back()));
  }
  auto fs = ipc::call_all(cs, "pid", nullptr, 5s);
  REQUIRE(fs.size() == 3);
  for (int i = 0; i < 3; ++i) CHECK(fs[i].get() == ps[i].pid());
  cs.clear();
  for (auto& p : ps) CHECK(p.wait().success());
}

// ---------------------------------------------------------------------------------
// The event-loop adapter, with a minimal loop of the same shape as sp::event_loop.

namespace {
class test_loop {
 public:
  using fn = std::function<void(std::uint32_t)>;
  int watch(int fd, std::uint32_t events, fn f) {
    int id = next_++;
    w_[id] = {fd, events, std::move(f)};
    return id;
  }
  void unwatch(int id) { w_.erase(id); }
  // Runs until pred() or the timeout; false on timeout.
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds timeout) {
    auto end = clk::now() + timeout;
    while (!pred()) {
      if (clk::now() >= end) return false;
      std::vector<pollfd> fds;
      std::vector<int> ids;
      for (auto& [id, w] : w_) {
        short ev = 0;
        if (w.events & EPOLLIN) ev |= POLLIN;
        if (w.events & EPOLLOUT) ev |= POLLOUT;
        fds.push_back({w.fd, ev, 0});
        ids.push_back(id);
      }
      sp::detail::poll_until(fds.data(), fds.size(), clk::now() + 50ms);
      for (std::size_t i = 0; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        auto it = w_.find(ids[i]);
        if (it == w_.end()) continue;
        std::uint32_t rev = 0;
        if (fds[i].revents & POLLIN) rev |= EPOLLIN;
        if (fds[i].revents & POLLOUT) rev |= EPOLLOUT;
        if (fds[i].revents & POLLHUP) rev |= EPOLLHUP;
        if (fds[i].revents & POLLERR) rev |= EPOLLERR;
        fn f = it->second.f;  // the callback may unwatch itself
        f(rev);
      }
    }
    return true;
  }
  std::size_t watched() const { return w_.size(); }

 private:
  struct w {
    int fd;
    std::uint32_t events;
    fn f;
  };
  std::map<int, w> w_;
  int next_ = 1;
};
}  // namespace

TEST_CASE("attach: a channel driven by an event loop") {
  auto p = ipc_child({"connect", "echo-n", "3", "send", R"({"bye":true})", "close", "sleep", "50"}).spawn();
  ipc::channel ch(p);
  test_loop loop;
  std::vector<json> got;
  bool closed = false;
  auto a = ipc::attach(loop, ch, {.on_message = [&](json m) { got.push_back(std::move(m)); },
                                  .on_error = {},
                                  .on_close = [&] { closed = true; }});
  CHECK(a->attached());
  json big = {{"blob", std::string(2 << 20, 'e')}};  // more than the socket holds
  a->send({{"n", 1}});
  a->send(big);
  a->send({{"n", 3}});
  CHECK(loop.run_until([&] { return closed; }, 10s));
  REQUIRE(got.size() == 4);
  CHECK(got[0] == json{{"n", 1}});
  CHECK(got[1] == big);
  CHECK(got[2] == json{{"n", 3}});
  CHECK(got[3] == json{{"bye", true}});
  CHECK_FALSE(a->attached());
  CHECK(loop.watched() == 0);
  CHECK(p.wait().success());
}

TEST_CASE("attach: a channel in an sp::event_loop") {
  auto p = ipc_child({"connect", "echo-n", "2", "close", "sleep", "50"}).spawn();
  ipc::channel ch(p);
  sp::event_loop loop;
  std::vector<json> got;
  bool closed = false;
  auto a = ipc::attach(loop, ch, {.on_message = [&](json m) { got.push_back(std::move(m)); },
                                  .on_error = {},
                                  .on_close = [&] { closed = true; }});
  a->send({{"n", 1}});
  a->send({{"n", 2}});
  for (int i = 0; i < 100 && !closed; ++i) loop.run_for(100ms);  // at most 10 s
  CHECK(closed);
  CHECK(got == std::vector<json>{{{"n", 1}}, {{"n", 2}}});
  CHECK_FALSE(a->attached());
  CHECK(p.wait().success());
}

// ---------------------------------------------------------------------------------
// Interop with real Node.js

TEST_CASE("node: a C++ parent and a Node child (process.on('message') / process.send)", "[node]") {
  REQUIRE_NODE();
  auto p = sp::command{"node", script("echo_child.js")}.ipc().spawn();
  ipc::channel ch(p);
  SECTION("many messages, unicode, nested objects") {
    for (int i = 0; i < 1000; ++i) ch.send(assorted(i));
    for (int i = 0; i < 1000; ++i) {
      auto m = ch.receive_for(10s);
      REQUIRE(m);
      CHECK(*m == assorted(i));
    }
  }
  SECTION("Node serializes what it received exactly as we do") {
    json v = {{"unicode", "é ✓ 日本語 🎉 \u2028 \"q\" \\ \t \x01"}, {"list", {1, -2, 3, nullptr, false}}};
    ch.send({{"op", "stringify"}, {"value", v}});
    auto m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK((*m)["text"] == v.dump());
  }
  SECTION("a 10 MiB message both ways") {
    json big = {{"data", std::string(10 << 20, 'n')}};
    ch.send(big);
    auto m = ch.receive_for(30s);
    REQUIRE(m);
    CHECK(*m == big);
    ch.send({{"op", "big"}, {"n", 10 << 20}});
    m = ch.receive_for(30s);
    REQUIRE(m);
    CHECK((*m)["big"].get_ref<const std::string&>().size() == std::size_t{10} << 20);
  }
  SECTION("Node removes the channel variables from its environment, as we do") {
    ch.send({{"op", "env"}});
    CHECK(ch.receive_for(10s) == json{{"fd", nullptr}, {"mode", nullptr}});
  }
  SECTION("its internal messages are passed over") {
    ch.send({{"op", "internal"}});
    CHECK(ch.receive_for(10s) == json{{"after", "internal"}});
  }
  SECTION("closing the channel lets Node exit (its 'disconnect')") {
    ch.close();
    auto st = p.wait_for(10s);
    REQUIRE(st);
    CHECK(st->success());
    return;
  }
  SECTION("a Node child that exits: the end of the channel and its exit code") {
    ch.send({{"op", "exit"}, {"code", 3}});
    CHECK_FALSE(ch.receive_for(10s).has_value());
    CHECK(ch.eof());
    CHECK(p.wait() == sp::exit_status::exited(3));
    return;
  }
  ch.close();
  auto st = p.wait_for(10s);
  REQUIRE(st);
  CHECK(st->success());
}

namespace {
std::string to_hex(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    h += hex[c >> 4];
    h += hex[c & 15];
  }
  return h;
}
json nested_array(std::size_t levels) {  // [[...]] with `levels` levels, built without recursion
  json v = json::array();
  for (std::size_t i = 1; i < levels; ++i) v = json::array({std::move(v)});
  return v;
}
}  // namespace

TEST_CASE("node: what process.send() writes is received as Node means it", "[node]") {
  REQUIRE_NODE();
  auto p = sp::command{"node", script("echo_child.js")}.ipc().spawn();
  ipc::channel ch(p);
  SECTION("lone UTF-16 surrogates: U+FFFD, the bytes Node itself writes for them") {
    ch.send({{"op", "surrogates"}});
    auto m = ch.receive_for(10s);  // before: a protocol error for the whole message
    REQUIRE(m);
    for (const char* k : {"hi", "lo", "pair", "mixed"}) {
      INFO(k);
      CHECK(to_hex((*m)["strings"][k].get_ref<const std::string&>()) == (*m)["utf8"][k]);
    }
    CHECK((*m)["strings"]["hi"] == "\xef\xbf\xbd");
    CHECK((*m)["strings"]["pair"] == "\xf0\x9f\x98\x80");
    ch.send({{"after", 1}});
    CHECK(ch.receive_for(10s) == json{{"after", 1}});
  }
  SECTION("object keys keep their order, both ways") {
    const std::string text = R"({"b":1,"a":2,"c":{"z":1,"y":2}})";
    ch.send({{"op", "ordered"}});  // written by Node in that order
    auto m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK(m->dump() == text);  // before: {"a":2,"b":1,"c":{"y":2,"z":1}}
    ch.send(json::parse(text));  // echoed by Node: the order it got is the order it sends
    m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK(m->dump() == text);
    ch.send({{"op", "stringify"}, {"value", json::parse(text)}});  // what Node made of it
    m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK((*m)["text"] == text);
    // A nlohmann::json (sorted keys) is still accepted, in its own order.
    nlohmann::json sorted = nlohmann::json::parse(text);
    ch.send(sorted);
    m = ch.receive_for(10s);
    REQUIRE(m);
    CHECK(m->dump() == R"({"a":2,"b":1,"c":{"y":2,"z":1}})");
  }
  SECTION("-0 is written 0, as JSON.stringify writes it") {
    json v = {{"z", -0.0}, {"list", {-0.0, 0.5}}};
    ch.send({{"op", "stringify"}, {"value", v}});
    auto m = ch.receive_for(10s);
    REQUIRE(m);
    std::string ours;
    sp::detail::json_codec::dump(v, ours);
    CHECK((*m)["text"] == ours);  // before: ours had -0.0
    CHECK(ours == R"({"z":0,"list":[0,0.5]})");
  }
  SECTION("nesting: the deepest Node sends and deeper both ways; beyond the limit an error for that message only") {
    // The deepest array Node 20's process.send() can write (its JSON.stringify
    // recurses): about 4,100 levels. Found here, not assumed.
    std::size_t lo = 1000, hi = 20000;
    while (lo < hi) {
      const std::size_t mid = (lo + hi + 1) / 2;
      ch.send({{"op", "deep"}, {"n", mid}});
      auto m = ch.receive_for(10s);
      REQUIRE(m);
      if (m->is_array()) {
        lo = mid;
      } else {
        REQUIRE(m->contains("error"));
        hi = mid - 1;
      }
    }
    INFO("Node's process.send() writes up to " << lo << " levels");
    CHECK(lo >= 3000);
    CHECK(lo < ipc::max_nesting_depth);  // all of it is received
    // Node receives (and parses: JSON.parse does not recurse) the deepest we send.
    ch.send({{"op", "depth"}, {"value", nested_array(ipc::max_nesting_depth - 1)}});
    CHECK(ch.receive_for(10s) == json{{"depth", ipc::max_nesting_depth - 1}});
    // A million levels: an argument_error here, nothing sent; the channel goes on.
    CHECK_THROWS_WITH(ch.send(nested_array(1000000)), Catch::Contains("nested too deeply"));
    // And a million levels written by Node (straight on the socket: process.send
    // cannot): a protocol error for that message, then the next one.
    ch.send({{"op", "raw-deep"}, {"n", 1000000}});
    try {
      (void)ch.receive_for(10s);
      FAIL("no error");
    } catch (const ipc::channel_error& e) {
      CHECK(e.code() == sp::errc::protocol_error);
      CHECK_THAT(e.what(), Catch::Contains("nested too deeply"));
    }
    CHECK(ch.is_open());
    CHECK(ch.receive_for(10s) == json{{"after", "raw-deep"}});
    ch.send({{"still", "open"}});
    CHECK(ch.receive_for(10s) == json{{"still", "open"}});
  }
  ch.close();
  auto st = p.wait_for(10s);
  REQUIRE(st);
  CHECK(st->success());
}

TEST_CASE("node: a Node parent spawns a C++ child with stdio [..., 'ipc']", "[node]") {
  REQUIRE_NODE();
  SECTION("messages both ways; connect_to_parent() consumes the variables") {
    auto r = sp::run(sp::command{"node", script("node_parent.js"), IPC_HELPER_PATH, "echo"},
                     {.timeout = 60s});
    INFO(r.out << r.err);
    CHECK(r.status.success());
    auto res = json::parse(r.out);
    CHECK(res["ok"] == true);
    CHECK(res["code"] == 0);
    // NODE_CHANNEL_FD is 3 (the 4th stdio entry); after connect: unset, close-on-exec.
    CHECK(res["childOut"] == "3\njson\n<unset>\n<unset>\ncloexec\n");
  }
  SECTION("a handle the C++ child cannot take does not stall the Node parent") {
    auto r = sp::run(sp::command{"node", script("node_parent.js"), IPC_HELPER_PATH, "handle"},
                     {.timeout = 60s});
    INFO(r.out << r.err);
    CHECK(r.status.success());
    CHECK(json::parse(r.out)["ok"] == true);
  }
}

TEST_CASE("node: the rpc client calling a Node JSON-RPC worker", "[node]") {
  REQUIRE_NODE();
  auto p = sp::command{"node", script("rpc_worker.js")}.ipc().spawn();
  ipc::client w(p);
  CHECK(w.call("add", {{"a", 5}, {"b", 3}}, 10s).get() == 8);
  CHECK(w.call("echo", {{"s", "héllo ✓"}}, 10s).get() == json{{"s", "héllo ✓"}});
  try {
    w.call("divide", {{"a", 1}, {"b", 0}}, 10s).get();
    FAIL("no error");
  } catch (const ipc::rpc_error& e) {
    CHECK(e.rpc_code() == -32602);
    CHECK(e.rpc_message() == "division by zero");
  }
  CHECK_THROWS_AS(w.call("nope", nullptr, 10s).get(), ipc::rpc_error);
  // Node answers concurrently: a slow call does not hold up a fast one.
  auto slow = w.call("sleep", {{"ms", 300}}, 10s);
  CHECK(w.call("add", {{"a", 1}, {"b", 1}}, 10s).get() == 2);
  CHECK(slow.wait_for(0s) != std::future_status::ready);
  CHECK(slow.get() == 300);
  CHECK_THROWS_AS(w.call("sleep", {{"ms", 2000}}, 100ms).get(), ipc::call_timeout_error);
  auto pending = w.call("sleep", {{"ms", 5000}}, 30s);
  w.notify("exit", {{"code", 4}});
  try {
    pending.get();
    FAIL("no error");
  } catch (const ipc::channel_error& e) {
    REQUIRE(e.status());
    CHECK(e.status()->code() == 4);
  }
  CHECK(p.wait() == sp::exit_status::exited(4));
}

// ---------------------------------------------------------------------------------
// Printing: operator<< (beside each type in ipc.hpp), one line each.

using testing::printed;

TEST_CASE("broadcast_result and beat print as one line") {
  std::vector<sp::process> ps;
  std::vector<ipc::channel> chs;
  for (int i = 0; i < 2; ++i) {
    ps.push_back(ipc_child({"connect", i == 1 ? "close" : "echo"}).spawn());
    chs.emplace_back(ps.back());
  }
  REQUIRE(ps[1].wait_for(5s).has_value());
  ipc::broadcast(chs, {{"msg", "hello"}});  // the dead channel may take this one
  auto r = ipc::broadcast(chs, {{"msg", "again"}});
  REQUIRE(r.failed.size() == 1);
  std::string why;
  try {
    std::rethrow_exception(r.failed[0].second);
  } catch (const std::exception& e) {
    why = e.what();
  }
  CHECK_FALSE(why.empty());
  CHECK(printed(r) == "delivered 1, failed 1 (channel 1: " + why + ")");
  CHECK(printed(ipc::broadcast_result{.delivered = 3}) == "delivered 3, failed 0");
  CHECK(chs[0].receive_for(5s) == json{{"msg", "hello"}});  // the echo child answers both
  CHECK(chs[0].receive_for(5s) == json{{"msg", "again"}});
  for (auto& ch : chs) ch.close();
  for (auto& p : ps) CHECK(p.wait_for(5s).has_value());
  CHECK(ps[0].status() == sp::exit_status::exited(0));

  auto p = ipc_child({"connect", "serve"}).spawn();
  {
    ipc::client c(p);
    std::mutex mu;
    std::condition_variable cv;
    std::optional<ipc::beat> first;
    ipc::heartbeat hb(c, {.interval = 50ms, .timeout = 2s, .method = "rpc.heartbeat",
                          .on_beat = [&](const ipc::beat& b) {
                            std::lock_guard lk(mu);
                            if (!first) first = b;
                            cv.notify_all();
                          },
                          .on_unresponsive = {}});
    REQUIRE(wait_until_true(mu, cv, 5s, [&] { return first.has_value(); }));
    hb.stop();
    std::lock_guard lk(mu);
    CHECK(printed(*first) == "beat 1: " + std::to_string(first->latency.count()) + " us");
    c.close();
  }
  CHECK(p.wait_for(5s).has_value());
}
