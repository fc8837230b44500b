// ParseDaemonFlags: proctord's command line, parsed by CLI11 and checked by us.
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/default_paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/daemon.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The options `args` give; fails the test if they are refused or ask for help.
DaemonOptions ParseOk(const std::vector<std::string>& args) {
  absl::StatusOr<DaemonCommandLine> parsed = ParseDaemonFlags(args);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok() || !std::holds_alternative<DaemonOptions>(*parsed)) {
    ADD_FAILURE() << "no options from the command line";
    return DaemonOptions{};
  }
  return std::get<DaemonOptions>(*std::move(parsed));
}

// The refusal `args` get; fails the test if they are accepted.
absl::Status ParseError(const std::vector<std::string>& args) {
  absl::StatusOr<DaemonCommandLine> parsed = ParseDaemonFlags(args);
  EXPECT_FALSE(parsed.ok()) << "accepted";
  return parsed.status();
}

// Field by field, so that a failure names the field.
void ExpectSameOptions(const DaemonOptions& actual, const DaemonOptions& expected) {
  EXPECT_EQ(actual.listen, expected.listen);
  EXPECT_EQ(actual.state_dir, expected.state_dir);
  EXPECT_EQ(actual.services_dir, expected.services_dir);
  EXPECT_EQ(actual.retain, expected.retain);
  EXPECT_EQ(actual.max_processes, expected.max_processes);
  EXPECT_EQ(actual.max_children, expected.max_children);
  EXPECT_EQ(actual.max_depth, expected.max_depth);
  EXPECT_EQ(actual.capture_spares, expected.capture_spares);
  EXPECT_EQ(actual.shutdown_grace, expected.shutdown_grace);
  EXPECT_EQ(actual.log_level, expected.log_level);
  EXPECT_EQ(actual.authkey_files, expected.authkey_files);
  EXPECT_EQ(actual.socket_mode, expected.socket_mode);
  EXPECT_EQ(actual.tls_cert, expected.tls_cert);
  EXPECT_EQ(actual.tls_key, expected.tls_key);
  EXPECT_EQ(actual.tls_client_ca, expected.tls_client_ca);
  EXPECT_EQ(actual.insecure_tcp, expected.insecure_tcp);
  EXPECT_EQ(actual.worker_nice, expected.worker_nice);
  EXPECT_EQ(actual.health_listen, expected.health_listen);
  EXPECT_EQ(actual.metrics_listen, expected.metrics_listen);
}

TEST(DaemonFlagsTest, HealthAndMetricsListenTakeHostAndPort) {
  DaemonOptions none = ParseOk({});
  EXPECT_EQ(none.health_listen, "");
  EXPECT_EQ(none.metrics_listen, "");
  for (const std::string address : {"127.0.0.1:9464", ":9464", "[::1]:0", "localhost:80"}) {
    SCOPED_TRACE(address);
    EXPECT_EQ(ParseOk({"--metrics-listen", address}).metrics_listen, address);
    EXPECT_EQ(ParseOk({"--health-listen=" + address}).health_listen, address);
  }
  for (const std::string bad : {"9464", "localhost", "host:port", "::1:9464", "[::1]", "h:99999",
                                "unix:/run/metrics.sock"}) {
    SCOPED_TRACE(bad);
    absl::Status refused = ParseError({"--metrics-listen", bad});
    EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
    EXPECT_THAT(refused.message(), HasSubstr("--metrics-listen wants host:port"));
    EXPECT_THAT(refused.message(), HasSubstr("\"" + bad + "\""));
    EXPECT_THAT(ParseError({"--health-listen", bad}).message(),
                HasSubstr("--health-listen wants host:port"));
  }
}

