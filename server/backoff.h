// Backoff: how long to hold back the refusal of a caller that keeps being refused, so that
// guessing keys or spawning against the limits in a loop slows itself down instead of the
// daemon. Delays double per recent refusal of the same key, from `first` up to `max`; a key
// is forgotten after `memory` without a refusal. Bounded memory; thread-safe.
#ifndef PROCTOR_SERVER_BACKOFF_H_
#define PROCTOR_SERVER_BACKOFF_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace proctor {

class Backoff {
 public:
  struct Policy {
    int free_refusals = 1;  // refusals answered at once before delays start
    absl::Duration first = absl::Milliseconds(50);
    absl::Duration max = absl::Seconds(3);
    absl::Duration memory = absl::Minutes(1);
  };

  Backoff(Clock& clock, Policy policy) : clock_(clock), policy_(policy) {}

  // Records a refusal for `key` and returns how long to hold it back.
  absl::Duration Refused(absl::string_view key);
  // The delay the next refusal of `key` would get, without recording one.
  absl::Duration Current(absl::string_view key);

 private:
  absl::Duration DelayFor(int count) const;

  static constexpr size_t kMaxKeys = 4096;
  Clock& clock_;
  const Policy policy_;
  absl::Mutex mu_;
  struct Entry {
    int count = 0;
    absl::Duration last;  // monotonic
  };
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_BACKOFF_H_
