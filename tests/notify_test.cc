// sd_notify: the parser; NotifySockets with real datagrams on a real loop; the senders workers
// use with it (systemd-notify, our notify_send); and PosixProcessOs::InWorkerTree, which the
// sockets ask about senders, against a real keeper and worker.
//
// Nothing here sleeps to order events: the test thread waits for what the listener heard,
// and where a sender must be gone before its message is read, the loop is held meanwhile.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/event_loop.h"
#include "server/keeper_client.h"
#include "server/notify_message.h"
#include "server/notify_sockets.h"
#include "tests/loop_thread.h"
#include "server/posix_process_os.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using testing::CommandResult;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using testing::ParentOf;
using testing::RunCommand;
using testing::StartCommand;
using testing::TempDir;
using ::testing::UnorderedElementsAre;
using testing::WaitFor;
using testing::WaitForExit;

constexpr absl::Duration kPatience = absl::Seconds(10);
constexpr uid_t kNobody = 65534;

// ---------------------------------------------------------------------------------------------
// ParseNotifyMessage

TEST(NotifyMessageTest, ReadsEachVariable) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(
      "READY=1\nSTATUS=Serving 3 clients\nWATCHDOG=1\nWATCHDOG_USEC=2500000\nSTOPPING=1\n"
      "RELOADING=1\nERRNO=2\nEXTEND_TIMEOUT_USEC=7000000");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_EQ(message->status, "Serving 3 clients");
  EXPECT_TRUE(message->watchdog_ping);
  EXPECT_FALSE(message->watchdog_trigger);
  EXPECT_EQ(message->watchdog_period, absl::Milliseconds(2500));
  EXPECT_TRUE(message->stopping);
  EXPECT_TRUE(message->reloading);
  EXPECT_EQ(message->errno_value, 2);
  EXPECT_EQ(message->extend_timeout, absl::Seconds(7));
}

TEST(NotifyMessageTest, NothingSaidSetsNothing) {
  for (absl::string_view text : {"", "\n", "\n\n"}) {
    absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(text);
    ASSERT_TRUE(message.ok()) << message.status();
    EXPECT_FALSE(message->ready);
    EXPECT_FALSE(message->status.has_value());
    EXPECT_FALSE(message->watchdog_ping);
    EXPECT_FALSE(message->watchdog_period.has_value());
    EXPECT_FALSE(message->errno_value.has_value());
  }
}

TEST(NotifyMessageTest, ATrailingNewlineAndEmptyLinesAreFine) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("\nREADY=1\n\nSTATUS=up\n");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_EQ(message->status, "up");
}

TEST(NotifyMessageTest, UnknownVariablesAreIgnored) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(
      "MAINPID=42\nFDSTORE=1\nFDNAME=x\nBARRIER=1\nX_MINE=what=ever\n"
      "=nameless\nREADY=1");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_FALSE(message->status.has_value());
}

TEST(NotifyMessageTest, WatchdogTrigger) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("WATCHDOG=trigger");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->watchdog_trigger);
  EXPECT_FALSE(message->watchdog_ping);
}

TEST(NotifyMessageTest, StatusTakesAnyTextAfterTheFirstEquals) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("STATUS=a=b; c");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "a=b; c");
  message = ParseNotifyMessage("STATUS=");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "");
}

TEST(NotifyMessageTest, AVariableGivenTwiceTakesItsLastValue) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("STATUS=first\nSTATUS=second");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "second");
}

TEST(NotifyMessageTest, ZeroErrnoZeroExtensionAndInfinity) {
  absl::StatusOr<NotifyMessage> message =
      ParseNotifyMessage("ERRNO=0\nEXTEND_TIMEOUT_USEC=0\nWATCHDOG_USEC=18446744073709551615");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->errno_value, 0);
  EXPECT_EQ(message->extend_timeout, absl::ZeroDuration());
  EXPECT_EQ(message->watchdog_period, absl::InfiniteDuration());  // systemd's USEC_INFINITY
}

