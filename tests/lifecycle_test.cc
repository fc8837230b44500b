// The process lifecycle against a real proctord, with real processes and real signals.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/scoped_env.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

v1::Process JoinOk(Client& client, uint64_t id,
                   std::optional<absl::Duration> timeout = std::nullopt) {
  absl::StatusOr<v1::Process> joined = client.Join(id, timeout);
  EXPECT_TRUE(joined.ok()) << joined.status();
  return joined.value_or(v1::Process{});
}

v1::Process TerminateOk(Client& client, uint64_t id, int sig, absl::Duration grace) {
  v1::TerminateRequest request;
  request.set_id(id);
  request.set_signal(sig);
  *request.mutable_grace() = TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(grace));
  absl::StatusOr<v1::Process> ended = client.Terminate(request);
  EXPECT_TRUE(ended.ok()) << ended.status();
  return ended.value_or(v1::Process{});
}

std::string Logs(Client& client, uint64_t id, v1::Stream stream = v1::STREAM_STDOUT,
                 bool follow = false) {
  v1::LogsRequest request;
  request.set_id(id);
  request.set_stream(stream);
  request.set_follow(follow);
  std::string out;
  absl::Status s = client.Logs(request, [&](std::string_view chunk) { out.append(chunk); });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

std::vector<pid_t> Pids(const std::string& text) {
  std::vector<pid_t> pids;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    pid_t pid;
    if (absl::SimpleAtoi(word, &pid)) pids.push_back(pid);
  }
  return pids;
}

class LifecycleTest : public ::testing::Test {
 protected:
  TestDaemon daemon_;
  Client& client_ = daemon_.client();
};

// A listing of every record is one reply; past gRPC's default 4 MiB it must still come
// back, to the library and to `proctor ps`.
TEST_F(LifecycleTest, AListingLargerThanFourMebibytesComesBack) {
  const std::string long_arg(100 * 1024, 'a');
  for (int i = 0; i < 50; ++i) StartOk(client_, {"/bin/sh", "-c", "exit 0", long_arg});
  absl::StatusOr<std::vector<v1::Process>> all = client_.List(v1::StatusRequest());
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 50u);
  testing::CommandResult ps = daemon_.Cli({"--json", "ps", "--all"});
  EXPECT_EQ(ps.status, 0) << ps.err;
}

TEST_F(LifecycleTest, ARecordShowsTheDirectoryTheWorkerReallyStartedIn) {
  v1::Process started = StartOk(daemon_.client(), {"/bin/sleep", "1000"});
  char cwd[4096];
  ssize_t n = readlink(absl::StrCat("/proc/", started.pid(), "/cwd").c_str(), cwd, sizeof(cwd));
  ASSERT_GT(n, 0);
  EXPECT_FALSE(started.cwd().empty()) << "defaulted, and still shown";
  EXPECT_EQ(started.cwd(), std::string(cwd, static_cast<size_t>(n)));
  TerminateOk(daemon_.client(), started.id(), SIGKILL, absl::ZeroDuration());
}

TEST_F(LifecycleTest, TerminateWithoutEscalationSendsTheSignalAlone) {
  // Ignores SIGTERM (an ignored signal stays ignored across exec).
  v1::Process stubborn =
      StartOk(daemon_.client(), {"/bin/sh", "-c", "trap '' TERM; exec sleep 1000"});
  ASSERT_TRUE(WaitFor([&] {
    return ReadFile(absl::StrCat("/proc/", stubborn.pid(), "/comm")) == "sleep\n";
  }));
  v1::TerminateRequest request;
  request.set_id(stubborn.id());
  *request.mutable_grace() = TimeUtil::MillisecondsToDuration(100);
  request.set_escalate(false);
  request.set_wait(false);
  ASSERT_TRUE(daemon_.client().Terminate(request).ok());
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_TRUE(IsAlive(stubborn.pid())) << "no SIGKILL followed the grace";
  TerminateOk(daemon_.client(), stubborn.id(), SIGKILL, absl::ZeroDuration());
  EXPECT_FALSE(IsAlive(stubborn.pid()));
}

