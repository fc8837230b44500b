#include "server/proctor_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/authkey.h"
#include "google/protobuf/util/time_util.h"

namespace proctor {
namespace {

using google::protobuf::util::TimeUtil;

constexpr int kSigterm = 15;
constexpr size_t kLogChunkBytes = 64 * 1024;
// How often a followed log is read again while the process runs and has written nothing.
constexpr absl::Duration kFollowInterval = absl::Milliseconds(50);

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

google::protobuf::Duration ToDurationProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

absl::Duration FromDurationProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

// A unary call answered later by a supervisor callback. The shared state lets whichever of
// "answer" and "cancel" comes first finish the call, and the other do nothing.
class ParkedCall final : public grpc::ServerUnaryReactor {
 public:
  using Park = std::function<Supervisor::WaiterId(Supervisor::Done)>;

  ParkedCall(Supervisor& supervisor, v1::Process* response, const Park& park)
      : supervisor_(supervisor), state_(std::make_shared<State>()) {
    state_->call = this;
    std::shared_ptr<State> state = state_;
    Supervisor::WaiterId waiter = park([state, response](absl::StatusOr<ProcessInfo> result) {
      absl::MutexLock lock(&state->mu);
      if (state->finished) return;
      state->finished = true;
      if (result.ok()) ToProto(*result, response);
      state->call->Finish(ToGrpc(result.status()));
    });
    absl::MutexLock lock(&state_->mu);
    waiter_ = waiter;
  }

  void OnCancel() override {
    Supervisor::WaiterId waiter;
    {
      absl::MutexLock lock(&state_->mu);
      waiter = waiter_;
    }
    if (waiter != 0) supervisor_.CancelWait(waiter);
    absl::MutexLock lock(&state_->mu);
    if (state_->finished) return;
    state_->finished = true;
    Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override { delete this; }

 private:
  struct State {
    absl::Mutex mu;
    bool finished ABSL_GUARDED_BY(mu) = false;
    ParkedCall* call = nullptr;
  };
  Supervisor& supervisor_;
  std::shared_ptr<State> state_;
  Supervisor::WaiterId waiter_ = 0;  // guarded by state_->mu
};

// Streams one capture file. Reads happen on gRPC's threads (after each write) and on the
// timer thread (while following an idle file); the mutex keeps them one at a time.
class LogStream final : public grpc::ServerWriteReactor<v1::LogChunk> {
 public:
  LogStream(Supervisor& supervisor, Timers& timers, uint64_t id, int fd, int64_t offset,
            bool follow)
      : supervisor_(supervisor),
        timers_(timers),
        id_(id),
        fd_(fd),
        offset_(offset),
        follow_(follow) {
    absl::MutexLock lock(&mu_);
    PumpLocked();
  }

  ~LogStream() override {
    close(fd_);
    supervisor_.CloseLogs(id_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    bool delete_now;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      delete_now = timer_ == 0;
    }
    if (delete_now) delete this;
  }

 private:
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    // Whether the process had ended is asked before reading: output written before the exit
    // is then surely in the file, and an empty read means the end.
    bool ended = !follow_ || !IsRunning();
    chunk_.mutable_data()->resize(kLogChunkBytes);
    ssize_t n = pread(fd_, chunk_.mutable_data()->data(), kLogChunkBytes, offset_);
    if (n < 0) {
      FinishLocked(grpc::Status(grpc::StatusCode::INTERNAL,
                                absl::StrCat("reading output: ", std::strerror(errno))));
      return;
    }
    if (n > 0) {
      chunk_.mutable_data()->resize(n);
      chunk_.set_offset(offset_);
      offset_ += n;
      writing_ = true;
      StartWrite(&chunk_);
      return;
    }
    if (ended) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    timer_ = timers_.After(kFollowInterval, [this] { OnTimer(); });
  }

  void OnTimer() {
    bool delete_now;
    {
      absl::MutexLock lock(&mu_);
      timer_ = 0;
      delete_now = done_;
      if (!done_) PumpLocked();
    }
    if (delete_now) delete this;
  }

