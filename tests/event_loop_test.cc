// EventLoop: the real loop on its own thread. Nothing here sleeps to order events: the test
// thread waits for the state it needs, and where an order matters the loop is held by a
// posted closure while the events are set up, so that they are all due at once.
#include "server/event_loop.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/loop_thread.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kPatience = absl::Seconds(10);

// What the callbacks did, in order, for the test thread to wait on.
class Journal {
 public:
  void Add(std::string entry) {
    absl::MutexLock lock(&mu_);
    entries_.push_back(std::move(entry));
  }
  // The entries once there are at least `count` (or after kPatience, however many there are).
  std::vector<std::string> WaitFor(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, count]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return entries_.size() >= count; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kPatience);
    return entries_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> entries_ ABSL_GUARDED_BY(mu_);
};

class EventLoopTest : public ::testing::Test {
 protected:
  // Holds the loop thread in a posted closure until `release` is notified; returns once the
  // loop is held.
  void HoldLoop(absl::Notification& release) { ASSERT_TRUE(runner_.Hold(release, kPatience)); }

  // Waits until the loop has run everything posted or due before, and one more round after.
  void Drain() {
    absl::Notification done;
    // Two rounds: an event made ready before this call is handled at the latest in the
    // round that runs the first closure, before the one that runs the second.
    loop_->Post([this, &done] { loop_->Post([&done] { done.Notify(); }); });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(kPatience));
  }

  testing::LoopThread runner_;
  EventLoop* const loop_ = &runner_.loop();
};

TEST_F(EventLoopTest, ZeroDelayTimerFires) {
  absl::Notification fired;
  loop_->After(absl::ZeroDuration(), [&fired] { fired.Notify(); });
  EXPECT_TRUE(fired.WaitForNotificationWithTimeout(kPatience));
}

TEST_F(EventLoopTest, TimersFireInDeadlineOrderOnTheLoopThread) {
  Journal journal;
  std::thread::id loop_thread;
  loop_->Post([&] {
    loop_thread = std::this_thread::get_id();
    journal.Add("posted");
  });
  ASSERT_THAT(journal.WaitFor(1), ElementsAre("posted"));

  std::vector<std::thread::id> timer_threads;
  auto add = [&](absl::Duration delay, std::string name) {
    loop_->After(delay, [&, name] {
      timer_threads.push_back(std::this_thread::get_id());
      journal.Add(name);
    });
  };
  // Added out of order; deadlines 100ms apart, far more than the time between these calls.
  add(absl::Milliseconds(200), "third");
  add(absl::ZeroDuration(), "first");
  add(absl::Milliseconds(100), "second");
  EXPECT_THAT(journal.WaitFor(4), ElementsAre("posted", "first", "second", "third"));
  Drain();
  for (std::thread::id id : timer_threads) EXPECT_EQ(id, loop_thread);
}

TEST_F(EventLoopTest, TimersDueInOneRoundRunInDeadlineOrderTiesInCreationOrder) {
  Journal journal;
  absl::Notification release;
  HoldLoop(release);
  // Negative delays: deadlines already past, each 100ms before that of the timer added before
  // it, so all are due when the loop is released.
  loop_->After(absl::ZeroDuration(), [&] { journal.Add("late"); });
  loop_->After(absl::Milliseconds(-100), [&] { journal.Add("middle"); });
  loop_->After(absl::Milliseconds(-200), [&] { journal.Add("early"); });
  // Same delay as "late", added after it: never before it.
  loop_->After(absl::ZeroDuration(), [&] { journal.Add("late too"); });
  release.Notify();
  EXPECT_THAT(journal.WaitFor(4), ElementsAre("early", "middle", "late", "late too"));
}

TEST_F(EventLoopTest, CancelledTimerDoesNotRun) {
  Journal journal;
  absl::Notification release;
  HoldLoop(release);
  TimerId cancelled = loop_->After(absl::ZeroDuration(), [&] { journal.Add("cancelled"); });
  loop_->After(absl::ZeroDuration(), [&] { journal.Add("kept"); });
  loop_->Cancel(cancelled);
  loop_->Cancel(cancelled);  // a second time does nothing
  release.Notify();
  EXPECT_THAT(journal.WaitFor(1), ElementsAre("kept"));
  Drain();
  EXPECT_THAT(journal.WaitFor(1), ElementsAre("kept"));
}

TEST_F(EventLoopTest, TimerCancelledByAnEarlierCallbackOfTheSameRoundDoesNotRun) {
  Journal journal;
  absl::Notification release;
  HoldLoop(release);
  TimerId victim = 0;
  loop_->After(absl::ZeroDuration(), [&] {
    journal.Add("canceller");
    loop_->Cancel(victim);
  });
  victim = loop_->After(absl::ZeroDuration(), [&] { journal.Add("victim"); });
  loop_->After(absl::ZeroDuration(), [&] { journal.Add("last"); });
  release.Notify();
  EXPECT_THAT(journal.WaitFor(2), ElementsAre("canceller", "last"));
  Drain();
  EXPECT_THAT(journal.WaitFor(2), ElementsAre("canceller", "last"));
}

