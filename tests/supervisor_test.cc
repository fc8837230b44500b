// The supervision rules, driven by a fake os and fake time: no real process here.
#include "server/supervisor.h"

#include <unistd.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_process_os.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;

constexpr int kSigterm = 15;
constexpr int kSigkill = 9;
constexpr int kSigint = 2;

class SupervisorTest : public ::testing::Test {
 protected:
  SupervisorTest() : ids_(*IdAllocator::Open("")) { Make(SupervisorOptions{}); }

  void Make(SupervisorOptions options) {
    options.log_dir = "/nonexistent/logs";
    if (options.base_env.empty()) options.base_env = {"PATH=/usr/bin", "HOME=/root"};
    supervisor_ = std::make_unique<Supervisor>(options, os_, time_, time_, *ids_);
  }

  ProcessInfo StartOk(StartSpec spec) {
    absl::StatusOr<ProcessInfo> info = supervisor_->Start(spec);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.value_or(ProcessInfo{});
  }

  // A daemonic one in a session of its own, which outlives the test: it needs a parent.
  ProcessInfo StartTrue(bool daemon = false) {
    uint64_t session = daemon ? *supervisor_->OpenSession(absl::Hours(1), [] {}) : 0;
    return StartOk(StartSpec{.target = "/bin/true", .daemon = daemon, .session = session});
  }

  // Calls Join/Terminate and keeps what their callback delivers (nothing until it runs).
  struct Result {
    std::optional<absl::StatusOr<ProcessInfo>> value;
    Supervisor::Done Callback() {
      return [this](absl::StatusOr<ProcessInfo> r) { value = std::move(r); };
    }
  };

  FakeProcessOs os_;
  FakeTime time_;
  std::unique_ptr<IdAllocator> ids_;
  std::unique_ptr<Supervisor> supervisor_;
};

TEST_F(SupervisorTest, StartRecordsTheProcessWithDefaultNames) {
  ProcessInfo first = StartTrue();
  ProcessInfo second = StartOk(StartSpec{.target = "sleep", .args = {"5"}});
  EXPECT_EQ(first.name, "Process-1");
  EXPECT_EQ(second.name, "Process-2");
  EXPECT_NE(first.id, second.id);
  EXPECT_TRUE(second.running);
  EXPECT_EQ(second.target, "/usr/bin/sleep");
  EXPECT_EQ(StartOk(StartSpec{.target = "/bin/true", .name = "egon"}).name, "egon");
}

TEST_F(SupervisorTest, ARecordShowsTheDirectoryItStartedInAlsoWhenDefaulted) {
  char* here = getcwd(nullptr, 0);
  ASSERT_NE(here, nullptr);
  std::string daemons(here);
  free(here);
  EXPECT_EQ(StartTrue().cwd, daemons);
  EXPECT_EQ(os_.launches.back().cwd, daemons);
  EXPECT_EQ(StartOk(StartSpec{.target = "/bin/true", .cwd = "/tmp"}).cwd, "/tmp");
}

TEST_F(SupervisorTest, KwargsFollowArgsSortedByKey) {
  ProcessInfo info = StartOk(StartSpec{
      .target = "/bin/echo", .args = {"a", "b"}, .kwargs = {{"name", "egon"}, {"age", "18"}}});
  EXPECT_THAT(info.args, ElementsAre("a", "b", "--age=18", "--name=egon"));
  EXPECT_THAT(os_.launches.back().argv,
              ElementsAre("/bin/echo", "a", "b", "--age=18", "--name=egon"));
}

TEST_F(SupervisorTest, RequestEnvironmentOverridesTheBase) {
  StartOk(StartSpec{.target = "/bin/true", .env = {"HOME=/tmp", "EXTRA=1"}});
  const std::vector<std::string>& envp = os_.launches.back().envp;
  ASSERT_EQ(envp.size(), 7u);
  EXPECT_THAT(std::vector<std::string>(envp.begin(), envp.begin() + 3),
              ElementsAre("PATH=/usr/bin", "HOME=/tmp", "EXTRA=1"));
}

TEST_F(SupervisorTest, TheLastEntryOfANameWinsInThePlaceOfItsFirst) {
  // Values past the short-string size, so that each replacement frees the buffer it replaces.
  const std::string first_home = "HOME=/home/a-directory-name-long-enough-to-be-on-the-heap";
  const std::string last_home = "HOME=/home/another-directory-name-long-enough-for-the-heap";
  StartOk(StartSpec{.target = "/bin/true",
                    .env = {first_home, "A_VARIABLE_NAME_LONGER_THAN_SSO=1", last_home,
                            "A_VARIABLE_NAME_LONGER_THAN_SSO=22", "HOME=/tmp"}});
  const std::vector<std::string>& envp = os_.launches.back().envp;
  ASSERT_EQ(envp.size(), 7u);
  EXPECT_THAT(std::vector<std::string>(envp.begin(), envp.begin() + 3),
              ElementsAre("PATH=/usr/bin", "HOME=/tmp", "A_VARIABLE_NAME_LONGER_THAN_SSO=22"));
}

// The value of `name` in the environment of the last process launched.
std::string LastEnv(const FakeProcessOs& os, const std::string& name) {
  for (const std::string& entry : os.launches.back().envp) {
    if (entry.starts_with(name + "=")) return entry.substr(name.size() + 1);
  }
  return "";
}

TEST_F(SupervisorTest, WorkerFindsItsIdAndKeyInItsEnvironment) {
  ProcessInfo info = StartOk(StartSpec{.target = "/bin/true", .env = {"PROCTOR_ID=forged"}});
  std::optional<std::string> key = supervisor_->CredentialOf(info.id);
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->size(), 32u);
  const std::vector<std::string>& envp = os_.launches.back().envp;
  EXPECT_THAT(envp, Contains(absl::StrCat("PROCTOR_ID=", info.id)));
  EXPECT_THAT(envp, Contains("PROCTOR_AUTHKEY=" + HexEncode(*key)));
  EXPECT_THAT(envp, Not(Contains("PROCTOR_ID=forged")));
  EXPECT_NE(LastEnv(os_, "PROCTOR_PROCESS_AUTHKEY"), HexEncode(*key))
      << "multiprocessing's authkey is not the credential";
  EXPECT_NE(supervisor_->CredentialOf(StartTrue().id), key) << "each top-level worker its own key";
}

TEST_F(SupervisorTest, ChildrenAreNamedInheritKeysAndFormASubtree) {
  ProcessInfo first = StartTrue();
  ProcessInfo parent = StartTrue();
  std::string parent_authkey = LastEnv(os_, "PROCTOR_PROCESS_AUTHKEY");
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  ProcessInfo second = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  ProcessInfo grandchild = StartOk(StartSpec{.target = "/bin/true", .parent_id = child.id});
  EXPECT_EQ(LastEnv(os_, "PROCTOR_PROCESS_AUTHKEY"), parent_authkey)
      << "multiprocessing's authkey is inherited";
  ProcessInfo keyed =
      StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id, .authkey = "own key"});
  EXPECT_EQ(LastEnv(os_, "PROCTOR_PROCESS_AUTHKEY"), HexEncode("own key"));
  EXPECT_EQ(parent.name, "Process-2");
  EXPECT_EQ(child.name, "Process-2:1");
  EXPECT_EQ(second.name, "Process-2:2");
  EXPECT_EQ(grandchild.name, "Process-2:1:1");
  EXPECT_NE(supervisor_->CredentialOf(grandchild.id), supervisor_->CredentialOf(parent.id))
      << "a child's credential is its own: it cannot act as its parent";
  EXPECT_NE(supervisor_->CredentialOf(child.id), supervisor_->CredentialOf(parent.id));
  EXPECT_THAT(supervisor_->Get(parent.id)->children,
              ElementsAre(child.id, second.id, keyed.id));
  EXPECT_TRUE(supervisor_->InSubtree(parent.id, grandchild.id));
  EXPECT_TRUE(supervisor_->InSubtree(parent.id, parent.id));
  EXPECT_FALSE(supervisor_->InSubtree(child.id, second.id));
  EXPECT_FALSE(supervisor_->InSubtree(parent.id, first.id));
  std::vector<uint64_t> subtree;
  for (const ProcessInfo& p : supervisor_->List(ListFilter{.subtree_of = child.id})) {
    subtree.push_back(p.id);
  }
  EXPECT_THAT(subtree, ElementsAre(child.id, grandchild.id));
}

