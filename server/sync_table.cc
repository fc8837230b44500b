#include "server/sync_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "proctor/internal/sync_memo.pb.h"
#include "server/proctor_service.h"

namespace proctor {
namespace {

bool IsLockLike(SyncKind kind) {
  return kind == SyncKind::kLock || kind == SyncKind::kRLock || kind == SyncKind::kSemaphore ||
         kind == SyncKind::kBoundedSemaphore;
}

bool IsSemaphore(SyncKind kind) {
  return kind == SyncKind::kSemaphore || kind == SyncKind::kBoundedSemaphore;
}

// "a Lock", "an Event", "an RLock".
std::string WithArticle(SyncKind kind) {
  absl::string_view name = SyncKindName(kind);
  bool vowel = name[0] == 'E' || name[0] == 'R';  // "an RLock": said "ar-lock"
  return absl::StrCat(vowel ? "an " : "a ", name);
}

absl::Status ValidateName(const std::string& name) {
  if (name.empty()) return absl::OkStatus();
  if (name.size() > SyncTable::kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a sync object's name has at most ",
                                                   SyncTable::kMaxNameBytes, " bytes, not ",
                                                   name.size()));
  }
  bool digits_only = true;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != ':' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("sync object name \"", absl::CHexEscape(name),
                       "\" may hold only letters, digits and \"_.:-\""));
    }
    digits_only = digits_only && absl::ascii_isdigit(c);
  }
  if (digits_only) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sync object name \"", name, "\" is a number, which would read as an id; add a letter"));
  }
  return absl::OkStatus();
}

absl::Status BrokenBarrier(uint64_t id, absl::string_view reason) {
  return absl::AbortedError(absl::StrCat("Barrier ", id, " is broken (BrokenBarrierError): ",
                                         reason, "; reset() makes it usable again"));
}

// "process 3, process 4".
std::string PartyList(const std::vector<SyncParty>& parties) {
  std::string list;
  for (const SyncParty& party : parties) {
    absl::StrAppend(&list, list.empty() ? "" : ", ", party.ToString());
  }
  return list;
}

// A party as a SyncHolder's oneof shows it.
void SetParty(const SyncParty& party, v1::SyncHolder* out) {
  if (party.process != 0) {
    out->set_process(party.process);
  } else if (party.session != 0) {
    out->set_session(party.session);
  }
}

SyncParty PartyOf(const v1::SyncHolder& holder) {
  return SyncParty{.process = holder.process(), .session = holder.session()};
}

std::string NoteKey(uint64_t id) { return absl::StrCat("sync/", id); }

}  // namespace

std::string SyncParty::ToString() const {
  if (process != 0) return absl::StrCat("process ", process);
  if (session != 0) return absl::StrCat("session ", session);
  return "the admin key";
}

absl::string_view SyncKindName(SyncKind kind) {
  switch (kind) {
    case SyncKind::kLock:
      return "Lock";
    case SyncKind::kRLock:
      return "RLock";
    case SyncKind::kSemaphore:
      return "Semaphore";
    case SyncKind::kBoundedSemaphore:
      return "BoundedSemaphore";
    case SyncKind::kEvent:
      return "Event";
    case SyncKind::kCondition:
      return "Condition";
    case SyncKind::kBarrier:
      return "Barrier";
  }
  return "?";
}

void ToProto(const SyncInfo& info, v1::SyncObject* out) {
  out->set_id(info.id);
  out->set_name(info.name);
  out->set_kind(static_cast<v1::SyncKind>(info.kind));
  if (info.owner.has_value()) {
    if (info.owner->process != 0) {
      out->set_owner_process(info.owner->process);
    } else {
      out->set_owner_session(info.owner->session);
    }
  }
  out->set_value(info.value);
  out->set_initial_value(info.initial_value);
  out->set_is_set(info.is_set);
  out->set_parties(info.parties);
  out->set_broken(info.broken);
  out->set_n_waiting(info.n_waiting);
  for (const SyncHeld& held : info.holders) {
    v1::SyncHolder* holder = out->add_holders();
    SetParty(held.holder.party, holder);
    holder->set_thread(held.holder.thread);
    holder->set_count(held.count);
  }
  out->set_lock_id(info.lock_id);
  if (info.timeout.has_value()) *out->mutable_timeout() = ToDurationProto(*info.timeout);
  for (const SyncParty& party : info.bound) SetParty(party, out->add_bound());
  out->set_broken_reason(info.broken_reason);
}

SyncInfo FromProto(const v1::SyncObject& object) {
  SyncInfo info;
  info.id = object.id();
  info.name = object.name();
  info.kind = static_cast<SyncKind>(object.kind());
  if (object.has_owner_process()) info.owner = SyncParty{.process = object.owner_process()};
  if (object.has_owner_session()) info.owner = SyncParty{.session = object.owner_session()};
  info.value = object.value();
  info.initial_value = object.initial_value();
  info.is_set = object.is_set();
  info.parties = object.parties();
  info.broken = object.broken();
  info.n_waiting = object.n_waiting();
  for (const v1::SyncHolder& holder : object.holders()) {
    info.holders.push_back(SyncHeld{
        .holder = {.party = PartyOf(holder), .thread = holder.thread()}, .count = holder.count()});
  }
  info.lock_id = object.lock_id();
  if (object.has_timeout()) info.timeout = FromDurationProto(object.timeout());
  for (const v1::SyncHolder& party : object.bound()) info.bound.push_back(PartyOf(party));
  info.broken_reason = object.broken_reason();
  return info;
}

