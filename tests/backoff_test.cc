#include "server/backoff.h"

#include "gtest/gtest.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

TEST(BackoffTest, DelaysDoubleUpToTheMaxAndAreForgotten) {
  FakeTime time;
  Backoff backoff(time, Backoff::Policy{.free_refusals = 1,
                                        .first = absl::Milliseconds(50),
                                        .max = absl::Milliseconds(300),
                                        .memory = absl::Minutes(1)});
  EXPECT_EQ(backoff.Refused("peer"), absl::ZeroDuration());
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(50));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(300));
  EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(300));
  EXPECT_EQ(backoff.Current("other"), absl::ZeroDuration()) << "keys are apart";
  time.Advance(absl::Minutes(2));
  EXPECT_EQ(backoff.Current("peer"), absl::ZeroDuration());
  EXPECT_EQ(backoff.Refused("peer"), absl::ZeroDuration());
}

}  // namespace
}  // namespace proctor
