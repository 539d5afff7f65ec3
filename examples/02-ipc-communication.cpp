// Lesson 02: IPC communication.
//
// A parent and its children can talk in messages instead of bytes: Node's fork()
// gives both sides process.send() and a 'message' event. sp::command::ipc() opens
// the same kind of channel (a Unix socketpair, Node's own wire format: one line of
// JSON per message), sp::ipc::channel sends and receives on it, sp::ipc::client /
// sp::ipc::serve() add request/response (JSON-RPC 2.0) with timeouts, and
// sp::ipc::attach() puts channels in an sp::event_loop (one thread, many workers).
//
// Run with no arguments. The program starts itself (sp::command::self) in worker
// roles: calculator, echo (with a per-worker count and heartbeats), processor (a
// random delay) and crash (dies on request). The last section talks to a Node worker
// when `node` is installed.
#include <cctype>
#include <chrono>
#include <condition_variable>  // section 4 waits for heartbeats
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <subprocess/event_loop.hpp>
#include <subprocess/ipc.hpp>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
namespace ipc = subprocess::ipc;
using json = ipc::json;
using namespace std::chrono_literals;

namespace {

void section(int n, const char* title, const char* subtitle) {
  fmt::print("\n{}. {}\n   {}\n", n, title, subtitle);
}

// Starts this program in a worker role, with a message channel (fd 3 in the child).
sp::process start_worker(const std::string& role) {
  return sp::command::self({"--worker", role}).ipc().spawn();
}

// ---- worker roles: what the child side runs ----------------------------------

// Answers add/subtract/multiply/divide requests.
int worker_calculator() {
  auto parent = ipc::connect_to_parent();
  auto num = [](const json& p, const char* k) { return p.at(k).get<double>(); };
  ipc::serve(parent, {
      {"add", [&](const json& p) -> json { return num(p, "a") + num(p, "b"); }},
      {"subtract", [&](const json& p) -> json { return num(p, "a") - num(p, "b"); }},
      {"multiply", [&](const json& p) -> json { return num(p, "a") * num(p, "b"); }},
      {"divide",
       [&](const json& p) -> json {
         if (num(p, "b") == 0) throw ipc::rpc_error(ipc::rpc_error::invalid_params, "division by zero");
         return num(p, "a") / num(p, "b");
       }},
  });
  return 0;  // the parent closed the channel
}

// Echoes with a running count, as requests ("echo") and as plain messages
// ({"type": "echo"}), answers "stats", and heartbeats (serve() knows rpc.heartbeat).
int worker_echo() {
  auto parent = ipc::connect_to_parent();
  int count = 0;
  ipc::serve(parent,
             {
                 {"echo", [&](const json& p) -> json { return {{"message", p.at("message")}, {"count", ++count}}; }},
                 {"stats", [&](const json&) -> json { return {{"count", count}, {"pid", ::getpid()}}; }},
             },
             {.on_message =
                  [&](const json& m) {  // messages that are not requests
                    if (m.value("type", "") == "echo")
                      parent.send({{"type", "echo"}, {"data", m.at("data")}, {"count", ++count}});
                  },
              .on_error = {}});
  return 0;
}

// Uppercases text after a random delay of up to a second: a slow, uneven worker.
int worker_processor() {
  auto parent = ipc::connect_to_parent();
  std::mt19937 rng(std::random_device{}());
  ipc::serve(parent, {{"process", [&](const json& p) -> json {
                         std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1000));
                         std::string text = p.at("text"), upper = text;
                         for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                         return {{"original", text}, {"processed", upper}, {"length", text.size()}};
                       }}});
  return 0;
}

