// Journal: the events proctord rebuilds its records from, in one SQLite database (WAL mode).
//
// Each row is one serialized v1::Event keyed by its cursor (INTEGER PRIMARY KEY), with a
// CRC32 (zlib) of the bytes beside it; the process id or session id it concerns is stored
// as a column too, for compaction. The last cursor is the highest row's, or the one a meta
// table keeps whenever rows are removed (with the start of the complete tail), so cursors
// are strictly increasing and never reused within the file, even after compaction or the
// loss of rows.
//
// Durability. Append returns once its transaction has committed. With `durable` false
// (synchronous=NORMAL) a committed Append survives a crash of the process; after a power
// loss the last commits may roll back, but the file stays consistent. With `durable` true
// (synchronous=FULL) every commit is synced to disk before Append returns. Batching is the
// caller's: one Append is one transaction, so an event-loop turn's events should go in one
// call (group commit; see tests/bench/journal_bench.cc for the cost per batch size).
//
// Damage. A write-ahead log left by a proctord that died is replayed by SQLite up to its last
// intact commit; what follows (a transaction that never committed, or a torn or damaged
// end) is cut off, and Open logs it (see wal_tail.h). Open runs SQLite's quick_check. A file SQLite cannot open as a database, or one
// whose structure is damaged, is moved aside (with its -wal and -shm files) to
// `<path>.corrupt-<UTC time>` and logged, and a fresh journal starts in its place. Whatever
// rows could still be read from the damaged file (and whose CRC matches) are copied into the
// fresh one, and its cursors continue above the highest cursor found anywhere in the damaged
// file (meta, rows). When nothing at all can be read, cursors start again from 0: a watcher
// holding a cursor from before must then be told its cursor is ahead (EventLog does). Load
// reports what was moved aside. Errors that are not damage (permissions, a full disk, the
// file locked by another proctord) are returned by Open, and nothing is moved.
// Load checks every row: a row whose CRC does not match, whose bytes do not parse, or whose
// event carries another cursor is logged (naming the cursor), deleted, and skipped.
//
// Compaction keeps the journal's size proportional to what is retained, not to how long
// proctord has run; see Compact.
//
// Resumption. FirstCursor() is the start of the complete tail: every event appended with a
// cursor >= FirstCursor() is still in the journal. Rows older than that may survive
// compaction (the latest event of each retained process), but they are not a history a
// watcher can resume from; ReadAfter(since) with since + 1 < FirstCursor() is OUT_OF_RANGE.
//
// The database is opened in exclusive locking mode: while a Journal has it open, no other
// process can read or write it (a second proctord on the same state directory fails to
// open it). Thread-safe: every call takes one mutex, so a ReadAfter waits for a running
// Append's commit.
#ifndef PROCTOR_SERVER_JOURNAL_H_
#define PROCTOR_SERVER_JOURNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proctor/v1/proctor.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace proctor {

class Journal {
 public:
  struct Loaded {
    std::vector<v1::Event> events;  // every row that survived its checks, in cursor order
    uint64_t last_cursor = 0;       // the last cursor ever assigned; the next is above it
    size_t corrupt_dropped = 0;     // rows deleted by this Load (and by Open's salvage)
    std::string moved_aside;        // where Open moved a damaged file; empty if it did not
  };

  struct CompactStats {
    size_t rows_before = 0;
    size_t rows_after = 0;
    uint64_t first_cursor = 0;  // FirstCursor() afterwards
  };

  // Opens or creates the journal at `path`; see the file comment for damage and durability.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const std::string& path, bool durable);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Writes the events in one transaction; returns once it has committed. An event without a
  // cursor (0) gets the next one; one that has a cursor keeps it, which must be above every
  // cursor before it (INVALID_ARGUMENT otherwise). On error nothing was written, no cursor
  // was used up, and the events' cursors are reset to 0. An empty vector writes nothing.
  absl::Status Append(std::vector<v1::Event>& events);

  // Every row, in cursor order, for a rebuild: the caller keeps, per process and session,
  // the latest event it finds. Deletes the damaged rows it finds (see the file comment).
  absl::StatusOr<Loaded> Load();

  // Up to `limit` events with cursors above `since`, in order. OUT_OF_RANGE when events
  // after `since` may have been compacted away (since + 1 < FirstCursor()).
  absl::StatusOr<std::vector<v1::Event>> ReadAfter(uint64_t since, size_t limit);

  // The start of the complete tail (see the file comment); 1 until a row is ever removed.
  uint64_t FirstCursor();
  // The last cursor assigned (0 before the first Append).
  uint64_t LastCursor();

  // Drops every event that a rebuild no longer needs, except the newest `keep_tail` cursors,
  // which stay whole so that watchers can resume from the journal. Outside that tail:
  // - a process event is kept only if it is the latest event of its process and the process
  //   is in `retained_ids` (its record still exists: running, or ended and not yet released
  //   or evicted); every event of any other process is dropped;
  // - a session event is kept only if it is the latest event of its session and the session
  //   is in `open_sessions`.
  // So after a Compact the journal holds at most |retained_ids| + |open_sessions| +
  // keep_tail rows, whatever proctord's age. The last cursor is kept (meta); FirstCursor()
  // moves above the highest cursor dropped. Free pages go back to the file system
  // (incremental vacuum) and the WAL is truncated.
  absl::StatusOr<CompactStats> Compact(const absl::flat_hash_set<uint64_t>& retained_ids,
                                       const absl::flat_hash_set<uint64_t>& open_sessions,
                                       uint64_t keep_tail);

  const std::string& path() const { return path_; }

 private:
  Journal(std::string path, sqlite3* db);
  // Prepares the cached statements and reads the cursors from the file.
  absl::Status Init();
  // Fills a fresh journal with what Open salvaged from the damaged file moved to `aside`.
  absl::Status Restore(const std::string& aside, const std::vector<v1::Event>& events,
                       uint64_t max_cursor, size_t dropped);

  // Runs `body` in one transaction: committed if it succeeds, rolled back if it fails.
  absl::Status InTransactionLocked(const std::function<absl::Status()>& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes one cursor-stamped event.
  absl::Status InsertLocked(const v1::Event& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes last_cursor_ and first_cursor_ to the meta table.
  absl::Status WriteMetaLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Deletes rows and writes the meta values (the caller has moved first_cursor_).
  absl::Status DeleteLocked(const std::vector<uint64_t>& cursors)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_;  // owned; every use holds mu_
  sqlite3_stmt* insert_ ABSL_GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* write_meta_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t last_cursor_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t first_cursor_ ABSL_GUARDED_BY(mu_) = 1;
  std::string moved_aside_ ABSL_GUARDED_BY(mu_);
  size_t salvage_dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_JOURNAL_H_
