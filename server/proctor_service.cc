#include "server/proctor_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/authkey.h"
#include "google/protobuf/arena.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/util/time_util.h"
#include "server/bidi_stream_state.h"
#include "server/posix_error.h"
#include "server/watch_stream.h"

namespace proctor {
namespace {

using google::protobuf::util::TimeUtil;

constexpr int kSigterm = 15;
constexpr size_t kLogChunkBytes = 64 * 1024;
// How often a followed log is read again while the process runs and has written nothing.
constexpr absl::Duration kFollowInterval = absl::Milliseconds(50);

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status HeldBack(const absl::Status& refused, absl::Duration delay) {
  if (delay <= absl::ZeroDuration()) return refused;
  return absl::Status(refused.code(),
                      absl::StrCat(refused.message(), " (this answer was held back ",
                                   absl::FormatDuration(delay),
                                   ": refusals that keep coming are answered more and more "
                                   "slowly)"));
}

namespace {

// Opens one of `record`'s capture files for reading.
absl::StatusOr<int> OpenCaptured(const ProcessInfo& record, const std::string& path) {
  // O_NONBLOCK: the file may be being taken back into the stock under a lease (see
  // CaptureFiles); waiting for the lease would open a file that is about to be someone
  // else's, so the open fails instead and is tried again on the path, which is gone by then.
  for (int attempt = 0;; ++attempt) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) return fd;
    const int err = errno;
    if (err == EWOULDBLOCK && attempt < 100) {
      usleep(100);  // the lease is held for a rename's time
      continue;
    }
    // An ended record's output that stayed empty was given back: it reads as empty.
    if (err == ENOENT && !record.running && !record.backoff) {
      fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) return fd;
    }
    return PosixError(absl::StrCat("cannot open captured output ", path), err);
  }
}

// Reads the next chunk (up to kLogChunkBytes) of a capture file from `offset` into `data`, and
// moves `offset` past it; returns where the chunk began. Empty: nothing more for now.
absl::StatusOr<int64_t> ReadCaptured(int fd, int64_t& offset, std::string& data) {
  // Output dropped by --max-log-bytes is a hole at the start of the file: skip it.
  if (off_t start = lseek(fd, offset, SEEK_DATA); start > offset) offset = start;
  data.resize(kLogChunkBytes);
  ssize_t n = pread(fd, data.data(), kLogChunkBytes, offset);
  if (n < 0) {
    data.clear();
    return absl::InternalError(absl::StrCat("reading output: ", std::strerror(errno)));
  }
  data.resize(n);
  const int64_t at = offset;
  offset += n;
  return at;
}

// A unary call answered later by a supervisor callback. The shared state lets whichever of
// "answer" and "cancel" comes first finish the call, and the other do nothing.
class ParkedCall final : public grpc::ServerUnaryReactor {
 public:
  using Park = std::function<Supervisor::WaiterId(Supervisor::Done)>;

  ParkedCall(Supervisor& supervisor, grpc::ByteBuffer* response, const Park& park)
      : supervisor_(supervisor), state_(std::make_shared<State>()) {
    state_->call = this;
    std::shared_ptr<State> state = state_;
    Supervisor::WaiterId waiter = park([state, response](absl::StatusOr<ProcessInfo> result) {
      absl::MutexLock lock(&state->mu);
      if (state->finished) return;
      state->finished = true;
      if (result.ok()) {
        v1::Process process;
        ToProto(*result, &process);
        SerializeReply(process, response);
      }
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

// One Joins stream: parks each JoinRequest read as a Join in the supervisor and answers it
// with a JoinResult when that Join completes, one write at a time, in the order they complete.
// Reading pauses while kMaxUnwritten results wait to be written, so a client that asks
// without reading slows itself rather than growing proctord. The stream finishes OK once the
// client has closed its side and nothing waits or is left to write. A completion and the
// stream's cancellation meet in State, which outlives the reactor.
class JoinStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr size_t kMaxUnwritten = 1024;
  // OK when `caller` may read the record of process `id`.
  using Authorize = std::function<absl::Status(const Caller& caller, uint64_t id)>;

  JoinStream(Supervisor& supervisor, Timers& timers, ProctorService::StreamAdmission admission,
             Authorize authorize)
      : supervisor_(supervisor), authorize_(std::move(authorize)),
        state_(std::make_shared<State>()) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->stream = this;
    }
    if (!admission.caller.ok()) {
      FinishRefusedStream(state_, admission, timers);
      return;
    }
    caller_ = *std::move(admission.caller);
    // The proof goes out now: the client can trust the stream before its first answer.
    StartSendInitialMetadata();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side: finish once every Join is answered
      absl::MutexLock lock(&state_->mu);
      state_->reads_done = true;
      state_->FinishIfAnsweredLocked();
      return;
    }
    v1::JoinRequest request;
    if (absl::Status parsed = ParseRequest(in_, request); !parsed.ok()) {
      state_->FinishOnce(ToGrpc(parsed));
      return;
    }
    const uint64_t number = ++requests_;
    if (absl::Status allowed = authorize_(caller_, request.id()); !allowed.ok()) {
      state_->Answer(number, allowed);
    } else {
      Park(number, request);
    }
    absl::MutexLock lock(&state_->mu);
    if (state_->finished) return;  // cancelled meanwhile: nothing more is read
    if (state_->unwritten.size() < kMaxUnwritten) {
      StartRead(&in_);
    } else {
      state_->read_paused = true;  // OnWriteDone reads again
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&state_->mu);
    state_->writing = false;
    state_->unwritten.pop_front();
    // A finish that waited for this write goes now, whether or not the write went through:
    // the call is not done until it is finished.
    if (state_->pending_finish.has_value()) {
      state_->finished = true;
      Finish(*std::exchange(state_->pending_finish, std::nullopt));
      return;
    }
    if (!ok) return;  // the stream is broken: OnCancel follows, and finishes it
    if (state_->read_paused && !state_->finished &&
        state_->unwritten.size() < kMaxUnwritten) {
      state_->read_paused = false;
      StartRead(&in_);
    }
    if (!state_->WriteNextLocked()) state_->FinishIfAnsweredLocked();
  }

