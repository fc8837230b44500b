#include "server/event_recorder.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "server/proctor_service.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

using google::protobuf::util::TimeUtil;

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
  *out.mutable_time() = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(event.time));
  out.set_type(TypeOf(event.kind));
  if (event.kind == EventKind::kSessionOpened || event.kind == EventKind::kSessionEnded) {
    out.set_session(event.session);
  } else {
    proctor::ToProto(event.process, out.mutable_process());
  }
  return out;
}

ProcessInfo EventRecorder::FromProto(const v1::Process& process) {
  auto time_of = [](const google::protobuf::Timestamp& t) {
    return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
  };
  auto duration_of = [](const google::protobuf::Duration& d) {
    return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
  };
  ProcessInfo info;
  info.id = process.id();
  info.name = process.name();
  info.pid = process.pid();
  info.running = process.state() == v1::STATE_RUNNING;
  info.lost = process.lost();
  if (!info.running) {
    if (!info.lost) {
      info.status = process.signal() != 0
                        ? WaitStatus::Signaled(process.signal(), process.core_dumped())
                        : WaitStatus::Exited(process.exitcode());
    }
    info.end_time = time_of(process.end_time());
    info.usage = ResourceUsage{.user_cpu = duration_of(process.user_cpu()),
                               .system_cpu = duration_of(process.system_cpu()),
                               .max_rss_bytes = process.max_rss_bytes()};
  } else {
    info.end_time = absl::InfinitePast();
  }
  info.daemon = process.daemon();
  info.parent_id = process.parent_id();
  info.parent_session = process.parent_session();
  info.children.assign(process.children().begin(), process.children().end());
  info.target = process.target();
  info.args.assign(process.args().begin(), process.args().end());
  info.cwd = process.cwd();
  info.start_time = time_of(process.start_time());
  info.stdout_path = process.stdout_path();
  info.stderr_path = process.stderr_path();
  return info;
}

EventRecorder::Rebuilt EventRecorder::Rebuild(const std::vector<v1::Event>& events) {
  // The last word on each id, in the order the ids first appeared.
  absl::flat_hash_map<uint64_t, const v1::Event*> last;
  std::vector<uint64_t> order;
  for (const v1::Event& event : events) {
    if (!event.has_process()) continue;
    auto [it, inserted] = last.insert_or_assign(event.process().id(), &event);
    if (inserted) order.push_back(event.process().id());
  }
  Rebuilt rebuilt;
  for (uint64_t id : order) {
    const v1::Event& event = *last.at(id);
    if (event.type() == v1::EVENT_RELEASED || event.type() == v1::EVENT_EVICTED) continue;
    ProcessInfo info = FromProto(event.process());
    (info.running ? rebuilt.running : rebuilt.ended).push_back(std::move(info));
  }
  return rebuilt;
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
