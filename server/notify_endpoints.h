// NotifyEndpoints: where workers started with `notify` send their sd_notify messages. The
// supervisor opens one endpoint per worker before launching it (its address becomes the
// worker's NOTIFY_SOCKET), keeps it across the worker's restarts, and closes it when the
// worker has ended for good. Messages come back to the supervisor (Supervisor::OnNotify),
// attributed to the worker by the endpoint they arrived on.
#ifndef PROCTOR_SERVER_NOTIFY_ENDPOINTS_H_
#define PROCTOR_SERVER_NOTIFY_ENDPOINTS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace proctor {

class NotifyEndpoints {
 public:
  virtual ~NotifyEndpoints() = default;
  // The NOTIFY_SOCKET value for worker `id`, made if it does not exist yet (and made again,
  // at the same address, for a worker adopted after a restart of proctord). Only `owner`
  // (the worker's user; unset: proctord's) and root may send to it. Thread-safe.
  virtual absl::StatusOr<std::string> Open(uint64_t id, std::optional<uid_t> owner) = 0;
  // Stops listening for `id` and removes its endpoint; no-op when none. Thread-safe.
  virtual void Close(uint64_t id) = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_NOTIFY_ENDPOINTS_H_
