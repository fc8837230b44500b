// CPython's Lib/test/_test_multiprocessing.py, classes _TestProcess and
// _TestSubclassingProcess, ported to proctor::Process: one test per CPython test that applies,
// named after it, with its assertions. multiprocessing's Queue and Pipe become the child's
// captured stdout or a file it appends to (or two named pipes), its Event is proctor::Event
// (client/sync.h), and ValueError is FAILED_PRECONDITION.
//
// Not ported, and why:
//   test_set_executable: there is no interpreter to choose; a function target runs this
//     same executable again (/proc/self/exe).
//   test_interrupt: its exit code 1 is Python's KeyboardInterrupt escaping the target; a C++
//     child has no SIGINT handler (test_interrupt_no_handler is the C++ case).
//   test_cpu_count: multiprocessing.cpu_count() is not part of the Process API.
//   test_lose_target_ref: weak references and the garbage collector are Python's.
//   test_wait_for_threads: C++ threads have no daemon flag, and the program's exit does not
//     wait for threads in either language's sense.
//   test_forkserver_sigint, test_forkserver_sigkill, test_forkserver_auth_is_enabled,
//     test_forkserver_without_auth_fails: the forkserver start method; proctord starts every
//     process itself.
//   test_args_argument's list and tuple, and test_sys_exit's non-integer reasons (a list, a
//     string): Python objects; the integer and boolean cases are ported.
//   test_close's weakref check: Python's garbage collector.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/process.h"
#include "client/sync.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/conformance/conformance_support.h"

namespace proctor::conformance {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// CPython's support.SHORT_TIMEOUT.
constexpr absl::Duration kShortTimeout = absl::Seconds(30);

// ---------------------------------------------------------------------------------------------
// Targets run in children

// _test(q, *args, **kwds): the queue is stdout, one line per item.
void ReportCurrent(const Args& args) {
  Process& current = current_process();
  std::vector<std::string> kwargs;
  for (const auto& [key, value] : args.kwargs()) kwargs.push_back(absl::StrCat(key, "=", value));
  std::cout << absl::StrJoin(args.positional(), ",") << "\n"
            << absl::StrJoin(kwargs, ",") << "\n"
            << current.name() << "\n"
            << HexEncode(current.authkey()) << "\n"
            << current.pid().value_or(0) << std::endl;
}
PROCTOR_FUNCTION(ReportCurrent);

// _test_args(q, arg).
void ReportArgs(const Args& args) { std::cout << absl::StrJoin(args.positional(), ",") << std::endl; }
PROCTOR_FUNCTION(ReportArgs);

// _test_send_parent_process(wconn).
void SendParentProcess() {
  Process* parent = parent_process();
  if (parent == nullptr) {
    std::cout << "none" << std::endl;
    return;
  }
  std::cout << parent->pid().value_or(0) << " " << parent->name() << std::endl;
}
PROCTOR_FUNCTION(SendParentProcess);

// _test_report_parent_status(wconn): the pipe is a file the grandchild appends to.
void ReportParentStatus(std::string path) {
  auto report = [&] {
    absl::StatusOr<bool> alive = parent_process()->is_alive();
    AppendLine(path, alive.ok() ? (*alive ? "alive" : "not alive") : alive.status().ToString());
  };
  report();
  if (absl::Status s = parent_process()->join(kShortTimeout); !s.ok()) {
    AppendLine(path, s.ToString());
  }
  report();
}
PROCTOR_FUNCTION(ReportParentStatus);

// _test_create_grandchild_process(wconn).
void CreateGrandchildProcess(std::string path) {
  Process p({.target = ReportParentStatus, .args = {path}});
  if (absl::Status s = p.start(); !s.ok()) AppendLine(path, s.ToString());
  std::this_thread::sleep_for(std::chrono::seconds(300));
}
PROCTOR_FUNCTION(CreateGrandchildProcess);

// _test_process_mainthread_native_id(q).
void ReportMainThreadId() { std::cout << gettid() << std::endl; }
PROCTOR_FUNCTION(ReportMainThreadId);

// _sleep_some_event(event).
void SleepSomeEvent(Event event) {
  if (!event.set().ok()) std::exit(2);
  std::this_thread::sleep_for(std::chrono::seconds(100));
}
PROCTOR_FUNCTION(SleepSomeEvent);

// _sleep_no_int_handler(event).
void SleepNoIntHandler(Event event) {
  signal(SIGINT, SIG_DFL);
  SleepSomeEvent(std::move(event));
}
PROCTOR_FUNCTION(SleepNoIntHandler);

// _sleep_some().
void SleepSome() { std::this_thread::sleep_for(std::chrono::seconds(100)); }
PROCTOR_FUNCTION(SleepSome);

// _test_sleep(delay).
void SleepFor(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}
PROCTOR_FUNCTION(SleepFor);

// event.wait as a target.
void WaitForEvent(Event event) {
  if (!event.wait().ok()) std::exit(2);
}
PROCTOR_FUNCTION(WaitForEvent);

// _test_recursion(wconn, id): `id` is the list's items joined with ", ".
void Recursion(std::string path, std::string id) {
  AppendLine(path, absl::StrCat("[", id, "]"));
  std::vector<std::string> items;
  if (!id.empty()) items = absl::StrSplit(id, ", ");
  if (items.size() < 2) {
    for (int i = 0; i < 2; ++i) {
      std::string child_id = id.empty() ? absl::StrCat(i) : absl::StrCat(id, ", ", i);
      Process p({.target = Recursion, .args = {path, child_id}});
      if (!p.start().ok() || !p.join().ok()) AppendLine(path, "failed");
    }
  }
}
PROCTOR_FUNCTION(Recursion);

// _test_sentinel(event).
void WaitForEventTenSeconds(Event event) { event.wait(absl::Seconds(10)).IgnoreError(); }
PROCTOR_FUNCTION(WaitForEventTenSeconds);

// _test_close(rc, q): the queue's get() is an event.
int CloseTarget(int rc, Event event) {
  if (!event.wait().ok()) return 2;
  return rc;
}
PROCTOR_FUNCTION(CloseTarget);

// _test_child_fd_inflation(evt, q).
void CountDescriptors(Event event) {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++count;
  }
  std::cout << count << std::endl;
  event.wait().IgnoreError();
}
PROCTOR_FUNCTION(CountDescriptors);

