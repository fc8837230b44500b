// proctor::Client: typed, blocking calls to proctord for every RPC of proctor.v1.Proctor.
//
// One Client holds one gRPC channel with a connection of its own (not shared with other
// Clients in the process); it is thread-safe and meant to be shared and kept for the life of
// the program (the connection is made lazily and re-made by gRPC as needed).
// Deadlines: every unary call (and Logs without follow) must be answered within
// ClientOptions::call_timeout, else it fails DEADLINE_EXCEEDED "Status did not answer within
// 30s". Join waits as long as it is asked to in polls of at most the call timeout, each given
// the call timeout again to be answered, so a stopped or wedged daemon is noticed within two
// call timeouts while the Join itself can last for ever. Streams (Logs with follow, Watch,
// Session, Run) have no deadline, but their request must go out within the call timeout: Logs,
// Watch and Run stop when their caller asks, a Session when it is destroyed; Run checks on
// the process with a Join poll whenever it has been quiet for a call timeout.
// Every call returns absl::Status with the daemon's status code and message unchanged, except
// UNAVAILABLE, whose message names the address: "cannot reach proctord at unix:/…: …", and
// the client's own DEADLINE_EXCEEDED above.
#ifndef PROCTOR_CLIENT_CLIENT_H_
#define PROCTOR_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/credentials.h"
#include "proctor/v1/proctor.grpc.pb.h"

namespace proctor {

// The largest reply a Client takes (gRPC's default is 4 MiB): a Status listing of every
// record is one message, some 0.4 KiB a record, more with long arguments.
inline constexpr int kMaxReplyBytes = 256 << 20;
// How long a call that failed for want of a connection (UNAVAILABLE) drives the channel's
// reconnection before it returns: a restarted proctord is then answered by the next call.
inline constexpr absl::Duration kReconnectDrive = absl::Milliseconds(50);

struct ClientOptions {
  // "unix:/path" or "host:port"; an absolute path "/path" means "unix:/path".
  // Empty: $PROCTOR_ADDRESS, else the daemon's default socket.
  std::string address;
  // The key: see client/credentials.h for where it is looked for when `credentials` is unset.
  std::string authkey_file;
  std::optional<Credentials> credentials;
  // TCP addresses use TLS: `tls_ca_file` (else $PROCTOR_TLS_CA, else the system's roots)
  // verifies the daemon; `tls_cert_file`/`tls_key_file` (else $PROCTOR_TLS_CERT/_KEY) are
  // the client's own, for daemons that require them. `insecure_tcp` talks plain TCP.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  bool insecure_tcp = false;
  // How long the daemon has to answer a call (see above); absl::InfiniteDuration() sets no
  // deadline. Connect refuses one that is not positive.
  absl::Duration call_timeout = absl::Seconds(30);
};

// google.protobuf.Duration from absl. Negative durations go through as they are: the daemon
// says what is wrong with them.
google::protobuf::Duration DurationToProto(absl::Duration d);

class Client;

// An open session: a lease that makes this client the parent of the processes it starts with
// StartRequest.session = id(). A thread sends keep-alives every third of the TTL. Destroying
// the Session (or the program dying) ends it, and proctord then terminates its daemonic
// processes. Thread-safe.
class Session {
 public:
  ~Session();
  uint64_t id() const { return id_; }

 private:
  friend class Client;
  Session() = default;
  void KeepAlive(absl::Duration every);

  uint64_t id_ = 0;
  // How long the daemon has to acknowledge the end before the call is cancelled.
  absl::Duration close_timeout_ = absl::InfiniteDuration();
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionEvent>> stream_;
  absl::Mutex mu_;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  std::thread keep_alive_;
};

class Client {
 public:
  // Finds the key and makes the channel; does not contact the daemon (the first call does).
  // INVALID_ARGUMENT when the resolved address is empty or the call timeout not positive;
  // NOT_FOUND when there is no key.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  const std::string& address() const { return address_; }
  // The key in use and where it came from (never printed), and warnings about its file.
  const Credentials& credentials() const { return auth_.credentials(); }

