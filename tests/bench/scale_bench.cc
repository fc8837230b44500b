// proctor_scale_bench: proctord with many live workers, and with a long history.
//
//   proctor_scale_bench [--live N] [--history H] [--probes P] [--daemon PATH] [--json]
//
// Against a proctord of its own (--max-processes above N; the descriptor limit raised so that
// it may), for S = N/10 and then S = N live workers (`sleep`, started by four clients):
// - RSS of proctord and of its keeper;
// - Status of all: one unfiltered listing, timed (median of 5);
// - idle CPU: what proctord and the keeper use over 10 s in which nothing is asked;
// - exit -> Join: P probe workers, each `read` from a FIFO of its own with a Join parked on
//   it; the bench writes the FIFO and times until that Join returns (p50, p99). Baseline in
//   the same run: the same probe spawned by the bench itself, timed until its waitpid returns;
// - S parked Joins on the live workers, first as S requests on one Joins stream, then as S
//   unary calls (async, one channel): none answered within 2 s, and proctord's RSS growth
//   while they are parked (measured first, before the listings, whose freed memory they
//   would reuse);
// Then the history: H short processes (/bin/true, Start+Join, never released) on a fresh
// proctord with the default --retain 10000; proctord's RSS every H/7 processes. The same again
// with --retain 0, which keeps everything else (the event window, the journal, the stock of
// capture files): the difference is what the retained records cost.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/credentials.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proctor/v1/proctor.grpc.pb.h"
#include "tests/bench/async_calls.h"
#include "tests/bench/bench_daemon.h"
#include "tests/bench/bench_support.h"

extern char** environ;

namespace proctor {
namespace {

struct Options {
  int live = 10000;
  int history = 49000;
  int probes = 200;
  std::string proctord = PROCTORD_PATH;
  bool json = false;
};

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t at = static_cast<size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(at, values.size() - 1)];
}

int64_t RssKib(pid_t pid) {
  absl::StatusOr<DaemonStats> stats = ReadStats(pid);
  return stats.ok() ? stats->rss_kib : -1;
}

// CPU time (utime + stime) of `pid`'s threads, in milliseconds; -1 if unknown.
double CpuMs(pid_t pid) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat.has_value() ? static_cast<double>(stat->cpu_us) / 1000 : -1;
}

// Returns once `pid` uses no CPU over 200 ms (its CPU time is counted in 10 ms ticks), or
// after 20 s.
void WaitUntilIdle(pid_t pid) {
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  double before = CpuMs(pid);
  while (absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(200));
    const double now = CpuMs(pid);
    if (now == before) return;
    before = now;
  }
}

