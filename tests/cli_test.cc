// The `proctor` command line's contract (client/cli/cli.h), checked by running the real binary
// against a real proctord: what each command prints, and the exit statuses scripts rely on.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

// The value of `key` in a one-line JSON object: a string with its quotes, or a bare scalar
// (number, true, false, null). Empty when the key is absent.
std::string JsonField(const std::string& json, const std::string& key) {
  std::string needle = absl::StrCat("\"", key, "\":");
  size_t start = json.find(needle);
  if (start == std::string::npos) return "";
  start += needle.size();
  size_t end = start;
  if (json[start] == '"') {
    for (end = start + 1; end < json.size() && json[end] != '"'; ++end) {
      if (json[end] == '\\') ++end;
    }
    return json.substr(start, end + 1 - start);
  }
  while (end < json.size() && json[end] != ',' && json[end] != '}' && json[end] != ']') ++end;
  return json.substr(start, end - start);
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

std::vector<std::string> Words(const std::string& line) {
  return absl::StrSplit(line, ' ', absl::SkipEmpty());
}

// The ids in the first column of a table, below its header.
std::vector<uint64_t> TableIds(const std::string& table) {
  std::vector<uint64_t> ids;
  std::vector<std::string> lines = Lines(table);
  for (size_t i = 1; i < lines.size(); ++i) {
    uint64_t id = 0;
    EXPECT_TRUE(absl::SimpleAtoi(Words(lines[i]).at(0), &id)) << lines[i];
    ids.push_back(id);
  }
  return ids;
}

class CliTest : public ::testing::Test {
 protected:
  // No shutdown grace: whatever a failed test leaves running ends with the daemon at once.
  CliTest() : daemon_({"--shutdown-grace", "0"}) {}

  void SetUp() override { ASSERT_GT(daemon_.pid(), 0) << "proctord is not running"; }

  void TearDown() override {
    if (daemon_.pid() <= 0) return;
    absl::StatusOr<std::vector<v1::Process>> all = daemon_.client().List(v1::StatusRequest{});
    ASSERT_TRUE(all.ok()) << all.status();
    for (const v1::Process& p : *all) {
      EXPECT_EQ(p.state(), v1::STATE_EXITED) << "process " << p.id() << " (" << p.name()
                                             << ") is still running";
    }
  }

  CommandResult Cli(const std::vector<std::string>& args) { return daemon_.Cli(args); }

  // `proctor start ARGS`, expecting success; returns the printed id.
  uint64_t Start(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"start"};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult result = Cli(argv);
    EXPECT_EQ(result.status, 0) << result.err;
    uint64_t id = 0;
    EXPECT_TRUE(absl::SimpleAtoi(absl::StripSuffix(result.out, "\n"), &id)) << result.out;
    return id;
  }

  // `proctor ARGS`, expecting exit status 0 and nothing on stderr; returns stdout.
  std::string CliOk(const std::vector<std::string>& args) {
    CommandResult result = Cli(args);
    EXPECT_EQ(result.status, 0) << absl::StrJoin(args, " ") << ": " << result.err;
    EXPECT_EQ(result.err, "") << absl::StrJoin(args, " ");
    return result.out;
  }

  std::string StatusJson(uint64_t id) { return CliOk({"--json", "status", absl::StrCat(id)}); }

  // `proctor ARGS` left to run, given up to `limit` to exit (else killed, and the status is
  // -1); `took` receives how long it ran.
  CommandResult CliWithin(const std::vector<std::string>& args, absl::Duration limit,
                          absl::Duration* took) {
    std::string out_path = daemon_.dir() + "/within.out";
    std::string err_path = daemon_.dir() + "/within.err";
    absl::Time before = absl::Now();
    pid_t cli = daemon_.StartCli(args, out_path, err_path);
    std::optional<int> raw = cli > 0 ? WaitForExit(cli, limit) : std::nullopt;
    *took = absl::Now() - before;
    CommandResult result;
    if (raw.has_value() && WIFEXITED(*raw)) result.status = WEXITSTATUS(*raw);
    result.out = ReadFile(out_path);
    result.err = ReadFile(err_path);
    return result;
  }

  // Waits until the worker has written `text` to its stdout (its capture file).
  bool WaitForOutput(uint64_t id, const std::string& text) {
    std::string path = absl::StrCat(daemon_.state_dir(), "/logs/", id, ".out");
    return WaitFor([&] { return absl::StrContains(ReadFile(path), text); },
                   absl::Seconds(30));
  }

  // A worker that ignores SIGTERM (and so does the sleep it becomes), once it runs.
  uint64_t StartTermIgnoring() {
    uint64_t id =
        Start({"--", "/bin/sh", "-c", "trap '' TERM; echo ready; exec /bin/sleep 60"});
    EXPECT_TRUE(WaitForOutput(id, "ready\n"));
    return id;
  }

  // The cursor a listing reflects now.
  uint64_t Cursor() {
    uint64_t cursor = 0;
    absl::StatusOr<std::vector<v1::Process>> all =
        daemon_.client().List(v1::StatusRequest{}, &cursor);
    EXPECT_TRUE(all.ok()) << all.status();
    return cursor;
  }

  // `proctor --json events ARGS`, expecting success: one object per line.
  std::vector<std::string> EventsJson(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"--json", "events"};
    argv.insert(argv.end(), args.begin(), args.end());
    return Lines(CliOk(argv));
  }

  TestDaemon daemon_;
};

uint64_t JsonNumber(const std::string& json, const std::string& key) {
  uint64_t n = 0;
  EXPECT_TRUE(absl::SimpleAtoi(JsonField(json, key), &n)) << key << " in " << json;
  return n;
}

// An event's type and process id.
using Seen = std::pair<std::string, uint64_t>;

