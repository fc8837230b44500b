// ProctorService: the gRPC face of the Supervisor (callback API).
//
// Handlers never block on a process: Join and Terminate park their call in the supervisor
// and finish it from the completion callback, so a thousand waiting joiners hold no thread.
// Logs streams the capture files; with follow it keeps reading until the process has ended
// and its output is drained. Statuses cross this layer unchanged (code and message).
//
// Every handler first authenticates its call (Authenticator) and puts the daemon's proof in
// the reply's initial metadata; a refused call gets UNAUTHENTICATED, held back for peers that
// keep failing; so is a Start refused for a limit, per process tree, so that a runaway
// spawner slows itself down rather than the daemon. A call made with a worker's key reaches only that worker's subtree: it starts
// children of that worker, lists only its subtree, and gets PERMISSION_DENIED for any other id.
#ifndef PROCTOR_SERVER_PROCTOR_SERVICE_H_
#define PROCTOR_SERVER_PROCTOR_SERVICE_H_

#include "absl/strings/string_view.h"
#include "proctor/v1/proctor.grpc.pb.h"
#include "server/authenticator.h"
#include "server/clock.h"
#include "server/supervisor.h"

namespace proctor {

// The record as the API shows it.
void ToProto(const ProcessInfo& info, v1::Process* out);

class ProctorService final : public v1::Proctor::CallbackService {
 public:
  // All must outlive the service; `timers` paces Logs follow reads and delayed refusals.
  ProctorService(Supervisor& supervisor, Timers& timers, Authenticator& authenticator,
                 Clock& clock);

  grpc::ServerUnaryReactor* Start(grpc::CallbackServerContext* context,
                                  const v1::StartRequest* request,
                                  v1::Process* response) override;
  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request, v1::Process* response) override;
  grpc::ServerUnaryReactor* Terminate(grpc::CallbackServerContext* context,
                                      const v1::TerminateRequest* request,
                                      v1::Process* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const v1::StatusRequest* request,
                                   v1::StatusResponse* response) override;
  grpc::ServerWriteReactor<v1::LogChunk>* Logs(grpc::CallbackServerContext* context,
                                               const v1::LogsRequest* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionEvent>* Session(
      grpc::CallbackServerContext* context) override;

 private:
  // The caller, with the daemon's proof added to the reply; or why the call is refused.
  absl::StatusOr<Caller> Authenticate(grpc::CallbackServerContext* context,
                                      absl::string_view method);
  // OK when `caller` may act on process `id`.
  absl::Status Authorize(const Caller& caller, uint64_t id);
  // Finishes a unary call with an error, after the refusal delay for UNAUTHENTICATED.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                   const absl::Status& status,
                                   absl::Duration delay = absl::ZeroDuration());

  Supervisor& supervisor_;
  Timers& timers_;
  Authenticator& authenticator_;
  Backoff limit_refusals_;  // by the root of the calling tree
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCTOR_SERVICE_H_
