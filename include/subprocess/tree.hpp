// subprocess/tree.hpp - whole-tree control: a child and every descendant it starts.
//
// command::tree() puts the child in a process_tree. Descendants that leave its
// process group or session (double-forked daemons, setsid) stay in it, so kill()
// stops them all. The mechanism is a cgroup v2 of its own (cgroup.kill, the freezer,
// cpu.stat), or, where none is writable, subreaper mode (see tree_options::use).
//
//   ```cpp
//   auto p = sp::command::shell("(setsid sleep 100 &); sleep 100")
//                .tree(sp::tree_options{}).spawn();
//   std::cout << p.tree().mechanism() << ' ' << p.tree().pids().size() << '\n';
//   p.tree().freeze();                 // every member stopped, atomically (cgroup)
//   p.tree().thaw();
//   p.tree().kill();                   // SIGKILL to all; returns when none is left
//   std::cout << p.wait() << ", cpu " << p.tree().usage().cpu.count() << " us\n";
//   ```
//
// Mechanisms: cgroup: a directory "sp-<pid>-<n>" under this process's cgroup v2 (or
// tree_options::cgroup_parent), joined by the child before it runs anything (no
// descendant can escape); removed when the process handle goes. subreaper: this
// process must be a child subreaper (become_subreaper(): a process-wide setting
// that you opt into; the library never sets it). Members are found through /proc
// parent links from the child, plus orphans this process adopted that carry the
// tree's SUBPROCESS_TREE=<id> environment entry; the adopted ones are reaped.
// Errors: spawn() throws spawn_error (step "tree()") when the mechanism asked for is
// not available (no writable cgroup v2, not a subreaper) or a limit's controller is
// not enabled (the message names the controller); methods throw subprocess::error
// naming the cgroup file and errno; usage() in subreaper mode throws (no figures).
// Blocking: kill() and freeze() wait until done (kernel time: milliseconds);
// terminate(grace) up to `grace`, then kill(); signal(), thaw(), pids() do not wait.
// Destructor (the process handle's): members still alive get SIGKILL, the cgroup
// directory is removed; never throws.
// Threads: one thread at a time. Cost: a few file reads per call (cgroup); a /proc
// scan per call (subreaper). The pids reported may exit (and, rarely, be reused)
// before you use them.
#pragma once

#include "command.hpp"
#include "detail/process_tree.hpp"
#include "process.hpp"