// The type and process id of each line of `events --json`.
std::vector<Seen> TypesAndIds(const std::vector<std::string>& lines) {
  std::vector<Seen> out;
  for (const std::string& line : lines) {
    out.emplace_back(std::string(absl::StripPrefix(absl::StripSuffix(JsonField(line, "type"),
                                                                     "\""),
                                                   "\"")),
                     JsonNumber(line, "id"));
  }
  return out;
}

TEST_F(CliTest, StartPrintsTheIdAlone) {
  CommandResult result = Cli({"start", "--", "/bin/sleep", "60"});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.err, "");
  ASSERT_TRUE(absl::EndsWith(result.out, "\n"));
  std::string text(absl::StripSuffix(result.out, "\n"));
  uint64_t id = 0;
  ASSERT_TRUE(absl::SimpleAtoi(text, &id)) << result.out;
  EXPECT_EQ(result.out, absl::StrCat(id, "\n"));
  absl::StatusOr<v1::Process> record = daemon_.client().Status(id);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_RUNNING);
  CliOk({"kill", text});
}

TEST_F(CliTest, RunStreamsOutputAndExitsLikeTheWorker) {
  CommandResult result = Cli({"run", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(result.status, 3);
  EXPECT_EQ(result.out, "out\n");
  EXPECT_EQ(result.err, "err\n");
}

TEST_F(CliTest, RunSucceedsWithTheWorker) {
  CommandResult result = Cli({"run", "--name", "quick", "--", "/bin/echo", "hello", "world"});
  EXPECT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.out, "hello world\n");
  EXPECT_EQ(result.err, "");
}

TEST_F(CliTest, JoinExitsWithTheExitCode) {
  for (int code : {0, 3, 255}) {
    uint64_t id = Start({"--", "/bin/sh", "-c", absl::StrCat("exit ", code)});
    CommandResult joined = Cli({"join", absl::StrCat(id)});
    EXPECT_EQ(joined.status, code);
    EXPECT_EQ(joined.out, "");
    EXPECT_EQ(joined.err, "");
  }
}

TEST_F(CliTest, JoinAfterKillExitsWith128Plus9) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  CommandResult killed = Cli({"kill", absl::StrCat(id)});
  EXPECT_EQ(killed.status, 0) << killed.err;
  EXPECT_EQ(killed.out, "");
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 128 + 9);
  std::string json = StatusJson(id);
  EXPECT_EQ(JsonField(json, "exitcode"), "-9");
  EXPECT_EQ(JsonField(json, "signal"), "9");
}

TEST_F(CliTest, JoinAfterTerminateExitsWith128Plus15) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  CommandResult terminated = Cli({"terminate", absl::StrCat(id)});
  EXPECT_EQ(terminated.status, 0) << terminated.err;
  EXPECT_EQ(terminated.out, "");
  // Without --no-wait, terminate returns once the process has ended.
  EXPECT_EQ(JsonField(StatusJson(id), "state"), "\"exited\"");
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 128 + 15);
  EXPECT_EQ(JsonField(StatusJson(id), "exitcode"), "-15");
}

TEST_F(CliTest, JoinTimeoutExitsWith124) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  absl::Time before = absl::Now();
  CommandResult joined = Cli({"join", absl::StrCat(id), "--timeout", "0.2"});
  EXPECT_EQ(joined.status, 124);
  EXPECT_EQ(joined.err, "");
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(200));
  EXPECT_EQ(JsonField(StatusJson(id), "state"), "\"running\"");
  CliOk({"kill", absl::StrCat(id)});
}

TEST_F(CliTest, JoinWithJsonPrintsTheRecord) {
  uint64_t id = Start({"--", "/bin/sh", "-c", "exit 7"});
  CommandResult joined = Cli({"--json", "join", absl::StrCat(id)});
  EXPECT_EQ(joined.status, 7);
  EXPECT_EQ(Lines(joined.out).size(), 1u) << joined.out;
  EXPECT_EQ(JsonField(joined.out, "id"), absl::StrCat(id));
  EXPECT_EQ(JsonField(joined.out, "exitcode"), "7");
}

TEST_F(CliTest, TerminateWithSignalKill) {
  uint64_t id = StartTermIgnoring();
  CommandResult terminated = Cli({"terminate", absl::StrCat(id), "--signal", "KILL"});
  EXPECT_EQ(terminated.status, 0) << terminated.err;
  std::string json = StatusJson(id);
  EXPECT_EQ(JsonField(json, "state"), "\"exited\"");
  EXPECT_EQ(JsonField(json, "exitcode"), "-9");
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 128 + 9);
}

TEST_F(CliTest, TerminateKillsAfterTheGrace) {
  uint64_t id = StartTermIgnoring();
  absl::Time before = absl::Now();
  CommandResult terminated = Cli({"terminate", absl::StrCat(id), "--grace", "0.3"});
  absl::Duration took = absl::Now() - before;
  EXPECT_EQ(terminated.status, 0) << terminated.err;
  // SIGTERM is ignored; SIGKILL follows after 0.3 s, long before the default 10 s.
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(8));
  EXPECT_EQ(JsonField(StatusJson(id), "exitcode"), "-9");
}

TEST_F(CliTest, TerminateNoWaitReturnsAtOnce) {
  uint64_t id = StartTermIgnoring();
  CommandResult terminated =
      Cli({"terminate", absl::StrCat(id), "--grace", "60", "--no-wait"});
  EXPECT_EQ(terminated.status, 0) << terminated.err;
  // The process ignores SIGTERM and its SIGKILL is a minute away: it still runs.
  EXPECT_EQ(JsonField(StatusJson(id), "state"), "\"running\"");
  // A kill overrides the pending grace.
  CommandResult killed = Cli({"kill", absl::StrCat(id)});
  EXPECT_EQ(killed.status, 0) << killed.err;
  EXPECT_EQ(JsonField(StatusJson(id), "exitcode"), "-9");
}

