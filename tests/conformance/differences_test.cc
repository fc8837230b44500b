// Where proctor::Process follows multiprocessing beyond CPython's own tests (names, the
// inherited environment, the parent seen from a child), and where it differs on purpose
// (terminate() reaches the whole tree by default), each tested both ways.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/conformance/conformance_support.h"
#include "tests/test_daemon.h"

namespace proctor::conformance {
namespace {

using ::testing::ElementsAre;

// ---------------------------------------------------------------------------------------------
// Targets run in children

void PrintName() { std::cout << current_process().name() << std::endl; }
PROCTOR_FUNCTION(PrintName);

// Makes two processes and starts the second: prints both names and the started one's name as
// its child saw it.
int NamesItsChildren() {
  Process unstarted({.target = PrintName});
  Process started({.target = PrintName});
  if (!started.start().ok() || !started.join().ok()) return 2;
  std::cout << unstarted.name() << " " << started.name() << std::endl;
  return 0;
}
PROCTOR_FUNCTION(NamesItsChildren);

void PrintEnvironment() {
  for (const char* name : {"CONFORMANCE_INHERITED", "CONFORMANCE_LAYERED",
                           "PROCTOR_AUTHKEY_FILE", "PROCTOR_TLS_KEY"}) {
    const char* value = std::getenv(name);
    std::cout << name << "=" << (value == nullptr ? "<unset>" : value) << "\n";
  }
  std::cout << std::flush;
}
PROCTOR_FUNCTION(PrintEnvironment);

// Starts `sleep 100` as a child of its own, prints its id, and sleeps.
void StartsASleeper() {
  Process sleeper({.target = "sleep", .args = {"100"}});
  if (!sleeper.start().ok()) std::exit(2);
  std::cout << sleeper.id() << std::endl;
  std::this_thread::sleep_for(std::chrono::seconds(100));
}
PROCTOR_FUNCTION(StartsASleeper);

// In a worker started without the library: what parent_process() knows, and what proctord
// answers about it.
void ReportParentThroughProctord() {
  Process* parent = parent_process();
  if (parent == nullptr) {
    std::cout << "none" << std::endl;
    return;
  }
  absl::StatusOr<bool> alive = parent->is_alive();
  std::cout << parent->id() << "\n"
            << (alive.ok() ? (*alive ? "alive" : "not alive") : alive.status().ToString())
            << std::endl;
}
PROCTOR_FUNCTION(ReportParentThroughProctord);

// Starts ReportParentThroughProctord with a bare Start (none of the library's environment),
// joins it and prints its output.
int StartsAChildWithoutTheLibrary() {
  absl::StatusOr<Client*> client = DefaultClient();
  if (!client.ok()) return 2;
  v1::StartRequest request;
  request.set_target(std::filesystem::read_symlink("/proc/self/exe").string());
  request.add_args("--proctor-run=ReportParentThroughProctord");
  request.add_args("--proctor-nargs=0");
  absl::StatusOr<v1::Process> started = (*client)->Start(request);
  if (!started.ok()) return 3;
  absl::StatusOr<v1::Process> joined = (*client)->Join(started->id());
  if (!joined.ok() || joined->exitcode() != 0) return 4;
  std::cout << testing::ReadFile(joined->stdout_path()) << std::flush;
  return 0;
}
PROCTOR_FUNCTION(StartsAChildWithoutTheLibrary);

class Named : public ProcessClass<> {
 public:
  void run() override { std::cout << name() << std::endl; }
};
PROCTOR_PROCESS_CLASS(Named);

using Differences = ConformanceTest;

// The id a child printed on its first line, once it has.
uint64_t FirstLineId(const Process& p) {
  uint64_t id = 0;
  testing::WaitFor(
      [&] {
        std::vector<std::string> lines = ReadLines(p.record().stdout_path());
        return !lines.empty() && absl::SimpleAtoi(lines[0], &id);
      },
      absl::Seconds(20));
  return id;
}

// A started process that ignores SIGTERM (its sleep too: SIG_IGN survives exec), once it does.
Process IgnoresSigterm() {
  Process p({.target = "/bin/sh", .args = {"-c", "trap '' TERM; echo ready; sleep 100"}});
  absl::Status started = p.start();
  EXPECT_TRUE(started.ok()) << started;
  EXPECT_TRUE(testing::WaitFor([&] { return ReadLines(p.record().stdout_path()).size() == 1; }));
  return p;
}

// ---------------------------------------------------------------------------------------------
// Names

TEST_F(Differences, NamesAreNumberedPerProgramAtConstruction) {
  Process first({.target = PrintName});
  Process second({.target = PrintName});
  Named third;
  Process given({.target = PrintName, .name = "given"});
  uint64_t n = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(first.name(), "Process-"), &n)) << first.name();
  EXPECT_EQ(second.name(), absl::StrCat("Process-", n + 1));
  EXPECT_EQ(third.name(), absl::StrCat("Named-", n + 2)) << "a subclass is named after its class";
  EXPECT_EQ(given.name(), "given");

  // Started out of order, each keeps the name it was given at construction, in the child too.
  for (Process* p : std::vector<Process*>{&third, &second}) {
    StartOk(*p);
    ASSERT_TRUE(p->join().ok());
  }
  EXPECT_EQ(Out(second), absl::StrCat("Process-", n + 1, "\n"));
  EXPECT_EQ(Out(third), absl::StrCat("Named-", n + 2, "\n"));
  EXPECT_EQ(second.record().name(), second.name());
}

