#include "server/watch_stream.h"

#include <string>

namespace proctor {
namespace {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

}  // namespace

WatchStream* WatchStream::Start(EventLog& log, WatchFilter filter,
                                std::optional<uint64_t> since) {
  auto* stream = new WatchStream(log);
  absl::StatusOr<EventLog::WatcherId> watcher =
      log.Subscribe(std::move(filter), since, [stream] { stream->OnReady(); });
  absl::MutexLock lock(&stream->mu_);
  if (!watcher.ok()) {
    stream->FinishLocked(ToGrpcStatus(watcher.status()));
    return stream;
  }
  stream->watcher_ = *watcher;
  // The headers, with the daemon's proof, go out now rather than with the first event, which
  // may be long in coming.
  stream->StartSendInitialMetadata();
  stream->PumpLocked();
  return stream;
}

void WatchStream::OnReady() {
  absl::MutexLock lock(&mu_);
  PumpLocked();
}

void WatchStream::PumpLocked() {
  if (finished_ || writing_ || !watcher_.has_value()) return;
  absl::StatusOr<EventLog::EventPtr> next = log_.Next(*watcher_);
  if (!next.ok()) {
    FinishLocked(ToGrpcStatus(next.status()));
    return;
  }
  if (*next == nullptr) return;  // OnReady comes when there is more
  // The kept bytes themselves: a reference, not a copy.
  out_ = grpc::ByteBuffer(&(*next)->bytes(), 1);
  writing_ = true;
  StartWrite(&out_);
}

void WatchStream::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  if (!ok) {
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
    return;
  }
  PumpLocked();
}

void WatchStream::OnCancel() {
  absl::MutexLock lock(&mu_);
  FinishLocked(grpc::Status::CANCELLED);
}

void WatchStream::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  Finish(status);
}

void WatchStream::OnDone() {
  std::optional<EventLog::WatcherId> watcher;
  {
    absl::MutexLock lock(&mu_);
    watcher = watcher_;
  }
  // After this, the log never calls OnReady again.
  if (watcher.has_value()) log_.Unsubscribe(*watcher);
  delete this;
}

}  // namespace proctor
