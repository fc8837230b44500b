// proctor_bench: what a process costs through proctord compared with spawning it directly.
//
//   proctor_bench [--daemon PATH] [--base-dir DIR] [--daemon-flag FLAG]...
//                 [--address ADDR [--authkey-file PATH]] [-n N] [-c C] [--json]
//
// Without --address it starts a proctord of its own (by default the one built with it) on a
// new state directory and socket under DIR (default /var/tmp), and right after it answers
// times 2 × 1,000 Start+Join of /bin/true, each thousand apart: wall time and proctord's CPU
// per process, so that a slow-down after the start shows. With --address it uses a running
// proctord, whose pid it asks the Unix socket for (SO_PEERCRED); over TCP the daemon's CPU is
// not measured.
// Then, each against the same done bare in the same run:
// Sequential: N times Start+Join of /bin/true through a Client, against N times
// posix_spawn+waitpid of /bin/true in this program; reported as microseconds per process,
// with the CPU time proctord and its keeper spent per process (utime+stime from
// /proc/<pid>/stat before and after).
// Run: N times Client::Run of /bin/true (one call each), against the same bare figure.
// Concurrent: C threads (each with its own Client) sharing N processes, against C threads
// spawning N bare; reported as processes per second. A few warm-up rounds come first.
#include <sys/socket.h>
#include <sys/un.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "nlohmann/json.hpp"
#include "tests/bench/bench_daemon.h"
#include "tests/bench/bench_support.h"

extern char** environ;

namespace proctor {
namespace {

constexpr char kTarget[] = "/bin/true";
constexpr int kWarmup = 10;

constexpr int kFreshBatch = 1000;

struct BenchOptions {
  ClientOptions client;  // an address: that proctord; none: one of our own
  std::string proctord = PROCTORD_PATH;
  std::string base_dir = "/var/tmp";
  std::vector<std::string> proctord_args;
  int n = 500;
  int c = 2;
  bool json = false;
};

// The pid of what listens on `address` when it is a Unix socket (SO_PEERCRED); 0 otherwise
// (TCP, or a listener in another pid namespace).
pid_t ListenerPid(absl::string_view address) {
  if (!absl::ConsumePrefix(&address, "unix:")) return 0;
  sockaddr_un where{};
  where.sun_family = AF_UNIX;
  if (address.size() >= sizeof(where.sun_path)) return 0;
  address.copy(where.sun_path, address.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  ucred peer{};
  socklen_t size = sizeof(peer);
  pid_t pid = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&where), sizeof(where)) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) == 0) {
    pid = peer.pid;
  }
  close(fd);
  return pid;
}

// The CPU time proctord and its keeper (if it has one) have used so far.
class DaemonCpu {
 public:
  // `proctord` 0: nothing is measured.
  explicit DaemonCpu(pid_t proctord)
      : proctord_(proctord), keeper_(proctord > 1 ? FindKeeper(proctord, absl::Seconds(2)) : 0) {}
  bool measured() const { return proctord_ > 1; }
  // In microseconds; an error once proctord (or its keeper) is gone.
  absl::StatusOr<int64_t> Now() const {
    int64_t total = 0;
    for (pid_t pid : {proctord_, keeper_}) {
      if (pid <= 1) continue;
      std::optional<ProcStat> stat = ReadProcStat(pid);
      if (!stat.has_value()) {
        return absl::InternalError(absl::StrCat("cannot read /proc/", pid, "/stat"));
      }
      total += stat->cpu_us;
    }
    return total;
  }

 private:
  pid_t proctord_;
  pid_t keeper_;
};

absl::Status SpawnBare() {
  char* argv[] = {const_cast<char*>(kTarget), nullptr};
  pid_t pid = 0;
  if (int err = posix_spawn(&pid, kTarget, nullptr, nullptr, argv, environ); err != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn ", kTarget, ": ", std::strerror(err)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(kTarget, " failed (wait status ", status, ")"));
  }
  return absl::OkStatus();
}