TEST(DaemonFlagsTest, DefaultsWithoutFlags) {
  // Spelled out rather than taken from DaemonOptions{}: these are the documented defaults.
  ExpectSameOptions(ParseOk({}), DaemonOptions{
                                     .listen = {DefaultAddress()},
                                     .state_dir = DefaultStateDir(),
                                     .services_dir = DefaultServicesDir(),
                                     .retain = 10000,
                                     .max_processes = 4096,
                                     .max_children = 512,
                                     .max_depth = 16,
                                     .capture_spares = 4096,
                                     .shutdown_grace = absl::Seconds(10),
                                     .log_level = "info",
                                     .authkey_files = {},
                                     .socket_mode = 0600,
                                     .tls_cert = "",
                                     .tls_key = "",
                                     .tls_client_ca = "",
                                     .insecure_tcp = false,
                                     .worker_nice = std::nullopt,  // main() sets it
                                 });
}

// Every flag, as "--flag value" (`equals` false) or "--flag=value".
std::vector<std::string> EveryFlag(bool equals) {
  std::vector<std::pair<std::string, std::string>> flags = {
      {"--listen", "unix:/tmp/p.sock"},
      {"--state-dir", "/var/tmp/state"},
      {"--services", "/var/tmp/services.d"},
      {"--retain", "3"},
      {"--max-processes", "100"},
      {"--max-children", "7"},
      {"--max-depth", "2"},
      {"--capture-spares", "0"},
      {"--shutdown-grace", "0.25"},
      {"--log-level", "debug"},
      {"--authkey-file", "/etc/proctor/key"},
      {"--socket-mode", "0660"},
      {"--tls-cert", "/etc/proctor/cert.pem"},
      {"--tls-key", "/etc/proctor/key.pem"},
      {"--tls-client-ca", "/etc/proctor/ca.pem"},
  };
  std::vector<std::string> args;
  for (const auto& [flag, value] : flags) {
    if (equals) {
      args.push_back(flag + "=" + value);
    } else {
      args.push_back(flag);
      args.push_back(value);
    }
  }
  args.push_back("--insecure-tcp");
  return args;
}

// What EveryFlag() sets.
DaemonOptions EveryFlagSet() {
  return DaemonOptions{
      .listen = {"unix:/tmp/p.sock"},
      .state_dir = "/var/tmp/state",
      .services_dir = "/var/tmp/services.d",
      .retain = 3,
      .max_processes = 100,
      .max_children = 7,
      .max_depth = 2,
      .capture_spares = 0,
      .shutdown_grace = absl::Milliseconds(250),
      .log_level = "debug",
      .authkey_files = {"/etc/proctor/key"},
      .socket_mode = 0660,
      .tls_cert = "/etc/proctor/cert.pem",
      .tls_key = "/etc/proctor/key.pem",
      .tls_client_ca = "/etc/proctor/ca.pem",
      .insecure_tcp = true,
  };
}

TEST(DaemonFlagsTest, EveryFlagWithItsValueApart) {
  ExpectSameOptions(ParseOk(EveryFlag(false)), EveryFlagSet());
}

TEST(DaemonFlagsTest, EveryFlagWithItsValueAfterAnEqualsSign) {
  ExpectSameOptions(ParseOk(EveryFlag(true)), EveryFlagSet());
}

TEST(DaemonFlagsTest, ListenAndAuthkeyFileRepeatInOrder) {
  DaemonOptions options =
      ParseOk({"--listen", "unix:/a.sock", "--authkey-file=/k1", "--listen=127.0.0.1:9000",
               "--authkey-file", "/k2", "--listen", "unix:/b.sock"});
  EXPECT_THAT(options.listen, ElementsAre("unix:/a.sock", "127.0.0.1:9000", "unix:/b.sock"));
  EXPECT_THAT(options.authkey_files, ElementsAre("/k1", "/k2"));
}

TEST(DaemonFlagsTest, OtherFlagsGivenTwiceKeepTheLastValue) {
  DaemonOptions options =
      ParseOk({"--retain", "5", "--retain=6", "--state-dir", "/one", "--state-dir", "/two",
               "--log-level=warn", "--log-level", "error"});
  EXPECT_EQ(options.retain, 6u);
  EXPECT_EQ(options.state_dir, "/two");
  EXPECT_EQ(options.log_level, "error");
}

