// SyncTable against fake time: threading's semantics, FIFO, exact timeouts, cancellation
// races, and what a party's end frees.
#include "server/sync_table.h"

#include <map>
#include <memory>
#include <string>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const SyncHolderId kA{.party = {.process = 1}};
const SyncHolderId kB{.party = {.process = 2}};
const SyncHolderId kC{.party = {.session = 7}};
const SyncHolderId kAdmin{};

// What one waiting call was answered, if it was; `accept` false plays a caller that went away.
struct Answer {
  std::optional<absl::StatusOr<SyncWaitResult>> result;
  bool accept = true;
};

class SyncTableTest : public ::testing::Test {
 protected:
  SyncTableTest()
      : table_(time_, SyncLimits{.max_objects_per_tree = 8, .max_waiters_per_object = 3},
               [this](const SyncParty& party) { return !dead_.contains(party); }) {}

  SyncTable::Reply Into(Answer& answer) {
    return [&answer](absl::StatusOr<SyncWaitResult> result) {
      answer.result = std::move(result);
      return answer.accept;
    };
  }

  uint64_t Make(SyncKind kind, int64_t value = 1, int64_t parties = 0,
                std::optional<SyncParty> owner = std::nullopt, uint64_t lock_id = 0) {
    absl::StatusOr<SyncInfo> info = table_.Create(SyncCreateSpec{.kind = kind,
                                                                 .owner = owner,
                                                                 .tree = "t",
                                                                 .value = value,
                                                                 .parties = parties,
                                                                 .lock_id = lock_id});
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->id : 0;
  }

  // acquire() answered at once: whether it was acquired (and abandoned).
  std::optional<SyncWaitResult> AcquireNow(uint64_t id, const SyncHolderId& holder,
                                           bool blocking = false) {
    Answer answer;
    table_.Acquire(id, holder, blocking, std::nullopt, Into(answer));
    if (!answer.result.has_value() || !answer.result->ok()) return std::nullopt;
    return **answer.result;
  }

  static bool Ok(const Answer& answer) {
    return answer.result.has_value() && answer.result->ok() && (*answer.result)->ok;
  }
  static bool Pending(const Answer& answer) { return !answer.result.has_value(); }

  FakeTime time_;
  absl::flat_hash_set<SyncParty> dead_;
  SyncTable table_;
};

TEST_F(SyncTableTest, LockIsFifoAndReleasableByAnyone) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  EXPECT_FALSE(AcquireNow(lock, kB)->ok);  // non-blocking: not acquired, not an error
  Answer b, c;
  table_.Acquire(lock, kB, true, std::nullopt, Into(b));
  table_.Acquire(lock, kC, true, std::nullopt, Into(c));
  EXPECT_TRUE(Pending(b));
  EXPECT_EQ(table_.Get(lock)->n_waiting, 2);
  // multiprocessing allows another process to release a Lock.
  ASSERT_TRUE(table_.Release(lock, kC, 1).ok());
  EXPECT_TRUE(Ok(b));
  EXPECT_TRUE(Pending(c));
  ASSERT_TRUE(table_.Release(lock, kB, 1).ok());
  EXPECT_TRUE(Ok(c));
  ASSERT_TRUE(table_.Release(lock, kC, 1).ok());
  absl::StatusOr<SyncInfo> again = table_.Release(lock, kC, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(again.status()));
  EXPECT_EQ(again.status().message(), "release unlocked lock");
}

TEST_F(SyncTableTest, AcquireTimeoutIsExactAndArgumentsAreChecked) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  Answer b;
  table_.Acquire(lock, kB, true, absl::Milliseconds(250), Into(b));
  time_.Advance(absl::Milliseconds(249));
  EXPECT_TRUE(Pending(b));
  time_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(b.result.has_value() && b.result->ok());
  EXPECT_FALSE((*b.result)->ok);
  EXPECT_EQ(table_.Get(lock)->n_waiting, 0);

  Answer bad;
  table_.Acquire(lock, kB, false, absl::Seconds(1), Into(bad));
  EXPECT_EQ(bad.result->status().message(), "can't specify a timeout for a non-blocking call");
  table_.Acquire(lock, kB, true, absl::Seconds(-1), Into(bad));
  EXPECT_EQ(bad.result->status().message(), "timeout value must be a non-negative number");
  table_.Acquire(999, kB, true, std::nullopt, Into(bad));
  EXPECT_TRUE(absl::IsNotFound(bad.result->status()));
  uint64_t event = Make(SyncKind::kEvent);
  table_.Acquire(event, kB, true, std::nullopt, Into(bad));
  EXPECT_TRUE(absl::IsInvalidArgument(bad.result->status()));
  EXPECT_THAT(bad.result->status().message(), HasSubstr("is an Event, which has no acquire()"));
}

