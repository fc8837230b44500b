// --max-log-bytes: the oldest output of a capture file is dropped, against real files and a
// real proctord.
#include "server/log_trimmer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;

// Numbered lines, "line 0\n" .. , adding up to at least `bytes`.
std::string NumberedLines(size_t bytes) {
  std::string text;
  for (int i = 0; text.size() < bytes; ++i) absl::StrAppend(&text, "line ", i, "\n");
  return text;
}

int64_t BytesOnDisk(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_blocks) * 512 : -1;
}

bool Append(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return false;
  bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return written;
}

// `count` capture files in `dir`, a few bytes each; their paths.
std::vector<std::string> MakeCaptureFiles(const std::string& dir, int count) {
  std::vector<std::string> paths;
  for (int i = 1; i <= count; ++i) {
    paths.push_back(absl::StrCat(dir, "/", i, ".out"));
    EXPECT_TRUE(WriteFile(paths.back(), "started\n"));
  }
  return paths;
}

// A trimmer (cap 64 KiB) of the files `in_use` in `dir` that counts how often it asks for them.
struct CountingTrimmer {
  CountingTrimmer(const std::string& dir, std::vector<std::string> in_use, absl::Duration every)
      : trimmer(dir, 64 << 10, every, [this, in_use = std::move(in_use)] {
          ++listings;
          return in_use;
        }) {}
  std::atomic<int> listings{0};
  LogTrimmer trimmer;
};

