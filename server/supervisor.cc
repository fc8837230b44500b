#include "server/supervisor.h"

#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/authkey.h"
#include "common/signal_names.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

constexpr int kSigkill = 9;
constexpr int kSigterm = 15;
// After SIGKILL, how often to look again for group members nobody told us about (for
// instance ones reaped by a parent outside the group).
constexpr absl::Duration kDrainRecheck = absl::Milliseconds(100);

absl::Status NoSuchProcess(uint64_t id) {
  return absl::NotFoundError(absl::StrCat("no process with id ", id));
}

absl::Status CheckNoNul(absl::string_view what, absl::string_view value) {
  if (value.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " contains a NUL byte"));
  }
  return absl::OkStatus();
}

absl::Status Validate(const StartSpec& spec) {
  if (spec.target.empty()) return absl::InvalidArgumentError("target is empty");
  if (absl::Status s = CheckNoNul("target", spec.target); !s.ok()) return s;
  for (size_t i = 0; i < spec.args.size(); ++i) {
    if (absl::Status s = CheckNoNul(absl::StrCat("args[", i, "]"), spec.args[i]); !s.ok()) {
      return s;
    }
  }
  for (const auto& [key, value] : spec.kwargs) {
    if (key.empty()) return absl::InvalidArgumentError("kwargs has an empty key");
    if (absl::Status s = CheckNoNul(absl::StrCat("kwargs key \"", key, "\""), key); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckNoNul(absl::StrCat("kwargs[", key, "]"), value); !s.ok()) {
      return s;
    }
  }
  for (size_t i = 0; i < spec.env.size(); ++i) {
    const std::string& entry = spec.env[i];
    if (absl::Status s = CheckNoNul(absl::StrCat("env[", i, "]"), entry); !s.ok()) return s;
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "env entry \"", entry, "\" is not KEY=VALUE (it needs a name before an '=')"));
    }
  }
  if (absl::Status s = CheckNoNul("cwd", spec.cwd); !s.ok()) return s;
  if (!spec.cwd.empty() && spec.cwd[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("cwd \"", spec.cwd, "\" must be an absolute path"));
  }
  if (spec.name.size() > Supervisor::kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("name is ", spec.name.size(),
                                                   " bytes long; the limit is ",
                                                   Supervisor::kMaxNameBytes));
  }
  if (absl::Status s = CheckNoNul("name", spec.name); !s.ok()) return s;
  return absl::OkStatus();
}

// The base environment with the request's entries laid over it (same name: request wins).
std::vector<std::string> BuildEnv(const std::vector<std::string>& base,
                                  const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  absl::flat_hash_map<std::string, size_t> index;
  auto put = [&](const std::string& entry) {
    std::string key = entry.substr(0, entry.find('='));
    auto [it, inserted] = index.emplace(key, env.size());
    if (inserted) {
      env.push_back(entry);
    } else {
      env[it->second] = entry;
    }
  };
  for (const std::string& entry : base) put(entry);
  for (const std::string& entry : overrides) put(entry);
  return env;
}

// What execve counts against ARG_MAX: the strings with their NULs, and the pointer arrays.
size_t ExecSize(const std::vector<std::string>& argv, const std::vector<std::string>& envp) {
  size_t total = (argv.size() + envp.size() + 2) * sizeof(char*);
  for (const std::string& s : argv) total += s.size() + 1;
  for (const std::string& s : envp) total += s.size() + 1;
  return total;
}

}  // namespace

Supervisor::Supervisor(SupervisorOptions options, ProcessOs& os, Clock& clock,
                       Timers& timers, IdAllocator& ids)
    : options_(std::move(options)),
      os_(os),
      clock_(clock),
      timers_(timers),
      ids_(ids) {
  os_.SetListeners(
      [this](uint64_t id, WaitStatus status, const ResourceUsage& usage) {
        OnExit(id, status, usage);
      },
      [this] { OnOrphanReaped(); });
}