TEST_F(CliTest, KillNoWait) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  CommandResult killed = Cli({"kill", absl::StrCat(id), "--no-wait"});
  EXPECT_EQ(killed.status, 0) << killed.err;
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 128 + 9);
}

TEST_F(CliTest, StatusTable) {
  uint64_t id = Start({"--name", "sleeper", "--", "/bin/sleep", "60"});
  absl::StatusOr<v1::Process> record = daemon_.client().Status(id);
  ASSERT_TRUE(record.ok()) << record.status();
  std::vector<std::string> lines = Lines(CliOk({"status", absl::StrCat(id)}));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(Words(lines[0]), ElementsAre("ID", "NAME", "PID", "STATE", "EXITCODE", "DAEMON",
                                           "PARENT", "TARGET"));
  EXPECT_THAT(Words(lines[1]),
              ElementsAre(absl::StrCat(id), "sleeper", absl::StrCat(record->pid()), "running",
                          "-", "no", "-", record->target(), "60"));
  CliOk({"kill", absl::StrCat(id)});
  lines = Lines(CliOk({"status", absl::StrCat(id)}));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(Words(lines[1]), ElementsAre(absl::StrCat(id), "sleeper",
                                           absl::StrCat(record->pid()), "exited", "-9", "no",
                                           "-", record->target(), "60"));
}

TEST_F(CliTest, StatusJsonIsOneObject) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  absl::StatusOr<v1::Process> record = daemon_.client().Status(id);
  ASSERT_TRUE(record.ok()) << record.status();
  std::string json = StatusJson(id);
  EXPECT_THAT(json, StartsWith("{"));
  EXPECT_EQ(json.back(), '\n');
  EXPECT_EQ(Lines(json).size(), 1u) << json;
  EXPECT_EQ(JsonField(json, "id"), absl::StrCat(id));
  EXPECT_EQ(JsonField(json, "name"), "\"Process-1\"");
  EXPECT_EQ(JsonField(json, "pid"), absl::StrCat(record->pid()));
  EXPECT_EQ(JsonField(json, "state"), "\"running\"");
  EXPECT_EQ(JsonField(json, "exitcode"), "null");
  EXPECT_EQ(JsonField(json, "daemon"), "false");
  EXPECT_EQ(JsonField(json, "parent"), "null");

  CliOk({"kill", absl::StrCat(id)});
  json = StatusJson(id);
  EXPECT_EQ(JsonField(json, "state"), "\"exited\"");
  EXPECT_EQ(JsonField(json, "exitcode"), "-9");
}

TEST_F(CliTest, ADaemonicProcessStartedFromAShellIsRefusedForWantOfAParent) {
  CommandResult refused = Cli({"start", "--daemon", "--", "/bin/sleep", "60"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("a daemonic process needs a parent that it ends with"));
  EXPECT_THAT(refused.err, HasSubstr("proctor run --daemon"));
  EXPECT_EQ(refused.out, "");
  EXPECT_THAT(TableIds(CliOk({"ps", "--all"})), ::testing::IsEmpty()) << "no record was left";
}

TEST_F(CliTest, StatusJsonOfADaemonicChild) {
  // A worker runs the CLI itself: its own key (from its environment) makes it the parent.
  uint64_t parent = Start({"--", "/bin/sh", "-c",
                           "\"$0\" start --daemon -- /bin/sleep 60 && exec /bin/sleep 60",
                           PROCTOR_CLI_PATH});
  ASSERT_TRUE(WaitForOutput(parent, "\n"));
  std::string path = absl::StrCat(daemon_.state_dir(), "/logs/", parent, ".out");
  uint64_t child = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripSuffix(ReadFile(path), "\n"), &child))
      << ReadFile(path) << ReadFile(absl::StrCat(daemon_.state_dir(), "/logs/", parent, ".err"));
  std::string json = StatusJson(child);
  EXPECT_EQ(JsonField(json, "parent"), absl::StrCat(parent));
  EXPECT_EQ(JsonField(json, "daemon"), "true");
  EXPECT_EQ(JsonField(json, "name"), "\"Process-1:1\"");
  EXPECT_EQ(JsonField(StatusJson(parent), "children"), absl::StrCat("[", child));
  // Terminating the parent ends what runs below it.
  CliOk({"terminate", absl::StrCat(parent)});
  EXPECT_EQ(JsonField(StatusJson(child), "state"), "\"exited\"");
}

