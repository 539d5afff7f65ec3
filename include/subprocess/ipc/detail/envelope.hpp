// subprocess/ipc/detail/envelope.hpp - the JSON-RPC 2.0 envelope on the wire: requests
// and answers written straight from their parts (no json object is built for the
// envelope), and the shapes serve() answers with. Decoding is json_codec::parse_rpc.
// Not public API.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "../../error.hpp"
#include "wire.hpp"

namespace subprocess::detail::ipc_wire {

// A JSON-RPC request {"jsonrpc":"2.0","id":id,"method":...,"params":...} written
// straight from its parts (no json object is built); params null: omitted; no id: a
// notification. Appends no '\n'. params must be an object, an array or null.
template <class Out>
void append_request(Out& b, std::optional<std::uint64_t> id, std::string_view method,
                    const json& params, const std::string& name) {
  if (!(params.is_null() || params.is_array() || params.is_object()))
    SUBPROCESS_THROW(argument_error(name, "call '" + std::string(method) +
                                   "': params must be an object, an array or null (JSON-RPC)"));
  b.append("{\"jsonrpc\":\"2.0\",");
  if (id) {
    char digits[24];
    auto r = std::to_chars(digits, digits + sizeof digits, *id);
    b.append("\"id\":");
    b.append(digits, static_cast<std::size_t>(r.ptr - digits));
    b.push_back(',');
  }
  b.append("\"method\":");
  SUBPROCESS_TRY {
    subprocess::detail::json_codec::dump_string(method, b);  // no json string built for it
  } SUBPROCESS_CATCH(const subprocess::detail::json_codec::error&, e) {
    SUBPROCESS_THROW(argument_error(name, std::string("cannot send a method name that is not valid UTF-8 (") +
                                   e.what() + ")"));
  }
  if (!params.is_null()) {
    b.append(",\"params\":");
    dump_to(b, params, name);
  }
  b.push_back('}');
}

// The answer to a request: {"jsonrpc":"2.0","id":id,"result":result}, or, with
// is_error, {"jsonrpc":"2.0","id":id,"error":result}. Appends no '\n'.
template <class Out>
void append_response(Out& b, const json& id, const json& result, bool is_error, const std::string& name) {
  b.append("{\"jsonrpc\":\"2.0\",\"id\":");
  dump_to(b, id, name);
  b.append(is_error ? ",\"error\":" : ",\"result\":");
  dump_to(b, result, name);
  b.push_back('}');
}

inline json rpc_failure(const json& id, int code, std::string message, const json& data = nullptr) {
  json err = {{"code", code}, {"message", std::move(message)}};
  if (!data.is_null()) err["data"] = data;
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(err)}};
}

inline bool is_request(const json& m) { return m.is_object() && m.contains("method"); }

}  // namespace subprocess::detail::ipc_wire
