#include "server/metrics.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

SupervisorEvent Event(EventKind kind, uint32_t restarts = 0,
                      std::optional<WaitStatus> status = std::nullopt) {
  SupervisorEvent event{.kind = kind};
  event.process.restarts = restarts;
  event.process.status = status;
  return event;
}

Metrics MakeMetrics() {
  return Metrics({"/proctor.v1.Proctor/Start", "/proctor.v1.Proctor/Join"}, [] {
    return Metrics::Gauges{.processes = {.running = 3, .backoff = 1, .ended = 7, .joins = 2,
                                         .sessions = 1},
                           .watchers = 4,
                           .auth_refusals = {{"missing", 5}, {"replayed", 0}}};
  });
}

TEST(MetricsTest, EventsAreCountedByKindAndOutcome) {
  Metrics metrics = MakeMetrics();
  metrics.CountEvents({Event(EventKind::kStarted), Event(EventKind::kStarted),
                       Event(EventKind::kStarted, /*restarts=*/1),
                       Event(EventKind::kExited, 0, WaitStatus::Exited(0)),
                       Event(EventKind::kExited, 0, WaitStatus::Exited(2)),
                       Event(EventKind::kExited, 0, WaitStatus::Signaled(9)),
                       Event(EventKind::kExited, 0, std::nullopt),
                       Event(EventKind::kRestarting), Event(EventKind::kReleased)});
  std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_started_total 2\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_process_restarts_total 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_exited_total{outcome=\"exit_zero\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_exited_total{outcome=\"exit_nonzero\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_exited_total{outcome=\"signal\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_exited_total{outcome=\"lost\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_running 3\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_processes_backoff 1\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_joins_waiting 2\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_watchers 4\n"));
  EXPECT_THAT(text, HasSubstr("\nproctor_auth_refusals_total{reason=\"missing\"} 5\n"));
}

TEST(MetricsTest, RpcDurationsFallIntoCumulativeBuckets) {
  Metrics metrics = MakeMetrics();
  metrics.ObserveRpc("/proctor.v1.Proctor/Start", absl::Milliseconds(3));
  metrics.ObserveRpc("/proctor.v1.Proctor/Start", absl::Milliseconds(30));
  metrics.ObserveRpc("/proctor.v1.Proctor/Start", absl::Minutes(10));  // past every bound
  metrics.ObserveRpc("/proctor.v1.Proctor/Nothing", absl::Milliseconds(1));  // not kept
  std::string text = metrics.Render();
  const std::string start = "service=\"proctor.v1.Proctor\",method=\"Start\"";
  EXPECT_THAT(text, HasSubstr("_bucket{" + start + ",le=\"0.0025\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("_bucket{" + start + ",le=\"0.005\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("_bucket{" + start + ",le=\"0.05\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("_bucket{" + start + ",le=\"300\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("_bucket{" + start + ",le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("_count{" + start + "} 3\n"));
  EXPECT_THAT(text, HasSubstr("_sum{" + start + "} 600.033\n"));
  EXPECT_THAT(text, HasSubstr("_count{service=\"proctor.v1.Proctor\",method=\"Join\"} 0\n"));
  EXPECT_THAT(text, Not(HasSubstr("Nothing")));
}

TEST(MetricsTest, EveryFamilyHasHelpAndTypeAndCountersEndInTotal) {
  Metrics metrics = MakeMetrics();
  std::string text = metrics.Render();
  std::string family;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    if (absl::StartsWith(line, "# HELP ")) {
      family = words[2];
      continue;
    }
    if (absl::StartsWith(line, "# TYPE ")) {
      EXPECT_EQ(words[2], family) << "TYPE without its HELP line before it";
      if (words[3] == "counter") {
        EXPECT_TRUE(absl::EndsWith(family, "_total")) << line;
      }
      continue;
    }
    // A sample belongs to the family described last.
    EXPECT_TRUE(absl::StartsWith(line, family)) << line << " after " << family;
  }
}

}  // namespace
}  // namespace proctor