TEST_F(CliTest, Ps) {
  uint64_t alpha = Start({"--name", "alpha", "--", "/bin/sleep", "60"});
  uint64_t beta = Start({"--name", "beta", "--", "/bin/sleep", "60"});
  uint64_t done = Start({"--name", "alpha", "--", "/bin/true"});
  EXPECT_EQ(Cli({"join", absl::StrCat(done)}).status, 0);

  std::string table = CliOk({"ps"});
  EXPECT_THAT(Words(Lines(table).at(0)), ElementsAre("ID", "NAME", "PID", "STATE", "EXITCODE",
                                                     "DAEMON", "PARENT", "TARGET"));
  EXPECT_THAT(TableIds(table), ElementsAre(alpha, beta));
  EXPECT_THAT(TableIds(CliOk({"ps", "--all"})), ElementsAre(alpha, beta, done));
  EXPECT_THAT(TableIds(CliOk({"ps", "--name", "alpha"})), ElementsAre(alpha));
  EXPECT_THAT(TableIds(CliOk({"ps", "--all", "--name", "alpha"})), ElementsAre(alpha, done));
  EXPECT_THAT(TableIds(CliOk({"ps", "--name", "gamma"})), ::testing::IsEmpty());

  std::string json = CliOk({"--json", "ps"});
  EXPECT_THAT(json, StartsWith("["));
  EXPECT_TRUE(absl::EndsWith(json, "]\n")) << json;
  std::vector<std::string> objects;
  for (const std::string& line : Lines(json)) {
    if (absl::StartsWith(line, "{")) objects.push_back(line);
  }
  ASSERT_EQ(objects.size(), 2u) << json;
  EXPECT_EQ(JsonField(objects[0], "id"), absl::StrCat(alpha));
  EXPECT_EQ(JsonField(objects[0], "name"), "\"alpha\"");
  EXPECT_EQ(JsonField(objects[1], "id"), absl::StrCat(beta));
  EXPECT_EQ(JsonField(objects[1], "state"), "\"running\"");
  EXPECT_EQ(CliOk({"--json", "ps", "--name", "gamma"}), "[]\n");

  CliOk({"kill", absl::StrCat(alpha)});
  CliOk({"kill", absl::StrCat(beta)});
  EXPECT_THAT(TableIds(CliOk({"ps"})), ::testing::IsEmpty());
}

TEST_F(CliTest, Logs) {
  uint64_t id = Start({"--", "/bin/sh", "-c", "echo one; echo two >&2; echo three"});
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 0);
  EXPECT_EQ(CliOk({"logs", absl::StrCat(id)}), "one\nthree\n");
  EXPECT_EQ(CliOk({"logs", absl::StrCat(id), "--stderr"}), "two\n");
  EXPECT_EQ(CliOk({"logs", absl::StrCat(id), "--tail", "6"}), "three\n");
}

TEST_F(CliTest, LogsFollowReturnsWhenTheProcessEnds) {
  // The worker goes on only once the following CLI has passed on its first line.
  Gate gate(daemon_.dir() + "/gate");
  uint64_t id = Start({"--", "/bin/sh", "-c",
                       absl::StrCat("echo a; ", gate.ShellWait(), "; echo b; echo c")});
  std::string out_path = daemon_.dir() + "/follow.out";
  std::string err_path = daemon_.dir() + "/follow.err";
  pid_t cli = daemon_.StartCli({"logs", absl::StrCat(id), "--follow"}, out_path, err_path);
  ASSERT_GT(cli, 0);
  EXPECT_TRUE(WaitFor([&] { return ReadFile(out_path) == "a\n"; }, absl::Seconds(30)))
      << "the CLI passes on output while the process runs: " << ReadFile(out_path);
  EXPECT_TRUE(IsAlive(cli)) << "the CLI follows while the process runs";
  EXPECT_TRUE(gate.Open());
  std::optional<int> raw = WaitForExit(cli, absl::Seconds(30));
  ASSERT_TRUE(raw.has_value()) << "the CLI did not return when the process ended";
  EXPECT_TRUE(WIFEXITED(*raw) && WEXITSTATUS(*raw) == 0) << ReadFile(err_path);
  EXPECT_EQ(ReadFile(err_path), "");
  EXPECT_EQ(ReadFile(out_path), "a\nb\nc\n");
  absl::StatusOr<v1::Process> record = daemon_.client().Status(id);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->state(), v1::STATE_EXITED);
}

TEST_F(CliTest, Release) {
  uint64_t running = Start({"--", "/bin/sleep", "60"});
  CommandResult refused = Cli({"release", absl::StrCat(running)});
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("still running"));
  CliOk({"kill", absl::StrCat(running)});

  uint64_t id = Start({"--", "/bin/echo", "bye"});
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 0);
  std::string out_path = absl::StrCat(daemon_.state_dir(), "/logs/", id, ".out");
  EXPECT_EQ(ReadFile(out_path), "bye\n");
  EXPECT_EQ(CliOk({"release", absl::StrCat(id)}), "");
  CommandResult gone = Cli({"status", absl::StrCat(id)});
  EXPECT_EQ(gone.status, 1);
  EXPECT_EQ(gone.err, absl::StrCat("proctor: no process with id ", id, "\n"));
  EXPECT_NE(access(out_path.c_str(), F_OK), 0) << "captured output outlived the release";
  CliOk({"release", absl::StrCat(running)});
}

TEST_F(CliTest, UnknownIdIsOneLine) {
  for (const char* command : {"status", "join", "terminate", "kill", "logs", "release"}) {
    CommandResult result = Cli({command, "42"});
    EXPECT_EQ(result.status, 1) << command;
    EXPECT_EQ(result.out, "") << command;
    EXPECT_EQ(result.err, "proctor: no process with id 42\n") << command;
  }
}

TEST_F(CliTest, UnreachableDaemonIsOneLine) {
  // The later --address wins over the test daemon's.
  for (const char* command : {"status", "join", "logs"}) {
    CommandResult result = Cli({"--address", "unix:/nonexistent/s.sock", command, "1"});
    EXPECT_NE(result.status, 0) << command;
    EXPECT_EQ(result.out, "") << command;
    EXPECT_THAT(result.err,
                StartsWith("proctor: cannot reach proctord at unix:/nonexistent/s.sock: "))
        << command;
    EXPECT_EQ(Lines(result.err).size(), 1u) << result.err;
    EXPECT_TRUE(absl::EndsWith(result.err, "\n")) << result.err;
  }
  CommandResult start =
      Cli({"--address", "unix:/nonexistent/s.sock", "start", "--", "/bin/true"});
  EXPECT_NE(start.status, 0);
  EXPECT_THAT(start.err, StartsWith("proctor: cannot reach proctord at unix:/nonexistent/s.sock: "));
}

