// proctor_sync_bench: what proctord's sync objects cost, against a Status call measured in the
// same run as the baseline.
//
//   proctor_sync_bench [--address ADDR] [--authkey-file PATH] [--daemon-pid PID] [-n N]
//                      [--kills K] [--waiters W] [--only uncontended|handoff|kills|waiters]
//
// 1. Uncontended Lock acquire+release, against one Status call: N of each in turn (with a
//    SyncList that changes nothing, and the pair again as unary calls), each timed on its
//    own; means and medians, their ratios, and each call's median.
// 2. Release -> next holder wakes: one thread holds, another waits on its own connection; the
//    time from just before release to the waiter's answer (p50/p99 of N).
// 3. Holder SIGKILLed -> next waiter holds: a worker (`proctor lock` run through proctord)
//    holds the lock while the bench waits; from the SIGKILL request to the bench's grant
//    (p50/p99 of K).
// 4. Memory of W parked waiters: proctord's VmRSS before and after W acquires wait on a held
//    lock (needs --daemon-pid), per waiter.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/sync_client.h"
#include "grpcpp/grpcpp.h"
#include "tests/bench/async_calls.h"

namespace proctor {
namespace {

struct Options {
  ClientOptions client;
  int pid = 0;
  int n = 1000;
  int kills = 20;
  int waiters = 10000;
  std::string only;  // empty: every phase
};

// For a failure while a thread of the benchmark waits in proctord and cannot be joined.
[[noreturn]] void Die(const absl::Status& status) {
  std::cout.flush();
  std::cerr << "proctor_sync_bench: " << status.message() << std::endl;
  std::_Exit(1);
}

double Micros(absl::Duration d) { return absl::ToDoubleMicroseconds(d); }

std::string Summary(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double q) {
    return us[std::min(us.size() - 1, static_cast<size_t>(q * us.size()))];
  };
  return absl::StrFormat("p50 %.0f µs, p99 %.0f µs, max %.0f µs (n=%d)", at(0.5), at(0.99),
                         us.back(), us.size());
}

int64_t RssKiB(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      int64_t kib = 0;
      std::istringstream(line.substr(6)) >> kib;
      return kib;
    }
  }
  return -1;
}

absl::StatusOr<uint64_t> MakeLock(SyncClient& sync) {
  v1::SyncCreateRequest create;
  create.set_kind(v1::SYNC_LOCK);
  absl::StatusOr<v1::SyncObject> made = sync.Create(create);
  if (!made.ok()) return made.status();
  return made->id();
}

v1::SyncAcquireRequest AcquireOf(uint64_t id, uint64_t thread) {
  v1::SyncAcquireRequest request;
  request.set_id(id);
  request.set_thread(thread);
  return request;
}

v1::SyncReleaseRequest ReleaseOf(uint64_t id, uint64_t thread) {
  v1::SyncReleaseRequest request;
  request.set_id(id);
  request.set_thread(thread);
  return request;
}

// Keeps the admin key under its rate (5000 calls a second): lets the bucket fill again.
void Breathe() { absl::SleepFor(absl::Seconds(2.5)); }

// The admin key's CallAuth, for calls made on a stub of the bench's own.
absl::StatusOr<CallAuth> AdminAuth(const Options& options) {
  absl::StatusOr<Credentials> credentials =
      options.client.credentials.has_value() ? *options.client.credentials
                                             : FindCredentials(options.client.authkey_file);
  if (!credentials.ok()) return credentials.status();
  return CallAuth(*credentials);
}

