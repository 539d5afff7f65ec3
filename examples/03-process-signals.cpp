// Lesson 03: process signals.
//
// A signal is a small number the kernel delivers to a process: SIGTERM means
// "please stop", SIGKILL means "stop now" and cannot be refused, SIGINT is Ctrl-C.
// This lesson sends them to children, lets a child clean up before it exits,
// escalates to SIGKILL when a child will not stop, stops a group of workers at one
// deadline, shows a parent that receives SIGTERM itself and passes it on, and
// (beyond the original) stops a whole tree, a daemon that left the session included,
// and gives a timed-out child a grace period to clean up.
//
// Run with no arguments. The program starts `sleep` and itself in worker roles
// (sp::command::self with --worker ...). The workers' own log lines are shown,
// prefixed with [worker], by a reader thread per worker, so the main thread stays
// free to keep time and send signals. (The original lesson pipes the workers'
// output and never reads it, so their lines are lost.)
//
// Timings are shorter than the original's (a 150 ms tick instead of 500 ms, a 600 ms
// grace period instead of 2 s) so the whole lesson runs in a few seconds.
#include <unistd.h>
#include <poll.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

constexpr auto tick = 150ms;  // how often a worker logs (original: 500 ms)

// Several threads print (the main thread and the worker log readers): one line at a time.
std::mutex print_mutex;
template <class... Args>
void say(fmt::format_string<Args...> format, Args&&... args) {
  std::lock_guard lock(print_mutex);
  fmt::print(format, std::forward<Args>(args)...);
  std::fflush(stdout);
}

void section(int n, const char* title, const char* subtitle) {
  say("\n{}. {}\n   {}\n", n, title, subtitle);
}

// Node prints an exit as (code, signal), one of them null.
std::string node_style(const sp::exit_status& st) {
  if (auto code = st.code()) return fmt::format("code={}, signal=null", *code);
  return fmt::format("code=null, signal={}", sp::signal_name(*st.signal()));
}

// Starts this program in a worker role and returns once the worker has printed
// its first line. Workers print it right after setting up their signal handling,
// so no signal can reach a worker before it is ready for it.
sp::process start_worker(std::vector<std::string> args, const std::string& name) {
  auto p = sp::command::self(std::move(args)).out(sp::pipe).spawn();
  say("   [{}] {}\n", name, p.out().read_line().value_or("(no output)"));
  return p;
}

// Shows a worker's further stdout lines as they arrive, prefixed with its name,
// from a thread of its own. Destroying it waits for the worker's last line (the
// worker is stopped first if something went wrong and it is still running).
class worker_log {
 public:
  worker_log(sp::process& worker, std::string name)
      : worker_(worker),
        thread_([out = std::move(worker.out()), name = std::move(name)]() mutable {
          for (std::string_view line : out.lines()) say("   [{}] {}\n", name, line);
        }) {}
  ~worker_log() {
    if (!worker_.status()) worker_.terminate(1s);
    thread_.join();
  }
  worker_log(const worker_log&) = delete;
  worker_log& operator=(const worker_log&) = delete;

 private:
  sp::process& worker_;
  std::thread thread_;
};

// ---- worker roles: the child side -------------------------------------------
//
// Every worker receives signals through an sp::signal_set: the signals are blocked
// and read from a file descriptor, so the worker decides when to act on them (after
// finishing the job in hand) and no signal handler is involved.

// Section 3: logs "Processing..." until SIGTERM (clean up, exit 0) or SIGINT (exit 0 at once).
int worker_graceful() {
  sp::signal_set signals{SIGTERM, SIGINT};
  fmt::print("Worker started (pid {})\n", ::getpid());
  for (;;) {
    auto s = signals.wait_for(tick);  // our "timer": wakes up early for a signal
    if (!s) {
      fmt::print("Processing...\n");
    } else if (s->signal == SIGINT) {
      fmt::print("Received SIGINT, exiting immediately\n");
      return 0;
    } else {
      fmt::print("Received SIGTERM, cleaning up...\n");
      std::this_thread::sleep_for(300ms);  // close files, finish writes (original: 1 s)
      fmt::print("Cleanup complete, exiting\n");
      return 0;
    }
  }
}

