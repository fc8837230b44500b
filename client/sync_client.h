// proctor::SyncClient: typed, blocking calls of proctor.v1.Sync (proto/proctor/v1/sync.proto),
// on a Client's channel and key.
//
// Unary calls have the Client's call timeout. A waiting call (Acquire, Wait) is one call that
// lasts as long as the wait: its deadline is its timeout plus the call timeout, or none for a
// wait without a timeout (it is never split into polls: each poll would lose its place in the
// object's FIFO queue). A timeout is an answer (`ok` false), not an error. Statuses come back
// as the Client's do. Thread-safe; the Client must outlive it.
#ifndef PROCTOR_CLIENT_SYNC_CLIENT_H_
#define PROCTOR_CLIENT_SYNC_CLIENT_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "proctor/v1/sync.grpc.pb.h"

namespace proctor {

class SyncClient {
 public:
  explicit SyncClient(Client& client);

  absl::StatusOr<v1::SyncObject> Create(const v1::SyncCreateRequest& request);
  absl::Status Remove(uint64_t id);
  // One object; NOT_FOUND when there is none with that id.
  absl::StatusOr<v1::SyncObject> Get(uint64_t id);
  absl::StatusOr<std::vector<v1::SyncObject>> List(const v1::SyncListRequest& filter);
  absl::StatusOr<v1::SyncWaitResponse> Acquire(const v1::SyncAcquireRequest& request);
  absl::StatusOr<v1::SyncObject> Release(const v1::SyncReleaseRequest& request);
  absl::StatusOr<v1::SyncWaitResponse> Wait(const v1::SyncWaitRequest& request);
  absl::StatusOr<v1::SyncObject> Update(const v1::SyncUpdateRequest& request);
  absl::StatusOr<v1::SyncObject> Bind(const v1::SyncBindRequest& request);

  Client& client() { return client_; }

 private:
  template <typename Request, typename Response>
  absl::Status Unary(absl::string_view method,
                     grpc::Status (v1::Sync::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                         Response*),
                     const Request& request, Response* response, absl::Duration timeout);
  // Unary(), with the reply as the result.
  template <typename Response, typename Request>
  absl::StatusOr<Response> Call(absl::string_view method,
                                grpc::Status (v1::Sync::Stub::*rpc)(grpc::ClientContext*,
                                                                    const Request&, Response*),
                                const Request& request, absl::Duration timeout);
  // How long a waiting call may last: `timeout` (when the request has one) + the call timeout.
  absl::Duration WaitDeadline(bool has_timeout, const google::protobuf::Duration& timeout) const;

  Client& client_;
  std::unique_ptr<v1::Sync::Stub> stub_;
};

// "Lock", "RLock", ..., as Python names the classes; "?" for SYNC_KIND_UNSPECIFIED.
const char* SyncKindText(v1::SyncKind kind);

}  // namespace proctor

#endif  // PROCTOR_CLIENT_SYNC_CLIENT_H_
