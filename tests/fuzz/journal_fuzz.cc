// The journal (server/journal.h) opened on arbitrary files, as proctord opens whatever a crash
// or a bad disk left in its state directory: Open (WAL replay, quick_check, moving a damaged
// file aside and salvaging its rows), then Load, ReadAfter, Append and Compact on what it
// gives. The input is a little-endian 32-bit length N, N bytes of the database file, and the
// rest as its write-ahead log (none when empty).
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "proctor/v1/proctor.pb.h"
#include "server/journal.h"
#include "spdlog/spdlog.h"

namespace {

std::filesystem::path* dir = nullptr;  // a fresh directory, emptied after each input

void WriteFile(const std::filesystem::path& path, absl::string_view bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // damage is logged; the fuzzer needs none
  std::string pattern = (std::filesystem::temp_directory_path() / "journal-fuzz-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) abort();
  dir = new std::filesystem::path(pattern);
  std::atexit([] { std::filesystem::remove_all(*dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint32_t db_size = 0;
  if (size < sizeof db_size) return -1;
  std::memcpy(&db_size, data, sizeof db_size);
  absl::string_view rest(reinterpret_cast<const char*>(data) + sizeof db_size,
                         size - sizeof db_size);
  if (db_size > rest.size()) return -1;
  const std::filesystem::path path = *dir / "journal.db";
  WriteFile(path, rest.substr(0, db_size));
  if (db_size < rest.size()) WriteFile(path.string() + "-wal", rest.substr(db_size));

  absl::StatusOr<std::unique_ptr<proctor::Journal>> journal =
      proctor::Journal::Open(path.string(), /*durable=*/false);
  if (journal.ok()) {
    absl::StatusOr<proctor::Journal::Loaded> loaded = (*journal)->Load();
    if (loaded.ok()) {
      // Cursors are strictly increasing and never above the last one.
      uint64_t previous = 0;
      for (const proctor::v1::Event& event : loaded->events) {
        if (event.cursor() <= previous || event.cursor() > loaded->last_cursor) {
          std::fprintf(stderr, "cursor %llu after %llu, last cursor %llu\n",
                       static_cast<unsigned long long>(event.cursor()),
                       static_cast<unsigned long long>(previous),
                       static_cast<unsigned long long>(loaded->last_cursor));
          __builtin_trap();
        }
        previous = event.cursor();
      }
    }
    (*journal)->ReadAfter((*journal)->FirstCursor() - 1, 16).IgnoreError();
    std::vector<proctor::v1::Event> events(1);
    events[0].set_type(proctor::v1::EVENT_STARTED);
    events[0].mutable_process()->set_id(1);
    uint64_t last = (*journal)->LastCursor();
    if ((*journal)->Append(events).ok() && events[0].cursor() <= last) __builtin_trap();
    (*journal)->Compact({1}, {}, 1).IgnoreError();
  }
  journal = absl::InternalError("closed");  // closes the file before it is removed
  for (const auto& entry : std::filesystem::directory_iterator(*dir)) {
    std::filesystem::remove_all(entry.path());
  }
  return 0;
}
