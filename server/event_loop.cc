#include "server/event_loop.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace proctor {
namespace {

absl::Status Errno(const char* what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

sigset_t DaemonSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, sig);
  return set;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) return Errno("epoll_create1");
  int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (timer_fd < 0) return Errno("timerfd_create");
  int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return Errno("eventfd");
  for (int fd : {timer_fd, wake_fd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) return Errno("epoll_ctl");
  }
  return std::unique_ptr<EventLoop>(new EventLoop(epoll_fd, timer_fd, wake_fd));
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
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return Errno("epoll_ctl(ADD)");
  watched_[fd] = std::make_shared<std::function<void()>>(std::move(on_ready));
  return absl::OkStatus();
}

void EventLoop::Unwatch(int fd) {
  absl::MutexLock lock(&mu_);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  watched_.erase(fd);
}

TimerId EventLoop::After(absl::Duration delay, std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  TimerId id = next_timer_++;
  absl::Time deadline = absl::Now() + delay;
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
  itimerspec spec{};
  if (!deadlines_.empty()) {
    absl::Duration wait = deadlines_.begin()->first - absl::Now();
    if (wait < absl::Nanoseconds(1)) wait = absl::Nanoseconds(1);
    spec.it_value = absl::ToTimespec(wait);
  }
  timerfd_settime(timer_fd_, 0, &spec, nullptr);
}

void EventLoop::Post(std::function<void()> closure) {
  {
    absl::MutexLock lock(&mu_);
    posted_.push_back(std::move(closure));
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

void EventLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

void EventLoop::RunDueTimers() {
  uint64_t expirations;
  (void)!read(timer_fd_, &expirations, sizeof(expirations));
  std::vector<std::function<void()>> due;
  {
    absl::MutexLock lock(&mu_);
    absl::Time now = absl::Now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      TimerId id = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      auto it = timers_.find(id);
      due.push_back(std::move(it->second.second));
      timers_.erase(it);
    }
    ArmTimerLocked();
  }
  for (auto& callback : due) callback();
}

void EventLoop::RunPosted() {
  uint64_t count;
  (void)!read(wake_fd_, &count, sizeof(count));
  std::vector<std::function<void()>> posted;
  {
    absl::MutexLock lock(&mu_);
    posted.swap(posted_);
  }
  for (auto& closure : posted) closure();
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
    if (n < 0) continue;  // EINTR
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == timer_fd_) {
        RunDueTimers();
      } else if (fd == wake_fd_) {
        RunPosted();
      } else {
        std::shared_ptr<std::function<void()>> callback;
        {
          absl::MutexLock lock(&mu_);
          auto it = watched_.find(fd);
          if (it != watched_.end()) callback = it->second;
        }
        if (callback) (*callback)();
      }
    }
  }
}

void BlockDaemonSignals() {
  sigset_t set = DaemonSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

absl::StatusOr<int> OpenDaemonSignalFd() {
  sigset_t set = DaemonSignals();
  int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) return Errno("signalfd");
  return fd;
}

std::vector<DaemonSignal> ReadSignals(int signal_fd) {
  std::vector<DaemonSignal> signals;
  signalfd_siginfo info;
  while (read(signal_fd, &info, sizeof(info)) == sizeof(info)) {
    switch (info.ssi_signo) {
      case SIGCHLD:
        signals.push_back(DaemonSignal::kChildExited);
        break;
      case SIGHUP:
        signals.push_back(DaemonSignal::kReload);
        break;
      default:
        signals.push_back(DaemonSignal::kStop);
    }
  }
  return signals;
}

}  // namespace proctor
