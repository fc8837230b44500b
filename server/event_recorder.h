// EventRecorder: proctord's EventSink. Each batch of the supervisor's events (one call's) is
// written to the journal in one transaction, then handed to the watchers; the supervisor waits
// for it before the reply or the answer that reports the events. Every `compact_every`
// events, the journal is compacted so that its size follows retention (the records still
// kept and the sessions still open, asked of `retained`), not the daemon's age.
//
// Thread-safe as the supervisor calls it: one Record at a time, in cursor order.
#ifndef PROCTOR_SERVER_EVENT_RECORDER_H_
#define PROCTOR_SERVER_EVENT_RECORDER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "proctor/v1/proctor.pb.h"
#include "server/event_log.h"
#include "server/journal.h"
#include "server/supervisor.h"

namespace proctor {

class EventRecorder final : public EventSink {
 public:
  // Fills the ids of the records kept and the sessions open. Called from Record, without
  // the supervisor's lock.
  using Retained = std::function<void(absl::flat_hash_set<uint64_t>& ids,
                                      absl::flat_hash_set<uint64_t>& sessions)>;

  // All must outlive the recorder. `journal` null: events go to the watchers only.
  EventRecorder(Journal* journal, EventLog& log, Retained retained,
                size_t compact_every = 4096);

  // Events the journal refuses (a full disk) are kept and written, in order, before the next
  // ones, and Flush says so until they are. Flush may be called from any thread at any time;
  // while nothing is held back it only reads an atomic.
  absl::Status Record(const std::vector<SupervisorEvent>& events) override;
  absl::Status Flush() override;

  // Told of each batch once it is recorded (metrics, the service manager's status line), on
  // Record's thread. Set before the supervisor reports its first event.
  using Observer = std::function<void(const std::vector<SupervisorEvent>& events)>;
  void SetObserver(Observer observer) { observer_ = std::move(observer); }

  // The event as Watch sends it.
  static v1::Event ToProto(const SupervisorEvent& event);
  // A record as an event carried it (the inverse of the service's ToProto).
  static ProcessInfo FromProto(const v1::Process& process);
  // What the journal says of each process that is still kept, from its last event: the
  // ended ones (to be restored), and the ones that were running when the daemon that
  // recorded them stopped.
  struct Rebuilt {
    std::vector<ProcessInfo> ended;
    std::vector<ProcessInfo> running;
  };
  static Rebuilt Rebuild(const std::vector<v1::Event>& events);

 private:
  Journal* const journal_;
  // Appends the held-back events, then `fresh`, in one transaction; the held-back go once
  // written.
  absl::Status AppendAfterHeldBackLocked(std::vector<v1::Event>& fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  // Events the journal refused, oldest first, with the cursors they were given.
  std::vector<v1::Event> unjournaled_ ABSL_GUARDED_BY(mu_);
  // Whether unjournaled_ holds any: read without the lock before every Start.
  std::atomic<bool> behind_{false};
  EventLog& log_;
  const Retained retained_;
  const size_t compact_every_;
  size_t since_compaction_ = 0;
  Observer observer_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_EVENT_RECORDER_H_
