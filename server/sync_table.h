// SyncTable: proctord's synchronisation objects (Lock, RLock, Semaphore, BoundedSemaphore,
// Event, Condition, Barrier) with threading's semantics, shared by processes.
//
// Parties. Whoever holds or waits is a SyncParty (a worker, a session, or the admin key
// itself, which never ends); a SyncHolderId adds the party's thread, so that an RLock and a
// Condition's lock are owned by one thread of one party, as in threading.
//
// Waits never block a thread: Acquire and Wait take a Reply that runs exactly once, when the
// answer is known (at once, on a grant, on a timer, or when the object or the party goes),
// on the thread that learned it and outside the table's lock; unless Cancel() came first.
// A Reply returns false when its caller is gone and cannot take the answer: a grant it
// carried (a lock, semaphore units) is then given back, as if released at once, and an
// "abandoned" it carried goes to the next acquirer instead.
//
// Rules (see README, "Synchronisation objects"):
// - Queues are FIFO: a waiter is served only once every waiter before it on the same object
//   has been; an RLock's owner re-enters at once, past the queue.
// - Timeouts run on the Timers given (the event loop's, exact to it); a timeout is an answer
//   (ok = false), not an error, except for a Barrier, which it breaks.
// - A Lock may be released by anyone; an RLock, and a Condition's lock for wait/notify, only
//   by the holder (party and thread). Semaphore releases by a party that holds no unit take
//   one from the oldest holder, so that a unit is never returned twice.
// - PartyEnded: what the party held is released and marked abandoned (the next acquirer of
//   each freed unit is told so, once); its waits leave every queue (their Replies get
//   CANCELLED); a Barrier it was waiting on, or had waited on before while others wait now,
//   breaks; so does a Barrier it was bound to (Bind) and had not arrived at in the current
//   round, and it is bound no more; the objects it owned are freed (their waiters get
//   NOT_FOUND).
// - A broken Barrier keeps why it broke (SyncInfo::broken_reason), which every
//   BrokenBarrierError names, until reset().
// - Limits: objects per tree (SyncCreateSpec::tree) and waiters per object; past either,
//   RESOURCE_EXHAUSTED naming the limit.
// - After a call that makes a party hold, wait or own something, the table asks `alive`
//   (outside its lock) whether that party still exists, and runs PartyEnded itself when it
//   does not: a party that ended just before its call landed leaves nothing behind.
//
// Restarts (see README, "Synchronisation objects", Restart): with Persist(), every change of
// an object's state is handed to `keep` as a note "sync/<id>" (a serialized internal::SyncMemo,
// proto/proctor/internal/sync_memo.proto), under the table's lock so that notes follow the
// changes in order; Restore() brings the objects back from those notes in a new proctord,
// without their waiters, and ends the parties that did not live through the restart as
// PartyEnded does.
//
// Thread-safe.
#ifndef PROCTOR_SERVER_SYNC_TABLE_H_
#define PROCTOR_SERVER_SYNC_TABLE_H_

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proctor/v1/sync.pb.h"
#include "server/clock.h"
#include "server/id_allocator.h"

namespace proctor {

namespace internal {
class SyncMemo;
}  // namespace internal

// A worker (`process`), a session, or, with both 0, the admin key acting for itself.
struct SyncParty {
  uint64_t process = 0;
  uint64_t session = 0;

