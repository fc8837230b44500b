// FakeTime: a Clock and Timers that move only when a test calls Advance() (both clocks) or
// StepWallClock() (the wall clock alone).
#ifndef PROCTOR_TESTS_FAKE_TIME_H_
#define PROCTOR_TESTS_FAKE_TIME_H_

#include <functional>
#include <map>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "server/clock.h"

namespace proctor {

class FakeTime final : public Clock, public Timers {
 public:
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_ + wall_offset_;
  }
  absl::Duration MonotonicNow() override {
    absl::MutexLock lock(&mu_);
    return now_ - kStart;
  }
  // Steps the wall clock alone, as an administrator or NTP would; timers do not move.
  void StepWallClock(absl::Duration by) {
    absl::MutexLock lock(&mu_);
    wall_offset_ += by;
  }

  TimerId After(absl::Duration delay, std::function<void()> callback) override {
    absl::MutexLock lock(&mu_);
    TimerId id = next_++;
    timers_.emplace(std::make_pair(now_ + delay, id), std::move(callback));
    return id;
  }

  void Cancel(TimerId id) override {
    absl::MutexLock lock(&mu_);
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
    }
  }

  // Forgets every pending timer (their owner is gone, as a restarted daemon's is).
  void DropAll() {
    absl::MutexLock lock(&mu_);
    timers_.clear();
  }

  // Moves time forward, running each timer that comes due, in deadline order.
  void Advance(absl::Duration by) {
    absl::Time end;
    {
      absl::MutexLock lock(&mu_);
      end = now_ + by;
    }
    for (;;) {
      std::function<void()> callback;
      {
        absl::MutexLock lock(&mu_);
        if (timers_.empty() || timers_.begin()->first.first > end) {
          now_ = end;
          return;
        }
        now_ = timers_.begin()->first.first;
        callback = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
      }
      callback();
    }
  }

  size_t pending() {
    absl::MutexLock lock(&mu_);
    return timers_.size();
  }

 private:
  absl::Mutex mu_;
  static constexpr absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);
  absl::Time now_ = kStart;
  absl::Duration wall_offset_;
  TimerId next_ = 1;
  std::map<std::pair<absl::Time, TimerId>, std::function<void()>> timers_;
};

}  // namespace proctor

#endif  // PROCTOR_TESTS_FAKE_TIME_H_
