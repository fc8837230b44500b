// proctor_tree_bench: how fast proctord ends daemonic children when their parent dies, and how
// responsive it stays while a runaway worker spawns copies of itself, both under load.
//
//   proctor_tree_bench [--address ADDR] [--authkey-file PATH] [--live N] [--rounds R]
//                      [--children K] [--json]
//
// 1. Starts N long-lived processes (the load), then R times: a parent with K daemonic children
//    (this program in --signal-probe mode, which writes the time SIGTERM reached it), SIGKILLs
//    the parent, and measures parent death -> each child signalled. Prints p50/p99/max.
// 2. Starts a worker that keeps starting copies of itself (through the `proctor` CLI given by
//    --cli, by default the one built with this program) against proctord's limits, measures
//    Status latency (p50/p99/max) meanwhile, then terminates the top of that tree and checks
//    that nothing of it is left.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/authkey.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace proctor {
namespace {

struct Options {
  ClientOptions client;
  int live = 1000;
  int rounds = 20;
  int children = 10;
  std::string cli = PROCTOR_CLI_PATH;  // the proctor CLI, for the runaway worker
  bool json = false;
};

int64_t RealtimeNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// --signal-probe FILE: wait for SIGTERM, write the time it came, exit.
int SignalProbe(const char* file) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  std::ofstream(std::string(file) + ".ready") << "ready";
  int sig = 0;
  sigwait(&set, &sig);
  int64_t now = RealtimeNanos();
  // Written aside and renamed, so the reader never sees half a number; _exit skips the
  // destructors, so ten probes waking at once delay each other as little as possible.
  std::string tmp = std::string(file) + ".tmp";
  std::string text = absl::StrCat(now);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (fd >= 0) close(fd);
  _exit(ok && std::rename(tmp.c_str(), file) == 0 ? 0 : 1);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool WaitForFile(const std::string& path, absl::Duration limit) {
  absl::Time deadline = absl::Now() + limit;
  while (access(path.c_str(), F_OK) != 0) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// A new directory for probe files, in memory where possible: ten probes creating files on a
// slow disk at once would delay each other's timestamps, and that delay is not proctord's.
std::string ProbeDir() {
  char dir_template[] = "/dev/shm/proctor-tree-bench-XXXXXX";
  if (access("/dev/shm", W_OK) != 0) {
    std::snprintf(dir_template, sizeof(dir_template), "%s", "/tmp/proctor-tree-bench-XXXXXX");
  }
  return mkdtemp(dir_template);
}

struct Percentiles {
  double p50, p99, max;
  size_t n;
};

Percentiles Summarize(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    return samples[std::min(samples.size() - 1, static_cast<size_t>(q * samples.size()))];
  };
  return {at(0.50), at(0.99), samples.back(), samples.size()};
}

absl::StatusOr<v1::Process> Start(Client& client, std::vector<std::string> argv,
                                  bool daemon = false, const std::string& key = "") {
  v1::StartRequest request;
  request.set_target(argv[0]);
  for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
  request.set_daemon(daemon);
  request.set_authkey(key);
  return client.Start(request);
}

absl::Status KillTree(Client& client, uint64_t id) {
  v1::TerminateRequest request;
  request.set_id(id);
  request.set_signal(SIGKILL);
  return client.Terminate(request).status();
}

// Parent death -> daemonic child signalled, in milliseconds.
absl::StatusOr<Percentiles> MeasureDaemonicReaping(Client& admin, const Options& options,
                                                   const std::string& self) {
  std::vector<double> latencies;
  std::string dir = ProbeDir();
  for (int round = 0; round < options.rounds; ++round) {
    std::string key = RandomBytes(kAuthkeyBytes);
    absl::StatusOr<v1::Process> parent = Start(admin, {"sleep", "1000"}, false, key);
    if (!parent.ok()) return parent.status();
    ClientOptions as_parent = options.client;
    as_parent.credentials = Credentials{key, absl::StrCat(parent->id()), "bench parent key"};
    absl::StatusOr<std::unique_ptr<Client>> parent_client = Client::Connect(as_parent);
    if (!parent_client.ok()) return parent_client.status();
    std::vector<std::string> files;
    for (int k = 0; k < options.children; ++k) {
      std::string file = absl::StrCat(dir, "/", round, "-", k);
      absl::StatusOr<v1::Process> child =
          Start(**parent_client, {self, "--signal-probe", file}, /*daemon=*/true);
      if (!child.ok()) return child.status();
      files.push_back(file);
    }
    for (const std::string& file : files) {
      if (!WaitForFile(file + ".ready", absl::Seconds(10))) {
        return absl::DeadlineExceededError("a probe child did not start");
      }
    }
    int64_t killed_at = RealtimeNanos();
    kill(parent->pid(), SIGKILL);
    for (const std::string& file : files) {
      if (!WaitForFile(file, absl::Seconds(10))) {
        return absl::DeadlineExceededError("a daemonic child was not signalled within 10 s");
      }
      int64_t signalled_at = 0;
      if (!absl::SimpleAtoi(ReadAll(file), &signalled_at)) {
        return absl::InternalError(absl::StrCat("unreadable probe file ", file));
      }
      latencies.push_back(static_cast<double>(signalled_at - killed_at) / 1e6);
    }
  }
  return Summarize(latencies);
}

// The same measurement without proctord: K probes started here and signalled directly, so
// the figure above can be read against what waking K processes costs on this machine.
absl::StatusOr<Percentiles> MeasureBareSignal(const Options& options, const std::string& self) {
  std::vector<double> latencies;
  std::string dir = ProbeDir();
  for (int round = 0; round < options.rounds; ++round) {
    std::vector<std::string> files;
    std::vector<pid_t> pids;
    for (int k = 0; k < options.children; ++k) {
      std::string file = absl::StrCat(dir, "/", round, "-", k);
      std::string flag = "--signal-probe";
      std::string program = self;
      char* argv[] = {program.data(), flag.data(), file.data(), nullptr};
      pid_t pid;
      if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, environ) != 0) {
        return absl::InternalError("cannot spawn a probe");
      }
      pids.push_back(pid);
      files.push_back(file);
    }
    for (const std::string& file : files) {
      if (!WaitForFile(file + ".ready", absl::Seconds(10))) {
        return absl::DeadlineExceededError("a probe did not start");
      }
    }
    int64_t sent_at = RealtimeNanos();
    for (pid_t pid : pids) kill(pid, SIGTERM);
    for (pid_t pid : pids) waitpid(pid, nullptr, 0);
    for (const std::string& file : files) {
      int64_t signalled_at = 0;
      if (!absl::SimpleAtoi(ReadAll(file), &signalled_at)) {
        return absl::InternalError(absl::StrCat("unreadable probe file ", file));
      }
      latencies.push_back(static_cast<double>(signalled_at - sent_at) / 1e6);
    }
  }
  return Summarize(latencies);
}