TEST_F(LifecycleTest, ExitCodesComeBackWhole) {
  for (int code : {0, 3, 255}) {
    v1::Process started = StartOk(client_, {"/bin/sh", "-c", absl::StrCat("exit ", code)});
    EXPECT_GT(started.pid(), 0);
    // Start answers with the record as it is by then: such a short process may have ended.
    EXPECT_EQ(started.has_exitcode(), started.state() == v1::STATE_EXITED);
    v1::Process ended = JoinOk(client_, started.id());
    EXPECT_EQ(ended.state(), v1::STATE_EXITED);
    ASSERT_TRUE(ended.has_exitcode());
    EXPECT_EQ(ended.exitcode(), code);
    EXPECT_EQ(ended.signal(), 0);
    EXPECT_TRUE(ended.has_end_time());
  }
}

TEST_F(LifecycleTest, KillAndTerminateGiveMinusTheSignal) {
  v1::Process a = StartOk(client_, {"sleep", "100"});
  v1::Process b = StartOk(client_, {"sleep", "100"});
  EXPECT_EQ(TerminateOk(client_, a.id(), SIGKILL, absl::Seconds(5)).exitcode(), -9);
  v1::Process terminated = TerminateOk(client_, b.id(), SIGTERM, absl::Seconds(5));
  EXPECT_EQ(terminated.exitcode(), -15);
  EXPECT_EQ(terminated.signal(), SIGTERM);
  EXPECT_EQ(JoinOk(client_, b.id()).exitcode(), -15);
}

TEST_F(LifecycleTest, WorkerIgnoringSigtermIsKilledAfterGrace) {
  v1::Process started = StartOk(client_, {"/bin/sh", "-c", "trap '' TERM; echo ready; sleep 100"});
  ASSERT_TRUE(WaitFor([&] { return Logs(client_, started.id()) == "ready\n"; }));
  absl::Time before = absl::Now();
  v1::Process ended = TerminateOk(client_, started.id(), SIGTERM, absl::Milliseconds(300));
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(300));
  EXPECT_EQ(ended.exitcode(), -9);
}

TEST_F(LifecycleTest, TerminateLeavesNoGrandchildAliveOrZombie) {
  v1::Process started = StartOk(
      client_, {"/bin/sh", "-c", "sleep 100 & echo $!; sleep 100 & echo $!; wait"});
  std::vector<pid_t> grandchildren;
  ASSERT_TRUE(WaitFor([&] {
    grandchildren = Pids(Logs(client_, started.id()));
    return grandchildren.size() == 2;
  }));
  for (pid_t pid : grandchildren) ASSERT_TRUE(IsAlive(pid));
  TerminateOk(client_, started.id(), SIGTERM, absl::Seconds(5));
  for (pid_t pid : grandchildren) {
    EXPECT_FALSE(IsAlive(pid)) << pid;
    EXPECT_FALSE(IsZombie(pid)) << pid;
  }
}

TEST_F(LifecycleTest, JoinTimeoutReturnsTheRunningRecord) {
  v1::Process started = StartOk(client_, {"sleep", "100"});
  EXPECT_EQ(started.state(), v1::STATE_RUNNING);
  EXPECT_FALSE(started.has_exitcode());
  absl::Time before = absl::Now();
  v1::Process joined = JoinOk(client_, started.id(), absl::Milliseconds(200));
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(200));
  EXPECT_EQ(joined.state(), v1::STATE_RUNNING);
  EXPECT_FALSE(joined.has_exitcode());
  TerminateOk(client_, started.id(), SIGKILL, absl::Seconds(1));
}

TEST_F(LifecycleTest, TenConcurrentJoinersAllSeeTheExit) {
  Gate exit_gate(daemon_.dir() + "/exit");
  v1::Process started =
      StartOk(client_, {"/bin/sh", "-c", absl::StrCat(exit_gate.ShellWait(), "; exit 7")});
  std::vector<std::thread> joiners;
  std::atomic<int> joining = 0;
  std::atomic<int> sevens = 0;
  for (int i = 0; i < 10; ++i) {
    joiners.emplace_back([&] {
      ++joining;
      if (JoinOk(client_, started.id()).exitcode() == 7) ++sevens;
    });
  }
  // The worker exits only once every joiner is making its call.
  EXPECT_TRUE(WaitFor([&] { return joining == 10; }));
  if (!exit_gate.Open()) {
    ADD_FAILURE() << "the worker never reached its gate";
    TerminateOk(client_, started.id(), SIGKILL, absl::Seconds(1));
  }
  for (std::thread& t : joiners) t.join();
  EXPECT_EQ(sevens, 10);
}

