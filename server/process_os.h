// ProcessOs: every process syscall the supervisor needs (spawn, signal, reap), behind one
// small interface with a POSIX implementation and a fake for unit tests.
//
// Contract:
// - Launch() returns once the program has been exec'd; a failed exec (or a failed redirect
//   or chdir) is the returned error and leaves no process behind.
// - Each launched process leads its own process group (pgid == pid).
// - When a launched process has been reaped, the exit listener is called exactly once with
//   the `token` given to Launch(), from the thread that reaps (never under the caller's locks).
//   It may be called before Launch() has returned to its caller.
// - Processes that are not ours but were reparented to us (we are a child subreaper) are
//   reaped too; the orphan listener is called after each, so group drains can be noticed.
#ifndef PROCTOR_SERVER_PROCESS_OS_H_
#define PROCTOR_SERVER_PROCESS_OS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/wait_status.h"

namespace proctor {

struct LaunchSpec {
  std::string path;                // a path (relative ones against cwd) or a bare name,
                                   // looked up on the PATH in envp
  std::vector<std::string> argv;   // argv[0] included
  std::vector<std::string> envp;   // KEY=VALUE, complete
  std::string cwd;                 // empty: the daemon's
  std::string stdout_path;         // created (mode 0600) or truncated
  std::string stderr_path;
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

  // Sends `sig` to every process in group `pgid`. NOT_FOUND when the group is empty.
  virtual absl::Status SignalGroup(pid_t pgid, int sig) = 0;

  // True while any process (zombies included) is in group `pgid`.
  virtual bool GroupExists(pid_t pgid) = 0;

  // Puts a launched worker where workers belong (priority, CPU group), once the caller has
  // recorded it: the worker may already be calling back, so this comes after the record.
  virtual void Confine(pid_t pid) = 0;

  // Sends `sig` to one process; NOT_FOUND when it is gone.
  virtual absl::Status SignalProcess(pid_t pid, int sig) = 0;
  // True while `pid` exists (zombies included).
  virtual bool ProcessExists(pid_t pid) = 0;

  // Every live process below `roots` that is not itself a root: descendants by parent chain,
  // and orphans that came to us (child subreaper) from the workers whose launch tokens are in
  // `tokens` (recognised by the PROCTOR_ID their environment started with), with theirs.
  virtual std::vector<pid_t> FindDescendants(const std::vector<pid_t>& roots,
                                             const std::vector<uint64_t>& tokens) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCESS_OS_H_
