// subprocess/fmt.hpp - fmt formatters for the library's value types.  [needs fmt]
//
//   #include <subprocess/fmt.hpp>
//   fmt::print("{}\n", p.wait());          // "exited with code 0"
//   fmt::print("running {}\n", cmd);       // the shell-quoted command line
//   fmt::print("{}", env);                 // NAME=value lines, secrets redacted
//
// The environment formatter always redacts: printing an environment is how
// secrets end up in logs. Iterate it yourself if you really need the values.
#pragma once

#include <fmt/format.h>

#include "command.hpp"
#include "environment.hpp"
#include "exit_status.hpp"

template <>
struct fmt::formatter<subprocess::exit_status> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const subprocess::exit_status& s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(s.to_string(), ctx);
  }
};

template <>
struct fmt::formatter<subprocess::command> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const subprocess::command& c, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(c.to_string(), ctx);
  }
};

template <>
struct fmt::formatter<subprocess::environment> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const subprocess::environment& e, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(e.redacted(), ctx);
  }
};
