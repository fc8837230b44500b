// proctor-keeper: started by proctord with its listening socket as descriptor 3; see keeper.h.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "server/keeper/keeper.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

int main() {
  // Nothing of proctord's but its log (stderr) and our socket: not its stdout (a pipe someone
  // may be waiting on to close), not a descriptor it leaked, not its working directory.
  constexpr int kListenFd = 3;
  syscall(SYS_close_range, kListenFd + 1, ~0U, 0U);
  if (int null = open("/dev/null", O_WRONLY | O_CLOEXEC); null >= 0) {
    dup2(null, 1);
    close(null);
  }
  if (chdir("/") != 0) return 1;
  // proctord's log is our stderr.
  spdlog::set_default_logger(spdlog::stderr_logger_st("keeper"));
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  absl::StatusOr<std::unique_ptr<proctor::Keeper>> keeper = proctor::Keeper::Create(kListenFd);
  if (!keeper.ok()) {
    std::fprintf(stderr, "proctor-keeper: %s\n", std::string(keeper.status().message()).c_str());
    return 1;
  }
  return (*keeper)->Run();
}
