#include "server/common/clock.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/common/fake_clock.h"

namespace clipserve {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1000);

TEST(RealClockTest, IsASingletonThatNeverGoesBack) {
  EXPECT_EQ(RealClock::Get(), RealClock::Get());
  absl::Time last = RealClock::Get()->Now();
  for (int i = 0; i < 100000; ++i) {
    const absl::Time now = RealClock::Get()->Now();
    ASSERT_GE(now, last);
    last = now;
  }
  // It starts on the wall time, and steady and wall clocks drift apart only slowly.
  EXPECT_LT(absl::AbsDuration(RealClock::Get()->Now() - absl::Now()), absl::Seconds(1));
}

TEST(RealClockTest, FiniteDeadlineEndsTheWait) {
  absl::Mutex mu;
  absl::CondVar cv;
  absl::MutexLock lock(&mu);
  const absl::Time deadline = RealClock::Get()->Now() + absl::Milliseconds(20);
  while (!RealClock::Get()->WaitWithDeadline(&mu, &cv, deadline)) {
  }
  EXPECT_GE(RealClock::Get()->Now(), deadline);
}

TEST(RealClockTest, PastDeadlineReturnsAtOnce) {
  absl::Mutex mu;
  absl::CondVar cv;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(RealClock::Get()->WaitWithDeadline(&mu, &cv, absl::InfinitePast()));
}

// A thread in a timed wait holds `outer`, the mutex of another timed waiter whose
// deadline comes first. The helper thread must not block on `outer` (its holder waits
// for the helper), so both waits end.
TEST(RealClockTest, AWaiterHoldingAnotherWaitersMutexDoesNotStallTheTimer) {
  RealClock* clock = RealClock::Get();
  absl::Mutex outer;
  absl::Mutex inner;
  absl::CondVar outer_cv;
  absl::CondVar inner_cv;
  absl::Notification first_done;
  absl::Notification second_done;
  bool first_waits = false;
  const absl::Time first_deadline = clock->Now() + absl::Milliseconds(20);
  std::thread first([&] {
    absl::MutexLock lock(&outer);
    first_waits = true;
    while (!clock->WaitWithDeadline(&outer, &outer_cv, first_deadline)) {
    }
    first_done.Notify();
  });
  std::thread second([&] {
    absl::MutexLock hold(&outer);
    outer.Await(absl::Condition(&first_waits));  // `first` has registered its wait
    absl::MutexLock lock(&inner);
    const absl::Time deadline = clock->Now() + absl::Milliseconds(40);
    while (!clock->WaitWithDeadline(&inner, &inner_cv, deadline)) {
    }
    second_done.Notify();
  });
  EXPECT_TRUE(second_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(first_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  second.join();
  first.join();
}

TEST(RealClockTest, SignalWakesAWaiter) {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  std::thread signaller([&] {
    {
      absl::MutexLock lock(&mu);
      ready = true;
    }
    cv.Signal();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) {
      EXPECT_FALSE(RealClock::Get()->WaitWithDeadline(&mu, &cv, absl::InfiniteFuture()));
    }
  }
  signaller.join();
}

TEST(FakeClockTest, TimeMovesOnlyWhenTold) {
  FakeClock clock(kStart);
  EXPECT_EQ(clock.Now(), kStart);
  EXPECT_EQ(clock.Now(), kStart);
  clock.AdvanceTime(absl::Milliseconds(5));
  EXPECT_EQ(clock.Now(), kStart + absl::Milliseconds(5));
  clock.AdvanceTime(-absl::Seconds(1));  // ignored
  clock.AdvanceTime(absl::ZeroDuration());
  EXPECT_EQ(clock.Now(), kStart + absl::Milliseconds(5));
  clock.SetTime(kStart + absl::Seconds(2));
  EXPECT_EQ(clock.Now(), kStart + absl::Seconds(2));
  clock.SetTime(kStart);  // never backwards
  EXPECT_EQ(clock.Now(), kStart + absl::Seconds(2));
}

TEST(FakeClockTest, DefaultStartIsFarFromTheEpoch) {
  FakeClock clock;
  EXPECT_GT(clock.Now() - absl::UnixEpoch(), absl::Hours(24 * 365));
}

TEST(FakeClockTest, ReachedDeadlineReturnsAtOnce) {
  FakeClock clock(kStart);
  absl::Mutex mu;
  absl::CondVar cv;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(clock.WaitWithDeadline(&mu, &cv, kStart));
  EXPECT_TRUE(clock.WaitWithDeadline(&mu, &cv, kStart - absl::Nanoseconds(1)));
}

// A thread that waits on `clock` until `deadline`, re-waiting after spurious wake-ups.
class DeadlineWaiter {
 public:
  DeadlineWaiter(FakeClock* clock, absl::Time deadline) : clock_(clock) {
    thread_ = std::thread([this, deadline] {
      absl::MutexLock lock(&mu_);
      parked_.Notify();
      while (!clock_->WaitWithDeadline(&mu_, &cv_, deadline)) {
      }
      woke_at_ = clock_->Now();
      done_.Notify();
    });
    // Holding mu_ once the thread has announced itself proves that it has released
    // mu_ inside WaitWithDeadline, i.e. it is parked on the clock.
    parked_.WaitForNotification();
    absl::MutexLock lock(&mu_);
  }
  ~DeadlineWaiter() { thread_.join(); }

  bool done() const { return done_.HasBeenNotified(); }
  absl::Time WaitDone() {
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return woke_at_;
  }

 private:
  FakeClock* const clock_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  absl::Notification parked_;
  absl::Notification done_;
  absl::Time woke_at_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

TEST(FakeClockTest, AdvanceWakesAParkedWaiterExactlyAtItsDeadline) {
  FakeClock clock(kStart);
  const absl::Time deadline = kStart + absl::Milliseconds(10);
  DeadlineWaiter waiter(&clock, deadline);
  clock.AdvanceTime(absl::Milliseconds(10) - absl::Nanoseconds(1));
  EXPECT_FALSE(waiter.done());  // it cannot return true before the deadline
  clock.AdvanceTime(absl::Nanoseconds(1));
  EXPECT_EQ(waiter.WaitDone(), deadline);
}

TEST(FakeClockTest, SetTimeWakesEveryDueWaiterAndOnlyThose) {
  FakeClock clock(kStart);
  DeadlineWaiter first(&clock, kStart + absl::Seconds(1));
  DeadlineWaiter second(&clock, kStart + absl::Seconds(2));
  DeadlineWaiter third(&clock, kStart + absl::Seconds(3));
  clock.SetTime(kStart + absl::Seconds(2));
  EXPECT_EQ(first.WaitDone(), kStart + absl::Seconds(2));
  EXPECT_EQ(second.WaitDone(), kStart + absl::Seconds(2));
  EXPECT_FALSE(third.done());
  clock.AdvanceTime(absl::Seconds(5));
  EXPECT_EQ(third.WaitDone(), kStart + absl::Seconds(7));
}

TEST(FakeClockTest, SignalWakesAWaiterBeforeItsDeadline) {
  FakeClock clock(kStart);
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  absl::Notification parked;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    parked.Notify();
    while (!ready) {
      EXPECT_FALSE(clock.WaitWithDeadline(&mu, &cv, kStart + absl::Hours(1)));
    }
  });
  parked.WaitForNotification();
  {
    absl::MutexLock lock(&mu);
    ready = true;
  }
  cv.Signal();
  waiter.join();
  EXPECT_EQ(clock.Now(), kStart);
}

TEST(FakeClockTest, InfiniteDeadlineWaitsForASignal) {
  FakeClock clock(kStart);
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    while (!ready) EXPECT_FALSE(clock.WaitWithDeadline(&mu, &cv, absl::InfiniteFuture()));
  });
  clock.AdvanceTime(absl::Hours(24 * 365 * 1000));
  {
    absl::MutexLock lock(&mu);
    ready = true;
  }
  cv.SignalAll();
  waiter.join();
}

