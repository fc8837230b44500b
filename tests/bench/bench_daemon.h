// BenchDaemon: a proctord of a benchmark's own, on a socket and state directory of its own,
// and what it costs (ReadStats), for the benchmarks that measure proctord from outside.
#ifndef PROCTOR_TESTS_BENCH_BENCH_DAEMON_H_
#define PROCTOR_TESTS_BENCH_BENCH_DAEMON_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace proctor {

// Ended (SIGTERM, then waited for) on destruction.
class BenchDaemon {
 public:
  // Starts `proctord` with `args` and its socket and state in `dir`, and waits until it
  // answers and, with `await_spares`, until its stock of spare capture files has stopped
  // growing (for 2 s; at most 30 s).
  static absl::StatusOr<std::unique_ptr<BenchDaemon>> Start(const std::string& proctord,
                                                            const std::vector<std::string>& args,
                                                            const std::string& dir,
                                                            bool await_spares = true);
  ~BenchDaemon();
  pid_t pid() const { return pid_; }
  // SIGKILL, and reaped: as a crash would end it (its keeper and workers live on).
  void KillNine();
  const ClientOptions& client_options() const { return client_options_; }
  Client& admin() { return *admin_; }

 private:
  BenchDaemon(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  // Waits until a call is answered; the daemon's log when it exited instead.
  absl::Status AwaitAnswer(const std::string& state_dir, const std::string& address);

  pid_t pid_;
  std::string log_path_;
  ClientOptions client_options_;
  std::unique_ptr<Client> admin_;
};

struct DaemonStats {
  int64_t rss_kib = 0;
  int64_t threads = 0;
  int64_t descriptors = 0;
};

// From /proc/<pid>/status and /proc/<pid>/fd.
absl::StatusOr<DaemonStats> ReadStats(pid_t pid);

// What /proc/<pid>/stat says of a process: its command name, state and parent, and the CPU
// time its threads have used (utime + stime, not its children's).
struct ProcStat {
  std::string comm;
  char state = '?';
  pid_t ppid = 0;
  int64_t cpu_us = 0;
};
// Nothing when the process is gone (or the file unreadable).
std::optional<ProcStat> ReadProcStat(pid_t pid);

// The live child of `parent` named proctor-keeper, looked for until `limit` has passed; 0 if
// none.
pid_t FindKeeper(pid_t parent, absl::Duration limit);

}  // namespace proctor

#endif  // PROCTOR_TESTS_BENCH_BENCH_DAEMON_H_