TEST_F(LifecycleTest, StdoutAndStderrAreCapturedApart) {
  v1::Process started =
      StartOk(client_, {"/bin/sh", "-c", "echo to-out; echo to-err >&2; echo more-out"});
  JoinOk(client_, started.id());
  EXPECT_EQ(Logs(client_, started.id()), "to-out\nmore-out\n");
  EXPECT_EQ(Logs(client_, started.id(), v1::STREAM_STDERR), "to-err\n");
  EXPECT_EQ(ReadFile(started.stdout_path()), "to-out\nmore-out\n");
}

TEST_F(LifecycleTest, LogsTailGivesTheEnd) {
  v1::Process started = StartOk(client_, {"/bin/sh", "-c", "echo 0123456789"});
  JoinOk(client_, started.id());
  v1::LogsRequest request;
  request.set_id(started.id());
  request.set_tail_bytes(4);
  std::string out;
  ASSERT_TRUE(client_.Logs(request, [&](std::string_view c) { out.append(c); }).ok());
  EXPECT_EQ(out, "789\n");
}

TEST_F(LifecycleTest, LogsFollowStreamsUntilTheProcessEnds) {
  // Each line comes out only after the test has received the one before.
  Gate second(daemon_.dir() + "/second");
  Gate third(daemon_.dir() + "/third");
  v1::Process started = StartOk(
      client_, {"/bin/sh", "-c",
                absl::StrCat("echo line1; ", second.ShellWait(), "; echo line2; ",
                             third.ShellWait(), "; echo line3")});
  absl::Mutex mu;
  std::vector<std::string> chunks;
  auto received = [&] {
    absl::MutexLock lock(&mu);
    return absl::StrJoin(chunks, "");
  };
  absl::Status followed;
  std::thread follower([&] {
    v1::LogsRequest request;
    request.set_id(started.id());
    request.set_follow(true);
    followed = client_.Logs(request, [&](std::string_view c) {
      absl::MutexLock lock(&mu);
      chunks.emplace_back(c);
    });
  });
  EXPECT_TRUE(WaitFor([&] { return received() == "line1\n"; }))
      << "output arrives while the process runs: " << received();
  EXPECT_TRUE(second.Open());
  EXPECT_TRUE(WaitFor([&] { return received() == "line1\nline2\n"; })) << received();
  EXPECT_TRUE(third.Open());
  follower.join();
  ASSERT_TRUE(followed.ok()) << followed;
  EXPECT_EQ(received(), "line1\nline2\nline3\n");
  EXPECT_GE(chunks.size(), 3u) << "output arrived while the process ran";
  absl::StatusOr<v1::Process> status = client_.Status(started.id());
  EXPECT_EQ(status->state(), v1::STATE_EXITED);
}

TEST_F(LifecycleTest, ReleaseForgetsTheRecordAndItsOutput) {
  v1::Process started = StartOk(client_, {"/bin/echo", "bye"});
  JoinOk(client_, started.id());
  ASSERT_EQ(access(started.stdout_path().c_str(), F_OK), 0);
  ASSERT_TRUE(client_.Release(started.id()).ok());
  EXPECT_EQ(client_.Status(started.id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(access(started.stdout_path().c_str(), F_OK), 0) << "captured output removed";
}

// The files a directory holds, not counting subdirectories' contents.
size_t FilesIn(const std::string& dir) {
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) ++count;
  }
  return count;
}

