#include "server/capture_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace proctor {

CaptureFiles::CaptureFiles(std::string dir, size_t stock)
    : spare_dir_(dir + "/spare"), stock_(stock) {
  mkdir(spare_dir_.c_str(), 0700);
  // Spares from an earlier run are used, but only plain empty files.
  if (DIR* d = opendir(spare_dir_.c_str())) {
    absl::MutexLock lock(&mu_);
    while (dirent* entry = readdir(d)) {
      if (entry->d_name[0] == '.') continue;
      std::string path = absl::StrCat(spare_dir_, "/", entry->d_name);
      struct stat st;
      if (lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0) {
        spares_.push_back(path);
      } else {
        unlink(path.c_str());
      }
    }
    closedir(d);
    next_name_ = spares_.size();
  }
  refill_ = std::thread([this] { Refill(); });
}

CaptureFiles::~CaptureFiles() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  refill_.join();
}

void CaptureFiles::Refill() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(this, &CaptureFiles::RefillDue));
    while (!stopping_ && spares_.size() < stock_) {
      std::string path;
      // Unique names even across runs: the counter goes on from the spares found at start.
      do {
        path = absl::StrCat(spare_dir_, "/", next_name_++);
      } while (access(path.c_str(), F_OK) == 0);
      mu_.Unlock();
      int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd >= 0) close(fd);
      mu_.Lock();
      if (fd < 0) break;  // a full or read-only disk: spawning will say so itself
      spares_.push_back(std::move(path));
    }
    if (stopping_) return;
    short_after_failure_ = spares_.size() < stock_;
    // Creation failed: try again later rather than spin.
    if (short_after_failure_ &&
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1))) {
      return;
    }
  }
}

bool CaptureFiles::RefillDue() const {
  // Below half, to make the slow creations in bulk; or short after a failed creation.
  return stopping_ || short_after_failure_ || spares_.size() < (stock_ + 1) / 2;
}

void CaptureFiles::Prepare(const std::string& path) {
  std::string spare;
  {
    absl::MutexLock lock(&mu_);
    if (spares_.empty()) return;
    spare = std::move(spares_.back());
    spares_.pop_back();
  }
  rename(spare.c_str(), path.c_str());
}


}  // namespace proctor
