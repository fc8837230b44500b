// proctord can die (kill -9), or restart on purpose (SIGUSR2), at any moment without losing a
// worker or an exit: its keeper holds the workers, and the next proctord on the same state
// directory and address reattaches them.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/sync_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;

// One state directory and one address for a daemon and the ones that come after it.
class RestartTest : public ::testing::Test {
 protected:
  std::vector<std::string> Flags() const {
    return {"--state-dir", state_.path(), "--listen", absl::StrCat("unix:", place_.path(), "/p.sock")};
  }
  std::string Gate(const std::string& name) const { return absl::StrCat(place_.path(), "/", name); }

  TempDir state_;
  TempDir place_;
};

v1::Process StatusOf(TestDaemon& daemon, uint64_t id) {
  absl::StatusOr<v1::Process> process = daemon.client().Status(id);
  EXPECT_TRUE(process.ok()) << process.status() << daemon.Log();
  return process.value_or(v1::Process{});
}

// The keeper's pid, from the log line of the daemon that started it.
pid_t KeeperPid(const std::string& log) {
  size_t at = log.find("started the keeper (pid ");
  if (at == std::string::npos) return 0;
  pid_t pid = 0;
  std::string rest = log.substr(at + 24);
  (void)absl::SimpleAtoi(rest.substr(0, rest.find(')')), &pid);
  return pid;
}

// Where descriptor `fd` of `pid` points ("" when it is not open).
std::string DescriptorTarget(pid_t pid, int fd) {
  char target[512];
  ssize_t n = readlink(absl::StrCat("/proc/", pid, "/fd/", fd).c_str(), target, sizeof(target));
  return n < 0 ? "" : std::string(target, n);
}

// A worker's child shares the keeper's descriptor table until it has one of its own (before
// its first open): the keeper's own descriptors are untouched by any number of spawns, failed
// ones included, and each worker gets its output files and nothing of the keeper's.
TEST_F(RestartTest, SpawningLeavesTheKeepersDescriptorsAsTheyWere) {
  TestDaemon daemon(Flags());
  const pid_t keeper = KeeperPid(daemon.Log());
  ASSERT_GT(keeper, 1);
  std::vector<std::string> before;
  for (int fd = 0; fd < 3; ++fd) before.push_back(DescriptorTarget(keeper, fd));
  for (int i = 0; i < 5; ++i) {
    v1::Process worker = StartOk(daemon.client(), {"/bin/sh", "-c", "ls /proc/$$/fd; echo out"});
    ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
    EXPECT_EQ(ReadFile(worker.stdout_path()), "0\n1\n2\nout\n") << "its own 0-2 alone";
  }
  // A spawn whose child fails at the end, at exec (not a program, found out only then).
  const std::string not_a_program = absl::StrCat(place_.path(), "/not-a-program");
  ASSERT_TRUE(WriteFile(not_a_program, "neither ELF nor #!\n"));
  ASSERT_EQ(chmod(not_a_program.c_str(), 0755), 0);
  v1::StartRequest failing;
  failing.set_target(not_a_program);
  EXPECT_FALSE(daemon.client().Start(failing).ok());
  for (int fd = 0; fd < 3; ++fd) {
    EXPECT_EQ(DescriptorTarget(keeper, fd), before[fd]) << "the keeper's descriptor " << fd;
  }
}