SyncTable::SyncTable(Timers& timers, SyncLimits limits, Alive alive)
    : timers_(timers),
      limits_(limits),
      alive_(std::move(alive)),
      memo_(std::make_unique<internal::SyncMemo>()) {}

SyncTable::~SyncTable() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, waiter] : waiters_) {
    if (waiter.timer != 0) timers_.Cancel(waiter.timer);
  }
}

SyncTable::Out::~Out() {
  for (Delivery& delivery : deliveries_) {
    if (!delivery.reply) continue;
    bool taken = delivery.reply(delivery.result);
    // The caller went away between the grant and its answer: the grant goes back.
    if (!taken && delivery.units > 0) table_.GiveBack(delivery);
  }
  for (const SyncParty& party : check_) {
    if (!party.admin() && table_.alive_ != nullptr && !table_.alive_(party)) {
      table_.PartyEnded(party);
    }
  }
}

absl::StatusOr<SyncTable::Object*> SyncTable::FindLocked(uint64_t id) {
  auto it = objects_.find(id);
  if (it == objects_.end()) {
    return absl::NotFoundError(absl::StrCat("no sync object with id ", id));
  }
  return &it->second;
}

absl::StatusOr<SyncTable::Object*> SyncTable::LockLikeLocked(uint64_t id, absl::string_view call) {
  absl::StatusOr<Object*> object = FindLocked(id);
  if (!object.ok()) return object;
  if ((*object)->info.kind == SyncKind::kCondition) return FindLocked((*object)->info.lock_id);
  if (!IsLockLike((*object)->info.kind)) {
    return absl::InvalidArgumentError(absl::StrCat("sync object ", id, " is ",
                                                   WithArticle((*object)->info.kind),
                                                   ", which has no ", call, "()"));
  }
  return object;
}

absl::StatusOr<SyncTable::Object*> SyncTable::KindLocked(uint64_t id, SyncKind kind,
                                                         absl::string_view call) {
  absl::StatusOr<Object*> object = FindLocked(id);
  if (!object.ok()) return object;
  if ((*object)->info.kind != kind) {
    return absl::InvalidArgumentError(absl::StrCat("sync object ", id, " is ",
                                                   WithArticle((*object)->info.kind),
                                                   ", which has no ", call, "(); ", call,
                                                   "() is for ", WithArticle(kind)));
  }
  return object;
}

void SyncTable::Touch(const SyncParty& party, uint64_t object) {
  if (!party.admin()) touched_[party].insert(object);
}

int64_t SyncTable::HeldBy(const Object& lock, const SyncHolderId& holder) const {
  int64_t count = 0;
  for (const SyncHeld& held : lock.info.holders) {
    if (held.holder == holder) count += held.count;
  }
  return count;
}

bool SyncTable::CanTake(const Object& lock, const SyncHolderId& holder) const {
  if (lock.info.kind == SyncKind::kRLock) {
    return lock.info.holders.empty() || lock.info.holders.front().holder == holder;
  }
  return lock.info.value > 0;
}

bool SyncTable::Take(Object& lock, const SyncHolderId& holder, int64_t units) {
  if (lock.info.kind == SyncKind::kRLock) {
    lock.info.value = 0;
  } else {
    lock.info.value -= units;
  }
  auto it = std::find_if(lock.info.holders.begin(), lock.info.holders.end(),
                         [&](const SyncHeld& held) { return held.holder == holder; });
  if (it == lock.info.holders.end()) {
    lock.info.holders.push_back(SyncHeld{holder, units});
  } else {
    it->count += units;
  }
  Touch(holder.party, lock.info.id);
  MarkLocked(lock);
  if (lock.abandoned == 0) return false;
  --lock.abandoned;
  return true;
}

int64_t SyncTable::Drop(Object& lock, const SyncHolderId& holder, int64_t units) {
  auto it = std::find_if(lock.info.holders.begin(), lock.info.holders.end(),
                         [&](const SyncHeld& held) { return held.holder == holder; });
  if (it == lock.info.holders.end()) return 0;
  MarkLocked(lock);
  int64_t dropped = units < 0 ? it->count : std::min(units, it->count);
  it->count -= dropped;
  if (it->count == 0) lock.info.holders.erase(it);
  if (lock.info.kind == SyncKind::kRLock) {
    if (lock.info.holders.empty()) lock.info.value = 1;
  } else {
    lock.info.value += dropped;
  }
  return dropped;
}

void SyncTable::ServeLocked(Object& lock, Out& out) {
  while (!lock.queue.empty()) {
    const Waiter& head = waiters_.at(lock.queue.front());
    if (!CanTake(lock, head.holder)) return;
    bool abandoned = Take(lock, head.holder, head.units);
    Waiter granted = UnparkLocked(head.id);
    SyncWaitResult result{.ok = granted.phase == Phase::kAcquire || granted.notified,
                          .abandoned = abandoned};
    out.Deliver(Delivery{.reply = std::move(granted.reply),
                         .result = result,
                         .object = lock.info.id,
                         .holder = granted.holder,
                         .units = granted.units});
  }
}