// Counts messages; a message with "crash": true kills it, like an uncaught exception
// kills a Node worker (exit code 1, the error on stderr).
int worker_crash() {
  auto parent = ipc::connect_to_parent();
  int count = 0;
  ipc::serve(parent, {{"work", [&](const json& p) -> json {
                         ++count;
                         if (p.value("crash", false)) {
                           std::fprintf(stderr, "   [crash worker] Error: intentional crash on message %d\n", count);
                           std::exit(1);
                         }
                         return {{"count", count}};
                       }}});
  return 0;
}

// ---- the lesson ---------------------------------------------------------------

void request_response() {
  section(1, "Request-Response Pattern", "Each request has an id; the answer is matched to it (a future per call)");
  auto p = start_worker("calculator");
  ipc::client calc(p);  // takes the process's channel and watches its exit
  struct op { const char* method; double a, b; const char* sign; };
  for (op o : {op{"add", 5, 3, "+"}, op{"multiply", 7, 6, "*"}, op{"divide", 100, 4, "/"}}) {
    std::future<json> answer = calc.call(o.method, {{"a", o.a}, {"b", o.b}}, 5s);  // 5 s timeout
    fmt::print("   {} {} {} = {}\n", o.a, o.sign, o.b, answer.get().get<double>());
  }
  try {
    calc.call("divide", {{"a", 1}, {"b", 0}}, 5s).get();
  } catch (const ipc::rpc_error& e) {  // the worker answered with an error
    fmt::print("   1 / 0 -> error {}: {}\n", e.rpc_code(), e.rpc_message());
  }
  fmt::print("   All calculations completed\n");
  calc.close();  // the worker sees the end of the channel, and serve() returns
  fmt::print("   Calculator {}\n", p.wait().to_string());
}

void broadcasting() {
  section(2, "Broadcasting", "One message to every worker; each answers with its own count");
  std::vector<sp::process> workers;
  std::vector<ipc::channel> channels;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(start_worker("echo"));
    channels.emplace_back(workers.back());
  }
  for (const char* text : {"Hello from parent!", "Second message", "Final message"}) {
    auto sent = ipc::broadcast(channels, {{"type", "echo"}, {"data", text}});  // serialized once
    if (!sent.ok()) fmt::print("   {} worker(s) did not get it\n", sent.failed.size());
    for (std::size_t i = 0; i < channels.size(); ++i) {
      if (auto reply = channels[i].receive_for(5s))
        fmt::print("   Worker {} echoed: \"{}\" (count: {})\n", i + 1,
                   (*reply)["data"].get<std::string>(), (*reply)["count"].get<int>());
    }
    std::this_thread::sleep_for(100ms);
  }
  fmt::print("   Shutting down workers\n");
  for (auto& ch : channels) ch.close();
  for (auto& w : workers) w.wait();
}

void message_queue() {
  section(3, "Message Queue Pattern", "Two slow workers take words from a queue as soon as they are free");
  // One thread and no locks: an event loop watches both channels (ipc::attach) and
  // calls back when an answer arrives; the worker that answered takes the next word.
  std::vector<sp::process> procs;
  std::vector<ipc::channel> channels;
  for (int i = 0; i < 2; ++i) {
    procs.push_back(start_worker("processor"));
    channels.emplace_back(procs.back());
  }
  std::deque<std::string> queue{"hello", "world", "from", "message", "queue"};
  sp::event_loop loop;
  std::vector<std::unique_ptr<ipc::attachment<sp::event_loop>>> workers;
  int processed = 0, next_id = 1;
  sp::event_loop::id too_late = 0;  // a timer, set below
  auto stop = [&] {  // nothing left to wait for: loop.run() returns
    for (auto& w : workers) w->detach();
    loop.cancel(too_late);
  };
  auto give_work = [&](std::size_t w) {  // a JSON-RPC request, written by hand
    if (queue.empty()) return;
    fmt::print("   Queued: {}\n", queue.front());
    workers[w]->send({{"jsonrpc", "2.0"}, {"id", next_id++}, {"method", "process"},
                      {"params", {{"text", queue.front()}}}});  // never blocks
    queue.pop_front();
  };
  auto on_answer = [&](std::size_t w, const json& m) {
    ++processed;
    if (m.contains("result"))
      fmt::print("   Processed: {} -> {}\n", m["result"]["original"].get<std::string>(),
                 m["result"]["processed"].get<std::string>());
    else
      fmt::print("   Failed: {}\n", m.value("error", json()).dump());
    if (processed == 5) stop();
    else give_work(w);
  };
  for (std::size_t w = 0; w < channels.size(); ++w)
    workers.push_back(ipc::attach(loop, channels[w],
                                  {.on_message = [&, w](json m) { on_answer(w, m); },
                                   .on_error = {},
                                   .on_close = [&, w] { fmt::print("   Worker {} went away\n", w + 1); }}));
  for (std::size_t w = 0; w < workers.size(); ++w) give_work(w);
  too_late = loop.after(10s, [&] { fmt::print("   Timed out\n"); stop(); });
  loop.run();  // runs the callbacks above, on this thread, until stop()
  fmt::print("   All {} messages processed\n", processed);
  workers.clear();
  for (auto& ch : channels) ch.close();  // the workers see the end, and serve() returns
  for (auto& p : procs) p.wait();
}