  bool admin() const { return process == 0 && session == 0; }
  // "process 3", "session 2", "the admin key".
  std::string ToString() const;
  bool operator==(const SyncParty&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const SyncParty& p) {
    return H::combine(std::move(h), p.process, p.session);
  }
};

struct SyncHolderId {
  SyncParty party;
  uint64_t thread = 0;
  bool operator==(const SyncHolderId&) const = default;
};

enum class SyncKind { kLock = 1, kRLock, kSemaphore, kBoundedSemaphore, kEvent, kCondition, kBarrier };

// "Lock", "RLock", ..., as Python names the classes.
absl::string_view SyncKindName(SyncKind kind);

struct SyncHeld {
  SyncHolderId holder;
  int64_t count = 0;  // an RLock's recursion level, or semaphore units
};

// A snapshot of one object.
struct SyncInfo {
  uint64_t id = 0;
  std::string name;
  SyncKind kind = SyncKind::kLock;
  std::optional<SyncParty> owner;  // unset: top level, alive until removed
  int64_t value = 0;               // semaphores: the counter; locks: 1 free, 0 held
  int64_t initial_value = 0;
  bool is_set = false;             // Event
  int64_t parties = 0;             // Barrier
  bool broken = false;             // Barrier
  int64_t n_waiting = 0;
  std::vector<SyncHeld> holders;
  uint64_t lock_id = 0;                   // Condition
  std::optional<absl::Duration> timeout;  // Barrier: wait()'s default
  std::vector<SyncParty> bound;           // Barrier: its known parties, in binding order
  std::string broken_reason;              // Barrier: why it broke, while broken
};

// The object as the API shows it; and back, as a restart reads it from its note.
void ToProto(const SyncInfo& info, v1::SyncObject* out);
SyncInfo FromProto(const v1::SyncObject& object);

struct SyncCreateSpec {
  SyncKind kind = SyncKind::kLock;
  std::string name;                // optional; unique per owner
  std::optional<SyncParty> owner;  // unset: top level
  std::string tree;                // what the per-tree limit counts against
  int64_t value = 1;               // semaphores
  int64_t parties = 0;             // Barrier
  std::optional<absl::Duration> timeout;  // Barrier
  uint64_t lock_id = 0;  // Condition: a Lock or RLock of the same owner; 0: a new RLock
};

struct SyncWaitResult {
  bool ok = false;         // acquired / the flag / notified
  bool abandoned = false;  // freed by a dead holder; this caller is the first to know
  int64_t index = 0;       // Barrier
};

struct SyncLimits {
  size_t max_objects_per_tree = 1024;
  size_t max_waiters_per_object = 16384;
};

class SyncTable {
 public:
  using WaiterId = uint64_t;
  // Takes a wait's answer; false when the caller is gone (see above).
  using Reply = std::function<bool(absl::StatusOr<SyncWaitResult>)>;
  // Whether a party still exists (a worker still runs, a session is still open).
  using Alive = std::function<bool(const SyncParty&)>;

  static constexpr size_t kMaxNameBytes = 128;

  // Keeps a note across a restart (`value` set) or drops it (unset).
  using Keep = std::function<void(const std::string& key, std::optional<std::string> value)>;

  // `timers` must outlive the table. `alive` null: every party is alive.
  SyncTable(Timers& timers, SyncLimits limits, Alive alive = nullptr);
  ~SyncTable();

  // Ids come from `ids` (null: a counter in memory), which must outlive the table; every
  // change is kept with `keep` (null: nothing is kept). Call before any other call. Without
  // `ids`, ids go on after the highest one restored.
  void Persist(IdAllocator* ids, Keep keep);
  // Brings back the objects of the notes `Keep` was given before a restart (their values);
  // then ends, as PartyEnded, every party they name that `alive` says is gone. Call once,
  // after Persist and before any other call. Returns how many objects came back.
  size_t Restore(const std::vector<std::string>& memos);

  // INVALID_ARGUMENT for a bad name or value (Python's messages: "semaphore initial value
  // must be >= 0", "parties must be >= 1"); ALREADY_EXISTS for a name its owner already
  // uses; RESOURCE_EXHAUSTED past the per-tree limit.
  absl::StatusOr<SyncInfo> Create(const SyncCreateSpec& spec);
  // Frees an object; its waiters get NOT_FOUND. FAILED_PRECONDITION for a lock a Condition
  // uses (remove the Condition first: its own lock goes with it).
  absl::Status Remove(uint64_t id);
  absl::StatusOr<SyncInfo> Get(uint64_t id);
  std::optional<SyncInfo> FindByName(const std::optional<SyncParty>& owner,
                                     absl::string_view name);
  std::vector<SyncInfo> List();

