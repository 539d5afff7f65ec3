// subprocess/detail/pipeline/launch.hpp - starting a pipeline. Not public API.
//
// pipeline::spawn() lands here. Everything is checked before anything starts;
// then the stages start left to right, adjacent commands joined by kernel pipes
// created here (close-on-exec; the parent's copies closed right after each spawn,
// so a stage sees end-of-file exactly when its writer is gone), string input,
// captured output and transforms given to pumps; then the pumps' threads and the
// supervisor's. If a stage fails to start, the ones already started are killed
// and reaped (pipeline_state's destructor) before the error leaves.
//
// This header completes pipeline.hpp, which includes it at its end.
#pragma once

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <variant>

#include <fcntl.h>

#include "../../pipeline.hpp"
#include "../syscall.hpp"
#include "../unique_fd.hpp"
#include "pump.hpp"
#include "state.hpp"
#include "supervisor.hpp"

namespace subprocess::detail {

// An argument_error about stage k, keeping the command and the original problem.
[[noreturn]] inline void throw_stage_argument_error(const argument_error& e, std::size_t k,
                                                    std::size_t n) {
  std::string msg = e.what();
  std::string prefix = "command '" + e.command() + "': ";
  if (!e.command().empty() && msg.compare(0, prefix.size(), prefix) == 0) msg.erase(0, prefix.size());
  throw argument_error(e.command(), stage_label(k, n) + ": " + msg);
}

inline void check_fd_open(int n, const std::string& cmd, const char* what) {
  if (n < 0 || sys::fcntl(n, F_GETFD) < 0)
    throw argument_error(cmd, std::string(what) + " fd " + std::to_string(n) + " is not open");
}

inline unique_fd open_for_pipeline(const file& f, bool for_output, const std::string& cmd) {
  file_mode m = f.mode.value_or(for_output ? file_mode::truncate : file_mode::read);
  int flags = m == file_mode::read       ? O_RDONLY
              : m == file_mode::truncate ? O_WRONLY | O_CREAT | O_TRUNC
                                         : O_WRONLY | O_CREAT | O_APPEND;
  unique_fd fd(sys::no_eintr([&] { return sys::open(f.path.c_str(), flags, 0666); }));
  if (!fd)
    throw spawn_error(errno, cmd, for_output ? "open output file" : "open input file",
                      "'" + f.path.string() + "'");
  return fd;
}

// One pipeline::spawn(): used once.
class launcher {
 public:
  launcher(const pipeline& p, pipeline_options& opts)
      : pipeline_(p), stages_(p.stages()), opts_(opts), n_(stages_.size()) {}

  std::unique_ptr<pipeline_state> launch() {
    if (n_ == 0)
      throw argument_error("", "empty pipeline: add at least one stage (| or add()) before running it");
    whole_ = pipeline_.to_string();
    check();
    open_files();
    make_state();
    // Start the stages, left to right. On any exception `st_` is destroyed: each
    // started process is killed (the leader's kill reaches the whole group) and
    // reaped, every fd closed; no thread has been started yet.
    for (std::size_t k = 0; k < n_; ++k) {
      if (auto* t = std::get_if<transform>(&stages_[k]))
        add_transform(k, *t);
      else
        add_command(k, std::get<command>(stages_[k]));
    }
    start_threads();
    return std::move(st_);
  }

 private:
  // Everything that can be checked before anything starts.
  void check() {
    if (opts_.timeout && opts_.timeout->count() < 0) throw argument_error(whole_, "negative timeout");
    check_policy(opts_.on_timeout, whole_,
                 "pipeline_options (use running_pipeline::wait_for(t, policy))");
    if (auto* r = std::get_if<pipe_reader>(&opts_.input); r && !r->is_open())
      throw argument_error(whole_, "input: the pipe_reader is closed");
    if (auto* d = std::get_if<fd>(&opts_.input)) check_fd_open(d->number, whole_, "input");
    if (auto* d = std::get_if<fd>(&opts_.output)) check_fd_open(d->number, whole_, "output");
    if (auto* cb = std::get_if<output_callback>(&opts_.output); cb && !*cb)
      throw argument_error(whole_, "output: the callback is empty");
    for (std::size_t k = 0; k < n_; ++k) {
      const command* c = std::get_if<command>(&stages_[k]);
      if (!c) continue;
      if (c->in() || c->out())
        throw argument_error(c->to_string(), stage_label(k, n_) +
                                                 ": the pipeline connects stdin and stdout; set "
                                                 "pipeline_options input/output instead of in()/out()");
      if (c->err() && std::holds_alternative<pipe_t>(*c->err()))
        throw argument_error(c->to_string(), stage_label(k, n_) +
                                                 ": err(sp::pipe) would never be read; use "
                                                 "pipeline_options err = sp::capture");
      if (opts_.process_group && c->has_process_group())
        throw argument_error(c->to_string(), stage_label(k, n_) +
                                                 ": has a process group or session of its own; set "
                                                 "pipeline_options process_group = false to keep it");
      try {
        c->validate();
      } catch (const spawn_error& e) {
        throw pipeline_spawn_error(e, k, n_, whole_);
      } catch (const argument_error& e) {
        throw_stage_argument_error(e, k, n_);
      }
    }
  }

