#include "common/authkey.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace proctor {
namespace {

constexpr size_t kNonceBytes = 16;

std::string CallMessage(absl::string_view method, absl::string_view key_id, int64_t millis,
                        absl::string_view nonce_hex) {
  return absl::StrCat("proctor-v1 call\n", method, "\n", key_id, "\n", millis, "\n", nonce_hex);
}

}  // namespace

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  size_t filled = 0;
  while (filled < n) {
    ssize_t got = getrandom(out.data() + filled, n - filled, 0);
    if (got > 0) filled += static_cast<size_t>(got);
  }
  return out;
}

std::string HmacSha256(absl::string_view key, absl::string_view message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &length);
  return std::string(reinterpret_cast<char*>(mac), length);
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string HexEncode(absl::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

absl::StatusOr<std::string> HexDecode(absl::string_view hex) {
  if (hex.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hex text has an odd length (", hex.size(), " characters)"));
  }
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int value = 0;
    for (char c : hex.substr(i, 2)) {
      // One rule for every hex field: lower case only, so a value has exactly one spelling.
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (digit < 0) {
        return absl::InvalidArgumentError(
            c >= 'A' && c <= 'F' ? "hex text has an upper-case digit (use 0-9a-f)"
                                 : "hex text has a character outside 0-9a-f");
      }
      value = value * 16 + digit;
    }
    out.push_back(static_cast<char>(value));
  }
  return out;
}

CallCredential CallCredential::Make(absl::string_view key, absl::string_view key_id,
                                    absl::string_view method, int64_t unix_millis) {
  CallCredential c;
  c.key_id = std::string(key_id);
  c.unix_millis = unix_millis;
  c.nonce_hex = HexEncode(RandomBytes(kNonceBytes));
  c.mac_hex = HexEncode(HmacSha256(key, CallMessage(method, key_id, unix_millis, c.nonce_hex)));
  return c;
}

absl::StatusOr<CallCredential> CallCredential::Parse(absl::string_view text) {
  auto malformed = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed credential: ", why,
        " (expected \"v1 <key-id> <unix-millis> <nonce-hex> <mac-hex>\", single spaces)"));
  };
  // Field values are echoed only where they cannot be secret, and cut short.
  auto shown = [](absl::string_view field) {
    return field.size() <= 24 ? std::string(field) : absl::StrCat(field.substr(0, 24), "...");
  };
  auto hex_field = [&](absl::string_view name, absl::string_view field,
                       size_t bytes) -> absl::Status {
    std::string problem;
    if (field.size() != 2 * bytes) {
      problem = absl::StrCat("it has ", field.size(), " characters");
    } else if (absl::c_any_of(field, [](char c) { return c >= 'A' && c <= 'F'; })) {
      problem = "it has upper-case digits";
    } else if (!HexDecode(field).ok()) {
      problem = "it has a character outside 0-9a-f";
    } else {
      return absl::OkStatus();
    }
    return malformed(absl::StrCat("field ", name, " must be ", 2 * bytes,
                                  " lower-case hex digits (", bytes, " bytes); ", problem));
  };
  std::vector<absl::string_view> parts = absl::StrSplit(text, ' ');
  if (parts.size() != 5) {
    return malformed(absl::StrCat("it has ", parts.size(), " fields, not 5"));
  }
  if (parts[0] != "v1") {
    return malformed(absl::StrCat("field version is \"", shown(parts[0]), "\", not \"v1\""));
  }
  CallCredential c;
  uint64_t worker = 0;
  const bool decimal = !parts[1].empty() && parts[1][0] != '0' &&
                       absl::c_all_of(parts[1], absl::ascii_isdigit) &&
                       absl::SimpleAtoi(parts[1], &worker);
  if (parts[1] != kAdminKeyId && !decimal) {
    return malformed(absl::StrCat("field key-id \"", shown(parts[1]),
                                  "\" is neither \"admin\" nor a process id (proctor's id, "
                                  "as in PROCTOR_ID: decimal, no leading zero)"));
  }
  if (parts[2].empty() || parts[2].size() > 18 || !absl::c_all_of(parts[2], absl::ascii_isdigit) ||
      !absl::SimpleAtoi(parts[2], &c.unix_millis)) {
    return malformed(absl::StrCat("field unix-millis \"", shown(parts[2]),
                                  "\" is not milliseconds since the epoch in decimal digits"));
  }
  if (absl::Status s = hex_field("nonce-hex", parts[3], kNonceBytes); !s.ok()) return s;
  if (absl::Status s = hex_field("mac-hex", parts[4], 32); !s.ok()) return s;
  c.key_id = std::string(parts[1]);
  c.nonce_hex = std::string(parts[3]);
  c.mac_hex = std::string(parts[4]);
  return c;
}

std::string CallCredential::Format() const {
  return absl::StrCat("v1 ", key_id, " ", unix_millis, " ", nonce_hex, " ", mac_hex);
}

bool CallCredential::VerifiedBy(absl::string_view key, absl::string_view method) const {
  std::string expected =
      HexEncode(HmacSha256(key, CallMessage(method, key_id, unix_millis, nonce_hex)));
  return ConstantTimeEquals(expected, mac_hex);
}

std::string ServerProof(absl::string_view key, absl::string_view method,
                        absl::string_view nonce_hex) {
  return HexEncode(
      HmacSha256(key, absl::StrCat("proctor-v1 server\n", method, "\n", nonce_hex)));
}

absl::StatusOr<std::string> ReadKeyFile(const std::string& path, bool private_only) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string message = absl::StrCat("authkey file ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  struct stat st;
  fstat(fd, &st);
  if (private_only && (st.st_mode & 077) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrFormat(
        "authkey file %s has mode %04o: group or others can reach it; it must be private "
        "(chmod 600 %s)",
        path, st.st_mode & 07777, path));
  }
  std::string key;
  char buf[512];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) key.append(buf, n);
  close(fd);
  if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("authkey file ", path, " is empty"));
  return key;
}

absl::StatusOr<std::string> CreateKeyFile(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create authkey file ", path, ": ", std::strerror(errno)));
  }
  std::string key = RandomBytes(kAuthkeyBytes);
  bool ok = write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && fsync(fd) == 0;
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("cannot write authkey file ", path));
  return key;
}

}  // namespace proctor
