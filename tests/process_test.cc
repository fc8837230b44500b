// proctor::Process against a real proctord. This binary is also the program its function and
// class targets re-execute (see main() at the end), and the helper program some tests run.
#include "client/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

extern char** environ;

// ---------------------------------------------------------------------------------------------
// Targets run in children.

int Echo(std::string word, int64_t n, double x, bool flag) {
  std::cout << word << " " << n << " " << x << " " << (flag ? "true" : "false") << std::endl;
  return static_cast<int>(n);
}
PROCTOR_FUNCTION(Echo);

void WithKwargs(const proctor::Args& args) {
  std::cout << absl::StrJoin(args.positional(), ",") << ";";
  std::vector<std::string> pairs;
  for (const auto& [key, value] : args.kwargs()) pairs.push_back(absl::StrCat(key, "=", value));
  std::cout << absl::StrJoin(pairs, ",") << ";" << args.Get<int>("age").value_or(-1) << std::endl;
}
PROCTOR_FUNCTION(WithKwargs);

void Throws(std::string what) { throw std::runtime_error(what); }
PROCTOR_FUNCTION(Throws);

// Prints `text` once the gate at `gate` is opened (tests/test_daemon.h).
int PrintAtGate(std::string gate, std::string text) {
  if (!proctor::testing::WaitAtGate(gate)) return 1;
  std::cout << text << std::endl;
  return 0;
}
PROCTOR_FUNCTION(PrintAtGate);

void PrintLines() {
  std::cout << "out-1" << std::endl;
  std::cerr << "err-1" << std::endl;
  std::cout << "out-2\nout-3" << std::endl;
  std::cout << "no-newline" << std::flush;
}
PROCTOR_FUNCTION(PrintLines);

void ReportSelf() {
  proctor::Process& self = proctor::current_process();
  // multiprocessing's authkey, not the credential the worker signs its calls with.
  const char* env_key = std::getenv("PROCTOR_PROCESS_AUTHKEY");
  std::cout << "id=" << self.id() << " name=" << self.name() << " pid=" << self.pid().value_or(0)
            << " parent_id=" << self.parent_id()
            << " parent_session=" << self.record().parent_session()
            << " key=" << proctor::HexEncode(self.authkey())
            << " env_key=" << (env_key == nullptr ? "" : env_key) << std::endl;
}
PROCTOR_FUNCTION(ReportSelf);

void ReportPlace() {
  const char* greeting = std::getenv("GREETING");
  std::cout << (greeting == nullptr ? "<unset>" : greeting) << " "
            << std::filesystem::current_path().string() << std::endl;
}
PROCTOR_FUNCTION(ReportPlace);

// Starts a child of its own (Echo), reports it, joins it and exits with its exit code.
int StartsChild() {
  proctor::Process child({.target = Echo, .args = {"grandchild", 5, 0.5, false}});
  if (absl::Status s = child.start(); !s.ok()) {
    std::cout << "start: " << s << std::endl;
    return 100;
  }
  std::cout << "child " << child.id() << std::endl;
  if (absl::Status s = child.join(); !s.ok()) {
    std::cout << "join: " << s << std::endl;
    return 101;
  }
  return child.exitcode().value_or(102);
}
PROCTOR_FUNCTION(StartsChild);

int DaemonTriesChild() {
  proctor::Process child({.target = "/bin/true"});
  absl::Status s = child.start();
  std::cout << s << std::endl;
  return absl::IsFailedPrecondition(s) ? 0 : 1;
}
PROCTOR_FUNCTION(DaemonTriesChild);

void NotRegistered() {}

class Counter : public proctor::ProcessClass<std::string, int> {
 public:
  Counter(std::string word, int times) : ProcessClass(word, times), word_(word), times_(times) {
    set_name(word);
  }

  void run() override {
    for (int i = 0; i < times_; ++i) std::cout << word_ << " " << i << std::endl;
    std::cout << "self=" << (&proctor::current_process() == this) << " id=" << id()
              << " name=" << name() << std::endl;
  }

 private:
  std::string word_;
  int times_;
};
PROCTOR_PROCESS_CLASS(Counter);

class Failing : public proctor::ProcessClass<> {
 public:
  void run() override { throw std::logic_error("failing run"); }
};
PROCTOR_PROCESS_CLASS(Failing);

class Unregistered : public proctor::ProcessClass<> {
 public:
  void run() override {}
};