  void OnCancel() override {
    ForgetWaiting();
    state_->FinishOnce(grpc::Status::CANCELLED);
  }

  // Also after a finish for a bad request: what still waits would otherwise wait on.
  void OnDone() override {
    ForgetWaiting();
    state_->Gone();
    delete this;
  }

 private:
  struct State : BidiStreamState<JoinStream> {
    bool reads_done ABSL_GUARDED_BY(mu) = false;
    bool read_paused ABSL_GUARDED_BY(mu) = false;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    // Requests parked and not yet answered, by number, with their waiter (0 until known).
    absl::flat_hash_map<uint64_t, Supervisor::WaiterId> waiting ABSL_GUARDED_BY(mu);
    // Serialized JoinResults; the first is being written while `writing`.
    std::deque<grpc::ByteBuffer> unwritten ABSL_GUARDED_BY(mu);

    // The answer to request `number`, unless it is no longer waited for.
    void Answer(uint64_t number, const absl::StatusOr<ProcessInfo>& result) {
      v1::JoinResult reply;
      reply.set_request(number);
      if (result.ok()) {
        ToProto(*result, reply.mutable_process());
      } else {
        reply.set_code(static_cast<int32_t>(result.status().code()));
        reply.set_message(std::string(result.status().message()));
      }
      absl::MutexLock lock(&mu);
      if (finished || stream == nullptr || cancelled) return;
      waiting.erase(number);
      SerializeReply(reply, &unwritten.emplace_back());
      WriteNextLocked();
    }
    // Starts writing the first unwritten result unless a write is in flight; false when
    // there is none to write.
    bool WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      if (writing) return true;
      if (unwritten.empty() || finished || stream == nullptr) return false;
      writing = true;
      stream->StartWrite(&unwritten.front());
      return true;
    }
    void FinishIfAnsweredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      if (!reads_done || !waiting.empty() || writing || !unwritten.empty()) return;
      if (finished || stream == nullptr) return;
      finished = true;
      stream->Finish(grpc::Status::OK);
    }
  };

  // The Joins still waiting leave the supervisor; a completion from now on finds its
  // request gone.
  void ForgetWaiting() {
    std::vector<Supervisor::WaiterId> waiters;
    {
      absl::MutexLock lock(&state_->mu);
      state_->cancelled = true;
      for (const auto& [number, waiter] : state_->waiting) {
        if (waiter != 0) waiters.push_back(waiter);
      }
      state_->waiting.clear();
    }
    for (Supervisor::WaiterId waiter : waiters) supervisor_.CancelWait(waiter);
  }

  void Park(uint64_t number, const v1::JoinRequest& request) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->waiting.emplace(number, 0);
    }
    std::optional<absl::Duration> timeout;
    if (request.has_timeout()) timeout = FromDurationProto(request.timeout());
    std::shared_ptr<State> state = state_;
    Supervisor::WaiterId waiter =
        supervisor_.Join(request.id(), timeout, [state, number](absl::StatusOr<ProcessInfo> r) {
          state->Answer(number, r);
        });
    {
      absl::MutexLock lock(&state_->mu);
      auto it = state_->waiting.find(number);
      if (it != state_->waiting.end()) {  // it waits: a cancel from now on finds the waiter
        it->second = waiter;
        return;
      }
      if (!state_->cancelled) return;  // answered already
    }
    // Cancelled before the waiter was known here: it leaves now.
    supervisor_.CancelWait(waiter);
  }

  Supervisor& supervisor_;
  const Authorize authorize_;
  const std::shared_ptr<State> state_;
  Caller caller_;
  uint64_t requests_ = 0;  // JoinRequests read; reads are one at a time
  grpc::ByteBuffer in_;    // the JoinRequest being read
};