// _test_error_on_stdio_flush(evt, break_std_streams): "close" closes the stdio stream,
// "remove" takes the descriptor under it away.
void BreakStdio(Event event, std::string stream, std::string action) {
  FILE* file = stream == "stdout" ? stdout : stderr;
  if (action == "close") {
    std::fclose(file);
  } else {
    close(fileno(file));
  }
  if (!event.set().ok()) std::_Exit(2);
}
PROCTOR_FUNCTION(BreakStdio);

// _test_stderr_flush(testfn).
void StderrFlush(std::string path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) std::exit(2);
  throw std::domain_error("1/0 # MARKER");
}
PROCTOR_FUNCTION(StderrFlush);

// sys.exit(n) as a target.
void ExitWith(int code) { std::exit(code); }
PROCTOR_FUNCTION(ExitWith);
void ExitWithFlag(bool flag) { std::exit(flag); }
PROCTOR_FUNCTION(ExitWithFlag);
void ReturnNothing() {}
PROCTOR_FUNCTION(ReturnNothing);

// _UpperCaser: multiprocessing.Pipe() is two named pipes, one each way.
class UpperCaser : public ProcessClass<std::string, std::string> {
 public:
  UpperCaser(std::string to_child, std::string to_parent)
      : ProcessClass(to_child, to_parent), to_child_(to_child), to_parent_(to_parent) {}
  ~UpperCaser() override { stop(); }

  // Lines in, the same in capitals out, until the parent closes its end.
  void run() override {
    FILE* in = std::fopen(to_child_.c_str(), "re");
    FILE* out = std::fopen(to_parent_.c_str(), "we");
    if (in == nullptr || out == nullptr) std::exit(2);
    char line[4096];
    while (std::fgets(line, sizeof(line), in) != nullptr) {
      for (char* c = line; *c != '\0'; ++c) *c = static_cast<char>(std::toupper(*c));
      std::fputs(line, out);
      std::fflush(out);
    }
    std::fclose(out);
    std::fclose(in);
  }

  std::string submit(const std::string& s) {
    // Opened in the order the child opens them, so neither waits for the other for ever.
    if (send_ == nullptr) send_ = std::fopen(to_child_.c_str(), "we");
    if (receive_ == nullptr) receive_ = std::fopen(to_parent_.c_str(), "re");
    if (send_ == nullptr || receive_ == nullptr) return "<cannot open the pipes>";
    std::fputs((s + "\n").c_str(), send_);
    std::fflush(send_);
    char line[4096];
    if (std::fgets(line, sizeof(line), receive_) == nullptr) return "<the child closed its end>";
    std::string answer = line;
    if (!answer.empty() && answer.back() == '\n') answer.pop_back();
    return answer;
  }

