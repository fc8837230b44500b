// What several benches need alike: the monotonic clock in nanoseconds, room for many
// descriptors, and a scratch directory for one run.
#ifndef PROCTOR_TESTS_BENCH_BENCH_SUPPORT_H_
#define PROCTOR_TESTS_BENCH_BENCH_SUPPORT_H_

#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>
#include <system_error>

namespace proctor::bench {

inline int64_t MonotonicNanos() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// Raises the soft RLIMIT_NOFILE to the hard one; a failure is said on stderr, and the bench
// goes on with what it has.
inline void RaiseDescriptorLimit(const std::string& program) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      std::cerr << program << ": setrlimit(RLIMIT_NOFILE): " << std::strerror(errno) << std::endl;
    }
  }
}

// Runs `run` in a new directory <parent>/<program>-XXXXXX, removed with all in it afterwards;
// returns what `run` returns, or 1 (said on stderr) when the directory cannot be made.
inline int RunInScratchDir(const std::string& parent, const std::string& program,
                           const std::function<int(const std::string& dir)>& run) {
  std::string dir = (std::filesystem::path(parent) / (program + "-XXXXXX")).string();
  if (mkdtemp(dir.data()) == nullptr) {
    std::cerr << program << ": cannot make a directory " << dir << ": " << std::strerror(errno)
              << std::endl;
    return 1;
  }
  int rc = run(dir);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return rc;
}

}  // namespace proctor::bench

#endif  // PROCTOR_TESTS_BENCH_BENCH_SUPPORT_H_