  bool IsRunning() {
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(id_);
    return info.ok() && info->running;
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  Supervisor& supervisor_;
  Timers& timers_;
  const uint64_t id_;
  const int fd_;
  absl::Mutex mu_;
  int64_t offset_ ABSL_GUARDED_BY(mu_);
  const bool follow_;
  v1::LogChunk chunk_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  TimerId timer_ ABSL_GUARDED_BY(mu_) = 0;
};

template <typename Response>
class FailedStream final : public grpc::ServerWriteReactor<Response> {
 public:
  // Finishes with `status`, at once or after `delay`.
  FailedStream(const grpc::Status& status, Timers& timers,
               absl::Duration delay = absl::ZeroDuration()) {
    if (delay <= absl::ZeroDuration()) {
      this->Finish(status);
    } else {
      timers.After(delay, [this, status] { this->Finish(status); });
    }
  }
  void OnDone() override { delete this; }
};

// One session: open on the first request, touch on each later one, close when the client
// closes or goes away. The session's expiry may come from the timer thread at any moment,
// so the shared state lets it finish the stream only while the reactor is alive.
class SessionStream final
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionEvent> {
 public:
  static constexpr absl::Duration kDefaultTtl = absl::Seconds(10);

  SessionStream(Supervisor& supervisor, Timers& timers, const absl::Status& refused,
                absl::Duration refusal_delay)
      : supervisor_(supervisor), state_(std::make_shared<State>()) {
    state_->stream = this;
    if (!refused.ok()) {
      grpc::Status status = ToGrpc(refused);
      if (refusal_delay <= absl::ZeroDuration()) {
        Finish(status);
      } else {
        std::shared_ptr<State> state = state_;
        timers.After(refusal_delay, [state, status] { state->FinishOnce(status); });
      }
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      CloseSession();
      state_->FinishOnce(grpc::Status::OK);
      return;
    }
    if (session_ == 0) {
      absl::Duration ttl = kDefaultTtl;
      if (request_.has_ttl()) ttl = FromDurationProto(request_.ttl());
      if (ttl <= absl::ZeroDuration()) {
        state_->FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                        "session ttl must be positive"));
        return;
      }
      std::shared_ptr<State> state = state_;
      uint64_t session = supervisor_.OpenSession(ttl, [state, ttl] {
        state->FinishOnce(grpc::Status(
            grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat("session ended: no keep-alive within its ttl of ",
                         absl::FormatDuration(ttl))));
      });
      {
        absl::MutexLock lock(&state_->mu);
        session_ = session;
        event_.set_session(session);
        state_->writing = true;
      }
      StartWrite(&event_);
    } else if (absl::Status touched = supervisor_.TouchSession(session_); !touched.ok()) {
      state_->FinishOnce(ToGrpc(touched));
      return;
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool) override {
    grpc::Status pending;
    bool finish = false;
    {
      absl::MutexLock lock(&state_->mu);
      state_->writing = false;
      if (state_->pending_finish.has_value()) {
        pending = *state_->pending_finish;
        finish = true;
      }
    }
    if (finish) state_->FinishOnce(pending);
  }

  void OnCancel() override {
    CloseSession();
    state_->FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    CloseSession();
    {
      absl::MutexLock lock(&state_->mu);
      state_->stream = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    absl::Mutex mu;
    SessionStream* stream ABSL_GUARDED_BY(mu) = nullptr;
    bool finished ABSL_GUARDED_BY(mu) = false;
    bool writing ABSL_GUARDED_BY(mu) = false;
    std::optional<grpc::Status> pending_finish ABSL_GUARDED_BY(mu);

    // Finishes the stream once; after any write in flight.
    void FinishOnce(const grpc::Status& status) {
      absl::MutexLock lock(&mu);
      if (finished || stream == nullptr) return;
      if (writing) {
        pending_finish = status;
        return;
      }
      finished = true;
      stream->Finish(status);
    }
  };

  void CloseSession() {
    uint64_t session;
    {
      absl::MutexLock lock(&state_->mu);
      session = session_;
    }
    if (session != 0) supervisor_.CloseSession(session);
  }

  Supervisor& supervisor_;
  std::shared_ptr<State> state_;
  v1::SessionRequest request_;
  v1::SessionEvent event_;
  uint64_t session_ = 0;  // guarded by state_->mu once reads and timers run
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(status));
  return reactor;
}

}  // namespace

void ToProto(const ProcessInfo& info, v1::Process* out) {
  out->set_id(info.id);
  out->set_name(info.name);
  out->set_pid(info.pid);
  out->set_state(info.running ? v1::STATE_RUNNING : v1::STATE_EXITED);
  if (info.status.has_value()) {
    out->set_exitcode(info.status->exitcode());
    out->set_signal(info.status->signal);
    out->set_core_dumped(info.status->core_dumped);
  }
  out->set_daemon(info.daemon);
  if (info.parent_id != 0) {
    out->set_parent_id(info.parent_id);
  } else if (info.parent_session != 0) {
    out->set_parent_session(info.parent_session);
  }
  for (uint64_t child : info.children) out->add_children(child);
  out->set_target(info.target);
  for (const std::string& arg : info.args) out->add_args(arg);
  *out->mutable_start_time() = ToTimestamp(info.start_time);
  if (!info.running) {
    *out->mutable_end_time() = ToTimestamp(info.end_time);
    *out->mutable_user_cpu() = ToDurationProto(info.usage.user_cpu);
    *out->mutable_system_cpu() = ToDurationProto(info.usage.system_cpu);
    out->set_max_rss_bytes(info.usage.max_rss_bytes);
  }
  out->set_stdout_path(info.stdout_path);
  out->set_stderr_path(info.stderr_path);
  out->set_cwd(info.cwd);
}

ProctorService::ProctorService(Supervisor& supervisor, Timers& timers,
                               Authenticator& authenticator, Clock& clock)
    : supervisor_(supervisor),
      timers_(timers),
      authenticator_(authenticator),
      limit_refusals_(clock, Backoff::Policy{.free_refusals = 0,
                                             .first = absl::Milliseconds(200),
                                             .max = absl::Seconds(5),
                                             .memory = absl::Seconds(30)}) {}

absl::StatusOr<Caller> ProctorService::Authenticate(grpc::CallbackServerContext* context,
                                                    absl::string_view method) {
  std::optional<std::string> credential;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find(kAuthMetadataKey); it != metadata.end()) {
    credential = std::string(it->second.data(), it->second.size());
  }
  absl::StatusOr<Caller> caller = authenticator_.Verify(credential, method, context->peer());
  if (caller.ok()) {
    context->AddInitialMetadata(kServerProofMetadataKey,
                                ServerProof(caller->key, method, caller->nonce_hex));
  }
  return caller;
}

