#include "server/service_manager.h"

#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "server/process_proto.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

constexpr int kSigterm = 15;

// Stands for the declaration of a running service whose digest nobody noted: it equals no
// file's, so the service is restarted as changed.
constexpr char kUnknownDigest[] = "unknown";

std::string Names(const google::protobuf::RepeatedPtrField<std::string>& names) {
  return names.empty() ? "-" : absl::StrJoin(names, ", ");
}

}  // namespace

// One thread running closures in the order they were posted. Posting after Close() does
// nothing, so the callbacks the supervisor holds may outlive the manager.
class ServiceManager::WorkQueue {
 public:
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }

  void Post(std::function<void()> closure) {
    absl::MutexLock lock(&mu_);
    if (!closed_) closures_.push_back(std::move(closure));
  }

  // Returns once the closure running now (if any) is done; the others are dropped.
  void Close() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
      closures_.clear();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> next;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WorkQueue* queue) ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue->mu_) {
              return queue->closed_ || !queue->closures_.empty();
            },
            this));
        if (closed_) return;
        next = std::move(closures_.front());
        closures_.pop_front();
      }
      next();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> closures_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

ServiceManager::ServiceManager(std::string dir, Supervisor& supervisor, ProcessOs& os,
                               std::map<std::string, std::string> kept)
    : dir_(std::move(dir)),
      supervisor_(supervisor),
      os_(os),
      kept_(std::move(kept)),
      queue_(std::make_shared<WorkQueue>()) {
  queue_->Start();
}

ServiceManager::~ServiceManager() { queue_->Close(); }

void ServiceManager::Apply(std::function<void(v1::ReloadResponse)> done) {
  queue_->Post([this, done = std::move(done)] { done(ApplyNow()); });
}

void ServiceManager::List(std::function<void(v1::ListServicesResponse)> done) {
  queue_->Post([this, done = std::move(done)] {
    v1::ListServicesResponse reply;
    for (const auto& [name, service] : services_) {
      v1::Service& out = *reply.add_services();
      out.set_name(name);
      out.set_path(service.path);
      out.set_error(service.error);
      if (service.id == 0) continue;
      // Released by a user meanwhile, the record is gone: the service shows no process.
      if (absl::StatusOr<ProcessInfo> info = supervisor_.Get(service.id); info.ok()) {
        ToProto(*info, out.mutable_process());
      }
    }
    done(std::move(reply));
  });
}

