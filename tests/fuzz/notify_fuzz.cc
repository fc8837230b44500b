// ParseNotifyMessage (server/notify_message.h) on arbitrary datagrams, as a worker may send.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "server/notify_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // proctord drops longer datagrams unread.
  if (size > proctor::kMaxNotifyMessageBytes) return -1;
  proctor::ParseNotifyMessage(absl::string_view(reinterpret_cast<const char*>(data), size))
      .IgnoreError();
  return 0;
}
