// proctord's Prometheus endpoint (--metrics-listen) scraped as Prometheus would, with curl,
// and read with the Prometheus client library's parser (tools/metrics_samples.py).
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/credentials.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proctor/v1/proctor.grpc.pb.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;

// "host:port" the daemon serves metrics on, from its log.
std::string MetricsAddress(const TestDaemon& daemon) {
  return daemon.LoggedAfter("metrics on http://", "/metrics");
}

// One sample's value by its name and labels (`labels` as `a="x",b="y"`, sorted by name).
using Samples = std::map<std::string, double>;

// Scrapes `address` and parses what it serves; a scrape that fails, or text that is not the
// exposition format, fails the test.
Samples Scrape(const std::string& address) {
  CommandResult scraped =
      RunCommand({"/bin/sh", "-c",
                  absl::StrCat("curl -sS --fail http://", address, "/metrics | ", METRICS_SAMPLES,
                               "; exit $?")});
  EXPECT_EQ(scraped.status, 0) << scraped.err;
  Samples samples;
  for (absl::string_view line : absl::StrSplit(scraped.out, '\n', absl::SkipEmpty())) {
    nlohmann::json sample = nlohmann::json::parse(line);
    std::vector<std::string> labels;
    for (auto& [name, value] : sample["labels"].items()) {
      labels.push_back(absl::StrCat(name, "=\"", value.get<std::string>(), "\""));
    }
    std::string key = sample["name"].get<std::string>();
    if (!labels.empty()) absl::StrAppend(&key, "{", absl::StrJoin(labels, ","), "}");
    samples[key] = sample["value"].get<double>();
  }
  return samples;
}

