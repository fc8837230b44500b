// proctord: flags, wiring, run. Everything else lives in the proctor_server library.
#include <cstdio>
#include <string>
#include <vector>

#include "server/daemon.h"
#include "server/event_loop.h"
#include "server/posix_process_os.h"

int main(int argc, char** argv) {
  // Before any thread exists, so every thread inherits the mask and signals reach the
  // signalfd only.
  proctor::BlockDaemonSignals();
  // Also before any thread: the daemon's threads outrank its workers, so a runaway tree of
  // workers cannot starve the calls that would stop it.
  std::optional<int> worker_nice = proctor::RaiseDaemonPriority();
  absl::StatusOr<proctor::DaemonOptions> options =
      proctor::ParseDaemonFlags(std::vector<std::string>(argv + 1, argv + argc));
  if (!options.ok()) {
    bool help = absl::IsCancelled(options.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n", help ? "" : "proctord: ",
                 std::string(options.status().message()).c_str());
    return help ? 0 : 2;
  }
  options->worker_nice = worker_nice;
  return proctor::RunDaemon(*options);
}
