// Process trees against a real proctord: children through the daemon, daemonic children
// ended with their parent, sessions, whole-tree terminate and the limits on spawning.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class TreeTest : public ::testing::Test {
 protected:
  explicit TreeTest(std::vector<std::string> flags = {}) : daemon_(std::move(flags)) {}

  void TearDown() override {
    // Nothing the daemon started may be left a zombie, nor running unaccounted for: once
    // every record still running is killed with its tree, no process is left below proctord.
    EXPECT_TRUE(WaitFor([&] { return Zombies().empty(); })) << Zombies().size() << " zombies";
    v1::StatusRequest running;
    running.set_state(v1::STATE_RUNNING);
    for (const v1::Process& p : client_.List(running).value_or(std::vector<v1::Process>{})) {
      Terminate(p.id(), /*tree=*/true, SIGKILL);
    }
    EXPECT_TRUE(WaitFor([&] { return Descendants(daemon_.pid()).empty(); }))
        << Descendants(daemon_.pid()).size() << " strays";
  }

  std::vector<pid_t> Zombies() {
    std::vector<pid_t> zombies;
    for (pid_t pid : AllChildren()) {
      if (IsZombie(pid)) zombies.push_back(pid);
    }
    return zombies;
  }

  std::vector<pid_t> AllChildren() {
    std::vector<pid_t> out;
    std::string children = ReadFile(absl::StrCat("/proc/", daemon_.pid(), "/task/",
                                                 daemon_.pid(), "/children"));
    for (absl::string_view word : absl::StrSplit(children, ' ', absl::SkipEmpty())) {
      pid_t pid;
      if (absl::SimpleAtoi(word, &pid)) out.push_back(pid);
    }
    return out;
  }

  // A client that speaks as the running worker `record`, with the credential in its
  // environment.
  std::unique_ptr<Client> ClientOf(const v1::Process& record) {
    absl::StatusOr<Credentials> credentials = WorkerCredentials(record.pid());
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return *Client::Connect(ClientOptions{.address = daemon_.address(),
                                          .credentials = credentials.value_or(Credentials{})});
  }

  // A worker, and a client that speaks as it.
  struct Worker {
    v1::Process record;
    std::unique_ptr<Client> client;
  };
  Worker StartWorker(const std::vector<std::string>& argv, bool daemon = false) {
    v1::StartRequest request;
    request.set_target(argv[0]);
    for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
    request.set_daemon(daemon);
    absl::StatusOr<v1::Process> started = client_.Start(request);
    EXPECT_TRUE(started.ok()) << started.status();
    Worker worker{started.value_or(v1::Process{}), nullptr};
    worker.client = ClientOf(worker.record);
    return worker;
  }

  v1::Process Child(Client& as, const std::vector<std::string>& argv, bool daemon = false) {
    return StartOk(as, argv, daemon);
  }

  v1::Process Terminate(uint64_t id, bool tree = true, int sig = SIGTERM) {
    v1::TerminateRequest request;
    request.set_id(id);
    request.set_signal(sig);
    request.set_tree(tree);
    *request.mutable_grace() = TimeUtil::SecondsToDuration(5);
    absl::StatusOr<v1::Process> ended = client_.Terminate(request);
    EXPECT_TRUE(ended.ok()) << ended.status();
    return ended.value_or(v1::Process{});
  }

  bool EndsSoon(uint64_t id) {
    absl::StatusOr<v1::Process> joined = client_.Join(id, absl::Seconds(15));
    return joined.ok() && joined->state() == v1::STATE_EXITED;
  }

  TestDaemon daemon_;
  Client& client_ = daemon_.client();
  TempDir tmp_;
};

