#include "server/authenticator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/authkey.h"
#include "spdlog/spdlog.h"

namespace proctor {
Authenticator::Authenticator(Clock& clock, WorkerKeyLookup worker_key)
    : clock_(clock), worker_key_(std::move(worker_key)), failures_(clock, Backoff::Policy{}) {}

void Authenticator::SetAdminKeys(std::vector<std::string> keys) {
  absl::MutexLock lock(&mu_);
  admin_keys_ = std::move(keys);
}

absl::StatusOr<Caller> Authenticator::Verify(const std::optional<std::string>& credential,
                                             absl::string_view method,
                                             absl::string_view peer) {
  auto refuse = [&](absl::string_view why, absl::string_view key_id) {
    spdlog::warn("{}", absl::StrCat("refused ", method, " from ", peer,
                                    key_id.empty() ? "" : absl::StrCat(" (key id ", key_id, ")"),
                                    ": ", why));
    failures_.Refused(peer);
    return absl::UnauthenticatedError(absl::StrCat("authentication failed: ", why));
  };
  if (!credential.has_value()) {
    return refuse("the call carries no authkey proof (x-proctor-auth)", "");
  }
  absl::StatusOr<CallCredential> parsed = CallCredential::Parse(*credential);
  if (!parsed.ok()) return refuse(parsed.status().message(), "");

  Caller caller;
  caller.nonce_hex = parsed->nonce_hex;
  if (parsed->key_id == kAdminKeyId) {
    absl::MutexLock lock(&mu_);
    for (const std::string& key : admin_keys_) {
      if (parsed->VerifiedBy(key, method)) caller.key = key;
    }
  } else {
    uint64_t worker = 0;
    std::optional<std::string> key;
    if (absl::SimpleAtoi(parsed->key_id, &worker) && worker != 0) key = worker_key_(worker);
    if (key.has_value() && parsed->VerifiedBy(*key, method)) {
      caller.worker_id = worker;
      caller.key = *std::move(key);
    }
  }
  if (caller.key.empty()) return refuse("the key does not match", parsed->key_id);

  absl::Time now = clock_.Now();
  absl::Time sent = absl::FromUnixMillis(parsed->unix_millis);
  if (sent < now - kWindow || sent > now + kWindow) {
    return refuse(absl::StrCat("the credential's time is more than ",
                               absl::FormatDuration(kWindow),
                               " from the daemon's clock (replayed, or clocks disagree)"),
                  parsed->key_id);
  }
  NonceCheck check;
  {
    absl::MutexLock lock(&mu_);
    // Kept until no copy of it could pass the time check any more.
    check = RememberNonceLocked(parsed->nonce_hex, sent + kWindow);
  }
  if (check == NonceCheck::kReplayed) {
    return refuse("the credential was used before (replayed)", parsed->key_id);
  }
  if (check == NonceCheck::kCacheFull) {
    return absl::ResourceExhaustedError(
        "too many calls within the replay window; try again shortly");
  }
  return caller;
}

Authenticator::NonceCheck Authenticator::RememberNonceLocked(const std::string& nonce,
                                                             absl::Time expiry) {
  absl::Time now = clock_.Now();
  while (!nonce_expiry_.empty() && nonce_expiry_.front().first < now) {
    nonces_.erase(nonce_expiry_.front().second);
    nonce_expiry_.pop_front();
  }
  if (nonces_.contains(nonce)) return NonceCheck::kReplayed;
  if (nonces_.size() >= kMaxNonces) return NonceCheck::kCacheFull;
  nonces_.emplace(nonce, expiry);
  nonce_expiry_.emplace_back(expiry, nonce);
  // Entries expire in insertion order only roughly (times differ by client); the deque keeps
  // its front the earliest of what is left often enough, and the size bound holds regardless.
  return NonceCheck::kFresh;
}

absl::Duration Authenticator::FailureDelay(absl::string_view peer) {
  return failures_.Current(peer);
}

}  // namespace proctor