TEST(MetricsScrapeTest, CountsWhatHappens) {
  TestDaemon daemon({"--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "0"});
  std::string address = MetricsAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  Samples before = Scrape(address);
  EXPECT_EQ(before["proctor_processes_started_total"], 0);
  EXPECT_EQ(before["proctor_processes_running"], 0);
  EXPECT_GT(before["process_resident_memory_bytes"], 0);
  EXPECT_GT(before["process_open_fds"], 0);

  // Three endings: exit 0, exit 3, a signal.
  for (const std::vector<std::string>& argv :
       {std::vector<std::string>{"/bin/true"}, {"/bin/sh", "-c", "exit 3"},
        {"/bin/sh", "-c", "kill -9 $$"}}) {
    v1::Process p = StartOk(daemon.client(), argv);
    ASSERT_TRUE(daemon.client().Join(p.id()).ok());
  }
  // One that runs, with a Join parked on it.
  v1::Process running = StartOk(daemon.client(), {"/bin/sleep", "60"});
  std::thread joiner([&] {
    daemon.client().Join(running.id()).IgnoreError();
  });
  // A call without a key.
  auto stub = v1::Proctor::NewStub(grpc::CreateChannel(daemon.address(),
                                                       grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::StatusRequest request;
  v1::StatusResponse response;
  EXPECT_EQ(stub->Status(&context, request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  Samples after;
  ASSERT_TRUE(WaitFor([&] {
    after = Scrape(address);
    return after["proctor_joins_waiting"] == 1;
  })) << "the parked Join is not counted";
  EXPECT_EQ(after["proctor_processes_started_total"], 4);
  EXPECT_EQ(after["proctor_processes_running"], 1);
  EXPECT_EQ(after["proctor_processes_exited_total{outcome=\"exit_zero\"}"], 1);
  EXPECT_EQ(after["proctor_processes_exited_total{outcome=\"exit_nonzero\"}"], 1);
  EXPECT_EQ(after["proctor_processes_exited_total{outcome=\"signal\"}"], 1);
  EXPECT_EQ(after["proctor_processes_exited_total{outcome=\"lost\"}"], 0);
  EXPECT_EQ(after["proctor_process_restarts_total"], 0);
  EXPECT_GE(after["proctor_auth_refusals_total{reason=\"missing\"}"], 1);
  EXPECT_EQ(after["proctor_auth_refusals_total{reason=\"wrong_key\"}"], 0);
  const std::string start = "{method=\"Start\",service=\"proctor.v1.Proctor\"}";
  EXPECT_EQ(after["proctor_rpc_duration_seconds_count" + start], 4);
  EXPECT_GT(after["proctor_rpc_duration_seconds_sum" + start], 0);
  EXPECT_EQ(after["proctor_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"Start\",service="
                  "\"proctor.v1.Proctor\"}"],
            4);
  // The three finished Joins and the refused Status; the parked Join is not over yet.
  EXPECT_EQ(after["proctor_rpc_duration_seconds_count{method=\"Join\",service=\"proctor.v1."
                  "Proctor\"}"],
            3);
  EXPECT_GE(after["proctor_rpc_duration_seconds_count{method=\"Status\",service=\"proctor.v1."
                  "Proctor\"}"],
            1);
  // Every method of both services has its histogram, called or not.
  EXPECT_EQ(after.count("proctor_rpc_duration_seconds_count{method=\"SyncCreate\",service="
                        "\"proctor.v1.Sync\"}"),
            1);

  v1::TerminateRequest terminate;
  terminate.set_id(running.id());
  ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  joiner.join();
  Samples ended = Scrape(address);
  EXPECT_EQ(ended["proctor_processes_running"], 0);
  EXPECT_EQ(ended["proctor_joins_waiting"], 0);
  EXPECT_EQ(ended["proctor_processes_exited_total{outcome=\"signal\"}"], 2);
}

TEST(MetricsScrapeTest, RestartsAndWatchersAreCounted) {
  TestDaemon daemon({"--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "0"});
  std::string address = MetricsAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  CommandResult started = daemon.Cli({"start", "--restart", "on-failure", "--max-restarts", "2",
                                      "--backoff", "10ms..10ms", "--", "/bin/sh", "-c", "exit 1"});
  ASSERT_EQ(started.status, 0) << started.err;
  pid_t watcher = daemon.StartCli({"events", "--follow"}, daemon.dir() + "/events.out",
                                  daemon.dir() + "/events.err");
  Samples samples;
  EXPECT_TRUE(WaitFor([&] {
    samples = Scrape(address);
    return samples["proctor_processes_exited_total{outcome=\"exit_nonzero\"}"] == 1 &&
           samples["proctor_watchers"] == 1;
  })) << daemon.Log();
  EXPECT_EQ(samples["proctor_processes_started_total"], 1);
  EXPECT_EQ(samples["proctor_process_restarts_total"], 2);
  kill(watcher, SIGTERM);
  WaitForExit(watcher, absl::Seconds(10));
}

// The Joins a stream parks are counted as any Join, and leave with the stream: a cancelled
// stream leaves none waiting in proctord.
TEST(MetricsScrapeTest, ACancelledJoinsStreamLeavesNoJoinWaiting) {
  constexpr int kJoins = 50;
  TestDaemon daemon({"--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "0"});
  std::string address = MetricsAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  v1::Process sleeper = StartOk(daemon.client(), {"/bin/sleep", "100"});
  absl::StatusOr<Credentials> admin = FindCredentials(daemon.authkey_path());
  ASSERT_TRUE(admin.ok()) << admin.status();
  CallAuth auth(*admin);
  auto stub = v1::Proctor::NewStub(
      grpc::CreateChannel(daemon.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auth.Sign(context, "Joins");
  auto stream = stub->Joins(&context);
  v1::JoinRequest join;
  join.set_id(sleeper.id());
  for (int i = 0; i < kJoins; ++i) ASSERT_TRUE(stream->Write(join));
  EXPECT_TRUE(WaitFor([&] { return Scrape(address)["proctor_joins_waiting"] == kJoins; }))
      << "the stream's Joins are not all parked";
  context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return Scrape(address)["proctor_joins_waiting"] == 0; }))
      << "Joins of a cancelled stream are still waiting";
  absl::StatusOr<v1::Process> running = daemon.client().Status(sleeper.id());
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->state(), v1::STATE_RUNNING) << "a cancelled Join ends nothing";
}

TEST(MetricsScrapeTest, OnlyMetricsIsServed) {
  TestDaemon daemon({"--metrics-listen", "127.0.0.1:0"});
  std::string address = MetricsAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  CommandResult other = RunCommand(
      {"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", absl::StrCat("http://", address, "/")});
  EXPECT_EQ(other.out, "404");
  CommandResult head = RunCommand({"curl", "-sS", "-I", absl::StrCat("http://", address, "/metrics")});
  EXPECT_THAT(head.out, HasSubstr("200"));
  EXPECT_THAT(head.out, HasSubstr("text/plain; version=0.0.4"));
}

TEST(MetricsScrapeTest, BadMetricsListenIsAClearStartupError) {
  CommandResult unparseable = RunCommand({PROCTORD_PATH, "--metrics-listen", "localhost"});
  EXPECT_EQ(unparseable.status, 2);
  EXPECT_THAT(unparseable.err, HasSubstr("--metrics-listen wants host:port"));

  // A port another socket holds.
  int taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(taken, 1), 0);
  socklen_t length = sizeof(addr);
  ASSERT_EQ(getsockname(taken, reinterpret_cast<sockaddr*>(&addr), &length), 0);
  std::string in_use = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  TempDir dir;
  CommandResult busy = RunCommand(
      {PROCTORD_PATH, "--state-dir", dir.path() + "/state", "--listen",
       "unix:" + dir.path() + "/proctord.sock", "--services", dir.path() + "/services",
       "--metrics-listen", in_use});
  close(taken);
  EXPECT_EQ(busy.status, 1);
  EXPECT_THAT(busy.err, HasSubstr("cannot serve metrics on " + in_use)) << busy.err;
  // Nothing is left listening.
  EXPECT_NE(access((dir.path() + "/proctord.sock").c_str(), F_OK), 0);
}

}  // namespace
}  // namespace proctor::testing