absl::StatusOr<ProcessInfo> Supervisor::Start(const StartSpec& spec) {
  if (absl::Status s = Validate(spec); !s.ok()) return s;

  LaunchSpec launch;
  launch.path = spec.target;
  launch.argv.reserve(1 + spec.args.size() + spec.kwargs.size());
  launch.argv.push_back(spec.target);
  launch.argv.insert(launch.argv.end(), spec.args.begin(), spec.args.end());
  for (const auto& [key, value] : spec.kwargs) {
    launch.argv.push_back(absl::StrCat("--", key, "=", value));
  }
  launch.envp = BuildEnv(options_.base_env, spec.env);
  launch.cwd = spec.cwd;
  // Room for the PROCTOR_* entries added once the id is known.
  constexpr size_t kProctorEnvBytes = 512;
  if (size_t size = ExecSize(launch.argv, launch.envp) + kProctorEnvBytes;
      size > options_.arg_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("arguments and environment take ", size,
                     " bytes, more than the system's ARG_MAX of ", options_.arg_max));
  }

  // Taken outside the lock: now and then it writes (and syncs) the id counter to disk, and
  // that must not hold up every other call. An id of a refused start is simply never used.
  absl::StatusOr<uint64_t> next = ids_.Next();
  if (!next.ok()) return next.status();
  const uint64_t id = *next;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("proctord is shutting down");
    std::string identity;
    std::string authkey = spec.authkey;
    size_t depth = 1;
    if (live_count_ >= options_.max_processes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("limit --max-processes=", options_.max_processes, " reached (",
                       live_count_, " processes are running)"));
    }
    if (spec.parent_id != 0) {
      auto parent = records_.find(spec.parent_id);
      // A parent still being launched counts: it is running, and may be calling already.
      if (parent == records_.end()) return NoSuchProcess(spec.parent_id);
      Record& p = parent->second;
      if (p.info.daemon) {
        return absl::FailedPreconditionError(
            "daemonic processes are not allowed to have children");
      }
      if (!p.info.running) {
        return absl::FailedPreconditionError(
            absl::StrCat("parent process ", spec.parent_id, " has ended"));
      }
      if (p.terminating) {
        return absl::FailedPreconditionError(
            absl::StrCat("parent process ", spec.parent_id, " is being terminated"));
      }
      size_t running_children = 0;
      for (uint64_t child : p.info.children) {
        auto c = records_.find(child);
        if (c != records_.end() && c->second.info.running) ++running_children;
      }
      if (running_children >= options_.max_children) {
        return absl::ResourceExhaustedError(
            absl::StrCat("limit --max-children=", options_.max_children, " reached (process ",
                         spec.parent_id, " has ", running_children, " running children)"));
      }
      depth = p.depth + 1;
      if (depth > options_.max_depth) {
        return absl::ResourceExhaustedError(
            absl::StrCat("limit --max-depth=", options_.max_depth, " reached (process ",
                         spec.parent_id, " is at depth ", p.depth, ")"));
      }
      identity = absl::StrCat(p.identity, ":", ++p.children_started);
      if (authkey.empty()) authkey = p.authkey;
      p.info.children.push_back(id);
    } else {
      if (spec.session != 0) {
        auto session = sessions_.find(spec.session);
        if (session == sessions_.end()) {
          return absl::NotFoundError(absl::StrCat("no open session ", spec.session));
        }
        session->second.processes.push_back(id);
      }
      identity = absl::StrCat(++top_level_started_);
    }
    if (authkey.empty()) authkey = RandomBytes(kAuthkeyBytes);
    Record& record = records_[id];
    record.identity = identity;
    record.depth = depth;
    ProcessInfo& info = record.info;
    info.id = id;
    info.name = spec.name.empty() ? absl::StrCat("Process-", identity) : spec.name;
    info.running = true;
    info.daemon = spec.daemon;
    info.parent_id = spec.parent_id;
    info.parent_session = spec.session;
    info.args.assign(launch.argv.begin() + 1, launch.argv.end());
    info.cwd = spec.cwd;
    info.start_time = clock_.Now();
    info.end_time = absl::InfinitePast();
    info.stdout_path = absl::StrCat(options_.log_dir, "/", id, ".out");
    info.stderr_path = absl::StrCat(options_.log_dir, "/", id, ".err");
    launch.stdout_path = info.stdout_path;
    launch.stderr_path = info.stderr_path;
    launch.envp = BuildEnv(launch.envp, {absl::StrCat(kAddressEnv, "=", options_.worker_address),
                                         absl::StrCat(kIdEnv, "=", id),
                                         absl::StrCat(kAuthkeyEnv, "=", HexEncode(authkey))});
    record.authkey = std::move(authkey);
    ++live_count_;
  }

  if (options_.capture_files != nullptr) {
    options_.capture_files->Prepare(launch.stdout_path);
    options_.capture_files->Prepare(launch.stderr_path);
  }
  absl::StatusOr<Launched> launched = os_.Launch(launch, id);

  if (launched.ok()) {
    ProcessInfo info;
    {
      absl::MutexLock lock(&mu_);
      Record& record = records_.at(id);
      record.launched = true;
      record.info.pid = launched->pid;
      record.info.target = launched->path;
      spdlog::info("started id={} name=\"{}\" pid={} target={}{}", id, record.info.name,
                   launched->pid, launched->path, spec.daemon ? " daemon" : "");
      info = record.info;
    }
    os_.Confine(launched->pid);
    return info;
  }
  FilesToDrop files;
  {
    absl::MutexLock lock(&mu_);
    if (records_.at(id).info.running) --live_count_;
    EraseLocked(id, files);
  }
  Drop(files);
  return launched.status();
}

