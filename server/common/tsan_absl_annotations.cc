// ThreadSanitizer annotations for Debian's prebuilt Abseil (linked into test binaries
// of CLIPSERVE_SANITIZE=thread builds only; see CMakeLists.txt).
//
// Debian's libabsl_synchronization is not compiled with -fsanitize=thread, so TSan
// cannot see absl::Mutex, absl::CondVar, absl::Notification or absl::BlockingCounter
// synchronize (they use atomics and futexes in uninstrumented code), and it reports a
// data race on every variable they protect. Abseil built with TSan annotates itself;
// this file does the same from outside: it defines the public entry points, so the
// dynamic linker binds every call (the program's and Abseil's own, through the PLT) to
// them; each one forwards to Debian's implementation (found with dlsym(RTLD_NEXT)) and
// tells TSan the happens-before edge the call creates: __tsan_release() on the mutex
// (or notification, counter, barrier) before a call that lets other threads proceed,
// __tsan_acquire() after a call that waited for them.
//
// It also turns off Abseil's own deadlock detection (see kDeadlockDetectionOff).
//
// Limitations: mutexes are modelled as acquire/release points, not as locks, so TSan
// checks data races but not lock-order inversions; reader locks order readers among
// themselves (more ordering than there is, which can hide a race in which a reader
// writes); absl::Condition functions run inside Mutex::LockWhen/Await before the
// acquire edge, so code meant to run under TSan waits with CondVar instead.

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "the mangled names below assume Abseil's inline namespace (Debian's debian3)"
#endif

#pragma clang diagnostic ignored "-Wthread-safety-analysis"

namespace {

#define CLIPSERVE_STRINGIFY_INNER(x) #x
#define CLIPSERVE_STRINGIFY(x) CLIPSERVE_STRINGIFY_INNER(x)

// Debian's implementation of the symbol whose mangled name is `prefix` + "4absl" +
// <inline namespace> + `suffix` (suffix substitutions: S0_ = absl::<inline namespace>).
void* RealSymbol(const char* prefix, const char* suffix) {
  const char* ns = CLIPSERVE_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name =
      std::string(prefix) + "4absl" + std::to_string(std::strlen(ns)) + ns + suffix;
  void* symbol = dlsym(RTLD_NEXT, name.c_str());
  if (symbol == nullptr) {
    std::fprintf(stderr, "tsan_absl_annotations: %s not found\n", name.c_str());
    std::abort();
  }
  return symbol;
}

template <typename Fn>
Fn Real(const char* prefix, const char* suffix) {
  static_assert(sizeof(Fn) == sizeof(void*));
  void* symbol = RealSymbol(prefix, suffix);
  Fn fn;
  std::memcpy(&fn, &symbol, sizeof(fn));
  return fn;
}

#define CLIPSERVE_REAL(type, prefix, suffix) \
  static const auto real = Real<type>(prefix, suffix)

void Release(const void* address) { __tsan_release(const_cast<void*>(address)); }
void Acquire(const void* address) { __tsan_acquire(const_cast<void*>(address)); }

// Debian's Abseil is built with assertions, so absl::Mutex records lock order in a
// global graph (deadlock detection) guarded by an internal spinlock that TSan cannot
// see either; the graph's memory accesses then show up as races between Abseil's own
// threads. TSan builds turn it off; the other builds keep it.
const bool kDeadlockDetectionOff = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

// --- Mutex -----------------------------------------------------------------------

Mutex::~Mutex() {
  CLIPSERVE_REAL(void (*)(Mutex*), "_ZN", "5MutexD2Ev");
  __tsan_mutex_destroy(this, 0);  // forget the clock, in case the memory is reused
  real(this);
}

void Mutex::Lock() {
  CLIPSERVE_REAL(void (*)(Mutex*), "_ZN", "5Mutex4LockEv");
  real(this);
  Acquire(this);
}

void Mutex::ReaderLock() {
  CLIPSERVE_REAL(void (*)(Mutex*), "_ZN", "5Mutex10ReaderLockEv");
  real(this);
  Acquire(this);
}

bool Mutex::TryLock() {
  CLIPSERVE_REAL(bool (*)(Mutex*), "_ZN", "5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  CLIPSERVE_REAL(bool (*)(Mutex*), "_ZN", "5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}

void Mutex::Unlock() {
  CLIPSERVE_REAL(void (*)(Mutex*), "_ZN", "5Mutex6UnlockEv");
  Release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  CLIPSERVE_REAL(void (*)(Mutex*), "_ZN", "5Mutex12ReaderUnlockEv");
  Release(this);
  real(this);
}

void Mutex::LockWhen(const Condition& cond) {
  CLIPSERVE_REAL(void (*)(Mutex*, const Condition&), "_ZN",
                 "5Mutex8LockWhenERKNS0_9ConditionE");
  real(this, cond);
  Acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  CLIPSERVE_REAL(void (*)(Mutex*, const Condition&), "_ZN",
                 "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  real(this, cond);
  Acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration), "_ZN",
                 "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool result = real(this, cond, timeout);
  Acquire(this);  // the mutex is held whatever the result
  return result;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Time), "_ZN",
                 "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const bool result = real(this, cond, deadline);
  Acquire(this);
  return result;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration), "_ZN",
                 "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool result = real(this, cond, timeout);
  Acquire(this);
  return result;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Time), "_ZN",
                 "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const bool result = real(this, cond, deadline);
  Acquire(this);
  return result;
}