  void stop() {
    if (send_ != nullptr) std::fclose(send_);
    if (receive_ != nullptr) std::fclose(receive_);
    send_ = receive_ = nullptr;
  }

 private:
  std::string to_child_;
  std::string to_parent_;
  FILE* send_ = nullptr;
  FILE* receive_ = nullptr;
};
PROCTOR_PROCESS_CLASS(UpperCaser);

// ---------------------------------------------------------------------------------------------
// Helpers

bool Readable(int fd, absl::Duration timeout) {
  pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) == 1;
}

std::vector<uint64_t> ActiveChildren() {
  absl::StatusOr<std::vector<uint64_t>> children = active_children();
  EXPECT_TRUE(children.ok()) << children.status();
  return children.value_or(std::vector<uint64_t>{});
}

void ExpectRefused(const absl::Status& s) {
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;  // Python's ValueError
}

using TestProcess = ConformanceTest;
using TestSubclassingProcess = ConformanceTest;

// ---------------------------------------------------------------------------------------------
// _TestProcess

TEST_F(TestProcess, test_current) {
  Process& current = current_process();
  const std::string& authkey = current.authkey();
  EXPECT_EQ(current.is_alive().value_or(false), true);
  EXPECT_FALSE(current.daemon());
  EXPECT_GT(authkey.size(), 0u);
  EXPECT_EQ(current.pid(), getpid());
  EXPECT_EQ(current.exitcode(), std::nullopt);
}

TEST_F(TestProcess, test_args_argument) {
  for (const Arg& arg : {Arg(1), Arg("str")}) {
    Process p({.target = ReportArgs, .args = {arg}, .daemon = true});
    StartOk(p);
    ASSERT_TRUE(p.join().ok());
    EXPECT_EQ(Out(p), arg.str() + "\n");
  }
}

TEST_F(TestProcess, test_daemon_argument) {
  // By default the flag is the current process's, false in a main program.
  Process proc0({.target = ReportCurrent});
  EXPECT_EQ(proc0.daemon(), current_process().daemon());
  Process proc1({.target = ReportCurrent, .daemon = true});
  EXPECT_TRUE(proc1.daemon());
  Process proc2({.target = ReportCurrent, .daemon = false});
  EXPECT_FALSE(proc2.daemon());
}

TEST_F(TestProcess, test_parent_process_attributes) {
  EXPECT_EQ(parent_process(), nullptr);
  Process p({.target = SendParentProcess});
  StartOk(p);
  ASSERT_TRUE(p.join().ok());
  std::vector<std::string> sent = absl::StrSplit(absl::StripSuffix(Out(p), "\n"), ' ');
  ASSERT_EQ(sent.size(), 2u) << Out(p);
  EXPECT_EQ(sent[0], absl::StrCat(*current_process().pid()));
  EXPECT_EQ(sent[0], absl::StrCat(getpid()));
  EXPECT_EQ(sent[1], current_process().name());
}

TEST_F(TestProcess, test_parent_process) {
  // A child starts a grandchild; the child is killed, and the grandchild must notice.
  std::string path = daemon_.dir() + "/parent-status";
  Process p({.target = CreateGrandchildProcess, .args = {path}});
  StartOk(p);
  ASSERT_TRUE(testing::WaitFor([&] { return !ReadLines(path).empty(); }, kShortTimeout))
      << "could not communicate with the grandchild";
  EXPECT_EQ(ReadLines(path)[0], "alive");

  // Python's terminate() reaches only the child: so does Reach::kGroup, and the grandchild,
  // a process of its own, lives on to report.
  ASSERT_TRUE(p.terminate(Reach::kGroup).ok());
  ASSERT_TRUE(p.join().ok());
  ASSERT_TRUE(testing::WaitFor([&] { return ReadLines(path).size() >= 2; }, kShortTimeout))
      << "could not communicate with the grandchild";
  EXPECT_THAT(ReadLines(path), ElementsAre("alive", "not alive"));
}

