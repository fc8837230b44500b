// gRPC's health checking and server reflection against a real proctord, as grpc_health_probe,
// grpcurl and Kubernetes' gRPC probes use them: without an authkey.
#include <signal.h>

#include <future>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proctor/v1/proctor.grpc.pb.h"
#include "tests/standard_services_client.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// The address --health-listen bound (its port 0 made concrete), from the daemon's log.
std::string HealthAddress(const TestDaemon& daemon) {
  return daemon.LoggedAfter("health checks (grpc.health.v1.Health alone, plain TCP) on ");
}

TEST(HealthTest, ServingWithoutAKey) {
  TestDaemon daemon;
  auto channel = PlainChannel(daemon.address());
  for (const std::string service : {"", "proctor.v1.Proctor", "proctor.v1.Sync"}) {
    SCOPED_TRACE(service);
    absl::StatusOr<HealthCheckResponse::ServingStatus> status = CheckHealth(channel, service);
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(*status, HealthCheckResponse::SERVING);
  }
  absl::StatusOr<HealthCheckResponse::ServingStatus> unknown =
      CheckHealth(channel, "proctor.v1.NoSuchService");
  EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();
}

TEST(HealthTest, ReflectionListsAndDescribesTheServices) {
  TestDaemon daemon;
  auto channel = PlainChannel(daemon.address());
  absl::StatusOr<std::vector<std::string>> services = ListServices(channel);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, UnorderedElementsAre("proctor.v1.Proctor", "proctor.v1.Sync",
                                              "grpc.health.v1.Health",
                                              "grpc.reflection.v1alpha.ServerReflection"));

  absl::StatusOr<std::vector<google::protobuf::FileDescriptorProto>> proctor =
      FileContainingSymbol(channel, "proctor.v1.Proctor");
  ASSERT_TRUE(proctor.ok()) << proctor.status();
  ASSERT_FALSE(proctor->empty());
  EXPECT_EQ(proctor->front().name(), "proctor/v1/proctor.proto");
  std::set<std::string> methods;
  for (const auto& service : proctor->front().service()) {
    if (service.name() != "Proctor") continue;
    for (const auto& method : service.method()) methods.insert(method.name());
  }
  EXPECT_THAT(methods, Contains("Start"));
  EXPECT_THAT(methods, Contains("Join"));

  // What grpcurl needs to call the health service by reflection alone.
  absl::StatusOr<std::vector<google::protobuf::FileDescriptorProto>> health =
      FileContainingSymbol(channel, "grpc.health.v1.Health");
  ASSERT_TRUE(health.ok()) << health.status();
  ASSERT_FALSE(health->empty());
  EXPECT_EQ(health->front().package(), "grpc.health.v1");
}

TEST(HealthTest, HealthListenServesHealthAloneOverPlainTcp) {
  TestDaemon daemon({"--health-listen", "127.0.0.1:0"});
  std::string address = HealthAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  auto channel = PlainChannel(address);
  absl::StatusOr<HealthCheckResponse::ServingStatus> status = CheckHealth(channel, "");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, HealthCheckResponse::SERVING);

  // Neither the API nor reflection is there.
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/proctor.v1.Proctor/Status", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) { done.set_value(std::move(s)); });
  EXPECT_EQ(done.get_future().get().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  absl::StatusOr<std::vector<std::string>> services = ListServices(channel);
  EXPECT_TRUE(absl::IsUnimplemented(services.status())) << services.status();
}

TEST(HealthTest, NotServingWhileStopping) {
  TestDaemon daemon({"--health-listen", "127.0.0.1:0", "--shutdown-grace", "3"});
  std::string address = HealthAddress(daemon);
  ASSERT_FALSE(address.empty()) << daemon.Log();
  // Not daemonic: it runs on for the grace after SIGTERM, and so does proctord.
  StartOk(daemon.client(), {"/bin/sleep", "60"});
  auto channel = PlainChannel(address);
  ASSERT_EQ(CheckHealth(channel, "").value_or(HealthCheckResponse::UNKNOWN),
            HealthCheckResponse::SERVING);

  ASSERT_EQ(kill(daemon.pid(), SIGTERM), 0);
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(daemon.Log(), "asked to stop"); }));
  for (const std::string service : {"", "proctor.v1.Proctor"}) {
    SCOPED_TRACE(service);
    absl::StatusOr<HealthCheckResponse::ServingStatus> status = CheckHealth(channel, service);
    ASSERT_TRUE(status.ok()) << status.status() << daemon.Log();
    EXPECT_EQ(*status, HealthCheckResponse::NOT_SERVING);
  }
  EXPECT_EQ(daemon.AwaitExit(absl::Seconds(30)), 0);
  // Gone with proctord.
  EXPECT_FALSE(CheckHealth(PlainChannel(address), "").ok());
}

TEST(HealthTest, BadHealthListenIsRefusedAtStart) {
  CommandResult bad = RunCommand({PROCTORD_PATH, "--health-listen", "no-port-here"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_THAT(bad.err, HasSubstr("--health-listen wants host:port"));
  EXPECT_THAT(bad.err, HasSubstr("\"no-port-here\""));
}

}  // namespace
}  // namespace proctor::testing
