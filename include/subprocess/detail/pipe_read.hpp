// subprocess/detail/pipe_read.hpp - one asynchronous read from a pipe_reader, for the
// loops that drive it (task.hpp's awaitables, asio.hpp's operations). Not public API.
//
//   pipe_read rd{&reader, line, max};
//   rd.pull()    reads what is there without waiting; true once take() has an answer
//   rd.take()    a line (without '\n'), a chunk of at most max, or nullopt at EOF
//
// Lines are split as pipe_reader::read_line() splits them: on '\n' only, a '\r'
// before it kept, a last line without '\n' returned. What is not taken stays in the
// reader's buffer, so blocking reads can go on where an asynchronous one stopped.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "../stream.hpp"

namespace subprocess::detail {

struct pipe_read {
  pipe_reader* r;
  bool line;
  std::size_t max;  // for a chunk: at most this many bytes; also the read size
  std::size_t scanned = 0;

  bool satisfied() const {
    if (r->input_ended()) return true;
    std::string_view b = r->buffered();
    return line ? b.find('\n', scanned) != std::string_view::npos : !b.empty();
  }
  // Throws io_error if the read fails.
  bool pull() {
    for (;;) {
      if (satisfied()) return true;
      scanned = r->buffered().size();
      if (r->fill(std::max<std::size_t>(max, 1)) < 0) return false;
    }
  }
  std::optional<std::string> take() {
    std::string_view b = r->buffered();
    if (b.empty()) return std::nullopt;  // end of stream
    std::size_t n = b.size(), skip = 0;
    if (line) {
      std::size_t nl = b.find('\n');
      if (nl != std::string_view::npos) n = nl, skip = 1;
    } else {
      n = std::min(n, std::max<std::size_t>(max, 1));
    }
    std::string out(b.substr(0, n));
    r->consume(n + skip);
    scanned = 0;
    return out;
  }
};

}  // namespace subprocess::detail
