// sd_notify against a real proctord: readiness with systemd-notify and with a sender of our
// own, the ready timeout, the watchdog and its restarts, and messages that are not the
// worker's (forged, oversized, malformed).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

google::protobuf::Duration DurationOf(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

v1::StartRequest Notifying(std::vector<std::string> argv) {
  v1::StartRequest request;
  request.set_target(argv[0]);
  for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
  request.set_notify(true);
  return request;
}

// The NOTIFY_SOCKET a running worker was given.
std::string NotifySocketOf(pid_t pid) {
  std::string environ = ReadFile(absl::StrCat("/proc/", pid, "/environ"));
  for (absl::string_view entry : absl::StrSplit(environ, '\0')) {
    if (absl::ConsumePrefix(&entry, "NOTIFY_SOCKET=")) return std::string(entry);
  }
  return "";
}

// Sends `message` to `path` from this (live) process, which is no worker's.
bool SendFromHere(const std::string& path, const std::string& message) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  bool sent = sendto(fd, message.data(), message.size(), 0,
                     reinterpret_cast<sockaddr*>(&address), sizeof(address)) ==
              static_cast<ssize_t>(message.size());
  close(fd);
  return sent;
}

// Ends what a test left running, so that proctord's shutdown does not wait out its grace.
void TerminateAll(TestDaemon& daemon) {
  absl::StatusOr<std::vector<v1::Process>> listed = daemon.client().List(v1::StatusRequest{});
  ASSERT_TRUE(listed.ok());
  for (const v1::Process& p : *listed) {
    v1::TerminateRequest terminate;
    terminate.set_id(p.id());
    EXPECT_TRUE(daemon.client().Terminate(terminate).ok());
  }
}

TEST(NotifyDaemonTest, SystemdNotifyMakesAWorkerReadyAndStartWaitsForIt) {
  if (access("/usr/bin/systemd-notify", X_OK) != 0) GTEST_SKIP() << "no systemd-notify here";
  TestDaemon daemon;
  // systemd-notify exits right after sending: the message is still the worker's.
  v1::StartRequest request = Notifying(
      {"/bin/sh", "-c",
       "sleep 0.3; systemd-notify --ready --status='serving on 8080'; exec sleep 1000"});
  request.set_wait_ready(true);
  *request.mutable_ready_timeout() = DurationOf(absl::Seconds(20));
  absl::Time before = absl::Now();
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status() << daemon.Log();
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(300)) << "Start waited for READY=1";
  EXPECT_EQ(started->state(), v1::STATE_RUNNING);
  EXPECT_TRUE(started->notify().ready());
  EXPECT_EQ(started->notify().status(), "serving on 8080");
  CommandResult json = daemon.Cli({"--json", "status", absl::StrCat(started->id())});
  EXPECT_THAT(json.out, HasSubstr("\"ready\":true"));
  CommandResult events = daemon.Cli({"events", "--since", "0", "--type", "ready"});
  EXPECT_THAT(events.out, HasSubstr("ready"));
  TerminateAll(daemon);
}

TEST(NotifyDaemonTest, OurOwnSenderAndTheCliWaitForReadiness) {
  TestDaemon daemon;
  CommandResult started = daemon.Cli({"start", "--wait-ready", "--ready-timeout", "20", "--",
                                      NOTIFY_SEND_PATH, "--ready-after", "200"});
  ASSERT_EQ(started.status, 0) << started.err;
  std::string id(absl::StripAsciiWhitespace(started.out));
  absl::StatusOr<v1::Process> record = daemon.client().Status(std::stoull(id));
  ASSERT_TRUE(record.ok());
  EXPECT_TRUE(record->notify().ready());
  TerminateAll(daemon);
}

TEST(NotifyDaemonTest, AWorkerNotReadyInTimeFailsTheStartAndIsTerminated) {
  TestDaemon daemon;
  v1::StartRequest request = Notifying({"/bin/sleep", "1000"});
  request.set_wait_ready(true);
  *request.mutable_ready_timeout() = DurationOf(absl::Milliseconds(300));
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  EXPECT_EQ(started.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(started.status().message(), HasSubstr("did not send READY=1 in time"));
  v1::StatusRequest all;
  absl::StatusOr<std::vector<v1::Process>> listed = daemon.client().List(all);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  absl::StatusOr<v1::Process> joined = daemon.client().Join(listed->front().id());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->exitcode(), -SIGTERM);

  CommandResult cli = daemon.Cli({"start", "--wait-ready", "--ready-timeout", "0.2", "--",
                                   "/bin/sleep", "1000"});
  EXPECT_EQ(cli.status, 1);
  EXPECT_THAT(cli.err, HasSubstr("did not send READY=1 in time"));
}