Supervisor::WaiterId Supervisor::Join(uint64_t id, std::optional<absl::Duration> timeout,
                                      Done done) {
  absl::StatusOr<ProcessInfo> answer;
  WaiterId waiter = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (timeout.has_value() && *timeout < absl::ZeroDuration()) {
      answer = absl::InvalidArgumentError(absl::StrCat(
          "timeout ", absl::FormatDuration(*timeout), " is negative; give 0 or more"));
    } else if (it == records_.end() || !it->second.launched) {
      answer = NoSuchProcess(id);
    } else if (!it->second.info.running || timeout == absl::ZeroDuration()) {
      answer = it->second.info;
    } else {
      waiter = next_waiter_++;
      Waiter w{waiter, std::move(done)};
      if (timeout.has_value()) {
        w.timer = timers_.After(*timeout, [this, id, waiter] { OnJoinTimeout(id, waiter); });
      }
      it->second.joiners.push_back(std::move(w));
      waiter_record_[waiter] = id;
      return waiter;
    }
  }
  done(std::move(answer));
  return 0;
}

void Supervisor::OnJoinTimeout(uint64_t id, WaiterId waiter) {
  Done done;
  ProcessInfo info;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return;
    auto& joiners = it->second.joiners;
    auto w = std::find_if(joiners.begin(), joiners.end(),
                          [&](const Waiter& j) { return j.id == waiter; });
    if (w == joiners.end()) return;
    done = std::move(w->done);
    joiners.erase(w);
    waiter_record_.erase(waiter);
    info = it->second.info;
  }
  done(std::move(info));
}

Supervisor::WaiterId Supervisor::Terminate(uint64_t id, int sig, absl::Duration grace, bool wait,
                                           Done done, bool tree) {
  absl::StatusOr<ProcessInfo> answer;
  WaiterId waiter = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (absl::Status s = ValidateSignal(sig); !s.ok()) {
      answer = s;
    } else if (grace < absl::ZeroDuration()) {
      answer = absl::InvalidArgumentError(absl::StrCat(
          "grace ", absl::FormatDuration(grace), " is negative; give 0 or more"));
    } else if (it == records_.end() || !it->second.launched) {
      answer = NoSuchProcess(id);
    } else {
      Record& record = it->second;
      record.tree = record.tree || tree;
      // An ended worker may still have left processes in its group (or tree): they are its too.
      bool alive = AliveLocked(record);
      if (tree) {
        SignalTreeLocked(record, sig, grace);
      } else if (alive) {
        SignalLocked(record, sig, grace);
      }
      if (!wait || !AliveLocked(record)) {
        answer = record.info;
      } else {
        waiter = next_waiter_++;
        record.terminators.push_back(Waiter{waiter, std::move(done)});
        waiter_record_[waiter] = id;
        draining_.insert(id);
        return waiter;
      }
    }
  }
  done(std::move(answer));
  return 0;
}

