// Throttles for callers that ask too much: Backoff holds back the refusals of a caller that keeps
// being refused; TokenBucket caps how often something may happen.
#ifndef PROCTOR_SERVER_BACKOFF_H_
#define PROCTOR_SERVER_BACKOFF_H_

#include <list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace proctor {

// Backoff: how long to hold back the refusal of a caller that keeps being refused, so that guessing
// keys or spawning against the limits in a loop slows itself down instead of the daemon. Delays
// double per recent refusal of the same key, from `first` up to `max`; a key is forgotten after
// `memory` without a refusal. At most kMaxKeys keys are remembered: past that, the one refused
// least recently is forgotten first, so a flood of new keys cannot wipe out the count of a key that
// keeps failing. Thread-safe.
class Backoff {
 public:
  struct Policy {
    int free_refusals = 1;  // refusals answered at once before delays start
    absl::Duration first = absl::Milliseconds(50);
    absl::Duration max = absl::Seconds(3);
    absl::Duration memory = absl::Minutes(1);
  };
  static constexpr size_t kMaxKeys = 4096;

  Backoff(Clock& clock, Policy policy) : clock_(clock), policy_(policy) {}

  // Records a refusal for `key` and returns how long to hold it back.
  absl::Duration Refused(absl::string_view key);
  // The delay the next refusal of `key` would get, without recording one.
  absl::Duration Current(absl::string_view key);
  // How many keys are remembered (for tests).
  size_t size();

 private:
  absl::Duration DelayFor(int count) const;
  // Forgets keys whose memory has passed, oldest first.
  void ExpireLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock& clock_;
  const Policy policy_;
  absl::Mutex mu_;
  struct Entry {
    int count = 0;
    absl::Duration last;                  // monotonic
    std::list<std::string>::iterator at;  // in order_
  };
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // Keys by their last refusal, least recent first.
  std::list<std::string> order_ ABSL_GUARDED_BY(mu_);
};

// TokenBucket: lets through at most `burst` events at once and `per_second` on average after that.
// A value type that reads no clock: the caller passes the monotonic time, and locks.
class TokenBucket {
 public:
  struct Rate {
    double per_second = 0;
    double burst = 0;  // REQUIRES: >= 1
  };

  // Starts full.
  TokenBucket(Rate rate, absl::Duration now) : rate_(rate), tokens_(rate.burst), last_(now) {}

  // Takes one token if there is one, refilled for the time since the last call.
  bool TryTake(absl::Duration now);

 private:
  Rate rate_;
  double tokens_;
  absl::Duration last_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_BACKOFF_H_