// Section 4: reads SIGTERM and carries on regardless. Only SIGKILL stops it.
int worker_stubborn() {
  sp::signal_set signals{SIGTERM};
  fmt::print("Stubborn worker started (pid {})\n", ::getpid());
  for (;;) {
    if (signals.wait_for(tick))
      fmt::print("Received SIGTERM, but ignoring it!\n");
    else
      fmt::print("Working...\n");
  }
}

// Section 5: messages on stdin/stdout, log lines on stderr. One poll() loop waits
// for a task line on stdin and for SIGTERM on the signal_set's fd at the same time.
// (The library's ipc channel, Node's process.send, is being built; until then this
// worker exchanges plain text lines over its stdin and stdout.)
int worker_ipc() {
  sp::signal_set signals{SIGTERM};
  fmt::print("ready\n");
  int completed = 0;
  std::string input;
  for (;;) {
    pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {signals.fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;  // EINTR: just poll again
    if (fds[1].revents != 0 && signals.try_read()) {
      fmt::print(stderr, "Received SIGTERM, sending final report\n");
      fmt::print("final-report {}\n", completed);
      return 0;
    }
    if (fds[0].revents == 0) continue;
    char buf[256];
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n <= 0) return 0;  // the parent closed our stdin
    input.append(buf, static_cast<std::size_t>(n));
    for (std::size_t nl; (nl = input.find('\n')) != std::string::npos; input.erase(0, nl + 1)) {
      fmt::print(stderr, "Processing {}\n", input.substr(0, nl));
      fmt::print("completed {}\n", ++completed);
    }
  }
}

// Section 6: one of several workers; on SIGTERM it cleans up for 200 ms and exits 0.
int worker_coordinated(const std::string& id) {
  sp::signal_set signals{SIGTERM};
  fmt::print("Worker {} started (pid {})\n", id, ::getpid());
  signals.wait();
  fmt::print("Worker {} received SIGTERM, cleaning up...\n", id);
  std::this_thread::sleep_for(200ms);  // original: 500 ms
  fmt::print("Worker {} cleanup done\n", id);
  return 0;
}

// Section 7: waits for SIGTERM and reports who sent it.
int worker_child() {
  sp::signal_set signals{SIGTERM};
  fmt::print("Child running (pid {}), waiting for SIGTERM\n", ::getpid());
  sp::signal_info s = signals.wait();
  fmt::print("Child received {} from pid {}, exiting\n", s.name(), s.sender_pid);
  return 0;
}

// ---- the lesson ---------------------------------------------------------------

void sigterm() {
  section(1, "SIGTERM", "Ask a process to terminate; it may clean up first");
  auto p = sp::command{"sleep", "30"}.spawn();
  say("   Started 'sleep 30' with PID {}\n", p.pid());
  std::this_thread::sleep_for(300ms);  // let it run a moment (original: 1 s)
  say("   Sending SIGTERM...\n");
  p.signal(SIGTERM);
  sp::exit_status st = p.wait();
  say("   Process exited with signal: {}\n", sp::signal_name(*st.signal()));
}

void sigkill() {
  section(2, "SIGKILL", "Force a process to stop at once");
  auto p = sp::command{"sleep", "30"}.spawn();
  say("   Started 'sleep 30' with PID {}\n", p.pid());
  std::this_thread::sleep_for(200ms);  // original: 500 ms
  say("   Sending SIGKILL...\n");
  p.kill();
  sp::exit_status st = p.wait();
  say("   Process killed with signal: {}\n", sp::signal_name(*st.signal()));
  say("   (SIGKILL cannot be caught, blocked or ignored: the process gets no chance to clean up)\n");
}

