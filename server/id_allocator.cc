#include "server/id_allocator.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/posix_error.h"

namespace proctor {

absl::StatusOr<std::unique_ptr<IdAllocator>> IdAllocator::Open(const std::string& path,
                                                               uint64_t block_size) {
  uint64_t next = 1;
  if (!path.empty()) {
    std::ifstream in(path);
    std::string text;
    if (in && std::getline(in, text)) {
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &next) || next == 0) {
        return absl::DataLossError(absl::StrCat(path, ": not an id counter: \"", text, "\""));
      }
    }
  }
  return std::unique_ptr<IdAllocator>(new IdAllocator(path, next, block_size));
}

IdAllocator::IdAllocator(std::string path, uint64_t next, uint64_t block_size)
    : path_(std::move(path)), block_size_(block_size), next_(next) {}

absl::Status IdAllocator::PersistLocked(uint64_t limit) {
  if (path_.empty()) return absl::OkStatus();
  // Write-then-rename so a crash leaves either the old or the new counter, never half of one.
  std::string tmp = path_ + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(tmp, errno);
  std::string text = absl::StrCat(limit, "\n");
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok || rename(tmp.c_str(), path_.c_str()) != 0) {
    return PosixError(path_, ok ? errno : err);
  }
  return absl::OkStatus();
}

bool IdAllocator::Issued(uint64_t id) {
  absl::MutexLock lock(&mu_);
  return id > 0 && id < next_;
}

absl::StatusOr<uint64_t> IdAllocator::Next() {
  absl::MutexLock lock(&mu_);
  if (next_ >= limit_) {
    if (absl::Status s = PersistLocked(next_ + block_size_); !s.ok()) return s;
    limit_ = next_ + block_size_;
  }
  return next_++;
}

}  // namespace proctor
