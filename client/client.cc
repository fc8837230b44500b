#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
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

// A call's own deadline passing: the message names the call and how long it had.
absl::Status DidNotAnswer(absl::string_view method, absl::Duration timeout) {
  return absl::DeadlineExceededError(
      absl::StrCat(method, " did not answer within ",
                   absl::FormatDuration(absl::Trunc(timeout, absl::Milliseconds(1)))));
}

// A deadline for one step of a stream, which as a whole has none: cancels the call unless
// the step is over (the object destroyed) within `limit`. An infinite limit does nothing.
class StepDeadline {
 public:
  StepDeadline(grpc::ClientContext& context, absl::Duration limit) {
    if (limit == absl::InfiniteDuration()) return;
    watcher_ = std::thread([this, &context, limit] {
      absl::MutexLock lock(&mu_);
      if (!mu_.AwaitWithTimeout(absl::Condition(&over_), limit)) {
        passed_ = true;
        context.TryCancel();
      }
    });
  }
  ~StepDeadline() {
    {
      absl::MutexLock lock(&mu_);
      over_ = true;
    }
    if (watcher_.joinable()) watcher_.join();
  }
  StepDeadline(const StepDeadline&) = delete;
  StepDeadline& operator=(const StepDeadline&) = delete;

  // Whether the limit passed and the call was cancelled.
  bool passed() {
    absl::MutexLock lock(&mu_);
    return passed_;
  }

 private:
  absl::Mutex mu_;
  bool over_ ABSL_GUARDED_BY(mu_) = false;
  bool passed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watcher_;
};

// A Run call seen from the calling thread: gRPC's callbacks record what happened, and the
// caller waits for it (Await) and acts on it, so that the caller's callbacks run on its own
// thread, in order, with no thread of our own. A hold keeps OnDone back until the caller has
// stopped reading (ReadsOver), so a read is never started on a finished call.
class RunCall final : public grpc::ClientReadReactor<v1::RunEvent> {
 public:
  // What Await saw; `kNothing` when `deadline` came first.
  enum class Woke { kNothing, kHeaders, kEvent, kProbe, kDone };

  void Begin() {
    AddHold();
    StartRead(&incoming_);
    StartCall();
  }
  // Hands over the event that arrived and reads the next one.
  v1::RunEvent TakeEvent() {
    v1::RunEvent event;
    {
      absl::MutexLock lock(&mu_);
      has_event_ = false;
      event = std::move(incoming_);
      incoming_.Clear();
    }
    StartRead(&incoming_);
    return event;
  }
  // Once a read has failed: no more are started.
  void ReadsOver() { RemoveHold(); }

  // Waits until something the caller has not seen yet: the headers (first of all), an event,
  // a probe's answer, the end of the call (only once the reads are over).
  Woke Await(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    // An event is passed on only after the headers, which carry the daemon's proof.
    auto something = [this] {
      mu_.AssertHeld();  // Await evaluates a condition with the lock held
      return (headers_ && !headers_seen_) || (has_event_ && headers_) || read_failed_ ||
             probe_answered_ || done_;
    };
    mu_.AwaitWithDeadline(absl::Condition(&something), deadline);
    if (headers_ && !headers_seen_) {
      headers_seen_ = true;
      return Woke::kHeaders;
    }
    if (has_event_ && headers_) return Woke::kEvent;
    if (probe_answered_) {
      probe_answered_ = false;
      return Woke::kProbe;
    }
    if (read_failed_ && !reads_over_) {
      reads_over_ = true;
      return Woke::kDone;  // the caller ends its reads; Finished() then waits for OnDone
    }
    return done_ ? Woke::kDone : Woke::kNothing;
  }
  // Whether the headers came (false: the call ended without any, trailers only).
  bool headers_ok() {
    absl::MutexLock lock(&mu_);
    return headers_ok_;
  }
  // Waits for the end of the call; its status.
  grpc::Status Finished() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }
  // Waits for the probe in flight to be answered.
  void AwaitProbe() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&probe_answered_));
    probe_answered_ = false;
  }
  // For a probe's callback.
  void ProbeAnswered(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    probe_answered_ = true;
    probe_status_ = status;
  }
  grpc::Status probe_status() {
    absl::MutexLock lock(&mu_);
    return probe_status_;
  }

  void OnReadInitialMetadataDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    headers_ = true;
    headers_ok_ = ok;
  }
  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    (ok ? has_event_ : read_failed_) = true;
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  absl::Mutex mu_;
  v1::RunEvent incoming_;  // written by gRPC while a read is in flight
  bool headers_ ABSL_GUARDED_BY(mu_) = false;
  bool headers_ok_ ABSL_GUARDED_BY(mu_) = false;
  bool headers_seen_ ABSL_GUARDED_BY(mu_) = false;
  bool has_event_ ABSL_GUARDED_BY(mu_) = false;
  bool read_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_over_ ABSL_GUARDED_BY(mu_) = false;
  bool probe_answered_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status probe_status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};


