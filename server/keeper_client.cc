#include "server/keeper_client.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/descriptor_passing.h"
#include "server/keeper/framing.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace proctor {
namespace {

// The KeeperClient whose reader this thread is, if any.
thread_local const KeeperClient* reading_for = nullptr;

constexpr absl::Duration kHelloTimeout = absl::Seconds(10);

absl::StatusOr<sockaddr_un> SocketAddress(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the keeper's socket path ", path, " is longer than a Unix socket path may be (",
        sizeof(address.sun_path) - 1, " bytes): use a shorter --state-dir"));
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

// A connected socket, or -1 with errno set.
int Connect(const sockaddr_un& address) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// Binds the keeper's socket and starts the keeper with it as descriptor 3.
absl::Status StartKeeper(const sockaddr_un& address, const std::string& keeper_path) {
  unlink(address.sun_path);  // left by a keeper that is gone
  int listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) {
    return absl::InternalError(absl::StrCat("socket for the keeper: ", std::strerror(errno)));
  }
  mode_t old_mask = umask(0177);  // 0600: only our user may talk to the keeper
  int bound = bind(listen_fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  int err = errno;
  umask(old_mask);
  if (bound != 0 || listen(listen_fd, 16) != 0) {
    if (bound == 0) err = errno;
    close(listen_fd);
    return absl::InternalError(
        absl::StrCat("cannot listen on ", address.sun_path, ": ", std::strerror(err)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, listen_fd, 3);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  // Its own session: a terminal's signals and proctord's group are not its.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv = {const_cast<char*>(keeper_path.c_str()), nullptr};
  pid_t pid = 0;
  int spawned = posix_spawn(&pid, keeper_path.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(listen_fd);
  if (spawned != 0) {
    unlink(address.sun_path);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot start the keeper ", keeper_path, ": ", std::strerror(spawned),
        " (it is installed next to proctord)"));
  }
  spdlog::info("started the keeper (pid {}) on {}", pid, address.sun_path);
  return absl::OkStatus();
}

// Writes `data` whole to `fd`; false when it cannot be.
bool WriteAll(int fd, const std::string& data) {
  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = write(fd, data.data() + written, data.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    written += static_cast<size_t>(n);
  }
  return true;
}

// Hands the keeper the read end of a new notes pipe (keeper.proto, NotesPipe); returns the
// write end, or -1 (notes then go on the connection).
int OpenNotesPipe(int connection) {
  int ends[2];
  if (pipe2(ends, O_CLOEXEC) != 0) {
    spdlog::warn("notes for the keeper go on its socket: pipe2: {}", std::strerror(errno));
    return -1;
  }
  // Room for the notes of the keeper's period between reads, many times over (best effort:
  // a full pipe only makes a note wait for the keeper's next read).
  if (fcntl(ends[1], F_SETPIPE_SZ, 1 << 20) < 0) {
    spdlog::debug("notes pipe left at its default size: F_SETPIPE_SZ: {}", std::strerror(errno));
  }
  internal::KeeperRequest request;
  request.mutable_notes_pipe();
  std::string frame;
  AppendFrame(request, frame);
  ssize_t sent = SendWithDescriptor(connection, frame, ends[0]);
  int err = errno;
  close(ends[0]);
  if (sent != static_cast<ssize_t>(frame.size())) {
    // A partial frame would leave the connection unusable anyway: the keeper drops it.
    spdlog::warn("notes for the keeper go on its socket: sendmsg: {}",
                 sent < 0 ? std::strerror(err) : "cut short");
    close(ends[1]);
    return -1;
  }
  return ends[1];
}

}  // namespace