TEST_F(TreeTest, ChildrenAreNamedAfterTheirParent) {
  Worker parent = StartWorker({"sleep", "100"});
  v1::Process first = Child(*parent.client, {"sleep", "100"});
  v1::Process second = Child(*parent.client, {"sleep", "100"});
  EXPECT_EQ(parent.record.name(), "Process-1");
  EXPECT_EQ(first.name(), "Process-1:1");
  EXPECT_EQ(second.name(), "Process-1:2");
  EXPECT_EQ(first.parent_id(), parent.record.id());
  EXPECT_THAT(client_.Status(parent.record.id())->children(),
              ElementsAre(first.id(), second.id()));
  Terminate(parent.record.id());
}

TEST_F(TreeTest, ProctorStartInsideAWorkerMakesAChild) {
  v1::Process parent = StartOk(
      client_, {"/bin/sh", "-c", absl::StrCat(PROCTOR_CLI_PATH, " start -- sleep 100; sleep 100")});
  absl::StatusOr<std::vector<v1::Process>> children;
  ASSERT_TRUE(WaitFor([&] {
    v1::StatusRequest filter;
    filter.set_parent_id(parent.id());
    children = client_.List(filter);
    return children.ok() && children->size() == 1;
  })) << ReadFile(parent.stderr_path());
  EXPECT_EQ((*children)[0].name(), "Process-1:1");
  CommandResult tree = daemon_.Cli({"ps", "--tree"});
  EXPECT_THAT(tree.out, HasSubstr("└─ ")) << tree.err;
  Terminate(parent.id());
  EXPECT_FALSE(IsAlive((*children)[0].pid()));
}

TEST_F(TreeTest, DaemonicProcessesMayNotHaveChildren) {
  Worker parent = StartWorker({"sleep", "100"});
  v1::Process daemonic = Child(*parent.client, {"sleep", "100"}, /*daemon=*/true);
  std::unique_ptr<Client> as_daemonic = ClientOf(daemonic);
  v1::StartRequest request;
  request.set_target("/bin/true");
  absl::StatusOr<v1::Process> child = as_daemonic->Start(request);
  EXPECT_EQ(child.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(child.status().message(), "daemonic processes are not allowed to have children");
  Terminate(parent.record.id());
}

enum class ParentEnd { kExit0, kExit1, kSigkill, kTerminate };

class DaemonicChildrenTest : public TreeTest,
                             public ::testing::WithParamInterface<ParentEnd> {};

TEST_P(DaemonicChildrenTest, EndWithTheirParentWhileOthersLiveOn) {
  // The parent ends, by its own exit, only when the test has started its children.
  Gate gate(tmp_.path() + "/gate");
  int code = GetParam() == ParentEnd::kExit1 ? 1 : 0;
  Worker parent =
      StartWorker({"/bin/sh", "-c", absl::StrCat(gate.ShellWait(), "; exit ", code)});
  v1::Process daemonic = Child(*parent.client, {"sleep", "100"}, /*daemon=*/true);
  v1::Process ordinary = Child(*parent.client, {"sleep", "100"});
  switch (GetParam()) {
    case ParentEnd::kExit0:
    case ParentEnd::kExit1:
      ASSERT_TRUE(gate.Open());
      break;
    case ParentEnd::kSigkill:
      kill(parent.record.pid(), SIGKILL);
      break;
    case ParentEnd::kTerminate:
      Terminate(parent.record.id(), /*tree=*/false);
      break;
  }
  EXPECT_TRUE(EndsSoon(daemonic.id()));
  EXPECT_EQ(client_.Status(daemonic.id())->exitcode(), -SIGTERM);
  // Reaped by the keeper once the exit is recorded, right after it is reported.
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(daemonic.pid()) && !IsZombie(daemonic.pid()); }));
  absl::StatusOr<v1::Process> survivor = client_.Status(ordinary.id());
  EXPECT_EQ(survivor->state(), v1::STATE_RUNNING);
  EXPECT_EQ(survivor->parent_id(), parent.record.id());
  Terminate(ordinary.id());
}

INSTANTIATE_TEST_SUITE_P(EveryParentEnd, DaemonicChildrenTest,
                         ::testing::Values(ParentEnd::kExit0, ParentEnd::kExit1,
                                           ParentEnd::kSigkill, ParentEnd::kTerminate));

