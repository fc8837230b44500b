// bash completion for `proctor` (client/cli/completion/proctor.bash), run by a real bash with
// the script loaded, as the shell runs it on TAB: COMP_WORDS and COMP_CWORD set, then the
// completion function, then COMPREPLY. What it offers is checked against `proctor help`, so a
// command or option that help shows and completion does not fails here.
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::IsEmpty;

// What completion offers for `words` (after the program) with the cursor on word `cword`
// (an index into the words after the program, counted from 1; words.size() + 1 for a new one).
std::set<std::string> Complete(const std::vector<std::string>& words, size_t cword,
                               const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {
      "/bin/bash", "-c",
      "source \"$1\"; shift; COMP_CWORD=$1; shift; COMP_WORDS=(\"$@\"); _proctor; "
      "printf '%s\\n' \"${COMPREPLY[@]}\"",
      "bash", COMPLETION_SCRIPT, absl::StrCat(cword), PROCTOR_CLI_PATH};
  argv.insert(argv.end(), words.begin(), words.end());
  if (cword > words.size()) argv.push_back("");
  CommandResult result = RunCommand(argv, env);
  EXPECT_EQ(result.status, 0) << result.err;
  std::set<std::string> offered;
  for (absl::string_view line : absl::StrSplit(result.out, '\n', absl::SkipEmpty())) {
    offered.emplace(line);
  }
  return offered;
}

// The commands `proctor help` lists: the first word of each line under "Commands:".
std::set<std::string> HelpCommands() {
  CommandResult help = RunCommand({PROCTOR_CLI_PATH, "help"});
  EXPECT_EQ(help.status, 0);
  std::set<std::string> commands;
  bool in_commands = false;
  for (absl::string_view line : absl::StrSplit(help.out, '\n')) {
    if (line == "Commands:") {
      in_commands = true;
    } else if (in_commands && line.empty()) {
      break;
    } else if (in_commands && absl::StartsWith(line, "  ") && line[2] != ' ') {
      commands.emplace(line.substr(2, line.find(' ', 2) - 2));
    }
  }
  return commands;
}

// The options in `proctor help COMMAND`'s usage line ("[--name N]" gives --name).
std::set<std::string> HelpOptions(const std::string& command) {
  CommandResult help = RunCommand({PROCTOR_CLI_PATH, "help", command});
  EXPECT_EQ(help.status, 0) << command;
  std::string usage = help.out.substr(0, help.out.find('\n'));
  if (absl::StrContains(usage, "[start options]")) return HelpOptions("start");
  std::set<std::string> options;
  for (absl::string_view word : absl::StrSplit(usage, absl::ByAnyChar(" []|"))) {
    if (absl::StartsWith(word, "--") && word.size() > 2) options.emplace(word);
  }
  return options;
}

TEST(CompletionTest, EveryCommandOfHelpIsCompleted) {
  std::set<std::string> commands = HelpCommands();
  ASSERT_GT(commands.size(), 10u);
  EXPECT_EQ(Complete({}, 1), commands);
  EXPECT_EQ(Complete({"st"}, 1), (std::set<std::string>{"start", "status"}));
  // After global options too, and after `help`.
  EXPECT_EQ(Complete({"--json", "--address", "unix:/nowhere", "te"}, 4),
            (std::set<std::string>{"terminate"}));
  std::set<std::string> without_help = commands;
  without_help.erase("help");
  EXPECT_EQ(Complete({"help"}, 2), without_help);
}

TEST(CompletionTest, EveryOptionOfEachCommandIsCompleted) {
  for (const std::string& command : HelpCommands()) {
    if (command == "help") continue;
    SCOPED_TRACE(command);
    std::set<std::string> expected = HelpOptions(command);
    expected.insert({"--json", "--help"});
    EXPECT_EQ(Complete({command, "--"}, 2), expected);
  }
  EXPECT_EQ(Complete({"start", "--res"}, 2),
            (std::set<std::string>{"--restart", "--restart-window", "--reset-after"}));
  // The global options before a command.
  std::set<std::string> global = Complete({"--"}, 1);
  EXPECT_TRUE(global.contains("--address") && global.contains("--authkey-file") &&
              global.contains("--call-timeout"));
}

TEST(CompletionTest, OptionValuesAndTargetsAreLeftToTheShell) {
  // The value of --name, and what follows `start --`: nothing from proctor (bash completes
  // file names).
  EXPECT_THAT(Complete({"start", "--name"}, 3), IsEmpty());
  EXPECT_THAT(Complete({"start", "--", "-"}, 3), IsEmpty());
  EXPECT_THAT(Complete({"nosuchcommand"}, 2), IsEmpty());
}

TEST(CompletionTest, IdsOfRunningProcesses) {
  TestDaemon daemon;
  v1::Process first = StartOk(daemon.client(), {"/bin/sleep", "60"});
  v1::Process second = StartOk(daemon.client(), {"/bin/sleep", "60"});
  v1::Process ended = StartOk(daemon.client(), {"/bin/true"});
  ASSERT_TRUE(daemon.client().Join(ended.id()).ok());
  const std::vector<std::string> env = {"PROCTOR_AUTHKEY_FILE=" + daemon.authkey_path()};
  const std::set<std::string> running = {absl::StrCat(first.id()), absl::StrCat(second.id())};
  EXPECT_EQ(Complete({"--address", daemon.address(), "join"}, 4, env), running);
  EXPECT_EQ(Complete({"--address", daemon.address(), "terminate"}, 4, env), running);
  EXPECT_EQ(Complete({"--address", daemon.address(), "kill", absl::StrCat(second.id())}, 4, env),
            (std::set<std::string>{absl::StrCat(second.id())}));
  // One id per command: after it, only options.
  EXPECT_THAT(Complete({"--address", daemon.address(), "join", absl::StrCat(first.id())}, 5, env),
              IsEmpty());
  // From $PROCTOR_ADDRESS when no --address is given.
  std::vector<std::string> env_address = env;
  env_address.push_back("PROCTOR_ADDRESS=" + daemon.address());
  EXPECT_EQ(Complete({"logs"}, 2, env_address), running);
  for (const v1::Process& p : {first, second}) {
    v1::TerminateRequest terminate;
    terminate.set_id(p.id());
    ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
  }
}

}  // namespace
}  // namespace proctor::testing