TEST(NotifyMessageTest, AMalformedMessageIsRefusedWholeNamingTheLine) {
  struct Case {
    std::string text;
    std::string line;  // how the error names the line
    std::string why;
  };
  const std::vector<Case> cases = {
      {"READY", "line 1 \"READY\"", "no '='"},
      {"READY=1\nSTATUS", "line 2 \"STATUS\"", "no '='"},
      {"READY=2", "line 1 \"READY=2\"", "READY takes only 1"},
      {"READY=1\nREADY=0", "line 2", "READY takes only 1"},
      {"WATCHDOG=0", "line 1", "WATCHDOG takes 1 or trigger"},
      {"WATCHDOG_USEC=abc", "line 1", "WATCHDOG_USEC takes"},
      {"WATCHDOG_USEC=0", "line 1", "above 0"},
      {"WATCHDOG_USEC=-5", "line 1", "WATCHDOG_USEC takes"},
      {"WATCHDOG_USEC=18446744073709551616", "line 1", "WATCHDOG_USEC takes"},
      {"STOPPING=yes", "line 1", "STOPPING takes only 1"},
      {"RELOADING=0", "line 1", "RELOADING takes only 1"},
      {"ERRNO=-1", "line 1", "ERRNO takes"},
      {"ERRNO=ENOENT", "line 1", "ERRNO takes"},
      {"ERRNO=", "line 1", "ERRNO takes"},
      {"EXTEND_TIMEOUT_USEC=x", "line 1", "EXTEND_TIMEOUT_USEC takes"},
      {"EXTEND_TIMEOUT_USEC=-1", "line 1", "EXTEND_TIMEOUT_USEC takes"},
      {std::string("STATUS=a\0b", 10), "line 1 \"STATUS=a\\000b\"", "a NUL byte"},
      {std::string("READY=1\n\0", 9), "line 2", "a NUL byte"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(c.text);
    EXPECT_EQ(message.status().code(), absl::StatusCode::kInvalidArgument) << c.line;
    EXPECT_THAT(message.status().message(), HasSubstr(c.line));
    EXPECT_THAT(message.status().message(), HasSubstr(c.why));
  }
}

TEST(NotifyMessageTest, ALongBadLineIsQuotedShort) {
  absl::Status status = ParseNotifyMessage(std::string(4000, 'x')).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("xxx...\""));
  EXPECT_LT(status.message().size(), 200u);
}

// ---------------------------------------------------------------------------------------------
// NotifySockets

// A datagram to the socket at `path`, made ready before a fork so that the child only has
// syscalls left to make (no allocation after fork in a threaded process).
class Datagram {
 public:
  Datagram(const std::string& path, std::string text) : text_(std::move(text)) {
    address_.sun_family = AF_UNIX;
    std::strncpy(address_.sun_path, path.c_str(), sizeof(address_.sun_path) - 1);
  }
  // From this process, with `passed` as SCM_RIGHTS; 0 or the errno.
  int Send(const std::vector<int>& passed = {}) const {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int err = SendOn(fd, /*to=*/true, passed);
    close(fd);
    return err;
  }
  // On a socket made (and maybe connected) already; to the address unless `to` is false.
  int SendOn(int fd, bool to, const std::vector<int>& passed = {}) const {
    iovec data{.iov_base = const_cast<char*>(text_.data()), .iov_len = text_.size()};
    msghdr header{.msg_iov = &data, .msg_iovlen = 1};
    if (to) {
      header.msg_name = const_cast<sockaddr_un*>(&address_);
      header.msg_namelen = sizeof(address_);
    }
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    if (!passed.empty()) {
      header.msg_control = control;
      header.msg_controllen = CMSG_SPACE(sizeof(int) * passed.size());
      cmsghdr* c = CMSG_FIRSTHDR(&header);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * passed.size());
      std::memcpy(CMSG_DATA(c), passed.data(), sizeof(int) * passed.size());
    }
    return sendmsg(fd, &header, MSG_NOSIGNAL) < 0 ? errno : 0;
  }
  int Connect(int fd) const {
    return connect(fd, reinterpret_cast<const sockaddr*>(&address_), sizeof(address_)) == 0 ? 0
                                                                                            : errno;
  }

 private:
  sockaddr_un address_{};
  std::string text_;
};

// What the listener heard, for the test thread to wait on.
class Ears {
 public:
  struct Message {
    uint64_t id;
    NotifyMessage message;
    pid_t sender;
  };

  NotifySockets::Listener Listener() {
    return {
        .on_message =
            [this](uint64_t id, const NotifyMessage& message, pid_t sender) {
              absl::MutexLock lock(&mu_);
              messages_.push_back({id, message, sender});
            },
        .on_dropped =
            [this](uint64_t id, absl::string_view why) {
              absl::MutexLock lock(&mu_);
              drops_.emplace_back(id, std::string(why));
            },
    };
  }
  // Once there are at least `count` (or after kPatience, however many there are).
  std::vector<Message> Messages(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return messages_.size() >= count; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kPatience);
    return messages_;
  }
  std::vector<std::pair<uint64_t, std::string>> Drops(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return drops_.size() >= count; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kPatience);
    return drops_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Message> messages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<uint64_t, std::string>> drops_ ABSL_GUARDED_BY(mu_);
};

// A message from worker `id` with READY=1 or not, and `status` (a string, or std::nullopt
// for no STATUS=).
MATCHER_P3(Said, id, ready, status, "") {
  return arg.id == static_cast<uint64_t>(id) && arg.message.ready == ready &&
         arg.message.status == status;
}

std::vector<std::string> Statuses(const std::vector<Ears::Message>& messages) {
  std::vector<std::string> statuses;
  for (const Ears::Message& m : messages) statuses.push_back(m.message.status.value_or("-"));
  return statuses;
}

