// One state directory, one proctord: its journal is kept across restarts, and a second
// daemon on it is refused.
#include <filesystem>
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
  EXPECT_THAT(second.err, HasSubstr("is in use: is another proctord using it?"));
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

// A watcher that stopped at a cursor and comes back after a restart gets every later event
// once: those of the old daemon from its journal, then the new daemon's.
TEST(StateDirTest, WatchResumesAcrossARestartWithNoGapAndNoDuplicate) {
  TempDir state;
  uint64_t resume_from = 0;
  uint64_t last_before = 0;
  {
    TestDaemon daemon({"--state-dir", state.path()});
    v1::Process first = StartOk(daemon.client(), {"/bin/true"});
    ASSERT_TRUE(daemon.client().Join(first.id()).ok());
    ASSERT_TRUE(daemon.client().List(v1::StatusRequest(), &resume_from).ok());
    v1::Process second = StartOk(daemon.client(), {"/bin/true"});
    ASSERT_TRUE(daemon.client().Join(second.id()).ok());
    ASSERT_TRUE(daemon.client().List(v1::StatusRequest(), &last_before).ok());
    EXPECT_EQ(daemon.Stop(), 0);
  }
  ASSERT_GT(last_before, resume_from);
  TestDaemon again({"--state-dir", state.path()});
  v1::Process third = StartOk(again.client(), {"/bin/true"});
  ASSERT_TRUE(again.client().Join(third.id()).ok());
  uint64_t now = 0;
  ASSERT_TRUE(again.client().List(v1::StatusRequest(), &now).ok());

  v1::WatchRequest request;
  request.set_since(resume_from);
  std::vector<uint64_t> cursors;
  absl::Status watched = again.client().Watch(request, [&](const v1::Event& event) {
    cursors.push_back(event.cursor());
    return event.cursor() < now;
  });
  EXPECT_TRUE(watched.ok()) << watched;
  ASSERT_FALSE(cursors.empty());
  EXPECT_EQ(cursors.front(), resume_from + 1);
  for (size_t i = 1; i < cursors.size(); ++i) {
    EXPECT_EQ(cursors[i], cursors[i - 1] + 1) << "a gap or a duplicate at " << i;
  }
  EXPECT_EQ(cursors.back(), now);
}

// A journal that SQLite cannot read is moved aside; the daemon starts and serves.
TEST(StateDirTest, AnUnreadableJournalIsMovedAsideAndTheDaemonServes) {
  TempDir state;
  ASSERT_TRUE(WriteFile(state.path() + "/journal.db", std::string(8192, 'x')));
  TestDaemon daemon({"--state-dir", state.path()});
  EXPECT_TRUE(StartOk(daemon.client(), {"/bin/true"}).id() > 0);
  bool moved = false;
  for (const auto& entry : std::filesystem::directory_iterator(state.path())) {
    if (entry.path().filename().string().starts_with("journal.db.corrupt-")) moved = true;
  }
  EXPECT_TRUE(moved) << daemon.Log();
}

}  // namespace
}  // namespace proctor::testing
