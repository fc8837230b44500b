// EventLog: the recent events in memory, and the watchers they are handed to (Watch).
//
// Events come in through Publish, already cursor-stamped (by the Journal) and in cursor
// order. The log keeps the last `window` of them, so that a watcher can start from a cursor
// it holds (replay) and go on with live events with no gap and no duplicate.
//
// Each event is kept serialized (KeptEvent), once for every watcher that writes it, with the
// few fields a filter looks at beside it.
//
// Delivery is pulled, to suit a gRPC ServerWriteReactor that has one write in flight at a
// time. Each watcher has a queue: the replayed events, then the live events that match its
// filter. The reactor calls Next() when it can write:
// - an event: write it (the pointer stays valid as long as the reactor holds it);
// - null: nothing to write now; `ready` will be called once, when there is (an event or the
//   end), and the reactor should call Next() again then;
// - an error: the watch is over (after every queued event was taken); finish the call with
//   it. RESOURCE_EXHAUSTED "watcher fell more than N events behind; reconnect from cursor
//   C" when more than `max_behind` live events were waiting for it (C misses nothing and
//   repeats nothing); whatever EndAll was given.
// Publish never waits for a watcher: a watcher that does not keep up is ended, and its queue
// (at most max_behind live events, plus its replay) is all the memory it holds.
//
// Filters run outside the log's lock, on the thread that publishes (live events) or
// subscribes (replay), so `visible` may take the caller's own locks (the supervisor's).
//
// Threads. Every method is thread-safe. Publish calls are serialized internally; events of
// one Publish reach every watcher before those of the next. Next() for one watcher must not
// run on two threads at once. `ready` runs on the thread that called Publish or EndAll,
// outside the log's lock; it must not block and must not call Unsubscribe (it may call
// Next). After Unsubscribe returns, the watcher's `ready` is not running and never runs
// again, so the reactor may be deleted.
#ifndef PROCTOR_SERVER_EVENT_LOG_H_
#define PROCTOR_SERVER_EVENT_LOG_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/slice.h"
#include "absl/synchronization/mutex.h"
#include "proctor/v1/proctor.pb.h"

namespace proctor {

// An event as the log keeps it: the v1::Event serialized (what a Watch writes, shared by
// every watcher's write), and the fields WatchFilter looks at. About half the memory of the
// message it is made from, which for a process event holds a whole record.
class KeptEvent {
 public:
  explicit KeptEvent(const v1::Event& event);

  uint64_t cursor() const { return cursor_; }
  v1::EventType type() const { return type_; }
  // The v1::Event, serialized.
  const grpc::Slice& bytes() const { return bytes_; }

 private:
  friend struct WatchFilter;
  uint64_t cursor_;
  v1::EventType type_;
  bool has_process_;
  uint64_t session_;
  // Of the process, if the event has one.
  uint64_t id_;
  uint64_t parent_id_;
  uint64_t parent_session_;
  std::string name_;
  grpc::Slice bytes_;
};

// Which events a watcher gets; every field set must match (empty or unset: any).
struct WatchFilter {
  absl::flat_hash_set<uint64_t> ids;
  std::string name;
  std::optional<uint64_t> parent_id;  // 0 matches top-level processes
  std::optional<uint64_t> parent_session;
  std::vector<v1::EventType> types;
  // The ids the caller may see (a worker key: its own subtree); null: all. Called with the
  // event's process id. A released or evicted record is usually gone by then, so for those
  // events its parent is asked as well. Session events are never visible with it.
  // Must be thread-safe.
  std::function<bool(uint64_t id)> visible;

  // The filter a Watch request asks for (without `visible`, which the service adds).
  static WatchFilter FromRequest(const v1::WatchRequest& request);
  // Session events pass only when no process field (ids, name, parent_id, visible) is set,
  // and parent_session, when set, names their session.
  bool Matches(const KeptEvent& event) const;
};

class EventLog {
 public:
  using EventPtr = std::shared_ptr<const KeptEvent>;
  using WatcherId = uint64_t;

