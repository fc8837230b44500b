// Request parsing and validation (server/request_parsing.h) for every RPC of proctord's
// services, on arbitrary bodies; a StartRequest that passes also goes through
// StartSpecFromRequest (server/process_proto.h), as Start does. The first byte picks the
// method (among every method of every service in proctor/v1), the rest is the body.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "proctor/v1/proctor.pb.h"
#include "proctor/v1/sync.pb.h"
#include "server/process_proto.h"
#include "server/request_parsing.h"

namespace {

// The request message of each method, in the order of the proto files.
std::vector<const google::protobuf::Message*> RequestPrototypes() {
  std::vector<const google::protobuf::Message*> prototypes;
  for (const google::protobuf::FileDescriptor* file :
       {proctor::v1::StartRequest::descriptor()->file(),
        proctor::v1::SyncKind_descriptor()->file()}) {
    for (int s = 0; s < file->service_count(); ++s) {
      const google::protobuf::ServiceDescriptor& service = *file->service(s);
      for (int m = 0; m < service.method_count(); ++m) {
        prototypes.push_back(google::protobuf::MessageFactory::generated_factory()->GetPrototype(
            service.method(m)->input_type()));
      }
    }
  }
  return prototypes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<const google::protobuf::Message*> prototypes = RequestPrototypes();
  if (size == 0) return -1;
  const google::protobuf::Message& prototype = *prototypes[data[0] % prototypes.size()];
  std::unique_ptr<google::protobuf::Message> request(prototype.New());
  grpc::Slice slice(data + 1, size - 1);
  grpc::ByteBuffer body(&slice, 1);
  if (!proctor::ParseRequest(body, *request).ok()) return 0;
  if (const auto* start = google::protobuf::DynamicCastToGenerated<proctor::v1::StartRequest>(
          request.get())) {
    proctor::StartSpec spec;
    proctor::StartSpecFromRequest(*start, spec).IgnoreError();
  }
  return 0;
}
