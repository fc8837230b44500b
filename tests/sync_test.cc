// Sync objects against a real proctord: the library (client/sync.h) in this
// program and in real worker processes, the raw calls' errors, SIGKILLed
// holders, and the CLI. This binary is also the program its function targets
// re-execute (main() at the end).
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/credentials.h"
#include "client/process.h"
#include "client/sync.h"
#include "client/sync_client.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "tests/test_daemon.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::proctor::testing::Gate;
using ::proctor::testing::ReadFile;
using ::proctor::testing::TestDaemon;
using ::proctor::testing::WaitFor;
using ::proctor::testing::WriteFile;
using ::testing::AllOf;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Targets run in workers.

// Takes the lock, says so in `ready`, and holds it until killed.
int HoldForever(Lock lock, std::string ready) {
  if (!lock.acquire().value_or(false))
    return 2;
  WriteFile(ready, "held");
  absl::SleepFor(absl::Hours(1));
  return 0;
}
PROCTOR_FUNCTION(HoldForever);

// Adds 1 to the number in `path`, `times` times, each under the lock: read,
// then write back.
int Increment(Lock lock, std::string path, int times) {
  for (int i = 0; i < times; ++i) {
    std::scoped_lock hold(lock);
    int64_t n = 0;
    std::ifstream(path) >> n;
    std::ofstream(path, std::ios::trunc) << n + 1;
  }
  return 0;
}
PROCTOR_FUNCTION(Increment);

// Waits at the barrier (and so holds it back) until killed.
int WaitAtBarrier(Barrier barrier, std::string ready) {
  WriteFile(ready, "waiting");
  return barrier.wait().ok() ? 0 : 3;
}
PROCTOR_FUNCTION(WaitAtBarrier);

// A bound party (given the Barrier) that says it runs in `ready` and never
// arrives.
int NeverArrives(Barrier barrier, std::string ready) {
  WriteFile(ready, "running");
  absl::SleepFor(absl::Hours(1));
  return barrier.wait().ok() ? 0 : 3;
}
PROCTOR_FUNCTION(NeverArrives);

// A bound party that arrives once.
int PassOnce(Barrier barrier) {
  return barrier.wait(absl::Seconds(30)).ok() ? 0 : 3;
}
PROCTOR_FUNCTION(PassOnce);

// With a worker's key: binds process `outside` (not of its subtree), a session,
// and itself (bound already by its start); writes what it was told to
// `report`, one status a line, then stays.
int BindOutside(Barrier barrier, std::string outside, std::string report) {
  SyncClient sync(**DefaultClient());
  v1::SyncBindRequest request;
  request.set_id(barrier.id());
  request.set_process(std::stoull(outside));
  std::string told = absl::StrCat(sync.Bind(request).status().ToString(), "\n");
  request.set_session(1);
  absl::StrAppend(&told, sync.Bind(request).status().ToString(), "\n");
  absl::StrAppend(&told, barrier.bind().ToString(), "\n");
  WriteFile(report, told);
  absl::SleepFor(absl::Hours(1));
  return 0;
}
PROCTOR_FUNCTION(BindOutside);

// Tries a top-level object (refused) and one passed down from the session
// (reached).
int Reach(Event passed, std::string top_id) {
  Event top = *Event::FromArg(absl::StrCat("proctor-sync:Event:", top_id));
  absl::Status refused = top.set();
  std::cout << refused.code() << " " << refused.message() << std::endl;
  absl::Status allowed = passed.set();
  return allowed.ok() && absl::IsPermissionDenied(refused) ? 0 : 4;
}
PROCTOR_FUNCTION(Reach);

// ---------------------------------------------------------------------------------------------

// `status` is `code`, with exactly `message`.
void ExpectStatus(const absl::Status &status, absl::StatusCode code,
                  const std::string &message) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_EQ(status.message(), message);
}

class SyncTest : public ::testing::Test {
protected:
  void SetUp() override {
    absl::Status used = UseDaemon(
        {.address = daemon_.address(), .authkey_file = daemon_.authkey_path()});
    ASSERT_TRUE(used.ok()) << used;
  }

  Process StartOk(ProcessOptions options) {
    Process p(std::move(options));
    absl::Status started = p.start();
    EXPECT_TRUE(started.ok()) << started;
    return p;
  }

  TestDaemon daemon_;
  SyncClient sync_{daemon_.client()};
};

