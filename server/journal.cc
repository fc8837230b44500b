#include "server/journal.h"

#include <sqlite3.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/wal_tail.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// The file format this code writes (PRAGMA user_version); a file from a newer one is refused
// rather than misread.
constexpr int kFormat = 1;

// `process` or `session` names what the event concerns (the other is NULL), so that
// Compact decides without parsing every row. The meta rows must exist before the first
// Compact or Load writes them; `first_cursor` starts at 1 (nothing removed yet).
constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS events("
    "  cursor INTEGER PRIMARY KEY, crc INTEGER NOT NULL, data BLOB NOT NULL,"
    "  process INTEGER, session INTEGER);"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
    "  WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta(key, value) VALUES ('last_cursor', 0), ('first_cursor', 1);";

struct StmtCloser {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtCloser>;
struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

// SQLite's result as a status naming the file. Damage is DATA_LOSS, which Open answers by
// moving the file aside; anything else leaves the file alone.
absl::Status SqliteError(const std::string& path, sqlite3* db, int rc, absl::string_view what) {
  std::string message =
      absl::StrCat(path, ": ", what, ": ", db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(absl::StrCat(message, " (is another proctord using it?)"));
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status Exec(const std::string& path, sqlite3* db, const char* sql) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteError(path, db, rc, sql);
  return absl::OkStatus();
}

absl::StatusOr<Stmt> Prepare(const std::string& path, sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
  if (rc != SQLITE_OK) return SqliteError(path, db, rc, sql);
  return Stmt(stmt);
}

// The first column of the first row as text, or "" when there is no row.
absl::StatusOr<std::string> QueryText(const std::string& path, sqlite3* db, const char* sql) {
  absl::StatusOr<Stmt> stmt = Prepare(path, db, sql);
  if (!stmt.ok()) return stmt.status();
  int rc = sqlite3_step(stmt->get());
  if (rc == SQLITE_DONE) return std::string();
  if (rc != SQLITE_ROW) return SqliteError(path, db, rc, sql);
  const unsigned char* text = sqlite3_column_text(stmt->get(), 0);
  return std::string(text != nullptr ? reinterpret_cast<const char*>(text) : "");
}

// The first column of the first row, 0 when there is no row or it is NULL.
absl::StatusOr<int64_t> QueryInt(const std::string& path, sqlite3* db, const char* sql) {
  absl::StatusOr<Stmt> stmt = Prepare(path, db, sql);
  if (!stmt.ok()) return stmt.status();
  int rc = sqlite3_step(stmt->get());
  if (rc == SQLITE_DONE) return 0;
  if (rc != SQLITE_ROW) return SqliteError(path, db, rc, sql);
  return sqlite3_column_int64(stmt->get(), 0);
}

// Binds ?1, ?2, ... in turn and keeps the first failure, so a chain of binds is checked once.
class Binder {
 public:
  explicit Binder(sqlite3_stmt* stmt) : stmt_(stmt) {}
  Binder& Int(uint64_t value) {
    return Check(sqlite3_bind_int64(stmt_, ++index_, static_cast<int64_t>(value)));
  }
  Binder& IntOrNull(std::optional<uint64_t> value) {
    if (value.has_value()) return Int(*value);
    return Check(sqlite3_bind_null(stmt_, ++index_));
  }
  // `bytes` must stay unchanged until the statement has been stepped.
  Binder& Blob(const std::string& bytes) {
    return Check(sqlite3_bind_blob64(stmt_, ++index_, bytes.data(), bytes.size(), SQLITE_STATIC));
  }
  // SQLITE_OK, or the first bind's failure.
  int rc() const { return rc_; }
  // Binds, runs a statement that returns no rows, and resets it for the next use.
  int Run() {
    if (rc_ != SQLITE_OK) return rc_;
    int rc = sqlite3_step(stmt_);
    sqlite3_reset(stmt_);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

 private:
  Binder& Check(int rc) {
    if (rc_ == SQLITE_OK) rc_ = rc;
    return *this;
  }
  sqlite3_stmt* stmt_;
  int index_ = 0;
  int rc_ = SQLITE_OK;
};

uint32_t Crc(const void* data, size_t size) {
  return static_cast<uint32_t>(crc32_z(0, static_cast<const Bytef*>(data), size));
}

// The event a row (cursor, crc, data) holds, or why it cannot be trusted.
absl::StatusOr<v1::Event> DecodeRow(sqlite3_stmt* stmt) {
  int64_t stored_cursor = sqlite3_column_int64(stmt, 0);
  // A zeroed row (cursor 0, CRC 0, no bytes) passes every other check as an empty event.
  if (stored_cursor <= 0) {
    return absl::DataLossError(
        absl::StrCat("its cursor ", stored_cursor, " names no event (cursors start at 1)"));
  }
  auto cursor = static_cast<uint64_t>(stored_cursor);
  auto crc = static_cast<uint32_t>(sqlite3_column_int64(stmt, 1));
  const void* data = sqlite3_column_blob(stmt, 2);
  int size = sqlite3_column_bytes(stmt, 2);
  if (Crc(data, size) != crc) return absl::DataLossError("its CRC does not match its bytes");
  v1::Event event;
  if (!event.ParseFromArray(data, size)) {
    return absl::DataLossError("its bytes do not parse as an Event");
  }
  if (event.cursor() != cursor) {
    return absl::DataLossError(absl::StrCat("it holds the event of cursor ", event.cursor()));
  }
  return event;
}

// Steps `stmt` (columns cursor, crc, data) to its end and hands each row to `row`. Returns
// SQLite's last result: SQLITE_DONE when every row was read.
int ScanRows(sqlite3_stmt* stmt,
             const std::function<void(uint64_t cursor, absl::StatusOr<v1::Event>)>& row) {
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    row(static_cast<uint64_t>(sqlite3_column_int64(stmt, 0)), DecodeRow(stmt));
  }
  return rc;
}

void WarnDamagedRow(const std::string& path, uint64_t cursor, const absl::Status& why) {
  spdlog::warn("journal {}: dropping the event of cursor {}: {}", path, cursor, std::string(why.message()));
}

void WarnCutWalTail(const std::string& path, const WalTail& tail) {
  if (tail.cut_bytes == 0) return;
  if (tail.torn) {
    spdlog::error(
        "journal {}: its write-ahead log ends in {} bytes (frames: {}) that are torn or damaged "
        "after the last intact commit (a power loss? a bad disk?); they are cut off, and the "
        "events of the transactions in them are lost; the rest loads",
        path, tail.cut_bytes, tail.cut_frames);
  } else {
    spdlog::warn(
        "journal {}: its write-ahead log ends in a transaction that never committed (frames: "
        "{}); it is cut off (no reply had reported its events)",
        path, tail.cut_frames);
  }
}

// Opens (creating if need be) and checks the database. DATA_LOSS when the file is damaged.
absl::StatusOr<Db> OpenDatabase(const std::string& path, bool durable) {
  sqlite3* raw = nullptr;
  // SQLite's unix VFS opens every file O_CLOEXEC; workers inherit none of them. NOMUTEX:
  // Journal serializes its calls itself.
  int rc = sqlite3_open_v2(path.c_str(), &raw,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  Db db(raw);  // the handle exists (and must be closed) even when the open failed
  if (rc != SQLITE_OK) return SqliteError(path, db.get(), rc, "open");
  if (rc = sqlite3_busy_timeout(db.get(), 1000); rc != SQLITE_OK) {
    return SqliteError(path, db.get(), rc, "busy timeout");
  }
  // Exclusive locking before the first WAL access: the WAL index lives in our memory (no
  // -shm file) and no other process can open the journal behind our back. auto_vacuum only
  // takes effect on a new file, which is when it is needed: Compact gives pages back. A page
  // cache of 256 KiB, not 2 MiB: appends touch the last pages alone, reads happen at start,
  // and the 2 MiB stayed in proctord's RSS (journal_bench: append and compaction times the
  // same within the noise).
  const std::string pragmas = absl::StrCat(
      "PRAGMA locking_mode=EXCLUSIVE; PRAGMA auto_vacuum=INCREMENTAL; PRAGMA synchronous=",
      durable ? "FULL" : "NORMAL", "; PRAGMA journal_size_limit=4194304; PRAGMA cache_size=-256;");
  if (absl::Status s = Exec(path, db.get(), pragmas.c_str()); !s.ok()) return s;
  absl::StatusOr<std::string> mode = QueryText(path, db.get(), "PRAGMA journal_mode=WAL");
  if (!mode.ok()) return mode.status();
  if (*mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": SQLite cannot use a write-ahead log here (journal mode ", *mode,
                     ")"));
  }
  // quick_check reads every page once: damage is found here, where the file can still be
  // moved aside, rather than halfway through Load.
  absl::StatusOr<std::string> check = QueryText(path, db.get(), "PRAGMA quick_check");
  if (!check.ok()) return check.status();
  if (*check != "ok") return absl::DataLossError(absl::StrCat(path, ": damaged: ", *check));
  absl::StatusOr<int64_t> format = QueryInt(path, db.get(), "PRAGMA user_version");
  if (!format.ok()) return format.status();
  if (*format > kFormat) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": written by a newer proctord (format ", *format, "; this one reads ", kFormat,
        ")"));
  }
  // BEGIN EXCLUSIVE takes the write lock now, so a second proctord fails here, not later.
  std::string schema =
      absl::StrCat("BEGIN EXCLUSIVE;", kSchema, "PRAGMA user_version=", kFormat, ";COMMIT;");
  if (absl::Status s = Exec(path, db.get(), schema.c_str()); !s.ok()) return s;
  return db;
}

