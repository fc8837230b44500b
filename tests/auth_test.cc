// Authentication against a real proctord: every call proves it holds a key, the daemon proves
// it back, a worker's key reaches only its own subtree, and no key ever shows.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/credentials.h"
#include "common/authkey.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proctor/v1/proctor.grpc.pb.h"
#include "proctor/v1/sync.grpc.pb.h"
#include "tests/standard_services_client.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

// How much proctord's RSS may grow under a flood: 32 MiB; under AddressSanitizer, whose
// redzones and quarantine of freed memory make every allocation cost more, four times that.
#ifdef __SANITIZE_ADDRESS__
constexpr int64_t kRssGrowthLimitKib = 4 * 32 * 1024;
#else
constexpr int64_t kRssGrowthLimitKib = 32 * 1024;
#endif

using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

// ------------------------------------------------------------------------------------------
// Helpers

Credentials AdminCredentials(const std::string& key) {
  return Credentials{.key = key, .key_id = kAdminKeyId, .source = "the test's key"};
}

std::unique_ptr<Client> ConnectWith(const std::string& address, const Credentials& credentials,
                                    ClientOptions options = {}) {
  options.address = address;
  options.credentials = credentials;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

std::string ReadKey(const std::string& path) {
  absl::StatusOr<std::string> key = ReadKeyFile(path, /*private_only=*/false);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.value_or("");
}

// Writes `key` to `path` with mode 0600 (replacing what was there, keeping the inode).
void WriteKey(const std::string& path, const std::string& key) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  ASSERT_EQ(write(fd, key.data(), key.size()), static_cast<ssize_t>(key.size()));
  close(fd);
}

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t length = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return ntohs(addr.sin_port);
}

// Runs proctord to completion (it is expected to refuse to start); `timeout` ends it after a
// minute if it starts after all, so the test fails instead of hanging.
CommandResult RunProctord(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {"timeout", "60", PROCTORD_PATH};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return RunCommand(argv);
}

// TestDaemon waits for its Unix socket only; a TCP listener may come up a moment later.
void WaitUntilListening(const TestDaemon& daemon) {
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(daemon.Log(), "proctord listening on"); },
                      absl::Seconds(30)))
      << daemon.Log();
}

v1::Process JoinOk(Client& client, uint64_t id) {
  absl::StatusOr<v1::Process> joined = client.Join(id);
  EXPECT_TRUE(joined.ok()) << joined.status();
  return joined.value_or(v1::Process{});
}

// Starts /bin/echo with `client` and joins it: the whole round trip a key must allow.
void ExpectStartAndJoinWork(Client& client) {
  absl::StatusOr<v1::Process> started = [&] {
    v1::StartRequest request;
    request.set_target("/bin/echo");
    request.add_args("hello");
    return client.Start(request);
  }();
  ASSERT_TRUE(started.ok()) << started.status();
  v1::Process ended = JoinOk(client, started->id());
  EXPECT_EQ(ended.state(), v1::STATE_EXITED);
  EXPECT_EQ(ended.exitcode(), 0);
}

// Ends every process still running, with SIGKILL, so the daemon stops at once.
void KillAll(Client& client) {
  v1::StatusRequest running;
  running.set_state(v1::STATE_RUNNING);
  absl::StatusOr<std::vector<v1::Process>> processes = client.List(running);
  ASSERT_TRUE(processes.ok()) << processes.status();
  for (const v1::Process& p : *processes) {
    v1::TerminateRequest request;
    request.set_id(p.id());
    request.set_signal(SIGKILL);
    absl::StatusOr<v1::Process> ended = client.Terminate(request);
    EXPECT_TRUE(ended.ok() || absl::IsNotFound(ended.status())) << ended.status();
  }
}

std::string LogsOf(Client& client, uint64_t id) {
  v1::LogsRequest request;
  request.set_id(id);
  std::string out;
  absl::Status s = client.Logs(request, [&](std::string_view chunk) { out.append(chunk); });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// A worker started to tell us its own key: it prints $PROCTOR_AUTHKEY and $PROCTOR_ID, then
// sleeps until it is terminated.
struct KeyedWorker {
  v1::Process record;
  Credentials credentials;
};

KeyedWorker StartKeyedWorker(Client& starter) {
  KeyedWorker worker;
  absl::StatusOr<v1::Process> started = [&] {
    v1::StartRequest request;
    request.set_target("/bin/sh");
    request.add_args("-c");
    request.add_args("echo $PROCTOR_AUTHKEY; echo $PROCTOR_ID; exec sleep 100");
    return starter.Start(request);
  }();
  EXPECT_TRUE(started.ok()) << started.status();
  if (!started.ok()) return worker;
  worker.record = *started;
  std::vector<std::string> lines;
  EXPECT_TRUE(WaitFor(
      [&] {
        lines = absl::StrSplit(LogsOf(starter, started->id()), '\n', absl::SkipEmpty());
        return lines.size() >= 2;
      },
      absl::Seconds(30)));
  if (lines.size() < 2) return worker;
  absl::StatusOr<std::string> key = HexDecode(lines[0]);
  EXPECT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key.value_or("").size(), kAuthkeyBytes);
  EXPECT_EQ(lines[1], absl::StrCat(started->id()));
  worker.credentials = Credentials{.key = key.value_or(""),
                                   .key_id = lines[1],
                                   .source = absl::StrCat("the key of process ", lines[1])};
  return worker;
}

// The ids in `proctor --json ps` output.
std::set<uint64_t> JsonIds(const std::string& json) {
  std::set<uint64_t> ids;
  const std::string kField = "\"id\":";
  for (size_t at = json.find(kField); at != std::string::npos; at = json.find(kField, at + 1)) {
    size_t begin = at + kField.size();
    size_t end = json.find_first_not_of("0123456789", begin);
    uint64_t id;
    if (absl::SimpleAtoi(json.substr(begin, end - begin), &id)) ids.insert(id);
  }
  return ids;
}

std::set<uint64_t> Ids(const std::vector<v1::Process>& processes) {
  std::set<uint64_t> ids;
  for (const v1::Process& p : processes) ids.insert(p.id());
  return ids;
}

// Every /proc/<pid>/cmdline on the machine, NULs turned into spaces.
std::vector<std::string> AllCommandLines() {
  std::vector<std::string> lines;
  DIR* proc = opendir("/proc");
  while (dirent* entry = readdir(proc)) {
    pid_t pid;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    lines.push_back(std::move(cmdline));
  }
  closedir(proc);
  return lines;
}

// Fails the test when `text` (described by `where`) holds `key` raw or in hex.
void ExpectNoKey(const std::string& text, const std::string& key, const std::string& where) {
  ASSERT_FALSE(key.empty());
  EXPECT_THAT(text, Not(HasSubstr(key))) << where << " holds a key's raw bytes";
  EXPECT_THAT(text, Not(HasSubstr(HexEncode(key)))) << where << " holds a key in hex";
}

// A raw call of `method` ("/proctor.v1.Proctor/Start") with no credential: unary methods get
// an empty request, streaming ones an empty first message and a half-close.
class RawStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RawStream(grpc::GenericStub& stub, grpc::ClientContext* context, const std::string& method)
      : request_(&empty_, 1) {
    stub.PrepareBidiStreamingCall(context, method, grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    ++messages_;
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override { done_.set_value(status); }

  grpc::Status Await() { return done_.get_future().get(); }
  // How many messages the daemon sent (read only after Await).
  int messages() const { return messages_; }

 private:
  grpc::Slice empty_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  int messages_ = 0;
  std::promise<grpc::Status> done_;
};

grpc::Status CallWithoutKey(grpc::GenericStub& stub,
                            const google::protobuf::MethodDescriptor& method, int* messages) {
  std::string path = absl::StrCat("/", method.service()->full_name(), "/", method.name());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  *messages = 0;
  if (!method.client_streaming() && !method.server_streaming()) {
    grpc::Slice empty;
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, path, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status status) { done.set_value(std::move(status)); });
    return done.get_future().get();
  }
  RawStream call(stub, &context, path);
  grpc::Status status = call.Await();
  *messages = call.messages();
  return status;
}

