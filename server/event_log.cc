#include "server/event_log.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace proctor {

WatchFilter WatchFilter::FromRequest(const v1::WatchRequest& request) {
  WatchFilter filter;
  filter.ids.insert(request.ids().begin(), request.ids().end());
  filter.name = request.name();
  if (request.has_parent_id()) filter.parent_id = request.parent_id();
  if (request.has_parent_session()) filter.parent_session = request.parent_session();
  for (int type : request.types()) filter.types.push_back(static_cast<v1::EventType>(type));
  return filter;
}

KeptEvent::KeptEvent(const v1::Event& event)
    : cursor_(event.cursor()),
      type_(event.type()),
      has_process_(event.has_process()),
      session_(event.session()),
      id_(event.process().id()),
      parent_id_(event.process().parent_id()),
      parent_session_(event.process().parent_session()),
      name_(event.process().name()),
      bytes_(event.SerializeAsString()) {}

bool WatchFilter::Matches(const KeptEvent& event) const {
  if (!types.empty() && std::find(types.begin(), types.end(), event.type_) == types.end()) {
    return false;
  }
  if (!event.has_process_) {
    if (!ids.empty() || !name.empty() || parent_id.has_value() || visible) return false;
    return !parent_session.has_value() || event.session_ == *parent_session;
  }
  if (!ids.empty() && !ids.contains(event.id_)) return false;
  if (!name.empty() && event.name_ != name) return false;
  if (parent_id.has_value() && event.parent_id_ != *parent_id) return false;
  if (parent_session.has_value() && event.parent_session_ != *parent_session) return false;
  if (visible && !visible(event.id_)) {
    // The record of a released or evicted process is gone before its event is filtered;
    // whether it was in the subtree is its parent's to tell.
    bool gone = event.type_ == v1::EVENT_RELEASED || event.type_ == v1::EVENT_EVICTED;
    if (!gone || event.parent_id_ == 0 || !visible(event.parent_id_)) return false;
  }
  return true;
}

EventLog::EventLog(Options options, uint64_t last_cursor)
    : options_(options), last_cursor_(last_cursor), oldest_cursor_(last_cursor) {}

absl::Status EventLog::Publish(const std::vector<v1::Event>& events) {
  if (events.empty()) return absl::OkStatus();
  std::vector<Ready> due;
  {
    absl::MutexLock publishing(&publish_mu_);
    std::vector<EventPtr> published;
    std::vector<std::pair<WatcherId, std::shared_ptr<const WatchFilter>>> targets;
    {
      absl::MutexLock lock(&mu_);
      uint64_t previous = last_cursor_;
      for (const v1::Event& event : events) {
        if (event.cursor() <= previous) {
          return absl::InvalidArgumentError(absl::StrCat(
              "event cursor ", event.cursor(), " is not above the one before it (", previous,
              ")"));
        }
        previous = event.cursor();
      }
      published.reserve(events.size());
      for (const v1::Event& event : events) {
        published.push_back(std::make_shared<const KeptEvent>(event));
        window_.push_back(published.back());
      }
      last_cursor_ = previous;
      while (window_.size() > options_.window) {
        oldest_cursor_ = window_.front()->cursor();
        window_.pop_front();
      }
      // Watchers registered from here on replay these events from the window instead.
      for (const auto& [id, watcher] : watchers_) {
        if (!watcher.end.has_value()) targets.emplace_back(id, watcher.filter);
      }
    }
    std::vector<std::vector<EventPtr>> matched(targets.size());
    for (size_t i = 0; i < targets.size(); ++i) {
      for (const EventPtr& event : published) {
        if (targets[i].second->Matches(*event)) matched[i].push_back(event);
      }
    }
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < targets.size(); ++i) {
      auto it = watchers_.find(targets[i].first);
      if (it == watchers_.end() || matched[i].empty()) continue;
      QueueLocked(it->second, matched[i]);
      WakeLocked(it->first, it->second, due);
    }
  }
  RunReadies(due);
  return absl::OkStatus();
}

void EventLog::QueueLocked(Watcher& watcher, const std::vector<EventPtr>& events) {
  if (watcher.end.has_value()) return;
  std::deque<EventPtr>& into = watcher.replaying ? watcher.held : watcher.queue;
  size_t behind = watcher.replaying ? watcher.held.size()
                                    : watcher.queue.size() - watcher.replay_left;
  for (const EventPtr& event : events) {
    if (behind >= options_.max_behind) {
      // Every matching event before this one is queued: resuming just before it loses
      // nothing and repeats nothing.
      watcher.end = absl::ResourceExhaustedError(
          absl::StrCat("watcher fell more than ", options_.max_behind,
                       " events behind; reconnect from cursor ", event->cursor() - 1));
      return;
    }
    into.push_back(event);
    ++behind;
  }
}