void Supervisor::SignalLocked(Record& record, int sig, absl::Duration grace) {
  const ProcessInfo& info = record.info;
  absl::Status sent = os_.SignalGroup(info.pid, sig);
  spdlog::info("terminate id={} pid={} signal={} grace={}{}", info.id, info.pid,
               SignalName(sig), absl::FormatDuration(grace),
               sent.ok() ? "" : absl::StrCat(" (", sent.message(), ")"));
  absl::Time deadline = clock_.Now() + grace;
  if (sig == kSigkill || deadline >= record.kill_deadline) return;
  if (record.kill_timer != 0) timers_.Cancel(record.kill_timer);
  record.kill_deadline = deadline;
  uint64_t id = info.id;
  record.kill_timer = timers_.After(grace, [this, id] { OnGraceExpired(id); });
}

std::vector<Supervisor::Record*> Supervisor::SubtreeLocked(Record& root) {
  std::vector<Record*> subtree = {&root};
  for (size_t i = 0; i < subtree.size(); ++i) {
    for (uint64_t child : subtree[i]->info.children) {
      if (auto it = records_.find(child); it != records_.end()) subtree.push_back(&it->second);
    }
  }
  return subtree;
}

void Supervisor::SignalTreeLocked(Record& root, int sig, absl::Duration grace) {
  SignalTreeGroupsLocked(root, sig, grace);
  SignalStraysLocked(root, sig);
}

void Supervisor::SignalTreeGroupsLocked(Record& root, int sig, absl::Duration grace) {
  for (Record* record : SubtreeLocked(root)) {
    // No new children below a process being terminated: a Start already on its way from
    // inside the tree must not outlive the signal.
    record->terminating = true;
    if (record->info.running || os_.GroupExists(record->info.pid)) {
      SignalLocked(*record, sig, grace);
    }
  }
  root.tree = true;
  // The root's timer also SIGKILLs the strays, even when the root itself has ended; after a
  // SIGKILL it comes back soon to catch anything that appeared meanwhile.
  if (sig == kSigkill) grace = kDrainRecheck;
  absl::Time deadline = clock_.Now() + grace;
  if (deadline < root.kill_deadline) {
    if (root.kill_timer != 0) timers_.Cancel(root.kill_timer);
    root.kill_deadline = deadline;
    uint64_t id = root.info.id;
    root.kill_timer = timers_.After(grace, [this, id] { OnGraceExpired(id); });
  }
}

void Supervisor::SignalStraysLocked(Record& root, int sig) {
  std::vector<pid_t> pids;
  std::vector<uint64_t> ids;
  for (Record* record : SubtreeLocked(root)) {
    ids.push_back(record->info.id);
    if (record->info.running) pids.push_back(record->info.pid);
  }
  // Processes below the workers that left their groups (setsid, double fork) are found by
  // parent chain, or by the worker id in their environment once they have come to us.
  for (pid_t stray : os_.FindDescendants(pids, ids)) {
    if (std::find(root.strays.begin(), root.strays.end(), stray) == root.strays.end()) {
      root.strays.push_back(stray);
    }
  }
  std::erase_if(root.strays, [&](pid_t stray) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !os_.SignalProcess(stray, sig).ok();
  });
}

bool Supervisor::AliveLocked(Record& record) {
  if (!record.tree) {
    return record.info.running || os_.GroupExists(record.info.pid);
  }
  std::erase_if(record.strays, [this](pid_t pid) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !os_.ProcessExists(pid);
  });
  if (!record.strays.empty()) return true;
  std::vector<uint64_t> ids;
  for (Record* r : SubtreeLocked(record)) {
    if (r->info.running || os_.GroupExists(r->info.pid)) return true;
    ids.push_back(r->info.id);
  }
  // Everything known is gone. One last look for escapees that were between parents when the
  // tree was searched (their parent died and they had not yet come to us): the tree is being
  // ended, so they get SIGKILL.
  for (pid_t late : os_.FindDescendants({}, ids)) {
    spdlog::info("terminate id={}: SIGKILL to escaped pid={}", record.info.id, late);
    if (os_.SignalProcess(late, kSigkill).ok()) record.strays.push_back(late);
  }
  return !record.strays.empty();
}

