// EventLoop: the daemon's one epoll thread. It watches descriptors (pidfds, the signalfd),
// runs timers from a timerfd, and runs closures posted from other threads.
//
// Callbacks run on the loop thread, one at a time, outside the loop's own lock, so they may
// call back into the loop (Watch, After, Post...). Watch/Unwatch/After/Cancel/Post are
// thread-safe. A descriptor must be unwatched before it is closed.
#ifndef PROCTOR_SERVER_EVENT_LOOP_H_
#define PROCTOR_SERVER_EVENT_LOOP_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/clock.h"

namespace proctor {

class EventLoop final : public Timers {
 public:
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop() override;

  // Calls `on_ready` on the loop thread whenever `fd` is readable.
  absl::Status Watch(int fd, std::function<void()> on_ready);
  void Unwatch(int fd);

  TimerId After(absl::Duration delay, std::function<void()> callback) override;
  void Cancel(TimerId id) override;

  // Runs `closure` on the loop thread soon.
  void Post(std::function<void()> closure);

  // Runs callbacks until Stop(); call from one thread only.
  void Run();
  void Stop();

 private:
  EventLoop(int epoll_fd, int timer_fd, int wake_fd);
  void RunDueTimers();
  void RunPosted();
  void ArmTimerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int epoll_fd_;
  const int timer_fd_;
  const int wake_fd_;  // eventfd: Post() and Stop() wake the loop through it

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<int, std::shared_ptr<std::function<void()>>> watched_ ABSL_GUARDED_BY(mu_);
  TimerId next_timer_ ABSL_GUARDED_BY(mu_) = 1;
  std::set<std::pair<absl::Time, TimerId>> deadlines_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TimerId, std::pair<absl::Time, std::function<void()>>> timers_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
};

// Blocks the signals proctord handles (SIGCHLD, SIGTERM, SIGINT, SIGHUP) in the calling thread
// (so in every thread it starts later) and ignores SIGPIPE. Call first thing in main().
void BlockDaemonSignals();

// What the daemon's signals ask of it.
enum class DaemonSignal {
  kChildExited,  // SIGCHLD
  kStop,         // SIGTERM, SIGINT
  kReload,       // SIGHUP
};

// A signalfd for the signals BlockDaemonSignals() blocked; ReadSignals drains it.
absl::StatusOr<int> OpenDaemonSignalFd();
std::vector<DaemonSignal> ReadSignals(int signal_fd);

}  // namespace proctor

#endif  // PROCTOR_SERVER_EVENT_LOOP_H_
