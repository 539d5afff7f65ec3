// subprocess/stdio.hpp - where a child's stdin, stdout and stderr go.
//
// Each of the three standard streams of a child is set to one of:
//
//   sp::inherit          share the parent's (the default for spawn()): output
//                        appears in your terminal, input comes from your stdin.
//   sp::null             /dev/null: input is empty, output is thrown away.
//   sp::pipe             a pipe to the parent: write to p.in(), read p.out()/p.err().
//   sp::file(path)       a file: read for stdin; for output truncated by default,
//                        or sp::file(path, sp::file_mode::append).
//   sp::fd(n)            an fd of the parent, e.g. a socket or a pipe of your own.
//                        The parent keeps it; the child gets a copy.
//   sp::merge_with_out   (stderr only) the same place as stdout, like 2>&1.
//   sp::merge_with_err   (stdout only) the same place as stderr, like 1>&2.
//
//   sp::command{"make"}.in(sp::null).out(sp::file("build.log")).err(sp::merge_with_out)
//
// The names are deliberately not stdin/stdout/stderr: those are macros in <cstdio>.
//
// Files are opened by the parent before the child starts, so a missing input
// file is a spawn_error naming the file, not a child that fails mysteriously.
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

inline constexpr inherit_t inherit{};
inline constexpr null_t null{};
inline constexpr pipe_t pipe{};
inline constexpr merge_with_out_t merge_with_out{};
inline constexpr merge_with_err_t merge_with_err{};

enum class file_mode {
  read,      // open for reading (the only mode that makes sense for stdin)
  truncate,  // create or empty, then write
  append,    // create or append
};

struct file {
  // For stdin the mode is read; for stdout/stderr `truncate` unless you say otherwise.
  explicit file(std::filesystem::path p, std::optional<file_mode> m = std::nullopt)
      : path(std::move(p)), mode(m) {}
  std::filesystem::path path;
  std::optional<file_mode> mode;
  friend bool operator==(const file&, const file&) = default;
};

struct fd {
  explicit constexpr fd(int n) noexcept : number(n) {}
  int number;
  friend bool operator==(const fd&, const fd&) = default;
};

// One stream's setting.
using stdio = std::variant<inherit_t, null_t, pipe_t, file, fd, merge_with_out_t, merge_with_err_t>;

}  // namespace subprocess