size_t OpenDescriptors() {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++count;
  }
  return count;
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Forks a child that runs `body` (syscalls only) and exits with what it returns; returns the
// child's exit code once it has been reaped, or -1.
template <typename Body>
int RunInChild(Body body) {
  pid_t child = fork();
  if (child == 0) _exit(body());
  int raw = 0;
  if (child < 0 || waitpid(child, &raw, 0) != child || !WIFEXITED(raw)) return -1;
  return WEXITSTATUS(raw);
}

class NotifySocketsTest : public ::testing::Test {
 protected:
  struct Asked {
    uint64_t id;
    pid_t pid;
    bool alive;  // /proc/<pid> was there when asked
  };

  void SetUp() override {
    // As every directory above the sockets must: workers of other users pass through.
    ASSERT_EQ(chmod(tmp_.path().c_str(), 0711), 0);
    dir_ = tmp_.path() + "/notify";
    sockets_ = MakeSockets(dir_);
    ASSERT_NE(sockets_, nullptr);
  }

  void TearDown() override {
    runner_.Stop();
    sockets_.reset();
  }

  std::unique_ptr<NotifySockets> MakeSockets(const std::string& dir) {
    auto belongs = [this](uint64_t id, pid_t pid) {
      absl::MutexLock lock(&asked_mu_);
      asked_.push_back({id, pid, access(absl::StrCat("/proc/", pid).c_str(), F_OK) == 0});
      return pid != refused_.load();
    };
    absl::StatusOr<std::unique_ptr<NotifySockets>> sockets =
        NotifySockets::Create(*loop_, dir, belongs, ears_.Listener());
    EXPECT_TRUE(sockets.ok()) << sockets.status();
    return sockets.ok() ? *std::move(sockets) : nullptr;
  }

  std::string Open(uint64_t id, std::optional<uid_t> owner = std::nullopt) {
    absl::StatusOr<std::string> path = sockets_->Open(id, owner);
    EXPECT_TRUE(path.ok()) << path.status();
    return path.value_or("");
  }

  std::vector<Asked> AskedSoFar() {
    absl::MutexLock lock(&asked_mu_);
    return asked_;
  }

  // Holds the loop thread until `release` is notified; returns once it is held.
  void HoldLoop(absl::Notification& release) { ASSERT_TRUE(runner_.Hold(release, kPatience)); }

  TempDir tmp_;
  std::string dir_;
  testing::LoopThread runner_;
  EventLoop* const loop_ = &runner_.loop();
  Ears ears_;
  std::unique_ptr<NotifySockets> sockets_;
  std::atomic<pid_t> refused_ = 0;  // belongs() says no for this sender
  absl::Mutex asked_mu_;
  std::vector<Asked> asked_ ABSL_GUARDED_BY(asked_mu_);
};

TEST_F(NotifySocketsTest, AMessageComesWithItsWorkersId) {
  std::string path = Open(7);
  EXPECT_EQ(path, dir_ + "/7");
  ASSERT_EQ(Datagram(path, "READY=1\nSTATUS=up").Send(), 0);
  std::vector<Ears::Message> heard = ears_.Messages(1);
  ASSERT_THAT(heard, ElementsAre(Said(7, /*ready=*/true, "up")));
  EXPECT_EQ(heard[0].sender, getpid());
  std::vector<Asked> asked = AskedSoFar();
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].id, 7u);
  EXPECT_EQ(asked[0].pid, getpid());
  EXPECT_EQ(sockets_->dropped(), 0u);
}

TEST_F(NotifySocketsTest, OnlyTheOwnerAndRootMaySend) {
  struct stat st;
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
  std::string mine = Open(1);
  ASSERT_EQ(lstat(mine.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, geteuid());
  if (geteuid() != 0) GTEST_SKIP() << "giving a socket to another user takes root";
  std::string nobodys = Open(2, kNobody);
  ASSERT_EQ(lstat(nobodys.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, kNobody);
}

TEST_F(NotifySocketsTest, EachWorkerHearsOnlyWhatComesOnItsOwnSocket) {
  std::string one = Open(1);
  std::string two = Open(2);
  ASSERT_EQ(Datagram(one, "STATUS=one").Send(), 0);
  ASSERT_EQ(Datagram(two, "STATUS=two").Send(), 0);
  ASSERT_EQ(Datagram(one, "STATUS=one again").Send(), 0);
  std::vector<std::pair<uint64_t, std::string>> heard;
  for (const Ears::Message& m : ears_.Messages(3)) heard.emplace_back(m.id, *m.message.status);
  EXPECT_THAT(heard, UnorderedElementsAre(Pair(1, "one"), Pair(2, "two"), Pair(1, "one again")));
}

TEST_F(NotifySocketsTest, OpeningAnOpenIdGivesItsSocketAgain) {
  std::string first = Open(3);
  EXPECT_EQ(Open(3), first);
  ASSERT_EQ(Datagram(first, "STATUS=once").Send(), 0);
  ASSERT_EQ(Datagram(first, "STATUS=twice").Send(), 0);
  EXPECT_THAT(Statuses(ears_.Messages(2)), ElementsAre("once", "twice"));
}

TEST_F(NotifySocketsTest, ASenderThatExitedAtOnceIsStillItsWorkers) {
  std::string path = Open(5);
  Datagram ready(path, "READY=1");
  absl::Notification release;
  HoldLoop(release);
  // Sent, exited and reaped before the loop can read anything.
  pid_t sender = fork();
  if (sender == 0) _exit(ready.Send());
  ASSERT_GT(sender, 0);
  int raw = 0;
  ASSERT_EQ(waitpid(sender, &raw, 0), sender);
  ASSERT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) == 0);
  release.Notify();
  std::vector<Ears::Message> heard = ears_.Messages(1);
  ASSERT_THAT(heard, ElementsAre(Said(5, /*ready=*/true, std::nullopt)));
  EXPECT_EQ(heard[0].sender, sender);
  std::vector<Asked> asked = AskedSoFar();
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].pid, sender);
  EXPECT_FALSE(asked[0].alive);
}

