// sd_notify: the parser.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/notify_message.h"

namespace proctor {
namespace {

using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// ParseNotifyMessage

TEST(NotifyMessageTest, ReadsEachVariable) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(
      "READY=1\nSTATUS=Serving 3 clients\nWATCHDOG=1\nWATCHDOG_USEC=2500000\nSTOPPING=1\n"
      "RELOADING=1\nERRNO=2\nEXTEND_TIMEOUT_USEC=7000000");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_EQ(message->status, "Serving 3 clients");
  EXPECT_TRUE(message->watchdog_ping);
  EXPECT_FALSE(message->watchdog_trigger);
  EXPECT_EQ(message->watchdog_period, absl::Milliseconds(2500));
  EXPECT_TRUE(message->stopping);
  EXPECT_TRUE(message->reloading);
  EXPECT_EQ(message->errno_value, 2);
  EXPECT_EQ(message->extend_timeout, absl::Seconds(7));
}

TEST(NotifyMessageTest, NothingSaidSetsNothing) {
  for (absl::string_view text : {"", "\n", "\n\n"}) {
    absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(text);
    ASSERT_TRUE(message.ok()) << message.status();
    EXPECT_FALSE(message->ready);
    EXPECT_FALSE(message->status.has_value());
    EXPECT_FALSE(message->watchdog_ping);
    EXPECT_FALSE(message->watchdog_period.has_value());
    EXPECT_FALSE(message->errno_value.has_value());
  }
}

TEST(NotifyMessageTest, ATrailingNewlineAndEmptyLinesAreFine) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("\nREADY=1\n\nSTATUS=up\n");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_EQ(message->status, "up");
}

TEST(NotifyMessageTest, UnknownVariablesAreIgnored) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(
      "MAINPID=42\nFDSTORE=1\nFDNAME=x\nBARRIER=1\nX_MINE=what=ever\n"
      "=nameless\nREADY=1");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->ready);
  EXPECT_FALSE(message->status.has_value());
}

TEST(NotifyMessageTest, WatchdogTrigger) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("WATCHDOG=trigger");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->watchdog_trigger);
  EXPECT_FALSE(message->watchdog_ping);
}

TEST(NotifyMessageTest, StatusTakesAnyTextAfterTheFirstEquals) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("STATUS=a=b; c");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "a=b; c");
  message = ParseNotifyMessage("STATUS=");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "");
}

TEST(NotifyMessageTest, AVariableGivenTwiceTakesItsLastValue) {
  absl::StatusOr<NotifyMessage> message = ParseNotifyMessage("STATUS=first\nSTATUS=second");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->status, "second");
}

TEST(NotifyMessageTest, ZeroErrnoZeroExtensionAndInfinity) {
  absl::StatusOr<NotifyMessage> message =
      ParseNotifyMessage("ERRNO=0\nEXTEND_TIMEOUT_USEC=0\nWATCHDOG_USEC=18446744073709551615");
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->errno_value, 0);
  EXPECT_EQ(message->extend_timeout, absl::ZeroDuration());
  EXPECT_EQ(message->watchdog_period, absl::InfiniteDuration());  // systemd's USEC_INFINITY
}

TEST(NotifyMessageTest, AMalformedMessageIsRefusedWholeNamingTheLine) {
  struct Case {
    std::string text;
    std::string line;  // how the error names the line
    std::string why;
  };
  const std::vector<Case> cases = {
      {"READY", "line 1 \"READY\"", "no '='"},
      {"READY=1\nSTATUS", "line 2 \"STATUS\"", "no '='"},
      {"READY=2", "line 1 \"READY=2\"", "READY takes only 1"},
      {"READY=1\nREADY=0", "line 2", "READY takes only 1"},
      {"WATCHDOG=0", "line 1", "WATCHDOG takes 1 or trigger"},
      {"WATCHDOG_USEC=abc", "line 1", "WATCHDOG_USEC takes"},
      {"WATCHDOG_USEC=0", "line 1", "above 0"},
      {"WATCHDOG_USEC=-5", "line 1", "WATCHDOG_USEC takes"},
      {"WATCHDOG_USEC=18446744073709551616", "line 1", "WATCHDOG_USEC takes"},
      {"STOPPING=yes", "line 1", "STOPPING takes only 1"},
      {"RELOADING=0", "line 1", "RELOADING takes only 1"},
      {"ERRNO=-1", "line 1", "ERRNO takes"},
      {"ERRNO=ENOENT", "line 1", "ERRNO takes"},
      {"ERRNO=", "line 1", "ERRNO takes"},
      {"EXTEND_TIMEOUT_USEC=x", "line 1", "EXTEND_TIMEOUT_USEC takes"},
      {"EXTEND_TIMEOUT_USEC=-1", "line 1", "EXTEND_TIMEOUT_USEC takes"},
      {std::string("STATUS=a\0b", 10), "line 1 \"STATUS=a\\000b\"", "a NUL byte"},
      {std::string("READY=1\n\0", 9), "line 2", "a NUL byte"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<NotifyMessage> message = ParseNotifyMessage(c.text);
    EXPECT_EQ(message.status().code(), absl::StatusCode::kInvalidArgument) << c.line;
    EXPECT_THAT(message.status().message(), HasSubstr(c.line));
    EXPECT_THAT(message.status().message(), HasSubstr(c.why));
  }
}

TEST(NotifyMessageTest, ALongBadLineIsQuotedShort) {
  absl::Status status = ParseNotifyMessage(std::string(4000, 'x')).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("xxx...\""));
  EXPECT_LT(status.message().size(), 200u);
}

}  // namespace
}  // namespace proctor
