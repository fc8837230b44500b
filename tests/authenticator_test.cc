// Authenticator against fake time: which credentials it accepts, how long it remembers a
// nonce (on the monotonic clock, whatever the wall clock does), how each key's rate and
// replay memory are kept apart from every other key's, how its memory stays bounded, how it
// slows down a key (or peer) that keeps failing, and how little it logs under a flood.
// Credentials are made as a client makes them (common/authkey.h).
#include "server/authenticator.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/backoff.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

using ::testing::HasSubstr;
using ::testing::Le;

constexpr char kAdminKey[] = "the admin key";
constexpr char kWorkerKey[] = "worker 7's key";
constexpr uint64_t kWorker = 7;
constexpr char kMethod[] = "Status";
constexpr char kPeer[] = "unix:peer";

class AuthenticatorTest : public ::testing::Test {
 protected:
  AuthenticatorTest()
      : auth_(time_, [](uint64_t id) -> std::optional<std::string> {
          if (id == kWorker) return kWorkerKey;
          return std::nullopt;
        }) {
    auth_.SetAdminKeys({kAdminKey});
  }

  // A credential as a client makes it, signing `client_time` (by default our wall clock).
  std::string Credential(absl::string_view key, absl::string_view key_id,
                         std::optional<absl::Time> client_time = std::nullopt) {
    return CallCredential::Make(key, key_id, kMethod,
                                absl::ToUnixMillis(client_time.value_or(time_.Now())))
        .Format();
  }
  std::string AdminCredential() { return Credential(kAdminKey, kAdminKeyId); }

  absl::StatusOr<Caller> Verify(const std::optional<std::string>& credential,
                                absl::string_view peer = kPeer) {
    return auth_.Verify(credential, kMethod, peer);
  }

  FakeTime time_;
  Authenticator auth_;
};

// Whether `result` is a refusal whose message says `why`.
::testing::AssertionResult RefusedFor(const absl::StatusOr<Caller>& result, absl::string_view why) {
  if (result.ok()) return ::testing::AssertionFailure() << "accepted";
  if (!absl::IsUnauthenticated(result.status()) ||
      !absl::StrContains(result.status().message(), why)) {
    return ::testing::AssertionFailure() << result.status();
  }
  return ::testing::AssertionSuccess();
}

TEST_F(AuthenticatorTest, AdminCredentialVerifies) {
  std::string credential = AdminCredential();
  absl::StatusOr<Caller> caller = Verify(credential);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_TRUE(caller->admin());
  EXPECT_EQ(caller->key, kAdminKey);
  EXPECT_EQ(caller->nonce_hex, CallCredential::Parse(credential)->nonce_hex);
}

TEST_F(AuthenticatorTest, EveryAdminKeyOfARotationVerifies) {
  auth_.SetAdminKeys({"old admin key", kAdminKey});
  EXPECT_EQ(Verify(Credential("old admin key", kAdminKeyId)).value_or(Caller{}).key,
            "old admin key");
  EXPECT_EQ(Verify(AdminCredential()).value_or(Caller{}).key, kAdminKey);
  auth_.SetAdminKeys({kAdminKey});
  EXPECT_TRUE(RefusedFor(Verify(Credential("old admin key", kAdminKeyId)),
                         "the mac does not verify under any admin key"));
}

TEST_F(AuthenticatorTest, WorkerCredentialVerifiesThroughTheLookup) {
  absl::StatusOr<Caller> caller = Verify(Credential(kWorkerKey, absl::StrCat(kWorker)));
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_FALSE(caller->admin());
  EXPECT_EQ(caller->worker_id, kWorker);
  EXPECT_EQ(caller->key, kWorkerKey);
}

TEST_F(AuthenticatorTest, WrongKeysAndUnknownWorkersAreRefused) {
  EXPECT_TRUE(RefusedFor(Verify(Credential("a guess", kAdminKeyId)),
                         "the mac does not verify under any admin key"));
  EXPECT_TRUE(RefusedFor(Verify(Credential(kAdminKey, absl::StrCat(kWorker))),
                         "the mac does not verify under the key of process 7"))
      << "an admin key is not worker 7's";
  EXPECT_TRUE(RefusedFor(Verify(Credential(kWorkerKey, "8")), "process 8 has been released"))
      << "the lookup knows no worker 8";
  EXPECT_TRUE(RefusedFor(Verify(Credential(kWorkerKey, "0")), "field key-id \"0\""));
  EXPECT_TRUE(RefusedFor(Verify(Credential(kWorkerKey, "seven")), "field key-id \"seven\""));
  // Told an id was never handed out, it says so, rather than that it was released.
  auth_.SetIdIssued([](uint64_t id) { return id < 8; });
  EXPECT_TRUE(RefusedFor(Verify(Credential(kWorkerKey, "9")), "unknown key id 9"));
  EXPECT_TRUE(RefusedFor(Verify(Credential(kWorkerKey, "5")), "process 5 has been released"));
}