TEST_F(SyncTableTest, RLockRecursionAndOwnerOnlyRelease) {
  uint64_t rlock = Make(SyncKind::kRLock);
  ASSERT_TRUE(AcquireNow(rlock, kA)->ok);
  ASSERT_TRUE(AcquireNow(rlock, kA)->ok);
  EXPECT_FALSE(AcquireNow(rlock, kB)->ok);
  // Another thread of the same process is another owner, as in threading.
  EXPECT_FALSE(AcquireNow(rlock, SyncHolderId{.party = kA.party, .thread = 9})->ok);
  EXPECT_EQ(table_.Get(rlock)->holders[0].count, 2);
  absl::StatusOr<SyncInfo> wrong = table_.Release(rlock, kB, 1);
  EXPECT_EQ(wrong.status().message(), "cannot release un-acquired lock");
  Answer b;
  table_.Acquire(rlock, kB, true, std::nullopt, Into(b));
  ASSERT_TRUE(table_.Release(rlock, kA, 1).ok());
  EXPECT_TRUE(Pending(b));
  ASSERT_TRUE(table_.Release(rlock, kA, 1).ok());
  EXPECT_TRUE(Ok(b));
}

TEST_F(SyncTableTest, SemaphoresCountAndBoundedRefusesExtraRelease) {
  uint64_t sem = Make(SyncKind::kSemaphore, 2);
  ASSERT_TRUE(AcquireNow(sem, kA)->ok);
  ASSERT_TRUE(AcquireNow(sem, kB)->ok);
  EXPECT_FALSE(AcquireNow(sem, kC)->ok);
  EXPECT_EQ(table_.Get(sem)->value, 0);
  ASSERT_TRUE(table_.Release(sem, kC, 3).ok());  // a plain Semaphore may go past its start
  EXPECT_EQ(table_.Get(sem)->value, 3);
  EXPECT_TRUE(table_.Get(sem)->holders.empty());
  EXPECT_EQ(table_.Release(sem, kC, 0).status().message(), "n must be one or more");

  uint64_t bounded = Make(SyncKind::kBoundedSemaphore, 1);
  absl::StatusOr<SyncInfo> extra = table_.Release(bounded, kA, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(extra.status()));
  EXPECT_EQ(extra.status().message(), "Semaphore released too many times");
  absl::StatusOr<SyncInfo> negative =
      table_.Create(SyncCreateSpec{.kind = SyncKind::kSemaphore, .tree = "t", .value = -1});
  EXPECT_EQ(negative.status().message(), "semaphore initial value must be >= 0");
}

TEST_F(SyncTableTest, EventWakesEveryWaiterAndWaitTimesOutWithTheFlag) {
  uint64_t event = Make(SyncKind::kEvent);
  Answer a, b, late;
  table_.Wait(event, kA, std::nullopt, Into(a));
  table_.Wait(event, kB, absl::Seconds(1), Into(b));
  time_.Advance(absl::Seconds(1));
  ASSERT_TRUE(b.result.has_value());
  EXPECT_FALSE((*b.result)->ok);
  ASSERT_TRUE(table_.Set(event).ok());
  EXPECT_TRUE(Ok(a));
  EXPECT_TRUE(table_.Get(event)->is_set);
  table_.Wait(event, kC, absl::ZeroDuration(), Into(late));
  EXPECT_TRUE(Ok(late));
  ASSERT_TRUE(table_.Clear(event).ok());
  table_.Wait(event, kC, absl::ZeroDuration(), Into(late));
  EXPECT_FALSE((*late.result)->ok);
}

