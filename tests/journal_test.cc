// Journal against real SQLite files in a temporary directory, with durable off and on. Damage
// is made with SQLite directly (a row's bytes) or by writing over the file.
#include "server/journal.h"

#include <sys/mount.h>
#include <unistd.h>

#include <sqlite3.h>
#include <stdlib.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/event_log.h"
#include "server/event_recorder.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::Event ProcessEvent(v1::EventType type, uint64_t id) {
  v1::Event event;
  event.set_type(type);
  event.mutable_time()->set_seconds(1700000000 + static_cast<int64_t>(id));
  v1::Process* process = event.mutable_process();
  process->set_id(id);
  process->set_name(absl::StrCat("Process-", id));
  process->set_pid(static_cast<int32_t>(1000 + id));
  process->set_target("/bin/true");
  process->set_state(type == v1::EVENT_STARTED ? v1::STATE_RUNNING : v1::STATE_EXITED);
  if (type != v1::EVENT_STARTED) process->set_exitcode(0);
  return event;
}

v1::Event SessionEvent(v1::EventType type, uint64_t session) {
  v1::Event event;
  event.set_type(type);
  event.set_session(session);
  return event;
}

std::vector<uint64_t> Cursors(const std::vector<v1::Event>& events) {
  std::vector<uint64_t> cursors;
  for (const v1::Event& event : events) cursors.push_back(event.cursor());
  return cursors;
}

class JournalTest : public ::testing::TestWithParam<bool> {
 protected:
  JournalTest() : previous_logger_(spdlog::default_logger()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "journal-test-XXXXXX");
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/journal.db";
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_)));
  }
  ~JournalTest() override {
    spdlog::set_default_logger(previous_logger_);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::unique_ptr<Journal> OpenJournal() {
    absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(path_, GetParam());
    EXPECT_TRUE(journal.ok()) << journal.status();
    return journal.ok() ? *std::move(journal) : nullptr;
  }

  // Appends each group in one call; returns the cursors given.
  std::vector<uint64_t> Append(Journal& journal, std::vector<v1::Event> events) {
    absl::Status status = journal.Append(events);
    EXPECT_TRUE(status.ok()) << status;
    return Cursors(events);
  }

  // Runs SQL on the journal's file directly (the journal must be closed).
  void Sql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    char* error = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
    EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  }

  // The journal's bytes on disk: the database and its write-ahead log.
  uintmax_t DiskBytes() const {
    std::error_code no_log;
    uintmax_t log = std::filesystem::file_size(path_ + "-wal", no_log);
    return std::filesystem::file_size(path_) + (no_log ? 0 : log);
  }

  std::string dir_;
  std::string path_;
  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> previous_logger_;
};

TEST_P(JournalTest, AppendAndLoadRoundTrip) {
  std::vector<v1::Event> written = {ProcessEvent(v1::EVENT_STARTED, 1),
                                    SessionEvent(v1::EVENT_SESSION_OPENED, 7),
                                    ProcessEvent(v1::EVENT_EXITED, 1)};
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    std::vector<v1::Event> none;
    EXPECT_TRUE(journal->Append(none).ok());
    EXPECT_EQ(journal->LastCursor(), 0u) << "an empty append uses no cursor";
    ASSERT_TRUE(journal->Append(written).ok());
    EXPECT_THAT(Cursors(written), ElementsAre(1, 2, 3)) << "cursors are given to the caller";
  }
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->last_cursor, 3u);
  EXPECT_EQ(loaded->corrupt_dropped, 0u);
  EXPECT_EQ(loaded->moved_aside, "");
  ASSERT_EQ(loaded->events.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(loaded->events[i], written[i]))
        << loaded->events[i].DebugString() << " vs " << written[i].DebugString();
  }
}

TEST_P(JournalTest, CursorsIncreaseAcrossReopenAndCompaction) {
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 1)}), ElementsAre(1));
    EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 2),
                                  ProcessEvent(v1::EVENT_EXITED, 2)}),
                ElementsAre(2, 3));
  }
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    EXPECT_EQ(journal->LastCursor(), 3u);
    EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_EXITED, 1)}), ElementsAre(4));
    // Nothing retained: every row goes, the last cursor stays.
    absl::StatusOr<Journal::CompactStats> stats = journal->Compact({}, {}, 0);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->rows_before, 4u);
    EXPECT_EQ(stats->rows_after, 0u);
    EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 3)}), ElementsAre(5));
    ASSERT_TRUE(journal->Compact({}, {}, 0).ok());
  }
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  EXPECT_EQ(journal->LastCursor(), 5u) << "kept in meta when no row holds it";
  EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 4)}), ElementsAre(6));
}

