// CaptureFiles against a real temporary directory.
#include "server/capture_files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WaitFor;
using testing::WriteFile;

TEST(CaptureFilesTest, PreparesEmptyFilesFromTheStockAndRefillsIt) {
  TempDir dir;
  CaptureFiles files(dir.path(), 4);
  // Generous: creating files is what is slow on a busy disk, and that is the point here.
  ASSERT_TRUE(WaitFor([&] { return files.spares() == 4; }, absl::Seconds(30)));
  std::string path = dir.path() + "/1.out";
  files.Prepare(path);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  for (int i = 2; i < 5; ++i) files.Prepare(dir.path() + "/" + std::to_string(i) + ".out");
  EXPECT_TRUE(WaitFor([&] { return files.spares() == 4; }, absl::Seconds(30)))
      << "refilled in the background";
}

TEST(CaptureFilesTest, RecycledFilesComeBackEmpty) {
  TempDir dir;
  CaptureFiles files(dir.path(), 1);
  ASSERT_TRUE(WaitFor([&] { return files.spares() == 1; }, absl::Seconds(30)));
  std::string old_path = dir.path() + "/old.out";
  ASSERT_TRUE(WriteFile(old_path, "a previous worker's secret output"));
  files.Prepare(dir.path() + "/taken.out");  // the stock is empty now...
  files.Recycle(old_path);                    // ...so the old file joins it
  EXPECT_NE(access(old_path.c_str(), F_OK), 0);
  std::string fresh = dir.path() + "/fresh.out";
  files.Prepare(fresh);
  EXPECT_EQ(ReadFile(fresh), "");
}

TEST(CaptureFilesTest, WithoutStockPrepareLeavesCreationToTheSpawn) {
  TempDir dir;
  CaptureFiles files(dir.path(), 0);
  std::string path = dir.path() + "/1.out";
  files.Prepare(path);
  EXPECT_NE(access(path.c_str(), F_OK), 0);
  ASSERT_TRUE(WriteFile(path, "x"));
  files.Recycle(path);  // no room in a stock of 0: removed
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace proctor
