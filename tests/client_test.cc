// The client library (client/client.h, client/credentials.h) where the daemon does not help:
// deadlines against a daemon that never answers (a socket nobody accepts on, or a proctord
// stopped with SIGSTOP), Join's polls against one that answers slowly, streams stopped by their
// caller, and the warning about a key file others can read; Watch against a real daemon:
// from a listing's cursor, live, stopped, refused, and under a worker's key; and Run against a
// real daemon: output, exit, failed and refused starts, long and stopped runs.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/credentials.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A Unix socket that takes connections into its backlog and never accepts them: to a client,
// a daemon that never answers.
class SilentSocket {
 public:
  explicit SilentSocket(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
    EXPECT_EQ(listen(fd_, 16), 0);
  }
  ~SilentSocket() { close(fd_); }
  std::string address() const { return "unix:" + path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// SIGSTOPs a running daemon for the object's lifetime.
class Stopped {
 public:
  explicit Stopped(pid_t pid) : pid_(pid) { EXPECT_TRUE(StopProcess(pid_)); }
  ~Stopped() { kill(pid_, SIGCONT); }

 private:
  pid_t pid_;
};

std::unique_ptr<Client> ConnectOk(ClientOptions options) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// A client of `address` with a made-up admin key: nothing it calls is ever answered anyway.
std::unique_ptr<Client> SilentClient(const SilentSocket& socket, absl::Duration call_timeout) {
  return ConnectOk({.address = socket.address(),
                    .credentials = Credentials{std::string(32, 'k'), kAdminKeyId, "test key"},
                    .call_timeout = call_timeout});
}

// Runs `call`, expecting it to fail with DEADLINE_EXCEEDED `message`, after at least `least`
// and within a few seconds of it.
template <typename Call>
void ExpectDeadline(Call call, const std::string& message, absl::Duration least) {
  absl::Time before = absl::Now();
  absl::Status status = call();
  absl::Duration took = absl::Now() - before;
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << message << ": " << status;
  EXPECT_EQ(status.message(), message);
  EXPECT_GE(took, least - absl::Milliseconds(50)) << message;
  EXPECT_LT(took, least + absl::Seconds(3)) << message;
}

TEST(ClientDeadlineTest, StatusFromADaemonThatNeverAnswers) {
  TempDir dir;
  SilentSocket silent(dir.path() + "/silent.sock");
  std::unique_ptr<Client> client = SilentClient(silent, absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  ExpectDeadline([&] { return client->Status(1).status(); }, "Status did not answer within 1s",
                 absl::Seconds(1));
}

TEST(ClientDeadlineTest, EveryCallHasOne) {
  TempDir dir;
  SilentSocket silent(dir.path() + "/silent.sock");
  const absl::Duration t = absl::Milliseconds(500);
  std::unique_ptr<Client> client = SilentClient(silent, t);
  ASSERT_NE(client, nullptr);
  v1::StartRequest start;
  start.set_target("/bin/true");
  ExpectDeadline([&] { return client->Start(start).status(); },
                 "Start did not answer within 500ms", t);
  v1::TerminateRequest terminate;
  terminate.set_id(1);
  ExpectDeadline([&] { return client->Terminate(terminate).status(); },
                 "Terminate did not answer within 500ms", t);
  ExpectDeadline([&] { return client->List(v1::StatusRequest{}).status(); },
                 "Status did not answer within 500ms", t);
  ExpectDeadline([&] { return client->Release(1); }, "Release did not answer within 500ms", t);
  v1::LogsRequest logs;
  logs.set_id(1);
  ExpectDeadline([&] { return client->Logs(logs, [](std::string_view) {}); },
                 "Logs did not answer within 500ms", t);
  // A followed stream has no deadline, but its request must still go out in time.
  logs.set_follow(true);
  ExpectDeadline([&] { return client->Logs(logs, [](std::string_view) {}); },
                 "Logs did not answer within 500ms", t);
  // So must a Watch's, a stream without a deadline.
  ExpectDeadline(
      [&] { return client->Watch(v1::WatchRequest{}, [](const v1::Event&) { return true; }); },
      "Watch did not answer within 500ms", t);
  ExpectDeadline([&] { return client->OpenSession().status(); },
                 "Session did not answer within 500ms", t);
  // Run has no deadline once started, but its start is due within the call timeout.
  ExpectDeadline([&] { return client->Run(start, [](v1::Stream, std::string_view) {}).status(); },
                 "Run did not answer within 500ms", t);
  // A Join's poll asks the daemon to answer within one call timeout, and gives it another.
  ExpectDeadline([&] { return client->Join(1).status(); }, "Join did not answer within 1s",
                 2 * t);
  ExpectDeadline([&] { return client->Join(1, absl::Milliseconds(100)).status(); },
                 "Join did not answer within 600ms", t + absl::Milliseconds(100));
}

TEST(ClientDeadlineTest, CallTimeoutMustBePositive) {
  for (absl::Duration timeout : {absl::ZeroDuration(), absl::Seconds(-1)}) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(
        {.address = "unix:/nonexistent.sock",
         .credentials = Credentials{"key", kAdminKeyId, "test key"},
         .call_timeout = timeout});
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << timeout;
  }
}

// Expects the stream running in `stream` to go on for `running`, then stops it through `stop`
// and returns how it ended (UNKNOWN when it did not end within 5 s).
absl::Status RunsOnUntilStopped(std::future<absl::Status>& stream, std::stop_source& stop,
                                absl::Duration running) {
  EXPECT_EQ(stream.wait_for(absl::ToChronoMilliseconds(running)), std::future_status::timeout)
      << "the stream ended by itself";
  stop.request_stop();
  if (stream.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "the stream did not stop when asked";
    return absl::UnknownError("still streaming");
  }
  return stream.get();
}

class ClientAgainstDaemonTest : public ::testing::Test {
 protected:
  ClientAgainstDaemonTest() : daemon_({"--shutdown-grace", "0"}) {}

  void SetUp() override { ASSERT_GT(daemon_.pid(), 0) << "proctord is not running"; }

  std::unique_ptr<Client> ClientWith(absl::Duration call_timeout) {
    return ConnectOk({.address = daemon_.address(),
                      .authkey_file = daemon_.authkey_path(),
                      .call_timeout = call_timeout});
  }

  void Kill(uint64_t id) {
    v1::TerminateRequest request;
    request.set_id(id);
    request.set_signal(SIGKILL);
    absl::StatusOr<v1::Process> killed = daemon_.client().Terminate(request);
    EXPECT_TRUE(killed.ok()) << killed.status();
  }

  TestDaemon daemon_;
};

TEST_F(ClientAgainstDaemonTest, StoppedDaemon) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  v1::Process worker = StartOk(*client, {"/bin/sleep", "60"});
  absl::StatusOr<std::unique_ptr<Session>> session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  {
    Stopped stopped(daemon_.pid());
    ExpectDeadline([&] { return client->Status(worker.id()).status(); },
                   "Status did not answer within 1s", absl::Seconds(1));
    ExpectDeadline([&] { return client->Join(worker.id()).status(); },
                   "Join did not answer within 2s", absl::Seconds(2));
    // The session's end is not acknowledged: it is cancelled after one call timeout.
    absl::Time before = absl::Now();
    session->reset();
    EXPECT_LT(absl::Now() - before, absl::Seconds(4));
  }
  absl::StatusOr<v1::Process> record = client->Status(worker.id());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  Kill(worker.id());
}

// What JoinEach passed to its sink, in order.
struct Joined {
  size_t index;
  absl::StatusOr<v1::Process> record;
};

TEST_F(ClientAgainstDaemonTest, JoinEachAnswersEachProcessAsItEndsOnOneStream) {
  // Polls of 1 s: the processes outlast several, and are asked again after each.
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  Gate first(daemon_.dir() + "/first");
  Gate second(daemon_.dir() + "/second");
  v1::Process a = StartOk(*client, {"/bin/sh", "-c", second.ShellWait() + "; exit 3"});
  v1::Process b = StartOk(*client, {"/bin/sh", "-c", first.ShellWait() + "; exit 4"});
  std::vector<Joined> joined;
  std::future<absl::Status> done = std::async(std::launch::async, [&] {
    return client->JoinEach({a.id(), 987654, b.id()}, std::nullopt,
                            [&](size_t index, absl::StatusOr<v1::Process> record) {
                              joined.push_back({index, std::move(record)});
                            });
  });
  EXPECT_EQ(done.wait_for(std::chrono::milliseconds(2500)), std::future_status::timeout)
      << "JoinEach returned before the processes ended";
  EXPECT_TRUE(first.Open());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(second.Open());
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  absl::Status status = done.get();
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(joined.size(), 3u);
  // The unknown id at once, then b (which ended first), then a.
  EXPECT_EQ(joined[0].index, 1u);
  EXPECT_TRUE(absl::IsNotFound(joined[0].record.status())) << joined[0].record.status();
  EXPECT_EQ(joined[1].index, 2u);
  ASSERT_TRUE(joined[1].record.ok()) << joined[1].record.status();
  EXPECT_EQ(joined[1].record->exitcode(), 4);
  EXPECT_EQ(joined[2].index, 0u);
  ASSERT_TRUE(joined[2].record.ok()) << joined[2].record.status();
  EXPECT_EQ(joined[2].record->exitcode(), 3);
}

TEST_F(ClientAgainstDaemonTest, JoinEachWithATimeoutGivesTheRunningRecords) {
  std::unique_ptr<Client> client = ClientWith(absl::Milliseconds(200));
  ASSERT_NE(client, nullptr);
  v1::Process sleeper = StartOk(*client, {"/bin/sleep", "60"});
  v1::Process quick = StartOk(*client, {"/bin/sh", "-c", "exit 2"});
  std::vector<Joined> joined;
  absl::Time before = absl::Now();
  absl::Status status = client->JoinEach(
      {sleeper.id(), quick.id()}, absl::Milliseconds(700),
      [&](size_t index, absl::StatusOr<v1::Process> record) {
        joined.push_back({index, std::move(record)});
      });
  absl::Duration took = absl::Now() - before;
  ASSERT_TRUE(status.ok()) << status;
  // The timeout is the whole wait, over several polls of one call timeout each.
  EXPECT_GE(took, absl::Milliseconds(700));
  EXPECT_LT(took, absl::Seconds(3));
  ASSERT_EQ(joined.size(), 2u);
  EXPECT_EQ(joined[0].index, 1u);
  EXPECT_EQ(joined[0].record->exitcode(), 2);
  EXPECT_EQ(joined[1].index, 0u);
  ASSERT_TRUE(joined[1].record.ok()) << joined[1].record.status();
  EXPECT_EQ(joined[1].record->state(), v1::STATE_RUNNING);
  Kill(sleeper.id());
}

TEST_F(ClientAgainstDaemonTest, JoinEachAgainstAStoppedDaemonEndsWithinTwoCallTimeouts) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  v1::Process sleeper = StartOk(*client, {"/bin/sleep", "60"});
  auto join_each = [&] {
    return client->JoinEach({sleeper.id()}, std::nullopt,
                            [](size_t, absl::StatusOr<v1::Process>) {});
  };
  {
    // Stopped before the stream opens: its headers are due within a call timeout.
    Stopped stopped(daemon_.pid());
    ExpectDeadline(join_each, "Joins did not answer within 1s", absl::Seconds(1));
  }
  // Stopped while a poll waits: each poll is due within its timeout and a call timeout.
  absl::Time before = absl::Now();
  std::future<absl::Status> waiting = std::async(std::launch::async, join_each);
  absl::SleepFor(absl::Milliseconds(300));
  {
    Stopped stopped(daemon_.pid());
    absl::Status status = waiting.get();
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_EQ(status.message(), "Joins did not answer within 2s");
    EXPECT_GE(absl::Now() - before, absl::Seconds(2) - absl::Milliseconds(50));
    EXPECT_LT(absl::Now() - before, absl::Seconds(5));
  }
  absl::StatusOr<v1::Process> record = client->Status(sleeper.id());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  Kill(sleeper.id());
}

