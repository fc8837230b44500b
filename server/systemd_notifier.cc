#include "server/systemd_notifier.h"

#include <systemd/sd-daemon.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace proctor {

SystemdNotifier::SystemdNotifier(Clock& clock, Timers& timers, std::function<std::string()> status,
                                 absl::Duration status_interval)
    : clock_(clock),
      timers_(timers),
      status_(std::move(status)),
      status_interval_(status_interval),
      active_(std::getenv("NOTIFY_SOCKET") != nullptr) {
  uint64_t usec = 0;
  // Checks WATCHDOG_PID against our pid too; 0 when the manager wants no pings (from us).
  int enabled = sd_watchdog_enabled(/*unset_environment=*/0, &usec);
  if (enabled < 0) {
    spdlog::warn("the service manager's watchdog settings cannot be read: {}",
                 std::strerror(-enabled));
  }
  watchdog_interval_ = enabled > 0 ? absl::Microseconds(usec) / 2 : absl::ZeroDuration();
}

SystemdNotifier::~SystemdNotifier() {
  absl::MutexLock lock(&mu_);
  if (status_timer_ != 0) timers_.Cancel(status_timer_);
  if (watchdog_timer_ != 0) timers_.Cancel(watchdog_timer_);
}

void SystemdNotifier::Send(const std::string& message) {
  int sent = sd_notify(/*unset_environment=*/0, message.c_str());
  if (sent >= 0) return;
  absl::MutexLock lock(&mu_);
  if (std::exchange(send_failed_, true)) return;
  spdlog::warn("cannot notify the service manager (NOTIFY_SOCKET): {}", std::strerror(-sent));
}

void SystemdNotifier::Ready() {
  if (!active_) return;
  std::string status = status_();
  bool start_watchdog;
  {
    absl::MutexLock lock(&mu_);
    last_status_ = status;
    last_status_time_ = clock_.MonotonicNow();
    start_watchdog = watchdog_interval_ > absl::ZeroDuration() && !watchdog_started_;
    watchdog_started_ = true;
  }
  Send(absl::StrCat("READY=1\nSTATUS=", status));
  if (start_watchdog) {
    spdlog::info("service manager watchdog: a ping every {}",
                 absl::FormatDuration(watchdog_interval_));
    Ping();
  }
}

void SystemdNotifier::Ping() {
  Send("WATCHDOG=1");
  absl::MutexLock lock(&mu_);
  watchdog_timer_ = timers_.After(watchdog_interval_, [this] { Ping(); });
}

void SystemdNotifier::StatusChanged() {
  if (!active_) return;
  absl::MutexLock lock(&mu_);
  if (stopping_ || status_timer_ != 0) return;
  absl::Duration wait = std::max(absl::ZeroDuration(),
                                 last_status_time_ + status_interval_ - clock_.MonotonicNow());
  status_timer_ = timers_.After(wait, [this] { SendStatus(); });
}

void SystemdNotifier::SendStatus() {
  {
    absl::MutexLock lock(&mu_);
    status_timer_ = 0;
    if (stopping_) return;
  }
  std::string status = status_();
  {
    absl::MutexLock lock(&mu_);
    last_status_time_ = clock_.MonotonicNow();
    if (status == last_status_) return;
    last_status_ = status;
  }
  Send(absl::StrCat("STATUS=", status));
}

void SystemdNotifier::Reloading(absl::string_view what) {
  if (!active_) return;
  Send(absl::StrCat("RELOADING=1\nSTATUS=", what));
}

void SystemdNotifier::Stopping(absl::string_view what) {
  if (!active_) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (status_timer_ != 0) timers_.Cancel(status_timer_);
    status_timer_ = 0;
  }
  Send(absl::StrCat("STOPPING=1\nSTATUS=", what));
}

}  // namespace proctor
