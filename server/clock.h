// Clock and Timers: time as the supervision rules see it (grace periods, join timeouts,
// retention), injected so tests can drive it by hand.
//
// Two clocks: Now() is the wall clock, for timestamps shown to people and for credential
// times that another machine compares; MonotonicNow() never jumps, and every interval (grace,
// TTL, backoff, timeouts, replay windows) is measured on it, so a step of the wall clock can
// neither stretch nor shorten a rule. Timers run on the monotonic clock.
//
// Timer callbacks run on whichever thread drives the timers (the event loop in proctord, the
// test in unit tests), never under the caller's locks, and at most once. Cancel() of a timer
// that has fired or been cancelled already does nothing.
#ifndef PROCTOR_SERVER_CLOCK_H_
#define PROCTOR_SERVER_CLOCK_H_

#include <time.h>

#include <cstdint>
#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace proctor {

class Clock {
 public:
  virtual ~Clock() = default;
  // The wall clock.
  virtual absl::Time Now() = 0;
  // Time since an arbitrary fixed instant (boot); only differences mean anything.
  virtual absl::Duration MonotonicNow() = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  absl::Duration MonotonicNow() override { return RealMonotonicNow(); }

  static absl::Duration RealMonotonicNow() {
    timespec ts;
    // CLOCK_MONOTONIC cannot fail with a valid clock id and pointer.
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return absl::DurationFromTimespec(ts);
  }
};

using TimerId = uint64_t;

class Timers {
 public:
  virtual ~Timers() = default;
  // Runs `callback` once, `delay` from now on the monotonic clock. Thread-safe.
  virtual TimerId After(absl::Duration delay, std::function<void()> callback) = 0;
  // Forgets a pending timer. Thread-safe.
  virtual void Cancel(TimerId id) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_CLOCK_H_