  // Files a transform reads or writes are opened by us, now.
  void open_files() {
    try {
      if (auto* f = std::get_if<file>(&opts_.input); f && std::holds_alternative<transform>(stages_.front()))
        in_file_ = open_for_pipeline(*f, false, "[transform]");
      if (auto* f = std::get_if<file>(&opts_.output); f && std::holds_alternative<transform>(stages_.back()))
        out_file_ = open_for_pipeline(*f, true, "[transform]");
    } catch (const spawn_error& e) {
      throw pipeline_spawn_error(e, in_file_ ? n_ - 1 : 0, n_, whole_);
    }
  }

  void make_state() {
    try {
      st_ = std::make_unique<pipeline_state>();
    } catch (const std::system_error& e) {  // eventfd: out of fds; no stage involved yet
      throw spawn_error(e.code().value(), whole_, "create eventfd");
    }
    st_->command = whole_;
    st_->sigpipe_is_failure = opts_.sigpipe_is_failure;
    st_->check = opts_.check;
    st_->wait_for_tree = opts_.wait_for_tree;
    st_->timeout = opts_.timeout;
    st_->on_timeout = opts_.on_timeout;
    st_->dl = deadline_in(opts_.timeout);
    st_->stages.resize(n_);
    for (std::size_t k = 0; k < n_; ++k)
      if (const command* c = std::get_if<command>(&stages_[k]))
        st_->stages[k].success_codes = c->success_codes();
  }

  pump* new_pump() {
    st_->pumps.push_back(std::make_unique<pump>());
    return st_->pumps.back().get();
  }
  // A pipe for stage k; running out of fds is stage k's spawn_error.
  fd_pair make_link(std::size_t k, const std::string& cmd) {
    try {
      return make_pipe();
    } catch (const std::system_error& e) {
      throw pipeline_spawn_error(spawn_error(e.code().value(), cmd, "create pipe"), k, n_, whole_);
    }
  }

  void add_transform(std::size_t k, const transform& t) {
    stage_slot& slot = st_->stages[k];
    pump* p = new_pump();
    p->fn = t.body_;
    slot.is_transform = true;
    slot.command = t.to_string();
    slot.transform_pump = p;
    if (k > 0) {
      p->source.set_reader(pipe_reader(std::move(upstream_), "stdin", slot.command));
    } else if (auto* s = std::get_if<std::string>(&opts_.input)) {
      p->source.set_text(std::move(*s));
    } else if (auto* r = std::get_if<pipe_reader>(&opts_.input)) {
      p->source.set_reader(std::move(*r));
    } else if (std::holds_alternative<file>(opts_.input)) {
      p->source.set_owned_fd(std::move(in_file_));
    } else if (auto* d = std::get_if<fd>(&opts_.input)) {
      p->source.set_fd(d->number);
    } else if (std::holds_alternative<inherit_t>(opts_.input)) {
      p->source.set_fd(0);
    }  // null: no source, immediate end of input
    if (k + 1 < n_) {
      auto link = make_link(k, slot.command);
      p->sink.set_writer(pipe_writer(std::move(link.write), "stdout", slot.command));
      upstream_ = std::move(link.read);
    } else if (std::holds_alternative<capture_t>(opts_.output)) {
      p->sink.set_capture();
      st_->output_pump = p;
    } else if (auto* cb = std::get_if<output_callback>(&opts_.output)) {
      p->sink.set_callback(std::move(*cb));
    } else if (std::holds_alternative<file>(opts_.output)) {
      p->sink.set_owned_fd(std::move(out_file_));
    } else if (auto* d = std::get_if<fd>(&opts_.output)) {
      p->sink.set_fd(d->number);
    } else if (std::holds_alternative<inherit_t>(opts_.output)) {
      p->sink.set_fd(1);
    }  // null: discard
  }

