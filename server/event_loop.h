// EventLoop: the daemon's one epoll thread. It watches descriptors (pidfds, the signalfd),
// runs timers from a timerfd, and runs closures posted from other threads.
//
// Callbacks run on the loop thread, one at a time, outside the loop's own lock, so they may
// call back into the loop (Watch, After, Post...). Watch/Unwatch/After/Cancel/Post/Stop are
// thread-safe. A descriptor must be unwatched before it is closed.
//
// Timers run on the monotonic clock (CLOCK_MONOTONIC, RealClock::RealMonotonicNow()): a step
// of the wall clock neither delays nor hastens them. Due timers run in deadline order (ties in
// the order After() was called); a timer cancelled by an earlier callback does not run.
//
// Errors of the loop's own descriptors that no caller can act on (a failed timerfd_settime,
// write to the eventfd, epoll_ctl(DEL)) are logged with spdlog.
#ifndef PROCTOR_SERVER_EVENT_LOOP_H_
#define PROCTOR_SERVER_EVENT_LOOP_H_

#include <functional>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace proctor {

class EventLoop final : public Timers {
 public:
  // INTERNAL naming the syscall when the epoll, timerfd or eventfd cannot be made.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  // REQUIRES: Run() has returned (or never ran).
  ~EventLoop() override;

  // Calls `on_ready` on the loop thread whenever `fd` is readable (or hung up), until
  // Unwatch(fd). INTERNAL naming `fd` if epoll refuses it (already watched, not pollable).
  absl::Status Watch(int fd, std::function<void()> on_ready);
  // Called on the loop thread, `fd`'s callback is not started again once Unwatch returns;
  // called from another thread, a callback the loop is about to start may still run once.
  void Unwatch(int fd);

  TimerId After(absl::Duration delay, std::function<void()> callback) override;
  void Cancel(TimerId id) override;

  // Runs `closure` on the loop thread soon, after the closures posted before it.
  void Post(std::function<void()> closure);

  // Runs callbacks on the calling thread until Stop(); call from one thread only. Closures
  // still posted and timers still pending when it returns are dropped, not run.
  void Run();
  // Makes Run() return; callbacks for events it has already taken from epoll may still run.
  void Stop();

 private:
  EventLoop(int epoll_fd, int timer_fd, int wake_fd);
  void Wake();
  void RunDueTimers();
  void RunPosted();
  void RunWatcher(int fd);
  void ArmTimerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int epoll_fd_;
  const int timer_fd_;  // CLOCK_MONOTONIC, armed at the earliest deadline
  const int wake_fd_;   // eventfd: Post() and Stop() wake the loop through it

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<int, std::shared_ptr<std::function<void()>>> watched_ ABSL_GUARDED_BY(mu_);
  TimerId next_timer_ ABSL_GUARDED_BY(mu_) = 1;
  // Deadlines are times since boot on the monotonic clock, as RealMonotonicNow() gives them.
  std::set<std::pair<absl::Duration, TimerId>> deadlines_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TimerId, std::pair<absl::Duration, std::function<void()>>> timers_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
};

// Blocks the signals proctord handles (SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR2) in the calling
// thread
// (so in every thread it starts later) and ignores SIGPIPE. Call first thing in main(), before
// any thread exists. INTERNAL if the kernel refuses.
absl::Status BlockDaemonSignals();

// What the daemon's signals ask of it.
enum class DaemonSignal {
  kChildExited,  // SIGCHLD
  kStop,         // SIGTERM, SIGINT
  kReload,       // SIGHUP
  kRestart,      // SIGUSR2: start again in place, keeping the workers
};

// A non-blocking signalfd for the signals BlockDaemonSignals() blocked; the caller owns it.
absl::StatusOr<int> OpenDaemonSignalFd();
// Drains `signal_fd`: the signals that arrived since the last call, in order.
std::vector<DaemonSignal> ReadSignals(int signal_fd);

}  // namespace proctor

#endif  // PROCTOR_SERVER_EVENT_LOOP_H_
