// LoopThread: a real EventLoop running on a thread of its own, for tests that need the loop
// to call back as it does in proctord.
#ifndef PROCTOR_TESTS_LOOP_THREAD_H_
#define PROCTOR_TESTS_LOOP_THREAD_H_

#include <memory>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/event_loop.h"

namespace proctor::testing {

class LoopThread {
 public:
  // Makes the loop and runs it; a test failure (and no loop) if it cannot be made.
  LoopThread() {
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    EXPECT_TRUE(loop.ok()) << loop.status();
    if (!loop.ok()) return;
    loop_ = *std::move(loop);
    thread_ = std::thread([this] { loop_->Run(); });
  }
  ~LoopThread() { Stop(); }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  EventLoop& loop() { return *loop_; }

  // Stops the loop and waits for its thread: no callback runs any more once it returns.
  void Stop() {
    if (!thread_.joinable()) return;
    loop_->Stop();
    thread_.join();
  }

  // Keeps the loop thread busy in a posted closure until `release` is notified, so that
  // events set up meanwhile are all found ready at once, in the round after. Returns once the
  // loop is held (false if it was not within `limit`). `release` must outlive the hold.
  bool Hold(absl::Notification& release, absl::Duration limit) {
    absl::Notification held;
    loop_->Post([&held, &release] {
      held.Notify();
      release.WaitForNotification();
    });
    return held.WaitForNotificationWithTimeout(limit);
  }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

}  // namespace proctor::testing

#endif  // PROCTOR_TESTS_LOOP_THREAD_H_
