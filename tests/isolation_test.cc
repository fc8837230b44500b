// What one worker can do to others and to the daemon, against a real proctord: a recycled pid
// is never signalled, no record shows another's output, escapees that rewrite their
// environment are still ended, and a record is not released while its processes live.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Pids of live processes whose command line is exactly `argv`.
std::vector<pid_t> ProcessesRunning(const std::vector<std::string>& argv) {
  std::string wanted;
  for (const std::string& arg : argv) wanted += arg + '\0';
  std::vector<pid_t> found;
  DIR* proc = opendir("/proc");
  while (dirent* entry = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    if (ReadFile(absl::StrCat("/proc/", pid, "/cmdline")) == wanted && IsAlive(pid)) {
      found.push_back(pid);
    }
  }
  closedir(proc);
  return found;
}

// The signals pending for `pid` (thread and process), as a mask with bit N-1 for signal N.
uint64_t PendingSignals(pid_t pid) {
  uint64_t mask = 0;
  for (absl::string_view line :
       absl::StrSplit(ReadFile(absl::StrCat("/proc/", pid, "/status")), '\n')) {
    if (absl::ConsumePrefix(&line, "SigPnd:") || absl::ConsumePrefix(&line, "ShdPnd:")) {
      uint64_t bits = 0;
      if (absl::SimpleHexAtoi(absl::StripAsciiWhitespace(line), &bits)) mask |= bits;
    }
  }
  return mask;
}

class IsolationTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t pid : reap_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  // A process of this test's in a session of its own, with SIGTERM blocked so that a SIGTERM
  // sent to it stays visible as pending; it is given `pid` when the kernel allows.
  pid_t StartVictimAt(pid_t pid) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setsigmask(&attr, &term);
    char* argv[] = {const_cast<char*>("/bin/sleep"), const_cast<char*>("1000"), nullptr};
    pid_t victim = -1;
    for (int attempt = 0; attempt < 1000 && victim != pid; ++attempt) {
      if (victim > 0) {
        kill(victim, SIGKILL);
        waitpid(victim, nullptr, 0);
      }
      if (!WriteFile("/proc/sys/kernel/ns_last_pid", absl::StrCat(pid - 1))) break;
      if (posix_spawn(&victim, "/bin/sleep", nullptr, &attr, argv, nullptr) != 0) victim = -1;
    }
    posix_spawnattr_destroy(&attr);
    if (victim > 0) reap_.push_back(victim);
    return victim;
  }

  TestDaemon daemon_;
  std::vector<pid_t> reap_;
};

// A worker ended and was reaped; its pid went to an unrelated process that leads a group of
// the same number. Terminating the ended worker must signal nothing.
TEST_F(IsolationTest, TerminateOfAnEndedProcessNeverSignalsItsRecycledPid) {
  v1::Process ended = StartOk(daemon_.client(), {"/bin/true"});
  ASSERT_TRUE(daemon_.client().Join(ended.id()).ok());
  pid_t victim = StartVictimAt(ended.pid());
  if (victim != ended.pid()) GTEST_SKIP() << "could not have the kernel reuse the pid";
  ASSERT_EQ(getpgid(victim), ended.pid());

  v1::TerminateRequest terminate;
  terminate.set_id(ended.id());
  terminate.set_wait(false);
  absl::StatusOr<v1::Process> answer = daemon_.client().Terminate(terminate);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->state(), v1::STATE_EXITED);
  terminate.set_signal(SIGKILL);
  ASSERT_TRUE(daemon_.client().Terminate(terminate).ok());
  EXPECT_EQ(PendingSignals(victim) & (1u << (SIGTERM - 1)), 0u) << "SIGTERM reached the victim";
  EXPECT_TRUE(IsAlive(victim)) << "SIGKILL reached the victim";

  EXPECT_EQ(daemon_.Stop(), 0);
  EXPECT_EQ(PendingSignals(victim) & (1u << (SIGTERM - 1)), 0u) << "shutdown signalled it";
  EXPECT_TRUE(IsAlive(victim));
}