// ------------------------------------------------------------------------------------------
// Calls without a key, or with the wrong one

// Every method of every service the daemon serves, as server reflection lists them, but for
// gRPC's health and reflection services, which answer anyone on purpose (they show the serving
// state and the public schema; see README, "Operating proctord"). A service added without
// authentication fails here.
TEST(AuthTest, EveryRpcRefusesACallWithoutKey) {
  TestDaemon daemon;
  absl::StatusOr<std::vector<std::string>> services = ListServices(PlainChannel(daemon.address()));
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, ::testing::IsSupersetOf(std::vector<std::string>{
                             v1::Proctor::service_full_name(), v1::Sync::service_full_name()}));
  const std::set<std::string> open = {"grpc.health.v1.Health",
                                      "grpc.reflection.v1alpha.ServerReflection"};
  // The methods as the daemon describes them, so that this test knows of any service added.
  google::protobuf::SimpleDescriptorDatabase described;
  std::set<std::string> files;
  for (const std::string& name : *services) {
    absl::StatusOr<std::vector<google::protobuf::FileDescriptorProto>> defined =
        FileContainingSymbol(PlainChannel(daemon.address()), name);
    ASSERT_TRUE(defined.ok()) << name << ": " << defined.status();
    for (const google::protobuf::FileDescriptorProto& file : *defined) {
      if (files.insert(file.name()).second) described.Add(file);
    }
  }
  google::protobuf::DescriptorPool pool(&described);
  std::vector<const google::protobuf::MethodDescriptor*> methods;
  for (const std::string& name : *services) {
    if (open.contains(name)) continue;
    const google::protobuf::ServiceDescriptor* service = pool.FindServiceByName(name);
    ASSERT_NE(service, nullptr) << name << ": not described by reflection";
    ASSERT_GT(service->method_count(), 0);
    for (int i = 0; i < service->method_count(); ++i) methods.push_back(service->method(i));
  }
  grpc::GenericStub stub(grpc::CreateChannel(daemon.address(), grpc::InsecureChannelCredentials()));
  // All at once: refusals are held back longer and longer one after the other.
  std::vector<std::future<std::pair<grpc::Status, int>>> calls;
  for (const google::protobuf::MethodDescriptor* method : methods) {
    calls.push_back(std::async(std::launch::async, [&stub, method] {
      int messages = 0;
      grpc::Status status = CallWithoutKey(stub, *method, &messages);
      return std::pair(status, messages);
    }));
  }
  for (size_t i = 0; i < methods.size(); ++i) {
    SCOPED_TRACE(methods[i]->full_name());
    auto [status, messages] = calls[i].get();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("x-proctor-auth"));
    EXPECT_EQ(messages, 0);
  }
  // Nothing was started by any of them.
  absl::StatusOr<std::vector<v1::Process>> all = daemon.client().List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->empty());
}

TEST(AuthTest, WrongKeyIsRefused) {
  TestDaemon daemon;
  std::unique_ptr<Client> client =
      ConnectWith(daemon.address(), AdminCredentials(RandomBytes(kAuthkeyBytes)));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::vector<v1::Process>> listed = client->List({});
  EXPECT_TRUE(absl::IsUnauthenticated(listed.status())) << listed.status();
  EXPECT_THAT(listed.status().message(), HasSubstr("refused the key"));
  v1::StartRequest request;
  request.set_target("/bin/true");
  absl::StatusOr<v1::Process> started = client->Start(request);
  EXPECT_TRUE(absl::IsUnauthenticated(started.status())) << started.status();
  absl::StatusOr<std::vector<v1::Process>> all = daemon.client().List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->empty()) << "a refused Start started something";
}

TEST(AuthTest, WrongKeyThroughTheCliIsOneLineAndExitOne) {
  TestDaemon daemon;
  std::string wrong = daemon.dir() + "/wrong.key";
  WriteKey(wrong, RandomBytes(kAuthkeyBytes));
  // Given on the command line: the most explicit way to choose a key.
  CommandResult result = daemon.Cli({"--authkey-file", wrong, "ps"});
  EXPECT_EQ(result.status, 1) << result.err;
  EXPECT_EQ(result.out, "");
  EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
  EXPECT_THAT(result.err, HasSubstr("refused the key"));
  EXPECT_THAT(result.err, HasSubstr(wrong));
}

TEST(AuthTest, WrongKeyFileFromTheEnvironmentIsRefused) {
  TestDaemon daemon;
  std::string wrong = daemon.dir() + "/wrong.key";
  WriteKey(wrong, RandomBytes(kAuthkeyBytes));
  // RunCommand directly: the environment has to hold only the wrong key file.
  CommandResult result = RunCommand({PROCTOR_CLI_PATH, "--address", daemon.address(), "ps"},
                                    {"PROCTOR_AUTHKEY_FILE=" + wrong});
  EXPECT_EQ(result.status, 1) << result.err;
  EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
  EXPECT_THAT(result.err, HasSubstr("refused the key"));
  EXPECT_THAT(result.err, HasSubstr("$PROCTOR_AUTHKEY_FILE"));
}

TEST(AuthTest, RightKeyWorks) {
  TestDaemon daemon;
  std::unique_ptr<Client> client =
      ConnectWith(daemon.address(), AdminCredentials(ReadKey(daemon.authkey_path())));
  ASSERT_NE(client, nullptr);
  ExpectStartAndJoinWork(*client);
  CommandResult cli = daemon.Cli({"ps", "--all"});
  EXPECT_EQ(cli.status, 0) << cli.err;
}

// ------------------------------------------------------------------------------------------
// Captured credentials

class AuthCredentialTest : public ::testing::Test {
 protected:
  // A Status (list) call carrying exactly `credential`; `proof` receives the daemon's proof.
  grpc::Status StatusWith(const std::string& credential, std::string* proof = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    context.AddMetadata(kAuthMetadataKey, credential);
    v1::StatusResponse response;
    grpc::Status status = stub_->Status(&context, v1::StatusRequest(), &response);
    if (proof != nullptr) {
      const auto& metadata = context.GetServerInitialMetadata();
      auto it = metadata.find(kServerProofMetadataKey);
      *proof = it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
    }
    return status;
  }

  grpc::Status TerminateWith(const std::string& credential) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    context.AddMetadata(kAuthMetadataKey, credential);
    v1::TerminateRequest request;
    request.set_id(1);
    v1::Process response;
    return stub_->Terminate(&context, request, &response);
  }

  static int64_t NowMillis() { return absl::ToUnixMillis(absl::Now()); }

  TestDaemon daemon_;
  std::string key_ = ReadKey(daemon_.authkey_path());
  std::unique_ptr<v1::Proctor::Stub> stub_ = v1::Proctor::NewStub(
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
};