TEST_F(SyncTest, BadRequestsGetTheirCodeAndTheDaemonServesOn) {
  v1::SyncCreateRequest create;
  EXPECT_TRUE(absl::IsInvalidArgument(sync_.Create(create).status()));
  create.set_kind(static_cast<v1::SyncKind>(42));
  EXPECT_THAT(sync_.Create(create).status().message(),
              HasSubstr("is not a proctor.v1.SyncKind"));
  create.set_kind(v1::SYNC_SEMAPHORE);
  create.set_value(-1);
  EXPECT_EQ(sync_.Create(create).status().message(),
            "semaphore initial value must be >= 0");
  create.set_kind(v1::SYNC_BARRIER);
  EXPECT_EQ(sync_.Create(create).status().message(), "parties must be >= 1");
  create.set_kind(v1::SYNC_LOCK);
  create.set_session(999);
  EXPECT_TRUE(absl::IsNotFound(sync_.Create(create).status()));
  create.clear_session();
  create.set_name("two words");
  EXPECT_TRUE(absl::IsInvalidArgument(sync_.Create(create).status()));
  create.set_name("db");
  absl::StatusOr<v1::SyncObject> lock = sync_.Create(create);
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_TRUE(absl::IsAlreadyExists(sync_.Create(create).status()));
  create.set_exist_ok(true);
  EXPECT_EQ(sync_.Create(create)->id(), lock->id());
  create.set_kind(v1::SYNC_EVENT);
  EXPECT_THAT(sync_.Create(create).status().message(),
              HasSubstr("is a Lock, not a Event"));

  v1::SyncReleaseRequest release;
  release.set_id(lock->id());
  absl::Status unlocked = sync_.Release(release).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(unlocked));
  EXPECT_EQ(unlocked.message(), "release unlocked lock");
  v1::SyncAcquireRequest acquire;
  acquire.set_id(777);
  EXPECT_TRUE(absl::IsNotFound(sync_.Acquire(acquire).status()));
  acquire.set_id(lock->id());
  acquire.set_blocking(false);
  acquire.mutable_timeout()->set_seconds(1);
  EXPECT_EQ(sync_.Acquire(acquire).status().message(),
            "can't specify a timeout for a non-blocking call");
  acquire.clear_blocking();
  acquire.mutable_timeout()->set_seconds(-1);
  EXPECT_EQ(sync_.Acquire(acquire).status().message(),
            "timeout value must be a non-negative number");
  v1::SyncWaitRequest wait;
  wait.set_id(lock->id());
  EXPECT_THAT(sync_.Wait(wait).status().message(),
              HasSubstr("which has no wait()"));
  v1::SyncUpdateRequest update;
  update.set_id(lock->id());
  EXPECT_THAT(sync_.Update(update).status().message(),
              HasSubstr("op is required"));
  update.set_op(v1::SYNC_EVENT_SET);
  EXPECT_TRUE(absl::IsInvalidArgument(sync_.Update(update).status()));
  EXPECT_TRUE(daemon_.client().List(v1::StatusRequest()).ok());
}

TEST_F(SyncTest, LockableRLockAndSemaphoreThroughTheDaemon) {
  Lock lock;
  ASSERT_TRUE(lock.status().ok()) << lock.status();
  {
    std::scoped_lock hold(lock);
    EXPECT_TRUE(*lock.locked());
    EXPECT_FALSE(lock.try_lock());
    EXPECT_FALSE(lock.try_lock_for(std::chrono::milliseconds(50)));
  }
  EXPECT_FALSE(*lock.locked());
  EXPECT_EQ(lock.release().message(), "release unlocked lock");

  RLock rlock;
  ASSERT_TRUE(*rlock.acquire());
  ASSERT_TRUE(*rlock.acquire());
  std::thread other([&] {
    // Another thread is another owner, as in threading.
    EXPECT_FALSE(*rlock.acquire(false));
    EXPECT_EQ(rlock.release().message(), "cannot release un-acquired lock");
  });
  other.join();
  EXPECT_EQ(rlock.info()->holders(0).count(), 2);
  ASSERT_TRUE(rlock.release().ok());
  ASSERT_TRUE(rlock.release().ok());

  BoundedSemaphore sem(2);
  ASSERT_TRUE(*sem.acquire());
  EXPECT_EQ(*sem.get_value(), 1);
  ASSERT_TRUE(sem.release().ok());
  EXPECT_EQ(sem.release().message(), "Semaphore released too many times");
  EXPECT_EQ(Semaphore(-1).status().message(),
            "semaphore initial value must be >= 0");
}