TEST_F(ClientAgainstDaemonTest, JoinEachStoppedByItsCallerLeavesTheProcessesRunning) {
  v1::Process sleeper = StartOk(daemon_.client(), {"/bin/sleep", "60"});
  std::stop_source stop;
  std::jthread stopper([&] {
    absl::SleepFor(absl::Milliseconds(300));
    stop.request_stop();
  });
  absl::Status status = daemon_.client().JoinEach(
      {sleeper.id()}, std::nullopt, [](size_t, absl::StatusOr<v1::Process>) {},
      stop.get_token());
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
  EXPECT_EQ(status.message(), "Joins stopped by its caller");
  absl::StatusOr<v1::Process> record = daemon_.client().Status(sleeper.id());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  Kill(sleeper.id());
}

TEST_F(ClientAgainstDaemonTest, JoinWithoutTimeoutOutlastsManyCallTimeouts) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  Gate gate(daemon_.dir() + "/gate");
  v1::Process worker = StartOk(*client, {"/bin/sh", "-c", gate.ShellWait() + "; exit 7"});
  absl::Time before = absl::Now();
  std::future<absl::StatusOr<v1::Process>> joined =
      std::async(std::launch::async, [&] { return client->Join(worker.id()); });
  // Three and a half call timeouts: longer than any one poll and its deadline.
  EXPECT_EQ(joined.wait_for(std::chrono::milliseconds(3500)), std::future_status::timeout)
      << "Join returned before the process ended";
  EXPECT_TRUE(gate.Open());
  ASSERT_EQ(joined.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "Join did not return when the process ended";
  absl::StatusOr<v1::Process> record = joined.get();
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_EXITED);
  EXPECT_EQ(record->exitcode(), 7);
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(3500));
}

