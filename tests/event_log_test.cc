// EventLog: replay and live delivery, filters, cursors out of range, slow watchers, many
// watchers on several threads.
#include "server/event_log.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;

v1::Event ProcessEvent(uint64_t cursor, uint64_t id, v1::EventType type = v1::EVENT_STARTED) {
  v1::Event event;
  event.set_cursor(cursor);
  event.set_type(type);
  event.mutable_process()->set_id(id);
  event.mutable_process()->set_name(absl::StrCat("Process-", id));
  return event;
}

// Events 1..n, each of process `cursor`.
std::vector<v1::Event> Events(uint64_t from, uint64_t to) {
  std::vector<v1::Event> events;
  for (uint64_t cursor = from; cursor <= to; ++cursor) {
    events.push_back(ProcessEvent(cursor, cursor));
  }
  return events;
}

std::vector<uint64_t> Range(uint64_t from, uint64_t to) {
  std::vector<uint64_t> cursors;
  for (uint64_t cursor = from; cursor <= to; ++cursor) cursors.push_back(cursor);
  return cursors;
}

// A stand-in for a ServerWriteReactor. With `instant`, its writes complete at once: whenever
// it is told something is ready it takes everything queued. Without, it takes nothing until
// the test calls Drain (a client that stopped reading).
class TestWatcher {
 public:
  explicit TestWatcher(bool instant = true) : instant_(instant) {}
  ~TestWatcher() {
    if (log_ != nullptr) log_->Unsubscribe(id_);
  }

  absl::Status Start(EventLog& log, WatchFilter filter, std::optional<uint64_t> since) {
    absl::StatusOr<EventLog::WatcherId> id =
        log.Subscribe(std::move(filter), since, [this] { OnReady(); });
    if (!id.ok()) return id.status();
    log_ = &log;
    id_ = *id;
    Drain();
    return absl::OkStatus();
  }

  // Takes every queued event (and the end, if it has come).
  void Drain() {
    absl::MutexLock lock(&mu_);
    while (true) {
      absl::StatusOr<EventLog::EventPtr> next = log_->Next(id_);
      if (!next.ok()) {
        end_ = next.status();
        return;
      }
      if (*next == nullptr) return;
      cursors_.push_back((*next)->cursor());
    }
  }

  std::vector<uint64_t> cursors() {
    absl::MutexLock lock(&mu_);
    return cursors_;
  }
  std::optional<absl::Status> end() {
    absl::MutexLock lock(&mu_);
    return end_;
  }
  int readies() { return readies_.load(); }
  EventLog::WatcherId id() const { return id_; }

 private:
  void OnReady() {
    ++readies_;
    if (instant_) Drain();
  }

  const bool instant_;
  EventLog* log_ = nullptr;
  EventLog::WatcherId id_ = 0;
  std::atomic<int> readies_{0};
  absl::Mutex mu_;
  std::vector<uint64_t> cursors_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
};

void WaitUntil(const std::function<bool()>& done) {
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!done() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_TRUE(done());
}

// What a watcher is sent is the event it was published as, byte for byte.
TEST(EventLogTest, AKeptEventIsTheEventWhole) {
  v1::Event event = ProcessEvent(9, 4, v1::EVENT_EXITED);
  event.mutable_process()->set_exitcode(3);
  event.mutable_process()->add_args("--flag=x");
  event.mutable_process()->set_stdout_path("/var/lib/proctor/logs/4.out");
  KeptEvent kept(event);
  EXPECT_EQ(kept.cursor(), 9u);
  EXPECT_EQ(kept.type(), v1::EVENT_EXITED);
  v1::Event written;
  ASSERT_TRUE(written.ParseFromArray(kept.bytes().begin(), static_cast<int>(kept.bytes().size())));
  EXPECT_EQ(written.SerializeAsString(), event.SerializeAsString());
  EXPECT_EQ(written.process().args(0), "--flag=x");
}

