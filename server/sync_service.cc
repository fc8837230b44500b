#include "server/sync_service.h"

#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/bidi_stream_state.h"

namespace proctor {
namespace {

grpc::ServerUnaryReactor* FinishWith(grpc::CallbackServerContext* context,
                                     const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(status));
  return reactor;
}

std::optional<absl::Duration> TimeoutOf(bool has_timeout,
                                        const google::protobuf::Duration& timeout) {
  if (!has_timeout) return std::nullopt;
  return FromDurationProto(timeout);
}

// The answer of a SyncAcquire or SyncWait, shared by the table's Reply and the call. The call
// gets a reactor of its own (WaitCall, which hears cancellation) only when it has to wait: an
// answer known at once finishes the call with gRPC's default reactor, whose end runs inline,
// where a reactor of our own would have its OnDone handed to gRPC's executor thread.
class WaitCall;
struct WaitAnswer {
  explicit WaitAnswer(grpc::ByteBuffer* response) : response(response) {}

  absl::Mutex mu;
  // Answered or cancelled: a later answer is refused (and its grant given back).
  bool finished ABSL_GUARDED_BY(mu) = false;
  // An answer that came before the call had a reactor.
  std::optional<absl::StatusOr<SyncWaitResult>> early ABSL_GUARDED_BY(mu);
  WaitCall* call ABSL_GUARDED_BY(mu) = nullptr;
  grpc::ByteBuffer* const response;
};

// What a SyncAcquire or SyncWait answers, and a SyncCalls stream's acquire or wait.
v1::SyncWaitResponse WaitResponseOf(const SyncWaitResult& result) {
  v1::SyncWaitResponse reply;
  reply.set_ok(result.ok);
  reply.set_abandoned(result.abandoned);
  reply.set_index(result.index);
  return reply;
}

grpc::Status SerializeAnswer(const absl::StatusOr<SyncWaitResult>& result,
                             grpc::ByteBuffer* response) {
  if (result.ok()) SerializeReply(WaitResponseOf(*result), response);
  return ToGrpc(result.status());
}

// A SyncAcquire or SyncWait parked in the table. Whichever of "answer" and "cancel" comes
// first finishes the call; an answer that comes second says so, and the table gives its
// grant back.
class WaitCall final : public grpc::ServerUnaryReactor {
 public:
  WaitCall(SyncTable& table, std::shared_ptr<WaitAnswer> answer, SyncTable::WaiterId waiter)
      : table_(table), answer_(std::move(answer)), waiter_(waiter) {}

  void OnCancel() override {
    {
      absl::MutexLock lock(&answer_->mu);
      if (answer_->finished) return;
      answer_->finished = true;
    }
    // After `finished`: a grant that comes between here and Cancel is refused and given back.
    table_.Cancel(waiter_);
    Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override { delete this; }

 private:
  SyncTable& table_;
  const std::shared_ptr<WaitAnswer> answer_;
  const SyncTable::WaiterId waiter_;
};

// Runs `park` with a Reply that answers the call, and returns the call's reactor.
grpc::ServerUnaryReactor* ParkOrAnswer(
    grpc::CallbackServerContext* context, SyncTable& table, grpc::ByteBuffer* response,
    const std::function<SyncTable::WaiterId(SyncTable::Reply)>& park) {
  auto answer = std::make_shared<WaitAnswer>(response);
  SyncTable::WaiterId waiter = park([answer](absl::StatusOr<SyncWaitResult> result) {
    absl::MutexLock lock(&answer->mu);
    if (answer->finished) return false;
    answer->finished = true;
    if (answer->call == nullptr) {
      answer->early = std::move(result);
    } else {
      answer->call->Finish(SerializeAnswer(result, answer->response));
    }
    return true;
  });
  absl::MutexLock lock(&answer->mu);
  if (answer->early.has_value()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(SerializeAnswer(*answer->early, response));
    return reactor;
  }
  answer->call = new WaitCall(table, answer, waiter);
  return answer->call;
}

}  // namespace

SyncService::SyncService(SyncTable& table, Supervisor& supervisor, ProctorService& gate)
    : table_(table), supervisor_(supervisor), gate_(gate) {}

absl::StatusOr<SyncParty> SyncService::PartyOf(const Caller& caller, uint64_t session) {
  if (!caller.admin()) {
    if (session != 0) {
      return absl::FailedPreconditionError(
          "sessions are for clients that are not workers; a worker holds and waits as itself");
    }
    return SyncParty{.process = caller.worker_id};
  }
  if (session != 0 && !supervisor_.IsSessionOpen(session)) {
    return absl::NotFoundError(absl::StrCat("no open session ", session));
  }
  return SyncParty{.session = session};
}

absl::Status SyncService::Reach(const Caller& caller, const SyncInfo& object) {
  if (caller.admin()) return absl::OkStatus();
  const uint64_t worker = caller.worker_id;
  if (object.owner.has_value() && object.owner->process != 0) {
    uint64_t owner = object.owner->process;
    if (supervisor_.InSubtree(worker, owner) || supervisor_.InSubtree(owner, worker)) {
      return absl::OkStatus();
    }
  } else if (object.owner.has_value()) {
    // Not Get(): a worker may call while its own launch is still in flight.
    if (supervisor_.SessionOfTree(worker) == object.owner->session) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "sync object ", object.id, " belongs to ",
      object.owner.has_value() ? object.owner->ToString() : "the admin key's top level",
      ", outside the reach of process ", worker,
      "'s key (its subtree, its ancestors and its session)"));
}

