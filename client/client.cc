#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/default_paths.h"
#include "common/environment_names.h"

namespace proctor {
namespace {

std::string ResolveAddress(const std::string& given) {
  std::string address = given;
  if (address.empty()) {
    const char* env = std::getenv(kAddressEnv);
    address = env != nullptr && env[0] != '\0' ? std::string(env) : DefaultAddress();
  }
  // gRPC would read a bare path as a host name; a path can only mean a Unix socket.
  if (address.front() == '/') address = absl::StrCat("unix:", address);
  return address;
}

// Negative durations go through as they are: the daemon says what is wrong with them.
google::protobuf::Duration ToProto(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
  return out;
}

std::string FileOrEnv(const std::string& given, const char* env) {
  if (!given.empty()) return given;
  const char* value = std::getenv(env);
  return value == nullptr ? "" : value;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options, const std::string& address) {
  if (absl::StartsWith(address, "unix:") || options.insecure_tcp) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  struct {
    std::string path;
    std::string* into;
  } files[] = {
      {FileOrEnv(options.tls_ca_file, kTlsCaEnv), &ssl.pem_root_certs},
      {FileOrEnv(options.tls_cert_file, kTlsCertEnv), &ssl.pem_cert_chain},
      {FileOrEnv(options.tls_key_file, kTlsKeyEnv), &ssl.pem_private_key},
  };
  for (auto& file : files) {
    if (file.path.empty()) continue;
    *file.into = ReadWholeFile(file.path);
    if (file.into->empty()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read TLS file ", file.path));
    }
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  std::string address = ResolveAddress(options.address);
  if (address.empty() || address == "unix:") {
    return absl::InvalidArgumentError("empty proctord address");
  }
  absl::StatusOr<Credentials> credentials =
      options.credentials.has_value() ? *options.credentials
                                      : FindCredentials(options.authkey_file);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel_credentials =
      ChannelCredentials(options, address);
  if (!channel_credentials.ok()) return channel_credentials.status();
  grpc::ChannelArguments args;
  // A connection of its own per Client: the daemon may tie state (a session) to a connection,
  // and independent Clients should not queue behind each other on one shared transport.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, *channel_credentials, args);
  return std::unique_ptr<Client>(new Client(std::move(address), std::move(channel),
                                            CallAuth(*std::move(credentials))));
}

Client::Client(std::string address, std::shared_ptr<grpc::Channel> channel, CallAuth auth)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(v1::Proctor::NewStub(channel_)),
      auth_(std::move(auth)) {}

std::unique_ptr<grpc::ClientContext> Client::NewContext(absl::string_view method,
                                                        std::string* nonce) const {
  // No deadline: a Join or a followed Logs stream may rightly last as long as the process.
  auto context = std::make_unique<grpc::ClientContext>();
  *nonce = auth_.Sign(*context, method);
  return context;
}

absl::Status Client::Finish(const grpc::ClientContext& context, absl::string_view method,
                            absl::string_view nonce, const grpc::Status& status) const {
  absl::Status checked = auth_.CheckReply(context, method, nonce, status, address_);
  if (absl::IsUnavailable(checked)) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach proctord at ", address_, ": ", checked.message()));
  }
  return checked;
}

absl::StatusOr<v1::Process> Client::Start(const v1::StartRequest& request) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Start", &nonce);
  v1::Process process;
  grpc::Status status = stub_->Start(context.get(), request, &process);
  if (absl::Status s = Finish(*context, "Start", nonce, status); !s.ok()) return s;
  return process;
}

absl::StatusOr<v1::Process> Client::Join(uint64_t id, std::optional<absl::Duration> timeout) {
  v1::JoinRequest request;
  request.set_id(id);
  // The timeout travels in the request and the daemon answers when it passes; a client-side
  // deadline would only turn that answer into DEADLINE_EXCEEDED.
  if (timeout.has_value() && *timeout != absl::InfiniteDuration()) {
    *request.mutable_timeout() = ToProto(*timeout);
  }
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Join", &nonce);
  v1::Process process;
  grpc::Status status = stub_->Join(context.get(), request, &process);
  if (absl::Status s = Finish(*context, "Join", nonce, status); !s.ok()) return s;
  return process;
}

absl::StatusOr<v1::Process> Client::Terminate(const v1::TerminateRequest& request) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Terminate", &nonce);
  v1::Process process;
  grpc::Status status = stub_->Terminate(context.get(), request, &process);
  if (absl::Status s = Finish(*context, "Terminate", nonce, status); !s.ok()) return s;
  return process;
}