TEST_F(AuthCredentialTest, ReplayedCredentialIsRefused) {
  CallCredential credential = CallCredential::Make(key_, kAdminKeyId, "Status", NowMillis());
  std::string proof;
  grpc::Status first = StatusWith(credential.Format(), &proof);
  EXPECT_TRUE(first.ok()) << first.error_message();
  EXPECT_EQ(proof, ServerProof(key_, "Status", credential.nonce_hex));
  grpc::Status second = StatusWith(credential.Format(), &proof);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(second.error_message(), HasSubstr("replayed"));
  EXPECT_EQ(proof, "") << "a refused call got the daemon's proof";
}

TEST_F(AuthCredentialTest, ExpiredCredentialIsRefused) {
  CallCredential old = CallCredential::Make(
      key_, kAdminKeyId, "Status", NowMillis() - absl::ToInt64Milliseconds(absl::Minutes(10)));
  grpc::Status status = StatusWith(old.Format());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("time"));
  CallCredential future = CallCredential::Make(
      key_, kAdminKeyId, "Status", NowMillis() + absl::ToInt64Milliseconds(absl::Minutes(10)));
  EXPECT_EQ(StatusWith(future.Format()).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AuthCredentialTest, CredentialIsBoundToItsMethod) {
  CallCredential for_status = CallCredential::Make(key_, kAdminKeyId, "Status", NowMillis());
  grpc::Status status = TerminateWith(for_status.Format());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
}

TEST_F(AuthCredentialTest, MalformedCredentialIsRefused) {
  for (const std::string& credential :
       {std::string(""), std::string("v1 admin"), HexEncode(key_),
        absl::StrCat("v2 admin ", NowMillis(), " ", std::string(32, '0'), " ",
                     std::string(64, '0'))}) {
    SCOPED_TRACE(credential);
    grpc::Status status = StatusWith(credential);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(status.error_message(), Not(HasSubstr(HexEncode(key_))));
  }
}

