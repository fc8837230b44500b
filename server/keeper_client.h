// KeeperClient: proctord's end of the keeper's socket (see keeper/keeper.h).
//
// Open() connects to the keeper of a state directory, starting one if none runs there, and
// says Hello: what the keeper holds (workers of an earlier proctord, notes) is returned before
// anything else happens. Start() then hands every later report to the listener, in the order
// the keeper sent them, from one reader thread: a worker's Spawned (through on_spawned, before
// Spawn returns) always comes before its Exited, and its Exited before its Reaped.
//
// Spawn may be called from any thread, concurrently; it blocks until the keeper has started
// the worker or failed to, so it must not be called from the reader thread (the listener).
//
// A Release from the listener (on_exited, on the reader thread) is not written at once: it
// goes with the next request (a Spawn, most often, in a steady stream of workers), or after
// kReleaseDelay without one. The keeper then wakes once for both, and its Reaped comes back
// with the Spawned. A worker stays a zombie, its pid still ours, that much longer at most.
// From any other thread, Release is written at once.
//
// Notes (Remember, Forget) go, when the keeper takes one, on a pipe of their own that the
// keeper reads lazily (keeper.proto, NotesPipe): a note is one write that wakes nobody, and
// once written it outlives proctord. Notes keep their order; a note written before a call
// returns is kept even if proctord is killed right after.
#ifndef PROCTOR_SERVER_KEEPER_CLIENT_H_
#define PROCTOR_SERVER_KEEPER_CLIENT_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proctor/internal/keeper.pb.h"

namespace proctor {

class KeeperClient {
 public:
  struct Listener {
    std::function<void(uint64_t token, pid_t pid)> on_spawned;
    std::function<void(const internal::Exited&)> on_exited;
    std::function<void(uint64_t token)> on_reaped;
    std::function<void(const internal::OrphanReaped&)> on_orphan_reaped;
    // The connection broke while proctord still needed it (the keeper died).
    std::function<void()> on_lost;
  };

  // The socket is <state_dir>/keeper.sock. Without a keeper there, starts `keeper_path` (in a
  // session of its own, its parent proctord until proctord ends) and connects to it.
  // `held` receives the keeper's answer to Hello.
  static absl::StatusOr<std::unique_ptr<KeeperClient>> Open(const std::string& state_dir,
                                                            const std::string& keeper_path,
                                                            internal::Held& held);
  ~KeeperClient();
  KeeperClient(const KeeperClient&) = delete;
  KeeperClient& operator=(const KeeperClient&) = delete;

  // Starts the reader thread. Call once, before the first Spawn.
  void Start(Listener listener);

  // The keeper's answer; UNAVAILABLE when the keeper is gone.
  absl::StatusOr<internal::Spawned> Spawn(internal::Spawn spawn);
  void Release(uint64_t token);
  static constexpr absl::Duration kReleaseDelay = absl::Milliseconds(1);
  void Remember(const std::string& key, const std::string& value);
  void Forget(const std::string& key);
  // Asks the keeper to exit once it holds no worker and waits up to `limit` for it to close
  // the connection. The listener hears nothing more afterwards.
  void Shutdown(absl::Duration limit);

  pid_t keeper_pid() const { return keeper_pid_; }

 private:
  struct Pending {
    bool done = false;
    absl::StatusOr<internal::Spawned> result;
  };

  KeeperClient(int fd, int notes_fd, pid_t keeper_pid)
      : fd_(fd), notes_fd_(notes_fd), keeper_pid_(keeper_pid) {}
  // Writes one request whole, after the releases held back; false when the connection is
  // broken.
  bool Write(const internal::KeeperRequest& request);
  // Writes the releases held back, if any.
  void FlushReleases();
  // Remember and Forget: on the notes pipe, else on the connection.
  void WriteNote(const internal::KeeperRequest& request);
  void ReadLoop();

  const int fd_;
  const int notes_fd_;  // the notes pipe's write end; -1: notes go on the connection
  const pid_t keeper_pid_;
  Listener listener_;
  std::thread reader_;
  absl::Mutex write_mu_;
  std::string held_releases_ ABSL_GUARDED_BY(write_mu_);  // framed, not yet written
  absl::Mutex notes_mu_;  // one note written at a time, whole
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Pending*> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 1;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_by_keeper_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_KEEPER_CLIENT_H_