TEST_P(JournalTest, DamagedRowsAreLoggedDroppedAndSkipped) {
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    std::vector<v1::Event> events;
    for (uint64_t id = 1; id <= 6; ++id) events.push_back(ProcessEvent(v1::EVENT_STARTED, id));
    Append(*journal, std::move(events));
  }
  // Row 2: bytes that no longer match the CRC. Row 4: bytes and CRC that match but do not
  // parse. Row 5: row 1's bytes and CRC, a whole event of another cursor.
  const unsigned char unparsable[] = {0xff, 0xff, 0xff, 0xff};
  Sql(absl::StrCat(
      "UPDATE events SET data = X'0a0b0c0d' WHERE cursor = 2;"
      "UPDATE events SET data = X'ffffffff', crc = ",
      crc32_z(0, unparsable, sizeof(unparsable)),
      " WHERE cursor = 4;"
      "UPDATE events SET (data, crc) = (SELECT data, crc FROM events WHERE cursor = 1) "
      "  WHERE cursor = 5;"));
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    absl::StatusOr<Journal::Loaded> loaded = journal->Load();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_THAT(Cursors(loaded->events), ElementsAre(1, 3, 6));
    EXPECT_EQ(loaded->corrupt_dropped, 3u);
    EXPECT_EQ(loaded->last_cursor, 6u);
    EXPECT_THAT(log_.str(), HasSubstr("cursor 2: its CRC does not match"));
    EXPECT_THAT(log_.str(), HasSubstr("cursor 5: it holds the event of cursor 1"));
    EXPECT_EQ(journal->FirstCursor(), 6u) << "nothing can be resumed from before a lost row";
    EXPECT_EQ(journal->ReadAfter(4, 10).status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_EXITED, 1)}), ElementsAre(7));
  }
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<Journal::Loaded> again = journal->Load();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(Cursors(again->events), ElementsAre(1, 3, 6, 7)) << "damaged rows were deleted";
  EXPECT_EQ(again->corrupt_dropped, 0u);
  EXPECT_EQ(journal->FirstCursor(), 6u);
}

// Found by tests/fuzz/journal_fuzz: a zeroed row (cursor 0, CRC 0, no bytes) passed every
// check as an empty event of cursor 0; a negative cursor with an event that carries it as
// unsigned passed too, first in cursor order.
TEST_P(JournalTest, RowsWithoutAPositiveCursorAreDropped) {
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 1), ProcessEvent(v1::EVENT_STARTED, 2)});
  }
  v1::Event negative = ProcessEvent(v1::EVENT_STARTED, 3);
  negative.set_cursor(static_cast<uint64_t>(int64_t{-3}));
  std::string bytes = negative.SerializeAsString();
  Sql(absl::StrCat(
      "INSERT INTO events(cursor, crc, data, process) VALUES (0, 0, X'', 1);"
      "INSERT INTO events(cursor, crc, data, process) VALUES (-3, ",
      crc32_z(0, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()), ", X'",
      absl::BytesToHexString(bytes), "', 3);"));
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(Cursors(loaded->events), ElementsAre(1, 2));
  EXPECT_EQ(loaded->corrupt_dropped, 2u);
  EXPECT_EQ(loaded->last_cursor, 2u);
  EXPECT_THAT(log_.str(), HasSubstr("its cursor 0 names no event"));
  EXPECT_THAT(log_.str(), HasSubstr("its cursor -3 names no event"));
  EXPECT_EQ(journal->FirstCursor(), 1u) << "no event was lost";
  EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_EXITED, 1)}), ElementsAre(3));
}

TEST_P(JournalTest, GarbageFileIsMovedAsideAndAFreshJournalStarts) {
  std::string garbage(8192, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 7 + 3);
  std::ofstream(path_, std::ios::binary) << garbage;
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->events.empty());
  EXPECT_EQ(loaded->last_cursor, 0u) << "nothing could be read: cursors start again";
  ASSERT_THAT(loaded->moved_aside, HasSubstr(path_ + ".corrupt-"));
  std::ifstream aside(loaded->moved_aside, std::ios::binary);
  std::string kept((std::istreambuf_iterator<char>(aside)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, garbage) << "the damaged file is kept as it was";
  EXPECT_THAT(log_.str(), HasSubstr("moved it aside to " + loaded->moved_aside));
  EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 1)}), ElementsAre(1));
}