TEST_F(TreeTest, ClosingASessionEndsItsDaemonicProcesses) {
  absl::StatusOr<std::unique_ptr<Session>> session = client_.OpenSession(absl::Seconds(30));
  ASSERT_TRUE(session.ok()) << session.status();
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("100");
  request.set_session((*session)->id());
  request.set_daemon(true);
  v1::Process daemonic = *client_.Start(request);
  request.set_daemon(false);
  v1::Process ordinary = *client_.Start(request);
  EXPECT_EQ(daemonic.parent_session(), (*session)->id());
  session->reset();
  EXPECT_TRUE(EndsSoon(daemonic.id()));
  EXPECT_EQ(client_.Status(ordinary.id())->state(), v1::STATE_RUNNING);
  Terminate(ordinary.id());
}

TEST_F(TreeTest, ASessionWithoutKeepAlivesExpires) {
  // A raw stream that opens a session with a short lease and then stays silent.
  auto channel = grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Proctor::NewStub(channel);
  grpc::ClientContext context;
  std::string key = *ReadKeyFile(daemon_.authkey_path(), false);
  context.AddMetadata(kAuthMetadataKey,
                      CallCredential::Make(key, kAdminKeyId, "Session",
                                           absl::ToUnixMillis(absl::Now()))
                          .Format());
  auto stream = stub->Session(&context);
  v1::SessionRequest open;
  *open.mutable_ttl() = TimeUtil::MillisecondsToDuration(300);
  ASSERT_TRUE(stream->Write(open));
  v1::SessionEvent opened;
  ASSERT_TRUE(stream->Read(&opened));
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("100");
  request.set_session(opened.session());
  request.set_daemon(true);
  v1::Process daemonic = *client_.Start(request);
  EXPECT_TRUE(EndsSoon(daemonic.id()));
  EXPECT_FALSE(stream->Read(&opened));
  grpc::Status ended = stream->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << ended.error_message();
}

// A raw Session stream, as a client of another language would hold it.
struct RawSession {
  RawSession(const TestDaemon& daemon)
      : stub(v1::Proctor::NewStub(
            grpc::CreateChannel(daemon.address(), grpc::InsecureChannelCredentials()))) {
    std::string key = *ReadKeyFile(daemon.authkey_path(), false);
    context.AddMetadata(kAuthMetadataKey,
                        CallCredential::Make(key, kAdminKeyId, "Session",
                                             absl::ToUnixMillis(absl::Now()))
                            .Format());
    stream = stub->Session(&context);
  }
  // Sends the first request; the session's id, or 0 if the daemon ended the stream.
  uint64_t Open(const v1::SessionRequest& first) {
    v1::SessionEvent opened;
    if (!stream->Write(first) || !stream->Read(&opened)) return 0;
    return opened.session();
  }

  std::unique_ptr<v1::Proctor::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionEvent>> stream;
};

TEST_F(TreeTest, ASessionKeptAliveEveryThirdOfItsTtlLastsAndEndsOkWhenClosed) {
  RawSession raw(daemon_);
  v1::SessionRequest open;
  *open.mutable_ttl() = TimeUtil::MillisecondsToDuration(600);
  uint64_t session = raw.Open(open);
  ASSERT_NE(session, 0u);
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("100");
  request.set_session(session);
  request.set_daemon(true);
  v1::Process daemonic = *client_.Start(request);
  // Four times its ttl, kept alive with an empty request every third of it.
  for (int i = 0; i < 12; ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(raw.stream->Write(v1::SessionRequest())) << "keep-alive " << i;
  }
  EXPECT_EQ(client_.Status(daemonic.id())->state(), v1::STATE_RUNNING);
  // Closing its side ends it: OK, and its daemonic processes end with it.
  ASSERT_TRUE(raw.stream->WritesDone());
  grpc::Status closed = raw.stream->Finish();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
  EXPECT_TRUE(EndsSoon(daemonic.id()));
}