TEST_F(AuthenticatorTest, MissingOrMalformedCredentialsAreRefused) {
  EXPECT_TRUE(RefusedFor(Verify(std::nullopt), "carries no credential"));
  EXPECT_TRUE(RefusedFor(Verify("v1 admin"), "malformed"));
  // A mac made for another method does not carry over.
  std::string for_start =
      CallCredential::Make(kAdminKey, kAdminKeyId, "Start", absl::ToUnixMillis(time_.Now()))
          .Format();
  EXPECT_TRUE(RefusedFor(Verify(for_start), "the mac does not verify"));
}

TEST_F(AuthenticatorTest, CredentialOlderThanTheWindowIsRefused) {
  std::string at_the_edge = AdminCredential();
  std::string too_old = AdminCredential();
  time_.Advance(Authenticator::kWindow);
  EXPECT_TRUE(Verify(at_the_edge).ok());
  time_.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(RefusedFor(Verify(too_old), "time is 2m0.001s behind the daemon's clock"));
}

TEST_F(AuthenticatorTest, CredentialNewerThanTheWindowIsRefused) {
  // A client whose clock runs ahead of ours.
  FakeTime client;
  client.Advance(Authenticator::kWindow);
  EXPECT_TRUE(Verify(Credential(kAdminKey, kAdminKeyId, client.Now())).ok());
  client.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(RefusedFor(Verify(Credential(kAdminKey, kAdminKeyId, client.Now())),
                         "time is 2m0.001s ahead of the daemon's clock"));
}

TEST_F(AuthenticatorTest, ReplayWithinTheWindowIsRefused) {
  std::string credential = AdminCredential();
  ASSERT_TRUE(Verify(credential).ok());
  EXPECT_TRUE(RefusedFor(Verify(credential), "replayed"));
  time_.Advance(Authenticator::kWindow);
  EXPECT_TRUE(RefusedFor(Verify(credential), "replayed")) << "at the window's last instant";
  EXPECT_TRUE(Verify(AdminCredential()).ok()) << "a fresh nonce still passes";
}

// A nonce is remembered for kNonceMemory on the monotonic clock, not longer than one slice
// more, even when the wall clock is stepped back meanwhile (which would otherwise let its
// credential pass the time check again).
TEST_F(AuthenticatorTest, NoncesAreForgottenAfterTheirMemory) {
  ASSERT_EQ(Authenticator::kNonceMemory, 2 * Authenticator::kWindow);
  std::string first = AdminCredential();
  ASSERT_TRUE(Verify(first).ok());
  EXPECT_EQ(auth_.RememberedNonces(kAdminKeyId), 1u);

  time_.Advance(Authenticator::kNonceMemory - absl::Milliseconds(1));
  // Stepped back so that `first` passes the time check again: only the memory refuses it.
  time_.StepWallClock(-(Authenticator::kNonceMemory - absl::Milliseconds(1)));
  EXPECT_TRUE(RefusedFor(Verify(first), "replayed")) << "nothing is forgotten before its memory";
  time_.StepWallClock(Authenticator::kNonceMemory - absl::Milliseconds(1));
  EXPECT_EQ(auth_.RememberedNonces(kAdminKeyId), 1u);
  time_.Advance(Authenticator::kNonceSlice + absl::Milliseconds(1));
  EXPECT_EQ(auth_.RememberedNonces(kAdminKeyId), 0u) << "forgotten within one more slice";
  EXPECT_TRUE(Verify(AdminCredential()).ok());
}

