#include "client/sync_client.h"

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/authkey.h"
#include "grpcpp/grpcpp.h"

namespace proctor {

const char* SyncKindText(v1::SyncKind kind) {
  switch (kind) {
    case v1::SYNC_LOCK:
      return "Lock";
    case v1::SYNC_RLOCK:
      return "RLock";
    case v1::SYNC_SEMAPHORE:
      return "Semaphore";
    case v1::SYNC_BOUNDED_SEMAPHORE:
      return "BoundedSemaphore";
    case v1::SYNC_EVENT:
      return "Event";
    case v1::SYNC_CONDITION:
      return "Condition";
    case v1::SYNC_BARRIER:
      return "Barrier";
    default:
      return "?";
  }
}

// One SyncCalls stream with a completion queue of its own, driven by the thread that makes
// the call (no hand-off to another thread). A read is kept pending between calls, so that an
// end proctord sent meanwhile (a restart) is seen by Alive() before a call is risked on it.
// Used by one thread at a time.
class SyncClient::CallStream {
 public:
  static constexpr char kMethod[] = "SyncCalls";

  // Opens a stream and checks proctord's proof in its headers, within `timeout`.
  static absl::StatusOr<std::unique_ptr<CallStream>> Open(Client& client, v1::Sync::Stub& stub,
                                                          absl::Duration timeout) {
    auto stream = std::unique_ptr<CallStream>(new CallStream(client));
    if (absl::Status s = stream->Start(stub, timeout); !s.ok()) return s;
    return stream;
  }