struct RunawayResult {
  Percentiles status_ms;
  int peak_live = 0;
  bool cleaned_up = false;
};

absl::StatusOr<RunawayResult> MeasureRunaway(Client& admin, const Options& options,
                                             int baseline_live) {
  char dir_template[] = "/tmp/proctor-runaway-XXXXXX";
  std::string dir = mkdtemp(dir_template);
  std::string script = dir + "/runaway.sh";
  std::ofstream(script) << "while :; do " << options.cli << " start -- /bin/sh " << script
                        << " >/dev/null 2>&1 || sleep 0.05; done\n";
  absl::StatusOr<v1::Process> top = Start(admin, {"/bin/sh", script});
  if (!top.ok()) return top.status();
  RunawayResult result;
  std::vector<double> latencies;
  v1::StatusRequest running;
  running.set_state(v1::STATE_RUNNING);
  absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    auto begin = std::chrono::steady_clock::now();
    absl::StatusOr<v1::Process> status = admin.Status(top->id());
    latencies.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin)
            .count());
    if (!status.ok()) return status.status();
    if (latencies.size() % 50 == 0) {
      absl::StatusOr<std::vector<v1::Process>> live = admin.List(running);
      if (live.ok()) result.peak_live = std::max(result.peak_live, static_cast<int>(live->size()));
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  if (absl::Status s = KillTree(admin, top->id()); !s.ok()) return s;
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && !result.cleaned_up) {
    absl::StatusOr<std::vector<v1::Process>> live = admin.List(running);
    result.cleaned_up = live.ok() && static_cast<int>(live->size()) == baseline_live;
    absl::SleepFor(absl::Milliseconds(20));
  }
  result.status_ms = Summarize(latencies);
  return result;
}