TEST_F(SyncTest, EventConditionAndBarrier) {
  Event event;
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_TRUE(event.set().ok());
  });
  EXPECT_TRUE(*event.wait(absl::Seconds(10)));
  setter.join();
  ASSERT_TRUE(event.clear().ok());
  EXPECT_FALSE(*event.wait(absl::Milliseconds(20)));

  // A producer and a consumer with a Condition: every item is seen, in order.
  Condition cond;
  std::vector<int> items; // guarded by `cond`
  std::vector<int> seen;
  EXPECT_EQ(cond.wait().status().message(), "cannot wait on un-acquired lock");
  EXPECT_EQ(cond.notify().message(), "cannot notify on un-acquired lock");
  std::thread consumer([&] {
    for (int i = 0; i < 5; ++i) {
      std::scoped_lock hold(cond);
      EXPECT_TRUE(
          *cond.wait_for([&] { return !items.empty(); }, absl::Seconds(10)));
      seen.push_back(items.front());
      items.erase(items.begin());
    }
  });
  for (int i = 0; i < 5; ++i) {
    std::scoped_lock hold(cond);
    items.push_back(i);
    ASSERT_TRUE(cond.notify().ok());
  }
  consumer.join();
  EXPECT_THAT(seen, ::testing::ElementsAre(0, 1, 2, 3, 4));
  {
    std::scoped_lock hold(cond);
    EXPECT_FALSE(*cond.wait_for([] { return false; }, absl::Milliseconds(30)));
  }

  Barrier barrier(2);
  std::atomic<int64_t> other_index = -1;
  std::thread party([&] { other_index = barrier.wait().value_or(-2); });
  absl::StatusOr<int64_t> index = barrier.wait();
  party.join();
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(*index + other_index, 1);
  absl::StatusOr<int64_t> alone = barrier.wait(absl::Milliseconds(20));
  EXPECT_TRUE(absl::IsAborted(alone.status()));
  EXPECT_TRUE(*barrier.broken());
  ASSERT_TRUE(barrier.reset().ok());
  EXPECT_FALSE(*barrier.broken());
  ASSERT_TRUE(barrier.abort().ok());
  EXPECT_TRUE(*barrier.broken());
}

TEST_F(SyncTest, HolderSigkilledWhileOthersWaitLeavesTheLockAbandoned) {
  Lock lock;
  std::string ready = daemon_.dir() + "/ready";
  Process holder = StartOk({.target = HoldForever, .args = {lock, ready}});
  ASSERT_TRUE(
      WaitFor([&] { return !ReadFile(ready).empty(); }, absl::Seconds(10)));
  std::atomic<bool> got = false;
  std::thread waiter([&] { got = lock.acquire().value_or(false); });
  ASSERT_TRUE(WaitFor([&] { return lock.info()->n_waiting() == 1; }));
  ASSERT_TRUE(holder.kill().ok());
  waiter.join();
  EXPECT_TRUE(got);
  EXPECT_TRUE(lock.abandoned());
  ASSERT_TRUE(lock.release().ok());
  ASSERT_TRUE(*lock.acquire());
  EXPECT_FALSE(lock.abandoned()); // told once
}

// A party that arrived and is SIGKILLed while the others wait breaks it,
// named.
TEST_F(SyncTest, BarrierWithADeadPartyBreaks) {
  Barrier barrier(3);
  std::string ready = daemon_.dir() + "/ready";
  Process party = StartOk({.target = WaitAtBarrier, .args = {barrier, ready}});
  ASSERT_TRUE(WaitFor([&] { return barrier.n_waiting().value_or(0) == 1; },
                      absl::Seconds(10)));
  std::thread killer([&] {
    WaitFor([&] { return barrier.n_waiting().value_or(0) == 2; });
    EXPECT_TRUE(party.kill().ok());
  });
  absl::StatusOr<int64_t> index = barrier.wait();
  killer.join();
  EXPECT_TRUE(absl::IsAborted(index.status())) << index.status();
  EXPECT_THAT(index.status().message(), HasSubstr("BrokenBarrierError"));
  EXPECT_THAT(index.status().message(),
              HasSubstr(absl::StrCat("process ", party.id())));
}