// A steady stream of workers that write nothing creates no file: each gives its capture
// files back to the stock when it ends. Workers with output, or whose descendants still
// hold their output open, keep theirs.
TEST_F(LifecycleTest, WorkersThatWriteNothingCreateNoFiles) {
  const std::string logs = daemon_.state_dir() + "/logs";
  JoinOk(client_, StartOk(client_, {"/bin/true"}).id());
  // Once the stock is made (it stops changing).
  ASSERT_TRUE(WaitFor(
      [&] {
        const size_t spares = FilesIn(logs + "/spare");
        absl::SleepFor(absl::Milliseconds(200));
        return spares > 0 && spares == FilesIn(logs + "/spare");
      },
      absl::Seconds(30)));
  const size_t before = FilesIn(logs) + FilesIn(logs + "/spare");
  v1::Process last;
  for (int i = 0; i < 100; ++i) {
    last = StartOk(client_, {"/bin/true"});
    JoinOk(client_, last.id());
  }
  // Given back after the Join is answered: wait for the last one.
  EXPECT_TRUE(WaitFor([&] { return access(last.stdout_path().c_str(), F_OK) != 0; }));
  EXPECT_LE(FilesIn(logs) + FilesIn(logs + "/spare"), before)
      << "100 workers that wrote nothing left files behind";
  EXPECT_EQ(Logs(client_, last.id()), "");
  EXPECT_EQ(Logs(client_, last.id(), v1::STREAM_STDERR), "");

  v1::Process spoke = StartOk(client_, {"/bin/echo", "kept"});
  JoinOk(client_, spoke.id());
  EXPECT_EQ(Logs(client_, spoke.id()), "kept\n");
  EXPECT_EQ(ReadFile(spoke.stdout_path()), "kept\n");
  // The worker ends at once; what it left behind writes later, through the same file.
  v1::Process left = StartOk(client_, {"/bin/sh", "-c", "(sleep 0.5; echo late) & exit 0"});
  JoinOk(client_, left.id());
  EXPECT_TRUE(WaitFor([&] { return Logs(client_, left.id()) == "late\n"; }))
      << Logs(client_, left.id());
}

// A Run opens the capture files of a process that may have ended and be giving them back
// under a lease at that very moment: the open must neither wait for the lease nor end
// proctord (a broken lease raises SIGIO in its holder).
TEST_F(LifecycleTest, RunsOfProcessesThatEndAtOnceRaceNothing) {
  auto run_many = [&] {
    v1::StartRequest request;
    request.set_target("/bin/true");
    for (int i = 0; i < 150; ++i) {
      absl::StatusOr<v1::Process> exited =
          client_.Run(request, [](v1::Stream, std::string_view) {});
      ASSERT_TRUE(exited.ok()) << exited.status();
      ASSERT_EQ(exited->exitcode(), 0);
    }
  };
  std::thread other(run_many);
  run_many();
  other.join();
}

TEST_F(LifecycleTest, ReleaseOfARunningProcessIsRefused) {
  v1::Process started = StartOk(client_, {"sleep", "100"});
  absl::Status s = client_.Release(started.id());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("still running"));
  TerminateOk(client_, started.id(), SIGKILL, absl::Seconds(1));
}

TEST(RetentionTest, OldestEndedRecordsAreEvictedPastTheLimit) {
  TestDaemon daemon({"--retain", "3"});
  std::vector<v1::Process> ended;
  for (int i = 0; i < 5; ++i) {
    ended.push_back(StartOk(daemon.client(), {"/bin/true"}));
    JoinOk(daemon.client(), ended.back().id());
  }
  std::vector<uint64_t> kept;
  absl::StatusOr<std::vector<v1::Process>> listed = daemon.client().List(v1::StatusRequest{});
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const v1::Process& p : *listed) kept.push_back(p.id());
  EXPECT_THAT(kept, ElementsAre(ended[2].id(), ended[3].id(), ended[4].id()));
  EXPECT_NE(access(ended[0].stdout_path().c_str(), F_OK), 0);
}

TEST_F(LifecycleTest, IdsAreNotReusedAcrossRestarts) {
  uint64_t first = StartOk(client_, {"/bin/true"}).id();
  TestDaemon again;  // a different state dir starts at 1...
  EXPECT_EQ(StartOk(again.client(), {"/bin/true"}).id(), 1u);
  // ...while the same state dir continues above every id it gave out.
  std::string state = daemon_.state_dir();
  ASSERT_EQ(daemon_.Stop(), 0);
  TestDaemon restarted({"--state-dir", state});
  EXPECT_GT(StartOk(restarted.client(), {"/bin/true"}).id(), first);
}

