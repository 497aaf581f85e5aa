// RealClock and the batcher on it, in a process whose wall clock reads an hour ahead of
// the kernel's CLOCK_REALTIME. This binary interposes clock_gettime() to do that: from
// the process's point of view, the kernel's wall clock stepped back an hour (an NTP
// correction, a resumed VM) just after the process read it. A wait that the kernel
// times against CLOCK_REALTIME (as absl::CondVar's timed waits are, in the Abseil this
// builds with) then lasts an hour longer than asked; one timed on the monotonic clock
// does not. The interposition is process-wide, hence a binary of its own.

#include <dlfcn.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/batching/dynamic_batcher.h"
#include "server/common/clock.h"

namespace {

// How far this process's CLOCK_REALTIME reads ahead of the kernel's.
constexpr time_t kWallAheadSeconds = 3600;

// Counts CLOCK_REALTIME reads, to prove the interposition is in effect.
std::atomic<int64_t> realtime_reads{0};

}  // namespace

extern "C" int clock_gettime(clockid_t clock, struct timespec* ts) noexcept {
  using ClockGettime = int (*)(clockid_t, struct timespec*);
  static const ClockGettime real =
      reinterpret_cast<ClockGettime>(dlsym(RTLD_NEXT, "clock_gettime"));
  const int result = real(clock, ts);
  if (result == 0 && clock == CLOCK_REALTIME) {
    ts->tv_sec += kWallAheadSeconds;
    realtime_reads.fetch_add(1, std::memory_order_relaxed);
  }
  return result;
}

namespace clipserve {
namespace {

// Generous: the waits below ask for 50 ms; a regression waits an hour.
constexpr std::chrono::seconds kGiveUp(20);

// A one-shot flag whose wait is timed on the steady clock (glibc's
// pthread_cond_clockwait with CLOCK_MONOTONIC), so the test itself cannot hang.
class SteadyFlag {
 public:
  void Set() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool WaitFor(std::chrono::steady_clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

TEST(ClockStepTest, TheInterpositionMovesTheWallClock) {
  const int64_t reads = realtime_reads.load();
  const absl::Time wall = absl::Now();
  timespec kernel{};
  ASSERT_EQ(syscall(SYS_clock_gettime, CLOCK_REALTIME, &kernel), 0);
  EXPECT_GT(wall - absl::TimeFromTimespec(kernel), absl::Minutes(59));
  EXPECT_GT(realtime_reads.load(), reads);
}

TEST(ClockStepTest, FromWallTimeKeepsTheTimeLeft) {
  RealClock* clock = RealClock::Get();
  const absl::Duration left =
      clock->FromWallTime(absl::Now() + absl::Seconds(30)) - clock->Now();
  EXPECT_GT(left, absl::Seconds(29));
  EXPECT_LE(left, absl::Seconds(30) + absl::Milliseconds(1));
  EXPECT_EQ(clock->FromWallTime(absl::InfiniteFuture()), absl::InfiniteFuture());
  EXPECT_EQ(clock->FromWallTime(absl::InfinitePast()), absl::InfinitePast());
}

TEST(ClockStepTest, RealClockWaitEndsAtItsDeadline) {
  RealClock* clock = RealClock::Get();
  absl::Mutex mu;
  absl::CondVar cv;
  SteadyFlag returned;
  bool timed_out = false;
  const absl::Time start = clock->Now();
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    const absl::Time deadline = clock->Now() + absl::Milliseconds(50);
    while (!timed_out) timed_out = clock->WaitWithDeadline(&mu, &cv, deadline);
    returned.Set();
  });
  if (!returned.WaitFor(kGiveUp)) {
    ADD_FAILURE() << "a 50 ms wait still waits after " << kGiveUp.count() << " s";
    absl::MutexLock lock(&mu);
    timed_out = true;  // let the waiter go
    cv.Signal();
  }
  waiter.join();
  EXPECT_GE(clock->Now() - start, absl::Milliseconds(50));
}

// Several waiters with different deadlines share the helper thread; each wakes.
TEST(ClockStepTest, ConcurrentWaitersEachReachTheirDeadline) {
  RealClock* clock = RealClock::Get();
  constexpr int kWaiters = 6;
  absl::Mutex mu;
  absl::CondVar cv;
  std::vector<SteadyFlag> returned(kWaiters);
  std::vector<std::thread> waiters;
  bool give_up = false;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      absl::MutexLock lock(&mu);
      const absl::Time deadline = clock->Now() + absl::Milliseconds(10 * (kWaiters - i));
      while (!give_up && !clock->WaitWithDeadline(&mu, &cv, deadline)) {
      }
      if (!give_up) {
        EXPECT_GE(clock->Now(), deadline);
      }
      returned[i].Set();
    });
  }
  const auto give_up_at = std::chrono::steady_clock::now() + kGiveUp;
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_TRUE(returned[i].WaitFor(give_up_at - std::chrono::steady_clock::now()))
        << "waiter " << i;
  }
  {
    absl::MutexLock lock(&mu);
    give_up = true;
  }
  cv.SignalAll();
  for (std::thread& waiter : waiters) waiter.join();
}

struct Item {
  absl::Time deadline() const { return absl::InfiniteFuture(); }
  bool cancelled() const { return false; }
};

// The batcher on its default (real) clock sends a lone item on after the queue delay.
TEST(ClockStepTest, BatcherSendsALoneItemOnAfterTheQueueDelay) {
  DynamicBatcherOptions options;
  options.name = "step";
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Milliseconds(50);
  SteadyFlag processed;
  auto batcher = DynamicBatcher<Item>::Create(
      options, [&](Batch<Item>) { processed.Set(); }, [](Item, absl::Status) {});
  ASSERT_TRUE(batcher.ok()) << batcher.status();
  std::vector<Item> items(1);
  ASSERT_TRUE((*batcher)->Schedule(&items).ok());
  EXPECT_TRUE(processed.WaitFor(kGiveUp))
      << "one item, 50 ms queue delay: no batch after " << kGiveUp.count() << " s";
  (*batcher)->Shutdown();  // wakes a worker still waiting, so the test can end
}

}  // namespace
}  // namespace clipserve
