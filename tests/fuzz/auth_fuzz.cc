// Call authentication on arbitrary input: CallCredential::Parse (common/authkey.h) and
// Authenticator::Verify (server/authenticator.h) against fake time, with small limits so that
// rates, replay memory and the dropping of worker keys all come into play. The input is a
// sequence of operations: raw credentials, credentials signed with a real key (possibly
// damaged), steps of the clocks, key rotation. Aborts if a raw credential is accepted (no key
// is known to the input) or a nonce is accepted twice.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <fuzzer/FuzzedDataProvider.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/authkey.h"
#include "server/authenticator.h"
#include "spdlog/spdlog.h"
#include "tests/fake_time.h"

namespace {

using proctor::Authenticator;
using proctor::CallCredential;

// Workers 1..kLiveWorkers have keys; ids up to kIssuedIds were handed out (the rest released).
constexpr uint64_t kLiveWorkers = 6;
constexpr uint64_t kIssuedIds = 10;
constexpr const char* kMethods[] = {"Start", "Join", "Status", ""};

std::string WorkerKey(uint64_t id) { return absl::StrCat("key of worker ", id); }

Authenticator::Limits SmallLimits() {
  Authenticator::Limits limits;
  limits.admin = {.per_second = 5, .burst = 8};
  limits.worker = {.per_second = 3, .burst = 4};
  limits.max_worker_keys = 3;
  limits.max_worker_nonces = limits.worker.MaxNonces();
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // refusals are logged; the fuzzer needs none
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider input(data, size);
  proctor::FakeTime time;
  Authenticator auth(
      time,
      [](uint64_t id) -> std::optional<std::string> {
        if (id >= 1 && id <= kLiveWorkers) return WorkerKey(id);
        return std::nullopt;
      },
      SmallLimits());
  auth.SetIdIssued([](uint64_t id) { return id >= 1 && id <= kIssuedIds; });
  std::string admin_key = "the admin key";
  auth.SetAdminKeys({admin_key});
  absl::flat_hash_set<std::string> accepted_nonces;

  while (input.remaining_bytes() > 0) {
    const char* method = input.PickValueInArray(kMethods);
    std::string peer = input.ConsumeBool() ? "unix:a" : "unix:b";
    switch (input.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: {  // A credential from nowhere: it cannot know any key.
        std::optional<std::string> credential;
        if (input.ConsumeBool()) credential = input.ConsumeRandomLengthString(256);
        if (credential.has_value()) CallCredential::Parse(*credential).IgnoreError();
        std::string proof;
        if (auth.Verify(credential, method, peer, &proof).ok()) __builtin_trap();
        auth.FailureDelay(credential, peer);
        break;
      }
      case 1: {  // A credential signed with a real key, at a skewed time, perhaps damaged.
        uint64_t who = input.ConsumeIntegralInRange<uint64_t>(0, kIssuedIds + 2);
        std::string key = who == 0 ? admin_key : WorkerKey(who);
        std::string key_id = who == 0 ? proctor::kAdminKeyId : absl::StrCat(who);
        int64_t skew_ms = input.ConsumeIntegralInRange<int64_t>(-400'000, 400'000);
        std::string credential =
            CallCredential::Make(key, key_id, method,
                                 absl::ToUnixMillis(time.Now()) + skew_ms)
                .Format();
        if (input.ConsumeBool() && !credential.empty()) {
          credential[input.ConsumeIntegralInRange<size_t>(0, credential.size() - 1)] =
              input.ConsumeIntegral<char>();
        }
        std::string proof;
        absl::StatusOr<proctor::Caller> caller = auth.Verify(credential, method, peer, &proof);
        if (caller.ok() && who > kLiveWorkers) __builtin_trap();  // no such key is live
        if (caller.ok() && !accepted_nonces.insert(caller->nonce_hex).second) __builtin_trap();
        if (!caller.ok()) auth.FailureDelay(credential, peer);
        break;
      }
      case 2: {  // The same credential twice: the second is a replay.
        std::string key_id = input.ConsumeBool() ? std::string(proctor::kAdminKeyId) : "1";
        std::string key = key_id == proctor::kAdminKeyId ? admin_key : WorkerKey(1);
        std::string credential =
            CallCredential::Make(key, key_id, method, absl::ToUnixMillis(time.Now())).Format();
        bool first = auth.Verify(credential, method, peer).ok();
        if (first && auth.Verify(credential, method, peer).ok()) __builtin_trap();
        break;
      }
      case 3:
        time.Advance(absl::Milliseconds(input.ConsumeIntegralInRange<int64_t>(0, 600'000)));
        break;
      case 4:
        time.StepWallClock(
            absl::Milliseconds(input.ConsumeIntegralInRange<int64_t>(-600'000, 600'000)));
        break;
      case 5:  // Rotation: the old key stays valid beside the new one, or not.
        if (input.ConsumeBool()) {
          auth.SetAdminKeys({admin_key, "the next admin key"});
        } else {
          auth.SetAdminKeys({admin_key});
        }
        break;
    }
  }
  return 0;
}