TEST_F(TreeTest, ASessionRefusedOrEndedSaysWhy) {
  {
    RawSession raw(daemon_);
    v1::SessionRequest open;
    *open.mutable_ttl() = TimeUtil::MillisecondsToDuration(-5);
    EXPECT_EQ(raw.Open(open), 0u);
    grpc::Status status = raw.stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("ttl"));
  }
  {
    RawSession raw(daemon_);
    v1::SessionRequest resume;
    resume.set_resume(999999);
    EXPECT_EQ(raw.Open(resume), 0u);
    EXPECT_EQ(raw.stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    // proctord stopping ends every session with UNAVAILABLE, and what ran in it.
    TestDaemon stopping;
    RawSession raw(stopping);
    uint64_t session = raw.Open(v1::SessionRequest());
    ASSERT_NE(session, 0u);
    ASSERT_EQ(stopping.Stop(), 0);
    v1::SessionEvent more;
    EXPECT_FALSE(raw.stream->Read(&more));
    grpc::Status status = raw.stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  }
}

TEST_F(TreeTest, KilledProctorRunLeavesNoDaemonicWorker) {
  pid_t cli = daemon_.StartCli({"run", "--daemon", "--", "sleep", "100"},
                               tmp_.path() + "/run.out", tmp_.path() + "/run.err");
  ASSERT_GT(cli, 0);
  std::vector<v1::Process> running;
  ASSERT_TRUE(WaitFor([&] {
    v1::StatusRequest filter;
    filter.set_state(v1::STATE_RUNNING);
    running = client_.List(filter).value_or(std::vector<v1::Process>{});
    return running.size() == 1;
  }));
  EXPECT_TRUE(running[0].has_parent_session());
  kill(cli, SIGKILL);
  waitpid(cli, nullptr, 0);
  EXPECT_TRUE(EndsSoon(running[0].id()));
}

TEST_F(TreeTest, TerminateReachesEscapedAndDaemonStartedDescendants) {
  std::string escaped_file = tmp_.path() + "/escaped";
  // The subshell starts a setsid sleep in the background and exits at once: a double fork
  // out of the worker's process group and session, reparented to proctord.
  Worker root = StartWorker(
      {"/bin/sh", "-c",
       absl::StrCat("(setsid sleep 100 & echo $! > ", escaped_file, "); sleep 100")});
  v1::Process child = Child(*root.client, {"/bin/sh", "-c", "sleep 100 & wait"});
  pid_t escaped = 0;
  ASSERT_TRUE(WaitFor([&] {
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(escaped_file)), &escaped) &&
           escaped > 0;
  }));
  ASSERT_TRUE(WaitFor([&] { return getpgid(escaped) == escaped; })) << "setsid has run";
  std::vector<pid_t> before = Descendants(child.pid());
  v1::Process ended = Terminate(root.record.id());
  EXPECT_EQ(ended.state(), v1::STATE_EXITED);
  EXPECT_FALSE(IsAlive(escaped) || IsZombie(escaped)) << escaped;
  EXPECT_FALSE(IsAlive(child.pid()) || IsZombie(child.pid()));
  for (pid_t pid : before) EXPECT_FALSE(IsAlive(pid) || IsZombie(pid)) << pid;
}

TEST_F(TreeTest, NarrowTerminateLeavesEscapeesAndChildren) {
  std::string escaped_file = tmp_.path() + "/escaped";
  Worker root = StartWorker(
      {"/bin/sh", "-c",
       absl::StrCat("(setsid sleep 100 & echo $! > ", escaped_file, "); sleep 100")});
  v1::Process child = Child(*root.client, {"sleep", "100"});
  pid_t escaped = 0;
  ASSERT_TRUE(WaitFor([&] {
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(escaped_file)), &escaped) &&
           escaped > 0;
  }));
  // Until setsid has run, the escapee is still in the worker's group.
  ASSERT_TRUE(WaitFor([&] { return getpgid(escaped) == escaped; }));
  Terminate(root.record.id(), /*tree=*/false);
  EXPECT_TRUE(IsAlive(escaped));
  EXPECT_EQ(client_.Status(child.id())->state(), v1::STATE_RUNNING);
  kill(escaped, SIGKILL);
  Terminate(child.id());
}

