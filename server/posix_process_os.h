// PosixProcessOs: ProcessOs on Linux, with the workers kept by a keeper process.
//
// Spawning: the keeper (keeper/keeper.h) starts each worker as its own child, so that workers
// outlive proctord; see keeper/spawn.h for what the child does before exec. A failed step
// before exec is the Launch() error, with its errno. A worker's exit is reported by the
// keeper, which holds the zombie until proctord has recorded the exit (the exit listener has
// returned) and released it.
//
// Ownership, so that a signal only ever reaches a process proctord provably owns:
// - A worker's group is signalled through a pidfd of its leader, taken while the keeper still
//   held it unreaped, with pidfd_send_signal's PIDFD_SIGNAL_PROCESS_GROUP (Linux 6.9): the
//   pidfd pins the group's struct pid, so only that group's members are reached, even after
//   the leader is reaped (by the keeper, or by init if the keeper died) and its number reused.
//   The pidfd is kept until the group is found empty.
// - On older kernels, with kill(-pgid) while its leader is unreleased (the keeper
//   reaps only what proctord released, and an unreaped process keeps its pid, and so its
//   group id). Otherwise only members of the worker's cgroup that are checked to be in the
//   group are signalled, each through a pidfd.
// - With cgroup v2 (also the unified hierarchy of a hybrid setup), each worker gets its own
//   cgroup, entered by the child before exec, so nothing the worker runs is ever outside it.
//   Its members are found there whatever they did to their group, session or environment,
//   and SIGKILLed at once through cgroup.kill. Whether anything of the worker is alive comes
//   from cgroup.events (watched with inotify), not from a scan. Without cgroup v2, strays
//   are found in /proc. The cgroups live below proctord-<keeper pid>, so a restarted
//   proctord finds them; those of a keeper that is gone are emptied (cgroup.kill) and removed.
//   An emptied cgroup whose leader is reaped goes to a pool of spares (up to kSpareCgroups,
//   its inotify watch kept) and is the next worker's, instead of being removed: making and
//   removing a cgroup cost about 190 µs of CPU per worker (proctor_bench with and without
//   --no-worker-cgroups); taking one from the pool makes no syscall. Only a cgroup that
//   cgroup.events shows empty when it is pooled is reused. A worker's cgroup is
//   thus not named after it (and a directory named after a token may hold another worker:
//   a new cgroup is one mkdir made, never one found); a restarted proctord learns the names
//   from the keeper. A cgroup is not pooled while the launch it was taken for is in flight:
//   a notification may come late (the kernel spaces them 10 ms apart) and be about its
//   previous worker. Its state is read under the lock the pool hands it on under, so what
//   is read is always about the worker that holds it.
// - Strays (descendants found by FindDescendants) are held as pidfds, opened and then checked
//   to still be where they were found; SignalProcess works only on those and on workers.
//
// Threads: keeper reports arrive on the keeper client's reader thread (KeeperListener()).
#ifndef PROCTOR_SERVER_POSIX_PROCESS_OS_H_
#define PROCTOR_SERVER_POSIX_PROCESS_OS_H_

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "proctor/internal/keeper.pb.h"
#include "server/event_loop.h"
#include "server/keeper_client.h"
#include "server/process_os.h"

namespace proctor {

class PosixProcessOs final : public ProcessOs {
 public:
  // `loop` and `keeper` must outlive the os. Workers the keeper already holds (`held`, from
  // an earlier proctord) are adopted: signalled, watched and reported like new ones.
  // With `worker_nice`, Confine() gives each worker that nice value; it also moves each worker
  // into the workers' CPU group where there is one (OpenWorkerCpuGroup). Per-worker cgroups
  // are made below the daemon's own cgroup v2 where that is writable (unless turned off);
  // the choice is logged.
  struct Options {
    std::optional<int> worker_nice;
    bool worker_cgroups = true;  // false: no per-worker cgroups even where possible
    // RLIMIT_NOFILE for workers (the one proctord started with, before it raised its own);
    // unset: they inherit proctord's.
    std::optional<rlimit> worker_descriptors;
  };
  static absl::StatusOr<std::unique_ptr<PosixProcessOs>> Create(EventLoop& loop,
                                                                KeeperClient& keeper,
                                                                const internal::Held& held,
                                                                Options options);
  ~PosixProcessOs() override;

