// PosixProcessOs: ProcessOs on Linux.
//
// Spawns with posix_spawn (vfork-style; the multithreaded daemon never forks): the child leads
// a new process group, starts with an empty signal mask and default dispositions, stdin from
// /dev/null, stdout/stderr to the capture files, and no other descriptor of the daemon's.
// Each worker's exit is seen through its pidfd in the event loop, so one exit costs the same
// however many workers live. SIGCHLD (read from the daemon's signalfd and handed to
// OnSigchld) reaps the orphans that come to us as child subreaper.
#ifndef PROCTOR_SERVER_POSIX_PROCESS_OS_H_
#define PROCTOR_SERVER_POSIX_PROCESS_OS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/event_loop.h"
#include "server/process_os.h"

namespace proctor {

class PosixProcessOs final : public ProcessOs {
 public:
  // Makes the calling process a child subreaper; FAILED_PRECONDITION when the kernel refuses
  // (without it, workers' orphans would go to init and escape). `loop` must outlive the os.
  // With `worker_nice`, Confine() gives each worker that nice value; it also moves each worker
  // into the workers' CPU group where there is one (OpenWorkerCpuGroup).
  static absl::StatusOr<std::unique_ptr<PosixProcessOs>> Create(
      EventLoop& loop, std::optional<int> worker_nice = std::nullopt);
  ~PosixProcessOs() override;

  void SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) override;
  absl::StatusOr<Launched> Launch(const LaunchSpec& spec, uint64_t token) override;
  absl::Status SignalGroup(pid_t pgid, int sig) override;
  bool GroupExists(pid_t pgid) override;
  void Confine(pid_t pid) override;
  absl::Status SignalProcess(pid_t pid, int sig) override;
  bool ProcessExists(pid_t pid) override;
  std::vector<pid_t> FindDescendants(const std::vector<pid_t>& roots,
                                     const std::vector<uint64_t>& tokens) override;

  // Reaps every exited child that is not a worker (workers are reaped through their pidfd,
  // or here when found first). Call on SIGCHLD, from the loop thread.
  void OnSigchld();

 private:
  struct Worker {
    uint64_t token;
    int pidfd;
  };
  PosixProcessOs(EventLoop& loop, std::optional<int> worker_nice);
  void ReapWorker(pid_t pid);

  EventLoop& loop_;
  const std::optional<int> worker_nice_;
  // cgroup.procs of the CPU cgroup workers are moved into, or -1 where there is none.
  const int cpu_group_procs_;
  ExitListener on_exit_;
  OrphanListener on_orphan_reaped_;

  absl::Mutex mu_;
  absl::flat_hash_map<pid_t, Worker> workers_ ABSL_GUARDED_BY(mu_);
  // Spawns between posix_spawn() and the registration of their pid. An unknown zombie seen
  // while this is non-zero may be one of them, so it is left for a later look.
  int spawning_ ABSL_GUARDED_BY(mu_) = 0;
  bool recheck_after_spawn_ ABSL_GUARDED_BY(mu_) = false;
};

// Opens (making it if needed) a CPU cgroup for workers with a low weight, so that however
// many of them are runnable, the daemon keeps most of the CPU it asks for; returns its
// cgroup.procs, or -1 where the kernel or the permissions do not allow it. cgroup v1's `cpu`
// hierarchy (cpu.shares 128 against the default 1024) or, from the root of cgroup v2,
// cpu.weight 10 against 100.
int OpenWorkerCpuGroup();

// Raises the calling thread's scheduling priority (nice −5 below where it started) when the
// system allows it, so that every thread started afterwards, i.e. all of the daemon's, keeps
// answering while its workers load the machine. Returns the nice value workers should run at
// (the one the daemon started with), or nothing when the priority was left alone. Call first
// thing in main(), before any thread exists.
std::optional<int> RaiseDaemonPriority();

// Finds what `target` names: a path with a slash (relative ones against `cwd`), or a bare name
// looked up on `path_env` (a PATH value). Errors say what is wrong with the target:
// NOT_FOUND, INVALID_ARGUMENT (a directory, not a regular file), PERMISSION_DENIED.
absl::StatusOr<std::string> ResolveExecutable(const std::string& target,
                                              const std::string& path_env,
                                              const std::string& cwd);

}  // namespace proctor

#endif  // PROCTOR_SERVER_POSIX_PROCESS_OS_H_