  struct Options {
    // Events kept for replay. A typical event (an exited record with three arguments) takes
    // about 0.4 KiB in memory, so the default costs up to ~7 MiB; it covers a watcher that
    // was ended for falling max_behind events behind and reconnects from its cursor.
    size_t window = 16384;
    size_t max_behind = 1024;  // live events a watcher may have waiting before it is ended
  };

  // `last_cursor`: the cursor before the first event this log will be given (the journal's
  // last cursor at start, or the one before the tail that is about to be republished).
  // Watchers may start from it or later.
  explicit EventLog(Options options, uint64_t last_cursor = 0);
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  // Keeps the events and queues each for every watcher whose filter it matches; calls the
  // `ready` of watchers that were waiting. REQUIRES: cursors strictly increasing and above
  // LastCursor(); otherwise INVALID_ARGUMENT and nothing is published.
  absl::Status Publish(const std::vector<v1::Event>& events);

  // Registers a watcher and queues the kept events after `since` that match (unset: none,
  // from now); live events follow them with no gap. OUT_OF_RANGE when `since` is older than
  // OldestCursor() or newer than LastCursor(); the status EndAll was given, after EndAll.
  // The caller then calls Next() (see the file comment) and Unsubscribe at the end.
  absl::StatusOr<WatcherId> Subscribe(WatchFilter filter, std::optional<uint64_t> since,
                                      std::function<void()> ready);
  // The watcher's next event; null when there is none yet; an error when the watch is over
  // (NOT_FOUND for an unknown or unsubscribed id).
  absl::StatusOr<EventPtr> Next(WatcherId id);
  // Forgets the watcher (waiting for its `ready` if it is running). No-op for unknown ids.
  void Unsubscribe(WatcherId id);
  // Ends every watcher with `status` (after their queued events), and refuses new ones with
  // it: for shutdown.
  void EndAll(const absl::Status& status);

  // The cursor of the last event published (or the one given at construction).
  uint64_t LastCursor();
  // The oldest cursor a watcher may start from: events after it are all kept.
  uint64_t OldestCursor();
  size_t WatcherCount();

 private:
  struct Watcher {
    std::shared_ptr<const WatchFilter> filter;
    std::function<void()> ready;
    std::deque<EventPtr> queue;
    size_t replay_left = 0;  // queued replay events: they do not count as falling behind
    bool replaying = true;   // Subscribe is filtering its replay; live events wait in `held`
    std::deque<EventPtr> held;
    bool waiting = false;  // Next found nothing: `ready` is due when something comes
    std::optional<absl::Status> end;  // no more events are queued; Next returns it last
    int readies_running = 0;
  };
  struct Ready {
    WatcherId id;
    std::function<void()> ready;
  };

  // Queues `events` for a watcher, or ends it if they would put it too far behind.
  void QueueLocked(Watcher& watcher, const std::vector<EventPtr>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks a waiting watcher's `ready` as running and adds it to `due`, if it has something.
  void WakeLocked(WatcherId id, Watcher& watcher, std::vector<Ready>& due)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls `ready` of each (without the lock), then lets Unsubscribe go on.
  void RunReadies(const std::vector<Ready>& due) ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  absl::Mutex publish_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one Publish at a time
  absl::Mutex mu_;
  std::deque<EventPtr> window_ ABSL_GUARDED_BY(mu_);
  uint64_t last_cursor_ ABSL_GUARDED_BY(mu_);
  uint64_t oldest_cursor_ ABSL_GUARDED_BY(mu_);  // the newest cursor no longer kept
  absl::flat_hash_map<WatcherId, Watcher> watchers_ ABSL_GUARDED_BY(mu_);
  absl::CondVar readies_done_;  // signalled when `ready` calls have returned
  WatcherId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::optional<absl::Status> closed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_EVENT_LOG_H_