TEST_F(SyncTableTest, ConditionWaitReleasesAndNotifyWakesInOrder) {
  uint64_t cond = Make(SyncKind::kCondition);
  uint64_t lock = table_.Get(cond)->lock_id;
  EXPECT_EQ(table_.Get(lock)->kind, SyncKind::kRLock);
  Answer not_held;
  table_.Wait(cond, kA, std::nullopt, Into(not_held));
  EXPECT_EQ(not_held.result->status().message(), "cannot wait on un-acquired lock");
  EXPECT_EQ(table_.Notify(cond, kA, 1).status().message(), "cannot notify on un-acquired lock");

  // A holds its RLock twice and waits: the whole level goes, and comes back.
  ASSERT_TRUE(AcquireNow(cond, kA)->ok);
  ASSERT_TRUE(AcquireNow(cond, kA)->ok);
  Answer a, b;
  table_.Wait(cond, kA, std::nullopt, Into(a));
  EXPECT_TRUE(table_.Get(lock)->holders.empty());
  ASSERT_TRUE(AcquireNow(cond, kB)->ok);
  table_.Wait(cond, kB, std::nullopt, Into(b));
  ASSERT_TRUE(AcquireNow(cond, kC)->ok);
  EXPECT_EQ(table_.Get(cond)->n_waiting, 2);
  ASSERT_TRUE(table_.Notify(cond, kC, 1).ok());
  EXPECT_TRUE(Pending(a));  // notified, but the notifier still holds the lock
  ASSERT_TRUE(table_.Release(cond, kC, 1).ok());
  EXPECT_TRUE(Ok(a));  // first waiter first
  EXPECT_TRUE(Pending(b));
  EXPECT_EQ(table_.Get(lock)->holders[0].count, 2);
  ASSERT_TRUE(table_.Notify(cond, kA, -1).ok());
  ASSERT_TRUE(table_.Release(cond, kA, 1).ok());
  EXPECT_TRUE(Pending(b));
  ASSERT_TRUE(table_.Release(cond, kA, 1).ok());
  EXPECT_TRUE(Ok(b));
}

TEST_F(SyncTableTest, ConditionWaitTimeoutStillReacquires) {
  uint64_t lock = Make(SyncKind::kLock);
  uint64_t cond = Make(SyncKind::kCondition, 1, 0, std::nullopt, lock);
  ASSERT_TRUE(AcquireNow(cond, kA)->ok);
  Answer a;
  table_.Wait(cond, kA, absl::Seconds(2), Into(a));
  ASSERT_TRUE(AcquireNow(lock, kB)->ok);
  time_.Advance(absl::Seconds(2));
  EXPECT_TRUE(Pending(a));  // timed out, waiting for the lock back
  ASSERT_TRUE(table_.Release(lock, kB, 1).ok());
  ASSERT_TRUE(a.result.has_value() && a.result->ok());
  EXPECT_FALSE((*a.result)->ok);
  EXPECT_EQ(table_.Get(lock)->holders[0].holder, kA);
  EXPECT_THAT(table_.Remove(lock).message(), HasSubstr("remove the Condition first"));
  ASSERT_TRUE(table_.Remove(cond).ok());
  ASSERT_TRUE(table_.Remove(lock).ok());
}

TEST_F(SyncTableTest, BarrierIndexesTimeoutAbortAndReset) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 3);
  Answer a, b, c;
  table_.Wait(barrier, kA, std::nullopt, Into(a));
  table_.Wait(barrier, kB, std::nullopt, Into(b));
  EXPECT_EQ(table_.Get(barrier)->n_waiting, 2);
  table_.Wait(barrier, kC, std::nullopt, Into(c));
  EXPECT_EQ((*a.result)->index, 0);
  EXPECT_EQ((*b.result)->index, 1);
  EXPECT_EQ((*c.result)->index, 2);

  table_.Wait(barrier, kA, absl::Seconds(1), Into(a));
  table_.Wait(barrier, kB, std::nullopt, Into(b));
  time_.Advance(absl::Seconds(1));
  EXPECT_TRUE(absl::IsAborted(a.result->status()));
  EXPECT_TRUE(absl::IsAborted(b.result->status()));
  EXPECT_TRUE(table_.Get(barrier)->broken);
  table_.Wait(barrier, kC, std::nullopt, Into(c));
  EXPECT_THAT(c.result->status().message(), HasSubstr("BrokenBarrierError"));
  ASSERT_TRUE(table_.Reset(barrier).ok());
  EXPECT_FALSE(table_.Get(barrier)->broken);
  table_.Wait(barrier, kA, std::nullopt, Into(a));
  ASSERT_TRUE(table_.Abort(barrier).ok());
  EXPECT_TRUE(absl::IsAborted(a.result->status()));
  EXPECT_EQ(table_.Create(SyncCreateSpec{.kind = SyncKind::kBarrier, .tree = "t"}).status()
                .message(),
            "parties must be >= 1");
}