TEST_F(AuthCredentialTest, CredentialForAnUnknownWorkerIsRefused) {
  CallCredential credential = CallCredential::Make(key_, "12345", "Status", NowMillis());
  EXPECT_EQ(StatusWith(credential.Format()).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// The daemon's proof, from the reply's initial or trailing metadata; empty if there is none.
std::string ProofIn(const grpc::ClientContext& context) {
  for (const auto* metadata :
       {&context.GetServerInitialMetadata(), &context.GetServerTrailingMetadata()}) {
    auto it = metadata->find(kServerProofMetadataKey);
    if (it != metadata->end()) return std::string(it->second.data(), it->second.size());
  }
  return "";
}

TEST_F(AuthCredentialTest, EachRefusalSaysWhatToFix) {
  const int64_t now = NowMillis();
  const std::string nonce(32, 'a');
  const std::string mac(64, 'b');
  std::set<std::string> messages;
  auto refused = [&](const std::string& credential, const std::vector<std::string>& says) {
    SCOPED_TRACE(credential);
    std::string proof;
    grpc::Status status = StatusWith(credential, &proof);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    for (const std::string& part : says) EXPECT_THAT(status.error_message(), HasSubstr(part));
    EXPECT_THAT(status.error_message(), Not(HasSubstr(HexEncode(key_))));
    EXPECT_TRUE(messages.insert(status.error_message()).second)
        << "the same words for two causes: " << status.error_message();
    return proof;
  };
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::StatusResponse response;
    grpc::Status status = stub_->Status(&context, v1::StatusRequest(), &response);
    EXPECT_THAT(status.error_message(), HasSubstr("carries no credential (metadata x-proctor-auth)"));
  }
  // Malformed: each names its field.
  refused(absl::StrCat("v1 admin ", now, " ", nonce), {"malformed", "4 fields, not 5"});
  refused(absl::StrCat("v1  admin ", now, " ", nonce, " ", mac), {"6 fields, not 5"});
  refused(absl::StrCat("v2 admin ", now, " ", nonce, " ", mac), {"field version is \"v2\""});
  refused(absl::StrCat("v1 root ", now, " ", nonce, " ", mac),
          {"field key-id \"root\" is neither \"admin\" nor a process id", "PROCTOR_ID"});
  refused(absl::StrCat("v1 007 ", now, " ", nonce, " ", mac), {"field key-id \"007\"", "no leading zero"});
  refused(absl::StrCat("v1 admin 17e11 ", nonce, " ", mac), {"field unix-millis \"17e11\""});
  refused(absl::StrCat("v1 admin ", now, " abc ", mac),
          {"field nonce-hex must be 32 lower-case hex digits (16 bytes); it has 3 characters"});
  refused(absl::StrCat("v1 admin ", now, " ", std::string(32, 'A'), " ", mac),
          {"field nonce-hex", "upper-case"});
  refused(absl::StrCat("v1 admin ", now, " ", nonce, " ", std::string(64, 'g')),
          {"field mac-hex must be 64 lower-case hex digits (32 bytes); it has a character "
           "outside 0-9a-f"});
  // Well formed, and the key is wrong: which key, and why.
  const std::string other = RandomBytes(kAuthkeyBytes);
  EXPECT_EQ(refused(CallCredential::Make(other, kAdminKeyId, "Status", now).Format(),
                    {"the mac does not verify under any admin key"}),
            "");
  EXPECT_EQ(refused(CallCredential::Make(key_, "987654", "Status", now).Format(),
                    {"unknown key id 987654", "not an OS pid"}),
            "");
  v1::StartRequest sleeper;
  sleeper.set_target("/bin/sleep");
  sleeper.add_args("100");
  v1::Process live = *daemon_.client().Start(sleeper);
  refused(CallCredential::Make(other, absl::StrCat(live.id()), "Status", now).Format(),
          {absl::StrCat("the mac does not verify under the key of process ", live.id())});
  v1::StartRequest quick;
  quick.set_target("/bin/true");
  v1::Process released = *daemon_.client().Start(quick);
  ASSERT_TRUE(daemon_.client().Join(released.id()).ok());
  ASSERT_TRUE(daemon_.client().Release(released.id()).ok());
  refused(CallCredential::Make(other, absl::StrCat(released.id()), "Status", now).Format(),
          {absl::StrCat("process ", released.id(), " has been released")});
  // The key checked out, the time did not: the skew is named, and the refusal is proved.
  CallCredential late = CallCredential::Make(
      key_, kAdminKeyId, "Status", now - absl::ToInt64Milliseconds(absl::Minutes(10)));
  EXPECT_EQ(refused(late.Format(), {"time is 10m", "behind the daemon's clock", "at most 2m"}),
            ServerProof(key_, "Status", late.nonce_hex));
  CallCredential early = CallCredential::Make(
      key_, kAdminKeyId, "Status", now + absl::ToInt64Milliseconds(absl::Minutes(10)));
  EXPECT_EQ(refused(early.Format(), {"ahead of the daemon's clock"}),
            ServerProof(key_, "Status", early.nonce_hex));
  // A replay: refused without a proof (it would repeat the first call's).
  CallCredential once = CallCredential::Make(key_, kAdminKeyId, "Status", now);
  ASSERT_TRUE(StatusWith(once.Format()).ok());
  EXPECT_EQ(refused(once.Format(), {"used before (replayed)"}), "");
  v1::TerminateRequest stop;
  stop.set_id(live.id());
  EXPECT_TRUE(daemon_.client().Terminate(stop).ok());
}

TEST_F(AuthCredentialTest, ErrorsAnsweredAfterTheKeyCheckedOutCarryTheProof) {
  {
    CallCredential credential = CallCredential::Make(key_, kAdminKeyId, "Status", NowMillis());
    grpc::ClientContext context;
    context.AddMetadata(kAuthMetadataKey, credential.Format());
    v1::StatusRequest request;
    request.set_id(999999);
    v1::StatusResponse response;
    grpc::Status status = stub_->Status(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
    EXPECT_EQ(ProofIn(context), ServerProof(key_, "Status", credential.nonce_hex));
  }
  {
    CallCredential credential = CallCredential::Make(key_, kAdminKeyId, "Join", NowMillis());
    grpc::ClientContext context;
    context.AddMetadata(kAuthMetadataKey, credential.Format());
    v1::JoinRequest request;
    request.set_id(1);
    request.mutable_timeout()->set_seconds(-1);
    v1::Process response;
    grpc::Status status = stub_->Join(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_EQ(ProofIn(context), ServerProof(key_, "Join", credential.nonce_hex));
  }
}

TEST_F(AuthCredentialTest, StreamsSendTheirProofBeforeTheirFirstMessage) {
  v1::StartRequest sleeper;
  sleeper.set_target("/bin/sleep");
  sleeper.add_args("100");
  v1::Process quiet = *daemon_.client().Start(sleeper);
  // Each stream below sends no message for as long as the test waits: a proof sent with the
  // first message would not arrive before the deadline. `open` starts the call on `context`.
  auto expect_proof_first = [&](absl::string_view method, auto open) {
    grpc::ClientContext context;
    CallCredential credential = CallCredential::Make(key_, kAdminKeyId, method, NowMillis());
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata(kAuthMetadataKey, credential.Format());
    auto stream = open(context);
    stream->WaitForInitialMetadata();
    const auto& headers = context.GetServerInitialMetadata();
    auto it = headers.find(kServerProofMetadataKey);
    EXPECT_TRUE(it != headers.end() && std::string(it->second.data(), it->second.size()) ==
                                           ServerProof(key_, method, credential.nonce_hex))
        << method;
    context.TryCancel();
    stream->Finish();
  };
  v1::LogsRequest follow;
  follow.set_id(quiet.id());
  follow.set_follow(true);
  expect_proof_first("Logs", [&](grpc::ClientContext& c) { return stub_->Logs(&c, follow); });
  v1::WatchRequest watch;
  watch.add_ids(quiet.id());
  expect_proof_first("Watch", [&](grpc::ClientContext& c) { return stub_->Watch(&c, watch); });
  // Before the session's first request: the client may check the daemon before it asks.
  expect_proof_first("Session", [&](grpc::ClientContext& c) { return stub_->Session(&c); });
  // Joins: before its first Join is asked.
  expect_proof_first("Joins", [&](grpc::ClientContext& c) { return stub_->Joins(&c); });
  // SyncCalls: before its first call is made.
  std::unique_ptr<v1::Sync::Stub> sync =
      v1::Sync::NewStub(grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  expect_proof_first("SyncCalls", [&](grpc::ClientContext& c) { return sync->SyncCalls(&c); });
  {
    // A Run waiting for a readiness that never comes sends no event.
    v1::StartRequest request = sleeper;
    request.set_name("never-ready");
    request.set_notify(true);
    request.set_wait_ready(true);
    expect_proof_first("Run", [&](grpc::ClientContext& c) { return stub_->Run(&c, request); });
    v1::StatusRequest named;
    named.set_name("never-ready");
    absl::StatusOr<std::vector<v1::Process>> started = daemon_.client().List(named);
    ASSERT_TRUE(started.ok()) << started.status();
    for (const v1::Process& p : *started) {
      v1::TerminateRequest stop;
      stop.set_id(p.id());
      EXPECT_TRUE(daemon_.client().Terminate(stop).ok());
    }
  }
  v1::TerminateRequest stop;
  stop.set_id(quiet.id());
  EXPECT_TRUE(daemon_.client().Terminate(stop).ok());
}

// ------------------------------------------------------------------------------------------
// The other side: a daemon that does not hold our key

TEST(AuthTest, AnotherDaemonRefusesOurKey) {
  TestDaemon a;
  TestDaemon b;
  std::string key_a = ReadKey(a.authkey_path());
  ASSERT_NE(key_a, ReadKey(b.authkey_path())) << "two daemons made the same key";
  std::unique_ptr<Client> client = ConnectWith(b.address(), AdminCredentials(key_a));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::vector<v1::Process>> listed = client->List({});
  EXPECT_TRUE(absl::IsUnauthenticated(listed.status())) << listed.status();
  EXPECT_THAT(listed.status().message(), HasSubstr("refused the key"));
}

// Something on the address that answers every call but cannot hold the key.
class Impostor final : public v1::Proctor::Service {
 public:
  // `proof`: what it puts in x-proctor-server-proof; nothing when empty.
  explicit Impostor(std::string proof) : proof_(std::move(proof)) {}

  grpc::Status Status(grpc::ServerContext* context, const v1::StatusRequest* request,
                      v1::StatusResponse* response) override {
    AddProof(context);
    v1::Process* p = response->add_processes();
    p->set_id(request->id());
    p->set_name("forged");
    p->set_state(v1::STATE_EXITED);
    p->set_exitcode(0);
    return grpc::Status::OK;
  }

  grpc::Status Join(grpc::ServerContext* context, const v1::JoinRequest* request,
                    v1::Process* response) override {
    AddProof(context);
    response->set_id(request->id());
    response->set_state(v1::STATE_EXITED);
    response->set_exitcode(0);
    return grpc::Status::OK;
  }

  grpc::Status Logs(grpc::ServerContext* context, const v1::LogsRequest*,
                    grpc::ServerWriter<v1::LogChunk>* writer) override {
    AddProof(context);
    v1::LogChunk chunk;
    chunk.set_data("forged output\n");
    writer->Write(chunk);
    return grpc::Status::OK;
  }

  grpc::Status Run(grpc::ServerContext* context, const v1::StartRequest*,
                   grpc::ServerWriter<v1::RunEvent>* writer) override {
    AddProof(context);
    v1::RunEvent event;
    event.mutable_started()->set_id(7);
    writer->Write(event);
    event.mutable_output()->set_data("forged output\n");
    writer->Write(event);
    event.mutable_exited()->set_id(7);
    event.mutable_exited()->set_state(v1::STATE_EXITED);
    writer->Write(event);
    return grpc::Status::OK;
  }

 private:
  void AddProof(grpc::ServerContext* context) {
    if (!proof_.empty()) context->AddInitialMetadata(kServerProofMetadataKey, proof_);
  }
  std::string proof_;
};

class AuthImpostorTest : public ::testing::TestWithParam<std::string> {};

std::string ProofCaseName(const ::testing::TestParamInfo<std::string>& info) {
  if (info.param.empty()) return "Missing";
  return absl::StrContains(info.param, ' ') ? "Malformed" : "Bogus";
}

TEST_P(AuthImpostorTest, ClientDoesNotTrustADaemonThatCannotProveTheKey) {
  TempDir dir;
  std::string address = "unix:" + dir.path() + "/impostor.sock";
  auto impostor = std::make_unique<Impostor>(GetParam());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  builder.RegisterService(impostor.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  std::shared_ptr<Client> client =
      ConnectWith(address, AdminCredentials(RandomBytes(kAuthkeyBytes)));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Process> status = client->Status(7);
  EXPECT_TRUE(absl::IsUnauthenticated(status.status())) << status.status();
  EXPECT_THAT(status.status().message(), HasSubstr("failed to prove it holds the key"));
  absl::StatusOr<v1::Process> joined = client->Join(7);
  EXPECT_TRUE(absl::IsUnauthenticated(joined.status())) << joined.status();

  // Logs runs on a thread of its own, so that a client stuck on the impostor's stream fails
  // the test instead of hanging it (the thread, and the client it holds, are then abandoned).
  struct LogsOutcome {
    absl::Status status;
    std::string delivered;
  };
  auto outcome = std::make_shared<std::promise<LogsOutcome>>();
  std::future<LogsOutcome> done = outcome->get_future();
  std::thread([client, outcome] {
    v1::LogsRequest request;
    request.set_id(7);
    LogsOutcome result;
    result.status =
        client->Logs(request, [&](std::string_view chunk) { result.delivered.append(chunk); });
    outcome->set_value(std::move(result));
  }).detach();
  if (done.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "Client::Logs did not return within 20 s from a daemon that failed to "
                     "prove it holds the key";
    // The impostor is left running for the stuck thread.
    server.release();
    impostor.release();
    return;
  }
  LogsOutcome logs = done.get();
  EXPECT_TRUE(absl::IsUnauthenticated(logs.status)) << logs.status;
  EXPECT_THAT(logs.status.message(), HasSubstr("failed to prove it holds the key"));
  EXPECT_EQ(logs.delivered, "") << "the client passed on output from an impostor";

  // Run waits for the proof in the headers before it passes anything on.
  std::string delivered;
  v1::StartRequest run;
  run.set_target("/bin/true");
  absl::StatusOr<v1::Process> ran = client->Run(
      run, [&](v1::Stream, std::string_view data) { delivered.append(data); },
      [&](const v1::Process&) { delivered.append("started"); });
  EXPECT_TRUE(absl::IsUnauthenticated(ran.status())) << ran.status();
  EXPECT_THAT(ran.status().message(), HasSubstr("failed to prove it holds the key"));
  EXPECT_EQ(delivered, "") << "the client passed on events from an impostor";

  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

INSTANTIATE_TEST_SUITE_P(Auth, AuthImpostorTest,
                         ::testing::Values(std::string(""),               // no proof at all
                                           std::string(64, '0'),          // a bogus one
                                           std::string("not even hex")),  // a malformed one
                         ProofCaseName);

// ------------------------------------------------------------------------------------------
// Key files

TEST(AuthTest, DaemonRefusesAKeyFileOthersCanRead) {
  TempDir dir;
  std::string key_file = dir.path() + "/authkey";
  WriteKey(key_file, RandomBytes(kAuthkeyBytes));
  ASSERT_EQ(chmod(key_file.c_str(), 0644), 0);
  CommandResult result = RunProctord({"--listen", "unix:" + dir.path() + "/s.sock", "--state-dir",
                                      dir.path() + "/state", "--authkey-file", key_file});
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.status, 124) << "proctord started with a key file others can read";
  EXPECT_THAT(result.err, HasSubstr(key_file));
  EXPECT_THAT(result.err, HasSubstr("0644"));
}

TEST(AuthTest, DaemonRefusesALooseDefaultKeyFile) {
  TempDir dir;
  std::string state = dir.path() + "/state";
  ASSERT_EQ(mkdir(state.c_str(), 0700), 0);
  WriteKey(state + "/authkey", RandomBytes(kAuthkeyBytes));
  ASSERT_EQ(chmod((state + "/authkey").c_str(), 0640), 0);
  CommandResult result =
      RunProctord({"--listen", "unix:" + dir.path() + "/s.sock", "--state-dir", state});
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.status, 124) << "proctord started with a key file others can read";
  EXPECT_THAT(result.err, HasSubstr(state + "/authkey"));
  EXPECT_THAT(result.err, HasSubstr("0640"));
}

TEST(AuthTest, KeysRotateOnSighup) {
  TempDir keys;
  // The first key file is the state directory's own, so that TestDaemon's client can use it.
  std::string state = keys.path() + "/state";
  ASSERT_EQ(mkdir(state.c_str(), 0700), 0);
  std::string f1 = state + "/authkey";
  std::string f2 = keys.path() + "/second.key";
  std::string k1 = RandomBytes(kAuthkeyBytes);
  std::string k2 = RandomBytes(kAuthkeyBytes);
  std::string k3 = RandomBytes(kAuthkeyBytes);
  WriteKey(f1, k1);
  WriteKey(f2, k2);
  TestDaemon daemon(
      {"--state-dir", state, "--authkey-file", f1, "--authkey-file", f2, "--shutdown-grace", "1"});
  std::unique_ptr<Client> c1 = ConnectWith(daemon.address(), AdminCredentials(k1));
  std::unique_ptr<Client> c2 = ConnectWith(daemon.address(), AdminCredentials(k2));
  std::unique_ptr<Client> c3 = ConnectWith(daemon.address(), AdminCredentials(k3));
  ASSERT_TRUE(c1 && c2 && c3);
  ExpectStartAndJoinWork(*c1);
  ExpectStartAndJoinWork(*c2);
  EXPECT_TRUE(absl::IsUnauthenticated(c3->List({}).status()));
  v1::Process long_running = StartOk(*c1, {"/bin/sleep", "100"});

  WriteKey(f1, k3);
  ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(daemon.Log(), "reloaded 2 admin"); },
                      absl::Seconds(30)))
      << daemon.Log();

  absl::StatusOr<std::vector<v1::Process>> refused = c1->List({});
  EXPECT_TRUE(absl::IsUnauthenticated(refused.status())) << refused.status();
  ExpectStartAndJoinWork(*c2);
  ExpectStartAndJoinWork(*c3);
  // The worker started under the old key runs on, and a new key reaches it.
  absl::StatusOr<v1::Process> still = c3->Join(long_running.id(), absl::Milliseconds(100));
  ASSERT_TRUE(still.ok()) << still.status();
  EXPECT_EQ(still->state(), v1::STATE_RUNNING);
  v1::TerminateRequest terminate;
  terminate.set_id(long_running.id());
  absl::StatusOr<v1::Process> ended = c3->Terminate(terminate);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(JoinOk(*c2, long_running.id()).exitcode(), -SIGTERM);
}

TEST(AuthTest, BadKeyFileOnSighupKeepsTheOldKeys) {
  TempDir keys;
  std::string state = keys.path() + "/state";
  ASSERT_EQ(mkdir(state.c_str(), 0700), 0);
  std::string f1 = state + "/authkey";
  WriteKey(f1, RandomBytes(kAuthkeyBytes));
  TestDaemon daemon({"--state-dir", state, "--authkey-file", f1});
  ASSERT_EQ(chmod(f1.c_str(), 0644), 0);
  ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  ASSERT_TRUE(
      WaitFor([&] { return absl::StrContains(daemon.Log(), "not reloaded"); }, absl::Seconds(30)))
      << daemon.Log();
  ExpectStartAndJoinWork(daemon.client());
}

// ------------------------------------------------------------------------------------------
// Worker keys

class AuthWorkerKeyTest : public ::testing::Test {
 protected:
  void TearDown() override { KillAll(daemon_.client()); }

  TestDaemon daemon_{{"--shutdown-grace", "1"}};
  Client& admin_ = daemon_.client();
};

TEST_F(AuthWorkerKeyTest, ReachesOnlyItsOwnSubtree) {
  KeyedWorker p1 = StartKeyedWorker(admin_);
  KeyedWorker p2 = StartKeyedWorker(admin_);
  ASSERT_FALSE(p1.credentials.key.empty());
  ASSERT_FALSE(p2.credentials.key.empty());
  EXPECT_NE(p1.credentials.key, p2.credentials.key);
  std::unique_ptr<Client> as_p1 = ConnectWith(daemon_.address(), p1.credentials);
  std::unique_ptr<Client> as_p2 = ConnectWith(daemon_.address(), p2.credentials);
  ASSERT_TRUE(as_p1 && as_p2);
  const uint64_t id1 = p1.record.id();
  const uint64_t id2 = p2.record.id();

  absl::StatusOr<v1::Process> self = as_p1->Status(id1);
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_EQ(self->name(), "Process-1");

  // What P1's key starts is P1's child, named after it.
  v1::Process child1 = StartOk(*as_p1, {"/bin/sleep", "100"});
  EXPECT_TRUE(child1.has_parent_id());
  EXPECT_EQ(child1.parent_id(), id1);
  EXPECT_EQ(child1.name(), "Process-1:1");
  ASSERT_TRUE(as_p1->Status(child1.id()).ok());
  v1::Process child2 = StartOk(*as_p2, {"/bin/sleep", "100"});
  EXPECT_EQ(child2.parent_id(), id2);
  EXPECT_EQ(child2.name(), "Process-2:1");

  // P2 and its subtree are out of reach.
  for (uint64_t other : {id2, child2.id()}) {
    SCOPED_TRACE(absl::StrCat("process ", other));
    absl::StatusOr<v1::Process> status = as_p1->Status(other);
    EXPECT_TRUE(absl::IsPermissionDenied(status.status())) << status.status();
    absl::StatusOr<v1::Process> joined = as_p1->Join(other, absl::Seconds(1));
    EXPECT_TRUE(absl::IsPermissionDenied(joined.status())) << joined.status();
    v1::TerminateRequest terminate;
    terminate.set_id(other);
    terminate.set_signal(SIGKILL);
    absl::StatusOr<v1::Process> terminated = as_p1->Terminate(terminate);
    EXPECT_TRUE(absl::IsPermissionDenied(terminated.status())) << terminated.status();
    v1::LogsRequest logs;
    logs.set_id(other);
    std::string delivered;
    absl::Status logged =
        as_p1->Logs(logs, [&](std::string_view chunk) { delivered.append(chunk); });
    EXPECT_TRUE(absl::IsPermissionDenied(logged)) << logged;
    EXPECT_EQ(delivered, "");
    absl::Status released = as_p1->Release(other);
    EXPECT_TRUE(absl::IsPermissionDenied(released)) << released;
  }
  absl::StatusOr<v1::Process> p2_alive = admin_.Status(id2);
  ASSERT_TRUE(p2_alive.ok()) << p2_alive.status();
  EXPECT_EQ(p2_alive->state(), v1::STATE_RUNNING);

  // Lists show the caller's subtree only.
  absl::StatusOr<std::vector<v1::Process>> seen_by_p1 = as_p1->List({});
  ASSERT_TRUE(seen_by_p1.ok()) << seen_by_p1.status();
  EXPECT_THAT(Ids(*seen_by_p1), UnorderedElementsAre(id1, child1.id()));
  v1::StatusRequest under_p2;
  under_p2.set_parent_id(id2);
  absl::StatusOr<std::vector<v1::Process>> filtered = as_p1->List(under_p2);
  ASSERT_TRUE(filtered.ok()) << filtered.status();
  EXPECT_TRUE(filtered->empty());
  absl::StatusOr<std::vector<v1::Process>> seen_by_admin = admin_.List({});
  ASSERT_TRUE(seen_by_admin.ok()) << seen_by_admin.status();
  EXPECT_THAT(Ids(*seen_by_admin), UnorderedElementsAre(id1, id2, child1.id(), child2.id()));

  // Within its subtree the key may do everything.
  v1::TerminateRequest terminate;
  terminate.set_id(child1.id());
  terminate.set_signal(SIGKILL);
  absl::StatusOr<v1::Process> ended = as_p1->Terminate(terminate);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->exitcode(), -SIGKILL);
  EXPECT_TRUE(as_p1->Release(child1.id()).ok());
}

