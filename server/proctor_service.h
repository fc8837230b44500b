// ProctorService: the gRPC face of the Supervisor (callback API).
//
// Handlers never block on a process: Join and Terminate park their call in the supervisor
// and finish it from the completion callback, so a thousand waiting joiners hold no thread.
// Joins parks many Joins on one stream, so that they hold no gRPC call each either.
// Logs streams the capture files; with follow it keeps reading until the process has ended
// and its output is drained. Run is Start, a followed Logs of both files and a Join in one
// stream, its headers (and the proof in them) sent at once. Statuses cross this layer
// unchanged (code and message).
//
// Every handler first authenticates its call (Authenticator) and puts the daemon's proof in
// the reply's initial metadata; a refused call gets UNAUTHENTICATED (or RESOURCE_EXHAUSTED
// for a key over its rate), held back for keys that keep failing; so is a Start refused for
// a limit, per process tree, so that a runaway spawner slows itself down rather than the
// daemon. A call made with a worker's key reaches only that worker's subtree: it starts
// children of that worker, lists only its subtree, and gets PERMISSION_DENIED for any other id.
//
// Requests arrive as bytes and are parsed here (request_parsing.h), after authentication
// (gRPC's own parsing would answer UNIMPLEMENTED with no message, and give the service no say).
#ifndef PROCTOR_SERVER_PROCTOR_SERVICE_H_
#define PROCTOR_SERVER_PROCTOR_SERVICE_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"
#include "proctor/v1/proctor.grpc.pb.h"
#include "server/authenticator.h"
#include "server/clock.h"
#include "server/event_log.h"
#include "server/process_proto.h"
#include "server/request_parsing.h"
#include "server/service_manager.h"
#include "server/supervisor.h"

namespace proctor {

// For the handlers of proctord's services.
grpc::Status ToGrpc(const absl::Status& status);
// `refused` saying that it was held back for `delay`, when that is more than zero.
absl::Status HeldBack(const absl::Status& refused, absl::Duration delay);

// What a Start binds its new process to besides the supervisor: the Barriers it names
// (StartRequest.barriers), kept by the SyncService. Reserve runs before anything is started
// and its error refuses the Start; then Bind once the process has its id, or Drop when it was
// not started.
class StartBindings {
 public:
  virtual ~StartBindings() = default;
  // 0 when `request` names nothing to bind.
  virtual absl::StatusOr<uint64_t> Reserve(const Caller& caller,
                                           const v1::StartRequest& request) = 0;
  virtual void Bind(uint64_t reservation, uint64_t process) = 0;
  virtual void Drop(uint64_t reservation) = 0;
};

// The generated service with every method taking and giving bytes.
using RawProctorService = v1::Proctor::WithRawCallbackMethod_Run<
    v1::Proctor::WithRawCallbackMethod_Start<v1::Proctor::WithRawCallbackMethod_Join<
    v1::Proctor::WithRawCallbackMethod_Joins<
        v1::Proctor::WithRawCallbackMethod_Terminate<v1::Proctor::WithRawCallbackMethod_Status<
            v1::Proctor::WithRawCallbackMethod_Logs<v1::Proctor::WithRawCallbackMethod_Release<
                v1::Proctor::WithRawCallbackMethod_Session<v1::Proctor::WithRawCallbackMethod_Watch<
                    v1::Proctor::WithRawCallbackMethod_Reload<
                        v1::Proctor::WithRawCallbackMethod_ListServices<
                            v1::Proctor::Service>>>>>>>>>>>>;

class ProctorService final : public RawProctorService {
 public:
  // All must outlive the service; `timers` paces Logs follow reads and delayed refusals;
  // `events` feeds Watch; `services` answers Reload and ListServices.
  ProctorService(Supervisor& supervisor, Timers& timers, Authenticator& authenticator,
                 Clock& clock, EventLog& events, ServiceManager& services);