// How Join and JoinEach ask after one process: in polls of at most the call timeout each, so
// that a daemon that stops answering is noticed; the daemon answers a poll at its timeout
// with the still-running record, and the poll's deadline gives it one call timeout more for
// that. No timeout (or an infinite one) is one poll, as long as it takes; a negative one goes
// through as it is, once, for the daemon to refuse.
class JoinPolls {
 public:
  struct Poll {
    std::optional<absl::Duration> timeout;  // the request's; none: as long as it takes
    absl::Duration limit;                   // for its answer: its timeout and a call timeout
    bool last;                              // a still-running answer is the answer
  };

  // The wait is counted from `start`.
  JoinPolls(std::optional<absl::Duration> timeout, absl::Duration call_timeout, absl::Time start)
      : forever_(!timeout.has_value() || *timeout == absl::InfiniteDuration()),
        refused_(!forever_ && *timeout < absl::ZeroDuration()),
        timeout_(timeout.value_or(absl::InfiniteDuration())),
        end_(forever_ ? absl::InfiniteFuture() : start + timeout_),
        call_timeout_(call_timeout) {}

  // The poll to send at `now`.
  Poll Next(absl::Time now) const {
    const absl::Duration left = forever_ ? absl::InfiniteDuration() : end_ - now;
    const absl::Duration poll =
        refused_ ? timeout_ : std::clamp(left, absl::ZeroDuration(), call_timeout_);
    Poll next{.limit = std::max(poll, absl::ZeroDuration()) + call_timeout_,
              .last = refused_ || poll == absl::InfiniteDuration() || left <= call_timeout_};
    if (poll != absl::InfiniteDuration()) next.timeout = poll;
    return next;
  }

 private:
  const bool forever_;
  const bool refused_;
  const absl::Duration timeout_;
  const absl::Time end_;
  const absl::Duration call_timeout_;
};

}  // namespace

google::protobuf::Duration DurationToProto(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  std::string address = ResolveAddress(options.address);
  if (address.empty() || address == "unix:") {
    return absl::InvalidArgumentError("empty proctord address");
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the call timeout must be positive, not ", absl::FormatDuration(options.call_timeout)));
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
  // A restarted proctord is back within a second or two; gRPC's default reconnect backoff
  // (1 s growing to 120 s) would keep failing calls long after it is.
  // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left alone: it is also how long a connection
  // attempt may take, and a busy daemon needs more than a fraction of a second.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A listing of every record is one reply, beyond gRPC's default 4 MiB on a busy daemon
  // (10,000 records of ~0.4 KiB, or a few with long arguments).
  args.SetMaxReceiveMessageSize(kMaxReplyBytes);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, *channel_credentials, args);
  return std::unique_ptr<Client>(new Client(std::move(address), std::move(channel),
                                            CallAuth(*std::move(credentials)),
                                            options.call_timeout));
}

Client::Client(std::string address, std::shared_ptr<grpc::Channel> channel, CallAuth auth,
               absl::Duration call_timeout)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(v1::Proctor::NewStub(channel_)),
      auth_(std::move(auth)),
      call_timeout_(call_timeout) {}

std::unique_ptr<grpc::ClientContext> Client::NewContext(absl::string_view method,
                                                        std::string* nonce,
                                                        absl::Duration timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  *nonce = auth_.Sign(*context, method);
  return context;
}