TEST_F(ClientAgainstDaemonTest, JoinTimeoutLongerThanTheCallTimeout) {
  std::unique_ptr<Client> client = ClientWith(absl::Milliseconds(500));
  ASSERT_NE(client, nullptr);
  v1::Process worker = StartOk(*client, {"/bin/sleep", "60"});
  absl::Time before = absl::Now();
  absl::StatusOr<v1::Process> record = client->Join(worker.id(), absl::Milliseconds(1600));
  absl::Duration took = absl::Now() - before;
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  EXPECT_GE(took, absl::Milliseconds(1600));
  EXPECT_LT(took, absl::Seconds(4));
  // A zero timeout is one poll, answered at once.
  before = absl::Now();
  record = client->Join(worker.id(), absl::ZeroDuration());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  EXPECT_LT(absl::Now() - before, absl::Milliseconds(500));
  // A negative one is the daemon's to refuse.
  EXPECT_EQ(client->Join(worker.id(), absl::Seconds(-1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  Kill(worker.id());
}

TEST_F(ClientAgainstDaemonTest, FollowedLogsStopWhenAsked) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  Gate gate(daemon_.dir() + "/gate");
  v1::Process worker =
      StartOk(*client, {"/bin/sh", "-c", "echo ready; " + gate.ShellWait() + "; echo late"});
  v1::LogsRequest request;
  request.set_id(worker.id());
  request.set_follow(true);
  std::mutex mu;
  std::string received;
  std::stop_source stop;
  // Longer than the call timeout: a followed stream has no deadline.
  std::future<absl::Status> followed = std::async(std::launch::async, [&] {
    return client->Logs(
        request,
        [&](std::string_view data) {
          std::lock_guard<std::mutex> lock(mu);
          received.append(data);
        },
        stop.get_token());
  });
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(mu);
    return received == "ready\n";
  }));
  absl::Status status = RunsOnUntilStopped(followed, stop, absl::Milliseconds(2500));
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_TRUE(gate.Open());
  absl::StatusOr<v1::Process> ended = client->Join(worker.id());
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->exitcode(), 0);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(received, "ready\n");
}

