#ifndef CLIPSERVE_SERVER_COMMON_CLOCK_H_
#define CLIPSERVE_SERVER_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace clipserve {

// The source of time for everything that schedules by time (the batcher's queue delay,
// request deadlines), injected so that tests drive a FakeClock instead of sleeping.
// Model: TF Serving's EnvTime / FakeClockEnv.
//
// Besides reading the time, a Clock lets a thread that holds an absl::Mutex wait on an
// absl::CondVar until it is signalled or the clock reaches a deadline: a RealClock
// waits in real time, a FakeClock until a test moves its time past the deadline.
//
// Implementations are thread-safe and outlive every object that uses them.
class Clock {
 public:
  virtual ~Clock() = default;

  // The current time (for RealClock the wall time, which an NTP step may move back, so
  // users must tolerate a time earlier than one seen before). Thread-safe; never blocks.
  virtual absl::Time Now() = 0;

  // Atomically releases `*mu` and waits until `*cv` is signalled, until Now() reaches
  // `deadline`, or spuriously; then re-acquires `*mu` before it returns. Returns true
  // when Now() >= `deadline` on return (absl::InfiniteFuture() never times out).
  // Like absl::CondVar::WaitWithDeadline, callers wait in a loop that re-checks their
  // condition under `*mu`. Blocks; thread-safe. `mu` and `cv` stay owned by the caller
  // and must outlive the call.
  virtual bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// The wall clock: absl::Now() and absl::CondVar::WaitWithDeadline.
class RealClock final : public Clock {
 public:
  // The process-wide instance; never destroyed. Thread-safe.
  static RealClock* Get();

  RealClock(const RealClock&) = delete;
  RealClock& operator=(const RealClock&) = delete;

  absl::Time Now() override;
  bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;

 private:
  RealClock() = default;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_CLOCK_H_
