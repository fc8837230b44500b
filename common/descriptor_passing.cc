#include "common/descriptor_passing.h"

#include <cstring>

namespace proctor {

ssize_t SendWithDescriptor(int fd, absl::string_view bytes, int passed) {
  iovec data{.iov_base = const_cast<char*>(bytes.data()), .iov_len = bytes.size()};
  msghdr header{.msg_iov = &data, .msg_iovlen = 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (passed >= 0) {
    header.msg_control = control;
    header.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&header);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &passed, sizeof(int));
  }
  return sendmsg(fd, &header, MSG_NOSIGNAL);
}

std::vector<int> PassedDescriptors(const cmsghdr& message) {
  std::vector<int> passed;
  if (message.cmsg_level != SOL_SOCKET || message.cmsg_type != SCM_RIGHTS) return passed;
  size_t count = (message.cmsg_len - CMSG_LEN(0)) / sizeof(int);
  for (size_t i = 0; i < count; ++i) {
    int fd;
    std::memcpy(&fd, CMSG_DATA(&message) + i * sizeof(int), sizeof(int));
    passed.push_back(fd);
  }
  return passed;
}

}  // namespace proctor