  // With wait_ready, the call may take its ready_timeout (90 s unset) on top of the call timeout.
  absl::StatusOr<v1::Process> Start(const v1::StartRequest& request);
  // Waits until the process ends, or `timeout` passes (the record then says running).
  // No timeout (or an infinite one) waits as long as it takes; a negative one is refused.
  // Made of polls of at most the call timeout each (see above).
  absl::StatusOr<v1::Process> Join(uint64_t id,
                                   std::optional<absl::Duration> timeout = std::nullopt);
  // Join for each of `ids` on one Joins stream, for a caller that waits on many processes:
  // `sink` gets the index into `ids` and that process's record as it ends (or as `timeout`
  // passes for it: the record then says running), or that Join's own error (NOT_FOUND,
  // PERMISSION_DENIED), in the order they come; it runs on the calling thread, one at a time.
  // Returns OK once every id is answered. Each Join is asked in polls of at most the call
  // timeout as Join's are, so a daemon that stops answering ends the wait with
  // DEADLINE_EXCEEDED ("Joins did not answer within 1m") within two call timeouts. Requesting
  // `stop` ends it with CANCELLED ("Joins stopped by its caller"); the processes run on.
  // proctord keeps a few hundred bytes per waiting Join here, where each Join call holds
  // about 16 KiB of gRPC's call state.
  absl::Status JoinEach(const std::vector<uint64_t>& ids, std::optional<absl::Duration> timeout,
                        const std::function<void(size_t, absl::StatusOr<v1::Process>)>& sink,
                        std::stop_token stop = {});
  absl::StatusOr<v1::Process> Terminate(const v1::TerminateRequest& request);
  // One record; NOT_FOUND when the id is unknown (or released).
  absl::StatusOr<v1::Process> Status(uint64_t id);
  // The records matching `filter` (its `id` field is ignored; use Status for one record).
  // `cursor`, when given, receives the cursor the listing reflects: a Watch with that `since`
  // sees exactly the events that came after it, none twice.
  absl::StatusOr<std::vector<v1::Process>> List(const v1::StatusRequest& filter,
                                                uint64_t* cursor = nullptr);
  // Calls `sink` with each chunk of output as it arrives; returns when the stream ends
  // (at once without follow; when the process has ended and all is read, with follow).
  // Requesting `stop` (from any thread) cancels the call: Logs then returns CANCELLED without
  // waiting for the daemon; a chunk being passed to `sink` at that moment is passed whole.
  absl::Status Logs(const v1::LogsRequest& request,
                    const std::function<void(std::string_view)>& sink,
                    std::stop_token stop = {});
  // Calls `sink` with each event the daemon sends (see WatchRequest: the kept events after
  // `since`, or none when it is unset, then live ones), in cursor order, until one of:
  // - `sink` returns false: the call is cancelled and Watch returns OK;
  // - `stop` is requested (from any thread): Watch returns CANCELLED "Watch stopped by its
  //   caller" without waiting for the daemon; an event being passed to `sink` at that moment
  //   is passed whole;
  // - the daemon ends the stream: its status, e.g. OUT_OF_RANGE for a `since` older than
  //   what it keeps (or newer than its last event), RESOURCE_EXHAUSTED when this watcher fell
  //   too far behind (the message names the cursor to watch again from), UNAVAILABLE when
  //   it shuts down.
  // Nothing reaches `sink` before the daemon has proved itself. The request must go out
  // within the call timeout; the stream then has no deadline.
  absl::Status Watch(const v1::WatchRequest& request,
                     const std::function<bool(const v1::Event&)>& sink,
                     std::stop_token stop = {});
  // Starts a process as Start does (the same request, checks and errors: a refused start or
  // a failed exec is Run's error) and follows it to its end in one call: `on_started` (when
  // set) gets the started record, then `on_output` each piece of stdout and stderr as it is
  // written, each stream's in order and whole, and Run returns the exit record (as Join
  // does) once the process has ended and all its output has been passed on. The callbacks
  // run on the calling thread, one at a time. Nothing reaches them before the daemon has
  // proved itself. The started record is due within the call timeout (plus the ready
  // timeout with wait_ready, as for Start); after it the call has no deadline, but whenever
  // it has been quiet for a call timeout a Join poll asks after the process, so a daemon that
  // stopped answering ends Run with that poll's DEADLINE_EXCEEDED ("Join did not answer
  // within 1m"). Requesting `stop` cancels the call (CANCELLED "Run stopped by its caller");
  // the process goes on running, as it does when the caller goes away.
  absl::StatusOr<v1::Process> Run(
      const v1::StartRequest& request,
      const std::function<void(v1::Stream, std::string_view)>& on_output,
      const std::function<void(const v1::Process&)>& on_started = nullptr,
      std::stop_token stop = {});
  absl::Status Release(uint64_t id);
  // Has proctord apply its services directory now (admin keys only): what it decided, the
  // files it could not use among `errors` (see ReloadResponse).
  absl::StatusOr<v1::ReloadResponse> Reload();
  // Every declared service, in name order, with its process's record (admin keys only).
  absl::StatusOr<std::vector<v1::Service>> ListServices();
  // Opens a session whose lease lasts `ttl` without a keep-alive.
  absl::StatusOr<std::unique_ptr<Session>> OpenSession(absl::Duration ttl = absl::Seconds(10));
  // Takes up session `id` again after a restart of proctord (it waits for its TTL, counted
  // from the restart), with this client's key, which must be the one that opened it;
  // NOT_FOUND once it has ended. See SessionRequest.resume.
  absl::StatusOr<std::unique_ptr<Session>> ResumeSession(uint64_t id,
                                                         absl::Duration ttl = absl::Seconds(10));

