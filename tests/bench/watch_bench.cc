// watch_bench: how soon Watch tells its watchers that a process exited, and what idle
// watchers cost proctord.
//
//   watch_bench [--proctord PATH] [--probe PATH] [--dir DIR] [-n N] [--watchers W]
//               [--idle I] [--proctord-arg ARG]... [--json]
//
// It starts a proctord of its own (on its defaults, socket and state directory in a new
// directory under DIR, removed afterwards), waits until the daemon's stock of spare capture
// files is made (that work would compete with the measurement), then:
//
// 1. Idle watchers. proctord's VmRSS, threads (/proc/PID/status) and open descriptors
//    (/proc/PID/fd), before and after I watchers each open a Watch from now on a connection
//    of their own, and again after they have gone. Each watcher's filter names a process
//    that only this program starts: to know that every stream is subscribed, it starts such
//    a /bin/true until one of them has reached every watcher; from then on nothing comes.
//
// 2. Exit -> Watch event latency, with 1 watcher (the baseline) and then with W watchers,
//    each on a connection of its own, watching every event from now (no filter). N workers
//    run one after another, each once the previous one's exit reached every watcher. The
//    worker is watch_bench_probe, which writes CLOCK_MONOTONIC to its stdout just before it
//    exits; a watcher takes CLOCK_MONOTONIC first thing when an EXITED event reaches its
//    sink; afterwards each worker's stdout is read with Logs. Latency = arrival - that
//    timestamp: the kernel's exit and SIGCHLD, proctord's reaping, journal commit and
//    publishing, gRPC's write, the client library's read and proof check, and the
//    watcher's thread being scheduled (on a small machine, next to the others). Reported
//    over every (watcher, exit) pair, and per exit for the last watcher to get it.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "tests/bench/bench_daemon.h"
#include "nlohmann/json.hpp"
#include "tests/bench/bench_support.h"

extern char** environ;

namespace proctor {
namespace {

// The name of the processes this program starts only to learn that its watchers listen.
constexpr char kProbeName[] = "watch-bench-probe";
// Workers run and thrown away before the measured ones, with the watchers in place.
constexpr int kWarmup = 10;

struct Options {
  std::string proctord = PROCTORD_PATH;
  std::string probe = WATCH_BENCH_PROBE_PATH;
  std::string dir = std::filesystem::temp_directory_path();
  int n = 1000;
  int watchers = 100;
  int idle = 1000;
  std::vector<std::string> proctord_args;
  bool json = false;
};

using bench::MonotonicNanos;

// When each EXITED event reached a watcher, by process id.
class Arrivals {
 public:
  // Called from the watchers' sinks, with the time taken on arrival.
  void Add(const v1::Event& event, int64_t at) {
    if (event.type() != v1::EVENT_EXITED) return;
    absl::MutexLock lock(&mu_);
    at_[event.process().id()].push_back(at);
    if (event.process().exitcode() != 0) failed_.push_back(event.process().id());
  }
  // Whether `count` watchers have had the exit of `id` within `limit`.
  bool Await(uint64_t id, size_t count, absl::Duration limit) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = at_.find(id);
      return it != at_.end() && it->second.size() >= count;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), limit);
  }
  std::vector<int64_t> Of(uint64_t id) {
    absl::MutexLock lock(&mu_);
    return at_[id];
  }
  std::vector<uint64_t> Failed() {
    absl::MutexLock lock(&mu_);
    return failed_;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::vector<int64_t>> at_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> failed_ ABSL_GUARDED_BY(mu_);
};

// Watchers, each with a Client (so a connection) of its own and a thread blocked in Watch.
class Watchers {
 public:
  explicit Watchers(Arrivals& arrivals) : arrivals_(arrivals) {}
  ~Watchers() { Close().IgnoreError(); }

  absl::Status Open(const ClientOptions& options, int count, const v1::WatchRequest& request) {
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
      if (!client.ok()) return client.status();
      ends_.push_back(std::make_unique<absl::Status>());
      threads_.emplace_back([this, request, c = client->get(), end = ends_.back().get()](
                                std::stop_token stop) {
        *end = c->Watch(
            request,
            [this](const v1::Event& event) {
              arrivals_.Add(event, MonotonicNanos());
              return true;
            },
            stop);
      });
      clients_.push_back(*std::move(client));
    }
    return absl::OkStatus();
  }

  // Stops every watch; an error when one had ended otherwise than by being stopped.
  absl::Status Close() {
    for (std::jthread& thread : threads_) thread.request_stop();
    threads_.clear();  // joins
    absl::Status first;
    for (const auto& end : ends_) {
      if (!absl::IsCancelled(*end) && first.ok()) {
        first = absl::InternalError(absl::StrCat("a watch ended by itself: ", end->ToString()));
      }
    }
    ends_.clear();
    clients_.clear();
    return first;
  }

 private:
  Arrivals& arrivals_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::unique_ptr<absl::Status>> ends_;  // each watch's result, once it ended
  std::vector<std::jthread> threads_;
};