namespace proctor::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string SelfExe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// ---------------------------------------------------------------------------------------------
// Helper programs: this binary run with --helper=<mode>, pointed at a daemon by environment.

// Where the exit-handler helper finds the gate its worker waits at.
constexpr char kExitGateVariable[] = "PROCTOR_TEST_EXIT_GATE";

int RunHelper(absl::string_view mode) {
  if (mode == "daemonic-sleeper") {
    Process sleeper({.target = "sleep", .args = {"100"}, .daemon = true});
    if (absl::Status s = sleeper.start(); !s.ok()) {
      std::cerr << s << std::endl;
      return 2;
    }
    std::cout << *sleeper.pid() << " " << sleeper.id() << std::endl;
    for (;;) pause();
  }
  if (mode == "exit-handler") {
    const char* gate = std::getenv(kExitGateVariable);
    if (gate == nullptr) return 2;
    Process worker({.target = PrintAtGate, .args = {gate, "child finished"}});
    Process sleeper({.target = "sleep", .args = {"100"}, .daemon = true});
    if (!worker.start().ok() || !sleeper.start().ok()) return 2;
    std::cout << "worker " << worker.id() << " daemonic " << sleeper.id() << std::endl;
    // Registered after the library's exit handler, so it runs first: the worker can finish
    // only once main has returned, and the library's handler has to wait for it.
    std::atexit([] {
      if (!OpenGate(std::getenv(kExitGateVariable))) {
        std::cerr << "the worker never reached its gate" << std::endl;
        std::_Exit(3);
      }
    });
    return 0;  // the exit handler joins the worker and terminates the sleeper
  }
  if (mode == "exit-with-daemon-stopped") {
    const char* gate = std::getenv(kExitGateVariable);
    if (gate == nullptr || !UseDaemon({.call_timeout = absl::Seconds(1)}).ok()) return 2;
    Process sleeper({.target = "sleep", .args = {"100"}});
    if (!sleeper.start().ok()) return 2;
    std::cout << sleeper.id() << std::endl;
    // The test stops the daemon before it lets main return into the library's exit handler.
    return WaitAtGate(gate) ? 0 : 2;
  }
  if (mode == "forward") {
    Process p({.target = PrintLines});
    if (!p.start().ok() || !p.join().ok()) return 2;
    std::cout << "joined" << std::endl;
    return 0;
  }
  if (mode == "start-and-join") {
    Process p({.target = PrintLines});
    if (absl::Status s = p.start_and_join(); !s.ok()) {
      std::cerr << s << std::endl;
      return 2;
    }
    absl::StatusOr<int> sentinel = p.sentinel();
    pollfd ended{.fd = sentinel.value_or(-1), .events = POLLIN};
    std::cout << "joined exitcode=" << p.exitcode().value_or(-100)
              << " alive=" << p.is_alive().value_or(true)
              << " sentinel=" << (poll(&ended, 1, 0) == 1)
              << " again=" << p.start().message() << " closed=" << p.close().ok() << std::endl;
    Process fails({.target = "/no/such/program"});
    std::cout << "missing: " << absl::StatusCodeToString(fails.start_and_join().code())
              << std::endl;
    return 0;
  }
  std::cerr << "unknown helper mode " << mode << std::endl;
  return 2;
}

std::vector<std::string> HelperEnv(const TestDaemon& daemon) {
  return {"PROCTOR_ADDRESS=" + daemon.address(), "PROCTOR_AUTHKEY_FILE=" + daemon.authkey_path()};
}

// A program left running, whose stdout we read line by line.
struct Running {
  pid_t pid = -1;
  int out = -1;
};

Running Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
  int pipe_fds[2];
  EXPECT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  std::vector<std::string> args = argv;
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> c_args, c_env;
  for (std::string& a : args) c_args.push_back(a.data());
  for (std::string& e : env) c_env.push_back(e.data());
  c_args.push_back(nullptr);
  c_env.push_back(nullptr);
  Running running;
  int rc =
      posix_spawn(&running.pid, args[0].c_str(), &actions, nullptr, c_args.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  EXPECT_EQ(rc, 0) << std::strerror(rc);
  running.out = pipe_fds[0];
  return running;
}

