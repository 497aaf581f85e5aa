#include "server/common/fake_clock.h"

#include <vector>

namespace clipserve {

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() {
  absl::MutexLock lock(&mu_);
  return now_;
}

bool FakeClock::WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv,
                                 absl::Time deadline) {
  Waiter waiter{mu, cv, deadline};
  {
    absl::MutexLock lock(&mu_);
    if (now_ >= deadline) return true;
    // Registered while the caller holds *mu: a SetTime() that finds this waiter due
    // locks *mu before it signals, so it cannot signal before cv->Wait() has released
    // *mu, and the wake-up cannot be lost.
    if (deadline != absl::InfiniteFuture()) waiters_.insert(&waiter);
  }
  cv->Wait(mu);
  if (deadline == absl::InfiniteFuture()) return false;

  // Leave with *mu released: a SetTime() that pinned this waiter may be blocked on *mu
  // and must finish signalling before `waiter` goes out of scope. Callers re-check
  // their condition after any return, so giving up *mu for a moment is harmless.
  mu->Unlock();
  bool reached;
  {
    absl::MutexLock lock(&mu_);
    waiters_.erase(&waiter);
    while (waiter.pins > 0) unpinned_.Wait(&mu_);
    reached = now_ >= deadline;
  }
  mu->Lock();
  return reached;
}

void FakeClock::AdvanceTime(absl::Duration delta) {
  std::vector<Waiter*> due;
  {
    absl::MutexLock lock(&mu_);
    if (delta <= absl::ZeroDuration()) return;
    now_ += delta;
    due = PinDueWaiters();
  }
  WakeAndUnpin(due);
}

void FakeClock::SetTime(absl::Time time) {
  std::vector<Waiter*> due;
  {
    absl::MutexLock lock(&mu_);
    if (time <= now_) return;
    now_ = time;
    due = PinDueWaiters();
  }
  WakeAndUnpin(due);
}

std::vector<FakeClock::Waiter*> FakeClock::PinDueWaiters() {
  std::vector<Waiter*> due;
  for (Waiter* waiter : waiters_) {
    if (waiter->deadline <= now_) {
      ++waiter->pins;
      due.push_back(waiter);
    }
  }
  return due;
}

void FakeClock::WakeAndUnpin(const std::vector<Waiter*>& due) {
  if (due.empty()) return;
  for (Waiter* waiter : due) {
    absl::MutexLock lock(waiter->mu);
    waiter->cv->SignalAll();
  }
  {
    absl::MutexLock lock(&mu_);
    for (Waiter* waiter : due) --waiter->pins;
  }
  unpinned_.SignalAll();
}

}  // namespace clipserve
