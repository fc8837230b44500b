// CaptureFiles: the files workers' stdout and stderr go to, made ahead of time.
//
// Creating a file is the slowest step of a start on some filesystems (ext4 on a virtual disk:
// about 0.9 ms, against about 20 µs to rename one), and every worker needs two. So a
// background thread keeps a stock of empty spare files in <dir>/spare, Prepare() renames a
// spare to where a new worker's output goes, and Recycle() empties the files of forgotten
// records and puts them back in stock. When the stock is empty, Prepare() does nothing and
// the file is created at spawn as usual. Thread-safe.
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
  // Takes back a capture file no longer needed: emptied into the stock, or removed.
  void Recycle(const std::string& path);

  size_t spares();

 private:
  void Refill();

  const std::string spare_dir_;
  const size_t stock_;
  absl::Mutex mu_;
  std::vector<std::string> spares_ ABSL_GUARDED_BY(mu_);
  uint64_t next_name_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread refill_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_CAPTURE_FILES_H_