// A Joins stream made with a worker's key answers each Join as the unary call would: another
// tree's process is PERMISSION_DENIED, in its result, and the stream goes on.
TEST_F(AuthWorkerKeyTest, JoinsOnAStreamReachOnlyTheKeysSubtree) {
  KeyedWorker p1 = StartKeyedWorker(admin_);
  KeyedWorker p2 = StartKeyedWorker(admin_);
  auto stub = v1::Proctor::NewStub(
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  CallAuth as_p1(p1.credentials);
  grpc::ClientContext context;
  std::string nonce = as_p1.Sign(context, "Joins");
  auto stream = stub->Joins(&context);
  v1::JoinRequest other;
  other.set_id(p2.record.id());
  ASSERT_TRUE(stream->Write(other));
  v1::JoinRequest self;
  self.set_id(p1.record.id());
  self.mutable_timeout();  // 0: answered at once
  ASSERT_TRUE(stream->Write(self));
  ASSERT_TRUE(stream->WritesDone());
  std::vector<v1::JoinResult> results(2);
  ASSERT_TRUE(stream->Read(&results[0]));
  ASSERT_TRUE(stream->Read(&results[1]));
  grpc::Status closed = stream->Finish();
  ASSERT_TRUE(closed.ok()) << closed.error_message();
  ASSERT_TRUE(as_p1.CheckReply(context, "Joins", nonce, closed, "the test daemon").ok());
  for (const v1::JoinResult& result : results) {
    if (result.request() == 1) {
      EXPECT_EQ(result.code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
      EXPECT_THAT(result.message(), HasSubstr("outside the subtree"));
      EXPECT_FALSE(result.has_process());
    } else {
      EXPECT_EQ(result.request(), 2u);
      EXPECT_EQ(result.code(), 0) << result.message();
      EXPECT_EQ(result.process().id(), p1.record.id());
      EXPECT_EQ(result.process().state(), v1::STATE_RUNNING);
    }
  }
}

TEST_F(AuthWorkerKeyTest, WorkerKeyCannotOpenASession) {
  KeyedWorker p1 = StartKeyedWorker(admin_);
  std::unique_ptr<Client> as_p1 = ConnectWith(daemon_.address(), p1.credentials);
  ASSERT_NE(as_p1, nullptr);
  absl::StatusOr<std::unique_ptr<Session>> session = as_p1->OpenSession();
  EXPECT_TRUE(absl::IsFailedPrecondition(session.status())) << session.status();
}

TEST_F(AuthWorkerKeyTest, ItsKeyIsNotAnotherWorkersKey) {
  KeyedWorker p1 = StartKeyedWorker(admin_);
  KeyedWorker p2 = StartKeyedWorker(admin_);
  // P1's key presented as P2's.
  Credentials forged = p1.credentials;
  forged.key_id = p2.credentials.key_id;
  std::unique_ptr<Client> client = ConnectWith(daemon_.address(), forged);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Process> status = client->Status(p2.record.id());
  EXPECT_TRUE(absl::IsUnauthenticated(status.status())) << status.status();
  // And a worker key is not an admin key.
  Credentials as_admin = p1.credentials;
  as_admin.key_id = kAdminKeyId;
  std::unique_ptr<Client> admin_claim = ConnectWith(daemon_.address(), as_admin);
  ASSERT_NE(admin_claim, nullptr);
  EXPECT_TRUE(absl::IsUnauthenticated(admin_claim->List({}).status()));
}

TEST_F(AuthWorkerKeyTest, CliInsideAWorkerSeesOnlyItsSubtree) {
  v1::Process other = StartOk(admin_, {"/bin/sleep", "100"});
  v1::StartRequest request;
  request.set_target("/bin/sh");
  request.add_args("-c");
  // Only the worker's own environment may choose the key.
  request.add_args(
      absl::StrCat("unset PROCTOR_AUTHKEY_FILE; exec ", PROCTOR_CLI_PATH, " --json ps --all"));
  absl::StatusOr<v1::Process> inside = admin_.Start(request);
  ASSERT_TRUE(inside.ok()) << inside.status();
  v1::Process ended = JoinOk(admin_, inside->id());
  v1::LogsRequest err;
  err.set_id(inside->id());
  err.set_stream(v1::STREAM_STDERR);
  std::string stderr_text;
  ASSERT_TRUE(admin_.Logs(err, [&](std::string_view c) { stderr_text.append(c); }).ok());
  EXPECT_EQ(ended.exitcode(), 0) << stderr_text;
  std::string json = LogsOf(admin_, inside->id());
  EXPECT_THAT(JsonIds(json), UnorderedElementsAre(inside->id())) << json;
  EXPECT_THAT(json, Not(HasSubstr(absl::StrCat("\"id\":", other.id(), ","))));
}

// ------------------------------------------------------------------------------------------
// One key's flood

// The daemon's resident memory, in KiB.
int64_t RssKib(pid_t pid) {
  for (absl::string_view line :
       absl::StrSplit(ReadFile(absl::StrCat("/proc/", pid, "/status")), '\n')) {
    int64_t kib = 0;
    if (absl::ConsumePrefix(&line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kib)) {
      return kib;
    }
  }
  ADD_FAILURE() << "no VmRSS for " << pid;
  return 0;
}

// The latency of each of `calls`, spaced by `pause`; every one must succeed.
std::vector<absl::Duration> TimedStatusCalls(Client& client, uint64_t id, absl::Duration span,
                                             absl::Duration pause) {
  std::vector<absl::Duration> latencies;
  absl::Time end = absl::Now() + span;
  while (absl::Now() < end) {
    absl::Time start = absl::Now();
    absl::StatusOr<v1::Process> status = client.Status(id);
    latencies.push_back(absl::Now() - start);
    EXPECT_TRUE(status.ok()) << "call " << latencies.size() << ": " << status.status();
    absl::SleepFor(pause);
  }
  std::sort(latencies.begin(), latencies.end());
  return latencies;
}

absl::Duration Percentile(const std::vector<absl::Duration>& sorted, double p) {
  return sorted.empty() ? absl::ZeroDuration()
                        : sorted[static_cast<size_t>(p * (sorted.size() - 1))];
}

// Reported: a worker's key flooding valid calls filled a replay cache shared by every key, and
// for minutes after, every caller, the admin included, got RESOURCE_EXHAUSTED while the
// daemon's memory grew fourfold. Now the flood is refused to that key alone (for its rate),
// and the admin's calls keep succeeding with their normal latency meanwhile.
TEST_F(AuthWorkerKeyTest, AFloodFromAWorkerKeyLeavesTheAdminServed) {
  constexpr int kFloodThreads = 4;
  KeyedWorker worker = StartKeyedWorker(admin_);
  ASSERT_FALSE(worker.credentials.key.empty());
  const uint64_t id = worker.record.id();
  const std::vector<absl::Duration> before =
      TimedStatusCalls(admin_, id, absl::Seconds(1), absl::Milliseconds(5));
  const int64_t rss_before = RssKib(daemon_.pid());

  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0};
  std::atomic<int> over_rate{0};
  absl::Mutex mu;
  std::vector<std::string> unexpected;  // guarded by mu
  std::string rate_message;             // guarded by mu
  std::vector<std::thread> flood;
  for (int t = 0; t < kFloodThreads; ++t) {
    flood.emplace_back([&] {
      std::unique_ptr<Client> as_worker = ConnectWith(daemon_.address(), worker.credentials);
      if (as_worker == nullptr) return;
      while (!stop.load()) {
        absl::Status status = as_worker->Status(id).status();
        if (status.ok()) {
          ++accepted;
        } else if (absl::IsResourceExhausted(status)) {
          ++over_rate;
          absl::MutexLock lock(&mu);
          rate_message = std::string(status.message());
        } else {
          absl::MutexLock lock(&mu);
          unexpected.push_back(status.ToString());
        }
      }
    });
  }
  const absl::Duration flood_time = absl::Seconds(3);
  const std::vector<absl::Duration> during =
      TimedStatusCalls(admin_, id, flood_time, absl::Milliseconds(5));
  stop = true;
  for (std::thread& thread : flood) thread.join();
  const int64_t rss_after = RssKib(daemon_.pid());

  std::cout << "worker flood: " << accepted << " accepted, " << over_rate
            << " refused for the rate\n"
            << "admin Status before: p50 " << Percentile(before, 0.5) << ", p99 "
            << Percentile(before, 0.99) << ", max " << before.back() << " (" << before.size()
            << " calls)\n"
            << "admin Status during: p50 " << Percentile(during, 0.5) << ", p99 "
            << Percentile(during, 0.99) << ", max " << during.back() << " (" << during.size()
            << " calls)\n"
            << "daemon RSS: " << rss_before / 1024 << " MiB before, " << rss_after / 1024
            << " MiB after\n";
  absl::MutexLock lock(&mu);
  EXPECT_THAT(unexpected, ::testing::IsEmpty());
  // The worker's key got its budget (a burst of 1000, then 500 a second), and no more.
  EXPECT_GT(over_rate, 0) << "the flood never went over the worker key's rate";
  EXPECT_THAT(rate_message, HasSubstr(absl::StrCat("the key of process ", id,
                                                   " made more than 500 calls a second")));
  EXPECT_LE(accepted, 1000 + 500 * absl::ToDoubleSeconds(flood_time + absl::Seconds(1)));
  // The admin was served throughout, at its usual pace: nothing waited on the flood.
  ASSERT_GE(during.size(), 10u);
  EXPECT_LT(Percentile(during, 0.5),
            std::max(10 * Percentile(before, 0.5), absl::Milliseconds(20)));
  EXPECT_LT(during.back(), absl::Milliseconds(500));
  EXPECT_LT(rss_after - rss_before, kRssGrowthLimitKib) << "KiB";
  // And the flooding key itself is served again once it slows down.
  absl::SleepFor(absl::Seconds(1));
  std::unique_ptr<Client> as_worker = ConnectWith(daemon_.address(), worker.credentials);
  ASSERT_NE(as_worker, nullptr);
  EXPECT_TRUE(as_worker->Status(id).ok());
}

// ------------------------------------------------------------------------------------------
// Secrets

TEST(AuthTest, KeysNeverShow) {
  TestDaemon daemon({"--shutdown-grace", "1"});
  Client& admin = daemon.client();
  std::string admin_key = ReadKey(daemon.authkey_path());
  KeyedWorker worker = StartKeyedWorker(admin);
  ASSERT_FALSE(worker.credentials.key.empty());
  std::unique_ptr<Client> as_worker = ConnectWith(daemon.address(), worker.credentials);
  ASSERT_NE(as_worker, nullptr);
  v1::Process child = StartOk(*as_worker, {"/bin/sleep", "100"});
  // A child given a key of its own, in the request.
  std::string given_key = RandomBytes(kAuthkeyBytes);
  v1::StartRequest request;
  request.set_target("/bin/sleep");
  request.add_args("100");
  request.set_authkey(given_key);
  absl::StatusOr<v1::Process> keyed = admin.Start(request);
  ASSERT_TRUE(keyed.ok()) << keyed.status();
  // Failed attempts, with a wrong key and with the admin key under a worker's id.
  std::string wrong_key = RandomBytes(kAuthkeyBytes);
  std::unique_ptr<Client> wrong = ConnectWith(daemon.address(), AdminCredentials(wrong_key));
  ASSERT_NE(wrong, nullptr);
  EXPECT_FALSE(wrong->List({}).ok());
  std::unique_ptr<Client> mislabelled = ConnectWith(
      daemon.address(),
      Credentials{.key = admin_key, .key_id = worker.credentials.key_id, .source = "test"});
  ASSERT_NE(mislabelled, nullptr);
  EXPECT_FALSE(mislabelled->List({}).ok());
  CommandResult cli = daemon.Cli({"--json", "ps", "--all"});
  EXPECT_EQ(cli.status, 0) << cli.err;

  const std::vector<std::string> keys = {admin_key, worker.credentials.key, given_key, wrong_key};
  std::vector<std::string> cmdlines = AllCommandLines();
  ASSERT_FALSE(cmdlines.empty());
  for (const std::string& key : keys) {
    for (const std::string& cmdline : cmdlines) ExpectNoKey(cmdline, key, "a command line");
    ExpectNoKey(daemon.Log(), key, "the daemon's log");
    ExpectNoKey(cli.out + cli.err, key, "the CLI's output");
  }
  absl::StatusOr<std::vector<v1::Process>> records = admin.List({});
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 3u);
  for (const v1::Process& record : *records) {
    for (const std::string& key : keys) {
      ExpectNoKey(record.DebugString(), key, "a process record");
      ExpectNoKey(record.SerializeAsString(), key, "a serialized process record");
    }
  }
  // Failures are logged, without what was tried.
  EXPECT_THAT(daemon.Log(), HasSubstr("refused"));
  KillAll(admin);
}

