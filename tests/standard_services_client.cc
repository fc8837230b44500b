#include "tests/standard_services_client.h"

#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace proctor::testing {
namespace {

namespace reflection = grpc::reflection::v1alpha;

constexpr auto kCallTimeout = std::chrono::seconds(10);

absl::Status FromGrpc(const grpc::Status& status, const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

// One request on a ServerReflectionInfo stream, and its answer.
absl::StatusOr<reflection::ServerReflectionResponse> AskReflection(
    const std::shared_ptr<grpc::Channel>& channel,
    const reflection::ServerReflectionRequest& request) {
  auto stub = reflection::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  auto stream = stub->ServerReflectionInfo(&context);
  reflection::ServerReflectionResponse response;
  const bool answered = stream->Write(request) && stream->Read(&response);
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpc(status, "ServerReflectionInfo");
  if (!answered) return absl::UnknownError("ServerReflectionInfo: no answer");
  if (response.has_error_response()) {
    return absl::Status(static_cast<absl::StatusCode>(response.error_response().error_code()),
                        response.error_response().error_message());
  }
  return response;
}

}  // namespace

std::shared_ptr<grpc::Channel> PlainChannel(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpc(status, absl::StrCat("Health/Check \"", service, "\""));
  return response.status();
}

absl::StatusOr<std::vector<std::string>> ListServices(
    const std::shared_ptr<grpc::Channel>& channel) {
  reflection::ServerReflectionRequest request;
  request.set_list_services("");
  absl::StatusOr<reflection::ServerReflectionResponse> response = AskReflection(channel, request);
  if (!response.ok()) return response.status();
  std::vector<std::string> names;
  for (const reflection::ServiceResponse& service : response->list_services_response().service()) {
    names.push_back(service.name());
  }
  return names;
}

absl::StatusOr<std::vector<google::protobuf::FileDescriptorProto>> FileContainingSymbol(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& symbol) {
  reflection::ServerReflectionRequest request;
  request.set_file_containing_symbol(symbol);
  absl::StatusOr<reflection::ServerReflectionResponse> response = AskReflection(channel, request);
  if (!response.ok()) return response.status();
  std::vector<google::protobuf::FileDescriptorProto> files;
  for (const std::string& bytes : response->file_descriptor_response().file_descriptor_proto()) {
    if (!files.emplace_back().ParseFromString(bytes)) {
      return absl::DataLossError(absl::StrCat("a file descriptor for ", symbol, " does not parse"));
    }
  }
  return files;
}

}  // namespace proctor::testing