// A child given a Barrier is one of its known parties: SIGKILLed before it
// arrives, it breaks the Barrier for those waiting, who are told its name.
TEST_F(SyncTest, ABoundPartySigkilledBeforeArrivingBreaksTheBarrier) {
  Barrier barrier(3);
  std::string ready = daemon_.dir() + "/ready";
  Process party = StartOk({.target = NeverArrives, .args = {barrier, ready}});
  ASSERT_TRUE(
      WaitFor([&] { return !ReadFile(ready).empty(); }, absl::Seconds(10)));
  absl::StatusOr<v1::SyncObject> info = barrier.info();
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->bound_size(), 1);
  EXPECT_EQ(info->bound(0).process(), party.id());
  EXPECT_THAT(
      daemon_.Cli({"--json", "sync", "ls"}).out,
      HasSubstr(absl::StrCat("\"bound\":[\"process:", party.id(), "\"]")));
  // Two waiters of this program (unbound), then the kill. Their timeout only
  // keeps the test from hanging: it would break the Barrier with another
  // reason.
  absl::StatusOr<int64_t> other;
  std::thread waiter([&] { other = barrier.wait(absl::Seconds(30)); });
  ASSERT_TRUE(WaitFor([&] { return barrier.n_waiting().value_or(0) == 1; }));
  std::thread killer([&] {
    WaitFor([&] { return barrier.n_waiting().value_or(0) == 2; });
    EXPECT_TRUE(party.kill().ok());
  });
  absl::StatusOr<int64_t> index = barrier.wait(absl::Seconds(30));
  killer.join();
  waiter.join();
  const std::string named =
      absl::StrCat("process ", party.id(),
                   ", one of its bound parties, ended without arriving");
  for (const absl::StatusOr<int64_t> *told : {&index, &other}) {
    EXPECT_TRUE(absl::IsAborted(told->status())) << told->status();
    EXPECT_THAT(told->status().message(), HasSubstr("BrokenBarrierError"));
    EXPECT_THAT(told->status().message(), HasSubstr(named));
  }
  EXPECT_TRUE(*barrier.broken());
  EXPECT_THAT(barrier.info()->broken_reason(), HasSubstr(named));
  EXPECT_EQ(barrier.info()->bound_size(), 0);
}

// `parties` stays a count: arrivals of processes that never bound fill it, a
// bound party among them.
TEST_F(SyncTest, UnboundExtraArrivalsStillCount) {
  Barrier barrier(3);
  Process bound = StartOk({.target = PassOnce, .args = {barrier}});
  absl::StatusOr<int64_t> other;
  std::thread extra([&] { other = barrier.wait(absl::Seconds(30)); });
  absl::StatusOr<int64_t> index = barrier.wait(absl::Seconds(30));
  extra.join();
  ASSERT_TRUE(bound.join().ok());
  EXPECT_EQ(bound.exitcode(), 0);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(*index, *other);
  // Its bound party has ended, so the next round could not be completed: the
  // Barrier says so at once, naming it, until reset().
  EXPECT_TRUE(WaitFor([&] { return barrier.broken().value_or(false); }));
  EXPECT_THAT(barrier.info()->broken_reason(),
              HasSubstr(absl::StrCat("process ", bound.id())));
  ASSERT_TRUE(barrier.reset().ok());
  std::vector<std::thread> threads;
  std::atomic<int> passed = 0;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back(
        [&] { passed += barrier.wait(absl::Seconds(30)).ok(); });
  }
  for (std::thread &t : threads)
    t.join();
  EXPECT_EQ(passed, 3) << "three arrivals of nobody bound";
}

