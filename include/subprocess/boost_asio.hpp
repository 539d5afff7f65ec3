// subprocess/boost_asio.hpp - asio.hpp's operations for Boost.Asio.
//
// The same four operations as subprocess/asio.hpp (read its manual: the contract is
// the same), over <boost/asio.hpp>, in sp::boost_asio, with boost::system::error_code.
// Both headers may be used in one program.
//
//   ```cpp
//   boost::asio::io_context io;
//   sp::process p;  // really sp::command{"sh", "-c", "exit 3"}.spawn()
//   sp::boost_asio::async_wait(io.get_executor(), p,
//                              [](boost::system::error_code ec, sp::exit_status st) {
//                                if (!ec) std::cout << st << '\n';  // "exited with code 3"
//                              });
//   io.run();
//   ```
//
// Build: the CMake target subprocess::boost_asio (present when boost/asio.hpp is found).
#pragma once

#include <boost/asio.hpp>

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

#define SUBPROCESS_ASIO_NET ::boost::asio
#define SUBPROCESS_ASIO_EC ::boost::system::error_code
#define SUBPROCESS_ASIO_API boost_asio
#include "detail/asio_ops.ipp"
#undef SUBPROCESS_ASIO_NET
#undef SUBPROCESS_ASIO_EC
#undef SUBPROCESS_ASIO_API
