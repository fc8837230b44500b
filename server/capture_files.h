// CaptureFiles: the files workers' stdout and stderr go to, made ahead of time.
//
// Creating a file is the slowest step of a start on some filesystems (ext4 on a virtual disk:
// about 0.9 ms, against about 20 µs to rename one), and every worker needs two. So a
// background thread keeps a stock of empty spare files in <dir>/spare, and Prepare() renames
// a spare to where a new worker's output goes. When the stock is empty, Prepare() does
// nothing and the file is created at spawn as usual. Thread-safe.
//
// Files of forgotten records come back into the stock (emptied: renaming costs far less than
// creating) only when no process has them open any more, as a write lease proves; otherwise
// they are removed. A process that escaped its tree may still hold an old capture file open,
// and what it writes must never show up in the output of another record.
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
  // Keeps up to `stock` spares in <dir>/spare (created if missing; spares left by an earlier
  // run are used).
  CaptureFiles(std::string dir, size_t stock);
  ~CaptureFiles();

  // Puts an empty file at `path` if a spare is at hand.
  void Prepare(const std::string& path);
  // Takes back a capture file no longer needed: emptied into the stock if nothing has it
  // open, else removed.
  void Recycle(const std::string& path);


 private:
  void Refill();
  bool RefillDue() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Empties `path` and moves it to `spare` if no open file description of it exists.
  static bool TakeBackUnused(const std::string& path, const std::string& spare);

  const std::string spare_dir_;
  const size_t stock_;
  absl::Mutex mu_;
  std::vector<std::string> spares_ ABSL_GUARDED_BY(mu_);
  uint64_t next_name_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool short_after_failure_ ABSL_GUARDED_BY(mu_) = false;
  std::thread refill_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_CAPTURE_FILES_H_