// Many threads wait on one mutex and condition variable with spread deadlines while
// two threads advance the clock: every waiter must wake, none before its deadline.
TEST(FakeClockTest, ConcurrentWaitersAndAdvancers) {
  constexpr int kWaiters = 16;
  constexpr int kSteps = 200;
  FakeClock clock(kStart);
  absl::Mutex mu;
  absl::CondVar cv;
  std::atomic<int> early{0};
  absl::BlockingCounter woke(kWaiters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      const absl::Time deadline = kStart + absl::Milliseconds(10 * (i + 1));
      for (int round = 0; round < 3; ++round) {
        absl::MutexLock lock(&mu);
        const absl::Time round_deadline = deadline + absl::Milliseconds(round);
        while (!clock.WaitWithDeadline(&mu, &cv, round_deadline)) {
        }
        if (clock.Now() < round_deadline) early.fetch_add(1);
      }
      woke.DecrementCount();
    });
  }
  for (int a = 0; a < 2; ++a) {
    threads.emplace_back([&] {
      for (int step = 0; step < kSteps; ++step) {
        clock.AdvanceTime(absl::Milliseconds(1));
        if (step % 10 == 0) cv.SignalAll();  // spurious wake-ups for everyone
      }
    });
  }
  woke.Wait();
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(early.load(), 0);
  EXPECT_EQ(clock.Now(), kStart + absl::Milliseconds(2 * kSteps));
}

}  // namespace
}  // namespace clipserve