v1::ReloadResponse ServiceManager::ApplyNow() {
  v1::ReloadResponse reply;
  absl::StatusOr<ServiceDirectory> loaded = LoadServiceDirectory(dir_);
  if (!loaded.ok()) {
    spdlog::error("services: {}; nothing changes", std::string(loaded.status().message()));
    reply.add_errors(std::string(loaded.status().message()));
    return reply;
  }
  if (!taken_back_) TakeBack();

  std::map<std::string, std::string> in_force;
  for (const auto& [name, service] : services_) {
    if (!service.digest.empty()) in_force[name] = service.digest;
  }
  ServiceDiff diff = DiffServices(in_force, *loaded);
  for (const std::string& name : diff.removed) {
    if (uint64_t id = services_.at(name).id; id != 0) StopProcess(name, id);
    os_.Forget(kServiceNotePrefix + name);
    services_.erase(name);
    reply.add_stopped(name);
  }
  for (const std::string& name : diff.unchanged) {
    Service& service = services_.at(name);
    service.path = loaded->services.at(name).path;
    service.spec = loaded->services.at(name).spec;
    if (service.phase == Phase::kFailed) {
      // Nothing of it runs: whatever made it fail (a missing program, a dependency) may have
      // been fixed since.
      service.phase = Phase::kWaiting;
      ++service.generation;
      reply.add_started(name);
    } else {
      reply.add_unchanged(name);
    }
    service.error.clear();
  }
  for (const std::string& name : diff.changed) {
    Service& service = services_.at(name);
    const ServiceFile& file = loaded->services.at(name);
    service.path = file.path;
    service.spec = file.spec;
    service.digest = file.digest;
    service.error.clear();
    ++service.generation;
    if (service.phase != Phase::kStopping) {
      if (service.id != 0) {
        StopProcess(name, service.id);
        service.phase = Phase::kStopping;
      } else {
        service.phase = Phase::kWaiting;
      }
    }
    reply.add_restarted(name);
  }
  for (const std::string& name : diff.added) {
    const ServiceFile& file = loaded->services.at(name);
    Service& service = services_[name];
    service.path = file.path;
    service.spec = file.spec;
    service.digest = file.digest;
    service.error.clear();
    service.id = 0;
    ++service.generation;
    // Removed and added again while its old process is still being terminated.
    service.phase = stopping_.contains(name) ? Phase::kStopping : Phase::kWaiting;
    reply.add_started(name);
  }
  // A file that cannot be used leaves what is in force for it as it is.
  for (const auto& [name, file] : loaded->services) {
    if (file.error.empty()) continue;
    Service& service = services_[name];
    if (service.digest.empty()) service.path = file.path;
    service.error = file.error;
  }
  std::erase_if(services_, [&](const auto& entry) {
    return entry.second.digest.empty() && !loaded->services.contains(entry.first);
  });
  for (const std::string& error : loaded->Errors()) {
    spdlog::warn("services: {}", error);
    reply.add_errors(error);
  }

  order_ = loaded->order;
  for (const auto& [name, service] : services_) {
    if (std::find(order_.begin(), order_.end(), name) == order_.end()) order_.push_back(name);
  }
  Pump();
  spdlog::info("services in {}: started {}; stopped {}; restarted {}; unchanged {}; {} error(s)",
               dir_, Names(reply.started()), Names(reply.stopped()), Names(reply.restarted()),
               Names(reply.unchanged()), reply.errors_size());
  return reply;
}

void ServiceManager::TakeBack() {
  taken_back_ = true;
  std::map<std::string, ProcessInfo> live, ended;
  for (ProcessInfo& info : supervisor_.List(ListFilter{})) {
    if (info.service.empty()) continue;
    std::map<std::string, ProcessInfo>& by_name = info.running || info.backoff ? live : ended;
    auto it = by_name.find(info.service);
    if (it == by_name.end() || it->second.id < info.id) by_name[info.service] = std::move(info);
  }
  for (const auto& [name, info] : live) {
    Service& service = services_[name];
    service.id = info.id;
    auto note = kept_.find(name);
    service.digest = note != kept_.end() ? note->second : kUnknownDigest;
    service.phase = Phase::kStarting;
    spdlog::info("services: {} runs on as id={} pid={}{}", name, info.id, info.pid,
                 note != kept_.end() ? "" : " (what it was started from is unknown)");
    WaitUntilReady(name, info.id, kDefaultReadyTimeout, service.generation);
  }
  for (const auto& [name, digest] : kept_) {
    if (services_.contains(name)) continue;
    auto it = ended.find(name);
    // Nothing left of it (its record was released): it starts again, as a new service.
    if (it == ended.end()) continue;
    // Ended for good under the earlier proctord: it stays so, as a reload would leave it.
    Service& service = services_[name];
    service.id = it->second.id;
    service.digest = digest;
    service.phase = Phase::kReady;
  }
  kept_.clear();
}

void ServiceManager::StopProcess(const std::string& name, uint64_t id) {
  stopping_[name] = id;
  spdlog::info("services: terminating {} (id={})", name, id);
  supervisor_.Terminate(
      id,
      TerminateOptions{.signal = kSigterm, .grace = Supervisor::kDefaultGrace, .wait = true,
                       .tree = true},
      [queue = queue_, this, name, id](const absl::StatusOr<ProcessInfo>&) {
        // Whatever the answer (NOT_FOUND for a record released meanwhile), nothing of it runs.
        queue->Post([this, name, id] { OnProcessStopped(name, id); });
      });
}

