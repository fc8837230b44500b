// proctor::Client: typed, blocking calls to proctord for every RPC of proctor.v1.Proctor.
//
// One Client holds one gRPC channel; it is thread-safe and meant to be shared and kept for
// the life of the program (connections are made lazily and re-made by gRPC as needed).
// Every call returns absl::Status with the daemon's status code and message unchanged, except
// UNAVAILABLE, whose message names the address: "cannot reach proctord at unix:/…: …".
#ifndef PROCTOR_CLIENT_CLIENT_H_
#define PROCTOR_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proctor/v1/proctor.grpc.pb.h"

namespace proctor {

struct ClientOptions {
  // "unix:/path" or "host:port". Empty: $PROCTOR_ADDRESS, else the daemon's default socket.
  std::string address;
};

class Client {
 public:
  // Makes the channel; does not contact the daemon (the first call does).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  const std::string& address() const { return address_; }

  absl::StatusOr<v1::Process> Start(const v1::StartRequest& request);
  // Waits until the process ends, or `timeout` passes (the record then says running).
  absl::StatusOr<v1::Process> Join(uint64_t id,
                                   std::optional<absl::Duration> timeout = std::nullopt);
  absl::StatusOr<v1::Process> Terminate(const v1::TerminateRequest& request);
  absl::StatusOr<v1::Process> Status(uint64_t id);
  absl::StatusOr<std::vector<v1::Process>> List(const v1::StatusRequest& filter);
  // Calls `sink` with each chunk of output as it arrives; returns when the stream ends
  // (at once without follow; when the process has ended and all is read, with follow).
  absl::Status Logs(const v1::LogsRequest& request,
                    const std::function<void(std::string_view)>& sink);
  absl::Status Release(uint64_t id);

 private:
  Client(std::string address, std::shared_ptr<grpc::Channel> channel);
  absl::Status FromGrpc(const grpc::Status& status) const;

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Proctor::Stub> stub_;
};

}  // namespace proctor

#endif  // PROCTOR_CLIENT_CLIENT_H_
