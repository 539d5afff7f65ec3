// subprocess/stdio.hpp - where a child's stdin, stdout and stderr go.
//
// Each of the three standard streams of a child (command::in(), out(), err()) is set
// to one of: sp::inherit (the default for spawn()), sp::null, sp::pipe,
// sp::file(path), sp::fd(n), sp::merge_with_out (stderr only, like 2>&1) or
// sp::merge_with_err (stdout only, like 1>&2). Each is described below.
//
//   ```cpp
//   sp::stdio in = sp::null;                             // empty input
//   sp::stdio out = sp::file("build.log", sp::file_mode::append);
//   sp::stdio err = sp::merge_with_out;                  // 2>&1
//   // sp::command{"make"}.in(in).out(out).err(err).spawn();   (command.hpp)
//   ```
//
// The names are deliberately not stdin/stdout/stderr: those are macros in <cstdio>.
//
// Contract: these are plain values; nothing is opened here. Files are opened by the
// parent when the command is spawned, before the child starts, so a missing input
// file is a spawn_error naming the file, not a child that fails mysteriously; a
// merge on the wrong stream is an argument_error from command::in()/out()/err().
// Opening a FIFO blocks until its other side opens it.
#pragma once

#include <filesystem>
#include <optional>
#include <variant>

namespace subprocess {

struct inherit_t {
  friend bool operator==(inherit_t, inherit_t) = default;
};
struct null_t {
  friend bool operator==(null_t, null_t) = default;
};
struct pipe_t {
  friend bool operator==(pipe_t, pipe_t) = default;
};
struct merge_with_out_t {
  friend bool operator==(merge_with_out_t, merge_with_out_t) = default;
};
struct merge_with_err_t {
  friend bool operator==(merge_with_err_t, merge_with_err_t) = default;
};

// Share the parent's (the default for spawn()): output appears in your terminal,
// input comes from your stdin.
inline constexpr inherit_t inherit{};
// /dev/null: input is empty, output is thrown away.
inline constexpr null_t null{};
// A pipe to the parent: write to p.in(), read p.out()/p.err() (stream.hpp).
inline constexpr pipe_t pipe{};
// (stderr only) the same place as stdout, like 2>&1.
inline constexpr merge_with_out_t merge_with_out{};
// (stdout only) the same place as stderr, like 1>&2.
inline constexpr merge_with_err_t merge_with_err{};

enum class file_mode {
  read,      // open for reading (the only mode that makes sense for stdin)
  truncate,  // create or empty, then write
  append,    // create or append
};

// A file: read for stdin; for output truncated by default, or
// sp::file(path, sp::file_mode::append).
struct file {
  // For stdin the mode is read; for stdout/stderr `truncate` unless you say otherwise.
  explicit file(std::filesystem::path p, std::optional<file_mode> m = std::nullopt)
      : path(std::move(p)), mode(m) {}
  std::filesystem::path path;
  std::optional<file_mode> mode;
  friend bool operator==(const file&, const file&) = default;
};

// An fd of the parent, e.g. a socket or a pipe of your own. The parent keeps it; the
// child gets a copy (blocking: see command::in()).
struct fd {
  explicit constexpr fd(int n) noexcept : number(n) {}
  int number;
  friend bool operator==(const fd&, const fd&) = default;
};

// One stream's setting.
using stdio = std::variant<inherit_t, null_t, pipe_t, file, fd, merge_with_out_t, merge_with_err_t>;

}  // namespace subprocess