void Supervisor::OnGraceExpired(uint64_t id) {
  Completions completions;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return;
    Record& record = it->second;
    record.kill_timer = 0;
    record.kill_deadline = absl::InfiniteFuture();
    if (AliveLocked(record)) {
      spdlog::info("grace expired id={} pid={}: SIGKILL", id, record.info.pid);
      if (record.tree) {
        SignalTreeLocked(record, kSigkill, absl::ZeroDuration());  // re-arms the recheck
      } else {
        os_.SignalGroup(record.info.pid, kSigkill).IgnoreError();
        record.kill_deadline = clock_.Now() + kDrainRecheck;
        record.kill_timer = timers_.After(kDrainRecheck, [this, id] { OnGraceExpired(id); });
      }
    }
    SettleDrainsLocked(completions);
    CheckShutdownLocked(completions);
  }
  for (auto& c : completions) c();
}

void Supervisor::SettleDrainsLocked(Completions& out) {
  for (auto it = draining_.begin(); it != draining_.end();) {
    auto rec = records_.find(*it);
    if (rec == records_.end()) {
      draining_.erase(it++);
      continue;
    }
    Record& record = rec->second;
    if (AliveLocked(record)) {
      ++it;
      continue;
    }
    if (record.kill_timer != 0) timers_.Cancel(record.kill_timer);
    record.kill_timer = 0;
    record.kill_deadline = absl::InfiniteFuture();
    for (Waiter& w : record.terminators) {
      waiter_record_.erase(w.id);
      out.push_back([done = std::move(w.done), info = record.info] { done(info); });
    }
    record.terminators.clear();
    draining_.erase(it++);
  }
}

void Supervisor::CancelWait(WaiterId waiter) {
  absl::MutexLock lock(&mu_);
  auto wr = waiter_record_.find(waiter);
  if (wr == waiter_record_.end()) return;
  auto it = records_.find(wr->second);
  waiter_record_.erase(wr);
  if (it == records_.end()) return;
  for (auto* list : {&it->second.joiners, &it->second.terminators}) {
    auto w = std::find_if(list->begin(), list->end(),
                          [&](const Waiter& j) { return j.id == waiter; });
    if (w == list->end()) continue;
    if (w->timer != 0) timers_.Cancel(w->timer);
    list->erase(w);
  }
}

void Supervisor::OnExit(uint64_t id, WaitStatus status, const ResourceUsage& usage) {
  Completions completions;
  FilesToDrop dropped;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return;
    Record& record = it->second;
    ProcessInfo& info = record.info;
    info.running = false;
    info.status = status;
    info.usage = usage;
    info.end_time = clock_.Now();
    --live_count_;
    spdlog::info("exited id={} name=\"{}\" pid={} exitcode={}{}", id, info.name, info.pid,
                 status.exitcode(),
                 status.signal != 0 ? absl::StrCat(" signal=", SignalName(status.signal),
                                                   status.core_dumped ? " (core dumped)" : "")
                                    : "");
    // multiprocessing's rule: daemonic children end with their parent, whatever ended it.
    // Every child's group is signalled before the slower search for strays below them.
    std::vector<Record*> daemonic;
    for (uint64_t child_id : info.children) {
      auto child = records_.find(child_id);
      if (child != records_.end() && child->second.info.daemon && child->second.info.running) {
        daemonic.push_back(&child->second);
        SignalTreeGroupsLocked(child->second, kSigterm, kDefaultGrace);
      }
    }
    for (Record* child : daemonic) SignalStraysLocked(*child, kSigterm);
    if (!daemonic.empty()) {
      spdlog::info("parent id={} ended: terminated {} daemonic children", id, daemonic.size());
    }
    for (Waiter& w : record.joiners) {
      if (w.timer != 0) timers_.Cancel(w.timer);
      waiter_record_.erase(w.id);
      completions.push_back([done = std::move(w.done), info] { done(info); });
    }
    record.joiners.clear();
    SettleDrainsLocked(completions);
    ended_order_.push_back(id);
    ++ended_count_;
    EvictLocked(dropped);
    CheckShutdownLocked(completions);
  }
  for (auto& c : completions) c();
  Drop(dropped);
}