SyncTable::WaiterId SyncTable::ParkLocked(Object& object, Waiter waiter,
                                          std::optional<absl::Duration> timeout) {
  if (waiter.id == 0) waiter.id = next_waiter_++;
  waiter.queue_object = object.info.id;
  object.queue.push_back(waiter.id);
  waiter.position = std::prev(object.queue.end());
  if (timeout.has_value()) {
    WaiterId id = waiter.id;
    waiter.timer = timers_.After(std::max(*timeout, absl::ZeroDuration()),
                                 [this, id] { OnTimeout(id); });
  }
  Touch(waiter.holder.party, object.info.id);
  WaiterId id = waiter.id;
  waiters_.emplace(id, std::move(waiter));
  return id;
}

SyncTable::Waiter SyncTable::UnparkLocked(WaiterId id) {
  auto it = waiters_.find(id);
  Waiter waiter = std::move(it->second);
  waiters_.erase(it);
  objects_.at(waiter.queue_object).queue.erase(waiter.position);
  if (waiter.timer != 0) timers_.Cancel(waiter.timer);
  waiter.timer = 0;
  return waiter;
}

SyncTable::WaiterId SyncTable::RequeueOnLockLocked(Waiter& waiter, uint64_t lock_id, Out& out) {
  Object& lock = objects_.at(lock_id);
  WaiterId id = ParkLocked(lock, std::move(waiter), std::nullopt);
  ServeLocked(lock, out);
  return id;
}

void SyncTable::AnswerLocked(Waiter waiter, absl::StatusOr<SyncWaitResult> result, Out& out) {
  out.Deliver(Delivery{.reply = std::move(waiter.reply), .result = std::move(result)});
}

void SyncTable::BreakBarrierLocked(Object& barrier, const std::string& reason, Out& out) {
  if (!barrier.info.broken) barrier.info.broken_reason = reason;  // the first cause is kept
  barrier.info.broken = true;
  MarkLocked(barrier);
  while (!barrier.queue.empty()) {
    AnswerLocked(UnparkLocked(barrier.queue.front()), BrokenBarrier(barrier.info.id, reason), out);
  }
}

SyncInfo SyncTable::SnapshotLocked(const Object& object) const {
  SyncInfo info = object.info;
  info.n_waiting = static_cast<int64_t>(object.queue.size());
  return info;
}

absl::StatusOr<SyncInfo> SyncTable::Create(const SyncCreateSpec& spec) {
  if (absl::Status s = ValidateName(spec.name); !s.ok()) return s;
  if (IsSemaphore(spec.kind) && spec.value < 0) {
    return absl::InvalidArgumentError("semaphore initial value must be >= 0");
  }
  if (spec.kind == SyncKind::kBarrier) {
    if (spec.parties < 1) return absl::InvalidArgumentError("parties must be >= 1");
    if (spec.timeout.has_value() && *spec.timeout < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("timeout value must be a non-negative number");
    }
  }
  Out out(*this);
  Locked lock(*this);
  SyncParty owner_key = spec.owner.value_or(SyncParty{});
  if (!spec.name.empty()) {
    auto it = names_.find(std::make_pair(owner_key, spec.name));
    if (it != names_.end()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "a sync object named ", spec.name, " already exists in this scope: ",
          WithArticle(objects_.at(it->second).info.kind), " with id ", it->second));
    }
  }
  if (spec.kind == SyncKind::kCondition && spec.lock_id != 0) {
    absl::StatusOr<Object*> given = FindLocked(spec.lock_id);
    if (!given.ok()) return given.status();
    const SyncInfo& lock_info = (*given)->info;
    if (lock_info.kind != SyncKind::kLock && lock_info.kind != SyncKind::kRLock) {
      return absl::InvalidArgumentError(
          absl::StrCat("a Condition's lock must be a Lock or an RLock; sync object ",
                       spec.lock_id, " is ", WithArticle(lock_info.kind)));
    }
    if (lock_info.owner != spec.owner) {
      return absl::FailedPreconditionError(absl::StrCat(
          "a Condition and its lock must have the same owner, and lock ", spec.lock_id,
          " belongs to ",
          lock_info.owner.has_value() ? lock_info.owner->ToString() : "nobody (top level)"));
    }
  }
  size_t needed = spec.kind == SyncKind::kCondition && spec.lock_id == 0 ? 2 : 1;
  size_t& in_tree = per_tree_[spec.tree];
  if (in_tree + needed > limits_.max_objects_per_tree) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the tree of ", spec.tree, " already has ", in_tree,
                     " sync objects, the limit (proctord --max-sync-objects=",
                     limits_.max_objects_per_tree, "); remove some first"));
  }
  absl::StatusOr<uint64_t> first_id = NextIdLocked();
  if (!first_id.ok()) return first_id.status();
  absl::StatusOr<uint64_t> second_id = uint64_t{0};
  if (needed == 2) second_id = NextIdLocked();
  if (!second_id.ok()) return second_id.status();
  bool first = true;
  auto make = [&](SyncKind kind, const std::string& name) -> Object& {
    mu_.AssertHeld();  // called below, under the lock
    uint64_t id = first ? *first_id : *second_id;
    first = false;
    Object& object = objects_[id];
    object.tree = spec.tree;
    object.info.id = id;
    object.info.name = name;
    object.info.kind = kind;
    object.info.owner = spec.owner;
    if (IsSemaphore(kind)) {
      object.info.value = object.info.initial_value = spec.value;
    } else if (IsLockLike(kind)) {
      object.info.value = object.info.initial_value = 1;
    }
    if (!name.empty()) names_[std::make_pair(owner_key, name)] = id;
    if (spec.owner.has_value()) Touch(*spec.owner, id);
    ++in_tree;
    MarkLocked(object);
    return object;
  };
  Object& object = make(spec.kind, spec.name);
  if (spec.kind == SyncKind::kBarrier) {
    object.info.parties = spec.parties;
    object.info.timeout = spec.timeout;
  }
  if (spec.kind == SyncKind::kCondition) {
    uint64_t lock_id = spec.lock_id;
    if (lock_id == 0) {
      lock_id = make(SyncKind::kRLock, "").info.id;
      object.own_lock = true;
    }
    object.info.lock_id = lock_id;
    objects_.at(lock_id).conditions.push_back(object.info.id);
  }
  if (spec.owner.has_value()) out.Check(*spec.owner);
  return SnapshotLocked(object);
}