absl::Status ProctorService::Authorize(const Caller& caller, uint64_t id) {
  if (caller.admin()) return absl::OkStatus();
  if (absl::Status known = supervisor_.Get(id).status(); !known.ok()) return known;
  if (supervisor_.InSubtree(caller.worker_id, id)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("process ", id, " is outside the subtree of process ", caller.worker_id,
                   ", whose key made this call"));
}

grpc::ServerUnaryReactor* ProctorService::Refuse(grpc::CallbackServerContext* context,
                                                 const absl::Status& status,
                                                 absl::Duration delay) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::IsUnauthenticated(status)) delay = authenticator_.FailureDelay(context->peer());
  if (delay <= absl::ZeroDuration()) {
    reactor->Finish(ToGrpc(status));
  } else {
    timers_.After(delay, [reactor, s = ToGrpc(status)] { reactor->Finish(s); });
  }
  return reactor;
}

grpc::ServerUnaryReactor* ProctorService::Start(grpc::CallbackServerContext* context,
                                                const v1::StartRequest* request,
                                                v1::Process* response) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Start");
  if (!caller.ok()) return Refuse(context, caller.status());
  StartSpec spec;
  spec.parent_id = caller->worker_id;
  spec.authkey = request->authkey();
  spec.session = request->session();
  if (spec.session != 0 && !caller->admin()) {
    return Refuse(context, absl::FailedPreconditionError(
                               "sessions are for clients that are not workers; a worker's "
                               "key makes the worker itself the parent"));
  }
  spec.target = request->target();
  spec.args.assign(request->args().begin(), request->args().end());
  spec.kwargs.insert(request->kwargs().begin(), request->kwargs().end());
  spec.name = request->name();
  spec.daemon = request->daemon();
  spec.env.assign(request->env().begin(), request->env().end());
  spec.cwd = request->cwd();
  absl::StatusOr<ProcessInfo> started = supervisor_.Start(spec);
  if (absl::IsResourceExhausted(started.status())) {
    std::string tree = caller->admin() ? absl::StrCat("admin@", context->peer())
                                       : absl::StrCat(supervisor_.RootOf(caller->worker_id));
    return Refuse(context, started.status(), limit_refusals_.Refused(tree));
  }
  if (started.ok()) ToProto(*started, response);
  return FinishNow(context, started.status());
}

grpc::ServerUnaryReactor* ProctorService::Join(grpc::CallbackServerContext* context,
                                               const v1::JoinRequest* request,
                                               v1::Process* response) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Join");
  if (!caller.ok()) return Refuse(context, caller.status());
  if (absl::Status s = Authorize(*caller, request->id()); !s.ok()) return Refuse(context, s);
  std::optional<absl::Duration> timeout;
  if (request->has_timeout()) timeout = FromDurationProto(request->timeout());
  uint64_t id = request->id();
  return new ParkedCall(supervisor_, response, [&](Supervisor::Done done) {
    return supervisor_.Join(id, timeout, std::move(done));
  });
}