void graceful_shutdown() {
  section(3, "Graceful Shutdown", "The worker finishes its cleanup before exiting");
  auto worker = start_worker({"--worker", "graceful"}, "worker");
  worker_log log(worker, "worker");
  std::this_thread::sleep_for(4 * tick);  // let it process a while (original: 2 s)
  say("   [Parent] Sending SIGTERM to worker\n");
  // terminate(): SIGTERM, and SIGKILL only if it is still running after 2 s.
  sp::exit_status st = worker.terminate(2s);
  say("   [Parent] Worker exited: {}\n", node_style(st));

  // start_worker() waits for the worker's first line before signalling it: a
  // SIGTERM that arrived while the worker was still starting up would kill it at
  // once, cleanup or not. Starting it with SIGTERM blocked closes that window:
  // the signal waits, pending, until the worker is ready to read it.
  say("   Started with SIGTERM blocked, the worker gets a SIGTERM sent at once only when it is ready:\n");
  auto early = sp::command::self({"--worker", "graceful"}).out(sp::pipe).blocked_signals({SIGTERM}).spawn();
  early.signal(SIGTERM);  // no waiting: the worker has not set anything up yet
  say("   [Parent] Sent SIGTERM right after the start\n");
  {
    worker_log early_log(early, "worker");
    st = early.wait();
  }
  say("   [Parent] Worker exited: {}\n", node_style(st));
}

void force_kill_timeout() {
  section(4, "Graceful Shutdown with Force-Kill Timeout",
          "SIGTERM first; SIGKILL if the worker has not exited when the grace period ends");
  auto worker = start_worker({"--worker", "stubborn"}, "worker");
  worker_log log(worker, "worker");
  std::this_thread::sleep_for(3 * tick);  // original: 1.5 s
  const auto grace = 600ms;               // original: 2 s
  say("   [Parent] Sending SIGTERM (grace period {} ms)\n", grace.count());
  worker.signal(SIGTERM);
  // The question is "has it exited?", not "did we send a signal?". The original
  // asked the second (Node's `killed` flag turns true once a signal is sent), never
  // sent SIGKILL and hung here. wait_for() answers the first: it returns the exit
  // status, or nothing if the worker is still running when the time is up.
  std::optional<sp::exit_status> st = worker.wait_for(grace);
  if (!st) {
    say("   [Parent] Still running after {} ms: sending SIGKILL\n", grace.count());
    worker.kill();
    st = worker.wait();
  }
  say("   [Parent] Worker terminated with {}\n", sp::signal_name(st->signal().value_or(0)));
  say("   (worker.terminate({}ms) does exactly these steps)\n", grace.count());
}

void forked_ipc_worker() {
  section(5, "Signals in Forked (IPC) Workers", "A worker sends a final report when told to stop");
  // Messages travel as text lines over the worker's stdin and stdout; its log lines
  // go to stderr, which a reader thread shows. (To be replaced by the ipc channel.)
  auto worker = sp::command::self({"--worker", "ipc"}).in(sp::pipe).out(sp::pipe).err(sp::pipe).spawn();
  auto log_out = std::move(worker.err());
  std::thread log([&log_out] {
    for (std::string_view line : log_out.lines()) say("   [worker] {}\n", line);
  });
  if (worker.out().read_line_for(5s) == "ready") say("   Worker is ready\n");
  for (int task = 1; task <= 5; ++task) {
    worker.in().write_all(fmt::format("task {}\n", task));
    auto reply = worker.out().read_line_for(5s).value_or("");  // "completed N"
    say("   Task completed (total: {})\n", reply.substr(reply.find(' ') + 1));
    std::this_thread::sleep_for(100ms);  // original: 200 ms between tasks
  }
  say("   [Parent] Sending SIGTERM\n");
  worker.signal(SIGTERM);
  // Unlike Node's fork(), a pipe keeps what the worker wrote before it exited, so
  // the final report is never lost.
  auto report = worker.out().read_line_for(5s).value_or("");  // "final-report N"
  say("   Final report: {} tasks completed\n", report.substr(report.find(' ') + 1));
  sp::exit_status st = worker.terminate(2s);  // normally it has exited already
  log.join();
  say("   Worker exited with code: {}\n", st.code().value_or(-1));
}

