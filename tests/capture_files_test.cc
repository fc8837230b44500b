// CaptureFiles against a real temporary directory.
#include "server/capture_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
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

TEST(CaptureFilesTest, AnEndedWorkersEmptyFileGoesBackToTheStock) {
  TempDir dir;
  CaptureFiles files(dir.path(), 4);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 4; }, absl::Seconds(30)));
  std::string path = dir.path() + "/1.out";
  files.Prepare(path);
  ASSERT_EQ(Spares(dir), 3u);
  EXPECT_TRUE(files.RecycleIfEmpty(path));
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "the path of an empty output is gone";
  EXPECT_EQ(Spares(dir), 4u) << "its file is a spare again, not a new inode";
}

TEST(CaptureFilesTest, OutputOrAHolderKeepsAnEndedWorkersFile) {
  TempDir dir;
  CaptureFiles files(dir.path(), 4);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 4; }, absl::Seconds(30)));
  files.Prepare(dir.path() + "/a.out");
  files.Prepare(dir.path() + "/b.out");
  std::string written = dir.path() + "/written.out";
  ASSERT_TRUE(WriteFile(written, "the worker's output"));
  EXPECT_FALSE(files.RecycleIfEmpty(written));
  EXPECT_EQ(ReadFile(written), "the worker's output");
  // Empty so far, but a process the worker left behind still holds it and may write later.
  std::string held = dir.path() + "/held.out";
  ASSERT_TRUE(WriteFile(held, ""));
  int still_writing = open(held.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(still_writing, 0);
  EXPECT_FALSE(files.RecycleIfEmpty(held));
  ASSERT_EQ(write(still_writing, "late", 4), 4);
  close(still_writing);
  EXPECT_EQ(ReadFile(held), "late");
  EXPECT_EQ(Spares(dir), 2u);
}

TEST(CaptureFilesTest, AnEmptyFileStaysWhereItIsWhenTheStockIsFull) {
  TempDir dir;
  CaptureFiles files(dir.path(), 2);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 2; }, absl::Seconds(30)));
  std::string path = dir.path() + "/1.out";
  ASSERT_TRUE(WriteFile(path, ""));
  EXPECT_FALSE(files.RecycleIfEmpty(path));
  EXPECT_EQ(access(path.c_str(), F_OK), 0);
  EXPECT_EQ(Spares(dir), 2u);
}

TEST(CaptureFilesTest, TheStockStartsSmallAndGrowsWhenItRunsOut) {
  {
    TempDir dir;
    CaptureFiles files(dir.path(), 4096);
    ASSERT_TRUE(WaitFor([&] { return Spares(dir) == CaptureFiles::kFirstStock; },
                        absl::Seconds(30)));
    absl::SleepFor(absl::Milliseconds(200));
    EXPECT_EQ(Spares(dir), CaptureFiles::kFirstStock) << "only the first stock is made";
    EXPECT_EQ(files.target(), CaptureFiles::kFirstStock);
  }
  TempDir dir;
  CaptureFiles files(dir.path(), 8, 1);
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 1; }, absl::Seconds(30)));
  // Prepares in a row outrun the refill of a stock of one: one of them finds none.
  for (int i = 0; i < 1000 && files.target() == 1; ++i) {
    files.Prepare(dir.path() + "/" + std::to_string(i) + ".out");
  }
  EXPECT_EQ(files.target(), 2u);
  EXPECT_TRUE(WaitFor([&] { return Spares(dir) == 2; }, absl::Seconds(30))) << Spares(dir);
  EXPECT_EQ(files.target(), 2u);
}

TEST(CaptureFilesTest, AnOpenThatBreaksALeaseDoesNotEndTheProcess) {
  TempDir dir;
  CaptureFiles files(dir.path(), 1);
  // What a take-back does, with an open in the middle of it (SIGIO's default would end this
  // test program here).
  std::string path = dir.path() + "/1.out";
  ASSERT_TRUE(WriteFile(path, ""));
  int holder = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(fcntl(holder, F_SETLEASE, F_WRLCK), 0) << std::strerror(errno);
  int reader = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  EXPECT_LT(reader, 0);
  EXPECT_EQ(errno, EWOULDBLOCK);
  absl::SleepFor(absl::Milliseconds(50));  // any signal is delivered by now
  fcntl(holder, F_SETLEASE, F_UNLCK);
  close(holder);
  reader = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  EXPECT_GE(reader, 0) << "the lease is gone";
  close(reader);
}

TEST(CaptureFilesTest, SparesAnEarlierRunLeftAreUsedAndNeverOverwritten) {
  TempDir dir;
  ASSERT_EQ(mkdir((dir.path() + "/spare").c_str(), 0700), 0);
  for (const char* name : {"0", "1", "7"}) {
    ASSERT_TRUE(WriteFile(dir.path() + "/spare/" + name, ""));
  }
  ASSERT_TRUE(WriteFile(dir.path() + "/spare/8", "not empty: not a spare"));
  CaptureFiles files(dir.path(), 8, 8);
  // 3 found, below half of 8: made up to 8.
  ASSERT_TRUE(WaitFor([&] { return Spares(dir) == 8; }, absl::Seconds(30)));
  std::set<ino_t> inodes;
  for (int i = 0; i < 8; ++i) {
    std::string path = dir.path() + "/" + std::to_string(i) + ".out";
    files.Prepare(path);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_size, 0) << path;
    inodes.insert(st.st_ino);
  }
  EXPECT_EQ(inodes.size(), 8u) << "every spare a file of its own";
}

}  // namespace
}  // namespace proctor
