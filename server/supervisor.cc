#include "server/supervisor.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/authkey.h"
#include "common/signal_names.h"
#include "proctor/internal/keeper.pb.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

constexpr int kSigabrt = 6;
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
  if (absl::Status s = CheckNoNul("user", spec.user); !s.ok()) return s;
  if (absl::Status s = CheckNoNul("group", spec.group); !s.ok()) return s;
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
  if (spec.daemon && spec.parent_id == 0 && spec.session == 0) {
    // multiprocessing ends a daemonic process with its parent; at top level it would have
    // nothing to end with and would outlive every client.
    return absl::FailedPreconditionError(
        "a daemonic process needs a parent that it ends with: start it from a worker (with "
        "the worker's key) or in a session (StartRequest.session; proctor run --daemon opens "
        "one), or leave daemon unset");
  }
  return absl::OkStatus();
}

// The base environment with the request's entries laid over it (same name: request wins; a
// name twice in `base` keeps its last value, in its first place). `base` is taken by value so
// that a launch's own environment is moved through each layer rather than copied.
std::vector<std::string> BuildEnv(std::vector<std::string> base,
                                  const std::vector<std::string>& overrides) {
  auto name = [](absl::string_view entry) { return entry.substr(0, entry.find('=')); };
  std::vector<std::string> env;
  // Reserved whole, so that no entry moves: the index's names are views into `env`.
  env.reserve(base.size() + overrides.size());
  absl::flat_hash_map<absl::string_view, size_t> index;
  index.reserve(env.capacity());
  auto put = [&](std::string entry) {
    auto it = index.find(name(entry));
    if (it == index.end()) {
      env.push_back(std::move(entry));
      index.emplace(name(env.back()), env.size() - 1);
      return;
    }
    // The replaced string's buffer may go: the name is taken again from the new one.
    const size_t at = it->second;
    index.erase(it);
    env[at] = std::move(entry);
    index.emplace(name(env[at]), at);
  };
  for (std::string& entry : base) put(std::move(entry));
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

// What the "launch/<id>" note keeps: the launch of each run of a restarting process.
std::string LaunchNote(const LaunchSpec& spec) {
  internal::LaunchMemo memo;
  memo.set_path(spec.path);
  for (const std::string& arg : spec.argv) memo.add_argv(arg);
  for (const std::string& entry : spec.envp) memo.add_envp(entry);
  memo.set_cwd(spec.cwd);
  memo.set_stdout_path(spec.stdout_path);
  memo.set_stderr_path(spec.stderr_path);
  if (spec.identity.has_value()) {
    memo.set_switch_user(true);
    memo.set_uid(spec.identity->uid);
    memo.set_gid(spec.identity->gid);
    for (gid_t group : spec.identity->groups) memo.add_groups(group);
  }
  memo.set_memo(spec.memo);
  return memo.SerializeAsString();
}

std::optional<LaunchSpec> LaunchFromNote(const std::string& note) {
  internal::LaunchMemo memo;
  if (!memo.ParseFromString(note) || memo.argv().empty()) return std::nullopt;
  LaunchSpec spec;
  spec.path = memo.path();
  spec.argv.assign(memo.argv().begin(), memo.argv().end());
  spec.envp.assign(memo.envp().begin(), memo.envp().end());
  spec.cwd = memo.cwd();
  spec.stdout_path = memo.stdout_path();
  spec.stderr_path = memo.stderr_path();
  spec.append_output = true;
  if (memo.switch_user()) {
    spec.identity = WorkerIdentity{.uid = memo.uid(), .gid = memo.gid(),
                                   .groups = {memo.groups().begin(), memo.groups().end()}};
  }
  spec.memo = memo.memo();
  return spec;
}

std::string LaunchNoteKey(uint64_t id) { return absl::StrCat("launch/", id); }

bool Failed(const WaitStatus& status) { return status.signal != 0 || status.exit_code != 0; }

}  // namespace

Supervisor::Supervisor(SupervisorOptions options, ProcessOs& os, Clock& clock,
                       Timers& timers, IdAllocator& ids)
    : options_(std::move(options)),
      os_(os),
      clock_(clock),
      timers_(timers),
      ids_(ids) {
  {
    absl::MutexLock lock(&mu_);
    last_cursor_ = options_.last_cursor;
  }
  {
    absl::MutexLock lock(&record_mu_);
    recorded_through_ = options_.last_cursor;
  }
  os_.SetListeners(
      [this](uint64_t id, WaitStatus status, const ResourceUsage& usage) {
        OnExit(id, status, usage);
      },
      [this] { OnOrphanReaped(); });
}

absl::StatusOr<LaunchSpec> Supervisor::BuildLaunchSpec(const StartSpec& spec,
                                                       WorkerUser user) const {
  LaunchSpec launch;
  launch.path = spec.target;
  launch.argv.reserve(1 + spec.args.size() + spec.kwargs.size());
  launch.argv.push_back(spec.target);
  launch.argv.insert(launch.argv.end(), spec.args.begin(), spec.args.end());
  for (const auto& [key, value] : spec.kwargs) {
    launch.argv.push_back(absl::StrCat("--", key, "=", value));
  }
  launch.envp = BuildEnv(BuildEnv(options_.base_env, user.env), spec.env);
  launch.cwd = spec.cwd;
  if (launch.cwd.empty()) {
    // "The daemon's" said explicitly, so that the record shows where it really started.
    if (char* here = getcwd(nullptr, 0); here != nullptr) {
      launch.cwd = here;
      free(here);
    }
  }
  launch.identity = std::move(user.identity);
  // Room for the PROCTOR_* entries added once the id is known.
  constexpr size_t kProctorEnvBytes = 512;
  if (size_t size = ExecSize(launch.argv, launch.envp) + kProctorEnvBytes;
      size > options_.arg_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("arguments and environment take ", size,
                     " bytes, more than the system's ARG_MAX of ", options_.arg_max));
  }
  return launch;
}

absl::StatusOr<ProcessInfo> Supervisor::Start(const StartSpec& spec) {
  if (absl::Status s = Validate(spec); !s.ok()) return s;
  if (options_.events != nullptr) {
    if (absl::Status recorded = options_.events->Flush(); !recorded.ok()) return recorded;
  }
  // Reads the user database: before the lock.
  absl::StatusOr<WorkerUser> user =
      ResolveWorkerUser(spec.user.empty() ? options_.worker_user : spec.user, spec.group);
  if (!user.ok()) return user.status();
  absl::StatusOr<LaunchSpec> launch = BuildLaunchSpec(spec, *std::move(user));
  if (!launch.ok()) return launch.status();

  // Taken outside the lock: now and then it writes (and syncs) the id counter to disk, and
  // that must not hold up every other call. An id of a refused start is simply never used.
  absl::StatusOr<uint64_t> next = ids_.Next();
  if (!next.ok()) return next.status();
  const uint64_t id = *next;
  if (spec.notify) {
    if (options_.notify == nullptr) {
      return absl::FailedPreconditionError("this proctord takes no sd_notify messages");
    }
    std::optional<uid_t> owner;
    if (launch->identity.has_value()) owner = launch->identity->uid;
    // Binds a socket: before the lock.
    absl::StatusOr<std::string> endpoint = options_.notify->Open(id, owner);
    if (!endpoint.ok()) return endpoint.status();
    launch->envp =
        BuildEnv(std::move(launch->envp), {absl::StrCat("NOTIFY_SOCKET=", *endpoint)});
  }
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status admitted = AdmitLocked(spec, id, *launch); !admitted.ok()) {
      if (spec.notify) options_.notify->Close(id);
      return admitted;
    }
  }

  if (options_.capture_files != nullptr) {
    options_.capture_files->Prepare(launch->stdout_path);
    options_.capture_files->Prepare(launch->stderr_path);
  }
  absl::StatusOr<Launched> launched = os_.Launch(*launch, id);

  ProcessInfo info;
  {
    Outbox out(*this);
    absl::MutexLock lock(&mu_);
    if (!launched.ok()) {
      RollBackLocked(id, out);
      if (spec.notify) out.Call([this, id] { options_.notify->Close(id); });
      return launched.status();
    }
    info = CommitLocked(id, *launched, out);
  }
  // After the record: the worker may already be calling back, and must find itself.
  if (absl::Status confined = os_.Confine(id); !confined.ok()) {
    spdlog::warn("id={} pid={}: {}", id, info.pid, std::string(confined.message()));
  }
  return info;
}

