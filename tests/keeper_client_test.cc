// KeeperClient's notes: with a real keeper they go on a pipe the keeper reads lazily, and none
// written before proctord's end is lost; with a keeper that takes no pipe (one started by an
// older proctord) they go on the connection. And orphans the keeper reaps while it holds an
// ended worker.
#include "server/keeper_client.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/keeper/framing.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WaitFor;
using testing::WriteFile;

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

  // Starts the keeper of state_ and connects to it.
  void OpenKeeper(internal::Held& held) {
    absl::StatusOr<std::unique_ptr<KeeperClient>> opened =
        KeeperClient::Open(state_.path(), PROCTOR_KEEPER_PATH, held);
    ASSERT_TRUE(opened.ok()) << opened.status();
    client_ = *std::move(opened);
    keeper_ = held.keeper_pid();
  }

  TempDir state_;
  pid_t keeper_ = 0;
  std::unique_ptr<KeeperClient> client_;
  std::map<std::string, std::string> expected_;
};

TEST_F(KeeperNotesTest, NotesWrittenJustBeforeProctordEndsAreAllKept) {
  internal::Held held;
  ASSERT_NO_FATAL_FAILURE(OpenKeeper(held));
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
    absl::StatusOr<std::unique_ptr<KeeperClient>> opened =
        KeeperClient::Open(state_.path(), PROCTOR_KEEPER_PATH, again);
    ASSERT_TRUE(opened.ok()) << opened.status();
    client_ = *std::move(opened);
    EXPECT_EQ(again.keeper_pid(), keeper_) << "the same keeper, holding the notes";
    ASSERT_EQ(NotesOf(again), expected_) << "round " << round;
  }
}

// The keeper asks the kernel for its first ended child to find ended orphans; a worker it
// holds (ended, not released) comes first and hides those after it. Such an orphan is still
// reaped and reported while the worker is held.
TEST_F(KeeperNotesTest, AnOrphanEndingBehindAHeldWorkerIsReapedAndReported) {
  internal::Held held;
  ASSERT_NO_FATAL_FAILURE(OpenKeeper(held));
  absl::Mutex mu;
  std::set<uint64_t> exited;
  std::set<uint64_t> reaped;
  std::set<pid_t> orphans;
  client_->Start(KeeperClient::Listener{
      .on_exited =
          [&](const internal::Exited& exit) {
            absl::MutexLock lock(&mu);
            exited.insert(exit.token());
          },
      .on_reaped =
          [&](uint64_t token) {
            absl::MutexLock lock(&mu);
            reaped.insert(token);
          },
      .on_orphan_reaped =
          [&](const internal::OrphanReaped& orphan) {
            absl::MutexLock lock(&mu);
            orphans.insert(orphan.pid());
          },
      .on_lost = [] {}});
  auto spawn = [&](uint64_t token, const std::string& script) {
    internal::Spawn request;
    request.set_token(token);
    request.set_path("/bin/sh");
    for (const char* arg : {"/bin/sh", "-c", script.c_str()}) request.add_argv(arg);
    request.set_stdout_path(absl::StrCat(state_.path(), "/", token, ".out"));
    request.set_stderr_path(absl::StrCat(state_.path(), "/", token, ".err"));
    absl::StatusOr<internal::Spawned> spawned = client_->Spawn(request);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    ASSERT_GT(spawned->pid(), 0) << spawned->failed_step();
    EXPECT_TRUE(WaitFor([&] {
      absl::MutexLock lock(&mu);
      return exited.contains(token);
    }));
  };
  spawn(1, "exit 0");  // held from here on
  // Ends at once, leaving a child that ends 300 ms later: an orphan of the keeper by then.
  const std::string orphan_file = state_.path() + "/orphan";
  spawn(2, absl::StrCat("sleep 0.3 & echo $! > ", orphan_file));
  pid_t orphan = 0;
  std::ifstream(orphan_file) >> orphan;
  ASSERT_GT(orphan, 1);
  EXPECT_TRUE(WaitFor([&] {
    absl::MutexLock lock(&mu);
    return orphans.contains(orphan);
  })) << "the orphan " << orphan << " was not reported reaped";

  client_->Release(1);
  client_->Release(2);
  EXPECT_TRUE(WaitFor([&] {
    absl::MutexLock lock(&mu);
    return reaped.size() == 2;
  }));
  client_->Shutdown(absl::Seconds(10));
  client_.reset();
}

