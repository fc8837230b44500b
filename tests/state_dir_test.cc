// One state directory, one proctord: its journal is kept across restarts, and a second
// daemon on it is refused.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;

TEST(StateDirTest, ASecondDaemonOnTheSameStateDirectoryIsRefused) {
  TestDaemon first;
  TempDir other;
  CommandResult second = RunCommand({PROCTORD_PATH, "--listen",
                                     absl::StrCat("unix:", other.path(), "/second.sock"),
                                     "--state-dir", first.state_dir()});
  EXPECT_EQ(second.status, 1);
  EXPECT_THAT(second.err, HasSubstr("is another proctord using --state-dir"));
  EXPECT_TRUE(first.client().List(v1::StatusRequest()).ok()) << "the first one is unharmed";
}

TEST(StateDirTest, EndedRecordsAndCursorsGoOnAcrossARestart) {
  TempDir state;
  v1::Process kept;
  v1::Process released;
  uint64_t cursor = 0;
  {
    TestDaemon daemon({"--state-dir", state.path()});
    kept = StartOk(daemon.client(), {"/bin/sh", "-c", "echo kept; exit 7"});
    ASSERT_TRUE(daemon.client().Join(kept.id()).ok());
    released = StartOk(daemon.client(), {"/bin/true"});
    ASSERT_TRUE(daemon.client().Join(released.id()).ok());
    ASSERT_TRUE(daemon.client().Release(released.id()).ok());
    ASSERT_TRUE(daemon.client().List(v1::StatusRequest(), &cursor).ok());
    EXPECT_EQ(daemon.Stop(), 0);
  }
  TestDaemon again({"--state-dir", state.path()});
  EXPECT_THAT(again.Log(), HasSubstr(absl::StrCat("events up to cursor ", cursor)));
  absl::StatusOr<v1::Process> restored = again.client().Status(kept.id());
  ASSERT_TRUE(restored.ok()) << restored.status() << again.Log();
  EXPECT_EQ(restored->state(), v1::STATE_EXITED);
  EXPECT_EQ(restored->exitcode(), 7);
  EXPECT_EQ(restored->name(), kept.name());
  EXPECT_EQ(again.client().Status(released.id()).status().code(), absl::StatusCode::kNotFound);
  CommandResult logs = again.Cli({"logs", absl::StrCat(kept.id())});
  EXPECT_EQ(logs.out, "kept\n");
  v1::Process next = StartOk(again.client(), {"/bin/true"});
  EXPECT_GT(next.id(), released.id()) << "ids are never reused";
  uint64_t after = 0;
  ASSERT_TRUE(again.client().List(v1::StatusRequest(), &after).ok());
  EXPECT_GT(after, cursor) << "cursors go on";
  EXPECT_TRUE(again.client().Release(kept.id()).ok());
}

}  // namespace
}  // namespace proctor::testing