absl::StatusOr<SyncInfo> SyncService::Reachable(const Caller& caller, uint64_t id) {
  absl::StatusOr<SyncInfo> info = table_.Get(id);
  if (!info.ok()) return info;
  if (absl::Status s = Reach(caller, *info); !s.ok()) return s;
  return info;
}

template <typename Request>
absl::StatusOr<SyncHolderId> SyncService::HolderFor(const Caller& caller,
                                                    const Request& request) {
  absl::StatusOr<SyncParty> party = PartyOf(caller, request.session());
  if (!party.ok()) return party.status();
  // An admin key reaches everything: no lookup on its hot path.
  if (!caller.admin()) {
    if (absl::Status s = Reachable(caller, request.id()).status(); !s.ok()) return s;
  }
  return SyncHolderId{.party = *party, .thread = request.thread()};
}

template <typename Request, typename Body>
grpc::ServerUnaryReactor* SyncService::OnObject(grpc::CallbackServerContext* context,
                                                absl::string_view method,
                                                const grpc::ByteBuffer& raw, Body body) {
  Request request;
  absl::StatusOr<Caller> caller = gate_.Admit(context, method, raw, request);
  if (!caller.ok()) return gate_.Deny(context, caller.status());
  absl::StatusOr<SyncHolderId> holder = HolderFor(*caller, request);
  if (!holder.ok()) return gate_.Refuse(context, holder.status());
  return body(request, *holder);
}

std::string SyncService::TreeOf(const std::optional<SyncParty>& owner) {
  if (!owner.has_value()) return "the admin key's top level";
  if (owner->process != 0) return absl::StrCat("process ", supervisor_.RootOf(owner->process));
  return owner->ToString();
}

absl::StatusOr<std::optional<SyncInfo>> SyncService::FindInScope(
    const Caller& caller, const std::optional<SyncParty>& owner, const std::string& name) {
  if (caller.admin()) return table_.FindByName(owner, name);
  // The worker's own scope, then each ancestor's, then the session its tree started in.
  uint64_t session = 0;
  for (uint64_t id = caller.worker_id; id != 0;) {
    if (std::optional<SyncInfo> found = table_.FindByName(SyncParty{.process = id}, name)) {
      return found;
    }
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(id);
    if (!info.ok()) break;
    id = info->parent_id;
    session = info->parent_session;
  }
  if (session == 0) return std::nullopt;
  return table_.FindByName(SyncParty{.session = session}, name);
}

grpc::ServerUnaryReactor* SyncService::Reply(grpc::CallbackServerContext* context,
                                             const absl::StatusOr<SyncInfo>& info,
                                             grpc::ByteBuffer* response) {
  if (info.ok()) {
    v1::SyncObject object;
    ToProto(*info, &object);
    SerializeReply(object, response);
  }
  return FinishWith(context, info.status());
}