// ------------------------------------------------------------------------------------------
// Guessing

TEST(AuthTest, RepeatedFailuresAreSlowedDown) {
  TestDaemon daemon;
  std::unique_ptr<Client> wrong =
      ConnectWith(daemon.address(), AdminCredentials(RandomBytes(kAuthkeyBytes)));
  ASSERT_NE(wrong, nullptr);
  absl::Status status;
  auto timed_failure = [&] {
    absl::Time start = absl::Now();
    status = wrong->List({}).status();
    EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;
    return absl::Now() - start;
  };
  absl::Duration first = timed_failure();
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("held back")));
  for (int i = 0; i < 5; ++i) timed_failure();
  absl::Duration later = timed_failure();
  // A refusal that was held back says for how long.
  EXPECT_THAT(std::string(status.message()),
              ::testing::ContainsRegex("this answer was held back [0-9.]+m?s"));
  EXPECT_GE(later, absl::Milliseconds(100));
  EXPECT_GE(later - first, absl::Milliseconds(100))
      << "first " << first << ", after five failures " << later;
  // The right key is not held back.
  absl::Time start = absl::Now();
  ASSERT_TRUE(daemon.client().List({}).ok());
  EXPECT_LT(absl::Now() - start, later);
}

// ------------------------------------------------------------------------------------------
// TCP and TLS

class AuthTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CommandResult made =
        RunCommand({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key_,
                    "-out", cert_, "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"});
    ASSERT_EQ(made.status, 0) << made.err;
  }

  TempDir dir_;
  std::string cert_ = dir_.path() + "/cert.pem";
  std::string key_ = dir_.path() + "/key.pem";
  int port_ = FreePort();
};

TEST_F(AuthTlsTest, TlsListenerServesTheRightKey) {
  std::string tcp = absl::StrCat("127.0.0.1:", port_);
  TestDaemon daemon({"--listen", tcp, "--tls-cert", cert_, "--tls-key", key_});
  WaitUntilListening(daemon);
  std::string admin_key = ReadKey(daemon.authkey_path());
  std::unique_ptr<Client> tls =
      ConnectWith(tcp, AdminCredentials(admin_key), ClientOptions{.tls_ca_file = cert_});
  ASSERT_NE(tls, nullptr);
  ExpectStartAndJoinWork(*tls);

  std::unique_ptr<Client> plain =
      ConnectWith(tcp, AdminCredentials(admin_key), ClientOptions{.insecure_tcp = true});
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->List({}).ok());

  std::unique_ptr<Client> wrong_key = ConnectWith(tcp, AdminCredentials(RandomBytes(kAuthkeyBytes)),
                                                  ClientOptions{.tls_ca_file = cert_});
  ASSERT_NE(wrong_key, nullptr);
  EXPECT_TRUE(absl::IsUnauthenticated(wrong_key->List({}).status()));
}