absl::Status Supervisor::AdmitLocked(const StartSpec& spec, uint64_t id, LaunchSpec& launch) {
  if (shutting_down_) return absl::UnavailableError("proctord is shutting down");
  if (size_t live = live_count_ + starting_.size(); live >= options_.max_processes) {
    std::string limit = options_.max_processes_reason.empty()
                            ? absl::StrCat("limit --max-processes=", options_.max_processes)
                            : options_.max_processes_reason;
    return absl::ResourceExhaustedError(
        absl::StrCat(limit, " reached (", live, " processes are running)"));
  }
  Record record;
  std::string authkey = spec.authkey;
  if (spec.parent_id != 0) {
    // A parent whose own launch is in flight counts: it runs, and may be calling already.
    Record* parent = FindAnyLocked(spec.parent_id);
    if (parent == nullptr) return NoSuchProcess(spec.parent_id);
    if (parent->info.daemon) {
      return absl::FailedPreconditionError("daemonic processes are not allowed to have children");
    }
    if (!parent->info.running) {
      return absl::FailedPreconditionError(
          absl::StrCat("parent process ", spec.parent_id, " has ended"));
    }
    if (parent->peek().terminating) {
      return absl::FailedPreconditionError(
          absl::StrCat("parent process ", spec.parent_id, " is being terminated"));
    }
    size_t running_children = parent->peek().children_starting;
    for (uint64_t child : parent->info.children) {
      if (Record* c = FindLocked(child); c != nullptr && c->info.running) ++running_children;
    }
    if (running_children >= options_.max_children) {
      return absl::ResourceExhaustedError(
          absl::StrCat("limit --max-children=", options_.max_children, " reached (process ",
                       spec.parent_id, " has ", running_children, " running children)"));
    }
    if (parent->depth + 1 > options_.max_depth) {
      return absl::ResourceExhaustedError(
          absl::StrCat("limit --max-depth=", options_.max_depth, " reached (process ",
                       spec.parent_id, " is at depth ", parent->depth, ")"));
    }
    record.depth = parent->depth + 1;
    record.active().parent_identity = parent->identity;
    if (authkey.empty()) authkey = parent->active().authkey;
    ++parent->active().children_starting;
  } else if (spec.session != 0 && !sessions_.contains(spec.session)) {
    return absl::NotFoundError(absl::StrCat("no open session ", spec.session));
  }
  if (authkey.empty()) authkey = RandomBytes(kAuthkeyBytes);

  ProcessInfo& info = record.info;
  info.id = id;
  info.name = spec.name;  // a default name is given at commit, so a failed start uses none
  info.running = true;
  info.daemon = spec.daemon;
  info.parent_id = spec.parent_id;
  info.parent_session = spec.session;
  info.args.assign(launch.argv.begin() + 1, launch.argv.end());
  info.cwd = launch.cwd;
  info.start_time = clock_.Now();
  info.end_time = absl::InfinitePast();
  if (spec.restart.mode != RestartPolicy::Mode::kNo) info.restart = spec.restart;
  info.service = spec.service;
  if (spec.notify) {
    info.notify.emplace();
    info.notify->watchdog = spec.watchdog;
  }
  record.active().start_watchdog = spec.watchdog;
  info.stdout_path = absl::StrCat(options_.log_dir, "/", id, ".out");
  info.stderr_path = absl::StrCat(options_.log_dir, "/", id, ".err");
  launch.stdout_path = info.stdout_path;
  launch.stderr_path = info.stderr_path;
  // Its own credential, never its parent's: a child must not be able to act as its parent.
  record.credential = RandomBytes(kAuthkeyBytes);
  launch.envp = BuildEnv(std::move(launch.envp),
                         {absl::StrCat(kAddressEnv, "=", options_.worker_address),
                          absl::StrCat(kIdEnv, "=", id),
                          absl::StrCat(kAuthkeyEnv, "=", HexEncode(record.credential)),
                          absl::StrCat(kProcessAuthkeyEnv, "=", HexEncode(authkey))});
  // For a restarted proctord, from the keeper: the journal must not hold keys.
  internal::WorkerMemo memo;
  memo.set_credential(record.credential);
  memo.set_authkey(authkey);
  memo.set_depth(static_cast<uint32_t>(record.depth));
  if (launch.identity.has_value()) memo.set_uid(launch.identity->uid);
  launch.memo = memo.SerializeAsString();
  record.active().authkey = std::move(authkey);
  if (spec.restart.mode != RestartPolicy::Mode::kNo) {
    record.active().relaunch = std::make_unique<LaunchSpec>(launch);
    record.active().relaunch->append_output = true;
  }
  starting_.emplace(id, std::move(record));
  return absl::OkStatus();
}

ProcessInfo Supervisor::CommitLocked(uint64_t id, const Launched& launched, Outbox& out) {
  auto node = starting_.extract(id);
  Record& record = records_.emplace(id, std::move(node.mapped())).first->second;
  ProcessInfo& info = record.info;
  info.pid = launched.pid;
  info.target = launched.path;
  ++live_count_;

  // What changed while the launch was in flight decides whether it may run on.
  bool end_now = false;
  if (info.parent_id != 0) {
    Record* parent = FindAnyLocked(info.parent_id);
    if (parent != nullptr) {
      --parent->active().children_starting;
      record.identity = absl::StrCat(parent->identity, ":", ++parent->children_started);
      parent->info.children.push_back(id);
      // A tree being terminated takes its new child with it; a parent that ended takes its
      // daemonic children. (A parent still starting applies its own early exit at commit.)
      end_now = parent->peek().terminating || (info.daemon && !parent->info.running);
      parent->DropActivityIfIdle();  // it may have ended while this launch was in flight
    } else {
      // The parent ended and was forgotten meanwhile.
      record.identity = absl::StrCat(record.active().parent_identity, ":?", id);
      end_now = info.daemon;
    }
  } else {
    record.identity = absl::StrCat(++top_level_started_);
    if (info.parent_session != 0) {
      auto session = sessions_.find(info.parent_session);
      if (session != sessions_.end()) {
        session->second.processes.push_back(id);
      } else {
        end_now = info.daemon;  // its session ended meanwhile
      }
    }
  }
  if (info.name.empty()) info.name = absl::StrCat("Process-", record.identity);
  record.active().run_started = clock_.MonotonicNow();
  if (record.active().relaunch != nullptr) {
    out.Call([this, id, note = LaunchNote(*record.active().relaunch)] {
      os_.Remember(LaunchNoteKey(id), note);
    });
  }
  ArmWatchdogLocked(record);
  out.Emit(EventKind::kStarted, &info);
  if (info.notify.has_value() && info.notify->ready) out.Emit(EventKind::kReady, &info);
  spdlog::info("started id={} name=\"{}\" pid={} target={}{}", id, info.name, info.pid,
               info.target, info.daemon ? " daemon" : "");

  absl::Duration grace = kDefaultGrace;
  if (shutting_down_) {
    draining_.insert(id);
    if (info.daemon || shutdown_grace_over_) {
      end_now = true;
      grace = shutdown_grace_;
    }
  }
  if (end_now) {
    spdlog::info("id={}: its parent, session or the daemon ended while it started", id);
    SignalTreeLocked(record, kSigterm, grace, out);
  }
  if (!record.active().early_exit.has_value()) return record.info;
  // Taken, not read: a later run of this record (a restart) must not find it.
  const Exit exit = *std::exchange(record.active().early_exit, std::nullopt);
  ProcessInfo answer = record.info;
  ExitLocked(record, exit, out);  // may evict `record`, under a retention of none
  if (const Record* kept = FindLocked(id)) return kept->info;
  answer.running = false;
  answer.status = exit.status;
  answer.usage = exit.usage;
  return answer;
}

void Supervisor::RollBackLocked(uint64_t id, Outbox& out) {
  auto it = starting_.find(id);
  Record& record = it->second;
  if (Record* parent = FindAnyLocked(record.info.parent_id); parent != nullptr) {
    --parent->active().children_starting;
    parent->DropActivityIfIdle();
  }
  out.files().remove.push_back(record.info.stdout_path);
  out.files().remove.push_back(record.info.stderr_path);
  starting_.erase(it);
  CheckShutdownLocked(out);
}

const Supervisor::Activity Supervisor::Record::kIdle;

bool Supervisor::Record::idle() const {
  if (!ended_for_good()) return false;
  const Activity& a = peek();
  return a.joiners.empty() && a.terminators.empty() && a.ready_waiters.empty() &&
         a.strays.empty() && a.kill_timer == 0 && a.restart_timer == 0 &&
         a.watchdog_timer == 0 && a.children_starting == 0 && !a.early_exit.has_value() &&
         a.relaunch == nullptr;
}

Supervisor::Record* Supervisor::FindLocked(uint64_t id) {
  auto it = records_.find(id);
  return it == records_.end() ? nullptr : &it->second;
}

Supervisor::Record* Supervisor::FindAnyLocked(uint64_t id) {
  if (Record* record = FindLocked(id); record != nullptr) return record;
  auto it = starting_.find(id);
  return it == starting_.end() ? nullptr : &it->second;
}

