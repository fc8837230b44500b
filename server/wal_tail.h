// WalTail: what SQLite will throw away from the end of a write-ahead log when it opens it.
//
// A WAL (https://www.sqlite.org/fileformat2.html#walformat) is a header and frames; each
// frame carries the header's salts and a checksum chained over every frame before it, and
// the last frame of a transaction is marked as its commit. When SQLite opens a database whose
// WAL was left behind by a process that died, it replays frames up to the last commit frame
// whose chain is intact, and drops the rest without a word: a transaction that was being
// written, or one torn or damaged on disk (a power loss with synchronous=NORMAL, a bad
// block). This reads the log as SQLite will, before SQLite does, so that the loss is logged.
// Frames of an older generation (other salts) that a reset left behind are not a loss.
#ifndef PROCTOR_SERVER_WAL_TAIL_H_
#define PROCTOR_SERVER_WAL_TAIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace proctor {

struct WalTail {
  uint64_t kept_bytes = 0;  // header and frames up to the last intact commit
  uint64_t cut_bytes = 0;   // bytes of this generation after them, which SQLite drops
  size_t cut_frames = 0;    // frames in cut_bytes, the last one counted even if partial
  bool torn = false;        // the cut part ends in a partial frame or a bad checksum
};

// Reads a WAL's content. An empty file, or one that is not a WAL, cuts nothing.
WalTail ReadWalTail(absl::string_view wal);

// The same for the file at `path`; a missing file cuts nothing. An error only when the file
// exists and cannot be read.
absl::StatusOr<WalTail> ReadWalTailFile(const std::string& path);

}  // namespace proctor

#endif  // PROCTOR_SERVER_WAL_TAIL_H_
