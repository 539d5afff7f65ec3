// subprocess/ipc.hpp - message channels between processes (Node-compatible) and
// JSON-RPC on top: everything in include/subprocess/ipc/, one header per concept.
// Needs nlohmann/json (CMake target subprocess::ipc).
//
//   ```cpp
//   auto p = sp::command::self({"--worker"}).ipc().spawn();  // the child's end at fd 3
//   sp::ipc::client calc(p);                                  // parent: calls
//   sp::ipc::json sum = calc.call_sync("add", {{"a", 5}, {"b", 3}}, 5s);
//   calc.close();
//   p.wait();
//   // the worker (started with --worker):
//   auto up = sp::ipc::connect_to_parent();
//   sp::ipc::serve(up, {{"add", [](const sp::ipc::json& q) -> sp::ipc::json {
//                          return q["a"].get<int>() + q["b"].get<int>(); }}});
//   ```
//
// The parts (each header's manual has the contract: errors, blocking, threads, cost):
//   ipc/common.hpp     json (the message type), limits, options, reply, the errors
//   ipc/channel.hpp    channel: JSON messages both ways over a Unix socket, in the
//                      wire format of Node's process.send(); connect_to_parent()
//   ipc/server.hpp     serve(ch, handlers): answers JSON-RPC 2.0 requests (the child
//                      side); broadcast(channels, msg): one message to many channels
//   ipc/client.hpp     client: call() -> std::future<json>, call_sync(), notify();
//                      call_all()
//   ipc/heartbeat.hpp  heartbeat: pings a client's peer, reports one that stops answering
//   ipc/attach.hpp     attach(loop, ch, callbacks): a channel in an sp::event_loop
// Internals live in ipc/detail/ (namespace subprocess::detail::ipc_wire): the JSON
// codec, the JSON-RPC envelope, the socket and its framing, the client's layers.
#pragma once

#include "ipc/attach.hpp"
#include "ipc/channel.hpp"
#include "ipc/client.hpp"
#include "ipc/common.hpp"
#include "ipc/heartbeat.hpp"
#include "ipc/server.hpp"