  void SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) override;
  absl::StatusOr<Launched> Launch(const LaunchSpec& spec, uint64_t token) override;
  absl::Status SignalGroup(uint64_t token, int sig) override;
  bool GroupExists(uint64_t token) override;
  bool GroupHasLiveMembers(uint64_t token) override;
  bool AnythingAlive(uint64_t token) override;
  absl::Status KillCgroup(uint64_t token) override;
  absl::Status Confine(uint64_t token) override;
  absl::Status SignalProcess(pid_t pid, int sig) override;
  bool ProcessExists(pid_t pid) override;
  std::vector<pid_t> FindDescendants(const std::vector<uint64_t>& tokens) override;
  bool Reusable(uint64_t token) override;
  void Remember(const std::string& key, const std::string& value) override {
    keeper_.Remember(key, value);
  }
  void Forget(const std::string& key) override { keeper_.Forget(key); }

  // Whether process `pid` is of worker `token`'s tree: in the worker's cgroup, below its
  // unreleased leader by parent chain, or started with PROCTOR_ID=<token> in its environment.
  // Also true when the process is gone (a zombie included): nothing is left to check, and
  // whoever asks (NotifySockets' `belongs`) has its own proof of who may have sent. False for
  // pid 0 (a process proctord cannot see) and 1. Signals nothing; reads /proc.
  bool InWorkerTree(uint64_t token, pid_t pid);

  // What the keeper client must report to: pass to KeeperClient::Start.
  KeeperClient::Listener KeeperListener();

  // Reaps proctord's own children (keepers it started). Call on SIGCHLD.
  void OnSigchld();

