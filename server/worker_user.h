// Who a worker runs as: a user and group named in a Start request (or proctord's
// --worker-user), resolved through the system's user database.
//
// Switching users takes root. A proctord that is not root may only be asked for its own user
// and group, which means no switch. This is the real boundary between workers: the key
// scoping of proctord keeps a worker's credential to its own subtree, but only a different
// user keeps a worker from reading another's environment (/proc/PID/environ) or the admin key.
#ifndef PROCTOR_SERVER_WORKER_USER_H_
#define PROCTOR_SERVER_WORKER_USER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/process_os.h"

namespace proctor {

struct WorkerUser {
  std::optional<WorkerIdentity> identity;  // unset: run as proctord's own user
  // USER, LOGNAME and HOME of the user, laid under the request's environment; empty without
  // a switch.
  std::vector<std::string> env;
};

// `user` and `group`: names or numbers; empty user: proctord's own (then a group alone is
// refused); empty group: the user's primary group. INVALID_ARGUMENT names an unknown user or
// group; PERMISSION_DENIED says that a switch needs root. Reads the user database (NSS): do
// not call under a lock.
absl::StatusOr<WorkerUser> ResolveWorkerUser(const std::string& user, const std::string& group);

}  // namespace proctor

#endif  // PROCTOR_SERVER_WORKER_USER_H_
