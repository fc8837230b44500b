#include "server/keeper/framing.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"

namespace proctor {

void AppendFrame(const google::protobuf::MessageLite& message, std::string& out) {
  // What SerializeDelimitedToZeroCopyStream writes, straight into `out`, in half the time:
  // sync objects note every change of state.
  using google::protobuf::io::CodedOutputStream;
  const uint32_t size = static_cast<uint32_t>(message.ByteSizeLong());
  const size_t header_size = CodedOutputStream::VarintSize32(size);
  const size_t at = out.size();
  out.resize(at + header_size + size);
  uint8_t* data = reinterpret_cast<uint8_t*>(out.data()) + at;
  CodedOutputStream::WriteVarint32ToArray(size, data);
  message.SerializeWithCachedSizesToArray(data + header_size);
}

absl::StatusOr<bool> FrameReader::Next(google::protobuf::MessageLite& message) {
  const char* data = buffer_.data() + consumed_;
  const size_t available = buffer_.size() - consumed_;
  google::protobuf::io::CodedInputStream input(reinterpret_cast<const uint8_t*>(data),
                                               static_cast<int>(available));
  uint32_t size = 0;
  if (!input.ReadVarint32(&size)) {
    // A varint takes at most 5 bytes: fewer than that may be a partial one.
    if (available < 5) return false;
    return absl::DataLossError("keeper socket: a frame's length is not a varint");
  }
  if (size > kMaxFrameBytes) {
    return absl::DataLossError(absl::StrCat("keeper socket: a frame of ", size, " bytes"));
  }
  const size_t header = static_cast<size_t>(input.CurrentPosition());
  if (available < header + size) return false;
  if (!message.ParseFromArray(data + header, static_cast<int>(size))) {
    return absl::DataLossError("keeper socket: a frame that does not parse");
  }
  consumed_ += header + size;
  // Compacted now and then rather than on each message.
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > (1 << 16)) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  return true;
}

}  // namespace proctor
