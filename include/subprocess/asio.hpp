// subprocess/asio.hpp - a child's exit, lines, chunks and writes as asio operations.
//
// For programs built on standalone asio (<asio.hpp>; Boost.Asio: boost_asio.hpp, the
// same functions in sp::boost_asio). Each operation takes an executor and any
// completion token: a callback, asio::use_awaitable, asio::use_future, ...
//
//   ```cpp
//   asio::io_context io;
//   sp::process p;  // really sp::command{"sh", "-c", "echo hi; exit 3"}.out(sp::pipe).spawn()
//   sp::asio::async_read_line(io.get_executor(), p.out(), [](std::error_code ec, std::string l) {
//     if (!ec) std::cout << l << '\n';  // "hi"; at end of stream ec is asio::error::eof
//   });
//   std::future<sp::exit_status> st = sp::asio::async_wait(io.get_executor(), p, asio::use_future);
//   io.run();
//   std::cout << st.get() << '\n';  // "exited with code 3"
//   // in an asio::awaitable<>: co_await sp::asio::async_wait(ex, p, asio::use_awaitable)
//   ```
//
// Operations: async_wait (exit: error_code, exit_status; the child reaped),
// async_read_line / async_read_some (error_code, std::string; error::eof at the end),
// async_write (error_code, bytes written; data must outlive the operation).
// Errors: error_codes, never exceptions from the handler's side: EPIPE for a child
// that stopped reading (no SIGPIPE), ECHILD for a status the kernel discarded,
// operation_aborted when cancelled through a cancellation slot (bind_cancellation_slot,
// awaitable operators) while waiting; the child is kept, not killed.
// Fds: the pidfd and the pipes stay the library's: each wait is on a duplicate
// (F_DUPFD_CLOEXEC) wrapped in a posix::stream_descriptor, which asio owns and closes;
// the library's fds are never handed over.
// Without a pidfd (old kernels) exits are polled on a timer (1 ms doubling to 50 ms).
// Threads: as asio's: handlers run on the executor; a stream used by one operation at
// a time (several waits for one exit are fine). Cost per operation: one post, and per wait a dup, an epoll
// registration and a close.
// Build: the CMake target subprocess::asio (present when asio.hpp is found).
// use_awaitable needs asio's own coroutine support (g++ 10+; clang only with libc++).
#pragma once

#include <asio.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "detail/exit_watch.hpp"
#include "detail/pipe_read.hpp"
#include "detail/sigpipe.hpp"
#include "exit_status.hpp"
#include "process.hpp"
#include "stream.hpp"

#define SUBPROCESS_ASIO_NET ::asio
#define SUBPROCESS_ASIO_EC std::error_code
#define SUBPROCESS_ASIO_API asio
#include "detail/asio_ops.ipp"
#undef SUBPROCESS_ASIO_NET
#undef SUBPROCESS_ASIO_EC
#undef SUBPROCESS_ASIO_API
