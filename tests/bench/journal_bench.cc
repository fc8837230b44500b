// journal_bench: what journaling a process costs, by batch size and durability.
//
//   journal_bench [--dir DIR] [-n N] [--compact-n N] [--retain R] [--json]
//
// Append: N processes, each a STARTED and an EXITED event with a realistic record, appended
// in batches of B events (B = 1, 16, 128: one Append, one transaction, per batch), with
// durable off (synchronous=NORMAL) and on (FULL); reported as microseconds per process.
// Compaction: --compact-n processes appended in batches of 128, then Load (a rebuild) and
// Compact keeping the last R processes; reported as time, rows and bytes on disk.
// Each run uses a fresh journal in DIR (default: a new directory under the system's
// temporary directory, removed afterwards); put DIR on the disk proctord's state lives on.
#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "server/journal.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// The events of `processes` processes: each started, then exited, as proctord records them.
std::vector<v1::Event> ProcessEvents(uint64_t processes) {
  std::vector<v1::Event> events;
  events.reserve(2 * processes);
  for (uint64_t id = 1; id <= processes; ++id) {
    v1::Event started;
    started.set_type(v1::EVENT_STARTED);
    started.mutable_time()->set_seconds(1700000000 + static_cast<int64_t>(id));
    v1::Process* process = started.mutable_process();
    process->set_id(id);
    process->set_name(absl::StrCat("Process-", id));
    process->set_pid(static_cast<int32_t>(10000 + id % 50000));
    process->set_state(v1::STATE_RUNNING);
    process->set_target("/usr/bin/python3");
    for (const char* arg : {"-m", "worker", "--queue=default"}) process->add_args(arg);
    process->set_cwd("/srv/app");
    process->set_stdout_path(absl::StrCat("/var/lib/proctor/logs/", id, ".out"));
    process->set_stderr_path(absl::StrCat("/var/lib/proctor/logs/", id, ".err"));
    *process->mutable_start_time() = started.time();
    v1::Event exited = started;
    exited.set_type(v1::EVENT_EXITED);
    exited.mutable_time()->set_seconds(started.time().seconds() + 1);
    process = exited.mutable_process();
    process->set_state(v1::STATE_EXITED);
    process->set_exitcode(0);
    *process->mutable_end_time() = exited.time();
    process->mutable_user_cpu()->set_nanos(12000000);
    process->mutable_system_cpu()->set_nanos(3000000);
    process->set_max_rss_bytes(24 << 20);
    events.push_back(std::move(started));
    events.push_back(std::move(exited));
  }
  return events;
}

// Appends `events` in batches of `batch` to a fresh journal; returns the seconds it took.
absl::StatusOr<double> TimeAppends(const std::string& path, bool durable, size_t batch,
                                   const std::vector<v1::Event>& events) {
  for (const char* suffix : {"", "-wal"}) {
    std::error_code missing;
    std::filesystem::remove(path + suffix, missing);
  }
  absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(path, durable);
  if (!journal.ok()) return journal.status();
  std::vector<std::vector<v1::Event>> batches;
  for (size_t i = 0; i < events.size(); i += batch) {
    batches.emplace_back(events.begin() + i, events.begin() + std::min(events.size(), i + batch));
  }
  Clock::time_point start = Clock::now();
  for (std::vector<v1::Event>& group : batches) {
    if (absl::Status s = (*journal)->Append(group); !s.ok()) return s;
  }
  return Seconds(start);
}

uintmax_t DiskBytes(const std::string& path) {
  uintmax_t bytes = 0;
  for (const char* suffix : {"", "-wal"}) {
    std::error_code missing;
    uintmax_t size = std::filesystem::file_size(path + suffix, missing);
    if (!missing) bytes += size;
  }
  return bytes;
}

struct Options {
  std::string dir;
  uint64_t n = 2000;
  uint64_t compact_n = 20000;
  uint64_t retain = 1000;
  bool json = false;
};