TEST_F(SupervisorTest, DaemonicProcessesNeedAParentOrASession) {
  absl::StatusOr<ProcessInfo> alone =
      supervisor_->Start(StartSpec{.target = "/bin/true", .daemon = true});
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(alone.status().message(),
              HasSubstr("a daemonic process needs a parent that it ends with"));
  EXPECT_TRUE(supervisor_->List({}).empty()) << "a refused start left a record";
}

TEST_F(SupervisorTest, DaemonicProcessesMayNotHaveChildren) {
  ProcessInfo parent = StartTrue();
  ProcessInfo daemon =
      StartOk(StartSpec{.target = "/bin/true", .daemon = true, .parent_id = parent.id});
  absl::StatusOr<ProcessInfo> child =
      supervisor_->Start(StartSpec{.target = "/bin/true", .parent_id = daemon.id});
  EXPECT_EQ(child.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(child.status().message(), "daemonic processes are not allowed to have children");
}

TEST_F(SupervisorTest, FailedLaunchLeavesNoRecord) {
  os_.FailNextLaunch(absl::NotFoundError("target /nope: No such file or directory"));
  absl::StatusOr<ProcessInfo> info = supervisor_->Start(StartSpec{.target = "/nope"});
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(supervisor_->List(ListFilter{}), IsEmpty());
  EXPECT_THAT(supervisor_->List(ListFilter{.running = true}), IsEmpty());
}

TEST_F(SupervisorTest, BadStartRequestsAreInvalidArguments) {
  const std::string nul("a\0b", 3);
  struct Case {
    StartSpec spec;
    std::string message;
  } cases[] = {
      {StartSpec{.target = ""}, "target is empty"},
      {StartSpec{.target = nul}, "target contains a NUL byte"},
      {StartSpec{.target = "/bin/true", .args = {"ok", nul}}, "args[1] contains a NUL byte"},
      {StartSpec{.target = "/bin/true", .env = {"A=" + nul}}, "env[0] contains a NUL byte"},
      {StartSpec{.target = "/bin/true", .env = {"NOEQUALS"}}, "is not KEY=VALUE"},
      {StartSpec{.target = "/bin/true", .env = {"=x"}}, "is not KEY=VALUE"},
      {StartSpec{.target = "/bin/true", .cwd = "/tmp" + nul}, "cwd contains a NUL byte"},
      {StartSpec{.target = "/bin/true", .cwd = "relative"}, "must be an absolute path"},
      {StartSpec{.target = "/bin/true", .name = std::string(257, 'n')}, "the limit is 256"},
      {StartSpec{.target = "/bin/true", .kwargs = {{"k", nul}}}, "kwargs[k] contains a NUL"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ProcessInfo> info = supervisor_->Start(c.spec);
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(info.status().message(), HasSubstr(c.message));
  }
  EXPECT_THAT(os_.launches, IsEmpty());
}

TEST_F(SupervisorTest, ArgumentsBeyondArgMaxAreRefused) {
  Make(SupervisorOptions{.arg_max = 4096});
  absl::StatusOr<ProcessInfo> info =
      supervisor_->Start(StartSpec{.target = "/bin/true", .args = {std::string(5000, 'x')}});
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(info.status().message(), HasSubstr("ARG_MAX of 4096"));
}

TEST_F(SupervisorTest, JoinCompletesAtExitWithTheExitCode) {
  ProcessInfo info = StartTrue();
  Result joined;
  supervisor_->Join(info.id, std::nullopt, joined.Callback());
  EXPECT_FALSE(joined.value.has_value());
  os_.Exit(info.pid, WaitStatus::Exited(3));
  ASSERT_TRUE(joined.value.has_value());
  ASSERT_TRUE(joined.value->ok());
  EXPECT_FALSE((*joined.value)->running);
  EXPECT_EQ((*joined.value)->status->exitcode(), 3);
}

TEST_F(SupervisorTest, JoinTimeoutReturnsTheRunningRecord) {
  ProcessInfo info = StartTrue();
  Result joined;
  supervisor_->Join(info.id, absl::Seconds(2), joined.Callback());
  time_.Advance(absl::Seconds(1));
  EXPECT_FALSE(joined.value.has_value());
  time_.Advance(absl::Seconds(1));
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_TRUE((*joined.value)->running);
  os_.Exit(info.pid, WaitStatus::Exited(0));  // the finished waiter is not called again
}

TEST_F(SupervisorTest, JoinOfAnEndedProcessAnswersAtOnce) {
  ProcessInfo info = StartTrue();
  os_.Exit(info.pid, WaitStatus::Signaled(kSigkill));
  Result joined;
  supervisor_->Join(info.id, std::nullopt, joined.Callback());
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_EQ((*joined.value)->status->exitcode(), -9);
}

TEST_F(SupervisorTest, JoinErrors) {
  Result unknown, negative;
  supervisor_->Join(42, std::nullopt, unknown.Callback());
  EXPECT_EQ(unknown.value->status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.value->status().message(), "no process with id 42");
  ProcessInfo info = StartTrue();
  supervisor_->Join(info.id, absl::Seconds(-1), negative.Callback());
  EXPECT_EQ(negative.value->status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SupervisorTest, CancelledJoinIsNeverAnswered) {
  ProcessInfo info = StartTrue();
  Result joined;
  Supervisor::WaiterId waiter = supervisor_->Join(info.id, absl::Seconds(5), joined.Callback());
  supervisor_->CancelWait(waiter);
  time_.Advance(absl::Seconds(10));
  os_.Exit(info.pid, WaitStatus::Exited(0));
  EXPECT_FALSE(joined.value.has_value());
  EXPECT_EQ(time_.pending(), 0u);
}

TEST_F(SupervisorTest, TerminateSignalsTheGroupThenKillsAfterGrace) {
  ProcessInfo info = StartTrue();
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(10)}, terminated.Callback());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, kSigterm)));
  time_.Advance(absl::Seconds(9));
  EXPECT_EQ(os_.signals.size(), 1u);
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, kSigterm), Pair(info.pid, kSigkill)));
  EXPECT_FALSE(terminated.value.has_value());
  os_.Exit(info.pid, WaitStatus::Signaled(kSigkill));
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_EQ((*terminated.value)->status->exitcode(), -9);
  EXPECT_EQ(time_.pending(), 0u);
}

TEST_F(SupervisorTest, TerminateWaitsForTheWholeGroupToGo) {
  ProcessInfo info = StartTrue();
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigint, .grace = absl::Seconds(1)}, terminated.Callback());
  os_.Exit(info.pid, WaitStatus::Signaled(kSigint), /*group_empties=*/false);
  EXPECT_FALSE(terminated.value.has_value()) << "a grandchild is still in the group";
  EXPECT_EQ(supervisor_->Release(info.id).code(), absl::StatusCode::kFailedPrecondition);
  os_.DrainGroup(info.pid);
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_EQ((*terminated.value)->status->exitcode(), -2);
}

TEST_F(SupervisorTest, LeftoverGroupIsKilledAfterGrace) {
  ProcessInfo info = StartTrue();
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1)}, terminated.Callback());
  os_.Exit(info.pid, WaitStatus::Signaled(kSigterm), /*group_empties=*/false);
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals.back(), Pair(info.pid, kSigkill));
  os_.DrainGroup(info.pid);
  EXPECT_TRUE(terminated.value.has_value());
}

TEST_F(SupervisorTest, TerminateWithoutWaitAnswersAtOnce) {
  ProcessInfo info = StartTrue();
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1), .wait = false}, terminated.Callback());
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_TRUE((*terminated.value)->running);
}