// Without cgroups, a reaped worker's group is remembered while members may remain. Once they
// are gone, the number may lead a new worker: terminating the old record must not reach it.
TEST(GroupReuseTest, TheGroupOfAnEndedWorkerIsNotTakenForANewWorkersGroup) {
  TestDaemon daemon({"--no-worker-cgroups"});
  Gate gate(daemon.dir() + "/gate");
  v1::Process old = StartOk(daemon.client(),
                            {"/bin/sh", "-c", absl::StrCat("(", gate.ShellWait(), ") & exit 0")});
  ASSERT_TRUE(daemon.client().Join(old.id()).ok());  // its group lives on in the background
  ASSERT_TRUE(gate.Open());
  ASSERT_TRUE(WaitFor([&] { return kill(-old.pid(), 0) != 0; })) << "the old group emptied";
  // A new worker given the old number, with SIGTERM blocked so a SIGTERM stays visible.
  std::string ready = daemon.dir() + "/ready";
  std::string script = absl::StrCat(
      "import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); "
      "open('", ready, "', 'w').close(); time.sleep(100)");
  v1::Process reused;
  for (int attempt = 0; attempt < 200 && reused.pid() != old.pid(); ++attempt) {
    if (reused.id() != 0) {
      v1::TerminateRequest kill_it;
      kill_it.set_id(reused.id());
      kill_it.set_signal(SIGKILL);
      ASSERT_TRUE(daemon.client().Terminate(kill_it).ok());
    }
    if (!WriteFile("/proc/sys/kernel/ns_last_pid", absl::StrCat(old.pid() - 1))) break;
    reused = StartOk(daemon.client(), {"/usr/bin/python3", "-c", script});
  }
  if (reused.pid() != old.pid()) GTEST_SKIP() << "could not have the kernel reuse the pid";
  ASSERT_TRUE(WaitFor([&] { return access(ready.c_str(), F_OK) == 0; }));

  v1::TerminateRequest terminate;
  terminate.set_id(old.id());
  terminate.set_tree(false);
  terminate.set_wait(false);
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_EQ(PendingSignals(reused.pid()) & (1u << (SIGTERM - 1)), 0u)
      << "the new worker's group was signalled for the old record";
  terminate.set_id(reused.id());
  terminate.set_signal(SIGKILL);
  terminate.set_wait(true);
  EXPECT_TRUE(daemon.client().Terminate(terminate).ok());
}

// An escaped background process of an ended record writes to the capture files it still holds
// while another record runs: its output never appears in the other record's logs.
TEST(CaptureIsolationTest, OutputOfAForgottenRecordNeverAppearsInAnother) {
  TestDaemon daemon({"--retain", "1"});
  Gate gate(daemon.dir() + "/gate");
  std::string done = daemon.dir() + "/done";
  v1::Process a = StartOk(
      daemon.client(),
      {"/bin/sh", "-c",
       absl::StrCat("(", gate.ShellWait(), "; echo A-SECRET; echo A-SECRET >&2; touch ", done,
                    ") & exit 0")});
  ASSERT_TRUE(daemon.client().Join(a.id()).ok());
  v1::Process filler = StartOk(daemon.client(), {"/bin/true"});
  ASSERT_TRUE(daemon.client().Join(filler.id()).ok());  // A's record is evicted now
  EXPECT_EQ(daemon.client().Status(a.id()).status().code(), absl::StatusCode::kNotFound);
  v1::Process b = StartOk(daemon.client(), {"/bin/sh", "-c", "echo B-OUT; exec sleep 30"});

  ASSERT_TRUE(gate.Open());
  ASSERT_TRUE(WaitFor([&] { return access(done.c_str(), F_OK) == 0; }));
  for (v1::Stream stream : {v1::STREAM_STDOUT, v1::STREAM_STDERR}) {
    v1::LogsRequest logs;
    logs.set_id(b.id());
    logs.set_stream(stream);
    std::string text;
    ASSERT_TRUE(daemon.client().Logs(logs, [&](std::string_view chunk) { text += chunk; }).ok());
    EXPECT_THAT(text, Not(HasSubstr("A-SECRET"))) << "stream " << stream;
  }
  v1::TerminateRequest terminate;
  terminate.set_id(b.id());
  EXPECT_TRUE(daemon.client().Terminate(terminate).ok());
}

