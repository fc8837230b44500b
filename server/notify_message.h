// The sd_notify protocol as systemd defines it (sd_notify(3)): one datagram of newline-separated
// VARIABLE=VALUE assignments. NotifyMessage is what proctord reads from one datagram.
#ifndef PROCTOR_SERVER_NOTIFY_MESSAGE_H_
#define PROCTOR_SERVER_NOTIFY_MESSAGE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace proctor {

struct NotifyMessage {
  bool ready = false;                         // READY=1
  std::optional<std::string> status;          // STATUS=…
  bool watchdog_ping = false;                 // WATCHDOG=1
  bool watchdog_trigger = false;              // WATCHDOG=trigger: act as if the period passed
  std::optional<absl::Duration> watchdog_period;  // WATCHDOG_USEC=…
  bool stopping = false;                      // STOPPING=1
  bool reloading = false;                     // RELOADING=1
  std::optional<int> errno_value;             // ERRNO=…
  std::optional<absl::Duration> extend_timeout;   // EXTEND_TIMEOUT_USEC=…
};

// The largest datagram proctord reads; a longer one is dropped whole.
inline constexpr size_t kMaxNotifyMessageBytes = 4096;

// Parses one datagram. Assignments proctord does not know (MAINPID=, FDSTORE=, custom ones)
// are ignored, as systemd ignores unknown ones; a line without '=', a NUL byte, or a known
// variable with a value it cannot take (READY=2, WATCHDOG_USEC=abc or 0, ERRNO=-1) makes the
// whole message INVALID_ARGUMENT naming the line, so that nothing of a malformed message is
// applied. Empty lines (a trailing newline) are fine; a variable given twice takes its last
// value; a *_USEC of 2^63 µs or more (systemd's "infinity" is 2^64-1) is InfiniteDuration().
absl::StatusOr<NotifyMessage> ParseNotifyMessage(absl::string_view datagram);

}  // namespace proctor

#endif  // PROCTOR_SERVER_NOTIFY_MESSAGE_H_