// What a Run passed on, in the order it came.
struct RunOutcome {
  absl::StatusOr<v1::Process> exited;
  std::vector<std::string> order;  // "started", "stdout", "stderr"
  std::optional<v1::Process> started;
  std::string out;
  std::string err;
};

RunOutcome RunWith(Client& client, const std::vector<std::string>& argv,
                   const std::function<void(RunOutcome&)>& on_output = nullptr,
                   std::stop_token stop = {}) {
  v1::StartRequest request;
  request.set_target(argv[0]);
  for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
  RunOutcome outcome;
  outcome.exited = client.Run(
      request,
      [&](v1::Stream stream, std::string_view data) {
        const bool err = stream == v1::STREAM_STDERR;
        outcome.order.push_back(err ? "stderr" : "stdout");
        (err ? outcome.err : outcome.out).append(data);
        if (on_output) on_output(outcome);
      },
      [&](const v1::Process& started) {
        outcome.order.push_back("started");
        outcome.started = started;
      },
      stop);
  return outcome;
}

TEST_F(ClientAgainstDaemonTest, RunPassesOnBothStreamsInOrderAndWhole) {
  // Lines on both streams, then more than one chunk (64 KiB) at once on stdout.
  RunOutcome run = RunWith(
      daemon_.client(),
      {"/bin/sh", "-c",
       "i=1; while [ $i -le 500 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; "
       "head -c 200000 /dev/zero | tr '\\0' x; exit 0"});
  ASSERT_TRUE(run.exited.ok()) << run.exited.status();
  std::string out, err;
  for (int i = 1; i <= 500; ++i) {
    absl::StrAppend(&out, "out", i, "\n");
    absl::StrAppend(&err, "err", i, "\n");
  }
  out.append(200000, 'x');
  EXPECT_EQ(run.out, out);
  EXPECT_EQ(run.err, err);
  ASSERT_FALSE(run.order.empty());
  EXPECT_EQ(run.order.front(), "started");
  EXPECT_EQ(std::count(run.order.begin(), run.order.end(), "started"), 1);
  ASSERT_TRUE(run.started.has_value());
  // The record as Start answers it: running, or already ended when the exit was known before
  // the start was answered (a fast worker on a busy host).
  EXPECT_GT(run.started->pid(), 1);
  EXPECT_THAT(run.started->state(), ::testing::AnyOf(v1::STATE_RUNNING, v1::STATE_EXITED));
  EXPECT_EQ(run.exited->id(), run.started->id());
  EXPECT_EQ(run.exited->state(), v1::STATE_EXITED);
  EXPECT_EQ(run.exited->exitcode(), 0);
}