TEST_F(NotifySocketsTest, ALiveSenderOutsideTheTreeIsDroppedAndCounted) {
  std::string path = Open(4);
  refused_ = getpid();
  ASSERT_EQ(Datagram(path, "READY=1").Send(), 0);
  EXPECT_THAT(ears_.Drops(1),
              ElementsAre(Pair(4, absl::StrCat("pid ", getpid(), " is not in worker 4's tree"))));
  EXPECT_EQ(sockets_->dropped(), 1u);
  EXPECT_EQ(sockets_->dropped(4), 1u);
  EXPECT_EQ(sockets_->dropped(5), 0u);
  // The socket goes on working for those who belong.
  refused_ = 0;
  ASSERT_EQ(Datagram(path, "STATUS=after").Send(), 0);
  EXPECT_THAT(Statuses(ears_.Messages(1)), ElementsAre("after"));
}

TEST_F(NotifySocketsTest, ASenderOfAnotherUserIsDroppedUnlessTheSocketIsItsOwn) {
  if (geteuid() != 0) GTEST_SKIP() << "sending as another user takes root";
  std::string roots = Open(1);
  Datagram to_roots(roots, "READY=1");
  // The file's mode keeps another user out...
  EXPECT_EQ(RunInChild([&] {
              if (setresuid(kNobody, kNobody, kNobody) != 0) return 100;
              return to_roots.Send();
            }),
            EACCES);
  // ...and one that got through anyway (connected while still root) is dropped.
  EXPECT_EQ(RunInChild([&] {
              int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
              if (fd < 0 || to_roots.Connect(fd) != 0) return 101;
              if (setresuid(kNobody, kNobody, kNobody) != 0) return 100;
              return to_roots.SendOn(fd, /*to=*/false);
            }),
            0);
  EXPECT_THAT(ears_.Drops(1), ElementsAre(Pair(1, "foreign sender uid 65534")));
  EXPECT_EQ(sockets_->dropped(1), 1u);

  // The worker's own user, on its own socket, is heard.
  std::string nobodys = Open(2, kNobody);
  Datagram to_nobodys(nobodys, "STATUS=from nobody");
  pid_t sender = fork();
  if (sender == 0) {
    if (setresuid(kNobody, kNobody, kNobody) != 0) _exit(100);
    _exit(to_nobodys.Send());
  }
  ASSERT_GT(sender, 0);
  std::optional<int> raw = WaitForExit(sender, kPatience);
  ASSERT_TRUE(raw.has_value() && WIFEXITED(*raw));
  EXPECT_EQ(WEXITSTATUS(*raw), 0);
  std::vector<Ears::Message> heard = ears_.Messages(1);
  ASSERT_THAT(heard, ElementsAre(Said(2, /*ready=*/false, "from nobody")));
  EXPECT_EQ(heard[0].sender, sender);
  EXPECT_EQ(sockets_->dropped(), 1u);
}

TEST_F(NotifySocketsTest, AnOversizedDatagramIsDroppedWhole) {
  std::string path = Open(9);
  const std::string padding = "STATUS=";
  ASSERT_EQ(Datagram(path, padding + std::string(kMaxNotifyMessageBytes + 1 - padding.size(), 'x'))
                .Send(),
            0);
  std::vector<std::pair<uint64_t, std::string>> drops = ears_.Drops(1);
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_EQ(drops[0].first, 9u);
  EXPECT_THAT(drops[0].second, HasSubstr("oversized"));
  EXPECT_THAT(drops[0].second, HasSubstr("4097 bytes"));
  // The largest that fits is read whole.
  ASSERT_EQ(
      Datagram(path, padding + std::string(kMaxNotifyMessageBytes - padding.size(), 'y')).Send(),
      0);
  EXPECT_THAT(ears_.Messages(1),
              ElementsAre(Said(9, /*ready=*/false,
                               std::string(kMaxNotifyMessageBytes - padding.size(), 'y'))));
  EXPECT_EQ(sockets_->dropped(), 1u);
}