// A Client kept across a kill -9 is answered again as soon as the next proctord answers a
// client of its own: a call that fails for want of a connection also drives the connection
// the channel is making, which nothing else would (gRPC polls it every 5 s otherwise).
TEST_F(RestartTest, AClientKeptAcrossKillNineIsAnsweredAgainAtOnce) {
  const std::string address = absl::StrCat("unix:", place_.path(), "/p.sock");
  std::optional<TestDaemon> daemon;
  daemon.emplace(Flags());
  absl::StatusOr<std::unique_ptr<Client>> kept =
      Client::Connect({.address = address, .authkey_file = state_.path() + "/authkey"});
  ASSERT_TRUE(kept.ok()) << kept.status();
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE((*kept)->List(v1::StatusRequest()).ok()) << "round " << round;
    daemon->Kill();
    daemon.reset();
    // Calls fail while it is down, and the channel's reconnects are refused.
    absl::SleepFor(absl::Milliseconds(700));
    EXPECT_FALSE((*kept)->List(v1::StatusRequest()).ok());
    daemon.emplace(Flags());  // returns once it answers a client of its own
    absl::Time back = absl::Now();
    absl::Status answered;
    while (absl::Now() - back < absl::Seconds(10)) {
      answered = (*kept)->List(v1::StatusRequest()).status();
      if (answered.ok()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(answered.ok()) << answered << daemon->Log();
    EXPECT_LT(absl::Now() - back, absl::Seconds(1)) << "round " << round;
  }
}

TEST_F(RestartTest, WorkersLiveOnAcrossKillNineWithTheirTrueExitCodes) {
  testing::Gate ends_while_down(Gate("a"));
  testing::Gate ends_after(Gate("b"));
  testing::Gate follows(Gate("d"));
  v1::Process down, after, terminated, followed;
  std::string keeper_log;
  {
    TestDaemon first(Flags());
    down = StartOk(first.client(), {"/bin/sh", "-c", ends_while_down.ShellWait() + "; exit 3"});
    after = StartOk(first.client(), {"/bin/sh", "-c", ends_after.ShellWait() + "; exit 4"});
    terminated = StartOk(first.client(), {"/bin/sleep", "1000"});
    followed = StartOk(first.client(),
                       {"/bin/sh", "-c", "echo before; " + follows.ShellWait() + "; echo after"});
    ASSERT_TRUE(WaitFor([&] { return ReadFile(followed.stdout_path()) == "before\n"; }));
    first.Kill();
    // Ends while no proctord runs: the keeper holds its exit.
    ASSERT_TRUE(ends_while_down.Open());
    ASSERT_TRUE(WaitFor([&] { return IsZombie(down.pid()); })) << "held unreaped";
    keeper_log = first.Log();
  }
  TestDaemon second(Flags());
  EXPECT_THAT(second.Log(), HasSubstr("reattached 4 running workers, 0 lost"));
  v1::Process was_down = StatusOf(second, down.id());
  EXPECT_EQ(was_down.state(), v1::STATE_EXITED);
  EXPECT_EQ(was_down.exitcode(), 3);
  EXPECT_FALSE(was_down.lost());
  EXPECT_GT(was_down.end_time().seconds(), 0);
  EXPECT_GT(was_down.max_rss_bytes(), 0) << "its resource usage, as the keeper read it";
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(down.pid()) && !IsZombie(down.pid()); }))
      << "reaped once recorded";

  for (const v1::Process& running : {after, terminated, followed}) {
    EXPECT_TRUE(IsAlive(running.pid())) << "the restart killed " << running.name();
    EXPECT_EQ(StatusOf(second, running.id()).state(), v1::STATE_RUNNING);
  }
  CommandResult ps = second.Cli({"ps"});
  EXPECT_THAT(ps.out, HasSubstr(absl::StrCat(after.id())));
  EXPECT_THAT(ps.out, HasSubstr(absl::StrCat(terminated.id())));

  // Followed, joined and terminated as if nothing had happened.
  pid_t follow = second.StartCli({"logs", "--follow", absl::StrCat(followed.id())},
                                 place_.path() + "/follow.out", place_.path() + "/follow.err");
  ASSERT_TRUE(follows.Open());
  std::optional<int> follow_status = WaitForExit(follow, absl::Seconds(10));
  ASSERT_TRUE(follow_status.has_value());
  EXPECT_EQ(ReadFile(place_.path() + "/follow.out"), "before\nafter\n");

  ASSERT_TRUE(ends_after.Open());
  absl::StatusOr<v1::Process> joined = second.client().Join(after.id());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->exitcode(), 4);

  v1::TerminateRequest terminate;
  terminate.set_id(terminated.id());
  absl::StatusOr<v1::Process> ended = second.client().Terminate(terminate);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->exitcode(), -SIGTERM);
  EXPECT_FALSE(IsAlive(terminated.pid()));
}

