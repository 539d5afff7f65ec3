#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <thread>

#include <subprocess/event_loop.hpp>
#include <subprocess/signals.hpp>
#include <subprocess/subprocess.hpp>

#include "testing.hpp"

namespace sp = subprocess;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Peak resident set size of this process in KiB (VmHWM), reset first if asked.
long peak_rss_kib(bool reset = false) {
  if (reset) std::ofstream("/proc/self/clear_refs") << "5";
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

using sigchld_ignored = testing::sigchld_discarding;

bool says_status_discarded(const sp::error& e) {
  return e.code() == std::errc::no_child_process &&
         std::string_view(e.what()).find("discarded") != std::string_view::npos;
}

}  // namespace

TEST_CASE("on_line: edge cases of line splitting") {
  using V = std::vector<std::string>;
  auto lines_of = [](sp::command c) {
    auto p = c.out(sp::pipe).spawn();
    sp::event_loop loop;
    V got;
    bool closed = false;
    loop.on_line(p.out(), [&](std::string_view l) { got.emplace_back(l); });
    loop.on_close(p.out(), [&] { closed = true; });
    loop.run();
    CHECK(closed);
    p.wait();
    return got;
  };
  SECTION("a final line with no newline") {
    CHECK(lines_of(sp::command{"printf", "a\nb"}) == V{"a", "b"});
  }
  SECTION("empty lines") { CHECK(lines_of(sp::command{"printf", "\n\nx\n\n"}) == V{"", "", "x", ""}); }
  SECTION("CRLF is kept as data") { CHECK(lines_of(sp::command{"printf", "a\r\nb\r\n"}) == V{"a\r", "b\r"}); }
  SECTION("no output at all") { CHECK(lines_of(sp::command{"true"}).empty()); }
  SECTION("lines split across chunk boundaries") {
    CHECK(lines_of(sp::command::shell("printf 'ab'; sleep 0.05; printf 'c\\nd'; sleep 0.05; printf 'e\\n'")) ==
          V{"abc", "de"});
  }
  SECTION("lines longer than the read buffer") {
    std::string big(200000, 'q');
    auto got = lines_of(testing::helper({"out-bytes", "200000", "out", "", "out", "tail"}));
    REQUIRE(got.size() == 2);
    CHECK(got[0].size() == 200000);
    CHECK(got[1] == "tail");
  }
}

TEST_CASE("stdout and stderr of one child, separately, in arrival order") {
  // The child writes one line, then waits for our acknowledgement before the next:
  // the order of arrival is then certain, without sleeping.
  auto p = testing::helper({"out", "1", "wait-line", "err", "2", "wait-line", "out", "3"})
               .in(sp::pipe)
               .out(sp::pipe)
               .err(sp::pipe)
               .spawn();
  sp::event_loop loop;
  std::vector<std::string> seen;
  auto ack = [&] {
    if (seen.size() < 3) p.in().write_all("ok\n");  // after the last line the child exits
  };
  loop.on_line(p.out(), [&](std::string_view l) {
    seen.push_back("out:" + std::string(l));
    ack();
  });
  loop.on_line(p.err(), [&](std::string_view l) {
    seen.push_back("err:" + std::string(l));
    ack();
  });
  std::optional<sp::exit_status> st;
  loop.on_exit(p, [&](sp::exit_status s) { st = s; });
  loop.run();
  CHECK(seen == std::vector<std::string>{"out:1", "err:2", "out:3"});
  CHECK(st == sp::exit_status::exited(0));
}