void SyncTable::RemoveLocked(uint64_t id, const absl::Status& why, Out& out) {
  auto it = objects_.find(id);
  if (it == objects_.end()) return;
  Object& object = it->second;
  MarkLocked(object);  // gone: its note is dropped
  while (!object.queue.empty()) AnswerLocked(UnparkLocked(object.queue.front()), why, out);
  uint64_t own_lock = 0;
  if (object.info.kind == SyncKind::kCondition) {
    Object& lock = objects_.at(object.info.lock_id);
    std::erase(lock.conditions, id);
    if (object.own_lock) own_lock = object.info.lock_id;
  }
  if (!object.info.name.empty()) {
    names_.erase(std::make_pair(object.info.owner.value_or(SyncParty{}), object.info.name));
  }
  if (--per_tree_[object.tree] == 0) per_tree_.erase(object.tree);
  objects_.erase(it);
  if (own_lock != 0) RemoveLocked(own_lock, why, out);
}

absl::Status SyncTable::Remove(uint64_t id) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> object = FindLocked(id);
  if (!object.ok()) return object.status();
  if (!(*object)->conditions.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sync object ", id, " is the lock of Condition ", (*object)->conditions.front(),
        "; remove the Condition first"));
  }
  RemoveLocked(id, absl::NotFoundError(absl::StrCat("sync object ", id, " was removed")), out);
  return absl::OkStatus();
}

absl::StatusOr<SyncInfo> SyncTable::Get(uint64_t id) {
  Locked lock(*this);
  absl::StatusOr<Object*> object = FindLocked(id);
  if (!object.ok()) return object.status();
  return SnapshotLocked(**object);
}

std::optional<SyncInfo> SyncTable::FindByName(const std::optional<SyncParty>& owner,
                                              absl::string_view name) {
  Locked lock(*this);
  auto it = names_.find(std::make_pair(owner.value_or(SyncParty{}), std::string(name)));
  if (it == names_.end()) return std::nullopt;
  return SnapshotLocked(objects_.at(it->second));
}

std::vector<SyncInfo> SyncTable::List() {
  Locked lock(*this);
  std::vector<SyncInfo> all;
  all.reserve(objects_.size());
  for (const auto& [id, object] : objects_) all.push_back(SnapshotLocked(object));
  std::sort(all.begin(), all.end(),
            [](const SyncInfo& a, const SyncInfo& b) { return a.id < b.id; });
  return all;
}

SyncTable::WaiterId SyncTable::Acquire(uint64_t id, const SyncHolderId& holder, bool blocking,
                                       std::optional<absl::Duration> timeout, Reply reply) {
  Out out(*this);
  Locked lock(*this);
  auto answer = [&](absl::StatusOr<SyncWaitResult> result, uint64_t object = 0,
                    int64_t units = 0) {
    out.Deliver(Delivery{.reply = std::move(reply),
                         .result = std::move(result),
                         .object = object,
                         .holder = holder,
                         .units = units});
    return WaiterId{0};
  };
  if (!blocking && timeout.has_value()) {
    return answer(absl::InvalidArgumentError("can't specify a timeout for a non-blocking call"));
  }
  if (timeout.has_value() && *timeout < absl::ZeroDuration()) {
    return answer(absl::InvalidArgumentError("timeout value must be a non-negative number"));
  }
  absl::StatusOr<Object*> found = LockLikeLocked(id, "acquire");
  if (!found.ok()) return answer(found.status());
  Object& object = **found;
  // An RLock's owner re-enters at once; anyone else goes behind those already waiting.
  bool reenter = object.info.kind == SyncKind::kRLock && HeldBy(object, holder) > 0;
  if (reenter || (object.queue.empty() && CanTake(object, holder))) {
    bool abandoned = Take(object, holder, 1);
    out.Check(holder.party);
    return answer(SyncWaitResult{.ok = true, .abandoned = abandoned}, object.info.id, 1);
  }
  if (!blocking || (timeout.has_value() && *timeout <= absl::ZeroDuration())) {
    return answer(SyncWaitResult{.ok = false});
  }
  if (object.queue.size() >= limits_.max_waiters_per_object) {
    return answer(absl::ResourceExhaustedError(absl::StrCat(
        "sync object ", object.info.id, " already has ", object.queue.size(),
        " waiters, the limit (proctord --max-sync-waiters=", limits_.max_waiters_per_object,
        ")")));
  }
  out.Check(holder.party);
  return ParkLocked(
      object, Waiter{.holder = holder, .reply = std::move(reply), .phase = Phase::kAcquire},
      timeout);
}

