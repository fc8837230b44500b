// proctord: flags, wiring, run. Everything else lives in the proctor_server library.
#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/daemon.h"
#include "server/event_loop.h"
#include "server/posix_process_os.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  // Before any thread exists, so every thread inherits the mask and signals reach the
  // signalfd only.
  if (absl::Status blocked = proctor::BlockDaemonSignals(); !blocked.ok()) {
    std::fprintf(stderr, "proctord: %s\n", std::string(blocked.message()).c_str());
    return 1;
  }
  // Also before any thread: the daemon's threads outrank its workers, so a runaway tree of
  // workers cannot starve the calls that would stop it.
  std::optional<int> worker_nice = proctor::RaiseDaemonPriority();
  // One malloc arena for all threads. glibc gives threads arenas of their own (up to 8 per
  // CPU), and memory freed in one is not reused by the others: with gRPC's threads that added
  // about 3 MiB to the RSS of a daemon keeping a long history, and kept it growing after its
  // retention was full (proctor_scale_bench, README "Scale"). Small allocations still take
  // each thread's own cache without a lock.
  mallopt(M_ARENA_MAX, 1);
#ifdef NDEBUG
  // Debian's Abseil is built with its debug checks, so every Mutex::Lock would also update
  // the lock-order graph (GraphCycles::GetId, InsertEdge: about 5 µs of each call's time
  // under perf); debug builds of proctord keep the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif

  absl::StatusOr<proctor::DaemonCommandLine> command_line =
      proctor::ParseDaemonFlags(std::vector<std::string>(argv + 1, argv + argc));
  if (!command_line.ok()) {
    std::fprintf(stderr, "proctord: %s\n", std::string(command_line.status().message()).c_str());
    return 2;
  }
  if (const auto* help = std::get_if<proctor::DaemonHelp>(&*command_line)) {
    std::fputs(help->text.c_str(), stdout);
    return 0;
  }
  proctor::DaemonOptions& options = std::get<proctor::DaemonOptions>(*command_line);
  options.worker_nice = worker_nice;

  absl::StatusOr<std::unique_ptr<proctor::Daemon>> daemon = proctor::Daemon::Create(options);
  if (!daemon.ok()) {
    // Create sets up the log before anything that can fail: the error goes there.
    spdlog::error("{}", std::string(daemon.status().message()));
    return 1;
  }
  int status = (*daemon)->Run();
  if (!(*daemon)->restart_requested()) return status;
  // SIGUSR2: the same command line again, in place (the same pid, as a service manager
  // expects), from the executable now at our path: an upgrade installs a new one there.
  daemon->reset();
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string path = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string(argv[0]);
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.ends_with(kDeleted)) path.resize(path.size() - kDeleted.size());
  execv(path.c_str(), argv);
  spdlog::critical("cannot start {} again: {}", path, std::strerror(errno));
  return 1;
}