TEST_F(CliTest, InterruptedRunTerminatesTheWorker) {
  std::string out_path = daemon_.dir() + "/run.out";
  std::string err_path = daemon_.dir() + "/run.err";
  pid_t cli = daemon_.StartCli({"run", "--name", "interrupted", "--", "/bin/sh", "-c",
                                "echo ready; exec /bin/sleep 60"},
                               out_path, err_path);
  ASSERT_GT(cli, 0);

  // The CLI blocks its signals before it starts the worker, so once the worker is listed
  // the SIGINT reaches the CLI's watcher. Waiting for the worker's first line as well lets
  // the test check that the CLI passed on all of its output.
  v1::StatusRequest filter;
  filter.set_name("interrupted");
  v1::Process worker;
  bool running = WaitFor(
      [&] {
        absl::StatusOr<std::vector<v1::Process>> found = daemon_.client().List(filter);
        if (!found.ok() || found->empty()) return false;
        worker = found->front();
        return true;
      },
      absl::Seconds(30));
  running = running && WaitForOutput(worker.id(), "ready\n");
  EXPECT_TRUE(running);
  if (running) {
    EXPECT_EQ(worker.state(), v1::STATE_RUNNING);
    EXPECT_EQ(kill(cli, SIGINT), 0);
  }
  std::optional<int> raw = WaitForExit(cli, absl::Seconds(30));
  ASSERT_TRUE(raw.has_value()) << "the CLI did not exit after SIGINT";
  ASSERT_TRUE(running);
  ASSERT_TRUE(WIFEXITED(*raw)) << "the CLI died of signal " << WTERMSIG(*raw);
  EXPECT_THAT(WEXITSTATUS(*raw), ::testing::AnyOf(130, 143)) << ReadFile(err_path);

  absl::StatusOr<v1::Process> ended = daemon_.client().Status(worker.id());
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->state(), v1::STATE_EXITED);
  EXPECT_EQ(ended->signal(), SIGTERM);
  EXPECT_FALSE(IsAlive(worker.pid()));
  EXPECT_EQ(ReadFile(out_path), "ready\n");
}

TEST_F(CliTest, CallTimeoutAgainstAStoppedDaemon) {
  uint64_t id = Start({"--", "/bin/sleep", "60"});
  const std::string text = absl::StrCat(id);
  ASSERT_TRUE(StopProcess(daemon_.pid()));
  struct {
    std::vector<std::string> args;
    std::string call;
    absl::Duration timeout;  // a join's poll and its answer: two call timeouts
  } cases[] = {
      {{"status", text}, "Status", absl::Seconds(1)},
      {{"join", text}, "Join", absl::Seconds(2)},
      {{"logs", text}, "Logs", absl::Seconds(1)},
      {{"kill", text}, "Terminate", absl::Seconds(1)},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"--call-timeout", "1"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    absl::Duration took;
    CommandResult result = CliWithin(args, absl::Seconds(15), &took);
    EXPECT_EQ(result.status, 1) << c.call;
    EXPECT_EQ(result.out, "") << c.call;
    EXPECT_EQ(result.err, absl::StrCat("proctor: ", c.call, " did not answer within ",
                                       absl::FormatDuration(c.timeout), "\n"));
    EXPECT_LT(took, c.timeout + absl::Seconds(3)) << c.call;
  }
  ASSERT_EQ(kill(daemon_.pid(), SIGCONT), 0);
  // The kill that timed out may still be carried out once the daemon reads it again.
  Cli({"kill", text});
  EXPECT_EQ(Cli({"join", text}).status, 128 + SIGKILL);
}

TEST_F(CliTest, RunStopsWhenTheDaemonStopsAnswering) {
  std::string out_path = daemon_.dir() + "/run.out";
  std::string err_path = daemon_.dir() + "/run.err";
  pid_t cli = daemon_.StartCli({"--call-timeout", "1", "run", "--name", "abandoned", "--",
                                "/bin/sh", "-c", "echo ready; exec /bin/sleep 60"},
                               out_path, err_path);
  ASSERT_GT(cli, 0);
  // Once the CLI has passed on the worker's first line, it is following its output and
  // joining it.
  bool following = WaitFor([&] { return ReadFile(out_path) == "ready\n"; }, absl::Seconds(30));
  EXPECT_TRUE(following) << ReadFile(err_path);
  if (following) {
    EXPECT_TRUE(StopProcess(daemon_.pid()));
  }
  // At most a poll and its answer (two call timeouts), then the session's end (one more).
  std::optional<int> raw = WaitForExit(cli, absl::Seconds(15));
  kill(daemon_.pid(), SIGCONT);
  ASSERT_TRUE(following);
  ASSERT_TRUE(raw.has_value()) << "run kept waiting for a daemon that does not answer";
  EXPECT_TRUE(WIFEXITED(*raw) && WEXITSTATUS(*raw) == 1) << *raw;
  EXPECT_EQ(ReadFile(err_path), "proctor: Join did not answer within 2s\n");
  // The worker outlives the CLI that lost its daemon (it is not daemonic).
  CommandResult ps = Cli({"--json", "ps", "--name", "abandoned"});
  std::vector<std::string> objects;
  for (const std::string& line : Lines(ps.out)) {
    if (absl::StartsWith(line, "{")) objects.push_back(line);
  }
  ASSERT_EQ(objects.size(), 1u) << ps.out << ps.err;
  CliOk({"kill", JsonField(objects[0], "id")});
}