TEST_F(NotifySocketsTest, AMalformedMessageIsDroppedWithTheParsersReason) {
  std::string path = Open(6);
  ASSERT_EQ(Datagram(path, "STATUS=never\nREADY=2").Send(), 0);
  ASSERT_EQ(Datagram(path, "STATUS=fine").Send(), 0);
  std::vector<std::pair<uint64_t, std::string>> drops = ears_.Drops(1);
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_EQ(drops[0].first, 6u);
  EXPECT_THAT(drops[0].second, HasSubstr("line 2 \"READY=2\": READY takes only 1"));
  // Nothing of the malformed one was delivered.
  EXPECT_THAT(Statuses(ears_.Messages(1)), ElementsAre("fine"));
  EXPECT_EQ(sockets_->dropped(6), 1u);
}

TEST_F(NotifySocketsTest, PassedDescriptorsAreClosedAtOnce) {
  std::string path = Open(8);
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  const size_t before = OpenDescriptors();
  ASSERT_EQ(Datagram(path, "STATUS=with descriptors").Send({pipe_fds[1], pipe_fds[1], pipe_fds[0]}),
            0);
  EXPECT_THAT(Statuses(ears_.Messages(1)), ElementsAre("with descriptors"));
  EXPECT_EQ(OpenDescriptors(), before);
  // No copy of the write end is left anywhere: the read end sees the hang-up at once.
  close(pipe_fds[1]);
  pollfd hangup{.fd = pipe_fds[0], .events = POLLIN};
  EXPECT_EQ(poll(&hangup, 1, 0), 1);
  EXPECT_TRUE(hangup.revents & POLLHUP);
  close(pipe_fds[0]);
}

TEST_F(NotifySocketsTest, ABarrierIsAnsweredAndNotDelivered) {
  std::string path = Open(8);
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  ASSERT_EQ(Datagram(path, "BARRIER=1").Send({pipe_fds[1]}), 0);
  close(pipe_fds[1]);
  pollfd answer{.fd = pipe_fds[0], .events = POLLIN};
  EXPECT_EQ(poll(&answer, 1, absl::ToInt64Milliseconds(kPatience)), 1);
  close(pipe_fds[0]);
  ASSERT_EQ(Datagram(path, "STATUS=after the barrier").Send(), 0);
  EXPECT_THAT(Statuses(ears_.Messages(1)), ElementsAre("after the barrier"));
  EXPECT_EQ(sockets_->dropped(), 0u);
}

TEST_F(NotifySocketsTest, DatagramsQueuedMeanwhileAreAllReadInOrder) {
  std::string path = Open(2);
  absl::Notification release;
  HoldLoop(release);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(Datagram(path, absl::StrCat("STATUS=", i)).Send(), 0);
  }
  release.Notify();
  EXPECT_THAT(Statuses(ears_.Messages(5)), ElementsAre("0", "1", "2", "3", "4"));
}

TEST_F(NotifySocketsTest, CloseRemovesTheSocket) {
  std::string path = Open(10);
  Datagram late(path, "STATUS=too late");
  int connected = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(connected, 0);
  ASSERT_EQ(late.Connect(connected), 0);
  sockets_->Close(10);
  EXPECT_FALSE(Exists(path));
  EXPECT_EQ(late.Send(), ENOENT);
  EXPECT_EQ(late.SendOn(connected, /*to=*/false), ECONNREFUSED);
  close(connected);
  sockets_->Close(10);  // no-op
  sockets_->Close(11);  // never opened: no-op
  EXPECT_EQ(sockets_->dropped(10), 0u);
  // Opened again, it works again, at the same address.
  EXPECT_EQ(Open(10), path);
  ASSERT_EQ(Datagram(path, "STATUS=back").Send(), 0);
  EXPECT_THAT(Statuses(ears_.Messages(1)), ElementsAre("back"));
}

TEST_F(NotifySocketsTest, OpenReplacesAStaleSocketFileAtTheSamePath) {
  const std::string path = dir_ + "/11";
  {
    // What a proctord that died leaves: a socket file nothing reads.
    int stale = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{.sun_family = AF_UNIX};
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    close(stale);
  }
  ASSERT_EQ(Datagram(path, "STATUS=lost").Send(), ECONNREFUSED);
  EXPECT_EQ(Open(11), path);
  ASSERT_EQ(Datagram(path, "STATUS=heard").Send(), 0);
  EXPECT_THAT(ears_.Messages(1), ElementsAre(Said(11, /*ready=*/false, "heard")));
}

