// ThreadSanitizer and Debian's Abseil: libabsl_synchronization is not instrumented, so TSan
// does not see that absl::Mutex orders what it guards and would report every guarded field
// as a race. Linked into a `PROCTOR_SANITIZE=thread` executable, these definitions take the
// place of the library's (an executable's symbols come first) for the calls our code makes,
// call the library's own through dlsym(RTLD_NEXT), and tell TSan what each did: a release of
// the mutex before it is unlocked (or given up by a wait), an acquire once it is held again.
// Notification is annotated the same way (Notify releases, a wait that saw it acquires).
//
// Only the functions proctor calls are covered; another is added the same way, its mangled
// name from `nm -D libabsl_synchronization.so`.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

// TSan's own, not in GCC's <sanitizer/tsan_interface.h>.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();

namespace {

#define PROCTOR_STRINGIFY_(x) #x
#define PROCTOR_STRINGIFY(x) PROCTOR_STRINGIFY_(x)

// The library's definition of absl::<inline namespace>::`name`, mangled: `prefix` is "_ZN", or
// "_ZNK" for a const member; `name` the rest of the mangled name after the namespaces.
template <typename Fn>
Fn Real(const char* prefix, const char* name) {
  const std::string inline_namespace = PROCTOR_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string symbol = std::string(prefix) + "4absl" +
                             std::to_string(inline_namespace.size()) + inline_namespace + name;
  void* found = dlsym(RTLD_NEXT, symbol.c_str());
  if (found == nullptr) {
    std::fprintf(stderr, "absl_mutex_tsan: %s not found in Abseil: %s\n", symbol.c_str(),
                 dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(found);
}

#define REAL(Fn, prefix, name) static const auto real = Real<Fn>(prefix, name)

// Inside the library a thread that unlocks evaluates the conditions of those waiting, which
// their threads made and published under the library's own spin lock. Those accesses are
// not TSan's to judge: it is told to ignore what the thread touches while in the library.
class InLibrary {
 public:
  InLibrary() { __tsan_ignore_thread_begin(); }
  ~InLibrary() { __tsan_ignore_thread_end(); }
  InLibrary(const InLibrary&) = delete;
  InLibrary& operator=(const InLibrary&) = delete;
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "_ZN", "5Mutex4LockEv");
  {
    InLibrary ignored;
    real(this);
  }
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "_ZN", "5Mutex6UnlockEv");
  __tsan_release(this);
  {
    InLibrary ignored;
    real(this);
  }
}

// The waits give the mutex up and take it again: a release before, an acquire after.
void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN", "5Mutex5AwaitERKNS0_9ConditionE");
  __tsan_release(this);
  {
    InLibrary ignored;
    real(this, cond);
  }
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
       "_ZN", "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  __tsan_release(this);
  bool met;
  {
    InLibrary ignored;
    met = real(this, cond, timeout);
  }
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "_ZN", "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_release(this);
  bool met;
  {
    InLibrary ignored;
    met = real(this, cond, deadline);
  }
  __tsan_acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*),
       "_ZN", "7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  {
    InLibrary ignored;
    real(this, mu);
  }
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, absl::Duration),
       "_ZN", "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  bool timed_out;
  {
    InLibrary ignored;
    timed_out = real(this, mu, timeout);
  }
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, absl::Time),
       "_ZN", "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  bool timed_out;
  {
    InLibrary ignored;
    timed_out = real(this, mu, deadline);
  }
  __tsan_acquire(mu);
  return timed_out;
}

void Notification::Notify() {
  REAL(void (*)(Notification*),
       "_ZN", "12Notification6NotifyEv");
  __tsan_release(this);
  {
    InLibrary ignored;
    real(this);
  }
}

void Notification::WaitForNotification() const {
  REAL(void (*)(const Notification*),
       "_ZNK", "12Notification19WaitForNotificationEv");
  {
    InLibrary ignored;
    real(this);
  }
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  REAL(bool (*)(const Notification*, absl::Duration),
       "_ZNK", "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  bool notified;
  {
    InLibrary ignored;
    notified = real(this, timeout);
  }
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  REAL(bool (*)(const Notification*, absl::Time),
       "_ZNK", "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  bool notified;
  {
    InLibrary ignored;
    notified = real(this, deadline);
  }
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
