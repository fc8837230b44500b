// soak: N clients drive a proctord of its own for T seconds with a random mix of calls while
// faults hit it, then checks that nothing was lost or left behind.
//
// Work (each client, in a loop): Start one of a mix of programs whose exit code and output size
// are known (plain exits, output of 0 to 64 KiB, short sleeps, a worker that closes its stdout,
// a worker that starts a daemonic child through the CLI and exits, a long sleeper), Join it
// and check its exit code and, for output, the size of what Logs returns; Terminate some long
// sleepers (the record Terminate returns is then the truth); follow a worker's output with
// Logs --follow; list with Status; Release what was checked; run `proctor lock` to add one to
// a counter file under a Lock, or to be SIGKILLed holding it. One more thread keeps a Watch
// open, resuming from its last cursor after each break.
//
// Faults (--faults, in turn, each for --fault-seconds every --interval seconds): `kill`
// (SIGKILL proctord, start it again on the same state directory), `stop` (SIGSTOP, then
// SIGCONT), `fds` (proctord's descriptor limit lowered to what it has open plus a few), `disk`
// (the state directory's tmpfs filled; needs root), `spawner` (a worker that starts copies of
// itself without end, then its tree terminated). Every failed call is counted by method,
// status code and the fault in force when it was made (or "none").
//
// Prints operations done, exit codes wrong, output wrong, records lost, counter updates lost,
// lock holders killed and abandonments reported, processes that never
// ended (still running a minute after they should have), zombies and strays left after
// proctord stopped, proctord's descriptors and RSS at start and end, and the errors seen
// during each fault. Exits 1 when any check fails or a call failed with no fault in force. A
// run still going three minutes past its time is given up: the report then names the calls
// still out (`overstayed_in`) and the soak exits 1.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"
#include "tests/bench/bench_daemon.h"

namespace proctor {
namespace {

struct Options {
  int clients = 4;
  double seconds = 30;
  std::string faults = "kill,stop,fds,disk,spawner";
  double interval = 6;
  double fault_seconds = 2;
  std::string proctord = PROCTORD_PATH;
  std::string cli = PROCTOR_CLI_PATH;
  bool json = false;
};

// What the run saw; guarded by Tally::mu.
struct Tally {
  absl::Mutex mu;
  int64_t operations = 0;
  int64_t processes = 0;
  int64_t wrong_exit = 0;
  int64_t wrong_output = 0;
  int64_t output_lost_to_full_disk = 0;
  int64_t lost = 0;
  int64_t never_ended = 0;  // still running when its check gave up (kJoinPatience)
  int64_t watch_events = 0;
  int64_t watch_breaks = 0;
  int64_t lock_runs = 0;          // `proctor lock` runs that incremented the counter, exit 0
  int64_t lock_holders_killed = 0;  // `proctor lock` runs SIGKILLed while holding the lock
  int64_t lock_abandoned_seen = 0;  // runs told the lock had been abandoned
  std::vector<int64_t> spawner_sizes;  // processes in each runaway tree when it was terminated
  std::map<std::string, int64_t> watch_break_reasons;  // "fault: CODE: message" -> count
  std::vector<std::string> examples;  // the first few wrong results, for the report
  // fault -> "Method CODE: message" -> count
  std::map<std::string, std::map<std::string, int64_t>> errors;
  std::map<std::string, int64_t> faults_applied;
};

// The fault in force; calls that fail within kAftermath of its end count under it too: a
// client that kept calling while proctord was down is in gRPC's reconnect backoff for a few
// seconds after proctord is back (a new connection gets through at once).
class FaultClock {
 public:
  static constexpr absl::Duration kAftermath = absl::Seconds(8);
  void Begin(const std::string& fault) {
    absl::MutexLock lock(&mu_);
    fault_ = fault;
    if (fault == "disk") ++disks_;
  }
  // Changes whenever a full disk begins or ends: a worker that ran across a change may have
  // had its writes refused (ENOSPC), as the disk fault means it to.
  int64_t DiskMark() {
    absl::MutexLock lock(&mu_);
    return 2 * disks_ + (fault_ == "disk" ? 1 : 0);
  }
  void End() {
    absl::MutexLock lock(&mu_);
    last_ = fault_;
    fault_.clear();
    ended_ = absl::Now();
  }
  // Called after a call failed that was made at `made`.
  std::string Blame(absl::Time made) {
    absl::MutexLock lock(&mu_);
    if (!fault_.empty()) return fault_;
    if (!last_.empty() && made < ended_ + kAftermath) return last_;
    return "none";
  }