// Starts `count` copies of `argv` through `threads` clients; the ids, or the first error.
absl::StatusOr<std::vector<uint64_t>> StartMany(const ClientOptions& options, int count,
                                                const std::vector<std::string>& argv,
                                                int threads = 4) {
  std::vector<std::vector<uint64_t>> ids(threads);
  std::vector<absl::Status> errors(threads);
  std::atomic<int> next{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
      if (!client.ok()) {
        errors[t] = client.status();
        return;
      }
      v1::StartRequest request;
      request.set_target(argv[0]);
      for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
      while (next.fetch_add(1) < count) {
        absl::StatusOr<v1::Process> started = (*client)->Start(request);
        if (!started.ok()) {
          errors[t] = started.status();
          return;
        }
        ids[t].push_back(started->id());
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  std::vector<uint64_t> all;
  for (int t = 0; t < threads; ++t) {
    if (!errors[t].ok()) return errors[t];
    all.insert(all.end(), ids[t].begin(), ids[t].end());
  }
  return all;
}

// Opens `fifo` for writing (waiting for its reader) and writes a line to it.
bool Release(const std::string& fifo) {
  int fd = open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "go\n", 3) == 3;
  close(fd);
  return ok;
}

// Exit -> Join through proctord, and exit -> waitpid bare, for `probes` FIFO readers.
struct ExitLatency {
  std::vector<double> joined_ms;
  std::vector<double> bare_ms;
};

absl::StatusOr<ExitLatency> MeasureExitToJoin(Client& client, const std::string& dir,
                                              int probes) {
  ExitLatency latency;
  const std::string fifo = dir + "/probe.fifo";
  if (mkfifo(fifo.c_str(), 0600) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkfifo ", fifo, ": ", std::strerror(errno)));
  }
  const std::vector<std::string> argv = {"/bin/sh", "-c", "read line < \"$0\"", fifo};
  for (int i = 0; i < probes; ++i) {
    v1::StartRequest request;
    request.set_target(argv[0]);
    for (size_t a = 1; a < argv.size(); ++a) request.add_args(argv[a]);
    absl::StatusOr<v1::Process> probe = client.Start(request);
    if (!probe.ok()) return probe.status();
    absl::Time released;
    absl::Time returned;
    absl::Status joined;
    std::thread join([&] {
      absl::StatusOr<v1::Process> ended = client.Join(probe->id());
      returned = absl::Now();
      joined = ended.status();
    });
    absl::SleepFor(absl::Milliseconds(5));  // the Join parks
    released = absl::Now();
    if (!Release(fifo)) return absl::InternalError("cannot write the probe's FIFO");
    join.join();
    if (!joined.ok()) return joined;
    latency.joined_ms.push_back(absl::ToDoubleMilliseconds(returned - released));
    if (absl::Status s = client.Release(probe->id()); !s.ok()) return s;
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  for (int i = 0; i < probes; ++i) {
    pid_t pid = 0;
    if (int err = posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ); err != 0) {
      return absl::InternalError(absl::StrCat("posix_spawn: ", std::strerror(err)));
    }
    absl::SleepFor(absl::Milliseconds(5));
    absl::Time released = absl::Now();
    if (!Release(fifo)) return absl::InternalError("cannot write the probe's FIFO");
    waitpid(pid, nullptr, 0);
    latency.bare_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - released));
  }
  return latency;
}

// A stub on a channel of its own to `options.address`, and the key to sign its calls with.
struct SignedStub {
  CallAuth auth;
  std::unique_ptr<v1::Proctor::Stub> stub;
};
absl::StatusOr<SignedStub> NewSignedStub(const ClientOptions& options) {
  absl::StatusOr<Credentials> credentials = FindCredentials(options.authkey_file);
  if (!credentials.ok()) return credentials.status();
  return SignedStub{CallAuth(*std::move(credentials)),
                    v1::Proctor::NewStub(grpc::CreateChannel(
                        options.address, grpc::InsecureChannelCredentials()))};
}

// `ids.size()` Joins, async on one channel, on the live workers `ids`: none may be answered
// within 2 s (a Join that comes back did not park). proctord's RSS (`daemon`) is read then,
// into `rss_parked_kib`, before they are cancelled.
absl::Status ParkJoins(const ClientOptions& options, const std::vector<uint64_t>& ids,
                       pid_t daemon, int64_t* rss_parked_kib) {
  absl::StatusOr<SignedStub> signed_stub = NewSignedStub(options);
  if (!signed_stub.ok()) return signed_stub.status();
  auto& [auth, stub] = *signed_stub;
  struct Call {
    grpc::ClientContext context;
    v1::Process reply;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::Process>> reader;
  };
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Call>> calls;
  for (uint64_t id : ids) {
    auto call = std::make_unique<Call>();
    auth.Sign(call->context, "Join");
    v1::JoinRequest request;
    request.set_id(id);
    call->reader = stub->AsyncJoin(&call->context, request, &cq);
    call->reader->Finish(&call->reply, &call->status, call.get());
    calls.push_back(std::move(call));
  }
  void* tag = nullptr;
  bool ok = false;
  absl::Status answered;
  if (cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::seconds(2)) ==
      grpc::CompletionQueue::GOT_EVENT) {
    const grpc::Status& status = static_cast<Call*>(tag)->status;
    answered = absl::InternalError(absl::StrCat("a parked Join was answered: ",
                                                status.error_code(), " ", status.error_message()));
  }
  *rss_parked_kib = RssKib(daemon);
  bench::CancelAndDrain(calls, cq);
  return answered;
}

