// subprocess/detail/event_loop_writing.hpp - event_loop's writers and pumps: the
// member functions behind writer(), pump() and writer_handle (queueing, flushing on
// writability, backpressure). Not public API; event_loop.hpp includes it last.
#pragma once

#include "../event_loop.hpp"

namespace subprocess {

inline event_loop::writer_handle event_loop::writer(pipe_writer& w, writer_options opts) {
  if (!w.is_open()) SUBPROCESS_THROW(argument_error(w.command(), "event_loop::writer: the " + w.stream() + " pipe is not open"));
  if (opts.high_water_mark == 0) opts.high_water_mark = 1;
  auto s = std::make_shared<writer_state>();
  s->self = next_id_++;
  s->w = &w;
  s->hwm = opts.high_water_mark;
  s->on_error = std::move(opts.on_error);
  id self = s->self;
  // Registered with no events: EPOLLOUT is switched on only while data is queued.
  s->watch = watch(w.fd(), 0, [this, self](std::uint32_t) { writer_flush(self); });
  writers_.emplace(self, s);
  return writer_handle(this, self);
}

inline event_loop::writer_handle event_loop::writer(pipe_writer& w, std::size_t high_water_mark) {
  writer_options o;
  o.high_water_mark = high_water_mark;
  return writer(w, std::move(o));
}

inline bool event_loop::writer_write(id i, std::string_view data) {
  auto it = writers_.find(i);
  if (it == writers_.end())
    SUBPROCESS_THROW(argument_error("", "event_loop: write to a writer that has ended or failed"));
  auto s = it->second;
  if (s->ending) SUBPROCESS_THROW(argument_error(s->w->command(), "event_loop: write after end()"));
  if (s->queue.empty() && !data.empty()) {
    // Fast path: straight into the pipe, queue only the rest.
    detail::sigpipe_guard guard;
    SUBPROCESS_TRY {
      ssize_t n = s->w->write_raw(data, guard);
      if (n > 0) data.remove_prefix(static_cast<std::size_t>(n));
    } SUBPROCESS_CATCH(const io_error&, e) {
      remove(i);
      s->queue.clear();
      s->w->close();
      if (!s->on_error) SUBPROCESS_RETHROW;
      s->on_error(e);
      return true;
    }
  }
  if (!data.empty()) {
    s->queue.append(data);
    modify(s->watch, EPOLLOUT);
  }
  if (s->queue.size() >= s->hwm) s->above_hwm = true;
  return !s->above_hwm;
}

inline void event_loop::writer_flush(id i) {
  auto it = writers_.find(i);
  if (it == writers_.end()) return;
  auto s = it->second;
  detail::sigpipe_guard guard;
  SUBPROCESS_TRY {
    while (!s->queue.empty()) {
      ssize_t n = s->w->write_raw(s->queue.view(), guard);
      if (n < 0) return;  // full again; EPOLLOUT stays on
      s->queue.consume(static_cast<std::size_t>(n));
    }
  } SUBPROCESS_CATCH(const io_error&, e) {
    remove(i);
    s->queue.clear();
    s->w->close();
    if (!s->on_error) SUBPROCESS_RETHROW;
    s->on_error(e);
    return;
  }
  s->queue.shrink();
  modify(s->watch, 0);
  if (s->ending) {
    remove(i);
    s->w->close();
    if (s->on_finish) s->on_finish();
    return;
  }
  if (s->above_hwm) {
    s->above_hwm = false;
    auto fns = s->drain_fns;  // a drain callback may add more
    for (auto& f : fns) {
      f();
      if (s->removed) break;
    }
  }
}

inline void event_loop::writer_end(id i, std::function<void()> on_finish) {
  auto it = writers_.find(i);
  if (it == writers_.end()) return;
  auto s = it->second;
  s->ending = true;
  s->on_finish = std::move(on_finish);
  if (s->queue.empty()) {
    remove(i);
    s->w->close();
    if (s->on_finish) s->on_finish();
  }
}

inline event_loop::id event_loop::pump(pipe_reader& from, pipe_writer& to, transform_fn transform,
                                       pump_options opts) {
  auto finish = std::make_shared<std::function<void(std::exception_ptr)>>(std::move(opts.on_finish));
  writer_options wo;
  wo.high_water_mark = opts.high_water_mark;
  auto stream_id = std::make_shared<id>(0);
  wo.on_error = [this, finish, stream_id](const io_error& e) {
    remove(*stream_id);  // the consumer is gone: stop reading the producer
    if (*finish) (*finish)(std::make_exception_ptr(e));
  };
  writer_handle out = writer(to, std::move(wo));
  auto s = stream_for(from, "pump");
  if (s->on_line || s->on_data) SUBPROCESS_THROW(argument_error(from.command(), "pump on a stream that is already watched"));
  *stream_id = s->self;
  s->max_read = opts.high_water_mark;
  id sid = s->self;
  out.on_drain([this, sid] { resume(sid); });
  s->on_data = [this, out, sid, transform = std::move(transform)](std::string_view chunk) mutable {
    bool room = transform ? out.write(transform(chunk)) : out.write(chunk);
    if (!room) pause(sid);
  };
  bool end = opts.end;
  s->on_close = [out, end, finish]() mutable {
    if (end) {
      out.end([finish] {
        if (*finish) (*finish)(nullptr);
      });
    } else if (*finish) {
      (*finish)(nullptr);
    }
  };
  return sid;
}

inline event_loop::id event_loop::pump(pipe_reader& from, sink_fn sink, pump_options opts) {
  auto s = stream_for(from, "pump");
  if (s->on_line || s->on_data) SUBPROCESS_THROW(argument_error(from.command(), "pump on a stream that is already watched"));
  s->max_read = opts.high_water_mark;
  s->hold_chunks = true;
  id sid = s->self;
  auto finish = std::make_shared<std::function<void(std::exception_ptr)>>(std::move(opts.on_finish));
  // One chunk in flight: it stays in the reader's buffer (the view remains valid) and
  // nothing more is read until the sink calls done().
  s->on_data = [this, sid, sink = std::move(sink)](std::string_view chunk) {
    sink(chunk, [this, sid] { release_held(sid); });
  };
  s->on_close = [finish] {
    if (*finish) (*finish)(nullptr);
  };
  return sid;
}

}  // namespace subprocess
