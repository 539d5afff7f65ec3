// subprocess/ipc/attach.hpp - a channel in an event loop: its messages arrive as
// callbacks on the loop's thread, and sending never blocks. Needs nlohmann/json
// (CMake target subprocess::ipc).
//
//   ```cpp
//   auto p = sp::command{"./worker"}.ipc().spawn();
//   sp::ipc::channel ch(p);
//   sp::event_loop loop;
//   auto a = sp::ipc::attach(loop, ch, {
//       .on_message = [&](sp::ipc::json m) { std::cout << m << '\n'; },
//       .on_error = {},
//       .on_close = [&] { std::cout << "worker gone\n"; }});
//   a->send({{"hello", "world"}});   // never blocks: the rest goes when the socket can take it
//   loop.run();                      // returns once the worker has gone and nothing else is left
//   p.wait();
//   ```
//
// Any Loop with `id watch(int fd, std::uint32_t epoll_events, fn(std::uint32_t))` and
// `void unwatch(id)` (level-triggered, unwatch allowed from inside a callback) works;
// sp::event_loop is one. Errors: attach() throws argument_error for a channel that is
// not open; send() throws channel_error when the peer is gone; bad input goes to
// on_error, never out of the loop. Blocking: nothing here blocks. Threads: callbacks
// run on the loop's thread; use the attachment from that thread (or before run()).
// Ownership: the channel must outlive the attachment; destroying the attachment
// unwatches it (from a callback, detach() instead).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include <sys/epoll.h>

#include "../error.hpp"
#include "../event_loop.hpp"  // sp::event_loop, the usual Loop
#include "channel.hpp"
#include "common.hpp"

namespace subprocess::ipc {

struct channel_callbacks {
  std::function<void(json)> on_message = {};
  // Bad input (a malformed or oversized message). An oversized message also ends the
  // channel: on_close follows.
  std::function<void(const channel_error&)> on_error = {};
  // The peer is gone and every message was delivered. The channel is unwatched. If
  // the peer died in the middle of a message, the channel's end_error() says so.
  std::function<void()> on_close = {};
};

// Watches a channel in an event loop (see the manual above for what a Loop needs).
// Messages go to on_message on the loop's thread; send() never blocks: what the socket
// cannot take now is written when it becomes writable. The channel must outlive the
// attachment. Do not destroy the attachment from one of its callbacks; detach() it.
template <class Loop>
class attachment {
 public:
  attachment(Loop& loop, channel& ch, channel_callbacks cb)
      : loop_(loop), ch_(ch), cb_(std::move(cb)) {
    if (!ch_.is_open()) throw argument_error(ch_.name(), "attach: the channel is not open");
    watch(ch_.wants_write());
  }
  attachment(const attachment&) = delete;
  attachment& operator=(const attachment&) = delete;
  ~attachment() { detach(); }

  // Sends without blocking (channel::post); throws channel_error if the peer is gone.
  void send(const json& msg) {
    if (!ch_.post(msg) && !out_ && watching_) watch(true);
  }
  // Stops watching (the channel stays open).
  void detach() {
    if (watching_) loop_.unwatch(id_);
    watching_ = false;
  }
  bool attached() const noexcept { return watching_; }

 private:
  using id_type = decltype(std::declval<Loop&>().watch(
      0, std::uint32_t{}, std::declval<std::function<void(std::uint32_t)>>()));

  void watch(bool out) {
    if (watching_) loop_.unwatch(id_);
    watching_ = false;  // stays false if watch() throws (epoll_ctl: ENOMEM, ENOSPC)
    std::uint32_t ev = EPOLLIN | (out ? std::uint32_t{EPOLLOUT} : 0u);
    id_ = loop_.watch(ch_.fd(), ev, std::function<void(std::uint32_t)>(
                                        [this](std::uint32_t revents) { ready(revents); }));
    watching_ = true;
    out_ = out;
  }
  void error(const channel_error& e) {
    if (cb_.on_error) cb_.on_error(e);
  }
  void ready(std::uint32_t revents) {
    if (revents & EPOLLOUT) {
      try {
        if (ch_.flush()) watch(false);
      } catch (const channel_error& e) {
        watch(false);  // the peer is gone: reading reports the end
        error(e);
      }
    }
    if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) || !watching_) return;
    ch_.read_available();
    for (;;) {
      try {
        auto m = ch_.try_receive();
        if (!m) break;
        if (cb_.on_message) cb_.on_message(std::move(*m));
      } catch (const channel_error& e) {
        error(e);
      }
      if (!watching_) return;  // a callback detached us
    }
    if (ch_.eof()) {
      detach();
      if (cb_.on_close) cb_.on_close();
    }
  }

  Loop& loop_;
  channel& ch_;
  channel_callbacks cb_;
  id_type id_{};
  bool watching_ = false;
  bool out_ = false;
};

template <class Loop>
std::unique_ptr<attachment<Loop>> attach(Loop& loop, channel& ch, channel_callbacks cb) {
  return std::make_unique<attachment<Loop>>(loop, ch, std::move(cb));
}

}  // namespace subprocess::ipc