TEST_F(NotifySocketsTest, ANewInstanceOpensTheSameAddressesAgain) {
  std::string path = Open(12);
  // Destroyed on the loop thread, as its contract asks: the file stays for the next one.
  absl::Notification destroyed;
  loop_->Post([&] {
    sockets_.reset();
    destroyed.Notify();
  });
  ASSERT_TRUE(destroyed.WaitForNotificationWithTimeout(kPatience));
  EXPECT_TRUE(Exists(path));
  sockets_ = MakeSockets(dir_);
  ASSERT_NE(sockets_, nullptr);
  EXPECT_EQ(Open(12), path);
  ASSERT_EQ(Datagram(path, "STATUS=adopted").Send(), 0);
  EXPECT_THAT(ears_.Messages(1), ElementsAre(Said(12, /*ready=*/false, "adopted")));
}

TEST_F(NotifySocketsTest, APathTooLongForASocketAddressIsRefusedNotShortened) {
  const std::string dir = tmp_.path() + "/" + std::string(110, 'd');
  std::unique_ptr<NotifySockets> sockets = MakeSockets(dir);
  ASSERT_NE(sockets, nullptr);
  absl::Status status = sockets->Open(1, std::nullopt).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr(dir + "/1"));
  EXPECT_THAT(status.message(), HasSubstr("at most 107"));
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "nothing bound at a shortened path";
}

TEST_F(NotifySocketsTest, TheDirectoryIsMadeReachableWhateverTheUmask) {
  const std::string dir = tmp_.path() + "/made";
  mode_t old = umask(077);
  std::unique_ptr<NotifySockets> sockets = MakeSockets(dir);
  umask(old);
  ASSERT_NE(sockets, nullptr);
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
}

TEST_F(NotifySocketsTest, OnlyADirectoryOfItsOwnUserWillDo) {
  const std::string file = tmp_.path() + "/a-file";
  ASSERT_TRUE(testing::WriteFile(file, ""));
  absl::Status status = NotifySockets::Create(*loop_, file, nullptr, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr(file));
  if (geteuid() != 0) return;
  const std::string others = tmp_.path() + "/nobodys";
  ASSERT_EQ(mkdir(others.c_str(), 0711), 0);
  ASSERT_EQ(chown(others.c_str(), kNobody, kNobody), 0);
  status = NotifySockets::Create(*loop_, others, nullptr, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(NotifySocketsTest, SystemdNotifyIsUnderstood) {
  const std::string systemd_notify = "/usr/bin/systemd-notify";
  if (access(systemd_notify.c_str(), X_OK) != 0) GTEST_SKIP() << systemd_notify << " is absent";
  std::string path = Open(13);
  // It waits for its message to be read (BARRIER=1, answered by closing what it passed).
  CommandResult result =
      RunCommand({systemd_notify, "--ready", "--status=hello"}, {"NOTIFY_SOCKET=" + path});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_THAT(ears_.Messages(1), ElementsAre(Said(13, /*ready=*/true, "hello")));
  EXPECT_EQ(sockets_->dropped(), 0u);
}

TEST_F(NotifySocketsTest, NotifySendSendsAndWaitsForItsMessageToBeRead) {
  std::string path = Open(14);
  CommandResult result =
      RunCommand({NOTIFY_SEND_PATH, "READY=1", "STATUS=from the tool"}, {"NOTIFY_SOCKET=" + path});
  EXPECT_EQ(result.status, 0) << result.err;
  // Read by the time it returned: no wait here.
  EXPECT_THAT(ears_.Messages(0), ElementsAre(Said(14, /*ready=*/true, "from the tool")));
}

TEST_F(NotifySocketsTest, NotifySendFromAGrandchildThatExitsAtOnce) {
  std::string path = Open(15);
  CommandResult result =
      RunCommand({NOTIFY_SEND_PATH, "--from-grandchild", "--exit-at-once", "STATUS=grandchild"},
                 {"NOTIFY_SOCKET=" + path});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_THAT(ears_.Messages(1), ElementsAre(Said(15, /*ready=*/false, "grandchild")));
}

TEST_F(NotifySocketsTest, NotifySendPadsToASize) {
  std::string path = Open(16);
  const std::string size = absl::StrCat(kMaxNotifyMessageBytes + 1);
  CommandResult result = RunCommand({NOTIFY_SEND_PATH, "--size", size}, {"NOTIFY_SOCKET=" + path});
  EXPECT_EQ(result.status, 0) << result.err;  // the barrier after it is answered all the same
  std::vector<std::pair<uint64_t, std::string>> drops = ears_.Drops(1);
  ASSERT_EQ(drops.size(), 1u);
  EXPECT_THAT(drops[0].second, HasSubstr("oversized: 4097 bytes"));
  result = RunCommand({NOTIFY_SEND_PATH, "--size", "100", "READY=1"}, {"NOTIFY_SOCKET=" + path});
  EXPECT_EQ(result.status, 0) << result.err;
  // 100 bytes: "READY=1\n", "STATUS=" and the padding.
  EXPECT_THAT(ears_.Messages(1), ElementsAre(Said(16, /*ready=*/true, std::string(85, 'x'))));
}

TEST_F(NotifySocketsTest, NotifySendSaysWhyItFailed) {
  std::string path = Open(17);
  sockets_->Close(17);
  CommandResult result = RunCommand({NOTIFY_SEND_PATH, "--socket", path, "READY=1"});
  EXPECT_EQ(result.status, 1);
  EXPECT_THAT(result.err, HasSubstr(path));
  EXPECT_THAT(result.err, HasSubstr("No such file or directory"));
  result = RunCommand({NOTIFY_SEND_PATH, "READY=1"}, {"NOTIFY_SOCKET="});
  EXPECT_EQ(result.status, 1);
  EXPECT_THAT(result.err, HasSubstr("NOTIFY_SOCKET is not set"));
}

TEST_F(NotifySocketsTest, NotifySendToAnAbstractAddress) {
  const std::string name = absl::StrCat("proctor-notify-test-", getpid());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{.sun_family = AF_UNIX};
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address),
                 offsetof(sockaddr_un, sun_path) + 1 + name.size()),
            0);
  CommandResult result =
      RunCommand({NOTIFY_SEND_PATH, "--exit-at-once", "--socket", "@" + name, "STATUS=abstract"});
  EXPECT_EQ(result.status, 0) << result.err;
  char buffer[64];
  ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
  EXPECT_EQ(std::string(buffer, std::max<ssize_t>(n, 0)), "STATUS=abstract");
  close(fd);
}