TEST_F(ClientAgainstDaemonTest, RunEndsWithTheExitRecord) {
  RunOutcome three = RunWith(daemon_.client(), {"/bin/sh", "-c", "exit 3"});
  ASSERT_TRUE(three.exited.ok()) << three.exited.status();
  EXPECT_EQ(three.exited->exitcode(), 3);
  EXPECT_EQ(three.exited->signal(), 0);
  RunOutcome killed = RunWith(daemon_.client(), {"/bin/sh", "-c", "kill -TERM $$"});
  ASSERT_TRUE(killed.exited.ok()) << killed.exited.status();
  EXPECT_EQ(killed.exited->exitcode(), -SIGTERM);
  EXPECT_EQ(killed.exited->signal(), SIGTERM);
  // The record is the one Join gives.
  absl::StatusOr<v1::Process> joined = daemon_.client().Join(killed.exited->id());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->exitcode(), killed.exited->exitcode());
  EXPECT_EQ(joined->end_time().seconds(), killed.exited->end_time().seconds());
}

TEST_F(ClientAgainstDaemonTest, RunOfAFailedExecIsTheCallsErrorAndLeavesNoRecord) {
  RunOutcome run = RunWith(daemon_.client(), {daemon_.dir() + "/no-such-program"});
  EXPECT_EQ(run.exited.status().code(), absl::StatusCode::kNotFound) << run.exited.status();
  EXPECT_THAT(run.exited.status().message(), ::testing::HasSubstr("no-such-program"));
  EXPECT_THAT(run.order, IsEmpty());
  absl::StatusOr<std::vector<v1::Process>> all = daemon_.client().List(v1::StatusRequest{});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(*all, IsEmpty());
}

