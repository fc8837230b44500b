// Keeper: the process that is the parent of proctord's workers, so that they outlive proctord.
//
// proctord starts one keeper per state directory (proctor-keeper, a small single-threaded
// program with no gRPC) and talks to it over a Unix socket in the state directory
// (keeper.proto). The keeper spawns each worker as its own child, is the child subreaper of
// every tree below them, and holds each worker's exit: when a worker ends, the keeper reads
// its status and resource usage without reaping it (waitid WNOWAIT) and reports it; the
// worker stays a zombie — its pid, and so its process group id, still taken — until proctord
// has journaled the exit and sends Release. So no exit is lost when proctord dies, and a
// group id proctord signals cannot have been given to anyone else.
//
// One connection at a time: a new one (a restarted proctord) replaces the old. On Hello the
// keeper lists what it holds (Held) and reports again every exit not released. Notes
// (Remember, Forget) come on the connection or, once proctord has sent one, on a notes pipe
// that the keeper reads lazily (keeper.proto, NotesPipe), and always to its end before it
// answers a Hello or decides to exit. Orphans that
// come to it are reaped at once (OrphanReaped). It exits when it holds no worker and either
// proctord asked it to (Shutdown) or no proctord is connected and it holds no note either
// (an open session, a sync object: the next proctord needs them back). SIGINT, SIGHUP and
// SIGPIPE are ignored: the keeper is in a session of its own and outlives terminals and
// proctord alike.
#ifndef PROCTOR_SERVER_KEEPER_KEEPER_H_
#define PROCTOR_SERVER_KEEPER_KEEPER_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "proctor/internal/keeper.pb.h"
#include "server/keeper/framing.h"

namespace proctor {

class Keeper {
 public:
  // Takes `listen_fd` (a listening Unix stream socket). Makes the process a child subreaper.
  static absl::StatusOr<std::unique_ptr<Keeper>> Create(int listen_fd);
  ~Keeper();

  // Serves until there is nothing left to keep; returns the exit status.
  int Run();

 private:
  struct Worker {
    pid_t pid = 0;
    int pidfd = -1;
    std::string cgroup_dir;
    std::string memo;
    bool exited = false;
    internal::Exited exit;  // once exited
  };

  explicit Keeper(int listen_fd);
  absl::Status Init();
  void OnAcceptable();
  void OnReadable();
  // The notes pipe has something: read it now, then not again before the timer.
  void OnNotes();
  void OnNotesTimer();
  // Reads the notes pipe to its end (or until it is empty, while proctord writes on); closes
  // it at its end. `close` closes it in any case.
  void DrainNotes(bool close);
  void Remember(const internal::KeeperRequest& request);
  void OnWritable();
  void OnSignals();
  // Reaps the orphans that have ended, and reports each: asks the kernel for the first ended
  // child, again and again. A held worker (ended, not yet released) that comes first hides
  // the children after it: then the question waits for a release (HandleRelease asks again),
  // or for the orphans timer when there is no proctord to release it or it is slow to.
  void ReapEndedOrphans();
  void OnOrphansTimer();
  void ArmOrphansTimer();
  // The same by reading the whole list of children, held workers or not. It walks the list,
  // which costs about a millisecond with 9,600 workers.
  void ScanForEndedOrphans();
  // Reaps the ended orphan `pid` and reports it; false if it could not be reaped.
  bool ReapOrphan(pid_t pid);
  void OnWorkerEnded(uint64_t token);
  void Handle(const internal::KeeperRequest& request);
  void HandleSpawn(uint64_t serial, const internal::Spawn& spawn);
  void HandleRelease(uint64_t token);
  void Send(const internal::KeeperEvent& event);
  void Flush();
  void CloseConnection();
  bool Done() const;

  const int listen_fd_;
  int epoll_fd_ = -1;
  int signal_fd_ = -1;
  int connection_ = -1;
  bool ever_connected_ = false;
  bool greeted_ = false;  // the connection has said Hello
  bool shutdown_requested_ = false;
  bool running_ = true;
  FrameReader reader_;
  std::string outgoing_;
  std::vector<int> received_fds_;  // descriptors that came on the connection, not yet taken
  int notes_fd_ = -1;              // the notes pipe's read end
  FrameReader notes_reader_;
  int notes_timer_fd_ = -1;
  int orphans_timer_fd_ = -1;
  bool orphans_due_ = false;          // a SIGCHLD came, and its ended orphans are not all reaped
  bool orphans_timer_armed_ = false;
  size_t held_ = 0;  // workers that ended and are not released yet
  absl::flat_hash_map<uint64_t, Worker> workers_;     // by token
  absl::flat_hash_map<int, uint64_t> pidfd_tokens_;   // pidfd → token, while running
  absl::flat_hash_set<pid_t> worker_pids_;            // until reaped
  std::map<std::string, std::string> notes_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_KEEPER_KEEPER_H_