class LimitTest : public TreeTest {
 protected:
  LimitTest()
      : TreeTest({"--max-processes", "6", "--max-children", "2", "--max-depth", "3"}) {}
};

TEST_F(LimitTest, ChildrenLimit) {
  Worker root = StartWorker({"sleep", "100"});
  Child(*root.client, {"sleep", "100"});
  Child(*root.client, {"sleep", "100"});
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("100");
  absl::Status third = root.client->Start(request).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max-children=2"));

  Terminate(root.record.id());
}

TEST_F(LimitTest, TotalAndDepthLimits) {
  std::vector<Worker> chain;
  chain.push_back(StartWorker({"sleep", "100"}));
  // Each level starts the next, which then speaks with its own credential.
  for (int depth = 2; depth <= 3; ++depth) {
    v1::StartRequest request;
    request.set_target("sleep");
    request.add_args("100");
    absl::StatusOr<v1::Process> next = chain.back().client->Start(request);
    ASSERT_TRUE(next.ok()) << next.status();
    chain.push_back(Worker{*next, ClientOf(*next)});
  }
  v1::StartRequest request;
  request.set_target("sleep");
  request.add_args("100");
  absl::Status deeper = chain.back().client->Start(request).status();
  EXPECT_EQ(deeper.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(deeper.message(), HasSubstr("--max-depth=3"));
  for (int i = 0; i < 3; ++i) StartOk(client_, {"sleep", "100"});
  absl::Status total = client_.Start(request).status();
  EXPECT_EQ(total.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(total.message(), HasSubstr("--max-processes=6"));
  std::vector<v1::Process> all = client_.List(v1::StatusRequest{}).value_or(std::vector<v1::Process>{});
  for (const v1::Process& p : all) Terminate(p.id());
}

class RunawayTest : public TreeTest {
 protected:
  RunawayTest()
      : TreeTest({"--max-processes", "40", "--max-children", "3", "--max-depth", "6"}) {}
};

TEST_F(RunawayTest, ASelfCopyingWorkerIsContainedAndCleanedUp) {
  std::string script = tmp_.path() + "/runaway.sh";
  // Starts copies of itself without end; each refusal only makes it try again.
  ASSERT_TRUE(WriteFile(script, absl::StrCat("while :; do ", PROCTOR_CLI_PATH,
                                             " start -- /bin/sh ", script,
                                             " >/dev/null 2>&1 || sleep 0.05; done\n")));
  v1::Process top = StartOk(client_, {"/bin/sh", script});
  ASSERT_TRUE(WaitFor([&] {
    v1::StatusRequest filter;
    filter.set_state(v1::STATE_RUNNING);
    return client_.List(filter)->size() >= 30;
  }, absl::Seconds(30)));
  // The limits hold while it pushes against them, and the daemon keeps answering.
  absl::Duration slowest;
  for (int i = 0; i < 50; ++i) {
    absl::Time before = absl::Now();
    v1::StatusRequest filter;
    filter.set_state(v1::STATE_RUNNING);
    absl::StatusOr<std::vector<v1::Process>> running = client_.List(filter);
    slowest = std::max(slowest, absl::Now() - before);
    ASSERT_TRUE(running.ok());
    EXPECT_LE(running->size(), 40u);
  }
  EXPECT_LT(slowest, absl::Seconds(1));
  v1::Process ended = Terminate(top.id());
  EXPECT_EQ(ended.state(), v1::STATE_EXITED);
  v1::StatusRequest filter;
  filter.set_state(v1::STATE_RUNNING);
  EXPECT_TRUE(WaitFor([&] { return client_.List(filter)->empty(); }));
  EXPECT_TRUE(WaitFor([&] { return Descendants(daemon_.pid()).empty(); }));
}

}  // namespace
}  // namespace proctor::testing