// A descendant that leaves the worker's group and session and rewrites the environment it
// was found by is still part of the worker, and ends with it.
TEST(EscapeeTest, EscapeesThatChangeTheirEnvironmentAreStillEnded) {
  TestDaemon daemon;
  if (daemon.Log().find("its own cgroup") == std::string::npos) {
    GTEST_SKIP() << "workers get no cgroups here; escapees are found in /proc only";
  }
  struct Case {
    std::string escape;
    std::string seconds;
  } cases[] = {{"env -u PROCTOR_ID", "3002"}, {"env PROCTOR_ID=999999", "3012"}};
  for (const Case& c : cases) {
    v1::Process worker = StartOk(
        daemon.client(),
        {"/bin/sh", "-c",
         absl::StrCat(c.escape, " setsid -f sleep ", c.seconds, "; exec sleep 3000")});
    ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", c.seconds}).size() == 1; }));
    pid_t escapee = ProcessesRunning({"sleep", c.seconds})[0];
    v1::TerminateRequest terminate;
    terminate.set_id(worker.id());
    terminate.mutable_grace()->set_seconds(5);
    absl::StatusOr<v1::Process> ended = daemon.client().Terminate(terminate);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_FALSE(IsAlive(escapee)) << c.escape << " let it escape";
  }
}