grpc::ServerUnaryReactor* ProctorService::Terminate(grpc::CallbackServerContext* context,
                                                    const v1::TerminateRequest* request,
                                                    v1::Process* response) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Terminate");
  if (!caller.ok()) return Refuse(context, caller.status());
  if (absl::Status s = Authorize(*caller, request->id()); !s.ok()) return Refuse(context, s);
  int sig = request->signal() == 0 ? kSigterm : request->signal();
  absl::Duration grace =
      request->has_grace() ? FromDurationProto(request->grace()) : Supervisor::kDefaultGrace;
  bool wait = !request->has_wait() || request->wait();
  bool tree = !request->has_tree() || request->tree();
  uint64_t id = request->id();
  return new ParkedCall(supervisor_, response, [&](Supervisor::Done done) {
    return supervisor_.Terminate(id, sig, grace, wait, std::move(done), tree);
  });
}

grpc::ServerUnaryReactor* ProctorService::Status(grpc::CallbackServerContext* context,
                                                 const v1::StatusRequest* request,
                                                 v1::StatusResponse* response) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Status");
  if (!caller.ok()) return Refuse(context, caller.status());
  if (request->has_id()) {
    if (absl::Status s = Authorize(*caller, request->id()); !s.ok()) return Refuse(context, s);
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(request->id());
    if (info.ok()) ToProto(*info, response->add_processes());
    return FinishNow(context, info.status());
  }
  ListFilter filter;
  if (request->state() != v1::STATE_UNSPECIFIED) {
    filter.running = request->state() == v1::STATE_RUNNING;
  }
  filter.name = request->name();
  if (request->has_parent_id()) filter.parent_id = request->parent_id();
  if (request->has_parent_session()) filter.parent_session = request->parent_session();
  filter.subtree_of = caller->worker_id;
  for (const ProcessInfo& info : supervisor_.List(filter)) {
    ToProto(info, response->add_processes());
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerWriteReactor<v1::LogChunk>* ProctorService::Logs(
    grpc::CallbackServerContext* context, const v1::LogsRequest* request) {
  using Failed = FailedStream<v1::LogChunk>;
  absl::StatusOr<Caller> caller = Authenticate(context, "Logs");
  if (!caller.ok()) {
    return new Failed(ToGrpc(caller.status()), timers_,
                      authenticator_.FailureDelay(context->peer()));
  }
  if (absl::Status s = Authorize(*caller, request->id()); !s.ok()) {
    return new Failed(ToGrpc(s), timers_);
  }
  if (request->tail_bytes() < 0) {
    return new Failed(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "tail_bytes is negative; give 0 or more"),
                      timers_);
  }
  // From here until the LogStream is destroyed, the record's files are not recycled.
  absl::StatusOr<ProcessInfo> info = supervisor_.OpenLogs(request->id());
  if (!info.ok()) return new Failed(ToGrpc(info.status()), timers_);
  const std::string& path =
      request->stream() == v1::STREAM_STDERR ? info->stderr_path : info->stdout_path;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    supervisor_.CloseLogs(request->id());
    return new Failed(grpc::Status(grpc::StatusCode::INTERNAL,
                                   absl::StrCat("cannot open captured output ", path, ": ",
                                                std::strerror(errno))),
                      timers_);
  }
  int64_t offset = 0;
  struct stat st;
  if (request->tail_bytes() > 0 && fstat(fd, &st) == 0) {
    offset = std::max<int64_t>(0, st.st_size - request->tail_bytes());
  }
  return new LogStream(supervisor_, timers_, request->id(), fd, offset, request->follow());
}

grpc::ServerUnaryReactor* ProctorService::Release(grpc::CallbackServerContext* context,
                                                  const v1::ReleaseRequest* request,
                                                  v1::ReleaseResponse*) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Release");
  if (!caller.ok()) return Refuse(context, caller.status());
  if (absl::Status s = Authorize(*caller, request->id()); !s.ok()) return Refuse(context, s);
  return FinishNow(context, supervisor_.Release(request->id()));
}

}  // namespace proctor

namespace proctor {

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionEvent>* ProctorService::Session(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Authenticate(context, "Session");
  absl::Status refused = caller.status();
  if (caller.ok() && !caller->admin()) {
    refused = absl::FailedPreconditionError(
        "sessions are for clients that are not workers; a worker is the parent of what it "
        "starts");
  }
  absl::Duration delay = absl::IsUnauthenticated(refused)
                             ? authenticator_.FailureDelay(context->peer())
                             : absl::ZeroDuration();
  return new SessionStream(supervisor_, timers_, refused, delay);
}

}  // namespace proctor