TEST_P(JournalTest, DamagedPagesAreMovedAsideAndWhatCanBeReadIsKept) {
  constexpr uint64_t kEvents = 2000;
  {
    auto journal = OpenJournal();
    ASSERT_NE(journal, nullptr);
    std::vector<v1::Event> events;
    for (uint64_t id = 1; id <= kEvents; ++id) {
      events.push_back(ProcessEvent(v1::EVENT_STARTED, id));
    }
    Append(*journal, std::move(events));
  }
  // Overwrite one page in the middle of the file: a leaf of the events table.
  uintmax_t size = std::filesystem::file_size(path_);
  ASSERT_GT(size, 16u * 4096);
  {
    std::fstream file(path_, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(size / 2 / 4096 * 4096));
    file << std::string(4096, '\xab');
  }
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(loaded->moved_aside, HasSubstr(".corrupt-"));
  EXPECT_GT(loaded->events.size(), 0u) << "rows before the damaged page are salvaged";
  EXPECT_LT(loaded->events.size(), kEvents);
  for (const v1::Event& event : loaded->events) {
    EXPECT_EQ(event.process().id(), event.cursor()) << "salvaged rows are whole";
  }
  EXPECT_EQ(loaded->last_cursor, kEvents) << "cursors continue above the highest found";
  EXPECT_EQ(journal->FirstCursor(), kEvents + 1);
  EXPECT_THAT(Append(*journal, {ProcessEvent(v1::EVENT_EXITED, 1)}), ElementsAre(kEvents + 1));
}

TEST_P(JournalTest, CompactionKeepsTheLatestEventOfWhatIsRetainedAndTheTail) {
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 1),           // 1
                    ProcessEvent(v1::EVENT_STARTED, 2),           // 2
                    ProcessEvent(v1::EVENT_EXITED, 1),            // 3: latest of 1
                    ProcessEvent(v1::EVENT_STARTED, 3),           // 4
                    SessionEvent(v1::EVENT_SESSION_OPENED, 7),    // 5: session 7 open
                    ProcessEvent(v1::EVENT_EXITED, 2),            // 6: 2 is released
                    ProcessEvent(v1::EVENT_STARTED, 4),           // 7: latest of 4
                    SessionEvent(v1::EVENT_SESSION_OPENED, 8),    // 8
                    SessionEvent(v1::EVENT_SESSION_ENDED, 8),     // 9: tail
                    ProcessEvent(v1::EVENT_EXITED, 3)});          // 10: tail, latest of 3
  absl::StatusOr<Journal::CompactStats> stats =
      journal->Compact(/*retained_ids=*/{1, 3, 4}, /*open_sessions=*/{7}, /*keep_tail=*/2);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->rows_before, 10u);
  EXPECT_EQ(stats->rows_after, 5u);
  EXPECT_EQ(stats->first_cursor, 9u) << "above the newest row dropped (8)";
  EXPECT_EQ(journal->FirstCursor(), 9u);

  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(Cursors(loaded->events), ElementsAre(3, 5, 7, 9, 10));

  absl::StatusOr<std::vector<v1::Event>> after = journal->ReadAfter(8, 100);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(Cursors(*after), ElementsAre(9, 10));
  after = journal->ReadAfter(8, 1);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(Cursors(*after), ElementsAre(9));
  after = journal->ReadAfter(10, 100);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->empty());
  absl::Status too_old = journal->ReadAfter(7, 100).status();
  EXPECT_EQ(too_old.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(too_old.message(), HasSubstr("cursor 7 is older than the oldest it can resume "
                                           "from (8)"));

  // The tail is compacted like the rest once it is no longer the tail.
  journal.reset();
  journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  EXPECT_EQ(journal->FirstCursor(), 9u) << "kept in meta";
  EXPECT_EQ(journal->LastCursor(), 10u);
  stats = journal->Compact({1, 3, 4}, {7}, 0);
  ASSERT_TRUE(stats.ok()) << stats.status();
  loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(Cursors(loaded->events), ElementsAre(3, 5, 7, 10));
  EXPECT_EQ(journal->FirstCursor(), 10u);
}