TEST_F(SyncTableTest, DeadHolderReleasesAndTheNextAcquirerIsToldAbandoned) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  Answer b;
  table_.Acquire(lock, kB, true, std::nullopt, Into(b));
  table_.PartyEnded(kA.party);
  ASSERT_TRUE(Ok(b));
  EXPECT_TRUE((*b.result)->abandoned);
  ASSERT_TRUE(table_.Release(lock, kB, 1).ok());
  EXPECT_FALSE(AcquireNow(lock, kC)->abandoned);  // told once

  uint64_t sem = Make(SyncKind::kBoundedSemaphore, 2);
  ASSERT_TRUE(AcquireNow(sem, kB)->ok);
  ASSERT_TRUE(AcquireNow(sem, kB)->ok);
  table_.PartyEnded(kB.party);
  EXPECT_EQ(table_.Get(sem)->value, 2);
  EXPECT_TRUE(AcquireNow(sem, kC)->abandoned);
  EXPECT_TRUE(AcquireNow(sem, kC)->abandoned);
}

TEST_F(SyncTableTest, DeadWaitersLeaveEveryQueue) {
  uint64_t lock = Make(SyncKind::kLock);
  uint64_t event = Make(SyncKind::kEvent);
  ASSERT_TRUE(AcquireNow(lock, kC)->ok);
  Answer a1, a2, b;
  table_.Acquire(lock, kA, true, std::nullopt, Into(a1));
  table_.Wait(event, kA, std::nullopt, Into(a2));
  table_.Acquire(lock, kB, true, std::nullopt, Into(b));
  table_.PartyEnded(kA.party);
  EXPECT_TRUE(absl::IsCancelled(a1.result->status()));
  EXPECT_TRUE(absl::IsCancelled(a2.result->status()));
  EXPECT_EQ(table_.Get(lock)->n_waiting, 1);
  ASSERT_TRUE(table_.Release(lock, kC, 1).ok());
  EXPECT_TRUE(Ok(b));
  EXPECT_EQ(table_.WaiterCount(), 0u);
}

TEST_F(SyncTableTest, BarrierWithADeadPartyBreaks) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 3);
  Answer a, b;
  table_.Wait(barrier, kA, std::nullopt, Into(a));
  table_.Wait(barrier, kB, std::nullopt, Into(b));
  table_.PartyEnded(kA.party);
  EXPECT_TRUE(absl::IsAborted(b.result->status()));
  EXPECT_TRUE(table_.Get(barrier)->broken);

  // A party that waited in an earlier round and dies while others wait breaks it too.
  uint64_t second = Make(SyncKind::kBarrier, 1, 2);
  table_.Wait(second, kB, std::nullopt, Into(b));
  table_.Wait(second, kC, std::nullopt, Into(a));
  ASSERT_TRUE(Ok(a));
  table_.Wait(second, kC, std::nullopt, Into(a));
  table_.PartyEnded(kB.party);
  EXPECT_TRUE(absl::IsAborted(a.result->status()));
}