// proctord releases a worker from the listener, as its exit is reported. The release waits
// for the next request to ride with, and goes alone when none comes: either way the worker
// is reaped.
TEST_F(KeeperNotesTest, AReleaseFromTheListenerRidesWithTheNextSpawnOrGoesAlone) {
  internal::Held held;
  ASSERT_NO_FATAL_FAILURE(OpenKeeper(held));
  absl::Mutex mu;
  std::vector<uint64_t> reaped;
  client_->Start(KeeperClient::Listener{
      .on_exited = [&](const internal::Exited& exit) { client_->Release(exit.token()); },
      .on_reaped =
          [&](uint64_t token) {
            absl::MutexLock lock(&mu);
            reaped.push_back(token);
          },
      .on_lost = [] {}});
  auto spawn = [&](uint64_t token) {
    internal::Spawn request;
    request.set_token(token);
    request.set_path("/bin/true");
    request.add_argv("/bin/true");
    request.set_stdout_path(absl::StrCat(state_.path(), "/", token, ".out"));
    request.set_stderr_path(absl::StrCat(state_.path(), "/", token, ".err"));
    absl::StatusOr<internal::Spawned> spawned = client_->Spawn(request);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    ASSERT_GT(spawned->pid(), 0) << spawned->failed_step();
  };
  auto reaped_count = [&] {
    absl::MutexLock lock(&mu);
    return reaped.size();
  };
  // Alone: nothing else is asked of the keeper.
  spawn(1);
  EXPECT_TRUE(WaitFor([&] { return reaped_count() == 1; }));
  // In a stream: each next Spawn follows the last worker's exit closely.
  for (uint64_t token = 2; token <= 50; ++token) ASSERT_NO_FATAL_FAILURE(spawn(token));
  EXPECT_TRUE(WaitFor([&] { return reaped_count() == 50; }));
  client_->Shutdown(absl::Seconds(10));
  client_.reset();
  std::vector<uint64_t> sorted = reaped;
  std::sort(sorted.begin(), sorted.end());
  ASSERT_EQ(sorted.size(), 50u);
  EXPECT_EQ(sorted.front(), 1u);
  EXPECT_EQ(sorted.back(), 50u);
  EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end()) << "each reaped once";
}

// A first run writes into an empty capture file whatever the path held; a restart's run
// (append_output) adds to what is there.
TEST_F(KeeperNotesTest, AFirstRunsCaptureFileStartsEmptyAndARestartsRunAppends) {
  internal::Held held;
  ASSERT_NO_FATAL_FAILURE(OpenKeeper(held));
  absl::Mutex mu;
  std::set<uint64_t> exited;
  client_->Start(KeeperClient::Listener{.on_exited =
                                            [&](const internal::Exited& exit) {
                                              absl::MutexLock lock(&mu);
                                              exited.insert(exit.token());
                                            },
                                        .on_lost = [] {}});
  const std::string out = state_.path() + "/run.out";
  auto run = [&](uint64_t token, bool append) {
    ASSERT_TRUE(WriteFile(out, "stale\n")) << "before token " << token;
    internal::Spawn request;
    request.set_token(token);
    request.set_path("/bin/echo");
    for (const char* arg : {"/bin/echo", "fresh"}) request.add_argv(arg);
    request.set_stdout_path(out);
    request.set_stderr_path(state_.path() + "/run.err");
    request.set_append_output(append);
    absl::StatusOr<internal::Spawned> spawned = client_->Spawn(request);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    ASSERT_GT(spawned->pid(), 0) << spawned->failed_step();
    ASSERT_TRUE(WaitFor([&] {
      absl::MutexLock lock(&mu);
      return exited.contains(token);
    }));
    client_->Release(token);
  };
  run(1, false);
  EXPECT_EQ(ReadFile(out), "fresh\n");
  run(2, true);
  EXPECT_EQ(ReadFile(out), "stale\nfresh\n");
  client_->Shutdown(absl::Seconds(10));
  client_.reset();
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
