// sp_helper - the tests' sparring partner: a child program driven by its arguments.
//
// It runs its arguments as a list of actions, left to right, and exits 0 at the
// end unless an action says otherwise:
//
//   exit N              exit with code N now
//   sleep MS            sleep MS milliseconds
//   out TEXT, err TEXT  write TEXT and a newline to stdout / stderr
//   out-bytes N         write N bytes ('a'..'z' repeating) to stdout; err-bytes N likewise
//   err-flood           write to stderr forever (until killed or EPIPE)
//   cat                 copy stdin to stdout until EOF
//   echo-lines          read stdin line by line, writing each line back at once
//   count-stdin         read stdin to EOF, print the number of bytes
//   print-args          print the remaining arguments, one per line, and stop
//   print-cwd           print the working directory
//   print-env NAME      print NAME's value, or <unset>
//   print-env-all       print every NAME=value, sorted
//   list-fds            print the open fds (excluding the one used to list them)
//   print-signals       print "ignored: ..." and "blocked: ..." signal numbers
//   print-sigstate      print the SigIgn and SigBlk masks of /proc/self/status
//                       ("SigIgn: 0000000000000000"), every signal 1..64
//   print-pid, print-ppid, print-pgid, print-sid
//   ignore-term         ignore SIGTERM from now on
//   ignore SIG          ignore signal number SIG from now on
//   term-exits-after MS on SIGTERM, print "got SIGTERM", wait MS, exit 0
//   kill-self SIG       raise signal number SIG
//   stop-self           raise SIGSTOP
//   setpgid             move into a new process group of its own
//   close-out           close stdout (keep running)
//   grandchild MS       fork a grandchild that keeps stdout/stderr open for MS ms
//   grandchild-pid      fork a grandchild that sleeps forever; print its pid
//   grandchild-pid-newpgrp  the same, but the grandchild first moves into a new
//                       process group of its own (escaping a group kill)
//   ready               print "ready" (a synchronisation point for the test)
//   wait-line           block until one line (or EOF) arrives on stdin
//   seq N               print the lines 0 .. N-1
//   wait-stdin-eof      block until stdin reaches EOF
//   pdeath-child SIG    spawn "sp_helper sleep 60000" with kill_on_parent_death(SIG)
//                       through the library; print its pid
//   pdeath-thread SIG   the same, spawned from a std::thread that has exited (joined,
//                       and its /proc/self/task/<tid> gone: the kernel has finished
//                       its exit and sent any parent-death signals) before the pid
//                       is printed
//   pdeath-fork N       spawn one kill_on_parent_death child (starts the spawner
//                       thread), then while a second thread keeps spawning such
//                       children, fork() N times; each fork child spawns
//                       "sp_helper exit 7" with kill_on_parent_death (alarm(5) ends
//                       it if that hangs) and exits 0 if it got 7. Prints one line per
//                       fork child: its exit code, or 128 + the signal that ended it
//   pdeath-nice N       spawn a kill_on_parent_death child (starts the spawner
//                       thread with our attributes), then setpriority(own thread, N) and pin the thread to the first
//                       CPU it may run on, then spawn "sp_helper print-sched" with
//                       kill_on_parent_death and copy its output
//   as-real-uid U       setresuid(U, unchanged, unchanged): the real uid becomes U,
//                       the effective one stays (as in a set-uid program)
//   spawn-cwd DIR PROG  spawn "PROG print-cwd" with cwd(DIR) and copy its output; on
//                       an exception print its what() and exit 1
//   stdin-flags         print "blocking" or "nonblocking" (O_NONBLOCK of fd 0)
//   print-sched         print "nice N cpus LIST" (this thread's nice value, and the
//                       CPUs it may run on)
//   pdeath-run SIG ACTIONS...
//                       spawn sp_helper running the remaining ACTIONS with
//                       kill_on_parent_death(SIG) (it shares our stdout), print its
//                       pid, then sleep until killed
//   term-writes N       on SIGTERM, write N bytes to stdout and exit 0
//   graceful-worker MS  the library's child side: a signal_set{SIGTERM, SIGINT};
//                       print "ready", then run jobs of MS ms each ("job K done").
//                       A signal that arrives mid-job is acted on only once the job
//                       is done: print "got SIGNAME after K jobs" and exit 0
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <subprocess/command.hpp>
#include <subprocess/signals.hpp>

extern char** environ;

