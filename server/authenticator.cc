#include "server/authenticator.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/authkey.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// The worker a credential's key id names, or 0 (the admin, or no worker at all).
uint64_t WorkerIdOf(absl::string_view key_id) {
  uint64_t worker = 0;
  if (key_id == kAdminKeyId || !absl::SimpleAtoi(key_id, &worker)) return 0;
  return worker;
}

std::string KeyName(uint64_t worker_id) {
  return worker_id == 0 ? "the admin key" : absl::StrCat("the key of process ", worker_id);
}

}  // namespace

absl::string_view Authenticator::RefusalName(Refusal refusal) {
  switch (refusal) {
    case Refusal::kMissing:
      return "missing";
    case Refusal::kMalformed:
      return "malformed";
    case Refusal::kWrongKey:
      return "wrong_key";
    case Refusal::kUnknownKeyId:
      return "unknown_key_id";
    case Refusal::kReleasedKey:
      return "released_key";
    case Refusal::kOutsideWindow:
      return "outside_window";
    case Refusal::kReplayed:
      return "replayed";
    case Refusal::kPossiblyReplayed:
      return "possibly_replayed";
    case Refusal::kOverRate:
      return "over_rate";
  }
  return "unknown";
}

size_t Authenticator::Budget::MaxNonces() const {
  // A key's memory holds what it was let through within one memory plus one slice; a token bucket
  // lets through at most burst + rate * length in any stretch of time.
  return static_cast<size_t>(
      std::ceil(burst + per_second * absl::ToDoubleSeconds(kNonceMemory + kNonceSlice)));
}

Authenticator::Authenticator(Clock& clock, WorkerKeyLookup worker_key)
    : Authenticator(clock, std::move(worker_key), Limits()) {}

Authenticator::Authenticator(Clock& clock, WorkerKeyLookup worker_key, Limits limits)
    : clock_(clock),
      worker_key_(std::move(worker_key)),
      limits_(limits),
      admin_(limits.admin, clock.MonotonicNow()),
      failures_(clock, Backoff::Policy{}),
      log_second_(clock.MonotonicNow()) {}

void Authenticator::SetIdIssued(IdIssued id_issued) { id_issued_ = std::move(id_issued); }

void Authenticator::SetAdminKeys(std::vector<std::string> keys) {
  absl::MutexLock lock(&mu_);
  admin_keys_ = std::move(keys);
}