TEST_F(SyncTest, BindingIsRefusedWithTheRightCode) {
  Barrier barrier(2);
  std::string ready = daemon_.dir() + "/ready";
  Process a = StartOk({.target = NeverArrives, .args = {barrier, ready}});
  v1::SyncBindRequest bind;
  bind.set_id(barrier.id());
  bind.set_process(a.id());
  ExpectStatus(sync_.Bind(bind).status(), absl::StatusCode::kAlreadyExists,
               absl::StrCat("process ", a.id(),
                            " is already a bound party of Barrier ",
                            barrier.id()));

  // A worker's key: a process outside its subtree, a session, itself again.
  v1::Process outside =
      testing::StartOk(daemon_.client(), {"/bin/sleep", "1000"});
  std::string report = daemon_.dir() + "/report";
  Process b = StartOk({.target = BindOutside,
                       .args = {barrier, absl::StrCat(outside.id()), report}});
  ASSERT_TRUE(
      WaitFor([&] { return !ReadFile(report).empty(); }, absl::Seconds(10)));
  std::vector<std::string> told = absl::StrSplit(ReadFile(report), '\n');
  ASSERT_GE(told.size(), 3u);
  EXPECT_THAT(told[0],
              AllOf(HasSubstr("PERMISSION_DENIED"),
                    HasSubstr(absl::StrCat("process ", outside.id(),
                                           " is outside the subtree"))));
  EXPECT_THAT(told[1], AllOf(HasSubstr("FAILED_PRECONDITION"),
                             HasSubstr("sessions are for clients")));
  EXPECT_THAT(told[2], HasSubstr("ALREADY_EXISTS"));

  // Both places are taken (a and b): one more party is refused, and a start
  // that would be one more starts nothing.
  bind.set_process(outside.id());
  ExpectStatus(
      sync_.Bind(bind).status(), absl::StatusCode::kFailedPrecondition,
      absl::StrCat("Barrier ", barrier.id(),
                   " has 2 parties, and all are bound already (process ",
                   a.id(), ", process ", b.id(), "): process ", outside.id(),
                   " cannot be one more"));
  size_t records = daemon_.client().List({})->size();
  Process c({.target = PassOnce, .args = {barrier}});
  absl::Status refused = c.start();
  EXPECT_TRUE(absl::IsFailedPrecondition(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("a new process cannot be one more"));
  EXPECT_EQ(daemon_.client().List({})->size(), records) << "nothing started";

  // The party: none, unknown, ended; the object: not a Barrier.
  bind.clear_process();
  EXPECT_EQ(sync_.Bind(bind).status().message(),
            "process or session is required: the party to bind");
  bind.set_session(999);
  EXPECT_TRUE(absl::IsNotFound(sync_.Bind(bind).status()));
  bind.set_process(999999);
  EXPECT_TRUE(absl::IsNotFound(sync_.Bind(bind).status()));
  v1::Process ended = testing::StartOk(daemon_.client(), {"/bin/true"});
  ASSERT_TRUE(daemon_.client().Join(ended.id()).ok());
  bind.set_process(ended.id());
  absl::Status gone = sync_.Bind(bind).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(gone)) << gone;
  EXPECT_THAT(gone.message(), HasSubstr("is not running"));
  Lock lock;
  bind.set_id(lock.id());
  bind.set_process(outside.id());
  EXPECT_TRUE(absl::IsInvalidArgument(sync_.Bind(bind).status()));
  records = daemon_.client().List({})->size();
  v1::StartRequest start;
  start.set_target("/bin/true");
  start.add_barriers(lock.id());
  EXPECT_TRUE(absl::IsInvalidArgument(daemon_.client().Start(start).status()));
  Barrier roomy(5);
  start.set_barriers(0, roomy.id());
  start.add_barriers(roomy.id());
  absl::Status twice_named = daemon_.client().Start(start).status();
  EXPECT_TRUE(absl::IsInvalidArgument(twice_named)) << twice_named;
  EXPECT_THAT(twice_named.message(), HasSubstr("is named twice"));
  EXPECT_EQ(daemon_.client().List({})->size(), records) << "nothing started";
  Process unstarted({.target = PassOnce, .args = {roomy}});
  EXPECT_TRUE(absl::IsFailedPrecondition(roomy.bind(unstarted)));

  for (Process *p : {&a, &b})
    EXPECT_TRUE(p->kill().ok());
  v1::TerminateRequest stop;
  stop.set_id(outside.id());
  EXPECT_TRUE(daemon_.client().Terminate(stop).ok());
}

TEST_F(SyncTest, SixteenProcessesLoseNoUpdate) {
  Lock lock;
  std::string counter = daemon_.dir() + "/counter";
  ASSERT_TRUE(WriteFile(counter, "0"));
  std::vector<Process> workers;
  for (int i = 0; i < 16; ++i) {
    workers.push_back(
        StartOk({.target = Increment, .args = {lock, counter, 1000}}));
  }
  for (Process &p : workers) {
    ASSERT_TRUE(p.join().ok());
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(ReadFile(counter), "16000");
}

TEST_F(SyncTest, AWorkersKeyReachesItsSessionsObjectsAndNothingAtTopLevel) {
  Event passed;
  absl::StatusOr<v1::SyncObject> top = [&] {
    v1::SyncCreateRequest create;
    create.set_kind(v1::SYNC_EVENT);
    return sync_.Create(create);
  }();
  ASSERT_TRUE(top.ok());
  Process p =
      StartOk({.target = Reach, .args = {passed, absl::StrCat(top->id())}});
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), 0) << ReadFile(p.record().stdout_path());
  EXPECT_THAT(ReadFile(p.record().stdout_path()),
              HasSubstr("outside the reach of process"));
  EXPECT_TRUE(*passed.is_set());
}

