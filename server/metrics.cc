#include "server/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace proctor {
namespace {

// Writes the HELP and TYPE lines of one metric family.
void Family(std::string& out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

// One sample; `labels` already formatted (`a="x",b="y"`), or empty.
template <typename Value>
void Sample(std::string& out, absl::string_view name, absl::string_view labels, Value value) {
  absl::StrAppend(&out, name, labels.empty() ? "" : absl::StrCat("{", labels, "}"), " ", value,
                  "\n");
}

std::string Seconds(double seconds) { return absl::StrFormat("%.9g", seconds); }

// "/proctor.v1.Proctor/Start" as its labels: service="proctor.v1.Proctor",method="Start".
std::string RpcLabels(absl::string_view path) {
  std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(absl::StripPrefix(path, "/"), absl::MaxSplits('/', 1));
  return absl::StrCat("service=\"", parts.first, "\",method=\"", parts.second, "\"");
}

// proctord's own process, as Prometheus' client libraries name it.
void RenderProcess(std::string& out) {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    double cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                 static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
    Family(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent.");
    Sample(out, "process_cpu_seconds_total", "", Seconds(cpu));
  }
  // /proc/self/statm: the sizes in pages, the whole program's first, the resident part next.
  std::ifstream statm("/proc/self/statm");
  uint64_t size_pages = 0, resident_pages = 0;
  if (statm >> size_pages >> resident_pages) {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    Family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size.");
    Sample(out, "process_virtual_memory_bytes", "", size_pages * page);
    Family(out, "process_resident_memory_bytes", "gauge", "Resident memory size.");
    Sample(out, "process_resident_memory_bytes", "", resident_pages * page);
  }
  std::error_code error;
  size_t fds = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", error), end; !error && it != end;
       it.increment(error)) {
    ++fds;
  }
  if (!error) {
    Family(out, "process_open_fds", "gauge", "Open file descriptors.");
    Sample(out, "process_open_fds", "", fds);
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    Family(out, "process_max_fds", "gauge", "The limit of open file descriptors (soft).");
    Sample(out, "process_max_fds", "", static_cast<uint64_t>(limit.rlim_cur));
  }
}

class RpcTimer final : public grpc::experimental::Interceptor {
 public:
  RpcTimer(Metrics& metrics, const char* method)
      : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_.ObserveRpc(method_, absl::FromChrono(std::chrono::steady_clock::now() - start_));
    }
    methods->Proceed();
  }

 private:
  Metrics& metrics_;
  const char* const method_;  // gRPC's, alive as long as the call
  const std::chrono::steady_clock::time_point start_;
};

class RpcTimerFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcTimerFactory(Metrics& metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcTimer(metrics_, info->method());
  }

 private:
  Metrics& metrics_;
};

}  // namespace

Metrics::Metrics(const std::vector<std::string>& rpc_methods, std::function<Gauges()> gauges)
    : gauges_(std::move(gauges)) {
  for (const std::string& method : rpc_methods) {
    if (rpcs_.try_emplace(method, std::make_unique<Histogram>()).second) {
      rpc_order_.push_back(method);
    }
  }
}