Supervisor::Outbox::~Outbox() {
  // First: replies and answers below report these events, and a nested outbox (settling
  // drains) numbers later ones that must wait for these.
  if (!events_.empty()) supervisor_.RecordInOrder(events_);
  for (const GroupSignal& order : signals_) {
    absl::Status sent = supervisor_.os_.SignalGroup(order.id, order.signal);
    spdlog::info("terminate id={} pid={} signal={} grace={}{}", order.id, order.pid,
                 SignalName(order.signal), absl::FormatDuration(order.grace),
                 sent.ok() ? "" : absl::StrCat(" (", sent.message(), ")"));
  }
  for (uint64_t id : cgroup_kills_) {
    if (absl::Status killed = supervisor_.os_.KillCgroup(id);
        !killed.ok() && !absl::IsUnimplemented(killed)) {
      spdlog::warn("id={}: {}", id, std::string(killed.message()));
    }
  }
  // Strays are signalled before anyone hears that their tree was.
  for (const Sweep& sweep : sweeps_) supervisor_.SweepStrays(sweep.root, sweep.signal);
  if (settle_ || !sweeps_.empty()) supervisor_.SettleDrains();
  for (auto& call : calls_) call();
  supervisor_.Drop(files_);
}

void Supervisor::Outbox::Emit(EventKind kind, const ProcessInfo* process, uint64_t session,
                              absl::Duration delay) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  supervisor_.mu_.AssertHeld();
  SupervisorEvent& event = events_.emplace_back();
  event.cursor = ++supervisor_.last_cursor_;
  event.time = supervisor_.clock_.Now();
  event.kind = kind;
  if (process != nullptr) event.process = *process;
  event.session = session;
  event.delay = delay;
}

void Supervisor::RecordInOrder(const std::vector<SupervisorEvent>& events) {
  absl::MutexLock lock(&record_mu_);
  const uint64_t first = events.front().cursor;
  // Another call numbered earlier events and has not handed them over yet: it is about to.
  struct Turn {
    const uint64_t* recorded_through;
    uint64_t first;
    bool Ready() const { return *recorded_through + 1 == first; }
  } turn{&recorded_through_, first};
  record_mu_.Await(absl::Condition(&turn, &Turn::Ready));
  if (options_.events != nullptr) {
    if (absl::Status recorded = options_.events->Record(events); !recorded.ok()) {
      spdlog::error("events {}..{} not recorded: {}", first, events.back().cursor,
                    std::string(recorded.message()));
    }
  }
  recorded_through_ = events.back().cursor;
}

void Supervisor::Outbox::Answer(Done done, absl::StatusOr<ProcessInfo> answer) {
  calls_.push_back([done = std::move(done), answer = std::move(answer)]() mutable {
    done(std::move(answer));
  });
}

Supervisor::WaiterId Supervisor::Join(uint64_t id, std::optional<absl::Duration> timeout,
                                      Done done) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (timeout.has_value() && *timeout < absl::ZeroDuration()) {
    out.Answer(std::move(done), absl::InvalidArgumentError(absl::StrCat(
                                    "timeout ", absl::FormatDuration(*timeout),
                                    " is negative; give 0 or more")));
  } else if (record == nullptr) {
    out.Answer(std::move(done), NoSuchProcess(id));
  } else if (record->ended_for_good() || timeout == absl::ZeroDuration()) {
    out.Answer(std::move(done), record->info);
  } else {
    WaiterId waiter = next_waiter_++;
    Waiter w{waiter, std::move(done)};
    if (timeout.has_value()) {
      w.timer = timers_.After(*timeout, [this, id, waiter] { OnJoinTimeout(id, waiter); });
    }
    record->active().joiners.push_back(std::move(w));
    waiter_record_[waiter] = id;
    return waiter;
  }
  return 0;
}

void Supervisor::OnJoinTimeout(uint64_t id, WaiterId waiter) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return;
  auto& joiners = record->active().joiners;
  auto w = std::find_if(joiners.begin(), joiners.end(),
                        [&](const Waiter& j) { return j.id == waiter; });
  if (w == joiners.end()) return;
  out.Answer(std::move(w->done), record->info);
  joiners.erase(w);
  waiter_record_.erase(waiter);
}

Supervisor::WaiterId Supervisor::AwaitReady(uint64_t id, absl::Duration timeout, Done done) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) {
    out.Answer(std::move(done), NoSuchProcess(id));
    return 0;
  }
  const ProcessInfo& info = record->info;
  if (!info.notify.has_value() || info.notify->ready) {
    out.Answer(std::move(done), info);
    return 0;
  }
  if (record->ended_for_good()) {
    out.Answer(std::move(done),
               absl::FailedPreconditionError(absl::StrCat(
                   "process ", id, " ended before it was ready (exit code ",
                   info.status.has_value() ? info.status->exitcode() : 0, ")")));
    return 0;
  }
  WaiterId waiter = next_waiter_++;
  Waiter w{waiter, std::move(done)};
  w.deadline = clock_.MonotonicNow() + timeout;
  w.timer = timers_.After(timeout, [this, id, waiter] { OnReadyTimeout(id, waiter); });
  record->active().ready_waiters.push_back(std::move(w));
  waiter_record_[waiter] = id;
  return waiter;
}

void Supervisor::OnReadyTimeout(uint64_t id, WaiterId waiter) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return;
  auto& waiters = record->active().ready_waiters;
  auto w = std::find_if(waiters.begin(), waiters.end(),
                        [&](const Waiter& r) { return r.id == waiter; });
  if (w == waiters.end()) return;
  spdlog::warn("id={} name=\"{}\": not ready (READY=1) in time: terminating it", id,
               record->info.name);
  out.Answer(std::move(w->done),
             absl::DeadlineExceededError(absl::StrCat(
                 "process ", id, " did not send READY=1 in time; it is being terminated")));
  waiters.erase(w);
  waiter_record_.erase(waiter);
  record->active().tree = true;
  out.Emit(EventKind::kTerminateRequested, &record->info);
  SignalTreeLocked(*record, kSigterm, kDefaultGrace, out);
  EvictLocked(out);
}

void Supervisor::OnNotify(uint64_t id, const NotifyMessage& message) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  // Also while its launch is in flight: a worker may speak before Start has returned.
  Record* record = FindAnyLocked(id);
  const bool committed = records_.contains(id);
  if (record == nullptr || !record->info.running || !record->info.notify.has_value()) return;
  NotifyInfo& notify = *record->info.notify;
  if (message.status.has_value()) notify.status = *message.status;
  if (message.errno_value.has_value()) notify.errno_value = *message.errno_value;
  if (message.stopping) notify.stopping = true;
  if (message.reloading) notify.reloading = true;
  if (message.extend_timeout.has_value()) {
    // Each waiter's deadline moves to at least that far from now, never closer.
    const absl::Duration deadline = clock_.MonotonicNow() + *message.extend_timeout;
    for (Waiter& w : record->active().ready_waiters) {
      if (deadline <= w.deadline) continue;
      timers_.Cancel(w.timer);
      w.deadline = deadline;
      WaiterId waiter = w.id;
      w.timer = timers_.After(*message.extend_timeout,
                              [this, id, waiter] { OnReadyTimeout(id, waiter); });
    }
  }
  if (message.watchdog_period.has_value()) notify.watchdog = *message.watchdog_period;
  if (message.watchdog_ping) notify.last_watchdog_ping = clock_.Now();
  if (message.watchdog_period.has_value() || message.watchdog_ping) ArmWatchdogLocked(*record);
  if (message.ready) {
    notify.reloading = false;
    if (!notify.ready) {
      notify.ready = true;
      spdlog::info("id={} name=\"{}\" is ready", id, record->info.name);
      // Before the commit, the commit reports it, after its start.
      if (committed) out.Emit(EventKind::kReady, &record->info);
      for (Waiter& w : record->active().ready_waiters) {
        timers_.Cancel(w.timer);
        waiter_record_.erase(w.id);
        out.Answer(std::move(w.done), record->info);
      }
      record->active().ready_waiters.clear();
    }
  }
  if (message.watchdog_trigger) {
    timers_.Cancel(record->active().watchdog_timer);
    record->active().watchdog_timer = 0;
    uint32_t run = record->info.restarts;
    out.Call([this, id, run] { OnWatchdog(id, run); });
  }
}

uint64_t Supervisor::OnNotifyDropped(uint64_t id) {
  absl::MutexLock lock(&mu_);
  Record* record = FindAnyLocked(id);
  if (record == nullptr || !record->info.notify.has_value()) return 0;
  return ++record->info.notify->dropped;
}

void Supervisor::ArmWatchdogLocked(Record& record) {
  if (record.active().watchdog_timer != 0) timers_.Cancel(record.active().watchdog_timer);
  record.active().watchdog_timer = 0;
  const ProcessInfo& info = record.info;
  if (!info.running || !info.notify.has_value() || info.notify->watchdog <= absl::ZeroDuration()) {
    return;
  }
  uint64_t id = info.id;
  uint32_t run = info.restarts;
  record.active().watchdog_timer =
      timers_.After(info.notify->watchdog, [this, id, run] { OnWatchdog(id, run); });
}

void Supervisor::OnWatchdog(uint64_t id, uint32_t run) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  // A timer of an earlier run, or of a run that has ended meanwhile, has nothing to do.
  if (record == nullptr || !record->info.running || record->info.restarts != run ||
      record->active().watchdog_fired) {
    return;
  }
  record->active().watchdog_timer = 0;
  record->active().watchdog_fired = true;
  spdlog::warn("id={} name=\"{}\" pid={}: no WATCHDOG=1 within {}: SIGABRT", id,
               record->info.name, record->info.pid,
               absl::FormatDuration(record->info.notify->watchdog));
  out.Emit(EventKind::kWatchdog, &record->info);
  SignalLocked(*record, kSigabrt, kDefaultGrace, out);
}