TEST_F(SyncTableTest, ABoundPartyThatEndsWithoutArrivingBreaksTheBarrier) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 3);
  absl::StatusOr<SyncInfo> bound = table_.Bind(barrier, kA.party);
  ASSERT_TRUE(bound.ok()) << bound.status();
  ASSERT_EQ(bound->bound.size(), 1u);
  Answer b, c;
  table_.Wait(barrier, kB, std::nullopt, Into(b));
  table_.Wait(barrier, kC, std::nullopt, Into(c));
  EXPECT_TRUE(Pending(b));
  table_.PartyEnded(kA.party);
  for (const Answer* waiter : {&b, &c}) {
    ASSERT_TRUE(waiter->result.has_value());
    EXPECT_TRUE(absl::IsAborted(waiter->result->status()));
    EXPECT_THAT(waiter->result->status().message(),
                AllOf(HasSubstr("BrokenBarrierError"),
                      HasSubstr("process 1, one of its bound parties, ended without arriving")));
  }
  absl::StatusOr<SyncInfo> now = table_.Get(barrier);
  EXPECT_TRUE(now->broken);
  EXPECT_TRUE(now->bound.empty()) << "an ended party is bound no more";
  EXPECT_THAT(now->broken_reason, HasSubstr("process 1"));
  // Later waiters are told the same, until reset().
  Answer late;
  table_.Wait(barrier, kB, std::nullopt, Into(late));
  EXPECT_THAT(late.result->status().message(), HasSubstr("process 1, one of its bound parties"));
  ASSERT_TRUE(table_.Reset(barrier).ok());
  EXPECT_FALSE(table_.Get(barrier)->broken);
  EXPECT_EQ(table_.Get(barrier)->broken_reason, "");

  // With no round in progress too: the next round could not be completed.
  uint64_t idle = Make(SyncKind::kBarrier, 1, 2);
  ASSERT_TRUE(table_.Bind(idle, kC.party).ok());
  table_.PartyEnded(kC.party);
  EXPECT_TRUE(table_.Get(idle)->broken);
  EXPECT_THAT(table_.Get(idle)->broken_reason, HasSubstr("session 7"));
}

TEST_F(SyncTableTest, UnboundArrivalsStillCountAndABoundPartyThatArrivedPasses) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 3);
  ASSERT_TRUE(table_.Bind(barrier, kA.party).ok());
  Answer a, b, c;
  table_.Wait(barrier, kB, std::nullopt, Into(b));  // unbound
  table_.Wait(barrier, kA, std::nullopt, Into(a));
  table_.Wait(barrier, kAdmin, std::nullopt, Into(c));  // unbound, the admin key itself
  ASSERT_TRUE(Ok(a) && Ok(b) && Ok(c));
  EXPECT_EQ((*b.result)->index + (*a.result)->index + (*c.result)->index, 0 + 1 + 2);
  EXPECT_FALSE(table_.Get(barrier)->broken);
  // A bound party that arrived in the current round and ends while the others wait breaks
  // it, named.
  table_.Wait(barrier, kA, std::nullopt, Into(a));
  table_.Wait(barrier, kB, std::nullopt, Into(b));
  table_.PartyEnded(kA.party);
  EXPECT_THAT(b.result->status().message(), HasSubstr("process 1 ended while waiting"));
}

TEST_F(SyncTableTest, BindingIsRefusedAsItShouldBe) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 2);
  uint64_t lock = Make(SyncKind::kLock);
  absl::StatusOr<SyncInfo> refused = table_.Bind(lock, kA.party);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_THAT(refused.status().message(), HasSubstr("is a Lock, which has no bind()"));
  refused = table_.Bind(barrier, kAdmin.party);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_THAT(refused.status().message(), HasSubstr("never ends"));
  EXPECT_TRUE(absl::IsNotFound(table_.Bind(999, kA.party).status()));
  ASSERT_TRUE(table_.Bind(barrier, kA.party).ok());
  refused = table_.Bind(barrier, kA.party);
  EXPECT_TRUE(absl::IsAlreadyExists(refused.status()));
  EXPECT_EQ(refused.status().message(), "process 1 is already a bound party of Barrier 1");

  // A place held for a process being started counts; let go, it is free again.
  absl::StatusOr<SyncTable::ReservationId> held = table_.Reserve({barrier});
  ASSERT_TRUE(held.ok()) << held.status();
  refused = table_.Bind(barrier, kB.party);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status()));
  EXPECT_EQ(refused.status().message(),
            "Barrier 1 has 2 parties, and all are bound already (process 1 and 1 process(es) "
            "being started): process 2 cannot be one more");
  absl::StatusOr<SyncTable::ReservationId> more = table_.Reserve({barrier});
  EXPECT_TRUE(absl::IsFailedPrecondition(more.status()));
  EXPECT_THAT(more.status().message(), HasSubstr("a new process cannot be one more"));
  table_.DropReserved(*held);
  EXPECT_TRUE(table_.Bind(barrier, kB.party).ok());
  refused = table_.Bind(barrier, kC.party);
  EXPECT_EQ(refused.status().message(),
            "Barrier 1 has 2 parties, and all are bound already (process 1, process 2): "
            "session 7 cannot be one more");

  uint64_t other = Make(SyncKind::kBarrier, 1, 5);
  more = table_.Reserve({other, other});
  EXPECT_TRUE(absl::IsInvalidArgument(more.status()));
  EXPECT_THAT(more.status().message(), HasSubstr("is named twice"));
  more = table_.Reserve({other, lock});
  EXPECT_TRUE(absl::IsInvalidArgument(more.status()));
  ASSERT_TRUE(table_.Reserve({other}).ok()) << "a refused reservation holds nothing";
}