TEST_F(AuthTlsTest, PlainTcpNeedsToBeAskedFor) {
  TempDir dir;
  std::string tcp = absl::StrCat("127.0.0.1:", port_);
  CommandResult refused = RunProctord({"--listen", tcp, "--state-dir", dir.path() + "/state"});
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.status, 124) << "proctord listened on plain TCP without --insecure-tcp";
  EXPECT_THAT(refused.err, HasSubstr("--tls-cert"));

  TestDaemon daemon({"--listen", tcp, "--insecure-tcp"});
  WaitUntilListening(daemon);
  EXPECT_THAT(daemon.Log(), HasSubstr("without TLS"));
  std::unique_ptr<Client> plain = ConnectWith(tcp, AdminCredentials(ReadKey(daemon.authkey_path())),
                                              ClientOptions{.insecure_tcp = true});
  ASSERT_NE(plain, nullptr);
  ExpectStartAndJoinWork(*plain);
}

// ------------------------------------------------------------------------------------------
// Interoperability: a client written from the README alone, in Python.

TEST(AuthInteropTest, PythonClientSpeaksTheScheme) {
  if (access(PYTHON_STUBS_DIR "/proctor/v1/proctor_pb2_grpc.py", R_OK) != 0) {
    GTEST_SKIP() << "no Python stubs in " PYTHON_STUBS_DIR
                    " (needs protobuf-compiler-grpc's grpc_python_plugin)";
  }
  CommandResult probe = RunCommand({PYTHON3_PATH, "-c", "import grpc, google.protobuf"});
  if (probe.status != 0) {
    GTEST_SKIP() << PYTHON3_PATH " cannot import grpc (needs python3-grpcio, python3-protobuf)";
  }
  TestDaemon daemon;
  CommandResult result = RunCommand(
      {PYTHON3_PATH, INTEROP_SCRIPT, daemon.address(), daemon.authkey_path(), PYTHON_STUBS_DIR});
  EXPECT_EQ(result.status, 0) << result.out << result.err;
  EXPECT_EQ(result.out,
            "started Process-1\nexitcode 0\nhello\n"
            "NOT_FOUND proved\n"
            "UNAUTHENTICATED proved (clock skew)\n"
            "UNAUTHENTICATED unproved (unknown key id)\n"
            "Logs proved before its first message\n"
            "Watch proved before its first message\n"
            "Session proved before its first message\n"
            "session opened\n"
            "session ended OK\n")
      << result.err;
  // And a key it does not hold is refused, in Python too.
  std::string wrong = daemon.dir() + "/wrong.key";
  WriteKey(wrong, RandomBytes(kAuthkeyBytes));
  CommandResult refused =
      RunCommand({PYTHON3_PATH, INTEROP_SCRIPT, daemon.address(), wrong, PYTHON_STUBS_DIR});
  EXPECT_NE(refused.status, 0);
  EXPECT_THAT(refused.err, HasSubstr("UNAUTHENTICATED"));
}

}  // namespace
}  // namespace proctor::testing