// Renames the damaged database and its -wal and -shm files to `<path>.corrupt-<UTC time>`.
absl::StatusOr<std::string> MoveAside(const std::string& path) {
  std::string aside = absl::StrCat(
      path, ".corrupt-", absl::FormatTime("%Y%m%dT%H%M%E6SZ", absl::Now(), absl::UTCTimeZone()));
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::string from = path + suffix;
    std::string to = aside + suffix;
    if (rename(from.c_str(), to.c_str()) == 0) continue;
    int err = errno;
    if (err == ENOENT && *suffix != '\0') continue;  // no log or index: nothing to move
    return absl::InternalError(
        absl::StrCat("moving ", from, " aside to ", to, ": ", std::strerror(err)));
  }
  return aside;
}

struct Salvaged {
  std::vector<v1::Event> events;  // rows that passed their checks, in cursor order
  uint64_t max_cursor = 0;        // the highest cursor found anywhere
  size_t dropped = 0;
};

// Reads what can still be read from a damaged database: every step may fail, and whatever
// came before the failure is kept.
Salvaged Salvage(const std::string& path) {
  Salvaged out;
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
  Db db(raw);
  if (rc != SQLITE_OK) return out;
  // No -shm beside the evidence.
  sqlite3_exec(db.get(), "PRAGMA locking_mode=EXCLUSIVE", nullptr, nullptr, nullptr);
  for (const char* sql : {"SELECT value FROM meta WHERE key = 'last_cursor'",
                          "SELECT max(cursor) FROM events"}) {
    absl::StatusOr<int64_t> cursor = QueryInt(path, db.get(), sql);
    if (cursor.ok() && *cursor > 0) {
      out.max_cursor = std::max(out.max_cursor, static_cast<uint64_t>(*cursor));
    }
  }
  absl::StatusOr<Stmt> rows =
      Prepare(path, db.get(), "SELECT cursor, crc, data FROM events ORDER BY cursor");
  if (rows.ok()) {
    ScanRows(rows->get(), [&](uint64_t cursor, absl::StatusOr<v1::Event> event) {
      // A negative stored cursor reads as above INT64_MAX: no cursor could follow it.
      if (static_cast<int64_t>(cursor) > 0) out.max_cursor = std::max(out.max_cursor, cursor);
      if (event.ok()) {
        out.events.push_back(*std::move(event));
      } else {
        WarnDamagedRow(path, cursor, event.status());
        ++out.dropped;
      }
    });
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path, bool durable) {
  // SQLite drops the end of a log left behind that it cannot replay without a word: read it
  // first, so that the loss is told. (Unreadable, it fails SQLite's open below as well.)
  absl::StatusOr<WalTail> wal_tail = ReadWalTailFile(path + "-wal");
  absl::StatusOr<Db> db = OpenDatabase(path, durable);
  if (db.ok() && wal_tail.ok()) WarnCutWalTail(path, *wal_tail);
  std::string aside;
  Salvaged salvaged;
  if (!db.ok()) {
    if (!absl::IsDataLoss(db.status())) return db.status();
    absl::StatusOr<std::string> moved = MoveAside(path);
    if (!moved.ok()) return moved.status();
    aside = *std::move(moved);
    salvaged = Salvage(aside);
    spdlog::error(
        "{}; moved it aside to {} and started a fresh journal with the {} events "
        "that could be read ({} dropped), cursors continuing above {}",
        std::string(db.status().message()), aside, salvaged.events.size(), salvaged.dropped,
        salvaged.max_cursor);
    db = OpenDatabase(path, durable);
    if (!db.ok()) return db.status();
  }
  std::unique_ptr<Journal> journal(new Journal(path, db->release()));
  if (absl::Status s = journal->Init(); !s.ok()) return s;
  if (!aside.empty()) {
    if (absl::Status s = journal->Restore(aside, salvaged.events, salvaged.max_cursor,
                                          salvaged.dropped);
        !s.ok()) {
      return s;
    }
  }
  return journal;
}

Journal::Journal(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

Journal::~Journal() {
  absl::MutexLock lock(&mu_);
  sqlite3_finalize(insert_);
  sqlite3_finalize(write_meta_);
  sqlite3_close_v2(db_);
}

absl::Status Journal::Init() {
  absl::MutexLock lock(&mu_);
  for (auto [stmt, sql] :
       {std::pair{&insert_, "INSERT INTO events(cursor, crc, data, process, session) "
                            "VALUES (?1, ?2, ?3, ?4, ?5)"},
        std::pair{&write_meta_, "INSERT OR REPLACE INTO meta(key, value) "
                                "VALUES ('last_cursor', ?1), ('first_cursor', ?2)"}}) {
    absl::StatusOr<Stmt> prepared = Prepare(path_, db_, sql);
    if (!prepared.ok()) return prepared.status();
    *stmt = prepared->release();
  }
  // Append writes no meta row: the last cursor is the highest row, or the meta value
  // written by whatever removed rows (Compact, Load), whichever is higher.
  absl::StatusOr<int64_t> meta_last =
      QueryInt(path_, db_, "SELECT value FROM meta WHERE key = 'last_cursor'");
  if (!meta_last.ok()) return meta_last.status();
  absl::StatusOr<int64_t> row_last = QueryInt(path_, db_, "SELECT max(cursor) FROM events");
  if (!row_last.ok()) return row_last.status();
  absl::StatusOr<int64_t> first =
      QueryInt(path_, db_, "SELECT value FROM meta WHERE key = 'first_cursor'");
  if (!first.ok()) return first.status();
  last_cursor_ = static_cast<uint64_t>(std::max(*meta_last, *row_last));
  first_cursor_ = std::max<uint64_t>(1, static_cast<uint64_t>(*first));
  return absl::OkStatus();
}

absl::Status Journal::Restore(const std::string& aside, const std::vector<v1::Event>& events,
                              uint64_t max_cursor, size_t dropped) {
  absl::MutexLock lock(&mu_);
  moved_aside_ = aside;
  salvage_dropped_ = dropped;
  // What was lost cannot be told apart from what was never written: nothing before the
  // recovery point can be resumed from.
  last_cursor_ = max_cursor;
  first_cursor_ = max_cursor + 1;
  return InTransactionLocked([&]() -> absl::Status {
    mu_.AssertHeld();  // InTransactionLocked runs it under the lock
    for (const v1::Event& event : events) {
      if (absl::Status s = InsertLocked(event); !s.ok()) return s;
    }
    return WriteMetaLocked();
  });
}

absl::Status Journal::InTransactionLocked(const std::function<absl::Status()>& body) {
  if (absl::Status s = Exec(path_, db_, "BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status status = body();
  if (status.ok()) status = Exec(path_, db_, "COMMIT");
  // A failed COMMIT may leave the transaction open; ROLLBACK fails harmlessly if SQLite has
  // rolled it back already.
  if (!status.ok()) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return status;
}

absl::Status Journal::InsertLocked(const v1::Event& event) {
  std::string bytes;
  if (!event.SerializeToString(&bytes)) {
    return absl::InternalError(
        absl::StrCat(path_, ": cannot serialize the event of cursor ", event.cursor()));
  }
  std::optional<uint64_t> process, session;
  if (event.has_process()) {
    process = event.process().id();
  } else {
    session = event.session();
  }
  int rc = Binder(insert_)
               .Int(event.cursor())
               .Int(Crc(bytes.data(), bytes.size()))
               .Blob(bytes)
               .IntOrNull(process)
               .IntOrNull(session)
               .Run();
  if (rc != SQLITE_OK) return SqliteError(path_, db_, rc, "insert event");
  return absl::OkStatus();
}

absl::Status Journal::WriteMetaLocked() {
  int rc = Binder(write_meta_).Int(last_cursor_).Int(first_cursor_).Run();
  if (rc != SQLITE_OK) return SqliteError(path_, db_, rc, "write meta");
  return absl::OkStatus();
}

absl::Status Journal::DeleteLocked(const std::vector<uint64_t>& cursors) {
  absl::StatusOr<Stmt> stmt = Prepare(path_, db_, "DELETE FROM events WHERE cursor = ?1");
  if (!stmt.ok()) return stmt.status();
  for (uint64_t cursor : cursors) {
    if (int rc = Binder(stmt->get()).Int(cursor).Run(); rc != SQLITE_OK) {
      return SqliteError(path_, db_, rc, "delete event");
    }
  }
  return WriteMetaLocked();
}

absl::Status Journal::Append(std::vector<v1::Event>& events) {
  if (events.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  uint64_t cursor = last_cursor_;
  absl::Status status = InTransactionLocked([&]() -> absl::Status {
    mu_.AssertHeld();  // InTransactionLocked runs it under the lock
    for (v1::Event& event : events) {
      // Numbered here, or already numbered by the caller (higher than any before).
      if (event.cursor() == 0) {
        event.set_cursor(++cursor);
      } else if (event.cursor() > cursor) {
        cursor = event.cursor();
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "event cursor ", event.cursor(), " is not above the journal's last, ", cursor));
      }
      if (absl::Status s = InsertLocked(event); !s.ok()) return s;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) {
    for (v1::Event& event : events) event.set_cursor(0);
    return status;
  }
  last_cursor_ = cursor;
  return absl::OkStatus();
}

absl::StatusOr<Journal::Loaded> Journal::Load() {
  absl::MutexLock lock(&mu_);
  Loaded loaded;
  absl::StatusOr<Stmt> stmt =
      Prepare(path_, db_, "SELECT cursor, crc, data FROM events ORDER BY cursor");
  if (!stmt.ok()) return stmt.status();
  std::vector<uint64_t> damaged;
  int rc = ScanRows(stmt->get(), [&](uint64_t cursor, absl::StatusOr<v1::Event> event) {
    if (event.ok()) {
      loaded.events.push_back(*std::move(event));
    } else {
      WarnDamagedRow(path_, cursor, event.status());
      damaged.push_back(cursor);
    }
  });
  if (rc != SQLITE_DONE) return SqliteError(path_, db_, rc, "read events");
  if (!damaged.empty()) {
    // A deleted row is a gap: watchers may not resume from before it.
    // Rows with no valid cursor (DecodeRow) say nothing of where the gap is.
    uint64_t highest = 0;
    for (uint64_t cursor : damaged) {
      if (static_cast<int64_t>(cursor) > 0) highest = std::max(highest, cursor);
    }
    uint64_t old_first = first_cursor_;
    first_cursor_ = std::max(first_cursor_, highest + 1);
    if (absl::Status s = InTransactionLocked([&] {
          mu_.AssertHeld();  // InTransactionLocked runs it under the lock
          return DeleteLocked(damaged);
        }); !s.ok()) {
      first_cursor_ = old_first;
      return s;
    }
  }
  loaded.last_cursor = last_cursor_;
  loaded.corrupt_dropped = damaged.size() + salvage_dropped_;
  loaded.moved_aside = moved_aside_;
  return loaded;
}

absl::StatusOr<std::vector<v1::Event>> Journal::ReadAfter(uint64_t since, size_t limit) {
  absl::MutexLock lock(&mu_);
  if (since + 1 < first_cursor_) {
    return absl::OutOfRangeError(
        absl::StrCat("journal ", path_, ": cursor ", since,
                     " is older than the oldest it can resume from (", first_cursor_ - 1, ")"));
  }
  std::vector<v1::Event> events;
  absl::StatusOr<Stmt> stmt = Prepare(
      path_, db_, "SELECT cursor, crc, data FROM events WHERE cursor > ?1 ORDER BY cursor LIMIT ?2");
  if (!stmt.ok()) return stmt.status();
  if (int rc = Binder(stmt->get()).Int(since).Int(std::min<uint64_t>(limit, INT64_MAX)).rc();
      rc != SQLITE_OK) {
    return SqliteError(path_, db_, rc, "read events");
  }
  absl::Status damage;
  int rc = ScanRows(stmt->get(), [&](uint64_t cursor, absl::StatusOr<v1::Event> event) {
    if (!damage.ok()) return;
    if (event.ok()) {
      events.push_back(*std::move(event));
    } else {
      // Not skipped: the reader would never learn of the gap.
      damage = absl::DataLossError(absl::StrCat("journal ", path_, ": the event of cursor ",
                                                cursor, " is damaged: ",
                                                event.status().message()));
    }
  });
  if (!damage.ok()) return damage;
  if (rc != SQLITE_DONE) return SqliteError(path_, db_, rc, "read events");
  return events;
}

uint64_t Journal::FirstCursor() {
  absl::MutexLock lock(&mu_);
  return first_cursor_;
}

uint64_t Journal::LastCursor() {
  absl::MutexLock lock(&mu_);
  return last_cursor_;
}

absl::StatusOr<Journal::CompactStats> Journal::Compact(
    const absl::flat_hash_set<uint64_t>& retained_ids,
    const absl::flat_hash_set<uint64_t>& open_sessions, uint64_t keep_tail) {
  absl::MutexLock lock(&mu_);
  CompactStats stats;
  // Newest first, so the first row seen of a process or session is its latest.
  absl::StatusOr<Stmt> stmt =
      Prepare(path_, db_, "SELECT cursor, process, session FROM events ORDER BY cursor DESC");
  if (!stmt.ok()) return stmt.status();
  const uint64_t tail_after = keep_tail >= last_cursor_ ? 0 : last_cursor_ - keep_tail;
  absl::flat_hash_set<uint64_t> seen_processes, seen_sessions;
  std::vector<uint64_t> drop;
  int rc;
  while ((rc = sqlite3_step(stmt->get())) == SQLITE_ROW) {
    ++stats.rows_before;
    auto cursor = static_cast<uint64_t>(sqlite3_column_int64(stmt->get(), 0));
    bool is_process = sqlite3_column_type(stmt->get(), 1) != SQLITE_NULL;
    auto key = static_cast<uint64_t>(sqlite3_column_int64(stmt->get(), is_process ? 1 : 2));
    bool latest = (is_process ? seen_processes : seen_sessions).insert(key).second;
    if (cursor > tail_after) continue;
    if (latest && (is_process ? retained_ids : open_sessions).contains(key)) continue;
    drop.push_back(cursor);
  }
  if (rc != SQLITE_DONE) return SqliteError(path_, db_, rc, "read events");
  stmt->reset();  // the read is finished before the writes
  if (!drop.empty()) {
    uint64_t old_first = first_cursor_;
    first_cursor_ = std::max(first_cursor_, drop.front() + 1);  // drop is newest first
    if (absl::Status s = InTransactionLocked([&] {
          mu_.AssertHeld();  // InTransactionLocked runs it under the lock
          return DeleteLocked(drop);
        }); !s.ok()) {
      first_cursor_ = old_first;
      return s;
    }
    // The rows are gone either way; giving pages back to the file system is housekeeping.
    if (absl::Status s = Exec(path_, db_, "PRAGMA incremental_vacuum; "
                                          "PRAGMA wal_checkpoint(TRUNCATE);");
        !s.ok()) {
      spdlog::warn("journal {}: after compaction: {}", path_, std::string(s.message()));
    }
  }
  stats.rows_after = stats.rows_before - drop.size();
  stats.first_cursor = first_cursor_;
  return stats;
}

}  // namespace proctor
