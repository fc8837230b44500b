// CaptureFiles: the files workers' stdout and stderr go to, made ahead of time.
//
// Creating a file is the slowest step of a start on some filesystems (ext4 on a virtual disk:
// about 0.9 ms, against about 20 µs to rename one), and every worker needs two. So a
// background thread keeps a stock of empty spare files in <dir>/spare, and Prepare() renames
// a spare to where a new worker's output goes. When the stock is empty, Prepare() does
// nothing and the file is created at spawn as usual. Thread-safe.
//
// Files come back into the stock rather than being made anew, so that in steady state no
// inode is created or freed per worker (on ext4 under create/unlink churn, a creation costs
// about 1 ms of CPU): a worker's files when it has ended and they stayed empty
// (RecycleIfEmpty), and a forgotten record's files, emptied (Recycle). Either happens only
// when no process has the file open any more, as a write lease proves. A process that escaped
// its tree may still hold an old capture file open, and what it writes must never show up in
// the output of another record. Readers open capture files with O_NONBLOCK, so that an open
// racing with the lease fails (and is retried on the path) instead of landing on a file that
// is about to become someone else's.
//
// A lease is broken by any open of its file, and the kernel tells the holder with SIGIO, whose
// default action ends the process: a worker opening its own capture file (by /proc/self/fd/1,
// say) or a Logs reader racing with a take-back would end proctord. Constructing a
// CaptureFiles therefore ignores SIGIO in the whole process; the lease is let go within a
// rename's time anyway.
//
// The stock starts small (kFirstStock by default) and doubles, up to `stock`, each time a
// Prepare finds it empty: workers whose output is empty give their files back when they end,
// and only workloads that keep output need many spares.
#ifndef PROCTOR_SERVER_CAPTURE_FILES_H_
#define PROCTOR_SERVER_CAPTURE_FILES_H_

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace proctor {

class CaptureFiles {
 public:
  static constexpr size_t kFirstStock = 64;

  // Keeps up to `stock` spares in <dir>/spare (created if missing; spares left by an earlier
  // run are used), `first_stock` of them to begin with.
  CaptureFiles(std::string dir, size_t stock, size_t first_stock = kFirstStock);
  ~CaptureFiles();

  // Puts an empty file at `path` if a spare is at hand.
  void Prepare(const std::string& path);
  // Takes back a capture file no longer needed: emptied into the stock if nothing has it
  // open, else removed.
  void Recycle(const std::string& path);
  // Takes back the capture file of a worker that has ended if it is empty, nothing has it
  // open and the stock has room (files given back are kept up to `stock`, whatever the
  // refill's target); otherwise leaves it where it is. Returns whether it did
  // (then `path` no longer exists, and its output was empty).
  bool RecycleIfEmpty(const std::string& path);
  // How many spares the stock is kept at now (between `first_stock` and `stock`).
  size_t target() const;


 private:
  void Refill();
  bool RefillDue() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves `path` to `spare` if no open file description of it exists (under a write lease),
  // emptying it first if `empty_it`, else only if it is empty. Returns whether it did.
  static bool TakeBack(const std::string& path, const std::string& spare, bool empty_it);
  // A name in the spare directory that no file there has.
  std::string NewSpareNameLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string spare_dir_;
  const size_t stock_;
  mutable absl::Mutex mu_;
  size_t target_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> spares_ ABSL_GUARDED_BY(mu_);
  uint64_t next_name_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool short_after_failure_ ABSL_GUARDED_BY(mu_) = false;
  std::thread refill_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_CAPTURE_FILES_H_
