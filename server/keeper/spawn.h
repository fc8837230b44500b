// SpawnWorker: starts one worker as the keeper's child, as a keeper.proto Spawn asks.
//
// clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) as posix_spawn does, with a child that only
// makes syscalls between clone and exec: it leads a new process group, enters its own cgroup
// (so nothing it runs is ever outside it), gets default signal dispositions and an empty
// mask, the given RLIMIT_NOFILE, stdin from /dev/null, stdout/stderr appended to the capture
// files, optionally another user, its cwd, and no descriptor of the keeper's.
//
// REQUIRES: called from a single-threaded process (the keeper).
#ifndef PROCTOR_SERVER_KEEPER_SPAWN_H_
#define PROCTOR_SERVER_KEEPER_SPAWN_H_

#include <sys/types.h>

#include <string>

#include "proctor/internal/keeper.pb.h"

namespace proctor {

// The step that failed when a worker could not enter its cgroup: proctord then starts it
// again without one.
inline constexpr char kEnterCgroupStep[] = "entering its cgroup";

struct SpawnOutcome {
  pid_t pid = 0;            // > 0 once exec'd
  int pidfd = -1;           // the caller's, close-on-exec
  int error = 0;            // errno of the step that failed
  std::string failed_step;  // empty with an error: clone or the exec itself
};

SpawnOutcome SpawnWorker(const internal::Spawn& spawn);

}  // namespace proctor

#endif  // PROCTOR_SERVER_KEEPER_SPAWN_H_
