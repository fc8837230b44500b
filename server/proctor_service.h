// ProctorService: the gRPC face of the Supervisor (callback API).
//
// Handlers never block on a process: Join and Terminate park their call in the supervisor
// and finish it from the completion callback, so a thousand waiting joiners hold no thread.
// Logs streams the capture files; with follow it keeps reading until the process has ended
// and its output is drained. Statuses cross this layer unchanged (code and message).
#ifndef PROCTOR_SERVER_PROCTOR_SERVICE_H_
#define PROCTOR_SERVER_PROCTOR_SERVICE_H_

#include "proctor/v1/proctor.grpc.pb.h"
#include "server/clock.h"
#include "server/supervisor.h"

namespace proctor {

// The record as the API shows it.
void ToProto(const ProcessInfo& info, v1::Process* out);

class ProctorService final : public v1::Proctor::CallbackService {
 public:
  // Both must outlive the service; `timers` paces Logs follow reads.
  ProctorService(Supervisor& supervisor, Timers& timers);

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

 private:
  Supervisor& supervisor_;
  Timers& timers_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_PROCTOR_SERVICE_H_