// One line from `fd` (without its newline), or what came before the limit or the end.
std::string ReadLine(int fd, absl::Duration limit) {
  std::string line;
  absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()))) <= 0) {
      continue;
    }
    char c;
    if (read(fd, &c, 1) != 1) break;
    if (c == '\n') break;
    line.push_back(c);
  }
  return line;
}

// ---------------------------------------------------------------------------------------------
// Arguments, without a daemon

TEST(ArgTest, NumbersTravelInTheirShortestExactForm) {
  EXPECT_EQ(Arg(0.1).str(), "0.1");
  EXPECT_EQ(Arg(1e100).str(), "1e+100");
  EXPECT_EQ(Arg(-3).str(), "-3");
  EXPECT_EQ(Arg(uint64_t{18446744073709551615u}).str(), "18446744073709551615");
  EXPECT_EQ(Arg(true).str(), "true");
  EXPECT_EQ(Arg('x').str(), "x");
  EXPECT_EQ(Arg(std::string("text")).str(), "text");
}

TEST(ArgsTest, TypedAccessNamesWhatIsWrong) {
  Args args({"12", "2.5", "yes", "word"}, {{"n", "7"}});
  EXPECT_EQ(args.Get<int>(0).value_or(0), 12);
  EXPECT_EQ(args.Get<double>(1).value_or(0), 2.5);
  EXPECT_EQ(args.Get<bool>(2).value_or(false), true);
  EXPECT_EQ(args.Get<std::string>(3).value_or(""), "word");
  EXPECT_EQ(args.Get<int64_t>("n").value_or(0), 7);
  EXPECT_EQ(args.Get<int>(3).status().message(),
            "argument 4 is \"word\", which is not a valid integer");
  EXPECT_EQ(args.Get<int8_t>(0).value_or(0), 12);
  EXPECT_FALSE(Args({"300"}, {}).Get<int8_t>(0).ok());
  EXPECT_EQ(args.Get<int>(4).status().message(), "argument 5 is missing (4 given)");
  EXPECT_EQ(args.Get<int>("m").status().message(), "keyword argument 'm' is missing");
  EXPECT_EQ(args.kwarg("n"), "7");
  EXPECT_FALSE(args.kwarg("m").has_value());
}

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::Status used =
        UseDaemon({.address = daemon_.address(), .authkey_file = daemon_.authkey_path()});
    ASSERT_TRUE(used.ok()) << used;
  }

  // Starts and joins `p`, asserting both succeed.
  void RunToEnd(Process& p) {
    absl::Status started = p.start();
    ASSERT_TRUE(started.ok()) << started;
    absl::Status joined = p.join();
    ASSERT_TRUE(joined.ok()) << joined;
  }

  static std::string Out(const Process& p) { return ReadFile(p.record().stdout_path()); }
  static std::string Err(const Process& p) { return ReadFile(p.record().stderr_path()); }

  TestDaemon daemon_;
  Client& client_ = daemon_.client();
};

// ---------------------------------------------------------------------------------------------
// Targets

TEST_F(ProcessTest, FunctionTargetGetsTypedArgumentsAndItsReturnIsTheExitCode) {
  Process p({.target = Echo, .args = {"hi", 7, 2.5, true}});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 7);
  EXPECT_EQ(Out(p), "hi 7 2.5 true\n");
  EXPECT_EQ(p.record().target(), SelfExe());
  EXPECT_EQ(p.record().args(0), "--proctor-run=Echo");
}

TEST_F(ProcessTest, FunctionTargetByNameWithArgsAndKwargs) {
  Process p({.target = Target::Function("WithKwargs"),
             .args = {"a", "b"},
             .kwargs = {{"name", "egon"}, {"age", 18}}});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(Out(p), "a,b;age=18,name=egon;18\n");
}

TEST_F(ProcessTest, ArgumentsThatDoNotFitExitWithOne) {
  Process bad_type({.target = Echo, .args = {"x", "seven", 1, true}});
  Process bad_count({.target = Echo, .args = {"x"}});
  Process bad_keyword({.target = Echo, .args = {"x", 1, 1, true}, .kwargs = {{"k", 1}}});
  for (Process* p : {&bad_type, &bad_count, &bad_keyword}) RunToEnd(*p);
  EXPECT_EQ(bad_type.exitcode(), 1);
  EXPECT_THAT(Err(bad_type), HasSubstr("argument 2 of Echo() is \"seven\", which is not a valid "
                                       "integer"));
  EXPECT_EQ(bad_count.exitcode(), 1);
  EXPECT_THAT(Err(bad_count), HasSubstr("Echo() takes 4 positional arguments but 1 were given"));
  EXPECT_EQ(bad_keyword.exitcode(), 1);
  EXPECT_THAT(Err(bad_keyword), HasSubstr("Echo() got an unexpected keyword argument 'k'"));
}

