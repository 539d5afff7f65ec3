// subprocess/ipc/common.hpp - what every part of ipc shares: the message type (json),
// the limits, channel_options and client_options, a call's reply, and the errors
// (channel_error, rpc_error, call_timeout_error). Needs nlohmann/json (CMake target
// subprocess::ipc).
//
//   ```cpp
//   sp::ipc::json msg = {{"method", "add"}, {"params", {1, 2}}};  // keys keep their order
//   sp::ipc::channel_options o{.max_message_size = 1 << 20, .internal_messages = false, .name = "worker"};
//   try {
//     throw sp::ipc::rpc_error(sp::ipc::rpc_error::invalid_params, "b must not be zero");
//   } catch (const sp::ipc::rpc_error& e) {      // a handler's error, or the peer's answer
//     std::cout << e.rpc_code() << ' ' << e.rpc_message() << '\n';
//   } catch (const sp::ipc::channel_error& e) {  // peer gone, malformed message
//     std::cout << e.what() << " [" << e.sample() << "]\n";
//   }
//   ```
//
// Errors are std::system_error subclasses (sp::error): channel_error for the channel
// (code() errc::channel_closed, errc::protocol_error, std::errc::not_connected, or an
// errno), rpc_error for a JSON-RPC error answer (code() errc::remote_error; the
// JSON-RPC code is rpc_code()), call_timeout_error (std::errc::timed_out) for a call
// without an answer in time. Each names the channel's peer and, for calls, the method.
// Nothing here blocks or starts threads; the types are plain values.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "../error.hpp"
#include "../exit_status.hpp"
#include "detail/json_codec.hpp"

namespace subprocess::ipc {

// The value of a message: nlohmann::ordered_json, so that an object keeps its keys in
// the order they came (and are given), both ways, as a JavaScript object does.
// nlohmann::json (keys sorted) converts to it and back implicitly, at the cost of a
// copy. One difference from JavaScript remains: JS puts keys that look like array
// indices ("1", "2") first, in ascending order, whatever order they were written in;
// this keeps every key where it came (so {"b":1,"1":2} sent to Node is {"1":2,"b":1}
// there, and Node never sends such keys after others).
using json = nlohmann::ordered_json;

// The deepest nesting a message may have, both ways: [] is 1 level, [[]] 2. Deeper
// is a protocol error for that message only (the channel goes on), and sending one
// is an argument_error (nothing is sent). Node 20 cannot JSON.stringify more than
// about 4,200 levels; parsing and writing here never recurse, whatever the depth.
inline constexpr std::size_t max_nesting_depth = subprocess::detail::json_codec::default_max_depth;

// ---------------------------------------------------------------------------------
// Options and errors

inline constexpr std::size_t default_max_message_size = std::size_t{64} << 20;  // 64 MiB

struct channel_options {
  // The longest message accepted, in bytes (its '\n' not counted). A longer one is a
  // protocol error and shuts the channel down. Bounds the memory a peer can make us use.
  std::size_t max_message_size = default_max_message_size;
  // Deliver Node's internal messages ({"cmd": "NODE_..."}) too. Default: skip them.
  bool internal_messages = false;
  // What the channel leads to, for error messages: the command line for a child
  // (set for you by channel(process&)), "parent" for connect_to_parent().
  std::string name = {};
};

// Something went wrong on a channel. code() is errc::channel_closed (the peer is gone,
// or the channel was closed), errc::protocol_error (a malformed or oversized
// message), std::errc::not_connected (connect_to_parent() without a channel), or an
// errno from the socket. command() is the channel's name.
class channel_error : public error {
 public:
  channel_error(std::error_code ec, std::string name, std::string message, std::string sample = {},
                std::optional<subprocess::exit_status> status = std::nullopt)
      : error(ec, std::move(name), std::move(message)),
        sample_(std::move(sample)),
        status_(status) {}
  // The first bytes of the offending message (protocol errors, truncated messages),
  // with non-printable bytes escaped as \xNN.
  const std::string& sample() const noexcept { return sample_; }
  // How the peer process ended, when that is known (rpc client with a process).
  const std::optional<subprocess::exit_status>& status() const noexcept { return status_; }

