// Requests as they arrive, in bytes: parsing them into their message and checking every
// field against the API's own rules, before any handler looks at them. A body that is not the
// method's request message, a google.protobuf.Duration outside its own rules, or a number
// that names no value of its enum gets INVALID_ARGUMENT naming the message or field.
#ifndef PROCTOR_SERVER_REQUEST_PARSING_H_
#define PROCTOR_SERVER_REQUEST_PARSING_H_

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

namespace proctor {

// Parses a request body into `request` and validates it (ValidateRequest).
absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message& request);
// Replaces what `out` held with `reply`, serialized.
void SerializeReply(const google::protobuf::Message& reply, grpc::ByteBuffer* out);

// OK when every field of `request`, nested messages included, holds a value the API defines:
// each enum field one of its enum's values, each google.protobuf.Duration within that type's
// rules. Otherwise INVALID_ARGUMENT naming the field.
absl::Status ValidateRequest(const google::protobuf::Message& request);

}  // namespace proctor

#endif  // PROCTOR_SERVER_REQUEST_PARSING_H_