absl::StatusOr<SyncInfo> SyncTable::Release(uint64_t id, const SyncHolderId& holder, int64_t n) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = LockLikeLocked(id, "release");
  if (!found.ok()) return found.status();
  Object& object = **found;
  MarkLocked(object);
  switch (object.info.kind) {
    case SyncKind::kLock:
      // multiprocessing lets any process release a Lock.
      if (object.info.value > 0) return absl::FailedPreconditionError("release unlocked lock");
      object.info.holders.clear();
      object.info.value = 1;
      break;
    case SyncKind::kRLock:
      if (HeldBy(object, holder) == 0) {
        return absl::FailedPreconditionError("cannot release un-acquired lock");
      }
      Drop(object, holder, 1);
      break;
    default: {
      if (n < 1) return absl::InvalidArgumentError("n must be one or more");
      if (object.info.kind == SyncKind::kBoundedSemaphore &&
          object.info.value + n > object.info.initial_value) {
        return absl::FailedPreconditionError("Semaphore released too many times");
      }
      // The releaser's own units first, then the oldest holders': a dead holder's units
      // are then never returned twice.
      int64_t left = n - Drop(object, holder, n);
      object.info.value += left;
      for (auto it = object.info.holders.begin(); left > 0 && it != object.info.holders.end();) {
        int64_t taken = std::min(left, it->count);
        it->count -= taken;
        left -= taken;
        it = it->count == 0 ? object.info.holders.erase(it) : std::next(it);
      }
    }
  }
  ServeLocked(object, out);
  return SnapshotLocked(object);
}

SyncTable::WaiterId SyncTable::Wait(uint64_t id, const SyncHolderId& holder,
                                    std::optional<absl::Duration> timeout, Reply reply) {
  Out out(*this);
  Locked lock(*this);
  auto answer = [&](absl::StatusOr<SyncWaitResult> result) {
    out.Deliver(Delivery{.reply = std::move(reply), .result = std::move(result)});
    return WaiterId{0};
  };
  absl::StatusOr<Object*> found = FindLocked(id);
  if (!found.ok()) return answer(found.status());
  Object& object = **found;
  auto room = [&]() -> absl::Status {
    if (object.queue.size() < limits_.max_waiters_per_object) return absl::OkStatus();
    return absl::ResourceExhaustedError(absl::StrCat(
        "sync object ", id, " already has ", object.queue.size(),
        " waiters, the limit (proctord --max-sync-waiters=", limits_.max_waiters_per_object,
        ")"));
  };
  bool expired = timeout.has_value() && *timeout <= absl::ZeroDuration();
  switch (object.info.kind) {
    case SyncKind::kEvent: {
      if (object.info.is_set || expired) return answer(SyncWaitResult{.ok = object.info.is_set});
      if (absl::Status s = room(); !s.ok()) return answer(s);
      out.Check(holder.party);
      return ParkLocked(
          object, Waiter{.holder = holder, .reply = std::move(reply), .phase = Phase::kEvent},
          timeout);
    }
    case SyncKind::kCondition: {
      Object& lock_object = objects_.at(object.info.lock_id);
      if (HeldBy(lock_object, holder) == 0) {
        return answer(absl::FailedPreconditionError("cannot wait on un-acquired lock"));
      }
      if (absl::Status s = room(); !s.ok()) return answer(s);
      // The whole recursion level goes now and comes back with the lock.
      int64_t level = Drop(lock_object, holder, -1);
      Waiter waiter{.holder = holder,
                    .reply = std::move(reply),
                    .phase = Phase::kCondition,
                    .units = level};
      out.Check(holder.party);
      if (expired) {
        WaiterId id = RequeueOnLockLocked(waiter, lock_object.info.id, out);
        return waiters_.contains(id) ? id : 0;
      }
      WaiterId parked = ParkLocked(object, std::move(waiter), timeout);
      ServeLocked(lock_object, out);
      return parked;
    }
    case SyncKind::kBarrier: {
      if (object.info.broken) return answer(BrokenBarrier(id, object.info.broken_reason));
      if (object.participants.insert(holder.party).second) MarkLocked(object);
      Touch(holder.party, id);
      int64_t index = static_cast<int64_t>(object.queue.size());
      if (index + 1 == object.info.parties) {
        while (!object.queue.empty()) {
          Waiter passed = UnparkLocked(object.queue.front());
          int64_t their_index = passed.index;
          AnswerLocked(std::move(passed), SyncWaitResult{.ok = true, .index = their_index}, out);
        }
        ++object.generation;
        MarkLocked(object);
        return answer(SyncWaitResult{.ok = true, .index = index});
      }
      std::optional<absl::Duration> limit = timeout.has_value() ? timeout : object.info.timeout;
      if (limit.has_value() && *limit <= absl::ZeroDuration()) {
        // As threading.Barrier: a wait that times out breaks the barrier for everyone.
        std::string reason = absl::StrCat("the wait of ", holder.party.ToString(), " timed out");
        BreakBarrierLocked(object, reason, out);
        return answer(BrokenBarrier(id, reason));
      }
      if (absl::Status s = room(); !s.ok()) return answer(s);
      out.Check(holder.party);
      return ParkLocked(object,
                         Waiter{.holder = holder,
                                .reply = std::move(reply),
                                .phase = Phase::kBarrier,
                                .index = index},
                         limit);
    }
    default:
      return answer(absl::InvalidArgumentError(absl::StrCat(
          "sync object ", id, " is ", WithArticle(object.info.kind),
          ", which has no wait(); wait() is for an Event, a Condition or a Barrier")));
  }
}