absl::StatusOr<v1::Process> Client::Status(uint64_t id) {
  v1::StatusRequest request;
  request.set_id(id);
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Status", &nonce);
  v1::StatusResponse response;
  grpc::Status status = stub_->Status(context.get(), request, &response);
  if (absl::Status s = Finish(*context, "Status", nonce, status); !s.ok()) return s;
  if (response.processes_size() != 1) {
    return absl::NotFoundError(absl::StrCat("no process with id ", id));
  }
  return std::move(*response.mutable_processes(0));
}

absl::StatusOr<std::vector<v1::Process>> Client::List(const v1::StatusRequest& filter) {
  v1::StatusRequest request = filter;
  request.clear_id();
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Status", &nonce);
  v1::StatusResponse response;
  grpc::Status status = stub_->Status(context.get(), request, &response);
  if (absl::Status s = Finish(*context, "Status", nonce, status); !s.ok()) return s;
  std::vector<v1::Process> processes;
  processes.reserve(response.processes_size());
  for (v1::Process& process : *response.mutable_processes()) {
    processes.push_back(std::move(process));
  }
  return processes;
}

absl::Status Client::Logs(const v1::LogsRequest& request,
                          const std::function<void(std::string_view)>& sink) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Logs", &nonce);
  std::unique_ptr<grpc::ClientReader<v1::LogChunk>> reader = stub_->Logs(context.get(), request);
  // Nothing reaches the sink before the daemon has proved itself in the reply's headers.
  reader->WaitForInitialMetadata();
  bool trusted = Finish(*context, "Logs", nonce, grpc::Status::OK).ok();
  v1::LogChunk chunk;
  while (trusted && reader->Read(&chunk)) {
    if (!chunk.data().empty()) sink(chunk.data());
  }
  if (!trusted) {
    // No proof in the headers: either an error reply (whose proof is in the trailers) or an
    // impostor streaming, which is stopped rather than waited out.
    context->TryCancel();
    grpc::Status status = reader->Finish();
    if (status.error_code() == grpc::StatusCode::CANCELLED) status = grpc::Status::OK;
    return Finish(*context, "Logs", nonce, status);
  }
  return Finish(*context, "Logs", nonce, reader->Finish());
}

absl::Status Client::Release(uint64_t id) {
  v1::ReleaseRequest request;
  request.set_id(id);
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext("Release", &nonce);
  v1::ReleaseResponse response;
  grpc::Status status = stub_->Release(context.get(), request, &response);
  return Finish(*context, "Release", nonce, status);
}

absl::StatusOr<std::unique_ptr<Session>> Client::OpenSession(absl::Duration ttl) {
  std::unique_ptr<Session> session(new Session());
  std::string nonce;
  session->context_ = NewContext("Session", &nonce);
  session->stream_ = stub_->Session(session->context_.get());
  v1::SessionRequest open;
  *open.mutable_ttl() = ToProto(ttl);
  v1::SessionEvent opened;
  if (!session->stream_->Write(open) || !session->stream_->Read(&opened)) {
    session->stream_->WritesDone();
    grpc::Status status = session->stream_->Finish();
    absl::Status s = Finish(*session->context_, "Session", nonce, status);
    session->stream_.reset();
    return s.ok() ? absl::UnavailableError("proctord closed the session at once") : s;
  }
  if (absl::Status s = Finish(*session->context_, "Session", nonce, grpc::Status::OK);
      !s.ok()) {
    session->context_->TryCancel();
    session->stream_->Finish();
    session->stream_.reset();
    return s;
  }
  session->id_ = opened.session();
  session->keep_alive_ = std::thread([s = session.get(), every = ttl / 3] { s->KeepAlive(every); });
  return session;
}

void Session::KeepAlive(absl::Duration every) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    // Wakes early when the session is being closed.
    mu_.AwaitWithTimeout(absl::Condition(&closing_), every);
    if (closing_) return;
    if (!stream_->Write(v1::SessionRequest{})) return;
  }
}

Session::~Session() {
  if (stream_ == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  if (keep_alive_.joinable()) keep_alive_.join();
  stream_->WritesDone();
  stream_->Finish();
}

}  // namespace proctor