TEST_F(SyncTableTest, APartyThatEndedBeforeItsBindingLandedBreaksTheBarrierAtOnce) {
  uint64_t barrier = Make(SyncKind::kBarrier, 1, 3);
  Answer waiting;
  table_.Wait(barrier, kC, std::nullopt, Into(waiting));
  dead_.insert(kA.party);
  absl::StatusOr<SyncTable::ReservationId> held = table_.Reserve({barrier});
  ASSERT_TRUE(held.ok());
  table_.BindReserved(*held, kA.party);  // its process ended before Start bound it
  EXPECT_TRUE(absl::IsAborted(waiting.result->status()));
  EXPECT_THAT(waiting.result->status().message(), HasSubstr("process 1"));
  EXPECT_TRUE(table_.Get(barrier)->bound.empty());

  uint64_t second = Make(SyncKind::kBarrier, 1, 3);
  ASSERT_TRUE(table_.Bind(second, kA.party).ok());
  EXPECT_TRUE(table_.Get(second)->broken);
}

TEST_F(SyncTableTest, OwnerEndFreesItsObjects) {
  uint64_t cond = Make(SyncKind::kCondition, 1, 0, kA.party);
  uint64_t lock = table_.Get(cond)->lock_id;
  ASSERT_TRUE(AcquireNow(cond, kB)->ok);
  Answer c;
  table_.Acquire(cond, kC, true, std::nullopt, Into(c));
  table_.PartyEnded(kA.party);
  EXPECT_TRUE(absl::IsNotFound(table_.Get(cond).status()));
  EXPECT_TRUE(absl::IsNotFound(table_.Get(lock).status()));
  EXPECT_TRUE(absl::IsNotFound(c.result->status()));
  EXPECT_THAT(c.result->status().message(), HasSubstr("its owner, process 1, ended"));
  EXPECT_EQ(table_.WaiterCount(), 0u);
}

TEST_F(SyncTableTest, CancelLeavesTheQueueAndAGrantThatRacedIsGivenBack) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  Answer b, c, d;
  SyncTable::WaiterId waiter_b = table_.Acquire(lock, kB, true, absl::Seconds(5), Into(b));
  table_.Acquire(lock, kC, true, std::nullopt, Into(c));
  table_.Acquire(lock, kAdmin, true, std::nullopt, Into(d));
  table_.Cancel(waiter_b);
  EXPECT_EQ(time_.pending(), 0u);  // its timer went with it
  // C's call is cancelled just as the lock is granted: the grant goes to the next waiter.
  c.accept = false;
  ASSERT_TRUE(table_.Release(lock, kA, 1).ok());
  EXPECT_TRUE(Pending(b));
  EXPECT_TRUE(Ok(c));
  EXPECT_TRUE(Ok(d));
  EXPECT_EQ(table_.Get(lock)->holders[0].holder, kAdmin);
}

TEST_F(SyncTableTest, AbandonedGoesOnWhenItsGrantIsGivenBack) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  Answer b, c;
  table_.Acquire(lock, kB, true, std::nullopt, Into(b));
  table_.Acquire(lock, kC, true, std::nullopt, Into(c));
  b.accept = false;
  table_.PartyEnded(kA.party);
  ASSERT_TRUE(Ok(c));
  EXPECT_TRUE((*c.result)->abandoned);
}