// Ended records, released after each timed phase so the timing holds Start+Join only.
class Ended {
 public:
  void Add(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.push_back(id);
  }
  absl::Status ReleaseAll(Client& client) {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : ids_) {
      if (absl::Status s = client.Release(id); !s.ok()) return s;
    }
    ids_.clear();
    return absl::OkStatus();
  }

 private:
  std::mutex mu_;
  std::vector<uint64_t> ids_;
};

absl::Status SpawnProctor(Client& client, Ended& ended) {
  v1::StartRequest request;
  request.set_target(kTarget);
  absl::StatusOr<v1::Process> started = client.Start(request);
  if (!started.ok()) return started.status();
  absl::StatusOr<v1::Process> joined = client.Join(started->id());
  if (!joined.ok()) return joined.status();
  if (joined->state() != v1::STATE_EXITED || joined->exitcode() != 0) {
    return absl::InternalError(
        absl::StrCat(kTarget, " through proctord ended with exitcode ", joined->exitcode()));
  }
  ended.Add(started->id());
  return absl::OkStatus();
}

// The same in one call: Run, which passes on the (empty) output and ends with the exit record.
absl::Status RunProctor(Client& client, Ended& ended) {
  v1::StartRequest request;
  request.set_target(kTarget);
  absl::StatusOr<v1::Process> exited = client.Run(request, [](v1::Stream, std::string_view) {});
  if (!exited.ok()) return exited.status();
  if (exited->state() != v1::STATE_EXITED || exited->exitcode() != 0) {
    return absl::InternalError(
        absl::StrCat(kTarget, " through Run ended with exitcode ", exited->exitcode()));
  }
  ended.Add(exited->id());
  return absl::OkStatus();
}

using Op = std::function<absl::Status()>;

