// Restart policies against a real proctord: crash loops, give-up, Terminate during backoff,
// what `ps` shows, the CLI's options, and restarts that go on across a restart of proctord.
#include <signal.h>
#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "google/protobuf/util/time_util.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::StartRequest Restarting(std::vector<std::string> argv, v1::RestartPolicy::Mode mode,
                            absl::Duration initial, absl::Duration max, uint32_t max_restarts = 0) {
  v1::StartRequest request;
  request.set_target(argv[0]);
  for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
  v1::RestartPolicy* policy = request.mutable_restart();
  policy->set_mode(mode);
  policy->set_max_restarts(max_restarts);
  *policy->mutable_initial_backoff() =
      TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(initial));
  *policy->mutable_max_backoff() = TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(max));
  return request;
}

// The event types the daemon kept for process `id`, in order.
std::vector<v1::EventType> EventsOf(Client& client, uint64_t id) {
  std::vector<v1::EventType> types;
  v1::WatchRequest request;
  request.set_since(0);
  request.add_ids(id);
  uint64_t last = 0;
  client.List(v1::StatusRequest{}, &last).IgnoreError();
  client
      .Watch(request,
             [&](const v1::Event& event) {
               types.push_back(event.type());
               return event.cursor() < last;
             })
      .IgnoreError();
  return types;
}

TEST(OrchestrationTest, ACrashLoopRestartsUntilThePolicyGivesUpAndJoinSeesOnlyTheEnd) {
  TestDaemon daemon;
  v1::StartRequest request =
      Restarting({"/bin/sh", "-c", "echo run $$; exit 3"}, v1::RestartPolicy::ON_FAILURE,
                 absl::Milliseconds(50), absl::Milliseconds(100), /*max_restarts=*/2);
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<v1::Process> joined = daemon.client().Join(started->id());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->state(), v1::STATE_EXITED);
  EXPECT_EQ(joined->exitcode(), 3);
  EXPECT_EQ(joined->restarts(), 2u);
  EXPECT_EQ(joined->name(), started->name());
  EXPECT_EQ(joined->last_exit().exitcode(), 3) << "the run before the last one";
  EXPECT_NE(joined->last_exit().pid(), joined->pid());
  std::vector<std::string> runs =
      absl::StrSplit(ReadFile(started->stdout_path()), '\n', absl::SkipEmpty());
  ASSERT_EQ(runs.size(), 3u) << "each run's output follows the last one's: "
                             << ReadFile(started->stdout_path()) << "\nstderr: "
                             << ReadFile(started->stderr_path()) << "\n"
                             << daemon.Log();
  EXPECT_NE(runs[0], runs[2]) << "three processes, three pids";
  EXPECT_THAT(EventsOf(daemon.client(), started->id()),
              ElementsAre(v1::EVENT_STARTED, v1::EVENT_RESTARTING, v1::EVENT_STARTED,
                          v1::EVENT_RESTARTING, v1::EVENT_STARTED, v1::EVENT_GAVE_UP,
                          v1::EVENT_EXITED));
  EXPECT_THAT(daemon.Log(), HasSubstr("giving up"));
}

// With no backoff the next run is due before the keeper has reaped the last one: the restart
// then goes when the reaping is reported, and must not be launched from the thread that
// carries the keeper's answers (it would wait for its own answer for ever).
TEST(OrchestrationTest, RestartsWithoutBackoffRunBackToBack) {
  TestDaemon daemon;
  absl::StatusOr<v1::Process> started = daemon.client().Start(
      Restarting({"/bin/true"}, v1::RestartPolicy::ALWAYS, absl::ZeroDuration(),
                 absl::ZeroDuration(), /*max_restarts=*/50));
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<v1::Process> joined = daemon.client().Join(started->id(), absl::Seconds(30));
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->state(), v1::STATE_EXITED) << daemon.Log();
  EXPECT_EQ(joined->restarts(), 50u);
}

