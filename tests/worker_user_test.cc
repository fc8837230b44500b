// Resolving a Start's user and group against the system's user database.
#include "server/worker_user.h"

#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

TEST(WorkerUserTest, NoUserMeansTheDaemonsOwn) {
  absl::StatusOr<WorkerUser> user = ResolveWorkerUser("", "");
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_FALSE(user->identity.has_value());
  EXPECT_TRUE(user->env.empty());
}

TEST(WorkerUserTest, AGroupNeedsAUser) {
  absl::Status status = ResolveWorkerUser("", "nogroup").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("needs a user"));
}

TEST(WorkerUserTest, UnknownNamesAreInvalidArguments) {
  absl::Status user = ResolveWorkerUser("no-such-user-here", "").status();
  EXPECT_EQ(user.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(user.message(), "no user named \"no-such-user-here\"");
  absl::Status group = ResolveWorkerUser("nobody", "no-such-group-here").status();
  EXPECT_EQ(group.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(group.message(), "no group named \"no-such-group-here\"");
}

TEST(WorkerUserTest, AnotherUserByNameOrNumber) {
  for (const char* name : {"nobody", "65534"}) {
    absl::StatusOr<WorkerUser> user = ResolveWorkerUser(name, "");
    if (geteuid() != 0) {
      EXPECT_EQ(user.status().code(), absl::StatusCode::kPermissionDenied);
      EXPECT_THAT(user.status().message(), HasSubstr("needs a proctord running as root"));
      continue;
    }
    ASSERT_TRUE(user.ok()) << user.status();
    ASSERT_TRUE(user->identity.has_value());
    EXPECT_EQ(user->identity->uid, 65534u);
    EXPECT_EQ(user->identity->gid, 65534u);
    EXPECT_THAT(user->identity->groups, Contains(65534u));
    EXPECT_THAT(user->env, Contains("USER=nobody"));
  }
}

TEST(WorkerUserTest, AGroupOverridesThePrimaryOne) {
  if (geteuid() != 0) GTEST_SKIP() << "a switch needs root";
  absl::StatusOr<WorkerUser> user = ResolveWorkerUser("nobody", "0");
  ASSERT_TRUE(user.ok()) << user.status();
  ASSERT_TRUE(user->identity.has_value());
  EXPECT_EQ(user->identity->gid, 0u);
}

TEST(WorkerUserTest, TheDaemonsOwnUserIsNoSwitch) {
  absl::StatusOr<WorkerUser> user = ResolveWorkerUser(std::to_string(geteuid()),
                                                      std::to_string(getegid()));
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_FALSE(user->identity.has_value());
}

}  // namespace
}  // namespace proctor