// A step of the wall clock forward (an administrator, NTP) must not let the cache drop every
// nonce at once: stepped back again, their credentials would pass the time check and be
// accepted a second time.
TEST_F(AuthenticatorTest, AWallClockStepDoesNotForgetANonceEarly) {
  std::string credential = AdminCredential();
  ASSERT_TRUE(Verify(credential).ok());
  time_.StepWallClock(absl::Hours(1));
  ASSERT_TRUE(Verify(AdminCredential()).ok()) << "a call at the stepped time";
  time_.Advance(Authenticator::kNonceMemory / 2);
  ASSERT_TRUE(Verify(AdminCredential()).ok());
  time_.StepWallClock(-absl::Hours(1));
  EXPECT_TRUE(RefusedFor(Verify(credential), "replayed"));
}

// ------------------------------------------------------------------------------------------
// Per-key rates and replay memory

// The reported lockout: one worker key flooding valid calls (about 14,000 a second for 20 s)
// filled a replay cache shared by every key, and everyone, the admin included, got
// RESOURCE_EXHAUSTED for the next minutes. Now the flood is refused to that key alone.
TEST_F(AuthenticatorTest, AFloodFromOneWorkerKeyIsRefusedToThatKeyAlone) {
  const Authenticator::Budget budget = Authenticator::Limits().worker;
  const std::string worker = absl::StrCat(kWorker);
  int accepted = 0;
  int over_rate = 0;
  absl::Status refusal;
  constexpr int kCalls = 20 * 14'000;  // more than the old cache's 2^18
  for (int i = 0; i < kCalls; ++i) {
    absl::StatusOr<Caller> caller = Verify(Credential(kWorkerKey, worker));
    if (caller.ok()) {
      ++accepted;
    } else {
      ASSERT_EQ(caller.status().code(), absl::StatusCode::kResourceExhausted) << caller.status();
      ++over_rate;
      refusal = caller.status();
    }
    time_.Advance(absl::Seconds(20) / kCalls);
  }
  // The burst, then the rate, over the 20 s.
  EXPECT_GE(accepted, budget.burst + 19 * budget.per_second);
  EXPECT_LE(accepted, budget.burst + 20 * budget.per_second + 1);
  EXPECT_EQ(accepted + over_rate, kCalls);
  EXPECT_THAT(refusal.message(), HasSubstr("the key of process 7 made more than 500 calls a "
                                           "second (bursts up to 1000)"));
  EXPECT_THAT(auth_.RememberedNonces(worker), Le(budget.MaxNonces()));

  // Everyone else is served at once, the admin and another worker's key.
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Caller> admin = Verify(AdminCredential());
    ASSERT_TRUE(admin.ok()) << "admin call " << i << ": " << admin.status();
  }
  EXPECT_EQ(auth_.RememberedNonces(kAdminKeyId), 100u);
  Authenticator two_workers(time_, [](uint64_t id) -> std::optional<std::string> {
    return id == 1 || id == 2 ? std::optional<std::string>(absl::StrCat("key ", id)) : std::nullopt;
  });
  for (int i = 0; i < budget.burst + 10; ++i) {
    (void)two_workers.Verify(Credential("key 1", "1"), kMethod, kPeer);
  }
  EXPECT_EQ(two_workers.Verify(Credential("key 1", "1"), kMethod, kPeer).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(two_workers.Verify(Credential("key 2", "2"), kMethod, kPeer).ok())
      << "worker 2 has a budget of its own";

  // The flooding key itself gets its rate back once it slows down.
  time_.Advance(absl::Seconds(1));
  for (int i = 0; i < budget.per_second; ++i) {
    absl::StatusOr<Caller> caller = Verify(Credential(kWorkerKey, worker));
    ASSERT_TRUE(caller.ok()) << "call " << i << " after a quiet second: " << caller.status();
  }
}

// A refusal for the rate is made to a caller whose key checked out, so it carries the
// daemon's proof: the client can tell it from an impostor's answer. Other refusals do not.
TEST_F(AuthenticatorTest, ARefusalForTheRateCarriesTheDaemonsProof) {
  const Authenticator::Budget budget = Authenticator::Limits().worker;
  const std::string worker = absl::StrCat(kWorker);
  std::string proof;
  for (int i = 0; i < budget.burst; ++i) {
    std::string credential = Credential(kWorkerKey, worker);
    ASSERT_TRUE(auth_.Verify(credential, kMethod, kPeer, &proof).ok());
    ASSERT_EQ(proof,
              ServerProof(kWorkerKey, kMethod, CallCredential::Parse(credential)->nonce_hex));
  }
  std::string over = Credential(kWorkerKey, worker);
  proof.clear();
  EXPECT_TRUE(absl::IsResourceExhausted(auth_.Verify(over, kMethod, kPeer, &proof).status()));
  EXPECT_EQ(proof, ServerProof(kWorkerKey, kMethod, CallCredential::Parse(over)->nonce_hex));

  std::string admin = AdminCredential();
  ASSERT_TRUE(auth_.Verify(admin, kMethod, kPeer).ok());
  proof.clear();
  EXPECT_TRUE(RefusedFor(auth_.Verify(admin, kMethod, kPeer, &proof), "replayed"));
  EXPECT_EQ(proof, "") << "no proof for a replay";
  EXPECT_FALSE(auth_.Verify(Credential("a guess", kAdminKeyId), kMethod, kPeer, &proof).ok());
  EXPECT_EQ(proof, "") << "nor for a wrong key";
}