TEST(DaemonFlagsTest, CountsAreDecimalAndZeroIsAllowedWhereItMeansNone) {
  DaemonOptions options = ParseOk({"--retain", "010", "--capture-spares", "0", "--max-depth", "1"});
  EXPECT_EQ(options.retain, 10u) << "not octal";
  EXPECT_EQ(options.capture_spares, 0u);
  EXPECT_EQ(options.max_depth, 1u);
  EXPECT_EQ(ParseOk({"--retain", "0"}).retain, 0u);
}

TEST(DaemonFlagsTest, ShutdownGraceMayBeZeroOrFractional) {
  EXPECT_EQ(ParseOk({"--shutdown-grace", "0"}).shutdown_grace, absl::ZeroDuration());
  EXPECT_EQ(ParseOk({"--shutdown-grace=1.5"}).shutdown_grace, absl::Milliseconds(1500));
}

TEST(DaemonFlagsTest, SocketModeIsOctalUpTo0777) {
  EXPECT_EQ(ParseOk({"--socket-mode", "660"}).socket_mode, 0660u);
  EXPECT_EQ(ParseOk({"--socket-mode", "0777"}).socket_mode, 0777u);
  EXPECT_EQ(ParseOk({"--socket-mode", "0"}).socket_mode, 0u);
}

TEST(DaemonFlagsTest, EveryLogLevelNameIsAccepted) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    EXPECT_EQ(ParseOk({"--log-level", level}).log_level, level);
  }
}

TEST(DaemonFlagsTest, TlsCertAndKeyWithAClientCa) {
  DaemonOptions options =
      ParseOk({"--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"});
  EXPECT_EQ(options.tls_cert, "c.pem");
  EXPECT_EQ(options.tls_key, "k.pem");
  EXPECT_EQ(options.tls_client_ca, "ca.pem");
}

TEST(DaemonFlagsTest, HelpIsNotAnError) {
  for (const char* flag : {"--help", "-h"}) {
    absl::StatusOr<DaemonCommandLine> parsed = ParseDaemonFlags({"--retain", "3", flag});
    ASSERT_TRUE(parsed.ok()) << flag << ": " << parsed.status();
    ASSERT_TRUE(std::holds_alternative<DaemonHelp>(*parsed)) << flag;
    const std::string& text = std::get<DaemonHelp>(*parsed).text;
    EXPECT_THAT(text, HasSubstr("proctord"));
    for (const char* documented :
         {"--listen", "--state-dir", "--retain", "--max-processes", "--max-children", "--max-depth",
          "--capture-spares", "--shutdown-grace", "--log-level", "--authkey-file", "--socket-mode",
          "--tls-cert", "--tls-key", "--tls-client-ca", "--insecure-tcp"}) {
      EXPECT_THAT(text, HasSubstr(documented)) << flag;
    }
    EXPECT_THAT(text, HasSubstr("(default 10000)")) << "defaults are shown";
    EXPECT_THAT(text, HasSubstr("SIGUSR2 restarts proctord in place, keeping the workers"));
    EXPECT_THAT(text, HasSubstr("(default 0600)"));
    EXPECT_THAT(text, HasSubstr(DefaultAddress()));
  }
}

struct Refusal {
  std::vector<std::string> args;
  std::string message;  // the whole message
};