TEST_F(SyncTableTest, APartyThatEndedBeforeItsCallLandedKeepsNothing) {
  uint64_t lock = Make(SyncKind::kLock);
  dead_.insert(kA.party);  // the listener has already run for it
  EXPECT_TRUE(AcquireNow(lock, kA)->ok);
  EXPECT_TRUE(table_.Get(lock)->holders.empty());
  EXPECT_TRUE(AcquireNow(lock, kB)->abandoned);
}

TEST_F(SyncTableTest, LimitsAndNames) {
  uint64_t lock = Make(SyncKind::kLock);
  ASSERT_TRUE(AcquireNow(lock, kA)->ok);
  std::vector<Answer> answers(4);
  for (Answer& answer : answers) table_.Acquire(lock, kB, true, std::nullopt, Into(answer));
  EXPECT_TRUE(absl::IsResourceExhausted(answers[3].result->status()));
  EXPECT_THAT(answers[3].result->status().message(), HasSubstr("--max-sync-waiters=3"));

  SyncCreateSpec named{.kind = SyncKind::kLock, .name = "db", .owner = kA.party, .tree = "u"};
  ASSERT_TRUE(table_.Create(named).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(table_.Create(named).status()));
  EXPECT_TRUE(table_.FindByName(kA.party, "db").has_value());
  EXPECT_FALSE(table_.FindByName(std::nullopt, "db").has_value());
  named.name = "42";
  EXPECT_TRUE(absl::IsInvalidArgument(table_.Create(named).status()));
  named.name = "a b";
  EXPECT_TRUE(absl::IsInvalidArgument(table_.Create(named).status()));
  named.name = "";
  for (int i = 1; i < 8; ++i) ASSERT_TRUE(table_.Create(named).ok());
  absl::Status full = table_.Create(named).status();
  EXPECT_TRUE(absl::IsResourceExhausted(full));
  EXPECT_THAT(full.message(), HasSubstr("--max-sync-objects=8"));
}

// What Persist hands the keeper: its notes, as the keeper holds them.
std::vector<std::string> Values(const std::map<std::string, std::string>& notes) {
  std::vector<std::string> values;
  for (const auto& [key, value] : notes) values.push_back(value);
  return values;
}

