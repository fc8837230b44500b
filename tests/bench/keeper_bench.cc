// keeper_bench: what the keeper costs in memory per live worker, and how long a proctord
// killed with -9 takes to come back to its running workers.
//
//   keeper_bench [--daemon PATH] [--base-dir DIR] [-n N] [--runs R] [--daemon-flag FLAG]...
//                [--no-keeper] [--json]
//
// Each run starts its own proctord (by default the one built with this program) on a new
// state directory and socket under DIR (default /var/tmp), then:
// 1. reads VmRSS from /proc/<pid>/status of proctord and of its keeper, and the keeper's open
//    descriptors, with no worker, then again with N live workers (/bin/sleep 1000, started
//    through the client one after the other): KiB per worker for each;
// 2. kills proctord with SIGKILL, starts it again on the same state directory and address,
//    and times from just before its posix_spawn until (i) it answers a List and (ii) the
//    listing shows all N running, polling every millisecond with a fresh client until the
//    first answer;
// 3. sends SIGTERM (proctord runs with --shutdown-grace 1) and checks that proctord, the
//    keeper and every worker are gone, and that no worker was left unreaped (this program is
//    a subreaper: orphans come to it).
// --no-keeper is for a proctord that spawns its workers itself: step 1 for proctord alone, no
// step 2.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "nlohmann/json.hpp"
#include "tests/bench/bench_daemon.h"

extern char** environ;

namespace proctor {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string daemon = PROCTORD_PATH;
  std::string base_dir = "/var/tmp";
  int n = 1000;
  int runs = 3;
  std::vector<std::string> daemon_flags;  // added to proctord's command line
  bool keeper = true;
  bool json = false;
};

struct RunResult {
  int64_t proctord_rss_idle_kib = 0;
  int64_t proctord_rss_loaded_kib = 0;
  int64_t keeper_rss_idle_kib = 0;
  int64_t keeper_rss_loaded_kib = 0;
  int keeper_fds_idle = 0;
  int keeper_fds_loaded = 0;
  double first_answer_ms = 0;  // the first proctord, on a new state directory
  double start_all_ms = 0;     // the N Starts
  double reattach_answer_ms = 0;
  double reattach_all_running_ms = 0;
  int64_t proctord_rss_reattached_kib = 0;
  bool keeper_kept = false;  // the restarted proctord found the same keeper
  double shutdown_ms = 0;
  int proctord_exit = -1;
  bool keeper_gone = false;
  int workers_left = 0;      // still running /bin/sleep
  int workers_orphaned = 0;  // left to this program (a subreaper) instead of reaped
};

double MsSince(Clock::time_point begin) {
  return std::chrono::duration<double, std::milli>(Clock::now() - begin).count();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool IsAlive(pid_t pid) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat.has_value() && stat->state != 'Z' && stat->state != 'X';
}

// VmRSS in KiB, or -1.
int64_t RssKib(pid_t pid) {
  std::istringstream status(ReadAll(absl::StrCat("/proc/", pid, "/status")));
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, "VmRSS:")) continue;
    int64_t kib = -1;
    std::istringstream(line.substr(6)) >> kib;
    return kib;
  }
  return -1;
}

int CountFds(pid_t pid) {
  std::error_code error;
  int count = 0;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++count;
  }
  return error ? -1 : count;
}

