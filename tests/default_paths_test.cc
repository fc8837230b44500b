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
    EXPECT_EQ(DefaultServicesDir(), "/etc/proctor/services.d");
  } else {
    ScopedEnv runtime_dir("XDG_RUNTIME_DIR", "/run/user/1234");
    ScopedEnv state_home("XDG_STATE_HOME", "/home/u/.state");
    ScopedEnv config_home("XDG_CONFIG_HOME", "/home/u/.conf");
    EXPECT_EQ(DefaultSocketPath(), "/run/user/1234/proctor/proctord.sock");
    EXPECT_EQ(DefaultStateDir(), "/home/u/.state/proctor");
    EXPECT_EQ(DefaultServicesDir(), "/home/u/.conf/proctor/services.d");
  }
}

TEST(DefaultPathsTest, WithoutXdgDirectoriesOthersFallBackToHomeAndTmp) {
  if (geteuid() == 0) GTEST_SKIP() << "root always uses the system directories";
  ScopedEnv runtime_dir("XDG_RUNTIME_DIR", std::nullopt);
  ScopedEnv state_home("XDG_STATE_HOME", std::nullopt);
  ScopedEnv config_home("XDG_CONFIG_HOME", std::nullopt);
  ScopedEnv home("HOME", "/home/u");
  EXPECT_EQ(DefaultSocketPath(),
            absl::StrCat("/tmp/proctor-", geteuid(), "/proctor/proctord.sock"));
  EXPECT_EQ(DefaultStateDir(), "/home/u/.local/state/proctor");
  EXPECT_EQ(DefaultServicesDir(), "/home/u/.config/proctor/services.d");
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