Supervisor::WaiterId Supervisor::Terminate(uint64_t id, const TerminateOptions& options,
                                           Done done) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (absl::Status s = ValidateSignal(options.signal); !s.ok()) {
    out.Answer(std::move(done), s);
    return 0;
  }
  if (options.grace < absl::ZeroDuration()) {
    out.Answer(std::move(done),
               absl::InvalidArgumentError(absl::StrCat("grace ", absl::FormatDuration(options.grace),
                                                       " is negative; give 0 or more")));
    return 0;
  }
  if (record == nullptr) {
    out.Answer(std::move(done), NoSuchProcess(id));
    return 0;
  }
  if (options.tree) record->active().tree = true;
  out.Emit(EventKind::kTerminateRequested, &record->info);
  StopRestartsLocked(*record, out);
  // An ended worker may still have left processes in its group (or tree): they are its too.
  if (options.tree) {
    SignalTreeLocked(*record, options.signal, options.grace, out);
  } else {
    SignalLocked(*record, options.signal, options.grace, out);
  }
  if (!options.wait) {
    out.Answer(std::move(done), record->info);
    record->DropActivityIfIdle();
    EvictLocked(out);
    return 0;
  }
  // Answered by SettleDrains once nothing of it is left, which may be at once.
  WaiterId waiter = next_waiter_++;
  record->active().terminators.push_back(Waiter{waiter, std::move(done)});
  waiter_record_[waiter] = id;
  draining_.insert(id);
  out.Settle();
  EvictLocked(out);
  return waiter;
}

void Supervisor::SignalLocked(Record& record, int sig, absl::Duration grace, Outbox& out) {
  const ProcessInfo& info = record.info;
  if (!info.running && !os_.GroupExists(info.id)) return;
  // Sent once the lock is released: signalling a cgroup reads it.
  out.SignalGroup(GroupSignal{info.id, info.pid, sig, grace});
  if (sig != kSigkill) ArmKillTimerLocked(record, grace);
}

void Supervisor::ArmKillTimerLocked(Record& record, absl::Duration delay) {
  Activity& activity = record.active();
  absl::Duration deadline = clock_.MonotonicNow() + delay;
  if (deadline >= activity.kill_deadline) return;
  if (activity.kill_timer != 0) timers_.Cancel(activity.kill_timer);
  activity.kill_deadline = deadline;
  uint64_t id = record.info.id;
  activity.kill_timer = timers_.After(delay, [this, id] { OnGraceExpired(id); });
}

void Supervisor::CancelKillTimerLocked(Activity& activity) {
  if (activity.kill_timer != 0) timers_.Cancel(activity.kill_timer);
  activity.kill_timer = 0;
  activity.kill_deadline = absl::InfiniteDuration();
}

std::vector<Supervisor::Record*> Supervisor::SubtreeLocked(Record& root) {
  std::vector<Record*> subtree = {&root};
  for (size_t i = 0; i < subtree.size(); ++i) {
    for (uint64_t child : subtree[i]->info.children) {
      if (Record* c = FindLocked(child); c != nullptr) subtree.push_back(c);
    }
  }
  return subtree;
}

void Supervisor::SignalTreeLocked(Record& root, int sig, absl::Duration grace, Outbox& out) {
  for (Record* record : SubtreeLocked(root)) {
    // No new children below a process being terminated: a Start already on its way from
    // inside the tree must not outlive the signal (see CommitLocked). An ended one has none
    // unless a launch below it is in flight.
    if (record->info.running || record->peek().children_starting > 0) {
      record->active().terminating = true;
    }
    StopRestartsLocked(*record, out);
    SignalLocked(*record, sig, grace, out);
    // Everything the worker started, whatever it did to leave its group, at once.
    if (sig == kSigkill && os_.AnythingAlive(record->info.id)) out.KillCgroup(record->info.id);
  }
  root.active().tree = true;
  // The root's timer also SIGKILLs the strays, even when the root itself has ended; after a
  // SIGKILL it comes back soon to catch anything that appeared meanwhile.
  ArmKillTimerLocked(root, sig == kSigkill ? kDrainRecheck : grace);
  out.SweepTree(root.info.id, sig);
}

void Supervisor::SweepStrays(uint64_t root_id, int sig) {
  std::vector<uint64_t> ids;
  {
    absl::MutexLock lock(&mu_);
    Record* root = FindLocked(root_id);
    if (root == nullptr) return;
    for (Record* record : SubtreeLocked(*root)) ids.push_back(record->info.id);
  }
  // Processes below the workers that left their groups (setsid, double fork) are found in
  // their cgroups, by parent chain, or by the worker id in their environment once they have
  // come to us. This reads /proc, so it runs without the lock.
  std::vector<pid_t> found = os_.FindDescendants(ids);
  absl::MutexLock lock(&mu_);
  Record* root = FindLocked(root_id);
  // Nothing found, and none known before: nothing to signal (and no Activity to make).
  if (root == nullptr || (found.empty() && root->peek().strays.empty())) return;
  std::vector<pid_t>& strays = root->active().strays;
  for (pid_t stray : found) {
    if (std::find(strays.begin(), strays.end(), stray) == strays.end()) strays.push_back(stray);
  }
  std::erase_if(strays, [&](pid_t stray) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !os_.SignalProcess(stray, sig).ok();
  });
}

bool Supervisor::AnythingAliveLocked(Record& record) {
  // A restart's launch in flight is about to be alive (and is ended at its commit).
  const Activity& activity = record.peek();
  if (activity.relaunching) return true;
  if (!activity.tree) return record.info.running || os_.GroupExists(record.info.id);
  if (!activity.strays.empty()) return true;
  for (Record* r : SubtreeLocked(record)) {
    if (r->info.running || os_.AnythingAlive(r->info.id)) return true;
  }
  return false;
}

void Supervisor::PruneStraysLocked(Record& record) {
  if (record.activity == nullptr) return;
  std::erase_if(record.activity->strays, [this](pid_t pid) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !os_.ProcessExists(pid);
  });
}

void Supervisor::OnGraceExpired(uint64_t id) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return;
  CancelKillTimerLocked(record->active());  // it has fired
  PruneStraysLocked(*record);
  if (!AnythingAliveLocked(*record)) {
    // A tree whose known parts are gone still gets its sweep: escapees may remain.
    if (record->peek().tree) out.SweepTree(id, kSigkill);
    record->DropActivityIfIdle();
    return;
  }
  spdlog::info("grace expired id={} pid={}: SIGKILL", id, record->info.pid);
  if (record->peek().tree) {
    SignalTreeLocked(*record, kSigkill, absl::ZeroDuration(), out);  // re-arms the recheck
  } else {
    SignalLocked(*record, kSigkill, absl::ZeroDuration(), out);
    ArmKillTimerLocked(*record, kDrainRecheck);
  }
}

void Supervisor::SettleDrains() {
  std::vector<std::pair<uint64_t, std::vector<uint64_t>>> quiet_trees;
  {
    Outbox out(*this);
    absl::MutexLock lock(&mu_);
    for (uint64_t id : std::vector<uint64_t>(draining_.begin(), draining_.end())) {
      Record* record = FindLocked(id);
      if (record == nullptr) {
        draining_.erase(id);
        continue;
      }
      PruneStraysLocked(*record);
      if (AnythingAliveLocked(*record)) continue;
      if (!record->peek().tree) {
        CompleteTerminatorsLocked(*record, out);
        record->DropActivityIfIdle();
        continue;
      }
      std::vector<uint64_t> ids;
      for (Record* r : SubtreeLocked(*record)) ids.push_back(r->info.id);
      quiet_trees.emplace_back(id, std::move(ids));
    }
    CheckShutdownLocked(out);
  }
  if (quiet_trees.empty()) return;
  // Everything known of these trees is gone. One last look for escapees that were between
  // parents when the tree was swept (their parent died and they had not yet come to us): the
  // tree is being ended, so they get SIGKILL. The search reads /proc, outside the lock.
  std::vector<std::vector<pid_t>> late;
  for (const auto& [id, ids] : quiet_trees) late.push_back(os_.FindDescendants(ids));
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < quiet_trees.size(); ++i) {
    Record* record = FindLocked(quiet_trees[i].first);
    if (record == nullptr || !draining_.contains(record->info.id)) continue;
    for (pid_t escaped : late[i]) {
      spdlog::info("terminate id={}: SIGKILL to escaped pid={}", record->info.id, escaped);
      if (os_.SignalProcess(escaped, kSigkill).ok()) record->active().strays.push_back(escaped);
    }
    // Strays now being killed are reaped as orphans, which settles the drain again.
    if (!AnythingAliveLocked(*record)) {
      CompleteTerminatorsLocked(*record, out);
      record->DropActivityIfIdle();
    }
  }
  CheckShutdownLocked(out);
}