 private:
  absl::Mutex mu_;
  std::string fault_;
  std::string last_;
  int64_t disks_ = 0;
  absl::Time ended_ = absl::InfinitePast();
};

// proctord's limits, low enough that the spawner fault (a runaway tree) stays within
// 1 + 6 + 36 + 216 processes; the soak's own trees are two deep with one child.
constexpr int kMaxChildren = 6;
constexpr int kMaxDepth = 4;

// The daemon under test, replaced when a fault restarts it.
class DaemonHolder {
 public:
  DaemonHolder(const Options& options, std::string dir) : options_(options), dir_(std::move(dir)) {}
  // The first start waits for the stock of spare capture files; a restart does not, as the
  // clients keep using it up while it is made.
  absl::Status Start(bool await_spares) {
    absl::StatusOr<std::unique_ptr<BenchDaemon>> started =
        BenchDaemon::Start(options_.proctord,
                           {"--log-level", "info", "--capture-spares", "64", "--max-children",
                            absl::StrCat(kMaxChildren), "--max-depth", absl::StrCat(kMaxDepth)},
                           dir_, await_spares);
    if (!started.ok()) return started.status();
    absl::MutexLock lock(&mu_);
    daemon_ = *std::move(started);
    return absl::OkStatus();
  }
  pid_t pid() {
    absl::MutexLock lock(&mu_);
    return daemon_ == nullptr ? stopped_pid_ : daemon_->pid();
  }
  ClientOptions client_options() {
    absl::MutexLock lock(&mu_);
    return daemon_->client_options();
  }
  void KillNine() {
    absl::MutexLock lock(&mu_);
    daemon_->KillNine();
  }
  // SIGTERM without waiting, if it runs and has not been reaped (so the pid is still its).
  void SignalToEnd() {
    absl::MutexLock lock(&mu_);
    if (daemon_ != nullptr && daemon_->pid() > 1) kill(daemon_->pid(), SIGTERM);
  }
  // SIGTERM, and waits for it to exit (outside the lock, so that pid() still answers).
  void Stop() {
    std::unique_ptr<BenchDaemon> stopping;
    {
      absl::MutexLock lock(&mu_);
      stopping = std::move(daemon_);
      stopped_pid_ = stopping == nullptr ? -1 : stopping->pid();
    }
    stopping.reset();
  }

 private:
  const Options& options_;
  const std::string dir_;
  absl::Mutex mu_;
  std::unique_ptr<BenchDaemon> daemon_;
  pid_t stopped_pid_ = -1;  // while Stop waits for it
};

struct Program {
  std::vector<std::string> argv;
  int exitcode;
  int64_t output_bytes = -1;  // -1: not checked
  bool long_running = false;
};

Program PickProgram(std::mt19937_64& rng, const std::string& cli) {
  int code = static_cast<int>(rng() % 6);
  std::string exit = absl::StrCat("; exit ", code);
  switch (rng() % 6) {
    case 0:
      return {{"/bin/sh", "-c", absl::StrCat("exit ", code)}, code};
    case 1: {
      int64_t bytes = std::vector<int64_t>{0, 1, 4096, 65536}[rng() % 4];
      return {{"/bin/sh", "-c", absl::StrCat("head -c ", bytes, " /dev/zero", exit)}, code, bytes};
    }
    case 2:
      return {{"/bin/sh", "-c", absl::StrCat("sleep 0.", rng() % 3, exit)}, code};
    case 3:  // closes its stdout, then writes to it
      return {{"/bin/sh", "-c", absl::StrCat("exec >&-; echo gone 2>/dev/null", exit)}, code};
    case 4:  // a tree: a daemonic child that must end with it
      return {{"/bin/sh", "-c", absl::StrCat("\"$0\" start --daemon -- sleep 100 >/dev/null 2>&1",
                                             exit),
               cli},
              code};
    default:
      return {{"/bin/sleep", "1000"}, -15, -1, true};
  }
}

// The call each client thread is in and since when, for the report of a run that overstays.
class Activities {
 public:
  explicit Activities(int threads) : slots_(threads) {}
  // The calling thread is thread `index` from now on.
  void Enter(int index) { current_ = &slots_[index]; }
  static void Calling(absl::string_view method) {
    if (current_ == nullptr) return;
    absl::MutexLock lock(&current_->mu);
    current_->method = std::string(method);
    current_->since = absl::Now();
  }
  static void Done() {
    if (current_ == nullptr) return;
    absl::MutexLock lock(&current_->mu);
    current_->method.clear();
  }
  // "thread 2: Join for 71.2s", one per thread in a call.
  std::vector<std::string> InCalls() {
    std::vector<std::string> busy;
    for (size_t i = 0; i < slots_.size(); ++i) {
      absl::MutexLock lock(&slots_[i].mu);
      if (slots_[i].method.empty()) continue;
      busy.push_back(absl::StrCat("thread ", i, ": ", slots_[i].method, " for ",
                                  absl::FormatDuration(absl::Trunc(absl::Now() - slots_[i].since,
                                                                   absl::Milliseconds(100)))));
    }
    return busy;
  }

