// A damaged journal against a real proctord on a reused state directory: a write-ahead log
// torn in its last frame, and a record whose bytes no longer match their CRC. In both the
// daemon says what it cut off, serves, and loads everything else with its true exit code.
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

// A record whose end nobody saw: ended, without an exit code.
void ExpectLost(Client& client, uint64_t id) {
  absl::StatusOr<v1::Process> lost = client.Status(id);
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ(lost->state(), v1::STATE_EXITED);
  EXPECT_TRUE(lost->lost());
  EXPECT_FALSE(lost->has_exitcode());
}

using ::testing::HasSubstr;

struct Worker {
  uint64_t id = 0;
  int exitcode = 0;
  uint64_t exited_cursor = 0;  // the cursor of its EXITED event
};

// Runs `sh -c "exit N"` for each code, one after another, each joined and reaped by the
// keeper (so none is left running, or held by the keeper, when the test kills proctord), and
// finds each one's EXITED event by watching the daemon's events from before the first. Each worker waits at a gate in `dir` until Start has
// answered, so that its exit is a commit of its own, never one with its start.
std::vector<Worker> RunWorkers(Client& client, const std::string& dir,
                               const std::vector<int>& codes) {
  uint64_t since = 0;
  EXPECT_TRUE(client.List(v1::StatusRequest(), &since).ok());
  std::vector<Worker> workers;
  for (int code : codes) {
    Gate gate(absl::StrCat(dir, "/gate-", workers.size()));
    v1::Process started = StartOk(
        client, {"/bin/sh", "-c", absl::StrCat(gate.ShellWait(), "; exit ", code)});
    EXPECT_TRUE(gate.Open());
    absl::StatusOr<v1::Process> joined = client.Join(started.id());
    EXPECT_TRUE(joined.ok() && joined->exitcode() == code) << joined.status();
    // Released by proctord once its exit is journaled, then reaped: its pid is gone.
    EXPECT_TRUE(WaitFor([&] { return IsGone(started.pid()); }))
        << "worker " << started.id() << " was not reaped";
    workers.push_back({.id = started.id(), .exitcode = code});
  }
  uint64_t until = 0;
  EXPECT_TRUE(client.List(v1::StatusRequest(), &until).ok());
  v1::WatchRequest request;
  request.set_since(since);
  request.add_types(v1::EVENT_EXITED);
  absl::Status watched = client.Watch(request, [&](const v1::Event& event) {
    for (Worker& worker : workers) {
      if (worker.id == event.process().id()) worker.exited_cursor = event.cursor();
    }
    return event.cursor() < until;
  });
  EXPECT_TRUE(watched.ok()) << watched;
  for (const Worker& worker : workers) EXPECT_GT(worker.exited_cursor, 0u) << worker.id;
  return workers;
}

void ExpectExited(Client& client, const Worker& worker) {
  absl::StatusOr<v1::Process> record = client.Status(worker.id);
  ASSERT_TRUE(record.ok()) << "id " << worker.id << ": " << record.status();
  EXPECT_EQ(record->state(), v1::STATE_EXITED) << worker.id;
  EXPECT_EQ(record->exitcode(), worker.exitcode) << worker.id;
}

// The restarted daemon still starts workers, with ids and cursors above everything before.
void ExpectServesAndGoesOn(Client& client, uint64_t last_id, uint64_t last_cursor) {
  v1::Process next = StartOk(client, {"/bin/sh", "-c", "exit 9"});
  EXPECT_GT(next.id(), last_id) << "ids are never reused";
  absl::StatusOr<v1::Process> joined = client.Join(next.id());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->exitcode(), 9);
  uint64_t cursor = 0;
  ASSERT_TRUE(client.List(v1::StatusRequest(), &cursor).ok());
  EXPECT_GT(cursor, last_cursor) << "cursors go on";
}

uint32_t BigEndian32(const std::string& bytes, size_t at) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data() + at);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
}

