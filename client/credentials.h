// Credentials: which authkey a client uses, and the per-call proof made with it.
//
// The key is looked for, in this order, in:
//   1. the file given explicitly (the CLI's --authkey-file);
//   2. the file named by $PROCTOR_AUTHKEY_FILE;
//   3. $PROCTOR_AUTHKEY (hex) with $PROCTOR_ID: a worker's own key, which proctord puts in
//      every worker's environment; calls made with it reach only that worker's subtree;
//   4. the daemon's default key file, <default state dir>/authkey.
// Key files are admin keys. Messages name where the key came from, never the key. A key file
// that group or others can reach is used, with a warning (the daemon refuses its own).
#ifndef PROCTOR_CLIENT_CREDENTIALS_H_
#define PROCTOR_CLIENT_CREDENTIALS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace proctor {

struct Credentials {
  std::string key;
  std::string key_id;  // "admin", or the worker's process id
  std::string source;  // "authkey file /x", "$PROCTOR_AUTHKEY": for messages
  // Problems worth telling the user that did not stop the key from being used, one line each
  // without a prefix: "key file /x is readable by others (mode 0644); chmod 600 /x".
  std::vector<std::string> warnings;
};

// Finds the key as above. `explicit_file` empty: start the search at step 2. NOT_FOUND
// (naming every place looked) when there is none.
absl::StatusOr<Credentials> FindCredentials(const std::string& explicit_file);

// Signs calls with one key and checks the daemon's proof on their replies. Thread-safe.
class CallAuth {
 public:
  explicit CallAuth(Credentials credentials) : credentials_(std::move(credentials)) {}

  // Adds the credential for `method` to `context`; returns the nonce the reply must answer.
  std::string Sign(grpc::ClientContext& context, absl::string_view method) const;

  // What the caller should see: `status` unchanged when the reply proves the daemon holds the
  // key (or when no daemon answered at all), UNAUTHENTICATED with a message saying which
  // side failed otherwise. `address` is for messages.
  absl::Status CheckReply(const grpc::ClientContext& context, absl::string_view method,
                          absl::string_view nonce, const grpc::Status& status,
                          absl::string_view address) const;

  const Credentials& credentials() const { return credentials_; }

 private:
  Credentials credentials_;
};

}  // namespace proctor

#endif  // PROCTOR_CLIENT_CREDENTIALS_H_