 private:
  struct Slot {
    absl::Mutex mu;
    std::string method;
    absl::Time since;
  };
  std::vector<Slot> slots_;
  static thread_local Slot* current_;
};
thread_local Activities::Slot* Activities::current_ = nullptr;

class Soak {
 public:
  Soak(const Options& options, DaemonHolder& daemon, FaultClock& faults, Tally& tally,
       std::string dir)
      : options_(options), daemon_(daemon), faults_(faults), tally_(tally), dir_(std::move(dir)) {}

  void RunClient(int index, absl::Time deadline) {
    std::mt19937_64 rng(index * 7919 + 1);
    std::unique_ptr<Client> client = Connect();
    std::vector<uint64_t> sleepers;
    while (absl::Now() < deadline) {
      int op = static_cast<int>(rng() % 22);
      if (op < 12) {
        StartAndCheck(*client, rng, sleepers);
      } else if (op < 15 && !sleepers.empty()) {
        uint64_t id = sleepers.back();
        sleepers.pop_back();
        TerminateAndCheck(*client, id);
      } else if (op < 17) {
        Call("Status", [&] { return client->List(v1::StatusRequest()).status(); });
      } else if (op < 20) {
        FollowAndCheck(*client);
      } else {
        LockAndCount(index, rng);
      }
    }
    for (uint64_t id : sleepers) TerminateAndCheck(*client, id);
  }

  // `proctor lock soak-counter` (the CLI with the admin key, as a user runs it) adds one to a
  // counter file while it holds the lock. One run in four is SIGKILLed, with what it runs,
  // once it holds the lock instead: a later run must be told the lock was abandoned.
  void LockAndCount(int index, std::mt19937_64& rng) {
    const bool kill_holder = rng() % 4 == 0;
    const std::string run = absl::StrCat(dir_, "/lock-", index);
    std::remove((run + ".held").c_str());
    std::vector<std::string> argv = {options_.cli, "lock", "soak-counter", "--timeout", "30",
                                     "--", "/bin/sh", "-c"};
    if (kill_holder) {
      argv.insert(argv.end(), {": > \"$0\"; exec sleep 60", run + ".held"});
    } else {
      // Written aside and renamed: a write refused by the full disk (the disk fault) must
      // leave the counter as it was, not emptied.
      argv.insert(argv.end(), {"n=$(cat \"$0\" 2>/dev/null || echo 0); "
                               "echo $((n + 1)) > \"$0.new\" && mv \"$0.new\" \"$0\"",
                               dir_ + "/counter"});
    }
    const absl::Time made = absl::Now();
    Activities::Calling("proctor lock");
    const pid_t cli = SpawnCli(argv, run + ".err");
    int status = 0;
    bool reaped = false;
    if (cli > 0 && kill_holder) {
      // Killed as soon as it holds the lock, unless it has ended without.
      while (!std::filesystem::exists(run + ".held")) {
        reaped = waitpid(cli, &status, WNOHANG) == cli;
        if (reaped) break;
        absl::SleepFor(absl::Milliseconds(20));
      }
      // Our unreaped child leads the group: the group is still its.
      if (!reaped) kill(-cli, SIGKILL);
    }
    if (cli > 0 && !reaped) waitpid(cli, &status, 0);
    Activities::Done();
    std::ifstream err_file(run + ".err");
    const std::string err((std::istreambuf_iterator<char>(err_file)),
                          std::istreambuf_iterator<char>());
    absl::MutexLock lock(&tally_.mu);
    ++tally_.operations;
    if (err.find("abandoned") != std::string::npos) ++tally_.lock_abandoned_seen;
    if (kill_holder && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      ++tally_.lock_holders_killed;
      return;
    }
    if (cli > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      if (!kill_holder) ++tally_.lock_runs;
      return;
    }
    // Not acquired in 30 s (124) or an error: counted against the fault in force, if any.
    std::string line = err.substr(0, err.find('\n')).substr(0, 160);
    std::string how = cli <= 0                ? absl::StrCat("not started: ", std::strerror(-cli))
                      : WIFEXITED(status)     ? absl::StrCat("exit ", WEXITSTATUS(status))
                      : WIFSIGNALED(status)   ? absl::StrCat("signal ", WTERMSIG(status))
                                              : "?";
    ++tally_.errors[faults_.Blame(made)][absl::StrCat("proctor lock ", how, ": ", line)];
  }