// Streams one capture file. Reads happen on gRPC's threads (after each write) and on the
// timer thread (while following an idle file); the mutex keeps them one at a time.
class LogStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  LogStream(Supervisor& supervisor, Timers& timers, uint64_t id, int fd, int64_t offset,
            bool follow)
      : supervisor_(supervisor),
        timers_(timers),
        id_(id),
        fd_(fd),
        offset_(offset),
        follow_(follow) {
    // A followed file may stay empty for long: the headers, and the proof in them, go out now.
    if (follow_) StartSendInitialMetadata();
    absl::MutexLock lock(&shared_->mu);
    shared_->stream = this;
    PumpLocked();
  }

  ~LogStream() override {
    close(fd_);
    supervisor_.CloseLogs(id_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&shared_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&shared_->mu);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }

  // Deletes the stream now, even with a follow timer pending: the timer's callback finds the
  // stream gone (a callback deferred to the timer could be dropped by a stopping proctord).
  void OnDone() override {
    TimerId pending;
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->stream = nullptr;
      pending = timer_;
    }
    if (pending != 0) timers_.Cancel(pending);
    delete this;
  }

 private:
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(shared_->mu) {
    if (finished_) return;
    // Whether the process had ended is asked before reading: output written before the exit
    // is then surely in the file, and an empty read means the end.
    bool ended = !follow_ || !IsRunning();
    absl::StatusOr<int64_t> at = ReadCaptured(fd_, offset_, *chunk_.mutable_data());
    if (!at.ok()) {
      FinishLocked(ToGrpc(at.status()));
      return;
    }
    if (!chunk_.data().empty()) {
      chunk_.set_offset(*at);
      SerializeReply(chunk_, &out_);
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (ended) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    timer_ = timers_.After(kFollowInterval, [shared = shared_] {
      absl::MutexLock lock(&shared->mu);
      LogStream* stream = shared->stream;
      if (stream == nullptr) return;
      stream->shared_->mu.AssertHeld();  // the same mutex: the stream's shared_ is `shared`
      stream->timer_ = 0;
      stream->PumpLocked();
    });
  }

  bool IsRunning() {
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(id_);
    return info.ok() && (info->running || info->backoff);  // a restart writes on
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shared_->mu) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  // What the follow timer's callback shares with the stream, which may be gone when it runs.
  struct Shared {
    absl::Mutex mu;
    LogStream* stream ABSL_GUARDED_BY(mu);
  };

  Supervisor& supervisor_;
  Timers& timers_;
  const uint64_t id_;
  const int fd_;
  const std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  int64_t offset_ ABSL_GUARDED_BY(shared_->mu);
  const bool follow_;
  v1::LogChunk chunk_ ABSL_GUARDED_BY(shared_->mu);
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(shared_->mu);  // chunk_, serialized; alive until written
  bool writing_ ABSL_GUARDED_BY(shared_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(shared_->mu) = false;
  TimerId timer_ ABSL_GUARDED_BY(shared_->mu) = 0;
};

class FailedStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // Finishes with `status`, at once or after `delay`.
  FailedStream(const absl::Status& status, Timers& timers,
               absl::Duration delay = absl::ZeroDuration()) {
    if (delay <= absl::ZeroDuration()) {
      Finish(ToGrpc(status));
    } else {
      timers.After(delay, [this, s = ToGrpc(HeldBack(status, delay))] { Finish(s); });
    }
  }
  void OnDone() override { delete this; }
};

