#include "client/cli/sync_commands.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/sync_client.h"
#include "common/authkey.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace proctor {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitTimeout = 124;
constexpr int kExitCannotRun = 127;

int Fail(SyncCommandIo& io, const absl::Status& status) {
  io.err << "proctor: " << status.message() << std::endl;
  return kExitFailure;
}


std::string OwnerText(const v1::SyncObject& object) {
  switch (object.owner_case()) {
    case v1::SyncObject::kOwnerProcess:
      return absl::StrCat("process ", object.owner_process());
    case v1::SyncObject::kOwnerSession:
      return absl::StrCat("session ", object.owner_session());
    default:
      return "";
  }
}

// "process:3", "session:2", "admin".
std::string PartyText(const v1::SyncHolder& holder) {
  return holder.party_case() == v1::SyncHolder::kProcess
             ? absl::StrCat("process:", holder.process())
         : holder.party_case() == v1::SyncHolder::kSession
             ? absl::StrCat("session:", holder.session())
             : "admin";
}

std::string HolderText(const v1::SyncHolder& holder) {
  std::string party = PartyText(holder);
  return holder.count() > 1 ? absl::StrCat(party, "x", holder.count()) : party;
}

// The object NAME names: by id when it is a number (of `kind`), else by name, made when
// missing (`value` for semaphores).
absl::StatusOr<v1::SyncObject> Resolve(SyncClient& sync, v1::SyncKind kind,
                                       const std::string& name, int64_t value) {
  uint64_t id = 0;
  if (!name.empty() && std::all_of(name.begin(), name.end(), absl::ascii_isdigit) &&
      absl::SimpleAtoi(name, &id)) {
    absl::StatusOr<v1::SyncObject> found = sync.Get(id);
    if (found.ok() && found->kind() != kind) {
      return absl::FailedPreconditionError(absl::StrCat("sync object ", id, " is a ",
                                                        SyncKindText(found->kind()), ", not a ",
                                                        SyncKindText(kind)));
    }
    return found;
  }
  v1::SyncCreateRequest request;
  request.set_kind(kind);
  request.set_name(name);
  request.set_exist_ok(true);
  if (kind == v1::SYNC_BOUNDED_SEMAPHORE) request.set_value(value);
  return sync.Create(request);
}

// Runs argv to its end; its exit status as a shell gives it.
int RunCommand(SyncCommandIo& io, const std::vector<std::string>& command,
               const std::function<void(pid_t)>& started) {
  std::vector<char*> argv;
  for (const std::string& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  // This command blocks the signals it passes on; CMD starts with none blocked, at their
  // defaults.
  posix_spawnattr_t attr;
  if (int err = posix_spawnattr_init(&attr); err != 0) {
    io.err << "proctor: posix_spawnattr_init: " << std::strerror(err) << std::endl;
    return kExitCannotRun;
  }
  sigset_t none, forwarded;
  sigemptyset(&none);
  sigemptyset(&forwarded);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&forwarded, sig);
  int err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  if (err == 0) err = posix_spawnattr_setsigmask(&attr, &none);
  if (err == 0) err = posix_spawnattr_setsigdefault(&attr, &forwarded);
  pid_t pid = 0;
  if (err == 0) err = posix_spawnp(&pid, argv[0], nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (err != 0) {
    io.err << "proctor: cannot run " << command[0] << ": " << std::strerror(err) << std::endl;
    return kExitCannotRun;
  }
  started(pid);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      io.err << "proctor: waitpid: " << std::strerror(errno) << std::endl;
      return kExitFailure;
    }
  }
  started(0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

}  // namespace

std::string SyncObjectJson(const v1::SyncObject& object) {
  nlohmann::ordered_json holders = nlohmann::ordered_json::array();
  for (const v1::SyncHolder& holder : object.holders()) {
    nlohmann::ordered_json h = {{"thread", holder.thread()}, {"count", holder.count()}};
    if (holder.party_case() == v1::SyncHolder::kProcess) h["process"] = holder.process();
    if (holder.party_case() == v1::SyncHolder::kSession) h["session"] = holder.session();
    holders.push_back(std::move(h));
  }
  nlohmann::ordered_json bound = nlohmann::ordered_json::array();
  for (const v1::SyncHolder& party : object.bound()) bound.push_back(PartyText(party));
  std::string owner = OwnerText(object);
  nlohmann::ordered_json json = {
      {"id", object.id()},
      {"name", object.name()},
      {"kind", SyncKindText(object.kind())},
      {"owner", owner.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(owner)},
      {"value", object.value()},
      {"initial_value", object.initial_value()},
      {"is_set", object.is_set()},
      {"parties", object.parties()},
      {"broken", object.broken()},
      {"broken_reason", object.broken_reason()},
      {"bound", bound},
      {"n_waiting", object.n_waiting()},
      {"holders", holders},
      {"lock_id", object.lock_id()},
  };
  return json.dump();
}