grpc::ServerUnaryReactor* SyncService::SyncCreate(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* response) {
  v1::SyncCreateRequest request;
  absl::StatusOr<Caller> caller = gate_.Admit(context, "SyncCreate", *raw, request);
  if (!caller.ok()) return gate_.Deny(context, caller.status());
  if (request.kind() == v1::SYNC_KIND_UNSPECIFIED) {
    return gate_.Refuse(context, absl::InvalidArgumentError(
                                     "kind is required: SYNC_LOCK, SYNC_RLOCK, SYNC_SEMAPHORE, "
                                     "SYNC_BOUNDED_SEMAPHORE, SYNC_EVENT, SYNC_CONDITION or "
                                     "SYNC_BARRIER"));
  }
  absl::StatusOr<SyncParty> party = PartyOf(*caller, request.session());
  if (!party.ok()) return gate_.Refuse(context, party.status());
  std::optional<SyncParty> owner;
  if (!party->admin()) owner = *party;
  SyncCreateSpec spec{
      .kind = static_cast<SyncKind>(request.kind()),
      .name = request.name(),
      .owner = owner,
      .tree = TreeOf(owner),
      .value = request.has_value() ? request.value() : 1,
      .parties = request.parties(),
      .timeout = TimeoutOf(request.has_timeout(), request.timeout()),
      .lock_id = request.lock_id(),
  };
  if (spec.lock_id != 0) {
    if (absl::Status s = Reachable(*caller, spec.lock_id).status(); !s.ok()) {
      return gate_.Refuse(context, s);
    }
  }
  // Two creators racing for one name: the loser finds the winner's object on its second look.
  for (int attempt = 0;; ++attempt) {
    if (request.exist_ok() && !spec.name.empty()) {
      absl::StatusOr<std::optional<SyncInfo>> found = FindInScope(*caller, owner, spec.name);
      if (!found.ok()) return gate_.Refuse(context, found.status());
      if (found->has_value()) {
        const SyncInfo& existing = **found;
        if (existing.kind != spec.kind) {
          return gate_.Refuse(
              context, absl::FailedPreconditionError(absl::StrCat(
                           "sync object ", spec.name, " (id ", existing.id, ") is a ",
                           SyncKindName(existing.kind), ", not a ", SyncKindName(spec.kind))));
        }
        return Reply(context, existing, response);
      }
    }
    absl::StatusOr<SyncInfo> made = table_.Create(spec);
    if (absl::IsAlreadyExists(made.status()) && request.exist_ok() && attempt == 0) continue;
    return Reply(context, made, response);
  }
}

grpc::ServerUnaryReactor* SyncService::SyncRemove(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* response) {
  v1::SyncRemoveRequest request;
  absl::StatusOr<Caller> caller = gate_.Admit(context, "SyncRemove", *raw, request);
  if (!caller.ok()) return gate_.Deny(context, caller.status());
  absl::Status removed = Reachable(*caller, request.id()).status();
  if (removed.ok()) removed = table_.Remove(request.id());
  if (removed.ok()) SerializeReply(v1::SyncRemoveResponse(), response);
  return FinishWith(context, removed);
}

grpc::ServerUnaryReactor* SyncService::SyncList(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* raw,
                                                grpc::ByteBuffer* response) {
  v1::SyncListRequest request;
  absl::StatusOr<Caller> caller = gate_.Admit(context, "SyncList", *raw, request);
  if (!caller.ok()) return gate_.Deny(context, caller.status());
  v1::SyncListResponse reply;
  if (request.has_id()) {
    absl::StatusOr<SyncInfo> info = Reachable(*caller, request.id());
    if (!info.ok()) return gate_.Refuse(context, info.status());
    ToProto(*info, reply.add_objects());
  } else {
    for (const SyncInfo& info : table_.List()) {
      if (!request.name().empty() && info.name != request.name()) continue;
      if (request.kind() != v1::SYNC_KIND_UNSPECIFIED &&
          static_cast<v1::SyncKind>(info.kind) != request.kind()) {
        continue;
      }
      if (Reach(*caller, info).ok()) ToProto(info, reply.add_objects());
    }
  }
  SerializeReply(reply, response);
  return FinishWith(context, absl::OkStatus());
}

SyncTable::WaiterId SyncService::AcquireAs(const SyncHolderId& holder,
                                           const v1::SyncAcquireRequest& request,
                                           SyncTable::Reply reply) {
  bool blocking = !request.has_blocking() || request.blocking();
  return table_.Acquire(request.id(), holder, blocking,
                        TimeoutOf(request.has_timeout(), request.timeout()), std::move(reply));
}