TEST_F(ProcessTest, AnExceptionInTheTargetGivesExitCodeOne) {
  Process p({.target = Throws, .args = {"boom"}});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 1);
  EXPECT_THAT(Err(p), HasSubstr(absl::StrCat("Process ", p.name(), ":\nstd::runtime_error: boom")));
}

TEST_F(ProcessTest, ExecutableTargetWithArgsAndKwargs) {
  Process p({.target = "/bin/sh",
             .args = {"-c", "echo \"$@\"; exit 3", "sh", "x", 1.5},
             .kwargs = {{"k", "v"}}});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 3);
  EXPECT_EQ(Out(p), "x 1.5 --k=v\n");
}

TEST_F(ProcessTest, SubclassIsRebuiltFromItsConstructorArguments) {
  Counter p("tick", 3);
  EXPECT_EQ(p.name(), "tick");
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(Out(p), absl::StrCat("tick 0\ntick 1\ntick 2\nself=1 id=", p.id(), " name=tick\n"));
  EXPECT_EQ(p.record().args(0), "--proctor-run=Counter");
}

TEST_F(ProcessTest, AnExceptionInRunGivesExitCodeOne) {
  Failing p;
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 1);
  EXPECT_THAT(Err(p), HasSubstr("std::logic_error: failing run"));
}

TEST_F(ProcessTest, RunCallsTheTargetInThisProcess) {
  ::testing::internal::CaptureStdout();
  Process p({.target = Echo, .args = {"here", 0, 1, false}});
  p.run();
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "here 0 1 false\n");
  EXPECT_FALSE(p.pid().has_value());
}

TEST_F(ProcessTest, UnregisteredTargetsAndNoTargetAreRefused) {
  Process function({.target = NotRegistered});
  absl::Status s = function.start();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("PROCTOR_FUNCTION"));

  Process by_name({.target = Target::Function("Nope")});
  s = by_name.start();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("no function or class named \"Nope\""));

  Unregistered subclass;
  s = subclass.start();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("PROCTOR_PROCESS_CLASS(Unregistered)"));

  Process nothing;
  s = nothing.start();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("nothing to run"));

  Process missing({.target = "/no/such/program"});
  EXPECT_TRUE(absl::IsNotFound(missing.start()));
  EXPECT_EQ(missing.id(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Methods and multiprocessing's rules

TEST_F(ProcessTest, AccessorsBeforeAndAfterStart) {
  Process p({.target = "sleep", .args = {"100"}});
  EXPECT_THAT(p.name(), StartsWith("Process-")) << "named at construction, as in Python";
  const std::string name = p.name();
  EXPECT_FALSE(p.daemon());
  EXPECT_EQ(p.authkey().size(), kAuthkeyBytes);
  EXPECT_FALSE(p.pid().has_value());
  EXPECT_EQ(p.id(), 0u);
  EXPECT_FALSE(p.exitcode().has_value());
  EXPECT_EQ(p.is_alive().value_or(true), false);

  ASSERT_TRUE(p.start().ok());
  EXPECT_GT(p.id(), 0u);
  ASSERT_TRUE(p.pid().has_value());
  EXPECT_TRUE(IsAlive(*p.pid()));
  EXPECT_EQ(p.name(), name);
  EXPECT_EQ(p.record().name(), name);
  EXPECT_EQ(p.is_alive().value_or(false), true);
  EXPECT_FALSE(p.exitcode().has_value());
  EXPECT_TRUE(p.record().has_parent_session()) << "started in this program's session";

  absl::Time before = absl::Now();
  ASSERT_TRUE(p.join(absl::Milliseconds(200)).ok());
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(200));
  EXPECT_EQ(p.is_alive().value_or(false), true) << "a join that times out is not an error";

  ASSERT_TRUE(p.terminate().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), -SIGTERM);
  EXPECT_EQ(p.is_alive().value_or(true), false);
  EXPECT_TRUE(p.terminate().ok()) << "no-op once ended";
}

