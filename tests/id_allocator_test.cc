#include "server/id_allocator.h"

#include "gtest/gtest.h"
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

}  // namespace
}  // namespace proctor
