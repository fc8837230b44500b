// LogTrimmer: keeps workers' capture files from filling the disk.
//
// Workers write their output straight into their capture files (O_APPEND), so proctord
// cannot refuse a write. Instead, about once per `every`, each capture file still in use
// whose data is larger than `max_bytes` has its oldest part dropped: punched out as a hole
// (fallocate PUNCH_HOLE), keeping the newest `max_bytes / 2` or more. The file keeps its length,
// so the writer's O_APPEND and readers' offsets stay valid; Logs readers skip the hole
// (SEEK_DATA). A worker that writes faster than that overshoots for up to `every`.
// Filesystems without hole punching are logged once and left uncapped.
#ifndef PROCTOR_SERVER_LOG_TRIMMER_H_
#define PROCTOR_SERVER_LOG_TRIMMER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace proctor {

class LogTrimmer {
 public:
  // The capture files that may still grow; called on the trimmer's thread.
  using FilesInUse = std::function<std::vector<std::string>()>;

  // Starts a thread that trims every `every`. REQUIRES: max_bytes > 0.
  LogTrimmer(int64_t max_bytes, absl::Duration every, FilesInUse files_in_use);
  ~LogTrimmer();  // stops the thread

  // Drops the oldest part of `path` if it holds more than `max_bytes` of data; returns
  // whether it did. NOT_FOUND when the file is gone; UNIMPLEMENTED where the filesystem
  // cannot punch holes.
  static absl::StatusOr<bool> Trim(const std::string& path, int64_t max_bytes);

 private:
  void Run();

  const int64_t max_bytes_;
  const absl::Duration every_;
  const FilesInUse files_in_use_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_LOG_TRIMMER_H_