TEST_F(CliTest, CallTimeoutUsage) {
  for (const auto& [value, problem] : std::vector<std::pair<std::string, std::string>>{
           {"0", "--call-timeout must be positive"},
           {"-1", "--call-timeout must not be negative"},
           {"soon", "invalid --call-timeout \"soon\" (expected seconds, e.g. 0.5)"}}) {
    CommandResult result = Cli({"--call-timeout", value, "ps"});
    EXPECT_EQ(result.status, 2) << value;
    EXPECT_EQ(result.out, "") << value;
    EXPECT_EQ(result.err, absl::StrCat("proctor: ", problem,
                                       "\nTry 'proctor --help' for more information.\n"));
  }
  EXPECT_THAT(CliOk({"--call-timeout", "0.5", "ps"}), StartsWith("ID "));
  EXPECT_THAT(CliOk({"--help"}), HasSubstr("--call-timeout SECONDS"));
}

TEST_F(CliTest, KeyFileOthersCanReadWorksWithAWarning) {
  const std::string key = ReadFile(daemon_.authkey_path());
  ASSERT_FALSE(key.empty());
  const std::string path = daemon_.dir() + "/copy.key";
  ASSERT_TRUE(WriteFile(path, key));
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  const std::string warning = absl::StrCat("proctor: warning: key file ", path,
                                           " is readable by others (mode 0644); chmod 600 ",
                                           path, "\n");
  // Given on the command line, and through $PROCTOR_AUTHKEY_FILE.
  for (const CommandResult& result :
       {Cli({"--authkey-file", path, "ps"}),
        RunCommand({PROCTOR_CLI_PATH, "--address", daemon_.address(), "ps"},
                   {"PROCTOR_AUTHKEY_FILE=" + path})}) {
    EXPECT_EQ(result.status, 0) << result.err;
    EXPECT_THAT(result.out, StartsWith("ID "));
    EXPECT_EQ(result.err, warning);
    EXPECT_FALSE(absl::StrContains(result.err, key));
  }
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  CommandResult tight = Cli({"--authkey-file", path, "ps"});
  EXPECT_EQ(tight.status, 0) << tight.err;
  EXPECT_EQ(tight.err, "");
}

TEST_F(CliTest, EventsListWhatHappened) {
  uint64_t id = Start({"--", "/bin/sh", "-c", "exit 7"});
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 7);
  std::vector<std::string> lines = EventsJson({"--since", "0"});
  ASSERT_EQ(lines.size(), 2u) << absl::StrJoin(lines, "\n");
  EXPECT_THAT(TypesAndIds(lines), ElementsAre(Seen("started", id), Seen("exited", id)));
  EXPECT_LT(JsonNumber(lines[0], "cursor"), JsonNumber(lines[1], "cursor"));
  EXPECT_EQ(JsonField(lines[0], "state"), "\"running\"");
  EXPECT_EQ(JsonField(lines[0], "exitcode"), "null");
  EXPECT_EQ(JsonField(lines[1], "state"), "\"exited\"");
  EXPECT_EQ(JsonField(lines[1], "exitcode"), "7");
  EXPECT_THAT(JsonField(lines[1], "time"), StartsWith("\"20"));
  // The record exactly as `status --json` prints it; no session for a process event.
  const std::string status = StatusJson(id);
  EXPECT_EQ(lines[1], absl::StrCat("{\"cursor\":", JsonNumber(lines[1], "cursor"),
                                   ",\"type\":\"exited\",\"time\":", JsonField(lines[1], "time"),
                                   ",\"process\":", absl::StripSuffix(status, "\n"), "}"));
  // ... which shows no cursor, nor does `ps`.
  EXPECT_THAT(status, Not(HasSubstr("cursor")));
  EXPECT_THAT(CliOk({"--json", "ps", "--all"}), Not(HasSubstr("cursor")));
  // Without --since: every event kept, the same.
  EXPECT_EQ(EventsJson({}), lines);
  // Up to now: nothing after the last cursor.
  const uint64_t now = Cursor();
  EXPECT_EQ(now, JsonNumber(lines[1], "cursor"));
  EXPECT_THAT(EventsJson({"--since", absl::StrCat(now)}), IsEmpty());
  EXPECT_EQ(EventsJson({"--since", absl::StrCat(now - 1)}), std::vector<std::string>{lines[1]});

  // For people: a header, then a line per event.
  std::vector<std::string> table = Lines(CliOk({"events"}));
  ASSERT_EQ(table.size(), 3u);
  EXPECT_THAT(Words(table[0]),
              ElementsAre("CURSOR", "TIME", "TYPE", "ID", "NAME", "STATE", "EXITCODE"));
  std::vector<std::string> exited = Words(table[2]);
  ASSERT_EQ(exited.size(), 7u) << table[2];
  EXPECT_EQ(exited[0], absl::StrCat(now));
  EXPECT_THAT(exited[1], MatchesRegex("20[0-9-]+T[0-9:]+\\.[0-9]{3}Z"));
  EXPECT_THAT(std::vector<std::string>(exited.begin() + 2, exited.end()),
              ElementsAre("exited", absl::StrCat(id), "Process-1", "exited", "7"));
  EXPECT_EQ(CliOk({"events", "--since", absl::StrCat(now)}), table[0] + "\n");
}