SyncTable::WaiterId SyncService::WaitAs(const SyncHolderId& holder,
                                        const v1::SyncWaitRequest& request,
                                        SyncTable::Reply reply) {
  return table_.Wait(request.id(), holder, TimeoutOf(request.has_timeout(), request.timeout()),
                     std::move(reply));
}

absl::StatusOr<SyncInfo> SyncService::ReleaseAs(const SyncHolderId& holder,
                                                const v1::SyncReleaseRequest& request) {
  // Unset is 1; a negative count gets the table's "n must be one or more".
  int64_t n = request.n() == 0 ? 1 : request.n();
  return table_.Release(request.id(), holder, n);
}

absl::StatusOr<SyncInfo> SyncService::UpdateAs(const SyncHolderId& holder,
                                               const v1::SyncUpdateRequest& request) {
  const uint64_t id = request.id();
  switch (request.op()) {
    case v1::SYNC_EVENT_SET:
      return table_.Set(id);
    case v1::SYNC_EVENT_CLEAR:
      return table_.Clear(id);
    case v1::SYNC_NOTIFY: {
      int64_t n = request.has_n() ? request.n() : 1;
      if (n < 0) {
        return absl::InvalidArgumentError(
            "n must not be negative; SYNC_NOTIFY_ALL wakes every waiter");
      }
      return table_.Notify(id, holder, n);
    }
    case v1::SYNC_NOTIFY_ALL:
      return table_.Notify(id, holder, -1);
    case v1::SYNC_BARRIER_ABORT:
      return table_.Abort(id);
    case v1::SYNC_BARRIER_RESET:
      return table_.Reset(id);
    default:
      return absl::InvalidArgumentError(
          "op is required: SYNC_EVENT_SET, SYNC_EVENT_CLEAR, SYNC_NOTIFY, SYNC_NOTIFY_ALL, "
          "SYNC_BARRIER_ABORT or SYNC_BARRIER_RESET");
  }
}

grpc::ServerUnaryReactor* SyncService::SyncAcquire(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* response) {
  return OnObject<v1::SyncAcquireRequest>(
      context, "SyncAcquire", *raw,
      [&](const v1::SyncAcquireRequest& request, const SyncHolderId& holder) {
        return ParkOrAnswer(context, table_, response, [&](SyncTable::Reply reply) {
          return AcquireAs(holder, request, std::move(reply));
        });
      });
}

grpc::ServerUnaryReactor* SyncService::SyncRelease(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* response) {
  return OnObject<v1::SyncReleaseRequest>(
      context, "SyncRelease", *raw,
      [&](const v1::SyncReleaseRequest& request, const SyncHolderId& holder) {
        return Reply(context, ReleaseAs(holder, request), response);
      });
}

grpc::ServerUnaryReactor* SyncService::SyncWait(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* raw,
                                                grpc::ByteBuffer* response) {
  return OnObject<v1::SyncWaitRequest>(
      context, "SyncWait", *raw,
      [&](const v1::SyncWaitRequest& request, const SyncHolderId& holder) {
        return ParkOrAnswer(context, table_, response, [&](SyncTable::Reply reply) {
          return WaitAs(holder, request, std::move(reply));
        });
      });
}

grpc::ServerUnaryReactor* SyncService::SyncUpdate(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* response) {
  return OnObject<v1::SyncUpdateRequest>(
      context, "SyncUpdate", *raw,
      [&](const v1::SyncUpdateRequest& request, const SyncHolderId& holder) {
        return Reply(context, UpdateAs(holder, request), response);
      });
}

absl::StatusOr<SyncParty> SyncService::BindablePartyOf(const Caller& caller,
                                                       const v1::SyncBindRequest& request) {
  switch (request.party_case()) {
    case v1::SyncBindRequest::kProcess: {
      const uint64_t id = request.process();
      absl::StatusOr<ProcessInfo> info = supervisor_.Get(id);
      if (!info.ok()) return info.status();
      if (!caller.admin() && !supervisor_.InSubtree(caller.worker_id, id)) {
        return absl::PermissionDeniedError(
            absl::StrCat("process ", id, " is outside the subtree of process ", caller.worker_id,
                         ", whose key made this call: a worker binds only processes of its "
                         "own subtree"));
      }
      if (!info->running) {
        return absl::FailedPreconditionError(
            absl::StrCat("process ", id,
                         " is not running (it has ended, or waits to be restarted): only a "
                         "running process can be bound"));
      }
      return SyncParty{.process = id};
    }
    case v1::SyncBindRequest::kSession:
      if (!caller.admin()) {
        return absl::FailedPreconditionError(
            "sessions are for clients that are not workers; a worker binds processes of its "
            "own subtree");
      }
      if (!supervisor_.IsSessionOpen(request.session())) {
        return absl::NotFoundError(absl::StrCat("no open session ", request.session()));
      }
      return SyncParty{.session = request.session()};
    default:
      return absl::InvalidArgumentError("process or session is required: the party to bind");
  }
}

