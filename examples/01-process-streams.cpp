// Lesson 01: process streams.
//
// A child talks to its parent through three byte streams: stdin, stdout, stderr.
// With sp::pipe the parent holds the other end of each one. This lesson reads them,
// writes them, chains them, slows them down (backpressure) and watches several at once
// with sp::event_loop: one thread, no blocking, no deadlocks. Section 8 (not in the
// original course) swaps the pipes for a terminal, for programs that want a person.
//
// Run with no arguments. Children are standard tools: echo, cat, grep, wc, yes, bc,
// sh, date, whoami, pwd.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

void section(int n, const char* title, const char* subtitle) {
  fmt::print("\n{}. {}\n   {}\n", n, title, subtitle);
}

std::string upper(std::string_view s) {
  std::string u(s);
  for (char& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}

// 1. A child's stdout, through an in-process transform, to our stdout.
void basic_stream_piping() {
  section(1, "Basic Stream Piping", "echo's output, uppercased by the parent as it arrives");
  auto echo = sp::command{"echo", "hello world from streams"}.out(sp::pipe).spawn();
  sp::event_loop loop;
  loop.on_data(echo.out(), [](std::string_view chunk) {
    std::fputs(upper(chunk).c_str(), stdout);  // not indented: straight through
  });
  loop.on_exit(echo, [](sp::exit_status st) { fmt::print("   echo exited with code {}\n", *st.code()); });
  loop.run();
}

// 2. cat | grep | wc -l, chained by hand: each stdout becomes the next stdin.
void multi_process_pipeline(const std::filesystem::path& dir) {
  section(2, "Multi-Process Pipeline", "cat log | grep ERROR | wc -l, joined by kernel pipes");
  auto log = dir / "sample-log.txt";
  std::ofstream(log) << "ERROR: Database connection failed\nINFO: Server started\n"
                        "ERROR: Invalid user input\nWARNING: High memory usage\n"
                        "INFO: Request processed\nERROR: Timeout occurred\n";
  try {
    auto cat = sp::command{"cat", log.string()}.out(sp::pipe).spawn();
    // grep reads from cat's pipe; the parent then closes its own copy of that end,
    // so grep sees EOF when cat finishes. The bytes never pass through the parent.
    auto grep = sp::command{"grep", "ERROR"}.in(sp::fd(cat.out().fd())).out(sp::pipe).spawn();
    cat.out().close();
    auto wc = sp::command{"wc", "-l"}.in(sp::fd(grep.out().fd())).out(sp::pipe).spawn();
    grep.out().close();
    std::string count = wc.out().read_all();
    cat.wait();
    grep.wait();
    fmt::print("   Found {} ERROR lines\n", std::stoi(count));
    fmt::print("   Pipeline exit code: {}\n", *wc.wait().code());
  } catch (const sp::error& e) {
    fmt::print("   Pipeline error: {}\n", e.what());  // e.g. a program not found
  }
}

// 3. Write to a child's stdin, then close it so the child sees end of input.
void writing_to_stdin() {
  section(3, "Writing to Child stdin", "feed grep four lines, close stdin, read its answer");
  auto grep = sp::command{"grep", "important"}.in(sp::pipe).out(sp::pipe).spawn();
  grep.in().write_all("This is line 1\nThis is important line 2\n");
  grep.in().write_all("This is line 3\nAnother important line 4\n");
  grep.in().close();  // EOF: grep can finish
  for (std::string_view line : grep.out().lines()) fmt::print("   {}\n", line);
  fmt::print("   grep exited with code {}\n", *grep.wait().code());
}

// 4. A fast producer into a slow consumer: the pipe fills up and `yes` waits.
void transform_with_backpressure() {
  section(4, "Transform with Backpressure", "yes -> consumer taking 10 ms per chunk, 16 KiB high-water mark");
  auto yes = sp::command{"yes", "data-chunk"}.out(sp::pipe).spawn();
  sp::event_loop loop;
  int chunks = 0;
  sp::pump_options opts;
  opts.high_water_mark = 16 * 1024;  // at most 16 KiB in the parent at any time
  opts.on_finish = [&](std::exception_ptr) {
    fmt::print("   Processed {} chunks with backpressure\n", chunks);
  };
  loop.pump(
      yes.out(),
      [&](std::string_view chunk, std::function<void()> done) {
        if (++chunks % 25 == 0) fmt::print("   Processed chunk {} ({} bytes)\n", chunks, chunk.size());
        if (chunks == 100) yes.kill();  // enough: stop the producer
        loop.after(10ms, done);         // slow work; no more data is read until done()
      },
      opts);
  loop.on_exit(yes, [](sp::exit_status st) { fmt::print("   Yes process terminated ({})\n", st.to_string()); });
  loop.run();
}

// 5. Talk to an interactive program: send a line, wait for its answer.
void bidirectional_communication() {
  section(5, "Bidirectional Communication", "send expressions to bc, read each result");
  auto bc = sp::command{"bc"}.in(sp::pipe).out(sp::pipe).spawn();
  sp::event_loop loop;
  auto to_bc = loop.writer(bc.in());
  const std::vector<std::string> expressions{"5 + 3", "10 * 7", "100 / 4"};
  for (std::size_t i = 0; i < expressions.size(); ++i) {
    loop.after(i * 100ms, [&, i] {
      fmt::print("   Sending: {}\n", expressions[i]);
      to_bc.write(expressions[i] + "\n");
    });
  }
  std::size_t results = 0;
  loop.on_line(bc.out(), [&](std::string_view line) {
    fmt::print("   Result: {}\n", line);
    if (++results == expressions.size()) to_bc.end();  // close stdin: bc exits
  });
  loop.on_exit(bc, [](sp::exit_status st) { fmt::print("   bc exited with code {}\n", *st.code()); });
  loop.run();
}

// 6. stdout and stderr of one child, each handled on its own, in arrival order.
void separate_stdout_stderr() {
  section(6, "Separate stdout and stderr", "two streams of one child, tagged as they arrive");
  auto script = sp::command::shell(
                    "echo 'Standard output line 1'; echo 'Error output line 1' >&2; "
                    "echo 'Standard output line 2'; echo 'Error output line 2' >&2; exit 0")
                    .out(sp::pipe)
                    .err(sp::pipe)
                    .spawn();
  sp::event_loop loop;
  loop.on_line(script.out(), [](std::string_view l) { fmt::print("   STDOUT: {}\n", l); });
  loop.on_line(script.err(), [](std::string_view l) { fmt::print("   STDERR: {}\n", l); });
  loop.on_exit(script, [](sp::exit_status st) { fmt::print("   Script exited with code {}\n", *st.code()); });
  loop.run();
}

// 7. Several children's output, tagged, merged into one stream. The merged stream
// ends only when the last source has ended (the original closed it at the first).
void stream_multiplexing() {
  section(7, "Stream Multiplexing", "date, whoami and pwd at once, merged into one tagged stream");
  struct source {
    std::string tag;
    sp::process proc;
  };
  std::vector<source> sources;
  sources.push_back({"[DATE]", sp::command{"date"}.out(sp::pipe).spawn()});
  sources.push_back({"[USER]", sp::command{"whoami"}.out(sp::pipe).spawn()});
  sources.push_back({"[PWD]", sp::command{"pwd"}.out(sp::pipe).spawn()});
  sp::event_loop loop;
  std::size_t still_open = sources.size();
  for (auto& s : sources) {
    loop.on_line(s.proc.out(), [&s](std::string_view l) { fmt::print("   {} {}\n", s.tag, l); });
    loop.on_close(s.proc.out(), [&] {
      if (--still_open == 0) fmt::print("   All processes completed\n");
    });
  }
  loop.run();
  for (auto& s : sources) s.proc.wait();
}

// 8. An interactive program wants a person at a terminal: on pipes `sh -i` is not
// really interactive (its job control needs a terminal; python buffers its output
// and shows no >>>). A pseudo-terminal gives it one: its stdin/stdout/stderr are
// the terminal, we hold the other side (the master), expect() waits until the
// output shows what we wait for, sendline() types a line. A terminal echoes what
// we type and ends lines with \r\n, as the screen needs.
void running_on_a_terminal() {
  section(8, "Running a Program on a Terminal", "sh -i on a pseudo-terminal: wait for the prompt, type, read");
  const std::string prompt = "lesson$ ";
  auto env = sp::environment::inherit().set("PS1", prompt).unset("ENV");
  try {
    auto sh = sp::spawn_in_pty(sp::command{"sh", "-i"}.env(env), {.rows = 24, .cols = 80});
    sh.expect(prompt, 5s);  // nothing is typed before the shell asks
    fmt::print("   Got the prompt {:?}\n", prompt);

    sh.sendline("tty");
    auto tty = sh.expect(sp::pattern::regex(R"((/dev/\S+)\r\n)"), 5s);
    fmt::print("   sh's terminal is {} (the slave side; we hold the master)\n", tty.group(1));

    auto ask = [&](const std::string& line) {  // type a line, return its answer
      sh.expect(prompt, 5s);
      sh.sendline(line);
      // The answer is the line after the echo of ours, up to the next prompt.
      auto m = sh.expect(sp::pattern::regex(R"(\r\n([^\r\n]*)\r\n)"), 5s);
      return std::string(m.group(1));
    };
    fmt::print("   echo $((6 * 7)) -> Result: {}\n", ask("echo $((6 * 7))"));
    fmt::print("   stty size -> {} (rows, columns)\n", ask("stty size"));
    sh.resize(30, 100);  // the kernel tells the terminal's foreground job: SIGWINCH
    fmt::print("   after resize(30, 100): stty size -> {}\n", ask("stty size"));

    // ^C is not a signal we send: it is a key. The terminal turns it into SIGINT for
    // its foreground job (sleep), and the shell, which ignores it, lives on.
    sh.expect(prompt, 5s);
    sh.sendline("sh -c 'echo sleeping; exec sleep 100'");
    sh.expect("\r\nsleeping\r\n", 5s);  // the job is running: now press ^C
    sh.send_control('c');
    fmt::print("   ^C interrupted sleep: exit status {}\n", ask("echo $?"));

    sh.expect(prompt, 5s);
    sh.sendline("exit");
    sh.expect_eof(5s);  // the terminal hangs up: all output read
    fmt::print("   sh exited with code {}\n", *sh.wait().code());
  } catch (const sp::error& e) {
    fmt::print("   Terminal error: {}\n", e.what());  // e.g. a prompt that never came
  }
}

}  // namespace

int main() {
  fmt::print("=== Process Streams Examples ===\n");
  std::fflush(stdout);
  char tmpl[] = "/tmp/lesson01-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(tmpl);  // private; removed at the end

  basic_stream_piping();
  std::fflush(stdout);
  multi_process_pipeline(dir);
  writing_to_stdin();
  transform_with_backpressure();
  bidirectional_communication();
  separate_stdout_stderr();
  stream_multiplexing();
  running_on_a_terminal();

  std::filesystem::remove_all(dir);
  fmt::print("\n=== All Examples Completed ===\n");
  fmt::print("\nKey Concepts:\n");
  fmt::print("   - stdin, stdout and stderr are pipes when you ask for sp::pipe\n");
  fmt::print("   - Close stdin to tell a child its input is over\n");
  fmt::print("   - Pass a child's stdout as the next child's stdin to chain them\n");
  fmt::print("   - Backpressure: read no faster than you can consume\n");
  fmt::print("   - One event_loop drives many streams without threads or deadlocks\n");
  fmt::print("   - A pseudo-terminal runs programs that want a person; expect() waits for them\n");
  return 0;
}
