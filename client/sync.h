// Python's multiprocessing Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and
// Barrier for C++ programs, kept by proctord (proctor.v1.Sync) and so shared by every process
// that is passed them.
//
//   void work(proctor::Lock lock, int i) {
//     std::scoped_lock hold(lock);  // Lock and RLock are Lockable and TimedLockable
//     std::cout << "hello world " << i << std::endl;
//   }
//   PROCTOR_FUNCTION(work);
//   ...
//   proctor::Lock lock;  // made in proctord
//   proctor::Process p({.target = work, .args = {lock, 1}});
//
// Objects. Constructing one makes it in proctord (SyncOptions::name: the object of that name
// in reach, made if missing), through DefaultClient(). With an admin key it belongs to this
// program's session (DefaultSession()) and is freed when the program ends; inside a worker it
// belongs to the worker. A failure is kept in status() and returned by every call. Objects are
// handles: copies name the same object, and destroying a handle frees nothing.
//
// Passing. An object in ProcessOptions::args travels as "proctor-sync:<Kind>:<id>"; a
// function target takes it as a parameter of its type (or rebuilds it with FromArg). The
// child then acts as itself: what it holds is released when it ends, SIGKILL included, and
// the next acquirer sees abandoned() true. A child given a Barrier is one of its known
// parties from its start (Barrier::bind): if it ends without arriving, the Barrier breaks.
//
// Semantics are threading's (see README, "Synchronisation objects"): FIFO waiters, a timeout
// is an answer and not an error, Python's messages for misuse (FAILED_PRECONDITION "release
// unlocked lock", "cannot release un-acquired lock", "Semaphore released too many times",
// "cannot wait on un-acquired lock"), a broken Barrier is ABORTED. An RLock and a Condition's
// lock are owned by a thread of a process, as in threading.
//
// Errors are absl::Status, except in the C++ Lockable functions (lock, unlock, try_lock,
// try_lock_for, try_lock_until), which throw std::system_error carrying proctord's message
// when it fails the call, as std::mutex does.
//
// Thread-safety: handles may be used from any thread; each thread is a holder of its own.
#ifndef PROCTOR_CLIENT_SYNC_H_
#define PROCTOR_CLIENT_SYNC_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "proctor/v1/sync.pb.h"

namespace proctor {

class Process;
class SyncClient;

struct SyncOptions {
  // Empty: a new object. Else: the object of this name and kind that the caller reaches (its
  // own, an ancestor's, its session's), made if there is none.
  std::string name;
  // Null: DefaultClient() with DefaultSession().
  Client* client = nullptr;
};

class SyncObject {
 public:
  uint64_t id() const;
  // Why the object could not be made or attached; OK otherwise.
  absl::Status status() const;
  // The object as an argument: "proctor-sync:<Kind>:<id>".
  std::string ToArg() const;
  // proctord's view of it: value, holders, waiters.
  absl::StatusOr<v1::SyncObject> info() const;
  // Frees it in proctord now; its waiters get NOT_FOUND.
  absl::Status remove();

 protected:
  struct State;
  // Makes an object of `request.kind()`.
  SyncObject(v1::SyncCreateRequest request, const SyncOptions& options);
  // Names the object an argument names, of kind `kind`.
  SyncObject(v1::SyncKind kind, const std::string& arg);
  // Whether `arg` names an object of `kind` (else INVALID_ARGUMENT saying why).
  static absl::Status CheckArg(v1::SyncKind kind, const std::string& arg);

  absl::StatusOr<v1::SyncWaitResponse> CallAcquire(bool blocking,
                                                   std::optional<absl::Duration> timeout) const;
  absl::StatusOr<v1::SyncObject> CallRelease(int64_t n) const;
  absl::StatusOr<v1::SyncWaitResponse> CallWait(std::optional<absl::Duration> timeout) const;
  absl::StatusOr<v1::SyncObject> CallUpdate(v1::SyncOp op, std::optional<int64_t> n = {}) const;

  std::shared_ptr<State> state_;
};

// Lock and RLock: acquire/release as in Python, and the C++ Lockable and TimedLockable
// functions.
class BasicLock : public SyncObject {
 public:
  // Whether it was acquired (false: not within the timeout, or not free without blocking).
  // A timeout needs blocking; a negative one is INVALID_ARGUMENT, as in Python.
  absl::StatusOr<bool> acquire(bool blocking = true,
                               std::optional<absl::Duration> timeout = std::nullopt);
  absl::Status release();
  // Whether the last acquire through this handle got what a dead holder left (robust
  // mutexes' EOWNERDEAD): shared state may need repair.
  bool abandoned() const;
  // Whether anyone holds it now.
  absl::StatusOr<bool> locked() const;

  void lock();
  bool try_lock();
  void unlock();
  template <typename Rep, typename Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return TryLockFor(absl::FromChrono(std::chrono::duration_cast<std::chrono::nanoseconds>(d)));
  }
  template <typename Clock, typename Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return TryLockFor(absl::FromChrono(
        std::chrono::duration_cast<std::chrono::nanoseconds>(t - Clock::now())));
  }

 protected:
  using SyncObject::SyncObject;
  bool TryLockFor(absl::Duration d);
};

class Lock : public BasicLock {
 public:
  Lock() : Lock(SyncOptions{}) {}
  explicit Lock(const SyncOptions& options);
  static absl::StatusOr<Lock> FromArg(const std::string& arg);

 private:
  explicit Lock(const std::string& arg) : BasicLock(v1::SYNC_LOCK, arg) {}
};