grpc::ServerUnaryReactor* SyncService::SyncBind(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* raw,
                                                grpc::ByteBuffer* response) {
  v1::SyncBindRequest request;
  absl::StatusOr<Caller> caller = gate_.Admit(context, "SyncBind", *raw, request);
  if (!caller.ok()) return gate_.Deny(context, caller.status());
  if (absl::Status s = Reachable(*caller, request.id()).status(); !s.ok()) {
    return gate_.Refuse(context, s);
  }
  absl::StatusOr<SyncParty> party = BindablePartyOf(*caller, request);
  if (!party.ok()) return gate_.Refuse(context, party.status());
  return Reply(context, table_.Bind(request.id(), *party), response);
}

absl::StatusOr<uint64_t> SyncService::Reserve(const Caller& caller,
                                              const v1::StartRequest& request) {
  std::vector<uint64_t> ids(request.barriers().begin(), request.barriers().end());
  if (ids.empty()) return 0;
  for (uint64_t id : ids) {
    if (absl::Status s = Reachable(caller, id).status(); !s.ok()) return s;
  }
  return table_.Reserve(ids);
}

void SyncService::Bind(uint64_t reservation, uint64_t process) {
  table_.BindReserved(reservation, SyncParty{.process = process});
}

void SyncService::Drop(uint64_t reservation) { table_.DropReserved(reservation); }