void ServiceManager::OnProcessStopped(const std::string& name, uint64_t id) {
  auto stopping = stopping_.find(name);
  if (stopping == stopping_.end() || stopping->second != id) return;
  stopping_.erase(stopping);
  auto it = services_.find(name);
  if (it == services_.end() || it->second.phase != Phase::kStopping) return;
  it->second.phase = Phase::kWaiting;
  it->second.id = 0;
  Pump();
}

std::optional<std::string> ServiceManager::BlockedBy(const Service& service) {
  for (const std::string& after : service.spec.after()) {
    auto it = services_.find(after);
    if (it == services_.end() || it->second.digest.empty()) {
      return absl::StrCat(service.path, ": after: \"", after, "\" is not a declared service");
    }
    const Service& dependency = it->second;
    if (dependency.phase == Phase::kFailed) {
      return absl::StrCat(service.path, ": after: \"", after,
                          "\" failed (see its own error), so this service was not started");
    }
    if (dependency.phase != Phase::kReady) return std::nullopt;
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(dependency.id);
    if (!info.ok() || !(info->running || info->backoff)) {
      return absl::StrCat(service.path, ": after: \"", after,
                          "\" has ended, so this service was not started");
    }
  }
  return "";
}

void ServiceManager::Pump() {
  // `order_` puts every service after those it is after, so one pass carries a failure down
  // a whole chain; another pass is made while one changes anything, for the services
  // outside that order.
  bool changed = true;
  while (changed) {
    changed = false;
    for (const std::string& name : order_) {
      auto it = services_.find(name);
      if (it == services_.end() || it->second.phase != Phase::kWaiting) continue;
      std::optional<std::string> blocked = BlockedBy(it->second);
      if (!blocked.has_value()) continue;
      changed = true;
      if (!blocked->empty()) {
        Fail(name, it->second, *std::move(blocked));
      } else {
        StartService(name, it->second);
      }
    }
  }
}

void ServiceManager::StartService(const std::string& name, Service& service) {
  const v1::StartRequest& request = service.spec.start();
  StartSpec spec;
  if (absl::Status s = StartSpecFromRequest(request, spec); !s.ok()) {
    Fail(name, service, absl::StrCat(service.path, ": start: ", s.message()));
    return;
  }
  spec.name = name;
  spec.service = name;
  spec.authkey = request.authkey();
  absl::StatusOr<ProcessInfo> started = supervisor_.Start(spec);
  if (!started.ok()) {
    Fail(name, service, absl::StrCat(service.path, ": start: ", started.status().message()));
    return;
  }
  service.id = started->id;
  service.phase = Phase::kStarting;
  service.error.clear();
  os_.Remember(kServiceNotePrefix + name, service.digest);
  spdlog::info("services: started {} as id={} pid={}", name, started->id, started->pid);
  const absl::Duration timeout = request.has_ready_timeout()
                                     ? FromDurationProto(request.ready_timeout())
                                     : kDefaultReadyTimeout;
  WaitUntilReady(name, started->id, timeout, service.generation);
}

void ServiceManager::WaitUntilReady(const std::string& name, uint64_t id, absl::Duration timeout,
                                    uint64_t generation) {
  supervisor_.AwaitReady(
      id, timeout, [queue = queue_, this, name, generation](absl::StatusOr<ProcessInfo> ready) {
        queue->Post([this, name, generation, status = ready.status()] {
          OnReady(name, generation, status);
        });
      });
}

void ServiceManager::OnReady(const std::string& name, uint64_t generation,
                             const absl::Status& ready) {
  auto it = services_.find(name);
  if (it == services_.end() || it->second.generation != generation ||
      it->second.phase != Phase::kStarting) {
    return;
  }
  Service& service = it->second;
  if (ready.ok()) {
    service.phase = Phase::kReady;
    spdlog::debug("services: {} is ready", name);
  } else {
    Fail(name, service, absl::StrCat(service.path, ": not ready: ", ready.message()));
  }
  Pump();
}

void ServiceManager::Fail(const std::string& name, Service& service, std::string error) {
  spdlog::error("services: {} does not run: {}", name, error);
  service.phase = Phase::kFailed;
  service.error = std::move(error);
}

}  // namespace proctor