// One Run: the started record, then the output of both capture files as it is written, then
// the exit record. Like a followed LogStream it reads after each write, and every
// kFollowInterval while the process runs and has written nothing; the exit (a parked Join)
// wakes it at once, so a short process ends the call without waiting for the interval.
// Reads and writes happen one at a time under the state's mutex, on gRPC's threads, the timer
// thread and the thread that reports the exit or readiness; the supervisor's callbacks and
// the timers hold the state rather than the stream, and do nothing once it is done.
class RunStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // Follows `started`, whose capture files are held (OpenLogs) until the stream is destroyed.
  // With `ready_timeout`, the started record is sent once the worker is ready, and a worker
  // that is not is the call's error, as for Start.
  static grpc::ServerWriteReactor<grpc::ByteBuffer>* Begin(
      Supervisor& supervisor, Timers& timers, const ProcessInfo& started,
      std::optional<absl::Duration> ready_timeout) {
    absl::StatusOr<ProcessInfo> info = supervisor.OpenLogs(started.id);
    if (!info.ok()) return new FailedStream(info.status(), timers);
    absl::StatusOr<int> out = OpenCaptured(*info, info->stdout_path);
    absl::StatusOr<int> err = out.ok() ? OpenCaptured(*info, info->stderr_path) : out;
    if (!err.ok()) {
      if (out.ok()) close(*out);
      supervisor.CloseLogs(started.id);
      return new FailedStream(err.status(), timers);
    }
    const int fds[2] = {*out, *err};
    return new RunStream(supervisor, timers, started, ready_timeout, fds);
  }

  ~RunStream() override {
    for (Output& output : outputs_) close(output.fd);
    supervisor_.CloseLogs(id_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&state_->mu);
    state_->writing = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&state_->mu);
    if (!state_->writing) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    std::vector<Supervisor::WaiterId> waiters;
    {
      absl::MutexLock lock(&state_->mu);
      state_->stream = nullptr;
      waiters = {state_->join, state_->ready};
    }
    for (Supervisor::WaiterId waiter : waiters) {
      if (waiter != 0) supervisor_.CancelWait(waiter);
    }
    delete this;
  }

 private:
  struct Output {
    v1::Stream stream;
    int fd;
    int64_t offset = 0;
  };
  struct State {
    absl::Mutex mu;
    RunStream* stream ABSL_GUARDED_BY(mu) = nullptr;  // null once done
    std::optional<v1::Process> started ABSL_GUARDED_BY(mu);  // known, not yet sent
    bool started_sent ABSL_GUARDED_BY(mu) = false;
    std::optional<absl::StatusOr<ProcessInfo>> exit ABSL_GUARDED_BY(mu);
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;
    TimerId timer ABSL_GUARDED_BY(mu) = 0;
    Supervisor::WaiterId join ABSL_GUARDED_BY(mu) = 0;
    Supervisor::WaiterId ready ABSL_GUARDED_BY(mu) = 0;

    // Runs `step` on the stream unless it is done.
    void WithStream(const std::function<void(RunStream&)>& step) {
      absl::MutexLock lock(&mu);
      if (stream != nullptr) step(*stream);
    }
  };

  RunStream(Supervisor& supervisor, Timers& timers, const ProcessInfo& started,
            std::optional<absl::Duration> ready_timeout, const int fds[2])
      : supervisor_(supervisor),
        timers_(timers),
        id_(started.id),
        outputs_{Output{v1::STREAM_STDOUT, fds[0]}, Output{v1::STREAM_STDERR, fds[1]}},
        state_(std::make_shared<State>()) {
    // The first event may be long in coming (readiness): the proof goes out now.
    StartSendInitialMetadata();
    std::shared_ptr<State> state = state_;
    {
      absl::MutexLock lock(&state->mu);
      state->stream = this;
      if (!ready_timeout.has_value()) {
        state->started.emplace();
        ToProto(started, &*state->started);
      }
    }
    // The supervisor may answer at once, on this thread: no lock is held while asking.
    if (ready_timeout.has_value()) {
      Supervisor::WaiterId ready = supervisor_.AwaitReady(
          id_, *ready_timeout, [state](absl::StatusOr<ProcessInfo> result) {
            state->WithStream([&](RunStream& stream) {
              stream.state_->mu.AssertHeld();  // WithStream holds it
              stream.state_->ready = 0;
              if (!result.ok()) {
                stream.FinishLocked(ToGrpc(result.status()));
                return;
              }
              stream.state_->started.emplace();
              ToProto(*result, &*stream.state_->started);
              stream.PumpLocked();
            });
          });
      SetWaiter(&State::ready, ready);
    }
    Supervisor::WaiterId join =
        supervisor_.Join(id_, std::nullopt, [state](absl::StatusOr<ProcessInfo> result) {
          state->WithStream([&](RunStream& stream) {
            stream.state_->mu.AssertHeld();  // WithStream holds it
            stream.state_->join = 0;
            stream.state_->exit = std::move(result);
            stream.PumpLocked();
          });
        });
    SetWaiter(&State::join, join);
    absl::MutexLock lock(&state_->mu);
    PumpLocked();
  }

  // Keeps `waiter` for cancelling, unless its answer has come already.
  void SetWaiter(Supervisor::WaiterId State::*which, Supervisor::WaiterId waiter) {
    absl::MutexLock lock(&state_->mu);
    const bool answered = which == &State::join ? state_->exit.has_value()
                                                 : state_->started.has_value() || state_->finished;
    if (!answered) state_.get()->*which = waiter;
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (state_->finished || state_->writing || !state_->started.has_value()) return;
    if (!state_->started_sent) {
      state_->started_sent = true;
      *event_.mutable_started() = *state_->started;
      WriteLocked();
      return;
    }
    // Whether the process had ended is asked before reading: output written before the exit
    // is then surely in the files, and empty reads mean the end.
    const bool ended = state_->exit.has_value();
    // Both streams in turn, so that neither holds up the other.
    for (int tries = 0; tries < 2; ++tries) {
      Output& output = outputs_[next_output_];
      next_output_ = 1 - next_output_;
      v1::RunOutput& chunk = *event_.mutable_output();
      absl::StatusOr<int64_t> at = ReadCaptured(output.fd, output.offset, *chunk.mutable_data());
      if (!at.ok()) {
        FinishLocked(ToGrpc(at.status()));
        return;
      }
      if (chunk.data().empty()) continue;
      chunk.set_stream(output.stream);
      chunk.set_offset(*at);
      WriteLocked();
      return;
    }
    if (ended) {
      if (!state_->exit->ok()) {
        FinishLocked(ToGrpc(state_->exit->status()));
        return;
      }
      ToProto(**state_->exit, event_.mutable_exited());
      SerializeReply(event_, &out_);
      state_->finished = true;
      StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    if (state_->timer != 0) return;
    std::shared_ptr<State> shared = state_;
    state_->timer = timers_.After(kFollowInterval, [shared] {
      shared->WithStream([](RunStream& stream) {
        stream.state_->mu.AssertHeld();  // WithStream holds it
        stream.state_->timer = 0;
        stream.PumpLocked();
      });
    });
  }

  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    SerializeReply(event_, &out_);
    state_->writing = true;
    StartWrite(&out_);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (state_->finished) return;
    state_->finished = true;
    Finish(status);
  }

  Supervisor& supervisor_;
  Timers& timers_;
  const uint64_t id_;
  Output outputs_[2];  // read under state_->mu
  int next_output_ = 0;
  v1::RunEvent event_;      // the event being written
  grpc::ByteBuffer out_;    // event_, serialized; alive until written
  std::shared_ptr<State> state_;
};

