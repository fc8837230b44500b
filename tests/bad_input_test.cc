// Bad requests get the right status code and a message a person can act on; the daemon
// keeps serving and keeps no record of the failed attempt. That holds for requests no client
// of ours would send too: bytes that are not the request message, Durations outside their own
// rules, numbers that name no value of their enum (sent as raw bytes with a generic stub), and
// a flood of calls without a key, which must not grow the daemon's log without bound.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proctor/v1/proctor.grpc.pb.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::MethodDescriptor;
using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;
using ::testing::Not;

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

// ------------------------------------------------------------------------------------------
// Requests as bytes: what a client without our stubs may send

const google::protobuf::ServiceDescriptor& ProctorDescriptor() {
  return *google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      v1::Proctor::service_full_name());
}

// One call of a method with exactly `body` as its request (or no message at all), signed with
// `key` as the admin unless `key` is empty. Every method is called as a stream, which is the
// same on the wire: one message, then a half-close.
class RawCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RawCall(grpc::GenericStub& stub, const MethodDescriptor& method,
          const std::optional<std::string>& body, const std::string& key,
          std::chrono::milliseconds deadline = std::chrono::seconds(30)) {
    context_.set_deadline(std::chrono::system_clock::now() + deadline);
    if (!key.empty()) {
      context_.AddMetadata(kAuthMetadataKey, CallCredential::Make(key, kAdminKeyId, method.name(),
                                                                  absl::ToUnixMillis(absl::Now()))
                                                 .Format());
    }
    stub.PrepareBidiStreamingCall(
        &context_, absl::StrCat("/", method.service()->full_name(), "/", method.name()),
        grpc::StubOptions(), this);
    if (body.has_value()) {
      grpc::Slice slice(*body);
      request_ = grpc::ByteBuffer(&slice, 1);
      StartWriteLast(&request_, grpc::WriteOptions());
    } else {
      StartWritesDone();
    }
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (ok) StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override { done_.set_value(status); }

  std::future<grpc::Status> Result() { return done_.get_future(); }

 private:
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  std::promise<grpc::Status> done_;
};

// A field of a method's request.
struct RequestField {
  const MethodDescriptor* method;
  const FieldDescriptor* field;
  std::string name() const { return absl::StrCat(method->name(), ".", field->name()); }
};

// The top-level fields of every request of the service that `pick` picks.
std::vector<RequestField> RequestFields(const std::function<bool(const FieldDescriptor&)>& pick) {
  std::vector<RequestField> fields;
  const google::protobuf::ServiceDescriptor& service = ProctorDescriptor();
  for (int i = 0; i < service.method_count(); ++i) {
    const google::protobuf::Descriptor& request = *service.method(i)->input_type();
    for (int f = 0; f < request.field_count(); ++f) {
      if (pick(*request.field(f))) fields.push_back({service.method(i), request.field(f)});
    }
  }
  return fields;
}

std::vector<std::string> Names(const std::vector<RequestField>& fields) {
  std::vector<std::string> names;
  for (const RequestField& field : fields) names.push_back(field.name());
  return names;
}

class RawBadInputTest : public BadInputTest {
 protected:
  grpc::Status Call(const MethodDescriptor& method, const std::optional<std::string>& body,
                    bool with_key = true) {
    RawCall call(stub_, method, body, with_key ? admin_key_ : "");
    return call.Result().get();
  }

  // Sends `request` to `method` and expects INVALID_ARGUMENT saying each of `words`.
  void ExpectInvalid(const MethodDescriptor& method, const google::protobuf::Message& request,
                     const std::vector<std::string>& words) {
    SCOPED_TRACE(absl::StrCat(method.name(), " with ", request.ShortDebugString()));
    grpc::Status status = Call(method, request.SerializeAsString());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    for (const std::string& word : words) EXPECT_THAT(status.error_message(), HasSubstr(word));
  }

  static std::unique_ptr<google::protobuf::Message> NewRequest(const MethodDescriptor& method) {
    return std::unique_ptr<google::protobuf::Message>(
        google::protobuf::MessageFactory::generated_factory()
            ->GetPrototype(method.input_type())
            ->New());
  }

  std::string admin_key_ = ReadKeyFile(daemon_.authkey_path(), false).value_or("");
  grpc::GenericStub stub_{
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials())};
};