void Mutex::Await(const Condition& cond) {
  CLIPSERVE_REAL(void (*)(Mutex*, const Condition&), "_ZN",
                 "5Mutex5AwaitERKNS0_9ConditionE");
  Release(this);
  real(this, cond);
  Acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Duration), "_ZN",
                 "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Release(this);
  const bool result = real(this, cond, timeout);
  Acquire(this);
  return result;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  CLIPSERVE_REAL(bool (*)(Mutex*, const Condition&, absl::Time), "_ZN",
                 "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Release(this);
  const bool result = real(this, cond, deadline);
  Acquire(this);
  return result;
}

// --- CondVar: waiting releases and re-acquires the mutex ---------------------------

void CondVar::Wait(Mutex* mu) {
  CLIPSERVE_REAL(void (*)(CondVar*, Mutex*), "_ZN", "7CondVar4WaitEPNS0_5MutexE");
  Release(mu);
  real(this, mu);
  Acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  CLIPSERVE_REAL(bool (*)(CondVar*, Mutex*, absl::Duration), "_ZN",
                 "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Release(mu);
  const bool result = real(this, mu, timeout);
  Acquire(mu);
  return result;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  CLIPSERVE_REAL(bool (*)(CondVar*, Mutex*, absl::Time), "_ZN",
                 "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Release(mu);
  const bool result = real(this, mu, deadline);
  Acquire(mu);
  return result;
}

// --- Notification ------------------------------------------------------------------

// HasBeenNotified() is inline: its (instrumented) acquire load of the flag must find a
// release on the flag's address. The flag follows the Notification's Mutex.
static_assert(sizeof(Notification) == sizeof(Mutex) + sizeof(std::atomic<bool>) ||
                  sizeof(Notification) == 2 * sizeof(Mutex),
              "unexpected absl::Notification layout");

void Notification::Notify() {
  CLIPSERVE_REAL(void (*)(Notification*), "_ZN", "12Notification6NotifyEv");
  Release(this);
  Release(reinterpret_cast<const char*>(this) + sizeof(Mutex));
  real(this);
}

void Notification::WaitForNotification() const {
  CLIPSERVE_REAL(void (*)(const Notification*), "_ZNK",
                 "12Notification19WaitForNotificationEv");
  real(this);
  Acquire(this);
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  CLIPSERVE_REAL(bool (*)(const Notification*, absl::Duration), "_ZNK",
                 "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) Acquire(this);
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  CLIPSERVE_REAL(bool (*)(const Notification*, absl::Time), "_ZNK",
                 "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) Acquire(this);
  return notified;
}

// --- BlockingCounter and Barrier ---------------------------------------------------

bool BlockingCounter::DecrementCount() {
  CLIPSERVE_REAL(bool (*)(BlockingCounter*), "_ZN",
                 "15BlockingCounter14DecrementCountEv");
  Release(this);
  const bool last = real(this);
  if (last) Acquire(this);  // the last decrement sees every earlier one
  return last;
}

void BlockingCounter::Wait() {
  CLIPSERVE_REAL(void (*)(BlockingCounter*), "_ZN", "15BlockingCounter4WaitEv");
  real(this);
  Acquire(this);
}

bool Barrier::Block() {
  CLIPSERVE_REAL(bool (*)(Barrier*), "_ZN", "7Barrier5BlockEv");
  Release(this);
  const bool result = real(this);
  Acquire(this);
  return result;
}

ABSL_NAMESPACE_END
}  // namespace absl
