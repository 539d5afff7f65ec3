// subprocess/detail/spawn.hpp - starting a child from a plan. Not public API.
//
// The plan (spawn/plan.hpp) is built and validated by command::plan(); the two
// back ends start it: spawn/posix_spawn.hpp (the default) and spawn/clone_vfork.hpp
// (what posix_spawn cannot express). Both are vfork-like, so the cost of a spawn
// does not grow with the parent's memory, and both report a failure of any step
// in the child (exec, chdir, setuid...) to the parent as an errno and the step.
// launch() runs the back end the plan chose; kill_on_parent_death children are
// cloned by the spawner thread (spawner.hpp).
#pragma once

#include "spawn/clone_vfork.hpp"
#include "spawn/plan.hpp"
#include "spawn/posix_spawn.hpp"
#include "spawner.hpp"

namespace subprocess::detail {

// Starts `cp` with the back end `plan` chose; on failure throws the spawn_error
// that names the command and the step (or stores its errno in *ec, for
// command::spawn(ec)). No child is left behind either way.
inline spawned launch(const spawn_plan& plan, child_plan& cp, std::error_code* ec = nullptr) {
  spawned child;
  spawn_failure fail;
  if (plan.method != spawn_method::posix_spawn) {
    // Only the clone child's last-resort close loop (no close_range, no /proc) needs it.
    rlimit rl{};
    cp.fd_limit = sys::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536
                      ? static_cast<int>(rl.rlim_cur)
                      : 65536;
    // Fault injection (tests): the child's calls cannot ask the hook themselves.
    auto ask = [&](bool on, child_step s, sys::call c) {
      if (on) cp.faults[static_cast<int>(s)] = sys::child_fault(c);
    };
    ask(cp.n_limits > 0, child_step::setrlimit, sys::call::setrlimit);
    ask(cp.set_nice, child_step::setpriority, sys::call::setpriority);
    ask(cp.set_affinity, child_step::setaffinity, sys::call::setaffinity);
    ask(cp.n_groups >= 0, child_step::setgroups, sys::call::setgroups);
    ask(cp.set_gid, child_step::setgid, sys::call::setgid);
    ask(cp.set_uid, child_step::setuid, sys::call::setuid);
    ask(cp.cgroup_procs >= 0, child_step::cgroup, sys::call::cgroup_join);
  }
  bool ok = plan.method == spawn_method::spawner       ? spawner::instance().spawn(cp, child, fail)
            : plan.method == spawn_method::clone_vfork ? spawn_clone(cp, child, fail)
                                                       : spawn_posix(cp, child, fail);
  if (!ok && ec != nullptr) *ec = std::error_code(fail.err, std::system_category());
  if (!ok && ec == nullptr) raise_spawn_failure(plan, cp, fail);
  return child;
}

}  // namespace subprocess::detail