TEST_F(RestartTest, ADaemonicChildWhoseParentEndedWhileDownIsEndedOnReattach) {
  testing::Gate parent_ends(Gate("p"));
  const std::string child_pid_file = place_.path() + "/child.pid";
  v1::Process parent;
  {
    TestDaemon first(Flags());
    // The parent starts a daemonic child with its own key, then waits to be let go.
    parent = StartOk(first.client(),
                     {"/bin/sh", "-c",
                      absl::StrCat(PROCTOR_CLI_PATH, " start --daemon --json /bin/sleep 1000 > ",
                                   place_.path(), "/child.json && ", parent_ends.ShellWait())});
    // Once the CLI in the parent has its answer (it wrote it), not merely once it is recorded.
    ASSERT_TRUE(WaitFor([&] { return !ReadFile(place_.path() + "/child.json").empty(); }))
        << first.Log();
    ASSERT_EQ(first.client().Status(parent.id())->children_size(), 1);
    first.Kill();
    ASSERT_TRUE(parent_ends.Open());
    ASSERT_TRUE(WaitFor([&] { return IsZombie(parent.pid()); }));
  }
  TestDaemon second(Flags());
  v1::Process after = StatusOf(second, parent.id());
  ASSERT_EQ(after.children_size(), 1);
  absl::StatusOr<v1::Process> child = second.client().Join(after.children(0));
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(child->exitcode(), -SIGTERM) << "ended with its parent, as multiprocessing does";
  EXPECT_EQ(StatusOf(second, parent.id()).exitcode(), 0);
}

TEST_F(RestartTest, ASessionIsKeptForItsTtlAndCanBeResumedWithItsKey) {
  uint64_t session_id = 0;
  v1::Process resumed_child, abandoned_child;
  {
    TestDaemon first(Flags());
    absl::StatusOr<std::unique_ptr<Session>> resumed = first.client().OpenSession(absl::Seconds(2));
    absl::StatusOr<std::unique_ptr<Session>> abandoned =
        first.client().OpenSession(absl::Seconds(2));
    ASSERT_TRUE(resumed.ok() && abandoned.ok());
    session_id = (*resumed)->id();
    for (auto [session, child] : {std::pair{resumed->get(), &resumed_child},
                                  std::pair{abandoned->get(), &abandoned_child}}) {
      v1::StartRequest request;
      request.set_target("/bin/sleep");
      request.add_args("1000");
      request.set_daemon(true);
      request.set_session(session->id());
      absl::StatusOr<v1::Process> started = first.client().Start(request);
      ASSERT_TRUE(started.ok()) << started.status();
      *child = *started;
    }
    first.Kill();
    // The sessions' streams break with the daemon; their ends go nowhere.
    resumed->reset();
    abandoned->reset();
  }
  TestDaemon second(Flags());
  EXPECT_THAT(second.Log(), HasSubstr("2 sessions kept"));
  EXPECT_TRUE(IsAlive(resumed_child.pid()));
  EXPECT_TRUE(IsAlive(abandoned_child.pid()));

  absl::StatusOr<std::unique_ptr<Session>> session =
      second.client().ResumeSession(session_id, absl::Seconds(2));
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->id(), session_id);
  EXPECT_EQ(second.client().ResumeSession(session_id).status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "held by the stream that resumed it";

  // The other one's TTL passes, counted from the restart: its daemonic process ends.
  absl::StatusOr<v1::Process> ended = second.client().Join(abandoned_child.id());
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->exitcode(), -SIGTERM);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_TRUE(IsAlive(resumed_child.pid())) << "its session was resumed";
  EXPECT_EQ(StatusOf(second, resumed_child.id()).state(), v1::STATE_RUNNING);
  session->reset();  // ends the session: its daemonic process goes
  absl::StatusOr<v1::Process> gone = second.client().Join(resumed_child.id());
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->exitcode(), -SIGTERM);
  EXPECT_EQ(second.client().ResumeSession(session_id).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RestartTest, SigusrTwoRestartsInPlaceKeepingTheWorkers) {
  TestDaemon daemon(Flags());
  testing::Gate let_go(Gate("g"));
  v1::Process worker =
      StartOk(daemon.client(), {"/bin/sh", "-c", let_go.ShellWait() + "; exit 9"});
  const pid_t pid = daemon.pid();
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("starting again") != std::string::npos; }));
  ASSERT_TRUE(daemon.Restarted()) << daemon.Log();
  EXPECT_EQ(daemon.pid(), pid) << "the same process, as a service manager expects";
  EXPECT_TRUE(IsAlive(worker.pid()));
  ASSERT_TRUE(let_go.Open());
  absl::StatusOr<v1::Process> joined = daemon.client().Join(worker.id());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->exitcode(), 9);
}

