// proctord's own sd_notify towards a service manager (systemd_notifier.h), against a real
// proctord and a fake manager: a datagram socket the test binds and names in NOTIFY_SOCKET.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// What systemd would be: it binds the socket proctord's NOTIFY_SOCKET names, and keeps every
// message that arrives.
class FakeServiceManager {
 public:
  explicit FakeServiceManager(const std::string& dir) : path_(dir + "/notify.sock") {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path_.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
        << std::strerror(errno);
  }
  ~FakeServiceManager() { close(fd_); }

  std::string Env() const { return "NOTIFY_SOCKET=" + path_; }

  // Waits up to `limit` for a message that contains `part` (one of its lines, or more);
  // returns it, or "" when none came. Every message read is kept in messages().
  std::string WaitFor(absl::string_view part, absl::Duration limit = absl::Seconds(10)) {
    for (size_t i = seen_; i < messages_.size(); ++i) {
      if (absl::StrContains(messages_[i], part)) {
        seen_ = i + 1;
        return messages_[i];
      }
    }
    seen_ = messages_.size();
    absl::Time deadline = absl::Now() + limit;
    while (absl::Now() < deadline) {
      std::optional<std::string> message = Receive(deadline - absl::Now());
      if (!message.has_value()) break;
      messages_.push_back(*message);
      seen_ = messages_.size();
      if (absl::StrContains(*message, part)) return *message;
    }
    return "";
  }
  // How many messages equal to `message` arrive within `period` (after those read so far).
  int Count(absl::string_view message, absl::Duration period) {
    int count = 0;
    absl::Time deadline = absl::Now() + period;
    while (absl::Now() < deadline) {
      std::optional<std::string> received = Receive(deadline - absl::Now());
      if (!received.has_value()) break;
      messages_.push_back(*received);
      if (*received == message) ++count;
    }
    seen_ = messages_.size();
    return count;
  }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  std::optional<std::string> Receive(absl::Duration limit) {
    pollfd readable{.fd = fd_, .events = POLLIN, .revents = 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(limit));
    if (poll(&readable, 1, std::max(ms, 1)) != 1) return std::nullopt;
    char buffer[4096];
    ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
    if (n < 0) return std::nullopt;
    return std::string(buffer, static_cast<size_t>(n));
  }

  std::string path_;
  int fd_ = -1;
  std::vector<std::string> messages_;
  size_t seen_ = 0;  // messages_ before this were looked at by WaitFor
};

TEST(SystemdNotifyTest, ReadyStatusAndStopping) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  TestDaemon daemon({"--shutdown-grace", "1"}, std::nullopt, {manager.Env()});
  std::string ready = manager.WaitFor("READY=1");
  ASSERT_THAT(ready, HasSubstr("READY=1")) << daemon.Log();
  EXPECT_THAT(ready, HasSubstr("STATUS=0 running"));
  // Ready means answering.
  absl::StatusOr<std::vector<v1::Process>> listed = daemon.client().List({});
  EXPECT_TRUE(listed.ok()) << listed.status();

  // The status line follows the counts.
  v1::Process first = StartOk(daemon.client(), {"/bin/sleep", "60"});
  StartOk(daemon.client(), {"/bin/sleep", "60"});
  EXPECT_THAT(manager.WaitFor("STATUS=2 running"), HasSubstr("2 running, 0 in backoff"));
  v1::TerminateRequest terminate;
  terminate.set_id(first.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  EXPECT_THAT(manager.WaitFor("STATUS=1 running"), HasSubstr("1 running"));
  // The workers do not see proctord's socket.
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", first.pid(), "/environ")), Not(HasSubstr("NOTIFY")));

  ASSERT_EQ(kill(daemon.pid(), SIGTERM), 0);
  std::string stopping = manager.WaitFor("STOPPING=1");
  EXPECT_THAT(stopping, HasSubstr("STATUS=stopping: ending 1 workers"));
  EXPECT_EQ(daemon.AwaitExit(absl::Seconds(30)), 0);
  // No READY=1 was sent before the first one, nor any message with no meaning to systemd.
  for (const std::string& message : manager.messages()) {
    EXPECT_TRUE(absl::StartsWith(message, "READY=1") || absl::StartsWith(message, "STATUS=") ||
                absl::StartsWith(message, "STOPPING=1"))
        << message;
  }
}