TEST_F(AuthenticatorTest, TheAdminKeyHasABudgetOfItsOwn) {
  const Authenticator::Limits limits{.admin = {.per_second = 10, .burst = 20},
                                     .worker = {.per_second = 10, .burst = 20}};
  Authenticator auth(
      time_,
      [](uint64_t id) -> std::optional<std::string> {
        return id == kWorker ? std::optional<std::string>(kWorkerKey) : std::nullopt;
      },
      limits);
  auth.SetAdminKeys({kAdminKey});
  auto verify = [&](absl::string_view key, absl::string_view key_id) {
    return auth.Verify(Credential(key, key_id), kMethod, kPeer).status();
  };
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(verify(kWorkerKey, "7").ok()) << i;
  ASSERT_TRUE(absl::IsResourceExhausted(verify(kWorkerKey, "7")));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(verify(kAdminKey, kAdminKeyId).ok()) << i;
  absl::Status admin_over = verify(kAdminKey, kAdminKeyId);
  EXPECT_TRUE(absl::IsResourceExhausted(admin_over)) << admin_over;
  EXPECT_THAT(admin_over.message(), HasSubstr("the admin key made more than 10 calls a second"));
  time_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(verify(kAdminKey, kAdminKeyId).ok()) << "one call's worth refilled";
}

// A call refused for its rate or as a replay leaves nothing behind, and a key's memory never
// holds more than its budget allows, however long it floods.
TEST_F(AuthenticatorTest, AKeysReplayMemoryNeverExceedsItsCap) {
  const Authenticator::Limits limits{.worker = {.per_second = 50, .burst = 200}};
  Authenticator auth(
      time_,
      [](uint64_t id) -> std::optional<std::string> {
        return id == kWorker ? std::optional<std::string>(kWorkerKey) : std::nullopt;
      },
      limits);
  const size_t cap = limits.worker.MaxNonces();
  ASSERT_EQ(cap, 200u + 50 * 250);
  size_t most = 0;
  // Three times the memory, at four times the rate.
  for (absl::Duration t; t < 3 * Authenticator::kNonceMemory; t += absl::Milliseconds(5)) {
    (void)auth.Verify(Credential(kWorkerKey, "7"), kMethod, kPeer);
    time_.Advance(absl::Milliseconds(5));
    if (t / absl::Milliseconds(5) % 1000 == 0) {
      size_t now = auth.RememberedNonces("7");
      ASSERT_LE(now, cap) << "after " << t;
      most = std::max(most, now);
    }
  }
  EXPECT_GE(most, cap - 50 * 20) << "the cap is what a flood reaches, not far above it";
  EXPECT_EQ(auth.RememberedWorkerNonces(), auth.RememberedNonces("7"));
}