// Workers' cgroups are pooled when they are empty and reused by later workers; a cgroup
// anything is still alive in, and that of a live worker, is never anyone else's.
TEST(CgroupPoolTest, EmptiedCgroupsAreReusedAndBusyOnesAreNeverShared) {
  TestDaemon daemon;
  if (daemon.Log().find("its own cgroup") == std::string::npos) {
    GTEST_SKIP() << "workers get no cgroups here";
  }
  // Ends at once, but what it leaves behind keeps its cgroup busy.
  // Seconds unique to this test program, to tell its sleeps from any other's.
  const std::string seconds = absl::StrCat(100000 + getpid());
  v1::Process left = StartOk(daemon.client(), {"/bin/sh", "-c",
                                               absl::StrCat("sleep ", seconds,
                                                            " & exec sleep ", seconds)});
  // Both there: the one left behind, and the worker itself once the shell has exec'd.
  ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", seconds}).size() == 2; }));
  const std::string busy = CgroupOfPid(left.pid());
  ASSERT_TRUE(absl::StrContains(busy, "/proctord-")) << busy;
  ASSERT_EQ(kill(left.pid(), SIGKILL), 0);  // still unreaped: the pid is the worker's
  ASSERT_TRUE(daemon.client().Join(left.id()).ok());

  std::set<std::string> used;
  for (int i = 0; i < 20; ++i) {
    v1::Process worker = StartOk(daemon.client(), {"/bin/cat", "/proc/self/cgroup"});
    ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
    const std::string out = ReadFile(worker.stdout_path());
    const std::string cgroup = CgroupV2Path(out);
    ASSERT_FALSE(cgroup.empty()) << out;
    EXPECT_NE(cgroup, busy) << "a cgroup something still lives in was handed on";
    used.insert(cgroup);
    // Given to the pool once the keeper has reaped the worker, a moment after the Join.
    ASSERT_TRUE(WaitFor([&] { return IsGone(worker.pid()); }));
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_LT(used.size(), 10u) << "cgroups of ended workers were not reused";

  std::set<std::string> live;
  std::vector<v1::Process> running;
  for (int i = 0; i < 3; ++i) {
    running.push_back(StartOk(daemon.client(), {"/bin/sleep", "300"}));
    ASSERT_TRUE(WaitFor([&] { return !CgroupOfPid(running.back().pid()).empty(); }));
    live.insert(CgroupOfPid(running.back().pid()));
  }
  EXPECT_EQ(live.size(), 3u) << "live workers share a cgroup";
  EXPECT_FALSE(live.contains(busy));
  for (const v1::Process& p : running) {
    v1::TerminateRequest request;
    request.set_id(p.id());
    ASSERT_TRUE(daemon.client().Terminate(request).ok());
  }
  // The busy cgroup's leftover still ends with its worker's tree.
  v1::TerminateRequest terminate;
  terminate.set_id(left.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", seconds}).empty(); }));
}

// A pooled cgroup keeps the name of the worker it was made for, and may hold another worker
// when that one runs again (a restart keeps its id): the rerun gets a cgroup of its own, and
// ending it leaves the other worker alone.
TEST(CgroupPoolTest, ARestartNeverTakesTheCgroupNamedAfterItFromAnotherWorker) {
  TestDaemon daemon;
  if (daemon.Log().find("its own cgroup") == std::string::npos) {
    GTEST_SKIP() << "workers get no cgroups here";
  }
  TempDir dir;
  const std::string ran = dir.path() + "/ran";
  v1::StartRequest request;
  request.set_target("/bin/sh");
  request.add_args("-c");
  // Fails at once the first time (its cgroup goes to the pool), runs on the second. The first
  // run leaves its /proc/self/cgroup in `ran`.
  request.add_args(absl::StrCat("[ -e ", ran, " ] && exec sleep 300; cat /proc/self/cgroup > ",
                                ran, "; exit 1"));
  v1::RestartPolicy* policy = request.mutable_restart();
  policy->set_mode(v1::RestartPolicy::ON_FAILURE);
  policy->mutable_initial_backoff()->set_nanos(500'000'000);
  policy->mutable_max_backoff()->set_seconds(1);
  absl::StatusOr<v1::Process> restarting = daemon.client().Start(request);
  ASSERT_TRUE(restarting.ok()) << restarting.status();
  const pid_t first_run = restarting->pid();
  ASSERT_TRUE(WaitFor([&] { return IsGone(first_run); })) << "its first run was not reaped";
  absl::SleepFor(absl::Milliseconds(100));  // pooled a moment after the reaping

  // The only spare: the cgroup named after the restarting worker's id.
  v1::Process other = StartOk(daemon.client(), {"/bin/sleep", "300"});
  ASSERT_TRUE(WaitFor([&] { return !CgroupOfPid(other.pid()).empty(); }));
  const std::string others = CgroupOfPid(other.pid());
  ASSERT_EQ(others, CgroupV2Path(ReadFile(ran)))
      << "the other worker did not get the pooled cgroup: the case is not set up";
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<v1::Process> now = daemon.client().Status(restarting->id());
    return now.ok() && now->state() == v1::STATE_RUNNING && now->restarts() == 1 &&
           !CgroupOfPid(now->pid()).empty();
  })) << "it was not restarted\n" << daemon.Log();
  const v1::Process rerun = *daemon.client().Status(restarting->id());
  EXPECT_NE(CgroupOfPid(rerun.pid()), others) << "two live workers share a cgroup";

  v1::TerminateRequest terminate;
  terminate.set_id(rerun.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_TRUE(IsAlive(other.pid())) << "ending one worker ended another";
  terminate.set_id(other.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
}

// Without cgroups, an escapee that kept the environment it started with is still found (in
// /proc, by the PROCTOR_ID its environment started with) and ended with its tree.
TEST(EscapeeTest, WithoutCgroupsEscapeesAreFoundInProc) {
  TestDaemon daemon({"--no-worker-cgroups"});
  EXPECT_THAT(daemon.Log(), HasSubstr("workers get no cgroups of their own"));
  v1::Process worker = StartOk(daemon.client(),
                               {"/bin/sh", "-c", "setsid -f sleep 3005; exec sleep 3000"});
  ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", "3005"}).size() == 1; }));
  pid_t escapee = ProcessesRunning({"sleep", "3005"})[0];
  v1::TerminateRequest terminate;
  terminate.set_id(worker.id());
  terminate.mutable_grace()->set_seconds(5);
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_FALSE(IsAlive(escapee));
}

// Where cgroup v2 is mounted, from /proc/self/mountinfo ("" when it is not).
std::string CgroupV2Mount() {
  for (absl::string_view line : absl::StrSplit(ReadFile("/proc/self/mountinfo"), '\n')) {
    size_t dash = line.find(" - cgroup2 ");
    if (dash == absl::string_view::npos) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line.substr(0, dash), ' ');
    if (fields.size() >= 5) return std::string(fields[4]);
  }
  return "";
}