 private:
  std::string sample_;
  std::optional<subprocess::exit_status> status_;
};


// ---------------------------------------------------------------------------------
// JSON-RPC 2.0 on a channel.
//
// Requests are {"jsonrpc":"2.0","id":7,"method":"add","params":{"a":1,"b":2}}; the
// answer is {"jsonrpc":"2.0","id":7,"result":3} or {"jsonrpc":"2.0","id":7,"error":
// {"code":-32601,"message":"Method not found: 'add'","data":...}}. A request without
// an id is a notification: no answer. Any program that reads and writes these shapes
// over the channel (a Node worker with process.on('message') and process.send()) is
// a peer.

// An error answer. On the client side it is what the peer answered (what() names the
// call); on the server side a handler throws it to choose the code and data.
class rpc_error : public error {
 public:
  // The codes JSON-RPC 2.0 defines. -32000 to -32099 are for server errors;
  // anything else is yours.
  static constexpr int parse_error = -32700;
  static constexpr int invalid_request = -32600;
  static constexpr int method_not_found = -32601;
  static constexpr int invalid_params = -32602;
  static constexpr int internal_error = -32603;
  static constexpr int server_error = -32000;  // serve(): a handler threw an exception

  // For handlers: throw rpc_error(rpc_error::invalid_params, "b must not be zero").
  rpc_error(int code, std::string message, json data = nullptr)
      : rpc_error(code, std::move(message), std::move(data), {}, {}, 0) {}
  // The peer answered call `method` (id) with this error.
  rpc_error(int code, std::string message, json data, std::string peer, std::string method,
            std::uint64_t id)
      : error(errc::remote_error, peer,
              method.empty() ? "rpc error " + std::to_string(code) + ": " + message
                             : "call '" + method + "' (id " + std::to_string(id) + ") to '" +
                                   peer + "' failed with error " + std::to_string(code) + ": " +
                                   message),
        rpc_code_(code),
        rpc_message_(std::move(message)),
        data_(std::move(data)),
        method_(std::move(method)) {}
  int rpc_code() const noexcept { return rpc_code_; }
  const std::string& rpc_message() const noexcept { return rpc_message_; }
  const json& data() const noexcept { return data_; }
  // The method called (client side); empty on the server side.
  const std::string& method() const noexcept { return method_; }

 private:
  int rpc_code_;
  std::string rpc_message_;
  json data_;
  std::string method_;
};

// A call got no answer in time. The late answer, if it comes, is dropped.
class call_timeout_error : public error {
 public:
  call_timeout_error(std::string peer, std::string method, std::uint64_t id,
                     std::chrono::milliseconds timeout)
      : error(std::make_error_code(std::errc::timed_out), peer,
              "call '" + method + "' (id " + std::to_string(id) + ") to '" + peer +
                  "' timed out: no reply within " + std::to_string(timeout.count()) + " ms"),
        method_(std::move(method)),
        timeout_(timeout) {}
  const std::string& method() const noexcept { return method_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

 private:
  std::string method_;
  std::chrono::milliseconds timeout_;
};

// ---------------------------------------------------------------------------------
// Calls (ipc::client, worker_pool): their outcome and the client's options.

// Pass as a call's timeout to wait for as long as it takes.
inline constexpr std::chrono::milliseconds no_timeout = std::chrono::milliseconds::max();

// The outcome of a call, for callbacks: the result, or the error.
struct reply {
  json result = nullptr;
  std::exception_ptr error = nullptr;  // rpc_error, call_timeout_error or channel_error
  bool ok() const noexcept { return !error; }
  // The result; rethrows the error.
  const json& value() const {
    if (error) std::rethrow_exception(error);
    return result;
  }
};
using reply_fn = std::function<void(reply)>;

struct client_options {
  // For call() without a timeout. no_timeout waits forever.
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  // Messages from the peer that are not answers to our calls (its notifications, or
  // plain messages). Runs on the client's reader thread.
  std::function<void(const json&)> on_message = {};
  // Bad input from the peer (malformed lines...). The client carries on. Runs on the
  // reader thread.
  std::function<void(const channel_error&)> on_error = {};
  // After the channel ends, how long to wait for the peer process to exit so that
  // the failed calls can say how it ended (client(process&) only).
  std::chrono::milliseconds exit_grace = std::chrono::milliseconds(500);
  // What the peer is called in error messages. Default: the channel's name (for
  // client(process&), the command line).
  std::string name = {};
};

}  // namespace subprocess::ipc