TEST_F(ProcessTest, KillGivesMinusNine) {
  Process p({.target = "/bin/sh", .args = {"-c", "trap '' TERM; sleep 100"}, .name = "stubborn"});
  ASSERT_TRUE(p.start().ok());
  EXPECT_EQ(p.name(), "stubborn");
  ASSERT_TRUE(p.kill().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST_F(ProcessTest, MisuseIsRefusedWithPythonsMessages) {
  auto refused = [](const absl::Status& s, absl::string_view message) {
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    EXPECT_EQ(s.message(), message);
  };
  Process p({.target = "sleep", .args = {"100"}});
  refused(p.join(), "can only join a started process");
  refused(p.terminate(), "can only terminate a started process");
  refused(p.kill(), "can only kill a started process");
  ASSERT_TRUE(p.set_daemon(true).ok());
  ASSERT_TRUE(p.set_daemon(false).ok());

  ASSERT_TRUE(p.start().ok());
  refused(p.start(), "cannot start a process twice");
  refused(p.set_daemon(true), "process has already started");
  EXPECT_FALSE(p.daemon());
  refused(p.close(),
          "Cannot close a process while it is still running. You should first call join() or "
          "terminate().");

  ASSERT_TRUE(p.kill().ok());
  ASSERT_TRUE(p.join().ok());
  uint64_t id = p.id();
  ASSERT_TRUE(p.close().ok());
  EXPECT_TRUE(absl::IsNotFound(client_.Status(id).status())) << "close() releases the record";
  EXPECT_TRUE(p.close().ok()) << "close() twice is fine";
  refused(p.start(), "process object is closed");
  refused(p.join(), "process object is closed");
  refused(p.terminate(), "process object is closed");
  refused(p.is_alive().status(), "process object is closed");
  EXPECT_EQ(p.exitcode(), -SIGKILL) << "still known after close()";

  Process never({.target = "/bin/true"});
  EXPECT_TRUE(never.close().ok()) << "closing an unstarted process is allowed";
  refused(never.start(), "process object is closed");
}

TEST_F(ProcessTest, DaemonFlagAuthkeyEnvAndCwdReachTheChild) {
  Process daemonic({.target = "/bin/true"});
  ASSERT_TRUE(daemonic.set_daemon(true).ok());
  RunToEnd(daemonic);
  EXPECT_TRUE(daemonic.daemon());
  EXPECT_TRUE(daemonic.record().daemon());

  Process keyed({.target = ReportSelf, .authkey = "sixteen byte key"});
  RunToEnd(keyed);
  EXPECT_THAT(Out(keyed), HasSubstr(absl::StrCat(" key=", HexEncode("sixteen byte key"),
                                                 " env_key=", HexEncode("sixteen byte key"))));

  Process here({.target = ReportPlace, .env = {"GREETING=hello"}});
  Process there({.target = ReportPlace, .cwd = daemon_.dir()});
  RunToEnd(here);
  RunToEnd(there);
  EXPECT_EQ(Out(here), absl::StrCat("hello ", std::filesystem::current_path().string(), "\n"));
  EXPECT_EQ(Out(there), absl::StrCat("<unset> ", daemon_.dir(), "\n"));
}

TEST_F(ProcessTest, DaemonicProcessesCannotHaveChildren) {
  Process p({.target = DaemonTriesChild, .daemon = true});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 0) << Out(p) << Err(p);
  EXPECT_THAT(Out(p), HasSubstr("daemonic processes are not allowed to have children"));
}

// ---------------------------------------------------------------------------------------------
// Inside a worker

TEST_F(ProcessTest, CurrentProcessInAChild) {
  Process p({.target = ReportSelf, .name = "reporter"});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 0) << Err(p);
  std::string key = HexEncode(p.authkey());
  EXPECT_EQ(Out(p), absl::StrCat("id=", p.id(), " name=reporter pid=", *p.pid(),
                                 " parent_id=0 parent_session=", p.record().parent_session(),
                                 " key=", key, " env_key=", key, "\n"));
}

TEST_F(ProcessTest, CurrentProcessInTheMainProgram) {
  Process& self = current_process();
  EXPECT_EQ(self.name(), "MainProcess");
  EXPECT_EQ(self.id(), 0u);
  EXPECT_EQ(self.pid(), getpid());
  EXPECT_EQ(self.is_alive().value_or(false), true);
  EXPECT_TRUE(absl::IsFailedPrecondition(self.join()));
  EXPECT_TRUE(absl::IsFailedPrecondition(self.start()));
  EXPECT_EQ(&current_process(), &self);
}