// One unary call of the Sync service, signed with `auth`.
template <typename Request, typename Response>
absl::Status UnarySync(const CallAuth& auth, v1::Sync::Stub& stub, absl::string_view method,
                       grpc::Status (v1::Sync::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                           Response*),
                       const Request& request) {
  grpc::ClientContext context;
  auth.Sign(context, method);
  Response response;
  grpc::Status status = (stub.*rpc)(&context, request, &response);
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// A Status call, an acquire and a release (as SyncClient makes them: messages on a kept
// SyncCalls stream), a SyncList of the lock (a Sync call that changes nothing, so writes no
// note), and the acquire and release again as unary SyncAcquire and SyncRelease calls, in turn,
// each timed on its own, so that a busy host weighs on all alike. The pairs' means and medians
// against the Status call's, and each call's median.
absl::Status Uncontended(Client& client, SyncClient& sync, const Options& options, int n) {
  constexpr int kCallsPerRound = 6;
  constexpr int kCallsPerBreath = 9000;  // under the admin key's burst of 10000
  absl::StatusOr<uint64_t> lock = MakeLock(sync);
  if (!lock.ok()) return lock.status();
  absl::StatusOr<CallAuth> auth = AdminAuth(options);
  if (!auth.ok()) return auth.status();
  std::unique_ptr<v1::Sync::Stub> stub = v1::Sync::NewStub(
      grpc::CreateChannel(client.address(), grpc::InsecureChannelCredentials()));
  v1::StatusRequest list;
  list.set_state(v1::STATE_RUNNING);
  std::vector<double> status_us, acquire_us, release_us, pair_us, get_us;
  std::vector<double> unary_acquire_us, unary_release_us, unary_pair_us;
  Breathe();
  for (int i = 0, calls = 0; i < n; ++i, calls += kCallsPerRound) {
    if (calls + kCallsPerRound > kCallsPerBreath) {
      Breathe();
      calls = 0;
    }
    absl::Time t0 = absl::Now();
    if (absl::Status s = client.List(list).status(); !s.ok()) return s;
    absl::Time t1 = absl::Now();
    if (absl::Status s = sync.Acquire(AcquireOf(*lock, 1)).status(); !s.ok()) return s;
    absl::Time t2 = absl::Now();
    if (absl::Status s = sync.Release(ReleaseOf(*lock, 1)).status(); !s.ok()) return s;
    absl::Time t3 = absl::Now();
    if (absl::Status s = sync.Get(*lock).status(); !s.ok()) return s;
    absl::Time t4 = absl::Now();
    if (absl::Status s = UnarySync(*auth, *stub, "SyncAcquire", &v1::Sync::Stub::SyncAcquire,
                                   AcquireOf(*lock, 1));
        !s.ok()) {
      return s;
    }
    absl::Time t5 = absl::Now();
    if (absl::Status s = UnarySync(*auth, *stub, "SyncRelease", &v1::Sync::Stub::SyncRelease,
                                   ReleaseOf(*lock, 1));
        !s.ok()) {
      return s;
    }
    absl::Time t6 = absl::Now();
    status_us.push_back(Micros(t1 - t0));
    acquire_us.push_back(Micros(t2 - t1));
    release_us.push_back(Micros(t3 - t2));
    pair_us.push_back(Micros(t3 - t1));
    get_us.push_back(Micros(t4 - t3));
    unary_acquire_us.push_back(Micros(t5 - t4));
    unary_release_us.push_back(Micros(t6 - t5));
    unary_pair_us.push_back(Micros(t6 - t4));
  }
  auto mean = [](const std::vector<double>& us) {
    double sum = 0;
    for (double u : us) sum += u;
    return sum / us.size();
  };
  auto median = [](std::vector<double> us) {
    std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
    return us[us.size() / 2];
  };
  std::cout << absl::StrFormat(
      "uncontended acquire+release: %.0f µs; Status call: %.0f µs; ratio %.2f (medians: %.0f "
      "µs, %.0f µs, ratio %.2f; n=%d each, in turn)\n"
      "  as unary calls: %.0f µs; ratio %.2f (median %.0f µs, ratio %.2f)\n"
      "  per call, medians: Status %.1f µs, acquire %.1f µs, release %.1f µs, SyncList %.1f "
      "µs, SyncAcquire %.1f µs, SyncRelease %.1f µs\n",
      mean(pair_us), mean(status_us), mean(pair_us) / mean(status_us), median(pair_us),
      median(status_us), median(pair_us) / median(status_us), n, mean(unary_pair_us),
      mean(unary_pair_us) / mean(status_us), median(unary_pair_us),
      median(unary_pair_us) / median(status_us), median(status_us), median(acquire_us),
      median(release_us), median(get_us), median(unary_acquire_us), median(unary_release_us));
  return absl::OkStatus();
}

absl::Status Handoff(SyncClient& sync, const Options& options, int n) {
  absl::StatusOr<std::unique_ptr<Client>> other_client = Client::Connect(options.client);
  if (!other_client.ok()) return other_client.status();
  SyncClient other(**other_client);
  absl::StatusOr<uint64_t> lock = MakeLock(sync);
  if (!lock.ok()) return lock.status();
  std::vector<double> us;
  for (int i = 0; i < n; ++i) {
    if (absl::Status s = sync.Acquire(AcquireOf(*lock, 1)).status(); !s.ok()) return s;
    std::atomic<int64_t> woke_ns = 0;
    std::thread waiter([&] {
      if (other.Acquire(AcquireOf(*lock, 2)).ok()) woke_ns = absl::GetCurrentTimeNanos();
    });
    // Released only once the waiter is parked; polled gently, under the admin key's rate.
    for (;;) {
      absl::StatusOr<v1::SyncObject> info = sync.Get(*lock);
      if (!info.ok()) Die(info.status());  // a waiter is parked: no way back
      if (info->n_waiting() == 1) break;
      absl::SleepFor(absl::Microseconds(200));
    }
    int64_t released_ns = absl::GetCurrentTimeNanos();
    if (absl::Status s = sync.Release(ReleaseOf(*lock, 1)).status(); !s.ok()) Die(s);
    waiter.join();
    if (woke_ns == 0) return absl::InternalError("the waiter was not granted the lock");
    us.push_back((woke_ns - released_ns) / 1000.0);
    if (absl::Status s = other.Release(ReleaseOf(*lock, 2)).status(); !s.ok()) return s;
  }
  std::cout << "release -> next holder wakes: " << Summary(us) << "\n";
  return absl::OkStatus();
}

absl::Status Kills(Client& client, SyncClient& sync, int kills) {
  // The lock belongs to a session the holder is started in, so that the holder finds it by
  // name and its death frees the lock, not the object.
  absl::StatusOr<std::unique_ptr<Session>> session = client.OpenSession();
  if (!session.ok()) return session.status();
  std::vector<double> us;
  for (int i = 0; i < kills; ++i) {
    std::string name = absl::StrCat("bench-kill-", i);
    v1::SyncCreateRequest create;
    create.set_kind(v1::SYNC_LOCK);
    create.set_name(name);
    create.set_session((*session)->id());
    if (absl::Status s = sync.Create(create).status(); !s.ok()) return s;
    v1::StartRequest start;
    start.set_session((*session)->id());
    start.set_target(PROCTOR_CLI_PATH);
    for (const char* arg : {"lock", "", "--", "sleep", "60"}) start.add_args(arg);
    start.set_args(1, name);
    absl::StatusOr<v1::Process> holder = client.Start(start);
    if (!holder.ok()) return holder.status();
    v1::SyncListRequest filter;
    filter.set_name(name);
    uint64_t id = 0;
    for (absl::Time limit = absl::Now() + absl::Seconds(10); id == 0;) {
      absl::StatusOr<std::vector<v1::SyncObject>> found = sync.List(filter);
      if (!found.ok()) return found.status();
      if (found->size() == 1 && found->front().holders_size() == 1) id = found->front().id();
      if (absl::Now() > limit) return absl::DeadlineExceededError("the worker never held");
      absl::SleepFor(absl::Milliseconds(2));
    }
    std::atomic<int64_t> got_ns = 0;
    std::atomic<bool> abandoned = false;
    std::thread waiter([&] {
      absl::StatusOr<v1::SyncWaitResponse> got = sync.Acquire(AcquireOf(id, 9));
      if (got.ok() && got->ok()) {
        got_ns = absl::GetCurrentTimeNanos();
        abandoned = got->abandoned();
      }
    });
    for (;;) {
      absl::StatusOr<v1::SyncObject> info = sync.Get(id);
      if (!info.ok()) Die(info.status());  // a waiter is parked: no way back
      if (info->n_waiting() == 1) break;
      absl::SleepFor(absl::Microseconds(200));
    }
    v1::TerminateRequest kill;
    kill.set_id(holder->id());
    kill.set_signal(SIGKILL);
    kill.set_wait(false);
    int64_t killed_ns = absl::GetCurrentTimeNanos();
    if (absl::Status s = client.Terminate(kill).status(); !s.ok()) Die(s);
    waiter.join();
    if (got_ns == 0 || !abandoned) return absl::InternalError("no abandoned grant");
    us.push_back((got_ns - killed_ns) / 1000.0);
    if (absl::Status s = sync.Remove(id); !s.ok()) return s;
    (void)client.Join(holder->id());
    (void)client.Release(holder->id());
  }
  std::cout << "holder SIGKILLed -> next waiter holds: " << Summary(us) << "\n";
  return absl::OkStatus();
}

// W acquires in flight on one held lock, through the async API: no thread per waiter here
// either.
absl::Status ParkedWaiters(SyncClient& sync, const Options& options) {
  absl::StatusOr<uint64_t> lock = MakeLock(sync);
  if (!lock.ok()) return lock.status();
  if (absl::Status s = sync.Acquire(AcquireOf(*lock, 1)).status(); !s.ok()) return s;
  absl::StatusOr<CallAuth> admin = AdminAuth(options);
  if (!admin.ok()) return admin.status();
  const CallAuth& auth = *admin;
  std::unique_ptr<v1::Sync::Stub> stub = v1::Sync::NewStub(
      grpc::CreateChannel(sync.client().address(), grpc::InsecureChannelCredentials()));
  Breathe();
  int64_t before = RssKiB(options.pid);
  grpc::CompletionQueue cq;
  struct Call {
    grpc::ClientContext context;
    v1::SyncWaitResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SyncWaitResponse>> reader;
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < options.waiters; ++i) {
    auto call = std::make_unique<Call>();
    auth.Sign(call->context, "SyncAcquire");
    call->reader = stub->AsyncSyncAcquire(&call->context, AcquireOf(*lock, 100 + i), &cq);
    call->reader->Finish(&call->response, &call->status, call.get());
    calls.push_back(std::move(call));
  }
  for (absl::Time limit = absl::Now() + absl::Seconds(60);;) {
    absl::StatusOr<v1::SyncObject> info = sync.Get(*lock);
    if (!info.ok()) return info.status();
    if (info->n_waiting() == options.waiters) break;
    if (absl::Now() > limit) {
      return absl::DeadlineExceededError(
          absl::StrCat("only ", info->n_waiting(), " waiters parked"));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  int64_t after = RssKiB(options.pid);
  if (options.pid > 0) {
    std::cout << absl::StrFormat(
        "%d parked waiters: proctord VmRSS %d -> %d KiB, %.2f KiB per waiter\n",
        options.waiters, before, after, static_cast<double>(after - before) / options.waiters);
  }
  bench::CancelAndDrain(calls, cq);
  return sync.Remove(*lock);
}

int Main(int argc, char** argv) {
  Options options;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    bool ok = true;
    if (flag == "--address") {
      options.client.address = value;
    } else if (flag == "--authkey-file") {
      options.client.authkey_file = value;
    } else if (flag == "--daemon-pid") {
      ok = absl::SimpleAtoi(value, &options.pid);
    } else if (flag == "-n") {
      ok = absl::SimpleAtoi(value, &options.n) && options.n > 0;
    } else if (flag == "--kills") {
      ok = absl::SimpleAtoi(value, &options.kills) && options.kills > 0;
    } else if (flag == "--waiters") {
      ok = absl::SimpleAtoi(value, &options.waiters) && options.waiters > 0;
    } else if (flag == "--only") {
      options.only = value;
      ok = value == "uncontended" || value == "handoff" || value == "kills" || value == "waiters";
    } else {
      ok = false;
    }
    if (!ok) {
      std::cerr << "proctor_sync_bench: bad " << flag << " " << value << "\n";
      return 2;
    }
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options.client);
  if (!client.ok()) {
    std::cerr << "proctor_sync_bench: " << client.status().message() << "\n";
    return 1;
  }
  SyncClient sync(**client);
  std::vector<std::pair<std::string, std::function<absl::Status()>>> phases = {
      {"uncontended", [&] { return Uncontended(**client, sync, options, options.n); }},
      {"handoff", [&] { return Handoff(sync, options, options.n); }},
      {"kills", [&] { return Kills(**client, sync, options.kills); }},
      {"waiters", [&] { return ParkedWaiters(sync, options); }},
  };
  for (const auto& [name, phase] : phases) {
    if (!options.only.empty() && name != options.only) continue;
    if (absl::Status s = phase(); !s.ok()) {
      std::cerr << "proctor_sync_bench: " << s.message() << "\n";
      return 1;
    }
    std::cout.flush();
  }
  return 0;
}

}  // namespace
}  // namespace proctor

int main(int argc, char** argv) { return proctor::Main(argc, argv); }
