// Signal names and numbers as people type them: "TERM", "SIGTERM", "sigterm" or "15".
#ifndef PROCTOR_COMMON_SIGNAL_NAMES_H_
#define PROCTOR_COMMON_SIGNAL_NAMES_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace proctor {

// The highest signal number a worker can be sent (SIGRTMAX).
int MaxSignal();

// Parses a signal name or number. INVALID_ARGUMENT for 0, negative numbers, numbers above
// MaxSignal() and unknown names, with a message saying which.
absl::StatusOr<int> ParseSignal(absl::string_view text);

// Checks a signal number received over the API, same rules and messages as ParseSignal.
absl::Status ValidateSignal(int sig);

// "SIGTERM" for 15, "SIGRTMIN+2" for real-time signals, the number otherwise.
std::string SignalName(int sig);

}  // namespace proctor

#endif  // PROCTOR_COMMON_SIGNAL_NAMES_H_