int HoldAndRun(SyncCommandIo& io, v1::SyncKind kind, const std::string& name, int64_t value,
               std::optional<absl::Duration> timeout, const std::vector<std::string>& command,
               const std::function<void(pid_t)>& started) {
  SyncClient sync(io.client);
  absl::StatusOr<v1::SyncObject> object = Resolve(sync, kind, name, value);
  if (!object.ok()) return Fail(io, object.status());
  // An admin key holds through a session of this command: if it dies, proctord releases.
  std::unique_ptr<Session> session;
  if (io.client.credentials().key_id == kAdminKeyId) {
    absl::StatusOr<std::unique_ptr<Session>> opened = io.client.OpenSession();
    if (!opened.ok()) return Fail(io, opened.status());
    session = *std::move(opened);
  }
  v1::SyncAcquireRequest acquire;
  acquire.set_id(object->id());
  if (timeout.has_value()) *acquire.mutable_timeout() = DurationToProto(*timeout);
  if (session != nullptr) acquire.set_session(session->id());
  absl::StatusOr<v1::SyncWaitResponse> got = sync.Acquire(acquire);
  if (!got.ok()) return Fail(io, got.status());
  if (!got->ok()) {
    io.err << "proctor: " << name << " not acquired within "
           << absl::FormatDuration(timeout.value_or(absl::ZeroDuration())) << std::endl;
    return kExitTimeout;
  }
  if (got->abandoned()) {
    io.err << "proctor: warning: " << name
           << " was abandoned: its last holder ended without releasing it" << std::endl;
  }
  int status = RunCommand(io, command, started);
  v1::SyncReleaseRequest release;
  release.set_id(object->id());
  if (session != nullptr) release.set_session(session->id());
  if (absl::StatusOr<v1::SyncObject> released = sync.Release(release); !released.ok()) {
    Fail(io, released.status());
  }
  return status;
}

int EventCommand(SyncCommandIo& io, const std::string& action, const std::string& name,
                 std::optional<absl::Duration> timeout) {
  SyncClient sync(io.client);
  absl::StatusOr<v1::SyncObject> event = Resolve(sync, v1::SYNC_EVENT, name, 0);
  if (!event.ok()) return Fail(io, event.status());
  if (action == "wait") {
    v1::SyncWaitRequest wait;
    wait.set_id(event->id());
    if (timeout.has_value()) *wait.mutable_timeout() = DurationToProto(*timeout);
    absl::StatusOr<v1::SyncWaitResponse> flag = sync.Wait(wait);
    if (!flag.ok()) return Fail(io, flag.status());
    return flag->ok() ? 0 : kExitTimeout;
  }
  v1::SyncUpdateRequest update;
  update.set_id(event->id());
  update.set_op(action == "set" ? v1::SYNC_EVENT_SET : v1::SYNC_EVENT_CLEAR);
  absl::StatusOr<v1::SyncObject> updated = sync.Update(update);
  if (!updated.ok()) return Fail(io, updated.status());
  if (io.json) io.out << SyncObjectJson(*updated) << std::endl;
  return 0;
}

int SyncListCommand(SyncCommandIo& io) {
  SyncClient sync(io.client);
  absl::StatusOr<std::vector<v1::SyncObject>> objects = sync.List(v1::SyncListRequest());
  if (!objects.ok()) return Fail(io, objects.status());
  if (io.json) {
    for (const v1::SyncObject& object : *objects) io.out << SyncObjectJson(object) << "\n";
    io.out << std::flush;
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "KIND", "NAME", "OWNER", "VALUE", "WAITING", "HOLDERS"}};
  for (const v1::SyncObject& o : *objects) {
    std::string value = o.kind() == v1::SYNC_EVENT     ? (o.is_set() ? "set" : "clear")
                        : o.kind() == v1::SYNC_BARRIER ? (o.broken() ? "broken"
                                                                     : absl::StrCat(o.parties()))
                        : o.kind() == v1::SYNC_CONDITION ? absl::StrCat("lock ", o.lock_id())
                                                         : absl::StrCat(o.value());
    std::vector<std::string> holders;
    for (const v1::SyncHolder& holder : o.holders()) holders.push_back(HolderText(holder));
    std::string owner = OwnerText(o);
    rows.push_back({absl::StrCat(o.id()), SyncKindText(o.kind()), o.name().empty() ? "-" : o.name(),
                    owner.empty() ? "-" : owner, value, absl::StrCat(o.n_waiting()),
                    holders.empty() ? "-" : absl::StrJoin(holders, ",")});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    io.out << line << "\n";
  }
  io.out << std::flush;
  return 0;
}

int SyncRemoveCommand(SyncCommandIo& io, const std::string& name) {
  SyncClient sync(io.client);
  uint64_t id = 0;
  if (!absl::SimpleAtoi(name, &id)) {
    v1::SyncListRequest filter;
    filter.set_name(name);
    absl::StatusOr<std::vector<v1::SyncObject>> found = sync.List(filter);
    if (!found.ok()) return Fail(io, found.status());
    if (found->size() != 1) {
      return Fail(io, absl::NotFoundError(
                          found->empty()
                              ? absl::StrCat("no sync object named ", name)
                              : absl::StrCat(found->size(), " sync objects are named ", name,
                                             "; give the id (proctor sync ls)")));
    }
    id = found->front().id();
  }
  if (absl::Status removed = sync.Remove(id); !removed.ok()) return Fail(io, removed);
  return 0;
}

}  // namespace proctor