absl::StatusOr<SyncInfo> SyncTable::Set(uint64_t id) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kEvent, "set");
  if (!found.ok()) return found.status();
  Object& event = **found;
  event.info.is_set = true;
  MarkLocked(event);
  while (!event.queue.empty()) {
    AnswerLocked(UnparkLocked(event.queue.front()), SyncWaitResult{.ok = true}, out);
  }
  return SnapshotLocked(event);
}

absl::StatusOr<SyncInfo> SyncTable::Clear(uint64_t id) {
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kEvent, "clear");
  if (!found.ok()) return found.status();
  (*found)->info.is_set = false;
  MarkLocked(**found);
  return SnapshotLocked(**found);
}

absl::StatusOr<SyncInfo> SyncTable::Notify(uint64_t id, const SyncHolderId& holder, int64_t n) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kCondition, "notify");
  if (!found.ok()) return found.status();
  Object& condition = **found;
  if (HeldBy(objects_.at(condition.info.lock_id), holder) == 0) {
    return absl::FailedPreconditionError("cannot notify on un-acquired lock");
  }
  for (int64_t woken = 0; (n < 0 || woken < n) && !condition.queue.empty(); ++woken) {
    Waiter waiter = UnparkLocked(condition.queue.front());
    waiter.notified = true;
    RequeueOnLockLocked(waiter, condition.info.lock_id, out);
  }
  return SnapshotLocked(condition);
}

absl::StatusOr<SyncInfo> SyncTable::Abort(uint64_t id) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kBarrier, "abort");
  if (!found.ok()) return found.status();
  BreakBarrierLocked(**found, "it was aborted", out);
  return SnapshotLocked(**found);
}

absl::StatusOr<SyncInfo> SyncTable::Reset(uint64_t id) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kBarrier, "reset");
  if (!found.ok()) return found.status();
  Object& barrier = **found;
  // Those waiting get BrokenBarrierError, as in threading.
  BreakBarrierLocked(barrier, "it was reset while waited on", out);
  barrier.info.broken = false;
  barrier.info.broken_reason.clear();
  ++barrier.generation;
  MarkLocked(barrier);
  return SnapshotLocked(barrier);
}

absl::Status SyncTable::RoomLocked(const Object& barrier, absl::string_view newcomer) const {
  const SyncInfo& info = barrier.info;
  if (static_cast<int64_t>(info.bound.size()) + barrier.reserved < info.parties) {
    return absl::OkStatus();
  }
  std::string who = PartyList(info.bound);
  if (barrier.reserved > 0) {
    absl::StrAppend(&who, who.empty() ? "" : " and ", barrier.reserved,
                    " process(es) being started");
  }
  return absl::FailedPreconditionError(absl::StrCat("Barrier ", info.id, " has ", info.parties,
                                                    " parties, and all are bound already (", who,
                                                    "): ", newcomer, " cannot be one more"));
}

absl::Status SyncTable::CanBindLocked(const Object& barrier, const SyncParty& party) const {
  if (party.admin()) {
    return absl::InvalidArgumentError(
        "the admin key itself never ends: bind a process or a session");
  }
  const std::vector<SyncParty>& bound = barrier.info.bound;
  if (std::find(bound.begin(), bound.end(), party) != bound.end()) {
    return absl::AlreadyExistsError(
        absl::StrCat(party.ToString(), " is already a bound party of Barrier ", barrier.info.id));
  }
  return RoomLocked(barrier, party.ToString());
}

void SyncTable::BindLocked(Object& barrier, const SyncParty& party) {
  barrier.info.bound.push_back(party);
  Touch(party, barrier.info.id);
  MarkLocked(barrier);
}

absl::StatusOr<SyncInfo> SyncTable::Bind(uint64_t id, const SyncParty& party) {
  Out out(*this);
  Locked lock(*this);
  absl::StatusOr<Object*> found = KindLocked(id, SyncKind::kBarrier, "bind");
  if (!found.ok()) return found.status();
  Object& barrier = **found;
  if (absl::Status s = CanBindLocked(barrier, party); !s.ok()) return s;
  BindLocked(barrier, party);
  out.Check(party);  // one that has ended already breaks it now
  return SnapshotLocked(barrier);
}

absl::StatusOr<SyncTable::ReservationId> SyncTable::Reserve(const std::vector<uint64_t>& ids) {
  Locked lock(*this);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (std::find(ids.begin(), ids.begin() + i, ids[i]) != ids.begin() + i) {
      return absl::InvalidArgumentError(
          absl::StrCat("Barrier ", ids[i], " is named twice: a process is one party of it"));
    }
    absl::StatusOr<Object*> found = KindLocked(ids[i], SyncKind::kBarrier, "bind");
    if (!found.ok()) return found.status();
    if (absl::Status s = RoomLocked(**found, "a new process"); !s.ok()) return s;
  }
  for (uint64_t id : ids) ++objects_.at(id).reserved;
  ReservationId reservation = next_reservation_++;
  reservations_[reservation] = ids;
  return reservation;
}