absl::Status Client::Finish(const grpc::ClientContext& context, absl::string_view method,
                            absl::string_view nonce, const grpc::Status& status,
                            absl::Duration timeout) const {
  absl::Status checked = auth_.CheckReply(context, method, nonce, status, address_);
  if (absl::IsUnavailable(checked)) {
    // A call that fails at once for want of a connection polls nothing, and neither does the
    // caller between calls: the connection the channel is making to a proctord that is back
    // would wait for gRPC's backup poller (every 5 s) to take each step of its handshake.
    // Driving it here for a moment lets the next call find it made.
    channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + kReconnectDrive));
    return absl::UnavailableError(
        absl::StrCat("cannot reach proctord at ", address_, ": ", checked.message()));
  }
  // Ours only once our deadline has passed: the daemon has DEADLINE_EXCEEDED of its own.
  if (absl::IsDeadlineExceeded(checked) && timeout != absl::InfiniteDuration() &&
      absl::FromChrono(context.deadline()) <= absl::Now()) {
    return DidNotAnswer(method, timeout);
  }
  return checked;
}

template <typename Request, typename Response>
absl::Status Client::Unary(absl::string_view method,
                           grpc::Status (v1::Proctor::Stub::*rpc)(grpc::ClientContext*,
                                                                  const Request&, Response*),
                           const Request& request, Response* response, absl::Duration timeout) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext(method, &nonce, timeout);
  grpc::Status status = (stub_.get()->*rpc)(context.get(), request, response);
  return Finish(*context, method, nonce, status, timeout);
}

absl::Duration Client::StartTimeout(const v1::StartRequest& request) const {
  // A Start that waits for readiness may take its ready timeout (90 s unless it says),
  // and the daemon then answers DEADLINE_EXCEEDED itself; the call has one timeout more.
  absl::Duration timeout = call_timeout_;
  if (request.wait_ready()) {
    timeout += request.has_ready_timeout()
                   ? absl::Seconds(request.ready_timeout().seconds()) +
                         absl::Nanoseconds(request.ready_timeout().nanos())
                   : absl::Seconds(90);
  }
  return timeout;
}

absl::StatusOr<v1::Process> Client::Start(const v1::StartRequest& request) {
  v1::Process process;
  if (absl::Status s = Unary("Start", &v1::Proctor::Stub::Start, request, &process,
                             StartTimeout(request));
      !s.ok()) {
    return s;
  }
  return process;
}

absl::StatusOr<v1::Process> Client::Join(uint64_t id, std::optional<absl::Duration> timeout) {
  const absl::Time start = absl::Now();
  const JoinPolls polls(timeout, call_timeout_, start);
  v1::JoinRequest request;
  request.set_id(id);
  for (absl::Time now = start;; now = absl::Now()) {
    const JoinPolls::Poll poll = polls.Next(now);
    if (poll.timeout.has_value()) {
      *request.mutable_timeout() = DurationToProto(*poll.timeout);
    } else {
      request.clear_timeout();  // no call timeout either: one call, as long as it takes
    }
    v1::Process process;
    if (absl::Status s =
            Unary("Join", &v1::Proctor::Stub::Join, request, &process, poll.limit);
        !s.ok()) {
      return s;
    }
    if (process.state() != v1::STATE_RUNNING || poll.last) return process;
  }
}