absl::StatusOr<Caller> Authenticator::Verify(const std::optional<std::string>& credential,
                                             absl::string_view method, absl::string_view peer,
                                             std::string* proof) {
  auto log_refusal = [&](Refusal refusal, absl::string_view why, absl::string_view key_id) {
    refusals_[static_cast<size_t>(refusal)].fetch_add(1, std::memory_order_relaxed);
    LogRefusal(absl::StrCat("refused ", method, " from ", peer,
                            key_id.empty() ? "" : absl::StrCat(" (key id ", key_id, ")"), ": ",
                            why));
    failures_.Refused(FailureBucket(credential, peer));
  };
  auto refuse = [&](Refusal refusal, absl::string_view why, absl::string_view key_id) {
    log_refusal(refusal, why, key_id);
    return absl::UnauthenticatedError(absl::StrCat("authentication failed: ", why));
  };
  if (!credential.has_value()) {
    return refuse(Refusal::kMissing, "the call carries no credential (metadata x-proctor-auth)", "");
  }
  absl::StatusOr<CallCredential> parsed = CallCredential::Parse(*credential);
  if (!parsed.ok()) return refuse(Refusal::kMalformed, parsed.status().message(), "");

  Caller caller;
  caller.nonce_hex = parsed->nonce_hex;
  if (parsed->key_id == kAdminKeyId) {
    absl::MutexLock lock(&mu_);
    for (const std::string& key : admin_keys_) {
      if (parsed->VerifiedBy(key, method)) caller.key = key;
    }
    if (caller.key.empty()) {
      return refuse(
          Refusal::kWrongKey,
          "the mac does not verify under any admin key of this daemon (a different key, or "
          "a message signed otherwise than the README's Authentication says)",
          parsed->key_id);
    }
  } else {
    uint64_t worker = WorkerIdOf(parsed->key_id);
    std::optional<std::string> key = worker_key_(worker);
    if (!key.has_value()) {
      if (id_issued_ != nullptr && !id_issued_(worker)) {
        return refuse(Refusal::kUnknownKeyId, absl::StrCat("unknown key id ", worker,
                                   ": no process has had that id (a key id is proctor's "
                                   "process id, PROCTOR_ID, not an OS pid)"),
                      parsed->key_id);
      }
      return refuse(Refusal::kReleasedKey, absl::StrCat("key id ", worker, " names no process: process ", worker,
                                 " has been released, and its key ended with its record"),
                    parsed->key_id);
    }
    if (!parsed->VerifiedBy(*key, method)) {
      return refuse(Refusal::kWrongKey, absl::StrCat("the mac does not verify under the key of process ", worker,
                                 " (a different key, or a message signed otherwise than the "
                                 "README's Authentication says)"),
                    parsed->key_id);
    }
    caller.worker_id = worker;
    caller.key = *std::move(key);
  }
  // From here the caller holds a key we know, so every answer, refusals included, can carry
  // our proof; only a replay gets none (its proof would repeat the one the original got).
  auto prove = [&] {
    if (proof != nullptr) *proof = ServerProof(caller.key, method, caller.nonce_hex);
  };

  absl::Time now = clock_.Now();
  absl::Duration skew = absl::FromUnixMillis(parsed->unix_millis) - now;
  if (absl::AbsDuration(skew) > kWindow) {
    prove();
    return refuse(Refusal::kOutsideWindow, absl::StrCat("the credential's time is ",
                               absl::FormatDuration(absl::AbsDuration(skew)),
                               skew > absl::ZeroDuration() ? " ahead of" : " behind",
                               " the daemon's clock; at most ", absl::FormatDuration(kWindow),
                               " either way is accepted (set the clocks right, and sign each "
                               "call when it is made)"),
                  parsed->key_id);
  }
  NonceCheck check;
  {
    absl::MutexLock lock(&mu_);
    check = CheckNonceLocked(caller.worker_id, parsed->unix_millis,
                             absl::Hash<absl::string_view>{}(parsed->nonce_hex));
  }
  if (check != NonceCheck::kReplayed) prove();
  switch (check) {
    case NonceCheck::kFresh:
      break;
    case NonceCheck::kReplayed:
      return refuse(
          Refusal::kReplayed,
          "the credential was used before (replayed): every call needs a fresh nonce",
          parsed->key_id);
    case NonceCheck::kPossiblyReplayed:
      return refuse(
          Refusal::kPossiblyReplayed,
          "the credential is older than what the daemon still remembers of this key's calls "
          "(possibly replayed); make a fresh one",
          parsed->key_id);
    case NonceCheck::kOverRate: {
      const Budget& budget = caller.admin() ? limits_.admin : limits_.worker;
      std::string why = absl::StrCat(KeyName(caller.worker_id), " made more than ",
                                     budget.per_second, " calls a second (bursts up to ",
                                     budget.burst, "); its calls are refused until it slows down");
      log_refusal(Refusal::kOverRate, why, parsed->key_id);
      return absl::ResourceExhaustedError(why);
    }
  }
  if (has_suppressed_lines_.load(std::memory_order_relaxed)) {
    absl::MutexLock lock(&log_mu_);
    StartLogSecondLocked();
  }
  return caller;
}

Authenticator::NonceCheck Authenticator::CheckNonceLocked(uint64_t worker_id, int64_t sent_millis,
                                                          uint64_t nonce) {
  // Monotonic, not wall-clock: a step of the wall clock forward must not let every nonce go at once
  // (a step back would then make their credentials pass the time check again).
  absl::Duration now = clock_.MonotonicNow();
  if (now >= dropped_.until) dropped_ = Dropped{};
  KeyState& state = worker_id == 0 ? admin_ : WorkerStateLocked(worker_id, now);
  size_t expired = ExpireSlices(state, now);
  if (worker_id != 0) worker_nonces_ -= expired;

  for (const NonceSlice& slice : state.slices) {
    if (slice.nonces.contains(nonce)) return NonceCheck::kReplayed;
  }
  // A worker key tracked since a drop may have had nonces before that are gone now; only
  // credentials newer than every dropped one are surely not among them.
  if (worker_id != 0 && state.created >= dropped_.since && sent_millis <= dropped_.latest_millis) {
    return NonceCheck::kPossiblyReplayed;
  }
  // Charged only here, after the mac: a call cannot spend a budget whose key it does not hold. A
  // call over the rate leaves no nonce behind, so the memory stays within budget.
  if (!state.calls.TryTake(now)) return NonceCheck::kOverRate;

  if (state.slices.empty() || now - state.slices.back().start >= kNonceSlice) {
    state.slices.push_back(NonceSlice{.start = now, .nonces = {}});
  }
  state.slices.back().nonces.insert(nonce);
  ++state.nonces;
  state.latest_millis = std::max(state.latest_millis, sent_millis);
  if (worker_id != 0) {
    ++worker_nonces_;
    while (worker_nonces_ > limits_.max_worker_nonces && workers_.size() > 1) {
      DropLeastRecentWorkerLocked(worker_id, now);
    }
  }
  return NonceCheck::kFresh;
}