// The same Joins on one Joins stream: none may be answered within 2 s. proctord's RSS is read
// then, into `rss_parked_kib`, before the stream is cancelled.
absl::Status ParkJoinsOnAStream(const ClientOptions& options, const std::vector<uint64_t>& ids,
                                pid_t daemon, int64_t* rss_parked_kib) {
  absl::StatusOr<SignedStub> signed_stub = NewSignedStub(options);
  if (!signed_stub.ok()) return signed_stub.status();
  auto& [auth, stub] = *signed_stub;
  grpc::ClientContext context;
  auth.Sign(context, "Joins");
  auto stream = stub->Joins(&context);
  v1::JoinRequest request;
  for (uint64_t id : ids) {
    request.set_id(id);
    if (!stream->Write(request)) {
      return absl::InternalError(absl::StrCat("the Joins stream ended: ",
                                              stream->Finish().error_message()));
    }
  }
  absl::SleepFor(absl::Seconds(2));
  *rss_parked_kib = RssKib(daemon);
  context.TryCancel();
  v1::JoinResult early;
  if (stream->Read(&early)) {
    return absl::InternalError(absl::StrCat("a Join on the stream was answered: ", early.code(),
                                            " ", early.message()));
  }
  stream->Finish();
  return absl::OkStatus();
}

// One size of the live set: figures for S live workers.
absl::StatusOr<nlohmann::json> MeasureLive(BenchDaemon& daemon, const std::string& dir, int live,
                                           int probes, std::vector<uint64_t>& sleepers) {
  const ClientOptions& options = daemon.client_options();
  Client& client = daemon.admin();
  const int more = live - static_cast<int>(sleepers.size());
  absl::StatusOr<std::vector<uint64_t>> started =
      StartMany(options, more, {"/bin/sleep", "1000000"});
  if (!started.ok()) return started.status();
  sleepers.insert(sleepers.end(), started->begin(), started->end());
  const pid_t keeper = FindKeeper(daemon.pid(), absl::Seconds(5));

  nlohmann::json figures;
  figures["live"] = live;
  absl::SleepFor(absl::Seconds(2));
  figures["proctord_rss_kib"] = RssKib(daemon.pid());
  if (keeper > 0) figures["keeper_rss_kib"] = RssKib(keeper);

  // Before the listings: the memory they free would be reused by the Joins and hide them.
  // The stream's first, for the same reason: its Joins are the smaller (the unary Joins may
  // reuse what they freed, by at most the stream's own growth).
  int64_t rss_parked_kib = 0;
  if (absl::Status parked =
          ParkJoinsOnAStream(options, sleepers, daemon.pid(), &rss_parked_kib);
      !parked.ok()) {
    return parked;
  }
  figures["stream_parked_joins_rss_growth_kib"] =
      rss_parked_kib - figures["proctord_rss_kib"].get<int64_t>();
  WaitUntilIdle(daemon.pid());
  const int64_t rss_before_unary_kib = RssKib(daemon.pid());
  if (absl::Status parked = ParkJoins(options, sleepers, daemon.pid(), &rss_parked_kib);
      !parked.ok()) {
    return parked;
  }
  figures["parked_joins"] = sleepers.size();
  figures["parked_joins_rss_growth_kib"] = rss_parked_kib - rss_before_unary_kib;
  // The Joins were cancelled on our side at once; proctord ends each of them after. The
  // listings are timed once it has, or they would be timed against that.
  WaitUntilIdle(daemon.pid());

  std::vector<double> listing_ms;
  const double daemon_cpu_before_listing = CpuMs(daemon.pid());
  const double own_cpu_before_listing = CpuMs(getpid());
  for (int i = 0; i < 5; ++i) {
    absl::Time begin = absl::Now();
    absl::StatusOr<std::vector<v1::Process>> all = client.List(v1::StatusRequest());
    if (!all.ok()) return all.status();
    listing_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - begin));
    if (static_cast<int>(all->size()) < live) {
      return absl::InternalError(absl::StrCat("Status listed ", all->size(), " of ", live));
    }
  }
  figures["status_all_ms"] = Percentile(listing_ms, 0.5);
  // Where a listing's time goes: proctord's CPU (answering) and ours (reading the reply).
  figures["status_all_daemon_cpu_ms"] = (CpuMs(daemon.pid()) - daemon_cpu_before_listing) / 5;
  figures["status_all_client_cpu_ms"] = (CpuMs(getpid()) - own_cpu_before_listing) / 5;

  const double daemon_cpu = CpuMs(daemon.pid());
  const double keeper_cpu = keeper > 0 ? CpuMs(keeper) : 0;
  absl::SleepFor(absl::Seconds(10));
  figures["idle_cpu_ms_per_10s"] = CpuMs(daemon.pid()) - daemon_cpu;
  if (keeper > 0) figures["keeper_idle_cpu_ms_per_10s"] = CpuMs(keeper) - keeper_cpu;

  absl::StatusOr<ExitLatency> exits = MeasureExitToJoin(client, dir, probes);
  if (!exits.ok()) return exits.status();
  figures["exit_to_join_p50_ms"] = Percentile(exits->joined_ms, 0.5);
  figures["exit_to_join_p99_ms"] = Percentile(exits->joined_ms, 0.99);
  figures["bare_exit_to_waitpid_p50_ms"] = Percentile(exits->bare_ms, 0.5);
  figures["bare_exit_to_waitpid_p99_ms"] = Percentile(exits->bare_ms, 0.99);

  return figures;
}