void heartbeat_monitoring() {
  section(4, "Heartbeat / Keep-Alive", "Ping every second; 3 s of silence would mean the worker hangs");
  auto p = start_worker("echo");
  ipc::client worker(p);
  std::mutex mu;
  std::condition_variable cv;
  int beats = 0;
  bool unresponsive = false;
  {
    ipc::heartbeat hb(worker, {.interval = 1s,
                               .timeout = 3s,
                               .method = "rpc.heartbeat",
                               .on_beat =
                                   [&](const ipc::beat& b) {
                                     fmt::print("   Heartbeat received (latency: {:.2f} ms round trip)\n",
                                                b.latency.count() / 1000.0);
                                     std::lock_guard lk(mu);
                                     ++beats;
                                     cv.notify_all();
                                   },
                               .on_unresponsive =
                                   [&](std::chrono::milliseconds silent) {
                                     fmt::print("   Worker unresponsive (silent for {} ms)\n", silent.count());
                                     std::lock_guard lk(mu);
                                     unresponsive = true;
                                     cv.notify_all();
                                   }});
    std::unique_lock lk(mu);
    cv.wait_for(lk, 3500ms, [&] { return beats >= 3 || unresponsive; });
  }  // the heartbeat stops here; this section ends exactly once, whichever came first
  if (unresponsive) {
    fmt::print("   Terminating the unresponsive worker\n");
    p.kill();
  } else {
    fmt::print("   Worker terminated normally\n");
  }
  worker.close();
  p.wait();
}

void error_handling() {
  section(5, "Error Handling in IPC", "A worker dies; the parent learns how, and the pending call fails");
  auto p = start_worker("crash");
  ipc::client worker(p);
  for (bool crash : {false, false, true}) {
    std::fflush(stdout);  // the worker's dying words go to the shared stderr: keep the order
    try {
      json r = worker.call("work", {{"crash", crash}}, 5s).get();
      fmt::print("   Received message: count={}\n", r["count"].get<int>());
    } catch (const ipc::channel_error& e) {  // the worker went away before answering
      sp::exit_status st = e.status() ? *e.status() : p.wait();  // carried by the error
      fmt::print("   Worker exited: code={}, signal={}\n",
                 st.code() ? std::to_string(*st.code()) : "null",
                 st.signal() ? std::to_string(*st.signal()) : "null");
      fmt::print("   Worker crashed, would restart in production\n");
    }
    std::this_thread::sleep_for(100ms);
  }
  p.wait();
}