TEST(EventLogTest, ReplaysAfterTheCursorThenDeliversLiveEvents) {
  EventLog log({.window = 100});
  ASSERT_TRUE(log.Publish(Events(1, 10)).ok());
  TestWatcher watcher;
  ASSERT_TRUE(watcher.Start(log, {}, 4).ok());
  EXPECT_THAT(watcher.cursors(), ElementsAreArray(Range(5, 10)));
  EXPECT_EQ(watcher.readies(), 0);
  ASSERT_TRUE(log.Publish(Events(11, 12)).ok());
  ASSERT_TRUE(log.Publish(Events(13, 13)).ok());
  EXPECT_THAT(watcher.cursors(), ElementsAreArray(Range(5, 13)));
  EXPECT_EQ(watcher.readies(), 2) << "once per Publish that found it waiting";
  EXPECT_EQ(watcher.end(), std::nullopt);

  TestWatcher from_now;
  ASSERT_TRUE(from_now.Start(log, {}, std::nullopt).ok());
  ASSERT_TRUE(log.Publish(Events(14, 14)).ok());
  EXPECT_THAT(from_now.cursors(), ElementsAre(14));
  EXPECT_EQ(log.LastCursor(), 14u);
}

TEST(EventLogTest, NoGapAndNoDuplicateWhileEventsArePublishedDuringReplay) {
  constexpr uint64_t kEvents = 20000;
  EventLog log({.window = kEvents, .max_behind = kEvents});
  ASSERT_TRUE(log.Publish(Events(1, 100)).ok());
  std::thread publisher([&] {
    for (uint64_t cursor = 101; cursor <= kEvents; cursor += 10) {
      ASSERT_TRUE(log.Publish(Events(cursor, cursor + 9)).ok());
    }
  });
  // Watchers join at every stage of the stream, each from the cursor it last saw.
  std::vector<std::unique_ptr<TestWatcher>> watchers;
  std::vector<uint64_t> since;
  for (int i = 0; i < 50; ++i) {
    uint64_t from = log.LastCursor() / 2;
    watchers.push_back(std::make_unique<TestWatcher>());
    since.push_back(from);
    ASSERT_TRUE(watchers.back()->Start(log, {}, from).ok());
    absl::SleepFor(absl::Microseconds(200));
  }
  publisher.join();
  for (size_t i = 0; i < watchers.size(); ++i) {
    EXPECT_EQ(watchers[i]->cursors(), Range(since[i] + 1, kEvents)) << "watcher " << i;
  }
}

TEST(EventLogTest, CursorsOutsideWhatIsKeptAreOutOfRange) {
  EventLog log({.window = 4}, /*last_cursor=*/100);
  TestWatcher at_start;
  EXPECT_TRUE(at_start.Start(log, {}, 100).ok());
  absl::Status before_start = TestWatcher().Start(log, {}, 99);
  EXPECT_EQ(before_start.code(), absl::StatusCode::kOutOfRange);

  ASSERT_TRUE(log.Publish(Events(101, 110)).ok());
  EXPECT_EQ(log.OldestCursor(), 106u);
  absl::Status too_old = TestWatcher().Start(log, {}, 105);
  EXPECT_EQ(too_old, absl::OutOfRangeError(
                         "cursor 105 is older than the oldest kept (106); list again with "
                         "Status and watch from the cursor it returns"));
  absl::Status ahead = TestWatcher().Start(log, {}, 111);
  EXPECT_EQ(ahead.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(ahead.message()), ::testing::HasSubstr("ahead of the newest event (110)"));

  TestWatcher oldest;
  ASSERT_TRUE(oldest.Start(log, {}, 106).ok());
  EXPECT_THAT(oldest.cursors(), ElementsAre(107, 108, 109, 110));
  EXPECT_THAT(at_start.cursors(), ElementsAreArray(Range(101, 110)));
}