TEST_F(ClientAgainstDaemonTest, RunOfABadRequestIsInvalidArgument) {
  RunOutcome run = RunWith(daemon_.client(), {""});
  EXPECT_EQ(run.exited.status().code(), absl::StatusCode::kInvalidArgument)
      << run.exited.status();
  EXPECT_THAT(run.exited.status().message(), ::testing::HasSubstr("target"));
  EXPECT_THAT(run.order, IsEmpty());
}

TEST_F(ClientAgainstDaemonTest, RunOutlastsManyCallTimeouts) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  Gate gate(daemon_.dir() + "/gate");
  absl::Time before = absl::Now();
  std::future<RunOutcome> run = std::async(std::launch::async, [&] {
    return RunWith(*client, {"/bin/sh", "-c", "echo ready; " + gate.ShellWait() + "; exit 7"});
  });
  // Three and a half call timeouts of a quiet stream: Join polls ask after the process.
  EXPECT_EQ(run.wait_for(std::chrono::milliseconds(3500)), std::future_status::timeout)
      << "Run returned before the process ended";
  EXPECT_TRUE(gate.Open());
  ASSERT_EQ(run.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "Run did not return when the process ended";
  RunOutcome outcome = run.get();
  ASSERT_TRUE(outcome.exited.ok()) << outcome.exited.status();
  EXPECT_EQ(outcome.exited->exitcode(), 7);
  EXPECT_EQ(outcome.out, "ready\n");
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(3500));
}

TEST_F(ClientAgainstDaemonTest, RunAgainstAStoppedDaemonEndsWithItsJoinPoll) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  absl::Time stopped_at;
  RunOutcome run = RunWith(*client, {"/bin/sh", "-c", "echo ready; exec /bin/sleep 60"},
                           [&](RunOutcome& so_far) {
                             if (so_far.out != "ready\n") return;
                             EXPECT_TRUE(StopProcess(daemon_.pid()));
                             stopped_at = absl::Now();
                           });
  absl::Duration took = absl::Now() - stopped_at;
  kill(daemon_.pid(), SIGCONT);
  ASSERT_TRUE(run.started.has_value());
  EXPECT_EQ(run.exited.status().code(), absl::StatusCode::kDeadlineExceeded)
      << run.exited.status();
  EXPECT_EQ(run.exited.status().message(), "Join did not answer within 2s");
  // A quiet call timeout, then the poll's two.
  EXPECT_GE(took, absl::Seconds(3) - absl::Milliseconds(50));
  EXPECT_LT(took, absl::Seconds(6));
  // The worker was left running.
  absl::StatusOr<v1::Process> record = client->Status(run.started->id());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  Kill(run.started->id());
}

TEST_F(ClientAgainstDaemonTest, RunStoppedByItsCallerLeavesTheProcessRunning) {
  std::stop_source stop;
  RunOutcome run =
      RunWith(daemon_.client(), {"/bin/sh", "-c", "echo ready; exec /bin/sleep 60"},
              [&](RunOutcome&) { stop.request_stop(); }, stop.get_token());
  EXPECT_EQ(run.exited.status().code(), absl::StatusCode::kCancelled) << run.exited.status();
  EXPECT_EQ(run.exited.status().message(), "Run stopped by its caller");
  ASSERT_TRUE(run.started.has_value());
  absl::StatusOr<v1::Process> record = daemon_.client().Status(run.started->id());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  Kill(run.started->id());
}

// What a Watch handed to its sink, and how it ended.
struct Watched {
  absl::Status status;
  std::vector<v1::Event> events;
};

