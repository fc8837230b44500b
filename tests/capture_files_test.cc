// CaptureFiles against a real temporary directory.
#include "server/capture_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WaitFor;
using testing::WriteFile;

// The spares in stock, as files in <dir>/spare.
size_t Spares(const TempDir& dir) {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator(dir.path() + "/spare")) {
    ++count;
  }
  return count;
}

TEST(CaptureFilesTest, PreparesEmptyFilesFromTheStockAndRefillsIt) {
  TempDir dir;
  CaptureFiles files(dir.path(), 4);
  // Generous: creating files is what is slow on a busy disk, and that is the point here.
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 4; }, absl::Seconds(30)));
  std::string path = dir.path() + "/1.out";
  files.Prepare(path);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  for (int i = 2; i < 5; ++i) files.Prepare(dir.path() + "/" + std::to_string(i) + ".out");
  // The refill starts below half (after the third Prepare) and fills to 4; the fourth Prepare
  // may come during it or after it, leaving 4 or 3.
  EXPECT_TRUE(WaitFor([&] { return Spares(dir) >= 3; }, absl::Seconds(30)))
      << "refilled in the background";
}

TEST(CaptureFilesTest, RefilledSparesAreEmptyFilesOfTheirOwn) {
  TempDir dir;
  CaptureFiles files(dir.path(), 2);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 2; }, absl::Seconds(30)));
  std::string first = dir.path() + "/1.out";
  files.Prepare(first);
  ASSERT_TRUE(WriteFile(first, "a worker's output"));
  unlink(first.c_str());  // the record is forgotten; its file is not taken back
  files.Prepare(dir.path() + "/0.out");  // the stock runs out and is made anew
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 2; }, absl::Seconds(30)));
  for (const char* name : {"/2.out", "/3.out"}) {
    std::string fresh = dir.path() + name;
    files.Prepare(fresh);
    struct stat st;
    ASSERT_EQ(stat(fresh.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 0);
    EXPECT_EQ(st.st_nlink, 1u);
  }
}

TEST(CaptureFilesTest, AFileNothingHoldsComesBackEmpty) {
  TempDir dir;
  CaptureFiles files(dir.path(), 1);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 1; }, absl::Seconds(30)));
  files.Prepare(dir.path() + "/taken.out");  // the stock is empty now...
  std::string old_path = dir.path() + "/old.out";
  ASSERT_TRUE(WriteFile(old_path, "a previous worker's secret output"));
  files.Recycle(old_path);  // ...and nothing holds the old file: it joins the stock
  EXPECT_NE(access(old_path.c_str(), F_OK), 0);
  // At least it; the stock may have been refilled meanwhile.
  EXPECT_GE(Spares(dir), 1u);
  std::string fresh = dir.path() + "/fresh.out";
  files.Prepare(fresh);
  EXPECT_EQ(ReadFile(fresh), "");
}

TEST(CaptureFilesTest, AFileSomeoneStillHoldsIsRemovedNotReused) {
  TempDir dir;
  CaptureFiles files(dir.path(), 1);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 1; }, absl::Seconds(30)));
  files.Prepare(dir.path() + "/taken.out");
  std::string old_path = dir.path() + "/old.out";
  ASSERT_TRUE(WriteFile(old_path, "early output"));
  // As an escaped process of a forgotten record would.
  int still_writing = open(old_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(still_writing, 0);
  files.Recycle(old_path);
  EXPECT_NE(access(old_path.c_str(), F_OK), 0);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 1; }, absl::Seconds(30))) << "refilled";
  std::string fresh = dir.path() + "/fresh.out";
  files.Prepare(fresh);
  ASSERT_EQ(write(still_writing, "late output", 11), 11);
  close(still_writing);
  EXPECT_EQ(ReadFile(fresh), "") << "the held file was handed on";
}

TEST(CaptureFilesTest, WithoutStockPrepareLeavesCreationToTheSpawn) {
  TempDir dir;
  CaptureFiles files(dir.path(), 0);
  std::string path = dir.path() + "/1.out";
  files.Prepare(path);
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace proctor
