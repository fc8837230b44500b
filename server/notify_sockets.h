// NotifySockets: NotifyEndpoints as Unix datagram sockets, one per worker, at <dir>/<id>.
//
// Who may send: each socket file is mode 0600 and belongs to the worker's user, so only that
// user and root can send to it; the directory is 0711, so a worker of another user reaches
// its own socket but cannot list the others. (Every directory above `dir` must let the
// workers' users through as well.) A message is the worker's whose socket it arrived on, so a
// sender that has exited by the time it is read (as `systemd-notify --ready` does at once) is
// still attributed. Each datagram comes with its sender's credentials (SO_PASSCRED) and is
// dropped, whole, when
// - it is longer than kMaxNotifyMessageBytes ("oversized ..."),
// - its sender's uid is neither the owner's nor root's ("foreign sender uid N"),
// - `belongs` says its sender is not of the worker's tree ("pid N is not in worker ID's tree"),
// - ParseNotifyMessage refuses it (its reason).
// Every drop is counted and reported to the listener's on_dropped; nothing a sender does
// stops the others being read. Descriptors passed with a message are closed at once (FDSTORE
// is not supported), which is also what a sender waiting on sd_notify_barrier() waits for; a
// message that is only BARRIER=1 is consumed so, as systemd does, and not delivered.
//
// Threads: Open and Close may be called from any thread; `belongs` and the listener are
// called on the loop thread, never under a lock of NotifySockets, so they may call Open and
// Close. Called off the loop thread, Close may still let through the messages of `id` that
// the loop had just read.
//
// Sockets outlive a NotifySockets: destroying it stops the listening but leaves the socket
// files, so that a proctord started again (workers kept) opens them again where the workers
// expect them; Close removes one for good. The directory is one proctord's: whatever is at
// an id's path and not open here is taken for a leftover.
//
// Cost (tests/bench/notify_bench.cc, 1,000 endpoints): one descriptor and under 1 KiB of RSS
// per endpoint, and 2-3 KiB of kernel slab; 8-20 us from a sender's sendto to on_message
// (p50, 2 vCPUs). Open makes a file: 0.1-2 ms on ext4 on a virtual disk, 30-50 us on tmpfs,
// so a directory on /run suits it best.
#ifndef PROCTOR_SERVER_NOTIFY_SOCKETS_H_
#define PROCTOR_SERVER_NOTIFY_SOCKETS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/event_loop.h"
#include "server/notify_endpoints.h"
#include "server/notify_message.h"

namespace proctor {

class NotifySockets final : public NotifyEndpoints {
 public:
  // Whether the live process `sender` is of worker `id`'s tree (PosixProcessOs::InWorkerTree).
  using Belongs = std::function<bool(uint64_t id, pid_t sender)>;
  struct Listener {
    // A well-formed message from worker `id`; `sender` as the kernel saw it when it was sent.
    std::function<void(uint64_t id, const NotifyMessage&, pid_t sender)> on_message;
    // A datagram on `id`'s socket that was dropped, and why.
    std::function<void(uint64_t id, absl::string_view why)> on_dropped;
  };

  // Makes `dir` (not its parents) if it is missing; either way it must be a directory of
  // proctord's user, and it is given mode 0711. Socket files left in it by an earlier
  // proctord stay until opened again or closed. FAILED_PRECONDITION for a `dir` that is not
  // such a directory. `loop` must outlive the sockets; `belongs` and both callbacks of
  // `listener` must be set.
  static absl::StatusOr<std::unique_ptr<NotifySockets>> Create(EventLoop& loop, std::string dir,
                                                               Belongs belongs, Listener listener);
  // REQUIRES: called on the loop thread, or once the loop has stopped running callbacks.
  ~NotifySockets() override;
  NotifySockets(const NotifySockets&) = delete;
  NotifySockets& operator=(const NotifySockets&) = delete;

  // The socket's path. A socket file already there and not open here (left by a proctord
  // that died) is replaced at the same path. An id open already keeps its socket and its
  // owner. FAILED_PRECONDITION when the path does not fit a Unix socket address (it is never
  // shortened); otherwise the failing call with its errno.
  absl::StatusOr<std::string> Open(uint64_t id, std::optional<uid_t> owner) override;
  void Close(uint64_t id) override;

  // Datagrams dropped since Create, on all sockets; and on `id`'s socket since it was opened
  // (0 when it is not open).
  uint64_t dropped() const { return dropped_.load(); }
  uint64_t dropped(uint64_t id) const;

 private:
  struct Endpoint {
    std::string path;
    int fd = -1;
    uid_t owner = 0;  // the worker's user, or proctord's
    uint64_t dropped = 0;
  };
  // One datagram as read, before any check.
  struct Received;

  NotifySockets(EventLoop& loop, std::string dir, Belongs belongs, Listener listener);
  // Reads what is queued on `id`'s socket, which was `fd` when it was watched.
  void OnReadable(uint64_t id, int fd);
  void Handle(uint64_t id, uid_t owner, const Received& datagram);
  void Drop(uint64_t id, absl::string_view why);

  EventLoop& loop_;
  const std::string dir_;
  const Belongs belongs_;
  const Listener listener_;
  std::atomic<uint64_t> dropped_ = 0;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Endpoint> endpoints_ ABSL_GUARDED_BY(mu_);
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_NOTIFY_SOCKETS_H_
