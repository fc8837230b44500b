// Joins: many Joins on one stream, against a real proctord.
#include <signal.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/credentials.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

// A Joins stream spoken raw with `credentials`: one stream, signed once.
class RawJoins {
 public:
  RawJoins(const std::string& address, const Credentials& credentials)
      : auth_(credentials),
        stub_(v1::Proctor::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    nonce_ = auth_.Sign(context_, "Joins");
    stream_ = stub_->Joins(&context_);
  }

  // OK when the daemon's headers prove it holds the key.
  absl::Status Proved() {
    stream_->WaitForInitialMetadata();
    return auth_.CheckReply(context_, "Joins", nonce_, grpc::Status::OK, "the test daemon");
  }
  bool Ask(uint64_t id, std::optional<absl::Duration> timeout = std::nullopt) {
    v1::JoinRequest request;
    request.set_id(id);
    if (timeout.has_value()) {
      *request.mutable_timeout() =
          TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*timeout));
    }
    return stream_->Write(request);
  }
  std::optional<v1::JoinResult> Answer() {
    v1::JoinResult result;
    if (!stream_->Read(&result)) return std::nullopt;
    return result;
  }
  grpc::ClientContext& context() { return context_; }
  grpc::ClientReaderWriter<v1::JoinRequest, v1::JoinResult>& stream() { return *stream_; }

 private:
  CallAuth auth_;
  std::unique_ptr<v1::Proctor::Stub> stub_;
  grpc::ClientContext context_;
  std::string nonce_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::JoinRequest, v1::JoinResult>> stream_;
};

class JoinsTest : public ::testing::Test {
 protected:
  std::unique_ptr<RawJoins> Open() {
    absl::StatusOr<Credentials> admin = FindCredentials(daemon_.authkey_path());
    EXPECT_TRUE(admin.ok()) << admin.status();
    auto joins = std::make_unique<RawJoins>(daemon_.address(), *admin);
    absl::Status proved = joins->Proved();
    EXPECT_TRUE(proved.ok()) << proved;
    return joins;
  }
  void Kill(uint64_t id) {
    v1::TerminateRequest kill;
    kill.set_id(id);
    kill.set_signal(SIGKILL);
    EXPECT_TRUE(daemon_.client().Terminate(kill).ok());
  }

  TestDaemon daemon_;
};

TEST_F(JoinsTest, EachJoinIsAnsweredWhenItsProcessEndsNotInTheOrderAsked) {
  Gate first(daemon_.dir() + "/first");
  Gate second(daemon_.dir() + "/second");
  v1::Process a = StartOk(daemon_.client(),
                          {"/bin/sh", "-c", absl::StrCat(second.ShellWait(), "; exit 3")});
  v1::Process b = StartOk(daemon_.client(),
                          {"/bin/sh", "-c", absl::StrCat(first.ShellWait(), "; exit 4")});
  v1::Process sleeper = StartOk(daemon_.client(), {"/bin/sleep", "100"});
  std::unique_ptr<RawJoins> joins = Open();
  ASSERT_TRUE(joins->Ask(a.id()));
  ASSERT_TRUE(joins->Ask(b.id()));
  ASSERT_TRUE(joins->Ask(sleeper.id(), absl::Milliseconds(100)));

  // The sleeper's timeout passes first: its still-running record, as Join gives it.
  std::optional<v1::JoinResult> got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 3u);
  EXPECT_EQ(got->code(), 0) << got->message();
  EXPECT_EQ(got->process().id(), sleeper.id());
  EXPECT_EQ(got->process().state(), v1::STATE_RUNNING);
  // Then b, asked second, which ends first.
  ASSERT_TRUE(first.Open());
  got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 2u);
  EXPECT_EQ(got->process().id(), b.id());
  EXPECT_EQ(got->process().exitcode(), 4);
  // The stream's side closed with a Join still waiting: it is answered all the same.
  ASSERT_TRUE(joins->stream().WritesDone());
  ASSERT_TRUE(second.Open());
  got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 1u);
  EXPECT_EQ(got->process().id(), a.id());
  EXPECT_EQ(got->process().exitcode(), 3);
  EXPECT_FALSE(joins->Answer().has_value());
  grpc::Status closed = joins->stream().Finish();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
  Kill(sleeper.id());
}

TEST_F(JoinsTest, ARequestsErrorIsItsResultAndTheStreamGoesOn) {
  v1::Process ended = StartOk(daemon_.client(), {"/bin/sh", "-c", "exit 5"});
  std::unique_ptr<RawJoins> joins = Open();
  ASSERT_TRUE(joins->Ask(987654));
  std::optional<v1::JoinResult> got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 1u);
  EXPECT_EQ(got->code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(got->message(), HasSubstr("987654"));
  EXPECT_FALSE(got->has_process());

  ASSERT_TRUE(joins->Ask(ended.id(), absl::Seconds(-1)));
  got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 2u);
  EXPECT_EQ(got->code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(got->message(), HasSubstr("negative"));

  ASSERT_TRUE(joins->Ask(ended.id()));
  got = joins->Answer();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->request(), 3u);
  EXPECT_EQ(got->code(), 0) << got->message();
  EXPECT_EQ(got->process().exitcode(), 5);
  ASSERT_TRUE(joins->stream().WritesDone());
  grpc::Status closed = joins->stream().Finish();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
}

// Reading pauses while many answers wait to be written, and goes on once the client reads:
// a client that asks 3,000 times before it reads gets 3,000 answers, each once.
TEST_F(JoinsTest, AClientThatAsksEverythingBeforeReadingGetsEveryAnswer) {
  constexpr uint64_t kAsked = 3000;
  v1::Process ended = StartOk(daemon_.client(), {"/bin/true"});
  ASSERT_TRUE(daemon_.client().Join(ended.id()).ok());
  std::unique_ptr<RawJoins> joins = Open();
  for (uint64_t i = 0; i < kAsked; ++i) ASSERT_TRUE(joins->Ask(ended.id()));
  ASSERT_TRUE(joins->stream().WritesDone());
  std::vector<bool> answered(kAsked + 1, false);
  uint64_t answers = 0;
  while (std::optional<v1::JoinResult> got = joins->Answer()) {
    ASSERT_GE(got->request(), 1u);
    ASSERT_LE(got->request(), kAsked);
    EXPECT_FALSE(answered[got->request()]) << "request " << got->request() << " answered twice";
    answered[got->request()] = true;
    EXPECT_EQ(got->process().id(), ended.id());
    ++answers;
  }
  EXPECT_EQ(answers, kAsked);
  grpc::Status closed = joins->stream().Finish();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
}

TEST_F(JoinsTest, WithoutAKeyTheStreamIsRefused) {
  auto stub = v1::Proctor::NewStub(
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->Joins(&context);
  v1::JoinRequest request;
  request.set_id(1);
  stream->Write(request);
  v1::JoinResult result;
  EXPECT_FALSE(stream->Read(&result));
  grpc::Status refused = stream->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED) << refused.error_message();
}

}  // namespace
}  // namespace proctor::testing