// One session: open on the first request, touch on each later one, close when the client
// closes or goes away. The session's expiry may come from the timer thread at any moment,
// so the shared state lets it finish the stream only while the reactor is alive.
class SessionStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr absl::Duration kDefaultTtl = absl::Seconds(10);

  SessionStream(Supervisor& supervisor, Timers& timers, const absl::Status& refused,
                absl::Duration refusal_delay, std::string owner)
      : supervisor_(supervisor), owner_(std::move(owner)), state_(std::make_shared<State>()) {
    state_->stream = this;
    if (!refused.ok()) {
      grpc::Status status = ToGrpc(HeldBack(refused, refusal_delay));
      if (refusal_delay <= absl::ZeroDuration()) {
        Finish(status);
      } else {
        std::shared_ptr<State> state = state_;
        timers.After(refusal_delay, [state, status] { state->FinishOnce(status); });
      }
      return;
    }
    // The proof goes out now, not with the first event: the client can trust the stream
    // before the session is open.
    StartSendInitialMetadata();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      CloseSession();
      state_->FinishOnce(grpc::Status::OK);
      return;
    }
    v1::SessionRequest request;
    if (absl::Status parsed = ParseRequest(request_, request); !parsed.ok()) {
      state_->FinishOnce(ToGrpc(parsed));
      return;
    }
    if (session_ == 0) {
      std::optional<absl::Duration> requested_ttl;
      if (request.has_ttl()) requested_ttl = FromDurationProto(request.ttl());
      if (requested_ttl.has_value() && *requested_ttl <= absl::ZeroDuration()) {
        state_->FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                        "session ttl must be positive"));
        return;
      }
      std::shared_ptr<State> state = state_;
      auto on_expired = [state](absl::Duration ttl) {
        return [state, ttl] {
          state->FinishOnce(grpc::Status(
              grpc::StatusCode::DEADLINE_EXCEEDED,
              absl::StrCat("session ended: no keep-alive within its ttl of ",
                           absl::FormatDuration(ttl))));
        };
      };
      absl::StatusOr<uint64_t> session;
      if (request.resume() != 0) {
        session = request.resume();
        absl::Status resumed =
            supervisor_.ResumeSession(request.resume(), owner_, requested_ttl,
                                      on_expired(requested_ttl.value_or(kDefaultTtl)));
        if (!resumed.ok()) session = resumed;
      } else {
        absl::Duration ttl = requested_ttl.value_or(kDefaultTtl);
        session = supervisor_.OpenSession(ttl, on_expired(ttl), owner_);
      }
      if (!session.ok()) {
        state_->FinishOnce(ToGrpc(session.status()));
        return;
      }
      {
        absl::MutexLock lock(&state_->mu);
        session_ = *session;
        v1::SessionEvent event;
        event.set_session(*session);
        SerializeReply(event, &event_);
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
    if (std::optional<grpc::Status> pending = state_->WriteDone()) state_->FinishOnce(*pending);
  }

  void OnCancel() override {
    CloseSession();
    state_->FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    CloseSession();
    state_->Gone();
    delete this;
  }

 private:
  using State = BidiStreamState<SessionStream>;

  void CloseSession() {
    uint64_t session;
    {
      absl::MutexLock lock(&state_->mu);
      session = session_;
    }
    if (session != 0) supervisor_.CloseSession(session);
  }

  Supervisor& supervisor_;
  const std::string owner_;  // digest of the caller's key: who may resume the session
  std::shared_ptr<State> state_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer event_;  // a SessionEvent, serialized
  uint64_t session_ = 0;  // guarded by state_->mu once reads and timers run
};

std::optional<std::string> CredentialOf(grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kAuthMetadataKey);
  if (it == metadata.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(status));
  return reactor;
}

}  // namespace

ProctorService::ProctorService(Supervisor& supervisor, Timers& timers,
                               Authenticator& authenticator, Clock& clock, EventLog& events,
                               ServiceManager& services)
    : supervisor_(supervisor),
      timers_(timers),
      authenticator_(authenticator),
      events_(events),
      services_(services),
      limit_refusals_(clock, Backoff::Policy{.free_refusals = 0,
                                             .first = absl::Milliseconds(200),
                                             .max = absl::Seconds(5),
                                             .memory = absl::Seconds(30)}) {}

