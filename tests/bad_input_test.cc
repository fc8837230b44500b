// Bad requests get the right status code and a message a person can act on; the daemon
// keeps serving and keeps no record of the failed attempt.
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

const std::string kNul("a\0b", 3);

class BadInputTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // Still serving, and nothing recorded for the refused requests.
    absl::StatusOr<std::vector<v1::Process>> all = client_.List(v1::StatusRequest{});
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->size(), recorded_);
    v1::Process ok = StartOk(client_, {"/bin/true"});
    EXPECT_EQ(client_.Join(ok.id())->exitcode(), 0);
  }

  void ExpectStartError(v1::StartRequest request, absl::StatusCode code,
                        const std::string& message) {
    absl::StatusOr<v1::Process> started = client_.Start(request);
    EXPECT_EQ(started.status().code(), code) << started.status();
    EXPECT_THAT(started.status().message(), HasSubstr(message));
  }

  static v1::StartRequest Request(const std::string& target) {
    v1::StartRequest request;
    request.set_target(target);
    return request;
  }

  TestDaemon daemon_;
  Client& client_ = daemon_.client();
  TempDir tmp_;
  size_t recorded_ = 0;
};

TEST_F(BadInputTest, EmptyTarget) {
  ExpectStartError(Request(""), absl::StatusCode::kInvalidArgument, "target is empty");
}

TEST_F(BadInputTest, TargetThatDoesNotExist) {
  ExpectStartError(Request("/no/such/program"), absl::StatusCode::kNotFound,
                   "target /no/such/program: No such file or directory");
}

TEST_F(BadInputTest, BareNameNotOnPath) {
  ExpectStartError(Request("no-such-program-anywhere"), absl::StatusCode::kNotFound,
                   "not found on PATH");
}

TEST_F(BadInputTest, TargetThatIsADirectory) {
  ExpectStartError(Request(tmp_.path()), absl::StatusCode::kInvalidArgument, "is a directory");
}

TEST_F(BadInputTest, TargetWithoutExecutePermission) {
  std::string path = tmp_.path() + "/script";
  ASSERT_TRUE(WriteFile(path, "#!/bin/sh\necho hi\n"));
  chmod(path.c_str(), 0644);
  ExpectStartError(Request(path), absl::StatusCode::kPermissionDenied, "is not executable");
}

TEST_F(BadInputTest, NulByteInTarget) {
  ExpectStartError(Request("/bin/" + kNul), absl::StatusCode::kInvalidArgument,
                   "target contains a NUL byte");
}

TEST_F(BadInputTest, NulByteInArgs) {
  v1::StartRequest request = Request("/bin/echo");
  request.add_args("fine");
  request.add_args(kNul);
  ExpectStartError(request, absl::StatusCode::kInvalidArgument, "args[1] contains a NUL byte");
}

TEST_F(BadInputTest, NulByteInEnv) {
  v1::StartRequest request = Request("/bin/true");
  request.add_env("KEY=" + kNul);
  ExpectStartError(request, absl::StatusCode::kInvalidArgument, "env[0] contains a NUL byte");
}

TEST_F(BadInputTest, NulByteInCwd) {
  v1::StartRequest request = Request("/bin/true");
  request.set_cwd("/tmp/" + kNul);
  ExpectStartError(request, absl::StatusCode::kInvalidArgument, "cwd contains a NUL byte");
}

TEST_F(BadInputTest, EnvEntryWithoutEquals) {
  v1::StartRequest request = Request("/bin/true");
  request.add_env("JUSTANAME");
  ExpectStartError(request, absl::StatusCode::kInvalidArgument,
                   "env entry \"JUSTANAME\" is not KEY=VALUE");
}

TEST_F(BadInputTest, CwdThatDoesNotExist) {
  v1::StartRequest request = Request("/bin/true");
  request.set_cwd("/no/such/dir");
  ExpectStartError(request, absl::StatusCode::kInvalidArgument,
                   "cwd /no/such/dir: No such file or directory");
}