TEST_F(SyncTableTest, ObjectsAndHoldersComeBackFromTheirNotes) {
  std::map<std::string, std::string> notes;
  auto keep = [&notes](const std::string& key, std::optional<std::string> value) {
    if (value.has_value()) {
      notes[key] = *value;
    } else {
      notes.erase(key);
    }
  };
  SyncLimits limits{.max_objects_per_tree = 16, .max_waiters_per_object = 3};
  auto alive = [this](const SyncParty& party) { return !dead_.contains(party); };
  const SyncHolderId a_thread{.party = kA.party, .thread = 3};
  uint64_t lock = 0, rlock = 0, sem = 0, event = 0, barrier = 0, cond = 0, gone = 0, known = 0;
  // Stands for <state-dir>/next-sync-id, which outlives proctord.
  absl::StatusOr<std::unique_ptr<IdAllocator>> ids = IdAllocator::Open("");
  ASSERT_TRUE(ids.ok());
  {
    SyncTable before(time_, limits, alive);
    before.Persist(ids->get(), keep);
    auto make = [&](SyncCreateSpec spec) {
      spec.tree = "t";
      absl::StatusOr<SyncInfo> info = before.Create(spec);
      EXPECT_TRUE(info.ok()) << info.status();
      return info.ok() ? info->id : 0;
    };
    auto acquire = [&](uint64_t id, const SyncHolderId& holder) {
      Answer answer;
      before.Acquire(id, holder, false, std::nullopt, Into(answer));
      EXPECT_TRUE(Ok(answer));
    };
    lock = make({.kind = SyncKind::kLock, .name = "held", .owner = kA.party});
    rlock = make({.kind = SyncKind::kRLock});
    sem = make({.kind = SyncKind::kBoundedSemaphore, .value = 3});
    event = make({.kind = SyncKind::kEvent, .name = "ready"});
    barrier = make({.kind = SyncKind::kBarrier, .parties = 2, .timeout = absl::Seconds(5)});
    known = make({.kind = SyncKind::kBarrier, .parties = 3});
    ASSERT_TRUE(before.Bind(known, kA.party).ok());
    ASSERT_TRUE(before.Bind(known, kB.party).ok());
    cond = make({.kind = SyncKind::kCondition});
    gone = make({.kind = SyncKind::kEvent});
    acquire(lock, kB);
    acquire(rlock, a_thread);
    acquire(rlock, a_thread);
    acquire(sem, kB);
    acquire(sem, kB);
    acquire(cond, kC);
    ASSERT_TRUE(before.Set(event).ok());
    ASSERT_TRUE(before.Remove(gone).ok());
    Answer a, c;
    before.Wait(barrier, kA, std::nullopt, Into(a));
    before.Wait(barrier, kC, std::nullopt, Into(c));
    ASSERT_TRUE(Ok(a) && Ok(c));
    Answer parked;  // a waiter is not kept: its call ends with the old proctord
    before.Acquire(lock, kC, true, std::nullopt, Into(parked));
    EXPECT_EQ(notes.size(), 8u);  // the Condition's own RLock has a note too
    EXPECT_FALSE(notes.contains(absl::StrCat("sync/", gone)));
  }

  dead_.insert(kB.party);  // B ended while proctord was down
  SyncTable after(time_, limits, alive);
  after.Persist(ids->get(), keep);
  EXPECT_EQ(after.Restore(Values(notes)), 8u);
  // B's lock and semaphore units are free, abandoned for the next acquirers.
  EXPECT_EQ(after.Get(lock)->value, 1);
  EXPECT_EQ(after.Get(lock)->n_waiting, 0);
  Answer next;
  after.Acquire(lock, kC, false, std::nullopt, Into(next));
  ASSERT_TRUE(Ok(next));
  EXPECT_TRUE((*next.result)->abandoned);
  EXPECT_EQ(after.Get(sem)->value, 3);
  after.Acquire(sem, kC, false, std::nullopt, Into(next));
  EXPECT_TRUE((*next.result)->abandoned);
  // A's RLock is still A's thread's, two levels deep.
  absl::StatusOr<SyncInfo> r = after.Get(rlock);
  ASSERT_EQ(r->holders.size(), 1u);
  EXPECT_EQ(r->holders[0].count, 2);
  EXPECT_TRUE(absl::IsFailedPrecondition(after.Release(rlock, kC).status()));
  ASSERT_TRUE(after.Release(rlock, a_thread).ok());
  ASSERT_TRUE(after.Release(rlock, a_thread).ok());
  EXPECT_EQ(after.Get(rlock)->value, 1);
  // The Event's flag, the Barrier's round and timeout, the names and owners.
  EXPECT_TRUE(after.Get(event)->is_set);
  EXPECT_EQ(after.FindByName(std::nullopt, "ready")->id, event);
  EXPECT_EQ(after.FindByName(kA.party, "held")->id, lock);
  EXPECT_EQ(after.Get(barrier)->timeout, absl::Seconds(5));
  EXPECT_FALSE(after.Get(barrier)->broken);
  // B, a bound party, ended without arriving while proctord was down; A is still bound.
  absl::StatusOr<SyncInfo> known_now = after.Get(known);
  EXPECT_TRUE(known_now->broken);
  EXPECT_THAT(known_now->broken_reason,
              HasSubstr("process 2, one of its bound parties, ended without arriving"));
  ASSERT_EQ(known_now->bound.size(), 1u);
  EXPECT_EQ(known_now->bound[0], kA.party);
  // The Condition still works with its lock, which C holds.
  Answer woken;
  after.Wait(cond, kC, std::nullopt, Into(woken));
  EXPECT_TRUE(Pending(woken));
  // Ids go on above every id used before.
  absl::StatusOr<SyncInfo> fresh = after.Create({.kind = SyncKind::kLock, .tree = "t"});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_GT(fresh->id, gone);
  // A's end frees its object, and its note goes.
  after.PartyEnded(kA.party);
  EXPECT_FALSE(notes.contains(absl::StrCat("sync/", lock)));
}

}  // namespace
}  // namespace proctor