void Supervisor::OnOrphanReaped() {
  Completions completions;
  {
    absl::MutexLock lock(&mu_);
    if (draining_.empty()) return;
    SettleDrainsLocked(completions);
    CheckShutdownLocked(completions);
  }
  for (auto& c : completions) c();
}

void Supervisor::EvictLocked(FilesToDrop& files) {
  while (ended_count_ > options_.retain && !ended_order_.empty()) {
    uint64_t oldest = ended_order_.front();
    auto it = records_.find(oldest);
    if (it != records_.end() && draining_.contains(oldest)) break;  // still being terminated
    ended_order_.pop_front();
    if (it == records_.end()) continue;  // released already
    EraseLocked(oldest, files);
    --ended_count_;
  }
}

void Supervisor::EraseLocked(uint64_t id, FilesToDrop& files) {
  auto it = records_.find(id);
  if (it == records_.end()) return;
  auto& into = it->second.log_readers > 0 ? files.remove : files.recycle;
  into.push_back(it->second.info.stdout_path);
  into.push_back(it->second.info.stderr_path);
  if (uint64_t parent_id = it->second.info.parent_id; parent_id != 0) {
    if (auto parent = records_.find(parent_id); parent != records_.end()) {
      std::erase(parent->second.info.children, id);
    }
  }
  if (uint64_t session = it->second.info.parent_session; session != 0) {
    if (auto s = sessions_.find(session); s != sessions_.end()) {
      std::erase(s->second.processes, id);
    }
  }
  records_.erase(it);
}

void Supervisor::Drop(const FilesToDrop& files) {
  for (const std::string& path : files.remove) unlink(path.c_str());
  for (const std::string& path : files.recycle) {
    if (options_.capture_files != nullptr) {
      options_.capture_files->Recycle(path);
    } else {
      unlink(path.c_str());
    }
  }
}

absl::StatusOr<ProcessInfo> Supervisor::OpenLogs(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end() || !it->second.launched) return NoSuchProcess(id);
  ++it->second.log_readers;
  return it->second.info;
}

void Supervisor::CloseLogs(uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (auto it = records_.find(id); it != records_.end()) --it->second.log_readers;
}

std::optional<std::string> Supervisor::AuthkeyOf(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  // Also while its launch is finishing: the worker may call back before Start has returned.
  if (it == records_.end()) return std::nullopt;
  return it->second.authkey;
}

uint64_t Supervisor::RootOf(uint64_t id) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    auto it = records_.find(id);
    if (it == records_.end() || it->second.info.parent_id == 0) return id;
    id = it->second.info.parent_id;
  }
}

bool Supervisor::InSubtree(uint64_t root, uint64_t id) {
  absl::MutexLock lock(&mu_);
  return InSubtreeLocked(root, id);
}

bool Supervisor::InSubtreeLocked(uint64_t root, uint64_t id) {
  // Parents are started before their children, so the chain ends; released ancestors end it too.
  while (id != 0) {
    if (id == root) return true;
    auto it = records_.find(id);
    if (it == records_.end()) return false;
    id = it->second.info.parent_id;
  }
  return false;
}

absl::StatusOr<ProcessInfo> Supervisor::Get(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id);
  if (it == records_.end() || !it->second.launched) return NoSuchProcess(id);
  return it->second.info;
}

std::vector<ProcessInfo> Supervisor::List(const ListFilter& filter) {
  std::vector<ProcessInfo> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, record] : records_) {
      const ProcessInfo& info = record.info;
      if (!record.launched) continue;
      if (filter.running.has_value() && info.running != *filter.running) continue;
      if (!filter.name.empty() && info.name != filter.name) continue;
      if (filter.parent_id.has_value() && info.parent_id != *filter.parent_id) continue;
      if (filter.parent_session.has_value() && info.parent_session != *filter.parent_session) {
        continue;
      }
      if (filter.subtree_of != 0 && !InSubtreeLocked(filter.subtree_of, id)) continue;
      out.push_back(info);
    }
  }
  std::sort(out.begin(), out.end(),
            [](const ProcessInfo& a, const ProcessInfo& b) { return a.id < b.id; });
  return out;
}