  // A runaway: a worker that starts copies of itself through proctord without end (each
  // copy does the same) until the limits refuse; after `length` its tree is terminated and
  // must end whole. Other clients' Starts meanwhile may meet the limits too.
  void RunSpawner(absl::Duration length) {
    static constexpr char kScript[] =
        "while :; do \"$1\" start -- /bin/sh -c \"$0\" \"$0\" \"$1\" >/dev/null 2>&1 || "
        "sleep 0.2; done";
    std::unique_ptr<Client> client = Connect();
    std::optional<v1::Process> top =
        StartCounted(*client, {"/bin/sh", "-c", kScript, kScript, options_.cli});
    absl::SleepFor(length);
    if (!top.has_value()) return;
    // Its size: the running records named after it ("Process-7", "Process-7:1", ...).
    v1::StatusRequest running;
    running.set_state(v1::STATE_RUNNING);
    absl::StatusOr<std::vector<v1::Process>> listed = client->List(running);
    if (listed.ok()) {
      const int64_t size = std::count_if(listed->begin(), listed->end(), [&](const v1::Process& p) {
        return p.name() == top->name() || absl::StartsWith(p.name(), top->name() + ":");
      });
      absl::MutexLock lock(&tally_.mu);
      tally_.spawner_sizes.push_back(size);
    }
    TerminateAndCheck(*client, top->id());
  }

  void RunWatcher(absl::Time deadline) {
    std::unique_ptr<Client> client = Connect();
    std::optional<uint64_t> since;
    while (absl::Now() < deadline) {
      v1::WatchRequest request;
      if (since.has_value()) request.set_since(*since);
      std::stop_source stop;
      std::thread timer([&] {
        while (absl::Now() < deadline && !stop.stop_requested()) absl::SleepFor(absl::Milliseconds(100));
        stop.request_stop();
      });
      absl::Status watched = client->Watch(
          request,
          [&](const v1::Event& event) {
            since = event.cursor();
            absl::MutexLock lock(&tally_.mu);
            ++tally_.watch_events;
            return true;
          },
          stop.get_token());
      stop.request_stop();
      timer.join();
      if (absl::Now() >= deadline) break;
      {
        absl::MutexLock lock(&tally_.mu);
        ++tally_.watch_breaks;
        ++tally_.watch_break_reasons[absl::StrCat(
            faults_.Blame(absl::Now()), ": ", absl::StatusCodeToString(watched.code()), ": ",
            watched.message().substr(0, 120))];
      }
      // A cursor older than what proctord keeps: from now on.
      if (absl::IsOutOfRange(watched)) since.reset();
      absl::SleepFor(absl::Milliseconds(200));
    }
  }

 private:
  std::unique_ptr<Client> Connect() {
    ClientOptions options = daemon_.client_options();
    options.call_timeout = absl::Seconds(10);
    return *Client::Connect(options);
  }

  // Runs `call`, counting a failure under the fault in force; returns whether it worked.
  bool Call(absl::string_view method, const std::function<absl::Status()>& call) {
    absl::Time made = absl::Now();
    Activities::Calling(method);
    absl::Status status = call();
    Activities::Done();
    absl::MutexLock lock(&tally_.mu);
    ++tally_.operations;
    if (status.ok()) return true;
    std::string message(status.message().substr(0, 160));
    ++tally_.errors[faults_.Blame(made)][absl::StrCat(method, " ", absl::StatusCodeToString(
                                                                     status.code()),
                                                      ": ", message)];
    return false;
  }

  void Wrong(int64_t Tally::*counter, std::string what) {
    absl::MutexLock lock(&tally_.mu);
    ++(tally_.*counter);
    if (tally_.examples.size() < 10) tally_.examples.push_back(std::move(what));
  }

  // How long a check waits for a process that should end (the longest program sleeps 0.2 s,
  // a terminated one ends at once) before it reports it as never ended.
  static constexpr absl::Duration kJoinPatience = absl::Seconds(60);