void coordinated_shutdown() {
  section(6, "Coordinated Shutdown", "Stop several workers together, with one shared deadline");
  std::vector<sp::process> workers;
  for (int id = 1; id <= 3; ++id)
    workers.push_back(start_worker({"--worker", "coordinated", std::to_string(id)}, fmt::format("worker {}", id)));
  std::list<worker_log> logs;
  for (int id = 1; id <= 3; ++id) logs.emplace_back(workers[static_cast<std::size_t>(id - 1)], fmt::format("worker {}", id));
  std::this_thread::sleep_for(500ms);  // original: 2 s
  say("   [Parent] Initiating coordinated shutdown\n");
  // SIGTERM to all three at once; SIGKILL for any still running 1 s later.
  sp::shutdown_result result = sp::shutdown(workers, 1s);
  logs.clear();  // every worker's last line has been shown
  for (std::size_t i = 0; i < result.processes.size(); ++i) {
    const auto& w = result.processes[i];
    say("   Worker {} (pid {}): {} after {} ms{}\n", i + 1, w.pid, w.status->to_string(),
        w.exited_after.count(), w.needed_sigkill ? " (needed SIGKILL)" : "");
  }
  if (result.all_graceful())
    say("   All workers shut down successfully ({} ms in total, not one grace period each)\n",
        result.elapsed.count());
}

void parent_signal_handling() {
  section(7, "Parent Signal Handling and Propagation",
          "The parent receives SIGTERM itself and passes it on to its child");
  // Receive SIGINT and SIGTERM as data instead of dying of them. Create the set
  // before starting threads: they inherit the blocked signals (the log thread below
  // does), so no thread can take the signal away from the set.
  sp::signal_set signals{SIGINT, SIGTERM};
  auto child = start_worker({"--worker", "child"}, "child");
  worker_log log(child, "child");
  // Somebody sends us SIGTERM: in production systemd, docker stop or kubectl; here a
  // shell, 300 ms from now. (The original only pretended to receive it.)
  auto sender = sp::command::shell("sleep 0.3; kill -TERM " + std::to_string(::getpid())).spawn();
  say("   [Parent] Waiting for SIGINT or SIGTERM (pid {})\n", ::getpid());
  // Waits for the signal, forwards it to the child, and SIGKILLs the child if it is
  // still running 2 s later.
  sp::forward_result r = sp::forward_and_shutdown(signals, {&child}, 2s);
  sender.wait();
  if (r.received)
    say("   [Parent] Received {} from pid {} (the shell) and forwarded it\n", r.received->name(),
        r.received->sender_pid);
  say("   [Parent] Child exited: {}\n", node_style(*r.shutdown.processes[0].status));
  say("   Child terminated, exiting parent\n");
}

// Alive: /proc/<pid> exists and is not a zombie (state after the last ')').
bool alive(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto rp = stat.rfind(')');
  return rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] != 'Z';
}

