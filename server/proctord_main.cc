// proctord: flags, wiring, run. Everything else lives in the proctor_server library.
#include <cstdio>
#include <string>
#include <vector>

#include "server/daemon.h"
#include "server/event_loop.h"

int main(int argc, char** argv) {
  // Before any thread exists, so every thread inherits the mask and signals reach the
  // signalfd only.
  proctor::BlockDaemonSignals();
  absl::StatusOr<proctor::DaemonOptions> options =
      proctor::ParseDaemonFlags(std::vector<std::string>(argv + 1, argv + argc));
  if (!options.ok()) {
    bool help = absl::IsCancelled(options.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n", help ? "" : "proctord: ",
                 std::string(options.status().message()).c_str());
    return help ? 0 : 2;
  }
  return proctor::RunDaemon(*options);
}