void Supervisor::CompleteTerminatorsLocked(Record& record, Outbox& out) {
  Activity& activity = record.active();
  CancelKillTimerLocked(activity);
  for (Waiter& w : activity.terminators) {
    waiter_record_.erase(w.id);
    out.Answer(std::move(w.done), record.info);
  }
  activity.terminators.clear();
  draining_.erase(record.info.id);
}

void Supervisor::CancelWait(WaiterId waiter) {
  absl::MutexLock lock(&mu_);
  auto wr = waiter_record_.find(waiter);
  if (wr == waiter_record_.end()) return;
  Record* record = FindLocked(wr->second);
  waiter_record_.erase(wr);
  if (record == nullptr) return;
  Activity& activity = record->active();
  for (auto* list : {&activity.joiners, &activity.terminators, &activity.ready_waiters}) {
    auto w = std::find_if(list->begin(), list->end(),
                          [&](const Waiter& j) { return j.id == waiter; });
    if (w == list->end()) continue;
    if (w->timer != 0) timers_.Cancel(w->timer);
    list->erase(w);
  }
  record->DropActivityIfIdle();
}

void Supervisor::OnExit(uint64_t id, WaitStatus status, const ResourceUsage& usage) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  if (auto starting = starting_.find(id); starting != starting_.end()) {
    // Reaped before Start committed it: the commit applies the exit.
    starting->second.active().early_exit = Exit{status, usage};
    return;
  }
  Record* record = FindLocked(id);
  if (record == nullptr) return;
  if (record->active().relaunching) {
    // A restart's run, reaped before its launch was committed: the commit applies the exit.
    record->active().early_exit = Exit{status, usage};
    return;
  }
  // Not running: an exit reported again after a restart that was journaled already.
  if (record->info.running) ExitLocked(*record, Exit{status, usage}, out);
}

void Supervisor::ExitLocked(Record& record, const Exit& exit, Outbox& out) {
  ProcessInfo& info = record.info;
  const uint64_t id = info.id;
  info.running = false;
  info.status = exit.status;
  info.usage = exit.usage;
  info.end_time = clock_.Now();
  --live_count_;
  if (record.active().watchdog_timer != 0) timers_.Cancel(record.active().watchdog_timer);
  record.active().watchdog_timer = 0;
  if (end_listener_) out.Call([this, id] { end_listener_(id, 0); });
  spdlog::info("exited id={} name=\"{}\" pid={} exitcode={}{}", id, info.name, info.pid,
               exit.status.exitcode(),
               exit.status.signal != 0
                   ? absl::StrCat(" signal=", SignalName(exit.status.signal),
                                  exit.status.core_dumped ? " (core dumped)" : "")
                   : "");
  // multiprocessing's rule: daemonic children end with their parent, whatever ended it.
  size_t daemonic = 0;
  for (uint64_t child_id : info.children) {
    Record* child = FindLocked(child_id);
    if (child != nullptr && child->info.daemon && child->info.running) {
      ++daemonic;
      SignalTreeLocked(*child, kSigterm, kDefaultGrace, out);
    }
  }
  if (daemonic > 0) {
    spdlog::info("parent id={} ended: terminated {} daemonic children", id, daemonic);
  }
  RunEndedLocked(record, out);
  // `record` may be evicted here: nothing below may use it.
  EvictLocked(out);
}

void Supervisor::RunEndedLocked(Record& record, Outbox& out) {
  ProcessInfo& info = record.info;
  const uint64_t id = info.id;
  bool gave_up = false;
  std::optional<absl::Duration> delay = NextRestartLocked(record, gave_up);
  if (!delay.has_value()) {
    if (gave_up) {
      spdlog::warn("id={} name=\"{}\": {} restarts{}, the limit of its policy: giving up", id,
                   info.name, record.active().restart_times.size(),
                   info.restart_policy().window.has_value()
                       ? absl::StrCat(" within ",
                                      absl::FormatDuration(*info.restart_policy().window))
                       : "");
      out.Emit(EventKind::kGaveUp, &info);
    }
    EndForGoodLocked(record, out);
    return;
  }
  info.last_exit = RunExit{.pid = info.pid,
                           .status = *info.status,
                           .start_time = info.start_time,
                           .end_time = info.end_time,
                           .watchdog = record.active().watchdog_fired};
  info.backoff = true;
  info.next_start_time = clock_.Now() + *delay;
  if (info.notify.has_value()) {
    info.notify->ready = false;
    info.notify->stopping = false;
    info.notify->reloading = false;
  }
  spdlog::info("id={} name=\"{}\": restarting in {} (restart {})", id, info.name,
               absl::FormatDuration(*delay), info.restarts + 1);
  out.Emit(EventKind::kRestarting, &info, 0, *delay);
  // What the run left in its group ends before the next run takes its place: SIGTERM now,
  // SIGKILL when the next run is due.
  if (os_.GroupHasLiveMembers(id)) out.SignalGroup(GroupSignal{id, info.pid, kSigterm, *delay});
  record.active().restart_timer = timers_.After(*delay, [this, id] { OnRestartDue(id); });
  out.Settle();
}

std::optional<absl::Duration> Supervisor::NextRestartLocked(Record& record, bool& gave_up) {
  Activity& activity = record.active();
  const RestartPolicy& policy = record.info.restart_policy();
  if (policy.mode == RestartPolicy::Mode::kNo || activity.no_restart || shutting_down_ ||
      activity.relaunch == nullptr) {
    return std::nullopt;
  }
  if (policy.mode == RestartPolicy::Mode::kOnFailure && !Failed(*record.info.status)) {
    return std::nullopt;
  }
  const absl::Duration now = clock_.MonotonicNow();
  std::vector<absl::Time>& recent = record.info.recent_restarts;
  if (now - activity.run_started >= policy.reset_after) {
    activity.backoff_step = 0;
    activity.restart_times.clear();
    recent.clear();
  }
  if (policy.window.has_value()) {
    auto kept = std::find_if(activity.restart_times.begin(), activity.restart_times.end(),
                             [&](absl::Duration t) { return now - t <= *policy.window; });
    const auto dropped = kept - activity.restart_times.begin();
    activity.restart_times.erase(activity.restart_times.begin(), kept);
    recent.erase(recent.begin(),
                 recent.begin() + std::min<ptrdiff_t>(dropped, static_cast<ptrdiff_t>(recent.size())));
  }
  if (policy.max_restarts > 0 && activity.restart_times.size() >= policy.max_restarts) {
    gave_up = true;
    return std::nullopt;
  }
  absl::Duration delay = policy.initial_backoff;
  for (int i = 0; i < activity.backoff_step && delay < policy.max_backoff; ++i) delay *= 2;
  if (options_.restart_jitter > 0) {
    delay *= absl::Uniform(bit_gen_, 1 - options_.restart_jitter, 1 + options_.restart_jitter);
  }
  delay = std::min(delay, policy.max_backoff);
  ++activity.backoff_step;
  activity.restart_times.push_back(now);
  recent.push_back(clock_.Now());
  return delay;
}

void Supervisor::EndForGoodLocked(Record& record, Outbox& out) {
  Activity& activity = record.active();
  ProcessInfo& info = record.info;
  const uint64_t id = info.id;
  info.backoff = false;
  info.next_start_time = absl::InfinitePast();
  if (activity.restart_timer != 0) timers_.Cancel(activity.restart_timer);
  activity.restart_timer = 0;
  restarts_due_.erase(id);
  out.Emit(EventKind::kExited, &info);
  for (Waiter& w : activity.joiners) {
    if (w.timer != 0) timers_.Cancel(w.timer);
    waiter_record_.erase(w.id);
    out.Answer(std::move(w.done), info);
  }
  activity.joiners.clear();
  for (Waiter& w : activity.ready_waiters) {
    if (w.timer != 0) timers_.Cancel(w.timer);
    waiter_record_.erase(w.id);
    out.Answer(std::move(w.done),
               absl::FailedPreconditionError(absl::StrCat(
                   "process ", id, " ended before it was ready (exit code ",
                   info.status.has_value() ? info.status->exitcode() : 0, ")")));
  }
  activity.ready_waiters.clear();
  if (info.notify.has_value() && options_.notify != nullptr) {
    out.Call([this, id] { options_.notify->Close(id); });
  }
  if (activity.relaunch != nullptr) {
    activity.relaunch.reset();
    out.Call([this, id] { os_.Forget(LaunchNoteKey(id)); });
  }
  GiveBackEmptyFilesLocked(record, out.files());
  ended_order_.push_back(id);
  ++ended_count_;
  out.Settle();
  record.DropActivityIfIdle();
}

void Supervisor::StopRestartsLocked(Record& record, Outbox& out) {
  if (record.ended_for_good()) return;
  record.active().no_restart = true;
  if (record.info.backoff) {
    spdlog::info("id={}: terminated while waiting to restart; it has ended", record.info.id);
    EndForGoodLocked(record, out);
  }
}