TEST_F(SupervisorTest, TerminateOfAnEndedProcessReturnsItsRecord) {
  ProcessInfo info = StartTrue();
  os_.Exit(info.pid, WaitStatus::Exited(0));
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1)}, terminated.Callback());
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_EQ((*terminated.value)->status->exitcode(), 0);
  EXPECT_THAT(os_.signals, IsEmpty());
}

TEST_F(SupervisorTest, TerminateErrors) {
  ProcessInfo info = StartTrue();
  struct Case {
    uint64_t id;
    int sig;
    absl::Duration grace;
    absl::StatusCode code;
    std::string message;
  } cases[] = {
      {info.id, 0, absl::Seconds(1), absl::StatusCode::kInvalidArgument, "signal 0"},
      {info.id, -3, absl::Seconds(1), absl::StatusCode::kInvalidArgument, "negative"},
      {info.id, 65, absl::Seconds(1), absl::StatusCode::kInvalidArgument, "above the maximum"},
      {info.id, kSigterm, absl::Seconds(-1), absl::StatusCode::kInvalidArgument, "grace"},
      {999, kSigterm, absl::Seconds(1), absl::StatusCode::kNotFound, "no process with id 999"},
  };
  for (const Case& c : cases) {
    Result r;
    supervisor_->Terminate(c.id, TerminateOptions{.signal = c.sig, .grace = c.grace}, r.Callback());
    ASSERT_TRUE(r.value.has_value());
    EXPECT_EQ(r.value->status().code(), c.code) << c.message;
    EXPECT_THAT(r.value->status().message(), HasSubstr(c.message));
  }
  EXPECT_THAT(os_.signals, IsEmpty());
}

TEST_F(SupervisorTest, ReleaseForgetsEndedRecordsOnly) {
  ProcessInfo info = StartTrue();
  absl::Status running = supervisor_->Release(info.id);
  EXPECT_EQ(running.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(running.message(), HasSubstr("still running"));
  os_.Exit(info.pid, WaitStatus::Exited(0));
  EXPECT_TRUE(supervisor_->Release(info.id).ok());
  EXPECT_EQ(supervisor_->Get(info.id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(supervisor_->Release(info.id).code(), absl::StatusCode::kNotFound);
}

TEST_F(SupervisorTest, RetentionEvictsTheOldestEndedRecords) {
  Make(SupervisorOptions{.retain = 2});
  ProcessInfo running = StartTrue();
  std::vector<ProcessInfo> ended;
  for (int i = 0; i < 4; ++i) {
    ended.push_back(StartTrue());
    os_.Exit(ended.back().pid, WaitStatus::Exited(i));
  }
  std::vector<uint64_t> kept;
  for (const ProcessInfo& p : supervisor_->List(ListFilter{})) kept.push_back(p.id);
  EXPECT_THAT(kept, ElementsAre(running.id, ended[2].id, ended[3].id));
}

TEST_F(SupervisorTest, IdsAreNeverReused) {
  ProcessInfo a = StartTrue();
  os_.Exit(a.pid, WaitStatus::Exited(0));
  ASSERT_TRUE(supervisor_->Release(a.id).ok());
  EXPECT_GT(StartTrue().id, a.id);
}

TEST_F(SupervisorTest, ListFilters) {
  ProcessInfo a = StartOk(StartSpec{.target = "/bin/true", .name = "web"});
  ProcessInfo b = StartOk(StartSpec{.target = "/bin/true", .name = "db"});
  os_.Exit(b.pid, WaitStatus::Exited(0));
  auto ids = [&](ListFilter f) {
    std::vector<uint64_t> out;
    for (const ProcessInfo& p : supervisor_->List(f)) out.push_back(p.id);
    return out;
  };
  EXPECT_THAT(ids(ListFilter{}), ElementsAre(a.id, b.id));
  EXPECT_THAT(ids(ListFilter{.running = true}), ElementsAre(a.id));
  EXPECT_THAT(ids(ListFilter{.running = false}), ElementsAre(b.id));
  EXPECT_THAT(ids(ListFilter{.name = "db"}), ElementsAre(b.id));
  EXPECT_THAT(ids(ListFilter{.parent_id = 7}), IsEmpty());
}

TEST_F(SupervisorTest, ShutdownEndsDaemonsAtOnceAndOthersAfterGrace) {
  ProcessInfo daemon = StartTrue(/*daemon=*/true);
  ProcessInfo worker = StartTrue();
  bool done = false;
  supervisor_->Shutdown(absl::Seconds(10), [&] { done = true; });
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemon.pid, kSigterm)));
  EXPECT_EQ(supervisor_->Start(StartSpec{.target = "/bin/true"}).status().code(),
            absl::StatusCode::kUnavailable);
  os_.Exit(daemon.pid, WaitStatus::Signaled(kSigterm));
  time_.Advance(absl::Seconds(10));
  EXPECT_THAT(os_.signals.back(), Pair(worker.pid, kSigterm));
  EXPECT_FALSE(done);
  time_.Advance(absl::Seconds(10));
  EXPECT_THAT(os_.signals.back(), Pair(worker.pid, kSigkill));
  os_.Exit(worker.pid, WaitStatus::Signaled(kSigkill));
  EXPECT_TRUE(done);
}

TEST_F(SupervisorTest, ShutdownWithNothingRunningIsDoneAtOnce) {
  ProcessInfo info = StartTrue();
  os_.Exit(info.pid, WaitStatus::Exited(0));
  bool done = false;
  supervisor_->Shutdown(absl::Seconds(10), [&] { done = true; });
  EXPECT_TRUE(done);
}

TEST_F(SupervisorTest, DaemonicChildrenEndWithTheirParentOthersLiveOn) {
  ProcessInfo parent = StartTrue();
  ProcessInfo daemonic =
      StartOk(StartSpec{.target = "/bin/true", .daemon = true, .parent_id = parent.id});
  ProcessInfo ordinary = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  os_.Exit(parent.pid, WaitStatus::Signaled(kSigkill));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemonic.pid, kSigterm)));
  time_.Advance(Supervisor::kDefaultGrace);
  EXPECT_THAT(os_.signals.back(), Pair(daemonic.pid, kSigkill));
  os_.Exit(daemonic.pid, WaitStatus::Signaled(kSigkill));
  EXPECT_TRUE(supervisor_->Get(ordinary.id)->running);
  EXPECT_EQ(supervisor_->Get(ordinary.id)->parent_id, parent.id);
}

TEST_F(SupervisorTest, TreeTerminateReachesChildrenAndStrays) {
  ProcessInfo root = StartTrue();
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = root.id});
  os_.AddStray(4242, root.pid);
  Result terminated;
  supervisor_->Terminate(root.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1)}, terminated.Callback());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(root.pid, kSigterm), Pair(child.pid, kSigterm),
                                             Pair(4242, kSigterm)));
  os_.Exit(root.pid, WaitStatus::Signaled(kSigterm));
  os_.Exit(child.pid, WaitStatus::Signaled(kSigterm));
  EXPECT_FALSE(terminated.value.has_value()) << "the stray still lives";
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals.back(), Pair(4242, kSigkill));
  os_.ReapStray(4242);
  EXPECT_TRUE(terminated.value.has_value());
}