int Run(const Options& options, const std::string& dir) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "journal_bench: " << status.message() << std::endl;
    return 1;
  };
  auto rounded = [](double value) { return std::round(value * 10) / 10; };
  nlohmann::ordered_json appends = nlohmann::ordered_json::array();
  const std::vector<v1::Event> events = ProcessEvents(options.n);
  int run = 0;
  if (!options.json) {
    std::cout << absl::StrFormat("journal_bench: %s, n=%d processes (2 events each)\n\n", dir,
                                 options.n)
              << absl::StrFormat("%-12s %8s %16s %14s\n", "durable", "batch", "us/process",
                                 "processes/s");
  }
  for (bool durable : {false, true}) {
    for (size_t batch : {1, 16, 128}) {
      std::string path = absl::StrCat(dir, "/append-", run++, ".db");
      absl::StatusOr<double> seconds = TimeAppends(path, durable, batch, events);
      if (!seconds.ok()) return fail(seconds.status());
      double us = *seconds * 1e6 / static_cast<double>(options.n);
      appends.push_back({{"durable", durable},
                         {"batch_events", batch},
                         {"us_per_process", rounded(us)},
                         {"processes_per_s", rounded(1e6 / us)}});
      if (!options.json) {
        std::cout << absl::StrFormat("%-12s %8d %16.1f %14.0f\n", durable ? "on" : "off",
                                     batch, us, 1e6 / us);
      }
    }
  }

  // Compaction and rebuild, on a journal grown without compaction.
  std::string path = dir + "/compact.db";
  const std::vector<v1::Event> many = ProcessEvents(options.compact_n);
  if (absl::StatusOr<double> s = TimeAppends(path, false, 128, many); !s.ok()) {
    return fail(s.status());
  }
  absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(path, false);
  if (!journal.ok()) return fail(journal.status());
  Clock::time_point start = Clock::now();
  absl::StatusOr<Journal::Loaded> loaded = (*journal)->Load();
  if (!loaded.ok()) return fail(loaded.status());
  double load_ms = Seconds(start) * 1e3;
  absl::flat_hash_set<uint64_t> retained;
  for (uint64_t id = options.compact_n - std::min(options.retain, options.compact_n) + 1;
       id <= options.compact_n; ++id) {
    retained.insert(id);
  }
  uintmax_t bytes_before = DiskBytes(path);
  start = Clock::now();
  absl::StatusOr<Journal::CompactStats> stats = (*journal)->Compact(retained, {}, 0);
  if (!stats.ok()) return fail(stats.status());
  double compact_ms = Seconds(start) * 1e3;
  uintmax_t bytes_after = DiskBytes(path);

  nlohmann::ordered_json compaction = {
      {"processes", options.compact_n},       {"retained", retained.size()},
      {"load_ms", rounded(load_ms)},          {"compact_ms", rounded(compact_ms)},
      {"rows_before", stats->rows_before},    {"rows_after", stats->rows_after},
      {"bytes_before", bytes_before},         {"bytes_after", bytes_after}};
  if (options.json) {
    nlohmann::ordered_json json = {
        {"n", options.n}, {"dir", dir}, {"append", appends}, {"compaction", compaction}};
    std::cout << json.dump() << "\n";
  } else {
    std::cout << absl::StrFormat(
        "\nrebuild: Load of %d rows: %.1f ms\n"
        "compaction: %d processes, %d retained: %.1f ms, %d -> %d rows, %d -> %d bytes\n",
        stats->rows_before, load_ms, options.compact_n, retained.size(), compact_ms,
        stats->rows_before, stats->rows_after, bytes_before, bytes_after);
  }
  return 0;
}

int Main(int argc, char** argv) {
  Options options;
  CLI::App app("journal_bench: the cost of journaling a process, by batch size and durability");
  app.add_option("--dir", options.dir, "where the journals go (default: a new temporary dir)");
  app.add_option("-n", options.n, "processes per append run")->check(CLI::PositiveNumber);
  app.add_option("--compact-n", options.compact_n, "processes before the compaction")
      ->check(CLI::PositiveNumber);
  app.add_option("--retain", options.retain, "processes kept by the compaction");
  app.add_flag("--json", options.json, "one JSON line instead of the table");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  std::string dir = options.dir;
  bool made = dir.empty();
  if (made) {
    std::string pattern = std::filesystem::temp_directory_path() / "journal-bench-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::cerr << "journal_bench: cannot make a directory in " << pattern << std::endl;
      return 1;
    }
    dir = pattern;
  }
  int rc = Run(options, dir);
  std::error_code ignored;
  if (made) std::filesystem::remove_all(dir, ignored);
  return rc;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
