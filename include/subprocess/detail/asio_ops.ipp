// subprocess/detail/asio_ops.ipp - the asio operations, written once for standalone
// asio and Boost.Asio. Not public API: included by asio.hpp and boost_asio.hpp with
//   SUBPROCESS_ASIO_NET     the asio namespace (::asio or ::boost::asio)
//   SUBPROCESS_ASIO_EC      its error_code type
//   SUBPROCESS_ASIO_API     the namespace inside subprocess to define (asio, boost_asio)
// (deliberately no include guard: each of the two headers includes it once).
//
// Every wait is on a duplicate of the library's fd (borrowed_fd), owned and closed by
// asio: the library's own fds are never handed to asio. The first step of each operation is
// posted, so a handler never runs inside the initiating call, even when the answer
// is already there (asio's rule).

namespace subprocess::SUBPROCESS_ASIO_API {

namespace net = SUBPROCESS_ASIO_NET;
using error_code = SUBPROCESS_ASIO_EC;

namespace impl {

// Waits for readiness on a duplicate of an fd the library owns: the duplicate is
// asio's (it closes it), the library's fd is never handed over. A duplicate also lets
// two operations (or the user's own reactor) watch one fd: epoll keys on the fd number.
class borrowed_fd {
 public:
  // ec is set (and nothing is registered) if the fd cannot be duplicated or registered.
  borrowed_fd(const net::any_io_executor& ex, int fd, error_code& ec) : sd_(ex) {
    subprocess::detail::unique_fd dup(subprocess::detail::sys::dup_above(fd, 3));
    if (!dup) {
      ec = error_code(errno, net::error::get_system_category());
      return;
    }
    sd_.assign(dup.get(), ec);
    if (!ec) (void)dup.release();
  }
  net::posix::stream_descriptor& get() { return sd_; }

 private:
  net::posix::stream_descriptor sd_;
};

inline error_code code_of(const std::system_error& e) { return error_code(e.code()); }

struct wait_op {
  net::any_io_executor ex;
  process* p;
  std::unique_ptr<borrowed_fd> fd;
  std::unique_ptr<net::steady_timer> timer;  // no pidfd (an old kernel): poll
  subprocess::detail::exit_poll backoff{};
  bool posted = false;

  template <class Self>
  void operator()(Self& self, error_code ec = {}) {
    if (!posted) {
      posted = true;
      return net::post(std::move(self));
    }
    std::optional<exit_status> st;
    if (!ec) {
      try {
        st = p->try_wait();
      } catch (const std::system_error& e) {
        ec = code_of(e);  // ECHILD: the status is gone (SIGCHLD ignored, reaped elsewhere)
      }
    }
    if (ec || st) {
      fd.reset();
      timer.reset();
      return self.complete(ec, st.value_or(exit_status::exited(-1)));
    }
    if (p->pidfd() >= 0) {
      if (!fd) {
        fd = std::make_unique<borrowed_fd>(ex, p->pidfd(), ec);
        if (ec) return (*this)(self, ec);
      }
      fd->get().async_wait(net::posix::descriptor_base::wait_read, std::move(self));
    } else {
      if (!timer) timer = std::make_unique<net::steady_timer>(ex);
      timer->expires_after(backoff.next());
      timer->async_wait(std::move(self));
    }
  }
};

struct read_op {
  net::any_io_executor ex;
  subprocess::detail::pipe_read rd;
  std::unique_ptr<borrowed_fd> fd;
  bool posted = false;

  template <class Self>
  void operator()(Self& self, error_code ec = {}) {
    if (!posted) {
      posted = true;
      return net::post(std::move(self));
    }
    bool ready = false;
    if (!ec) {
      try {
        ready = rd.pull();
      } catch (const std::system_error& e) {
        ec = code_of(e);
      }
    }
    if (ec || ready) {
      fd.reset();
      std::optional<std::string> got;
      if (!ec) got = rd.take();
      if (!ec && !got) ec = net::error::eof;
      return self.complete(ec, std::move(got).value_or(std::string()));
    }
    if (!fd) {
      fd = std::make_unique<borrowed_fd>(ex, rd.r->fd(), ec);
      if (ec) return (*this)(self, ec);
    }
    fd->get().async_wait(net::posix::descriptor_base::wait_read, std::move(self));
  }
};

struct write_op {
  net::any_io_executor ex;
  pipe_writer* w;
  std::string_view data;
  std::size_t written = 0;
  std::unique_ptr<borrowed_fd> fd;
  bool posted = false;

  template <class Self>
  void operator()(Self& self, error_code ec = {}) {
    if (!posted) {
      posted = true;
      return net::post(std::move(self));
    }
    if (!ec) {
      try {
        subprocess::detail::sigpipe_guard guard;
        while (written < data.size()) {
          ssize_t n = w->write_raw(data.substr(written), guard);
          if (n < 0) break;  // full: wait for room
          written += static_cast<std::size_t>(n);
        }
      } catch (const std::system_error& e) {
        ec = code_of(e);  // EPIPE: the child stopped reading
      }
    }
    if (ec || written == data.size()) {
      fd.reset();
      return self.complete(ec, written);
    }
    if (!fd) {
      fd = std::make_unique<borrowed_fd>(ex, w->fd(), ec);
      if (ec) return (*this)(self, ec);
    }
    fd->get().async_wait(net::posix::descriptor_base::wait_write, std::move(self));
  }
};

}  // namespace impl

// The child's exit: handler(error_code, exit_status), the child reaped. A status the
// kernel discarded: ec is ECHILD (the status argument is then meaningless).
template <class CompletionToken>
auto async_wait(const net::any_io_executor& ex, process& p, CompletionToken&& token) {
  return net::async_compose<CompletionToken, void(error_code, exit_status)>(
      impl::wait_op{ex, &p, nullptr, nullptr}, token, ex);
}
// The next line without its '\n' (split as pipe_reader::read_line()):
// handler(error_code, std::string); at end of stream ec is error::eof.
template <class CompletionToken>
auto async_read_line(const net::any_io_executor& ex, pipe_reader& r, CompletionToken&& token) {
  return net::async_compose<CompletionToken, void(error_code, std::string)>(
      impl::read_op{ex, {&r, true, 64 * 1024}, nullptr}, token, ex);
}
// What is available (1 to max bytes): handler(error_code, std::string); error::eof at
// end of stream.
template <class CompletionToken>
auto async_read_some(const net::any_io_executor& ex, pipe_reader& r, std::size_t max,
                     CompletionToken&& token) {
  return net::async_compose<CompletionToken, void(error_code, std::string)>(
      impl::read_op{ex, {&r, false, max}, nullptr}, token, ex);
}
// All of data, waiting for room while the pipe is full (data must stay valid until
// the handler runs): handler(error_code, bytes_written). A child that stopped
// reading: ec is EPIPE (broken_pipe), never SIGPIPE.
template <class CompletionToken>
auto async_write(const net::any_io_executor& ex, pipe_writer& w, std::string_view data,
                 CompletionToken&& token) {
  return net::async_compose<CompletionToken, void(error_code, std::size_t)>(
      impl::write_op{ex, &w, data, 0, nullptr}, token, ex);
}

}  // namespace subprocess::SUBPROCESS_ASIO_API