// Worker keys are tracked up to a number of keys and of nonces; past that the least recently
// used worker key goes, never the admin's.
TEST_F(AuthenticatorTest, WorkerKeysAreBoundedAndTheLeastRecentGoesFirst) {
  const Authenticator::Limits limits{
      .worker = {.per_second = 0.1, .burst = 30}, .max_worker_keys = 8, .max_worker_nonces = 64};
  ASSERT_LE(limits.worker.MaxNonces(), limits.max_worker_nonces);
  Authenticator auth(
      time_, [](uint64_t id) -> std::optional<std::string> { return absl::StrCat("key ", id); },
      limits);
  auth.SetAdminKeys({kAdminKey});
  auto verify = [&](uint64_t id) {
    return auth.Verify(Credential(absl::StrCat("key ", id), absl::StrCat(id)), kMethod, kPeer);
  };
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(auth.Verify(AdminCredential(), kMethod, kPeer).ok());
  for (uint64_t id = 2; id <= 1000; ++id) {
    // Each new worker calls a few times; worker 1 now and then.
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(verify(id).ok()) << "worker " << id;
    if (id % 50 == 0) {
      ASSERT_TRUE(verify(1).ok()) << "worker 1, kept in use";
    }
    time_.Advance(absl::Milliseconds(1));
    ASSERT_LE(auth.TrackedWorkerKeys(), limits.max_worker_keys);
    ASSERT_LE(auth.RememberedWorkerNonces(), limits.max_worker_nonces);
  }
  EXPECT_GT(auth.RememberedNonces("1"), 0u) << "the key in use stays";
  EXPECT_EQ(auth.RememberedNonces("2"), 0u) << "a key unused since long went";
  EXPECT_EQ(auth.RememberedNonces(kAdminKeyId), 50u) << "the admin's memory is never dropped";
  EXPECT_TRUE(auth.Verify(AdminCredential(), kMethod, kPeer).ok());
}

// Dropping a worker key's memory must not make its old credentials good again.
TEST_F(AuthenticatorTest, DroppingAWorkerKeyNeverLetsAReplayThrough) {
  const Authenticator::Limits limits{.max_worker_keys = 2};
  Authenticator auth(
      time_, [](uint64_t id) -> std::optional<std::string> { return absl::StrCat("key ", id); },
      limits);
  std::string captured = Credential("key 1", "1");
  ASSERT_TRUE(auth.Verify(captured, kMethod, kPeer).ok());
  time_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(auth.Verify(Credential("key 2", "2"), kMethod, kPeer).ok());
  ASSERT_TRUE(auth.Verify(Credential("key 3", "3"), kMethod, kPeer).ok());
  ASSERT_EQ(auth.RememberedNonces("1"), 0u) << "worker 1's memory was dropped";

  EXPECT_TRUE(RefusedFor(auth.Verify(captured, kMethod, kPeer), "possibly replayed"));
  time_.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(auth.Verify(Credential("key 1", "1"), kMethod, kPeer).ok())
      << "a credential made after the drop passes";
  EXPECT_TRUE(RefusedFor(auth.Verify(captured, kMethod, kPeer), "possibly replayed"))
      << "and worker 1 tracked afresh still refuses the old one";
  // Once what was dropped would have been forgotten anyway, the rule is lifted: a credential
  // as old as the captured one (the wall clock stepped back to let it pass the time check).
  absl::Time captured_time = absl::FromUnixMillis(CallCredential::Parse(captured)->unix_millis);
  time_.Advance(Authenticator::kNonceMemory + Authenticator::kNonceSlice);
  time_.StepWallClock(captured_time - time_.Now());
  EXPECT_TRUE(auth.Verify(Credential("key 4", "4", captured_time), kMethod, kPeer).ok());
}

// ------------------------------------------------------------------------------------------
// Holding back refusals

TEST_F(AuthenticatorTest, FailureDelayGrowsPerKeyIdAndIsForgotten) {
  const Backoff::Policy policy;
  const std::string expired_worker_credential =
      Credential(kWorkerKey, absl::StrCat(kWorker), time_.Now() - absl::Hours(1));
  // Worker 7 keeps failing (its clock is an hour behind), from two peers.
  auto fail = [&](absl::string_view peer) {
    EXPECT_FALSE(Verify(expired_worker_credential, peer).ok());
    return auth_.FailureDelay(expired_worker_credential, peer);
  };
  EXPECT_EQ(auth_.FailureDelay(expired_worker_credential, "unix:a"), absl::ZeroDuration());
  for (int i = 0; i < policy.free_refusals; ++i) {
    EXPECT_EQ(fail("unix:a"), absl::ZeroDuration()) << "free refusal " << i;
  }
  EXPECT_EQ(fail("unix:a"), policy.first);
  EXPECT_EQ(fail("unix:b"), 2 * policy.first) << "the key id counts, not the peer";
  EXPECT_EQ(fail("unix:a"), 4 * policy.first);

  // Nobody else is held back: not the admin, not a credential without a known key, not a
  // call without a credential, all from the same peer.
  const std::string wrong_admin = Credential("a guess", kAdminKeyId);
  EXPECT_EQ(auth_.FailureDelay(wrong_admin, "unix:a"), absl::ZeroDuration());
  EXPECT_EQ(auth_.FailureDelay(Credential(kWorkerKey, "8"), "unix:a"), absl::ZeroDuration());
  EXPECT_EQ(auth_.FailureDelay(std::nullopt, "unix:a"), absl::ZeroDuration());
  EXPECT_TRUE(Verify(Credential(kWorkerKey, absl::StrCat(kWorker)), "unix:a").ok())
      << "worker 7's good credentials still pass";

  time_.Advance(policy.memory);
  EXPECT_EQ(auth_.FailureDelay(expired_worker_credential, "unix:a"), 4 * policy.first)
      << "remembered to the end";
  time_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(auth_.FailureDelay(expired_worker_credential, "unix:a"), absl::ZeroDuration());
}

