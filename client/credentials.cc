#include "client/credentials.h"

#include <sys/stat.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/authkey.h"
#include "common/default_paths.h"
#include "common/environment_names.h"

namespace proctor {
namespace {

// What is wrong with the mode of the key file at `path`, if anything.
std::vector<std::string> ModeWarnings(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return {};
  return {absl::StrFormat("key file %s is %s by others (mode %04o); chmod 600 %s", path,
                          (st.st_mode & 044) != 0 ? "readable" : "accessible",
                          st.st_mode & 07777, path)};
}

absl::StatusOr<Credentials> FromFile(const std::string& path, absl::string_view how) {
  // Clients do not refuse a key file others can reach, as the daemon does its own: the key
  // may be the only way in, and refusing it would not make it secret again. They warn.
  absl::StatusOr<std::string> key = ReadKeyFile(path, /*private_only=*/false);
  if (!key.ok()) return key.status();
  return Credentials{*std::move(key), kAdminKeyId, absl::StrCat("authkey file ", path, how),
                     ModeWarnings(path)};
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

absl::Status Refusal(absl::string_view message) {
  return absl::UnauthenticatedError(message);
}

}  // namespace

absl::StatusOr<Credentials> FindCredentials(const std::string& explicit_file) {
  if (!explicit_file.empty()) return FromFile(explicit_file, "");
  if (std::string file = Env(kAuthkeyFileEnv); !file.empty()) {
    return FromFile(file, " (from $PROCTOR_AUTHKEY_FILE)");
  }
  if (std::string hex = Env(kAuthkeyEnv); !hex.empty()) {
    std::string id = Env(kIdEnv);
    absl::StatusOr<std::string> key = HexDecode(hex);
    if (!key.ok() || key->empty() || id.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "$PROCTOR_AUTHKEY must be lower-case hex and come with $PROCTOR_ID (as proctord sets "
          "them)",
          key.ok() ? "" : absl::StrCat(": ", key.status().message())));
    }
    return Credentials{*std::move(key), id, absl::StrCat("$PROCTOR_AUTHKEY of process ", id), {}};
  }
  std::string path = DefaultStateDir() + "/authkey";
  absl::StatusOr<Credentials> found = FromFile(path, " (the daemon's default)");
  if (absl::IsNotFound(found.status())) {
    return absl::NotFoundError(absl::StrCat(
        "no authkey: give --authkey-file, set $PROCTOR_AUTHKEY_FILE, or run where ", path,
        " can be read"));
  }
  return found;
}

std::string CallAuth::Sign(grpc::ClientContext& context, absl::string_view method) const {
  CallCredential credential = CallCredential::Make(
      credentials_.key, credentials_.key_id, method, absl::ToUnixMillis(absl::Now()));
  context.AddMetadata(kAuthMetadataKey, credential.Format());
  return credential.nonce_hex;
}

absl::Status CallAuth::CheckReply(const grpc::ClientContext& context, absl::string_view method,
                                  absl::string_view nonce, const grpc::Status& status,
                                  absl::string_view address) const {
  auto to_absl = [](const grpc::Status& s) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  };
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
      status.error_code() == grpc::StatusCode::CANCELLED) {
    return to_absl(status);  // nobody answered, or we gave up: nothing to check
  }
  std::string expected = ServerProof(credentials_.key, method, nonce);
  bool proved = false;
  for (const auto* metadata :
       {&context.GetServerInitialMetadata(), &context.GetServerTrailingMetadata()}) {
    auto it = metadata->find(kServerProofMetadataKey);
    proved = proved || (it != metadata->end() &&
                        ConstantTimeEquals(absl::string_view(it->second.data(), it->second.size()),
                                           expected));
  }
  if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    // Proved when the key checked out and something else did not (clock skew, a stale
    // credential); unproved when the daemon found no key of ours to sign with. Either way the
    // call did not happen.
    return Refusal(absl::StrCat("proctord at ", address, " refused the key from ",
                                credentials_.source, proved ? ": " : " (wrong key?): ",
                                status.error_message()));
  }
  if (proved) return to_absl(status);
  switch (status.error_code()) {
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      // gRPC's own answers (a message over the size limit, an unknown method, a reply that
      // does not parse) come before proctord could sign; reported, never acted on.
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat(status.error_message(),
                                       " (unsigned: gRPC's own answer, not proctord's)"));
    default:
      break;
  }
  return Refusal(absl::StrCat("the daemon at ", address,
                              " failed to prove it holds the key from ", credentials_.source,
                              "; not trusting its reply (is something else on that address?)"));
}

}  // namespace proctor
