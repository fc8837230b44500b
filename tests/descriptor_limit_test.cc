// proctord under a low descriptor limit (RLIMIT_NOFILE): it raises its soft limit to the hard
// one, refuses Starts before its workers' pidfds could use up what connections need, and
// keeps taking connections, even after they alone have used up every descriptor.
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

// The daemon's limit in these tests: half of it (at least 128) is kept for connections, so
// 200 leaves room for 72 workers.
constexpr uint64_t kLimit = 200;
constexpr size_t kWorkersAllowed = 72;

// proctord's descriptor limit can be lowered for it, never raised above ours.
bool HardLimitAllows(uint64_t limit) {
  rlimit ours{};
  return getrlimit(RLIMIT_NOFILE, &ours) == 0 && ours.rlim_max >= limit;
}

#define REQUIRE_HARD_LIMIT(limit)                                               \
  if (!HardLimitAllows(limit)) GTEST_SKIP() << "our hard RLIMIT_NOFILE is below " << (limit)

absl::StatusOr<v1::Process> StartSleeper(Client& client) {
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("1000");
  return client.Start(request);
}

// Whether a channel of its own (not one shared with the other clients of this process)
// connects to `address` within `limit`: the daemon has taken the connection and gRPC has
// finished its handshake.
bool ConnectsWithin(const std::string& address, absl::Duration limit) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  return channel->WaitForConnected(absl::ToChronoTime(absl::Now() + limit));
}

// `proctor status ID` in a process of its own, so on a connection of its own; killed if it
// takes longer than 30 s.
CommandResult CliStatus(TestDaemon& daemon, uint64_t id) {
  return RunCommand({"timeout", "30", PROCTOR_CLI_PATH, "--address", daemon.address(), "status",
                     absl::StrCat(id)},
                    {"PROCTOR_AUTHKEY_FILE=" + daemon.authkey_path()});
}

void TerminateAll(Client& client, const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    v1::TerminateRequest request;
    request.set_id(id);
    absl::StatusOr<v1::Process> ended = client.Terminate(request);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_TRUE(ended->has_exitcode()) << "still running: " << id;
  }
}

TEST(DescriptorLimitTest, RaisesTheSoftLimitToTheHardOne) {
  REQUIRE_HARD_LIMIT(kLimit);
  TestDaemon daemon({}, {{kLimit / 2, kLimit}});
  EXPECT_THAT(daemon.Log(), HasSubstr("descriptors: 200 (soft limit raised from 100)"));
  std::string limits = ReadFile(absl::StrCat("/proc/", daemon.pid(), "/limits"));
  EXPECT_THAT(limits, ContainsRegex("Max open files +200 +200 "));
}

TEST(DescriptorLimitTest, StartsAreRefusedBeforeDescriptorsRunShortAndWorkAgainLater) {
  REQUIRE_HARD_LIMIT(kLimit);
  TestDaemon daemon({}, {{kLimit, kLimit}});
  EXPECT_THAT(daemon.Log(), HasSubstr("descriptors: 200 (the hard limit)"));
  EXPECT_THAT(daemon.Log(), HasSubstr("--max-processes lowered from 4096 to 72"));
  Client& client = daemon.client();

  std::vector<uint64_t> ids;
  absl::Status refused;
  for (size_t i = 0; i <= kLimit && refused.ok(); ++i) {
    absl::StatusOr<v1::Process> started = StartSleeper(client);
    if (started.ok()) {
      ids.push_back(started->id());
    } else {
      refused = started.status();
    }
  }
  EXPECT_EQ(ids.size(), kWorkersAllowed);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("descriptor limit allows (RLIMIT_NOFILE 200"));
  EXPECT_THAT(refused.message(), HasSubstr("raise LimitNOFILE= or ulimit -n"));

  // The daemon still answers: on the connection it has, on new ones from this process, and
  // from another process.
  ASSERT_FALSE(ids.empty());
  EXPECT_TRUE(client.Status(ids.front()).ok());
  for (int i = 0; i < 20; ++i) {
    EXPECT_TRUE(ConnectsWithin(daemon.address(), absl::Seconds(10))) << "connection " << i;
  }
  CommandResult status = CliStatus(daemon, ids.back());
  EXPECT_EQ(status.status, 0) << status.err;

  TerminateAll(client, ids);
  absl::StatusOr<v1::Process> again = StartSleeper(client);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(ConnectsWithin(daemon.address(), absl::Seconds(10)));
  status = CliStatus(daemon, again->id());
  EXPECT_EQ(status.status, 0) << status.err;
  TerminateAll(client, {again->id()});
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("Failed accept4")));
}

TEST(DescriptorLimitTest, AMaxProcessesWithinTheBudgetIsKept) {
  REQUIRE_HARD_LIMIT(kLimit);
  TestDaemon daemon({"--max-processes", "2"}, {{kLimit, kLimit}});
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("--max-processes lowered")));
  std::vector<uint64_t> ids;
  for (int i = 0; i < 2; ++i) ids.push_back(StartOk(daemon.client(), {"sleep", "1000"}).id());
  absl::StatusOr<v1::Process> refused = StartSleeper(daemon.client());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("limit --max-processes=2 reached"));
  TerminateAll(daemon.client(), ids);
}

// Connections alone can use up the descriptors: then they wait in the listen backlog, and
// the daemon takes them once descriptors are free again. (gRPC 1.51's own listener stopped
// accepting for good on the first EMFILE.)
TEST(DescriptorLimitTest, ConnectionsAreTakenAgainOnceDescriptorsAreFree) {
  REQUIRE_HARD_LIMIT(kLimit);
  TestDaemon daemon({}, {{kLimit, kLimit}});
  const std::string path = daemon.address().substr(std::strlen("unix:"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);

  // Connections that never say a word, more than the daemon has descriptors for: those it
  // cannot take stay in the backlog.
  std::vector<int> idle;
  for (uint64_t i = 0; i < kLimit + 50; ++i) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    idle.push_back(fd);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << "connection " << i << ": " << std::strerror(errno);
  }
  ASSERT_TRUE(WaitFor(
      [&] { return daemon.Log().find("new connections wait in the listen backlog") !=
                   std::string::npos; },
      absl::Seconds(10)))
      << daemon.Log();
  EXPECT_THAT(daemon.Log(), HasSubstr("Too many open files"));
  // Nothing new is served meanwhile; the connection that tries stays in the backlog.
  EXPECT_FALSE(ConnectsWithin(daemon.address(), absl::Milliseconds(500)));

  for (int fd : idle) close(fd);
  EXPECT_TRUE(ConnectsWithin(daemon.address(), absl::Seconds(10)));
  EXPECT_TRUE(WaitFor(
      [&] { return daemon.Log().find("accepting connections again") != std::string::npos; }));
  v1::Process worker = StartOk(daemon.client(), {"sleep", "1000"});
  CommandResult status = CliStatus(daemon, worker.id());
  EXPECT_EQ(status.status, 0) << status.err;
  TerminateAll(daemon.client(), {worker.id()});
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("Failed accept4")));
}

}  // namespace
}  // namespace proctor::testing