absl::Status Client::JoinEach(
    const std::vector<uint64_t>& ids, std::optional<absl::Duration> timeout,
    const std::function<void(size_t, absl::StatusOr<v1::Process>)>& sink, std::stop_token stop) {
  if (ids.empty()) return absl::OkStatus();
  const JoinPolls plan(timeout, call_timeout_, absl::Now());
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context =
      NewContext("Joins", &nonce, absl::InfiniteDuration());
  std::stop_callback cancel(stop, [&context] { context->TryCancel(); });
  std::unique_ptr<grpc::ClientReaderWriter<v1::JoinRequest, v1::JoinResult>> stream;
  bool late = false;
  {
    StepDeadline sending(*context, call_timeout_);
    stream = stub_->Joins(context.get());
    late = sending.passed();
  }
  if (late) {
    stream->Finish();
    return DidNotAnswer("Joins", call_timeout_);
  }
  // Nothing reaches the caller before the daemon has proved itself in the reply's headers,
  // which come at once from a daemon that answers.
  {
    StepDeadline proving(*context, call_timeout_);
    stream->WaitForInitialMetadata();
    late = proving.passed();
  }
  if (late) {
    stream->Finish();
    return DidNotAnswer("Joins", call_timeout_);
  }
  if (!Finish(*context, "Joins", nonce, grpc::Status::OK).ok()) {
    context->TryCancel();
    grpc::Status status = stream->Finish();
    if (status.error_code() == grpc::StatusCode::CANCELLED && !stop.stop_requested()) {
      status = grpc::Status::OK;  // the proof that is missing is the error
    }
    return Finish(*context, "Joins", nonce, status);
  }

  // The calling thread reads and answers; a writer sends each poll (the first ones, and one
  // again for every process still running at its poll's end) and, between them, watches that
  // the oldest poll is answered in time. Polls are due in the order they were sent.
  struct Sent {
    size_t index;
    absl::Time due;
    JoinPolls::Poll poll;
  };
  absl::Mutex mu;
  std::deque<size_t> unsent;  // indices into `ids`
  std::map<uint64_t, Sent> polls;  // by request number: the stream's order
  bool reading_over = false;
  bool quiet = false;
  absl::Duration quiet_limit;
  for (size_t i = 0; i < ids.size(); ++i) unsent.push_back(i);
  // The writer waits for a poll to send, or for the oldest one's due time.
  struct Wake {
    const bool* reading_over;
    const std::deque<size_t>* unsent;
    static bool Ready(Wake* wake) { return *wake->reading_over || !wake->unsent->empty(); }
  } wake{&reading_over, &unsent};
  std::thread writer([&] {
    uint64_t written = 0;
    for (;;) {
      v1::JoinRequest request;
      {
        absl::MutexLock lock(&mu);
        mu.AwaitWithDeadline(absl::Condition(&Wake::Ready, &wake),
                             polls.empty() ? absl::InfiniteFuture() : polls.begin()->second.due);
        if (reading_over) return;
        if (unsent.empty()) {
          if (!polls.empty() && absl::Now() >= polls.begin()->second.due) {
            quiet = true;
            quiet_limit = polls.begin()->second.poll.limit;
            context->TryCancel();
            return;
          }
          continue;
        }
        const size_t index = unsent.front();
        unsent.pop_front();
        const absl::Time now = absl::Now();
        const JoinPolls::Poll next = plan.Next(now);
        request.set_id(ids[index]);
        if (next.timeout.has_value()) *request.mutable_timeout() = DurationToProto(*next.timeout);
        polls[++written] = Sent{.index = index, .due = now + next.limit, .poll = next};
      }
      if (!stream->Write(request)) return;  // the stream has ended: the reader sees how
    }
  });
  size_t unanswered = ids.size();
  v1::JoinResult result;
  while (unanswered > 0 && stream->Read(&result)) {
    size_t index;
    {
      absl::MutexLock lock(&mu);
      auto it = polls.find(result.request());
      if (it == polls.end()) continue;  // not one of ours: nothing to answer
      index = it->second.index;
      const bool last = it->second.poll.last;
      polls.erase(it);
      if (result.code() == 0 && result.process().state() == v1::STATE_RUNNING && !last) {
        unsent.push_back(index);  // still running, and time is left: ask again
        continue;
      }
    }
    --unanswered;
    if (result.code() != 0) {
      sink(index, absl::Status(static_cast<absl::StatusCode>(result.code()), result.message()));
    } else {
      sink(index, std::move(*result.mutable_process()));
    }
  }
  {
    absl::MutexLock lock(&mu);
    reading_over = true;
  }
  writer.join();
  if (unanswered == 0) stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (unanswered > 0 && quiet) return DidNotAnswer("Joins", quiet_limit);
  if (status.error_code() == grpc::StatusCode::CANCELLED && stop.stop_requested()) {
    return absl::CancelledError("Joins stopped by its caller");
  }
  absl::Status finished = Finish(*context, "Joins", nonce, status);
  if (finished.ok() && unanswered > 0) {
    return absl::InternalError(absl::StrCat("proctord ended the Joins stream with ", unanswered,
                                            " of ", ids.size(), " Joins unanswered"));
  }
  return finished;
}