// proctord is SIGKILLed, so the latest commits are only in journal.db-wal, one frame each
// (a worker's exit is one transaction, apart from its start); the log is then cut in the
// middle of its last frame, the commit of the last worker's exit, as a power loss would
// leave it.
TEST(JournalDamageTest, ATornLastFrameIsCutOffAndLoggedAndEveryEarlierCommitLoads) {
  TempDir state;
  std::vector<Worker> workers;
  {
    TestDaemon daemon({"--state-dir", state.path()});
    workers = RunWorkers(daemon.client(), daemon.dir(), {3, 5, 7, 11});
    ASSERT_EQ(kill(daemon.pid(), SIGKILL), 0);
    EXPECT_EQ(daemon.Stop(), 128 + SIGKILL);
  }
  const std::string wal = state.path() + "/journal.db-wal";
  std::string bytes = ReadFile(wal);
  ASSERT_GT(bytes.size(), 32u) << "no write-ahead log was left behind";
  const size_t page_size = BigEndian32(bytes, 8);
  const size_t frame_size = 24 + page_size;
  ASSERT_EQ((bytes.size() - 32) % frame_size, 0u) << "the log is whole before the cut";
  ASSERT_EQ(truncate(wal.c_str(), static_cast<off_t>(bytes.size() - frame_size / 2)), 0);

  TestDaemon again({"--state-dir", state.path()});
  const Worker& cut = workers.back();
  std::string log = again.Log();
  EXPECT_THAT(log, HasSubstr(absl::StrCat("its write-ahead log ends in ", frame_size / 2,
                                          " bytes (frames: 1) that are torn or damaged")));
  EXPECT_THAT(log, HasSubstr(absl::StrCat("events up to cursor ", cut.exited_cursor - 1)));
  // Its start was committed but not its exit, and its keeper released it long ago: the daemon
  // says it has lost track of it, and lists it as lost.
  EXPECT_THAT(log, HasSubstr(absl::StrCat("id=", cut.id, " pid=")));
  ExpectLost(again.client(), cut.id);
  for (size_t i = 0; i + 1 < workers.size(); ++i) ExpectExited(again.client(), workers[i]);
  ExpectServesAndGoesOn(again.client(), cut.id, cut.exited_cursor - 1);
}

// Flips one bit of a stored event's bytes, leaving its CRC as it was.
void DamageEvent(const std::string& journal, uint64_t cursor) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(journal.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_stmt* read = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT data FROM events WHERE cursor = ?1", -1, &read,
                               nullptr),
            SQLITE_OK);
  sqlite3_bind_int64(read, 1, static_cast<int64_t>(cursor));
  ASSERT_EQ(sqlite3_step(read), SQLITE_ROW) << "no row for cursor " << cursor;
  std::string data(static_cast<const char*>(sqlite3_column_blob(read, 0)),
                   static_cast<size_t>(sqlite3_column_bytes(read, 0)));
  sqlite3_finalize(read);
  data[data.size() / 2] ^= 0x01;
  sqlite3_stmt* write = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE events SET data = ?1 WHERE cursor = ?2", -1, &write,
                               nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(write, 1, data.data(), static_cast<int>(data.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(write, 2, static_cast<int64_t>(cursor));
  EXPECT_EQ(sqlite3_step(write), SQLITE_DONE) << sqlite3_errmsg(db);
  sqlite3_finalize(write);
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
}

TEST(JournalDamageTest, ARecordThatFailsItsCrcIsDroppedAndNamedAndTheOthersLoad) {
  TempDir state;
  std::vector<Worker> workers;
  uint64_t last_cursor = 0;
  {
    TestDaemon daemon({"--state-dir", state.path()});
    workers = RunWorkers(daemon.client(), daemon.dir(), {3, 5, 7});
    ASSERT_TRUE(daemon.client().List(v1::StatusRequest(), &last_cursor).ok());
    EXPECT_EQ(daemon.Stop(), 0);
  }
  const Worker& damaged = workers[1];
  DamageEvent(state.path() + "/journal.db", damaged.exited_cursor);

  TestDaemon again({"--state-dir", state.path()});
  std::string log = again.Log();
  EXPECT_THAT(log, HasSubstr(absl::StrCat("dropping the event of cursor ", damaged.exited_cursor,
                                          ": its CRC does not match its bytes")));
  EXPECT_THAT(log, HasSubstr("1 damaged events were dropped"));
  // Without its exit, the record is one the daemon lost track of, and says so.
  EXPECT_THAT(log, HasSubstr(absl::StrCat("id=", damaged.id, " pid=")));
  ExpectLost(again.client(), damaged.id);
  ExpectExited(again.client(), workers[0]);
  ExpectExited(again.client(), workers[2]);

  // The journal has a gap there: a watcher from before it is told, one from after it is not.
  v1::WatchRequest before;
  before.set_since(damaged.exited_cursor - 1);
  EXPECT_EQ(again.client().Watch(before, [](const v1::Event&) { return false; }).code(),
            absl::StatusCode::kOutOfRange);
  ExpectServesAndGoesOn(again.client(), workers.back().id, last_cursor);
  v1::WatchRequest after;
  after.set_since(damaged.exited_cursor);
  uint64_t first = 0;
  EXPECT_TRUE(again.client()
                  .Watch(after,
                         [&](const v1::Event& event) {
                           first = event.cursor();
                           return false;
                         })
                  .ok());
  EXPECT_EQ(first, damaged.exited_cursor + 1);
}

}  // namespace
}  // namespace proctor::testing