TEST_F(ProcessTest, ChildrenMadeInsideAWorkerAreItsChildren) {
  Process p({.target = StartsChild});
  RunToEnd(p);
  EXPECT_EQ(p.exitcode(), 5) << Out(p) << Err(p);
  std::vector<std::string> lines = absl::StrSplit(Out(p), '\n');
  ASSERT_GE(lines.size(), 2u) << Out(p);
  uint64_t grandchild = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(lines[0], "child "), &grandchild)) << Out(p);
  EXPECT_EQ(lines[1], "grandchild 5 0.5 false") << "forwarded into the worker's own output";
  absl::StatusOr<v1::Process> record = client_.Status(grandchild);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->parent_id(), p.id());
  EXPECT_EQ(record->exitcode(), 5);
  EXPECT_EQ(ReadFile(record->stdout_path()), "grandchild 5 0.5 false\n");
}

// ---------------------------------------------------------------------------------------------
// The program: output, exit, death

TEST_F(ProcessTest, ForwardedOutputIsCompleteWhenJoinReturns) {
  CommandResult r = RunCommand({SelfExe(), "--helper=forward"}, HelperEnv(daemon_));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "out-1\nout-2\nout-3\nno-newlinejoined\n");
  EXPECT_EQ(r.err, "err-1\n");
}

// start_and_join(): one Run call, the output whole and in order, the exit record after it.
TEST_F(ProcessTest, StartAndJoinForwardsTheOutputAndEndsWithTheExit) {
  CommandResult r = RunCommand({SelfExe(), "--helper=start-and-join"}, HelperEnv(daemon_));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out,
            "out-1\nout-2\nout-3\nno-newlinejoined exitcode=0 alive=0 sentinel=1 again=cannot "
            "start a process twice closed=1\nmissing: NOT_FOUND\n");
  EXPECT_EQ(r.err, "err-1\n");
}

TEST_F(ProcessTest, NormalExitJoinsChildrenAndTerminatesDaemonicOnes) {
  Gate gate(daemon_.dir() + "/exit");
  std::vector<std::string> env = HelperEnv(daemon_);
  env.push_back(absl::StrCat(kExitGateVariable, "=", gate.path()));
  absl::Time before = absl::Now();
  CommandResult r = RunCommand({SelfExe(), "--helper=exit-handler"}, env);
  EXPECT_LT(absl::Now() - before, absl::Seconds(8)) << "the daemonic child is not waited for";
  EXPECT_EQ(r.status, 0) << r.err;
  uint64_t worker = 0, daemonic = 0;
  std::vector<std::string> words = absl::StrSplit(r.out.substr(0, r.out.find('\n')), ' ');
  ASSERT_EQ(words.size(), 4u) << r.out;
  ASSERT_TRUE(absl::SimpleAtoi(words[1], &worker) && absl::SimpleAtoi(words[3], &daemonic));
  EXPECT_THAT(r.out, HasSubstr("\nchild finished\n")) << "the program waited for its child";
  absl::StatusOr<v1::Process> w = client_.Status(worker);
  absl::StatusOr<v1::Process> d = client_.Status(daemonic);
  ASSERT_TRUE(w.ok() && d.ok());
  EXPECT_EQ(w->state(), v1::STATE_EXITED);
  EXPECT_EQ(w->exitcode(), 0);
  EXPECT_EQ(d->state(), v1::STATE_EXITED);
  EXPECT_EQ(d->exitcode(), -SIGTERM);
}

