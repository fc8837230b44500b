// --max-log-bytes: the oldest output of a capture file is dropped, against real files and a
// real proctord.
#include "server/log_trimmer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

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

TEST(LogTrimmerTest, ALiveWorkersOutputIsCappedAndLogsShowTheNewest) {
  TestDaemon daemon({"--max-log-bytes", "65536"});
  Gate gate(daemon.dir() + "/gate");
  // 1 MiB of numbered lines, then it waits, still running.
  v1::Process worker = StartOk(
      daemon.client(),
      {"/bin/sh", "-c",
       absl::StrCat("i=0; while [ $i -lt 100000 ]; do echo line $i; i=$((i+1)); done; ",
                    gate.ShellWait())});
  ASSERT_TRUE(WaitFor([&] { return access(gate.path().c_str(), F_OK) == 0 &&
                                   ReadFile(worker.stdout_path()).find("line 99999\n") !=
                                       std::string::npos; },
                      absl::Seconds(30)));
  EXPECT_TRUE(WaitFor([&] { return BytesOnDisk(worker.stdout_path()) <= 65536 + 8192; }))
      << "still " << BytesOnDisk(worker.stdout_path()) << " bytes on disk";
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

}  // namespace
}  // namespace proctor::testing