void Supervisor::OnRestartDue(uint64_t id) {
  LaunchSpec launch;
  {
    Outbox out(*this);
    absl::MutexLock lock(&mu_);
    Record* record = FindLocked(id);
    if (record == nullptr || !record->info.backoff || record->active().relaunching) return;
    if (record->active().restart_timer != 0) timers_.Cancel(record->active().restart_timer);
    record->active().restart_timer = 0;
    if (!os_.Reusable(id)) {
      // The last run's leftovers had their SIGTERM and their time: SIGKILL, then try again
      // once they are reaped (OnOrphanReaped), or soon.
      const bool members = os_.GroupHasLiveMembers(id);
      const bool anything = os_.AnythingAlive(id);
      if (!restarts_due_.contains(id)) {
        if (members) {
          spdlog::info("id={}: what its last run left in its group is still there: SIGKILL", id);
          out.SignalGroup(GroupSignal{id, record->info.pid, kSigkill, absl::ZeroDuration()});
        }
        if (anything) out.KillCgroup(id);
      }
      restarts_due_.insert(id);
      record->active().restart_timer =
          timers_.After(kDrainRecheck, [this, id] { OnRestartDue(id); });
      return;
    }
    restarts_due_.erase(id);
    if (size_t live = live_count_ + starting_.size(); live >= options_.max_processes) {
      spdlog::warn("id={}: cannot restart yet, {} processes are running (--max-processes={})",
                   id, live, options_.max_processes);
      absl::Duration retry = std::max(record->info.restart_policy().initial_backoff, kDrainRecheck);
      record->active().restart_timer = timers_.After(retry, [this, id] { OnRestartDue(id); });
      return;
    }
    record->active().relaunching = true;
    ++live_count_;
    launch = *record->active().relaunch;
  }
  absl::StatusOr<Launched> launched = os_.Launch(launch, id);
  {
    Outbox out(*this);
    absl::MutexLock lock(&mu_);
    Record& record = *FindLocked(id);  // a record in backoff is neither released nor evicted
    ProcessInfo& info = record.info;
    record.active().relaunching = false;
    if (!launched.ok()) {
      --live_count_;
      spdlog::warn("id={} name=\"{}\": restart failed: {}", id, info.name,
                   std::string(launched.status().message()));
      // It counts as a run that failed at once (exit code 127, as a shell reports it).
      info.backoff = false;
      info.status = WaitStatus::Exited(127);
      info.start_time = info.end_time = clock_.Now();
      record.active().run_started = clock_.MonotonicNow();
      RunEndedLocked(record, out);
      EvictLocked(out);
      return;
    }
    info.pid = launched->pid;
    info.target = launched->path;
    info.running = true;
    info.backoff = false;
    info.next_start_time = absl::InfinitePast();
    ++info.restarts;
    info.status.reset();
    info.usage = ResourceUsage{};
    info.start_time = clock_.Now();
    info.end_time = absl::InfinitePast();
    Activity& activity = record.active();
    activity.run_started = clock_.MonotonicNow();
    activity.watchdog_fired = false;
    CancelKillTimerLocked(activity);
    if (info.notify.has_value()) info.notify->watchdog = activity.start_watchdog;
    ArmWatchdogLocked(record);
    out.Emit(EventKind::kStarted, &info);
    spdlog::info("restarted id={} name=\"{}\" pid={} (restart {})", id, info.name, info.pid,
                 info.restarts);
    if (activity.no_restart || shutting_down_) {
      // Terminated (or the daemon began to stop) while the launch was in flight.
      if (shutting_down_) draining_.insert(id);
      SignalTreeLocked(record, kSigterm, shutting_down_ ? shutdown_grace_ : kDefaultGrace, out);
    }
    if (activity.early_exit.has_value()) {
      Exit exit = *std::exchange(activity.early_exit, std::nullopt);
      ExitLocked(record, exit, out);  // may drop the Activity: nothing below may use it
    }
  }
  if (absl::Status confined = os_.Confine(id); !confined.ok()) {
    spdlog::warn("id={}: {}", id, std::string(confined.message()));
  }
}

void Supervisor::OnOrphanReaped() {
  std::vector<uint64_t> due;
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    draining = !draining_.empty();
    due.assign(restarts_due_.begin(), restarts_due_.end());
  }
  // A restart waiting for the last run's leftovers may go now; from the timers' thread, since
  // this one may be the one that must carry the launch's answer.
  for (uint64_t id : due) timers_.After(absl::ZeroDuration(), [this, id] { OnRestartDue(id); });
  if (draining) SettleDrains();
}

void Supervisor::EvictLocked(Outbox& out) {
  while (ended_count_ > options_.retain && !ended_order_.empty()) {
    uint64_t oldest = ended_order_.front();
    auto it = records_.find(oldest);
    if (it != records_.end() && draining_.contains(oldest)) break;  // still being terminated
    ended_order_.pop_front();
    if (it == records_.end()) continue;  // released already
    out.Emit(EventKind::kEvicted, &it->second.info);
    EraseLocked(oldest, out.files());
    --ended_count_;
  }
}

void Supervisor::EraseLocked(uint64_t id, FilesToDrop& files) {
  auto it = records_.find(id);
  if (it == records_.end()) return;
  files.remove.push_back(it->second.info.stdout_path);
  files.remove.push_back(it->second.info.stderr_path);
  if (uint64_t parent_id = it->second.info.parent_id; parent_id != 0) {
    if (Record* parent = FindAnyLocked(parent_id); parent != nullptr) {
      std::erase(parent->info.children, id);
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
  if (options_.capture_files != nullptr) {
    for (const std::string& path : files.recycle_if_empty) {
      options_.capture_files->RecycleIfEmpty(path);
    }
  }
  for (const std::string& path : files.remove) {
    if (options_.capture_files != nullptr) {
      options_.capture_files->Recycle(path);  // reused only if nothing has it open
    } else {
      unlink(path.c_str());
    }
  }
}

absl::StatusOr<ProcessInfo> Supervisor::OpenLogs(uint64_t id) {
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return NoSuchProcess(id);
  ++record->log_readers;
  return record->info;
}

void Supervisor::CloseLogs(uint64_t id) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return;
  --record->log_readers;
  // A reader (a Run's, say) kept them past the end: given back now instead.
  if (record->ended_for_good()) GiveBackEmptyFilesLocked(*record, out.files());
}

void Supervisor::GiveBackEmptyFilesLocked(const Record& record, FilesToDrop& files) {
  // No inode per worker in steady state: output that stayed empty gives its files back. A
  // reader counted keeps them (it holds them open, or is about to open them).
  if (record.log_readers > 0) return;
  files.recycle_if_empty.push_back(record.info.stdout_path);
  files.recycle_if_empty.push_back(record.info.stderr_path);
}

std::optional<std::string> Supervisor::CredentialOf(uint64_t id) {
  absl::MutexLock lock(&mu_);
  // Also while its launch is in flight: the worker may call back before Start has returned.
  Record* record = FindAnyLocked(id);
  if (record == nullptr) return std::nullopt;
  return record->credential;
}

uint64_t Supervisor::RootOf(uint64_t id) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    Record* record = FindAnyLocked(id);
    if (record == nullptr || record->info.parent_id == 0) return id;
    id = record->info.parent_id;
  }
}

uint64_t Supervisor::SessionOfTree(uint64_t id) {
  absl::MutexLock lock(&mu_);
  Record* record = FindAnyLocked(id);
  while (record != nullptr && record->info.parent_id != 0) {
    record = FindAnyLocked(record->info.parent_id);
  }
  return record == nullptr ? 0 : record->info.parent_session;
}

bool Supervisor::InSubtree(uint64_t root, uint64_t id) {
  absl::MutexLock lock(&mu_);
  return InSubtreeLocked(root, id);
}

bool Supervisor::InSubtreeLocked(uint64_t root, uint64_t id) {
  // Parents are started before their children, so the chain ends; released ancestors end it too.
  while (id != 0) {
    if (id == root) return true;
    Record* record = FindAnyLocked(id);
    if (record == nullptr) return false;
    id = record->info.parent_id;
  }
  return false;
}

absl::StatusOr<ProcessInfo> Supervisor::Get(uint64_t id) {
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return NoSuchProcess(id);
  return record->info;
}

std::vector<ProcessInfo> Supervisor::List(const ListFilter& filter, uint64_t* cursor) {
  std::vector<ProcessInfo> out;
  VisitListed(filter, cursor, [&out](const ProcessInfo& info) { out.push_back(info); });
  return out;
}

