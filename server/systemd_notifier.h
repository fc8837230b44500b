// SystemdNotifier: proctord's side of sd_notify(3), towards the service manager that started
// it (systemd with Type=notify; see deploy/proctord.service).
//
// Inactive, every call a no-op, unless NOTIFY_SOCKET is set in proctord's environment. Then:
// - Ready(): READY=1 with STATUS= (the counts `status` gives), and the watchdog starts: when
//   the manager set WATCHDOG_USEC (and WATCHDOG_PID is unset or proctord's own pid),
//   WATCHDOG=1 every half of that period, from `timers` (the event loop: a loop that stops
//   turning stops the pings, and the manager restarts proctord).
// - StatusChanged(): STATUS= again once what `status` says has changed, at most once per
//   `status_interval` (a burst of exits sends one line).
// - Reloading(what): RELOADING=1 (Ready() again ends it); Stopping(what): STOPPING=1. Both
//   with STATUS=what. After Stopping, StatusChanged sends nothing more.
// The environment is left as it is: proctord started again in place (SIGUSR2) speaks to the
// same manager as the same main pid. Workers never see these variables (WorkerBaseEnvironment).
//
// Thread-safe. `status` is called without the notifier's lock held, on the timers' thread.
#ifndef PROCTOR_SERVER_SYSTEMD_NOTIFIER_H_
#define PROCTOR_SERVER_SYSTEMD_NOTIFIER_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace proctor {

class SystemdNotifier {
 public:
  static constexpr absl::Duration kDefaultStatusInterval = absl::Seconds(1);

  // `clock` and `timers` must outlive the notifier.
  SystemdNotifier(Clock& clock, Timers& timers, std::function<std::string()> status,
                  absl::Duration status_interval = kDefaultStatusInterval);
  // Cancels its timers.
  ~SystemdNotifier();

  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  bool active() const { return active_; }
  // The watchdog ping interval (half of WATCHDOG_USEC); zero when the manager set none.
  absl::Duration watchdog_interval() const { return watchdog_interval_; }

  void Ready();
  void StatusChanged();
  void Reloading(absl::string_view what);
  void Stopping(absl::string_view what);

 private:
  // Sends `message` (newline-separated assignments); a failure is logged once.
  void Send(const std::string& message);
  void SendStatus();
  void Ping();

  Clock& clock_;
  Timers& timers_;
  const std::function<std::string()> status_;
  const absl::Duration status_interval_;
  const bool active_;
  absl::Duration watchdog_interval_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool send_failed_ ABSL_GUARDED_BY(mu_) = false;
  std::string last_status_ ABSL_GUARDED_BY(mu_);
  absl::Duration last_status_time_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  TimerId status_timer_ ABSL_GUARDED_BY(mu_) = 0;
  bool watchdog_started_ ABSL_GUARDED_BY(mu_) = false;
  TimerId watchdog_timer_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_SYSTEMD_NOTIFIER_H_
