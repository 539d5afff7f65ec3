// subprocess/subprocess.hpp - the whole library in one include.
//
// Includes every public header that needs nothing beyond the standard library and
// POSIX. The optional ones are included separately:
//   <subprocess/ipc.hpp>, <subprocess/pool.hpp>  need nlohmann/json
//   <subprocess/fmt.hpp>                         needs fmt
//
//   #include <subprocess/subprocess.hpp>
//   namespace sp = subprocess;
//   auto r = sp::run(sp::command{"uname", "-r"});
#pragma once

#include "command.hpp"
#include "environment.hpp"
#include "error.hpp"
#include "exit_status.hpp"
#include "pipeline.hpp"
#include "process.hpp"
#include "run.hpp"
#include "signals.hpp"
#include "stdio.hpp"
#include "event_loop.hpp"
#include "stream.hpp"
#include "version.hpp"
