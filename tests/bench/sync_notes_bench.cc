// sync_notes_bench: what a sync object's note costs the call that changes it, in-process.
//
//   sync_notes_bench [-n N] [--keeper PATH]
//
// N Lock acquire+release pairs on a SyncTable, first keeping no notes (the baseline), then
// keeping them as proctord does: each change's SyncMemo handed to a real keeper (started
// here: the one built with this program, or PATH) through KeeperClient, on its notes pipe (on
// its socket for a keeper that takes no pipe, as one built before the pipe). Prints µs per
// pair for both and what the two notes add.
#include <stdlib.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/keeper_client.h"
#include "server/sync_table.h"
#include "tests/fake_time.h"

namespace proctor {
namespace {

// µs per acquire+release of one Lock, `n` times.
absl::StatusOr<double> PairMicros(SyncTable& table, int n) {
  absl::StatusOr<SyncInfo> lock = table.Create({.kind = SyncKind::kLock, .tree = "bench"});
  if (!lock.ok()) return lock.status();
  absl::Time start = absl::Now();
  for (int i = 0; i < n; ++i) {
    table.Acquire(lock->id, SyncHolderId{}, true, std::nullopt,
                  [](absl::StatusOr<SyncWaitResult>) { return true; });
    if (absl::Status s = table.Release(lock->id, SyncHolderId{}).status(); !s.ok()) return s;
  }
  double us = absl::ToDoubleMicroseconds(absl::Now() - start) / n;
  if (absl::Status s = table.Remove(lock->id); !s.ok()) return s;
  return us;
}

int Main(int argc, char** argv) {
  int n = 200000;
  std::string keeper_path = PROCTOR_KEEPER_PATH;
  CLI::App app("sync_notes_bench: what a sync object's note costs, in-process");
  app.add_option("-n", n, "acquire+release pairs per measurement")->check(CLI::PositiveNumber);
  app.add_option("--keeper", keeper_path, "the proctor-keeper to start");
  CLI11_PARSE(app, argc, argv);

  FakeTime time;  // no timeouts here: nothing waits
  SyncTable bare(time, SyncLimits{});
  absl::StatusOr<double> without = PairMicros(bare, n);
  if (!without.ok()) {
    std::cerr << "sync_notes_bench: " << without.status().message() << "\n";
    return 1;
  }

  char dir_template[] = "/tmp/sync-notes-bench.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::cerr << "sync_notes_bench: mkdtemp failed\n";
    return 1;
  }
  const std::string dir = dir_template;
  internal::Held held;
  absl::StatusOr<std::unique_ptr<KeeperClient>> keeper = KeeperClient::Open(dir, keeper_path, held);
  if (!keeper.ok()) {
    std::cerr << "sync_notes_bench: " << keeper.status().message() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  (*keeper)->Start(KeeperClient::Listener{.on_lost = [] {}});
  SyncTable kept(time, SyncLimits{});
  kept.Persist(nullptr, [&](const std::string& key, std::optional<std::string> value) {
    if (value.has_value()) {
      (*keeper)->Remember(key, *value);
    } else {
      (*keeper)->Forget(key);
    }
  });
  absl::StatusOr<double> with = PairMicros(kept, n);
  (*keeper)->Shutdown(absl::Seconds(10));
  keeper->reset();
  std::filesystem::remove_all(dir);
  if (!with.ok()) {
    std::cerr << "sync_notes_bench: " << with.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "acquire+release in the table: %.2f µs with its two notes (%s), %.2f µs without; the "
      "notes add %.2f µs (n=%d)\n",
      *with, held.takes_notes_pipe() ? "on the keeper's notes pipe" : "on the keeper's socket",
      *without, *with - *without, n);
  return 0;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
