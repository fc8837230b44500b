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

TEST(StateDirTest, EventCursorsGoOnAcrossARestart) {
  TempDir state;
  uint64_t before = 0;
  {
    TestDaemon daemon({"--state-dir", state.path()});
    v1::Process worker = StartOk(daemon.client(), {"/bin/true"});
    ASSERT_TRUE(daemon.client().Join(worker.id()).ok());
    CommandResult listed = daemon.Cli({"--json", "ps", "--all"});
    ASSERT_EQ(listed.status, 0) << listed.err;
    EXPECT_EQ(daemon.Stop(), 0);
    EXPECT_THAT(daemon.Log(), HasSubstr("journal "));
    before = 2;  // started, exited
  }
  TestDaemon again({"--state-dir", state.path()});
  EXPECT_THAT(again.Log(), HasSubstr(absl::StrCat("events up to cursor ", before)));
}

}  // namespace
}  // namespace proctor::testing
