#include "client/sync.h"

#include <atomic>
#include <map>
#include <mutex>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/process.h"
#include "client/sync_client.h"

namespace proctor {

constexpr char kArgPrefix[] = "proctor-sync";

struct SyncObject::State {
  SyncClient* client = nullptr;
  uint64_t session = 0;  // the party with an admin key; 0 inside a worker
  uint64_t id = 0;
  v1::SyncKind kind = v1::SYNC_KIND_UNSPECIFIED;
  absl::Status status;
  std::atomic<bool> abandoned = false;
};

namespace {


// Threads are holders of their own (an RLock's owner is a thread), numbered per program.
uint64_t ThreadTag() {
  static std::atomic<uint64_t> next{1};
  thread_local const uint64_t tag = next++;
  return tag;
}

// One SyncClient per Client, for the life of the program, as Clients are kept.
SyncClient* SyncClientFor(Client* client) {
  static std::mutex mu;
  static auto* clients = new std::map<Client*, std::unique_ptr<SyncClient>>();
  std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<SyncClient>& found = (*clients)[client];
  if (found == nullptr) found = std::make_unique<SyncClient>(*client);
  return found.get();
}

// The client and party a new handle uses.
absl::Status Connect(const SyncOptions& options, SyncClient** client, uint64_t* session) {
  if (options.client != nullptr) {
    *client = SyncClientFor(options.client);
    return absl::OkStatus();
  }
  absl::StatusOr<Client*> found = DefaultClient();
  if (!found.ok()) return found.status();
  absl::StatusOr<uint64_t> in = DefaultSession();
  if (!in.ok()) return in.status();
  *client = SyncClientFor(*found);
  *session = *in;
  return absl::OkStatus();
}

// What "proctor-sync:<Kind>:<id>" names.
struct NamedObject {
  std::string kind;
  uint64_t id = 0;
};

std::optional<NamedObject> ParseArg(const std::string& arg) {
  std::vector<std::string> parts = absl::StrSplit(arg, ':');
  NamedObject named;
  if (parts.size() != 3 || parts[0] != kArgPrefix || !absl::SimpleAtoi(parts[2], &named.id) ||
      named.id == 0) {
    return std::nullopt;
  }
  named.kind = parts[1];
  return named;
}

[[noreturn]] void Throw(const absl::Status& status) {
  throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                          std::string(status.message()));
}

}  // namespace

SyncObject::SyncObject(v1::SyncCreateRequest request, const SyncOptions& options)
    : state_(std::make_shared<State>()) {
  state_->kind = request.kind();
  state_->status = Connect(options, &state_->client, &state_->session);
  if (!state_->status.ok()) return;
  request.set_session(state_->session);
  request.set_name(options.name);
  request.set_exist_ok(!options.name.empty());
  absl::StatusOr<v1::SyncObject> made = state_->client->Create(request);
  if (!made.ok()) {
    state_->status = made.status();
    return;
  }
  state_->id = made->id();
}

SyncObject::SyncObject(v1::SyncKind kind, const std::string& arg)
    : state_(std::make_shared<State>()) {
  state_->kind = kind;
  state_->status = CheckArg(kind, arg);
  if (state_->status.ok()) {
    state_->id = ParseArg(arg)->id;  // checked by CheckArg
    state_->status = Connect(SyncOptions{}, &state_->client, &state_->session);
  }
}

absl::Status SyncObject::CheckArg(v1::SyncKind kind, const std::string& arg) {
  std::optional<NamedObject> named = ParseArg(arg);
  if (!named.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", arg, "\" does not name a sync object (", kArgPrefix, ":<Kind>:<id>)"));
  }
  if (named->kind != SyncKindText(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", arg, "\" names a ", named->kind, ", not a ", SyncKindText(kind)));
  }
  return absl::OkStatus();
}

uint64_t SyncObject::id() const { return state_->id; }

absl::Status SyncObject::status() const { return state_->status; }