  void add_command(std::size_t k, command c) {
    stage_slot& slot = st_->stages[k];
    slot.command = c.to_string();
    // The parent's copies of this child's ends: closed as soon as it is started.
    unique_fd child_in, child_out, child_err;
    pipe_reader handed_reader;  // a pipe_reader input given to the child directly

    if (k > 0) {
      child_in = std::move(upstream_);
      c.in(fd(child_in.get()));
    } else if (std::holds_alternative<null_t>(opts_.input)) {
      c.in(null);
    } else if (std::holds_alternative<inherit_t>(opts_.input)) {
      c.in(inherit);
    } else if (auto* f = std::get_if<file>(&opts_.input)) {
      c.in(*f);
    } else if (auto* d = std::get_if<fd>(&opts_.input)) {
      c.in(*d);
    } else if (auto* s = std::get_if<std::string>(&opts_.input)) {
      auto link = make_link(k, slot.command);
      child_in = std::move(link.read);
      c.in(fd(child_in.get()));
      pump* p = new_pump();
      p->source.set_text(std::move(*s));
      p->sink.set_writer(pipe_writer(std::move(link.write), "stdin", slot.command));
    } else if (auto* r = std::get_if<pipe_reader>(&opts_.input)) {
      if (r->buffered().empty()) {
        // Hand the pipe itself to the child: no copy through us, and blocking, as a
        // program expects: a new description of it (see command.hpp), so the one
        // this reader shares with any other holder is not touched. If that reopen
        // fails (no /proc), clear O_NONBLOCK on the reader's own description: we
        // own the reader, and the child would get EAGAIN otherwise.
        handed_reader = std::move(*r);
        const int hfd = handed_reader.fd();
        const int fl = sys::fcntl(hfd, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK) != 0) {
          child_in.reset(blocking_copy_for_child(hfd, fl));
          if (!child_in) sys::fcntl(hfd, F_SETFL, fl & ~O_NONBLOCK);
        }
        c.in(fd(child_in ? child_in.get() : hfd));
      } else {
        // It holds bytes read already: they, then the rest, go through a pump.
        auto link = make_link(k, slot.command);
        child_in = std::move(link.read);
        c.in(fd(child_in.get()));
        pump* p = new_pump();
        p->source.set_reader(std::move(*r));
        p->sink.set_writer(pipe_writer(std::move(link.write), "stdin", slot.command));
      }
    }

    if (k + 1 < n_) {
      auto link = make_link(k, slot.command);
      child_out = std::move(link.write);
      upstream_ = std::move(link.read);
      c.out(fd(child_out.get()));
    } else if (std::holds_alternative<null_t>(opts_.output)) {
      c.out(null);
    } else if (std::holds_alternative<inherit_t>(opts_.output)) {
      c.out(inherit);
    } else if (auto* f = std::get_if<file>(&opts_.output)) {
      c.out(*f);
    } else if (auto* d = std::get_if<fd>(&opts_.output)) {
      c.out(*d);
    } else {  // capture or callback: a pump reads the last stage's stdout
      auto link = make_link(k, slot.command);
      child_out = std::move(link.write);
      c.out(fd(child_out.get()));
      pump* p = new_pump();
      p->source.set_reader(pipe_reader(std::move(link.read), "stdout", slot.command));
      if (auto* cb = std::get_if<output_callback>(&opts_.output)) {
        p->sink.set_callback(std::move(*cb));
      } else {
        p->sink.set_capture();
        st_->output_pump = p;
      }
    }

    if (!c.err()) {
      if (std::holds_alternative<null_t>(opts_.err)) {
        c.err(null);
      } else if (std::holds_alternative<merge_with_out_t>(opts_.err)) {
        c.err(merge_with_out);
      } else if (std::holds_alternative<capture_t>(opts_.err)) {
        auto link = make_link(k, slot.command);
        child_err = std::move(link.write);
        c.err(fd(child_err.get()));
        slot.err = pipe_reader(std::move(link.read), "stderr", slot.command);
      }
    }

    if (opts_.process_group) {
      if (st_->leader == SIZE_MAX)
        c.new_process_group();
      else
        c.join_process_group(st_->pgid);
    }
    if (opts_.wait_for_tree && !c.in_tree()) c.tree();
    try {
      slot.proc = c.spawn();
    } catch (const spawn_error& e) {
      throw pipeline_spawn_error(e, k, n_, whole_);
    } catch (const argument_error& e) {
      throw_stage_argument_error(e, k, n_);
    }
    slot.pid = slot.proc.pid();
    ++st_->commands;
    if (opts_.process_group && st_->leader == SIZE_MAX) {
      st_->leader = k;
      st_->pgid = slot.pid;
    }
    // child_in, child_out, child_err and handed_reader close here: from now on only
    // the child holds those ends.
  }

  // The pumps, then the supervisor.
  void start_threads() {
    pipeline_state* s = st_.get();
    try {
      for (auto& p : st_->pumps) {
        pump* q = p.get();
        q->thread = std::thread([s, q] { q->run(*s); });
      }
      st_->supervisor = std::thread([s] { supervisor{*s}.run(); });
    } catch (...) {
      {
        std::lock_guard lk(st_->mu);
        st_->abort_locked(SIGKILL);
      }
      for (auto& p : st_->pumps)
        if (p->thread.joinable()) p->thread.join();
      throw;  // `st_` kills and reaps the stages
    }
  }

  const pipeline& pipeline_;
  const std::vector<stage>& stages_;
  pipeline_options& opts_;
  const std::size_t n_;
  std::string whole_;
  unique_fd in_file_, out_file_;
  std::unique_ptr<pipeline_state> st_;
  unique_fd upstream_;  // the read end that feeds the next stage
};

inline std::unique_ptr<pipeline_state> launch_pipeline(const pipeline& p, pipeline_options& opts) {
  return launcher(p, opts).launch();
}

}  // namespace subprocess::detail