// A process that left its worker's cgroup (root may move itself) and then its parent: when it
// ends, proctord reaps it, and says that no worker is known to own it.
TEST(EscapeeTest, OrphansOwnedByNoWorkerAreLoggedAndCounted) {
  TestDaemon daemon;
  std::string mount = CgroupV2Mount();
  if (daemon.Log().find("its own cgroup") == std::string::npos || mount.empty() ||
      geteuid() != 0) {
    GTEST_SKIP() << "needs per-worker cgroups and root";
  }
  Gate gate(daemon.dir() + "/gate");
  std::string moved = daemon.dir() + "/moved";
  v1::Process worker = StartOk(
      daemon.client(),
      {"/bin/sh", "-c",
       absl::StrCat("sh -c 'echo $$ > ", mount, "/cgroup.procs && touch ", moved, "; ",
                    gate.ShellWait(), "' & exit 0")});
  ASSERT_TRUE(WaitFor([&] { return access(moved.c_str(), F_OK) == 0; }));
  ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
  ASSERT_TRUE(gate.Open());
  EXPECT_TRUE(WaitFor([&] {
    return daemon.Log().find("that no worker is known to own (1 so far)") != std::string::npos;
  })) << daemon.Log();
}

// Without cgroups, the only proof that a group id is still a worker's, once its leader is
// reaped, is a pidfd of the leader (which pins the group's struct pid): it reaches what is
// left of the group, and nothing that took the number since.
TEST(GroupSignalTest, WhatIsLeftOfAGroupIsReachedAfterItsLeaderIsReaped) {
  TestDaemon daemon({"--no-worker-cgroups"});
  if (daemon.Log().find("cannot signal a process group through a pidfd") != std::string::npos) {
    GTEST_SKIP() << "needs pidfd_send_signal(PIDFD_SIGNAL_PROCESS_GROUP), Linux 6.9";
  }
  v1::Process worker = StartOk(daemon.client(), {"/bin/sh", "-c", "sleep 3011 & exit 0"});
  ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
  ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", "3011"}).size() == 1; }));
  pid_t left = ProcessesRunning({"sleep", "3011"})[0];
  ASSERT_EQ(getpgid(left), worker.pid()) << "still in the worker's group";
  ASSERT_TRUE(WaitFor([&] { return !IsZombie(worker.pid()) && !IsAlive(worker.pid()); }))
      << "the leader is reaped";
  v1::TerminateRequest terminate;
  terminate.set_id(worker.id());
  terminate.set_tree(false);  // its group only: no search for strays
  terminate.set_signal(SIGTERM);
  absl::StatusOr<v1::Process> ended = daemon.client().Terminate(terminate);
  ASSERT_TRUE(ended.ok()) << ended.status() << daemon.Log();
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(left); })) << daemon.Log();
}

TEST(ReleaseTest, ReleaseIsRefusedWhileProcessesOfTheWorkerLive) {
  TestDaemon daemon;
  v1::Process worker =
      StartOk(daemon.client(), {"/bin/sh", "-c", "sleep 3004 & exit 0"});
  ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
  ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", "3004"}).size() == 1; }));
  absl::Status refused = daemon.client().Release(worker.id());
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("still alive"));
  v1::TerminateRequest terminate;
  terminate.set_id(worker.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_TRUE(ProcessesRunning({"sleep", "3004"}).empty());
  EXPECT_TRUE(daemon.client().Release(worker.id()).ok());
}

