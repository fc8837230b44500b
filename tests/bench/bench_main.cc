// proctor_bench: what a process costs through proctord compared with spawning it directly.
//
//   proctor_bench [--address ADDR] [--authkey-file PATH] [-n N] [-c C] [--json]
//
// Sequential: N times Start+Join of /bin/true through a Client, against N times
// posix_spawn+waitpid of /bin/true in this program; reported as microseconds per process.
// Concurrent: C threads (each with its own Client) sharing N processes, against C threads
// spawning N bare; reported as processes per second. A few warm-up rounds come first.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace proctor {
namespace {

constexpr char kTarget[] = "/bin/true";
constexpr int kWarmup = 10;

struct BenchOptions {
  ClientOptions client;
  int n = 500;
  int c = 2;
  bool json = false;
};

absl::Status SpawnBare() {
  char* argv[] = {const_cast<char*>(kTarget), nullptr};
  pid_t pid = 0;
  if (int err = posix_spawn(&pid, kTarget, nullptr, nullptr, argv, environ); err != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn ", kTarget, ": ", std::strerror(err)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(kTarget, " failed (wait status ", status, ")"));
  }
  return absl::OkStatus();
}

// Ended records, released after each timed phase so the timing holds Start+Join only.
class Ended {
 public:
  void Add(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.push_back(id);
  }
  absl::Status ReleaseAll(Client& client) {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : ids_) {
      if (absl::Status s = client.Release(id); !s.ok()) return s;
    }
    ids_.clear();
    return absl::OkStatus();
  }

 private:
  std::mutex mu_;
  std::vector<uint64_t> ids_;
};

absl::Status SpawnProctor(Client& client, Ended& ended) {
  v1::StartRequest request;
  request.set_target(kTarget);
  absl::StatusOr<v1::Process> started = client.Start(request);
  if (!started.ok()) return started.status();
  absl::StatusOr<v1::Process> joined = client.Join(started->id());
  if (!joined.ok()) return joined.status();
  if (joined->state() != v1::STATE_EXITED || joined->exitcode() != 0) {
    return absl::InternalError(
        absl::StrCat(kTarget, " through proctord ended with exitcode ", joined->exitcode()));
  }
  ended.Add(started->id());
  return absl::OkStatus();
}

using Op = std::function<absl::Status()>;