TEST(SystemdNotifyTest, StatusLinesAreRateLimited) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  TestDaemon daemon({"--shutdown-grace", "0"}, std::nullopt, {manager.Env()});
  ASSERT_THAT(manager.WaitFor("READY=1"), HasSubstr("READY=1"));
  // Twenty changes of the count in a burst make a line a second, not twenty.
  absl::Time start = absl::Now();
  for (int i = 0; i < 20; ++i) StartOk(daemon.client(), {"/bin/sleep", "60"});
  absl::Duration burst = absl::Now() - start;
  EXPECT_THAT(manager.WaitFor("STATUS=20 running"), HasSubstr("20 running"));
  int lines = 0;
  for (const std::string& message : manager.messages()) {
    if (absl::StartsWith(message, "STATUS=")) ++lines;
  }
  EXPECT_LE(lines, 2 + absl::ToInt64Seconds(absl::Ceil(burst, absl::Seconds(1))))
      << "in " << burst;
}

TEST(SystemdNotifyTest, WatchdogPingsAtHalfThePeriod) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  // 400 ms: a ping every 200 ms.
  TestDaemon daemon({}, std::nullopt, {manager.Env(), "WATCHDOG_USEC=400000"});
  ASSERT_THAT(manager.WaitFor("READY=1"), HasSubstr("READY=1"));
  int pings = manager.Count("WATCHDOG=1", absl::Seconds(2));
  EXPECT_GE(pings, 6) << daemon.Log();
  EXPECT_LE(pings, 12);
}

TEST(SystemdNotifyTest, NoWatchdogPingsForAnotherPid) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  // WATCHDOG_PID names the process the manager watches: not this proctord.
  TestDaemon daemon({}, std::nullopt,
                    {manager.Env(), "WATCHDOG_USEC=400000", absl::StrCat("WATCHDOG_PID=", getpid())});
  ASSERT_THAT(manager.WaitFor("READY=1"), HasSubstr("READY=1"));
  EXPECT_EQ(manager.Count("WATCHDOG=1", absl::Seconds(1)), 0);
}

TEST(SystemdNotifyTest, ReloadAndRestartInPlace) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  TestDaemon daemon({"--shutdown-grace", "0"}, std::nullopt, {manager.Env()});
  ASSERT_THAT(manager.WaitFor("READY=1"), HasSubstr("READY=1"));
  v1::Process worker = StartOk(daemon.client(), {"/bin/sleep", "60"});

  ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  EXPECT_THAT(manager.WaitFor("RELOADING=1"), HasSubstr("STATUS=reloading"));
  EXPECT_THAT(manager.WaitFor("READY=1"), HasSubstr("STATUS=1 running"));

  // SIGUSR2: the same pid executes itself again and takes its worker back before READY=1.
  ASSERT_EQ(kill(daemon.pid(), SIGUSR2), 0);
  EXPECT_THAT(manager.WaitFor("RELOADING=1"), HasSubstr("STATUS=restarting in place"));
  std::string ready = manager.WaitFor("READY=1");
  EXPECT_THAT(ready, HasSubstr("STATUS=1 running")) << daemon.Log();
  ASSERT_TRUE(daemon.Restarted());
  absl::StatusOr<v1::Process> status = daemon.client().Status(worker.id());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), v1::STATE_RUNNING);
  EXPECT_THAT(manager.messages(), Not(Contains(HasSubstr("STOPPING=1"))));
}

TEST(SystemdNotifyTest, ReadyAfterTheWorkersOfAKilledProctordAreTakenBack) {
  TempDir dir;
  FakeServiceManager manager(dir.path());
  std::vector<std::string> flags = {"--state-dir", dir.path() + "/state", "--listen",
                                    "unix:" + dir.path() + "/proctord.sock", "--shutdown-grace",
                                    "0"};
  {
    TestDaemon first(flags);
    StartOk(first.client(), {"/bin/sleep", "60"});
    StartOk(first.client(), {"/bin/sleep", "60"});
    first.Kill();
  }
  TestDaemon second(flags, std::nullopt, {manager.Env()});
  EXPECT_THAT(manager.WaitFor("READY=1"), HasSubstr("STATUS=2 running")) << second.Log();
}

}  // namespace
}  // namespace proctor::testing