void round_robin() {
  section(6, "Round-Robin Load Balancing", "Nine messages, each to the next worker in turn");
  std::vector<sp::process> procs;
  std::vector<std::unique_ptr<ipc::client>> workers;
  for (int i = 0; i < 3; ++i) {
    procs.push_back(start_worker("echo"));
    workers.push_back(std::make_unique<ipc::client>(procs.back()));
  }
  for (int i = 0; i < 9; ++i) {
    std::size_t w = i % workers.size();  // round robin
    json r = workers[w]->call("echo", {{"message", fmt::format("Message {}", i + 1)}}, 5s).get();
    fmt::print("   Worker {}: message #{}\n", w + 1, r["count"].get<int>());
    std::this_thread::sleep_for(50ms);
  }
  auto stats = ipc::call_all(workers, "stats", nullptr, 5s);  // ask them all at once
  for (std::size_t w = 0; w < stats.size(); ++w)
    fmt::print("   Worker {} handled {} messages\n", w + 1, stats[w].get()["count"].get<int>());
  fmt::print("   Load balanced across all workers\n");
  workers.clear();
  for (auto& p : procs) p.wait();
}

// A JSON-RPC worker in plain Node: process.on('message') in, process.send() out.
const char* node_worker_js = R"js('use strict';
const methods = {
  add: (p) => p.a + p.b,
  greet: (p) => `Hello, ${p.name}! (from Node ${process.version})`,
};
process.on('message', (req) => {
  const fn = methods[req.method];
  const reply = { jsonrpc: '2.0', id: req.id };
  if (fn) reply.result = fn(req.params);
  else reply.error = { code: -32601, message: `Method not found: '${req.method}'` };
  process.send(reply);
});
)js";

void node_worker() {
  section(7, "A Node.js Worker", "The same channel speaks Node's format: a C++ parent, a Node child");
  if (!sp::find_program("node")) {
    fmt::print("   node is not installed: section skipped\n");
    return;
  }
  // The script lives in a private temporary directory, removed at the end.
  char tmpl[] = "/tmp/lesson02-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);
  std::ofstream(dir / "worker.js") << node_worker_js;
  {
    auto p = sp::command{"node", (dir / "worker.js").string()}.ipc().spawn();  // like fork()
    ipc::client node(p);
    fmt::print("   add(2, 40) = {}\n", node.call("add", {{"a", 2}, {"b", 40}}, 5s).get().dump());
    fmt::print("   greet: {}\n", node.call("greet", {{"name", "C++ ✓"}}, 5s).get().get<std::string>());
    try {
      node.call("fly", nullptr, 5s).get();
    } catch (const ipc::rpc_error& e) {
      fmt::print("   fly -> error {}: {}\n", e.rpc_code(), e.rpc_message());
    }
    node.close();  // Node sees 'disconnect' and exits
    fmt::print("   Node worker {}\n", p.wait().to_string());
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--worker") {
    std::string role = argv[2];
    if (role == "calculator") return worker_calculator();
    if (role == "echo") return worker_echo();
    if (role == "processor") return worker_processor();
    if (role == "crash") return worker_crash();
    fmt::print(stderr, "unknown worker role {}\n", role);
    return 2;
  }
  fmt::print("=== Advanced IPC Communication Examples ===\n");
  request_response();
  broadcasting();
  message_queue();
  heartbeat_monitoring();
  error_handling();
  round_robin();
  node_worker();
  fmt::print("\n=== All Examples Completed ===\n");
  fmt::print("\nKey concepts:\n");
  fmt::print("   - command::ipc() gives a child a message channel (NODE_CHANNEL_FD), as Node's fork() does\n");
  fmt::print("   - Messages are JSON lines: C++ and Node processes understand each other\n");
  fmt::print("   - Request/response matches answers to calls by id, with a timeout per call\n");
  fmt::print("   - A dead worker fails its pending calls with its exit status: nothing hangs\n");
  fmt::print("   - Heartbeats tell a slow worker from a hung one\n");
  fmt::print("   - Queues and round robin spread work over several workers\n");
  return 0;
}