void Supervisor::VisitListed(const ListFilter& filter, uint64_t* cursor,
                             absl::FunctionRef<void(const ProcessInfo&)> visit) {
  {
    absl::MutexLock lock(&mu_);
    if (cursor != nullptr) *cursor = last_cursor_;
    // Sorted as pointers: sorting copies moved whole records about (a profile of Status of
    // 9,600 put a third of proctord's time in memmove and malloc there).
    std::vector<const Record*> matched;
    matched.reserve(records_.size());
    for (const auto& [id, record] : records_) {
      const ProcessInfo& info = record.info;
      if (filter.running.has_value() && info.running != *filter.running) continue;
      if (filter.backoff.has_value() && info.backoff != *filter.backoff) continue;
      if (!filter.name.empty() && info.name != filter.name) continue;
      if (filter.parent_id.has_value() && info.parent_id != *filter.parent_id) continue;
      if (filter.parent_session.has_value() && info.parent_session != *filter.parent_session) {
        continue;
      }
      if (filter.subtree_of != 0 && !InSubtreeLocked(filter.subtree_of, id)) continue;
      matched.push_back(&record);
    }
    std::sort(matched.begin(), matched.end(),
              [](const Record* a, const Record* b) { return a->info.id < b->info.id; });
    for (const Record* record : matched) visit(record->info);
  }
  if (cursor != nullptr) {
    // Numbered events may still be on their way to the sink: the caller may watch from this
    // cursor at once, so it must be recorded already.
    struct Recorded {
      const uint64_t* recorded_through;
      uint64_t cursor;
      bool Done() const { return *recorded_through >= cursor; }
    } recorded{&recorded_through_, *cursor};
    absl::MutexLock lock(&record_mu_);
    record_mu_.Await(absl::Condition(&recorded, &Recorded::Done));
  }
}

std::vector<std::string> Supervisor::CaptureFilesInUse() {
  std::vector<std::string> paths;
  absl::MutexLock lock(&mu_);
  for (auto& [id, record] : records_) {
    if (!record.info.running && !record.info.backoff && !os_.AnythingAlive(id)) continue;
    paths.push_back(record.info.stdout_path);
    paths.push_back(record.info.stderr_path);
  }
  return paths;
}

absl::Status Supervisor::Release(uint64_t id) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  Record* record = FindLocked(id);
  if (record == nullptr) return NoSuchProcess(id);
  if (record->info.backoff || record->peek().relaunching) {
    return absl::FailedPreconditionError(absl::StrCat(
        "process ", id, " is waiting to restart; terminate it before releasing it"));
  }
  if (record->info.running || draining_.contains(id)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "process ", id, " is still running; join or terminate it before releasing it"));
  }
  PruneStraysLocked(*record);
  if (os_.GroupHasLiveMembers(id) || !record->peek().strays.empty()) {
    // Its captured output is still being written. Unless a Terminate's SIGKILL is due,
    // nothing would end them.
    const bool ending = record->peek().kill_timer != 0;
    return absl::FailedPreconditionError(absl::StrCat(
        "process ", id, " has ended but processes it started are still alive; ",
        ending ? "a Terminate is ending them (SIGKILL after its grace): release it once they "
                 "have ended (Terminate with wait returns then)"
               : "terminate it before releasing it"));
  }
  out.Emit(EventKind::kReleased, &record->info);
  EraseLocked(id, out.files());
  --ended_count_;
  // Keep the eviction queue from filling with released ids.
  if (!ended_order_.empty() && ended_order_.front() == id) ended_order_.pop_front();
  if (ended_order_.size() > 2 * ended_count_ + 64) {
    std::erase_if(ended_order_, [this](uint64_t e) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return !records_.contains(e);
    });
  }
  return absl::OkStatus();
}

void Supervisor::Shutdown(absl::Duration grace, std::function<void()> all_done) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return;
  shutting_down_ = true;
  shutdown_grace_ = grace;
  shutdown_done_ = std::move(all_done);
  spdlog::info("shutting down: {} live processes, {} starting, grace {}", live_count_,
               starting_.size(), absl::FormatDuration(grace));
  for (auto& [id, record] : records_) {
    // Nothing restarts from now on; what waits to restart has ended.
    StopRestartsLocked(record, out);
    if (!record.info.running && !os_.GroupExists(record.info.id)) continue;
    draining_.insert(id);
    if (record.info.daemon) SignalLocked(record, kSigterm, grace, out);
  }
  timers_.After(grace, [this] { OnShutdownGraceExpired(); });
  out.Settle();
}

void Supervisor::OnShutdownGraceExpired() {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  shutdown_grace_over_ = true;
  for (uint64_t id : draining_) {
    Record* record = FindLocked(id);
    if (record != nullptr && !record->info.daemon) {
      SignalLocked(*record, kSigterm, shutdown_grace_, out);
    }
  }
  out.Settle();
}

void Supervisor::CheckShutdownLocked(Outbox& out) {
  if (!shutting_down_ || !shutdown_done_ || live_count_ > 0 || !draining_.empty() ||
      !starting_.empty()) {
    return;
  }
  spdlog::info("every process has ended");
  out.Call(std::move(shutdown_done_));
  shutdown_done_ = nullptr;
}

absl::StatusOr<uint64_t> Supervisor::OpenSession(absl::Duration ttl,
                                                 std::function<void()> on_expired,
                                                 std::string owner) {
  // Outside the lock, as Start does: the allocator writes to disk now and then.
  absl::StatusOr<uint64_t> id = ids_.Next();
  if (!id.ok()) return id.status();
  const uint64_t session = *id;
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  out.Emit(EventKind::kSessionOpened, nullptr, session);
  SessionState& state = sessions_[session];
  state.ttl = ttl;
  state.on_expired = std::move(on_expired);
  state.owner = std::move(owner);
  ArmSessionTimerLocked(session);
  KeepSessionLocked(session, out);
  spdlog::info("session {} opened, ttl {}", session, absl::FormatDuration(ttl));
  return session;
}

absl::Status Supervisor::ResumeSession(uint64_t session, const std::string& owner,
                                       std::optional<absl::Duration> ttl,
                                       std::function<void()> on_expired) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " has ended"));
  }
  SessionState& state = it->second;
  if (state.owner != owner) {
    return absl::PermissionDeniedError(
        absl::StrCat("session ", session, " was opened with another key"));
  }
  if (state.held) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session, " is held by another stream"));
  }
  state.held = true;
  state.on_expired = std::move(on_expired);
  if (ttl.has_value() && *ttl != state.ttl) {
    state.ttl = *ttl;
    KeepSessionLocked(session, out);
  }
  timers_.Cancel(state.timer);
  ArmSessionTimerLocked(session);
  spdlog::info("session {} resumed, ttl {}", session, absl::FormatDuration(state.ttl));
  return absl::OkStatus();
}

void Supervisor::KeepSessionLocked(uint64_t session, Outbox& out) {
  const std::string key = absl::StrCat("session/", session);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    out.Call([this, key] { os_.Forget(key); });
    return;
  }
  internal::SessionMemo memo;
  memo.set_id(session);
  memo.set_ttl_ms(absl::ToInt64Milliseconds(it->second.ttl));
  memo.set_owner(it->second.owner);
  out.Call([this, key, value = memo.SerializeAsString()] { os_.Remember(key, value); });
}

void Supervisor::ArmSessionTimerLocked(uint64_t session) {
  SessionState& state = sessions_.at(session);
  state.timer = timers_.After(state.ttl, [this, session] {
    Outbox out(*this);
    absl::MutexLock lock(&mu_);
    if (!sessions_.contains(session)) return;
    spdlog::info("session {} missed its keep-alive", session);
    if (std::function<void()> expired = std::move(sessions_.at(session).on_expired)) {
      out.Call(std::move(expired));
    }
    EndSessionLocked(session, out);
  });
}

absl::Status Supervisor::TouchSession(uint64_t session) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " has ended"));
  }
  timers_.Cancel(it->second.timer);
  ArmSessionTimerLocked(session);
  return absl::OkStatus();
}

bool Supervisor::IsRunning(uint64_t id) {
  absl::MutexLock lock(&mu_);
  // A launch in flight counts: its worker may call before Start returns.
  Record* record = FindAnyLocked(id);
  return record != nullptr && record->info.running;
}

bool Supervisor::IsSessionOpen(uint64_t session) {
  absl::MutexLock lock(&mu_);
  return sessions_.contains(session);
}

void Supervisor::RestoreEnded(std::vector<ProcessInfo> ended) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  for (ProcessInfo& info : ended) {
    // Children that are not kept any more are not listed.
    uint64_t id = info.id;
    Record& record = records_[id];
    record.info = std::move(info);
    ended_order_.push_back(id);
    ++ended_count_;
  }
  for (auto& [id, record] : records_) {
    std::erase_if(record.info.children, [this](uint64_t child) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return !records_.contains(child);
    });
  }
  EvictLocked(out);
}

namespace {

// "3:1" from the default name "Process-3:1"; a made-up one for a name that is not a default.
std::string IdentityFromName(const ProcessInfo& info) {
  absl::string_view name = info.name;
  if (absl::ConsumePrefix(&name, "Process-") && !name.empty()) return std::string(name);
  return absl::StrCat("?", info.id);
}

// The number of a top-level default name ("Process-7" → 7), or 0.
uint64_t TopLevelNumber(const ProcessInfo& info) {
  absl::string_view name = info.name;
  uint64_t number = 0;
  if (info.parent_id != 0 || !absl::ConsumePrefix(&name, "Process-") ||
      !absl::SimpleAtoi(name, &number)) {
    return 0;
  }
  return number;
}

}  // namespace