// gRPC's callback API, left to parse requests itself, answers bytes that do not parse with
// UNIMPLEMENTED and an empty message; proctord takes the bytes and answers for itself.
TEST_F(RawBadInputTest, ABodyThatIsNotTheRequestMessageIsInvalidArgument) {
  const google::protobuf::ServiceDescriptor& service = ProctorDescriptor();
  ASSERT_GE(service.method_count(), 7);
  // A field tag with a wire type that does not exist, and a string field (StartRequest.target,
  // StatusRequest.name ...) that is not UTF-8: neither parses as any of our requests.
  const std::string not_protobuf("\xff\xff\xff\xff\x0f", 5);
  for (int i = 0; i < service.method_count(); ++i) {
    const MethodDescriptor& method = *service.method(i);
    SCOPED_TRACE(method.full_name());
    grpc::Status status = Call(method, not_protobuf);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("the request body (5 bytes) is not a valid ",
                                       method.input_type()->full_name())));
  }
  const std::string bad_utf8_target("\x0a\x02\xc3\x28", 4);  // field 1, 2 bytes, not UTF-8
  grpc::Status status = Call(*service.FindMethodByName("Start"), bad_utf8_target);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("not a valid proctor.v1.StartRequest"));
}

TEST_F(RawBadInputTest, AnUnaryCallWithoutARequestIsInvalidArgument) {
  const MethodDescriptor& status_method = *ProctorDescriptor().FindMethodByName("Status");
  grpc::Status status = Call(status_method, std::nullopt);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("carries no proctor.v1.StatusRequest"));
}

// Without a key, nothing is said about the request: the caller learns only that it needs one.
TEST_F(RawBadInputTest, ABadBodyWithoutAKeyIsStillUnauthenticated) {
  grpc::Status status = Call(*ProctorDescriptor().FindMethodByName("Start"),
                             std::string("\xff\xff", 2), /*with_key=*/false);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  EXPECT_THAT(status.error_message(), Not(HasSubstr("StartRequest")));
}