TEST_F(AuthenticatorTest, CallsWithoutAKnownKeyAreHeldBackPerPeer) {
  const Backoff::Policy policy;
  // Made-up key ids (worker 8 does not exist) and missing credentials share the peer's count,
  // so inventing ids does not buy free refusals.
  for (int i = 0; i < policy.free_refusals; ++i) EXPECT_FALSE(Verify(std::nullopt, "unix:").ok());
  EXPECT_FALSE(Verify(Credential(kWorkerKey, "8"), "unix:").ok());
  EXPECT_FALSE(Verify("v1 nonsense", "unix:").ok());
  EXPECT_EQ(auth_.FailureDelay(std::nullopt, "unix:"), 2 * policy.first);
  EXPECT_EQ(auth_.FailureDelay(Credential(kWorkerKey, "9"), "unix:"), 2 * policy.first);
  EXPECT_EQ(auth_.FailureDelay(std::nullopt, "unix:other"), absl::ZeroDuration());
  EXPECT_EQ(auth_.FailureDelay(AdminCredential(), "unix:"), absl::ZeroDuration());
}

TEST_F(AuthenticatorTest, AKeyOverItsRateIsHeldBackToo) {
  const Backoff::Policy policy;
  const Authenticator::Budget budget = Authenticator::Limits().worker;
  const std::string worker = absl::StrCat(kWorker);
  for (int i = 0; i < budget.burst; ++i) ASSERT_TRUE(Verify(Credential(kWorkerKey, worker)).ok());
  std::string over = Credential(kWorkerKey, worker);
  for (int i = 0; i <= policy.free_refusals; ++i) {
    EXPECT_EQ(Verify(Credential(kWorkerKey, worker)).status().code(),
              absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(auth_.FailureDelay(over, kPeer), policy.first);
  EXPECT_EQ(auth_.FailureDelay(AdminCredential(), kPeer), absl::ZeroDuration());
}

// ------------------------------------------------------------------------------------------
// Logging

class AuthenticatorLogTest : public AuthenticatorTest {
 protected:
  AuthenticatorLogTest() : previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_)));
  }
  ~AuthenticatorLogTest() override { spdlog::set_default_logger(previous_); }

  int Lines() const {
    std::string text = log_.str();
    return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  }

  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST_F(AuthenticatorLogTest, RefusalsAreLoggedAtABoundedRate) {
  constexpr int kLimit = Authenticator::kLogLinesPerSecond;
  for (int i = 0; i < 1000; ++i) ASSERT_FALSE(Verify(std::nullopt).ok());
  EXPECT_EQ(Lines(), kLimit) << log_.str();
  EXPECT_THAT(log_.str(), HasSubstr("refused Status from unix:peer: the call carries no"));

  // The next second starts with one line for what the last one left out.
  time_.Advance(absl::Seconds(1));
  ASSERT_FALSE(Verify(std::nullopt).ok());
  EXPECT_EQ(Lines(), kLimit + 2);
  EXPECT_THAT(log_.str(),
              HasSubstr(absl::StrCat("... ", 1000 - kLimit, " more refused calls not logged")));

  // A call that passes also writes the summary, once the second is over.
  for (int i = 0; i < 1000; ++i) ASSERT_FALSE(Verify(std::nullopt).ok());
  time_.Advance(absl::Seconds(1));
  EXPECT_TRUE(Verify(AdminCredential()).ok());
  EXPECT_EQ(Lines(), 2 * kLimit + 2);
  EXPECT_THAT(log_.str(),
              HasSubstr(absl::StrCat("... ", 1001 - kLimit, " more refused calls not logged")));
}

}  // namespace
}  // namespace proctor