TEST(EventLogTest, PublishRefusesCursorsOutOfOrder) {
  EventLog log({});
  ASSERT_TRUE(log.Publish(Events(1, 3)).ok());
  std::vector<v1::Event> events = {ProcessEvent(4, 4), ProcessEvent(3, 3)};
  EXPECT_EQ(log.Publish(events).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log.Publish(Events(2, 2)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log.LastCursor(), 3u) << "nothing of a refused batch is published";
}

TEST(EventLogTest, FiltersMatchTheirFields) {
  v1::Event top = ProcessEvent(1, 1);
  v1::Event child = ProcessEvent(2, 2, v1::EVENT_EXITED);
  child.mutable_process()->set_parent_id(1);
  v1::Event in_session = ProcessEvent(3, 3);
  in_session.mutable_process()->set_parent_session(7);
  v1::Event opened;
  opened.set_cursor(4);
  opened.set_type(v1::EVENT_SESSION_OPENED);
  opened.set_session(7);
  v1::Event released = ProcessEvent(5, 2, v1::EVENT_RELEASED);
  released.mutable_process()->set_parent_id(1);
  const std::vector<v1::Event> all = {top, child, in_session, opened, released};

  auto matching = [&](const WatchFilter& filter) {
    std::vector<uint64_t> cursors;
    for (const v1::Event& event : all) {
      if (filter.Matches(KeptEvent(event))) cursors.push_back(event.cursor());
    }
    return cursors;
  };
  EXPECT_THAT(matching({}), ElementsAre(1, 2, 3, 4, 5));
  EXPECT_THAT(matching({.ids = {2}}), ElementsAre(2, 5));
  EXPECT_THAT(matching({.name = "Process-3"}), ElementsAre(3));
  EXPECT_THAT(matching({.parent_id = 1}), ElementsAre(2, 5));
  EXPECT_THAT(matching({.parent_id = 0}), ElementsAre(1, 3)) << "top-level processes";
  EXPECT_THAT(matching({.parent_session = 7}), ElementsAre(3, 4)) << "and the session itself";
  EXPECT_THAT(matching({.parent_session = 8}), IsEmpty());
  EXPECT_THAT(matching({.types = {v1::EVENT_EXITED, v1::EVENT_SESSION_OPENED}}),
              ElementsAre(2, 4));
  EXPECT_THAT(matching({.ids = {2}, .types = {v1::EVENT_RELEASED}}), ElementsAre(5));
  // A worker key that sees the subtree of 1: process 2 is released by the time its event is
  // filtered, so only its parent can vouch for it.
  auto subtree_of_1 = [](uint64_t id) { return id == 1; };
  EXPECT_THAT(matching({.visible = subtree_of_1}), ElementsAre(1, 5));
  auto subtree_with_2 = [](uint64_t id) { return id == 1 || id == 2; };
  EXPECT_THAT(matching({.visible = subtree_with_2}), ElementsAre(1, 2, 5));

  v1::WatchRequest request;
  request.add_ids(2);
  request.set_parent_id(1);
  request.add_types(v1::EVENT_RELEASED);
  WatchFilter from_request = WatchFilter::FromRequest(request);
  EXPECT_THAT(matching(from_request), ElementsAre(5));
  EXPECT_EQ(from_request.parent_session, std::nullopt);

  // The same through the log, replayed and live.
  EventLog log({});
  ASSERT_TRUE(log.Publish({top, child}).ok());
  TestWatcher children;
  ASSERT_TRUE(children.Start(log, {.parent_id = 1}, 0).ok());
  ASSERT_TRUE(log.Publish({in_session, opened, released}).ok());
  EXPECT_THAT(children.cursors(), ElementsAre(2, 5));
}

TEST(EventLogTest, ASlowWatcherIsEndedWhilePublishStaysFastAndOthersReceive) {
  constexpr uint64_t kEvents = 20000;
  EventLog log({.window = kEvents, .max_behind = 8});
  ASSERT_TRUE(log.Publish(Events(1, 2)).ok());
  TestWatcher fast;
  TestWatcher slow(/*instant=*/false);
  ASSERT_TRUE(fast.Start(log, {}, 0).ok());
  ASSERT_TRUE(slow.Start(log, {}, 0).ok());
  EXPECT_THAT(slow.cursors(), ElementsAre(1, 2)) << "a replay does not count as falling behind";

  absl::Duration slowest = absl::ZeroDuration();
  for (uint64_t cursor = 3; cursor <= kEvents; ++cursor) {
    absl::Time start = absl::Now();
    ASSERT_TRUE(log.Publish(Events(cursor, cursor)).ok());
    slowest = std::max(slowest, absl::Now() - start);
  }
  EXPECT_LT(slowest, absl::Milliseconds(100)) << "Publish never waits for a watcher";
  EXPECT_EQ(fast.cursors(), Range(1, kEvents));
  EXPECT_EQ(fast.end(), std::nullopt);

  slow.Drain();
  EXPECT_THAT(slow.cursors(), ElementsAreArray(Range(1, 10))) << "what was queued is delivered";
  EXPECT_EQ(slow.end(), absl::ResourceExhaustedError(
                            "watcher fell more than 8 events behind; reconnect from cursor 10"));
  EXPECT_EQ(slow.readies(), 1) << "told once that something was ready";

  // Reconnecting from the cursor it was given misses nothing and repeats nothing.
  TestWatcher again;
  ASSERT_TRUE(again.Start(log, {}, 10).ok());
  EXPECT_EQ(again.cursors(), Range(11, kEvents));
}

TEST(EventLogTest, UnsubscribedWatchersGetNothingMore) {
  EventLog log({});
  auto watcher = std::make_unique<TestWatcher>();
  ASSERT_TRUE(watcher->Start(log, {}, std::nullopt).ok());
  EventLog::WatcherId id = watcher->id();
  EXPECT_EQ(log.WatcherCount(), 1u);
  ASSERT_TRUE(log.Publish(Events(1, 1)).ok());
  watcher.reset();  // unsubscribes
  EXPECT_EQ(log.WatcherCount(), 0u);
  ASSERT_TRUE(log.Publish(Events(2, 2)).ok());
  EXPECT_EQ(log.Next(id).status().code(), absl::StatusCode::kNotFound);
  log.Unsubscribe(id);  // again: nothing happens
}

TEST(EventLogTest, UnsubscribeWaitsForARunningReady) {
  EventLog log({});
  absl::Notification ready_started;
  std::atomic<bool> ready_returned{false};
  absl::StatusOr<EventLog::WatcherId> id = log.Subscribe({}, std::nullopt, [&] {
    ready_started.Notify();
    absl::SleepFor(absl::Milliseconds(200));
    ready_returned = true;
  });
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(log.Next(*id).ok());  // nothing yet: waiting
  std::thread publisher([&] { ASSERT_TRUE(log.Publish(Events(1, 1)).ok()); });
  ready_started.WaitForNotification();
  log.Unsubscribe(*id);
  EXPECT_TRUE(ready_returned) << "the reactor may be deleted once Unsubscribe returns";
  publisher.join();
}

TEST(EventLogTest, EndAllEndsEveryWatcherAfterItsQueue) {
  EventLog log({});
  TestWatcher instant;
  TestWatcher stalled(/*instant=*/false);
  ASSERT_TRUE(instant.Start(log, {}, std::nullopt).ok());
  ASSERT_TRUE(stalled.Start(log, {}, std::nullopt).ok());
  ASSERT_TRUE(log.Publish(Events(1, 2)).ok());
  absl::Status shutdown = absl::UnavailableError("proctord is shutting down");
  log.EndAll(shutdown);
  EXPECT_THAT(instant.cursors(), ElementsAre(1, 2));
  EXPECT_EQ(instant.end(), shutdown);
  stalled.Drain();
  EXPECT_THAT(stalled.cursors(), ElementsAre(1, 2));
  EXPECT_EQ(stalled.end(), shutdown);
  EXPECT_EQ(TestWatcher().Start(log, {}, std::nullopt), shutdown);
}

TEST(EventLogTest, ManyWatchersOnManyThreads) {
  constexpr uint64_t kEvents = 5000;
  constexpr int kWatchers = 300;
  EventLog log({.window = kEvents, .max_behind = kEvents});
  std::vector<std::unique_ptr<TestWatcher>> watchers(kWatchers);
  std::vector<std::thread> subscribers;
  for (int t = 0; t < 3; ++t) {
    subscribers.emplace_back([&, t] {
      for (int i = t; i < kWatchers; i += 3) {
        watchers[i] = std::make_unique<TestWatcher>();
        // Every third watches one process in ten; the others everything.
        WatchFilter filter;
        if (i % 3 == 0) filter.visible = [](uint64_t id) { return id % 10 == 0; };
        ASSERT_TRUE(watchers[i]->Start(log, std::move(filter), 0).ok());
      }
    });
  }
  for (uint64_t cursor = 1; cursor <= kEvents; cursor += 5) {
    ASSERT_TRUE(log.Publish(Events(cursor, cursor + 4)).ok());
  }
  for (std::thread& subscriber : subscribers) subscriber.join();
  std::vector<uint64_t> tenths;
  for (uint64_t cursor = 10; cursor <= kEvents; cursor += 10) tenths.push_back(cursor);
  for (int i = 0; i < kWatchers; ++i) {
    WaitUntil([&] { return watchers[i]->cursors().size() == (i % 3 == 0 ? tenths.size() : kEvents); });
    EXPECT_EQ(watchers[i]->cursors(), i % 3 == 0 ? tenths : Range(1, kEvents)) << i;
  }
  EXPECT_EQ(log.WatcherCount(), static_cast<size_t>(kWatchers));
  watchers.clear();
  EXPECT_EQ(log.WatcherCount(), 0u);
}

}  // namespace
}  // namespace proctor
