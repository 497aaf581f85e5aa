#include "server/service/request_memory_budget.h"

#include <atomic>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/common/status_payloads.h"
#include "server/metrics/metrics.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
using Reservation = RequestMemoryBudget::Reservation;

TEST(RequestMemoryBudgetTest, HoldsReservationsUntilTheyAreDestroyed) {
  RequestMemoryBudget budget(1000);
  {
    absl::StatusOr<Reservation> a = budget.Reserve(400);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->bytes(), 400);
    absl::StatusOr<Reservation> b = budget.Reserve(600);  // exactly full
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(budget.used(), 1000);
  }
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, RefusesWhatDoesNotFitWithRetryInfoAndKeepsNothingOfIt) {
  RequestMemoryBudget budget(1000);
  absl::StatusOr<Reservation> held = budget.Reserve(700);
  ASSERT_TRUE(held.ok());

  absl::StatusOr<Reservation> refused = budget.Reserve(301);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("--max_request_memory_mb"));
  EXPECT_EQ(GetRetryInfoPayload(refused.status()),
            std::optional<absl::Duration>(RequestMemoryBudget::kRetryAfter));
  EXPECT_EQ(budget.used(), 700);

  // What fits still does, and once the first is gone the larger one does too.
  EXPECT_TRUE(budget.Reserve(300).ok());
  *held = Reservation();
  EXPECT_EQ(budget.used(), 0);
  EXPECT_TRUE(budget.Reserve(1000).ok());
}

TEST(RequestMemoryBudgetTest, ARequestLargerThanTheWholeLimitIsRefused) {
  RequestMemoryBudget budget(1000);
  EXPECT_EQ(budget.Reserve(1001).status().code(), absl::StatusCode::kResourceExhausted);
  // Sizes near the int64 range do not overflow the check.
  EXPECT_EQ(budget.Reserve(INT64_MAX).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, ZeroCapacityCountsWithoutLimit) {
  RequestMemoryBudget budget(0);
  absl::StatusOr<Reservation> big = budget.Reserve(int64_t{1} << 40);
  ASSERT_TRUE(big.ok());
  absl::StatusOr<Reservation> more = budget.Reserve(int64_t{1} << 40);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(budget.used(), int64_t{2} << 40);
}

TEST(RequestMemoryBudgetTest, NegativeSizesCountAsZero) {
  RequestMemoryBudget budget(10);
  absl::StatusOr<Reservation> r = budget.Reserve(-5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes(), 0);
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, MovingAReservationMovesItsBytesAndReleaseIsIdempotent) {
  RequestMemoryBudget budget(100);
  Reservation outer;
  {
    absl::StatusOr<Reservation> r = budget.Reserve(60);
    ASSERT_TRUE(r.ok());
    outer = *std::move(r);
  }  // the moved-from reservation returns nothing
  EXPECT_EQ(budget.used(), 60);
  EXPECT_EQ(outer.bytes(), 60);

  absl::StatusOr<Reservation> other = budget.Reserve(40);
  ASSERT_TRUE(other.ok());
  outer = *std::move(other);  // releases the 60 it held, takes the 40
  EXPECT_EQ(budget.used(), 40);

  outer.Release();
  outer.Release();
  EXPECT_EQ(outer.bytes(), 0);
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, ConcurrentReservationsNeverPassTheLimit) {
  constexpr int64_t kCapacity = 10'000;
  RequestMemoryBudget budget(kCapacity);
  std::atomic<int64_t> held{0};  // what the threads themselves hold, summed
  std::atomic<bool> over{false};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(1234 + t);
      std::uniform_int_distribution<int64_t> size(1, 4000);
      std::vector<Reservation> mine;
      for (int i = 0; i < 20'000; ++i) {
        if (!mine.empty() && (random() % 2 == 0)) {
          held.fetch_sub(mine.back().bytes());
          mine.pop_back();
          continue;
        }
        absl::StatusOr<Reservation> r = budget.Reserve(size(random));
        if (!r.ok()) {
          refused.fetch_add(1);
          continue;
        }
        if (held.fetch_add(r->bytes()) + r->bytes() > kCapacity) over = true;
        mine.push_back(*std::move(r));
      }
      for (Reservation& r : mine) held.fetch_sub(r.bytes());
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(over.load()) << "the threads held more than the limit at once";
  EXPECT_GT(refused.load(), 0) << "the limit was never reached; the test proves nothing";
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, MetricsFollowTheBytesHeldAndCountRefusals) {
  Metrics metrics;
  RequestMemoryBudget budget(int64_t{3} << 20, &metrics);
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_limit_bytes 3145728\n"));
  absl::StatusOr<Reservation> a = budget.Reserve(1500);
  absl::StatusOr<Reservation> b = budget.Reserve(500);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_THAT(metrics.Serialize(), HasSubstr("clipserve_request_memory_bytes 2000\n"));
  a->Release();
  EXPECT_THAT(metrics.Serialize(), HasSubstr("clipserve_request_memory_bytes 500\n"));
  EXPECT_FALSE(budget.Reserve(int64_t{3} << 20).ok());
  EXPECT_FALSE(budget.Reserve(int64_t{3} << 20).ok());
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_refusals_total 2\n"));
  b->Release();
  EXPECT_THAT(metrics.Serialize(), HasSubstr("clipserve_request_memory_bytes 0\n"));
}

TEST(ValidateRequestMemoryLimitTest, NeedsRoomForTheLargestMessageUnlessUnlimited) {
  EXPECT_TRUE(ValidateRequestMemoryLimit(0, 64 << 20).ok());
  EXPECT_TRUE(ValidateRequestMemoryLimit(64 << 20, 64 << 20).ok());
  const absl::Status small = ValidateRequestMemoryLimit((64 << 20) - 1, 64 << 20);
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.message(), HasSubstr("could never be admitted"));
  EXPECT_EQ(ValidateRequestMemoryLimit(-1, 64 << 20).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
