#include "common/default_paths.h"

#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/scoped_env.h"

namespace proctor {
namespace {

using testing::ScopedEnv;

TEST(DefaultPathsTest, RootUsesSystemDirectoriesOthersTheirOwn) {
  EXPECT_EQ(DefaultAddress(), "unix:" + DefaultSocketPath());
  if (geteuid() == 0) {
    EXPECT_EQ(DefaultSocketPath(), "/run/proctor/proctord.sock");
    EXPECT_EQ(DefaultStateDir(), "/var/lib/proctor");
  } else {
    ScopedEnv runtime_dir("XDG_RUNTIME_DIR", "/run/user/1234");
    ScopedEnv state_home("XDG_STATE_HOME", "/home/u/.state");
    EXPECT_EQ(DefaultSocketPath(), "/run/user/1234/proctor/proctord.sock");
    EXPECT_EQ(DefaultStateDir(), "/home/u/.state/proctor");
  }
}

TEST(DefaultPathsTest, WithoutXdgDirectoriesOthersFallBackToHomeAndTmp) {
  if (geteuid() == 0) GTEST_SKIP() << "root always uses the system directories";
  ScopedEnv runtime_dir("XDG_RUNTIME_DIR", std::nullopt);
  ScopedEnv state_home("XDG_STATE_HOME", std::nullopt);
  ScopedEnv home("HOME", "/home/u");
  EXPECT_EQ(DefaultSocketPath(),
            absl::StrCat("/tmp/proctor-", geteuid(), "/proctor/proctord.sock"));
  EXPECT_EQ(DefaultStateDir(), "/home/u/.local/state/proctor");
}

TEST(ScopedEnvTest, PutsBackTheValueOrTheAbsence) {
  const char* kName = "PROCTOR_SCOPED_ENV_TEST";
  ASSERT_EQ(std::getenv(kName), nullptr);
  {
    ScopedEnv set(kName, "first");
    EXPECT_STREQ(std::getenv(kName), "first");
    {
      ScopedEnv unset(kName, std::nullopt);
      EXPECT_EQ(std::getenv(kName), nullptr);
    }
    EXPECT_STREQ(std::getenv(kName), "first");
  }
  EXPECT_EQ(std::getenv(kName), nullptr);
}

}  // namespace
}  // namespace proctor