absl::StatusOr<std::unique_ptr<KeeperClient>> KeeperClient::Open(const std::string& state_dir,
                                                                 const std::string& keeper_path,
                                                                 internal::Held& held) {
  absl::StatusOr<sockaddr_un> address = SocketAddress(state_dir + "/keeper.sock");
  if (!address.ok()) return address.status();
  int fd = Connect(*address);
  if (fd < 0) {
    int err = errno;
    if (err != ENOENT && err != ECONNREFUSED) {
      return absl::InternalError(absl::StrCat("cannot connect to the keeper at ",
                                              address->sun_path, ": ", std::strerror(err)));
    }
    if (absl::Status s = StartKeeper(*address, keeper_path); !s.ok()) return s;
    fd = Connect(*address);
    if (fd < 0) {
      return absl::InternalError(absl::StrCat("cannot connect to the keeper just started at ",
                                              address->sun_path, ": ", std::strerror(errno)));
    }
  }
  ucred peer{};
  socklen_t length = sizeof(peer);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0 ||
      (peer.uid != geteuid() && peer.uid != 0)) {
    close(fd);
    return absl::PermissionDeniedError(absl::StrCat(
        "the keeper socket ", address->sun_path, " belongs to uid ", peer.uid, ", not to us"));
  }

  internal::KeeperRequest hello;
  hello.set_serial(1);
  hello.mutable_hello();
  std::string frame;
  AppendFrame(hello, frame);
  if (write(fd, frame.data(), frame.size()) != static_cast<ssize_t>(frame.size())) {
    int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("the keeper: ", std::strerror(err)));
  }
  // Its answer comes first; what follows (exits to report again) is read by Start's thread.
  FrameReader reader;
  internal::KeeperEvent event;
  absl::Time deadline = absl::Now() + kHelloTimeout;
  for (;;) {
    absl::StatusOr<bool> next = reader.Next(event);
    if (!next.ok()) {
      close(fd);
      return next.status();
    }
    if (*next) break;
    pollfd p{.fd = fd, .events = POLLIN};
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (timeout_ms <= 0 || poll(&p, 1, timeout_ms) <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("the keeper at ", address->sun_path,
                                                 " did not answer within ",
                                                 absl::FormatDuration(kHelloTimeout)));
    }
    // One byte at a time until the answer is whole: what comes after it is the reader's.
    char byte;
    if (read(fd, &byte, 1) != 1) {
      close(fd);
      return absl::UnavailableError(
          absl::StrCat("the keeper at ", address->sun_path, " closed the connection"));
    }
    reader.Append(&byte, 1);
  }
  if (!event.has_held()) {
    close(fd);
    return absl::DataLossError("the keeper's first answer was not what Hello asks for");
  }
  held = std::move(*event.mutable_held());
  int notes_fd = held.takes_notes_pipe() ? OpenNotesPipe(fd) : -1;
  return std::unique_ptr<KeeperClient>(new KeeperClient(fd, notes_fd, held.keeper_pid()));
}

KeeperClient::~KeeperClient() {
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  FlushReleases();  // what was recorded as ended may be reaped
  shutdown(fd_, SHUT_RDWR);
  if (reader_.joinable()) reader_.join();
  if (notes_fd_ >= 0) close(notes_fd_);
  close(fd_);
}

void KeeperClient::Start(Listener listener) {
  listener_ = std::move(listener);
  reader_ = std::thread([this] { ReadLoop(); });
}

bool KeeperClient::Write(const internal::KeeperRequest& request) {
  std::string frame;
  AppendFrame(request, frame);
  absl::MutexLock lock(&write_mu_);
  if (!held_releases_.empty()) {
    // One write for both: the keeper wakes once.
    frame.insert(0, held_releases_);
    held_releases_.clear();
  }
  return WriteAll(fd_, frame);
}

void KeeperClient::FlushReleases() {
  absl::MutexLock lock(&write_mu_);
  if (held_releases_.empty()) return;
  WriteAll(fd_, held_releases_);
  held_releases_.clear();
}

void KeeperClient::WriteNote(const internal::KeeperRequest& request) {
  if (notes_fd_ < 0) {
    Write(request);
    return;
  }
  std::string frame;
  AppendFrame(request, frame);
  absl::MutexLock lock(&notes_mu_);
  // A broken pipe means a keeper that is gone, which the connection reports (on_lost).
  WriteAll(notes_fd_, frame);
}