void SyncTable::BindReserved(ReservationId reservation, const SyncParty& party) {
  Out out(*this);
  Locked lock(*this);
  auto node = reservations_.extract(reservation);
  if (node.empty()) return;
  for (uint64_t id : node.mapped()) {
    auto it = objects_.find(id);
    if (it == objects_.end()) continue;  // removed meanwhile
    --it->second.reserved;
    BindLocked(it->second, party);
  }
  // A process that ended before its binding breaks what it was bound to now.
  out.Check(party);
}

void SyncTable::DropReserved(ReservationId reservation) {
  Locked lock(*this);
  auto node = reservations_.extract(reservation);
  if (node.empty()) return;
  for (uint64_t id : node.mapped()) {
    if (auto it = objects_.find(id); it != objects_.end()) --it->second.reserved;
  }
}

void SyncTable::OnTimeout(WaiterId id) {
  Out out(*this);
  Locked lock(*this);
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  it->second.timer = 0;  // it has fired
  Object& object = objects_.at(it->second.queue_object);
  switch (it->second.phase) {
    case Phase::kAcquire:
      AnswerLocked(UnparkLocked(id), SyncWaitResult{.ok = false}, out);
      break;
    case Phase::kEvent:
      AnswerLocked(UnparkLocked(id), SyncWaitResult{.ok = object.info.is_set}, out);
      break;
    case Phase::kCondition: {
      // Not notified in time: it still gets the lock back before it returns.
      Waiter waiter = UnparkLocked(id);
      RequeueOnLockLocked(waiter, object.info.lock_id, out);
      break;
    }
    case Phase::kBarrier:
      BreakBarrierLocked(
          object, absl::StrCat("the wait of ", it->second.holder.party.ToString(), " timed out"),
          out);
      break;
  }
}

void SyncTable::Cancel(WaiterId id) {
  Out out(*this);
  Locked lock(*this);
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  Object& object = objects_.at(it->second.queue_object);
  Waiter gone = UnparkLocked(id);
  if (gone.phase == Phase::kBarrier) {
    BreakBarrierLocked(object,
                       absl::StrCat("the wait of ", gone.holder.party.ToString(),
                                    " ended before the barrier was passed (its call was "
                                    "cancelled: the caller went away or gave up)"),
                       out);
  } else if (IsLockLike(object.info.kind)) {
    ServeLocked(object, out);
  }
}

void SyncTable::GiveBack(const Delivery& delivery) {
  Out out(*this);
  Locked lock(*this);
  auto it = objects_.find(delivery.object);
  if (it == objects_.end()) return;
  Object& lock_object = it->second;
  MarkLocked(lock_object);
  if (Drop(lock_object, delivery.holder, delivery.units) > 0 && delivery.result.ok() &&
      delivery.result->abandoned) {
    ++lock_object.abandoned;  // nobody was told: the next acquirer is
  }
  ServeLocked(lock_object, out);
}

void SyncTable::PartyEnded(const SyncParty& party) {
  if (party.admin()) return;
  Out out(*this);
  Locked lock(*this);
  auto node = touched_.extract(party);
  if (node.empty()) return;
  const absl::Status ended =
      absl::CancelledError(absl::StrCat(party.ToString(), " ended while waiting"));
  std::vector<uint64_t> owned;
  for (uint64_t id : node.mapped()) {
    auto it = objects_.find(id);
    if (it == objects_.end()) continue;
    Object& object = it->second;
    bool was_waiting = false;
    for (auto w = object.queue.begin(); w != object.queue.end();) {
      WaiterId waiter = *w++;
      if (waiters_.at(waiter).holder.party != party) continue;
      was_waiting = true;
      AnswerLocked(UnparkLocked(waiter), ended, out);
    }
    if (object.info.kind == SyncKind::kBarrier) {
      const bool bound = std::erase(object.info.bound, party) > 0;
      std::string reason;
      if (was_waiting) {
        reason = absl::StrCat(party.ToString(), " ended while waiting");
      } else if (bound) {
        reason =
            absl::StrCat(party.ToString(), ", one of its bound parties, ended without arriving");
      } else if (object.participants.contains(party) && !object.queue.empty()) {
        reason = absl::StrCat(party.ToString(),
                              ", which had waited on it before, ended while others wait");
      }
      if (!reason.empty()) BreakBarrierLocked(object, reason, out);
      if (object.participants.erase(party) > 0 || bound) MarkLocked(object);
    }
    if (IsLockLike(object.info.kind)) {
      int64_t freed = 0;
      std::erase_if(object.info.holders, [&](const SyncHeld& held) {
        if (held.holder.party != party) return false;
        freed += held.count;
        return true;
      });
      if (freed > 0) {
        MarkLocked(object);
        if (IsSemaphore(object.info.kind)) {
          object.info.value += freed;
          if (object.info.kind == SyncKind::kBoundedSemaphore) {
            object.info.value = std::min(object.info.value, object.info.initial_value);
          }
          object.abandoned += freed;
        } else {
          object.info.value = 1;
          object.abandoned = 1;
        }
      }
      ServeLocked(object, out);
    }
    if (object.info.owner == party) owned.push_back(id);
  }
  // Conditions first: a lock they use can go only after them.
  std::stable_partition(owned.begin(), owned.end(), [&](uint64_t id) {
    mu_.AssertHeld();  // called here, under the lock
    auto it = objects_.find(id);
    return it != objects_.end() && it->second.info.kind == SyncKind::kCondition;
  });
  for (uint64_t id : owned) {
    RemoveLocked(id,
                 absl::NotFoundError(absl::StrCat("sync object ", id, " was freed: its owner, ",
                                                  party.ToString(), ", ended")),
                 out);
  }
}