TEST_F(LifecycleTest, WorkerInheritsNoDescriptorOfTheDaemon) {
  v1::Process started = StartOk(client_, {"/bin/sh", "-c", "ls /proc/$$/fd"});
  JoinOk(client_, started.id());
  EXPECT_EQ(Logs(client_, started.id()), "0\n1\n2\n");
}

TEST_F(LifecycleTest, WorkerStartsWithCleanSignalStateAndOwnGroup) {
  v1::Process started = StartOk(
      client_, {"/bin/sh", "-c",
                "grep -E '^Sig(Blk|Ign)' /proc/$$/status | cut -f2; ps -o pgid= -p $$ | tr -d ' '"});
  JoinOk(client_, started.id());
  std::vector<std::string> lines =
      absl::StrSplit(Logs(client_, started.id()), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  uint64_t blocked = 0, ignored = 0;
  ASSERT_TRUE(absl::SimpleHexAtoi(lines[0], &blocked));
  ASSERT_TRUE(absl::SimpleHexAtoi(lines[1], &ignored));
  EXPECT_EQ(blocked, 0u);
  // Signals 32 and 33 belong to the C library, which keeps them out of every signal set; a
  // disposition inherited for them is outside what posix_spawn can reset.
  constexpr uint64_t kLibcSignals = (uint64_t{1} << 31) | (uint64_t{1} << 32);
  EXPECT_EQ(ignored & ~kLibcSignals, 0u) << lines[1];
  EXPECT_EQ(lines[2], absl::StrCat(started.pid()));
}

// The nice value of `pid` (field 19 of /proc/<pid>/stat).
int NiceOf(pid_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  int nice = 0;
  EXPECT_TRUE(fields.size() > 16 && absl::SimpleAtoi(fields[16], &nice));
  return nice;
}

TEST_F(LifecycleTest, DaemonOutranksItsWorkersWhichKeepTheirPriority) {
  errno = 0;
  int ours = getpriority(PRIO_PROCESS, 0);  // the daemon was started with ours
  v1::Process worker = StartOk(client_, {"sleep", "100"});
  EXPECT_EQ(NiceOf(worker.pid()), ours);
  if (geteuid() == 0) {
    EXPECT_EQ(NiceOf(daemon_.pid()), ours - 5);
  }
  TerminateOk(client_, worker.id(), SIGKILL, absl::Seconds(1));
}

TEST_F(LifecycleTest, WorkersShareALowWeightCpuGroupWhereTheHostAllowsIt) {
  v1::Process worker = StartOk(client_, {"sleep", "100"});
  std::string v1_group = "/sys/fs/cgroup/cpu/proctor-workers";
  std::string v2_group = "/sys/fs/cgroup/proctor-workers";
  bool v1 = access(v1_group.c_str(), F_OK) == 0;
  if (!v1 && access(v2_group.c_str(), F_OK) != 0) {
    TerminateOk(client_, worker.id(), SIGKILL, absl::Seconds(1));
    GTEST_SKIP() << "no CPU cgroup for workers on this host";
  }
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", worker.pid(), "/cgroup")),
              HasSubstr("/proctor-workers"));
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", daemon_.pid(), "/cgroup")),
              Not(HasSubstr("/proctor-workers")));
  std::string weight =
      ReadFile(v1 ? v1_group + "/cpu.shares" : v2_group + "/cpu.weight");
  EXPECT_EQ(weight, v1 ? "128\n" : "10\n");
  TerminateOk(client_, worker.id(), SIGKILL, absl::Seconds(1));
}

TEST_F(LifecycleTest, KwargsEnvCwdAndNameReachTheWorker) {
  TempDir cwd;
  v1::StartRequest request;
  request.set_target("/bin/sh");
  request.add_args("-c");
  request.add_args("echo \"$0 $1 $2 $GREETING $(pwd)\"");
  (*request.mutable_kwargs())["name"] = "egon";
  (*request.mutable_kwargs())["age"] = "18";
  request.add_env("GREETING=hello");
  request.set_cwd(cwd.path());
  request.set_name("piao");
  absl::StatusOr<v1::Process> started = client_.Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->name(), "piao");
  JoinOk(client_, started->id());
  EXPECT_EQ(Logs(client_, started->id()),
            absl::StrCat("--age=18 --name=egon  hello ", cwd.path(), "\n"));
}