// `retain`: proctord's --retain; unset, its default.
absl::StatusOr<nlohmann::json> MeasureHistory(const Options& options, const std::string& dir,
                                              std::optional<int> retain) {
  const std::string own =
      absl::StrCat(dir, "/history", retain.has_value() ? absl::StrCat("-retain-", *retain) : "");
  if (mkdir(own.c_str(), 0700) != 0) {
    return absl::InternalError(absl::StrCat("mkdir ", own, ": ", std::strerror(errno)));
  }
  std::vector<std::string> flags = {"--log-level", "warn"};
  if (retain.has_value()) flags.insert(flags.end(), {"--retain", absl::StrCat(*retain)});
  absl::StatusOr<std::unique_ptr<BenchDaemon>> daemon =
      BenchDaemon::Start(options.proctord, flags, own);
  if (!daemon.ok()) return daemon.status();
  nlohmann::json samples = nlohmann::json::array();
  const int step = std::max(1, options.history / 7);
  samples.push_back({{"processes", 0}, {"rss_kib", RssKib((*daemon)->pid())}});
  for (int done = 0; done < options.history;) {
    const int batch = std::min(step, options.history - done);
    // Start+Join each; Start answers once the process runs, Join once it has ended.
    absl::StatusOr<std::vector<uint64_t>> ids =
        StartMany((*daemon)->client_options(), batch, {"/bin/true"}, 2);
    if (!ids.ok()) return ids.status();
    for (uint64_t id : *ids) {
      if (absl::Status s = (*daemon)->admin().Join(id).status(); !s.ok() && !absl::IsNotFound(s)) {
        return s;
      }
    }
    done += batch;
    samples.push_back({{"processes", done}, {"rss_kib", RssKib((*daemon)->pid())}});
  }
  return samples;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("proctor_scale_bench: proctord with many live workers and a long history");
  app.add_option("--live", options.live, "live workers at the largest size")
      ->check(CLI::Range(10, 100000));
  app.add_option("--history", options.history, "short processes for the history")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--probes", options.probes, "exit -> Join probes per size")
      ->check(CLI::PositiveNumber);
  app.add_option("--daemon", options.proctord, "the proctord to run");
  app.add_flag("--json", options.json, "one JSON object instead of the table");
  CLI11_PARSE(app, argc, argv);

  // proctord takes at most half its descriptor limit in processes; the keeper holds a pidfd
  // for each. Root may raise the hard limit, which both inherit.
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  const int processes = options.live + options.probes + 100;
  const rlim_t wanted = static_cast<rlim_t>(processes) * 2 + 64;
  if (limit.rlim_max < wanted) {
    rlimit raised = {wanted, wanted};
    if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      std::cerr << "proctor_scale_bench: " << processes << " processes need a descriptor limit of "
                << wanted << ", and raising it from " << limit.rlim_max << " failed: "
                << std::strerror(errno) << " (needs CAP_SYS_RESOURCE; or give --live "
                << static_cast<int>(limit.rlim_max / 2) - options.probes - 100 - 32
                << " or less)\n";
      return 2;
    }
  }
  bench::RaiseDescriptorLimit("proctor_scale_bench");

  return bench::RunInScratchDir("/var/tmp", "proctor-scale", [&](const std::string& dir) {
    nlohmann::json report;
    {
      if (mkdir((dir + "/live").c_str(), 0700) != 0) {
        std::cerr << "proctor_scale_bench: mkdir: " << std::strerror(errno) << "\n";
        return 1;
      }
      absl::StatusOr<std::unique_ptr<BenchDaemon>> daemon = BenchDaemon::Start(
          options.proctord,
          {"--log-level", "warn", "--max-processes", absl::StrCat(options.live + options.probes + 100)},
          dir + "/live", /*await_spares=*/true);
      if (!daemon.ok()) {
        std::cerr << "proctor_scale_bench: " << daemon.status() << "\n";
        return 1;
      }
      std::vector<uint64_t> sleepers;
      for (int live : {options.live / 10, options.live}) {
        absl::StatusOr<nlohmann::json> figures =
            MeasureLive(**daemon, dir, live, options.probes, sleepers);
        if (!figures.ok()) {
          std::cerr << "proctor_scale_bench: " << live << " live: " << figures.status() << "\n";
          return 1;
        }
        report["live"].push_back(*figures);
      }
    }  // proctord stops, and ends its workers
    if (options.history > 0) {
      absl::StatusOr<nlohmann::json> history = MeasureHistory(options, dir, std::nullopt);
      absl::StatusOr<nlohmann::json> unretained =
          history.ok() ? MeasureHistory(options, dir, 0) : history;
      if (!unretained.ok()) {
        std::cerr << "proctor_scale_bench: history: " << unretained.status() << "\n";
        return 1;
      }
      report["history"] = *history;
      report["history_retain_0"] = *unretained;
      // Over the same processes, each run's growth from its own start.
      auto growth = [](const nlohmann::json& samples) {
        return samples.back()["rss_kib"].get<int>() - samples.front()["rss_kib"].get<int>();
      };
      report["retained_records_kib"] = growth(*history) - growth(*unretained);
    }
    if (options.json) {
      std::cout << report.dump() << std::endl;
      return 0;
    }
    for (const nlohmann::json& size : report["live"]) std::cout << size.dump() << "\n";
    for (size_t i = 0; i < report["history"].size(); ++i) {
      const nlohmann::json& sample = report["history"][i];
      std::cout << absl::StrFormat(
          "history: %7d processes  proctord RSS %7d KiB  (--retain 0: %7d KiB)\n",
          sample["processes"].get<int>(), sample["rss_kib"].get<int>(),
          report["history_retain_0"][i]["rss_kib"].get<int>());
    }
    if (report.contains("retained_records_kib")) {
      std::cout << absl::StrFormat(
          "history: the retained records cost %d KiB (growth over the growth with --retain 0)\n",
          report["retained_records_kib"].get<int>());
    }
    return 0;
  });
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