// Runs `op` `count` times in a row; returns the elapsed seconds.
absl::StatusOr<double> TimeSequential(int count, const Op& op) {
  for (int i = 0; i < kWarmup; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  auto begin = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

// Runs ops[t] from thread t until `count` runs are done between them all; returns the elapsed
// seconds from the moment all threads are ready.
absl::StatusOr<double> TimeConcurrent(int count, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    for (int i = 0; i < kWarmup; ++i) {
      if (absl::Status s = op(); !s.ok()) return s;
    }
  }
  std::atomic<int> remaining{count};
  std::latch ready(static_cast<std::ptrdiff_t>(ops.size()) + 1);
  std::mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (const Op& op : ops) {
    threads.emplace_back([&] {
      ready.arrive_and_wait();
      while (remaining.fetch_sub(1) > 0) {
        if (absl::Status s = op(); !s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.ok()) first_error = s;
          remaining.store(0);
        }
      }
    });
  }
  ready.arrive_and_wait();
  auto begin = std::chrono::steady_clock::now();
  for (std::thread& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  if (!first_error.ok()) return first_error;
  return elapsed;
}

bool ParseCount(absl::string_view text, int* out) {
  return absl::SimpleAtoi(text, out) && *out > 0;
}

// Returns -1 to go on, or the exit status.
int ParseFlags(int argc, char** argv, BenchOptions* options) {
  constexpr char kUsage[] =
      "usage: proctor_bench [--address ADDR] [--authkey-file PATH] [-n N] [-c C] [--json]\n";
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "--json") {
      options->json = true;
    } else if (arg == "--address" || arg == "--authkey-file") {
      const char* v = value();
      if (v == nullptr) {
        std::cerr << "proctor_bench: " << arg << " needs a value\n" << kUsage;
        return 2;
      }
      (arg == "--address" ? options->client.address : options->client.authkey_file) = v;
    } else if (arg == "-n" || arg == "-c") {
      const char* v = value();
      if (v == nullptr || !ParseCount(v, arg == "-n" ? &options->n : &options->c)) {
        std::cerr << "proctor_bench: " << arg << " needs a positive number\n" << kUsage;
        return 2;
      }
    } else {
      std::cerr << "proctor_bench: unknown argument " << arg << "\n" << kUsage;
      return 2;
    }
  }
  return -1;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  if (int rc = ParseFlags(argc, argv, &options); rc >= 0) return rc;
  auto fail = [](const absl::Status& status) {
    std::cerr << "proctor_bench: " << status.message() << std::endl;
    return 1;
  };

  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < options.c; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options.client);
    if (!client.ok()) return fail(client.status());
    clients.push_back(*std::move(client));
  }
  Client& first = *clients[0];
  Ended ended;

  absl::StatusOr<double> seq_proctor =
      TimeSequential(options.n, [&] { return SpawnProctor(first, ended); });
  if (!seq_proctor.ok()) return fail(seq_proctor.status());
  if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  absl::StatusOr<double> seq_bare = TimeSequential(options.n, SpawnBare);
  if (!seq_bare.ok()) return fail(seq_bare.status());

  std::vector<Op> proctor_ops, bare_ops;
  for (auto& client : clients) {
    proctor_ops.push_back([c = client.get(), &ended] { return SpawnProctor(*c, ended); });
    bare_ops.push_back(SpawnBare);
  }
  absl::StatusOr<double> conc_proctor = TimeConcurrent(options.n, proctor_ops);
  if (!conc_proctor.ok()) return fail(conc_proctor.status());
  if (absl::Status s = ended.ReleaseAll(first); !s.ok()) return fail(s);
  absl::StatusOr<double> conc_bare = TimeConcurrent(options.n, bare_ops);
  if (!conc_bare.ok()) return fail(conc_bare.status());

  const double seq_proctor_us = *seq_proctor * 1e6 / options.n;
  const double seq_bare_us = *seq_bare * 1e6 / options.n;
  const double conc_proctor_rate = options.n / *conc_proctor;
  const double conc_bare_rate = options.n / *conc_bare;
  const double seq_ratio = seq_proctor_us / seq_bare_us;
  const double conc_fraction = conc_proctor_rate / conc_bare_rate;

  if (options.json) {
    // To the decimals these figures have always had.
    auto rounded = [](double value, double scale) { return std::round(value * scale) / scale; };
    nlohmann::ordered_json json = {
        {"n", options.n},
        {"c", options.c},
        {"address", first.address()},
        {"sequential_proctor_us", rounded(seq_proctor_us, 10)},
        {"sequential_bare_us", rounded(seq_bare_us, 10)},
        {"sequential_ratio", rounded(seq_ratio, 1000)},
        {"concurrent_proctor_per_s", rounded(conc_proctor_rate, 10)},
        {"concurrent_bare_per_s", rounded(conc_bare_rate, 10)},
        {"concurrent_fraction", rounded(conc_fraction, 1000)},
    };
    std::cout << json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << absl::StrFormat("proctor_bench: %s, n=%d, c=%d, target %s\n\n", first.address(),
                                 options.n, options.c, kTarget)
              << absl::StrFormat("%-28s %12s %12s %14s\n", "", "proctor", "bare", "proctor/bare")
              << absl::StrFormat("%-28s %12.1f %12.1f %14.2f\n", "sequential (us per process)",
                                 seq_proctor_us, seq_bare_us, seq_ratio)
              << absl::StrFormat("%-28s %12.1f %12.1f %14.2f\n",
                                 absl::StrCat("concurrent, c=", options.c, " (processes/s)"),
                                 conc_proctor_rate, conc_bare_rate, conc_fraction);
  }
  return 0;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
