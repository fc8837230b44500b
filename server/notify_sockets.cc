#include "server/notify_sockets.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/descriptor_passing.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// More than a socket queues by default (net.unix.max_dgram_qlen), so one wakeup reads all
// that was waiting; a sender that keeps on sending waits for the next round, behind the
// other descriptors of the loop.
constexpr int kMaxReadsPerWakeup = 1024;
// Room for this many passed descriptors; the kernel closes any beyond it (MSG_CTRUNC).
constexpr size_t kMaxPassedDescriptors = 16;

absl::Status SocketError(absl::string_view what, const std::string& path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::InternalError(message);
}

}  // namespace

struct NotifySockets::Received {
  std::string bytes;  // at most kMaxNotifyMessageBytes of it
  size_t length = 0;  // the datagram's real length
  std::optional<ucred> sender;
};

absl::StatusOr<std::unique_ptr<NotifySockets>> NotifySockets::Create(EventLoop& loop,
                                                                     std::string dir,
                                                                     Belongs belongs,
                                                                     Listener listener) {
  if (mkdir(dir.c_str(), 0711) != 0 && errno != EEXIST) {
    int err = errno;
    return SocketError("cannot make the notify directory", dir, err);
  }
  // Whoever can write in the directory could put their own socket where a worker sends.
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) {
    int err = errno;
    return SocketError("cannot look at", dir, err);
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory of uid ", geteuid(),
                                                      "; not using it for notify sockets"));
  }
  // The umask may have taken the search bit that workers of other users need.
  if (chmod(dir.c_str(), 0711) != 0) {
    int err = errno;
    return SocketError("cannot chmod 0711", dir, err);
  }
  return std::unique_ptr<NotifySockets>(
      new NotifySockets(loop, std::move(dir), std::move(belongs), std::move(listener)));
}

NotifySockets::NotifySockets(EventLoop& loop, std::string dir, Belongs belongs, Listener listener)
    : loop_(loop),
      dir_(std::move(dir)),
      belongs_(std::move(belongs)),
      listener_(std::move(listener)) {}

NotifySockets::~NotifySockets() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, endpoint] : endpoints_) {
    loop_.Unwatch(endpoint.fd);
    close(endpoint.fd);
  }
}

absl::StatusOr<std::string> NotifySockets::Open(uint64_t id, std::optional<uid_t> owner) {
  const std::string path = absl::StrCat(dir_, "/", id);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "notify socket path ", path, " is ", path.size(),
        " bytes long; a Unix socket address holds at most ", sizeof(address.sun_path) - 1));
  }
  std::memcpy(address.sun_path, path.data(), path.size());

  absl::MutexLock lock(&mu_);
  if (auto open = endpoints_.find(id); open != endpoints_.end()) return open->second.path;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return SocketError("socket for", path, err);
  }
  bool bound = false;
  auto fail = [&](absl::string_view what) {
    int err = errno;
    if (bound) unlink(path.c_str());
    close(fd);
    return SocketError(what, path, err);
  };
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
    return fail("setsockopt(SO_PASSCRED) for");
  }
  // bind() gives the file the mode of the socket's inode: 0600 from its first instant. The
  // umask is the whole process's, not to be changed while other threads make files.
  if (fchmod(fd, 0600) != 0) return fail("fchmod 0600 for");
  // What is at our path and not open here was left by a proctord that died: nobody reads it.
  if (unlink(path.c_str()) != 0 && errno != ENOENT) return fail("cannot remove the stale");
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return fail("bind");
  }
  bound = true;
  // Until this, only root may send. A new worker has not started yet; an adopted one that
  // sends meanwhile is refused, as it was while nothing was bound there.
  if (owner.has_value() && fchownat(AT_FDCWD, path.c_str(), *owner, -1, AT_SYMLINK_NOFOLLOW) != 0) {
    return fail("chown");
  }
  if (absl::Status s = loop_.Watch(fd, [this, id, fd] { OnReadable(id, fd); }); !s.ok()) {
    unlink(path.c_str());
    close(fd);
    return s;
  }
  endpoints_[id] = Endpoint{.path = path, .fd = fd, .owner = owner.value_or(geteuid())};
  return path;
}

