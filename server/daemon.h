// The proctord program as a library: its options, how they are parsed from the command line,
// and RunDaemon, which wires the event loop, os, supervisor and gRPC server together and
// runs until SIGTERM or SIGINT has ended every worker.
#ifndef PROCTOR_SERVER_DAEMON_H_
#define PROCTOR_SERVER_DAEMON_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace proctor {

struct DaemonOptions {
  // "unix:/path" or "host:port"; empty: the default socket.
  std::vector<std::string> listen;
  std::string state_dir;  // empty: the default state directory
  size_t retain = 10000;
  size_t max_processes = 4096;
  size_t max_children = 512;
  size_t max_depth = 16;
  size_t capture_spares = 4096;  // capture files made ahead of time (see CaptureFiles)
  absl::Duration shutdown_grace = absl::Seconds(10);
  std::string log_level = "info";
  // Admin keys; empty: <state-dir>/authkey, created (32 random bytes, mode 0600) if missing.
  std::vector<std::string> authkey_files;
  unsigned socket_mode = 0600;
  // TLS for TCP listeners; without a certificate, TCP needs insecure_tcp.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;  // set: clients must present a certificate it signed
  bool insecure_tcp = false;
  // Set by main() from RaiseDaemonPriority(): the nice value workers get back.
  std::optional<int> worker_nice;
};

// Parses proctord's command line. INVALID_ARGUMENT names the offending flag; the text of
// --help is returned as the status message of a CANCELLED status (print it, exit 0).
absl::StatusOr<DaemonOptions> ParseDaemonFlags(const std::vector<std::string>& args);

// Runs the daemon; returns the process exit status. Call BlockDaemonSignals() first, before
// any thread starts.
int RunDaemon(const DaemonOptions& options);

}  // namespace proctor

#endif  // PROCTOR_SERVER_DAEMON_H_