TEST_F(SyncTest, ACancelledWaitLeavesTheQueue) {
  Lock lock;
  ASSERT_TRUE(*lock.acquire());
  // A raw call whose deadline passes on the caller's side: gRPC cancels it, and
  // the daemon takes its wait out of the queue.
  absl::StatusOr<Credentials> credentials =
      FindCredentials(daemon_.authkey_path());
  ASSERT_TRUE(credentials.ok());
  CallAuth auth(*credentials);
  std::unique_ptr<v1::Sync::Stub> stub = v1::Sync::NewStub(grpc::CreateChannel(
      daemon_.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(
      absl::ToChronoTime(absl::Now() + absl::Milliseconds(300)));
  auth.Sign(context, "SyncAcquire");
  v1::SyncAcquireRequest acquire;
  acquire.set_id(lock.id());
  v1::SyncWaitResponse response;
  grpc::Status status = stub->SyncAcquire(&context, acquire, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([&] { return lock.info()->n_waiting() == 0; }));
  ASSERT_TRUE(lock.release().ok());
  EXPECT_TRUE(*lock.acquire(false));
}

// SyncCalls spoken raw, with the admin key: a stream of its own, signed once.
class RawSyncCalls {
public:
  explicit RawSyncCalls(const TestDaemon &daemon)
      : auth_(*FindCredentials(daemon.authkey_path())),
        stub_(v1::Sync::NewStub(grpc::CreateChannel(
            daemon.address(), grpc::InsecureChannelCredentials()))) {
    nonce_ = auth_.Sign(context_, "SyncCalls");
    stream_ = stub_->SyncCalls(&context_);
  }

  // OK when the daemon's headers prove it holds the key.
  absl::Status Proved() {
    stream_->WaitForInitialMetadata();
    return auth_.CheckReply(context_, "SyncCalls", nonce_, grpc::Status::OK,
                            "the test daemon");
  }
  bool Send(const v1::SyncCall &call) { return stream_->Write(call); }
  std::optional<v1::SyncCallResult> Answer() {
    v1::SyncCallResult result;
    if (!stream_->Read(&result))
      return std::nullopt;
    return result;
  }
  v1::SyncCallResult Call(const v1::SyncCall &call) {
    EXPECT_TRUE(Send(call));
    return Answer().value_or(v1::SyncCallResult());
  }
  grpc::ClientContext &context() { return context_; }
  grpc::ClientReaderWriter<v1::SyncCall, v1::SyncCallResult> &stream() {
    return *stream_;
  }

private:
  CallAuth auth_;
  std::unique_ptr<v1::Sync::Stub> stub_;
  grpc::ClientContext context_;
  std::string nonce_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SyncCall, v1::SyncCallResult>>
      stream_;
};

TEST_F(SyncTest, ASyncCallsStreamAnswersInOrderAndGoesOnAfterAnError) {
  Lock lock;
  RawSyncCalls raw(daemon_);
  ASSERT_TRUE(raw.Proved().ok());
  v1::SyncCall acquire;
  acquire.mutable_acquire()->set_id(lock.id());
  v1::SyncCallResult got = raw.Call(acquire);
  EXPECT_EQ(got.code(), 0) << got.message();
  EXPECT_TRUE(got.waited().ok());
  v1::SyncCall again = acquire;
  again.mutable_acquire()->set_blocking(false);
  EXPECT_FALSE(raw.Call(again).waited().ok()) << "a Lock is not re-entrant";
  v1::SyncCall unknown;
  unknown.mutable_release()->set_id(777);
  got = raw.Call(unknown);
  EXPECT_EQ(got.code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(got.message(), HasSubstr("777"));
  EXPECT_FALSE(got.has_object());
  got = raw.Call(v1::SyncCall());
  EXPECT_EQ(got.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(got.message(),
            "a SyncCall names one call: acquire, release, wait or update");
  v1::SyncCall wait;
  wait.mutable_wait()->set_id(lock.id());
  EXPECT_THAT(raw.Call(wait).message(), HasSubstr("which has no wait()"));
  v1::SyncCall release;
  release.mutable_release()->set_id(lock.id());
  got = raw.Call(release);
  EXPECT_EQ(got.code(), 0) << got.message();
  EXPECT_EQ(got.object().id(), lock.id());
  EXPECT_EQ(got.object().holders_size(), 0);
  got = raw.Call(release);
  EXPECT_EQ(got.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(got.message(), "release unlocked lock");
  raw.stream().WritesDone();
  grpc::Status closed = raw.stream().Finish();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
  EXPECT_TRUE(*lock.acquire(false)) << "the stream's release took effect";
}

TEST_F(SyncTest, ASyncCallsStreamWithoutAKeyOrWithGarbageIsEnded) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials());
  {
    grpc::ClientContext unsigned_context;
    auto stream = v1::Sync::NewStub(channel)->SyncCalls(&unsigned_context);
    v1::SyncCall acquire;
    acquire.mutable_acquire()->set_id(1);
    stream->Write(acquire);
    v1::SyncCallResult result;
    EXPECT_FALSE(stream->Read(&result));
    grpc::Status refused = stream->Finish();
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << refused.error_message();
  }
  // Bytes that are no SyncCall end the stream INVALID_ARGUMENT.
  CallAuth auth(*FindCredentials(daemon_.authkey_path()));
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  auth.Sign(context, "SyncCalls");
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, "/proctor.v1.Sync/SyncCalls", &cq);
  auto await = [&cq](intptr_t want) {
    void *tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
      if (reinterpret_cast<intptr_t>(tag) == want)
        return ok;
    }
    return false;
  };
  call->StartCall(reinterpret_cast<void *>(1));
  ASSERT_TRUE(await(1));
  grpc::Slice garbage(std::string("\xff\xff\xff\xff not a message"));
  call->Write(grpc::ByteBuffer(&garbage, 1), reinterpret_cast<void *>(2));
  await(2);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void *>(3));
  ASSERT_TRUE(await(3));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << status.error_message();
  cq.Shutdown();
  void *tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_TRUE(daemon_.client().List(v1::StatusRequest()).ok());
}