TEST(LogTrimmerTest, DropsTheOldestPartAndKeepsTheLength) {
  TempDir dir;
  std::string path = dir.path() + "/1.out";
  std::string text = NumberedLines(1 << 20);
  ASSERT_TRUE(WriteFile(path, text));
  absl::StatusOr<bool> trimmed = LogTrimmer::Trim(path, 256 << 10);
  ASSERT_TRUE(trimmed.ok()) << trimmed.status();
  EXPECT_TRUE(*trimmed);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(text.size())) << "offsets stay valid";
  EXPECT_LE(BytesOnDisk(path), (256 << 10) + 8192);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  off_t data = lseek(fd, 0, SEEK_DATA);
  close(fd);
  EXPECT_GE(static_cast<size_t>(data), text.size() - (256 << 10));
  std::string kept = ReadFile(path).substr(data);
  EXPECT_EQ(kept, text.substr(data)) << "the newest output is intact";
  EXPECT_FALSE(*LogTrimmer::Trim(path, 256 << 10)) << "within the cap now";
  EXPECT_FALSE(*LogTrimmer::Trim(path, 4 << 20));
  EXPECT_EQ(LogTrimmer::Trim(dir.path() + "/gone.out", 1).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(LogTrimmerTest, FilesNobodyWritesAreNotLookedAtAgain) {
  TempDir dir;
  const std::vector<std::string> files = MakeCaptureFiles(dir.path(), 200);
  CountingTrimmer counting(dir.path(), files, absl::Milliseconds(20));
  ASSERT_TRUE(counting.trimmer.watching());
  // The first look examines every file in use: they may have grown before it started.
  ASSERT_TRUE(WaitFor([&] { return counting.trimmer.files_examined() >= files.size(); }));
  const uint64_t after_first_look = counting.trimmer.files_examined();
  absl::SleepFor(absl::Milliseconds(300));  // about 15 looks
  EXPECT_EQ(counting.trimmer.files_examined(), after_first_look) << "idle files were examined again";
  EXPECT_EQ(counting.listings.load(), 1) << "the files in use were asked for again";

  // One file grows past the cap: it alone is examined, and trimmed.
  ASSERT_TRUE(Append(files[7], NumberedLines(1 << 20)));
  EXPECT_TRUE(WaitFor([&] { return BytesOnDisk(files[7]) <= (64 << 10) + 8192; }))
      << "still " << BytesOnDisk(files[7]) << " bytes on disk";
  absl::SleepFor(absl::Milliseconds(100));
  // The write, and the trim's own punching (an IN_MODIFY too), at most once each per look.
  EXPECT_GE(counting.trimmer.files_examined(), after_first_look + 1);
  EXPECT_LE(counting.trimmer.files_examined(), after_first_look + 3);
  EXPECT_EQ(counting.listings.load(), 1);
}

TEST(LogTrimmerTest, LostEventsMeanEveryFileInUseIsExamined) {
  TempDir dir;
  const std::vector<std::string> files = MakeCaptureFiles(dir.path(), 3);
  CountingTrimmer counting(dir.path(), files, absl::Milliseconds(500));
  ASSERT_TRUE(counting.trimmer.watching());
  ASSERT_TRUE(WaitFor([&] { return counting.listings.load() == 1; }));
  // Writes to two files in turn are not merged: more of them than the kernel queues between
  // two looks overflow its queue, and which files grew is no longer known.
  int max_queued = 16384;
  std::ifstream("/proc/sys/fs/inotify/max_queued_events") >> max_queued;
  int a = open(files[0].c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  int b = open(files[1].c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  for (int i = 0; i < max_queued + 4; ++i) {
    ASSERT_EQ(write(a, "a", 1), 1);
    ASSERT_EQ(write(b, "b", 1), 1);
  }
  close(a);
  close(b);
  EXPECT_TRUE(WaitFor([&] { return counting.listings.load() >= 2; }))
      << "the files in use were not asked for after the overflow";
  EXPECT_TRUE(counting.trimmer.watching()) << "an overflow is no reason to stop watching";
}

TEST(LogTrimmerTest, WithoutAWatchEveryFileInUseIsExaminedEachTime) {
  TempDir dir;
  const std::vector<std::string> files = MakeCaptureFiles(dir.path(), 2);
  // A directory that cannot be watched (it does not exist) stands for inotify being refused.
  CountingTrimmer counting(dir.path() + "/missing", files, absl::Milliseconds(20));
  EXPECT_FALSE(counting.trimmer.watching());
  EXPECT_TRUE(WaitFor([&] { return counting.listings.load() >= 3; }));
  ASSERT_TRUE(Append(files[1], NumberedLines(1 << 20)));
  EXPECT_TRUE(WaitFor([&] { return BytesOnDisk(files[1]) <= (64 << 10) + 8192; }))
      << "still " << BytesOnDisk(files[1]) << " bytes on disk";
}

// Shell: "line 0" to "line 99999", about 1 MiB.
constexpr char kMebibyteOfLines[] =
    "i=0; while [ $i -lt 100000 ]; do echo line $i; i=$((i+1)); done; ";

// Waits for `worker` to have written kMebibyteOfLines and to wait at `gate`, then for its
// stdout to be trimmed to --max-log-bytes 65536 (and a block).
void ExpectCappedOnceWritten(const v1::Process& worker, const Gate& gate) {
  ASSERT_TRUE(WaitFor([&] { return access(gate.path().c_str(), F_OK) == 0 &&
                                   ReadFile(worker.stdout_path()).find("line 99999\n") !=
                                       std::string::npos; },
                      absl::Seconds(30)));
  EXPECT_TRUE(WaitFor([&] { return BytesOnDisk(worker.stdout_path()) <= 65536 + 8192; }))
      << "still " << BytesOnDisk(worker.stdout_path()) << " bytes on disk";
}

TEST(LogTrimmerTest, ALiveWorkersOutputIsCappedAndLogsShowTheNewest) {
  TestDaemon daemon({"--max-log-bytes", "65536"});
  Gate gate(daemon.dir() + "/gate");
  // 1 MiB of numbered lines, then it waits, still running.
  v1::Process worker = StartOk(
      daemon.client(),
      {"/bin/sh", "-c",
       absl::StrCat(kMebibyteOfLines, gate.ShellWait())});
  ExpectCappedOnceWritten(worker, gate);
  v1::LogsRequest logs;
  logs.set_id(worker.id());
  std::string out;
  ASSERT_TRUE(daemon.client().Logs(logs, [&](std::string_view chunk) { out += chunk; }).ok());
  EXPECT_THAT(out, EndsWith("line 99999\n"));
  EXPECT_THAT(out, Not(HasSubstr(std::string(1, '\0')))) << "the dropped part reads as nothing";
  EXPECT_THAT(out, Not(HasSubstr("\nline 5\n")));
  EXPECT_LE(out.size(), 65536u + 4096);
  EXPECT_TRUE(gate.Open());
  EXPECT_TRUE(daemon.client().Join(worker.id()).ok());
}

TEST(LogTrimmerTest, OutputAfterAQuietSpellIsCappedToo) {
  TestDaemon daemon({"--max-log-bytes", "65536"});
  Gate quiet(daemon.dir() + "/quiet");
  Gate done(daemon.dir() + "/done");
  // A line, a quiet spell of several of the trimmer's looks, then 1 MiB, still running.
  v1::Process worker = StartOk(
      daemon.client(),
      {"/bin/sh", "-c",
       absl::StrCat("echo started; ", quiet.ShellWait(),
                    "; ", kMebibyteOfLines, done.ShellWait())});
  ASSERT_TRUE(WaitFor([&] { return ReadFile(worker.stdout_path()) == "started\n"; }));
  absl::SleepFor(absl::Seconds(3));
  ASSERT_TRUE(quiet.Open());
  ExpectCappedOnceWritten(worker, done);
  EXPECT_TRUE(done.Open());
  EXPECT_TRUE(daemon.client().Join(worker.id()).ok());
}

}  // namespace
}  // namespace proctor::testing