TEST_F(EventLoopTest, PostRunsOnTheLoopThreadInOrderFromAnyThread) {
  std::thread::id loop_thread;
  absl::Notification known;
  loop_->Post([&] {
    loop_thread = std::this_thread::get_id();
    known.Notify();
  });
  ASSERT_TRUE(known.WaitForNotificationWithTimeout(kPatience));

  Journal journal;
  std::vector<bool> on_loop_thread;  // touched on the loop thread only
  std::thread poster([&] {
    for (int i = 0; i < 100; ++i) {
      loop_->Post([&, i] {
        on_loop_thread.push_back(std::this_thread::get_id() == loop_thread);
        journal.Add(std::to_string(i));
      });
    }
  });
  poster.join();
  std::vector<std::string> entries = journal.WaitFor(100);
  ASSERT_EQ(entries.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(entries[i], std::to_string(i));
  Drain();
  EXPECT_EQ(on_loop_thread, std::vector<bool>(100, true));
}

// A pipe whose read end the loop watches.
struct Pipe {
  Pipe() { EXPECT_EQ(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0); }
  ~Pipe() {
    close(fds[0]);
    close(fds[1]);
  }
  int read_end() const { return fds[0]; }
  void Write() { EXPECT_EQ(write(fds[1], "x", 1), 1); }
  // Empties the pipe, so that level-triggered epoll stops reporting it.
  void Drain() {
    char buffer[64];
    while (read(fds[0], buffer, sizeof(buffer)) > 0) {
    }
  }
  int fds[2] = {-1, -1};
};

TEST_F(EventLoopTest, WatchCallsBackWhenReadableAndUnwatchStopsIt) {
  Pipe pipe;
  Journal journal;
  ASSERT_TRUE(loop_
                  ->Watch(pipe.read_end(),
                          [&] {
                            pipe.Drain();
                            journal.Add("readable");
                          })
                  .ok());
  Drain();
  EXPECT_TRUE(journal.WaitFor(0).empty()) << "nothing to read yet";
  pipe.Write();
  EXPECT_THAT(journal.WaitFor(1), ElementsAre("readable"));
  pipe.Write();
  EXPECT_THAT(journal.WaitFor(2), ElementsAre("readable", "readable"));

  absl::Notification unwatched;
  loop_->Post([&] {
    loop_->Unwatch(pipe.read_end());
    unwatched.Notify();
  });
  ASSERT_TRUE(unwatched.WaitForNotificationWithTimeout(kPatience));
  pipe.Write();
  Drain();
  EXPECT_THAT(journal.WaitFor(2), ElementsAre("readable", "readable"));
}

TEST_F(EventLoopTest, WatchingAnEventfdWorksAndWatchingTwiceIsAnError) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(fd, 0);
  absl::Notification readable;
  ASSERT_TRUE(loop_
                  ->Watch(fd,
                          [&] {
                            uint64_t count;
                            if (read(fd, &count, sizeof(count)) == sizeof(count)) {
                              readable.Notify();
                            }
                          })
                  .ok());
  absl::Status again = loop_->Watch(fd, [] {});
  EXPECT_EQ(again.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(again.message(), HasSubstr("epoll_ctl(ADD, fd=" + std::to_string(fd) + ")"));
  uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  EXPECT_TRUE(readable.WaitForNotificationWithTimeout(kPatience));
  loop_->Unwatch(fd);
  close(fd);
}

TEST_F(EventLoopTest, CallbacksMayCallBackIntoTheLoop) {
  Pipe pipe;
  Journal journal;
  // A timer posts a closure, which watches a pipe and adds a timer that writes to it; the
  // watch callback unwatches itself and stops nothing else.
  loop_->After(absl::ZeroDuration(), [&] {
    journal.Add("timer");
    loop_->Post([&] {
      journal.Add("posted");
      absl::Status watched = loop_->Watch(pipe.read_end(), [&] {
        pipe.Drain();
        journal.Add("watched");
        loop_->Unwatch(pipe.read_end());
        loop_->After(absl::ZeroDuration(), [&] { journal.Add("after unwatch"); });
      });
      journal.Add(watched.ok() ? "watching" : watched.ToString());
      loop_->After(absl::ZeroDuration(), [&] { pipe.Write(); });
    });
  });
  EXPECT_THAT(journal.WaitFor(5),
              ElementsAre("timer", "posted", "watching", "watched", "after unwatch"));
}

TEST(EventLoopStopTest, StopEndsRunFromAnotherThreadOrFromACallback) {
  for (bool from_callback : {false, true}) {
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    absl::Notification returned;
    std::thread thread([&] {
      (*loop)->Run();
      returned.Notify();
    });
    if (from_callback) {
      (*loop)->After(absl::ZeroDuration(), [&] { (*loop)->Stop(); });
    } else {
      (*loop)->Stop();
    }
    EXPECT_TRUE(returned.WaitForNotificationWithTimeout(kPatience)) << from_callback;
    if (!returned.HasBeenNotified()) (*loop)->Stop();
    thread.join();
  }
}

TEST(EventLoopStopTest, StopBeforeRunMakesRunReturnAtOnce) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok()) << loop.status();
  (*loop)->Stop();
  (*loop)->Run();  // returns
}

}  // namespace
}  // namespace proctor
