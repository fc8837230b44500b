#include "common/signal_names.h"

#include <csignal>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::HasSubstr;

TEST(SignalNamesTest, ParsesNamesAndNumbersAsPeopleTypeThem) {
  EXPECT_EQ(*ParseSignal("TERM"), SIGTERM);
  EXPECT_EQ(*ParseSignal("SIGKILL"), SIGKILL);
  EXPECT_EQ(*ParseSignal("int"), SIGINT);
  EXPECT_EQ(*ParseSignal("15"), 15);
  EXPECT_EQ(*ParseSignal("RTMIN+2"), SIGRTMIN + 2);
}

TEST(SignalNamesTest, RefusesWhatIsNoSignal) {
  EXPECT_THAT(ParseSignal("0").status().message(), HasSubstr("signal 0"));
  EXPECT_THAT(ParseSignal("-9").status().message(), HasSubstr("negative"));
  EXPECT_THAT(ParseSignal("65").status().message(), HasSubstr("above the maximum"));
  EXPECT_THAT(ParseSignal("SIGBOGUS").status().message(), HasSubstr("unknown signal"));
}

TEST(SignalNamesTest, NamesSignals) {
  EXPECT_EQ(SignalName(SIGTERM), "SIGTERM");
  EXPECT_EQ(SignalName(SIGRTMIN + 1), "SIGRTMIN+1");
}

}  // namespace
}  // namespace proctor
