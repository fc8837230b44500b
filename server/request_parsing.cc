#include "server/request_parsing.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/duration.pb.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace proctor {
namespace {

using google::protobuf::FieldDescriptor;

// The rules google/protobuf/duration.proto sets: about ±10,000 years, nanos below one second
// and of the seconds' sign.
absl::Status ValidateDuration(const google::protobuf::Duration& d, absl::string_view field) {
  constexpr int64_t kMaxSeconds = 315'576'000'000;
  constexpr int32_t kMaxNanos = 999'999'999;
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is not a valid google.protobuf.Duration: ", why, " (seconds ",
                     d.seconds(), ", nanos ", d.nanos(), ")"));
  };
  if (d.seconds() < -kMaxSeconds || d.seconds() > kMaxSeconds) {
    return invalid(absl::StrCat("seconds is outside -", kMaxSeconds, "..", kMaxSeconds));
  }
  if (d.nanos() < -kMaxNanos || d.nanos() > kMaxNanos) {
    return invalid(absl::StrCat("nanos is outside -", kMaxNanos, "..", kMaxNanos));
  }
  if ((d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0)) {
    return invalid("seconds and nanos have different signs");
  }
  return absl::OkStatus();
}

absl::Status ValidateEnum(const FieldDescriptor& field, int value, absl::string_view name) {
  const google::protobuf::EnumDescriptor& type = *field.enum_type();
  if (type.FindValueByNumber(value) != nullptr) return absl::OkStatus();
  std::vector<std::string> known;
  for (int i = 0; i < type.value_count(); ++i) {
    known.push_back(absl::StrCat(type.value(i)->name(), " (", type.value(i)->number(), ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(name, " ", value, " is not a ", type.full_name(),
                                                 "; give one of ", absl::StrJoin(known, ", ")));
}

// ValidateRequest for the fields of `message`, named after `prefix`.
absl::Status ValidateFields(const google::protobuf::Message& message, absl::string_view prefix) {
  const google::protobuf::Reflection& reflection = *message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  // Set fields only: an unset enum is its zero value and an unset Duration means the default.
  reflection.ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    int count = field->is_repeated() ? reflection.FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      std::string name = field->is_repeated() ? absl::StrCat(prefix, field->name(), "[", i, "]")
                                              : absl::StrCat(prefix, field->name());
      absl::Status valid;
      if (field->type() == FieldDescriptor::TYPE_ENUM) {
        // proto3 enums are open: the parser keeps a number it does not know in the field.
        valid =
            ValidateEnum(*field,
                         field->is_repeated() ? reflection.GetRepeatedEnumValue(message, field, i)
                                              : reflection.GetEnumValue(message, field),
                         name);
      } else if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
        const google::protobuf::Message& nested =
            field->is_repeated() ? reflection.GetRepeatedMessage(message, field, i)
                                 : reflection.GetMessage(message, field);
        if (const auto* duration =
                google::protobuf::DynamicCastToGenerated<google::protobuf::Duration>(&nested)) {
          valid = ValidateDuration(*duration, name);
        } else {
          valid = ValidateFields(nested, absl::StrCat(name, "."));
        }
      }
      if (!valid.ok()) return valid;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& raw, google::protobuf::Message& request) {
  if (!raw.Valid()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the call carries no ", request.GetDescriptor()->full_name()));
  }
  grpc::ByteBuffer copy(raw);  // parsing consumes its buffer; this shares the slices
  if (!grpc::SerializationTraits<google::protobuf::Message>::Deserialize(&copy, &request).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body (", raw.Length(), " bytes) is not a valid ",
                     request.GetDescriptor()->full_name(),
                     " message: it does not parse as protobuf, or a string field is not UTF-8"));
  }
  return ValidateRequest(request);
}

void SerializeReply(const google::protobuf::Message& reply, grpc::ByteBuffer* out) {
  out->Clear();  // the serializer refuses a buffer that holds something
  bool own_buffer;
  // Only fails for a message over 2 GiB, which no reply of ours comes near.
  grpc::SerializationTraits<google::protobuf::Message>::Serialize(reply, out, &own_buffer)
      .IgnoreError();
}

absl::Status ValidateRequest(const google::protobuf::Message& request) {
  return ValidateFields(request, "");
}

}  // namespace proctor