  // Joins `id` until it has ended, through faults: the record, or the status that ended the
  // wait (NOT_FOUND: the record went missing; DEADLINE_EXCEEDED: still running after
  // kJoinPatience, with the last record in the message).
  absl::StatusOr<v1::Process> JoinToEnd(Client& client, uint64_t id) {
    const absl::Time give_up = absl::Now() + kJoinPatience;
    std::string last = "no answer";
    while (absl::Now() < give_up) {
      absl::StatusOr<v1::Process> joined;
      Call("Join", [&] {
        joined = client.Join(id, std::min(absl::Seconds(5), give_up - absl::Now()));
        return joined.status();
      });
      if (joined.ok() && joined->state() == v1::STATE_EXITED) return *joined;
      if (absl::IsNotFound(joined.status())) return joined.status();
      if (joined.ok()) {
        last = absl::StrCat("state ", v1::State_Name(joined->state()), ", pid ", joined->pid());
      } else {
        last = joined.status().ToString();
        absl::SleepFor(absl::Milliseconds(200));
      }
    }
    return absl::DeadlineExceededError(absl::StrCat("not ended after ", absl::FormatDuration(kJoinPatience), " (", last, ")"));
  }

  void Check(Client& client, uint64_t id, int expected, int64_t output_bytes,
             int64_t disk_mark) {
    absl::StatusOr<v1::Process> ended = JoinToEnd(client, id);
    if (absl::IsDeadlineExceeded(ended.status())) {
      Wrong(&Tally::never_ended, absl::StrCat("process ", id, " ", ended.status().message()));
      return;
    }
    if (!ended.ok() || ended->lost()) {
      Wrong(&Tally::lost, absl::StrCat("process ", id, " lost"));
      return;
    }
    if (!ended->has_exitcode() || ended->exitcode() != expected) {
      Wrong(&Tally::wrong_exit,
            absl::StrCat("process ", id, " (", absl::StrJoin(ended->args(), " "), ") exit ",
                         ended->has_exitcode() ? absl::StrCat(ended->exitcode()) : "none",
                         ", expected ", expected));
    }
    if (output_bytes >= 0) {
      std::string out;
      v1::LogsRequest logs;
      logs.set_id(id);
      if (Call("Logs", [&] {
            out.clear();
            return client.Logs(logs, [&](std::string_view data) { out.append(data); });
          }) &&
          static_cast<int64_t>(out.size()) != output_bytes) {
        if (disk_mark != faults_.DiskMark() || disk_mark % 2 == 1) {
          absl::MutexLock lock(&tally_.mu);
          ++tally_.output_lost_to_full_disk;
          return;
        }
        Wrong(&Tally::wrong_output,
              absl::StrCat("process ", id, " wrote ", out.size(), " bytes, expected ", output_bytes));
      }
    }
    Call("Release", [&] { return client.Release(id); });
  }

  // Starts `argv`; the record, counted, or nothing when the call failed (counted too).
  std::optional<v1::Process> StartCounted(Client& client, const std::vector<std::string>& argv) {
    v1::StartRequest request;
    request.set_target(argv[0]);
    for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
    absl::StatusOr<v1::Process> started;
    if (!Call("Start", [&] {
          started = client.Start(request);
          return started.status();
        })) {
      return std::nullopt;
    }
    absl::MutexLock lock(&tally_.mu);
    ++tally_.processes;
    return *started;
  }

  void StartAndCheck(Client& client, std::mt19937_64& rng, std::vector<uint64_t>& sleepers) {
    Program program = PickProgram(rng, options_.cli);
    const int64_t disk_mark = faults_.DiskMark();
    std::optional<v1::Process> started = StartCounted(client, program.argv);
    if (!started.has_value()) return;
    if (program.long_running) {
      sleepers.push_back(started->id());
      return;
    }
    Check(client, started->id(), program.exitcode, program.output_bytes, disk_mark);
  }