  ~CallStream() {
    if (!ended_) {
      stream_->WritesDone(Op(kWritesDone));
      stream_->Finish(&status_, Op(kFinish));
      // The daemon ends the stream at once; one that does not answer is cut off.
      if (!Await(absl::Now() + absl::Seconds(1)).ok()) context_->TryCancel();
    }
    (void)Await(absl::InfiniteFuture());
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // False once the stream has ended, proctord's side included: polls without waiting.
  bool Alive() {
    if (ended_) return false;
    void* tag;
    bool ok;
    // A deadline in the past polls once without waiting; "now" would wait a millisecond
    // (gRPC rounds a deadline up to the next one).
    if (cq_.AsyncNext(&tag, &ok, gpr_inf_past(GPR_CLOCK_MONOTONIC)) ==
        grpc::CompletionQueue::GOT_EVENT) {
      // Nothing comes unasked: the pending read has failed, or proctord broke the protocol.
      pending_.erase(static_cast<Tag>(reinterpret_cast<intptr_t>(tag)));
      End().IgnoreError();
      return false;
    }
    return true;
  }

  // One call, answered within `timeout`. `unsent` is set when the call's message could not
  // be sent (the stream had ended): proctord never saw it.
  absl::StatusOr<v1::SyncCallResult> Call(const v1::SyncCall& call, absl::Duration timeout,
                                          bool* unsent) {
    *unsent = false;
    stream_->Write(call, Op(kWrite));
    const absl::Time deadline =
        timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
    absl::Status waited = Await(deadline, kRead);
    if (absl::IsDeadlineExceeded(waited)) {
      context_->TryCancel();
      End().IgnoreError();
      return absl::DeadlineExceededError(absl::StrCat(
          "proctord did not answer within ",
          absl::FormatDuration(absl::Trunc(timeout, absl::Milliseconds(1)))));
    }
    if (!waited.ok()) {
      // The write's outcome is known once the read has failed: wait for it too.
      (void)Await(absl::InfiniteFuture(), kWrite);
      *unsent = !write_ok_;
      return End();
    }
    v1::SyncCallResult result = std::move(incoming_);
    (void)Await(absl::InfiniteFuture(), kWrite);  // done by now: the answer came after it
    stream_->Read(&incoming_, Op(kRead));
    return result;
  }

 private:
  enum Tag : intptr_t { kStart = 1, kHeaders, kWrite, kRead, kWritesDone, kFinish };

  explicit CallStream(Client& client) : client_(client) {}

  absl::Status Start(v1::Sync::Stub& stub, absl::Duration timeout) {
    context_ = client_.NewContext(kMethod, &nonce_, absl::InfiniteDuration());
    stream_ = stub.PrepareAsyncSyncCalls(context_.get(), &cq_);
    stream_->StartCall(Op(kStart));
    stream_->ReadInitialMetadata(Op(kHeaders));
    // StartCall's completion too: its op set is the one Write uses next.
    const absl::Time deadline = absl::Now() + timeout;
    absl::Status opened = Await(deadline, kStart);
    if (opened.ok()) opened = Await(deadline, kHeaders);
    if (absl::IsDeadlineExceeded(opened)) {
      context_->TryCancel();
      End().IgnoreError();
      return absl::DeadlineExceededError(absl::StrCat(
          kMethod, " did not answer within ",
          absl::FormatDuration(absl::Trunc(timeout, absl::Milliseconds(1)))));
    }
    const auto& headers = context_->GetServerInitialMetadata();
    if (!opened.ok() || headers.find(kServerProofMetadataKey) == headers.end()) {
      // Refused: the reason is in the status, trailers only.
      return End();
    }
    if (absl::Status proved = client_.Finish(*context_, kMethod, nonce_, grpc::Status::OK);
        !proved.ok()) {
      context_->TryCancel();
      End().IgnoreError();
      return proved;
    }
    stream_->Read(&incoming_, Op(kRead));
    return absl::OkStatus();
  }

  void* Op(Tag tag) {
    pending_.insert(tag);
    return reinterpret_cast<void*>(static_cast<intptr_t>(tag));
  }

  // Takes completions until `until` has come (every pending one for kAny) or `deadline`
  // passes. OK when `until` succeeded; UNAVAILABLE when it failed; DEADLINE_EXCEEDED.
  static constexpr Tag kAny = static_cast<Tag>(0);
  absl::Status Await(absl::Time deadline, Tag until = kAny) {
    while (until == kAny ? !pending_.empty() : pending_.contains(until)) {
      void* raw;
      bool ok;
      grpc::CompletionQueue::NextStatus next =
          deadline == absl::InfiniteFuture()
              ? (cq_.Next(&raw, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                     : grpc::CompletionQueue::SHUTDOWN)
              : cq_.AsyncNext(&raw, &ok, absl::ToChronoTime(deadline));
      if (next == grpc::CompletionQueue::TIMEOUT) return absl::DeadlineExceededError("");
      if (next == grpc::CompletionQueue::SHUTDOWN) return absl::UnavailableError("");
      const Tag tag = static_cast<Tag>(reinterpret_cast<intptr_t>(raw));
      pending_.erase(tag);
      if (tag == kWrite) write_ok_ = ok;
      if (tag == until && !ok) return absl::UnavailableError("");
    }
    return absl::OkStatus();
  }

  // Ends the stream (once) and returns its status as the caller should see it.
  absl::Status End() {
    if (!ended_) {
      ended_ = true;
      stream_->Finish(&status_, Op(kFinish));
      (void)Await(absl::InfiniteFuture());
      final_ = client_.Finish(*context_, kMethod, nonce_, status_);
      if (final_.ok()) {
        final_ = absl::UnavailableError(absl::StrCat(
            "proctord ended the ", kMethod, " stream (it is stopping or restarting)"));
      }
    }
    return final_;
  }

  Client& client_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::SyncCall, v1::SyncCallResult>> stream_;
  std::string nonce_;
  std::set<Tag> pending_;
  v1::SyncCallResult incoming_;  // written by gRPC while a read is pending
  bool write_ok_ = false;
  bool ended_ = false;
  grpc::Status status_;
  absl::Status final_;
};

SyncClient::SyncClient(Client& client)
    : client_(client), stub_(v1::Sync::NewStub(client.channel_)) {}

SyncClient::~SyncClient() = default;

absl::StatusOr<v1::SyncCallResult> SyncClient::OnStream(const v1::SyncCall& call,
                                                        absl::Duration timeout) {
  for (bool retried = false;; retried = true) {
    std::unique_ptr<CallStream> stream;
    {
      absl::MutexLock lock(&streams_mu_);
      while (!idle_streams_.empty() && stream == nullptr) {
        stream = std::move(idle_streams_.back());
        idle_streams_.pop_back();
        if (!stream->Alive()) stream.reset();
      }
    }
    const bool fresh = stream == nullptr;
    if (fresh) {
      absl::StatusOr<std::unique_ptr<CallStream>> opened =
          CallStream::Open(client_, *stub_, client_.call_timeout_);
      if (!opened.ok()) return opened.status();
      stream = *std::move(opened);
    }
    bool unsent = false;
    absl::StatusOr<v1::SyncCallResult> result = stream->Call(call, timeout, &unsent);
    if (result.ok()) {
      {
        absl::MutexLock lock(&streams_mu_);
        idle_streams_.push_back(std::move(stream));
      }
      if (result->code() != 0) {
        return absl::Status(static_cast<absl::StatusCode>(result->code()), result->message());
      }
      return result;
    }
    // A kept stream that ended while idle never carried the call: once more on a new one.
    if (!unsent || fresh || retried) return result.status();
  }
}

absl::StatusOr<v1::SyncWaitResponse> SyncClient::Waited(const v1::SyncCall& call,
                                                        absl::Duration timeout) {
  absl::StatusOr<v1::SyncCallResult> result = OnStream(call, timeout);
  if (!result.ok()) return result.status();
  return std::move(*result->mutable_waited());
}

absl::StatusOr<v1::SyncObject> SyncClient::Changed(const v1::SyncCall& call) {
  absl::StatusOr<v1::SyncCallResult> result = OnStream(call, client_.call_timeout_);
  if (!result.ok()) return result.status();
  return std::move(*result->mutable_object());
}

template <typename Request, typename Response>
absl::Status SyncClient::Unary(absl::string_view method,
                               grpc::Status (v1::Sync::Stub::*rpc)(grpc::ClientContext*,
                                                                   const Request&, Response*),
                               const Request& request, Response* response,
                               absl::Duration timeout) {
  std::string nonce;
  std::unique_ptr<grpc::ClientContext> context = client_.NewContext(method, &nonce, timeout);
  grpc::Status status = (stub_.get()->*rpc)(context.get(), request, response);
  return client_.Finish(*context, method, nonce, status, timeout);
}

template <typename Response, typename Request>
absl::StatusOr<Response> SyncClient::Call(absl::string_view method,
                                          grpc::Status (v1::Sync::Stub::*rpc)(grpc::ClientContext*,
                                                                              const Request&,
                                                                              Response*),
                                          const Request& request, absl::Duration timeout) {
  Response response;
  if (absl::Status s = Unary(method, rpc, request, &response, timeout); !s.ok()) return s;
  return response;
}

absl::Duration SyncClient::WaitDeadline(bool has_timeout,
                                        const google::protobuf::Duration& timeout) const {
  if (!has_timeout) return absl::InfiniteDuration();
  absl::Duration wait = absl::Seconds(timeout.seconds()) + absl::Nanoseconds(timeout.nanos());
  return std::max(wait, absl::ZeroDuration()) + client_.call_timeout_;
}

absl::StatusOr<v1::SyncObject> SyncClient::Create(const v1::SyncCreateRequest& request) {
  return Call<v1::SyncObject>("SyncCreate", &v1::Sync::Stub::SyncCreate, request,
                              client_.call_timeout_);
}

absl::Status SyncClient::Remove(uint64_t id) {
  v1::SyncRemoveRequest request;
  request.set_id(id);
  v1::SyncRemoveResponse response;
  return Unary("SyncRemove", &v1::Sync::Stub::SyncRemove, request, &response,
               client_.call_timeout_);
}

absl::StatusOr<v1::SyncObject> SyncClient::Get(uint64_t id) {
  v1::SyncListRequest request;
  request.set_id(id);
  absl::StatusOr<std::vector<v1::SyncObject>> found = List(request);
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return absl::InternalError(absl::StrCat("SyncList for id ", id, " answered ", found->size(),
                                            " objects, not 1"));
  }
  return found->front();
}

absl::StatusOr<std::vector<v1::SyncObject>> SyncClient::List(const v1::SyncListRequest& filter) {
  absl::StatusOr<v1::SyncListResponse> response = Call<v1::SyncListResponse>(
      "SyncList", &v1::Sync::Stub::SyncList, filter, client_.call_timeout_);
  if (!response.ok()) return response.status();
  return std::vector<v1::SyncObject>(response->objects().begin(), response->objects().end());
}

absl::StatusOr<v1::SyncWaitResponse> SyncClient::Acquire(const v1::SyncAcquireRequest& request) {
  v1::SyncCall call;
  *call.mutable_acquire() = request;
  return Waited(call, WaitDeadline(request.has_timeout(), request.timeout()));
}

absl::StatusOr<v1::SyncObject> SyncClient::Release(const v1::SyncReleaseRequest& request) {
  v1::SyncCall call;
  *call.mutable_release() = request;
  return Changed(call);
}

absl::StatusOr<v1::SyncWaitResponse> SyncClient::Wait(const v1::SyncWaitRequest& request) {
  // A Barrier's own default timeout is the daemon's to apply: no deadline of ours then.
  v1::SyncCall call;
  *call.mutable_wait() = request;
  return Waited(call, WaitDeadline(request.has_timeout(), request.timeout()));
}

absl::StatusOr<v1::SyncObject> SyncClient::Update(const v1::SyncUpdateRequest& request) {
  v1::SyncCall call;
  *call.mutable_update() = request;
  return Changed(call);
}

absl::StatusOr<v1::SyncObject> SyncClient::Bind(const v1::SyncBindRequest& request) {
  return Call<v1::SyncObject>("SyncBind", &v1::Sync::Stub::SyncBind, request,
                              client_.call_timeout_);
}

}  // namespace proctor
