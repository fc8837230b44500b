// FakeProcessOs: a ProcessOs with no processes. Tests decide when each "process" exits and
// which process groups still have members, read back what was signalled, and can act in the
// middle of a Launch() (as another thread would while the real spawn is in flight).
#ifndef PROCTOR_TESTS_FAKE_PROCESS_OS_H_
#define PROCTOR_TESTS_FAKE_PROCESS_OS_H_

#include <algorithm>
#include <functional>
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
    // The process exists now; the caller has not heard of it yet.
    if (auto during = std::exchange(during_next_launch_, nullptr)) during(pid);
    return Launched{pid, spec.path[0] == '/' ? spec.path : "/usr/bin/" + spec.path};
  }

  absl::Status SignalGroup(uint64_t token, int sig) override {
    pid_t pgid = PidOf(token);
    if (pgid <= 1) return RefusePid(pgid);
    if (!groups_.contains(pgid)) return absl::NotFoundError(absl::StrCat("no group ", pgid));
    signals.emplace_back(pgid, sig);
    return absl::OkStatus();
  }

  bool GroupHasLiveMembers(uint64_t token) override { return GroupExists(token); }
  bool GroupExists(uint64_t token) override {
    pid_t pgid = PidOf(token);
    if (pgid <= 1) {
      RefusePid(pgid).IgnoreError();
      return false;
    }
    return groups_.contains(pgid);
  }
  bool AnythingAlive(uint64_t token) override { return GroupExists(token); }
  absl::Status KillCgroup(uint64_t) override {
    return absl::UnimplementedError("the fake has no cgroups");
  }
  absl::Status Confine(uint64_t token) override {
    pid_t pid = PidOf(token);
    if (pid <= 1) return RefusePid(pid);
    confined.push_back(pid);
    return absl::OkStatus();
  }

  absl::Status SignalProcess(pid_t pid, int sig) override {
    if (pid <= 1) return RefusePid(pid);
    if (!strays_.contains(pid)) return absl::NotFoundError(absl::StrCat("no process ", pid));
    signals.emplace_back(pid, sig);
    return absl::OkStatus();
  }
  bool ProcessExists(pid_t pid) override {
    if (pid <= 1) {
      RefusePid(pid).IgnoreError();
      return false;
    }
    return strays_.contains(pid);
  }
  std::vector<pid_t> FindDescendants(const std::vector<uint64_t>& tokens) override {
    std::vector<pid_t> roots;
    for (uint64_t token : tokens) roots.push_back(PidOf(token));
    std::vector<pid_t> found;
    for (const auto& [pid, root] : strays_) {
      if (std::find(roots.begin(), roots.end(), root) != roots.end()) found.push_back(pid);
    }
    return found;
  }

  // A token is free again once the group of the last process launched with it is gone.
  bool Reusable(uint64_t token) override {
    pid_t pid = PidOf(token);
    return pid == 0 || !groups_.contains(pid);
  }

  void Remember(const std::string& key, const std::string& value) override {
    notes[key] = value;
  }
  void Forget(const std::string& key) override { notes.erase(key); }

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
  // Runs `during(pid)` inside the next Launch(), after the process exists and before the
  // caller learns its pid.
  void DuringNextLaunch(std::function<void(pid_t)> during) {
    during_next_launch_ = std::move(during);
  }

  std::vector<LaunchSpec> launches;
  std::vector<std::pair<pid_t, int>> signals;
  std::vector<pid_t> confined;
  std::map<std::string, std::string> notes;  // Remember()ed
  // Calls that named pid 0, 1 or a negative one: each would have hit the daemon's own group,
  // init or every process. Must stay empty.
  std::vector<pid_t> refused_pids;

 private:
  // The last process launched with `token` (a restarted worker keeps its token).
  pid_t PidOf(uint64_t token) const {
    pid_t last = 0;  // a token never launched: refused like any pid <= 1
    for (const auto& [pid, t] : tokens_) {
      if (t == token) last = pid;
    }
    return last;
  }
  absl::Status RefusePid(pid_t pid) {
    refused_pids.push_back(pid);
    return absl::InternalError(absl::StrCat("refusing pid ", pid));
  }

  ExitListener on_exit_;
  OrphanListener on_orphan_;
  pid_t next_pid_ = 1000;
  std::map<pid_t, uint64_t> tokens_;
  std::set<pid_t> groups_;
  std::map<pid_t, pid_t> strays_;
  absl::Status fail_next_;
  std::function<void(pid_t)> during_next_launch_;
};

}  // namespace proctor

#endif  // PROCTOR_TESTS_FAKE_PROCESS_OS_H_
