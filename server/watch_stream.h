// WatchStream: the reactor of one Watch call. It pulls the watcher's events from the
// EventLog, one write in flight at a time, and finishes with the status the log ends the
// watch with (RESOURCE_EXHAUSTED for a watcher that fell behind, UNAVAILABLE at shutdown),
// or CANCELLED when the client goes away. It deletes itself when gRPC is done with it.
#ifndef PROCTOR_SERVER_WATCH_STREAM_H_
#define PROCTOR_SERVER_WATCH_STREAM_H_

#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "server/event_log.h"

namespace proctor {

class WatchStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // Subscribes to `log` with `filter` from `since` (see EventLog::Subscribe); a refused
  // subscription finishes the call at once with its status.
  static WatchStream* Start(EventLog& log, WatchFilter filter, std::optional<uint64_t> since);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  explicit WatchStream(EventLog& log) : log_(log) {}
  // Called by the log when an event (or the end) is waiting.
  void OnReady();
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  EventLog& log_;
  absl::Mutex mu_;
  std::optional<EventLog::WatcherId> watcher_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);  // the event being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_WATCH_STREAM_H_