 private:
  // resume 0: a new session.
  absl::StatusOr<std::unique_ptr<Session>> OpenOrResumeSession(uint64_t resume,
                                                               absl::Duration ttl);
  friend class SyncClient;  // proctor.v1.Sync on the same channel and key (client/sync_client.h)
  Client(std::string address, std::shared_ptr<grpc::Channel> channel, CallAuth auth,
         absl::Duration call_timeout);
  // A signed context for one call of `method`, with a deadline `timeout` from now (none when
  // infinite); `nonce` receives what the reply must answer.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::string_view method, std::string* nonce,
                                                  absl::Duration timeout) const;
  // The call's outcome as the caller sees it, after the reply's proof is checked; `timeout`
  // is the one NewContext was given, for the message when it passed.
  absl::Status Finish(const grpc::ClientContext& context, absl::string_view method,
                      absl::string_view nonce, const grpc::Status& status,
                      absl::Duration timeout = absl::InfiniteDuration()) const;
  // Start's call timeout: with wait_ready, the ready timeout on top.
  absl::Duration StartTimeout(const v1::StartRequest& request) const;
  // One unary call of `method` through `rpc`, answered within `timeout`.
  template <typename Request, typename Response>
  absl::Status Unary(absl::string_view method,
                     grpc::Status (v1::Proctor::Stub::*rpc)(grpc::ClientContext*,
                                                            const Request&, Response*),
                     const Request& request, Response* response, absl::Duration timeout);

  // One server-streaming call of `method` through `rpc`, passing each message to `on_message`
  // until it returns false (then OK). `timeout` is the whole call's deadline; when infinite,
  // only the request's sending is given the call timeout. Requesting `stop` cancels the call
  // (CANCELLED "<method> stopped by its caller").
  template <typename Request, typename Message>
  absl::Status ServerStream(absl::string_view method,
                            std::unique_ptr<grpc::ClientReader<Message>> (
                                v1::Proctor::Stub::*rpc)(grpc::ClientContext*, const Request&),
                            const Request& request, absl::Duration timeout,
                            const std::function<bool(const Message&)>& on_message,
                            std::stop_token stop);

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Proctor::Stub> stub_;
  CallAuth auth_;
  const absl::Duration call_timeout_;
};

}  // namespace proctor

#endif  // PROCTOR_CLIENT_CLIENT_H_
