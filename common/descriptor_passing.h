// Descriptors passed over Unix sockets (SCM_RIGHTS), for both ends.
#ifndef PROCTOR_COMMON_DESCRIPTOR_PASSING_H_
#define PROCTOR_COMMON_DESCRIPTOR_PASSING_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <vector>

#include "absl/strings/string_view.h"

namespace proctor {

// Sends `bytes` on the Unix socket `fd` in one sendmsg (MSG_NOSIGNAL), with the descriptor
// `passed` attached when it is >= 0 (the sender keeps its own copy). Returns what sendmsg
// returns: -1 with errno set, or how many bytes went.
ssize_t SendWithDescriptor(int fd, absl::string_view bytes, int passed);

// The descriptors an SCM_RIGHTS control message carries: the receiver's now, to keep or
// close. Empty for any other control message.
std::vector<int> PassedDescriptors(const cmsghdr& message);

}  // namespace proctor

#endif  // PROCTOR_COMMON_DESCRIPTOR_PASSING_H_