  // Each handler reads its request as proctor.v1.<Method>Request and answers with the reply
  // message the proto names.
  grpc::ServerUnaryReactor* Start(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  // Start's checks and start, then the started record, the output as it is written and the
  // exit record (see RunEvent); a start refused or failed is the call's error, as for Start.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Run(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // Join for each JoinRequest on the stream, answered as each completes (see JoinResult).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Joins(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Terminate(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Logs(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  // Events after the request's cursor (or from now) that match its filter; a worker's key
  // sees only its subtree's.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Session(
      grpc::CallbackServerContext* context) override;
  // Declared services, for admin keys only (PERMISSION_DENIED for a worker's): answered from
  // the service manager's thread once it has decided (Reload) or looked (ListServices).
  grpc::ServerUnaryReactor* Reload(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListServices(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  // Who binds what a Start names beyond the supervisor; must outlive the service. Without
  // it, a Start that names Barriers is FAILED_PRECONDITION.
  void SetStartBindings(StartBindings* bindings) { bindings_ = bindings; }

  // Admission, shared with proctord's other services (SyncService): their calls are
  // authenticated, parsed and refused exactly as this service's own.
  //
  // The caller, with the daemon's proof added to the reply, and its request parsed into
  // `request`; or why the call is refused.
  absl::StatusOr<Caller> Admit(grpc::CallbackServerContext* context, absl::string_view method,
                               const grpc::ByteBuffer& raw, google::protobuf::Message& request);
  // Refuse() with HoldBack(): for a call Admit or AdmitOnId turned away.
  grpc::ServerUnaryReactor* Deny(grpc::CallbackServerContext* context, const absl::Status& refused);
  // Finishes a unary call with an error, after `delay`.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                   const absl::Status& status,
                                   absl::Duration delay = absl::ZeroDuration());
  // For a stream whose requests come later, on the stream: the caller, with the daemon's
  // proof added to its headers; or why the stream is refused, and how long to hold that back
  // (finish it after `hold_back`, on timers()).
  struct StreamAdmission {
    absl::StatusOr<Caller> caller;
    absl::Duration hold_back;
  };
  StreamAdmission AdmitStream(grpc::CallbackServerContext* context, absl::string_view method);
  Timers& timers() { return timers_; }

 private:
  // The caller, with the daemon's proof added to the reply (also to a refusal for the key's
  // rate); or why the call is refused.
  absl::StatusOr<Caller> Authenticate(grpc::CallbackServerContext* context,
                                      absl::string_view method);
  // How long to hold back `refused`, an answer of Admit or AdmitOnId: the authenticator's
  // delay for its own refusals, none for a bad request or a process out of reach.
  absl::Duration HoldBack(grpc::CallbackServerContext* context, const absl::Status& refused);
  // What a call does to the process it names. A worker's key may change only its own
  // subtree, and also read its ancestors' records (so that a worker can see its parent).
  enum class Access { kChange, kRead };
  // OK when `caller` may act on process `id` so.
  absl::Status Authorize(const Caller& caller, uint64_t id, Access access = Access::kChange);
  // What Start and Run start: the record, or why not and how long to hold that back.
  struct Started {
    absl::StatusOr<ProcessInfo> process;
    absl::Duration hold_back = absl::ZeroDuration();
  };
  // Admit() as `method`, then Start's own checks, then the start.
  Started AdmitAndStart(grpc::CallbackServerContext* context, absl::string_view method,
                        const grpc::ByteBuffer& raw, v1::StartRequest& request);
  // Admit(), then PERMISSION_DENIED unless the key is an admin's.
  absl::StatusOr<Caller> AdmitAdmin(grpc::CallbackServerContext* context,
                                    absl::string_view method, const grpc::ByteBuffer& raw,
                                    google::protobuf::Message& request);
  // AdmitAdmin() for a Request, then `ask` the service manager; the call is finished with its
  // reply, from the manager's thread.
  template <typename Request, typename Reply>
  grpc::ServerUnaryReactor* AskServices(grpc::CallbackServerContext* context,
                                        absl::string_view method, const grpc::ByteBuffer& raw,
                                        grpc::ByteBuffer* response,
                                        void (ServiceManager::*ask)(std::function<void(Reply)>));
  // Admit(), then Authorize() on the process the request names (its `id`).
  template <typename Request>
  absl::StatusOr<Caller> AdmitOnId(grpc::CallbackServerContext* context, absl::string_view method,
                                   const grpc::ByteBuffer& raw, Request& request,
                                   Access access = Access::kChange) {
    absl::StatusOr<Caller> caller = Admit(context, method, raw, request);
    if (!caller.ok()) return caller;
    if (absl::Status s = Authorize(*caller, request.id(), access); !s.ok()) return s;
    return caller;
  }

  Supervisor& supervisor_;
  Timers& timers_;
  Authenticator& authenticator_;
  EventLog& events_;
  ServiceManager& services_;
  Backoff limit_refusals_;  // by the root of the calling tree
  StartBindings* bindings_ = nullptr;
};

// For a bidi stream that AdmitStream turned away: finishes it through `state` (a
// BidiStreamState) with the refusal, at once or after its hold-back, on `timers`.
template <typename State>
void FinishRefusedStream(const std::shared_ptr<State>& state,
                         const ProctorService::StreamAdmission& admission, Timers& timers) {
  grpc::Status status = ToGrpc(HeldBack(admission.caller.status(), admission.hold_back));
  if (admission.hold_back <= absl::ZeroDuration()) {
    state->FinishOnce(status);
    return;
  }
  timers.After(admission.hold_back, [state, status] { state->FinishOnce(status); });
}

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCTOR_SERVICE_H_
