// Clients of gRPC's standard services as a tool would use them (grpc_health_probe, grpcurl,
// Kubernetes' gRPC probes): no authkey, no proctor client library.
#ifndef PROCTOR_TESTS_STANDARD_SERVICES_CLIENT_H_
#define PROCTOR_TESTS_STANDARD_SERVICES_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/channel.h"

namespace proctor::testing {

// A channel to `address` ("unix:/path" or "host:port", plain), with no credentials of ours.
std::shared_ptr<grpc::Channel> PlainChannel(const std::string& address);

// grpc.health.v1.Health/Check for `service` ("" for the server as a whole); the call's
// status (NOT_FOUND for an unknown service) as an error.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service);

// Server reflection: the names of the services the server lists.
absl::StatusOr<std::vector<std::string>> ListServices(const std::shared_ptr<grpc::Channel>& channel);
// Server reflection: the file that defines `symbol` (a service or message's full name),
// followed by the files it depends on as the server sends them.
absl::StatusOr<std::vector<google::protobuf::FileDescriptorProto>> FileContainingSymbol(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& symbol);

}  // namespace proctor::testing

#endif  // PROCTOR_TESTS_STANDARD_SERVICES_CLIENT_H_