absl::StatusOr<v1::Process> Client::Terminate(const v1::TerminateRequest& request) {
  v1::Process process;
  if (absl::Status s = Unary("Terminate", &v1::Proctor::Stub::Terminate, request, &process,
                             call_timeout_);
      !s.ok()) {
    return s;
  }
  return process;
}

absl::StatusOr<v1::Process> Client::Status(uint64_t id) {
  v1::StatusRequest request;
  request.set_id(id);
  v1::StatusResponse response;
  if (absl::Status s = Unary("Status", &v1::Proctor::Stub::Status, request, &response,
                             call_timeout_);
      !s.ok()) {
    return s;
  }
  if (response.processes_size() != 1) {
    return absl::NotFoundError(absl::StrCat("no process with id ", id));
  }
  return std::move(*response.mutable_processes(0));
}

absl::StatusOr<std::vector<v1::Process>> Client::List(const v1::StatusRequest& filter,
                                                      uint64_t* cursor) {
  v1::StatusRequest request = filter;
  request.clear_id();
  v1::StatusResponse response;
  if (absl::Status s = Unary("Status", &v1::Proctor::Stub::Status, request, &response,
                             call_timeout_);
      !s.ok()) {
    return s;
  }
  if (cursor != nullptr) *cursor = response.cursor();
  std::vector<v1::Process> processes;
  processes.reserve(response.processes_size());
  for (v1::Process& process : *response.mutable_processes()) {
    processes.push_back(std::move(process));
  }
  return processes;
}

template <typename Request, typename Message>
absl::Status Client::ServerStream(
    absl::string_view method,
    std::unique_ptr<grpc::ClientReader<Message>> (v1::Proctor::Stub::*rpc)(grpc::ClientContext*,
                                                                           const Request&),
    const Request& request, absl::Duration timeout,
    const std::function<bool(const Message&)>& on_message, std::stop_token stop) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = NewContext(method, &nonce, timeout);
  std::stop_callback cancel(stop, [&context] { context->TryCancel(); });
  auto finish = [&](const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::CANCELLED && stop.stop_requested()) {
      return absl::CancelledError(absl::StrCat(method, " stopped by its caller"));
    }
    return Finish(*context, method, nonce, status, timeout);
  };
  const bool endless = timeout == absl::InfiniteDuration();
  std::unique_ptr<grpc::ClientReader<Message>> reader;
  bool late = false;
  {
    // Even an endless stream must be sent within the call timeout: sending waits for a
    // connection, which a daemon that does not answer never completes.
    StepDeadline sending(*context, endless ? call_timeout_ : absl::InfiniteDuration());
    reader = (stub_.get()->*rpc)(context.get(), request);
    late = sending.passed();
  }
  if (late) {
    reader->Finish();
    return DidNotAnswer(method, call_timeout_);
  }
  // Nothing reaches the caller before the daemon has proved itself in the reply's headers.
  reader->WaitForInitialMetadata();
  const bool trusted = Finish(*context, method, nonce, grpc::Status::OK).ok();
  bool wanted = true;
  Message message;
  while (trusted && wanted && reader->Read(&message)) wanted = on_message(message);
  if (!trusted || !wanted) {
    // Without proof in the headers: either an error reply (whose proof is in the trailers)
    // or an impostor streaming, which is stopped rather than waited out. Or the caller has
    // had enough.
    context->TryCancel();
    grpc::Status status = reader->Finish();
    if (status.error_code() == grpc::StatusCode::CANCELLED && !stop.stop_requested()) {
      status = grpc::Status::OK;
    }
    return finish(status);
  }
  return finish(reader->Finish());
}

absl::Status Client::Logs(const v1::LogsRequest& request,
                          const std::function<void(std::string_view)>& sink,
                          std::stop_token stop) {
  // Without follow the answer is what has been captured so far, due within the call timeout
  // like a unary call's; a followed stream lasts as long as the process, so it has no
  // deadline and ends early only when the caller stops it.
  return ServerStream<v1::LogsRequest, v1::LogChunk>(
      "Logs", &v1::Proctor::Stub::Logs, request,
      request.follow() ? absl::InfiniteDuration() : call_timeout_,
      [&sink](const v1::LogChunk& chunk) {
        if (!chunk.data().empty()) sink(chunk.data());
        return true;
      },
      stop);
}