Authenticator::KeyState& Authenticator::WorkerStateLocked(uint64_t worker_id, absl::Duration now) {
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) {
    lru_.splice(lru_.end(), lru_, it->second.lru);
    return it->second;
  }
  while (!workers_.empty() && workers_.size() >= limits_.max_worker_keys) {
    DropLeastRecentWorkerLocked(worker_id, now);
  }
  it = workers_.emplace(worker_id, KeyState(limits_.worker, now)).first;
  it->second.lru = lru_.insert(lru_.end(), worker_id);
  return it->second;
}

size_t Authenticator::ExpireSlices(KeyState& state, absl::Duration now) {
  // A slice holds nonces from its start to kNonceSlice later; the last of them may go once
  // kNonceMemory has passed since then.
  auto live = std::find_if(state.slices.begin(), state.slices.end(), [&](const NonceSlice& s) {
    return s.start + kNonceSlice + kNonceMemory > now;
  });
  size_t expired = 0;
  for (auto it = state.slices.begin(); it != live; ++it) expired += it->nonces.size();
  state.slices.erase(state.slices.begin(), live);
  state.nonces -= expired;
  return expired;
}

void Authenticator::DropLeastRecentWorkerLocked(uint64_t keep, absl::Duration now) {
  uint64_t victim = lru_.front() != keep ? lru_.front() : *std::next(lru_.begin());
  auto it = workers_.find(victim);
  KeyState& state = it->second;
  worker_nonces_ -= ExpireSlices(state, now);
  if (state.nonces > 0) {
    // Its remembered nonces go with it: sum them up by the latest time they carry, until the last
    // of them would have been forgotten anyway.
    dropped_.latest_millis = std::max(dropped_.latest_millis, state.latest_millis);
    dropped_.since = std::min(dropped_.since, now);
    dropped_.until =
        std::max(dropped_.until, state.slices.back().start + kNonceSlice + kNonceMemory);
    worker_nonces_ -= state.nonces;
  }
  lru_.erase(state.lru);
  workers_.erase(it);
}

std::string Authenticator::FailureBucket(const std::optional<std::string>& credential,
                                         absl::string_view peer) {
  absl::StatusOr<CallCredential> parsed = credential.has_value()
                                              ? CallCredential::Parse(*credential)
                                              : absl::InvalidArgumentError("no credential");
  if (parsed.ok()) {
    // Only a key that exists gets a bucket of its own: made-up key ids would otherwise each
    // start with free refusals.
    uint64_t worker = WorkerIdOf(parsed->key_id);
    if (parsed->key_id == kAdminKeyId || (worker != 0 && worker_key_(worker).has_value())) {
      return absl::StrCat("key ", parsed->key_id);
    }
  }
  return absl::StrCat("peer ", peer);
}

absl::Duration Authenticator::FailureDelay(const std::optional<std::string>& credential,
                                           absl::string_view peer) {
  return failures_.Current(FailureBucket(credential, peer));
}

void Authenticator::LogRefusal(const std::string& line) {
  absl::MutexLock lock(&log_mu_);
  StartLogSecondLocked();
  if (log_lines_ < kLogLinesPerSecond) {
    ++log_lines_;
    spdlog::warn("{}", line);
  } else {
    ++suppressed_lines_;
    has_suppressed_lines_.store(true, std::memory_order_relaxed);
  }
}

void Authenticator::StartLogSecondLocked() {
  // Whole seconds rather than a token bucket: a flood then costs kLogLinesPerSecond lines and one
  // summary a second, not a summary between every two lines.
  absl::Duration now = clock_.MonotonicNow();
  if (now - log_second_ < absl::Seconds(1)) return;
  log_second_ = now;
  log_lines_ = 0;
  if (suppressed_lines_ > 0) {
    spdlog::warn("... {} more refused calls not logged", suppressed_lines_);
    suppressed_lines_ = 0;
    has_suppressed_lines_.store(false, std::memory_order_relaxed);
  }
}

size_t Authenticator::RememberedNonces(absl::string_view key_id) {
  absl::MutexLock lock(&mu_);
  absl::Duration now = clock_.MonotonicNow();
  if (key_id == kAdminKeyId) {
    ExpireSlices(admin_, now);
    return admin_.nonces;
  }
  auto it = workers_.find(WorkerIdOf(key_id));
  if (it == workers_.end()) return 0;
  worker_nonces_ -= ExpireSlices(it->second, now);
  return it->second.nonces;
}

size_t Authenticator::RememberedWorkerNonces() {
  absl::MutexLock lock(&mu_);
  absl::Duration now = clock_.MonotonicNow();
  for (auto& [id, state] : workers_) worker_nonces_ -= ExpireSlices(state, now);
  return worker_nonces_;
}

size_t Authenticator::TrackedWorkerKeys() {
  absl::MutexLock lock(&mu_);
  return workers_.size();
}

}  // namespace proctor
