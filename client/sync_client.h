// proctor::SyncClient: typed, blocking calls of proctor.v1.Sync (proto/proctor/v1/sync.proto),
// on a Client's channel and key.
//
// Acquire, Release, Wait and Update go as messages on SyncCalls streams (sync.proto) that are
// kept open between calls, one per thread calling at the same time: a call is then one
// message each way, without a new call's setup and key check. A stream found ended when it
// is taken up again (proctord restarted meanwhile) is replaced, and the call made on the new
// one; a stream that breaks during a call fails that call, as a unary call would.
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
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "proctor/v1/sync.grpc.pb.h"

namespace proctor {

class SyncClient {
 public:
  explicit SyncClient(Client& client);
  ~SyncClient();  // closes the streams it keeps

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
  class CallStream;

  // `call` on a kept stream (or a new one when none is free), answered within `timeout`; the
  // call's own error (its result's `code`) as the status.
  absl::StatusOr<v1::SyncCallResult> OnStream(const v1::SyncCall& call, absl::Duration timeout);
  // OnStream(), with a SyncWaitResponse (acquire, wait) or SyncObject (release, update) as the
  // result.
  absl::StatusOr<v1::SyncWaitResponse> Waited(const v1::SyncCall& call, absl::Duration timeout);
  absl::StatusOr<v1::SyncObject> Changed(const v1::SyncCall& call);

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
  absl::Mutex streams_mu_;
  std::vector<std::unique_ptr<CallStream>> idle_streams_ ABSL_GUARDED_BY(streams_mu_);
};

// "Lock", "RLock", ..., as Python names the classes; "?" for SYNC_KIND_UNSPECIFIED.
const char* SyncKindText(v1::SyncKind kind);

}  // namespace proctor

#endif  // PROCTOR_CLIENT_SYNC_CLIENT_H_