// Watches with `request` until `last` holds for an event (which is kept), or stops the watch
// after `limit`.
Watched WatchUntil(Client& client, const v1::WatchRequest& request,
                   const std::function<bool(const v1::Event&)>& last,
                   absl::Duration limit = absl::Seconds(10)) {
  Watched watched;
  std::stop_source stop;
  std::jthread timer([&](std::stop_token done) {
    std::mutex mu;
    std::condition_variable_any wake;
    std::unique_lock<std::mutex> lock(mu);
    if (!wake.wait_for(lock, done, absl::ToChronoSeconds(limit), [] { return false; })) {
      if (!done.stop_requested()) stop.request_stop();
    }
  });
  watched.status = client.Watch(
      request,
      [&](const v1::Event& event) {
        watched.events.push_back(event);
        return !last(event);
      },
      stop.get_token());
  return watched;
}

std::function<bool(const v1::Event&)> IsEvent(v1::EventType type, uint64_t id) {
  return [type, id](const v1::Event& e) {
    return e.type() == type && e.has_process() && e.process().id() == id;
  };
}

v1::WatchRequest Since(uint64_t cursor) {
  v1::WatchRequest request;
  request.set_since(cursor);
  return request;
}

TEST_F(ClientAgainstDaemonTest, WatchFromAListingSeesExactlyWhatCameAfter) {
  Client& client = daemon_.client();
  v1::Process a = StartOk(client, {"/bin/sleep", "60"});
  uint64_t cursor = 0;
  absl::StatusOr<std::vector<v1::Process>> listed = client.List(v1::StatusRequest{}, &cursor);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().id(), a.id());
  EXPECT_GT(cursor, 0u) << "A's start is an event the listing reflects";
  v1::Process b = StartOk(client, {"/bin/sh", "-c", "exit 5"});
  ASSERT_TRUE(client.Join(b.id()).ok());

  Watched watched = WatchUntil(client, Since(cursor), IsEvent(v1::EVENT_EXITED, b.id()));
  // The sink said it had enough: not an error.
  EXPECT_TRUE(watched.status.ok()) << watched.status;
  ASSERT_EQ(watched.events.size(), 2u);
  const v1::Event& started = watched.events[0];
  EXPECT_EQ(started.cursor(), cursor + 1) << "nothing after the listing is missed";
  EXPECT_EQ(started.type(), v1::EVENT_STARTED);
  EXPECT_EQ(started.process().id(), b.id());
  EXPECT_EQ(started.process().state(), v1::STATE_RUNNING);
  EXPECT_TRUE(started.has_time());
  const v1::Event& exited = watched.events[1];
  EXPECT_GT(exited.cursor(), started.cursor());
  EXPECT_EQ(exited.process().state(), v1::STATE_EXITED);
  EXPECT_EQ(exited.process().exitcode(), 5);
  for (const v1::Event& e : watched.events) {
    EXPECT_NE(e.process().id(), a.id()) << "A's start came before the listing";
  }
  Kill(a.id());
}

TEST_F(ClientAgainstDaemonTest, WatchFollowsLiveEventsUntilStopped) {
  std::unique_ptr<Client> client = ClientWith(absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  uint64_t cursor = 0;
  ASSERT_TRUE(client->List(v1::StatusRequest{}, &cursor).ok());
  std::mutex mu;
  std::vector<v1::Event> events;
  std::stop_source stop;
  std::future<absl::Status> watching = std::async(std::launch::async, [&] {
    return client->Watch(
        Since(cursor),
        [&](const v1::Event& e) {
          std::lock_guard<std::mutex> lock(mu);
          events.push_back(e);
          return true;
        },
        stop.get_token());
  });
  v1::Process worker = StartOk(*client, {"/bin/true"});
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(mu);
    return std::any_of(events.begin(), events.end(), IsEvent(v1::EVENT_EXITED, worker.id()));
  }));
  // Longer than the call timeout: the stream has no deadline.
  absl::Status status = RunsOnUntilStopped(watching, stop, absl::Milliseconds(1500));
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ(status.message(), "Watch stopped by its caller");
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(IsEvent(v1::EVENT_STARTED, worker.id())(events[0]));
}

