// Authenticator: checks each call's authkey credential and makes the daemon's proof in return
// (the scheme is in common/authkey.h and the README).
//
// A credential is accepted when its mac verifies under an admin key (key id "admin") or under
// the key of the worker it names, its time is within kWindow of ours, and its nonce has not
// been seen in that window (a captured credential cannot be replayed; the nonce cache is
// bounded by kMaxNonces). Failures are logged without key material, and the refusal to a peer
// that keeps failing is held back longer and longer (FailureDelay), so a key cannot be
// guessed through the socket at speed. Thread-safe.
#ifndef PROCTOR_SERVER_AUTHENTICATOR_H_
#define PROCTOR_SERVER_AUTHENTICATOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
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
  static constexpr size_t kMaxNonces = 1 << 18;

  // `worker_key` returns a live record's key, or nothing for an unknown id.
  using WorkerKeyLookup = std::function<std::optional<std::string>(uint64_t id)>;

  Authenticator(Clock& clock, WorkerKeyLookup worker_key);

  // Replaces the admin keys (rotation: several may be valid at once).
  void SetAdminKeys(std::vector<std::string> keys);

  // `credential` is the x-proctor-auth metadata value, if any. UNAUTHENTICATED says why
  // (missing, malformed, expired, replayed, unknown key) without key material.
  absl::StatusOr<Caller> Verify(const std::optional<std::string>& credential,
                                absl::string_view method, absl::string_view peer);

  // How long to hold back the refusal of a call from `peer` that just failed.
  absl::Duration FailureDelay(absl::string_view peer);

 private:
  enum class NonceCheck { kFresh, kReplayed, kCacheFull };
  NonceCheck RememberNonceLocked(const std::string& nonce, absl::Time expiry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock& clock_;
  const WorkerKeyLookup worker_key_;
  absl::Mutex mu_;
  std::vector<std::string> admin_keys_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> nonces_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<absl::Time, std::string>> nonce_expiry_ ABSL_GUARDED_BY(mu_);
  Backoff failures_;  // by peer
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_AUTHENTICATOR_H_