TEST_F(CliTest, EventsFilteredByTypeAndId) {
  uint64_t one = Start({"--", "/bin/true"});
  EXPECT_EQ(Cli({"join", absl::StrCat(one)}).status, 0);
  uint64_t two = Start({"--", "/bin/sh", "-c", "exit 2"});
  EXPECT_EQ(Cli({"join", absl::StrCat(two)}).status, 2);
  CliOk({"terminate", absl::StrCat(one)});  // a terminate-requested event, for an ended one

  EXPECT_THAT(TypesAndIds(EventsJson({"--type", "exited"})),
              ElementsAre(Seen("exited", one), Seen("exited", two)));
  EXPECT_THAT(TypesAndIds(EventsJson({"--id", absl::StrCat(one)})),
              ElementsAre(Seen("started", one), Seen("exited", one),
                          Seen("terminate-requested", one)));
  EXPECT_THAT(TypesAndIds(EventsJson({"--type", "started", "--type", "terminate-requested",
                                      "--id", absl::StrCat(one)})),
              ElementsAre(Seen("started", one), Seen("terminate-requested", one)));
  EXPECT_THAT(EventsJson({"--type", "session-opened"}), IsEmpty());
  // A listing that ends on an event the filter leaves out.
  EXPECT_THAT(TypesAndIds(EventsJson({"--id", absl::StrCat(two)})),
              ElementsAre(Seen("started", two), Seen("exited", two)));

  CommandResult bad = Cli({"events", "--type", "ended"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_EQ(bad.out, "");
  EXPECT_EQ(bad.err,
            "proctor: invalid --type \"ended\" (expected started, exited, terminate-requested, "
            "released, evicted, session-opened, session-ended, restarting, gave-up, ready, "
            "watchdog)\n"
            "usage: proctor events [--since CURSOR] [--follow] [--id ID]... [--type TYPE]...\n");
  EXPECT_EQ(Cli({"events", "--since", "-1"}).status, 2);
  EXPECT_EQ(Cli({"events", "--id", "x"}).status, 2);
}

TEST_F(CliTest, EventsFollowUntilInterrupted) {
  const std::string out_path = daemon_.dir() + "/events.out";
  const std::string err_path = daemon_.dir() + "/events.err";
  for (int sig : {SIGINT, SIGTERM}) {
    // From a cursor, the events after it: the CLI sees what starts while it runs, whenever
    // it has connected.
    pid_t cli = daemon_.StartCli({"--json", "events", "--follow", "--since",
                                  absl::StrCat(Cursor()), "--type", "exited"},
                                 out_path, err_path);
    ASSERT_GT(cli, 0);
    uint64_t id = Start({"--", "/bin/sh", "-c", "exit 4"});
    EXPECT_TRUE(WaitFor([&] { return !ReadFile(out_path).empty(); }, absl::Seconds(30)))
        << ReadFile(err_path);
    std::vector<std::string> lines = Lines(ReadFile(out_path));
    ASSERT_EQ(lines.size(), 1u) << ReadFile(out_path);
    EXPECT_THAT(TypesAndIds(lines), ElementsAre(Seen("exited", id)));
    EXPECT_EQ(JsonField(lines[0], "exitcode"), "4");
    EXPECT_TRUE(IsAlive(cli)) << "the CLI follows until interrupted";
    EXPECT_EQ(kill(cli, sig), 0);
    std::optional<int> raw = WaitForExit(cli, absl::Seconds(10));
    ASSERT_TRUE(raw.has_value()) << "the CLI did not stop on signal " << sig;
    EXPECT_TRUE(WIFEXITED(*raw) && WEXITSTATUS(*raw) == 0) << *raw;
    EXPECT_EQ(ReadFile(err_path), "");
  }
}

TEST_F(CliTest, EventsFollowWithoutSinceStartsFromNow) {
  uint64_t before = Start({"--", "/bin/true"});
  EXPECT_EQ(Cli({"join", absl::StrCat(before)}).status, 0);
  const std::string out_path = daemon_.dir() + "/events.out";
  const std::string err_path = daemon_.dir() + "/events.err";
  pid_t cli = daemon_.StartCli({"events", "--follow"}, out_path, err_path);
  ASSERT_GT(cli, 0);
  // When the CLI starts watching is its own business: processes start until it shows one.
  std::vector<uint64_t> started;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (Lines(ReadFile(out_path)).size() < 2 && absl::Now() < deadline) {
    started.push_back(Start({"--", "/bin/true"}));
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(kill(cli, SIGINT), 0);
  std::optional<int> raw = WaitForExit(cli, absl::Seconds(10));
  ASSERT_TRUE(raw.has_value()) << "the CLI did not stop on SIGINT";
  EXPECT_TRUE(WIFEXITED(*raw) && WEXITSTATUS(*raw) == 0) << *raw;
  EXPECT_EQ(ReadFile(err_path), "");
  std::vector<std::string> lines = Lines(ReadFile(out_path));
  ASSERT_GE(lines.size(), 2u) << "the CLI never showed an event";
  EXPECT_THAT(Words(lines[0]), ElementsAre("CURSOR", "TIME", "TYPE", "ID", "NAME", "STATE",
                                           "EXITCODE"));
  for (size_t i = 1; i < lines.size(); ++i) {
    uint64_t id = 0;
    ASSERT_TRUE(absl::SimpleAtoi(Words(lines[i]).at(3), &id)) << lines[i];
    EXPECT_NE(id, before) << "an event from before the CLI watched: " << lines[i];
    EXPECT_THAT(started, Contains(id));
  }
  for (uint64_t id : started) Cli({"join", absl::StrCat(id)});
}

TEST_F(CliTest, EventsFromACursorAheadIsOneLine) {
  const std::string ahead = absl::StrCat(Cursor() + 1000);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"events", "--since", ahead},
        std::vector<std::string>{"--json", "events", "--follow", "--since", ahead}}) {
    CommandResult result = Cli(args);
    EXPECT_EQ(result.status, 1) << absl::StrJoin(args, " ");
    EXPECT_EQ(result.out, "");
    EXPECT_THAT(result.err, StartsWith(absl::StrCat("proctor: cursor ", ahead, " is ahead")));
    EXPECT_EQ(Lines(result.err).size(), 1u) << result.err;
  }
}