TEST_F(TestProcess, test_process) {
  Process p({.target = ReportCurrent,
             .args = {1, 2},
             .kwargs = {{"hello", 23}, {"bye", 2.54}},
             .name = "SomeProcess"});
  ASSERT_TRUE(p.set_daemon(true).ok());
  Process& current = current_process();

  // Python: p.authkey == current.authkey. proctor gives each top-level process a key of its
  // own (per-tree authkeys, on purpose); the child holds the one its Process object shows.
  EXPECT_NE(p.authkey(), current.authkey());
  EXPECT_EQ(p.is_alive().value_or(true), false);
  EXPECT_EQ(p.daemon(), true);
  EXPECT_THAT(ActiveChildren(), Not(Contains(p.id())));
  EXPECT_EQ(p.exitcode(), std::nullopt);

  StartOk(p);

  EXPECT_EQ(p.exitcode(), std::nullopt);
  EXPECT_EQ(p.is_alive().value_or(false), true);
  EXPECT_THAT(ActiveChildren(), Contains(p.id()));

  ASSERT_TRUE(p.join().ok());
  std::vector<std::string> got = absl::StrSplit(absl::StripSuffix(Out(p), "\n"), '\n');
  ASSERT_EQ(got.size(), 5u) << Out(p);
  EXPECT_EQ(got[0], "1,2");
  EXPECT_EQ(got[1], "bye=2.54,hello=23");
  EXPECT_EQ(got[2], p.name());
  EXPECT_EQ(got[3], HexEncode(p.authkey()));
  EXPECT_EQ(got[4], absl::StrCat(*p.pid()));

  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(p.is_alive().value_or(true), false);
  EXPECT_THAT(ActiveChildren(), Not(Contains(p.id())));
}

TEST_F(TestProcess, test_process_mainthread_native_id) {
  pid_t current_mainthread_native_id = gettid();
  Process p({.target = ReportMainThreadId});
  StartOk(p);
  ASSERT_TRUE(p.join().ok());
  pid_t child_mainthread_native_id = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripSuffix(Out(p), "\n"), &child_mainthread_native_id))
      << Out(p);
  EXPECT_NE(current_mainthread_native_id, child_mainthread_native_id);
}

// _kill_process(meth, target): returns the exit code after `meth`.
std::optional<int> KillProcess(absl::Status (Process::*meth)(Reach),
                               void (*target)(Event) = SleepSomeEvent) {
  Event event;
  Process p({.target = target, .args = {event}});
  EXPECT_TRUE(p.set_daemon(true).ok());
  absl::Status started = p.start();
  EXPECT_TRUE(started.ok()) << started;
  if (!started.ok()) return std::nullopt;

  EXPECT_EQ(p.is_alive().value_or(false), true);
  EXPECT_THAT(ActiveChildren(), Contains(p.id()));
  EXPECT_EQ(p.exitcode(), std::nullopt);

  absl::Time before = absl::Now();
  EXPECT_TRUE(p.join(absl::ZeroDuration()).ok());
  EXPECT_LT(absl::Now() - before, absl::Seconds(1));
  EXPECT_EQ(p.is_alive().value_or(false), true);

  before = absl::Now();
  EXPECT_TRUE(p.join(absl::Seconds(-1)).ok()) << "a negative timeout only looks";
  EXPECT_LT(absl::Now() - before, absl::Seconds(1));
  EXPECT_EQ(p.is_alive().value_or(false), true);

  if (event.wait(kShortTimeout).value_or(false) != true) {
    p.kill().IgnoreError();
    p.join().IgnoreError();
    ADD_FAILURE() << "event not signaled in " << kShortTimeout;
    return std::nullopt;
  }

  EXPECT_TRUE((p.*meth)(Reach::kTree).ok());
  before = absl::Now();
  EXPECT_TRUE(p.join(absl::Seconds(10)).ok());
  EXPECT_LT(absl::Now() - before, absl::Seconds(10)) << "join took too long";

  EXPECT_EQ(p.is_alive().value_or(true), false);
  EXPECT_THAT(ActiveChildren(), Not(Contains(p.id())));
  EXPECT_TRUE(p.join().ok());
  return p.exitcode();
}

TEST_F(TestProcess, test_interrupt_no_handler) {
  EXPECT_EQ(KillProcess(&Process::interrupt, SleepNoIntHandler), -SIGINT);
}

TEST_F(TestProcess, test_terminate) { EXPECT_EQ(KillProcess(&Process::terminate), -SIGTERM); }