TEST_F(NotifySocketsTest, NotifySendReadyAfterAndWatchdogLoop) {
  std::string path = Open(18);
  pid_t sender = StartCommand(
      {NOTIFY_SEND_PATH, "--ready-after", "20", "--loop-watchdog", "10", "STATUS=pinging"},
      {"NOTIFY_SOCKET=" + path}, "/dev/null", tmp_.path() + "/err");
  ASSERT_GT(sender, 0);
  std::vector<Ears::Message> heard = ears_.Messages(4);
  kill(sender, SIGTERM);
  std::optional<int> raw = WaitForExit(sender, kPatience);
  ASSERT_TRUE(raw.has_value());
  EXPECT_TRUE(WIFSIGNALED(*raw)) << "it ran until killed";
  ASSERT_GE(heard.size(), 4u);
  EXPECT_TRUE(heard[0].message.ready);
  EXPECT_EQ(heard[0].message.status, "pinging");
  for (size_t i = 1; i < heard.size(); ++i) {
    EXPECT_TRUE(heard[i].message.watchdog_ping);
    EXPECT_FALSE(heard[i].message.ready);
  }

  // Ready alone: it stays, silent, until killed.
  sender = StartCommand({NOTIFY_SEND_PATH, "--ready-after", "0"}, {"NOTIFY_SOCKET=" + path},
                        "/dev/null", tmp_.path() + "/err");
  ASSERT_GT(sender, 0);
  const size_t before = heard.size();
  heard = ears_.Messages(before + 1);
  ASSERT_GT(heard.size(), before);
  EXPECT_TRUE(heard[before].message.ready);
  EXPECT_EQ(waitpid(sender, nullptr, WNOHANG), 0);
  kill(sender, SIGTERM);
  raw = WaitForExit(sender, kPatience);
  ASSERT_TRUE(raw.has_value());
  EXPECT_TRUE(WIFSIGNALED(*raw));
}

// ---------------------------------------------------------------------------------------------
// PosixProcessOs::InWorkerTree, with a real keeper and a worker, without and with cgroups.

class InWorkerTreeTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    internal::Held held;
    absl::StatusOr<std::unique_ptr<KeeperClient>> keeper =
        KeeperClient::Open(state_.path(), PROCTOR_KEEPER_PATH, held);
    ASSERT_TRUE(keeper.ok()) << keeper.status();
    keeper_ = *std::move(keeper);
    absl::StatusOr<std::unique_ptr<PosixProcessOs>> os = PosixProcessOs::Create(
        *loop_, *keeper_, held, PosixProcessOs::Options{.worker_cgroups = GetParam()});
    ASSERT_TRUE(os.ok()) << os.status();
    os_ = *std::move(os);
    os_->SetListeners([this](uint64_t, WaitStatus, const ResourceUsage&) { exited_.Notify(); },
                      [] {});
    KeeperClient::Listener listener = os_->KeeperListener();
    listener.on_lost = [] {};
    keeper_->Start(std::move(listener));
  }

  void TearDown() override {
    if (launched_) {
      os_->KillCgroup(kToken).IgnoreError();
      // The cgroup's kill may have ended it, been reported and reaped already: nothing left.
      absl::Status signalled = os_->SignalGroup(kToken, SIGKILL);
      EXPECT_TRUE(signalled.ok() || absl::IsNotFound(signalled)) << signalled;
      EXPECT_TRUE(exited_.WaitForNotificationWithTimeout(kPatience));
    }
    if (keeper_ != nullptr) keeper_->Shutdown(absl::Seconds(5));
    runner_.Stop();
    os_.reset();
    keeper_.reset();
  }

  static constexpr uint64_t kToken = 41;
  TempDir state_;
  testing::LoopThread runner_;
  EventLoop* const loop_ = &runner_.loop();
  std::unique_ptr<KeeperClient> keeper_;
  std::unique_ptr<PosixProcessOs> os_;
  absl::Notification exited_;
  bool launched_ = false;
};

