#include "server/event_loop.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// `err` is the errno of the call `what` describes (its name and the arguments that matter).
absl::Status SyscallError(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Closes a descriptor unless released; lets Create() return early without leaking any.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::Status AddToEpoll(int epoll_fd, int fd) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    int err = errno;
    return SyscallError(absl::StrCat("epoll_ctl(ADD, fd=", fd, ")"), err);
  }
  return absl::OkStatus();
}

// Empties an eventfd or timerfd: both are read as one 8-byte counter. EAGAIN is no error: the
// counter can be emptied between epoll_wait and the read (a timerfd re-armed meanwhile).
void DrainCounter(int fd, const char* what) {
  uint64_t count;
  if (read(fd, &count, sizeof(count)) < 0) {
    int err = errno;
    if (err != EAGAIN) spdlog::error("read({}): {}", what, std::strerror(err));
  }
}

sigset_t DaemonSignals() {
  sigset_t set;
  // With a valid set and signal numbers these cannot fail.
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR2}) sigaddset(&set, sig);
  return set;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  OwnedFd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
  if (epoll_fd.get() < 0) {
    int err = errno;
    return SyscallError("epoll_create1", err);
  }
  // CLOCK_MONOTONIC, as the deadlines: a wall clock step must not move the daemon's timers.
  OwnedFd timer_fd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (timer_fd.get() < 0) {
    int err = errno;
    return SyscallError("timerfd_create(CLOCK_MONOTONIC)", err);
  }
  OwnedFd wake_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake_fd.get() < 0) {
    int err = errno;
    return SyscallError("eventfd", err);
  }
  for (int fd : {timer_fd.get(), wake_fd.get()}) {
    if (absl::Status s = AddToEpoll(epoll_fd.get(), fd); !s.ok()) return s;
  }
  return std::unique_ptr<EventLoop>(
      new EventLoop(epoll_fd.release(), timer_fd.release(), wake_fd.release()));
}

EventLoop::EventLoop(int epoll_fd, int timer_fd, int wake_fd)
    : epoll_fd_(epoll_fd), timer_fd_(timer_fd), wake_fd_(wake_fd) {}

EventLoop::~EventLoop() {
  close(epoll_fd_);
  close(timer_fd_);
  close(wake_fd_);
}

absl::Status EventLoop::Watch(int fd, std::function<void()> on_ready) {
  absl::MutexLock lock(&mu_);
  // Under the lock, so that the callback is in place before the loop can see `fd` ready.
  if (absl::Status s = AddToEpoll(epoll_fd_, fd); !s.ok()) return s;
  watched_[fd] = std::make_shared<std::function<void()>>(std::move(on_ready));
  return absl::OkStatus();
}

void EventLoop::Unwatch(int fd) {
  absl::MutexLock lock(&mu_);
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr) != 0) {
    int err = errno;
    // ENOENT: never watched; EBADF: closed before Unwatch, against the contract. Either way
    // the caller's bookkeeping is wrong, and there is nothing it could do about it here.
    spdlog::error("epoll_ctl(DEL, fd={}): {}", fd, std::strerror(err));
  }
  watched_.erase(fd);
}

TimerId EventLoop::After(absl::Duration delay, std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  TimerId id = next_timer_++;
  absl::Duration deadline = RealClock::RealMonotonicNow() + delay;
  deadlines_.emplace(deadline, id);
  timers_.emplace(id, std::make_pair(deadline, std::move(callback)));
  if (deadlines_.begin()->second == id) ArmTimerLocked();
  return id;
}

void EventLoop::Cancel(TimerId id) {
  absl::MutexLock lock(&mu_);
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  deadlines_.erase({it->second.first, id});
  timers_.erase(it);
  // A timerfd left armed for a cancelled deadline only wakes the loop once for nothing.
}

void EventLoop::ArmTimerLocked() {
  // An absolute deadline on the timerfd's own clock: no time slips between reading the clock
  // and arming, and a deadline already past fires at once. A zero it_value disarms, so the
  // earliest deadline that still fires is 1ns after boot.
  absl::Duration deadline = deadlines_.empty()
                                ? absl::ZeroDuration()
                                : std::max(deadlines_.begin()->first, absl::Nanoseconds(1));
  itimerspec spec{};
  spec.it_value = absl::ToTimespec(deadline);
  if (timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &spec, nullptr) != 0) {
    int err = errno;
    // Only a bad descriptor or timespec can get here; the timers would stall, so say so.
    spdlog::error("timerfd_settime(ABSTIME, {} after boot): {}", absl::FormatDuration(deadline),
                  std::strerror(err));
  }
}

