// The environment variables proctord and its clients agree on. A worker finds the first four
// in its environment (set by proctord at Start) and calls back into proctord as itself; the
// others are read by the clients (CLI, C++ library) when no option says otherwise.
#ifndef PROCTOR_COMMON_ENVIRONMENT_NAMES_H_
#define PROCTOR_COMMON_ENVIRONMENT_NAMES_H_

namespace proctor {

// Every variable of proctor's starts with this; proctord passes none of its own to workers.
inline constexpr char kEnvPrefix[] = "PROCTOR_";

// Set by proctord in each worker's environment.
inline constexpr char kAddressEnv[] = "PROCTOR_ADDRESS";  // also the clients' default address
inline constexpr char kIdEnv[] = "PROCTOR_ID";            // the worker's own id
// The worker's own credential, hex: what it signs calls with. Never its parent's.
inline constexpr char kAuthkeyEnv[] = "PROCTOR_AUTHKEY";
// multiprocessing's Process.authkey, hex: inherited from the parent as in Python, for the
// program's own use; proctord does not accept it as a credential.
inline constexpr char kProcessAuthkeyEnv[] = "PROCTOR_PROCESS_AUTHKEY";

// Read by the clients.
inline constexpr char kAuthkeyFileEnv[] = "PROCTOR_AUTHKEY_FILE";
inline constexpr char kTlsCaEnv[] = "PROCTOR_TLS_CA";
inline constexpr char kTlsCertEnv[] = "PROCTOR_TLS_CERT";
inline constexpr char kTlsKeyEnv[] = "PROCTOR_TLS_KEY";

}  // namespace proctor

#endif  // PROCTOR_COMMON_ENVIRONMENT_NAMES_H_