TEST_F(RestartTest, SigtermEndsTheWorkersAndTheKeeper) {
  std::vector<std::string> flags = Flags();
  flags.insert(flags.end(), {"--shutdown-grace", "0.1"});
  TestDaemon daemon(flags);
  v1::Process worker = StartOk(daemon.client(), {"/bin/sleep", "1000"});
  const pid_t keeper = KeeperPid(daemon.Log());
  ASSERT_GT(keeper, 1);
  EXPECT_TRUE(IsAlive(keeper));
  EXPECT_EQ(daemon.Stop(), 0);
  EXPECT_FALSE(IsAlive(worker.pid()));
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(keeper); })) << "the keeper exits with proctord";
}

TEST_F(RestartTest, AWorkerNobodyKeptIsListedAsLostAndWhatIsLeftOfItIsKilled) {
  v1::Process orphaned;
  {
    TestDaemon first(Flags());
    orphaned = StartOk(first.client(), {"/bin/sleep", "1000"});
    const pid_t keeper = KeeperPid(first.Log());
    ASSERT_GT(keeper, 1);
    first.Kill();
    ASSERT_TRUE(IsAlive(orphaned.pid()));
    // The keeper too: nothing holds the worker any more; it runs on, orphaned, until a
    // proctord starts on this machine (any proctord cleans up after keepers that are gone:
    // another test's may do it first).
    ASSERT_EQ(kill(keeper, SIGKILL), 0);
    ASSERT_TRUE(WaitFor([&] { return !IsAlive(keeper); }));
  }
  TestDaemon second(Flags());
  v1::Process lost = StatusOf(second, orphaned.id());
  EXPECT_EQ(lost.state(), v1::STATE_EXITED);
  EXPECT_TRUE(lost.lost());
  EXPECT_FALSE(lost.has_exitcode());
  CommandResult ps = second.Cli({"ps", "--all"});
  EXPECT_THAT(ps.out, HasSubstr("lost"));
  if (second.Log().find("its own cgroup") != std::string::npos) {
    // Its cgroup proves it ours: it is killed rather than left behind.
    EXPECT_TRUE(WaitFor([&] { return !IsAlive(orphaned.pid()); })) << second.Log();
  } else {
    kill(orphaned.pid(), SIGKILL);
  }
}

TEST_F(RestartTest, ProctordExitsWhenItsKeeperIsKilled) {
  TestDaemon daemon(Flags());
  v1::Process worker = StartOk(daemon.client(), {"/bin/sleep", "1000"});
  const pid_t keeper = KeeperPid(daemon.Log());
  ASSERT_GT(keeper, 1);
  ASSERT_EQ(kill(keeper, SIGKILL), 0);
  EXPECT_TRUE(WaitFor([&] { return daemon.Log().find("the keeper is gone") != std::string::npos; }));
  EXPECT_EQ(daemon.Stop(), 3) << "it cannot supervise any more" << daemon.Log();
  // What is left is the next proctord's to clean up (see the lost-worker test).
  TestDaemon next(Flags());
  EXPECT_TRUE(StatusOf(next, worker.id()).lost());
}

// The unit systemd runs: a crash restart must leave the keeper and the workers alone
// (KillMode=process) and start proctord again; stop goes through proctord (SIGTERM).
TEST(ServiceUnitTest, ACrashRestartKeepsTheWorkersAndStopEndsThem) {
  std::string unit = ReadFile(PROCTOR_SOURCE_DIR "/deploy/proctord.service");
  ASSERT_FALSE(unit.empty());
  std::map<std::string, std::string> settings;
  for (absl::string_view line : absl::StrSplit(unit, '\n')) {
    if (line.empty() || line[0] == '#' || line.find('=') == absl::string_view::npos) continue;
    std::pair<std::string, std::string> setting = absl::StrSplit(line, absl::MaxSplits('=', 1));
    settings[setting.first] = setting.second;
  }
  EXPECT_EQ(settings["KillMode"], "process");
  EXPECT_EQ(settings["KillSignal"], "SIGTERM");
  EXPECT_EQ(settings["Restart"], "on-failure");
  EXPECT_THAT(unit, HasSubstr("--signal=SIGUSR2"));
  // sd_notify (systemd_notify_test.cc): readiness and a watchdog from proctord alone.
  EXPECT_EQ(settings["Type"], "notify");
  EXPECT_EQ(settings["NotifyAccess"], "main");
  int watchdog_seconds = 0;
  EXPECT_TRUE(absl::SimpleAtoi(settings["WatchdogSec"], &watchdog_seconds) &&
              watchdog_seconds > 0)
      << "WatchdogSec=" << settings["WatchdogSec"];
}