TEST_CASE("100 children in one loop: every byte of every source, in order") {
  constexpr int children = 100, lines = 2000;
  std::vector<sp::process> procs;
  for (int i = 0; i < children; ++i) procs.push_back(testing::helper({"seq", std::to_string(lines)}).out(sp::pipe).spawn());
  sp::event_loop loop;
  std::vector<int> next(children, 0);
  int bad = 0, closed = 0, exited = 0;
  for (int i = 0; i < children; ++i) {
    loop.on_line(procs[i].out(), [&, i](std::string_view l) {
      if (l != std::to_string(next[i])) ++bad;
      ++next[i];
    });
    loop.on_close(procs[i].out(), [&] { ++closed; });
    loop.on_exit(procs[i], [&](sp::exit_status s) { exited += s.success(); });
  }
  loop.run();
  CHECK(bad == 0);
  CHECK(closed == children);
  CHECK(exited == children);
  CHECK(std::all_of(next.begin(), next.end(), [](int n) { return n == lines; }));
}

TEST_CASE("a child exiting before its output is drained: on_exit and on_close both fire") {
  // 1 MiB of output: the child cannot exit before we read most of it... unless the
  // pipe is big enough, so read only after it exited: register the stream late.
  auto p = testing::helper({"out-bytes", "60000"}).out(sp::pipe).spawn();
  REQUIRE(sp::detail::poll_one(p.pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  sp::event_loop loop;
  std::size_t bytes = 0;
  bool closed = false;
  std::optional<sp::exit_status> st;
  loop.on_exit(p, [&](sp::exit_status s) { st = s; });
  loop.on_data(p.out(), [&](std::string_view c) { bytes += c.size(); });
  loop.on_close(p.out(), [&] { closed = true; });
  loop.run();
  CHECK(st == sp::exit_status::exited(0));
  CHECK(closed);
  CHECK(bytes == 60000);
}

TEST_CASE("watches and timers can be removed from inside callbacks") {
  sp::event_loop loop;
  SECTION("a watch removes itself") {
    auto p = testing::helper({"seq", "100"}).out(sp::pipe).spawn();
    int lines = 0;
    sp::event_loop::id w = 0;
    w = loop.on_line(p.out(), [&](std::string_view) {
      ++lines;
      loop.remove(w);  // after the first line
    });
    loop.run();
    CHECK(lines == 1);
    p.out().close();
    p.wait();
  }
  SECTION("a raw fd watch removes itself") {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(::write(fds[1], "x", 1) == 1);
    int calls = 0;
    sp::event_loop::id w = 0;
    w = loop.watch(fds[0], EPOLLIN, [&](std::uint32_t) {
      ++calls;
      loop.remove(w);
      loop.remove(w);  // twice is harmless
    });
    loop.run();
    CHECK(calls == 1);
    ::close(fds[0]);
    ::close(fds[1]);
  }
  SECTION("timers: order, every, cancel from inside") {
    std::vector<int> order;
    loop.after(60ms, [&] { order.push_back(3); });
    loop.after(20ms, [&] { order.push_back(1); });
    int ticks = 0;
    sp::event_loop::id t = 0;
    t = loop.every(10ms, [&] {
      if (++ticks == 3) loop.cancel(t);
    });
    auto doomed = loop.after(30ms, [&] { order.push_back(99); });
    loop.after(25ms, [&] {
      order.push_back(2);
      loop.cancel(doomed);
    });
    auto t0 = clk::now();
    loop.run();
    CHECK(order == std::vector<int>{1, 2, 3});
    CHECK(ticks == 3);
    CHECK(clk::now() - t0 >= 60ms);
  }
  SECTION("bad input") {
    CHECK_THROWS_AS(loop.after(-1ms, [] {}), sp::argument_error);
    CHECK_THROWS_AS(loop.every(0ms, [] {}), sp::argument_error);
    CHECK_THROWS_AS(loop.watch(-1, EPOLLIN, [](std::uint32_t) {}), sp::argument_error);
    sp::pipe_reader closed;
    CHECK_THROWS_AS(loop.on_line(closed, [](std::string_view) {}), sp::argument_error);
  }
}

TEST_CASE("post and stop from other threads") {
  sp::event_loop loop;
  std::atomic<int> posted{0};
  std::thread t([&] {
    for (int i = 0; i < 100; ++i) loop.post([&] { ++posted; });
    loop.post([&] { loop.stop(); });
  });
  loop.run_forever();  // idle until posts arrive; returns on stop()
  t.join();
  CHECK(posted == 100);
  SECTION("run_for returns at its deadline") {
    loop.every(5ms, [] {});
    auto t0 = clk::now();
    CHECK_FALSE(loop.run_for(100ms));
    CHECK(clk::now() - t0 >= 100ms);
  }
}

TEST_CASE("an exception in a callback leaves run() and the loop stays usable") {
  sp::event_loop loop;
  loop.after(1ms, [] { throw std::runtime_error("boom"); });
  int later = 0;
  loop.after(5ms, [&] { ++later; });
  CHECK_THROWS_WITH(loop.run(), "boom");
  loop.run();
  CHECK(later == 1);
}

TEST_CASE("a callback that throws: what it was given is consumed and the next run() goes on") {
  sp::event_loop loop;
  SECTION("on_line: the line is not delivered again; the lines after it are") {
    auto p = sp::command{"printf", "a\nb\nc"}.out(sp::pipe).spawn();
    std::vector<std::string> got;
    bool closed = false;
    loop.on_line(p.out(), [&](std::string_view l) {
      got.emplace_back(l);
      if (got.size() == 1 || l == "c") throw std::runtime_error("line " + std::string(l));
    });
    loop.on_close(p.out(), [&] { closed = true; });
    CHECK_THROWS_WITH(loop.run(), "line a");
    CHECK_THROWS_WITH(loop.run(), "line c");  // the last line, without '\n', at EOF
    loop.run();
    CHECK(got == std::vector<std::string>{"a", "b", "c"});
    CHECK(closed);
    CHECK(p.wait().success());
  }
  SECTION("on_data: the chunk is not delivered again; the next data is") {
    // The child writes "first", waits for a line on stdin, writes "second".
    auto p = sp::command::shell("printf first; read x; printf second")
                 .in(sp::pipe)
                 .out(sp::pipe)
                 .spawn();
    std::string all;
    int calls = 0;
    bool closed = false;
    loop.on_data(p.out(), [&](std::string_view chunk) {
      all += chunk;
      if (++calls == 1) throw std::runtime_error("chunk");
    });
    loop.on_close(p.out(), [&] { closed = true; });
    CHECK_THROWS_WITH(loop.run(), "chunk");
    CHECK(all == "first");
    p.in().write_all("go\n");
    p.in().close();
    loop.run();
    CHECK(all == "firstsecond");
    CHECK(closed);
    CHECK(p.wait().success());
  }
  SECTION("pump into a sink that throws: the chunk is released, reading goes on") {
    auto p = sp::command::shell("printf first; read x; printf second").in(sp::pipe).out(sp::pipe).spawn();
    std::string all;
    int calls = 0;
    bool finished = false;
    loop.pump(
        p.out(),
        [&](std::string_view chunk, std::function<void()> done) {
          all += chunk;
          if (++calls == 1) throw std::runtime_error("sink");
          done();
        },
        {.on_finish = [&](std::exception_ptr) { finished = true; }});
    CHECK_THROWS_WITH(loop.run(), "sink");
    p.in().write_all("go\n");
    p.in().close();
    loop.run();
    CHECK(all == "firstsecond");
    CHECK(finished);
    CHECK(p.wait().success());
  }
  SECTION("on_exit: called once") {
    auto p = sp::command{"true"}.spawn();
    int calls = 0;
    loop.on_exit(p, [&](sp::exit_status) {
      ++calls;
      throw std::runtime_error("exit");
    });
    CHECK_THROWS_WITH(loop.run(), "exit");
    loop.run();  // nothing left to do: returns at once
    CHECK(calls == 1);
    CHECK(p.status() == sp::exit_status::exited(0));
  }
  SECTION("timers: a one-shot timer that throws has run; the child it killed is seen once") {
    auto p = sp::command{"sleep", "10"}.spawn();
    int fired = 0, exits = 0;
    loop.after(1ms, [&] {
      ++fired;
      p.kill();
      throw std::runtime_error("timer");
    });
    loop.on_exit(p, [&](sp::exit_status st) {
      ++exits;
      CHECK(st == sp::exit_status::signaled(SIGKILL));
    });
    CHECK_THROWS_WITH(loop.run(), "timer");
    loop.run();
    CHECK(fired == 1);
    CHECK(exits == 1);
  }
  SECTION("watch: a callback that read its data and threw gets the next data only") {
    auto p = sp::command::shell("printf one; read x; printf two").in(sp::pipe).out(sp::pipe).spawn();
    std::string all;
    int calls = 0;
    sp::event_loop::id w = 0;
    w = loop.watch(p.out().fd(), EPOLLIN, [&](std::uint32_t) {
      char buf[64];
      ssize_t n = ::read(p.out().fd(), buf, sizeof buf);
      if (n <= 0) {
        loop.remove(w);
        return;
      }
      all.append(buf, static_cast<std::size_t>(n));
      if (++calls == 1) throw std::runtime_error("watch");
    });
    CHECK_THROWS_WITH(loop.run(), "watch");
    CHECK(all == "one");
    p.in().write_all("go\n");
    p.in().close();
    loop.run();
    CHECK(all == "onetwo");
    CHECK(p.wait().success());
  }
}

TEST_CASE("writer: high-water mark, drain, end") {
  auto p = testing::helper({"count-stdin"}).in(sp::pipe).out(sp::pipe).spawn();
  sp::event_loop loop;
  auto w = loop.writer(p.in(), 1024);
  std::string out;
  loop.on_data(p.out(), [&](std::string_view c) { out += c; });
  // Write 4 MiB in 64 KiB pieces, honouring the return value like a Node stream.
  std::string piece(65536, 'w');
  int sent = 0, drains = 0;
  std::size_t max_buffered = 0;
  std::function<void()> send_more = [&] {
    while (sent < 64) {
      ++sent;
      bool room = w.write(piece);
      max_buffered = std::max(max_buffered, w.buffered());
      if (!room) return;  // wait for drain
    }
    w.end();
  };
  w.on_drain([&] {
    ++drains;
    send_more();
  });
  send_more();
  loop.run();
  CHECK(out == std::to_string(64 * 65536) + "\n");
  CHECK(drains > 0);
  CHECK(max_buffered <= 1024 + piece.size());
  CHECK_FALSE(p.in().is_open());  // end() closed it
  CHECK(p.wait().success());
}

TEST_CASE("writer: a child that stops reading is an error the caller sees") {
  auto p = testing::helper({"exit", "0"}).in(sp::pipe).spawn();
  REQUIRE(sp::detail::poll_one(p.pidfd(), POLLIN, sp::detail::clock::now() + 10s) != 0);
  sp::event_loop loop;
  SECTION("with on_error") {
    std::optional<std::error_code> err;
    sp::writer_options o;
    o.on_error = [&](const sp::io_error& e) { err = e.code(); };
    auto w = loop.writer(p.in(), std::move(o));
    w.write(std::string(1 << 20, 'x'));
    loop.run();
    CHECK(err == std::errc::broken_pipe);
  }
  SECTION("without on_error the io_error leaves run()") {
    auto w = loop.writer(p.in(), 1024);
    CHECK_THROWS_AS(w.write(std::string(1 << 20, 'x')), sp::io_error);
  }
  p.wait();
}

TEST_CASE("bidirectional: requests and replies, no deadlock when both sides write a lot") {
  // echo-lines answers each line as soon as it has read it. A 1 MiB line cannot be
  // written in one go while the reply is not read: only concurrent I/O finishes.
  auto p = testing::helper({"echo-lines"}).in(sp::pipe).out(sp::pipe).spawn();
  sp::event_loop loop;
  auto w = loop.writer(p.in(), 64 * 1024);
  std::vector<std::string> requests{"small", std::string(1 << 20, 'L'), "after the big one"};
  std::size_t next = 0;
  std::vector<std::size_t> reply_sizes;
  sp::event_loop::id timeout = 0;
  auto send = [&] {
    w.write(requests[next] + "\n");
    timeout = loop.after(10s, [&] { FAIL("no reply within 10 s"); });
  };
  loop.on_line(p.out(), [&](std::string_view reply) {
    loop.cancel(timeout);
    CHECK(reply == requests[next]);
    reply_sizes.push_back(reply.size());
    if (++next < requests.size())
      send();
    else
      w.end();
  });
  send();
  loop.run();
  CHECK(reply_sizes == std::vector<std::size_t>{5, 1 << 20, 17});
  CHECK(p.wait().success());
}

TEST_CASE("backpressure: yes into a deliberately slow consumer") {
  constexpr std::size_t hwm = 16 * 1024;
  auto yes = sp::command{"yes", "data-chunk"}.out(sp::pipe).spawn();
  sp::event_loop loop;
  std::size_t read_total = 0, consumed = 0, worst_held = 0;
  int chunks = 0;
  sp::pump_options o;
  o.high_water_mark = hwm;
  bool finished = false;
  o.on_finish = [&](std::exception_ptr) { finished = true; };
  loop.pump(
      yes.out(),
      [&](std::string_view chunk, std::function<void()> done) {
        CHECK(chunk.size() <= hwm);
        read_total += chunk.size();
        worst_held = std::max(worst_held, read_total - consumed);
        ++chunks;
        if (chunks == 100) yes.kill();
        loop.after(2ms, [&, n = chunk.size(), done] {  // a slow consumer
          consumed += n;
          done();
        });
      },
      o);
  loop.run();
  CHECK(finished);
  CHECK(chunks >= 100);
  // Never more than one chunk (at most the high-water mark) held in memory.
  CHECK(worst_held <= hwm);
  // After the kill only what was already in the pipe (<= one pipe buffer) came through.
  CHECK(read_total <= 100 * hwm + 1024 * 1024);
  CHECK(yes.wait().signal() == SIGKILL);
}

TEST_CASE("1 GiB through a transform stage with flat memory") {
  const std::size_t total = std::size_t(1) << 30;
  auto src = sp::command{"head", "-c", std::to_string(total), "/dev/zero"}.out(sp::pipe).spawn();
  auto dst = testing::helper({"count-stdin"}).in(sp::pipe).out(sp::pipe).spawn();
  long before = peak_rss_kib(true);
  sp::event_loop loop;
  std::size_t transformed = 0;
  std::string reply;
  loop.pump(src.out(), dst.in(), [&](std::string_view chunk) {
    transformed += chunk.size();
    std::string up(chunk);
    for (char& c : up) c = static_cast<char>(c + 1);
    return up;
  });
  loop.on_data(dst.out(), [&](std::string_view c) { reply += c; });
  loop.run();
  long growth_kib = peak_rss_kib() - before;
  CHECK(transformed == total);
  CHECK(reply == std::to_string(total) + "\n");
  // AddressSanitizer keeps freed memory in quarantine (256 MiB by default, plus its
  // shadow and allocator caches), so each chunk the transform returned stays resident
  // for a while under it. Still far below the 1 GiB that went through.
  long allowance_kib = 32 * 1024;
#if defined(__SANITIZE_ADDRESS__)
  allowance_kib += 384 * 1024;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  allowance_kib += 384 * 1024;
#endif
#endif
  INFO("peak RSS grew by " << growth_kib << " KiB");
  CHECK(growth_kib < allowance_kib);
  CHECK(src.wait().success());
  CHECK(dst.wait().success());
}

TEST_CASE("multiplexing: tagged lines merged into one sink that ends after every source") {
  std::vector<std::pair<std::string, sp::process>> sources;
  sources.emplace_back("[A]", testing::helper({"seq", "3"}).out(sp::pipe).spawn());
  sources.emplace_back("[B]", testing::helper({"sleep", "100", "seq", "2"}).out(sp::pipe).spawn());
  sources.emplace_back("[C]", testing::helper({"out", "only"}).out(sp::pipe).spawn());
  sp::event_loop loop;
  std::vector<std::string> merged;
  bool sink_ended = false;
  std::size_t open_sources = sources.size();
  for (auto& [tag, p] : sources) {
    loop.on_line(p.out(), [&, tag = tag](std::string_view l) {
      CHECK_FALSE(sink_ended);  // nothing arrives after the merged stream ended
      merged.push_back(tag + " " + std::string(l));
    });
    loop.on_close(p.out(), [&] {
      if (--open_sources == 0) sink_ended = true;  // the last source closes the sink
    });
  }
  loop.run();
  CHECK(sink_ended);
  CHECK(merged.size() == 6);
  for (auto& [tag, p] : sources) p.wait();
}

TEST_CASE("a signal_set watched by the loop: signals as events") {
  sp::signal_set signals{SIGUSR1, SIGUSR2};
  sp::event_loop loop;
  std::vector<int> got;
  auto w = loop.watch(signals.fd(), EPOLLIN, [&](std::uint32_t) {
    for (const auto& s : signals.read_pending()) got.push_back(s.signal);
    if (got.size() == 2) loop.stop();
  });
  loop.after(10ms, [] { ::kill(::getpid(), SIGUSR1); });
  loop.after(20ms, [] { ::kill(::getpid(), SIGUSR2); });
  loop.after(10s, [&] { loop.stop(); });  // a safety net, never reached normally
  loop.run();
  loop.remove(w);
  CHECK(got == std::vector<int>{SIGUSR1, SIGUSR2});
}

TEST_CASE("SIGCHLD ignored: an exit watch ends once, with the error, and the loop goes on") {
  sigchld_ignored ignored;
  sp::event_loop loop;
  // A child that exits at once, and one that exits when its stdin ends.
  auto quick = testing::helper({"exit", "3"}).spawn();
  auto later = sp::command{"cat"}.in(sp::pipe).spawn();
  int exits = 0;
  SECTION("two arguments: the error leaves run() once; the other watches go on") {
    loop.on_exit(quick, [&](sp::exit_status) { ++exits; });
    loop.on_exit(later, [&](sp::exit_status) { ++exits; });
    bool threw = false;
    try {
      loop.run();
    } catch (const sp::error& e) {
      threw = true;
      CHECK(says_status_discarded(e));
      CHECK(std::string_view(e.what()).find("sp_helper") != std::string_view::npos);
    }
    CHECK(threw);
    CHECK(exits == 0);
    // The quick child's watch is gone: the loop now waits for `later` only, and
    // reports its lost status once too; then nothing is left.
    later.in().close();
    threw = false;
    try {
      loop.run();
    } catch (const sp::error& e) {
      threw = true;
      CHECK(says_status_discarded(e));
      CHECK(std::string_view(e.what()).find("cat") != std::string_view::npos);
    }
    CHECK(threw);
    CHECK(exits == 0);
    CHECK(loop.idle());
    CHECK_NOTHROW(loop.run());
  }
  SECTION("with on_lost: called once per child, instead of fn; run() throws nothing") {
    std::vector<pid_t> lost;
    auto on_lost = [&](pid_t pid) {
      return [&lost, pid](const sp::error& e) {
        CHECK(says_status_discarded(e));
        lost.push_back(pid);
      };
    };
    loop.on_exit(quick, [&](sp::exit_status) { ++exits; }, on_lost(quick.pid()));
    loop.on_exit(later, [&](sp::exit_status) { ++exits; }, on_lost(later.pid()));
    loop.after(50ms, [&] { later.in().close(); });
    CHECK_NOTHROW(loop.run());
    CHECK(exits == 0);
    REQUIRE(lost.size() == 2);
    CHECK(lost[0] == quick.pid());
    CHECK(lost[1] == later.pid());
    CHECK(loop.idle());
  }
}