// Most records kept are ended ones: they keep no waiters, timers or restart state, only
// while something is still in progress on them.
TEST_F(SupervisorTest, AnEndedRecordKeepsWhatIsInProgressOnItAndNothingElse) {
  ProcessInfo joined_one = StartTrue();
  ProcessInfo with_stray = StartTrue();
  EXPECT_EQ(supervisor_->Counts().in_progress, 2u) << "both run";
  Result joined;
  supervisor_->Join(joined_one.id, std::nullopt, joined.Callback());
  os_.Exit(joined_one.pid, WaitStatus::Exited(0));
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_EQ(supervisor_->Counts().in_progress, 1u) << "answered and ended: nothing left";
  Result again;
  supervisor_->Join(joined_one.id, std::nullopt, again.Callback());
  EXPECT_TRUE(again.value.has_value());
  EXPECT_EQ(supervisor_->Counts().in_progress, 1u) << "a Join of an ended record keeps nothing";

  // A tree terminate of an ended worker whose leftover lives goes on until the leftover is
  // gone, and answers then.
  os_.AddStray(4242, with_stray.pid);
  os_.Exit(with_stray.pid, WaitStatus::Exited(0));
  EXPECT_EQ(supervisor_->Counts().in_progress, 0u);
  Result terminated;
  supervisor_->Terminate(with_stray.id,
                         TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1)},
                         terminated.Callback());
  EXPECT_EQ(supervisor_->Counts().in_progress, 1u) << "a terminator waits on it";
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals.back(), Pair(4242, kSigkill)) << "its grace was kept";
  EXPECT_FALSE(terminated.value.has_value());
  os_.ReapStray(4242);
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_TRUE(terminated.value->ok());
  time_.Advance(absl::Seconds(5));
  EXPECT_EQ(supervisor_->Counts().in_progress, 0u);
  EXPECT_EQ(time_.pending(), 0u);

  // A parent that ends while its child's launch is in flight keeps the count of that launch
  // until the child is committed, and nothing after.
  ProcessInfo parent = StartTrue();
  os_.DuringNextLaunch([&](pid_t) { os_.Exit(parent.pid, WaitStatus::Exited(0)); });
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  EXPECT_FALSE(supervisor_->Get(parent.id)->running);
  EXPECT_EQ(supervisor_->Counts().in_progress, 1u) << "the child alone";
  os_.Exit(child.pid, WaitStatus::Exited(0));
  EXPECT_EQ(supervisor_->Counts().in_progress, 0u);
}

TEST_F(SupervisorTest, NarrowTerminateSignalsOnlyTheGroup) {
  ProcessInfo root = StartTrue();
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = root.id});
  Result terminated;
  supervisor_->Terminate(root.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1), .wait = false, .tree = false}, terminated.Callback());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(root.pid, kSigterm)));
  EXPECT_TRUE(supervisor_->Get(child.id)->running);
}

TEST_F(SupervisorTest, SessionEndTerminatesItsDaemonicProcesses) {
  uint64_t session = *supervisor_->OpenSession(absl::Seconds(5), [] {});
  ProcessInfo daemonic = StartOk(StartSpec{.target = "/bin/true", .daemon = true, .session = session});
  ProcessInfo ordinary = StartOk(StartSpec{.target = "/bin/true", .session = session});
  EXPECT_EQ(daemonic.parent_session, session);
  supervisor_->CloseSession(session);
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemonic.pid, kSigterm)));
  EXPECT_EQ(supervisor_->TouchSession(session).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(supervisor_->Start(StartSpec{.target = "/bin/true", .session = session}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(supervisor_->Get(ordinary.id)->running);
}

TEST_F(SupervisorTest, SessionExpiresWithoutKeepAlives) {
  bool expired = false;
  uint64_t session = *supervisor_->OpenSession(absl::Seconds(3), [&] { expired = true; });
  ProcessInfo daemonic = StartOk(StartSpec{.target = "/bin/true", .daemon = true, .session = session});
  time_.Advance(absl::Seconds(2));
  ASSERT_TRUE(supervisor_->TouchSession(session).ok());
  time_.Advance(absl::Seconds(2));
  EXPECT_FALSE(expired) << "the keep-alive restarted the lease";
  time_.Advance(absl::Seconds(1));
  EXPECT_TRUE(expired);
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemonic.pid, kSigterm)));
}

TEST_F(SupervisorTest, LimitsAreResourceExhaustedNamingTheLimit) {
  Make(SupervisorOptions{.max_processes = 5, .max_children = 2, .max_depth = 3});
  ProcessInfo root = StartTrue();
  ProcessInfo a = StartOk(StartSpec{.target = "/bin/true", .parent_id = root.id});
  StartOk(StartSpec{.target = "/bin/true", .parent_id = root.id});
  absl::Status third = supervisor_->Start(StartSpec{.target = "/bin/true", .parent_id = root.id}).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max-children=2"));
  ProcessInfo deep = StartOk(StartSpec{.target = "/bin/true", .parent_id = a.id});
  absl::Status deeper = supervisor_->Start(StartSpec{.target = "/bin/true", .parent_id = deep.id}).status();
  EXPECT_EQ(deeper.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(deeper.message(), HasSubstr("--max-depth=3"));
  StartTrue();
  absl::Status total = supervisor_->Start(StartSpec{.target = "/bin/true"}).status();
  EXPECT_EQ(total.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(total.message(), HasSubstr("--max-processes=5"));
  os_.Exit(deep.pid, WaitStatus::Exited(0));
  EXPECT_TRUE(supervisor_->Start(StartSpec{.target = "/bin/true"}).ok()) << "room again";
}

// A record is invisible while its launch is in flight, yet counted against the limits, and
// its worker's key is known already (the worker may call back before Start returns).
TEST_F(SupervisorTest, LaunchInFlightIsInvisibleButCounted) {
  Make(SupervisorOptions{.max_processes = 1});
  std::optional<absl::Status> second;
  std::optional<uint64_t> id_seen;
  bool key_known = false;
  os_.DuringNextLaunch([&](pid_t) {
    second = supervisor_->Start(StartSpec{.target = "/bin/true"}).status();
    for (uint64_t id = 1; id < 10; ++id) {
      if (supervisor_->CredentialOf(id).has_value()) {
        id_seen = id;
        key_known = true;
      }
    }
    EXPECT_THAT(supervisor_->List(ListFilter{}), IsEmpty());
    if (id_seen) {
      EXPECT_EQ(supervisor_->Get(*id_seen).status().code(), absl::StatusCode::kNotFound);
    }
  });
  ProcessInfo info = StartTrue();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(key_known);
  EXPECT_EQ(id_seen, info.id);
  EXPECT_THAT(os_.confined, ElementsAre(info.pid));
}

TEST_F(SupervisorTest, FailedLaunchLeavesNoTraceInItsParent) {
  ProcessInfo parent = StartTrue();
  os_.FailNextLaunch(absl::NotFoundError("target /nope: No such file or directory"));
  EXPECT_FALSE(supervisor_->Start(StartSpec{.target = "/nope", .parent_id = parent.id}).ok());
  EXPECT_THAT(supervisor_->Get(parent.id)->children, IsEmpty());
  EXPECT_EQ(StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id}).name,
            "Process-1:1")
      << "the failed start used no name";
  EXPECT_EQ(StartTrue().name, "Process-2");
}

// The parent dies while its daemonic child is being launched. The child must end too, and
// nothing may ever be signalled by pid 0 or 1 (kill(0) is the daemon's own group).
TEST_F(SupervisorTest, ParentExitDuringLaunchEndsTheDaemonicChild) {
  ProcessInfo parent = StartTrue();
  os_.DuringNextLaunch([&](pid_t) { os_.Exit(parent.pid, WaitStatus::Signaled(kSigkill)); });
  ProcessInfo child =
      StartOk(StartSpec{.target = "/bin/true", .daemon = true, .parent_id = parent.id});
  EXPECT_THAT(os_.refused_pids, IsEmpty());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(child.pid, kSigterm)));
  EXPECT_THAT(supervisor_->Get(parent.id)->children, ElementsAre(child.id));
  time_.Advance(Supervisor::kDefaultGrace);
  EXPECT_THAT(os_.signals.back(), Pair(child.pid, kSigkill));
  os_.Exit(child.pid, WaitStatus::Signaled(kSigkill));
  EXPECT_FALSE(supervisor_->Get(child.id)->running);
}