TEST_F(BadInputTest, NameOver256Bytes) {
  v1::StartRequest request = Request("/bin/true");
  request.set_name(std::string(257, 'x'));
  ExpectStartError(request, absl::StatusCode::kInvalidArgument, "the limit is 256");
}

TEST_F(BadInputTest, ArgsLargerThanArgMax) {
  v1::StartRequest request = Request("/bin/true");
  long arg_max = sysconf(_SC_ARG_MAX);
  for (long total = 0; total <= arg_max; total += 100'000) request.add_args(std::string(100'000, 'a'));
  ExpectStartError(request, absl::StatusCode::kInvalidArgument,
                   absl::StrCat("more than the system's ARG_MAX of ", arg_max));
}

TEST_F(BadInputTest, UnknownIdInEveryCall) {
  const std::string message = "no process with id 424242";
  EXPECT_EQ(client_.Status(424242).status().message(), message);
  EXPECT_EQ(client_.Join(424242).status().message(), message);
  v1::TerminateRequest terminate;
  terminate.set_id(424242);
  EXPECT_EQ(client_.Terminate(terminate).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_.Release(424242).code(), absl::StatusCode::kNotFound);
  v1::LogsRequest logs;
  logs.set_id(424242);
  absl::Status streamed = client_.Logs(logs, [](std::string_view) {});
  EXPECT_EQ(streamed.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(streamed.message(), message);
}

class BadInputOnRunningTest : public BadInputTest {
 protected:
  void SetUp() override {
    running_ = StartOk(client_, {"sleep", "100"});
    recorded_ = 1;
  }
  void TearDown() override {
    v1::TerminateRequest kill;
    kill.set_id(running_.id());
    kill.set_signal(9);
    ASSERT_TRUE(client_.Terminate(kill).ok());
    BadInputTest::TearDown();
    recorded_ = 2;
  }
  v1::TerminateRequest Terminate(int sig) {
    v1::TerminateRequest request;
    request.set_id(running_.id());
    request.set_signal(sig);
    return request;
  }
  v1::Process running_;
};

TEST_F(BadInputOnRunningTest, NegativeJoinTimeout) {
  absl::StatusOr<v1::Process> joined = client_.Join(running_.id(), absl::Seconds(-1));
  EXPECT_EQ(joined.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(joined.status().message(), HasSubstr("timeout -1s is negative"));
}

TEST_F(BadInputOnRunningTest, NegativeGrace) {
  v1::TerminateRequest request = Terminate(15);
  *request.mutable_grace() = TimeUtil::SecondsToDuration(-2);
  absl::StatusOr<v1::Process> ended = client_.Terminate(request);
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ended.status().message(), HasSubstr("grace -2s is negative"));
}

TEST_F(BadInputOnRunningTest, NegativeSignal) {
  absl::StatusOr<v1::Process> ended = client_.Terminate(Terminate(-9));
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ended.status().message(), HasSubstr("signal -9 is negative"));
}

TEST_F(BadInputOnRunningTest, SignalAboveTheMaximum) {
  absl::StatusOr<v1::Process> ended = client_.Terminate(Terminate(65));
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ended.status().message(), HasSubstr("signal 65 is above the maximum 64"));
}

TEST_F(BadInputOnRunningTest, SignalZeroFromTheCli) {
  // Over the API, 0 means "the default" (SIGTERM); spelled out by a person it is an error.
  CommandResult result = daemon_.Cli({"terminate", absl::StrCat(running_.id()), "--signal", "0"});
  EXPECT_EQ(result.status, 2);
  EXPECT_THAT(result.err, HasSubstr("signal 0"));
  EXPECT_TRUE(IsAlive(running_.pid()));
}

TEST_F(BadInputOnRunningTest, UnknownSignalName) {
  CommandResult result =
      daemon_.Cli({"terminate", absl::StrCat(running_.id()), "--signal", "SIGBOGUS"});
  EXPECT_EQ(result.status, 2);
  EXPECT_THAT(result.err, HasSubstr("unknown signal \"SIGBOGUS\""));
  EXPECT_TRUE(IsAlive(running_.pid()));
}

}  // namespace
}  // namespace proctor::testing