void NotifySockets::Close(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto endpoint = endpoints_.find(id);
  if (endpoint == endpoints_.end()) return;
  loop_.Unwatch(endpoint->second.fd);
  // Removed before it is closed, so that a sender finds nothing (ENOENT) rather than a
  // socket nobody reads.
  if (unlink(endpoint->second.path.c_str()) != 0) {
    int err = errno;
    if (err != ENOENT) {
      spdlog::warn("cannot remove the notify socket {}: {}", endpoint->second.path,
                   std::strerror(err));
    }
  }
  close(endpoint->second.fd);
  endpoints_.erase(endpoint);
}

uint64_t NotifySockets::dropped(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto endpoint = endpoints_.find(id);
  return endpoint == endpoints_.end() ? 0 : endpoint->second.dropped;
}

void NotifySockets::OnReadable(uint64_t id, int fd) {
  std::vector<Received> received;
  uid_t owner = 0;
  {
    absl::MutexLock lock(&mu_);
    auto endpoint = endpoints_.find(id);
    // Closed since the loop saw it readable (and maybe opened again on another descriptor,
    // which has a watch of its own).
    if (endpoint == endpoints_.end() || endpoint->second.fd != fd) return;
    owner = endpoint->second.owner;
    for (int i = 0; i < kMaxReadsPerWakeup; ++i) {
      Received datagram;
      datagram.bytes.resize(kMaxNotifyMessageBytes);
      iovec data{.iov_base = datagram.bytes.data(), .iov_len = datagram.bytes.size()};
      alignas(cmsghdr) char
          control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * kMaxPassedDescriptors)];
      msghdr header{.msg_iov = &data,
                    .msg_iovlen = 1,
                    .msg_control = control,
                    .msg_controllen = sizeof(control)};
      // MSG_TRUNC: the datagram's real length, to tell an oversized one from one that fits.
      // MSG_CMSG_CLOEXEC: a passed descriptor must not reach a worker spawned meanwhile.
      ssize_t n = recvmsg(fd, &header, MSG_TRUNC | MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      if (n < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (err != EAGAIN) {
          spdlog::warn("id={}: reading its notify socket: {}", id, std::strerror(err));
        }
        break;
      }
      for (cmsghdr* c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(ucred))) {
          ucred sender;
          std::memcpy(&sender, CMSG_DATA(c), sizeof(sender));
          datagram.sender = sender;
        } else if (c->cmsg_type == SCM_RIGHTS) {
          // Nothing is kept for a worker (no FDSTORE); closing is also the answer a sender
          // waiting in sd_notify_barrier() waits for.
          for (int passed : PassedDescriptors(*c)) close(passed);
        }
      }
      datagram.length = static_cast<size_t>(n);
      datagram.bytes.resize(std::min(datagram.length, kMaxNotifyMessageBytes));
      received.push_back(std::move(datagram));
    }
  }
  for (const Received& datagram : received) Handle(id, owner, datagram);
}

void NotifySockets::Handle(uint64_t id, uid_t owner, const Received& datagram) {
  if (datagram.length > kMaxNotifyMessageBytes) {
    return Drop(id, absl::StrCat("oversized: ", datagram.length, " bytes, more than ",
                                 kMaxNotifyMessageBytes));
  }
  // SO_PASSCRED has the kernel attach them to every datagram; without them, nobody is known.
  if (!datagram.sender.has_value()) return Drop(id, "no sender credentials");
  const ucred& sender = *datagram.sender;
  if (sender.uid != owner && sender.uid != 0) {
    return Drop(id, absl::StrCat("foreign sender uid ", sender.uid));
  }
  // sd_notify_barrier()'s message: its descriptor, closed above, was all it asked for.
  if (absl::StripSuffix(datagram.bytes, "\n") == "BARRIER=1") return;
  if (!belongs_(id, sender.pid)) {
    return Drop(id, absl::StrCat("pid ", sender.pid, " is not in worker ", id, "'s tree"));
  }
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(datagram.bytes);
  if (!message.ok()) return Drop(id, message.status().message());
  listener_.on_message(id, *message, sender.pid);
}

void NotifySockets::Drop(uint64_t id, absl::string_view why) {
  dropped_.fetch_add(1);
  {
    absl::MutexLock lock(&mu_);
    if (auto endpoint = endpoints_.find(id); endpoint != endpoints_.end()) {
      ++endpoint->second.dropped;
    }
  }
  listener_.on_dropped(id, why);
}

}  // namespace proctor