absl::StatusOr<Caller> ProctorService::Authenticate(grpc::CallbackServerContext* context,
                                                    absl::string_view method) {
  std::string proof;
  absl::StatusOr<Caller> caller =
      authenticator_.Verify(CredentialOf(context), method, context->peer(), &proof);
  if (!proof.empty()) context->AddInitialMetadata(kServerProofMetadataKey, proof);
  return caller;
}

absl::StatusOr<Caller> ProctorService::Admit(grpc::CallbackServerContext* context,
                                             absl::string_view method, const grpc::ByteBuffer& raw,
                                             google::protobuf::Message& request) {
  // Authentication first: a caller without a key learns nothing, not even what is wrong
  // with its request.
  absl::StatusOr<Caller> caller = Authenticate(context, method);
  if (!caller.ok()) return caller;
  if (absl::Status parsed = ParseRequest(raw, request); !parsed.ok()) return parsed;
  return caller;
}

absl::Duration ProctorService::HoldBack(grpc::CallbackServerContext* context,
                                        const absl::Status& refused) {
  // Admit's RESOURCE_EXHAUSTED can only be the authenticator's (a key over its rate); the
  // supervisor's limits are held back per tree, by Start.
  if (!absl::IsUnauthenticated(refused) && !absl::IsResourceExhausted(refused)) {
    return absl::ZeroDuration();
  }
  return authenticator_.FailureDelay(CredentialOf(context), context->peer());
}

absl::Status ProctorService::Authorize(const Caller& caller, uint64_t id, Access access) {
  if (caller.admin()) return absl::OkStatus();
  if (absl::Status known = supervisor_.Get(id).status(); !known.ok()) return known;
  if (supervisor_.InSubtree(caller.worker_id, id)) return absl::OkStatus();
  const bool ancestor = supervisor_.InSubtree(id, caller.worker_id);
  if (access == Access::kRead && ancestor) return absl::OkStatus();
  if (ancestor) {
    return absl::PermissionDeniedError(
        absl::StrCat("process ", id, " is an ancestor of process ", caller.worker_id,
                     ", whose key made this call: its record may be read, not changed"));
  }
  return absl::PermissionDeniedError(
      absl::StrCat("process ", id, " is outside the subtree of process ", caller.worker_id,
                   ", whose key made this call"));
}

absl::StatusOr<Caller> ProctorService::AdmitAdmin(grpc::CallbackServerContext* context,
                                                  absl::string_view method,
                                                  const grpc::ByteBuffer& raw,
                                                  google::protobuf::Message& request) {
  absl::StatusOr<Caller> caller = Admit(context, method, raw, request);
  if (caller.ok() && !caller->admin()) {
    return absl::PermissionDeniedError(
        absl::StrCat(method, " is for admin keys; this call was made with the key of process ",
                     caller->worker_id));
  }
  return caller;
}

grpc::ServerUnaryReactor* ProctorService::Refuse(grpc::CallbackServerContext* context,
                                                 const absl::Status& status,
                                                 absl::Duration delay) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (delay <= absl::ZeroDuration()) {
    reactor->Finish(ToGrpc(status));
  } else {
    timers_.After(delay, [reactor, s = ToGrpc(HeldBack(status, delay))] { reactor->Finish(s); });
  }
  return reactor;
}

ProctorService::StreamAdmission ProctorService::AdmitStream(grpc::CallbackServerContext* context,
                                                            absl::string_view method) {
  absl::StatusOr<Caller> caller = Authenticate(context, method);
  absl::Duration hold_back = HoldBack(context, caller.status());
  return {std::move(caller), hold_back};
}

grpc::ServerUnaryReactor* ProctorService::Deny(grpc::CallbackServerContext* context,
                                               const absl::Status& refused) {
  return Refuse(context, refused, HoldBack(context, refused));
}

ProctorService::Started ProctorService::AdmitAndStart(grpc::CallbackServerContext* context,
                                                      absl::string_view method,
                                                      const grpc::ByteBuffer& raw,
                                                      v1::StartRequest& request) {
  absl::StatusOr<Caller> caller = Admit(context, method, raw, request);
  if (!caller.ok()) return {caller.status(), HoldBack(context, caller.status())};
  StartSpec spec;
  spec.parent_id = caller->worker_id;
  spec.authkey = request.authkey();
  spec.session = request.session();
  if (spec.session != 0 && !caller->admin()) {
    return {absl::FailedPreconditionError(
        "sessions are for clients that are not workers; a worker's key makes the worker "
        "itself the parent")};
  }
  if (absl::Status s = StartSpecFromRequest(request, spec); !s.ok()) return {s};
  uint64_t reservation = 0;
  if (request.barriers_size() > 0) {
    absl::StatusOr<uint64_t> reserved =
        bindings_ != nullptr
            ? bindings_->Reserve(*caller, request)
            : absl::FailedPreconditionError("this proctord keeps no sync objects to bind to");
    if (!reserved.ok()) return {reserved.status()};
    reservation = *reserved;
  }
  absl::StatusOr<ProcessInfo> started = supervisor_.Start(spec);
  if (reservation != 0) {
    // Bound before the reply: the caller may count on it as soon as it has the process.
    if (started.ok()) {
      bindings_->Bind(reservation, started->id);
    } else {
      bindings_->Drop(reservation);
    }
  }
  if (absl::IsResourceExhausted(started.status())) {
    std::string tree = caller->admin() ? absl::StrCat("admin@", context->peer())
                                       : absl::StrCat(supervisor_.RootOf(caller->worker_id));
    return {started.status(), limit_refusals_.Refused(tree)};
  }
  return {std::move(started)};
}