// The records a client sees: every exit code is the one the worker chose (its last argument),
// and nothing is lost.
void ExpectTrueExits(TestDaemon& daemon, size_t* ended_count = nullptr) {
  v1::StatusRequest all;
  absl::StatusOr<std::vector<v1::Process>> listed = daemon.client().List(all);
  ASSERT_TRUE(listed.ok()) << listed.status();
  size_t ended = 0;
  for (const v1::Process& process : *listed) {
    EXPECT_FALSE(process.lost()) << process.id();
    if (process.state() != v1::STATE_EXITED) continue;
    ++ended;
    ASSERT_GE(process.args_size(), 2);
    int chosen = 0;
    ASSERT_TRUE(absl::SimpleAtoi(process.args(process.args_size() - 1), &chosen));
    EXPECT_EQ(process.exitcode(), chosen) << "id " << process.id() << daemon.Log();
  }
  if (ended_count != nullptr) *ended_count = ended;
}

TEST_F(RestartTest, TwentyKillsAtRandomMomentsUnderLoadLoseNoExitAndLeaveNothingBehind) {
  std::mt19937 random(20261126);
  std::vector<pid_t> worker_pids;
  pid_t keeper = 0;
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    TestDaemon daemon(Flags());
    if (keeper == 0) keeper = KeeperPid(daemon.Log());
    ExpectTrueExits(daemon);
    std::atomic<bool> stop = false;
    std::vector<std::thread> load;
    std::mutex mu;
    for (int t = 0; t < 2; ++t) {
      load.emplace_back([&, seed = random()] {
        std::mt19937 r(seed);
        while (!stop) {
          // Short and long workers, with the exit code they will choose as last argument.
          int code = static_cast<int>(r() % 100);
          std::string sleep = r() % 4 == 0 ? absl::StrCat(0.5 + (r() % 20) / 10.0)
                                           : absl::StrCat((r() % 50) / 1000.0);
          v1::StartRequest request;
          request.set_target("/bin/sh");
          request.add_args("-c");
          request.add_args(absl::StrCat("sleep ", sleep, "; exit $0"));
          request.add_args(absl::StrCat(code));
          absl::StatusOr<v1::Process> started = daemon.client().Start(request);
          if (started.ok()) {
            std::lock_guard<std::mutex> lock(mu);
            worker_pids.push_back(started->pid());
          }
        }
      });
    }
    absl::SleepFor(absl::Milliseconds(100 + random() % 400));
    daemon.Kill();
    stop = true;
    for (std::thread& t : load) t.join();
  }
  TestDaemon last(Flags());
  ASSERT_EQ(KeeperPid(last.Log()), 0) << "the same keeper all along";
  v1::StatusRequest running;
  running.set_state(v1::STATE_RUNNING);
  absl::StatusOr<std::vector<v1::Process>> live = last.client().List(running);
  ASSERT_TRUE(live.ok());
  for (const v1::Process& process : *live) {
    absl::StatusOr<v1::Process> joined = last.client().Join(process.id());
    ASSERT_TRUE(joined.ok()) << joined.status();
  }
  size_t ended = 0;
  ExpectTrueExits(last, &ended);
  EXPECT_GT(ended, 100u) << "a load worth the name";
  EXPECT_EQ(last.Stop(), 0);
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(keeper); }));
  for (pid_t pid : worker_pids) EXPECT_FALSE(IsAlive(pid) || IsZombie(pid)) << pid;
}

