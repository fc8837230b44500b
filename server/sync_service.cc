#include "server/sync_service.h"

#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

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

grpc::Status SerializeAnswer(const absl::StatusOr<SyncWaitResult>& result,
                             grpc::ByteBuffer* response) {
  if (result.ok()) {
    v1::SyncWaitResponse reply;
    reply.set_ok(result->ok);
    reply.set_abandoned(result->abandoned);
    reply.set_index(result->index);
    SerializeReply(reply, response);
  }
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

grpc::ServerUnaryReactor* SyncService::SyncAcquire(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* response) {
  return OnObject<v1::SyncAcquireRequest>(
      context, "SyncAcquire", *raw,
      [&](const v1::SyncAcquireRequest& request, const SyncHolderId& holder) {
        bool blocking = !request.has_blocking() || request.blocking();
        std::optional<absl::Duration> timeout =
            TimeoutOf(request.has_timeout(), request.timeout());
        return ParkOrAnswer(context, table_, response, [&](SyncTable::Reply reply) {
          return table_.Acquire(request.id(), holder, blocking, timeout, std::move(reply));
        });
      });
}

grpc::ServerUnaryReactor* SyncService::SyncRelease(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* response) {
  return OnObject<v1::SyncReleaseRequest>(
      context, "SyncRelease", *raw,
      [&](const v1::SyncReleaseRequest& request, const SyncHolderId& holder) {
        // Unset is 1; a negative count gets the table's "n must be one or more".
        int64_t n = request.n() == 0 ? 1 : request.n();
        return Reply(context, table_.Release(request.id(), holder, n), response);
      });
}

grpc::ServerUnaryReactor* SyncService::SyncWait(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* raw,
                                                grpc::ByteBuffer* response) {
  return OnObject<v1::SyncWaitRequest>(
      context, "SyncWait", *raw,
      [&](const v1::SyncWaitRequest& request, const SyncHolderId& holder) {
        std::optional<absl::Duration> timeout =
            TimeoutOf(request.has_timeout(), request.timeout());
        return ParkOrAnswer(context, table_, response, [&](SyncTable::Reply reply) {
          return table_.Wait(request.id(), holder, timeout, std::move(reply));
        });
      });
}

grpc::ServerUnaryReactor* SyncService::SyncUpdate(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* response) {
  return OnObject<v1::SyncUpdateRequest>(
      context, "SyncUpdate", *raw,
      [&](const v1::SyncUpdateRequest& request, const SyncHolderId& holder) {
        const uint64_t id = request.id();
        switch (request.op()) {
          case v1::SYNC_EVENT_SET:
            return Reply(context, table_.Set(id), response);
          case v1::SYNC_EVENT_CLEAR:
            return Reply(context, table_.Clear(id), response);
          case v1::SYNC_NOTIFY: {
            int64_t n = request.has_n() ? request.n() : 1;
            if (n < 0) {
              return gate_.Refuse(context, absl::InvalidArgumentError(
                                               "n must not be negative; SYNC_NOTIFY_ALL wakes "
                                               "every waiter"));
            }
            return Reply(context, table_.Notify(id, holder, n), response);
          }
          case v1::SYNC_NOTIFY_ALL:
            return Reply(context, table_.Notify(id, holder, -1), response);
          case v1::SYNC_BARRIER_ABORT:
            return Reply(context, table_.Abort(id), response);
          case v1::SYNC_BARRIER_RESET:
            return Reply(context, table_.Reset(id), response);
          default:
            return gate_.Refuse(context, absl::InvalidArgumentError(
                                             "op is required: SYNC_EVENT_SET, SYNC_EVENT_CLEAR, "
                                             "SYNC_NOTIFY, SYNC_NOTIFY_ALL, SYNC_BARRIER_ABORT or "
                                             "SYNC_BARRIER_RESET"));
        }
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
