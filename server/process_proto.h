// The records of the supervisor as the API shows them, and back: one place for every
// conversion between ProcessInfo / StartSpec and proctor.v1 messages, so that Status, Watch,
// the journal and declared services all agree on what a field means.
#ifndef PROCTOR_SERVER_PROCESS_PROTO_H_
#define PROCTOR_SERVER_PROCESS_PROTO_H_

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "proctor/v1/proctor.pb.h"
#include "server/supervisor.h"

namespace proctor {

google::protobuf::Duration ToDurationProto(absl::Duration d);
// REQUIRES: the duration is within google.protobuf.Duration's rules (ValidateRequest).
absl::Duration FromDurationProto(const google::protobuf::Duration& d);
google::protobuf::Timestamp ToTimestamp(absl::Time t);
absl::Time FromTimestamp(const google::protobuf::Timestamp& t);

// The record as the API shows it.
void ToProto(const ProcessInfo& info, v1::Process* out);
// A record as an event carried it (the inverse of ToProto, for the journal).
ProcessInfo FromProto(const v1::Process& process);

// The request's fields that do not depend on who calls (target, args, env, restart policy,
// notify...), checked: INVALID_ARGUMENT naming the field for a negative duration or a
// watchdog that is too short. REQUIRES: ValidateRequest passed. Leaves parent_id, session,
// authkey and service to the caller.
absl::Status StartSpecFromRequest(const v1::StartRequest& request, StartSpec& spec);

// The shortest watchdog period a worker may ask for: below it, a busy machine would kill
// healthy workers.
inline constexpr absl::Duration kMinWatchdog = absl::Milliseconds(10);
// How long Start with wait_ready waits when the request sets no ready_timeout (systemd's
// default TimeoutStartSec).
inline constexpr absl::Duration kDefaultReadyTimeout = absl::Seconds(90);

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCESS_PROTO_H_