TEST_F(SupervisorTest, ParentExitDuringLaunchLeavesAnOrdinaryChildRunning) {
  ProcessInfo parent = StartTrue();
  os_.DuringNextLaunch([&](pid_t) { os_.Exit(parent.pid, WaitStatus::Exited(0)); });
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  EXPECT_THAT(os_.refused_pids, IsEmpty());
  EXPECT_THAT(os_.signals, IsEmpty());
  EXPECT_TRUE(supervisor_->Get(child.id)->running);
}

TEST_F(SupervisorTest, TreeTerminateDuringLaunchTakesTheNewChild) {
  ProcessInfo parent = StartTrue();
  Result terminated;
  os_.DuringNextLaunch([&](pid_t) {
    supervisor_->Terminate(parent.id, TerminateOptions{.signal = kSigterm,
                                                       .grace = absl::Seconds(1)},
                           terminated.Callback());
  });
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  EXPECT_THAT(os_.refused_pids, IsEmpty());
  EXPECT_THAT(os_.signals,
              ElementsAre(Pair(parent.pid, kSigterm), Pair(child.pid, kSigterm)));
  os_.Exit(parent.pid, WaitStatus::Signaled(kSigterm));
  EXPECT_FALSE(terminated.value.has_value()) << "its new child is part of the tree";
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals.back(), Pair(child.pid, kSigkill));
  os_.Exit(child.pid, WaitStatus::Signaled(kSigkill));
  EXPECT_TRUE(terminated.value.has_value());
}

TEST_F(SupervisorTest, SessionEndDuringLaunchEndsItsDaemonicProcess) {
  uint64_t session = *supervisor_->OpenSession(absl::Seconds(30), [] {});
  os_.DuringNextLaunch([&](pid_t) { supervisor_->CloseSession(session); });
  ProcessInfo daemonic =
      StartOk(StartSpec{.target = "/bin/true", .daemon = true, .session = session});
  EXPECT_THAT(os_.refused_pids, IsEmpty());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemonic.pid, kSigterm)));

  uint64_t other = *supervisor_->OpenSession(absl::Seconds(30), [] {});
  os_.DuringNextLaunch([&](pid_t) { supervisor_->CloseSession(other); });
  ProcessInfo ordinary = StartOk(StartSpec{.target = "/bin/true", .session = other});
  EXPECT_EQ(os_.signals.size(), 1u) << "a non-daemonic process outlives its session";
  EXPECT_TRUE(supervisor_->Get(ordinary.id)->running);
}

TEST_F(SupervisorTest, ShutdownDuringLaunchWaitsForItAndEndsIt) {
  bool done = false;
  os_.DuringNextLaunch([&](pid_t) { supervisor_->Shutdown(absl::Seconds(10), [&] { done = true; }); });
  ProcessInfo daemonic = StartTrue(/*daemon=*/true);
  EXPECT_THAT(os_.refused_pids, IsEmpty());
  EXPECT_THAT(os_.signals, ElementsAre(Pair(daemonic.pid, kSigterm)));
  EXPECT_FALSE(done) << "the process started into the shutdown still runs";
  os_.Exit(daemonic.pid, WaitStatus::Signaled(kSigterm));
  EXPECT_TRUE(done);
}

TEST_F(SupervisorTest, ShutdownDuringLaunchGivesAnOrdinaryProcessTheGrace) {
  bool done = false;
  os_.DuringNextLaunch([&](pid_t) { supervisor_->Shutdown(absl::Seconds(10), [&] { done = true; }); });
  ProcessInfo worker = StartTrue();
  EXPECT_THAT(os_.signals, IsEmpty());
  time_.Advance(absl::Seconds(10));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(worker.pid, kSigterm)));
  os_.Exit(worker.pid, WaitStatus::Signaled(kSigterm));
  EXPECT_TRUE(done);
  EXPECT_THAT(os_.refused_pids, IsEmpty());
}

TEST_F(SupervisorTest, ExitDuringLaunchIsRecorded) {
  Result joined;
  os_.DuringNextLaunch([&](pid_t pid) { os_.Exit(pid, WaitStatus::Exited(7)); });
  ProcessInfo info = StartTrue();
  absl::StatusOr<ProcessInfo> now = supervisor_->Get(info.id);
  ASSERT_TRUE(now.ok());
  EXPECT_FALSE(now->running);
  EXPECT_EQ(now->status->exitcode(), 7);
  supervisor_->Join(info.id, std::nullopt, joined.Callback());
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_EQ((*joined.value)->status->exitcode(), 7);
}

// Timers run on the monotonic clock: stepping the wall clock neither fires nor delays them.
TEST_F(SupervisorTest, WallClockStepsDoNotMoveTheGrace) {
  ProcessInfo info = StartTrue();
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(10)},
                         terminated.Callback());
  time_.StepWallClock(absl::Hours(1));
  time_.Advance(absl::Seconds(9));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, kSigterm)));
  time_.StepWallClock(-absl::Hours(2));
  time_.Advance(absl::Seconds(1));
  EXPECT_THAT(os_.signals.back(), Pair(info.pid, kSigkill));
}

// Every change of state is an event, numbered in order and recorded before the reply or the
// answer that reports it.
class RecordingSink final : public EventSink {
 public:
  absl::Status Record(const std::vector<SupervisorEvent>& events) override {
    recorded.insert(recorded.end(), events.begin(), events.end());
    return absl::OkStatus();
  }
  absl::Status Flush() override { return behind; }
  std::vector<SupervisorEvent> recorded;
  absl::Status behind;  // what Flush says
};

TEST_F(SupervisorTest, NoStartWhileEventsAreHeldBackFromTheJournal) {
  RecordingSink sink;
  Make(SupervisorOptions{.events = &sink});
  sink.behind = absl::ResourceExhaustedError("the journal cannot be written");
  absl::StatusOr<ProcessInfo> refused = supervisor_->Start(StartSpec{.target = "/bin/true"});
  EXPECT_EQ(refused.status(), sink.behind);
  EXPECT_TRUE(os_.launches.empty()) << "nothing was started";
  EXPECT_TRUE(sink.recorded.empty());
  sink.behind = absl::OkStatus();
  StartTrue();
  EXPECT_EQ(os_.launches.size(), 1u);
}

TEST_F(SupervisorTest, EveryChangeIsAnEventRecordedBeforeItIsReported) {
  RecordingSink sink;
  Make(SupervisorOptions{.retain = 1, .events = &sink, .last_cursor = 41});
  uint64_t session = *supervisor_->OpenSession(absl::Seconds(5), [] {});
  ProcessInfo info = StartOk(StartSpec{.target = "/bin/true", .session = session});
  ASSERT_EQ(sink.recorded.size(), 2u) << "Start returns once its event is recorded";
  Result terminated;
  size_t recorded_when_answered = 0;
  supervisor_->Terminate(info.id, TerminateOptions{.signal = kSigterm, .grace = absl::Seconds(1)},
                         [&](absl::StatusOr<ProcessInfo> r) {
                           recorded_when_answered = sink.recorded.size();
                           terminated.value = std::move(r);
                         });
  os_.Exit(info.pid, WaitStatus::Signaled(kSigterm));
  ASSERT_TRUE(terminated.value.has_value());
  EXPECT_EQ(recorded_when_answered, 4u) << "the exit was recorded before the answer";
  ProcessInfo next = StartTrue();
  os_.Exit(next.pid, WaitStatus::Exited(0));  // the first record is evicted (retain 1)
  ASSERT_TRUE(supervisor_->Release(next.id).ok());
  supervisor_->CloseSession(session);

  std::vector<EventKind> kinds;
  for (size_t i = 0; i < sink.recorded.size(); ++i) {
    EXPECT_EQ(sink.recorded[i].cursor, 42 + i) << "numbered in order, from the last one";
    kinds.push_back(sink.recorded[i].kind);
  }
  EXPECT_THAT(kinds, ElementsAre(EventKind::kSessionOpened, EventKind::kStarted,
                                 EventKind::kTerminateRequested, EventKind::kExited,
                                 EventKind::kStarted, EventKind::kExited, EventKind::kEvicted,
                                 EventKind::kReleased, EventKind::kSessionEnded));
  EXPECT_EQ(sink.recorded[0].session, session);
  EXPECT_EQ(sink.recorded[3].process.status->exitcode(), -kSigterm);
  EXPECT_EQ(sink.recorded[6].process.id, info.id);
  uint64_t cursor = 0;
  supervisor_->List(ListFilter{}, &cursor);
  EXPECT_EQ(cursor, sink.recorded.back().cursor);
}

}  // namespace
}  // namespace proctor

