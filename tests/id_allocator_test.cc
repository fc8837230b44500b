#include "server/id_allocator.h"

#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/posix_error.h"
#include "tests/test_daemon.h"

namespace proctor {
namespace {

TEST(IdAllocatorTest, NeverReusesIdsAcrossReopens) {
  testing::TempDir dir;
  std::string path = dir.path() + "/next-id";
  uint64_t last = 0;
  {
    auto ids = *IdAllocator::Open(path, /*block_size=*/4);
    for (int i = 0; i < 6; ++i) last = *ids->Next();
  }
  EXPECT_EQ(last, 6u);
  auto reopened = *IdAllocator::Open(path, 4);
  EXPECT_GT(*reopened->Next(), last) << "a crash after any id leaves the counter above it";
}

TEST(IdAllocatorTest, CorruptCounterIsDataLoss) {
  testing::TempDir dir;
  std::string path = dir.path() + "/next-id";
  ASSERT_TRUE(testing::WriteFile(path, "garbage\n"));
  EXPECT_EQ(IdAllocator::Open(path).status().code(), absl::StatusCode::kDataLoss);
}

// A counter that cannot be written because the disk is full is RESOURCE_EXHAUSTED saying so
// (a Start refused for it tells the client to make room, not that proctord is broken).
TEST(IdAllocatorTest, AFullDiskIsResourceExhausted) {
  if (geteuid() != 0) GTEST_SKIP() << "mounts a small tmpfs: needs root";
  char dir_template[] = "/tmp/proctor-full-ids.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=64k"), 0) << std::strerror(errno);
  {
    auto ids = *IdAllocator::Open(dir + "/next-id", /*block_size=*/2);
    ASSERT_TRUE(ids->Next().ok());
    FILE* filler = std::fopen((dir + "/filler").c_str(), "w");
    ASSERT_NE(filler, nullptr);
    const std::string block(4096, 'x');
    while (std::fwrite(block.data(), 1, block.size(), filler) == block.size() &&
           std::fflush(filler) == 0) {
    }
    std::fclose(filler);
    absl::Status refused;
    for (int i = 0; i < 4 && refused.ok(); ++i) refused = ids->Next().status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_THAT(refused.message(), ::testing::HasSubstr("is its disk full?"));
  }
  umount2(dir.c_str(), MNT_DETACH);
  rmdir(dir.c_str());
}

TEST(PosixErrorTest, WhatRunsOutIsResourceExhaustedAndSaysWhat) {
  absl::Status full = PosixError("writing /var/lib/proctor/next-id", ENOSPC);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "writing /var/lib/proctor/next-id: No space left on device "
                            "(is its disk full?)");
  absl::Status descriptors = PosixError("cannot open captured output /x/1.out", EMFILE);
  EXPECT_EQ(descriptors.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(descriptors.message(), ::testing::HasSubstr("descriptors are all in use"));
  EXPECT_EQ(PosixError("x", EDQUOT).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(PosixError("x", ENFILE).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(PosixError("x", ENOENT).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PosixError("x", EACCES).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(PosixError("x", EIO).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace proctor