namespace {

// How long a Start with wait_ready may wait for readiness.
absl::Duration ReadyTimeout(const v1::StartRequest& request) {
  return request.has_ready_timeout() ? FromDurationProto(request.ready_timeout())
                                     : kDefaultReadyTimeout;
}

}  // namespace

grpc::ServerUnaryReactor* ProctorService::Start(grpc::CallbackServerContext* context,
                                                const grpc::ByteBuffer* raw,
                                                grpc::ByteBuffer* response) {
  v1::StartRequest request;
  Started started = AdmitAndStart(context, "Start", *raw, request);
  if (!started.process.ok()) return Refuse(context, started.process.status(), started.hold_back);
  if (request.wait_ready()) {
    // Answered once the worker has sent READY=1 (or ended, or run out of time).
    absl::Duration timeout = ReadyTimeout(request);
    uint64_t id = started.process->id;
    return new ParkedCall(supervisor_, response, [&](Supervisor::Done done) {
      return supervisor_.AwaitReady(id, timeout, std::move(done));
    });
  }
  v1::Process process;
  ToProto(*started.process, &process);
  SerializeReply(process, response);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ProctorService::Run(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  v1::StartRequest request;
  Started started = AdmitAndStart(context, "Run", *raw, request);
  if (!started.process.ok()) {
    return new FailedStream(started.process.status(), timers_, started.hold_back);
  }
  std::optional<absl::Duration> ready_timeout;
  if (request.wait_ready()) ready_timeout = ReadyTimeout(request);
  return RunStream::Begin(supervisor_, timers_, *started.process, ready_timeout);
}

grpc::ServerUnaryReactor* ProctorService::Join(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* raw,
                                               grpc::ByteBuffer* response) {
  v1::JoinRequest request;
  absl::StatusOr<Caller> caller = AdmitOnId(context, "Join", *raw, request, Access::kRead);
  if (!caller.ok()) return Deny(context, caller.status());
  std::optional<absl::Duration> timeout;
  if (request.has_timeout()) timeout = FromDurationProto(request.timeout());
  uint64_t id = request.id();
  return new ParkedCall(supervisor_, response, [&](Supervisor::Done done) {
    return supervisor_.Join(id, timeout, std::move(done));
  });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ProctorService::Joins(
    grpc::CallbackServerContext* context) {
  return new JoinStream(supervisor_, timers_, AdmitStream(context, "Joins"),
                        [this](const Caller& caller, uint64_t id) {
                          return Authorize(caller, id, Access::kRead);
                        });
}

grpc::ServerUnaryReactor* ProctorService::Terminate(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* raw,
                                                    grpc::ByteBuffer* response) {
  v1::TerminateRequest request;
  absl::StatusOr<Caller> caller = AdmitOnId(context, "Terminate", *raw, request);
  if (!caller.ok()) return Deny(context, caller.status());
  TerminateOptions options{
      .signal = request.signal() == 0 ? kSigterm : request.signal(),
      .grace = request.has_grace() ? FromDurationProto(request.grace()) : Supervisor::kDefaultGrace,
      .wait = !request.has_wait() || request.wait(),
      .tree = !request.has_tree() || request.tree(),
  };
  // An endless grace arms no SIGKILL timer at all (see Supervisor::ArmKillTimerLocked).
  if (request.has_escalate() && !request.escalate()) options.grace = absl::InfiniteDuration();
  uint64_t id = request.id();
  return new ParkedCall(supervisor_, response, [&](Supervisor::Done done) {
    return supervisor_.Terminate(id, options, std::move(done));
  });
}

grpc::ServerUnaryReactor* ProctorService::Status(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* raw,
                                                 grpc::ByteBuffer* response) {
  v1::StatusRequest request;
  absl::StatusOr<Caller> caller = Admit(context, "Status", *raw, request);
  if (!caller.ok()) return Deny(context, caller.status());
  v1::StatusResponse reply;
  if (request.has_id()) {
    if (absl::Status s = Authorize(*caller, request.id(), Access::kRead); !s.ok()) {
      return Refuse(context, s);
    }
    absl::StatusOr<ProcessInfo> info = supervisor_.Get(request.id());
    if (info.ok()) ToProto(*info, reply.add_processes());
    SerializeReply(reply, response);
    return FinishNow(context, info.status());
  }
  ListFilter filter;
  if (request.state() != v1::STATE_UNSPECIFIED) {
    filter.running = request.state() == v1::STATE_RUNNING;
    filter.backoff = request.state() == v1::STATE_BACKOFF;
  }
  filter.name = request.name();
  if (request.has_parent_id()) filter.parent_id = request.parent_id();
  if (request.has_parent_session()) filter.parent_session = request.parent_session();
  filter.subtree_of = caller->worker_id;
  // Straight from the records into an arena's messages: a listing of thousands spent most of
  // its time copying each record, allocating each string of its message and freeing both.
  google::protobuf::Arena arena;
  auto* listing = google::protobuf::Arena::CreateMessage<v1::StatusResponse>(&arena);
  uint64_t cursor = 0;
  supervisor_.VisitListed(filter, &cursor, [listing](const ProcessInfo& info) {
    ToProto(info, listing->add_processes());
  });
  listing->set_cursor(cursor);
  SerializeReply(*listing, response);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ProctorService::Watch(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  v1::WatchRequest request;
  absl::StatusOr<Caller> caller = Admit(context, "Watch", *raw, request);
  if (!caller.ok()) {
    return new FailedStream(caller.status(), timers_, HoldBack(context, caller.status()));
  }
  WatchFilter filter = WatchFilter::FromRequest(request);
  if (!caller->admin()) {
    // Its subtree, and its ancestors' records, which a worker's key may read.
    filter.visible = [this, worker = caller->worker_id](uint64_t id) {
      return supervisor_.InSubtree(worker, id) || supervisor_.InSubtree(id, worker);
    };
  }
  std::optional<uint64_t> since;
  if (request.has_since()) since = request.since();
  return WatchStream::Start(events_, std::move(filter), since);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ProctorService::Logs(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  v1::LogsRequest request;
  absl::StatusOr<Caller> caller = AdmitOnId(context, "Logs", *raw, request);
  if (!caller.ok()) {
    return new FailedStream(caller.status(), timers_, HoldBack(context, caller.status()));
  }
  if (request.tail_bytes() < 0) {
    return new FailedStream(absl::InvalidArgumentError("tail_bytes is negative; give 0 or more"),
                            timers_);
  }
  // From here until the LogStream is destroyed, the record's files are not recycled.
  absl::StatusOr<ProcessInfo> info = supervisor_.OpenLogs(request.id());
  if (!info.ok()) return new FailedStream(info.status(), timers_);
  const std::string& path =
      request.stream() == v1::STREAM_STDERR ? info->stderr_path : info->stdout_path;
  absl::StatusOr<int> opened = OpenCaptured(*info, path);
  if (!opened.ok()) {
    supervisor_.CloseLogs(request.id());
    return new FailedStream(opened.status(), timers_);
  }
  const int fd = *opened;
  int64_t offset = 0;
  struct stat st;
  if (request.tail_bytes() > 0 && fstat(fd, &st) == 0) {
    offset = std::max<int64_t>(0, st.st_size - request.tail_bytes());
  }
  return new LogStream(supervisor_, timers_, request.id(), fd, offset, request.follow());
}

grpc::ServerUnaryReactor* ProctorService::Release(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* response) {
  v1::ReleaseRequest request;
  absl::StatusOr<Caller> caller = AdmitOnId(context, "Release", *raw, request);
  if (!caller.ok()) return Deny(context, caller.status());
  absl::Status released = supervisor_.Release(request.id());
  SerializeReply(v1::ReleaseResponse(), response);
  return FinishNow(context, released);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ProctorService::Session(
    grpc::CallbackServerContext* context) {
  // Its requests come later, on the stream; SessionStream parses each.
  absl::StatusOr<Caller> caller = Authenticate(context, "Session");
  absl::Status refused = caller.status();
  if (caller.ok() && !caller->admin()) {
    refused = absl::FailedPreconditionError(
        "sessions are for clients that are not workers; a worker is the parent of what it "
        "starts");
  }
  // A digest, never the key: it is kept (in memory, and by the keeper) with the session.
  std::string owner =
      caller.ok() ? HmacSha256(caller->key, "proctor-v1 session owner") : std::string();
  return new SessionStream(supervisor_, timers_, refused, HoldBack(context, refused),
                           std::move(owner));
}

template <typename Request, typename Reply>
grpc::ServerUnaryReactor* ProctorService::AskServices(
    grpc::CallbackServerContext* context, absl::string_view method, const grpc::ByteBuffer& raw,
    grpc::ByteBuffer* response, void (ServiceManager::*ask)(std::function<void(Reply)>)) {
  Request request;
  absl::StatusOr<Caller> caller = AdmitAdmin(context, method, raw, request);
  if (!caller.ok()) return Deny(context, caller.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  (services_.*ask)([reactor, response](Reply reply) {
    SerializeReply(reply, response);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ProctorService::Reload(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* raw,
                                                 grpc::ByteBuffer* response) {
  return AskServices<v1::ReloadRequest, v1::ReloadResponse>(context, "Reload", *raw, response,
                                                            &ServiceManager::Apply);
}

grpc::ServerUnaryReactor* ProctorService::ListServices(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw,
                                                       grpc::ByteBuffer* response) {
  return AskServices<v1::ListServicesRequest, v1::ListServicesResponse>(
      context, "ListServices", *raw, response, &ServiceManager::List);
}

}  // namespace proctor
