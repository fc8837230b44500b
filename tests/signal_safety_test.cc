// proctord never signals its own process group. A worker that starts a daemonic child and is
// SIGKILLed at once races its own exit against the child's launch; whatever the interleaving,
// the daemon must signal only processes it owns. Here proctord shares its process group with
// this test and a sentinel, so a kill(0, SIGTERM) (pid 0 is "my own group") would stop the
// daemon, kill the sentinel and end this test.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kRounds = 500;
constexpr int kWave = 25;

// A process in this test's process group (posix_spawn without SETPGROUP), as proctord is.
pid_t StartSentinel() {
  char* argv[] = {const_cast<char*>("/bin/sleep"), const_cast<char*>("600"), nullptr};
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, "/bin/sleep", nullptr, nullptr, argv, nullptr), 0);
  return pid;
}

TEST(SignalSafetyTest, ParentKilledWhileItsDaemonicChildStartsNeverSignalsTheDaemonsGroup) {
  TestDaemon daemon;
  ASSERT_EQ(getpgid(daemon.pid()), getpgrp()) << "proctord must share our process group";
  pid_t sentinel = StartSentinel();
  ASSERT_GT(sentinel, 1);
  ASSERT_EQ(getpgid(sentinel), getpgrp());

  for (int first = 0; first < kRounds; first += kWave) {
    std::vector<uint64_t> workers;
    for (int i = first; i < first + kWave; ++i) {
      // The CLI runs in the background with the worker's own key; the worker kills itself
      // after 0 to 29 ms, spread so that some exits land while the child is being launched.
      std::string script = absl::StrFormat(
          "'%s' start --daemon -- /bin/sleep 300 >/dev/null 2>&1 & sleep 0.%03d; kill -9 $$",
          PROCTOR_CLI_PATH, i % 30);
      workers.push_back(StartOk(daemon.client(), {"/bin/sh", "-c", script}).id());
    }
    for (uint64_t id : workers) {
      absl::StatusOr<v1::Process> ended = daemon.client().Join(id, absl::Seconds(30));
      ASSERT_TRUE(ended.ok()) << ended.status();
      ASSERT_EQ(ended->state(), v1::STATE_EXITED) << "worker " << id;
      EXPECT_EQ(ended->exitcode(), -9);
    }
  }

  // Every daemonic child ended with its parent: nothing of ours is left running.
  EXPECT_TRUE(WaitFor(
      [&] {
        v1::StatusRequest running;
        running.set_state(v1::STATE_RUNNING);
        absl::StatusOr<std::vector<v1::Process>> left = daemon.client().List(running);
        return left.ok() && left->empty();
      },
      absl::Seconds(10)))
      << "daemonic children outlived their killed parents";

  EXPECT_TRUE(IsAlive(sentinel)) << "the sentinel in proctord's group was signalled";
  EXPECT_TRUE(IsAlive(daemon.pid())) << daemon.Log();
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("asked to stop"))) << "proctord signalled itself";
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("refusing pid")));
  EXPECT_TRUE(daemon.client().List(v1::StatusRequest()).ok()) << "the daemon still serves";
  // How often the race was actually run into, for the record.
  std::string log = daemon.Log();
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  ::testing::Test::RecordProperty("daemonic_children_started", count(" daemon\n"));
  ::testing::Test::RecordProperty("ended_while_starting", count("ended while it started"));
  std::cout << "daemonic children started: " << count(" daemon\n")
            << ", of which their parent ended during the launch: "
            << count("ended while it started") << "\n";

  kill(sentinel, SIGKILL);
  waitpid(sentinel, nullptr, 0);
}

}  // namespace
}  // namespace proctor::testing
