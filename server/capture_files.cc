#include "server/capture_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace proctor {

CaptureFiles::CaptureFiles(std::string dir, size_t stock, size_t first_stock)
    : spare_dir_(dir + "/spare"),
      stock_(stock),
      target_(std::min(stock, std::max<size_t>(first_stock, 1))) {
  signal(SIGIO, SIG_IGN);  // a broken lease must not end the process (see the header)
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
        // New names go on past every name found: nothing but this class adds to the
        // directory, so they are unique without asking the filesystem.
        uint64_t number;
        if (absl::SimpleAtoi(entry->d_name, &number)) {
          next_name_ = std::max(next_name_, number + 1);
        }
      } else {
        unlink(path.c_str());
      }
    }
    closedir(d);
    target_ = std::min(stock_, std::max(target_, spares_.size()));
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
    while (!stopping_ && spares_.size() < target_) {
      std::string path = NewSpareNameLocked();
      mu_.Unlock();
      int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd >= 0) close(fd);
      mu_.Lock();
      if (fd < 0) break;  // a full or read-only disk: spawning will say so itself
      spares_.push_back(std::move(path));
    }
    if (stopping_) return;
    short_after_failure_ = spares_.size() < target_;
    // Creation failed: try again later rather than spin.
    if (short_after_failure_ &&
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1))) {
      return;
    }
  }
}

void CaptureFiles::Recycle(const std::string& path) {
  std::string spare;
  {
    absl::MutexLock lock(&mu_);
    if (spares_.size() < stock_) spare = NewSpareNameLocked();
  }
  if (spare.empty() || !TakeBack(path, spare, /*empty_it=*/true)) {
    unlink(path.c_str());
    return;
  }
  absl::MutexLock lock(&mu_);
  spares_.push_back(std::move(spare));
}

bool CaptureFiles::TakeBack(const std::string& path, const std::string& spare, bool empty_it) {
  // O_NONBLOCK: a file someone holds a lease on is not waited for.
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  // The kernel grants a write lease only while no other open file description of the file
  // exists, anywhere: then no process can write to it any more (none has it open, and only
  // proctord knows where it is), and it can be emptied and reused safely. A process that
  // escaped its tree and still holds it makes this fail. Readers' opens fail while the lease
  // is held (they use O_NONBLOCK), and find the path gone afterwards.
  bool taken = false;
  if (fcntl(fd, F_SETLEASE, F_WRLCK) == 0) {
    struct stat st;
    const bool empty = empty_it ? ftruncate(fd, 0) == 0
                                : fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0;
    taken = empty && rename(path.c_str(), spare.c_str()) == 0;
    fcntl(fd, F_SETLEASE, F_UNLCK);
  }
  close(fd);
  return taken;
}

bool CaptureFiles::RecycleIfEmpty(const std::string& path) {
  std::string spare;
  {
    absl::MutexLock lock(&mu_);
    if (spares_.size() >= stock_) return false;  // kept with its record, taken back later
    spare = NewSpareNameLocked();
  }
  if (!TakeBack(path, spare, /*empty_it=*/false)) return false;
  absl::MutexLock lock(&mu_);
  spares_.push_back(std::move(spare));
  return true;
}

size_t CaptureFiles::target() const {
  absl::MutexLock lock(&mu_);
  return target_;
}

std::string CaptureFiles::NewSpareNameLocked() {
  return absl::StrCat(spare_dir_, "/", next_name_++);
}

bool CaptureFiles::RefillDue() const {
  // Below half, to make the slow creations in bulk; or short after a failed creation.
  return stopping_ || short_after_failure_ || spares_.size() < (target_ + 1) / 2;
}

void CaptureFiles::Prepare(const std::string& path) {
  std::string spare;
  {
    absl::MutexLock lock(&mu_);
    if (spares_.empty()) {
      // Demand outran the stock: keep more from now on (the refill wakes on the change).
      target_ = std::min(stock_, std::max<size_t>(target_ * 2, 1));
      return;
    }
    spare = std::move(spares_.back());
    spares_.pop_back();
  }
  rename(spare.c_str(), path.c_str());
}


}  // namespace proctor
