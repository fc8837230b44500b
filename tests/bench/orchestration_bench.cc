// orchestration_bench: how fast proctord brings a crashed process back, and what a worker
// started with `notify` costs proctord.
//
//   orchestration_bench [--proctord PATH] [--dir DIR] [-n N] [--workers W] [--json]
//
// Starts its own proctord (by default the one built with this program) under DIR, then:
// 1. Crash to running: a probe (this program, run as `orchestration_bench --probe FILE`)
//    appends the monotonic time to FILE and exits 1. Started once through proctord with
//    restart mode ALWAYS, no backoff (0..0) and max_restarts N, it runs N+1 times; the gaps
//    between consecutive times are what a crash costs until the next run is running: exit,
//    the exit recorded, the next run launched and exec'd. The baseline is the same probe run
//    N+1 times by this program with posix_spawn+waitpid. p50 and p99 of each, and the ratio.
// 2. Notify: W workers (/bin/sleep) started without notify, then W with, and proctord's
//    descriptors and VmRSS (/proc/<pid>) before and after each batch: descriptors and KiB per
//    worker, and what notify adds.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "nlohmann/json.hpp"
#include "tests/bench/bench_daemon.h"

extern char** environ;

namespace proctor {
namespace {

struct Options {
  std::string proctord = PROCTORD_PATH;
  std::string dir = std::filesystem::temp_directory_path();
  int n = 500;
  int workers = 1000;
  bool json = false;
};

int64_t MonotonicNanos() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// The probe: one line with the time, appended, then a failure.
int Probe(const std::string& file) {
  int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return 2;
  std::string line = absl::StrCat(MonotonicNanos(), "\n");
  bool written = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  return written ? 1 : 2;
}

std::vector<int64_t> ReadTimes(const std::string& file) {
  std::ifstream in(file);
  std::vector<int64_t> times;
  for (std::string line; std::getline(in, line);) {
    int64_t t = 0;
    if (absl::SimpleAtoi(line, &t)) times.push_back(t);
  }
  return times;
}

struct Gaps {
  double p50_us = 0;
  double p99_us = 0;
  size_t samples = 0;
};

Gaps GapsOf(const std::vector<int64_t>& times) {
  std::vector<int64_t> gaps;
  for (size_t i = 1; i < times.size(); ++i) gaps.push_back(times[i] - times[i - 1]);
  Gaps out;
  out.samples = gaps.size();
  if (gaps.empty()) return out;
  std::sort(gaps.begin(), gaps.end());
  out.p50_us = gaps[gaps.size() / 2] / 1e3;
  out.p99_us = gaps[std::min(gaps.size() - 1, gaps.size() * 99 / 100)] / 1e3;
  return out;
}

std::string SelfPath() {
  std::error_code error;
  return std::filesystem::read_symlink("/proc/self/exe", error).string();
}

absl::StatusOr<Gaps> BareRestarts(const Options& options, const std::string& file) {
  std::string self = SelfPath();
  std::vector<char*> argv = {self.data(), const_cast<char*>("--probe"),
                             const_cast<char*>(file.c_str()), nullptr};
  for (int i = 0; i <= options.n; ++i) {
    pid_t pid = 0;
    if (int err = posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ);
        err != 0) {
      return absl::InternalError(absl::StrCat("posix_spawn: ", strerror(err)));
    }
    int status = 0;
    waitpid(pid, &status, 0);
  }
  return GapsOf(ReadTimes(file));
}

absl::StatusOr<Gaps> ProctordRestarts(const Options& options, Client& client,
                                      const std::string& file) {
  v1::StartRequest request;
  request.set_target(SelfPath());
  request.add_args("--probe");
  request.add_args(file);
  v1::RestartPolicy* policy = request.mutable_restart();
  policy->set_mode(v1::RestartPolicy::ALWAYS);
  policy->set_max_restarts(static_cast<uint32_t>(options.n));
  policy->mutable_initial_backoff()->set_seconds(0);
  policy->mutable_max_backoff()->set_seconds(0);
  policy->mutable_reset_after()->set_seconds(3600);
  absl::StatusOr<v1::Process> started = client.Start(request);
  if (!started.ok()) return started.status();
  absl::StatusOr<v1::Process> joined = client.Join(started->id());
  if (!joined.ok()) return joined.status();
  if (joined->restarts() != static_cast<uint32_t>(options.n)) {
    return absl::InternalError(absl::StrCat("ran ", joined->restarts() + 1, " times, not ",
                                            options.n + 1));
  }
  return GapsOf(ReadTimes(file));
}

struct BatchCost {
  double descriptors_per_worker = 0;
  double kib_per_worker = 0;
};

absl::StatusOr<BatchCost> WorkerBatch(const Options& options, BenchDaemon& daemon, bool notify) {
  absl::StatusOr<DaemonStats> before = ReadStats(daemon.pid());
  if (!before.ok()) return before.status();
  std::vector<uint64_t> ids;
  for (int i = 0; i < options.workers; ++i) {
    v1::StartRequest request;
    request.set_target("/bin/sleep");
    request.add_args("1000");
    request.set_notify(notify);
    absl::StatusOr<v1::Process> started = daemon.admin().Start(request);
    if (!started.ok()) return started.status();
    ids.push_back(started->id());
  }
  absl::SleepFor(absl::Milliseconds(500));
  absl::StatusOr<DaemonStats> after = ReadStats(daemon.pid());
  if (!after.ok()) return after.status();
  for (uint64_t id : ids) {
    v1::TerminateRequest terminate;
    terminate.set_id(id);
    if (absl::StatusOr<v1::Process> done = daemon.admin().Terminate(terminate); !done.ok()) {
      return done.status();
    }
    if (absl::Status released = daemon.admin().Release(id); !released.ok()) return released;
  }
  return BatchCost{
      .descriptors_per_worker =
          static_cast<double>(after->descriptors - before->descriptors) / options.workers,
      .kib_per_worker = static_cast<double>(after->rss_kib - before->rss_kib) / options.workers};
}

int Run(const Options& options) {
  std::string dir = absl::StrCat(options.dir, "/orchestration-bench-", getpid());
  std::filesystem::create_directories(dir);
  absl::StatusOr<std::unique_ptr<BenchDaemon>> daemon =
      BenchDaemon::Start(options.proctord, {"--max-processes", "100000"}, dir);
  if (!daemon.ok()) {
    std::cerr << "orchestration_bench: " << daemon.status() << std::endl;
    return 1;
  }
  absl::StatusOr<Gaps> bare = BareRestarts(options, dir + "/bare.times");
  absl::StatusOr<Gaps> proctord = ProctordRestarts(options, (*daemon)->admin(), dir + "/proctord.times");
  absl::StatusOr<BatchCost> plain = WorkerBatch(options, **daemon, false);
  absl::StatusOr<BatchCost> notify = WorkerBatch(options, **daemon, true);
  for (const absl::Status& s : {bare.status(), proctord.status(), plain.status(), notify.status()}) {
    if (!s.ok()) {
      std::cerr << "orchestration_bench: " << s << std::endl;
      return 1;
    }
  }
  std::filesystem::remove_all(dir);
  if (options.json) {
    nlohmann::ordered_json json = {
        {"restarts", options.n},
        {"crash_to_running_p50_us", proctord->p50_us},
        {"crash_to_running_p99_us", proctord->p99_us},
        {"bare_respawn_p50_us", bare->p50_us},
        {"bare_respawn_p99_us", bare->p99_us},
        {"restart_ratio_p50", proctord->p50_us / bare->p50_us},
        {"workers", options.workers},
        {"descriptors_per_worker", plain->descriptors_per_worker},
        {"descriptors_per_notify_worker", notify->descriptors_per_worker},
        {"kib_per_worker", plain->kib_per_worker},
        {"kib_per_notify_worker", notify->kib_per_worker},
    };
    std::cout << json.dump(2) << std::endl;
    return 0;
  }
  std::cout << absl::StrFormat(
      "crash to running again, %d restarts (gap between runs, us)\n"
      "  proctord restart policy  p50 %8.0f  p99 %8.0f\n"
      "  bare posix_spawn+wait    p50 %8.0f  p99 %8.0f\n"
      "  ratio (p50)              %.2f\n"
      "%d live workers, what each costs proctord\n"
      "  plain    %.2f descriptors  %.1f KiB\n"
      "  notify   %.2f descriptors  %.1f KiB\n",
      options.n, proctord->p50_us, proctord->p99_us, bare->p50_us, bare->p99_us,
      proctord->p50_us / bare->p50_us, options.workers, plain->descriptors_per_worker,
      plain->kib_per_worker, notify->descriptors_per_worker, notify->kib_per_worker);
  return 0;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--probe") return proctor::Probe(argv[2]);
  proctor::Options options;
  CLI::App app("orchestration_bench: crash-to-running time of restart policies, and the cost "
               "of notify workers");
  app.add_option("--proctord", options.proctord, "the proctord to start");
  app.add_option("--dir", options.dir, "where its state and socket go");
  app.add_option("-n", options.n, "restarts to time");
  app.add_option("--workers", options.workers, "live workers per batch");
  app.add_flag("--json", options.json, "print JSON");
  CLI11_PARSE(app, argc, argv);
  return proctor::Run(options);
}