TEST(OrchestrationTest, TheWaitBeforeARestartIsTheBackoffAndASuccessEndsOnFailureMode) {
  TestDaemon daemon;
  testing::TempDir dir;
  const std::string marker = dir.path() + "/ran";
  // Fails the first time, succeeds the second.
  v1::StartRequest request = Restarting(
      {"/bin/sh", "-c", absl::StrCat("if [ -e ", marker, " ]; then exit 0; fi; touch ", marker,
                                     "; exit 1")},
      v1::RestartPolicy::ON_FAILURE, absl::Milliseconds(400), absl::Seconds(1));
  request.mutable_restart()->set_max_restarts(5);
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<v1::Process> joined = daemon.client().Join(started->id());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->exitcode(), 0);
  EXPECT_EQ(joined->restarts(), 1u);
  absl::Duration waited = absl::Nanoseconds(TimeUtil::TimestampToNanoseconds(joined->start_time()) -
                                            TimeUtil::TimestampToNanoseconds(
                                                joined->last_exit().end_time()));
  // 400 ms spread by up to 20 % either way; well under a second however loaded the machine.
  EXPECT_GE(waited, absl::Milliseconds(320));
  EXPECT_LT(waited, absl::Seconds(2));
}

TEST(OrchestrationTest, TerminateDuringBackoffEndsItAtOnceAndPsShowsTheBackoff) {
  TestDaemon daemon;
  absl::StatusOr<v1::Process> started = daemon.client().Start(
      Restarting({"/bin/sh", "-c", "exit 7"}, v1::RestartPolicy::ALWAYS, absl::Seconds(30),
                 absl::Seconds(30)));
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<v1::Process> now = daemon.client().Status(started->id());
    return now.ok() && now->state() == v1::STATE_BACKOFF;
  }));
  v1::Process waiting = *daemon.client().Status(started->id());
  EXPECT_FALSE(waiting.has_exitcode()) << "it has not ended";
  EXPECT_EQ(waiting.last_exit().exitcode(), 7);
  EXPECT_GT(waiting.next_start_time().seconds(), absl::ToUnixSeconds(absl::Now()) + 20);
  CommandResult ps = daemon.Cli({"ps"});
  EXPECT_THAT(ps.out, HasSubstr("backoff")) << ps.out;
  CommandResult json = daemon.Cli({"--json", "status", absl::StrCat(started->id())});
  EXPECT_THAT(json.out, HasSubstr("\"state\":\"backoff\""));
  EXPECT_THAT(json.out, HasSubstr("\"restart\":{\"mode\":\"always\""));
  // A Join with a timeout sees it waiting.
  absl::StatusOr<v1::Process> polled =
      daemon.client().Join(started->id(), absl::Milliseconds(100));
  ASSERT_TRUE(polled.ok());
  EXPECT_EQ(polled->state(), v1::STATE_BACKOFF);

  absl::Time before = absl::Now();
  v1::TerminateRequest terminate;
  terminate.set_id(started->id());
  absl::StatusOr<v1::Process> terminated = daemon.client().Terminate(terminate);
  ASSERT_TRUE(terminated.ok()) << terminated.status();
  EXPECT_LT(absl::Now() - before, absl::Seconds(5));
  EXPECT_EQ(terminated->state(), v1::STATE_EXITED);
  EXPECT_EQ(terminated->exitcode(), 7);
  EXPECT_EQ(daemon.client().Join(started->id())->state(), v1::STATE_EXITED);
  EXPECT_TRUE(daemon.client().Release(started->id()).ok());
}

TEST(OrchestrationTest, AnExitCausedByTerminateIsNotRestarted) {
  TestDaemon daemon;
  absl::StatusOr<v1::Process> started = daemon.client().Start(Restarting(
      {"/bin/sleep", "1000"}, v1::RestartPolicy::ALWAYS, absl::Milliseconds(10),
      absl::Milliseconds(10)));
  ASSERT_TRUE(started.ok());
  v1::TerminateRequest terminate;
  terminate.set_id(started->id());
  absl::StatusOr<v1::Process> terminated = daemon.client().Terminate(terminate);
  ASSERT_TRUE(terminated.ok());
  EXPECT_EQ(terminated->exitcode(), -SIGTERM);
  absl::SleepFor(absl::Milliseconds(200));
  v1::Process after = *daemon.client().Status(started->id());
  EXPECT_EQ(after.state(), v1::STATE_EXITED);
  EXPECT_EQ(after.restarts(), 0u);
}

