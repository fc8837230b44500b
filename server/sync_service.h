// SyncService: the gRPC face of the SyncTable (proctor.v1.Sync, proto/proctor/v1/sync.proto).
//
// Calls are admitted (authenticated, parsed, refused and held back) by the ProctorService, as
// its own are. Waiting calls (SyncAcquire, SyncWait) park in the table without a thread and
// are finished from its Reply; a call cancelled or cut off leaves the queue (SyncTable::Cancel),
// and a grant whose Reply finds the call already finished is given back.
//
// Parties and scope (see sync.proto): a worker's key acts as that worker and reaches objects
// owned by its subtree, its ancestors, and the session its tree was started in; PERMISSION_DENIED
// for anything else, top-level objects included. An admin key reaches everything and acts as
// the open session named in the request (NOT_FOUND once it has ended), or as itself.
// Workers may not name a session (FAILED_PRECONDITION).
//
// SyncObjects wires the table to the supervisor: a worker's exit or a session's end is a
// party's end (SyncTable::PartyEnded), and parties are checked against the supervisor.
#ifndef PROCTOR_SERVER_SYNC_SERVICE_H_
#define PROCTOR_SERVER_SYNC_SERVICE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "proctor/v1/sync.grpc.pb.h"
#include "server/authenticator.h"
#include "server/proctor_service.h"
#include "server/supervisor.h"
#include "server/sync_table.h"

namespace proctor {

using RawSyncService = v1::Sync::WithRawCallbackMethod_SyncCreate<
    v1::Sync::WithRawCallbackMethod_SyncRemove<v1::Sync::WithRawCallbackMethod_SyncList<
        v1::Sync::WithRawCallbackMethod_SyncAcquire<v1::Sync::WithRawCallbackMethod_SyncRelease<
            v1::Sync::WithRawCallbackMethod_SyncWait<v1::Sync::WithRawCallbackMethod_SyncUpdate<
                v1::Sync::WithRawCallbackMethod_SyncBind<
                    v1::Sync::WithRawCallbackMethod_SyncCalls<v1::Sync::Service>>>>>>>>>;

class SyncCallStream;

// Binding (SyncBind, and StartRequest.barriers through StartBindings): a worker's key binds
// processes of its own subtree, itself included, to a Barrier it reaches; an admin key any
// running process, or an open session.
class SyncService final : public RawSyncService, public StartBindings {
 public:
  // All must outlive the service.
  SyncService(SyncTable& table, Supervisor& supervisor, ProctorService& gate);

  grpc::ServerUnaryReactor* SyncCreate(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncRemove(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncList(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncAcquire(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncRelease(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncWait(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncUpdate(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SyncBind(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  // Acquire, release, wait and update on one stream, admitted once (SyncCallStream).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SyncCalls(
      grpc::CallbackServerContext* context) override;

  // StartBindings: the Barriers of a StartRequest, for the process it starts.
  absl::StatusOr<uint64_t> Reserve(const Caller& caller, const v1::StartRequest& request) override;
  void Bind(uint64_t reservation, uint64_t process) override;
  void Drop(uint64_t reservation) override;

 private:
  friend class SyncCallStream;

  // What SyncAcquire, SyncWait, SyncRelease and SyncUpdate do once admitted, for a caller
  // acting as `holder`; shared by the unary calls and SyncCalls. AcquireAs and WaitAs hand
  // `reply` to the table (it may run before they return).
  SyncTable::WaiterId AcquireAs(const SyncHolderId& holder, const v1::SyncAcquireRequest& request,
                                SyncTable::Reply reply);
  SyncTable::WaiterId WaitAs(const SyncHolderId& holder, const v1::SyncWaitRequest& request,
                             SyncTable::Reply reply);
  absl::StatusOr<SyncInfo> ReleaseAs(const SyncHolderId& holder,
                                     const v1::SyncReleaseRequest& request);
  absl::StatusOr<SyncInfo> UpdateAs(const SyncHolderId& holder,
                                    const v1::SyncUpdateRequest& request);

  // The party a SyncBind names, when `caller` may bind it.
  absl::StatusOr<SyncParty> BindablePartyOf(const Caller& caller,
                                            const v1::SyncBindRequest& request);
  // The party `caller` acts as, given the request's `session`.
  absl::StatusOr<SyncParty> PartyOf(const Caller& caller, uint64_t session);
  // OK when `caller` may use `object`.
  absl::Status Reach(const Caller& caller, const SyncInfo& object);
  // The object `id`, when `caller` may use it.
  absl::StatusOr<SyncInfo> Reachable(const Caller& caller, uint64_t id);
  // Who a call on an object acts as (its party and thread), once the caller may use the
  // object the request names (its `id`, `session` and `thread` fields).
  template <typename Request>
  absl::StatusOr<SyncHolderId> HolderFor(const Caller& caller, const Request& request);
  // Admits a call of `method` on one object and runs `body(request, holder)`, which answers it.
  template <typename Request, typename Body>
  grpc::ServerUnaryReactor* OnObject(grpc::CallbackServerContext* context,
                                     absl::string_view method, const grpc::ByteBuffer& raw,
                                     Body body);
  // What the per-tree limit counts an object of `owner` against.
  std::string TreeOf(const std::optional<SyncParty>& owner);
  // The object named `name` of kind `kind` nearest to the caller's own scope, if any.
  absl::StatusOr<std::optional<SyncInfo>> FindInScope(const Caller& caller,
                                                      const std::optional<SyncParty>& owner,
                                                      const std::string& name);
  // Finishes a call with a SyncObject, or the error.
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* context,
                                  const absl::StatusOr<SyncInfo>& info, grpc::ByteBuffer* response);

  SyncTable& table_;
  Supervisor& supervisor_;
  ProctorService& gate_;
};

// The sync table and its service, wired to the supervisor. Construct after the supervisor
// and before the first Start; register service() with the gRPC server.
class SyncObjects {
 public:
  SyncObjects(Supervisor& supervisor, Timers& timers, ProctorService& gate, SyncLimits limits);
  SyncService* service() { return &service_; }
  SyncTable& table() { return table_; }

 private:
  SyncTable table_;
  SyncService service_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_SYNC_SERVICE_H_