TEST_F(CliTest, EventsFromACursorTooOldIsOneLine) {
  // Past what proctord keeps (16384 events): every Terminate of a record is one event.
  constexpr int kEvents = 16500;
  uint64_t id = Start({"--", "/bin/true"});
  EXPECT_EQ(Cli({"join", absl::StrCat(id)}).status, 0);
  v1::TerminateRequest terminate;
  terminate.set_id(id);
  terminate.set_wait(false);
  // Paced below the admin key's rate (5000 calls a second).
  const absl::Time begin = absl::Now();
  for (int i = 0; i < kEvents; ++i) {
    absl::StatusOr<v1::Process> record = daemon_.client().Terminate(terminate);
    ASSERT_TRUE(record.ok()) << i << ": " << record.status();
    absl::SleepFor(begin + i * absl::Microseconds(250) - absl::Now());
  }
  const uint64_t now = Cursor();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"events", "--since", "1"},
        std::vector<std::string>{"events", "--follow", "--since", "1"}}) {
    CommandResult result = Cli(args);
    EXPECT_EQ(result.status, 1) << absl::StrJoin(args, " ");
    EXPECT_EQ(result.out, "");
    EXPECT_THAT(result.err, StartsWith("proctor: cursor 1 is older than the oldest kept"));
    EXPECT_EQ(Lines(result.err).size(), 1u) << result.err;
  }
  // Without --since: all that is still kept, up to now.
  std::vector<std::string> kept = EventsJson({});
  ASSERT_GT(kept.size(), 1000u);
  EXPECT_GT(JsonNumber(kept.front(), "cursor"), 1u);
  EXPECT_EQ(JsonNumber(kept.back(), "cursor"), now);
  EXPECT_EQ(JsonNumber(kept.back(), "cursor") - JsonNumber(kept.front(), "cursor"),
            kept.size() - 1)
      << "a gap in what is kept";
}

TEST_F(CliTest, EventsUnderAWorkersKey) {
  // The worker lists the events with its own key once the gate opens, after an outsider's:
  // the listing's cursor is then an event it cannot see.
  Gate gate(daemon_.dir() + "/gate");
  uint64_t worker = Start({"--", "/bin/sh", "-c",
                           absl::StrCat(gate.ShellWait(), "; exec \"$0\" --json events"),
                           PROCTOR_CLI_PATH});
  uint64_t outsider = Start({"--", "/bin/true"});
  EXPECT_EQ(Cli({"join", absl::StrCat(outsider)}).status, 0);
  EXPECT_TRUE(gate.Open());
  // A second without an event ends the listing.
  CommandResult joined = Cli({"join", absl::StrCat(worker), "--timeout", "10"});
  const std::string logs = absl::StrCat(daemon_.state_dir(), "/logs/", worker);
  EXPECT_EQ(joined.status, 0) << ReadFile(logs + ".err");
  if (joined.status == 124) CliOk({"kill", absl::StrCat(worker)});
  EXPECT_EQ(ReadFile(logs + ".err"), "");
  EXPECT_THAT(TypesAndIds(Lines(ReadFile(logs + ".out"))),
              ElementsAre(Seen("started", worker)));
}

TEST_F(CliTest, EventsHelp) {
  std::string help = CliOk({"help", "events"});
  EXPECT_THAT(help, StartsWith("usage: proctor events [--since CURSOR] [--follow] [--id ID]... "
                               "[--type TYPE]...\n"));
  EXPECT_THAT(help, HasSubstr("session-opened"));
  EXPECT_THAT(help, HasSubstr("CURSOR TIME TYPE ID NAME STATE EXITCODE"));
  EXPECT_EQ(CliOk({"events", "--help"}), help);
  EXPECT_THAT(CliOk({"help"}), HasSubstr("  events [--since CURSOR]"));
}

// The source's first example: four processes started from one function, and the main program
// printing 主线程 ("main thread") right after starting them, before they finish. Where the
// example has each process sleep a while, here each waits at a gate the test opens once the
// main program is done.
TEST_F(CliTest, SeedExample) {
  const char* names[] = {"A", "B", "C", "D"};
  std::vector<Gate> gates;
  for (const char* x : names) gates.emplace_back(absl::StrCat(daemon_.dir(), "/", x));
  const std::string script =
      "for x in A B C D; do\n"
      "  \"$0\" start --name $x -- /bin/sh -c \\\n"
      "    \"echo $x piaoing; read gate < $1/$x; echo $x piao end\"\n"
      "done\n"
      "echo 主线程\n";
  CommandResult result =
      RunCommand({"/bin/sh", "-c", script, PROCTOR_CLI_PATH, daemon_.dir()},
                 {"PROCTOR_ADDRESS=" + daemon_.address(),
                  "PROCTOR_AUTHKEY_FILE=" + daemon_.authkey_path()});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.err, "");
  std::vector<std::string> lines = Lines(result.out);
  ASSERT_EQ(lines.size(), 5u) << result.out;
  EXPECT_EQ(lines[4], "主线程");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(JsonField(StatusJson(std::stoull(lines[i])), "state"), "\"running\"")
        << names[i] << " finished before the main program";
    EXPECT_TRUE(gates[i].Open()) << names[i] << " never reached its gate";
  }
  for (int i = 0; i < 4; ++i) {
    const std::string& id = lines[i];
    EXPECT_EQ(Cli({"join", id}).status, 0);
    EXPECT_EQ(CliOk({"logs", id}), absl::StrCat(names[i], " piaoing\n", names[i], " piao end\n"));
    EXPECT_EQ(JsonField(StatusJson(std::stoull(id)), "name"), absl::StrCat("\"", names[i], "\""));
  }
  EXPECT_THAT(TableIds(CliOk({"ps", "--all", "--name", "C"})),
              ElementsAre(std::stoull(lines[2])));
}

}  // namespace
}  // namespace proctor::testing