absl::StatusOr<uint64_t> StartWorker(Client& admin, const std::string& target,
                                     const std::string& name = "") {
  v1::StartRequest request;
  request.set_target(target);
  request.set_name(name);
  absl::StatusOr<v1::Process> started = admin.Start(request);
  if (!started.ok()) return started.status();
  return started->id();
}

// Starts /bin/true under kProbeName until the exit of one reaches `count` watchers: every
// watcher is subscribed then.
absl::Status AwaitSubscribed(Client& admin, Arrivals& arrivals, size_t count) {
  for (int attempt = 0; attempt < 120; ++attempt) {
    absl::StatusOr<uint64_t> id = StartWorker(admin, "/bin/true", kProbeName);
    if (!id.ok()) return id.status();
    if (arrivals.Await(*id, count, absl::Seconds(1))) return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the ", count, " watchers were not all subscribed after 2 minutes"));
}

struct Percentiles {
  double p50 = 0, p99 = 0, max = 0;
  size_t samples = 0;
};

Percentiles Summarize(std::vector<double> samples) {
  if (samples.empty()) return {};
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    return samples[std::min(samples.size() - 1, static_cast<size_t>(q * samples.size()))];
  };
  return {at(0.50), at(0.99), samples.back(), samples.size()};
}

struct Latency {
  int watchers = 0;
  Percentiles each;  // ms, over every (watcher, exit)
  Percentiles last;  // ms, per exit: until the last watcher had it
};

// Exit -> event latency with `count` unfiltered watchers over `options.n` workers.
absl::StatusOr<Latency> MeasureLatency(BenchDaemon& daemon, const Options& options, int count) {
  Arrivals arrivals;
  Watchers watchers(arrivals);
  if (absl::Status s = watchers.Open(daemon.client_options(), count, v1::WatchRequest());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = AwaitSubscribed(daemon.admin(), arrivals, count); !s.ok()) return s;
  std::vector<uint64_t> measured;
  for (int i = 0; i < kWarmup + options.n; ++i) {
    absl::StatusOr<uint64_t> id = StartWorker(daemon.admin(), options.probe);
    if (!id.ok()) return id.status();
    if (!arrivals.Await(*id, count, absl::Seconds(10))) {
      return absl::DeadlineExceededError(
          absl::StrCat("the exit of process ", *id, " did not reach all ", count,
                       " watchers within 10 s"));
    }
    if (i >= kWarmup) measured.push_back(*id);
  }
  if (absl::Status s = watchers.Close(); !s.ok()) return s;
  if (std::vector<uint64_t> failed = arrivals.Failed(); !failed.empty()) {
    return absl::InternalError(absl::StrCat("process ", failed.front(), " exited non-zero"));
  }

  std::vector<double> each, last;
  for (uint64_t id : measured) {
    v1::LogsRequest request;
    request.set_id(id);
    std::string out;
    if (absl::Status s =
            daemon.admin().Logs(request, [&](std::string_view chunk) { out.append(chunk); });
        !s.ok()) {
      return s;
    }
    int64_t exited_at = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(out), &exited_at)) {
      return absl::InternalError(
          absl::StrCat("process ", id, " did not write its exit time: \"", out, "\""));
    }
    std::vector<int64_t> arrived = arrivals.Of(id);
    for (int64_t at : arrived) each.push_back((at - exited_at) / 1e6);
    last.push_back((*std::max_element(arrived.begin(), arrived.end()) - exited_at) / 1e6);
  }
  return Latency{.watchers = count, .each = Summarize(each), .last = Summarize(last)};
}

struct IdleCost {
  int watchers = 0;
  DaemonStats before, open, closed;
};

// proctord's memory, threads and descriptors before, with, and after `count` idle watchers.
absl::StatusOr<IdleCost> MeasureIdle(BenchDaemon& daemon, int count) {
  v1::WatchRequest request;
  request.set_name(kProbeName);
  Arrivals arrivals;
  auto settled = [&]() {
    absl::SleepFor(absl::Seconds(1));
    return ReadStats(daemon.pid());
  };
  {
    // Whatever the first watches make once (gRPC's and the log's), made before "before".
    Watchers warmup(arrivals);
    if (absl::Status s = warmup.Open(daemon.client_options(), 10, request); !s.ok()) return s;
    if (absl::Status s = AwaitSubscribed(daemon.admin(), arrivals, 10); !s.ok()) return s;
    if (absl::Status s = warmup.Close(); !s.ok()) return s;
  }
  IdleCost cost{.watchers = count};
  absl::StatusOr<DaemonStats> before = settled();
  if (!before.ok()) return before.status();
  cost.before = *before;

  Watchers idle(arrivals);
  if (absl::Status s = idle.Open(daemon.client_options(), count, request); !s.ok()) return s;
  if (absl::Status s = AwaitSubscribed(daemon.admin(), arrivals, count); !s.ok()) return s;
  absl::StatusOr<DaemonStats> open = settled();
  if (!open.ok()) return open.status();
  cost.open = *open;

  if (absl::Status s = idle.Close(); !s.ok()) return s;
  absl::StatusOr<DaemonStats> closed = settled();
  if (!closed.ok()) return closed.status();
  cost.closed = *closed;
  return cost;
}