TEST_F(SyncTest, ACancelledSyncCallsStreamTakesItsWaitOutOfTheQueue) {
  Lock lock;
  ASSERT_TRUE(*lock.acquire());
  RawSyncCalls raw(daemon_);
  v1::SyncCall acquire;
  acquire.mutable_acquire()->set_id(lock.id());
  ASSERT_TRUE(raw.Send(acquire));
  ASSERT_TRUE(WaitFor([&] { return lock.info()->n_waiting() == 1; }));
  raw.context().TryCancel();
  EXPECT_TRUE(WaitFor([&] { return lock.info()->n_waiting() == 0; }));
  EXPECT_EQ(raw.stream().Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(lock.release().ok());
  EXPECT_TRUE(*lock.acquire(false)) << "nothing was granted to the cancelled wait";
}

// A call on a kept stream that proctord does not answer ends at its deadline, and
// the next call, once proctord answers again, is made on a new stream.
TEST_F(SyncTest, AKeptStreamThatIsNotAnsweredFailsAtTheCallTimeout) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.address = daemon_.address(),
                       .authkey_file = daemon_.authkey_path(),
                       .call_timeout = absl::Seconds(1)});
  ASSERT_TRUE(client.ok()) << client.status();
  SyncClient sync(**client);
  v1::SyncCreateRequest create;
  create.set_kind(v1::SYNC_LOCK);
  absl::StatusOr<v1::SyncObject> lock = sync.Create(create);
  ASSERT_TRUE(lock.ok()) << lock.status();
  v1::SyncAcquireRequest acquire;
  acquire.set_id(lock->id());
  ASSERT_TRUE(sync.Acquire(acquire)->ok());  // the stream is open and kept
  ASSERT_EQ(kill(daemon_.pid(), SIGSTOP), 0);
  // The signal is delivered at once, the stop is not: wait until every thread has stopped.
  ASSERT_TRUE(WaitFor([&] {
    for (const auto &task : std::filesystem::directory_iterator(
             absl::StrCat("/proc/", daemon_.pid(), "/task"))) {
      std::vector<std::string> fields =
          absl::StrSplit(ReadFile(task.path().string() + "/stat"), ' ');
      if (fields.size() < 3 || fields[2] != "T")
        return false;
    }
    return true;
  }));
  v1::SyncReleaseRequest release;
  release.set_id(lock->id());
  absl::Time before = absl::Now();
  absl::Status stopped = sync.Release(release).status();
  absl::Duration took = absl::Now() - before;
  ASSERT_EQ(kill(daemon_.pid(), SIGCONT), 0);
  EXPECT_TRUE(absl::IsDeadlineExceeded(stopped)) << stopped;
  EXPECT_THAT(stopped.message(), HasSubstr("did not answer within 1s"));
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(5));
  // Whether the cut-off release was done is unknown to the caller; the lock tells. A
  // proctord woken on a busy host may take more than this client's 1 s to catch up: it is
  // asked with the daemon's own client (the default 30 s) and then again with this one.
  SyncClient patient(daemon_.client());
  absl::StatusOr<v1::SyncObject> now = patient.Get(lock->id());
  ASSERT_TRUE(now.ok()) << now.status();
  if (now->holders_size() == 1) {
    EXPECT_TRUE(patient.Release(release).ok());
  }
  EXPECT_TRUE(sync.Acquire(acquire)->ok()) << "the next call goes on a new stream";
}