SyncTable::Locked::Locked(SyncTable& table) : table_(table) { table_.mu_.Lock(); }

SyncTable::Locked::~Locked() {
  table_.KeepChangedLocked();
  table_.mu_.Unlock();
}

void SyncTable::Persist(IdAllocator* ids, Keep keep) {
  ids_ = ids;
  keep_ = std::move(keep);
}

absl::StatusOr<uint64_t> SyncTable::NextIdLocked() {
  if (ids_ != nullptr) return ids_->Next();
  return next_id_++;
}

void SyncTable::KeepChangedLocked() {
  if (dirty_.empty()) return;
  std::sort(dirty_.begin(), dirty_.end());
  dirty_.erase(std::unique(dirty_.begin(), dirty_.end()), dirty_.end());
  for (uint64_t id : dirty_) {
    auto it = objects_.find(id);
    if (it == objects_.end()) {
      keep_(NoteKey(id), std::nullopt);
      continue;
    }
    const Object& object = it->second;
    internal::SyncMemo& memo = *memo_;
    memo.Clear();
    ToProto(object.info, memo.mutable_object());
    memo.set_tree(object.tree);
    memo.set_abandoned(object.abandoned);
    memo.set_generation(object.generation);
    for (const SyncParty& party : object.participants) SetParty(party, memo.add_participants());
    memo.set_own_lock(object.own_lock);
    keep_(NoteKey(id), memo.SerializeAsString());
  }
  dirty_.clear();
}

size_t SyncTable::Restore(const std::vector<std::string>& memos) {
  absl::flat_hash_set<SyncParty> parties;
  size_t restored = 0;
  {
    Locked lock(*this);
    for (const std::string& value : memos) {
      internal::SyncMemo memo;
      if (!memo.ParseFromString(value)) continue;
      SyncInfo info = FromProto(memo.object());
      if (info.id == 0 || objects_.contains(info.id) || info.kind < SyncKind::kLock ||
          info.kind > SyncKind::kBarrier) {
        continue;
      }
      info.n_waiting = 0;
      Object& object = objects_[info.id];
      object.tree = memo.tree();
      object.abandoned = memo.abandoned();
      object.generation = memo.generation();
      object.own_lock = memo.own_lock();
      for (const v1::SyncHolder& party : memo.participants()) {
        object.participants.insert(PartyOf(party));
      }
      object.info = std::move(info);
      const SyncInfo& kept = object.info;
      // Every party it names: what PartyEnded will look at.
      std::vector<SyncParty> named(object.participants.begin(), object.participants.end());
      named.insert(named.end(), kept.bound.begin(), kept.bound.end());
      for (const SyncHeld& held : kept.holders) named.push_back(held.holder.party);
      if (kept.owner.has_value()) named.push_back(*kept.owner);
      for (const SyncParty& party : named) {
        Touch(party, kept.id);
        parties.insert(party);
      }
      if (!kept.name.empty()) {
        names_[std::make_pair(kept.owner.value_or(SyncParty{}), kept.name)] = kept.id;
      }
      ++per_tree_[object.tree];
      next_id_ = std::max(next_id_, kept.id + 1);
      ++restored;
    }
    std::vector<uint64_t> lockless;  // a Condition whose lock's note is missing goes
    for (auto& [id, object] : objects_) {
      if (object.info.kind != SyncKind::kCondition) continue;
      auto lock = objects_.find(object.info.lock_id);
      if (lock == objects_.end()) {
        lockless.push_back(id);
      } else {
        lock->second.conditions.push_back(id);
      }
    }
    for (uint64_t id : lockless) {
      Object& object = objects_.at(id);
      if (!object.info.name.empty()) {
        names_.erase(std::make_pair(object.info.owner.value_or(SyncParty{}), object.info.name));
      }
      if (--per_tree_[object.tree] == 0) per_tree_.erase(object.tree);
      MarkLocked(object);
      objects_.erase(id);
      --restored;
    }
  }
  // Outside the lock, as `alive` asks the supervisor.
  for (const SyncParty& party : parties) {
    if (!party.admin() && alive_ != nullptr && !alive_(party)) PartyEnded(party);
  }
  return restored;
}

void SyncTable::EndWaits(const absl::Status& why) {
  Out out(*this);
  Locked lock(*this);
  while (!waiters_.empty()) AnswerLocked(UnparkLocked(waiters_.begin()->first), why, out);
}

size_t SyncTable::WaiterCount() {
  Locked lock(*this);
  return waiters_.size();
}

}  // namespace proctor