  void TerminateAndCheck(Client& client, uint64_t id) {
    v1::TerminateRequest request;
    request.set_id(id);
    // A Terminate that failed under a fault may never have reached proctord: it is asked again
    // (of a process that has ended, Terminate answers its record).
    const absl::Time give_up = absl::Now() + kJoinPatience;
    while (absl::Now() < give_up) {
      absl::StatusOr<v1::Process> ended;
      if (Call("Terminate", [&] {
            ended = client.Terminate(request);
            return ended.status();
          }) ||
          absl::IsNotFound(ended.status())) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
    // Whatever Terminate answered, the process must end as SIGTERM ends it.
    Check(client, id, -15, -1, faults_.DiskMark());
  }

  void FollowAndCheck(Client& client) {
    const int64_t disk_mark = faults_.DiskMark();
    std::optional<v1::Process> started =
        StartCounted(client, {"/bin/sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done"});
    if (!started.has_value()) return;
    v1::LogsRequest logs;
    logs.set_id(started->id());
    logs.set_follow(true);
    std::string out;
    bool followed = Call("Logs", [&] {
      out.clear();
      return client.Logs(logs, [&](std::string_view data) { out.append(data); });
    });
    // A follow broken by a fault is read again whole once the process has ended.
    absl::StatusOr<v1::Process> ended = JoinToEnd(client, started->id());
    if (!followed && ended.ok()) {
      logs.set_follow(false);
      followed = Call("Logs", [&] {
        out.clear();
        return client.Logs(logs, [&](std::string_view data) { out.append(data); });
      });
    }
    const bool disk_changed = disk_mark != faults_.DiskMark() || disk_mark % 2 == 1;
    if (followed && out != "1\n2\n3\n" && disk_changed) {
      absl::MutexLock lock(&tally_.mu);
      ++tally_.output_lost_to_full_disk;
    } else if (followed && out != "1\n2\n3\n") {
      Wrong(&Tally::wrong_output, absl::StrCat("followed output of ", started->id(), ": \"", out, "\""));
    }
    Check(client, started->id(), 0, -1, disk_mark);
  }

  // Runs the CLI `argv` in a process group of its own with the admin's address and key,
  // stderr to `err_path`; its pid, or -errno.
  pid_t SpawnCli(const std::vector<std::string>& argv, const std::string& err_path) {
    const ClientOptions client = daemon_.client_options();
    std::vector<std::string> env = {absl::StrCat("PROCTOR_ADDRESS=", client.address),
                                    absl::StrCat("PROCTOR_AUTHKEY_FILE=", client.authkey_file),
                                    "PATH=/usr/bin:/bin"};
    std::vector<char*> args, envp;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    for (const std::string& var : env) envp.push_back(const_cast<char*>(var.c_str()));
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    pid_t pid = -1;
    if (int err = posix_spawn(&pid, args[0], &actions, &attr, args.data(), envp.data()); err != 0) {
      pid = -err;
    }
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return pid;
  }

  const Options& options_;
  DaemonHolder& daemon_;
  FaultClock& faults_;
  Tally& tally_;
  const std::string dir_;
};

// Waits until the filesystem of `dir` has room again after the disk fault (a quarter of it
// free), for up to 10 s.
absl::Status AwaitFreeSpace(const std::string& dir) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  for (;;) {
    struct statvfs fs;
    if (statvfs(dir.c_str(), &fs) != 0) {
      return absl::InternalError(absl::StrCat("statvfs ", dir, ": ", std::strerror(errno)));
    }
    if (fs.f_bavail >= fs.f_blocks / 4) return absl::OkStatus();
    if (absl::Now() > give_up) {
      return absl::InternalError(absl::StrCat(
          dir, " is still full 10 s after the disk fault removed its filler: something holds it "
               "open"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// Applies each enabled fault in turn until `deadline`.
void RunFaults(const Options& options, const std::vector<std::string>& faults,
               DaemonHolder& daemon, FaultClock& clock, Tally& tally, const std::string& dir,
               Soak& soak, absl::Time deadline) {
  const absl::Duration length = absl::Seconds(options.fault_seconds);
  for (size_t turn = 0; !faults.empty(); ++turn) {
    absl::SleepFor(absl::Seconds(options.interval));
    if (absl::Now() + length + absl::Seconds(2) >= deadline) return;
    const std::string& fault = faults[turn % faults.size()];
    clock.Begin(fault);
    pid_t pid = daemon.pid();
    if (fault == "kill") {
      daemon.KillNine();
      absl::SleepFor(length);
      if (absl::Status s = daemon.Start(/*await_spares=*/false); !s.ok()) {
        std::cerr << "soak: restarting proctord: " << s << "\n";
        std::exit(2);
      }
    } else if (fault == "stop") {
      kill(pid, SIGSTOP);
      absl::SleepFor(length);
      kill(pid, SIGCONT);
    } else if (fault == "fds") {
      struct rlimit old;
      prlimit(pid, RLIMIT_NOFILE, nullptr, &old);
      absl::StatusOr<DaemonStats> stats = ReadStats(pid);
      struct rlimit low = old;
      low.rlim_cur = stats.ok() ? stats->descriptors + 8 : 64;
      prlimit(pid, RLIMIT_NOFILE, &low, nullptr);
      absl::SleepFor(length);
      prlimit(pid, RLIMIT_NOFILE, &old, nullptr);
    } else if (fault == "spawner") {
      soak.RunSpawner(length);
    } else if (fault == "disk") {
      // Close-on-exec ("e"): a CLI the soak spawns meanwhile would otherwise hold the filler
      // open, and keep the disk full after it is removed, until that CLI exits.
      std::string filler = dir + "/filler";
      FILE* f = std::fopen(filler.c_str(), "we");
      std::string block(1 << 20, 'x');
      while (f != nullptr && std::fwrite(block.data(), 1, block.size(), f) == block.size() &&
             std::fflush(f) == 0) {
      }
      absl::SleepFor(length);
      if (f != nullptr) std::fclose(f);
      std::remove(filler.c_str());
      // The fault is over once the space is back, not once the file is gone: output refused
      // before then counts as lost to the full disk.
      if (absl::Status freed = AwaitFreeSpace(dir); !freed.ok()) {
        std::cerr << "soak: " << freed << "\n";
        std::exit(2);
      }
    }
    clock.End();
    absl::MutexLock lock(&tally.mu);
    ++tally.faults_applied[fault];
  }
}

// Processes outside proctord that carry its address: what it left behind.
struct Leftovers {
  int strays = 0;
  int zombies = 0;
};

Leftovers FindLeftovers(const std::string& address) {
  Leftovers found;
  std::string marker = absl::StrCat("PROCTOR_ADDRESS=", address);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (!std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream environ(entry.path() / "environ");
    std::string env((std::istreambuf_iterator<char>(environ)), std::istreambuf_iterator<char>());
    std::ifstream stat(entry.path() / "stat");
    std::string line((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    size_t paren = line.rfind(')');
    bool zombie = paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
    // A zombie's environment cannot be read; its parent's can.
    if (env.find(marker) != std::string::npos) {
      ++found.strays;
    } else if (zombie) {
      std::vector<std::string> fields = absl::StrSplit(line.substr(paren + 2), ' ');
      std::ifstream parent_env(absl::StrCat("/proc/", fields.size() > 1 ? fields[1] : "0", "/environ"));
      std::string penv((std::istreambuf_iterator<char>(parent_env)), std::istreambuf_iterator<char>());
      if (penv.find(marker) != std::string::npos) ++found.zombies;
    }
  }
  return found;
}

// How long past its time a run may go on before it is given up as hung.
constexpr absl::Duration kOverstay = absl::Seconds(180);

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("soak: many clients, random calls and faults against a proctord of its own");
  app.add_option("--clients", options.clients, "concurrent clients")->check(CLI::PositiveNumber);
  app.add_option("--seconds", options.seconds, "how long to run")->check(CLI::PositiveNumber);
  app.add_option("--faults", options.faults,
                 "comma-separated: kill, stop, fds, disk, spawner; 'none' for none");
  app.add_option("--interval", options.interval, "seconds between faults");
  app.add_option("--fault-seconds", options.fault_seconds, "how long each fault lasts");
  app.add_option("--proctord", options.proctord, "the proctord to run");
  app.add_option("--cli", options.cli, "the proctor CLI workers use");
  app.add_flag("--json", options.json, "print the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> faults;
  for (absl::string_view fault : absl::StrSplit(options.faults, ',', absl::SkipEmpty())) {
    if (fault == "none") continue;
    if (fault != "kill" && fault != "stop" && fault != "fds" && fault != "disk" &&
        fault != "spawner") {
      std::cerr << "soak: unknown fault '" << fault << "' (kill, stop, fds, disk, spawner, none)\n";
      return 2;
    }
    if (fault == "disk" && geteuid() != 0) {
      std::cerr << "soak: the disk fault mounts a tmpfs and needs root; left out\n";
      continue;
    }
    faults.emplace_back(fault);
  }
  char dir_template[] = "/var/tmp/proctor-soak.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::cerr << "soak: mkdtemp: " << std::strerror(errno) << "\n";
    return 2;
  }
  const std::string dir = dir_template;
  const bool tmpfs = std::find(faults.begin(), faults.end(), "disk") != faults.end();
  if (tmpfs && mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=256m,mode=0700") != 0) {
    std::cerr << "soak: mounting a tmpfs on " << dir << ": " << std::strerror(errno) << "\n";
    return 2;
  }

  DaemonHolder daemon(options, dir);
  if (absl::Status s = daemon.Start(/*await_spares=*/true); !s.ok()) {
    std::cerr << "soak: " << s << "\n";
    return 2;
  }
  absl::StatusOr<DaemonStats> at_start = ReadStats(daemon.pid());
  const std::string address = daemon.client_options().address;

  Tally tally;
  FaultClock clock;
  Soak soak(options, daemon, clock, tally, dir);
  Activities activities(options.clients);
  const absl::Time started = absl::Now();
  const absl::Time deadline = started + absl::Seconds(options.seconds);

  // The report, from what the run saw; `overstayed` lists the calls still out when the run
  // was given up (see the watchdog below).
  auto report = [&](const absl::StatusOr<DaemonStats>& at_end, const Leftovers& left,
                    const std::vector<std::string>& overstayed) {
    absl::MutexLock lock(&tally.mu);
    int64_t unexplained = 0;
    for (const auto& [what, count] : tally.errors["none"]) unexplained += count;
    std::ifstream counter_file(dir + "/counter");
    int64_t counter = 0;
    counter_file >> counter;
    // Every run that said it added one under the lock did (a run that failed under a fault
    // may have added one too): fewer means two held the lock at once.
    const bool no_lost_update = counter >= tally.lock_runs;
    const bool passed = tally.wrong_exit == 0 && tally.wrong_output == 0 && tally.lost == 0 &&
                        tally.never_ended == 0 && left.strays == 0 && left.zombies == 0 &&
                        unexplained == 0 && overstayed.empty() && no_lost_update;
    nlohmann::json report = {
        {"clients", options.clients},
        {"seconds", absl::ToDoubleSeconds(absl::Now() - started)},
        {"operations", tally.operations},
        {"processes", tally.processes},
        {"exit_codes_wrong", tally.wrong_exit},
        {"output_wrong", tally.wrong_output},
        {"output_lost_to_full_disk", tally.output_lost_to_full_disk},
        {"records_lost", tally.lost},
        {"never_ended", tally.never_ended},
        {"strays_after", left.strays},
        {"zombies_after", left.zombies},
        {"watch_events", tally.watch_events},
        {"watch_breaks", tally.watch_breaks},
        {"watch_break_reasons", tally.watch_break_reasons},
        {"lock_runs_counted", tally.lock_runs},
        {"lock_counter", counter},
        {"lock_holders_killed", tally.lock_holders_killed},
        {"lock_abandoned_seen", tally.lock_abandoned_seen},
        {"spawner_tree_sizes", tally.spawner_sizes},
        {"faults_applied", tally.faults_applied},
        {"errors_by_fault", tally.errors},
        {"examples", tally.examples},
        {"passed", passed},
    };
    if (!overstayed.empty()) report["overstayed_in"] = overstayed;
    if (at_start.ok()) {
      report["descriptors_start"] = at_start->descriptors;
      report["rss_kib_start"] = at_start->rss_kib;
    }
    if (at_end.ok()) {
      report["descriptors_end"] = at_end->descriptors;
      report["rss_kib_end"] = at_end->rss_kib;
    }
    // A failed run keeps proctord's log (with every restart's) for a look.
    if (!passed) {
      std::string log_copy = absl::StrCat("/var/tmp/proctor-soak-", getpid(), ".log");
      std::error_code copy_error;
      std::filesystem::copy_file(dir + "/proctord.log", log_copy, copy_error);
      report["proctord_log"] = copy_error ? "" : log_copy;
    }
    std::cout << (options.json ? report.dump() : report.dump(2)) << std::endl;
    return passed;
  };
  auto remove_dir = [&] {
    if (tmpfs) umount2(dir.c_str(), MNT_DETACH);
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  };

  // A client's calls are bounded (call timeouts, Soak::kJoinPatience), so a run that
  // overstays its time by much has a call that never came back: it is reported, with where
  // each thread is, instead of hanging.
  absl::Notification finished;
  std::thread watchdog([&] {
    if (finished.WaitForNotificationWithDeadline(deadline + kOverstay)) return;
    absl::StatusOr<DaemonStats> at_end = ReadStats(daemon.pid());
    report(at_end, FindLeftovers(address), activities.InCalls());
    daemon.SignalToEnd();  // it ends its workers
    remove_dir();
    std::_Exit(1);
  });

  std::vector<std::thread> threads;
  for (int i = 0; i < options.clients; ++i) {
    threads.emplace_back([&, i] {
      activities.Enter(i);
      soak.RunClient(i, deadline);
    });
  }
  threads.emplace_back([&] { soak.RunWatcher(deadline); });
  threads.emplace_back(
      [&] { RunFaults(options, faults, daemon, clock, tally, dir, soak, deadline); });
  for (std::thread& thread : threads) thread.join();

  absl::StatusOr<DaemonStats> at_end = ReadStats(daemon.pid());
  daemon.Stop();  // SIGTERM: proctord ends what is left and exits
  absl::SleepFor(absl::Milliseconds(500));
  Leftovers left = FindLeftovers(address);
  finished.Notify();
  watchdog.join();
  const bool passed = report(at_end, left, {});
  remove_dir();
  return passed ? 0 : 1;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