void whole_tree() {
  section(8, "Stopping a Whole Tree",
          "A daemon that double-forked and left the session still goes with its parent");
  // The classic daemon start: a subshell forks `setsid sh`, which leaves the session
  // (so the process group never reaches it) and prints its pid; the subshell exits,
  // so the daemon is not even a descendant by parent links any more.
  auto cmd = sp::command::shell("(setsid sh -c 'echo $$; exec sleep 1000 >/dev/null 2>&1' &); exec sleep 1000")
                 .out(sp::pipe)
                 .tree();  // a cgroup v2 of its own where one is writable
  sp::process shell;
  try {
    shell = cmd.spawn();
  } catch (const sp::spawn_error& e) {
    // No writable cgroup v2 here: opt in to subreaper mode (process-wide, our choice).
    say("   No cgroup for the tree ({}); this program becomes a subreaper\n", e.what());
    sp::become_subreaper();
    shell = cmd.spawn();
  }
  const pid_t daemon = static_cast<pid_t>(std::stol(std::string(shell.out().read_line().value_or("0"))));
  say("   Shell pid {} (session {}), daemon pid {} (session {})\n", shell.pid(), ::getsid(shell.pid()),
      daemon, ::getsid(daemon));
  say("   Tree: {}, members now: {}\n", shell.tree().to_string(), shell.tree().pids().size());
  shell.tree().kill();  // SIGKILL to every member; returns when none is left
  say("   After tree().kill(): {} members left, shell {}\n", shell.tree().pids().size(),
      shell.wait().to_string());
  say("   Daemon survived the tree kill: {}\n", alive(daemon) ? "yes" : "no");
}

void timeout_with_grace() {
  section(9, "A Timeout with a Grace Period",
          "run() with a timeout: SIGTERM first, SIGKILL only if the child is still there");
  // The shell traps SIGTERM: it says so, stops its sleep and exits 3. It sleeps in the
  // background and `wait`s, because sh runs a trap only between commands. The trap is
  // its first command, in place long before the 1 s timeout strikes.
  sp::command cmd{"sh", "-c", "trap 'echo cleaning up; kill $!; exit 3' TERM; sleep 30 & wait"};
  try {
    sp::run(cmd, {.timeout = 1s, .on_timeout = sp::timeout_policy::kill_with(SIGTERM, 2s)});
  } catch (const sp::timeout_error& e) {
    say("   timeout_error: {}\n", e.what());
    say("   Killed by the library: {}, then SIGKILL: {}\n", e.killed() ? "yes" : "no",
        e.outcome().escalated ? "yes" : "no");
    say("   Child status: {}\n", e.status() ? e.status()->to_string() : "unknown");
    say("   Handler ran: {}\n", e.out().find("cleaning up") != std::string::npos ? "yes" : "no");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "--worker") {
    // Line-buffered stdout: the parent reads lines as they are written, and a worker
    // that is SIGKILLed must not lose lines still sitting in a buffer.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::string role = argv[2];
    if (role == "graceful") return worker_graceful();
    if (role == "stubborn") return worker_stubborn();
    if (role == "ipc") return worker_ipc();
    if (role == "coordinated" && argc == 4) return worker_coordinated(argv[3]);
    if (role == "child") return worker_child();
    fmt::print(stderr, "unknown worker role {}\n", role);
    return 2;
  }
  say("=== Process Signals Examples ===\n");
  sigterm();
  sigkill();
  graceful_shutdown();
  force_kill_timeout();
  forked_ipc_worker();
  coordinated_shutdown();
  parent_signal_handling();
  whole_tree();
  timeout_with_grace();
  say("\n=== All Examples Completed ===\n");
  say("\nKey Concepts:\n");
  say("  1. SIGTERM lets a process clean up; a worker reads it from a signal_set, finishes its job, exits 0\n");
  say("  2. SIGKILL is immediate and cannot be caught: use it only when SIGTERM was not enough\n");
  say("  3. Always set a force-kill timeout, decided by whether the child has exited: terminate(grace)\n");
  say("  4. Coordinate group shutdown: shutdown(workers, grace) shares one deadline among them all\n");
  say("  5. Handle signals in both parent and child: forward_and_shutdown() passes them on\n");
  say("  6. A group does not hold a daemon that called setsid(): command::tree() does\n");
  say("  7. A timeout can ask first: kill_with(SIGTERM, grace) lets the child clean up\n");
  return 0;
}
