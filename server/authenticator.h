// Authenticator: checks each call's authkey credential and makes the daemon's proof in return
// (the scheme is in common/authkey.h and the README).
//
// A credential is accepted when its mac verifies under an admin key (key id "admin") or under
// the key of the worker it names, its time is within kWindow of our wall clock (the client
// signs its wall time, so this check is on Clock::Now()), and its nonce has not been seen in
// that window: a captured credential cannot be replayed.
//
// Everything after the mac check is kept per key id ("admin", or the worker's id), so one key
// holder cannot crowd out another:
// - Replay memory: each key's accepted nonces are remembered for at least kNonceMemory (and
//   less than kNonceMemory + kNonceSlice), measured on the monotonic clock, so a step of the
//   wall clock can neither shorten nor stretch that.
// - Rate: each key may make Limits::worker (or Limits::admin) calls per second on average,
//   with a burst; a call beyond that is refused with RESOURCE_EXHAUSTED naming the rate, for
//   that key alone, and its nonce is not remembered. So a key's replay memory never holds
//   more than Budget::MaxNonces() nonces.
// - Memory: the admin key's state is never dropped. Worker keys are tracked up to
//   Limits::max_worker_keys keys and Limits::max_worker_nonces nonces in all; past either,
//   the least recently used worker key's state is dropped. Its nonces are then summed up by
//   the latest credential time it accepted: until they would have been forgotten anyway, a
//   key tracked afresh accepts only credentials newer than that, so dropping a key never lets
//   a replay through (a rare credential made just before the drop and arriving after it is
//   refused as "possibly replayed"; the client retries with a fresh one).
//
// Refusals are logged without key material, at most kLogLinesPerSecond lines a second; the
// rest are counted and summed up in one line ("... N more refused calls not logged") with the
// next refusal or call after the second has passed. A refused call is held back longer and
// longer (FailureDelay) per key id when the credential names a known key, so guessing a key
// or hammering past a rate slows only that key's callers; calls whose credential names no
// known key are held back per peer. Thread-safe.
#ifndef PROCTOR_SERVER_AUTHENTICATOR_H_
#define PROCTOR_SERVER_AUTHENTICATOR_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/backoff.h"
#include "server/clock.h"

namespace proctor {

// Who made a call, once its credential checked out.
struct Caller {
  uint64_t worker_id = 0;  // 0: an admin key
  std::string key;         // the key that verified the call, for the daemon's proof
  std::string nonce_hex;

  bool admin() const { return worker_id == 0; }
};

class Authenticator {
 public:
  static constexpr absl::Duration kWindow = absl::Minutes(2);
  // Twice kWindow: the longest any one credential can pass the time check (from kWindow before
  // its time to kWindow after), so a copy stays refused however the sender's clock stood.
  static constexpr absl::Duration kNonceMemory = absl::Minutes(4);
  // Nonces are forgotten a slice at a time: cheaper to keep than one expiry per nonce.
  static constexpr absl::Duration kNonceSlice = absl::Seconds(10);
  static constexpr int kLogLinesPerSecond = 20;

  // One key's call rate.
  struct Budget {
    double per_second = 0;
    double burst = 0;  // REQUIRES: >= 1

    // The most nonces a key held to this budget can have in its replay memory.
    size_t MaxNonces() const;
  };
  // REQUIRES: worker.MaxNonces() <= max_worker_nonces (one key alone never forces a drop).
  struct Limits {
    Budget admin{.per_second = 5000, .burst = 10000};
    Budget worker{.per_second = 500, .burst = 1000};
    size_t max_worker_keys = 4096;
    size_t max_worker_nonces = size_t{1} << 19;
  };

  // Why Verify refused a call, counted per reason (refusals()).
  enum class Refusal {
    kMissing,           // no credential
    kMalformed,         // a credential that does not parse
    kWrongKey,          // the key it names does not verify its mac
    kUnknownKeyId,      // it names a process id never handed out
    kReleasedKey,       // it names a process whose record was released
    kOutsideWindow,     // its time is more than kWindow from ours
    kReplayed,          // its nonce was seen
    kPossiblyReplayed,  // older than what is remembered of a dropped key
    kOverRate,          // the key went over its rate (RESOURCE_EXHAUSTED)
  };
  static constexpr Refusal kRefusals[] = {
      Refusal::kMissing,      Refusal::kMalformed,   Refusal::kWrongKey,
      Refusal::kUnknownKeyId, Refusal::kReleasedKey, Refusal::kOutsideWindow,
      Refusal::kReplayed,     Refusal::kPossiblyReplayed, Refusal::kOverRate};
  // A name for metrics: "missing", "malformed", "wrong_key", "unknown_key_id", "released_key",
  // "outside_window", "replayed", "possibly_replayed", "over_rate".
  static absl::string_view RefusalName(Refusal refusal);

  // `worker_key` returns a live record's key, or nothing for an unknown id.
  using WorkerKeyLookup = std::function<std::optional<std::string>(uint64_t id)>;

  Authenticator(Clock& clock, WorkerKeyLookup worker_key);  // with the default Limits
  Authenticator(Clock& clock, WorkerKeyLookup worker_key, Limits limits);

