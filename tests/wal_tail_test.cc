// ReadWalTail against logs SQLite wrote, cut and damaged the ways a crash or a disk does.
#include "server/wal_tail.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

constexpr size_t kFrameHeader = 24;

class WalTailTest : public ::testing::Test {
 protected:
  // A log of `commits` one-row transactions, as SQLite leaves it when its process dies (read
  // while the database is still open in exclusive mode: closing would fold the log in).
  void SetUp() override {
    std::string dir = (std::filesystem::temp_directory_path() / "wal-tail-XXXXXX").string();
    ASSERT_NE(mkdtemp(dir.data()), nullptr);
    std::string path = dir + "/db";
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    std::string sql = "PRAGMA page_size=4096; PRAGMA locking_mode=EXCLUSIVE; "
                      "PRAGMA journal_mode=WAL; CREATE TABLE t(x);";
    for (int i = 0; i < 5; ++i) sql += absl::StrCat("INSERT INTO t VALUES (", i, ");");
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    std::stringstream content;
    content << std::ifstream(path + "-wal", std::ios::binary).rdbuf();
    wal_ = content.str();
    sqlite3_close(db);
    std::filesystem::remove_all(dir);
    ASSERT_EQ((wal_.size() - 32) % kFrame, 0u);
    ASSERT_GE(wal_.size(), 32 + 3 * kFrame);
  }

  static constexpr size_t kFrame = kFrameHeader + 4096;
  std::string wal_;
};

TEST_F(WalTailTest, AWholeLogCutsNothing) {
  WalTail tail = ReadWalTail(wal_);
  EXPECT_EQ(tail.kept_bytes, wal_.size());
  EXPECT_EQ(tail.cut_bytes, 0u);
  EXPECT_FALSE(tail.torn);
}

TEST_F(WalTailTest, ALastFrameCutShortIsTornAndCutOff) {
  wal_.resize(wal_.size() - 100);
  WalTail tail = ReadWalTail(wal_);
  EXPECT_EQ(tail.kept_bytes, wal_.size() + 100 - kFrame);
  EXPECT_EQ(tail.cut_bytes, kFrame - 100);
  EXPECT_EQ(tail.cut_frames, 1u);
  EXPECT_TRUE(tail.torn);
}

TEST_F(WalTailTest, AFrameThatFailsItsChecksumIsCutOffWithEverythingAfterIt) {
  wal_[wal_.size() - 2 * kFrame + kFrameHeader + 10] ^= 0x40;  // the page of the last-but-one
  WalTail tail = ReadWalTail(wal_);
  EXPECT_EQ(tail.kept_bytes, wal_.size() - 2 * kFrame);
  EXPECT_EQ(tail.cut_bytes, 2 * kFrame);
  EXPECT_EQ(tail.cut_frames, 2u);
  EXPECT_TRUE(tail.torn);
}

TEST_F(WalTailTest, FramesOfAnOlderGenerationAreNotALoss) {
  wal_[wal_.size() - kFrame + 8] ^= 0x01;  // another salt-1: left over from before a reset
  WalTail tail = ReadWalTail(wal_);
  EXPECT_EQ(tail.kept_bytes, wal_.size() - kFrame);
  EXPECT_EQ(tail.cut_bytes, 0u);
  EXPECT_FALSE(tail.torn);
}

TEST_F(WalTailTest, WhatIsNotALogCutsNothing) {
  EXPECT_EQ(ReadWalTail("").cut_bytes, 0u);
  EXPECT_EQ(ReadWalTail(std::string(8192, 'x')).cut_bytes, 0u);
  EXPECT_EQ(ReadWalTail(wal_.substr(0, 20)).cut_bytes, 0u);
}

TEST(WalTailFileTest, AMissingFileCutsNothing) {
  absl::StatusOr<WalTail> tail = ReadWalTailFile("/nonexistent/db-wal");
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(tail->cut_bytes, 0u);
}

}  // namespace
}  // namespace proctor