std::string SyncObject::ToArg() const {
  return absl::StrCat(kArgPrefix, ":", SyncKindText(state_->kind), ":", state_->id);
}

absl::StatusOr<v1::SyncObject> SyncObject::info() const {
  if (!state_->status.ok()) return state_->status;
  return state_->client->Get(state_->id);
}

absl::Status SyncObject::remove() {
  if (!state_->status.ok()) return state_->status;
  return state_->client->Remove(state_->id);
}

absl::StatusOr<v1::SyncWaitResponse> SyncObject::CallAcquire(
    bool blocking, std::optional<absl::Duration> timeout) const {
  if (!state_->status.ok()) return state_->status;
  v1::SyncAcquireRequest request;
  request.set_id(state_->id);
  request.set_blocking(blocking);
  if (timeout.has_value()) *request.mutable_timeout() = DurationToProto(*timeout);
  request.set_session(state_->session);
  request.set_thread(ThreadTag());
  absl::StatusOr<v1::SyncWaitResponse> answer = state_->client->Acquire(request);
  if (answer.ok() && answer->ok()) state_->abandoned = answer->abandoned();
  return answer;
}

absl::StatusOr<v1::SyncObject> SyncObject::CallRelease(int64_t n) const {
  if (!state_->status.ok()) return state_->status;
  v1::SyncReleaseRequest request;
  request.set_id(state_->id);
  request.set_n(n);
  request.set_session(state_->session);
  request.set_thread(ThreadTag());
  return state_->client->Release(request);
}

absl::StatusOr<v1::SyncWaitResponse> SyncObject::CallWait(
    std::optional<absl::Duration> timeout) const {
  if (!state_->status.ok()) return state_->status;
  v1::SyncWaitRequest request;
  request.set_id(state_->id);
  if (timeout.has_value()) *request.mutable_timeout() = DurationToProto(*timeout);
  request.set_session(state_->session);
  request.set_thread(ThreadTag());
  absl::StatusOr<v1::SyncWaitResponse> answer = state_->client->Wait(request);
  if (answer.ok()) state_->abandoned = answer->abandoned();
  return answer;
}

absl::StatusOr<v1::SyncObject> SyncObject::CallUpdate(v1::SyncOp op,
                                                      std::optional<int64_t> n) const {
  if (!state_->status.ok()) return state_->status;
  v1::SyncUpdateRequest request;
  request.set_id(state_->id);
  request.set_op(op);
  if (n.has_value()) request.set_n(*n);
  request.set_session(state_->session);
  request.set_thread(ThreadTag());
  return state_->client->Update(request);
}

absl::StatusOr<bool> BasicLock::acquire(bool blocking, std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallAcquire(blocking, timeout);
  if (!answer.ok()) return answer.status();
  return answer->ok();
}

absl::Status BasicLock::release() { return CallRelease(1).status(); }

bool BasicLock::abandoned() const { return state_->abandoned; }

absl::StatusOr<bool> BasicLock::locked() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->value() == 0;
}

void BasicLock::lock() {
  absl::StatusOr<bool> acquired = acquire();
  if (!acquired.ok()) Throw(acquired.status());
}

bool BasicLock::try_lock() {
  absl::StatusOr<bool> acquired = acquire(false);
  if (!acquired.ok()) Throw(acquired.status());
  return *acquired;
}

void BasicLock::unlock() {
  if (absl::Status s = release(); !s.ok()) Throw(s);
}

bool BasicLock::TryLockFor(absl::Duration d) {
  absl::StatusOr<bool> acquired = acquire(true, std::max(d, absl::ZeroDuration()));
  if (!acquired.ok()) Throw(acquired.status());
  return *acquired;
}

namespace {

v1::SyncCreateRequest OfKind(v1::SyncKind kind) {
  v1::SyncCreateRequest request;
  request.set_kind(kind);
  return request;
}

}  // namespace