// A Release while a Terminate is still ending what an ended worker left says so, and how to
// wait for it, rather than to terminate it.
TEST(ReleaseTest, AReleaseWhileATerminateEndsWhatIsLeftSaysHowToWait) {
  TestDaemon daemon;
  // What it leaves ignores SIGTERM: only the SIGKILL after the grace ends it.
  v1::Process worker = StartOk(
      daemon.client(), {"/bin/sh", "-c", "(trap '' TERM; exec sleep 3006) & exit 0"});
  ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
  ASSERT_TRUE(WaitFor([&] { return ProcessesRunning({"sleep", "3006"}).size() == 1; }));
  v1::TerminateRequest terminate;
  terminate.set_id(worker.id());
  terminate.set_wait(false);
  *terminate.mutable_grace() = DurationToProto(absl::Seconds(60));
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  absl::Status refused = daemon.client().Release(worker.id());
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("still alive"));
  EXPECT_THAT(refused.message(), HasSubstr("a Terminate is ending them"));
  EXPECT_THAT(refused.message(), Not(HasSubstr("terminate it before")));
  terminate.set_wait(true);
  terminate.set_signal(SIGKILL);
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_TRUE(ProcessesRunning({"sleep", "3006"}).empty());
  EXPECT_TRUE(daemon.client().Release(worker.id()).ok());
}

// Each worker signs with a credential of its own. A child never holds its parent's, so it
// cannot act as its parent (here: on its sibling); multiprocessing's authkey, which it does
// inherit, is not accepted as a credential.
TEST(CredentialTest, AChildCannotActAsItsParent) {
  TestDaemon daemon;
  v1::Process parent = StartOk(daemon.client(), {"/bin/sleep", "100"});
  absl::StatusOr<Credentials> parent_key = WorkerCredentials(parent.pid());
  ASSERT_TRUE(parent_key.ok()) << parent_key.status();
  std::unique_ptr<Client> as_parent = *Client::Connect(
      ClientOptions{.address = daemon.address(), .credentials = *parent_key});
  v1::Process child = StartOk(*as_parent, {"/bin/sleep", "100"});
  v1::Process sibling = StartOk(*as_parent, {"/bin/sleep", "100"});
  absl::StatusOr<Credentials> child_key = WorkerCredentials(child.pid());
  ASSERT_TRUE(child_key.ok()) << child_key.status();
  EXPECT_NE(child_key->key, parent_key->key);
  std::string child_environ = ReadFile(absl::StrCat("/proc/", child.pid(), "/environ"));
  EXPECT_THAT(child_environ, Not(HasSubstr(HexEncode(parent_key->key))))
      << "the parent's credential reached the child";

  auto connect = [&](Credentials credentials) {
    return *Client::Connect(
        ClientOptions{.address = daemon.address(), .credentials = std::move(credentials)});
  };
  // With its own credential: its own subtree only.
  std::unique_ptr<Client> as_child = connect(*child_key);
  EXPECT_TRUE(as_child->Status(child.id()).ok());
  v1::TerminateRequest terminate;
  terminate.set_id(sibling.id());
  EXPECT_EQ(as_child->Terminate(terminate).status().code(), absl::StatusCode::kPermissionDenied);
  // Posing as its parent with what it holds: its credential, or the inherited authkey.
  Credentials posing = *child_key;
  posing.key_id = parent_key->key_id;
  EXPECT_EQ(connect(posing)->Terminate(terminate).status().code(),
            absl::StatusCode::kUnauthenticated);
  for (absl::string_view entry : absl::StrSplit(child_environ, '\0')) {
    if (absl::ConsumePrefix(&entry, "PROCTOR_PROCESS_AUTHKEY=")) {
      absl::StatusOr<std::string> inherited = HexDecode(entry);
      ASSERT_TRUE(inherited.ok());
      posing.key = *inherited;
    }
  }
  ASSERT_NE(posing.key, child_key->key) << "PROCTOR_PROCESS_AUTHKEY is missing";
  EXPECT_EQ(connect(posing)->Terminate(terminate).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(daemon.client().Status(sibling.id())->state(), v1::STATE_RUNNING);
  // Its ancestors' records it may read (Status, Join), never change.
  absl::StatusOr<v1::Process> read_parent = as_child->Status(parent.id());
  ASSERT_TRUE(read_parent.ok()) << read_parent.status();
  EXPECT_EQ(read_parent->id(), parent.id());
  absl::StatusOr<v1::Process> polled = as_child->Join(parent.id(), absl::ZeroDuration());
  ASSERT_TRUE(polled.ok()) << polled.status();
  EXPECT_EQ(polled->state(), v1::STATE_RUNNING);
  terminate.set_id(parent.id());
  absl::StatusOr<v1::Process> refused = as_child->Terminate(terminate);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("may be read, not changed"));
  EXPECT_EQ(as_child->Status(sibling.id()).status().code(), absl::StatusCode::kPermissionDenied)
      << "a sibling is no ancestor";

  // Watch shows it its ancestors' events too, and still nothing of its sibling's.
  uint64_t cursor = 0;
  ASSERT_TRUE(daemon.client().List({}, &cursor).ok());
  v1::WatchRequest watch;
  watch.set_since(cursor);
  std::vector<v1::Event> seen;
  std::stop_source give_up;
  std::thread watcher([&] {
    absl::Status watched = as_child->Watch(
        watch,
        [&](const v1::Event& event) {
          seen.push_back(event);
          return !(event.process().id() == parent.id() && event.type() == v1::EVENT_EXITED);
        },
        give_up.get_token());
    EXPECT_TRUE(watched.ok()) << watched;
  });
  // The parent's credential covers its children.
  terminate.set_id(sibling.id());
  EXPECT_TRUE(as_parent->Terminate(terminate).ok());
  terminate.set_id(parent.id());
  EXPECT_TRUE(daemon.client().Terminate(terminate).ok());
  // Bounds the wait should the parent's exit never reach the child's watch.
  absl::Notification watched;
  std::thread timer([&] {
    if (!watched.WaitForNotificationWithTimeout(absl::Seconds(20))) give_up.request_stop();
  });
  watcher.join();
  watched.Notify();
  timer.join();
  std::set<uint64_t> ids;
  for (const v1::Event& event : seen) ids.insert(event.process().id());
  EXPECT_TRUE(ids.contains(parent.id())) << "the parent's exit did not reach the child's watch";
  EXPECT_FALSE(ids.contains(sibling.id())) << "a sibling's events reached the child's watch";
}