namespace proctor {
namespace {

// A restarted proctord: the same fake os (its workers live on), a new supervisor.
class RestoreTest : public SupervisorTest {
 protected:
  // The record as the journal has it, and the memo the os kept, for `info`'s launch.
  Supervisor::Reattached Kept(const ProcessInfo& info) {
    for (const LaunchSpec& launch : os_.launches) {
      if (launch.stdout_path == info.stdout_path) return {.info = info, .memo = launch.memo};
    }
    ADD_FAILURE() << "no launch for " << info.id;
    return {};
  }
  void Restart() {
    os_.signals.clear();
    time_.DropAll();
    Make(SupervisorOptions{});
  }
};

TEST_F(RestoreTest, RunningWorkersComeBackWithTheirKeysAndOrphanedDaemonicOnesEnd) {
  ProcessInfo parent = StartTrue();
  ProcessInfo child = StartOk(StartSpec{.target = "/bin/true", .daemon = true,
                                        .parent_id = parent.id});
  ProcessInfo sibling = StartOk(StartSpec{.target = "/bin/true", .parent_id = parent.id});
  const std::string credential = *supervisor_->CredentialOf(child.id);
  Supervisor::Reattached kept_child = Kept(child);
  Supervisor::Reattached kept_sibling = Kept(sibling);
  Restart();
  ProcessInfo ended_parent = parent;  // it ended while nobody watched (journaled before)
  ended_parent.running = false;
  ended_parent.status = WaitStatus::Exited(0);
  supervisor_->Restore(
      Supervisor::Restored{.ended = {ended_parent}, .running = {kept_child, kept_sibling}});
  EXPECT_EQ(supervisor_->CredentialOf(child.id), credential) << "its calls are recognised";
  EXPECT_THAT(supervisor_->Get(parent.id)->children, ElementsAre(child.id, sibling.id));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(child.pid, kSigterm)))
      << "the daemonic child ends with its parent; the other lives on";
  // Default names go on from the restored ones.
  EXPECT_EQ(StartTrue().name, "Process-2");
}

TEST_F(RestoreTest, ALostWorkerEndsAsLostWithAnEvent) {
  ProcessInfo worker = StartTrue();
  Restart();
  supervisor_->Restore(Supervisor::Restored{.lost = {worker}});
  absl::StatusOr<ProcessInfo> lost = supervisor_->Get(worker.id);
  ASSERT_TRUE(lost.ok());
  EXPECT_FALSE(lost->running);
  EXPECT_TRUE(lost->lost);
  EXPECT_FALSE(lost->status.has_value());
}

TEST_F(RestoreTest, ASessionIsResumedOnlyWithItsOwnersKeyAndOtherwiseExpires) {
  uint64_t kept = *supervisor_->OpenSession(absl::Seconds(3), [] {}, "alice");
  uint64_t left = *supervisor_->OpenSession(absl::Seconds(3), [] {}, "alice");
  EXPECT_TRUE(os_.notes.contains(absl::StrCat("session/", kept))) << "kept outside proctord";
  ProcessInfo in_kept = StartOk(StartSpec{.target = "/bin/true", .daemon = true, .session = kept});
  ProcessInfo in_left = StartOk(StartSpec{.target = "/bin/true", .daemon = true, .session = left});
  Supervisor::Restored restored{.running = {Kept(in_kept), Kept(in_left)}};
  for (uint64_t session : {kept, left}) {
    restored.sessions.push_back({.id = session, .ttl = absl::Seconds(3), .owner = "alice"});
  }
  Restart();
  supervisor_->Restore(std::move(restored));
  EXPECT_TRUE(os_.signals.empty()) << "sessions wait for their TTL";
  EXPECT_EQ(supervisor_->ResumeSession(kept, "bob", std::nullopt, [] {}).code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(supervisor_->ResumeSession(kept, "alice", std::nullopt, [] {}).ok());
  EXPECT_EQ(supervisor_->ResumeSession(kept, "alice", std::nullopt, [] {}).code(),
            absl::StatusCode::kFailedPrecondition);
  time_.Advance(absl::Seconds(2));
  ASSERT_TRUE(supervisor_->TouchSession(kept).ok());
  time_.Advance(absl::Seconds(2));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(in_left.pid, kSigterm)));
  EXPECT_EQ(supervisor_->ResumeSession(left, "alice", std::nullopt, [] {}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(os_.notes.contains(absl::StrCat("session/", left)));
}

}  // namespace
}  // namespace proctor

namespace proctor {
namespace {

// Endpoints that exist only as names: which are open, and what they were opened for.
class FakeNotifyEndpoints final : public NotifyEndpoints {
 public:
  absl::StatusOr<std::string> Open(uint64_t id, std::optional<uid_t> owner) override {
    open[id] = owner;
    return absl::StrCat("/run/notify/", id);
  }
  void Close(uint64_t id) override { open.erase(id); }
  std::map<uint64_t, std::optional<uid_t>> open;
};

class RestartPolicyTest : public SupervisorTest {
 protected:
  RestartPolicyTest() {
    Make(SupervisorOptions{.events = &sink_, .notify = &endpoints_, .restart_jitter = 0});
  }
  ProcessInfo StartRestarting(RestartPolicy policy, StartSpec spec = {.target = "/bin/true"}) {
    spec.restart = policy;
    return StartOk(spec);
  }
  ProcessInfo Now(uint64_t id) { return supervisor_->Get(id).value_or(ProcessInfo{}); }
  std::vector<EventKind> Kinds() {
    std::vector<EventKind> kinds;
    for (const SupervisorEvent& event : sink_.recorded) kinds.push_back(event.kind);
    return kinds;
  }
  NotifyMessage Ready() { return NotifyMessage{.ready = true}; }