// Runs `op` `count` times in a row, after `warmup` untimed runs; returns the elapsed seconds.
absl::StatusOr<double> TimeSequential(int count, const Op& op, int warmup = kWarmup) {
  for (int i = 0; i < warmup; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  auto begin = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

// Runs ops[t] from thread t until `count` runs are done between them all; returns the elapsed
// seconds from the moment all threads are ready.
absl::StatusOr<double> TimeConcurrent(int count, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    for (int i = 0; i < kWarmup; ++i) {
      if (absl::Status s = op(); !s.ok()) return s;
    }
  }
  std::atomic<int> remaining{count};
  std::latch ready(static_cast<std::ptrdiff_t>(ops.size()) + 1);
  std::mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (const Op& op : ops) {
    threads.emplace_back([&] {
      ready.arrive_and_wait();
      while (remaining.fetch_sub(1) > 0) {
        if (absl::Status s = op(); !s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.ok()) first_error = s;
          remaining.store(0);
        }
      }
    });
  }
  ready.arrive_and_wait();
  auto begin = std::chrono::steady_clock::now();
  for (std::thread& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  if (!first_error.ok()) return first_error;
  return elapsed;
}

// Per process: wall time and the daemon's CPU time of one timed stretch.
struct Stretch {
  double us = 0;
  std::optional<double> daemon_cpu_us;
};

// Runs `op` `warmup` times, then `count` times measured.
absl::StatusOr<Stretch> MeasureStretch(int count, const Op& op, const DaemonCpu& cpu,
                                       int warmup) {
  for (int i = 0; i < warmup; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  absl::StatusOr<int64_t> cpu_before = cpu.measured() ? cpu.Now() : 0;
  if (!cpu_before.ok()) return cpu_before.status();
  absl::StatusOr<double> seconds = TimeSequential(count, op, /*warmup=*/0);
  if (!seconds.ok()) return seconds.status();
  Stretch stretch{.us = *seconds * 1e6 / count};
  if (cpu.measured()) {
    absl::StatusOr<int64_t> cpu_after = cpu.Now();
    if (!cpu_after.ok()) return cpu_after.status();
    stretch.daemon_cpu_us = static_cast<double>(*cpu_after - *cpu_before) / count;
  }
  return stretch;
}

// Measures against the proctord `options.client` reaches: `own`, just started by us, or (null)
// a running one.
int Bench(const BenchOptions& options, const ClientOptions& client_options, BenchDaemon* own) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "proctor_bench: " << status.message() << std::endl;
    return 1;
  };

  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < options.c; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options);
    if (!client.ok()) return fail(client.status());
    clients.push_back(*std::move(client));
  }
  Client& first = *clients[0];
  Ended ended;
  const DaemonCpu cpu(own != nullptr ? own->pid() : ListenerPid(first.address()));
  auto start_join = [&] { return SpawnProctor(first, ended); };

  // Right after the start, before anything else has warmed proctord up.
  std::optional<Stretch> fresh_first, fresh_next;
  if (own != nullptr) {
    for (std::optional<Stretch>* stretch : {&fresh_first, &fresh_next}) {
      absl::StatusOr<Stretch> measured =
          MeasureStretch(kFreshBatch, start_join, cpu, /*warmup=*/0);
      if (!measured.ok()) return fail(measured.status());
      *stretch = *measured;
    }
    if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  }

  absl::StatusOr<Stretch> seq = MeasureStretch(options.n, start_join, cpu, kWarmup);
  if (!seq.ok()) return fail(seq.status());
  if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  absl::StatusOr<Stretch> run = MeasureStretch(
      options.n, [&] { return RunProctor(first, ended); }, cpu, kWarmup);
  if (!run.ok()) return fail(run.status());
  if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  absl::StatusOr<double> seq_bare = TimeSequential(options.n, SpawnBare);
  if (!seq_bare.ok()) return fail(seq_bare.status());

  std::vector<Op> proctor_ops, bare_ops;
  for (auto& client : clients) {
    proctor_ops.push_back([c = client.get(), &ended] { return SpawnProctor(*c, ended); });
    bare_ops.push_back(SpawnBare);
  }
  absl::StatusOr<double> conc_proctor = TimeConcurrent(options.n, proctor_ops);
  if (!conc_proctor.ok()) return fail(conc_proctor.status());
  if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  absl::StatusOr<double> conc_bare = TimeConcurrent(options.n, bare_ops);
  if (!conc_bare.ok()) return fail(conc_bare.status());

  const double seq_proctor_us = seq->us;
  const double seq_bare_us = *seq_bare * 1e6 / options.n;
  const double conc_proctor_rate = options.n / *conc_proctor;
  const double conc_bare_rate = options.n / *conc_bare;
  const double seq_ratio = seq_proctor_us / seq_bare_us;
  const double run_us = run->us;
  const double run_ratio = run_us / seq_bare_us;
  const double conc_fraction = conc_proctor_rate / conc_bare_rate;

  if (options.json) {
    // To the decimals these figures have always had.
    auto rounded = [](double value, double scale) { return std::round(value * scale) / scale; };
    auto rounded_or_null = [&](std::optional<double> value) {
      return value.has_value() ? nlohmann::ordered_json(rounded(*value, 10))
                               : nlohmann::ordered_json(nullptr);
    };
    auto fresh = [&](const std::optional<Stretch>& stretch, bool daemon) {
      if (!stretch.has_value()) return nlohmann::ordered_json(nullptr);
      return rounded_or_null(daemon ? stretch->daemon_cpu_us : std::optional(stretch->us));
    };
    nlohmann::ordered_json json = {
        {"n", options.n},
        {"c", options.c},
        {"address", first.address()},
        {"sequential_proctor_us", rounded(seq_proctor_us, 10)},
        {"sequential_bare_us", rounded(seq_bare_us, 10)},
        {"sequential_ratio", rounded(seq_ratio, 1000)},
        {"concurrent_proctor_per_s", rounded(conc_proctor_rate, 10)},
        {"concurrent_bare_per_s", rounded(conc_bare_rate, 10)},
        {"concurrent_fraction", rounded(conc_fraction, 1000)},
        {"run_proctor_us", rounded(run_us, 10)},
        {"run_ratio", rounded(run_ratio, 1000)},
        {"run_daemon_cpu_us_per_process", rounded_or_null(run->daemon_cpu_us)},
        {"daemon_cpu_us_per_process", rounded_or_null(seq->daemon_cpu_us)},
        {"first_1000_us", fresh(fresh_first, false)},
        {"next_1000_us", fresh(fresh_next, false)},
        {"first_1000_daemon_cpu_us", fresh(fresh_first, true)},
        {"next_1000_daemon_cpu_us", fresh(fresh_next, true)},
    };
    std::cout << json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    auto cpu_text = [](const std::optional<double>& us) {
      return us.has_value() ? absl::StrFormat("%.1f", *us) : std::string("-");
    };
    std::cout << absl::StrFormat("proctor_bench: %s, n=%d, c=%d, target %s\n\n", first.address(),
                                 options.n, options.c, kTarget)
              << absl::StrFormat("%-28s %12s %12s %14s %16s\n", "", "proctor", "bare",
                                 "proctor/bare", "daemon CPU (us)")
              << absl::StrFormat("%-28s %12.1f %12.1f %14.2f %16s\n",
                                 "sequential (us per process)", seq_proctor_us, seq_bare_us,
                                 seq_ratio, cpu_text(seq->daemon_cpu_us))
              << absl::StrFormat("%-28s %12.1f %12.1f %14.2f %16s\n", "Run (us per process)",
                                 run_us, seq_bare_us, run_ratio, cpu_text(run->daemon_cpu_us))
              << absl::StrFormat("%-28s %12.1f %12.1f %14.2f\n",
                                 absl::StrCat("concurrent, c=", options.c, " (processes/s)"),
                                 conc_proctor_rate, conc_bare_rate, conc_fraction);
    if (fresh_first.has_value()) {
      for (const auto& [label, stretch] :
           {std::pair{"fresh daemon, 1st 1000 (us)", *fresh_first},
            std::pair{"fresh daemon, 2nd 1000 (us)", *fresh_next}}) {
        std::cout << absl::StrFormat("%-28s %12.1f %12s %14s %16s\n", label, stretch.us, "", "",
                                     cpu_text(stretch.daemon_cpu_us));
      }
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  CLI::App app("proctor_bench: what a process costs through proctord against spawning it bare");
  app.add_option("--address", options.client.address,
                 "a running proctord (default: start one of our own)");
  app.add_option("--authkey-file", options.client.authkey_file, "the key for --address");
  app.add_option("--daemon", options.proctord,
                 "the proctord to start (default: the one built here)");
  app.add_option("--base-dir", options.base_dir, "where our proctord's directory goes");
  app.add_option("--daemon-flag", options.proctord_args, "added to our proctord's command line")
      ->allow_extra_args(false);
  app.add_option("-n", options.n, "processes per measurement")->check(CLI::PositiveNumber);
  app.add_option("-c", options.c, "concurrent clients")->check(CLI::PositiveNumber);
  app.add_flag("--json", options.json, "one JSON line instead of the table");
  CLI11_PARSE(app, argc, argv);

  if (!options.client.address.empty()) return Bench(options, options.client, nullptr);
  return bench::RunInScratchDir(options.base_dir, "proctor-bench", [&](const std::string& dir) {
    absl::StatusOr<std::unique_ptr<BenchDaemon>> daemon =
        BenchDaemon::Start(options.proctord, options.proctord_args, dir, /*await_spares=*/false);
    if (!daemon.ok()) {
      std::cerr << "proctor_bench: " << daemon.status().message() << std::endl;
      return 1;
    }
    return Bench(options, (*daemon)->client_options(), daemon->get());
  });
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
