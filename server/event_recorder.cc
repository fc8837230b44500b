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
    case EventKind::kRestarting:
      return v1::EVENT_RESTARTING;
    case EventKind::kGaveUp:
      return v1::EVENT_GAVE_UP;
    case EventKind::kReady:
      return v1::EVENT_READY;
    case EventKind::kWatchdog:
      return v1::EVENT_WATCHDOG;
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
  if (event.kind == EventKind::kRestarting) *out.mutable_delay() = ToDurationProto(event.delay);
  return out;
}

ProcessInfo EventRecorder::FromProto(const v1::Process& process) {
  return proctor::FromProto(process);
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

absl::Status EventRecorder::AppendAfterHeldBackLocked(std::vector<v1::Event>& fresh) {
  if (unjournaled_.empty()) return journal_->Append(fresh);  // the usual case: no copy
  // A copy: Append resets the cursors of what it refuses, and the held-back keep theirs.
  std::vector<v1::Event> batch = unjournaled_;
  batch.insert(batch.end(), fresh.begin(), fresh.end());
  absl::Status journaled = journal_->Append(batch);
  if (journaled.ok()) {
    spdlog::warn("the journal takes events again; {} held back are written", unjournaled_.size());
    unjournaled_.clear();
    behind_.store(false, std::memory_order_release);
  }
  return journaled;
}

absl::Status EventRecorder::Flush() {
  if (!behind_.load(std::memory_order_acquire)) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  std::vector<v1::Event> none;
  absl::Status journaled = AppendAfterHeldBackLocked(none);
  if (journaled.ok()) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the journal ", journal_->path(), " cannot be written (", journaled.message(),
      "; is its disk full?): no process is started until it can be, so that none is lost; "
      "running processes go on"));
}

absl::Status EventRecorder::Record(const std::vector<SupervisorEvent>& events) {
  std::vector<v1::Event> protos;
  protos.reserve(events.size());
  for (const SupervisorEvent& event : events) protos.push_back(ToProto(event));
  absl::Status journaled = absl::OkStatus();
  if (journal_ != nullptr) {
    absl::MutexLock lock(&mu_);
    // The events keep the cursors the supervisor gave them, after any held back.
    journaled = AppendAfterHeldBackLocked(protos);
    if (!journaled.ok()) {
      for (size_t i = 0; i < protos.size(); ++i) protos[i].set_cursor(events[i].cursor);
      // Bounded: past this, the oldest are given up (and said to be).
      constexpr size_t kMaxUnjournaled = 1 << 16;
      unjournaled_.insert(unjournaled_.end(), protos.begin(), protos.end());
      if (unjournaled_.size() > kMaxUnjournaled) {
        size_t dropped = unjournaled_.size() - kMaxUnjournaled;
        spdlog::error("{} events could not be journaled and are given up", dropped);
        unjournaled_.erase(unjournaled_.begin(), unjournaled_.begin() + dropped);
      }
      behind_.store(true, std::memory_order_release);
    }
  }
  // Watchers see them even when the disk refused them: the daemon is still running them.
  if (absl::Status published = log_.Publish(protos); !published.ok()) {
    spdlog::error("events {}..{} not published: {}", events.front().cursor,
                  events.back().cursor, std::string(published.message()));
  }
  if (observer_) observer_(events);
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
