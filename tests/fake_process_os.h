// FakeProcessOs: a ProcessOs with no processes. Tests decide when each "process"
// exits and which process groups still have members, and read back what was signalled.
#ifndef PROCTOR_TESTS_FAKE_PROCESS_OS_H_
#define PROCTOR_TESTS_FAKE_PROCESS_OS_H_

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/process_os.h"

namespace proctor {

class FakeProcessOs final : public ProcessOs {
 public:
  void SetListeners(ExitListener on_exit, OrphanListener on_orphan) override {
    on_exit_ = std::move(on_exit);
    on_orphan_ = std::move(on_orphan);
  }

  absl::StatusOr<Launched> Launch(const LaunchSpec& spec, uint64_t token) override {
    if (!fail_next_.ok()) return std::exchange(fail_next_, absl::OkStatus());
    pid_t pid = next_pid_++;
    launches.push_back(spec);
    tokens_[pid] = token;
    groups_.insert(pid);
    return Launched{pid, spec.path[0] == '/' ? spec.path : "/usr/bin/" + spec.path};
  }

  absl::Status SignalGroup(pid_t pgid, int sig) override {
    if (!groups_.contains(pgid)) return absl::NotFoundError(absl::StrCat("no group ", pgid));
    signals.emplace_back(pgid, sig);
    return absl::OkStatus();
  }

  bool GroupExists(pid_t pgid) override { return groups_.contains(pgid); }
  void Confine(pid_t) override {}

  absl::Status SignalProcess(pid_t pid, int sig) override {
    if (!strays_.contains(pid)) return absl::NotFoundError(absl::StrCat("no process ", pid));
    signals.emplace_back(pid, sig);
    return absl::OkStatus();
  }
  bool ProcessExists(pid_t pid) override { return strays_.contains(pid); }
  std::vector<pid_t> FindDescendants(const std::vector<pid_t>& roots,
                                     const std::vector<uint64_t>&) override {
    std::vector<pid_t> found;
    for (const auto& [pid, root] : strays_) {
      if (std::find(roots.begin(), roots.end(), root) != roots.end()) found.push_back(pid);
    }
    return found;
  }

  // A process that left the group of worker `root` (setsid); alive until Reap().
  void AddStray(pid_t pid, pid_t root) { strays_[pid] = root; }
  void ReapStray(pid_t pid) {
    strays_.erase(pid);
    on_orphan_();
  }

  // The process leading group `pid` ends; with `group_empties`, its whole group goes too.
  void Exit(pid_t pid, WaitStatus status, bool group_empties = true) {
    if (group_empties) groups_.erase(pid);
    on_exit_(tokens_.at(pid), status, ResourceUsage{});
  }
  // The last leftover member of group `pid` is reaped as an orphan.
  void DrainGroup(pid_t pid) {
    groups_.erase(pid);
    on_orphan_();
  }
  void FailNextLaunch(absl::Status status) { fail_next_ = std::move(status); }

  std::vector<LaunchSpec> launches;
  std::vector<std::pair<pid_t, int>> signals;

 private:
  ExitListener on_exit_;
  OrphanListener on_orphan_;
  pid_t next_pid_ = 1000;
  std::map<pid_t, uint64_t> tokens_;
  std::set<pid_t> groups_;
  std::map<pid_t, pid_t> strays_;
  absl::Status fail_next_;
};

}  // namespace proctor

#endif  // PROCTOR_TESTS_FAKE_PROCESS_OS_H_
