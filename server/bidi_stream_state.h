// BidiStreamState: what a bidi-streaming reactor shares with callbacks that may outlive it
// (timers, the sync table's replies): whether the reactor is still there, and a finish that
// waits for the write in flight, since gRPC allows Finish only once no write is pending.
//
// The reactor sets `stream` to itself when made and to nullptr in OnDone, calls WriteDone()
// from OnWriteDone (and finishes with what it returns), and sets `writing` when it starts a
// write. Derive to add fields guarded by the same `mu`.
#ifndef PROCTOR_SERVER_BIDI_STREAM_STATE_H_
#define PROCTOR_SERVER_BIDI_STREAM_STATE_H_

#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"

namespace proctor {

template <typename Reactor>
struct BidiStreamState {
  absl::Mutex mu;
  Reactor* stream ABSL_GUARDED_BY(mu) = nullptr;
  bool finished ABSL_GUARDED_BY(mu) = false;
  bool writing ABSL_GUARDED_BY(mu) = false;
  std::optional<grpc::Status> pending_finish ABSL_GUARDED_BY(mu);

  // Finishes the stream once, unless it is gone; after the write in flight, if any.
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&mu);
    if (finished || stream == nullptr) return;
    if (writing) {
      pending_finish = status;
      return;
    }
    finished = true;
    stream->Finish(status);
  }

  // For OnWriteDone: the write is over; the finish that waited for it, if any, to be given
  // to FinishOnce.
  std::optional<grpc::Status> WriteDone() {
    absl::MutexLock lock(&mu);
    writing = false;
    return std::exchange(pending_finish, std::nullopt);
  }

  // For OnDone: callbacks from now on find the stream gone.
  void Gone() {
    absl::MutexLock lock(&mu);
    stream = nullptr;
  }
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_BIDI_STREAM_STATE_H_