bool WaitUntil(const std::function<bool()>& condition, absl::Duration limit) {
  absl::Time deadline = absl::Now() + limit;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// One proctord on a fixed state directory and socket; started again after a kill.
class Daemon {
 public:
  Daemon(const Options& options, std::string dir)
      : options_(options),
        dir_(std::move(dir)),
        address_("unix:" + dir_ + "/proctord.sock"),
        state_dir_(dir_ + "/state") {}

  const std::string& address() const { return address_; }
  std::string authkey() const { return state_dir_ + "/authkey"; }
  pid_t pid() const { return pid_; }
  std::string log_path(int incarnation) const {
    return absl::StrCat(dir_, "/proctord.", incarnation, ".log");
  }

  // Starts proctord (its stderr to a log of its own), returning just before the posix_spawn.
  absl::StatusOr<Clock::time_point> Spawn() {
    ++incarnation_;
    std::vector<std::string> args = {options_.daemon,     "--listen",
                                     address_,            "--state-dir",
                                     state_dir_,          "--max-processes",
                                     absl::StrCat(options_.n + 100), "--shutdown-grace",
                                     "1"};
    args.insert(args.end(), options_.daemon_flags.begin(), options_.daemon_flags.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    std::string log = log_path(incarnation_);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    Clock::time_point begin = Clock::now();
    int err = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("posix_spawn ", options_.daemon, ": ", std::strerror(err)));
    }
    return begin;
  }

  // Polls with a fresh client every millisecond until a List is answered; returns the client.
  absl::StatusOr<std::unique_ptr<Client>> WaitAnswering(absl::Duration limit) {
    absl::Time deadline = absl::Now() + limit;
    absl::Status last = absl::DeadlineExceededError("no attempt");
    while (absl::Now() < deadline) {
      int raw = 0;
      if (waitpid(pid_, &raw, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::InternalError(absl::StrCat("proctord exited (wait status ", raw,
                                                "); its log:\n", ReadAll(log_path(incarnation_))));
      }
      if (access(authkey().c_str(), F_OK) == 0) {
        absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(ClientOptions{
            .address = address_, .authkey_file = authkey(), .call_timeout = absl::Seconds(5)});
        if (!client.ok()) return client.status();
        absl::StatusOr<std::vector<v1::Process>> listed = (*client)->List(v1::StatusRequest());
        if (listed.ok()) return client;
        last = listed.status();
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "proctord did not answer within ", absl::FormatDuration(limit), ": ", last.message()));
  }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // SIGTERM, then waits up to `limit`; returns the wait status, or nothing (then SIGKILLed).
  std::optional<int> Stop(absl::Duration limit) {
    if (pid_ <= 0) return std::nullopt;
    kill(pid_, SIGTERM);
    int raw = 0;
    bool ended = WaitUntil([&] { return waitpid(pid_, &raw, WNOHANG) == pid_; }, limit);
    if (!ended) {
      Kill();
      return std::nullopt;
    }
    pid_ = -1;
    return raw;
  }

 private:
  const Options& options_;
  const std::string dir_;
  const std::string address_;
  const std::string state_dir_;
  pid_t pid_ = -1;
  int incarnation_ = 0;
};

// How many of `pids` still run /bin/sleep (alive, not zombies).
int CountLiveSleepers(const std::vector<pid_t>& pids) {
  int live = 0;
  for (pid_t pid : pids) {
    std::optional<ProcStat> stat = ReadProcStat(pid);
    if (stat && stat->comm == "sleep" && stat->state != 'Z' && stat->state != 'X') ++live;
  }
  return live;
}

absl::StatusOr<int> CountRunning(Client& client) {
  v1::StatusRequest filter;
  filter.set_state(v1::STATE_RUNNING);
  absl::StatusOr<std::vector<v1::Process>> listed = client.List(filter);
  if (!listed.ok()) return listed.status();
  return static_cast<int>(listed->size());
}

// kill -9, and back on the same state directory and address: the times to an answer and to
// all workers listed as running.
absl::Status KillAndReattach(const Options& options, Daemon& daemon, pid_t keeper,
                             RunResult& result) {
  daemon.Kill();
  absl::StatusOr<Clock::time_point> spawned = daemon.Spawn();
  if (!spawned.ok()) return spawned.status();
  absl::StatusOr<std::unique_ptr<Client>> client = daemon.WaitAnswering(absl::Seconds(60));
  if (!client.ok()) return client.status();
  result.reattach_answer_ms = MsSince(*spawned);
  absl::Status last;
  bool all_running = WaitUntil(
      [&] {
        absl::StatusOr<int> running = CountRunning(**client);
        if (!running.ok()) last = running.status();
        return running.ok() && *running == options.n;
      },
      absl::Seconds(60));
  if (!all_running) {
    return absl::InternalError(absl::StrCat("the restarted proctord did not list all ", options.n,
                                            " workers as running within 60 s: ",
                                            last.message()));
  }
  result.reattach_all_running_ms = MsSince(*spawned);
  result.proctord_rss_reattached_kib = RssKib(daemon.pid());
  result.keeper_kept = IsAlive(keeper) && FindKeeper(daemon.pid(), absl::ZeroDuration()) == 0 &&
                       ReadAll(daemon.log_path(2)).find("started the keeper") == std::string::npos;
  return absl::OkStatus();
}

absl::Status RunOnce(const Options& options, const std::string& dir, RunResult& result) {
  Daemon daemon(options, dir);
  std::vector<pid_t> workers;
  pid_t keeper = 0;
  // Whatever happens, nothing of this run is left behind.
  auto cleanup = [&] {
    if (daemon.pid() > 0) daemon.Stop(absl::Seconds(15));
    if (keeper > 0 && IsAlive(keeper)) kill(keeper, SIGTERM);
    for (pid_t pid : workers) {
      std::optional<ProcStat> stat = ReadProcStat(pid);
      if (stat && stat->comm == "sleep") kill(pid, SIGKILL);
    }
  };
  auto fail = [&](absl::Status status) {
    cleanup();
    return status;
  };

  absl::StatusOr<Clock::time_point> spawned = daemon.Spawn();
  if (!spawned.ok()) return spawned.status();
  absl::StatusOr<std::unique_ptr<Client>> client = daemon.WaitAnswering(absl::Seconds(30));
  if (!client.ok()) return fail(client.status());
  result.first_answer_ms = MsSince(*spawned);
  if (options.keeper) {
    keeper = FindKeeper(daemon.pid(), absl::Seconds(5));
    if (keeper == 0) return fail(absl::InternalError("no proctor-keeper below proctord"));
  }

  // Idle: settled for a moment after start-up.
  absl::SleepFor(absl::Milliseconds(200));
  result.proctord_rss_idle_kib = RssKib(daemon.pid());
  result.keeper_rss_idle_kib = options.keeper ? RssKib(keeper) : -1;
  result.keeper_fds_idle = options.keeper ? CountFds(keeper) : -1;

  Clock::time_point begin = Clock::now();
  for (int i = 0; i < options.n; ++i) {
    v1::StartRequest request;
    request.set_target("/bin/sleep");
    request.add_args("1000");
    absl::StatusOr<v1::Process> started = (*client)->Start(request);
    if (!started.ok()) {
      return fail(absl::Status(started.status().code(),
                               absl::StrCat("Start of worker ", i + 1, " of ", options.n, ": ",
                                            started.status().message())));
    }
    workers.push_back(started->pid());
  }
  result.start_all_ms = MsSince(begin);
  if (!WaitUntil([&] { return CountLiveSleepers(workers) == options.n; }, absl::Seconds(10))) {
    return fail(absl::InternalError(absl::StrCat("only ", CountLiveSleepers(workers), " of ",
                                                 options.n, " workers run /bin/sleep")));
  }
  absl::SleepFor(absl::Milliseconds(200));
  result.proctord_rss_loaded_kib = RssKib(daemon.pid());
  result.keeper_rss_loaded_kib = options.keeper ? RssKib(keeper) : -1;
  result.keeper_fds_loaded = options.keeper ? CountFds(keeper) : -1;
  client->reset();
  if (options.keeper) {
    if (absl::Status s = KillAndReattach(options, daemon, keeper, result); !s.ok()) return fail(s);
  }

  // The end: SIGTERM, a grace of one second, then nothing may be left.
  begin = Clock::now();
  std::optional<int> exited = daemon.Stop(absl::Seconds(30));
  result.shutdown_ms = MsSince(begin);
  result.proctord_exit = exited.has_value() && WIFEXITED(*exited) ? WEXITSTATUS(*exited) : -1;
  // After the kill, the keeper is this program's child (a subreaper), reaped here.
  auto keeper_ended = [&] {
    return waitpid(keeper, nullptr, WNOHANG) == keeper || !IsAlive(keeper);
  };
  result.keeper_gone = keeper > 0 && WaitUntil(keeper_ended, absl::Seconds(10));
  WaitUntil([&] { return CountLiveSleepers(workers) == 0; }, absl::Seconds(5));
  result.workers_left = CountLiveSleepers(workers);
  // Workers the keeper left behind came here when it ended.
  for (pid_t pid; (pid = waitpid(-1, nullptr, WNOHANG)) > 0;) {
    if (std::find(workers.begin(), workers.end(), pid) != workers.end()) {
      ++result.workers_orphaned;
    }
  }
  cleanup();
  return absl::OkStatus();
}

double PerWorker(int64_t idle, int64_t loaded, int n) {
  return static_cast<double>(loaded - idle) / n;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("keeper_bench: the keeper's memory per live worker, and reattaching after kill -9");
  app.add_option("--daemon", options.daemon, "the proctord to run (default: the one built here)");
  app.add_option("--base-dir", options.base_dir, "where each run's directory goes");
  app.add_option("-n", options.n, "live workers")->check(CLI::PositiveNumber);
  app.add_option("--runs", options.runs, "runs, each on a new proctord")
      ->check(CLI::PositiveNumber);
  app.add_option("--daemon-flag", options.daemon_flags, "added to proctord's command line")
      ->allow_extra_args(false);
  bool no_keeper = false;
  app.add_flag("--no-keeper", no_keeper,
               "a proctord that spawns its workers itself: memory and Starts only");
  app.add_flag("--json", options.json, "one JSON line instead of the table");
  CLI11_PARSE(app, argc, argv);
  options.keeper = !no_keeper;
  // Orphans come here, not to init: the keeper once proctord is killed, and any worker the
  // keeper would leave unreaped.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    std::cerr << "keeper_bench: prctl(PR_SET_CHILD_SUBREAPER): " << std::strerror(errno) << "\n";
    return 1;
  }

  std::vector<RunResult> results;
  for (int run = 0; run < options.runs; ++run) {
    std::string pattern = options.base_dir + "/proctor-keeper-bench-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::cerr << "keeper_bench: mkdtemp " << pattern << ": " << std::strerror(errno) << "\n";
      return 1;
    }
    RunResult result;
    absl::Status status = RunOnce(options, pattern, result);
    std::error_code ignored;
    if (status.ok()) std::filesystem::remove_all(pattern, ignored);
    if (!status.ok()) {
      std::cerr << "keeper_bench: run " << run + 1 << ": " << status.message()
                << "\n(its directory is kept: " << pattern << ")\n";
      return 1;
    }
    results.push_back(result);
  }

  auto rounded = [](double value, double scale) { return std::round(value * scale) / scale; };
  bool clean = true;
  for (const RunResult& r : results) {
    clean = clean && r.workers_left == 0 && r.workers_orphaned == 0 &&
            (r.keeper_gone || !options.keeper) && r.proctord_exit == 0;
  }
  if (options.json) {
    nlohmann::ordered_json runs = nlohmann::ordered_json::array();
    for (const RunResult& r : results) {
      runs.push_back({
          {"proctord_rss_idle_kib", r.proctord_rss_idle_kib},
          {"proctord_rss_loaded_kib", r.proctord_rss_loaded_kib},
          {"proctord_kib_per_worker",
           rounded(PerWorker(r.proctord_rss_idle_kib, r.proctord_rss_loaded_kib, options.n),
                   100)},
          {"keeper_rss_idle_kib", r.keeper_rss_idle_kib},
          {"keeper_rss_loaded_kib", r.keeper_rss_loaded_kib},
          {"keeper_kib_per_worker",
           rounded(PerWorker(r.keeper_rss_idle_kib, r.keeper_rss_loaded_kib, options.n), 100)},
          {"keeper_fds_idle", r.keeper_fds_idle},
          {"keeper_fds_loaded", r.keeper_fds_loaded},
          {"first_answer_ms", rounded(r.first_answer_ms, 10)},
          {"start_all_ms", rounded(r.start_all_ms, 10)},
          {"reattach_answer_ms", rounded(r.reattach_answer_ms, 10)},
          {"reattach_all_running_ms", rounded(r.reattach_all_running_ms, 10)},
          {"proctord_rss_reattached_kib", r.proctord_rss_reattached_kib},
          {"keeper_kept", r.keeper_kept},
          {"shutdown_ms", rounded(r.shutdown_ms, 10)},
          {"proctord_exit", r.proctord_exit},
          {"keeper_gone", r.keeper_gone},
          {"workers_left", r.workers_left},
          {"workers_orphaned", r.workers_orphaned},
      });
    }
    nlohmann::ordered_json json = {
        {"workers", options.n},
        {"daemon", options.daemon},
        {"daemon_flags", options.daemon_flags},
        {"runs", runs},
        {"clean", clean},
    };
    std::cout << json.dump() << "\n";
    return clean ? 0 : 1;
  }

  std::cout << absl::StrFormat(
      "keeper_bench: %s%s%s, %d live workers (/bin/sleep 1000), %d runs\n\n", options.daemon,
      options.daemon_flags.empty() ? "" : " ", absl::StrJoin(options.daemon_flags, " "),
      options.n, options.runs);
  std::string header = absl::StrFormat("%-44s", "");
  for (size_t i = 0; i < results.size(); ++i) {
    absl::StrAppend(&header, absl::StrFormat(" %10s", absl::StrCat("run ", i + 1)));
  }
  std::cout << header << "\n";
  auto row = [&](absl::string_view name, const std::function<std::string(const RunResult&)>& f) {
    std::string line = absl::StrFormat("%-44s", name);
    for (const RunResult& r : results) absl::StrAppend(&line, absl::StrFormat(" %10s", f(r)));
    std::cout << line << "\n";
  };
  // Rows about the keeper and the reattach, for a proctord that has a keeper.
  auto keeper_row = [&](absl::string_view name,
                        const std::function<std::string(const RunResult&)>& f) {
    if (options.keeper) row(name, f);
  };
  auto kib = [](int64_t v) { return absl::StrCat(v); };
  auto fixed = [](double v, int decimals) { return absl::StrFormat("%.*f", decimals, v); };
  auto yes = [](bool v) { return std::string(v ? "yes" : "NO"); };
  const int n = options.n;
  using R = const RunResult&;
  row("proctord VmRSS, no worker (KiB)", [&](R r) { return kib(r.proctord_rss_idle_kib); });
  row(absl::StrCat("proctord VmRSS, ", n, " workers (KiB)"),
      [&](R r) { return kib(r.proctord_rss_loaded_kib); });
  row("proctord KiB per worker", [&](R r) {
    return fixed(PerWorker(r.proctord_rss_idle_kib, r.proctord_rss_loaded_kib, n), 2);
  });
  keeper_row("keeper VmRSS, no worker (KiB)", [&](R r) { return kib(r.keeper_rss_idle_kib); });
  keeper_row(absl::StrCat("keeper VmRSS, ", n, " workers (KiB)"),
             [&](R r) { return kib(r.keeper_rss_loaded_kib); });
  keeper_row("keeper KiB per worker", [&](R r) {
    return fixed(PerWorker(r.keeper_rss_idle_kib, r.keeper_rss_loaded_kib, n), 2);
  });
  keeper_row("keeper descriptors, no worker / loaded",
             [&](R r) { return absl::StrCat(r.keeper_fds_idle, "/", r.keeper_fds_loaded); });
  row("first start -> answers (ms)", [&](R r) { return fixed(r.first_answer_ms, 1); });
  row(absl::StrCat(n, " Starts (ms)"), [&](R r) { return fixed(r.start_all_ms, 1); });
  keeper_row("after kill -9: exec -> answers List (ms)",
             [&](R r) { return fixed(r.reattach_answer_ms, 1); });
  keeper_row(absl::StrCat("after kill -9: exec -> all ", n, " running (ms)"),
             [&](R r) { return fixed(r.reattach_all_running_ms, 1); });
  keeper_row("proctord VmRSS after reattach (KiB)",
             [&](R r) { return kib(r.proctord_rss_reattached_kib); });
  keeper_row("same keeper after restart", [&](R r) { return yes(r.keeper_kept); });
  row("SIGTERM -> proctord exited (ms)", [&](R r) { return fixed(r.shutdown_ms, 1); });
  row("proctord exit status", [&](R r) { return absl::StrCat(r.proctord_exit); });
  keeper_row("keeper gone", [&](R r) { return yes(r.keeper_gone); });
  row("workers left", [&](R r) { return absl::StrCat(r.workers_left); });
  row("workers left unreaped", [&](R r) { return absl::StrCat(r.workers_orphaned); });
  return clean ? 0 : 1;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