nlohmann::ordered_json ToJson(const Percentiles& p) {
  auto ms = [](double value) { return std::round(value * 1000) / 1000; };
  return {{"p50_ms", ms(p.p50)}, {"p99_ms", ms(p.p99)}, {"max_ms", ms(p.max)},
          {"samples", p.samples}};
}

nlohmann::ordered_json ToJson(const DaemonStats& s) {
  return {{"rss_kib", s.rss_kib}, {"threads", s.threads}, {"descriptors", s.descriptors}};
}

void Print(const Options& options, const std::vector<Latency>& latencies, const IdleCost& idle) {
  double per_watcher_kib =
      static_cast<double>(idle.open.rss_kib - idle.before.rss_kib) / idle.watchers;
  if (options.json) {
    nlohmann::ordered_json latency = nlohmann::ordered_json::array();
    for (const Latency& l : latencies) {
      latency.push_back(
          {{"watchers", l.watchers}, {"each", ToJson(l.each)}, {"last", ToJson(l.last)}});
    }
    nlohmann::ordered_json json = {
        {"n", options.n},
        {"exit_to_event", latency},
        {"idle",
         {{"watchers", idle.watchers},
          {"before", ToJson(idle.before)},
          {"open", ToJson(idle.open)},
          {"closed", ToJson(idle.closed)},
          {"rss_kib_per_watcher", std::round(per_watcher_kib * 10) / 10}}},
    };
    std::cout << json.dump() << "\n";
    return;
  }
  std::cout << absl::StrFormat("watch_bench: %d workers (%s) one after another\n\n", options.n,
                               options.probe)
            << absl::StrFormat("%-34s %9s %9s %9s %9s\n", "exit -> Watch event, ms", "p50",
                               "p99", "max", "samples");
  for (const Latency& l : latencies) {
    std::vector<std::pair<std::string, Percentiles>> rows = {
        {absl::StrCat(l.watchers, l.watchers == 1 ? " watcher" : " watchers, every arrival"),
         l.each}};
    // With one watcher, the last arrival of an exit is its only one.
    if (l.watchers > 1) rows.push_back({absl::StrCat(l.watchers, " watchers, last of each exit"), l.last});
    for (const auto& [label, p] : rows) {
      std::cout << absl::StrFormat("%-34s %9.3f %9.3f %9.3f %9d\n", label, p.p50, p.p99, p.max,
                                   p.samples);
    }
  }
  std::cout << absl::StrFormat("\n%-34s %9s %9s %9s\n",
                               absl::StrCat(idle.watchers, " idle watchers, proctord"), "before",
                               "open", "closed");
  for (const auto& [label, field] : {std::pair{"VmRSS, KiB", &DaemonStats::rss_kib},
                                     std::pair{"threads", &DaemonStats::threads},
                                     std::pair{"descriptors", &DaemonStats::descriptors}}) {
    std::cout << absl::StrFormat("%-34s %9d %9d %9d\n", label, idle.before.*field,
                                 idle.open.*field, idle.closed.*field);
  }
  std::cout << absl::StrFormat("%-34s %9.1f\n", "VmRSS per watcher, KiB", per_watcher_kib);
}

int Run(const Options& options, const std::string& dir) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "watch_bench: " << status.message() << std::endl;
    return 1;
  };
  absl::StatusOr<std::unique_ptr<BenchDaemon>> daemon = BenchDaemon::Start(options.proctord, options.proctord_args, dir);
  if (!daemon.ok()) return fail(daemon.status());
  absl::StatusOr<IdleCost> idle = MeasureIdle(**daemon, options.idle);
  if (!idle.ok()) return fail(idle.status());
  std::vector<Latency> latencies;
  for (int count : {1, options.watchers}) {
    absl::StatusOr<Latency> latency = MeasureLatency(**daemon, options, count);
    if (!latency.ok()) return fail(latency.status());
    latencies.push_back(*latency);
  }
  Print(options, latencies, *idle);
  return 0;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("watch_bench: exit -> Watch event latency, and the cost of idle watchers");
  app.add_option("--proctord", options.proctord, "the proctord to start");
  app.add_option("--probe", options.probe, "the worker that writes its exit time");
  app.add_option("--dir", options.dir, "where its socket and state directory go");
  app.add_option("-n", options.n, "workers per latency run")->check(CLI::PositiveNumber);
  app.add_option("--watchers", options.watchers, "watchers of the second latency run")
      ->check(CLI::PositiveNumber);
  app.add_option("--idle", options.idle, "idle watchers")->check(CLI::PositiveNumber);
  app.add_option("--proctord-arg", options.proctord_args, "an argument for proctord");
  app.add_flag("--json", options.json, "one JSON line instead of the tables");
  CLI11_PARSE(app, argc, argv);

  // One connection per watcher.
  bench::RaiseDescriptorLimit("watch_bench");
  return bench::RunInScratchDir(options.dir, "watch-bench",
                                [&](const std::string& dir) { return Run(options, dir); });
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
