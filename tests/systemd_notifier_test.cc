// SystemdNotifier against fake time and a socket this test binds as NOTIFY_SOCKET.
#include "server/systemd_notifier.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_time.h"
#include "tests/scoped_env.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// The manager's end: NOTIFY_SOCKET names it while the object lives.
class ManagerSocket {
 public:
  ManagerSocket()
      : path_(dir_.path() + "/notify.sock"),
        notify_socket_("NOTIFY_SOCKET", path_),
        watchdog_usec_("WATCHDOG_USEC", std::nullopt),
        watchdog_pid_("WATCHDOG_PID", std::nullopt) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path_.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }
  ~ManagerSocket() { close(fd_); }

  // Every message waiting now.
  std::vector<std::string> Take() {
    std::vector<std::string> messages;
    pollfd readable{.fd = fd_, .events = POLLIN, .revents = 0};
    while (poll(&readable, 1, 0) == 1) {
      char buffer[4096];
      ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n < 0) break;
      messages.emplace_back(buffer, static_cast<size_t>(n));
    }
    return messages;
  }

 private:
  testing::TempDir dir_;
  std::string path_;
  testing::ScopedEnv notify_socket_;
  testing::ScopedEnv watchdog_usec_;
  testing::ScopedEnv watchdog_pid_;
  int fd_ = -1;
};

TEST(SystemdNotifierTest, InactiveWithoutNotifySocket) {
  testing::ScopedEnv unset("NOTIFY_SOCKET", std::nullopt);
  FakeTime time;
  SystemdNotifier notifier(time, time, [] { return "0 running"; });
  EXPECT_FALSE(notifier.active());
  notifier.Ready();
  notifier.StatusChanged();
  time.Advance(absl::Seconds(5));
}

TEST(SystemdNotifierTest, StatusLinesAreSentOnChangeAtMostOncePerInterval) {
  ManagerSocket manager;
  FakeTime time;
  int running = 0;
  SystemdNotifier notifier(time, time, [&] { return absl::StrCat(running, " running"); });
  ASSERT_TRUE(notifier.active());
  notifier.Ready();
  EXPECT_THAT(manager.Take(), ElementsAre("READY=1\nSTATUS=0 running"));

  // Five changes within the interval: one line, at its end, with the last count.
  for (int i = 0; i < 5; ++i) {
    ++running;
    notifier.StatusChanged();
    time.Advance(absl::Milliseconds(100));
  }
  EXPECT_THAT(manager.Take(), IsEmpty());
  time.Advance(absl::Milliseconds(500));
  EXPECT_THAT(manager.Take(), ElementsAre("STATUS=5 running"));
  // Told of a change that changed nothing: no line.
  notifier.StatusChanged();
  time.Advance(absl::Seconds(2));
  EXPECT_THAT(manager.Take(), IsEmpty());
  // Long after the last line: at once.
  running = 2;
  notifier.StatusChanged();
  time.Advance(absl::ZeroDuration());
  EXPECT_THAT(manager.Take(), ElementsAre("STATUS=2 running"));

  notifier.Reloading("reloading");
  notifier.Ready();
  notifier.Stopping("stopping: ending 2 workers");
  running = 0;
  notifier.StatusChanged();
  time.Advance(absl::Seconds(5));
  EXPECT_THAT(manager.Take(),
              ElementsAre("RELOADING=1\nSTATUS=reloading", "READY=1\nSTATUS=2 running",
                          "STOPPING=1\nSTATUS=stopping: ending 2 workers"));
}

TEST(SystemdNotifierTest, WatchdogPingsEveryHalfPeriodFromReady) {
  ManagerSocket manager;
  testing::ScopedEnv usec("WATCHDOG_USEC", "10000000");
  testing::ScopedEnv pid("WATCHDOG_PID", absl::StrCat(getpid()));
  FakeTime time;
  SystemdNotifier notifier(time, time, [] { return "0 running"; });
  EXPECT_EQ(notifier.watchdog_interval(), absl::Seconds(5));
  time.Advance(absl::Seconds(20));
  EXPECT_THAT(manager.Take(), IsEmpty()) << "pings before READY=1";
  notifier.Ready();
  EXPECT_THAT(manager.Take(), ElementsAre("READY=1\nSTATUS=0 running", "WATCHDOG=1"));
  time.Advance(absl::Seconds(15));
  EXPECT_THAT(manager.Take(), ElementsAre("WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1"));
  // A second READY=1 (after a reload) starts no second series.
  notifier.Ready();
  time.Advance(absl::Seconds(5));
  EXPECT_THAT(manager.Take(), ElementsAre("READY=1\nSTATUS=0 running", "WATCHDOG=1"));
}

TEST(SystemdNotifierTest, NoWatchdogForAnotherPid) {
  ManagerSocket manager;
  testing::ScopedEnv usec("WATCHDOG_USEC", "10000000");
  testing::ScopedEnv pid("WATCHDOG_PID", "1");
  FakeTime time;
  SystemdNotifier notifier(time, time, [] { return "0 running"; });
  EXPECT_EQ(notifier.watchdog_interval(), absl::ZeroDuration());
}

}  // namespace
}  // namespace proctor