  // Whether an id was ever handed out; tells an unknown key id from a released worker's in
  // refusals. REQUIRES: set before the first Verify, if at all.
  using IdIssued = std::function<bool(uint64_t id)>;
  void SetIdIssued(IdIssued id_issued);

  // Replaces the admin keys (rotation: several may be valid at once).
  void SetAdminKeys(std::vector<std::string> keys);

  // `credential` is the x-proctor-auth metadata value, if any. UNAUTHENTICATED says why, each
  // cause in its own words and without key material: missing, malformed (naming the field),
  // unknown key id, a released worker's key id, mac mismatch, clock skew (with the skew),
  // replayed, possibly replayed. RESOURCE_EXHAUSTED says the key went over its rate. `proof`,
  // when given, receives the daemon's proof for the reply whenever the mac verified, refusals
  // included (so the client can trust them), except for a replay; else it is left empty.
  absl::StatusOr<Caller> Verify(const std::optional<std::string>& credential,
                                absl::string_view method, absl::string_view peer,
                                std::string* proof = nullptr);

  // How long to hold back the refusal of a call that Verify just refused: counted per key id when
  // `credential` names the admin or a known worker, else per `peer`.
  absl::Duration FailureDelay(const std::optional<std::string>& credential, absl::string_view peer);

  // How many calls were refused for `refusal` since the authenticator was made. Lock-free.
  uint64_t refusals(Refusal refusal) const {
    return refusals_[static_cast<size_t>(refusal)].load(std::memory_order_relaxed);
  }

  // For tests: the nonces remembered for `key_id` ("admin" or a worker id), and for all worker
  // keys; how many worker keys are tracked.
  size_t RememberedNonces(absl::string_view key_id);
  size_t RememberedWorkerNonces();
  size_t TrackedWorkerKeys();

 private:
  // The nonces accepted within one kNonceSlice, by a 64-bit hash (a collision only ever refuses a
  // fresh call, never lets a replay through).
  struct NonceSlice {
    absl::Duration start;  // monotonic
    absl::flat_hash_set<uint64_t> nonces;
  };
  struct KeyState {
    KeyState(const Budget& budget, absl::Duration now)
        : calls({budget.per_second, budget.burst}, now), created(now) {}
    TokenBucket calls;
    std::vector<NonceSlice> slices;  // oldest first
    size_t nonces = 0;
    int64_t latest_millis = INT64_MIN;  // the latest credential time accepted
    absl::Duration created;             // monotonic
    std::list<uint64_t>::iterator lru;  // workers only: its place in lru_
  };
  // What was lost by dropping worker keys within the last kNonceMemory.
  struct Dropped {
    int64_t latest_millis = INT64_MIN;  // the latest credential time any of them accepted
    absl::Duration since = absl::InfiniteDuration();   // the first drop
    absl::Duration until = -absl::InfiniteDuration();  // when all of it is forgotten anyway
  };
  enum class NonceCheck { kFresh, kReplayed, kPossiblyReplayed, kOverRate };

  // The Backoff key for failures of `credential` (parsed or not) from `peer`.
  std::string FailureBucket(const std::optional<std::string>& credential, absl::string_view peer);
  NonceCheck CheckNonceLocked(uint64_t worker_id, int64_t sent_millis, uint64_t nonce)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  KeyState& WorkerStateLocked(uint64_t worker_id, absl::Duration now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets slices past their memory; returns how many nonces went.
  static size_t ExpireSlices(KeyState& state, absl::Duration now);
  // Drops the least recently used worker key other than `keep`.
  void DropLeastRecentWorkerLocked(uint64_t keep, absl::Duration now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `line` to the log unless kLogLinesPerSecond were written this second.
  void LogRefusal(const std::string& line);
  // Starts a new second once one has passed, logging how many lines the last one left out.
  void StartLogSecondLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_mu_);

  Clock& clock_;
  const WorkerKeyLookup worker_key_;
  IdIssued id_issued_;
  const Limits limits_;
  absl::Mutex mu_;
  std::vector<std::string> admin_keys_ ABSL_GUARDED_BY(mu_);
  KeyState admin_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, KeyState> workers_ ABSL_GUARDED_BY(mu_);
  std::list<uint64_t> lru_ ABSL_GUARDED_BY(mu_);  // worker ids, least recently used first
  size_t worker_nonces_ ABSL_GUARDED_BY(mu_) = 0;
  Dropped dropped_ ABSL_GUARDED_BY(mu_);
  Backoff failures_;  // by key id, or by peer

  absl::Mutex log_mu_;
  absl::Duration log_second_ ABSL_GUARDED_BY(log_mu_);  // monotonic
  int log_lines_ ABSL_GUARDED_BY(log_mu_) = 0;          // within log_second_
  int64_t suppressed_lines_ ABSL_GUARDED_BY(log_mu_) = 0;
  // Whether suppressed_lines_ > 0, read without the lock by calls that pass.
  std::atomic<bool> has_suppressed_lines_{false};
  std::array<std::atomic<uint64_t>, std::size(kRefusals)> refusals_{};
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_AUTHENTICATOR_H_