TEST_F(RestartTest, WatchFromACursorSeesEveryEventOnceAcrossKillNine) {
  uint64_t from = 0;
  testing::Gate ends_while_down(Gate("w"));
  v1::Process across;
  {
    TestDaemon first(Flags());
    v1::Process quick = StartOk(first.client(), {"/bin/true"});
    ASSERT_TRUE(first.client().Join(quick.id()).ok());
    ASSERT_TRUE(first.client().List(v1::StatusRequest(), &from).ok());
    across = StartOk(first.client(), {"/bin/sh", "-c", ends_while_down.ShellWait() + "; exit 6"});
    first.Kill();
    ASSERT_TRUE(ends_while_down.Open());
    ASSERT_TRUE(WaitFor([&] { return IsZombie(across.pid()); }));
  }
  TestDaemon second(Flags());
  v1::Process after = StartOk(second.client(), {"/bin/true"});
  ASSERT_TRUE(second.client().Join(after.id()).ok());
  uint64_t now = 0;
  ASSERT_TRUE(second.client().List(v1::StatusRequest(), &now).ok());

  v1::WatchRequest request;
  request.set_since(from);
  std::vector<v1::Event> events;
  absl::Status watched = second.client().Watch(request, [&](const v1::Event& event) {
    events.push_back(event);
    return event.cursor() < now;
  });
  ASSERT_TRUE(watched.ok()) << watched;
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().cursor(), from + 1);
  int exits_of_across = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    if (i > 0) {
      EXPECT_EQ(events[i].cursor(), events[i - 1].cursor() + 1) << "gap or duplicate";
    }
    if (events[i].type() == v1::EVENT_EXITED && events[i].process().id() == across.id()) {
      ++exits_of_across;
      EXPECT_EQ(events[i].process().exitcode(), 6);
    }
  }
  EXPECT_EQ(exits_of_across, 1);
}

v1::SyncCreateRequest OfKind(v1::SyncKind kind) {
  v1::SyncCreateRequest request;
  request.set_kind(kind);
  return request;
}

// Makes a sync object, expecting success; its id (0 when it failed).
uint64_t CreateOk(SyncClient& sync, const v1::SyncCreateRequest& request) {
  absl::StatusOr<v1::SyncObject> made = sync.Create(request);
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? made->id() : 0;
}

// Sync objects live through a kill -9: a holder still alive after the restart still holds,
// and one that ends afterwards leaves its lock abandoned for the next acquirer; an Event keeps
// its flag; ids are never used twice.
TEST_F(RestartTest, SyncObjectsAndTheirHoldersLiveThroughKillNine) {
  uint64_t lock_id = 0, event_id = 0;
  v1::Process holder;
  {
    TestDaemon first(Flags());
    absl::StatusOr<std::unique_ptr<Session>> session =
        first.client().OpenSession(absl::Seconds(120));
    ASSERT_TRUE(session.ok()) << session.status();
    SyncClient sync(first.client());
    v1::SyncCreateRequest create;
    create.set_kind(v1::SYNC_LOCK);
    create.set_name("db");
    create.set_session((*session)->id());
    absl::StatusOr<v1::SyncObject> lock = sync.Create(create);
    ASSERT_TRUE(lock.ok()) << lock.status();
    lock_id = lock->id();
    create.Clear();
    create.set_kind(v1::SYNC_EVENT);
    create.set_name("ready");
    absl::StatusOr<v1::SyncObject> event = sync.Create(create);
    ASSERT_TRUE(event.ok()) << event.status();
    event_id = event->id();
    v1::SyncUpdateRequest set;
    set.set_id(event_id);
    set.set_op(v1::SYNC_EVENT_SET);
    ASSERT_TRUE(sync.Update(set).ok());

    // A worker of the session holds the session's lock (found by name) while it sleeps.
    v1::StartRequest start;
    start.set_target(PROCTOR_CLI_PATH);
    for (const char* arg : {"lock", "db", "--", "/bin/sleep", "1000"}) start.add_args(arg);
    start.set_session((*session)->id());
    absl::StatusOr<v1::Process> started = first.client().Start(start);
    ASSERT_TRUE(started.ok()) << started.status();
    holder = *started;
    ASSERT_TRUE(WaitFor([&] {
      absl::StatusOr<v1::SyncObject> now = sync.Get(lock_id);
      return now.ok() && now->holders_size() == 1 && now->holders(0).process() == holder.id();
    }, absl::Seconds(10))) << first.Log();
    first.Kill();
    session->reset();  // its stream breaks with the daemon; the session is kept for its TTL
  }
  TestDaemon second(Flags());
  EXPECT_THAT(second.Log(), HasSubstr("restored 2 of 2 kept sync objects"));
  SyncClient sync(second.client());
  absl::StatusOr<v1::SyncObject> lock = sync.Get(lock_id);
  ASSERT_TRUE(lock.ok()) << lock.status() << second.Log();
  EXPECT_EQ(lock->name(), "db");
  ASSERT_EQ(lock->holders_size(), 1);
  EXPECT_EQ(lock->holders(0).process(), holder.id());
  v1::SyncAcquireRequest acquire;
  acquire.set_id(lock_id);
  *acquire.mutable_timeout() = DurationToProto(absl::Milliseconds(200));
  absl::StatusOr<v1::SyncWaitResponse> refused = sync.Acquire(acquire);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_FALSE(refused->ok()) << "still held by the worker";
  EXPECT_TRUE(sync.Get(event_id)->is_set());

  ASSERT_EQ(kill(-holder.pid(), SIGKILL), 0);
  *acquire.mutable_timeout() = DurationToProto(absl::Seconds(10));
  absl::StatusOr<v1::SyncWaitResponse> next = sync.Acquire(acquire);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->ok());
  EXPECT_TRUE(next->abandoned());

  v1::SyncCreateRequest create;
  create.set_kind(v1::SYNC_LOCK);
  absl::StatusOr<v1::SyncObject> fresh = sync.Create(create);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_GT(fresh->id(), std::max(lock_id, event_id)) << "ids are never used twice";
}