void Metrics::CountEvents(const std::vector<SupervisorEvent>& events) {
  for (const SupervisorEvent& event : events) {
    if (event.kind == EventKind::kStarted) {
      (event.process.restarts == 0 ? started_ : restarts_).fetch_add(1, std::memory_order_relaxed);
    } else if (event.kind == EventKind::kExited) {
      const std::optional<WaitStatus>& status = event.process.status;
      Outcome outcome = !status.has_value()    ? kLost
                        : status->signal != 0  ? kSignal
                        : status->exit_code == 0 ? kExitZero
                                               : kExitNonZero;
      exited_[outcome].fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void Metrics::ObserveRpc(absl::string_view method, absl::Duration duration) {
  auto it = rpcs_.find(method);
  if (it == rpcs_.end()) return;
  Histogram& histogram = *it->second;
  const double seconds = absl::ToDoubleSeconds(duration);
  for (size_t i = 0; i < std::size(kRpcBuckets); ++i) {
    if (seconds <= kRpcBuckets[i]) {
      histogram.buckets[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  histogram.sum_nanos.fetch_add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(duration)),
                                std::memory_order_relaxed);
  histogram.count.fetch_add(1, std::memory_order_relaxed);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
Metrics::RpcInterceptorFactory() {
  return std::make_unique<RpcTimerFactory>(*this);
}

std::string Metrics::Render() {
  const Gauges gauges = gauges_();
  auto load = [](const std::atomic<uint64_t>& counter) {
    return counter.load(std::memory_order_relaxed);
  };
  std::string out;
  Family(out, "proctor_processes_started_total", "counter",
         "Processes started (by Start or as declared services); later runs count as restarts.");
  Sample(out, "proctor_processes_started_total", "", load(started_));
  Family(out, "proctor_process_restarts_total", "counter",
         "Runs started again by a restart policy.");
  Sample(out, "proctor_process_restarts_total", "", load(restarts_));
  Family(out, "proctor_processes_exited_total", "counter",
         "Processes ended for good, by outcome: exit code 0 (exit_zero), another exit code "
         "(exit_nonzero), a signal (signal), or unseen while no keeper held them (lost).");
  constexpr std::pair<Outcome, absl::string_view> kOutcomeNames[] = {
      {kExitZero, "exit_zero"}, {kExitNonZero, "exit_nonzero"}, {kSignal, "signal"},
      {kLost, "lost"}};
  for (const auto& [outcome, name] : kOutcomeNames) {
    Sample(out, "proctor_processes_exited_total", absl::StrCat("outcome=\"", name, "\""),
           load(exited_[outcome]));
  }

  const SupervisorCounts& p = gauges.processes;
  const std::tuple<absl::string_view, absl::string_view, size_t> kGauges[] = {
      {"proctor_processes_running", "Live worker processes (launches in flight included).",
       p.running},
      {"proctor_processes_backoff", "Processes waiting to run again under a restart policy.",
       p.backoff},
      {"proctor_processes_ended", "Ended records kept (until Release or --retain).", p.ended},
      {"proctor_joins_waiting", "Join calls parked until a process ends.", p.joins},
      {"proctor_sessions", "Open client sessions.", p.sessions},
      {"proctor_watchers", "Open Watch streams.", gauges.watchers},
  };
  for (const auto& [name, help, value] : kGauges) {
    Family(out, name, "gauge", help);
    Sample(out, name, "", value);
  }

  Family(out, "proctor_auth_refusals_total", "counter",
         "Calls refused by authentication, by reason.");
  for (const auto& [reason, count] : gauges.auth_refusals) {
    Sample(out, "proctor_auth_refusals_total", absl::StrCat("reason=\"", reason, "\""), count);
  }

  Family(out, "proctor_rpc_duration_seconds", "histogram",
         "Time from a call's arrival to its status, by method (streams: while open).");
  for (const std::string& method : rpc_order_) {
    const Histogram& histogram = *rpcs_.at(method);
    const std::string labels = RpcLabels(method);
    // A call observed meanwhile may show in its bucket before it shows in the count: +Inf and
    // the count are never below the buckets.
    uint64_t cumulative = 0;
    for (size_t i = 0; i < std::size(kRpcBuckets); ++i) {
      cumulative += load(histogram.buckets[i]);
      Sample(out, "proctor_rpc_duration_seconds_bucket",
             absl::StrCat(labels, ",le=\"", absl::StrFormat("%g", kRpcBuckets[i]), "\""),
             cumulative);
    }
    const uint64_t count = std::max(cumulative, load(histogram.count));
    Sample(out, "proctor_rpc_duration_seconds_bucket", absl::StrCat(labels, ",le=\"+Inf\""),
           count);
    Sample(out, "proctor_rpc_duration_seconds_sum", labels,
           Seconds(static_cast<double>(load(histogram.sum_nanos)) / 1e9));
    Sample(out, "proctor_rpc_duration_seconds_count", labels, count);
  }
  RenderProcess(out);
  return out;
}

}  // namespace proctor
