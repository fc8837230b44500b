#include "server/event_recorder.h"

#include "absl/strings/str_cat.h"
#include "server/proctor_service.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

v1::EventType TypeOf(EventKind kind) {
  switch (kind) {
    case EventKind::kStarted:
      return v1::EVENT_STARTED;
    case EventKind::kExited:
      return v1::EVENT_EXITED;
    case EventKind::kTerminateRequested:
      return v1::EVENT_TERMINATE_REQUESTED;
    case EventKind::kReleased:
      return v1::EVENT_RELEASED;
    case EventKind::kEvicted:
      return v1::EVENT_EVICTED;
    case EventKind::kSessionOpened:
      return v1::EVENT_SESSION_OPENED;
    case EventKind::kSessionEnded:
      return v1::EVENT_SESSION_ENDED;
  }
  return v1::EVENT_TYPE_UNSPECIFIED;
}

}  // namespace

EventRecorder::EventRecorder(Journal* journal, EventLog& log, Retained retained,
                             size_t compact_every)
    : journal_(journal),
      log_(log),
      retained_(std::move(retained)),
      compact_every_(compact_every) {}

v1::Event EventRecorder::ToProto(const SupervisorEvent& event) {
  v1::Event out;
  out.set_cursor(event.cursor);
  out.mutable_time()->set_seconds(absl::ToUnixSeconds(event.time));
  out.mutable_time()->set_nanos(static_cast<int32_t>(
      (event.time - absl::FromUnixSeconds(absl::ToUnixSeconds(event.time))) /
      absl::Nanoseconds(1)));
  out.set_type(TypeOf(event.kind));
  if (event.kind == EventKind::kSessionOpened || event.kind == EventKind::kSessionEnded) {
    out.set_session(event.session);
  } else {
    proctor::ToProto(event.process, out.mutable_process());
  }
  return out;
}

absl::Status EventRecorder::Record(const std::vector<SupervisorEvent>& events) {
  std::vector<v1::Event> protos;
  protos.reserve(events.size());
  for (const SupervisorEvent& event : events) protos.push_back(ToProto(event));
  absl::Status journaled = absl::OkStatus();
  if (journal_ != nullptr) {
    // The events keep the cursors the supervisor gave them.
    journaled = journal_->Append(protos);
    if (!journaled.ok()) {
      for (size_t i = 0; i < protos.size(); ++i) protos[i].set_cursor(events[i].cursor);
    }
  }
  // Watchers see them even when the disk refused them: the daemon is still running them.
  if (absl::Status published = log_.Publish(protos); !published.ok()) {
    spdlog::error("events {}..{} not published: {}", events.front().cursor,
                  events.back().cursor, std::string(published.message()));
  }
  since_compaction_ += events.size();
  if (journal_ != nullptr && since_compaction_ >= compact_every_) {
    since_compaction_ = 0;
    absl::flat_hash_set<uint64_t> ids;
    absl::flat_hash_set<uint64_t> sessions;
    retained_(ids, sessions);
    // What watchers may still resume from stays: the log's window.
    absl::StatusOr<Journal::CompactStats> compacted =
        journal_->Compact(ids, sessions, log_.LastCursor() - log_.OldestCursor());
    if (compacted.ok()) {
      spdlog::debug("journal compacted from {} to {} rows", compacted->rows_before,
                    compacted->rows_after);
    } else {
      spdlog::warn("journal not compacted: {}", std::string(compacted.status().message()));
    }
  }
  return journaled;
}

}  // namespace proctor