absl::Status Client::Watch(const v1::WatchRequest& request,
                           const std::function<bool(const v1::Event&)>& sink,
                           std::stop_token stop) {
  return ServerStream<v1::WatchRequest, v1::Event>("Watch", &v1::Proctor::Stub::Watch, request,
                                                   absl::InfiniteDuration(), sink, stop);
}

absl::StatusOr<v1::Process> Client::Run(
    const v1::StartRequest& request,
    const std::function<void(v1::Stream, std::string_view)>& on_output,
    const std::function<void(const v1::Process&)>& on_started, std::stop_token stop) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context =
      NewContext("Run", &nonce, absl::InfiniteDuration());
  std::stop_callback cancel(stop, [&context] { context->TryCancel(); });
  RunCall call;
  stub_->async()->Run(context.get(), &request, &call);
  call.Begin();

  // A Join poll that asks after the process while the stream is quiet.
  struct Probe {
    std::unique_ptr<grpc::ClientContext> context;
    std::string nonce;
    v1::JoinRequest request;
    v1::Process reply;
  };
  std::optional<Probe> probe;
  const absl::Duration probe_timeout = call_timeout_ + call_timeout_;

  const absl::Duration started_within = StartTimeout(request);
  const absl::Time started_by = absl::Now() + started_within;
  absl::Time quiet_until = started_by;
  std::optional<v1::Process> started, exited;
  absl::Status failed;  // ours: the call is cancelled, and this is Run's answer
  auto fail = [&](absl::Status status) {
    if (failed.ok()) failed = std::move(status);
    context->TryCancel();
  };
  bool reading = true;
  while (reading) {
    // Once cancelled, or while a probe is out, there is nothing to time.
    const bool timed = failed.ok() && !probe.has_value();
    switch (call.Await(timed ? quiet_until : absl::InfiniteFuture())) {
      case RunCall::Woke::kHeaders:
        // Nothing reaches the caller before the daemon has proved itself in the headers. A
        // call that ended without headers has its proof, if any, with its status.
        if (call.headers_ok()) {
          if (absl::Status proved = Finish(*context, "Run", nonce, grpc::Status::OK);
              !proved.ok()) {
            fail(proved);
          }
        }
        break;
      case RunCall::Woke::kEvent: {
        v1::RunEvent event = call.TakeEvent();
        if (!failed.ok()) break;
        if (event.has_started()) {
          started = event.started();
          if (on_started) on_started(*started);
        } else if (event.has_output()) {
          if (!event.output().data().empty()) {
            on_output(event.output().stream(), event.output().data());
          }
        } else if (event.has_exited()) {
          exited = event.exited();
        }
        quiet_until = absl::Now() + call_timeout_;
        break;
      }
      case RunCall::Woke::kProbe: {
        absl::Status answer =
            Finish(*probe->context, "Join", probe->nonce, call.probe_status(), probe_timeout);
        probe.reset();
        if (!answer.ok()) fail(answer);
        quiet_until = absl::Now() + call_timeout_;
        break;
      }
      case RunCall::Woke::kDone:
        reading = false;
        break;
      case RunCall::Woke::kNothing:
        if (!started.has_value()) {
          fail(DidNotAnswer("Run", started_within));
          break;
        }
        if (call_timeout_ == absl::InfiniteDuration()) break;
        probe.emplace();
        probe->context = NewContext("Join", &probe->nonce, probe_timeout);
        probe->request.set_id(started->id());
        *probe->request.mutable_timeout() = DurationToProto(call_timeout_);
        stub_->async()->Join(probe->context.get(), &probe->request, &probe->reply,
                             [&call](grpc::Status status) { call.ProbeAnswered(status); });
        break;
    }
  }
  call.ReadsOver();
  grpc::Status status = call.Finished();
  if (probe.has_value()) {
    // Its callback refers to `call`: wait for it.
    probe->context->TryCancel();
    call.AwaitProbe();
  }
  if (status.error_code() == grpc::StatusCode::CANCELLED && stop.stop_requested()) {
    return absl::CancelledError("Run stopped by its caller");
  }
  if (!failed.ok()) return failed;
  if (absl::Status s = Finish(*context, "Run", nonce, status); !s.ok()) return s;
  if (!exited.has_value()) {
    return absl::InternalError("proctord ended Run without the process's exit record");
  }
  return *std::move(exited);
}

