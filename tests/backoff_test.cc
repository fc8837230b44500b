// Backoff and TokenBucket against fake time: no test waits on a real clock.
#include "server/backoff.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

constexpr Backoff::Policy kPolicy{.free_refusals = 1,
                                  .first = absl::Milliseconds(50),
                                  .max = absl::Milliseconds(300),
                                  .memory = absl::Minutes(1)};

TEST(BackoffTest, DelaysDoubleUpToTheMax) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  EXPECT_EQ(backoff.Refused("peer"), absl::ZeroDuration());
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(50));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(100));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(200));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(300)) << "400 ms, capped";
  for (int i = 0; i < 40; ++i) EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(300));
  EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(300));
  EXPECT_EQ(backoff.Current("other"), absl::ZeroDuration()) << "keys are apart";
}

TEST(BackoffTest, FreeRefusalsAreAnsweredAtOnce) {
  FakeTime time;
  Backoff::Policy policy = kPolicy;
  policy.free_refusals = 3;
  Backoff backoff(time, policy);
  EXPECT_EQ(backoff.Current("peer"), absl::ZeroDuration());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(backoff.Refused("peer"), absl::ZeroDuration()) << i;
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(50));
}

TEST(BackoffTest, CurrentRecordsNothing) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  backoff.Refused("peer");
  backoff.Refused("peer");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(50));
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(100));
}

TEST(BackoffTest, AKeyIsForgottenAfterTheMemoryWithoutARefusal) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  for (int i = 0; i < 4; ++i) backoff.Refused("peer");
  EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(200));
  // Each refusal restarts the memory.
  time.Advance(kPolicy.memory / 2);
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(300));
  time.Advance(kPolicy.memory);
  EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(300)) << "remembered to the end";
  time.Advance(absl::Milliseconds(1));
  EXPECT_EQ(backoff.Current("peer"), absl::ZeroDuration());
  EXPECT_EQ(backoff.Refused("peer"), absl::ZeroDuration()) << "counted from the start again";
  EXPECT_EQ(backoff.Refused("peer"), absl::Milliseconds(50));
}

TEST(BackoffTest, TheMemoryIsMeasuredOnTheMonotonicClock) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  for (int i = 0; i < 3; ++i) backoff.Refused("peer");
  time.StepWallClock(absl::Hours(1));
  EXPECT_EQ(backoff.Current("peer"), absl::Milliseconds(100))
      << "a wall-clock step forgets nothing";
  time.StepWallClock(-absl::Hours(2));
  time.Advance(kPolicy.memory + absl::Milliseconds(1));
  EXPECT_EQ(backoff.Current("peer"), absl::ZeroDuration()) << "nor keeps anything longer";
}

// A flood of new keys used to wipe every count once kMaxKeys were remembered, so a guesser
// could interleave fresh keys to keep its own delay at zero. Now the least recently refused
// key goes first, and one that keeps failing keeps its count.
TEST(BackoffTest, AFloodOfNewKeysDoesNotResetAKeyThatKeepsFailing) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  int next = 0;
  for (int round = 0; round < 4; ++round) {
    backoff.Refused("guesser");
    for (size_t i = 0; i < Backoff::kMaxKeys - 1; ++i)
      backoff.Refused(absl::StrCat("new ", next++));
    EXPECT_LE(backoff.size(), Backoff::kMaxKeys);
  }
  EXPECT_EQ(backoff.Current("guesser"), absl::Milliseconds(200)) << "all four refusals counted";
  EXPECT_EQ(backoff.Current("new 0"), absl::ZeroDuration()) << "the least recent went";
}

TEST(BackoffTest, ForgottenKeysAreDroppedNotJustIgnored) {
  FakeTime time;
  Backoff backoff(time, kPolicy);
  for (int i = 0; i < 100; ++i) backoff.Refused(absl::StrCat("peer ", i));
  EXPECT_EQ(backoff.size(), 100u);
  time.Advance(kPolicy.memory + absl::Milliseconds(1));
  backoff.Refused("late");
  EXPECT_EQ(backoff.size(), 1u);
}

TEST(TokenBucketTest, ABurstThenTheRate) {
  FakeTime time;
  TokenBucket bucket({.per_second = 10, .burst = 5}, time.MonotonicNow());
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(bucket.TryTake(time.MonotonicNow())) << i;
  EXPECT_FALSE(bucket.TryTake(time.MonotonicNow()));
  time.Advance(absl::Milliseconds(99));
  EXPECT_FALSE(bucket.TryTake(time.MonotonicNow())) << "not quite one token yet";
  time.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(bucket.TryTake(time.MonotonicNow()));
  EXPECT_FALSE(bucket.TryTake(time.MonotonicNow()));
  // A long quiet spell refills up to the burst, not beyond.
  time.Advance(absl::Hours(1));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(bucket.TryTake(time.MonotonicNow())) << i;
  EXPECT_FALSE(bucket.TryTake(time.MonotonicNow()));
}

TEST(TokenBucketTest, RefusedAttemptsCostNothing) {
  FakeTime time;
  TokenBucket bucket({.per_second = 10, .burst = 1}, time.MonotonicNow());
  EXPECT_TRUE(bucket.TryTake(time.MonotonicNow()));
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(bucket.TryTake(time.MonotonicNow()));
  time.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(bucket.TryTake(time.MonotonicNow())) << "a flood of refusals does not delay it";
}

}  // namespace
}  // namespace proctor
