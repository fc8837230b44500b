// Authkeys and the proofs made with them (see README, "Authentication").
//
// A key is a byte string (32 random bytes by default) that never crosses the wire. Each call
// carries, in its metadata, a credential that proves the caller holds a key:
//
//   x-proctor-auth: v1 <key-id> <unix-millis> <nonce-hex> <mac-hex>
//   mac = HMAC-SHA256(key, "proctor-v1 call\n<method>\n<key-id>\n<unix-millis>\n<nonce-hex>")
//
// and the daemon answers with its own proof, in the reply's initial (or trailing) metadata:
//
//   x-proctor-server-proof: <hex HMAC-SHA256(key, "proctor-v1 server\n<method>\n<nonce-hex>")>
//
// <key-id> is "admin" for a daemon key, or a worker's process id for that worker's key: proctor's
// id (Process.id, PROCTOR_ID in the worker's environment), in decimal, never the OS pid.
// <method> is the RPC's name within the service ("Start", "Join", ...). Every hex field here, and
// PROCTOR_AUTHKEY and PROCTOR_PROCESS_AUTHKEY, is lower-case hex, two digits per byte, high digit
// first; upper-case digits are refused, so each value has one spelling.
#ifndef PROCTOR_COMMON_AUTHKEY_H_
#define PROCTOR_COMMON_AUTHKEY_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace proctor {

inline constexpr char kAuthMetadataKey[] = "x-proctor-auth";
inline constexpr char kServerProofMetadataKey[] = "x-proctor-server-proof";
inline constexpr char kAdminKeyId[] = "admin";
inline constexpr size_t kAuthkeyBytes = 32;

// `n` bytes from the kernel's random generator.
std::string RandomBytes(size_t n);

std::string HmacSha256(absl::string_view key, absl::string_view message);
// Compares in time that depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Lower-case hex. HexDecode refuses upper-case digits (INVALID_ARGUMENT saying so).
std::string HexEncode(absl::string_view bytes);
absl::StatusOr<std::string> HexDecode(absl::string_view hex);

struct CallCredential {
  std::string key_id;
  int64_t unix_millis = 0;
  std::string nonce_hex;
  std::string mac_hex;

  // Makes a fresh credential for one call.
  static CallCredential Make(absl::string_view key, absl::string_view key_id,
                             absl::string_view method, int64_t unix_millis);
  // INVALID_ARGUMENT when `text` is not a well-formed credential, naming the first field that
  // is not (version, key-id, unix-millis, nonce-hex, mac-hex) and never echoing a hex field.
  static absl::StatusOr<CallCredential> Parse(absl::string_view text);
  std::string Format() const;
  // Whether the mac is the one `key` gives for `method` (constant-time).
  bool VerifiedBy(absl::string_view key, absl::string_view method) const;
};

// The daemon's answer for a call whose credential carried `nonce_hex`.
std::string ServerProof(absl::string_view key, absl::string_view method,
                        absl::string_view nonce_hex);

// Reads a key file. With `private_only`, refuses (FAILED_PRECONDITION, naming the path and
// mode, as ssh does) a file that group or others may read or write. An empty file is
// INVALID_ARGUMENT. The key's bytes never appear in a message.
absl::StatusOr<std::string> ReadKeyFile(const std::string& path, bool private_only);

// Creates `path` (mode 0600, exclusively) holding 32 fresh random bytes, and returns them.
absl::StatusOr<std::string> CreateKeyFile(const std::string& path);

}  // namespace proctor

#endif  // PROCTOR_COMMON_AUTHKEY_H_
