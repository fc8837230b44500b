// Clock and Timers: time as the supervision rules see it (grace periods, join timeouts,
// retention), injected so tests can drive it by hand.
//
// Timer callbacks run on whichever thread drives the timers (the event loop in proctord, the
// test in unit tests), never under the caller's locks, and at most once. Cancel() of a timer
// that has fired or been cancelled already does nothing.
#ifndef PROCTOR_SERVER_CLOCK_H_
#define PROCTOR_SERVER_CLOCK_H_

#include <cstdint>
#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace proctor {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

using TimerId = uint64_t;

class Timers {
 public:
  virtual ~Timers() = default;
  // Runs `callback` once, `delay` from now. Thread-safe.
  virtual TimerId After(absl::Duration delay, std::function<void()> callback) = 0;
  // Forgets a pending timer. Thread-safe.
  virtual void Cancel(TimerId id) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_CLOCK_H_