  // acquire(blocking, timeout) on a Lock, RLock, semaphore, or a Condition's lock. Returns 0
  // when answered at once, else the waiter to Cancel.
  WaiterId Acquire(uint64_t id, const SyncHolderId& holder, bool blocking,
                   std::optional<absl::Duration> timeout, Reply reply);
  // release(): a semaphore's `n` units (>= 1); 1 for locks.
  absl::StatusOr<SyncInfo> Release(uint64_t id, const SyncHolderId& holder, int64_t n = 1);
  // Event.wait, Condition.wait (the lock is released now and held again when the Reply
  // runs), Barrier.wait (unset timeout: the Barrier's own). A negative timeout is 0.
  WaiterId Wait(uint64_t id, const SyncHolderId& holder, std::optional<absl::Duration> timeout,
                Reply reply);
  absl::StatusOr<SyncInfo> Set(uint64_t id);
  absl::StatusOr<SyncInfo> Clear(uint64_t id);
  // Wakes `n` waiters of a Condition (n < 0: all). The holder must hold its lock.
  absl::StatusOr<SyncInfo> Notify(uint64_t id, const SyncHolderId& holder, int64_t n);
  absl::StatusOr<SyncInfo> Abort(uint64_t id);
  absl::StatusOr<SyncInfo> Reset(uint64_t id);

  // Makes `party` a known party of the Barrier `id` (see the rules). INVALID_ARGUMENT for
  // another kind or the admin party (which never ends); ALREADY_EXISTS when it is bound
  // already; FAILED_PRECONDITION when every one of the Barrier's parties is bound (or held
  // for a process being started). A party that has already ended is bound, and so breaks it.
  absl::StatusOr<SyncInfo> Bind(uint64_t id, const SyncParty& party);
  // Holds a place in each of the Barriers `ids` for a process about to be started, refused
  // as Bind refuses (INVALID_ARGUMENT for an id given twice). Then either BindReserved, once
  // the process has its id, or DropReserved, when it was not started. Not kept across a
  // restart (the Start in flight fails with it).
  using ReservationId = uint64_t;
  absl::StatusOr<ReservationId> Reserve(const std::vector<uint64_t>& ids);
  void BindReserved(ReservationId reservation, const SyncParty& party);
  void DropReserved(ReservationId reservation);

  // The waiter's Reply will not run; it leaves its queue (a Barrier it waited on breaks).
  void Cancel(WaiterId waiter);
  // See the rules above. Idempotent.
  void PartyEnded(const SyncParty& party);
  // Answers every waiter with `why` (proctord stops or restarts): their calls end, and no
  // object changes (a Barrier they waited on is not broken; they may wait again).
  void EndWaits(const absl::Status& why);

  size_t WaiterCount();

 private:
  enum class Phase { kAcquire, kEvent, kCondition, kBarrier };
  struct Waiter {
    WaiterId id = 0;
    uint64_t queue_object = 0;  // whose queue it is in now
    SyncHolderId holder;
    Reply reply;
    TimerId timer = 0;
    Phase phase = Phase::kAcquire;
    int64_t units = 1;       // what the grant takes: 1, or an RLock's level to restore
    bool notified = false;   // a Condition waiter, now in its lock's queue
    int64_t index = 0;       // Barrier
    std::list<WaiterId>::iterator position;
  };
  struct Object {
    SyncInfo info;
    std::string tree;
    std::list<WaiterId> queue;
    int64_t abandoned = 0;     // freed units not yet reported to an acquirer
    uint64_t generation = 0;   // Barrier
    absl::flat_hash_set<SyncParty> participants;  // Barrier: every party that waited
    std::vector<uint64_t> conditions;  // locks: the Conditions using them
    bool own_lock = false;             // Condition: its lock was made with it
    int64_t reserved = 0;              // Barrier: places held for processes being started
  };
  // A Reply to run once the lock is released; a grant it carries is given back if the caller
  // is gone.
  struct Delivery {
    Reply reply;
    absl::StatusOr<SyncWaitResult> result;
    uint64_t object = 0;
    SyncHolderId holder;
    int64_t units = 0;
  };
  class Out {
   public:
    explicit Out(SyncTable& table) : table_(table) {}
    Out(const Out&) = delete;
    Out& operator=(const Out&) = delete;
    ~Out();  // runs the deliveries, then checks the parties
    void Deliver(Delivery delivery) { deliveries_.push_back(std::move(delivery)); }
    void Check(const SyncParty& party) { check_.push_back(party); }

   private:
    SyncTable& table_;
    std::vector<Delivery> deliveries_;
    std::vector<SyncParty> check_;
  };

