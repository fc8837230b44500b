// ProcessOs: every process syscall the supervisor needs (spawn, signal, reap), behind one
// small interface with a POSIX implementation and a fake for unit tests.
//
// Contract:
// - Launch() returns once the program has been exec'd; a failed exec (or a failed redirect
//   or chdir) is the returned error and leaves no process behind.
// - Each launched process leads its own process group (pgid == pid).
// - When a launched process has ended, the exit listener is called exactly once with the
//   `token` given to Launch() (never under the caller's locks). It may be called before
//   Launch() has returned to its caller. The process stays unreaped until the listener has
//   returned: whatever the listener must make durable about the exit, it makes durable
//   before returning, and a crash before that loses no exit.
// - Orphans of the workers' trees are reaped too; the orphan listener is called after each,
//   after a worker is reaped, and whenever a worker's group empties, so that drains can be
//   noticed.
// - Every call that takes a pid REQUIRES: pid > 1. Given 0, 1 or a negative number (kill(2)
//   would read them as "my own group", "init" or "every process"), it signals nothing, logs,
//   and returns INTERNAL (the predicates return false).
// - Nothing is ever signalled by a number remembered from before: workers through their
//   pidfd or their unreaped leader's group, strays through the pidfd taken when found.
#ifndef PROCTOR_SERVER_PROCESS_OS_H_
#define PROCTOR_SERVER_PROCESS_OS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/wait_status.h"

namespace proctor {

// Who a worker runs as, when not as the daemon's user.
struct WorkerIdentity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary
};

struct LaunchSpec {
  std::string path;                // a path (relative ones against cwd) or a bare name,
                                   // looked up on the PATH in envp
  std::vector<std::string> argv;   // argv[0] included
  std::vector<std::string> envp;   // KEY=VALUE, complete
  std::string cwd;                 // empty: the daemon's
  std::string stdout_path;         // created (mode 0600) or truncated
  std::string stderr_path;
  bool append_output = false;      // appended to instead of truncated (a restart's run)
  std::optional<WorkerIdentity> identity;  // unset: the daemon's user
  // Kept with the worker outside proctord (never on disk) and handed back after a restart.
  std::string memo;
};

struct Launched {
  pid_t pid = 0;
  std::string path;  // the executable actually started (after PATH lookup)
};

struct ResourceUsage {
  absl::Duration user_cpu;
  absl::Duration system_cpu;
  int64_t max_rss_bytes = 0;
};

class ProcessOs {
 public:
  using ExitListener = std::function<void(uint64_t token, WaitStatus, const ResourceUsage&)>;
  using OrphanListener = std::function<void()>;

  virtual ~ProcessOs() = default;

  // Set once, before the first Launch().
  virtual void SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) = 0;

  virtual absl::StatusOr<Launched> Launch(const LaunchSpec& spec, uint64_t token) = 0;

  // A worker is named by its launch token, never by a pid that may since have been reused.
  // Its group is its process group (pgid == its pid); children started through proctord are
  // workers of their own.

  // Sends `sig` to the worker's process group: while its leader is unreaped (so the group id
  // is still its own), or afterwards while a member is provably still there (an unreaped
  // child of ours in it, or a member of the worker's cgroup). NOT_FOUND when nothing of the
  // group is left or can be proven to be.
  virtual absl::Status SignalGroup(uint64_t token, int sig) = 0;

  // True while the worker's group may have members (its leader unreaped included).
  virtual bool GroupExists(uint64_t token) = 0;
  // The same, except that a leader that has ended and is only waiting to be reaped does not
  // count: whether anything of the group is still alive.
  virtual bool GroupHasLiveMembers(uint64_t token) = 0;

  // True while anything the worker started may be alive: its group, or anything in its
  // cgroup (what left the group too). Without cgroups, the same as GroupExists.
  virtual bool AnythingAlive(uint64_t token) = 0;

  // SIGKILLs everything in the worker's cgroup at once (cgroup.kill), whatever it did to its
  // group, session or environment. UNIMPLEMENTED where workers get no cgroups.
  virtual absl::Status KillCgroup(uint64_t token) = 0;

  // Puts a launched worker where workers belong (priority, CPU group), once the caller has
  // recorded it: the worker may already be calling back, so this comes after the record.
  // An error says what could not be done; the worker runs on regardless.
  virtual absl::Status Confine(uint64_t token) = 0;

  // Sends `sig` to a process FindDescendants returned, through the handle taken when it was
  // found; NOT_FOUND when it is gone or was never found. REQUIRES: pid > 1.
  virtual absl::Status SignalProcess(pid_t pid, int sig) = 0;
  // True while such a process is alive. REQUIRES: pid > 1.
  virtual bool ProcessExists(pid_t pid) = 0;

  // Every live process below the workers `tokens` that is not itself a worker: descendants by
  // parent chain, orphans that came to us (child subreaper) from their trees (recognised by
  // the PROCTOR_ID their environment started with), and the members of their cgroups. Each
  // is held (a pidfd) from then on, so SignalProcess reaches that process and no other.
  // Reads /proc: never call it under a lock that others wait on.
  virtual std::vector<pid_t> FindDescendants(const std::vector<uint64_t>& tokens) = 0;

  // Whether a new Launch() may use `token` again: nothing of an earlier worker launched with
  // it is held any more (reaped, its group and cgroup empty and forgotten).
  virtual bool Reusable(uint64_t token) = 0;

  // Keeps `value` under `key` outside proctord (never on disk), for the next proctord after a
  // restart that keeps the workers; Forget drops it.
  virtual void Remember(const std::string& key, const std::string& value) = 0;
  virtual void Forget(const std::string& key) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCESS_OS_H_