TEST_F(ProcessTest, ExitGivesUpOnADaemonThatStopsAnswering) {
  Gate gate(daemon_.dir() + "/exit");
  std::vector<std::string> env = HelperEnv(daemon_);
  env.push_back(absl::StrCat(kExitGateVariable, "=", gate.path()));
  Running helper = Spawn({SelfExe(), "--helper=exit-with-daemon-stopped"}, env);
  std::string line = ReadLine(helper.out, absl::Seconds(20));
  uint64_t id = 0;
  const bool started = absl::SimpleAtoi(line, &id);
  std::optional<int> raw;
  if (started) {
    EXPECT_TRUE(proctor::testing::StopProcess(daemon_.pid()));
    EXPECT_TRUE(gate.Open());
    // The exit handler's Join: a poll and its answer (two call timeouts); its output
    // forwarders stopped; the session's end (one more call timeout).
    raw = WaitForExit(helper.pid, absl::Seconds(15));
    kill(daemon_.pid(), SIGCONT);
  } else {
    ::kill(helper.pid, SIGKILL);
    waitpid(helper.pid, nullptr, 0);
  }
  close(helper.out);
  ASSERT_TRUE(started) << "helper said: " << line;
  ASSERT_TRUE(raw.has_value()) << "the program kept waiting for a daemon that does not answer";
  EXPECT_TRUE(WIFEXITED(*raw) && WEXITSTATUS(*raw) == 0) << *raw;
  v1::TerminateRequest request;
  request.set_id(id);
  request.set_signal(SIGKILL);
  absl::StatusOr<v1::Process> killed = client_.Terminate(request);
  ASSERT_TRUE(killed.ok()) << killed.status();
  EXPECT_EQ(killed->state(), v1::STATE_EXITED);
}

TEST_F(ProcessTest, AKilledProgramsDaemonicChildrenAreEndedByProctord) {
  Running helper = Spawn({SelfExe(), "--helper=daemonic-sleeper"}, HelperEnv(daemon_));
  std::string line = ReadLine(helper.out, absl::Seconds(20));
  close(helper.out);
  pid_t sleeper = 0;
  uint64_t id = 0;
  std::vector<std::string> words = absl::StrSplit(line, ' ');
  bool parsed =
      words.size() == 2 && absl::SimpleAtoi(words[0], &sleeper) && absl::SimpleAtoi(words[1], &id);
  ::kill(helper.pid, SIGKILL);
  waitpid(helper.pid, nullptr, 0);
  ASSERT_TRUE(parsed) << "helper said: " << line;
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(sleeper); }, absl::Seconds(5)))
      << "the daemonic child outlived its killed parent program";
  absl::StatusOr<v1::Process> ended = client_.Join(id, absl::Seconds(15));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->state(), v1::STATE_EXITED);
  if (ended->state() != v1::STATE_EXITED) {
    v1::TerminateRequest request;
    request.set_id(id);
    request.set_signal(SIGKILL);
    client_.Terminate(request).IgnoreError();
  }
}

// ---------------------------------------------------------------------------------------------
// The seed's examples

void CheckExample(TestDaemon& daemon, const std::string& program, bool named) {
  CommandResult r = RunCommand({program}, HelperEnv(daemon));
  ASSERT_EQ(r.status, 0) << r.err;
  size_t main_line = r.out.find("主线程\n");
  ASSERT_NE(main_line, std::string::npos) << r.out;
  EXPECT_LT(main_line, r.out.find("piao end")) << r.out;
  for (const char* x : {"A", "B", "C", "D"}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat(x, " piaoing\n"))) << r.out;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat(x, " piao end\n"))) << r.out;
  }
  absl::StatusOr<std::vector<v1::Process>> children = daemon.client().List({});
  ASSERT_TRUE(children.ok()) << children.status();
  ASSERT_EQ(children->size(), 4u);
  std::set<std::string> seen;
  for (const v1::Process& child : *children) {
    EXPECT_EQ(child.state(), v1::STATE_EXITED);
    EXPECT_EQ(child.exitcode(), 0);
    EXPECT_TRUE(child.has_parent_session());
    std::string out = ReadFile(child.stdout_path());
    std::string x = out.substr(0, out.find(' '));
    seen.insert(x);
    EXPECT_EQ(out, absl::StrCat(x, " piaoing\n", x, " piao end\n"));
    if (named) {
      EXPECT_EQ(child.name(), x);
    }
  }
  EXPECT_EQ(seen, (std::set<std::string>{"A", "B", "C", "D"}));
}

TEST_F(ProcessTest, SeedExampleOneFunctionTarget) {
  CheckExample(daemon_, PIAO_FUNCTION_PATH, /*named=*/false);
}

TEST_F(ProcessTest, SeedExampleTwoSubclass) {
  CheckExample(daemon_, PIAO_SUBCLASS_PATH, /*named=*/true);
}

}  // namespace
}  // namespace proctor::testing

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);
  if (argc >= 2 && absl::StartsWith(argv[1], "--helper=")) {
    return proctor::testing::RunHelper(absl::StripPrefix(argv[1], "--helper="));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
