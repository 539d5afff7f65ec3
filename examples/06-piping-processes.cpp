// Lesson 06: piping processes.
//
// A pipeline connects processes so that each one reads what the previous one
// wrote, as the shell's `|` does: `cat access.log | grep 404 | wc -l`. The bytes go
// from process to process through kernel pipes, never through this program, and a
// slow reader holds back a fast writer (backpressure) without anyone buffering
// gigabytes. sp::pipeline builds such chains from commands and from functions of
// our own (transforms), reports how every stage ended, and cleans up on every path.
//
// Run with no arguments. The data files live in a private temporary directory that
// is removed at the end.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <subprocess/fmt.hpp>
#include <subprocess/subprocess.hpp>

namespace sp = subprocess;
using namespace std::chrono_literals;

namespace {

void section(int n, const char* title, const char* subtitle) {
  fmt::print("\n{}. {}\n   {}\n", n, title, subtitle);
}

// Prints what a pipeline wrote, indented (3 spaces, like every section's output).
void show(const std::string& text, int indent = 3) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) fmt::print("{:{}}{}\n", "", indent, line);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(0, 1);
  return s;
}

// The lesson's data files, in a private temporary directory removed at the end.
// Commands run with cwd() set to it, so they (and their printouts) use short names.
struct data_dir {
  std::filesystem::path path;
  data_dir() {
    char tmpl[] = "/tmp/lesson06-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~data_dir() { std::filesystem::remove_all(path); }
  void write(const char* name, const char* content) const { std::ofstream(path / name) << content; }
  sp::command cmd(std::initializer_list<std::string> argv) const { return sp::command(argv).cwd(path); }
};

void two_process_pipeline(const data_dir& d) {
  section(1, "Two-Process Pipeline", "cat's output flows straight into grep's input");
  d.write("sample.txt", "apple\nbanana\napricot\ncherry\navocado\nblueberry\n");
  auto p = sp::pipeline{} | d.cmd({"cat", "sample.txt"}) | d.cmd({"grep", "^a"});
  fmt::print("   $ {}\n", p.to_string());
  auto r = p.run();
  show(r.out);
  fmt::print("   Pipeline completed with code {}\n", r.status.shell_code());
}

void three_process_pipeline(const data_dir& d) {
  section(2, "Three-Process Pipeline", "Count the ERROR lines of a log: cat | grep | wc");
  d.write("log.txt",
          "2024-01-15 10:00:01 INFO  Server started\n"
          "2024-01-15 10:00:05 ERROR Database connection failed\n"
          "2024-01-15 10:00:10 WARN  Retrying connection\n"
          "2024-01-15 10:00:15 ERROR Connection timeout\n"
          "2024-01-15 10:00:20 INFO  Connected to database\n"
          "2024-01-15 10:00:25 ERROR Query failed: syntax error\n"
          "2024-01-15 10:00:30 ERROR Disk space low\n");
  auto p = sp::pipeline{} | d.cmd({"cat", "log.txt"}) | d.cmd({"grep", "ERROR"}) | d.cmd({"wc", "-l"});
  fmt::print("   $ {}\n", p.to_string());
  auto r = p.run();
  fmt::print("   Found {} ERROR lines\n", trim(r.out));
  fmt::print("   Pipeline exit code: {}\n", r.status.shell_code());

  // No FATAL line: grep exits 1 ("no match"), and pipefail makes that the pipeline's
  // status, although "0 lines" is the right answer. success_codes({0, 1}) says so.
  auto strict = sp::pipeline{} | d.cmd({"cat", "log.txt"}) | d.cmd({"grep", "FATAL"}) | d.cmd({"wc", "-l"});
  auto lenient = sp::pipeline{} | d.cmd({"cat", "log.txt"}) | d.cmd({"grep", "FATAL"}).success_codes({0, 1}) |
                 d.cmd({"wc", "-l"});
  auto r1 = strict.run();
  auto r2 = lenient.run();
  fmt::print("\n   $ {}\n", strict.to_string());
  fmt::print("   Found {} FATAL lines, pipeline {}\n", trim(r1.out), r1.status);
  fmt::print("   With grep's success_codes({{0, 1}}): pipeline {} (grep {})\n", r2.status, r2.stages[1].status);
}

void transform_stage(const data_dir& d) {
  section(3, "Pipeline with a Transform", "A function of ours between two stages: n -> n squared");
  d.write("numbers.txt", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n");
  // A line function: gets each line without '\n', returns the line to write.
  auto square = sp::transform(
      [](std::string_view line) -> std::optional<std::string> {
        long n = std::stol(std::string(line));
        return fmt::format("   {} -> {}", n, n * n);
      },
      "square");
  auto p = sp::pipeline{} | d.cmd({"cat", "numbers.txt"}) | square;
  fmt::print("   $ {}\n", p.to_string());
  // The transform writes straight to our stdout (fd 1): flush what fmt buffered first.
  std::fflush(stdout);
  auto r = p.run({.output = sp::inherit});
  fmt::print("   Transformation complete ({})\n", r.status);
}

void bidirectional(const data_dir&) {
  section(4, "Bidirectional Communication", "Talk to bc: write an expression, read its answer");
  // Not a pipeline: one child, with pipes both ways. Write a line, read a line.
  auto bc = sp::command{"bc", "-q"}.in(sp::pipe).out(sp::pipe).spawn();
  for (std::string expr : {"5 + 3", "10 * 7", "100 / 4"}) {
    std::this_thread::sleep_for(200ms);  // the original sends one every 200 ms
    fmt::print("   Sending: {}\n", expr);
    bc.in().write_all(expr + "\n");
    auto answer = bc.out().read_line();
    fmt::print("   {} = {}\n", expr, answer.value_or("(no answer)"));
  }
  fmt::print("   Sending: quit\n");
  bc.in().write_all("quit\n");
  bc.in().close();
  fmt::print("   Calculator pipeline closed (bc {})\n", bc.wait());
}

void complex_pipeline(const data_dir& d) {
  section(5, "Complex Multi-Stage Pipeline", "Which clients got error responses, and how often?");
  d.write("access.log",
          "192.168.1.1 - - [15/Jan/2024:10:00:01] \"GET /index.html HTTP/1.1\" 200\n"
          "192.168.1.2 - - [15/Jan/2024:10:00:02] \"GET /missing.html HTTP/1.1\" 404\n"
          "192.168.1.1 - - [15/Jan/2024:10:00:03] \"POST /api/login HTTP/1.1\" 500\n"
          "192.168.1.3 - - [15/Jan/2024:10:00:04] \"GET /about.html HTTP/1.1\" 200\n"
          "192.168.1.1 - - [15/Jan/2024:10:00:05] \"GET /admin HTTP/1.1\" 403\n"
          "192.168.1.4 - - [15/Jan/2024:10:00:06] \"GET /api/data HTTP/1.1\" 502\n"
          "192.168.1.5 - - [15/Jan/2024:10:00:07] \"GET /contact.html HTTP/1.1\" 200\n");
  fmt::print("   Stages: read log -> error responses (4xx/5xx) -> client IP -> sort -> count unique\n");
  auto p = sp::pipeline{} | d.cmd({"cat", "access.log"}) | d.cmd({"grep", "-E", "\" (4|5)[0-9][0-9]$"}) |
           d.cmd({"cut", "-d", " ", "-f", "1"}) | d.cmd({"sort"}) | d.cmd({"uniq", "-c"});
  fmt::print("   $ {}\n", p.to_string());
  auto r = p.run();
  fmt::print("   Error responses per client:\n");
  std::istringstream lines(r.out);
  for (std::string count, ip; lines >> count >> ip;) fmt::print("     {} x {}\n", count, ip);
  fmt::print("   Pipeline exit code: {} ({} processes)\n", r.status.shell_code(), r.stages.size());
}

void error_handling() {
  section(6, "Error Handling in Pipelines", "A missing program, and a stage that fails");
  auto broken = sp::pipeline{} | sp::command{"echo", "hello"} | sp::command{"nonexistent-command"} |
                sp::command{"cat"};
  fmt::print("   $ {}\n", broken.to_string());
  try {
    broken.run();
  } catch (const sp::pipeline_spawn_error& e) {
    fmt::print("   Stage {} error: {}\n", e.stage() + 1, e.cause());
    fmt::print("   Pipeline failed, cleaning up...\n");
    fmt::print("   (nothing to clean up: every stage is checked before the first one starts)\n");
  }

  // Every stage runs; one exits non-zero. Each stage's status is in the result.
  auto failing = sp::pipeline{} | sp::command{"echo", "hello"} | sp::command{"sh", "-c", "cat; exit 3"} |
                 sp::command{"cat"};
  fmt::print("\n   $ {}\n", failing.to_string());
  auto r = failing.run();
  fmt::print("   Output: {}\n", trim(r.out));
  for (std::size_t k = 0; k < r.stages.size(); ++k)
    if (r.stages[k].failed)
      fmt::print("   Stage {} exited with code {}\n", k + 1, r.stages[k].status.shell_code());
  fmt::print("   Pipeline status (pipefail): {}\n", r.status);
}

// One call, one result: success with the output, or the first error of any stage.
void run_and_report(const sp::pipeline& p) {
  fmt::print("   $ {}\n", p.to_string());
  try {
    auto r = p.run({.err = sp::capture, .check = true});
    std::string words = trim(r.out);
    std::replace(words.begin(), words.end(), '\n', ' ');
    fmt::print("   Pipeline succeeded!\n");
    fmt::print("   Output: {}\n", words);
  } catch (const sp::pipeline_error& e) {
    fmt::print("   Pipeline failed: {}\n", e.what());
  }
}

void one_result(const data_dir& d) {
  section(7, "The Pipeline Result", "One result for the whole pipeline, carrying the first error of any stage");
  d.write("data.txt", "hello\nworld\nfrom\npipeline\n");
  run_and_report(sp::pipeline{} | d.cmd({"cat", "data.txt"}) | d.cmd({"tr", "a-z", "A-Z"}));
  fmt::print("\n");
  run_and_report(sp::pipeline{} | d.cmd({"cat", "missing.txt"}) | d.cmd({"tr", "a-z", "A-Z"}));
}

void dynamic_pipeline(const data_dir& d) {
  section(8, "Dynamic Pipeline Construction", "Build the stages from data, one add() at a time");
  d.write("words.txt", "apple\nbanana\navocado\ncherry\napricot\n");

  sp::pipeline empty;
  try {
    empty.run();
  } catch (const sp::argument_error& e) {
    fmt::print("   Empty pipeline -> error: {}\n", e.what());
  }

  std::vector<std::vector<std::string>> steps{{"cat", "words.txt"}, {"grep", "^a"}, {"sort"}, {"wc", "-l"}};
  sp::pipeline p;
  for (const auto& argv : steps) p.add(sp::command(argv).cwd(d.path));
  fmt::print("   Stages:\n");
  for (std::size_t k = 0; k < p.size(); ++k)
    fmt::print("     {}. {}\n", k + 1, std::get<sp::command>(p.stages()[k]).to_string());
  auto r = p.run();
  fmt::print("   Result: {} words starting with 'a'\n", trim(r.out));
  fmt::print("   Exit code: {}\n", r.status.shell_code());
}

}  // namespace

int main() {
  fmt::print("=== Process Piping Examples ===\n");
  data_dir data;
  two_process_pipeline(data);
  three_process_pipeline(data);
  transform_stage(data);
  bidirectional(data);
  complex_pipeline(data);
  error_handling();
  one_result(data);
  dynamic_pipeline(data);
  fmt::print("\n=== All Examples Completed ===\n");
  fmt::print("\nKey Concepts:\n");
  fmt::print("- Adjacent commands share a kernel pipe: bytes never pass through the parent\n");
  fmt::print("- Transforms run our own code between stages, with bounded buffers\n");
  fmt::print("- Backpressure: a slow reader holds back the writer, end to end\n");
  fmt::print("- Every stage has a status; the pipeline's is pipefail, errors name the stage\n");
  fmt::print("- Stages share a process group: one signal, or the timeout, stops them all\n");
  return 0;
}
