#include "server/common/clock.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"

// std::condition_variable::wait_until(steady_clock) must wait on CLOCK_MONOTONIC; a
// libstdc++ without pthread_cond_clockwait (GCC < 10 or glibc < 2.30) would convert
// the deadline to CLOCK_REALTIME, which is the very thing this file avoids.
#if defined(__GLIBCXX__) && !defined(_GLIBCXX_USE_PTHREAD_COND_CLOCKWAIT)
#error "RealClock needs a libstdc++ built with pthread_cond_clockwait"
#endif

namespace clipserve {
namespace {

using SteadyTime = std::chrono::steady_clock::time_point;

// A finite wait longer than this is cut short (a spurious wake-up, which callers of
// WaitWithDeadline handle) so that no deadline overflows the steady clock's range.
constexpr absl::Duration kLongestWait = absl::Hours(1);

// How soon the timer thread tries again to signal a due waiter whose mutex was busy.
constexpr std::chrono::microseconds kBusyRetry(50);

// Signals the CondVar of each thread in RealClock::WaitWithDeadline() once the steady
// clock reaches its deadline, holding the waiter's mutex (taken with TryLock). Its own
// waits are std::condition_variable waits on the steady clock, which glibc serves with
// CLOCK_MONOTONIC (pthread_cond_clockwait). One per process, never destroyed; its thread
// runs for the life of the process.
class DeadlineTimer {
 public:
  // One thread inside RealClock::WaitWithDeadline(); lives on that thread's stack.
  struct Waiter {
    absl::Mutex* mu;
    absl::CondVar* cv;
    SteadyTime deadline;
    // These two are guarded by the timer's mutex.
    bool signalled = false;  // the timer thread has signalled it
    int pins = 0;            // > 0 while the timer thread is signalling it
  };

  static DeadlineTimer& Get() {
    static DeadlineTimer* const timer = new DeadlineTimer();
    return *timer;
  }

  // Called with waiter->mu held, before waiter->cv->Wait(waiter->mu): the timer thread
  // holds waiter->mu when it signals, so the signal cannot come before the wait.
  void Add(Waiter* waiter) {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      waiters_.push_back(waiter);
      wake = waiter->deadline < sleeping_until_;
    }
    if (wake) changed_.notify_one();
  }

  // Called with waiter->mu held or not (the timer thread never blocks on it); returns
  // once the timer thread no longer touches `waiter`.
  void Remove(Waiter* waiter) {
    std::unique_lock<std::mutex> lock(mu_);
    waiters_.erase(std::find(waiters_.begin(), waiters_.end(), waiter));
    unpinned_.wait(lock, [waiter] { return waiter->pins == 0; });
  }

 private:
  DeadlineTimer() {
    std::thread([this] { Run(); }).detach();
  }

  void Run() {
    std::vector<Waiter*> due;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      const SteadyTime now = std::chrono::steady_clock::now();
      SteadyTime next = SteadyTime::max();
      due.clear();
      for (Waiter* waiter : waiters_) {
        if (waiter->signalled) continue;
        if (waiter->deadline <= now) {
          ++waiter->pins;
          due.push_back(waiter);
        } else {
          next = std::min(next, waiter->deadline);
        }
      }
      if (!due.empty()) {
        // Never blocks on a waiter's mutex: one that is busy (its owner may itself be
        // in a timed wait, or slow) is tried again shortly, and holds back neither
        // the other waiters nor their Remove().
        lock.unlock();
        bool busy = false;
        for (Waiter* waiter : due) {
          const bool locked = waiter->mu->TryLock();
          if (locked) {
            waiter->cv->SignalAll();
            waiter->mu->Unlock();
          }
          busy = busy || !locked;
          {
            std::lock_guard<std::mutex> relock(mu_);
            waiter->signalled = waiter->signalled || locked;
            --waiter->pins;
          }
          unpinned_.notify_all();
        }
        lock.lock();
        // Waiters added meanwhile are in waiters_: look again, at once or, when a
        // mutex was busy, after kBusyRetry.
        if (!busy) continue;
        next = std::chrono::steady_clock::now() + kBusyRetry;
      }
      sleeping_until_ = next;
      if (next == SteadyTime::max()) {
        changed_.wait(lock);
      } else {
        changed_.wait_until(lock, next);
      }
      sleeping_until_ = SteadyTime::min();  // awake: Add() need not wake this thread
    }
  }

  std::mutex mu_;
  std::condition_variable changed_;   // the timer thread sleeps on it
  std::condition_variable unpinned_;  // notified when pins drop
  std::vector<Waiter*> waiters_;      // few: one per batcher worker waiting
  // The deadline the timer thread sleeps until; min() while it is awake.
  SteadyTime sleeping_until_ = SteadyTime::min();
};

}  // namespace

RealClock::RealClock()
    : wall_start_(absl::Now()), steady_start_(std::chrono::steady_clock::now()) {}

RealClock* RealClock::Get() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time RealClock::Now() {
  return wall_start_ + absl::FromChrono(std::chrono::steady_clock::now() - steady_start_);
}

absl::Time Clock::FromWallTime(absl::Time wall) {
  if (wall == absl::InfiniteFuture() || wall == absl::InfinitePast()) return wall;
  return Now() + (wall - absl::Now());
}

bool RealClock::WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv,
                                 absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    cv->Wait(mu);
    return false;
  }
  const absl::Duration left = deadline - Now();
  if (left <= absl::ZeroDuration()) return true;
  DeadlineTimer::Waiter waiter{
      mu, cv,
      std::chrono::steady_clock::now() +
          absl::ToChronoNanoseconds(std::min(left, kLongestWait))};
  DeadlineTimer& timer = DeadlineTimer::Get();
  timer.Add(&waiter);
  cv->Wait(mu);
  // Remove() waits until the timer thread is done with `waiter` (so it can go out of
  // scope). *mu stays held: the timer thread only ever TryLocks it, so one that is
  // about to signal `waiter` finds it busy, lets go and unpins at once.
  timer.Remove(&waiter);
  return Now() >= deadline;
}

}  // namespace clipserve