absl::Status Client::Release(uint64_t id) {
  v1::ReleaseRequest request;
  request.set_id(id);
  v1::ReleaseResponse response;
  return Unary("Release", &v1::Proctor::Stub::Release, request, &response, call_timeout_);
}

absl::StatusOr<v1::ReloadResponse> Client::Reload() {
  v1::ReloadResponse response;
  if (absl::Status s = Unary("Reload", &v1::Proctor::Stub::Reload, v1::ReloadRequest(), &response,
                             call_timeout_);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<std::vector<v1::Service>> Client::ListServices() {
  v1::ListServicesResponse response;
  if (absl::Status s = Unary("ListServices", &v1::Proctor::Stub::ListServices,
                             v1::ListServicesRequest(), &response, call_timeout_);
      !s.ok()) {
    return s;
  }
  return std::vector<v1::Service>(response.services().begin(), response.services().end());
}

absl::StatusOr<std::unique_ptr<Session>> Client::OpenSession(absl::Duration ttl) {
  return OpenOrResumeSession(0, ttl);
}

absl::StatusOr<std::unique_ptr<Session>> Client::ResumeSession(uint64_t id, absl::Duration ttl) {
  return OpenOrResumeSession(id, ttl);
}

absl::StatusOr<std::unique_ptr<Session>> Client::OpenOrResumeSession(uint64_t resume,
                                                                     absl::Duration ttl) {
  std::unique_ptr<Session> session(new Session());
  session->close_timeout_ = call_timeout_;
  std::string nonce;
  // A stream: no deadline as a whole, but the daemon must acknowledge the opening in time.
  session->context_ = NewContext("Session", &nonce, absl::InfiniteDuration());
  v1::SessionRequest open;
  *open.mutable_ttl() = DurationToProto(ttl);
  open.set_resume(resume);
  v1::SessionEvent opened;
  bool answered = false;
  absl::Status s;
  {
    StepDeadline deadline(*session->context_, call_timeout_);
    session->stream_ = stub_->Session(session->context_.get());
    answered = session->stream_->Write(open) && session->stream_->Read(&opened);
    if (answered) {
      s = Finish(*session->context_, "Session", nonce, grpc::Status::OK);
    } else {
      session->stream_->WritesDone();
      s = Finish(*session->context_, "Session", nonce, session->stream_->Finish());
      if (s.ok()) s = absl::UnavailableError("proctord closed the session at once");
    }
    if (deadline.passed()) s = DidNotAnswer("Session", call_timeout_);
  }
  if (!s.ok()) {
    if (answered) {
      session->context_->TryCancel();
      session->stream_->Finish();
    }
    session->stream_.reset();
    return s;
  }
  session->id_ = opened.session();
  session->keep_alive_ = std::thread([s = session.get(), every = ttl / 3] { s->KeepAlive(every); });
  return session;
}

void Session::KeepAlive(absl::Duration every) {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      // Wakes early when the session is being closed.
      mu_.AwaitWithTimeout(absl::Condition(&closing_), every);
      if (closing_) return;
    }
    // Unlocked: a write held up by a daemon that stopped reading must not hold up the close,
    // which cancels it.
    if (!stream_->Write(v1::SessionRequest{})) return;
  }
}

Session::~Session() {
  if (stream_ == nullptr) return;
  // A clean end (no more keep-alives, writes closed, the daemon's answer awaited) if the
  // daemon answers within a call timeout; otherwise the call is cancelled, which proctord
  // takes for a client gone, ending the session all the same.
  StepDeadline deadline(*context_, close_timeout_);
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  if (keep_alive_.joinable()) keep_alive_.join();
  stream_->WritesDone();
  stream_->Finish();
}

}  // namespace proctor