absl::StatusOr<internal::Spawned> KeeperClient::Spawn(internal::Spawn spawn) {
  Pending pending;
  internal::KeeperRequest request;
  {
    absl::MutexLock lock(&mu_);
    if (broken_) return absl::UnavailableError("the keeper is gone: no worker can be started");
    request.set_serial(++next_serial_);
    pending_[request.serial()] = &pending;
  }
  *request.mutable_spawn() = std::move(spawn);
  bool sent = Write(request);
  absl::MutexLock lock(&mu_);
  if (!sent && !pending.done) {
    pending_.erase(request.serial());
    return absl::UnavailableError("the keeper is gone: no worker can be started");
  }
  mu_.Await(absl::Condition(&pending.done));
  return std::move(pending.result);
}

void KeeperClient::Release(uint64_t token) {
  internal::KeeperRequest request;
  request.mutable_release()->set_token(token);
  if (reading_for != this) {
    // Nothing would write it soon from here: the reader is blocked in its read.
    Write(request);
    return;
  }
  // Written by the next Write, or by the reader once kReleaseDelay has passed without one.
  absl::MutexLock lock(&write_mu_);
  AppendFrame(request, held_releases_);
}

void KeeperClient::Remember(const std::string& key, const std::string& value) {
  internal::KeeperRequest request;
  request.mutable_remember()->set_key(key);
  request.mutable_remember()->set_value(value);
  WriteNote(request);
}

void KeeperClient::Forget(const std::string& key) {
  internal::KeeperRequest request;
  request.mutable_forget()->set_key(key);
  WriteNote(request);
}

void KeeperClient::Shutdown(absl::Duration limit) {
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  internal::KeeperRequest request;
  request.mutable_shutdown();
  if (!Write(request)) return;
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithTimeout(absl::Condition(&closed_by_keeper_), limit)) {
    spdlog::warn("the keeper did not exit within {}", absl::FormatDuration(limit));
  }
}

void KeeperClient::ReadLoop() {
  reading_for = this;
  FrameReader reader;
  char buffer[65536];
  const int release_delay_ms = static_cast<int>(absl::ToInt64Milliseconds(kReleaseDelay));
  for (;;) {
    bool held;
    {
      absl::MutexLock lock(&write_mu_);
      held = !held_releases_.empty();
    }
    if (held) {
      pollfd readable = {.fd = fd_, .events = POLLIN, .revents = 0};
      int ready = poll(&readable, 1, release_delay_ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) {
        FlushReleases();
        continue;
      }
    }
    ssize_t n = read(fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reader.Append(buffer, static_cast<size_t>(n));
    for (;;) {
      internal::KeeperEvent event;
      absl::StatusOr<bool> next = reader.Next(event);
      if (!next.ok()) {
        spdlog::critical("{}", std::string(next.status().message()));
        shutdown(fd_, SHUT_RDWR);
        break;
      }
      if (!*next) break;
      switch (event.kind_case()) {
        case internal::KeeperEvent::kSpawned: {
          const internal::Spawned& spawned = event.spawned();
          // Registered before Spawn returns and before any later report of the worker.
          if (spawned.pid() > 0 && listener_.on_spawned) {
            listener_.on_spawned(spawned.token(), spawned.pid());
          }
          absl::MutexLock lock(&mu_);
          auto it = pending_.find(event.serial());
          if (it == pending_.end()) break;
          it->second->result = spawned;
          it->second->done = true;
          pending_.erase(it);
          break;
        }
        case internal::KeeperEvent::kExited:
          if (listener_.on_exited) listener_.on_exited(event.exited());
          break;
        case internal::KeeperEvent::kReaped:
          if (listener_.on_reaped) listener_.on_reaped(event.reaped().token());
          break;
        case internal::KeeperEvent::kOrphanReaped:
          if (listener_.on_orphan_reaped) listener_.on_orphan_reaped(event.orphan_reaped());
          break;
        default:
          break;
      }
    }
  }
  bool lost;
  {
    absl::MutexLock lock(&mu_);
    broken_ = true;
    closed_by_keeper_ = true;
    lost = !closing_;
    for (auto& [serial, pending] : pending_) {
      pending->result = absl::UnavailableError("the keeper is gone: no worker can be started");
      pending->done = true;
    }
    pending_.clear();
  }
  if (lost && listener_.on_lost) listener_.on_lost();
}

}  // namespace proctor