TEST(WorkerUserTest, AWorkerRunsAsTheUserItIsStartedAs) {
  if (geteuid() != 0) GTEST_SKIP() << "switching users needs a proctord running as root";
  TestDaemon daemon;
  v1::StartRequest request;
  request.set_target("/bin/sh");
  request.add_args("-c");
  request.add_args(absl::StrCat("id -u; id -g; echo $USER; cat ", daemon.authkey_path(),
                                " >/dev/null 2>&1 && echo read-the-admin-key"));
  request.set_user("nobody");
  request.set_group("nogroup");
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(daemon.client().Join(started->id()).ok());
  v1::LogsRequest logs;
  logs.set_id(started->id());
  std::string out;
  ASSERT_TRUE(daemon.client().Logs(logs, [&](std::string_view chunk) { out += chunk; }).ok());
  EXPECT_EQ(out, "65534\n65534\nnobody\n");

  CommandResult cli = daemon.Cli({"run", "--user", "nobody", "--group", "0", "--", "id", "-g"});
  EXPECT_EQ(cli.status, 0) << cli.err;
  EXPECT_EQ(cli.out, "0\n");

  request.set_user("no-such-user-here");
  absl::Status unknown = daemon.client().Start(request).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.message(), HasSubstr("no user named \"no-such-user-here\""));
  request.set_user("nobody");
  request.set_group("no-such-group-here");
  EXPECT_EQ(daemon.client().Start(request).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WorkerUserTest, WorkerUserFlagIsTheDefault) {
  if (geteuid() != 0) GTEST_SKIP() << "switching users needs a proctord running as root";
  TestDaemon daemon({"--worker-user", "nobody"});
  v1::Process worker = StartOk(daemon.client(), {"/bin/sh", "-c", "id -u"});
  ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
  v1::LogsRequest logs;
  logs.set_id(worker.id());
  std::string out;
  ASSERT_TRUE(daemon.client().Logs(logs, [&](std::string_view chunk) { out += chunk; }).ok());
  EXPECT_EQ(out, "65534\n");
}

}  // namespace
}  // namespace proctor::testing
