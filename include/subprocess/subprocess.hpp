// subprocess/subprocess.hpp - the whole library in one include.
//
// Includes every public header that needs nothing beyond the standard library and
// POSIX. The optional ones are included separately: <subprocess/ipc.hpp> and
// <subprocess/pool.hpp> need nlohmann/json, <subprocess/fmt.hpp> needs fmt. The
// examples write `namespace sp = subprocess;`.
//
//   ```cpp
//   auto r = sp::run(sp::command{"sort", "-r"}, {.input = "b\na\n", .timeout = 5s});
//   r.check();                          // process_error unless it succeeded
//   std::cout << r.out;                 // "b\na\n"
//   auto p = sp::command{"wc", "-l"}.in(sp::pipe).out(sp::pipe).spawn();
//   p.in().write_all(r.out);
//   p.in().close();
//   std::cout << p.out().read_all() << p.wait() << '\n';   // "2", "exited with code 0"
//   ```
//
// Contract: including it starts nothing and costs only compile time; each part's
// errors, blocking, threads and cost are in its own header's manual (command.hpp,
// process.hpp, run.hpp, ...).
#pragma once

#include "command.hpp"
#include "environment.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "pipeline.hpp"
#include "process.hpp"
#include "pty.hpp"
#include "run.hpp"
#include "signals.hpp"
#include "stdio.hpp"
#include "event_loop.hpp"
#include "stream.hpp"
#include "tree.hpp"
#include "version.hpp"
