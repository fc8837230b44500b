#include "server/backoff.h"

#include <algorithm>

namespace proctor {

absl::Duration Backoff::DelayFor(int count) const {
  if (count <= policy_.free_refusals) return absl::ZeroDuration();
  int doublings = std::min(count - policy_.free_refusals - 1, 20);
  return std::min(policy_.first * (int64_t{1} << doublings), policy_.max);
}

absl::Duration Backoff::Refused(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  absl::Duration now = clock_.MonotonicNow();
  // Crude but bounded: a flood of distinct keys resets everyone's count.
  if (entries_.size() >= kMaxKeys && !entries_.contains(key)) entries_.clear();
  Entry& entry = entries_[key];
  if (now - entry.last > policy_.memory) entry.count = 0;
  ++entry.count;
  entry.last = now;
  return DelayFor(entry.count);
}

absl::Duration Backoff::Current(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || clock_.MonotonicNow() - it->second.last > policy_.memory) {
    return absl::ZeroDuration();
  }
  return DelayFor(it->second.count);
}

}  // namespace proctor
