#include "server/notify_message.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace proctor {
namespace {

// Long enough to recognise a line in a log, short enough that a 4 KiB STATUS= does not fill it.
constexpr size_t kQuotedLineLimit = 64;

absl::Status BadLine(size_t number, absl::string_view line, absl::string_view why) {
  std::string quoted = absl::CEscape(line.substr(0, kQuotedLineLimit));
  if (line.size() > kQuotedLineLimit) absl::StrAppend(&quoted, "...");
  return absl::InvalidArgumentError(absl::StrCat("line ", number, " \"", quoted, "\": ", why));
}

// A *_USEC value: microseconds as an unsigned decimal. systemd's "infinity" is UINT64_MAX,
// past what a Duration counts in microseconds; anything that large is taken as infinite.
bool ParseMicroseconds(absl::string_view value, absl::Duration* out) {
  uint64_t usec = 0;
  if (!absl::SimpleAtoi(value, &usec)) return false;
  *out = usec > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
             ? absl::InfiniteDuration()
             : absl::Microseconds(static_cast<int64_t>(usec));
  return true;
}

}  // namespace

absl::StatusOr<NotifyMessage> ParseNotifyMessage(absl::string_view datagram) {
  NotifyMessage message;
  std::vector<absl::string_view> lines = absl::StrSplit(datagram, '\n');
  for (size_t i = 0; i < lines.size(); ++i) {
    const absl::string_view line = lines[i];
    const size_t number = i + 1;
    if (line.empty()) continue;
    // sd_notify's datagram is text; a NUL would cut the line short in any C reader of it.
    if (line.find('\0') != absl::string_view::npos) return BadLine(number, line, "a NUL byte");
    const size_t equals = line.find('=');
    if (equals == absl::string_view::npos) return BadLine(number, line, "no '='");
    const absl::string_view name = line.substr(0, equals);
    const absl::string_view value = line.substr(equals + 1);

    if (name == "READY") {
      if (value != "1") return BadLine(number, line, "READY takes only 1");
      message.ready = true;
    } else if (name == "STATUS") {
      message.status = std::string(value);
    } else if (name == "WATCHDOG") {
      if (value == "1") {
        message.watchdog_ping = true;
      } else if (value == "trigger") {
        message.watchdog_trigger = true;
      } else {
        return BadLine(number, line, "WATCHDOG takes 1 or trigger");
      }
    } else if (name == "WATCHDOG_USEC") {
      absl::Duration period;
      if (!ParseMicroseconds(value, &period) || period <= absl::ZeroDuration()) {
        return BadLine(number, line, "WATCHDOG_USEC takes a number of microseconds above 0");
      }
      message.watchdog_period = period;
    } else if (name == "STOPPING") {
      if (value != "1") return BadLine(number, line, "STOPPING takes only 1");
      message.stopping = true;
    } else if (name == "RELOADING") {
      if (value != "1") return BadLine(number, line, "RELOADING takes only 1");
      message.reloading = true;
    } else if (name == "ERRNO") {
      int err = 0;
      if (!absl::SimpleAtoi(value, &err) || err < 0) {
        return BadLine(number, line, "ERRNO takes an error number, 0 or above");
      }
      message.errno_value = err;
    } else if (name == "EXTEND_TIMEOUT_USEC") {
      absl::Duration extension;
      if (!ParseMicroseconds(value, &extension)) {
        return BadLine(number, line, "EXTEND_TIMEOUT_USEC takes a number of microseconds");
      }
      message.extend_timeout = extension;
    }
    // Anything else (MAINPID=, FDSTORE=, BARRIER=, a program's own) is not ours to act on.
  }
  return message;
}

}  // namespace proctor