pid_t PidIn(const std::string& path) {
  pid_t pid = 0;
  return absl::SimpleAtoi(absl::StripAsciiWhitespace(testing::ReadFile(path)), &pid) ? pid : 0;
}

TEST_P(InWorkerTreeTest, TellsTheWorkersProcessesFromOthers) {
  const std::string dir = state_.path();
  // A child; an orphan (double fork) that keeps PROCTOR_ID; one that also left that behind.
  const std::string script =
      absl::StrCat("sleep 60 & echo $! > ", dir, "/child; ", "(sleep 60 & echo $! > ", dir,
                   "/orphan); ", "(PROCTOR_ID=99 sleep 60 & echo $! > ", dir, "/renamed); ",
                   "echo > ", dir, "/ready; exec sleep 60");
  absl::StatusOr<Launched> launched =
      os_->Launch(LaunchSpec{.path = "/bin/sh",
                             .argv = {"sh", "-c", script},
                             .envp = {"PATH=/usr/bin:/bin", absl::StrCat("PROCTOR_ID=", kToken)},
                             .stdout_path = dir + "/out",
                             .stderr_path = dir + "/err"},
                  kToken);
  ASSERT_TRUE(launched.ok()) << launched.status();
  launched_ = true;
  ASSERT_TRUE(WaitFor([&] { return Exists(dir + "/ready"); }, kPatience))
      << testing::ReadFile(dir + "/err");
  const pid_t leader = launched->pid;
  const pid_t child = PidIn(dir + "/child");
  const pid_t orphan = PidIn(dir + "/orphan");
  const pid_t renamed = PidIn(dir + "/renamed");
  ASSERT_GT(child, 1);
  ASSERT_GT(orphan, 1);
  ASSERT_GT(renamed, 1);
  // Orphaned (the subshells have exited), and `renamed` exec'd with its own PROCTOR_ID.
  const pid_t keeper = keeper_->keeper_pid();
  ASSERT_TRUE(WaitFor([&] { return ParentOf(orphan) == keeper && ParentOf(renamed) == keeper; },
                      kPatience));
  ASSERT_TRUE(WaitFor(
      [&] {
        return absl::StrContains(testing::ReadFile(absl::StrCat("/proc/", renamed, "/environ")),
                                 "PROCTOR_ID=99");
      },
      kPatience));

  EXPECT_TRUE(os_->InWorkerTree(kToken, leader));
  EXPECT_TRUE(os_->InWorkerTree(kToken, child)) << "below the leader";
  EXPECT_TRUE(os_->InWorkerTree(kToken, orphan)) << "its environment";
  // Only its cgroup still says whose it is.
  const bool has_cgroup =
      absl::StrContains(testing::ReadFile(absl::StrCat("/proc/", leader, "/cgroup")), "/proctord-");
  EXPECT_EQ(os_->InWorkerTree(kToken, renamed), has_cgroup);
  EXPECT_FALSE(os_->InWorkerTree(kToken + 1, child)) << "another worker's";
  EXPECT_FALSE(os_->InWorkerTree(kToken, getpid())) << "not of any worker";
  EXPECT_FALSE(os_->InWorkerTree(kToken, 0));
  EXPECT_FALSE(os_->InWorkerTree(kToken, 1));

  // Gone, or only a zombie: nothing left to check.
  pid_t stranger = StartCommand({"sleep", "60"}, {}, "/dev/null", "/dev/null");
  ASSERT_GT(stranger, 0);
  EXPECT_FALSE(os_->InWorkerTree(kToken, stranger));
  ASSERT_EQ(kill(stranger, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return testing::IsZombie(stranger); }, kPatience));
  EXPECT_TRUE(os_->InWorkerTree(kToken, stranger));
  ASSERT_TRUE(WaitForExit(stranger, kPatience).has_value());
  EXPECT_TRUE(os_->InWorkerTree(kToken, stranger));
}

INSTANTIATE_TEST_SUITE_P(CgroupsOrNot, InWorkerTreeTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "WithCgroups" : "WithoutCgroups";
                         });

}  // namespace
}  // namespace proctor
