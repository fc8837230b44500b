// errno -> absl::Status, once, at the syscall, with what it was about: the code a client can act
// on (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED for what runs out and
// comes back: memory, descriptors, processes, disk space), INTERNAL for the rest.
#ifndef PROCTOR_SERVER_POSIX_ERROR_H_
#define PROCTOR_SERVER_POSIX_ERROR_H_

#include <string>

#include "absl/status/status.h"

namespace proctor {

// "<context>: <strerror(err)>", with a hint where one helps ("is its disk full?").
absl::Status PosixError(const std::string& context, int err);

}  // namespace proctor

#endif  // PROCTOR_SERVER_POSIX_ERROR_H_