TEST_F(SyncTest, CliLockRunsTheCommandHoldingItAndReleasesAfter) {
  testing::CommandResult held = daemon_.Cli(
      {"lock", "build", "--", "sh", "-c", "proctor sync ls; exit 7"},
      {absl::StrCat("PATH=",
                    std::string(PROCTOR_CLI_PATH)
                        .substr(0, std::string(PROCTOR_CLI_PATH).rfind('/')),
                    ":/usr/bin:/bin"),
       absl::StrCat("PROCTOR_ADDRESS=", daemon_.address())});
  EXPECT_EQ(held.status, 7) << held.err;
  EXPECT_THAT(held.out, HasSubstr("build"));
  EXPECT_THAT(held.out, HasSubstr("session:"));
  EXPECT_EQ(
      daemon_.Cli({"lock", "build", "--timeout", "0", "--", "true"}).status, 0);
  EXPECT_EQ(daemon_.Cli({"sem", "pool", "--value", "1", "--", "true"}).status,
            0);
  EXPECT_EQ(daemon_.Cli({"event", "set", "go"}).status, 0);
  EXPECT_EQ(daemon_.Cli({"event", "wait", "go", "--timeout", "1"}).status, 0);
  EXPECT_EQ(daemon_.Cli({"event", "clear", "go"}).status, 0);
  EXPECT_EQ(daemon_.Cli({"event", "wait", "go", "--timeout", "0.05"}).status,
            124);
  testing::CommandResult ls = daemon_.Cli({"sync", "ls"});
  EXPECT_THAT(ls.out, HasSubstr("BoundedSemaphore  pool"));
  EXPECT_EQ(daemon_.Cli({"sync", "rm", "pool"}).status, 0);
  EXPECT_EQ(daemon_.Cli({"sync", "rm", "pool"}).status, 1);
  EXPECT_EQ(daemon_.Cli({"lock", "build"}).status, 2);
  EXPECT_EQ(daemon_.Cli({"event", "ring", "go"}).status, 2);
}

TEST_F(SyncTest, CliLockKilledReleases) {
  std::string out = daemon_.dir() + "/out", err = daemon_.dir() + "/err";
  pid_t cli = daemon_.StartCli({"lock", "db", "--", "sleep", "8"}, out, err);
  SyncClient &sync = sync_;
  auto held = [&] {
    v1::SyncListRequest filter;
    filter.set_name("db");
    absl::StatusOr<std::vector<v1::SyncObject>> found = sync.List(filter);
    return found.ok() && found->size() == 1 &&
           found->front().holders_size() == 1;
  };
  ASSERT_TRUE(WaitFor(held, absl::Seconds(10)));
  kill(cli, SIGKILL);
  testing::WaitForExit(cli, absl::Seconds(5));
  EXPECT_TRUE(WaitFor([&] { return !held(); }));
  testing::CommandResult next =
      daemon_.Cli({"lock", "db", "--timeout", "5", "--", "true"});
  EXPECT_EQ(next.status, 0);
  EXPECT_THAT(next.err, HasSubstr("abandoned"));
}

TEST_F(SyncTest, TheExamplesRun) {
  std::vector<std::string> env = {
      absl::StrCat("PROCTOR_ADDRESS=", daemon_.address()),
      absl::StrCat("PROCTOR_AUTHKEY_FILE=", daemon_.authkey_path())};
  testing::CommandResult hello = testing::RunCommand({LOCK_HELLO_PATH}, env);
  EXPECT_EQ(hello.status, 0) << hello.err;
  for (int i = 0; i < 10; ++i)
    EXPECT_THAT(hello.out, HasSubstr(absl::StrCat("hello world ", i, "\n")));
  testing::CommandResult pc =
      testing::RunCommand({PRODUCER_CONSUMER_PATH}, env);
  EXPECT_EQ(pc.status, 0) << pc.err;
  EXPECT_EQ(pc.out,
            "consumed 1\nconsumed 2\nconsumed 3\nconsumed 4\nconsumed 5\n");
}

} // namespace
} // namespace proctor

int main(int argc, char **argv) {
  proctor::MaybeRunChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