TEST_P(JournalTest, SizeFollowsRetentionNotAge) {
  constexpr uint64_t kProcesses = 3000;
  constexpr uint64_t kRetained = 100;
  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  absl::flat_hash_set<uint64_t> retained;
  for (uint64_t first = 1; first <= kProcesses; first += 100) {
    std::vector<v1::Event> batch;
    for (uint64_t id = first; id < first + 100; ++id) {
      batch.push_back(ProcessEvent(v1::EVENT_STARTED, id));
      batch.push_back(ProcessEvent(v1::EVENT_EXITED, id));
      if (id > kProcesses - kRetained) retained.insert(id);
    }
    Append(*journal, std::move(batch));
  }
  uintmax_t before = DiskBytes();
  absl::StatusOr<Journal::CompactStats> stats = journal->Compact(retained, {}, 0);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->rows_before, 2 * kProcesses);
  EXPECT_EQ(stats->rows_after, kRetained);
  uintmax_t after = DiskBytes();
  EXPECT_LT(after, before / 10) << "before " << before << " bytes, after " << after;
  EXPECT_EQ(std::filesystem::file_size(path_ + "-wal"), 0u) << "the log is truncated";
}

TEST_P(JournalTest, ErrorsThatAreNotDamageLeaveTheFileAlone) {
  absl::StatusOr<std::unique_ptr<Journal>> missing =
      Journal::Open(dir_ + "/no-such-dir/journal.db", GetParam());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir_ + "/no-such-dir/journal.db"));

  auto journal = OpenJournal();
  ASSERT_NE(journal, nullptr);
  Append(*journal, {ProcessEvent(v1::EVENT_STARTED, 1)});
  absl::StatusOr<std::unique_ptr<Journal>> second = Journal::Open(path_, GetParam());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable)
      << "one proctord per journal: " << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(path_));
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    EXPECT_THAT(entry.path().string(), ::testing::Not(HasSubstr("corrupt")));
  }
  absl::StatusOr<Journal::Loaded> loaded = journal->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(Cursors(loaded->events), ElementsAre(1));
}

INSTANTIATE_TEST_SUITE_P(Durability, JournalTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Durable" : "NotDurable";
                         });

}  // namespace
}  // namespace proctor

namespace proctor {
namespace {

// A journal on a full disk: the events it refuses are kept and written once it has room,
// and Flush (which the supervisor calls before each Start) refuses until then.
TEST(EventRecorderFullDiskTest, EventsTheJournalRefusesAreKeptUntilItTakesThem) {
  if (geteuid() != 0) GTEST_SKIP() << "mounts a small tmpfs: needs root";
  char dir_template[] = "/tmp/proctor-full-disk.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m"), 0) << std::strerror(errno);
  {
    absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(dir + "/journal.db", false);
    ASSERT_TRUE(journal.ok()) << journal.status();
    EventLog log(EventLog::Options{});
    EventRecorder recorder(journal->get(), log, [](auto&, auto&) {});
    auto event = [](uint64_t cursor) {
      SupervisorEvent e;
      e.cursor = cursor;
      e.time = absl::Now();
      e.kind = EventKind::kStarted;
      e.process.id = cursor;
      e.process.target = "/bin/true";
      e.process.args = {std::string(2000, 'a')};
      return e;
    };
    ASSERT_TRUE(recorder.Record({event(1)}).ok());
    // Fill the disk.
    std::string filler = dir + "/filler";
    {
      std::ofstream out(filler);
      std::string block(4096, 'x');
      while (out.write(block.data(), block.size()) && out.flush()) {
      }
    }
    uint64_t cursor = 2;
    for (; cursor < 400 && recorder.Flush().ok(); ++cursor) {
      recorder.Record({event(cursor)}).IgnoreError();  // what it says is Flush's to tell
    }
    absl::Status refused = recorder.Flush();
    ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted)
        << "the journal never refused an event on a full disk";
    EXPECT_THAT(std::string(refused.message()), HasSubstr(dir + "/journal.db"));
    EXPECT_THAT(std::string(refused.message()), HasSubstr("no process is started until"));
    // Room again: what was held back is written, in order.
    std::filesystem::remove(filler);
    EXPECT_TRUE(recorder.Flush().ok());
    absl::StatusOr<std::vector<v1::Event>> kept = (*journal)->ReadAfter(0, 1000);
    ASSERT_TRUE(kept.ok()) << kept.status();
    ASSERT_EQ(kept->size(), cursor - 1);  // 1 .. cursor - 1 were recorded
    for (size_t i = 0; i < kept->size(); ++i) EXPECT_EQ((*kept)[i].cursor(), i + 1);
  }
  umount2(dir.c_str(), MNT_DETACH);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace proctor
