#include "common/default_paths.h"

#include <unistd.h>

#include <cstdlib>

#include "gtest/gtest.h"

namespace proctor {
namespace {

TEST(DefaultPathsTest, RootUsesSystemDirectoriesOthersTheirOwn) {
  EXPECT_EQ(DefaultAddress(), "unix:" + DefaultSocketPath());
  if (geteuid() == 0) {
    EXPECT_EQ(DefaultSocketPath(), "/run/proctor/proctord.sock");
    EXPECT_EQ(DefaultStateDir(), "/var/lib/proctor");
  } else {
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    setenv("XDG_STATE_HOME", "/home/u/.state", 1);
    EXPECT_EQ(DefaultSocketPath(), "/run/user/1234/proctor/proctord.sock");
    EXPECT_EQ(DefaultStateDir(), "/home/u/.state/proctor");
  }
}

}  // namespace
}  // namespace proctor
