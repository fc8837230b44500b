// CheckCli (client/cli/cli.h): the command line checked as RunCli checks it, with no daemon;
// ProcessTree, what `ps --tree` draws.
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

// `ps --tree` of a wide tree: each parent's children drawn under it, the last with └─. (Its
// drawing once kept a reference into a map that drawing a leaf could grow; AddressSanitizer
// saw the use after free.)
TEST(ProcessTreeTest, AWideTreeIsDrawnWholeUnderItsRoot) {
  std::vector<v1::Process> processes;
  v1::Process root;
  root.set_id(1);
  root.set_name("Process-1");
  processes.push_back(root);
  for (uint64_t id = 2; id <= 41; ++id) {
    v1::Process child;
    child.set_id(id);
    child.set_parent_id(id <= 21 ? 1 : id - 20);  // 20 children of 1, each with one child
    child.set_name(absl::StrCat("Process-", id));
    processes.push_back(child);
  }
  const std::string tree = ProcessTree(processes);
  std::vector<std::string> lines = absl::StrSplit(tree, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 41u) << tree;
  EXPECT_THAT(lines[0], ::testing::StartsWith("1 Process-1 "));
  EXPECT_THAT(lines[1], ::testing::StartsWith("├─ 2 Process-2 "));
  EXPECT_THAT(lines[2], ::testing::StartsWith("│  └─ 22 Process-22 "));
  EXPECT_THAT(lines[39], ::testing::StartsWith("└─ 21 Process-21 "));
  EXPECT_THAT(lines[40], ::testing::StartsWith("   └─ 41 Process-41 "));
}

}  // namespace
}  // namespace proctor
