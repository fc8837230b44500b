// ServiceManager: runs the declared services of a services directory (see service_specs.h)
// and keeps them as the directory says, at start and on each reload.
//
// Apply() loads the directory and compares it with what is in force:
// - a removed file: its process is terminated with its tree (SIGTERM, SIGKILL after
//   Supervisor::kDefaultGrace) and the service is forgotten;
// - a changed file: its process is terminated the same way, then the new declaration starts;
// - a new file: it starts;
// - an unchanged file: left alone, whether its process runs or has ended for good (a start
//   that failed, though, is tried again);
// - a file that cannot be used: what was in force for it stays, and its error is reported.
// A service starts once every service it is `after` has been started and is ready
// (Supervisor::AwaitReady, for the dependency's ready_timeout or kDefaultReadyTimeout) and
// still runs; if one of them fails to start, to be ready, or has ended, it does not start
// either. A failure of one service never keeps the others from applying.
//
// Each service's process is started as Start would start its `start` request for an admin
// key at top level, named NAME, with ProcessInfo.service = NAME. The digest of the
// declaration it runs is noted with the os (ProcessOs::Remember("service/NAME")), so that a
// proctord restarted while the keeper holds its workers takes a running service whose file
// is unchanged back as it is (found among the records by ProcessInfo.service) instead of
// starting it again; a running service with no note (proctord stopped during its start) is
// restarted.
//
// Threads: the manager works on a thread of its own, one closure at a time; every public
// method hands its work there and returns at once, and the answer comes through a callback
// on that thread. Supervisor completions are handed there too, so nothing blocks the event
// loop or a gRPC thread: the only waits on the manager's thread are the supervisor's own
// (a Start returns once exec'd). The destructor stops the thread; work not yet done is
// dropped. The supervisor and os must outlive the manager.
#ifndef PROCTOR_SERVER_SERVICE_MANAGER_H_
#define PROCTOR_SERVER_SERVICE_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proctor/v1/proctor.pb.h"
#include "server/process_os.h"
#include "server/service_specs.h"
#include "server/supervisor.h"

namespace proctor {

// The prefix of the os notes that keep each service's applied digest.
inline constexpr char kServiceNotePrefix[] = "service/";

class ServiceManager {
 public:
  // `kept`: the notes an earlier proctord left (the keeper's, under kServiceNotePrefix, the
  // prefix removed): service name → digest in force.
  ServiceManager(std::string dir, Supervisor& supervisor, ProcessOs& os,
                 std::map<std::string, std::string> kept);
  ~ServiceManager();

  ServiceManager(const ServiceManager&) = delete;
  ServiceManager& operator=(const ServiceManager&) = delete;

  const std::string& dir() const { return dir_; }

  // Applies the directory as it stands. `done` gets what was decided (see ReloadResponse),
  // once removed services have been asked to stop and the others started or queued.
  void Apply(std::function<void(v1::ReloadResponse)> done);
  // Every declared service (in name order): its file, its process's record, its error.
  void List(std::function<void(v1::ListServicesResponse)> done);

 private:
  class WorkQueue;

  enum class Phase {
    kUndeclared,  // only a file that cannot be used: nothing in force
    kStopping,    // its old process is being terminated; then it waits
    kWaiting,     // waits for the services it is after
    kStarting,    // started: waits for it to be ready
    kReady,       // started and ready (it may have ended since)
    kFailed,      // it, or a service it is after, failed to start or to be ready
  };
  struct Service {
    std::string path;
    v1::ServiceSpec spec;  // the declaration in force
    std::string digest;    // of `spec`; empty when nothing is in force
    Phase phase = Phase::kUndeclared;
    uint64_t id = 0;     // its process's record, once started (or taken back)
    std::string error;   // why it does not run, or why its file cannot be used
    // Grows whenever what the service waits for is replaced: an answer to an older wait is
    // ignored.
    uint64_t generation = 0;
  };

  // All of these run on the manager's thread.
  v1::ReloadResponse ApplyNow();
  // Once, before the first apply: the services an earlier proctord ran (notes and records).
  void TakeBack();
  // Terminates the process of a service that is removed or replaced; OnProcessStopped runs
  // once it has ended.
  void StopProcess(const std::string& name, uint64_t id);
  void OnProcessStopped(const std::string& name, uint64_t id);
  // Starts every waiting service whose dependencies are ready; fails those whose dependencies
  // failed.
  void Pump();
  // The error that keeps `service` from starting for good, "" when all it is after is ready,
  // or nullopt while it must wait.
  std::optional<std::string> BlockedBy(const Service& service);
  void StartService(const std::string& name, Service& service);
  // Has OnReady run once process `id` of the service is ready (or will never be).
  void WaitUntilReady(const std::string& name, uint64_t id, absl::Duration timeout,
                      uint64_t generation);
  void OnReady(const std::string& name, uint64_t generation, const absl::Status& ready);
  void Fail(const std::string& name, Service& service, std::string error);

  const std::string dir_;
  Supervisor& supervisor_;
  ProcessOs& os_;
  std::map<std::string, std::string> kept_;  // until TakeBack
  bool taken_back_ = false;
  std::map<std::string, Service> services_;
  // Names in the order the last apply would start them, then any others.
  std::vector<std::string> order_;
  // Processes being terminated because their service was removed or changed, by service.
  std::map<std::string, uint64_t> stopping_;
  std::shared_ptr<WorkQueue> queue_;  // last: its thread stops first
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_SERVICE_MANAGER_H_