TEST(OrchestrationTest, TheCliStartsWithARestartPolicyAndRefusesBadOnes) {
  TestDaemon daemon;
  CommandResult started = daemon.Cli({"start", "--restart", "on-failure", "--max-restarts", "1",
                                      "--backoff", "10ms..20ms", "--", "/bin/sh", "-c", "exit 5"});
  ASSERT_EQ(started.status, 0) << started.err;
  std::string id(absl::StripAsciiWhitespace(started.out));
  CommandResult joined = daemon.Cli({"join", id});
  EXPECT_EQ(joined.status, 5);
  CommandResult json = daemon.Cli({"--json", "status", id});
  EXPECT_THAT(json.out, HasSubstr("\"restarts\":1"));
  EXPECT_THAT(json.out, HasSubstr("\"mode\":\"on-failure\""));
  EXPECT_THAT(json.out, HasSubstr("\"initial_backoff\":0.01"));

  CommandResult bad_mode = daemon.Cli({"start", "--restart", "sometimes", "--", "/bin/true"});
  EXPECT_EQ(bad_mode.status, 2);
  EXPECT_THAT(bad_mode.err, HasSubstr("expected no, on-failure or always"));
  CommandResult bad_backoff =
      daemon.Cli({"start", "--restart", "always", "--backoff", "2s..1s", "--", "/bin/true"});
  EXPECT_EQ(bad_backoff.status, 2);
  EXPECT_THAT(bad_backoff.err, HasSubstr("the maximum is below the minimum"));
  CommandResult untied = daemon.Cli({"start", "--max-restarts", "3", "--", "/bin/true"});
  EXPECT_EQ(untied.status, 2);
  EXPECT_THAT(untied.err, HasSubstr("need --restart"));
}

TEST(OrchestrationTest, BadRestartPoliciesAreInvalidArguments) {
  TestDaemon daemon;
  v1::StartRequest negative = Restarting({"/bin/true"}, v1::RestartPolicy::ALWAYS,
                                         absl::Milliseconds(-5), absl::Seconds(1));
  absl::StatusOr<v1::Process> refused = daemon.client().Start(negative);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("restart.initial_backoff"));
  v1::StartRequest inverted = Restarting({"/bin/true"}, v1::RestartPolicy::ALWAYS,
                                         absl::Seconds(2), absl::Seconds(1));
  refused = daemon.client().Start(inverted);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("shorter than restart.initial_backoff"));
  EXPECT_TRUE(daemon.client().Status(0).status().code() == absl::StatusCode::kNotFound)
      << "the daemon still serves";
}

// One state directory and address for a daemon and the one that follows it.
class OrchestrationRestartTest : public ::testing::Test {
 protected:
  std::vector<std::string> Flags() const {
    return {"--state-dir", state_.path(), "--listen",
            absl::StrCat("unix:", place_.path(), "/p.sock")};
  }
  TempDir state_;
  TempDir place_;
};

TEST_F(OrchestrationRestartTest, RestartsGoOnAcrossAKillNineOfProctord) {
  v1::Process waiting, running;
  {
    TestDaemon first(Flags());
    absl::StatusOr<v1::Process> w = first.client().Start(Restarting(
        {"/bin/sh", "-c", "exit 1"}, v1::RestartPolicy::ON_FAILURE, absl::Seconds(2),
        absl::Seconds(2), /*max_restarts=*/1));
    absl::StatusOr<v1::Process> r = first.client().Start(Restarting(
        {"/bin/sleep", "1000"}, v1::RestartPolicy::ALWAYS, absl::Milliseconds(10),
        absl::Milliseconds(10)));
    ASSERT_TRUE(w.ok() && r.ok());
    waiting = *w;
    running = *r;
    ASSERT_TRUE(WaitFor([&] {
      return first.client().Status(waiting.id())->state() == v1::STATE_BACKOFF;
    }));
    first.Kill();
  }
  TestDaemon second(Flags());
  v1::Process still_waiting = *second.client().Status(waiting.id());
  EXPECT_EQ(still_waiting.state(), v1::STATE_BACKOFF) << second.Log();
  absl::StatusOr<v1::Process> joined = second.client().Join(waiting.id());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->restarts(), 1u) << "it ran again after its wait, under the new proctord";
  EXPECT_EQ(joined->state(), v1::STATE_EXITED);

  // The one that kept running still restarts, with what it was first launched with.
  ASSERT_EQ(kill(running.pid(), SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<v1::Process> now = second.client().Status(running.id());
    return now.ok() && now->state() == v1::STATE_RUNNING && now->restarts() == 1;
  })) << second.Log();
  v1::Process again = *second.client().Status(running.id());
  EXPECT_NE(again.pid(), running.pid());
  EXPECT_TRUE(IsAlive(again.pid()));
  v1::TerminateRequest terminate;
  terminate.set_id(running.id());
  EXPECT_TRUE(second.client().Terminate(terminate).ok());
}

}  // namespace
}  // namespace proctor::testing
