// CheckCli (client/cli/cli.h): the command line checked as RunCli checks it, with no daemon.
#include <sstream>
#include <string>
#include <vector>

#include "client/cli/cli.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::HasSubstr;

struct Checked {
  int status = 0;
  std::string out;
  std::string err;
};

Checked Check(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int status = CheckCli(args, out, err);
  return {status, out.str(), err.str()};
}

TEST(CheckCliTest, AValidLineStopsWhereItWouldConnect) {
  Checked checked = Check({"--authkey-file", "/nonexistent/key", "start", "--name", "w", "true"});
  EXPECT_EQ(checked.status, 1);
  EXPECT_EQ(checked.out, "");
  EXPECT_EQ(checked.err,
            "proctor: not connecting to proctord: the command line was only checked\n");
}

TEST(CheckCliTest, UsageErrorsAreRunClisOwn) {
  Checked bad_kwarg = Check({"start", "--kwarg", "novalue", "true"});
  EXPECT_EQ(bad_kwarg.status, 2);
  EXPECT_THAT(bad_kwarg.err, HasSubstr("invalid --kwarg \"novalue\" (expected KEY=VALUE)"));

  Checked bad_id = Check({"join", "x1"});
  EXPECT_EQ(bad_id.status, 2);
  EXPECT_THAT(bad_id.err, HasSubstr("invalid process id \"x1\""));

  Checked bad_timeout = Check({"--call-timeout", "0", "ps"});
  EXPECT_EQ(bad_timeout.status, 2);
  EXPECT_THAT(bad_timeout.err, HasSubstr("--call-timeout must be positive"));
}

TEST(CheckCliTest, HelpAndCompletionAnswerWithoutADaemon) {
  Checked help = Check({"help", "start"});
  EXPECT_EQ(help.status, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: proctor start"));

  Checked complete = Check({"__complete", "1", "proctor", "sta"});
  EXPECT_EQ(complete.status, 0);
  EXPECT_THAT(complete.out, HasSubstr("start\n"));
  EXPECT_THAT(complete.out, HasSubstr("status\n"));
}

}  // namespace
}  // namespace proctor
