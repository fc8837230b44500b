// KeeperClient's notes: with a real keeper they go on a pipe the keeper reads lazily, and none
// written before proctord's end is lost; with a keeper that takes no pipe (one started by an
// older proctord) they go on the connection.
#include "server/keeper_client.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/keeper/framing.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using testing::TempDir;
using testing::WaitFor;

std::map<std::string, std::string> NotesOf(const internal::Held& held) {
  std::map<std::string, std::string> notes;
  for (const internal::Note& note : held.notes()) notes[note.key()] = note.value();
  return notes;
}

// The keeper the test starts is its own child: whatever the test's outcome, it goes at the
// end (asked to, else killed) and is reaped.
class KeeperNotesTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (keeper_ <= 1) return;
    if (client_ != nullptr) {
      client_->Start(KeeperClient::Listener{.on_lost = [] {}});
      for (const auto& [key, value] : expected_) client_->Forget(key);
      client_->Shutdown(absl::Seconds(10));
      client_.reset();
    }
    if (!WaitFor([&] { return waitpid(keeper_, nullptr, WNOHANG) > 0; }, absl::Seconds(10))) {
      ADD_FAILURE() << "the keeper did not exit when asked to";
      kill(keeper_, SIGKILL);  // our unreaped child: the pid is still its own
      waitpid(keeper_, nullptr, 0);
    }
  }

  TempDir state_;
  pid_t keeper_ = 0;
  std::unique_ptr<KeeperClient> client_;
  std::map<std::string, std::string> expected_;
};

TEST_F(KeeperNotesTest, NotesWrittenJustBeforeProctordEndsAreAllKept) {
  internal::Held held;
  absl::StatusOr<std::unique_ptr<KeeperClient>> opened =
      KeeperClient::Open(state_.path(), PROCTOR_KEEPER_PATH, held);
  ASSERT_TRUE(opened.ok()) << opened.status();
  client_ = *std::move(opened);
  keeper_ = held.keeper_pid();
  EXPECT_TRUE(held.takes_notes_pipe());
  // More than the pipe holds, written faster than the keeper reads it.
  for (int i = 0; i < 6000; ++i) {
    std::string key = absl::StrCat("sync/", i % 700);
    std::string value = absl::StrCat("v", i, std::string(i % 400, 'x'));
    client_->Remember(key, value);
    expected_[key] = value;
  }
  for (int i = 0; i < 700; i += 3) {
    client_->Forget(absl::StrCat("sync/", i));
    expected_.erase(absl::StrCat("sync/", i));
  }
  // Then, again and again, the keeper has read everything; the first late note wakes it and
  // it leaves the pipe alone for its period, in which the rest comes and proctord ends.
  for (int round = 0; round < 8; ++round) {
    absl::SleepFor(absl::Milliseconds(30));
    for (int i = 0; i < 200; ++i) {
      std::string key = absl::StrCat("session/", round, "/", i);
      client_->Remember(key, "late");
      expected_[key] = "late";
    }
    client_.reset();  // as proctord's end closes them: the connection, then the pipe
    internal::Held again;
    opened = KeeperClient::Open(state_.path(), PROCTOR_KEEPER_PATH, again);
    ASSERT_TRUE(opened.ok()) << opened.status();
    client_ = *std::move(opened);
    EXPECT_EQ(again.keeper_pid(), keeper_) << "the same keeper, holding the notes";
    ASSERT_EQ(NotesOf(again), expected_) << "round " << round;
  }
}

// A keeper's end of the socket, played by the test: it answers Hello without offering to take
// a notes pipe and keeps every request that comes after.
class OldKeeper {
 public:
  explicit OldKeeper(const std::string& state_dir) {
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::string path = state_dir + "/keeper.sock";
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(listen(listen_fd_, 1), 0);
    serving_ = std::thread([this] { Serve(); });
  }
  ~OldKeeper() {
    if (serving_.joinable()) serving_.join();
    close(listen_fd_);
  }
  // Every request after Hello, once the client has gone.
  const std::vector<internal::KeeperRequest>& requests() {
    if (serving_.joinable()) serving_.join();
    return requests_;
  }

 private:
  void Serve() {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(fd, 0);
    FrameReader reader;
    char buffer[4096];
    bool greeted = false;
    for (;;) {
      ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n <= 0) break;
      reader.Append(buffer, static_cast<size_t>(n));
      internal::KeeperRequest request;
      for (absl::StatusOr<bool> next = reader.Next(request); next.ok() && *next;
           next = reader.Next(request)) {
        if (!greeted && request.has_hello()) {
          greeted = true;
          internal::KeeperEvent reply;
          reply.set_serial(request.serial());
          reply.mutable_held()->set_keeper_pid(getpid());
          std::string frame;
          AppendFrame(reply, frame);
          EXPECT_EQ(write(fd, frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
        } else {
          requests_.push_back(request);
        }
      }
    }
    close(fd);
  }

  int listen_fd_ = -1;
  std::thread serving_;
  std::vector<internal::KeeperRequest> requests_;
};

TEST(OldKeeperNotesTest, AKeeperThatTakesNoPipeGetsTheNotesOnTheConnection) {
  TempDir state;
  OldKeeper keeper(state.path());
  internal::Held held;
  absl::StatusOr<std::unique_ptr<KeeperClient>> client =
      KeeperClient::Open(state.path(), PROCTOR_KEEPER_PATH, held);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_FALSE(held.takes_notes_pipe());
  (*client)->Remember("session/1", "a");
  (*client)->Forget("session/1");
  client->reset();
  const std::vector<internal::KeeperRequest>& requests = keeper.requests();
  ASSERT_EQ(requests.size(), 2u) << "no notes pipe offered, nothing else sent";
  EXPECT_EQ(requests[0].remember().key(), "session/1");
  EXPECT_EQ(requests[0].remember().value(), "a");
  EXPECT_EQ(requests[1].forget().key(), "session/1");
}

}  // namespace
}  // namespace proctor