// The permissions of the daemon's socket file.
unsigned SocketMode(const TestDaemon& daemon) {
  struct stat st;
  EXPECT_EQ(stat(daemon.address().substr(5).c_str(), &st), 0);
  return st.st_mode & 0777;
}

TEST(SocketTest, UnixSocketIsPrivateUnlessWidened) {
  TestDaemon private_daemon;
  EXPECT_EQ(SocketMode(private_daemon), 0600u);
  TestDaemon shared_daemon({"--socket-mode", "0660"});
  EXPECT_EQ(SocketMode(shared_daemon), 0660u);
}

TEST(EnvironmentTest, WorkersDoNotInheritTheDaemonsProctorVariables) {
  // A daemon started where an admin key file is configured must not hand it to workers:
  // they would then act with the admin key instead of their own.
  ScopedEnv admin_key_file("PROCTOR_AUTHKEY_FILE", "/somewhere/admin.key");
  TestDaemon daemon;
  v1::Process started = StartOk(
      daemon.client(), {"/bin/sh", "-c", "echo \"[$PROCTOR_AUTHKEY_FILE] $PROCTOR_ID\""});
  JoinOk(daemon.client(), started.id());
  EXPECT_EQ(Logs(daemon.client(), started.id()), absl::StrCat("[] ", started.id(), "\n"));
}

TEST_F(LifecycleTest, DefaultNamesCountTopLevelProcesses) {
  EXPECT_EQ(StartOk(client_, {"/bin/true"}).name(), "Process-1");
  EXPECT_EQ(StartOk(client_, {"/bin/true"}).name(), "Process-2");
}

TEST_F(LifecycleTest, RecordShowsResourceUsage) {
  v1::Process started = StartOk(client_, {"/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"});
  v1::Process ended = JoinOk(client_, started.id());
  EXPECT_GT(ended.max_rss_bytes(), 0);
  EXPECT_GT(TimeUtil::DurationToNanoseconds(ended.user_cpu()) +
                TimeUtil::DurationToNanoseconds(ended.system_cpu()),
            0);
  EXPECT_EQ(ended.target(), "/bin/sh");
}

TEST(ShutdownTest, DaemonShutdownLeavesNoProcessBehind) {
  TestDaemon daemon({"--shutdown-grace", "0.3"});
  absl::StatusOr<std::unique_ptr<Session>> session = daemon.client().OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  v1::StartRequest in_session;
  in_session.set_target("sleep");
  in_session.add_args("100");
  in_session.set_daemon(true);
  in_session.set_session((*session)->id());
  v1::Process daemonic = *daemon.client().Start(in_session);
  v1::Process worker =
      StartOk(daemon.client(), {"/bin/sh", "-c", "trap '' TERM; echo ready; sleep 100"});
  v1::Process grandparent =
      StartOk(daemon.client(), {"/bin/sh", "-c", "sleep 100 & echo $!; wait"});
  // The shutdown must find the worker ignoring SIGTERM, and the grandchild started.
  ASSERT_TRUE(WaitFor([&] { return ReadFile(worker.stdout_path()) == "ready\n"; }));
  std::vector<pid_t> grandchildren;
  ASSERT_TRUE(WaitFor([&] {
    grandchildren = Pids(ReadFile(grandparent.stdout_path()));
    return !grandchildren.empty();
  }));
  pid_t daemon_pid = daemon.pid();
  absl::Time before = absl::Now();
  EXPECT_EQ(daemon.Stop(), 0);
  EXPECT_LT(absl::Now() - before, absl::Seconds(5));
  for (pid_t pid : {daemonic.pid(), worker.pid(), grandparent.pid(), grandchildren[0]}) {
    EXPECT_FALSE(IsAlive(pid) || IsZombie(pid)) << pid;
  }
  EXPECT_TRUE(Descendants(daemon_pid).empty());
  EXPECT_THAT(daemon.Log(), HasSubstr("every process has ended"));
}

}  // namespace
}  // namespace proctor::testing
