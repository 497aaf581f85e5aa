#ifndef CLIPSERVE_SERVER_COMMON_FAKE_CLOCK_H_
#define CLIPSERVE_SERVER_COMMON_FAKE_CLOCK_H_

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/common/clock.h"

namespace clipserve {

// A Clock for tests (library clipserve_fake_clock; never linked into the server): its
// time moves only when the test calls AdvanceTime() or SetTime(), which wake every
// thread in WaitWithDeadline() whose deadline the new time has reached. Nothing sleeps,
// so a test decides exactly when time-triggered work may happen. Model: TF Serving's
// FakeClockEnv.
//
// Thread-safe. Must outlive every thread waiting on it. AdvanceTime() and SetTime()
// lock the mutex of each waiter they wake (so that the wake-up cannot be lost), so the
// caller must not hold such a mutex.
class FakeClock final : public Clock {
 public:
  // Starts at `start`; the default is an arbitrary fixed time, far from the Unix epoch
  // so that subtracting durations never underflows.
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000));

  FakeClock(const FakeClock&) = delete;
  FakeClock& operator=(const FakeClock&) = delete;

  absl::Time Now() override ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until `*cv` is signalled or this clock's time reaches `deadline` through
  // AdvanceTime() / SetTime(). Returns true when Now() >= deadline on return.
  bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) ABSL_LOCKS_EXCLUDED(mu_) override;

  // Moves time forward by `delta` (negative values count as zero) and wakes the
  // waiters whose deadline has been reached. Returns once each of them has been
  // signalled (not once it has acted on it). Blocks briefly on waiters' mutexes.
  void AdvanceTime(absl::Duration delta) ABSL_LOCKS_EXCLUDED(mu_);

  // Sets the time to `time` if that is later than Now() (time never goes backwards)
  // and wakes waiters as AdvanceTime() does.
  void SetTime(absl::Time time) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // One thread inside WaitWithDeadline(); lives on that thread's stack.
  struct Waiter {
    absl::Mutex* mu;
    absl::CondVar* cv;
    absl::Time deadline;
    // How many AdvanceTime() calls are about to signal this waiter; WaitWithDeadline()
    // does not return (and so does not free the Waiter) while it is above zero.
    int pins = 0;
  };

  // Pins and returns the waiters whose deadline now_ has reached.
  std::vector<Waiter*> PinDueWaiters() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Signals each of `due` under its own mutex, then unpins them.
  void WakeAndUnpin(const std::vector<Waiter*>& due) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  absl::CondVar unpinned_;  // signalled when some Waiter's pins drop
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_FAKE_CLOCK_H_
