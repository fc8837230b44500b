#include "server/backoff.h"

#include <algorithm>

namespace proctor {

absl::Duration Backoff::DelayFor(int count) const {
  if (count <= policy_.free_refusals) return absl::ZeroDuration();
  int doublings = std::min(count - policy_.free_refusals - 1, 20);
  return std::min(policy_.first * (int64_t{1} << doublings), policy_.max);
}

void Backoff::ExpireLocked(absl::Duration now) {
  // order_ is by last refusal, so what may be forgotten is at its front.
  while (!order_.empty()) {
    auto it = entries_.find(order_.front());
    if (now - it->second.last <= policy_.memory) return;
    entries_.erase(it);
    order_.pop_front();
  }
}

absl::Duration Backoff::Refused(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  absl::Duration now = clock_.MonotonicNow();
  ExpireLocked(now);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    // Least recently refused first: a key that keeps failing is always near the back, so however
    // many new keys come, its count survives (clearing all would reset it).
    if (entries_.size() >= kMaxKeys) {
      entries_.erase(order_.front());
      order_.pop_front();
    }
    it = entries_.emplace(key, Entry{}).first;
    it->second.at = order_.insert(order_.end(), it->first);
  } else {
    order_.splice(order_.end(), order_, it->second.at);
  }
  Entry& entry = it->second;
  ++entry.count;
  entry.last = now;
  return DelayFor(entry.count);
}

absl::Duration Backoff::Current(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  ExpireLocked(clock_.MonotonicNow());
  auto it = entries_.find(key);
  return it == entries_.end() ? absl::ZeroDuration() : DelayFor(it->second.count);
}

size_t Backoff::size() {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

bool TokenBucket::TryTake(absl::Duration now) {
  // A monotonic clock never goes back; the max() keeps a fake one that does from minting.
  absl::Duration elapsed = std::max(now - last_, absl::ZeroDuration());
  last_ = std::max(now, last_);
  tokens_ = std::min(rate_.burst, tokens_ + absl::ToDoubleSeconds(elapsed) * rate_.per_second);
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

}  // namespace proctor
