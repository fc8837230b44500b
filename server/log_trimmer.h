// LogTrimmer: keeps workers' capture files from filling the disk.
//
// Workers write their output straight into their capture files (O_APPEND), so proctord
// cannot refuse a write. Instead, about once per `every`, each capture file that grew since
// the last look and whose data is larger than `max_bytes` has its oldest part dropped: punched
// out as a hole (fallocate PUNCH_HOLE), keeping the newest `max_bytes / 2` or more. The file
// keeps its length, so the writer's O_APPEND and readers' offsets stay valid; Logs readers
// skip the hole (SEEK_DATA). A worker that writes faster than that overshoots for up to
// `every`. Filesystems without hole punching are logged once and left uncapped.
//
// Which files grew comes from one inotify watch (IN_MODIFY) on the capture directory, read
// once per `every`: files nobody writes cost nothing. Every file `files_in_use` names is
// examined instead at the first look (what grew before the trimmer started), when the
// kernel's event queue overflowed, and on every look where the directory cannot be watched.
#ifndef PROCTOR_SERVER_LOG_TRIMMER_H_
#define PROCTOR_SERVER_LOG_TRIMMER_H_

#include <atomic>
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
  // The capture files that may still grow (paths in `dir`); called on the trimmer's thread.
  using FilesInUse = std::function<std::vector<std::string>()>;

  // Starts a thread that trims the capture files in `dir` every `every`.
  // REQUIRES: max_bytes > 0.
  LogTrimmer(std::string dir, int64_t max_bytes, absl::Duration every, FilesInUse files_in_use);
  ~LogTrimmer();  // stops the thread

  // Drops the oldest part of `path` if it holds more than `max_bytes` of data; returns
  // whether it did. NOT_FOUND when the file is gone; UNIMPLEMENTED where the filesystem
  // cannot punch holes.
  static absl::StatusOr<bool> Trim(const std::string& path, int64_t max_bytes);

  // How many times a file was examined (one Trim each) since the start.
  uint64_t files_examined() const { return files_examined_.load(std::memory_order_relaxed); }
  // Whether growth is learnt from the watch (false: every file in use is examined each time).
  bool watching() const { return watching_.load(std::memory_order_relaxed); }

 private:
  void Run();
  // The capture files that grew since the last call, as paths; all files in use when that
  // cannot be known.
  std::vector<std::string> FilesToExamine();
  void Examine(const std::string& path);

  const std::string dir_;
  const int64_t max_bytes_;
  const absl::Duration every_;
  const FilesInUse files_in_use_;
  int inotify_fd_ = -1;  // watches dir_; -1 where it cannot be watched
  std::atomic<bool> watching_{false};
  bool examine_all_ = true;  // the first look, and after the event queue overflowed
  bool unsupported_logged_ = false;
  std::atomic<uint64_t> files_examined_{0};
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_LOG_TRIMMER_H_