void EventLog::WakeLocked(WatcherId id, Watcher& watcher, std::vector<Ready>& due) {
  if (!watcher.waiting || (watcher.queue.empty() && !watcher.end.has_value())) return;
  watcher.waiting = false;
  ++watcher.readies_running;
  due.push_back(Ready{id, watcher.ready});
}

void EventLog::RunReadies(const std::vector<Ready>& due) {
  if (due.empty()) return;
  for (const Ready& ready : due) {
    if (ready.ready) ready.ready();
  }
  absl::MutexLock lock(&mu_);
  for (const Ready& ready : due) {
    // Unsubscribe waits for readies_running to drop, so the watcher is still there.
    if (auto it = watchers_.find(ready.id); it != watchers_.end()) --it->second.readies_running;
  }
  readies_done_.SignalAll();
}

absl::StatusOr<EventLog::WatcherId> EventLog::Subscribe(WatchFilter filter,
                                                        std::optional<uint64_t> since,
                                                        std::function<void()> ready) {
  auto shared_filter = std::make_shared<const WatchFilter>(std::move(filter));
  WatcherId id;
  std::vector<EventPtr> kept;
  {
    absl::MutexLock lock(&mu_);
    if (closed_.has_value()) return *closed_;
    uint64_t from = since.value_or(last_cursor_);
    if (from < oldest_cursor_) {
      return absl::OutOfRangeError(absl::StrCat(
          "cursor ", from, " is older than the oldest kept (", oldest_cursor_,
          "); list again with Status and watch from the cursor it returns"));
    }
    if (from > last_cursor_) {
      return absl::OutOfRangeError(absl::StrCat(
          "cursor ", from, " is ahead of the newest event (", last_cursor_,
          "); list again with Status and watch from the cursor it returns"));
    }
    auto first = std::upper_bound(
        window_.begin(), window_.end(), from,
        [](uint64_t cursor, const EventPtr& event) { return cursor < event->cursor(); });
    kept.assign(first, window_.end());
    id = next_id_++;
    Watcher& watcher = watchers_[id];
    watcher.filter = shared_filter;
    watcher.ready = std::move(ready);
  }
  // Filtered without the lock, as in Publish; live events meanwhile wait in `held`.
  std::deque<EventPtr> queue;
  for (EventPtr& event : kept) {
    if (shared_filter->Matches(*event)) queue.push_back(std::move(event));
  }
  absl::MutexLock lock(&mu_);
  Watcher& watcher = watchers_.at(id);  // its id has not been handed out: still there
  watcher.replay_left = queue.size();
  queue.insert(queue.end(), watcher.held.begin(), watcher.held.end());
  watcher.held.clear();
  watcher.queue = std::move(queue);
  watcher.replaying = false;
  return id;
}

absl::StatusOr<EventLog::EventPtr> EventLog::Next(WatcherId id) {
  absl::MutexLock lock(&mu_);
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return absl::NotFoundError(absl::StrCat("no watcher ", id));
  Watcher& watcher = it->second;
  if (!watcher.queue.empty()) {
    EventPtr event = std::move(watcher.queue.front());
    watcher.queue.pop_front();
    if (watcher.replay_left > 0) --watcher.replay_left;
    return event;
  }
  if (watcher.end.has_value()) return *watcher.end;
  watcher.waiting = true;
  return EventPtr();
}

void EventLog::Unsubscribe(WatcherId id) {
  absl::MutexLock lock(&mu_);
  while (true) {
    auto it = watchers_.find(id);
    if (it == watchers_.end()) return;
    if (it->second.readies_running == 0) {
      watchers_.erase(it);
      return;
    }
    readies_done_.Wait(&mu_);
  }
}

void EventLog::EndAll(const absl::Status& status) {
  std::vector<Ready> due;
  {
    absl::MutexLock lock(&mu_);
    closed_ = status;
    for (auto& [id, watcher] : watchers_) {
      if (!watcher.end.has_value()) watcher.end = status;
      WakeLocked(id, watcher, due);
    }
  }
  RunReadies(due);
}

uint64_t EventLog::LastCursor() {
  absl::MutexLock lock(&mu_);
  return last_cursor_;
}

uint64_t EventLog::OldestCursor() {
  absl::MutexLock lock(&mu_);
  return oldest_cursor_;
}

size_t EventLog::WatcherCount() {
  absl::MutexLock lock(&mu_);
  return watchers_.size();
}

}  // namespace proctor