// Every change answered before a kill -9 is kept, those the keeper had not read yet too (it
// reads proctord's notes lazily, from a pipe that outlives proctord).
TEST_F(RestartTest, SyncChangesAnsweredJustBeforeAKillNineAreAllKept) {
  constexpr int kUnits = 300;
  uint64_t sem_id = 0, lock_id = 0;
  {
    TestDaemon first(Flags());
    SyncClient sync(first.client());
    v1::SyncCreateRequest create = OfKind(v1::SYNC_BOUNDED_SEMAPHORE);
    create.set_value(1000);
    sem_id = CreateOk(sync, create);
    lock_id = CreateOk(sync, OfKind(v1::SYNC_LOCK));
    v1::SyncAcquireRequest acquire;
    acquire.set_id(sem_id);
    for (int i = 0; i < kUnits; ++i) {
      acquire.set_thread(i % 7);
      absl::StatusOr<v1::SyncWaitResponse> got = sync.Acquire(acquire);
      ASSERT_TRUE(got.ok() && got->ok()) << got.status();
    }
    acquire.set_id(lock_id);
    v1::SyncReleaseRequest release;
    release.set_id(lock_id);
    ASSERT_TRUE(sync.Acquire(acquire).ok());
    ASSERT_TRUE(sync.Release(release).ok());
    ASSERT_TRUE(sync.Acquire(acquire).ok());
    first.Kill();  // at once after the last answer
  }
  TestDaemon second(Flags());
  SyncClient sync(second.client());
  absl::StatusOr<v1::SyncObject> sem = sync.Get(sem_id);
  ASSERT_TRUE(sem.ok()) << sem.status() << second.Log();
  EXPECT_EQ(sem->value(), 1000 - kUnits);
  int64_t held = 0;
  for (const v1::SyncHolder& holder : sem->holders()) held += holder.count();
  EXPECT_EQ(held, kUnits);
  absl::StatusOr<v1::SyncObject> lock = sync.Get(lock_id);
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(lock->value(), 0) << "held, as the last answer said";
  EXPECT_EQ(lock->holders_size(), 1);
}