TEST_F(TestProcess, test_kill) { EXPECT_EQ(KillProcess(&Process::kill), -SIGKILL); }

TEST_F(TestProcess, test_active_children) {
  Event event;
  Process p({.target = WaitForEvent, .args = {event}});
  EXPECT_THAT(ActiveChildren(), Not(Contains(p.id())));
  ASSERT_TRUE(p.set_daemon(true).ok());
  absl::Status started = p.start();
  if (started.ok()) {
    EXPECT_THAT(ActiveChildren(), Contains(p.id()));
  }
  ASSERT_TRUE(event.set().ok());
  ASSERT_TRUE(started.ok()) << started;
  ASSERT_TRUE(p.join().ok());
  EXPECT_THAT(ActiveChildren(), Not(Contains(p.id())));
}

TEST_F(TestProcess, test_recursion) {
  std::string path = daemon_.dir() + "/recursion";
  Recursion(path, "");
  EXPECT_THAT(ReadLines(path),
              ElementsAre("[]", "[0]", "[0, 0]", "[0, 1]", "[1]", "[1, 0]", "[1, 1]"));
}

TEST_F(TestProcess, test_sentinel) {
  Event event;
  Process p({.target = WaitForEventTenSeconds, .args = {event}});
  ExpectRefused(p.sentinel().status());
  StartOk(p);
  absl::StatusOr<int> sentinel = p.sentinel();
  ASSERT_TRUE(sentinel.ok()) << sentinel.status();
  EXPECT_FALSE(Readable(*sentinel, absl::ZeroDuration()));
  ASSERT_TRUE(event.set().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_TRUE(Readable(*sentinel, absl::Seconds(1)));
}

TEST_F(TestProcess, test_close) {
  Event event;
  Process p({.target = CloseTarget, .args = {0, event}});
  ASSERT_TRUE(p.set_daemon(true).ok());
  StartOk(p);
  EXPECT_EQ(p.is_alive().value_or(false), true);
  // Child is still alive, cannot close.
  ExpectRefused(p.close());

  ASSERT_TRUE(event.set().ok());
  ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(p.is_alive().value_or(true), false);
  EXPECT_EQ(p.exitcode(), 0);
  ASSERT_TRUE(p.close().ok());
  ExpectRefused(p.is_alive().status());
  ExpectRefused(p.join());
  ExpectRefused(p.terminate());
  EXPECT_TRUE(p.close().ok());
}

TEST_F(TestProcess, test_many_processes) {
  constexpr int kN = 5;  // CPython's number for the spawn start method
  std::vector<Process> procs;
  for (int i = 0; i < kN; ++i) procs.emplace_back(ProcessOptions{.target = SleepFor, .args = {0.01}});
  for (Process& p : procs) StartOk(p);
  for (Process& p : procs) ASSERT_TRUE(p.join().ok());
  for (Process& p : procs) EXPECT_EQ(p.exitcode(), 0);

  procs.clear();
  for (int i = 0; i < kN; ++i) procs.emplace_back(ProcessOptions{.target = SleepSome});
  for (Process& p : procs) StartOk(p);
  std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let the children start...
  for (Process& p : procs) ASSERT_TRUE(p.terminate().ok());
  for (Process& p : procs) ASSERT_TRUE(p.join().ok());
  for (Process& p : procs) EXPECT_EQ(p.exitcode(), -SIGTERM);
}

TEST_F(TestProcess, test_child_fd_inflation) {
  // The number of descriptors in a child does not grow with the number of running children.
  constexpr int kN = 5;
  Event event;
  std::vector<Process> procs;
  for (int i = 0; i < kN; ++i) {
    procs.emplace_back(ProcessOptions{.target = CountDescriptors, .args = {event}});
  }
  for (Process& p : procs) StartOk(p);
  std::set<std::string> fd_counts;
  for (Process& p : procs) {
    EXPECT_TRUE(testing::WaitFor([&] { return !Out(p).empty(); }, kShortTimeout));
    fd_counts.insert(Out(p));
  }
  ASSERT_TRUE(event.set().ok());
  for (Process& p : procs) ASSERT_TRUE(p.join().ok());
  EXPECT_EQ(fd_counts.size(), 1u) << absl::StrJoin(fd_counts, " ");
}

TEST_F(TestProcess, test_error_on_stdio_flush_1) {
  // The parent's standard streams broken: here its descriptors are gone, since writing to a
  // stdio stream after fclose is undefined in C++. A helper program does it, so that this
  // one keeps its own.
  for (const char* stream : {"stdout", "stderr"}) {
    std::vector<std::string> env = {"PROCTOR_ADDRESS=" + daemon_.address(),
                                    "PROCTOR_AUTHKEY_FILE=" + daemon_.authkey_path()};
    testing::CommandResult r = testing::RunCommand(
        {std::filesystem::read_symlink("/proc/self/exe").string(),
         absl::StrCat("--helper=broken-", stream)},
        env);
    EXPECT_EQ(r.status, 0) << stream << ": " << r.err;
  }
}

TEST_F(TestProcess, test_error_on_stdio_flush_2) {
  // The same, with the streams broken by the child.
  for (const char* stream : {"stdout", "stderr"}) {
    for (const char* action : {"close", "remove"}) {
      Event event;
      Process proc({.target = BreakStdio, .args = {event, stream, action}});
      StartOk(proc);
      ASSERT_TRUE(proc.join().ok());
      EXPECT_EQ(event.is_set().value_or(false), true) << stream << " " << action;
      EXPECT_EQ(proc.exitcode(), 0) << stream << " " << action;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// _TestSubclassingProcess

TEST_F(TestSubclassingProcess, test_subclassing) {
  std::string to_child = daemon_.dir() + "/to-child";
  std::string to_parent = daemon_.dir() + "/to-parent";
  ASSERT_EQ(mkfifo(to_child.c_str(), 0600), 0);
  ASSERT_EQ(mkfifo(to_parent.c_str(), 0600), 0);
  UpperCaser uppercaser(to_child, to_parent);
  ASSERT_TRUE(uppercaser.set_daemon(true).ok());
  StartOk(uppercaser);
  EXPECT_EQ(uppercaser.submit("hello"), "HELLO");
  EXPECT_EQ(uppercaser.submit("world"), "WORLD");
  uppercaser.stop();
  ASSERT_TRUE(uppercaser.join().ok());
  EXPECT_EQ(uppercaser.exitcode(), 0);
}

TEST_F(TestSubclassingProcess, test_stderr_flush) {
  // stderr is flushed at the child's end: the whole report of the exception is there.
  std::string testfn = daemon_.dir() + "/stderr";
  Process proc({.target = StderrFlush, .args = {testfn}});
  StartOk(proc);
  ASSERT_TRUE(proc.join().ok());
  std::string err = testing::ReadFile(testfn);
  EXPECT_THAT(err, HasSubstr("std::domain_error"));
  EXPECT_THAT(err, HasSubstr(absl::StrCat("Process ", proc.name(), ":")));
  EXPECT_THAT(err, HasSubstr("1/0 # MARKER"));
  EXPECT_EQ(proc.exitcode(), 1);
}

TEST_F(TestSubclassingProcess, test_sys_exit) {
  struct Case {
    ProcessOptions options;
    int expected;
  };
  std::vector<Case> cases;
  cases.push_back({{.target = ExitWithFlag, .args = {true}}, 1});
  cases.push_back({{.target = ExitWithFlag, .args = {false}}, 0});
  cases.push_back({{.target = ExitWith, .args = {8}}, 8});
  cases.push_back({{.target = ReturnNothing}, 0});
  for (Case& c : cases) {
    Process p(std::move(c.options));
    ASSERT_TRUE(p.set_daemon(true).ok());
    StartOk(p);
    ASSERT_TRUE(p.join().ok());
    EXPECT_EQ(p.exitcode(), c.expected);
  }
}

}  // namespace

// test_error_on_stdio_flush_1's program: its own stdout or stderr descriptor closed, it
// starts a child that writes to both, and exits 0 when the child ran to its end.
int RunBrokenStdioHelper(const std::string& stream) {
  close(stream == "stdout" ? STDOUT_FILENO : STDERR_FILENO);
  Event event;
  Process proc({.target = BreakStdio, .args = {event, "stdout", "remove"}});
  Process talker({.target = ReportCurrent, .args = {"some", "output"}});
  if (!proc.start().ok() || !talker.start().ok()) return 2;
  if (!proc.join().ok() || !talker.join().ok()) return 3;
  if (event.is_set().value_or(false) != true) return 4;
  return proc.exitcode() == 0 && talker.exitcode() == 0 ? 0 : 5;
}

}  // namespace proctor::conformance
