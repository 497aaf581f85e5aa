#include "server/common/line_rate_limiter.h"

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'000'000);

// Admits one line at `now`; returns its suppressed count, or -1 when refused.
int64_t Line(LineRateLimiter& limiter, absl::Time now) {
  int64_t suppressed = -7;
  if (!limiter.Admit(now, &suppressed)) return -1;
  return suppressed;
}

TEST(LineRateLimiterTest, AdmitsTheLimitEachSecondAndReportsWhatItRefused) {
  LineRateLimiter limiter(3);
  EXPECT_EQ(Line(limiter, kStart), 0);
  EXPECT_EQ(Line(limiter, kStart + absl::Milliseconds(10)), 0);
  EXPECT_EQ(Line(limiter, kStart + absl::Milliseconds(20)), 0);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Line(limiter, kStart + absl::Milliseconds(999)), -1);
  }
  // The next window's first line learns of the five, and only it.
  EXPECT_EQ(Line(limiter, kStart + absl::Seconds(1)), 5);
  EXPECT_EQ(Line(limiter, kStart + absl::Seconds(1)), 0);
}

TEST(LineRateLimiterTest, AWindowStartsAtTheFirstLineAfterThePreviousOneEnded) {
  LineRateLimiter limiter(1);
  EXPECT_EQ(Line(limiter, kStart), 0);
  EXPECT_EQ(Line(limiter, kStart + absl::Milliseconds(1500)), 0);  // a new window
  // Not aligned to whole seconds from kStart: 2.0 s is still inside it.
  EXPECT_EQ(Line(limiter, kStart + absl::Seconds(2)), -1);
  EXPECT_EQ(Line(limiter, kStart + absl::Milliseconds(2500)), 1);
}

TEST(LineRateLimiterTest, AClockSetBackStartsAWindow) {
  LineRateLimiter limiter(1);
  EXPECT_EQ(Line(limiter, kStart), 0);
  EXPECT_EQ(Line(limiter, kStart), -1);
  // Otherwise the window would last until the clock caught up again.
  EXPECT_EQ(Line(limiter, kStart - absl::Hours(1)), 1);
}

TEST(LineRateLimiterTest, NoLimitAdmitsEveryLine) {
  for (int limit : {0, -1}) {
    LineRateLimiter limiter(limit);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(Line(limiter, kStart), 0) << limit;
  }
}

TEST(LineRateLimiterTest, ConcurrentWritersShareTheLimit) {
  constexpr int kLimit = 50;
  constexpr int kThreads = 4;
  constexpr int kLinesEach = 100;
  LineRateLimiter limiter(kLimit);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kLinesEach; ++i) {
        if (Line(limiter, kStart) >= 0) admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(admitted.load(), kLimit);
  EXPECT_EQ(Line(limiter, kStart + absl::Seconds(1)), kThreads * kLinesEach - kLimit);
}

}  // namespace
}  // namespace clipserve