Lock::Lock(const SyncOptions& options) : BasicLock(OfKind(v1::SYNC_LOCK), options) {}

absl::StatusOr<Lock> Lock::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_LOCK, arg); !s.ok()) return s;
  return Lock(arg);
}

RLock::RLock(const SyncOptions& options) : BasicLock(OfKind(v1::SYNC_RLOCK), options) {}

absl::StatusOr<RLock> RLock::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_RLOCK, arg); !s.ok()) return s;
  return RLock(arg);
}

Semaphore::Semaphore(int64_t value, const SyncOptions& options)
    : Semaphore(v1::SYNC_SEMAPHORE, value, options) {}

Semaphore::Semaphore(v1::SyncKind kind, int64_t value, const SyncOptions& options)
    : SyncObject(
          [&] {
            v1::SyncCreateRequest request = OfKind(kind);
            request.set_value(value);
            return request;
          }(),
          options) {}

absl::StatusOr<Semaphore> Semaphore::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_SEMAPHORE, arg); !s.ok()) return s;
  return Semaphore(v1::SYNC_SEMAPHORE, arg);
}

absl::StatusOr<bool> Semaphore::acquire(bool blocking, std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallAcquire(blocking, timeout);
  if (!answer.ok()) return answer.status();
  return answer->ok();
}

absl::Status Semaphore::release(int64_t n) {
  if (n < 1) return absl::InvalidArgumentError("n must be one or more");
  return CallRelease(n).status();
}

absl::StatusOr<int64_t> Semaphore::get_value() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->value();
}

bool Semaphore::abandoned() const { return state_->abandoned; }

BoundedSemaphore::BoundedSemaphore(int64_t value, const SyncOptions& options)
    : Semaphore(v1::SYNC_BOUNDED_SEMAPHORE, value, options) {}

absl::StatusOr<BoundedSemaphore> BoundedSemaphore::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_BOUNDED_SEMAPHORE, arg); !s.ok()) return s;
  return BoundedSemaphore(arg);
}

Event::Event(const SyncOptions& options) : SyncObject(OfKind(v1::SYNC_EVENT), options) {}

absl::StatusOr<Event> Event::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_EVENT, arg); !s.ok()) return s;
  return Event(arg);
}

absl::StatusOr<bool> Event::is_set() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->is_set();
}

absl::Status Event::set() { return CallUpdate(v1::SYNC_EVENT_SET).status(); }

absl::Status Event::clear() { return CallUpdate(v1::SYNC_EVENT_CLEAR).status(); }

absl::StatusOr<bool> Event::wait(std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallWait(timeout);
  if (!answer.ok()) return answer.status();
  return answer->ok();
}

Condition::Condition(const SyncOptions& options)
    : SyncObject(OfKind(v1::SYNC_CONDITION), options) {}

Condition::Condition(const BasicLock& lock, const SyncOptions& options)
    : SyncObject(
          [&] {
            v1::SyncCreateRequest request = OfKind(v1::SYNC_CONDITION);
            request.set_lock_id(lock.id());
            return request;
          }(),
          options) {
  if (!lock.status().ok()) state_->status = lock.status();
}

absl::StatusOr<Condition> Condition::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_CONDITION, arg); !s.ok()) return s;
  return Condition(arg);
}

absl::StatusOr<bool> Condition::acquire(bool blocking, std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallAcquire(blocking, timeout);
  if (!answer.ok()) return answer.status();
  return answer->ok();
}

absl::Status Condition::release() { return CallRelease(1).status(); }

void Condition::lock() {
  absl::StatusOr<bool> acquired = acquire();
  if (!acquired.ok()) Throw(acquired.status());
}

void Condition::unlock() {
  if (absl::Status s = release(); !s.ok()) Throw(s);
}

bool Condition::abandoned() const { return state_->abandoned; }

absl::StatusOr<bool> Condition::wait(std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallWait(timeout);
  if (!answer.ok()) return answer.status();
  return answer->ok();
}

