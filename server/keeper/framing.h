// Frames for the keeper's socket: each message is varint-length-delimited, as protobuf's
// delimited_message_util writes and reads them, so either side can be read in pieces.
#ifndef PROCTOR_SERVER_KEEPER_FRAMING_H_
#define PROCTOR_SERVER_KEEPER_FRAMING_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"

namespace proctor {

// Appends `message`, framed, to `out`.
void AppendFrame(const google::protobuf::MessageLite& message, std::string& out);

// Collects bytes as they arrive and hands out whole messages.
class FrameReader {
 public:
  // A frame longer than this is taken for a broken peer.
  static constexpr size_t kMaxFrameBytes = 64 << 20;

  void Append(const char* data, size_t size) { buffer_.append(data, size); }
  // Takes the next whole message into `message`: true if there was one, false if more bytes
  // are needed; DATA_LOSS for bytes that are not a message of that type.
  absl::StatusOr<bool> Next(google::protobuf::MessageLite& message);

 private:
  std::string buffer_;
  size_t consumed_ = 0;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_KEEPER_FRAMING_H_
