// subprocess/detail/pipeline/pump.hpp - a parent-side pipeline worker. Not public API.
//
// A pump is one library thread: source -> (a transform's function, or a plain
// copy) -> sink. Transform stages are pumps; so are feeding string input to the
// first command and capturing (or calling back with) the last command's output.
// Its buffers are bounded (a 64 KiB chunk in, up to 64 KiB of output batched), so
// backpressure holds end to end. Closing both ends when it ends is what tells the
// neighbours: end-of-file downstream, EPIPE upstream.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "../../exit_status.hpp"
#include "../buffer.hpp"
#include "../eventfd.hpp"
#include "../sigpipe.hpp"
#include "control.hpp"
#include "sink.hpp"
#include "source.hpp"

namespace subprocess::detail {

// Where a transform's output goes: sp::emitter wraps one of these.
struct emit_port {
  void* ctx;
  void (*fn)(void*, std::string_view);
  void operator()(std::string_view data) const { fn(ctx, data); }
};

// What a transform stage runs; sp::transform holds one and each run copies it.
// Either chunk or line is set.
struct transform_body {
  std::function<void(std::string_view, emit_port)> chunk;
  std::function<std::optional<std::string>(std::string_view)> line;
  std::function<void(emit_port)> end;  // optional: runs once after the last input
  std::size_t max_line = std::size_t(64) << 20;
  std::string label;  // "[name]", for messages
};

class pump {
 public:
  pump_source source;
  pump_sink sink;
  std::optional<transform_body> fn;  // empty: copy bytes unchanged
  std::thread thread;
  // Results, written by the pump's thread before `done` is set.
  std::optional<exit_status> status;
  std::exception_ptr error;
  std::atomic<bool> done{false};

  void run(pump_owner& owner) noexcept {
    block_async_signals();
    stop_fd_ = owner.stop_fd.get();
    try {
      sigpipe_guard guard;
      guard_ = &guard;
      work(owner);
    } catch (const pump_stopped&) {
      status = exit_status::signaled(owner.stop_signal.load());
    } catch (const pump_broken_pipe&) {
      status = exit_status::signaled(SIGPIPE);
    } catch (...) {
      error = std::current_exception();
      status = exit_status::exited(1);
      owner.fail(error);
    }
    guard_ = nullptr;
    // Closing both ends now is what tells the neighbours: EOF downstream, EPIPE upstream.
    source.close();
    sink.close();
    out_.clear();
    out_.shrink();
    done.store(true, std::memory_order_release);
    eventfd_notify(owner.wake_fd.get());
  }

 private:
  static void emit_thunk(void* self, std::string_view d) { static_cast<pump*>(self)->emit(d); }
  void emit(std::string_view d) {
    if (d.empty()) return;
    if (out_.size() + d.size() > pump_chunk) flush();
    if (d.size() >= pump_chunk)
      write(d);
    else
      out_.append(d);
  }
  void flush() {
    if (out_.empty()) return;
    write(out_.view());
    out_.clear();
  }
  // Remembers a stop or broken pipe, so user code that swallows the exception
  // (catch (...)) cannot keep the pump going.
  void write(std::string_view d) {
    check_flags();
    try {
      sink.write(d, stop_fd_, *guard_);
    } catch (const pump_stopped&) {
      stopped_ = true;
      throw;
    } catch (const pump_broken_pipe&) {
      broken_ = true;
      throw;
    }
  }
  void check_flags() const {
    if (stopped_) throw pump_stopped{};
    if (broken_) throw pump_broken_pipe{};
  }
  bool more(const std::atomic<bool>& stopping) {
    if (stopping.load(std::memory_order_relaxed)) throw pump_stopped{};
    return source.more(stop_fd_);
  }

  void work(pump_owner& owner) {
    if (!fn) {  // plain copy: write what was read, no batching
      while (more(owner.stopping)) {
        std::string_view v = source.view();
        write(v);
        source.consume(v.size());
      }
      status = exit_status::exited(0);
      return;
    }
    const emit_port em{this, &pump::emit_thunk};
    if (fn->line) {
      run_lines(owner);
    } else {
      while (more(owner.stopping)) {
        std::string_view v = source.view();
        fn->chunk(v, em);
        check_flags();
        source.consume(v.size());
        flush();
      }
    }
    flush();
    if (fn->end) {
      fn->end(em);
      check_flags();
      flush();
    }
    status = exit_status::exited(0);
  }

  // A line function: called per line without its '\n'; what it returns is written
  // followed by '\n'. A last line without '\n' is passed too, and its output gets none.
  void run_lines(pump_owner& owner) {
    const auto& line_fn = fn->line;
    std::size_t scanned = 0;  // bytes at the front of view() known to hold no '\n'
    while (more(owner.stopping)) {
      std::string_view v = source.view();
      std::size_t start = 0;
      for (std::size_t nl; (nl = v.find('\n', std::max(start, scanned))) != std::string_view::npos;
           start = nl + 1) {
        if (auto r = line_fn(v.substr(start, nl - start))) {
          emit(*r);
          emit("\n");
        }
        check_flags();
      }
      source.consume(start);
      scanned = v.size() - start;
      if (scanned > fn->max_line)
        throw std::length_error("transform " + fn->label + ": a line longer than " +
                                std::to_string(fn->max_line) + " bytes (see max_line())");
      flush();
    }
    std::string_view rest = source.view();  // a last line without '\n'
    if (!rest.empty())
      if (auto r = line_fn(rest)) emit(*r);
  }

  byte_buffer out_;
  int stop_fd_ = -1;
  sigpipe_guard* guard_ = nullptr;
  bool stopped_ = false, broken_ = false;
};

}  // namespace subprocess::detail