TEST(NotifyDaemonTest, TheWatchdogAbortsAHungWorkerAndItsPolicyRestartsIt) {
  TestDaemon daemon;
  // Pings for a while, then hangs.
  v1::StartRequest request =
      Notifying({"/bin/sh", "-c", absl::StrCat(NOTIFY_SEND_PATH, " WATCHDOG=1; exec sleep 1000")});
  *request.mutable_watchdog() = DurationOf(absl::Milliseconds(300));
  v1::RestartPolicy* policy = request.mutable_restart();
  policy->set_mode(v1::RestartPolicy::ON_FAILURE);
  policy->set_max_restarts(1);
  *policy->mutable_initial_backoff() = DurationOf(absl::Milliseconds(10));
  *policy->mutable_max_backoff() = DurationOf(absl::Milliseconds(10));
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<v1::Process> joined = daemon.client().Join(started->id());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->signal(), SIGABRT);
  EXPECT_EQ(joined->restarts(), 1u);
  EXPECT_TRUE(joined->last_exit().watchdog());
  EXPECT_EQ(joined->last_exit().signal(), SIGABRT);
  EXPECT_THAT(daemon.Log(), HasSubstr("no WATCHDOG=1 within"));
}

TEST(NotifyDaemonTest, MessagesThatAreNotTheWorkersAreDroppedAndCounted) {
  TestDaemon daemon;
  v1::StartRequest request = Notifying(
      {"/bin/sh", "-c",
       absl::StrCat(NOTIFY_SEND_PATH, " --size 5000; ", NOTIFY_SEND_PATH,
                    " 'READY=maybe'; exec sleep 1000")});
  absl::StatusOr<v1::Process> started = daemon.client().Start(request);
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(WaitFor([&] { return daemon.client().Status(started->id())->notify().dropped() == 2; },
                      absl::Seconds(30)))
      << "oversized and malformed: " << daemon.Cli({"--json", "status",
                                                        absl::StrCat(started->id())}).out
      << daemon.Log();
  std::string socket_path;
  ASSERT_TRUE(WaitFor([&] {
    socket_path = NotifySocketOf(started->pid());
    return !socket_path.empty();
  }));
  // From a live process outside the worker's tree: this test.
  ASSERT_TRUE(SendFromHere(socket_path, "READY=1\nSTATUS=forged"));
  ASSERT_TRUE(WaitFor([&] { return daemon.client().Status(started->id())->notify().dropped() == 3; },
                      absl::Seconds(30)))
      << daemon.Log();
  v1::Process record = *daemon.client().Status(started->id());
  EXPECT_FALSE(record.notify().ready());
  EXPECT_NE(record.notify().status(), "forged");
  EXPECT_EQ(record.state(), v1::STATE_RUNNING) << "the daemon and the worker go on";
  // A worker started without notify gets no socket, nor proctord's own.
  absl::StatusOr<v1::Process> plain = daemon.client().Start(
      [] {
        v1::StartRequest r;
        r.set_target("/bin/sleep");
        r.add_args("1000");
        return r;
      }());
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE(WaitFor([&] { return !ReadFile(absl::StrCat("/proc/", plain->pid(), "/environ")).empty(); }));
  EXPECT_EQ(NotifySocketOf(plain->pid()), "");
  EXPECT_FALSE(plain->has_notify());
  TerminateAll(daemon);
}

TEST(NotifyDaemonTest, AWorkersSocketWorksAgainAfterAKillNineOfProctord) {
  TempDir state;
  TempDir place;
  std::vector<std::string> flags = {"--state-dir", state.path(), "--listen",
                                    absl::StrCat("unix:", place.path(), "/p.sock")};
  testing::Gate sends(place.path() + "/gate");
  uint64_t id = 0;
  {
    TestDaemon first(flags);
    absl::StatusOr<v1::Process> started = first.client().Start(Notifying(
        {"/bin/sh", "-c",
         absl::StrCat(sends.ShellWait(), "; ", NOTIFY_SEND_PATH,
                      " READY=1 STATUS=after; exec sleep 1000")}));
    ASSERT_TRUE(started.ok()) << started.status();
    id = started->id();
    first.Kill();
  }
  TestDaemon second(flags);
  ASSERT_TRUE(sends.Open());
  EXPECT_TRUE(WaitFor([&] {
    absl::StatusOr<v1::Process> now = second.client().Status(id);
    return now.ok() && now->notify().ready() && now->notify().status() == "after";
  })) << second.Log();
  TerminateAll(second);
}

}  // namespace
}  // namespace proctor::testing