void Supervisor::Restore(Restored restored) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  auto relaunch_of = [&](uint64_t id) -> std::unique_ptr<LaunchSpec> {
    auto note = restored.launches.find(id);
    if (note == restored.launches.end()) return nullptr;
    std::optional<LaunchSpec> launch = LaunchFromNote(note->second);
    restored.launches.erase(note);
    return launch.has_value() ? std::make_unique<LaunchSpec>(*std::move(launch)) : nullptr;
  };
  // Wall-clock times from the journal, as the monotonic clock would have read them.
  const absl::Duration mono_now = clock_.MonotonicNow();
  const absl::Time wall_now = clock_.Now();
  auto monotonic_of = [&](absl::Time t) {
    return mono_now - std::max(absl::ZeroDuration(), wall_now - t);
  };
  auto restore_restart_count = [&](Record& record) {
    Activity& activity = record.active();
    for (absl::Time t : record.info.recent_restarts) {
      activity.restart_times.push_back(monotonic_of(t));
    }
    activity.backoff_step = static_cast<int>(activity.restart_times.size());
  };
  auto reopen_endpoint = [&](uint64_t id, std::optional<uid_t> owner) {
    if (options_.notify == nullptr) return;
    out.Call([this, id, owner] {
      if (absl::StatusOr<std::string> opened = options_.notify->Open(id, owner); !opened.ok()) {
        spdlog::warn("id={}: its notify socket cannot be opened again: {}", id,
                     std::string(opened.status().message()));
      }
    });
  };
  for (ProcessInfo& info : restored.ended) {
    top_level_started_ = std::max(top_level_started_, TopLevelNumber(info));
    const uint64_t id = info.id;
    Record& record = records_[id];
    record.info = std::move(info);
    if (record.info.backoff) {
      // It was waiting to run again: it does, when its wait is over, if the keeper kept
      // what to launch it with.
      if (record.info.last_exit.has_value()) record.info.status = record.info.last_exit->status;
      std::unique_ptr<LaunchSpec> relaunch = relaunch_of(id);
      if (relaunch != nullptr) {
        Activity& activity = record.active();
        activity.relaunch = std::move(relaunch);
        restore_restart_count(record);
        activity.run_started = monotonic_of(record.info.start_time);
        if (record.info.notify.has_value()) {
          std::optional<uid_t> owner;
          if (activity.relaunch->identity.has_value()) owner = activity.relaunch->identity->uid;
          reopen_endpoint(id, owner);
          activity.start_watchdog = record.info.notify->watchdog;
        }
        absl::Duration delay = std::clamp(record.info.next_start_time - clock_.Now(),
                                           absl::ZeroDuration(), record.info.restart_policy().max_backoff);
        activity.restart_timer = timers_.After(delay, [this, id] { OnRestartDue(id); });
        spdlog::info("id={}: restarts in {}, as before proctord stopped", id,
                     absl::FormatDuration(delay));
        continue;
      }
      spdlog::warn("id={} was waiting to restart, but nothing kept what to launch it with "
                   "(its keeper was gone): it has ended",
                   id);
      EndForGoodLocked(record, out);
      continue;
    }
    ended_order_.push_back(id);
    ++ended_count_;
  }
  for (Reattached& reattached : restored.running) {
    top_level_started_ = std::max(top_level_started_, TopLevelNumber(reattached.info));
    const uint64_t id = reattached.info.id;
    Record& record = records_[id];
    record.info = std::move(reattached.info);
    record.identity = IdentityFromName(record.info);
    record.children_started = record.info.children.size();
    internal::WorkerMemo memo;
    if (!memo.ParseFromString(reattached.memo) || memo.credential().empty()) {
      // Its calls cannot be recognised any more; it runs on and is still supervised.
      spdlog::warn("id={}: no key kept for it; its own calls will be refused", id);
    }
    record.credential = memo.credential();
    record.depth = std::max<size_t>(memo.depth(), 1);
    Activity& activity = record.active();
    activity.authkey = memo.authkey().empty() ? RandomBytes(kAuthkeyBytes) : memo.authkey();
    activity.run_started = monotonic_of(record.info.start_time);
    activity.relaunch = relaunch_of(id);
    restore_restart_count(record);
    if (record.info.restart.has_value() && activity.relaunch == nullptr) {
      spdlog::warn("id={}: nothing kept what to launch it with; it will not be restarted", id);
    }
    if (record.info.notify.has_value()) {
      std::optional<uid_t> owner;
      if (memo.has_uid()) owner = memo.uid();
      reopen_endpoint(id, owner);
      activity.start_watchdog = record.info.notify->watchdog;
      ArmWatchdogLocked(record);
    }
    ++live_count_;
  }
  for (ProcessInfo& info : restored.lost) {
    top_level_started_ = std::max(top_level_started_, TopLevelNumber(info));
    const uint64_t id = info.id;
    info.running = false;
    info.lost = true;
    info.status.reset();
    info.end_time = clock_.Now();
    spdlog::warn("id={} pid={} was running when the previous proctord stopped and nothing kept "
                 "it (its keeper was gone): recorded as lost",
                 id, info.pid);
    Record& record = records_[id];
    record.info = std::move(info);
    out.Emit(EventKind::kExited, &record.info);
    ended_order_.push_back(id);
    ++ended_count_;
  }
  // A parent's last event may predate its children: the lists are rebuilt from the
  // children's side (those not kept any more are not listed).
  for (auto& [id, record] : records_) record.info.children.clear();
  for (auto& [id, record] : records_) {
    if (Record* parent = FindLocked(record.info.parent_id); parent != nullptr) {
      parent->info.children.push_back(id);
    }
  }
  for (auto& [id, record] : records_) {
    std::sort(record.info.children.begin(), record.info.children.end());
    record.children_started = std::max(record.children_started, record.info.children.size());
  }
  for (const RestoredSession& restored_session : restored.sessions) {
    SessionState& state = sessions_[restored_session.id];
    state.ttl = restored_session.ttl;
    state.owner = restored_session.owner;
    state.held = false;
    ArmSessionTimerLocked(restored_session.id);
    spdlog::info("session {} kept across the restart: resume it within {}", restored_session.id,
                 absl::FormatDuration(state.ttl));
  }
  // Notes of processes that have ended for good meanwhile.
  for (const auto& [id, note] : restored.launches) {
    out.Call([this, id = id] { os_.Forget(LaunchNoteKey(id)); });
  }
  // What happened while nobody watched: daemonic processes end with their parent or session.
  for (auto& [id, record] : records_) {
    ProcessInfo& info = record.info;
    if (!info.running) continue;
    bool orphaned = false;
    if (info.parent_id != 0) {
      Record* parent = FindLocked(info.parent_id);
      orphaned = parent == nullptr || !parent->info.running;
    } else if (info.parent_session != 0) {
      auto session = sessions_.find(info.parent_session);
      if (session != sessions_.end()) {
        session->second.processes.push_back(id);
      } else {
        orphaned = true;
      }
    }
    if (orphaned && info.daemon) {
      spdlog::info("id={}: its parent or session ended while proctord was down; terminating it",
                   id);
      SignalTreeLocked(record, kSigterm, kDefaultGrace, out);
    }
  }
  EvictLocked(out);
}

std::vector<uint64_t> Supervisor::OpenSessions() {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> open;
  for (const auto& [session, state] : sessions_) open.push_back(session);
  return open;
}

std::vector<uint64_t> Supervisor::KeptIds() {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> ids;
  ids.reserve(records_.size());
  for (const auto& [id, record] : records_) ids.push_back(id);
  return ids;
}

SupervisorCounts Supervisor::Counts() {
  absl::MutexLock lock(&mu_);
  SupervisorCounts counts{.running = live_count_ + starting_.size(),
                          .ended = ended_count_,
                          .sessions = sessions_.size()};
  for (const auto& [id, record] : records_) {
    if (record.info.backoff) ++counts.backoff;
    counts.joins += record.peek().joiners.size();
    if (record.activity != nullptr) ++counts.in_progress;
  }
  return counts;
}

void Supervisor::CloseSession(uint64_t session) {
  Outbox out(*this);
  absl::MutexLock lock(&mu_);
  if (!sessions_.contains(session)) return;
  spdlog::info("session {} closed", session);
  EndSessionLocked(session, out);
}

void Supervisor::EndSessionLocked(uint64_t session, Outbox& out) {
  auto it = sessions_.find(session);
  SessionState state = std::move(it->second);
  sessions_.erase(it);
  timers_.Cancel(state.timer);
  KeepSessionLocked(session, out);
  out.Emit(EventKind::kSessionEnded, nullptr, session);
  if (end_listener_) out.Call([this, session] { end_listener_(0, session); });
  for (uint64_t id : state.processes) {
    Record* record = FindLocked(id);
    if (record != nullptr && record->info.daemon && record->info.running) {
      spdlog::info("session {} ended: terminating its daemonic process id={}", session, id);
      SignalTreeLocked(*record, kSigterm, kDefaultGrace, out);
    }
  }
}

}  // namespace proctor
