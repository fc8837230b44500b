// IdAllocator: process ids that are never reused within a state directory.
//
// Ids are handed out from blocks whose upper end is written to `<state-dir>/next-id` before
// any id of the block is used, so a restart (even after a crash) continues above every id
// ever returned, at the cost of one small write per block rather than per process.
// Thread-safe.
#ifndef PROCTOR_SERVER_ID_ALLOCATOR_H_
#define PROCTOR_SERVER_ID_ALLOCATOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace proctor {

class IdAllocator {
 public:
  // `path` empty: ids live in memory only (unit tests).
  static absl::StatusOr<std::unique_ptr<IdAllocator>> Open(const std::string& path,
                                                           uint64_t block_size = 1024);

  absl::StatusOr<uint64_t> Next();
  // Whether `id` may have been handed out (by this allocator, or before a restart).
  bool Issued(uint64_t id);

 private:
  IdAllocator(std::string path, uint64_t next, uint64_t block_size);
  absl::Status PersistLocked(uint64_t limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const uint64_t block_size_;
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_);
  uint64_t limit_ ABSL_GUARDED_BY(mu_) = 0;  // ids below this are persisted as used
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_ID_ALLOCATOR_H_