int Main(int argc, char** argv) {
  if (argc == 3 && absl::string_view(argv[1]) == "--signal-probe") return SignalProbe(argv[2]);
  Options options;
  char self_path[4096];
  ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
  std::string self(self_path, n > 0 ? n : 0);
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto count = [&](int* out) {
      ++i;
      return value != nullptr && absl::SimpleAtoi(value, out) && *out > 0;
    };
    bool ok = true;
    if (arg == "--json") {
      options.json = true;
    } else if (arg == "--address" && value != nullptr) {
      options.client.address = argv[++i];
    } else if (arg == "--authkey-file" && value != nullptr) {
      options.client.authkey_file = argv[++i];
    } else if (arg == "--cli" && value != nullptr) {
      options.cli = argv[++i];
    } else if (arg == "--live") {
      ok = count(&options.live);
    } else if (arg == "--rounds") {
      ok = count(&options.rounds);
    } else if (arg == "--children") {
      ok = count(&options.children);
    } else {
      ok = false;
    }
    if (!ok) {
      std::cerr << "usage: proctor_tree_bench [--address ADDR] [--authkey-file PATH] "
                   "[--live N] [--rounds R] [--children K] [--cli PATH] [--json]\n";
      return 2;
    }
  }
  auto fail = [](const absl::Status& s) {
    std::cerr << "proctor_tree_bench: " << s.message() << std::endl;
    return 1;
  };
  absl::StatusOr<std::unique_ptr<Client>> admin = Client::Connect(options.client);
  if (!admin.ok()) return fail(admin.status());

  std::vector<uint64_t> load;
  for (int i = 0; i < options.live; ++i) {
    absl::StatusOr<v1::Process> p = Start(**admin, {"sleep", "1000"});
    if (!p.ok()) return fail(p.status());
    load.push_back(p->id());
  }
  absl::StatusOr<Percentiles> bare = MeasureBareSignal(options, self);
  if (!bare.ok()) return fail(bare.status());
  absl::StatusOr<Percentiles> reaping = MeasureDaemonicReaping(**admin, options, self);
  absl::StatusOr<RunawayResult> runaway =
      reaping.ok() ? MeasureRunaway(**admin, options, options.live)
                   : absl::StatusOr<RunawayResult>(reaping.status());
  for (uint64_t id : load) KillTree(**admin, id).IgnoreError();
  if (!reaping.ok()) return fail(reaping.status());
  if (!runaway.ok()) return fail(runaway.status());

  if (options.json) {
    // In milliseconds, to the three decimals these figures have always had.
    auto ms = [](const Percentiles& p) {
      auto rounded = [](double value) { return std::round(value * 1000) / 1000; };
      return nlohmann::ordered_json{
          {"p50", rounded(p.p50)}, {"p99", rounded(p.p99)}, {"max", rounded(p.max)}};
    };
    nlohmann::ordered_json daemonic = ms(*reaping);
    daemonic["n"] = reaping->n;
    nlohmann::ordered_json status = ms(runaway->status_ms);
    status["n"] = runaway->status_ms.n;
    nlohmann::ordered_json json = {
        {"live", options.live},
        {"rounds", options.rounds},
        {"children", options.children},
        {"bare_signal_ms", ms(*bare)},
        {"daemonic_signal_ms", daemonic},
        {"runaway",
         {{"status_ms", status},
          {"peak_live", runaway->peak_live},
          {"cleaned_up", runaway->cleaned_up}}},
    };
    std::cout << json.dump() << "\n";
  } else {
    std::cout << absl::StrFormat(
        "proctor_tree_bench: %d live processes\n"
        "baseline, %d probes signalled directly: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n"
        "parent SIGKILLed -> daemonic child signalled (%d samples): p50 %.2f ms, p99 %.2f ms, "
        "max %.2f ms\n"
        "Status during a runaway spawner (%d calls): p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
        "peak %d live; cleaned up after terminate: %s\n",
        options.live, options.children, bare->p50, bare->p99, bare->max, reaping->n,
        reaping->p50, reaping->p99, reaping->max, runaway->status_ms.n,
        runaway->status_ms.p50, runaway->status_ms.p99, runaway->status_ms.max,
        runaway->peak_live, runaway->cleaned_up ? "yes" : "NO");
  }
  return 0;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