  RecordingSink sink_;
  FakeNotifyEndpoints endpoints_;
};

constexpr RestartPolicy kOnFailure{.mode = RestartPolicy::Mode::kOnFailure,
                                   .initial_backoff = absl::Milliseconds(100),
                                   .max_backoff = absl::Milliseconds(250)};

TEST_F(RestartPolicyTest, ARecordWaitingToRestartKeepsItsStateUntilItHasEndedForGood) {
  ProcessInfo first = StartRestarting(kOnFailure);
  os_.Exit(first.pid, WaitStatus::Exited(3));
  EXPECT_TRUE(Now(first.id).backoff);
  EXPECT_EQ(supervisor_->Counts().in_progress, 1u) << "in backoff: it runs again";
  time_.Advance(absl::Milliseconds(100));
  ProcessInfo second = Now(first.id);
  ASSERT_TRUE(second.running);
  EXPECT_EQ(second.restart_policy().mode, RestartPolicy::Mode::kOnFailure);
  os_.Exit(second.pid, WaitStatus::Exited(0));
  ProcessInfo ended = Now(first.id);
  EXPECT_FALSE(ended.backoff);
  EXPECT_EQ(ended.restarts, 1u);
  ASSERT_TRUE(ended.last_exit.has_value());
  EXPECT_EQ(ended.last_exit->status.exitcode(), 3);
  EXPECT_EQ(ended.restart_policy().mode, RestartPolicy::Mode::kOnFailure)
      << "what it ran under is still reported";
  EXPECT_EQ(supervisor_->Counts().in_progress, 0u);
}

TEST_F(RestartPolicyTest, AFailedRunComesBackAfterADoublingWaitWithItsIdAndName) {
  ProcessInfo first = StartRestarting(kOnFailure);
  os_.Exit(first.pid, WaitStatus::Exited(3));
  ProcessInfo waiting = Now(first.id);
  EXPECT_TRUE(waiting.backoff);
  EXPECT_FALSE(waiting.running);
  ASSERT_TRUE(waiting.last_exit.has_value());
  EXPECT_EQ(waiting.last_exit->status.exitcode(), 3);
  EXPECT_EQ(waiting.last_exit->pid, first.pid);
  time_.Advance(absl::Milliseconds(99));
  EXPECT_EQ(os_.launches.size(), 1u) << "not before its wait is over";
  time_.Advance(absl::Milliseconds(1));
  ASSERT_EQ(os_.launches.size(), 2u);
  EXPECT_TRUE(os_.launches.back().append_output) << "its output follows the earlier run's";
  ProcessInfo second = Now(first.id);
  EXPECT_TRUE(second.running);
  EXPECT_FALSE(second.backoff);
  EXPECT_EQ(second.name, first.name);
  EXPECT_NE(second.pid, first.pid);
  EXPECT_EQ(second.restarts, 1u);
  EXPECT_EQ(LastEnv(os_, "PROCTOR_ID"), absl::StrCat(first.id));

  os_.Exit(second.pid, WaitStatus::Signaled(kSigkill));  // a signal is a failure too
  time_.Advance(absl::Milliseconds(199));
  EXPECT_EQ(os_.launches.size(), 2u) << "the wait doubled";
  time_.Advance(absl::Milliseconds(1));
  ASSERT_EQ(os_.launches.size(), 3u);
  os_.Exit(Now(first.id).pid, WaitStatus::Exited(1));
  time_.Advance(absl::Milliseconds(249));
  EXPECT_EQ(os_.launches.size(), 3u) << "capped at max_backoff, not 400 ms";
  time_.Advance(absl::Milliseconds(1));
  ASSERT_EQ(os_.launches.size(), 4u);

  Result joined;
  supervisor_->Join(first.id, std::nullopt, joined.Callback());
  os_.Exit(Now(first.id).pid, WaitStatus::Exited(0));  // success: on-failure lets it end
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_EQ((*joined.value)->status->exitcode(), 0);
  EXPECT_EQ((*joined.value)->restarts, 3u);
  EXPECT_FALSE((*joined.value)->backoff);
  EXPECT_THAT(Kinds(), ElementsAre(EventKind::kStarted, EventKind::kRestarting,
                                   EventKind::kStarted, EventKind::kRestarting,
                                   EventKind::kStarted, EventKind::kRestarting,
                                   EventKind::kStarted, EventKind::kExited));
  EXPECT_EQ(sink_.recorded[1].delay, absl::Milliseconds(100));
  EXPECT_EQ(sink_.recorded[3].delay, absl::Milliseconds(200));
  EXPECT_FALSE(os_.notes.contains(absl::StrCat("launch/", first.id)))
      << "what it was launched with is kept only while it may run again";
}

// A first run that ends before its Start is committed has its exit applied by the commit,
// and only to that run: the next run is not taken as ended (nor its group signalled) at its
// own launch.
TEST_F(RestartPolicyTest, AnExitSeenBeforeTheStartCommittedIsTheFirstRunsAlone) {
  os_.DuringNextLaunch([this](pid_t pid) {
    os_.Exit(pid, WaitStatus::Exited(3));  // before Start has heard of the pid
  });
  ProcessInfo first = StartRestarting(kOnFailure);
  ProcessInfo waiting = Now(first.id);
  ASSERT_TRUE(waiting.backoff) << "the first run has ended";
  ASSERT_TRUE(waiting.last_exit.has_value());
  EXPECT_EQ(waiting.last_exit->status.exitcode(), 3);
  time_.Advance(absl::Milliseconds(100));
  ASSERT_EQ(os_.launches.size(), 2u);
  ProcessInfo second = Now(first.id);
  EXPECT_TRUE(second.running) << "the second run is running, not ended by the first's exit";
  EXPECT_FALSE(second.backoff);
  EXPECT_NE(second.pid, first.pid);
  EXPECT_TRUE(os_.signals.empty()) << "nothing was signalled";
  EXPECT_THAT(Kinds(), ElementsAre(EventKind::kStarted, EventKind::kRestarting,
                                   EventKind::kStarted));
}

TEST_F(RestartPolicyTest, JoinWaitsThroughRestartsAndTerminateInBackoffEndsIt) {
  ProcessInfo info =
      StartRestarting(RestartPolicy{.mode = RestartPolicy::Mode::kAlways});
  EXPECT_TRUE(os_.notes.contains(absl::StrCat("launch/", info.id)));
  Result joined;
  supervisor_->Join(info.id, std::nullopt, joined.Callback());
  os_.Exit(info.pid, WaitStatus::Exited(0));  // always: even a success restarts
  EXPECT_FALSE(joined.value.has_value()) << "it has not ended for good";
  EXPECT_EQ(supervisor_->Release(info.id).code(), absl::StatusCode::kFailedPrecondition);
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{}, terminated.Callback());
  ASSERT_TRUE(joined.value.has_value());
  EXPECT_FALSE((*joined.value)->backoff);
  EXPECT_EQ((*joined.value)->status->exitcode(), 0);
  ASSERT_TRUE(terminated.value.has_value());
  time_.Advance(absl::Minutes(1));
  EXPECT_EQ(os_.launches.size(), 1u) << "Terminate stopped the restarts";
  EXPECT_TRUE(supervisor_->Release(info.id).ok());
}

TEST_F(RestartPolicyTest, AnExitCausedByTerminateNeverRestarts) {
  ProcessInfo info = StartRestarting(RestartPolicy{.mode = RestartPolicy::Mode::kAlways});
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{.grace = absl::Seconds(1)},
                         terminated.Callback());
  os_.Exit(info.pid, WaitStatus::Signaled(kSigterm));
  time_.Advance(absl::Minutes(1));
  EXPECT_EQ(os_.launches.size(), 1u);
  EXPECT_FALSE(Now(info.id).backoff);
  EXPECT_EQ(Now(info.id).status->exitcode(), -kSigterm);
}

TEST_F(RestartPolicyTest, GivesUpPastItsLimitWithinTheWindowAndALongRunResetsTheCount) {
  RestartPolicy policy = kOnFailure;
  policy.max_restarts = 2;
  policy.window = absl::Seconds(10);
  policy.reset_after = absl::Seconds(5);
  ProcessInfo info = StartRestarting(policy);
  // One long run first: the count and the wait start over after it.
  os_.Exit(info.pid, WaitStatus::Exited(1));
  time_.Advance(absl::Milliseconds(100));
  time_.Advance(absl::Seconds(6));
  os_.Exit(Now(info.id).pid, WaitStatus::Exited(1));
  EXPECT_EQ(sink_.recorded.back().delay, absl::Milliseconds(100)) << "the wait was reset";
  time_.Advance(absl::Milliseconds(100));
  os_.Exit(Now(info.id).pid, WaitStatus::Exited(1));
  time_.Advance(absl::Milliseconds(200));
  ASSERT_EQ(Now(info.id).restarts, 3u);
  os_.Exit(Now(info.id).pid, WaitStatus::Exited(1));  // a third restart within 10 s: too many
  ProcessInfo ended = Now(info.id);
  EXPECT_FALSE(ended.backoff);
  EXPECT_FALSE(ended.running);
  EXPECT_EQ(ended.status->exitcode(), 1);
  std::vector<EventKind> kinds = Kinds();
  ASSERT_GE(kinds.size(), 2u);
  EXPECT_THAT(std::vector<EventKind>(kinds.end() - 2, kinds.end()),
              ElementsAre(EventKind::kGaveUp, EventKind::kExited));
  time_.Advance(absl::Minutes(1));
  EXPECT_EQ(os_.launches.size(), 4u);
}