absl::StatusOr<bool> Condition::wait_for(const std::function<bool()>& predicate,
                                         std::optional<absl::Duration> timeout) {
  // threading.Condition.wait_for: the timeout is for the whole wait, however many wakes.
  const absl::Time end =
      timeout.has_value() ? absl::Now() + *timeout : absl::InfiniteFuture();
  bool result = predicate();
  while (!result) {
    std::optional<absl::Duration> left;
    if (timeout.has_value()) {
      left = end - absl::Now();
      if (*left <= absl::ZeroDuration()) break;
    }
    absl::StatusOr<bool> woken = wait(left);
    if (!woken.ok()) return woken.status();
    result = predicate();
  }
  return result;
}

absl::Status Condition::notify(int64_t n) { return CallUpdate(v1::SYNC_NOTIFY, n).status(); }

absl::Status Condition::notify_all() { return CallUpdate(v1::SYNC_NOTIFY_ALL).status(); }

Barrier::Barrier(int64_t parties, std::optional<absl::Duration> timeout,
                 const SyncOptions& options)
    : SyncObject(
          [&] {
            v1::SyncCreateRequest request = OfKind(v1::SYNC_BARRIER);
            request.set_parties(parties);
            if (timeout.has_value()) *request.mutable_timeout() = DurationToProto(*timeout);
            return request;
          }(),
          options) {}

absl::StatusOr<Barrier> Barrier::FromArg(const std::string& arg) {
  if (absl::Status s = CheckArg(v1::SYNC_BARRIER, arg); !s.ok()) return s;
  return Barrier(arg);
}

absl::StatusOr<int64_t> Barrier::wait(std::optional<absl::Duration> timeout) {
  absl::StatusOr<v1::SyncWaitResponse> answer = CallWait(timeout);
  if (!answer.ok()) return answer.status();
  return answer->index();
}

namespace {

absl::Status BindTo(SyncClient& client, uint64_t id, v1::SyncBindRequest request) {
  request.set_id(id);
  return client.Bind(request).status();
}

}  // namespace

absl::Status Barrier::bind() {
  if (!state_->status.ok()) return state_->status;
  v1::SyncBindRequest request;
  if (state_->session != 0) {
    request.set_session(state_->session);
  } else if (uint64_t self = current_process().id(); self != 0) {
    request.set_process(self);
  } else {
    return absl::FailedPreconditionError(
        "this program is neither a worker nor in a session of its own (SyncOptions::client "
        "was given): nothing of it can end for the Barrier to notice; bind a Process instead");
  }
  return BindTo(*state_->client, state_->id, request);
}

absl::Status Barrier::bind(const Process& process) {
  if (!state_->status.ok()) return state_->status;
  if (process.id() == 0) {
    return absl::FailedPreconditionError("can only bind a started process to a Barrier");
  }
  v1::SyncBindRequest request;
  request.set_process(process.id());
  return BindTo(*state_->client, state_->id, request);
}

absl::Status Barrier::reset() { return CallUpdate(v1::SYNC_BARRIER_RESET).status(); }

absl::Status Barrier::abort() { return CallUpdate(v1::SYNC_BARRIER_ABORT).status(); }

absl::StatusOr<int64_t> Barrier::parties() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->parties();
}

absl::StatusOr<int64_t> Barrier::n_waiting() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->n_waiting();
}

absl::StatusOr<bool> Barrier::broken() const {
  absl::StatusOr<v1::SyncObject> now = info();
  if (!now.ok()) return now.status();
  return now->broken();
}

namespace internal {

std::optional<uint64_t> BarrierOfArg(const std::string& arg) {
  std::optional<NamedObject> named = ParseArg(arg);
  if (!named.has_value() || named->kind != SyncKindText(v1::SYNC_BARRIER)) return std::nullopt;
  return named->id;
}

}  // namespace internal

}  // namespace proctor