  absl::StatusOr<Object*> FindLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The object a Lock-like call works on: itself, or a Condition's lock. INVALID_ARGUMENT for
  // another kind, naming `call`.
  absl::StatusOr<Object*> LockLikeLocked(uint64_t id, absl::string_view call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Object*> KindLocked(uint64_t id, SyncKind kind, absl::string_view call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Locks mu_; on unlocking, first keeps the objects changed meanwhile.
  class ABSL_SCOPED_LOCKABLE Locked {
   public:
    explicit Locked(SyncTable& table) ABSL_EXCLUSIVE_LOCK_FUNCTION(table.mu_);
    ~Locked() ABSL_UNLOCK_FUNCTION();
    Locked(const Locked&) = delete;
    Locked& operator=(const Locked&) = delete;

   private:
    SyncTable& table_;
  };

  // The object's state changed: it is kept when the lock is released.
  void MarkLocked(const Object& object) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (keep_ != nullptr) dirty_.push_back(object.info.id);
  }
  void KeepChangedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> NextIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(const SyncParty& party, uint64_t object) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t HeldBy(const Object& lock, const SyncHolderId& holder) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CanTake(const Object& lock, const SyncHolderId& holder) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `units`; returns whether they came abandoned.
  bool Take(Object& lock, const SyncHolderId& holder, int64_t units)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives back `units` held by `holder` (all it holds when `units` < 0); returns how many.
  int64_t Drop(Object& lock, const SyncHolderId& holder, int64_t units)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Grants to the head of a lock's queue while it can take.
  void ServeLocked(Object& lock, Out& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Parks a waiter in `object`'s queue, with a timer when `timeout` is set. A waiter moved
  // from one queue to another keeps its id (the one its caller may cancel).
  WaiterId ParkLocked(Object& object, Waiter waiter, std::optional<absl::Duration> timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a waiter out of its queue and the table, its timer cancelled.
  Waiter UnparkLocked(WaiterId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a Condition waiter into its lock's queue; returns its id.
  WaiterId RequeueOnLockLocked(Waiter& waiter, uint64_t lock_id, Out& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Breaks it for `reason` ("it was aborted"), which its waiters and later ones are told.
  void BreakBarrierLocked(Object& barrier, const std::string& reason, Out& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when one more party may be bound to `barrier`; else FAILED_PRECONDITION naming those
  // bound and `newcomer`.
  absl::Status RoomLocked(const Object& barrier, absl::string_view newcomer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `party` may be bound to `barrier` now (see Bind).
  absl::Status CanBindLocked(const Object& barrier, const SyncParty& party) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BindLocked(Object& barrier, const SyncParty& party) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveLocked(uint64_t id, const absl::Status& why, Out& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnTimeout(WaiterId id);
  void GiveBack(const Delivery& delivery);
  SyncInfo SnapshotLocked(const Object& object) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Answers a waiter that leaves for good.
  void AnswerLocked(Waiter waiter, absl::StatusOr<SyncWaitResult> result, Out& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Timers& timers_;
  const SyncLimits limits_;
  const Alive alive_;

  IdAllocator* ids_ = nullptr;
  Keep keep_;

  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<uint64_t> dirty_ ABSL_GUARDED_BY(mu_);  // changed objects, to keep
  // Reused for each note: its allocations are made once.
  std::unique_ptr<internal::SyncMemo> memo_ ABSL_GUARDED_BY(mu_);
  WaiterId next_waiter_ ABSL_GUARDED_BY(mu_) = 1;
  ReservationId next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<ReservationId, std::vector<uint64_t>> reservations_ ABSL_GUARDED_BY(mu_);
  // Node maps: references to an object or waiter stay valid while others come and go.
  absl::node_hash_map<uint64_t, Object> objects_ ABSL_GUARDED_BY(mu_);
  absl::node_hash_map<WaiterId, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  // (owner, name) -> id; the owner as SyncParty, top level as the admin party.
  absl::flat_hash_map<std::pair<SyncParty, std::string>, uint64_t> names_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, size_t> per_tree_ ABSL_GUARDED_BY(mu_);
  // The objects each party has held, waited on or owned: what PartyEnded looks at.
  absl::flat_hash_map<SyncParty, absl::flat_hash_set<uint64_t>> touched_ ABSL_GUARDED_BY(mu_);
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_SYNC_TABLE_H_