TEST_F(RestartPolicyTest, WhatARunLeftInItsGroupEndsBeforeTheNextRun) {
  ProcessInfo info = StartRestarting(kOnFailure);
  os_.Exit(info.pid, WaitStatus::Exited(1), /*group_empties=*/false);
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, kSigterm)));
  time_.Advance(absl::Milliseconds(100));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, kSigterm), Pair(info.pid, kSigkill)));
  EXPECT_EQ(os_.launches.size(), 1u) << "its token is still in use";
  os_.DrainGroup(info.pid);
  time_.Advance(absl::ZeroDuration());  // launched from the timers' thread
  EXPECT_EQ(os_.launches.size(), 2u) << "runs as soon as the group is gone";
  EXPECT_TRUE(Now(info.id).running);
}

TEST_F(RestartPolicyTest, TheWatchdogAbortsARunThatStopsPingingAndThePolicyApplies) {
  StartSpec spec{.target = "/bin/true", .notify = true, .watchdog = absl::Seconds(1)};
  ProcessInfo info = StartRestarting(kOnFailure, spec);
  EXPECT_EQ(LastEnv(os_, "NOTIFY_SOCKET"), absl::StrCat("/run/notify/", info.id));
  time_.Advance(absl::Milliseconds(900));
  supervisor_->OnNotify(info.id, NotifyMessage{.watchdog_ping = true});
  time_.Advance(absl::Milliseconds(900));
  EXPECT_THAT(os_.signals, IsEmpty()) << "the ping restarted the period";
  time_.Advance(absl::Milliseconds(100));
  EXPECT_THAT(os_.signals, ElementsAre(Pair(info.pid, 6)));
  EXPECT_EQ(Kinds().back(), EventKind::kWatchdog);
  os_.Exit(info.pid, WaitStatus::Signaled(6, true));
  ASSERT_TRUE(Now(info.id).last_exit.has_value());
  EXPECT_TRUE(Now(info.id).last_exit->watchdog);
  time_.Advance(absl::Milliseconds(100));
  ProcessInfo again = Now(info.id);
  EXPECT_TRUE(again.running);
  EXPECT_TRUE(endpoints_.open.contains(info.id)) << "its endpoint stays across restarts";
  EXPECT_EQ(LastEnv(os_, "NOTIFY_SOCKET"), absl::StrCat("/run/notify/", info.id));
  // A worker may ask for its own period.
  supervisor_->OnNotify(info.id, NotifyMessage{.watchdog_period = absl::Seconds(5)});
  time_.Advance(absl::Milliseconds(4900));
  EXPECT_EQ(os_.signals.size(), 1u);
  time_.Advance(absl::Milliseconds(100));
  EXPECT_THAT(os_.signals.back(), Pair(again.pid, 6));
  Result terminated;
  supervisor_->Terminate(info.id, TerminateOptions{}, terminated.Callback());
  os_.Exit(again.pid, WaitStatus::Signaled(6));
  EXPECT_FALSE(endpoints_.open.contains(info.id)) << "closed once it has ended for good";
}

// A worker may speak before Start has returned: what it says then is not lost.
TEST_F(RestartPolicyTest, MessagesWhileTheLaunchIsInFlightCount) {
  os_.DuringNextLaunch([&](pid_t) {
    uint64_t id = std::stoull(LastEnv(os_, "PROCTOR_ID"));
    supervisor_->OnNotify(id, NotifyMessage{.ready = true, .status = "up"});
    supervisor_->OnNotifyDropped(id);
  });
  ProcessInfo info = StartOk(StartSpec{.target = "/bin/true", .notify = true});
  ASSERT_TRUE(info.notify.has_value());
  EXPECT_TRUE(info.notify->ready);
  EXPECT_EQ(info.notify->status, "up");
  EXPECT_EQ(info.notify->dropped, 1u);
  EXPECT_THAT(Kinds(), ElementsAre(EventKind::kStarted, EventKind::kReady)) << "in that order";
  Result waited;
  supervisor_->AwaitReady(info.id, absl::Seconds(1), waited.Callback());
  EXPECT_TRUE(waited.value.has_value() && waited.value->ok()) << "ready already";
}

TEST_F(RestartPolicyTest, AwaitReadyCompletesOnReadyAndTheTimeoutTerminates) {
  ProcessInfo ready = StartOk(StartSpec{.target = "/bin/true", .notify = true});
  Result waited;
  supervisor_->AwaitReady(ready.id, absl::Seconds(5), waited.Callback());
  EXPECT_FALSE(waited.value.has_value());
  supervisor_->OnNotify(ready.id, NotifyMessage{.status = "warming up"});
  EXPECT_EQ(Now(ready.id).notify->status, "warming up");
  EXPECT_FALSE(waited.value.has_value());
  supervisor_->OnNotify(ready.id, Ready());
  ASSERT_TRUE(waited.value.has_value());
  ASSERT_TRUE(waited.value->ok());
  EXPECT_TRUE((*waited.value)->notify->ready);
  EXPECT_EQ(Kinds().back(), EventKind::kReady);
  Result again;
  supervisor_->AwaitReady(ready.id, absl::Seconds(5), again.Callback());
  EXPECT_TRUE(again.value.has_value()) << "ready already";

  ProcessInfo slow = StartOk(StartSpec{.target = "/bin/true", .notify = true});
  Result timed_out;
  supervisor_->AwaitReady(slow.id, absl::Seconds(2), timed_out.Callback());
  time_.Advance(absl::Seconds(1));
  supervisor_->OnNotify(slow.id, NotifyMessage{.extend_timeout = absl::Seconds(3)});
  time_.Advance(absl::Milliseconds(2900));
  EXPECT_FALSE(timed_out.value.has_value()) << "EXTEND_TIMEOUT_USEC= moved the deadline";
  time_.Advance(absl::Milliseconds(100));
  ASSERT_TRUE(timed_out.value.has_value());
  EXPECT_EQ(timed_out.value->status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(os_.signals, Contains(Pair(slow.pid, kSigterm)));

  ProcessInfo plain = StartTrue();
  Result at_once;
  supervisor_->AwaitReady(plain.id, absl::Seconds(5), at_once.Callback());
  EXPECT_TRUE(at_once.value.has_value() && at_once.value->ok()) << "no notify: nothing to wait for";

  ProcessInfo dies = StartOk(StartSpec{.target = "/bin/true", .notify = true});
  Result died;
  supervisor_->AwaitReady(dies.id, absl::Seconds(5), died.Callback());
  os_.Exit(dies.pid, WaitStatus::Exited(2));
  ASSERT_TRUE(died.value.has_value());
  EXPECT_EQ(died.value->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(died.value->status().message(), HasSubstr("ended before it was ready (exit code 2)"));
}

TEST_F(RestartPolicyTest, AfterARestartOfProctordABackoffResumesAndARunningOneStillRestarts) {
  ProcessInfo waiting = StartRestarting(kOnFailure);
  ProcessInfo running = StartRestarting(kOnFailure);
  os_.Exit(waiting.pid, WaitStatus::Exited(1));
  ProcessInfo journaled_waiting = Now(waiting.id);
  std::map<std::string, std::string> notes = os_.notes;
  Supervisor::Reattached kept{.info = running, .memo = os_.launches[1].memo};
  time_.DropAll();
  Make(SupervisorOptions{.notify = &endpoints_, .restart_jitter = 0});
  Supervisor::Restored restored{.ended = {journaled_waiting}, .running = {kept}};
  for (const auto& [key, value] : notes) {
    uint64_t id = 0;
    if (absl::SimpleAtoi(absl::StripPrefix(key, "launch/"), &id)) restored.launches[id] = value;
  }
  supervisor_->Restore(std::move(restored));
  EXPECT_TRUE(Now(waiting.id).backoff);
  time_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(Now(waiting.id).running) << "its wait resumed";
  EXPECT_EQ(os_.launches.size(), 3u);
  os_.Exit(running.pid, WaitStatus::Exited(1));
  time_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(Now(running.id).running);
  EXPECT_EQ(os_.launches.size(), 4u);
  EXPECT_EQ(os_.launches.back().envp, os_.launches[1].envp) << "same keys, same environment";
}

}  // namespace
}  // namespace proctor