// The one case gRPC still answers itself, before any handler runs: a body over its receive
// limit (4 MiB by default) gets RESOURCE_EXHAUSTED from gRPC, and the daemon serves on.
TEST_F(RawBadInputTest, ABodyOverGrpcsLimitIsRefusedByGrpc) {
  grpc::Status status =
      Call(*ProctorDescriptor().FindMethodByName("Start"), std::string(5 * 1024 * 1024, 'x'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("larger than max"));
}

// Every enum field of every request, given a number its enum does not define (Status's state
// = 7 and Logs's stream = 9 among them).
TEST_F(RawBadInputTest, UnknownEnumValuesAreInvalidArgumentNamingTheField) {
  const std::vector<RequestField> enums = RequestFields(
      [](const FieldDescriptor& field) { return field.type() == FieldDescriptor::TYPE_ENUM; });
  EXPECT_THAT(Names(enums), ::testing::IsSupersetOf({"Status.state", "Logs.stream"}));
  for (const auto& [method, field] : enums) {
    const google::protobuf::EnumDescriptor& type = *field->enum_type();
    int largest = 0;
    for (int v = 0; v < type.value_count(); ++v)
      largest = std::max(largest, type.value(v)->number());
    for (int value : {7, 9, largest + 1, -1}) {
      if (type.FindValueByNumber(value) != nullptr) continue;
      std::unique_ptr<google::protobuf::Message> request = NewRequest(*method);
      const google::protobuf::Reflection& reflection = *request->GetReflection();
      if (field->is_repeated()) {
        reflection.AddEnumValue(request.get(), field, 0);
        reflection.AddEnumValue(request.get(), field, value);
      } else {
        reflection.SetEnumValue(request.get(), field, value);
      }
      std::string name = field->is_repeated() ? absl::StrCat(field->name(), "[1]") : field->name();
      ExpectInvalid(
          *method, *request,
          {absl::StrCat(name, " ", value, " is not a ", type.full_name()), type.value(1)->name()});
    }
  }
}

// Every Duration field of every request (Join.timeout, Terminate.grace, Session.ttl), given
// values google/protobuf/duration.proto rules out.
TEST_F(RawBadInputTest, InvalidDurationsAreInvalidArgumentNamingTheField) {
  struct Case {
    int64_t seconds;
    int32_t nanos;
    std::string why;
  };
  const std::vector<Case> cases = {
      {0, 1'000'000'000, "nanos is outside -999999999..999999999"},
      {0, -1'000'000'000, "nanos is outside"},
      {1, -1, "seconds and nanos have different signs"},
      {-1, 1, "seconds and nanos have different signs"},
      {315'576'000'001, 0, "seconds is outside -315576000000..315576000000"},
      {std::numeric_limits<int64_t>::min(), 0, "seconds is outside"},
  };
  const std::vector<RequestField> durations = RequestFields([](const FieldDescriptor& field) {
    return field.message_type() != nullptr &&
           field.message_type()->full_name() == "google.protobuf.Duration";
  });
  EXPECT_THAT(Names(durations),
              ::testing::IsSupersetOf({"Join.timeout", "Terminate.grace", "Session.ttl"}));
  for (const auto& [method, field] : durations) {
    for (const Case& c : cases) {
      std::unique_ptr<google::protobuf::Message> request = NewRequest(*method);
      auto* duration = google::protobuf::DynamicCastToGenerated<google::protobuf::Duration>(
          request->GetReflection()->MutableMessage(request.get(), field));
      ASSERT_NE(duration, nullptr);
      duration->set_seconds(c.seconds);
      duration->set_nanos(c.nanos);
      ExpectInvalid(
          *method, *request,
          {absl::StrCat(field->name(), " is not a valid google.protobuf.Duration"), c.why});
    }
  }
}

// The edge of the range is fine: the longest Duration there is parks a Join as any other,
// until the caller gives up.
TEST_F(RawBadInputTest, TheLongestValidDurationIsAccepted) {
  v1::Process running = StartOk(client_, {"sleep", "100"});
  recorded_ = 1;
  v1::JoinRequest join;
  join.set_id(running.id());
  join.mutable_timeout()->set_seconds(315'576'000'000);
  join.mutable_timeout()->set_nanos(999'999'999);
  RawCall call(stub_, *ProctorDescriptor().FindMethodByName("Join"), join.SerializeAsString(),
               admin_key_, std::chrono::milliseconds(300));
  grpc::Status status = call.Result().get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  v1::TerminateRequest kill;
  kill.set_id(running.id());
  kill.set_signal(9);
  ASSERT_TRUE(client_.Terminate(kill).ok());
}

// ------------------------------------------------------------------------------------------
// Calls without a key

// Each refusal used to be one log line, so anyone who can reach the socket could fill the
// disk. Now at most Authenticator::kLogLinesPerSecond lines a second are written, and one
// line a second counts the rest.
TEST_F(RawBadInputTest, AFloodOfCallsWithoutAKeyGrowsTheLogByABoundedAmount) {
  constexpr int kCalls = 3000;
  constexpr int kLinesPerSecond = 20;  // Authenticator::kLogLinesPerSecond
  const MethodDescriptor& status_method = *ProctorDescriptor().FindMethodByName("Status");
  auto lines = [](const std::string& text) { return std::count(text.begin(), text.end(), '\n'); };
  const int64_t lines_before = lines(daemon_.Log());
  absl::Time start = absl::Now();
  {
    // All at once: refusals to a peer that keeps failing are held back, up to seconds each.
    std::vector<std::unique_ptr<RawCall>> calls;
    std::vector<std::future<grpc::Status>> results;
    for (int i = 0; i < kCalls; ++i) {
      calls.push_back(std::make_unique<RawCall>(stub_, status_method, "", ""));
      results.push_back(calls.back()->Result());
    }
    for (std::future<grpc::Status>& result : results) {
      grpc::Status status = result.get();
      ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    }
  }
  // The last summary is written by the next call once its second is over.
  absl::SleepFor(absl::Seconds(1));
  ASSERT_TRUE(client_.List(v1::StatusRequest{}).ok());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const std::string log = daemon_.Log();
  const int64_t added = lines(log) - lines_before;
  std::cout << kCalls << " refused calls in " << seconds << " s added " << added << " log lines\n";
  EXPECT_LE(added, (seconds + 2) * (kLinesPerSecond + 1));
  EXPECT_THAT(log, HasSubstr("more refused calls not logged"));
}

}  // namespace
}  // namespace proctor::testing