// One SyncCalls stream: reads a SyncCall, answers it (at once, or when the wait it began is
// over), then reads the next. A waiting call's Reply and the stream's cancellation meet in
// State, which outlives the reactor: a Reply that comes after the stream ended, or after the
// call was cancelled, finds it so and its grant is given back.
class SyncCallStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  SyncCallStream(SyncService& service, ProctorService::StreamAdmission admission)
      : service_(service), state_(std::make_shared<State>()) {
    state_->stream = this;
    if (!admission.caller.ok()) {
      FinishRefusedStream(state_, admission, service.gate_.timers());
      return;
    }
    caller_ = *std::move(admission.caller);
    // The proof goes out now: the client can trust the stream before its first answer.
    StartSendInitialMetadata();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (reads are made only between calls)
      state_->FinishOnce(grpc::Status::OK);
      return;
    }
    v1::SyncCall call;
    if (absl::Status parsed = ParseRequest(in_, call); !parsed.ok()) {
      state_->FinishOnce(ToGrpc(parsed));
      return;
    }
    switch (call.call_case()) {
      case v1::SyncCall::kAcquire:
        return Park(call.acquire(), &SyncService::AcquireAs);
      case v1::SyncCall::kWait:
        return Park(call.wait(), &SyncService::WaitAs);
      case v1::SyncCall::kRelease:
        return AnswerNow(call.release(), &SyncService::ReleaseAs);
      case v1::SyncCall::kUpdate:
        return AnswerNow(call.update(), &SyncService::UpdateAs);
      default:
        state_->Write(ErrorResult(absl::InvalidArgumentError(
            "a SyncCall names one call: acquire, release, wait or update")));
    }
  }

  void OnWriteDone(bool ok) override {
    if (std::optional<grpc::Status> pending = state_->WriteDone()) {
      state_->FinishOnce(*pending);
    } else if (ok) {
      StartRead(&in_);
    }  // else the stream is broken: OnCancel follows
  }

  void OnCancel() override {
    SyncTable::WaiterId waiter = 0;
    {
      absl::MutexLock lock(&state_->mu);
      state_->cancelled = true;
      if (state_->waiting_call != 0) waiter = state_->waiter;
      state_->waiting_call = 0;  // a Reply from now on finds its call gone
    }
    if (waiter != 0) service_.table_.Cancel(waiter);
    state_->FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    state_->Gone();
    delete this;
  }

 private:
  struct State : BidiStreamState<SyncCallStream> {
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    uint64_t calls ABSL_GUARDED_BY(mu) = 0;         // calls that waited, numbered
    uint64_t waiting_call ABSL_GUARDED_BY(mu) = 0;  // the one waiting unanswered; 0: none
    SyncTable::WaiterId waiter ABSL_GUARDED_BY(mu) = 0;

    void Write(const v1::SyncCallResult& result) {
      absl::MutexLock lock(&mu);
      WriteLocked(result);
    }
    bool WriteLocked(const v1::SyncCallResult& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      if (finished || stream == nullptr) return false;
      SerializeReply(result, &stream->out_);
      writing = true;
      stream->StartWrite(&stream->out_);
      return true;
    }
    // The Reply of waiting call number `call`: false when it is no longer waited for.
    bool Answer(uint64_t call, const absl::StatusOr<SyncWaitResult>& answer) {
      absl::MutexLock lock(&mu);
      if (waiting_call != call) return false;
      waiting_call = 0;
      if (!answer.ok()) return WriteLocked(ErrorResult(answer.status()));
      v1::SyncCallResult result;
      *result.mutable_waited() = WaitResponseOf(*answer);
      return WriteLocked(result);
    }
  };

  static v1::SyncCallResult ErrorResult(const absl::Status& status) {
    v1::SyncCallResult result;
    result.set_code(static_cast<int32_t>(status.code()));
    result.set_message(std::string(status.message()));
    return result;
  }

  template <typename Request>
  void AnswerNow(const Request& request,
                 absl::StatusOr<SyncInfo> (SyncService::*call)(const SyncHolderId&,
                                                               const Request&)) {
    absl::StatusOr<SyncHolderId> holder = service_.HolderFor(caller_, request);
    absl::StatusOr<SyncInfo> info =
        holder.ok() ? (service_.*call)(*holder, request) : holder.status();
    if (!info.ok()) return state_->Write(ErrorResult(info.status()));
    v1::SyncCallResult result;
    ToProto(*info, result.mutable_object());
    state_->Write(result);
  }

  template <typename Request>
  void Park(const Request& request,
            SyncTable::WaiterId (SyncService::*park)(const SyncHolderId&, const Request&,
                                                     SyncTable::Reply)) {
    absl::StatusOr<SyncHolderId> holder = service_.HolderFor(caller_, request);
    if (!holder.ok()) return state_->Write(ErrorResult(holder.status()));
    uint64_t call;
    {
      absl::MutexLock lock(&state_->mu);
      call = ++state_->calls;
      state_->waiting_call = call;
      state_->waiter = 0;
    }
    std::shared_ptr<State> state = state_;
    SyncTable::WaiterId waiter =
        (service_.*park)(*holder, request, [state, call](absl::StatusOr<SyncWaitResult> answer) {
          return state->Answer(call, answer);
        });
    bool cancelled;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->waiting_call == call) {  // it waits: a cancel from now on finds the waiter
        state_->waiter = waiter;
        return;
      }
      cancelled = state_->cancelled;
    }
    // Cancelled before the waiter was known here: it leaves its queue now (a no-op when the
    // call was answered instead).
    if (cancelled) service_.table_.Cancel(waiter);
  }

  SyncService& service_;
  const std::shared_ptr<State> state_;
  Caller caller_;
  grpc::ByteBuffer in_;   // the SyncCall being read
  grpc::ByteBuffer out_;  // the SyncCallResult being written
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SyncService::SyncCalls(
    grpc::CallbackServerContext* context) {
  return new SyncCallStream(*this, gate_.AdmitStream(context, "SyncCalls"));
}

SyncObjects::SyncObjects(Supervisor& supervisor, Timers& timers, ProctorService& gate,
                         SyncLimits limits)
    : table_(timers, limits,
             [&supervisor](const SyncParty& party) {
               return party.process != 0 ? supervisor.IsRunning(party.process)
                                         : supervisor.IsSessionOpen(party.session);
             }),
      service_(table_, supervisor, gate) {
  gate.SetStartBindings(&service_);
  supervisor.SetEndListener([this](uint64_t process, uint64_t session) {
    table_.PartyEnded(SyncParty{.process = process, .session = session});
  });
}

}  // namespace proctor