TEST_F(Differences, AChildNumbersItsOwnChildrenUnderItsName) {
  Process parent({.target = NamesItsChildren});
  StartOk(parent);
  ASSERT_TRUE(parent.join().ok());
  EXPECT_EQ(parent.exitcode(), 0);
  std::string prefix = parent.name();
  // Python's Process-N:M: the child's second process is M = 2, and its grandchild says so.
  EXPECT_THAT(ReadLines(parent.record().stdout_path()),
              ElementsAre(absl::StrCat(prefix, ":2"),
                          absl::StrCat(prefix, ":1 ", prefix, ":2")));
}

// ---------------------------------------------------------------------------------------------
// parent_process() through proctord

TEST_F(Differences, AParentReadThroughProctordIsAlive) {
  Process p({.target = StartsAChildWithoutTheLibrary});
  StartOk(p);
  ASSERT_TRUE(p.join().ok());
  ASSERT_EQ(p.exitcode(), 0) << Out(p);
  std::vector<std::string> lines = ReadLines(p.record().stdout_path());
  ASSERT_EQ(lines.size(), 2u) << Out(p);
  EXPECT_EQ(lines[0], absl::StrCat(p.id())) << "the record's parent";
  // A worker's key may read its ancestors' records.
  EXPECT_EQ(lines[1], "alive");
}

// ---------------------------------------------------------------------------------------------
// The environment

TEST_F(Differences, AChildInheritsTheEnvironmentButNotProctorsSettings) {
  ASSERT_EQ(setenv("CONFORMANCE_INHERITED", "inherited", 1), 0);
  ASSERT_EQ(setenv("CONFORMANCE_LAYERED", "inherited", 1), 0);
  ASSERT_EQ(setenv("PROCTOR_AUTHKEY_FILE", "/secret/admin/key", 1), 0);
  ASSERT_EQ(setenv("PROCTOR_TLS_KEY", "/secret/tls/key", 1), 0);
  Process p({.target = PrintEnvironment, .env = {"CONFORMANCE_LAYERED=layered"}});
  absl::Status started = p.start();
  for (const char* name : {"CONFORMANCE_INHERITED", "CONFORMANCE_LAYERED",
                           "PROCTOR_AUTHKEY_FILE", "PROCTOR_TLS_KEY"}) {
    unsetenv(name);
  }
  ASSERT_TRUE(started.ok()) << started;
  ASSERT_TRUE(p.join().ok());
  EXPECT_THAT(ReadLines(p.record().stdout_path()),
              ElementsAre("CONFORMANCE_INHERITED=inherited", "CONFORMANCE_LAYERED=layered",
                          "PROCTOR_AUTHKEY_FILE=<unset>", "PROCTOR_TLS_KEY=<unset>"));
}

// ---------------------------------------------------------------------------------------------
// terminate(): the signal alone, to the whole tree by default

TEST_F(Differences, TerminateEndsTheWholeTreeByDefault) {
  Process p({.target = StartsASleeper});
  StartOk(p);
  uint64_t sleeper = FirstLineId(p);
  ASSERT_NE(sleeper, 0u) << Out(p);
  ASSERT_TRUE(p.terminate().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), -SIGTERM);
  absl::StatusOr<v1::Process> grandchild = client_.Join(sleeper, absl::Seconds(10));
  ASSERT_TRUE(grandchild.ok()) << grandchild.status();
  EXPECT_EQ(grandchild->state(), v1::STATE_EXITED);
  EXPECT_EQ(grandchild->exitcode(), -SIGTERM);
}

TEST_F(Differences, TerminateOfTheGroupLeavesChildrenRunningAsMultiprocessingDoes) {
  Process p({.target = StartsASleeper});
  StartOk(p);
  uint64_t sleeper = FirstLineId(p);
  ASSERT_NE(sleeper, 0u) << Out(p);
  ASSERT_TRUE(p.terminate(Reach::kGroup).ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), -SIGTERM);
  absl::StatusOr<v1::Process> grandchild = client_.Join(sleeper, absl::Milliseconds(500));
  ASSERT_TRUE(grandchild.ok()) << grandchild.status();
  EXPECT_EQ(grandchild->state(), v1::STATE_RUNNING) << "an orphan, as in Python";
  v1::TerminateRequest request;
  request.set_id(sleeper);
  request.set_signal(SIGKILL);
  EXPECT_TRUE(client_.Terminate(request).ok());
}

TEST_F(Differences, TerminateSendsSigtermAndNothingMore) {
  Process p = IgnoresSigterm();
  ASSERT_TRUE(p.terminate().ok());
  // Past proctord's default grace of 10 s, after which it would have sent SIGKILL.
  ASSERT_TRUE(p.join(absl::Seconds(11)).ok());
  EXPECT_EQ(p.is_alive().value_or(false), true) << "SIGTERM is ignored, and nothing followed";
  ASSERT_TRUE(p.kill().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST_F(Differences, TerminateAndWaitEscalatesAfterItsGrace) {
  Process p = IgnoresSigterm();
  absl::Time before = absl::Now();
  ASSERT_TRUE(p.terminate_and_wait(absl::Milliseconds(300)).ok());
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(300));
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(p.is_alive().value_or(true), false);
}

}  // namespace
}  // namespace proctor::conformance