 private:
  // One worker's cgroup, from its launch until it is empty and its leader is reaped.
  struct WorkerCgroup {
    std::string name;  // directory below the base: the token it was made for ("7", "7-1")
    int watch = -1;    // inotify watch on its cgroup.events
    bool populated = true;
    // Had for a launch the keeper has not yet reported spawned: empty or not, the worker may
    // still be on its way in, so the cgroup is not done with (pooled or removed) meanwhile.
    bool launching = false;
    // An event came while launching and was not read: it is read at the spawn instead.
    bool event_unread = false;
  };
  static constexpr size_t kSpareCgroups = 64;
  static constexpr int kCgroupNameAttempts = 1000;  // "7-1" ... "7-1000", after "7"
  PosixProcessOs(EventLoop& loop, KeeperClient& keeper, Options options);
  // Finds cgroup v2 and makes the daemon's directory of worker cgroups; logs the outcome.
  void SetUpCgroups();
  // After adopting the held workers: the empty cgroups below the base that none of them has.
  void PoolLeftoverCgroups();
  // Whether anything is in the cgroup `name` below the base, from its cgroup.events read
  // now; nullopt when that cannot be read. Only under mu_: a pooled cgroup passes from one
  // worker to the next under it, so a name looked up and read within one hold describes the
  // worker it was looked up for, never the next one the pool gave it to.
  std::optional<bool> CgroupPopulatedLocked(const std::string& name) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An inotify watch (IN_MODIFY) on the cgroup.events of `name` below the base, or -1.
  int WatchCgroupEvents(const std::string& name);
  void Adopt(const internal::HeldWorker& worker);
  bool GroupExistsLocked(uint64_t token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Watches the cgroup `name` below the base as `token`'s; false (errno set) if it cannot.
  bool WatchCgroupLocked(uint64_t token, const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives `token` a cgroup: a spare, or a new one named after it. Returns its name; empty
  // (errno set, `step` the failed step) if none could be had.
  std::string TakeCgroup(uint64_t token, std::string& step);
  // Keeper reports.
  void OnSpawned(uint64_t token, pid_t pid);
  void OnWorkerExited(const internal::Exited& exit);
  void OnWorkerReaped(uint64_t token);
  void OnOrphanReaped(pid_t pid, const std::string& cgroup);
  // Takes a pidfd of the worker's leader, to signal its group by (where the kernel can).
  void HoldGroupLocked(uint64_t token, pid_t pid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The group is empty, or can no longer be told apart: forgotten, its pidfd closed.
  void ForgetGroupLocked(uint64_t token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A cgroup could not be made or entered: new workers get none from now on (said once).
  void GiveUpCgroups(const std::string& what, int err);
  // Reads the inotify descriptor and refreshes `populated` of the cgroups that changed.
  void OnCgroupEvents();
  // Pools (or, with the pool full, removes) the worker's cgroup when it is empty and its
  // leader reaped.
  void MaybeRemoveCgroupLocked(uint64_t token) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Signals the members of the worker's cgroup that are in process group `pgid`.
  // REQUIRES: the worker has a cgroup.
  void SignalGroupInCgroupLocked(uint64_t token, pid_t pgid, int sig)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Members of a worker's cgroup, as verified pidfds keyed by pid (caller closes them).
  std::vector<std::pair<pid_t, int>> CgroupMembersLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Remembers a verified stray's pidfd (or closes it when the pid is known already).
  void HoldStrayLocked(pid_t pid, int pidfd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  EventLoop& loop_;
  KeeperClient& keeper_;
  const Options options_;
  // cgroup.procs of the CPU cgroup workers are moved into, or -1 where there is none.
  int cpu_group_procs_ = -1;  // set once, by Create()
  std::atomic<bool> cpu_group_failure_logged_ = false;
  // The directory of worker cgroups (O_PATH) and its path relative to the cgroup v2 root as
  // /proc/PID/cgroup shows it; -1 when workers get no cgroups.
  int cgroup_base_fd_ = -1;
  std::string cgroup_base_path_;
  std::string cgroup_base_relative_;
  int inotify_fd_ = -1;
  std::atomic<bool> cgroups_usable_ = true;
  ExitListener on_exit_;
  OrphanListener on_orphan_reaped_;
  // Orphans the keeper reaped that were not strays found before; touched on the keeper
  // client's reader thread only.
  uint64_t unknown_orphans_ = 0;

  absl::Mutex mu_;
  // Unreaped workers: token by leader pid (until reaped), and leader pid by token while
  // unreleased, or while being released (reaped by the keeper at any moment).
  absl::flat_hash_map<pid_t, uint64_t> workers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, pid_t> tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, pid_t> releasing_ ABSL_GUARDED_BY(mu_);
  // Unreleased workers whose exit is being recorded (their zombie holds their pid).
  absl::flat_hash_set<uint64_t> ended_leaders_ ABSL_GUARDED_BY(mu_);
  // The group ids of reaped workers whose groups may still have members, by token.
  absl::flat_hash_map<uint64_t, pid_t> leftover_groups_ ABSL_GUARDED_BY(mu_);
  // Pidfds of workers' leaders, by token, from launch until the group is forgotten; only
  // where the kernel signals a group through a pidfd (set once, by Create).
  bool group_pidfds_work_ = false;
  absl::flat_hash_map<uint64_t, int> group_pidfds_ ABSL_GUARDED_BY(mu_);
  // Workers' cgroups, by token, until empty and their leader reaped.
  absl::flat_hash_map<uint64_t, WorkerCgroup> cgroups_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int, uint64_t> cgroup_watches_ ABSL_GUARDED_BY(mu_);  // watch → token
  // Empty cgroups of reaped workers, for the next ones (their watches are kept, unmapped).
  std::vector<WorkerCgroup> spare_cgroups_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<pid_t, int> strays_ ABSL_GUARDED_BY(mu_);            // pid → pidfd
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