absl::Status Supervisor::Release(uint64_t id) {
  FilesToDrop files;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id);
    if (it == records_.end() || !it->second.launched) return NoSuchProcess(id);
    if (it->second.info.running || draining_.contains(id)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "process ", id, " is still running; join or terminate it before releasing it"));
    }
    EraseLocked(id, files);
    --ended_count_;
    // Keep the eviction queue from filling with released ids.
    if (!ended_order_.empty() && ended_order_.front() == id) ended_order_.pop_front();
    if (ended_order_.size() > 2 * ended_count_ + 64) {
      std::erase_if(ended_order_, [this](uint64_t e) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !records_.contains(e);
      });
    }
  }
  Drop(files);
  return absl::OkStatus();
}

void Supervisor::Shutdown(absl::Duration grace, std::function<void()> all_done) {
  Completions completions;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
    shutdown_done_ = std::move(all_done);
    spdlog::info("shutting down: {} live processes, grace {}", live_count_,
                 absl::FormatDuration(grace));
    for (auto& [id, record] : records_) {
      if (!record.launched) continue;
      if (!record.info.running && !os_.GroupExists(record.info.pid)) continue;
      draining_.insert(id);
      if (record.info.daemon) SignalLocked(record, kSigterm, grace);
    }
    timers_.After(grace, [this, grace] {
      Completions late;
      {
        absl::MutexLock lock(&mu_);
        for (uint64_t id : draining_) {
          Record& record = records_.at(id);
          if (!record.info.daemon) SignalLocked(record, kSigterm, grace);
        }
        SettleDrainsLocked(late);
        CheckShutdownLocked(late);
      }
      for (auto& c : late) c();
    });
    SettleDrainsLocked(completions);
    CheckShutdownLocked(completions);
  }
  for (auto& c : completions) c();
}

void Supervisor::CheckShutdownLocked(Completions& out) {
  if (!shutting_down_ || !shutdown_done_ || live_count_ > 0 || !draining_.empty()) return;
  spdlog::info("every process has ended");
  out.push_back(std::move(shutdown_done_));
  shutdown_done_ = nullptr;
}

size_t Supervisor::live_count() {
  absl::MutexLock lock(&mu_);
  return live_count_;
}

uint64_t Supervisor::OpenSession(absl::Duration ttl, std::function<void()> on_expired) {
  absl::MutexLock lock(&mu_);
  uint64_t session = next_session_++;
  SessionState& state = sessions_[session];
  state.ttl = ttl;
  state.on_expired = std::move(on_expired);
  ArmSessionTimerLocked(session);
  spdlog::info("session {} opened, ttl {}", session, absl::FormatDuration(ttl));
  return session;
}

void Supervisor::ArmSessionTimerLocked(uint64_t session) {
  SessionState& state = sessions_.at(session);
  state.timer = timers_.After(state.ttl, [this, session] {
    std::function<void()> expired;
    {
      absl::MutexLock lock(&mu_);
      if (!sessions_.contains(session)) return;
      spdlog::info("session {} missed its keep-alive", session);
      expired = EndSessionLocked(session);
    }
    if (expired) expired();
  });
}

absl::Status Supervisor::TouchSession(uint64_t session) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " has ended"));
  }
  SessionState& state = it->second;
  timers_.Cancel(state.timer);
  ArmSessionTimerLocked(session);
  return absl::OkStatus();
}

void Supervisor::CloseSession(uint64_t session) {
  absl::MutexLock lock(&mu_);
  if (!sessions_.contains(session)) return;
  spdlog::info("session {} closed", session);
  EndSessionLocked(session);
}

std::function<void()> Supervisor::EndSessionLocked(uint64_t session) {
  auto it = sessions_.find(session);
  SessionState state = std::move(it->second);
  sessions_.erase(it);
  timers_.Cancel(state.timer);
  for (uint64_t id : state.processes) {
    auto record = records_.find(id);
    if (record == records_.end()) continue;
    if (record->second.info.daemon && record->second.info.running) {
      spdlog::info("session {} ended: terminating its daemonic process id={}", session, id);
      SignalTreeLocked(record->second, kSigterm, kDefaultGrace);
    }
  }
  return std::move(state.on_expired);
}

}  // namespace proctor
