// notify_bench: what the sd_notify endpoints cost proctord. Opens -n endpoints (NotifySockets
// on a real EventLoop, as proctord runs them) and says how many descriptors and how much
// resident memory they took; then sends --messages datagrams, one at a time and round-robin
// over the endpoints, from an unbound socket as a worker's sd_notify does, and says how long
// each took from before its sendto to on_message on the loop thread (p50, p99, max).
//
// What RSS does not show, each socket's kernel side (its struct sock, inode, dentry), is
// given as the growth of the kernel's slab over the same time: system-wide, so only a rough
// figure on a busy machine. `belongs` answers at once here; in proctord it is
// PosixProcessOs::InWorkerTree, a pidfd_open and a map lookup for a leader that sends itself.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/event_loop.h"
#include "server/notify_sockets.h"
#include "spdlog/spdlog.h"
#include "tests/bench/bench_support.h"

namespace proctor {
namespace {

using bench::MonotonicNanos;

struct Options {
  size_t n = 1000;
  size_t messages = 5000;
  std::string dir = std::filesystem::temp_directory_path();
};

size_t OpenDescriptors() {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++count;
  }
  return count;
}

// The kernel's slab (Slab: in /proc/meminfo), system-wide.
int64_t SlabKib() {
  FILE* meminfo = std::fopen("/proc/meminfo", "r");
  if (meminfo == nullptr) return 0;
  char line[256];
  long long kib = 0;
  while (std::fgets(line, sizeof(line), meminfo) != nullptr) {
    if (std::sscanf(line, "Slab: %lld kB", &kib) == 1) break;
  }
  std::fclose(meminfo);
  return kib;
}

int64_t ResidentKib() {
  long pages = 0;
  long resident = 0;
  FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return 0;
  if (std::fscanf(statm, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(statm);
  return resident * sysconf(_SC_PAGESIZE) / 1024;
}

// The latencies heard so far, in nanoseconds, for the sending thread to wait on.
class Latencies {
 public:
  void Add(int64_t nanos) {
    absl::MutexLock lock(&mu_);
    nanos_.push_back(nanos);
  }
  bool WaitFor(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return nanos_.size() >= count; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  std::vector<int64_t> Sorted() {
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> sorted = nanos_;
    std::sort(sorted.begin(), sorted.end());
    return sorted;
  }

 private:
  absl::Mutex mu_;
  std::vector<int64_t> nanos_ ABSL_GUARDED_BY(mu_);
};

double Micros(const std::vector<int64_t>& sorted, double quantile) {
  size_t at = std::min(sorted.size() - 1, static_cast<size_t>(quantile * sorted.size()));
  return sorted[at] / 1000.0;
}

int Run(const Options& options, const std::string& dir) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  if (!loop.ok()) {
    std::cerr << "notify_bench: " << loop.status() << std::endl;
    return 1;
  }
  std::thread loop_thread([&] { (*loop)->Run(); });

  Latencies latencies;
  size_t drops = 0;
  NotifySockets::Listener listener{
      .on_message =
          [&](uint64_t, const NotifyMessage& message, pid_t) {
            int64_t sent = 0;
            if (message.status.has_value() && absl::SimpleAtoi(*message.status, &sent)) {
              latencies.Add(MonotonicNanos() - sent);
            }
          },
      .on_dropped = [&](uint64_t, absl::string_view) { ++drops; },
  };
  absl::StatusOr<std::unique_ptr<NotifySockets>> sockets = NotifySockets::Create(
      **loop, dir + "/notify", [](uint64_t, pid_t) { return true; }, listener);
  if (!sockets.ok()) {
    std::cerr << "notify_bench: " << sockets.status() << std::endl;
    return 1;
  }

  const size_t descriptors_before = OpenDescriptors();
  const int64_t rss_before = ResidentKib();
  const int64_t slab_before = SlabKib();
  const int64_t open_start = MonotonicNanos();
  std::vector<std::string> paths;
  for (uint64_t id = 1; id <= options.n; ++id) {
    absl::StatusOr<std::string> path = (*sockets)->Open(id, std::nullopt);
    if (!path.ok()) {
      std::cerr << "notify_bench: endpoint " << id << ": " << path.status() << std::endl;
      return 1;
    }
    paths.push_back(*path);
  }
  const int64_t open_nanos = MonotonicNanos() - open_start;
  const size_t descriptors = OpenDescriptors() - descriptors_before;
  const int64_t rss = ResidentKib() - rss_before;
  const int64_t slab = SlabKib() - slab_before;
  std::printf("endpoints: %zu opened in %.1f ms (%.1f us each)\n", options.n, open_nanos / 1e6,
              open_nanos / 1e3 / options.n);
  std::printf("descriptors: +%zu (%.2f per endpoint)\n", descriptors,
              static_cast<double>(descriptors) / options.n);
  std::printf("memory: RSS +%lld KiB (%.2f KiB per endpoint)\n", static_cast<long long>(rss),
              static_cast<double>(rss) / options.n);
  std::printf("kernel slab, system-wide: %+lld KiB (%.2f KiB per endpoint)\n",
              static_cast<long long>(slab), static_cast<double>(slab) / options.n);

  // The creates are written back first, so that the disk does not compete with the sends.
  sync();
  int sender = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  for (size_t i = 0; i < options.messages; ++i) {
    sockaddr_un address{.sun_family = AF_UNIX};
    const std::string& path = paths[i % paths.size()];
    std::memcpy(address.sun_path, path.data(), path.size());
    std::string text = absl::StrCat("WATCHDOG=1\nSTATUS=", MonotonicNanos());
    if (sendto(sender, text.data(), text.size(), 0, reinterpret_cast<sockaddr*>(&address),
               sizeof(address)) < 0) {
      std::cerr << "notify_bench: sendto " << path << ": " << std::strerror(errno) << std::endl;
      return 1;
    }
    if (!latencies.WaitFor(i + 1)) {
      std::cerr << "notify_bench: message " << i << " never arrived" << std::endl;
      return 1;
    }
  }
  close(sender);
  std::vector<int64_t> sorted = latencies.Sorted();
  std::printf(
      "sendto -> on_message: %zu messages over %zu endpoints: p50 %.1f us, p99 %.1f us, "
      "max %.1f us\n",
      sorted.size(), paths.size(), Micros(sorted, 0.5), Micros(sorted, 0.99),
      sorted.back() / 1000.0);

  (*loop)->Stop();
  loop_thread.join();
  for (uint64_t id = 1; id <= options.n; ++id) (*sockets)->Close(id);
  sockets->reset();
  if (drops != 0) std::printf("dropped: %zu\n", drops);
  return 0;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("notify_bench: descriptors and memory of sd_notify endpoints, sendto latency");
  app.add_option("-n", options.n, "endpoints")->check(CLI::PositiveNumber);
  app.add_option("--messages", options.messages, "messages, one at a time")
      ->check(CLI::PositiveNumber);
  app.add_option("--dir", options.dir,
                 "where the directory of the sockets is made (its filesystem matters)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  // Endpoints are descriptors.
  bench::RaiseDescriptorLimit("notify_bench");
  return bench::RunInScratchDir(options.dir, "notify-bench",
                                [&](const std::string& dir) { return Run(options, dir); });
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