class RLock : public BasicLock {
 public:
  RLock() : RLock(SyncOptions{}) {}
  explicit RLock(const SyncOptions& options);
  static absl::StatusOr<RLock> FromArg(const std::string& arg);

 private:
  explicit RLock(const std::string& arg) : BasicLock(v1::SYNC_RLOCK, arg) {}
};

class Semaphore : public SyncObject {
 public:
  // A negative value is INVALID_ARGUMENT "semaphore initial value must be >= 0" (in status()).
  explicit Semaphore(int64_t value = 1, const SyncOptions& options = {});
  static absl::StatusOr<Semaphore> FromArg(const std::string& arg);

  absl::StatusOr<bool> acquire(bool blocking = true,
                               std::optional<absl::Duration> timeout = std::nullopt);
  // Python 3.9's release(n).
  absl::Status release(int64_t n = 1);
  absl::StatusOr<int64_t> get_value() const;
  bool abandoned() const;

 protected:
  Semaphore(v1::SyncKind kind, int64_t value, const SyncOptions& options);
  Semaphore(v1::SyncKind kind, const std::string& arg) : SyncObject(kind, arg) {}
};

// release() past the initial value is FAILED_PRECONDITION "Semaphore released too many times".
class BoundedSemaphore : public Semaphore {
 public:
  explicit BoundedSemaphore(int64_t value = 1, const SyncOptions& options = {});
  static absl::StatusOr<BoundedSemaphore> FromArg(const std::string& arg);

 private:
  explicit BoundedSemaphore(const std::string& arg)
      : Semaphore(v1::SYNC_BOUNDED_SEMAPHORE, arg) {}
};

class Event : public SyncObject {
 public:
  Event() : Event(SyncOptions{}) {}
  explicit Event(const SyncOptions& options);
  static absl::StatusOr<Event> FromArg(const std::string& arg);

  absl::StatusOr<bool> is_set() const;
  absl::Status set();
  absl::Status clear();
  // The flag on return: false only when the timeout passed first.
  absl::StatusOr<bool> wait(std::optional<absl::Duration> timeout = std::nullopt);

 private:
  explicit Event(const std::string& arg) : SyncObject(v1::SYNC_EVENT, arg) {}
};

class Condition : public SyncObject {
 public:
  // With a new RLock of its own, as threading.Condition().
  Condition() : Condition(SyncOptions{}) {}
  explicit Condition(const SyncOptions& options);
  // Over an existing lock (which must have the same owner).
  explicit Condition(const BasicLock& lock, const SyncOptions& options = {});
  static absl::StatusOr<Condition> FromArg(const std::string& arg);

  // The lock's acquire and release, and the Lockable functions on it.
  absl::StatusOr<bool> acquire(bool blocking = true,
                               std::optional<absl::Duration> timeout = std::nullopt);
  absl::Status release();
  void lock();
  void unlock();
  bool abandoned() const;

  // Releases the lock, waits for notify (or the timeout) and holds the lock again before it
  // returns; false when the timeout passed. FAILED_PRECONDITION "cannot wait on un-acquired
  // lock" without the lock.
  absl::StatusOr<bool> wait(std::optional<absl::Duration> timeout = std::nullopt);
  // Waits until `predicate` is true, at most `timeout` in all; its last value.
  absl::StatusOr<bool> wait_for(const std::function<bool()>& predicate,
                                std::optional<absl::Duration> timeout = std::nullopt);
  absl::Status notify(int64_t n = 1);
  absl::Status notify_all();

 private:
  explicit Condition(const std::string& arg) : SyncObject(v1::SYNC_CONDITION, arg) {}
};

// Known parties. `parties` is a count: any process that reaches the Barrier may arrive. A
// bound party is also expected: when it ends (SIGKILL included) without having arrived in the
// current round, the Barrier breaks at once and those waiting get ABORTED naming it. A child
// that Process::start() gives the Barrier (in its arguments) is bound from its start; bind()
// binds any other. Binding a party twice is ALREADY_EXISTS; one more than `parties`
// FAILED_PRECONDITION (and a start() that would do so starts nothing); a process outside
// this program's reach PERMISSION_DENIED.
class Barrier : public SyncObject {
 public:
  // `parties` < 1 is INVALID_ARGUMENT "parties must be >= 1" (in status()).
  explicit Barrier(int64_t parties, std::optional<absl::Duration> timeout = std::nullopt,
                   const SyncOptions& options = {});
  static absl::StatusOr<Barrier> FromArg(const std::string& arg);

  // Makes this program a bound party: inside a worker, the worker; in a main program with an
  // admin key, its session.
  absl::Status bind();
  // Makes a started process (this program's child or one of its descendants) a bound party.
  absl::Status bind(const Process& process);

  // This party's index, 0 .. parties-1; ABORTED (BrokenBarrierError) when the barrier is or
  // becomes broken, a timeout included. Unset timeout: the Barrier's own.
  absl::StatusOr<int64_t> wait(std::optional<absl::Duration> timeout = std::nullopt);
  absl::Status reset();
  absl::Status abort();
  absl::StatusOr<int64_t> parties() const;
  absl::StatusOr<int64_t> n_waiting() const;
  absl::StatusOr<bool> broken() const;

 private:
  explicit Barrier(const std::string& arg) : SyncObject(v1::SYNC_BARRIER, arg) {}
};

namespace internal {

// The Barrier an argument names ("proctor-sync:Barrier:<id>"), if it names one: start()
// makes the child a bound party of each Barrier in its arguments.
std::optional<uint64_t> BarrierOfArg(const std::string& arg);

}  // namespace internal

}  // namespace proctor

#endif  // PROCTOR_CLIENT_SYNC_H_