namespace {

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      _exit(errno == EPIPE ? 141 : 120);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}
void say(int fd, const std::string& s) {
  std::string line = s + "\n";
  write_all(fd, line.data(), line.size());
}
void sleep_ms(long ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}
long term_write_bytes = 0;
void on_term_write(int) {
  char block[4096];
  for (char& c : block) c = 'x';
  for (long left = term_write_bytes; left > 0;) {
    size_t m = static_cast<size_t>(left < 4096 ? left : 4096);
    write_all(1, block, m);
    left -= static_cast<long>(m);
  }
  _exit(0);
}
long term_exit_delay = 0;
void on_term(int) {
  const char msg[] = "got SIGTERM\n";
  (void)!::write(1, msg, sizeof msg - 1);
  sleep_ms(term_exit_delay);
  _exit(0);
}

}  // namespace

// pdeath-fork starts threads in a fork child of a threaded process: let TSan allow it.
extern "C" const char* __tsan_default_options() { return "die_after_fork=0"; }

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string& op = a[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= a.size()) {
        say(2, "sp_helper: " + op + " needs an argument");
        _exit(121);
      }
      return a[++i];
    };
    if (op == "exit") {
      _exit(std::atoi(next().c_str()));
    } else if (op == "sleep") {
      sleep_ms(std::atol(next().c_str()));
    } else if (op == "out") {
      say(1, next());
    } else if (op == "err") {
      say(2, next());
    } else if (op == "out-bytes" || op == "err-bytes") {
      long n = std::atol(next().c_str());
      std::string block(65536, 'a');
      for (size_t k = 0; k < block.size(); ++k) block[k] = static_cast<char>('a' + k % 26);
      int fd = op == "out-bytes" ? 1 : 2;
      while (n > 0) {
        size_t m = static_cast<size_t>(std::min<long>(n, static_cast<long>(block.size())));
        write_all(fd, block.data(), m);
        n -= static_cast<long>(m);
      }
    } else if (op == "err-flood") {
      std::string block(65536, 'e');
      for (;;) write_all(2, block.data(), block.size());
    } else if (op == "cat") {
      char buf[65536];
      ssize_t r;
      while ((r = ::read(0, buf, sizeof buf)) != 0) {
        if (r < 0) {
          if (errno == EINTR) continue;
          _exit(122);
        }
        write_all(1, buf, static_cast<size_t>(r));
      }
    } else if (op == "echo-lines") {
      std::string line;
      char c;
      ssize_t r;
      while ((r = ::read(0, &c, 1)) != 0) {
        if (r < 0) {
          if (errno == EINTR) continue;
          _exit(122);
        }
        line += c;
        if (c == '\n') {
          write_all(1, line.data(), line.size());
          line.clear();
        }
      }
      if (!line.empty()) write_all(1, line.data(), line.size());
    } else if (op == "count-stdin" || op == "wait-stdin-eof") {
      char buf[65536];
      long total = 0;
      ssize_t r;
      while ((r = ::read(0, buf, sizeof buf)) != 0) {
        if (r < 0) {
          if (errno == EINTR) continue;
          _exit(122);
        }
        total += r;
      }
      if (op == "count-stdin") say(1, std::to_string(total));
    } else if (op == "print-args") {
      for (size_t k = i + 1; k < a.size(); ++k) say(1, a[k]);
      break;
    } else if (op == "print-cwd") {
      char buf[4096];
      say(1, getcwd(buf, sizeof buf) ? buf : "?");
    } else if (op == "print-env") {
      std::string n = next();
      const char* v = std::getenv(n.c_str());
      say(1, v ? v : "<unset>");
    } else if (op == "print-env-all") {
      std::vector<std::string> all;
      for (char** e = environ; *e; ++e) all.emplace_back(*e);
      std::sort(all.begin(), all.end());
      for (auto& e : all) say(1, e);
    } else if (op == "list-fds") {
      DIR* d = opendir("/proc/self/fd");
      std::vector<int> fds;
      while (dirent* e = readdir(d))
        if (e->d_name[0] != '.' && std::atoi(e->d_name) != dirfd(d)) fds.push_back(std::atoi(e->d_name));
      closedir(d);
      std::sort(fds.begin(), fds.end());
      std::string s;
      for (int f : fds) s += (s.empty() ? "" : " ") + std::to_string(f);
      say(1, s);
    } else if (op == "print-sigstate") {
      // The kernel's view, every signal 1..64: "SigIgn: <hex>" and "SigBlk: <hex>".
      int f = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
      std::string st;
      char buf[4096];
      for (ssize_t n; (n = ::read(f, buf, sizeof buf)) > 0;) st.append(buf, static_cast<size_t>(n));
      ::close(f);
      for (const char* key : {"SigIgn:", "SigBlk:"}) {
        auto at = st.find(key);
        auto end = at == std::string::npos ? at : st.find('\n', at);
        std::string line = at == std::string::npos ? std::string(key) + " ?" : st.substr(at, end - at);
        line.erase(std::remove(line.begin(), line.end(), '\t'), line.end());
        say(1, line.replace(line.find(':') + 1, 0, " "));
      }
    } else if (op == "print-signals") {
      std::string ign, blk;
      sigset_t mask;
      sigprocmask(SIG_SETMASK, nullptr, &mask);
      for (int s = 1; s < SIGRTMIN; ++s) {
        struct sigaction sa;
        if (sigaction(s, nullptr, &sa) == 0 && sa.sa_handler == SIG_IGN) ign += " " + std::to_string(s);
        if (sigismember(&mask, s) == 1) blk += " " + std::to_string(s);
      }
      say(1, "ignored:" + ign);
      say(1, "blocked:" + blk);
    } else if (op == "print-pid") {
      say(1, std::to_string(getpid()));
    } else if (op == "print-ppid") {
      say(1, std::to_string(getppid()));
    } else if (op == "print-pgid") {
      say(1, std::to_string(getpgrp()));
    } else if (op == "print-sid") {
      say(1, std::to_string(getsid(0)));
    } else if (op == "ignore-term") {
      signal(SIGTERM, SIG_IGN);
    } else if (op == "ignore") {
      signal(std::atoi(next().c_str()), SIG_IGN);
    } else if (op == "term-exits-after") {
      term_exit_delay = std::atol(next().c_str());
      signal(SIGTERM, on_term);
    } else if (op == "kill-self") {
      raise(std::atoi(next().c_str()));
    } else if (op == "stop-self") {
      raise(SIGSTOP);
    } else if (op == "setpgid") {
      setpgid(0, 0);
    } else if (op == "close-out") {
      close(1);
    } else if (op == "grandchild") {
      long ms = std::atol(next().c_str());
      if (fork() == 0) {
        sleep_ms(ms);
        _exit(0);
      }
    } else if (op == "grandchild-pid" || op == "grandchild-pid-newpgrp") {
      int sync[2];
      if (pipe(sync) != 0) _exit(123);
      pid_t g = fork();
      if (g == 0) {
        if (op == "grandchild-pid-newpgrp") setpgid(0, 0);
        close(sync[1]);  // tells the parent the grandchild is set up
        for (;;) pause();
      }
      close(sync[1]);
      char c;
      while (read(sync[0], &c, 1) < 0 && errno == EINTR) {
      }
      close(sync[0]);
      say(1, std::to_string(g));
    } else if (op == "pdeath-child") {
      int sig = std::atoi(next().c_str());
      auto child = subprocess::command{"/proc/self/exe", "sleep", "60000"}.kill_on_parent_death(sig).spawn();
      say(1, std::to_string(child.pid()));
      child.detach();
    } else if (op == "wait-line") {
      char c;
      while (::read(0, &c, 1) == 1 && c != '\n') {
      }
    } else if (op == "seq") {
      long n = std::atol(next().c_str());
      std::string buf;
      for (long k = 0; k < n; ++k) {
        buf += std::to_string(k);
        buf += '\n';
        if (buf.size() > 60000) {
          write_all(1, buf.data(), buf.size());
          buf.clear();
        }
      }
      write_all(1, buf.data(), buf.size());
    } else if (op == "pdeath-thread") {
      // Like pdeath-child, but spawned from a thread that has exited (joined) by the
      // time the pid is printed.
      int sig = std::atoi(next().c_str());
      pid_t pid = -1, tid = 0;
      std::thread([&] {
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
        auto child = subprocess::command{"/proc/self/exe", "sleep", "60000"}.kill_on_parent_death(sig).spawn();
        pid = child.pid();
        child.detach();
      }).join();
      // join() returns when the thread's tid is cleared, a little before the kernel
      // finishes its exit and sends the parent-death signals: wait for that too.
      const std::string task = "/proc/self/task/" + std::to_string(tid);
      while (::access(task.c_str(), F_OK) == 0) std::this_thread::yield();
      say(1, std::to_string(pid));
    } else if (op == "pdeath-fork") {
      int n = std::atoi(next().c_str());
      auto first = subprocess::command{"/proc/self/exe", "sleep", "60000"}.kill_on_parent_death(SIGKILL).spawn();
      std::atomic<bool> stop{false};
      std::thread busy([&] {
        while (!stop.load()) {
          auto c = subprocess::command{"/proc/self/exe", "exit", "0"}.kill_on_parent_death(SIGKILL).spawn();
          c.wait();
        }
      });
      std::string report;
      for (int k = 0; k < n; ++k) {
        pid_t f = ::fork();
        if (f == 0) {
          ::alarm(5);
          try {
            auto c = subprocess::command{"/proc/self/exe", "exit", "7"}.kill_on_parent_death(SIGKILL).spawn();
            ::_exit(c.wait() == subprocess::exit_status::exited(7) ? 0 : 1);
          } catch (...) {
            ::_exit(2);
          }
        }
        int ws = 0;
        if (f < 0 || ::waitpid(f, &ws, 0) != f) ws = 0xff00;
        report += std::to_string(WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws)) + "\n";
      }
      stop = true;
      busy.join();
      first.kill();
      first.wait();
      write_all(1, report.data(), report.size());
    } else if (op == "pdeath-nice") {
      int n = std::atoi(next().c_str());
      subprocess::command{"/proc/self/exe", "exit", "0"}.kill_on_parent_death(SIGKILL).spawn().wait();
      cpu_set_t set;
      CPU_ZERO(&set);
      if (::setpriority(PRIO_PROCESS, 0, n) != 0 || ::sched_getaffinity(0, sizeof set, &set) != 0) return 3;
      int cpu = 0;
      while (!CPU_ISSET(cpu, &set)) ++cpu;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      if (::sched_setaffinity(0, sizeof set, &set) != 0) return 3;
      auto r = subprocess::command{"/proc/self/exe", "print-sched"}.kill_on_parent_death(SIGKILL).out(subprocess::pipe).spawn();
      auto line = r.out().read_line();
      r.wait();
      say(1, line.value_or("no output"));
    } else if (op == "as-real-uid") {
      if (::setresuid(static_cast<uid_t>(std::atol(next().c_str())), static_cast<uid_t>(-1),
                      static_cast<uid_t>(-1)) != 0)
        return 3;
    } else if (op == "spawn-cwd") {
      std::string dir = next(), prog = next();
      try {
        auto r = subprocess::command{prog, "print-cwd"}.cwd(dir).out(subprocess::pipe).spawn();
        auto line = r.out().read_line();
        r.wait();
        say(1, line.value_or("no output"));
      } catch (const std::exception& e) {
        say(1, e.what());
        return 1;
      }
    } else if (op == "stdin-flags") {
      say(1, (::fcntl(0, F_GETFL) & O_NONBLOCK) != 0 ? "nonblocking" : "blocking");
    } else if (op == "print-sched") {
      errno = 0;
      int nice = ::getpriority(PRIO_PROCESS, 0);
      cpu_set_t set;
      CPU_ZERO(&set);
      ::sched_getaffinity(0, sizeof set, &set);
      std::string cpus;
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &set)) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
      say(1, "nice " + std::to_string(nice) + " cpus " + cpus);
    } else if (op == "pdeath-run") {
      int sig = std::atoi(next().c_str());
      std::vector<std::string> rest{"/proc/self/exe"};
      rest.insert(rest.end(), a.begin() + static_cast<long>(i) + 1, a.end());
      auto child = subprocess::command(rest).kill_on_parent_death(sig).spawn();
      say(1, std::to_string(child.pid()));
      child.detach();
      for (;;) pause();
    } else if (op == "term-writes") {
      term_write_bytes = std::atol(next().c_str());
      signal(SIGTERM, on_term_write);
    } else if (op == "graceful-worker") {
      long ms = std::atol(next().c_str());
      subprocess::signal_set stop{SIGTERM, SIGINT};
      say(1, "ready");
      for (int jobs = 1;; ++jobs) {
        sleep_ms(ms);  // the job: a blocked signal does not interrupt it
        say(1, "job " + std::to_string(jobs) + " done");
        if (auto s = stop.try_read()) {
          say(1, "got " + s->name() + " after " + std::to_string(jobs) + " jobs");
          _exit(0);
        }
      }
    } else if (op == "ready") {
      say(1, "ready");
    } else {
      say(2, "sp_helper: unknown action '" + op + "'");
      _exit(121);
    }
  }
  return 0;
}