void EventLoop::Wake() {
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    int err = errno;
    // EAGAIN: the counter is full, so the loop has a wake-up pending already.
    if (err != EAGAIN) spdlog::error("write(eventfd): {}", std::strerror(err));
  }
}

void EventLoop::Post(std::function<void()> closure) {
  {
    absl::MutexLock lock(&mu_);
    posted_.push_back(std::move(closure));
  }
  Wake();
}

void EventLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
}

void EventLoop::RunDueTimers() {
  DrainCounter(timer_fd_, "timerfd");
  // Timers that come due while these run (zero delays added by a callback among them) wait
  // for the next round, so a timer that re-adds itself cannot keep the loop from epoll.
  const absl::Duration now = RealClock::RealMonotonicNow();
  for (;;) {
    std::function<void()> callback;
    {
      // One at a time, so that a callback may Cancel a timer due in the same round.
      absl::MutexLock lock(&mu_);
      if (deadlines_.empty() || deadlines_.begin()->first > now) {
        ArmTimerLocked();
        return;
      }
      TimerId id = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      auto it = timers_.find(id);
      callback = std::move(it->second.second);
      timers_.erase(it);
    }
    callback();
  }
}

void EventLoop::RunPosted() {
  DrainCounter(wake_fd_, "eventfd");
  std::vector<std::function<void()>> posted;
  {
    absl::MutexLock lock(&mu_);
    posted.swap(posted_);
  }
  for (auto& closure : posted) closure();
}

void EventLoop::RunWatcher(int fd) {
  std::shared_ptr<std::function<void()>> callback;
  {
    absl::MutexLock lock(&mu_);
    // Looked up per event: an earlier callback of this round may have unwatched `fd`. The
    // shared_ptr keeps the callback alive should it unwatch its own descriptor.
    auto it = watched_.find(fd);
    if (it == watched_.end()) return;
    callback = it->second;
  }
  (*callback)();
}

void EventLoop::Run() {
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    int n = epoll_wait(epoll_fd_, events, kMaxEvents, -1);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;  // a stop/continue signal, or one not blocked
      // Only EBADF, EFAULT or EINVAL remain: a bug here. A daemon without its loop can
      // neither end its workers nor finish the calls waiting on them, so returning would
      // leave it hanging; like libuv, give up loudly.
      spdlog::critical("epoll_wait: {}", std::strerror(err));
      std::abort();
    }
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == timer_fd_) {
        RunDueTimers();
      } else if (fd == wake_fd_) {
        RunPosted();
      } else {
        RunWatcher(fd);
      }
    }
  }
}

absl::Status BlockDaemonSignals() {
  sigset_t set = DaemonSignals();
  // pthread_sigmask returns the error number rather than setting errno.
  if (int err = pthread_sigmask(SIG_BLOCK, &set, nullptr); err != 0) {
    return SyscallError("pthread_sigmask(SIG_BLOCK, SIGCHLD SIGTERM SIGINT SIGHUP SIGUSR2)", err);
  }
  // A client hanging up must not kill the daemon mid-write; the write fails with EPIPE.
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    int err = errno;
    return SyscallError("signal(SIGPIPE, SIG_IGN)", err);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> OpenDaemonSignalFd() {
  sigset_t set = DaemonSignals();
  int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    return SyscallError("signalfd(SIGCHLD SIGTERM SIGINT SIGHUP SIGUSR2)", err);
  }
  return fd;
}

std::vector<DaemonSignal> ReadSignals(int signal_fd) {
  std::vector<DaemonSignal> signals;
  for (;;) {
    signalfd_siginfo info;
    ssize_t n = read(signal_fd, &info, sizeof(info));
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err != EAGAIN) spdlog::error("read(signalfd={}): {}", signal_fd, std::strerror(err));
      break;
    }
    // A signalfd hands out whole signalfd_siginfo records only.
    if (n != sizeof(info)) break;
    switch (info.ssi_signo) {
      case SIGCHLD:
        signals.push_back(DaemonSignal::kChildExited);
        break;
      case SIGHUP:
        signals.push_back(DaemonSignal::kReload);
        break;
      case SIGUSR2:
        signals.push_back(DaemonSignal::kRestart);
        break;
      default:
        signals.push_back(DaemonSignal::kStop);
    }
  }
  return signals;
}

}  // namespace proctor
