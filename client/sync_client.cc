#include "client/sync_client.h"

#include <string>

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

SyncClient::SyncClient(Client& client)
    : client_(client), stub_(v1::Sync::NewStub(client.channel_)) {}

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
  return Call<v1::SyncWaitResponse>("SyncAcquire", &v1::Sync::Stub::SyncAcquire, request,
                                    WaitDeadline(request.has_timeout(), request.timeout()));
}

absl::StatusOr<v1::SyncObject> SyncClient::Release(const v1::SyncReleaseRequest& request) {
  return Call<v1::SyncObject>("SyncRelease", &v1::Sync::Stub::SyncRelease, request,
                              client_.call_timeout_);
}

absl::StatusOr<v1::SyncWaitResponse> SyncClient::Wait(const v1::SyncWaitRequest& request) {
  // A Barrier's own default timeout is the daemon's to apply: no deadline of ours then.
  return Call<v1::SyncWaitResponse>("SyncWait", &v1::Sync::Stub::SyncWait, request,
                                    WaitDeadline(request.has_timeout(), request.timeout()));
}

absl::StatusOr<v1::SyncObject> SyncClient::Update(const v1::SyncUpdateRequest& request) {
  return Call<v1::SyncObject>("SyncUpdate", &v1::Sync::Stub::SyncUpdate, request,
                              client_.call_timeout_);
}

absl::StatusOr<v1::SyncObject> SyncClient::Bind(const v1::SyncBindRequest& request) {
  return Call<v1::SyncObject>("SyncBind", &v1::Sync::Stub::SyncBind, request,
                              client_.call_timeout_);
}

}  // namespace proctor
