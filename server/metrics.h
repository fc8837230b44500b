// Metrics: what proctord counts for Prometheus, and the text it serves at /metrics (the text
// exposition format, version 0.0.4; MetricsServer serves it).
//
// Counted as it happens, with relaxed atomics only (nothing on the call path takes a lock):
// - from the supervisor's events (CountEvents, an EventRecorder observer): processes started
//   (first runs), restarts (later runs), and processes ended for good by outcome: exit code 0,
//   another exit code, a signal, or lost (ended while no keeper held them);
// - RPC durations by method (RpcInterceptorFactory): from the call's arrival to its status,
//   for every method of proctor.v1.Proctor and proctor.v1.Sync. A Join that waits, or a Watch
//   or Logs --follow stream, lasts as long as it is open.
// Read when scraped (Render): the supervisor's counts, watchers and authentication refusals by
// reason (`gauges`), and proctord's own process (CPU, memory, descriptors, threads).
//
// Counters start from zero with each proctord process; a SIGUSR2 restart starts them again
// (Prometheus' rate() takes a reset as one).
//
// Thread-safe.
#ifndef PROCTOR_SERVER_METRICS_H_
#define PROCTOR_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "server/supervisor.h"

namespace proctor {

class Metrics {
 public:
  // What is read at each scrape.
  struct Gauges {
    SupervisorCounts processes;
    size_t watchers = 0;
    // Refused calls since start, by reason (Authenticator::RefusalName).
    std::vector<std::pair<std::string, uint64_t>> auth_refusals;
  };

  // RPC durations fall into these buckets (upper bounds, seconds), and +Inf.
  static constexpr double kRpcBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.1,    0.25,  0.5,    1,     2.5,  5,     10,
                                           30,     60,    300};

  // `rpc_methods`: the full paths ("/proctor.v1.Proctor/Start") whose durations are kept.
  Metrics(const std::vector<std::string>& rpc_methods, std::function<Gauges()> gauges);

  void CountEvents(const std::vector<SupervisorEvent>& events);
  // A call to `method` (its full path) took `duration`; ignored for a method not kept.
  void ObserveRpc(absl::string_view method, absl::Duration duration);

  // Everything, in the text exposition format.
  std::string Render();

  // Times each call to one of the kept methods (gRPC's server interceptors).
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcInterceptorFactory();

 private:
  struct Histogram {
    std::array<std::atomic<uint64_t>, std::size(kRpcBuckets)> buckets{};  // not cumulative
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> sum_nanos{0};
  };
  enum Outcome { kExitZero, kExitNonZero, kSignal, kLost, kOutcomes };

  const std::function<Gauges()> gauges_;
  std::atomic<uint64_t> started_{0};
  std::atomic<uint64_t> restarts_{0};
  std::array<std::atomic<uint64_t>, kOutcomes> exited_{};
  // Made whole by the constructor, then only read: no lock needed to find a method's.
  absl::flat_hash_map<std::string, std::unique_ptr<Histogram>> rpcs_;
  std::vector<std::string> rpc_order_;  // the paths, as given
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_METRICS_H_