TEST_F(ClientAgainstDaemonTest, WatchFromACursorAheadIsOutOfRange) {
  Client& client = daemon_.client();
  uint64_t cursor = 0;
  ASSERT_TRUE(client.List(v1::StatusRequest{}, &cursor).ok());
  bool called = false;
  absl::Status status = client.Watch(Since(cursor + 1000), [&](const v1::Event&) {
    called = true;
    return true;
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  EXPECT_FALSE(called);
}

TEST_F(ClientAgainstDaemonTest, AWorkersWatchSeesOnlyItsSubtree) {
  Client& admin = daemon_.client();
  Gate gate(daemon_.dir() + "/gate");
  v1::Process worker = StartOk(admin, {"/bin/sh", "-c", gate.ShellWait()});
  v1::Process outsider = StartOk(admin, {"/bin/true"});
  ASSERT_TRUE(admin.Join(outsider.id()).ok());
  absl::StatusOr<std::unique_ptr<Session>> session = admin.OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<Credentials> key = WorkerCredentials(worker.pid());
  ASSERT_TRUE(key.ok()) << key.status();
  std::unique_ptr<Client> as_worker =
      ConnectOk({.address = daemon_.address(), .credentials = *key});
  ASSERT_NE(as_worker, nullptr);
  // Started with the worker's key: the worker's child.
  v1::Process child = StartOk(*as_worker, {"/bin/true"});
  EXPECT_EQ(child.parent_id(), worker.id());
  ASSERT_TRUE(as_worker->Join(child.id()).ok());

  Watched watched = WatchUntil(*as_worker, Since(0), IsEvent(v1::EVENT_EXITED, child.id()));
  EXPECT_TRUE(watched.status.ok()) << watched.status;
  std::vector<std::pair<v1::EventType, uint64_t>> seen;
  for (const v1::Event& e : watched.events) {
    EXPECT_TRUE(e.has_process()) << "a session event: " << e.ShortDebugString();
    seen.emplace_back(e.type(), e.process().id());
  }
  EXPECT_THAT(seen, ElementsAre(std::pair(v1::EVENT_STARTED, worker.id()),
                                std::pair(v1::EVENT_STARTED, child.id()),
                                std::pair(v1::EVENT_EXITED, child.id())));
  // The admin key sees it all, the outsider and the session among it.
  Watched all = WatchUntil(admin, Since(0), IsEvent(v1::EVENT_EXITED, child.id()));
  EXPECT_TRUE(all.status.ok()) << all.status;
  EXPECT_TRUE(std::any_of(all.events.begin(), all.events.end(),
                          IsEvent(v1::EVENT_EXITED, outsider.id())));
  EXPECT_TRUE(std::any_of(all.events.begin(), all.events.end(), [](const v1::Event& e) {
    return e.type() == v1::EVENT_SESSION_OPENED && e.session() != 0 && !e.has_process();
  }));
  EXPECT_TRUE(gate.Open());
  ASSERT_TRUE(admin.Join(worker.id()).ok());
}

TEST(CredentialsTest, KeyFileOthersCanReadComesWithAWarning) {
  TempDir dir;
  std::string path = dir.path() + "/key";
  ASSERT_TRUE(WriteFile(path, RandomBytes(kAuthkeyBytes)));
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  absl::StatusOr<Credentials> loose = FindCredentials(path);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_THAT(loose->warnings,
              ElementsAre(absl::StrCat("key file ", path,
                                       " is readable by others (mode 0644); chmod 600 ", path)));
  ASSERT_EQ(chmod(path.c_str(), 0620), 0);
  loose = FindCredentials(path);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_THAT(loose->warnings,
              ElementsAre(absl::StrCat("key file ", path,
                                       " is accessible by others (mode 0620); chmod 600 ", path)));
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  absl::StatusOr<Credentials> tight = FindCredentials(path);
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_THAT(tight->warnings, IsEmpty());
}

}  // namespace
}  // namespace proctor::testing