TEST(DaemonFlagsTest, BadValuesAreRefusedNamingTheFlagAndWhatItWants) {
  const std::vector<Refusal> refusals = {
      {{"--retain", "many"}, "--retain wants a count, not \"many\""},
      {{"--retain=-1"}, "--retain wants a count, not \"-1\""},
      {{"--capture-spares", "x"}, "--capture-spares wants a count, not \"x\""},
      {{"--max-processes", "0"}, "--max-processes wants a count of 1 or more, not \"0\""},
      {{"--max-children=0"}, "--max-children wants a count of 1 or more, not \"0\""},
      {{"--max-depth", "deep"}, "--max-depth wants a count of 1 or more, not \"deep\""},
      {{"--shutdown-grace", "-1"}, "--shutdown-grace wants seconds (0 or more), not \"-1\""},
      {{"--shutdown-grace", "soon"}, "--shutdown-grace wants seconds (0 or more), not \"soon\""},
      {{"--shutdown-grace", "nan"}, "--shutdown-grace wants seconds (0 or more), not \"nan\""},
      {{"--socket-mode", "01000"},
       "--socket-mode wants octal permissions such as 0660, not \"01000\""},
      {{"--socket-mode", "0680"},
       "--socket-mode wants octal permissions such as 0660, not \"0680\""},
      {{"--socket-mode", "rw"}, "--socket-mode wants octal permissions such as 0660, not \"rw\""},
      {{"--log-level", "loud"},
       "--log-level wants one of trace, debug, info, warn, error, critical, off, not \"loud\""},
      {{"--listen", ""}, "--listen needs an address"},
      {{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
      {{"--tls-key", "k.pem"}, "--tls-cert and --tls-key go together"},
      {{"--tls-client-ca", "ca.pem"}, "--tls-client-ca needs --tls-cert and --tls-key"},
      {{"--bogus"}, "unknown flag \"--bogus\" (see proctord --help)"},
      {{"--retain", "3", "--bogus=1"}, "unknown flag \"--bogus=1\" (see proctord --help)"},
      {{"-x"}, "unknown flag \"-x\" (see proctord --help)"},
      {{"serve"}, "unexpected argument \"serve\": proctord takes flags only (see proctord --help)"},
  };
  for (const Refusal& refusal : refusals) {
    absl::Status status = ParseError(refusal.args);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(status.message(), refusal.message);
  }
}

TEST(DaemonFlagsTest, ABadValueIsRefusedEvenWhenALaterOneIsGood) {
  absl::Status status = ParseError({"--retain", "many", "--retain", "3"});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "--retain wants a count, not \"many\"");
}

TEST(DaemonFlagsTest, AFlagWithoutItsValueIsRefusedNamingIt) {
  for (const char* flag : {"--retain", "--listen", "--state-dir", "--log-level"}) {
    absl::Status status = ParseError({flag});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(flag));
    EXPECT_THAT(status.message(), HasSubstr("see proctord --help"));
  }
}

TEST(DaemonFlagsTest, AValueIsTheNextArgumentWhateverItLooksLike) {
  // As with getopt: a flag that needs a value takes the next argument.
  EXPECT_EQ(ParseOk({"--state-dir", "--odd"}).state_dir, "--odd");
  EXPECT_THAT(ParseOk({"--listen", "-x"}).listen, ElementsAre("-x"));
}

// Not a flag, but what bounds --max-processes: workers get the descriptors left after the
// reserve, half the limit and at least kMinDescriptorReserve.
TEST(DescriptorBudgetTest, HalfTheLimitAndAtLeast128AreKeptForConnections) {
  auto expect = [](size_t limit, size_t reserve, size_t workers) {
    DescriptorBudget budget = BudgetDescriptors(limit);
    EXPECT_EQ(budget.limit, limit);
    EXPECT_EQ(budget.reserve, reserve) << "limit " << limit;
    EXPECT_EQ(budget.workers, workers) << "limit " << limit;
  };
  expect(64, 128, 0);
  expect(128, 128, 0);
  expect(200, 128, 72);
  expect(256, 128, 128);
  expect(1024, 512, 512);
  expect(16384, 8192, 8192);  // deploy/proctord.service: room for --max-processes 4096
  expect(1048576, 524288, 524288);
}

}  // namespace
}  // namespace proctor
