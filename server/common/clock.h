#ifndef CLIPSERVE_SERVER_COMMON_CLOCK_H_
#define CLIPSERVE_SERVER_COMMON_CLOCK_H_

#include <chrono>

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

  // The current time on this clock, never earlier than a time it returned before.
  // Thread-safe; never blocks.
  virtual absl::Time Now() = 0;

  // Atomically releases `*mu` and waits until `*cv` is signalled, until Now() reaches
  // `deadline`, or spuriously; then re-acquires `*mu` before it returns. Returns true
  // when Now() >= `deadline` on return (absl::InfiniteFuture() never times out).
  // Like absl::CondVar::WaitWithDeadline, callers wait in a loop that re-checks their
  // condition under `*mu`. Blocks; thread-safe. `mu` and `cv` stay owned by the caller
  // and must outlive the call.
  virtual bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;

  // The time on this clock at which the wall clock (absl::Now(), as it reads now)
  // reaches `wall`: Now() + (wall - absl::Now()). Converts a deadline given in wall
  // time (gRPC's) to this clock once, as it arrives. Infinite times stay infinite.
  absl::Time FromWallTime(absl::Time wall);
};

// Real time on the monotonic clock (std::chrono::steady_clock, CLOCK_MONOTONIC), as an
// absl::Time that read the wall time (absl::Now()) when the process first used it. A
// step of the wall clock (an NTP correction, a VM resumed, `date -s`) moves neither
// Now() nor a wait: a queued batch is not held back for as long as the clock stepped
// back, and a running batch does not look stuck after a step forward.
//
// So Now() is not the wall time: convert wall-clock deadlines (gRPC's) with
// FromWallTime(). absl::CondVar's own timed waits cannot serve WaitWithDeadline(): the
// Abseil this builds with waits for a CLOCK_REALTIME futex deadline. A helper thread,
// started on the first finite wait, sleeps on the monotonic clock instead and signals
// each waiter's CondVar at its deadline, under the waiter's mutex.
class RealClock final : public Clock {
 public:
  // The process-wide instance; never destroyed. Thread-safe.
  static RealClock* Get();

  RealClock(const RealClock&) = delete;
  RealClock& operator=(const RealClock&) = delete;

  absl::Time Now() override;
  // At a finite deadline the helper thread signals `*cv` holding `*mu` (taken with
  // TryLock, tried again every 50 us while another thread holds it); a wait longer
  // than an hour may return early (callers loop anyway).
  bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;

 private:
  RealClock();

  // absl::Now() and the steady clock, read together when the instance was made.
  const absl::Time wall_start_;
  const std::chrono::steady_clock::time_point steady_start_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_CLOCK_H_