// A Barrier's bound parties live through a kill -9; one that ended while no proctord ran
// breaks it, named, once the next proctord learns of its end.
TEST_F(RestartTest, BoundPartiesLiveThroughKillNineAndOneThatEndedMeanwhileBreaksTheBarrier) {
  uint64_t barrier_id = 0;
  v1::Process stays, goes;
  {
    TestDaemon first(Flags());
    SyncClient sync(first.client());
    v1::SyncCreateRequest create = OfKind(v1::SYNC_BARRIER);
    create.set_parties(3);
    barrier_id = CreateOk(sync, create);
    v1::StartRequest start;
    start.set_target("/bin/sleep");
    start.add_args("1000");
    start.add_barriers(barrier_id);
    absl::StatusOr<v1::Process> started = first.client().Start(start);
    ASSERT_TRUE(started.ok()) << started.status();
    stays = *started;
    started = first.client().Start(start);
    ASSERT_TRUE(started.ok()) << started.status();
    goes = *started;
    ASSERT_EQ(sync.Get(barrier_id)->bound_size(), 2);
    first.Kill();
    ASSERT_EQ(kill(goes.pid(), SIGKILL), 0);  // the keeper's unreaped child: still this pid
    ASSERT_TRUE(WaitFor([&] { return IsZombie(goes.pid()); }));
  }
  TestDaemon second(Flags());
  SyncClient sync(second.client());
  const std::string named =
      absl::StrCat("process ", goes.id(), ", one of its bound parties, ended without arriving");
  ASSERT_TRUE(WaitFor([&] { return sync.Get(barrier_id).value_or(v1::SyncObject{}).broken(); }))
      << second.Log();
  absl::StatusOr<v1::SyncObject> barrier = sync.Get(barrier_id);
  EXPECT_THAT(barrier->broken_reason(), HasSubstr(named));
  ASSERT_EQ(barrier->bound_size(), 1);
  EXPECT_EQ(barrier->bound(0).process(), stays.id());
  v1::SyncWaitRequest wait;
  wait.set_id(barrier_id);
  absl::StatusOr<v1::SyncWaitResponse> waited = sync.Wait(wait);
  EXPECT_TRUE(absl::IsAborted(waited.status())) << waited.status();
  EXPECT_THAT(waited.status().message(), HasSubstr(named));
  v1::TerminateRequest stop;
  stop.set_id(stays.id());
  EXPECT_TRUE(second.client().Terminate(stop).ok());
}

// The same through a SIGUSR2 restart in place; a call waiting at the restart ends UNAVAILABLE.
TEST_F(RestartTest, SyncObjectsLiveThroughSigusrTwoAndWaitersAreToldUnavailable) {
  TestDaemon daemon(Flags());
  SyncClient sync(daemon.client());
  v1::SyncCreateRequest create;
  create.set_kind(v1::SYNC_BOUNDED_SEMAPHORE);
  create.set_value(2);
  absl::StatusOr<v1::SyncObject> sem = sync.Create(create);
  ASSERT_TRUE(sem.ok()) << sem.status();
  v1::SyncAcquireRequest acquire;
  acquire.set_id(sem->id());
  ASSERT_TRUE(sync.Acquire(acquire)->ok());
  create.Clear();
  create.set_kind(v1::SYNC_EVENT);
  absl::StatusOr<v1::SyncObject> event = sync.Create(create);
  ASSERT_TRUE(event.ok()) << event.status();
  absl::StatusOr<v1::SyncWaitResponse> waited;
  std::thread waiter([&] {
    // On a SyncClient of its own: `sync` keeps its stream, idle, through the restart.
    SyncClient waiting(daemon.client());
    v1::SyncWaitRequest wait;
    wait.set_id(event->id());
    waited = waiting.Wait(wait);
  });
  ASSERT_TRUE(WaitFor([&] { return sync.Get(event->id())->n_waiting() == 1; }));
  ASSERT_EQ(kill(daemon.pid(), SIGUSR2), 0);
  waiter.join();
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kUnavailable) << waited.status();
  ASSERT_TRUE(daemon.Restarted()) << daemon.Log();
  absl::StatusOr<v1::SyncObject> after = sync.Get(sem->id());
  ASSERT_TRUE(after.ok()) << after.status() << daemon.Log();
  EXPECT_EQ(after->value(), 1) << "the admin key's unit is still taken";
  EXPECT_EQ(after->initial_value(), 2);
  EXPECT_EQ(sync.Get(event->id())->n_waiting(), 0);
  // The stream `sync` kept ended with the old proctord: the call goes on a new one.
  absl::StatusOr<v1::SyncWaitResponse> second = sync.Acquire(acquire);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->ok());
  EXPECT_EQ(sync.Get(sem->id())->value(), 0);
}

// A stop asked for while proctord is stopping to restart is not lost: the restarted proctord
// stops (both signals sent at once land in one read of the signalfd, during the restart).
TEST_F(RestartTest, ASigtermDuringASigusrTwoRestartStopsTheRestartedProctord) {
  TestDaemon daemon(Flags());
  ASSERT_EQ(kill(daemon.pid(), SIGUSR2), 0);
  ASSERT_EQ(kill(daemon.pid(), SIGTERM), 0);
  std::optional<int> status = daemon.AwaitExit(absl::Seconds(30));
  ASSERT_TRUE(status.has_value()) << "proctord never stopped; log:\n" << daemon.Log();
  EXPECT_EQ(*status, 0);
}

}  // namespace
}  // namespace proctor::testing
