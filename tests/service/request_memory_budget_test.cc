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
  // A caller that will wait and try again is refused the same way, uncounted.
  const absl::StatusOr<Reservation> tried = budget.TryReserve(int64_t{3} << 20);
  EXPECT_EQ(tried.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryInfoPayload(tried.status()), RequestMemoryBudget::kRetryAfter);
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_refusals_total 2\n"));
  b->Release();
  EXPECT_THAT(metrics.Serialize(), HasSubstr("clipserve_request_memory_bytes 0\n"));
}

// One client holds at most its share; another still gets the rest of the budget.
TEST(RequestMemoryBudgetTest, AClientPastItsShareIsRefusedWhileOthersAreServed) {
  RequestMemoryBudget budget(1000, 600, nullptr);
  absl::StatusOr<Reservation> a1 = budget.Reserve(400, "10.0.0.1");
  absl::StatusOr<Reservation> a2 = budget.Reserve(200, "10.0.0.1");  // exactly its share
  ASSERT_TRUE(a1.ok() && a2.ok());
  EXPECT_EQ(budget.used_by("10.0.0.1"), 600);
  const absl::StatusOr<Reservation> a3 = budget.Reserve(1, "10.0.0.1");
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(a3.status().message(), HasSubstr("10.0.0.1"));
  EXPECT_THAT(a3.status().message(), HasSubstr("--max_request_memory_per_client_mb"));
  EXPECT_EQ(GetRetryInfoPayload(a3.status()), RequestMemoryBudget::kRetryAfter);
  // The refusal kept nothing.
  EXPECT_EQ(budget.used_by("10.0.0.1"), 600);
  EXPECT_EQ(budget.used(), 600);

  // Another client has the rest of the total, and no more.
  absl::StatusOr<Reservation> b = budget.Reserve(400, "10.0.0.2");
  ASSERT_TRUE(b.ok()) << b.status();
  const absl::StatusOr<Reservation> b2 = budget.Reserve(1, "10.0.0.2");
  EXPECT_EQ(b2.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b2.status().message(), HasSubstr("--max_request_memory_mb"));
  EXPECT_EQ(budget.used_by("10.0.0.2"), 400);

  // Released bytes come back to their client, and a client holding nothing is
  // forgotten.
  a1->Release();
  EXPECT_EQ(budget.used_by("10.0.0.1"), 200);
  EXPECT_TRUE(budget.Reserve(400, "10.0.0.1").ok());
  a2->Release();
  b->Release();
  EXPECT_EQ(budget.used_by("10.0.0.1"), 0);
  EXPECT_EQ(budget.used_by("10.0.0.2"), 0);
  EXPECT_EQ(budget.used(), 0);
}

// A call's response, reserved beside its request: refused for what others hold, but
// never for being too large alone, which only waiting could not help.
TEST(RequestMemoryBudgetTest, ReservingBesideACallsOwnBytesTakesAtMostTheLimits) {
  RequestMemoryBudget budget(1000, 600, nullptr);
  absl::StatusOr<Reservation> request = budget.Reserve(100, "10.0.0.1");
  ASSERT_TRUE(request.ok());
  // Past the per-client limit: counts up to it, 500 of the 900.
  absl::StatusOr<Reservation> response = budget.ReserveBeside(*request, 900, "10.0.0.1");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->bytes(), 500);
  EXPECT_EQ(budget.used_by("10.0.0.1"), 600);
  // Beside what another call of the same client holds it is refused.
  absl::StatusOr<Reservation> second = budget.Reserve(10, "10.0.0.1");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  response->Release();
  request->Release();

  // Past the total, without a client: counts up to the total.
  RequestMemoryBudget total(1000);
  absl::StatusOr<Reservation> held = total.Reserve(300);
  ASSERT_TRUE(held.ok());
  absl::StatusOr<Reservation> whole = total.ReserveBeside(*held, 5000);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->bytes(), 700);
  // Beside another call's bytes it is refused, with the RetryInfo of a request.
  whole->Release();
  absl::StatusOr<Reservation> small = total.Reserve(200);
  ASSERT_TRUE(small.ok());
  const absl::StatusOr<Reservation> refused = total.ReserveBeside(*held, 600);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryInfoPayload(refused.status()), RequestMemoryBudget::kRetryAfter);
  EXPECT_EQ(total.used(), 500);
}

TEST(RequestMemoryBudgetTest, WithoutAClientOrAPerClientLimitOnlyTheTotalCounts) {
  RequestMemoryBudget shared(1000, 600, nullptr);
  absl::StatusOr<Reservation> anonymous = shared.Reserve(900);
  ASSERT_TRUE(anonymous.ok());
  EXPECT_EQ(shared.used(), 900);
  RequestMemoryBudget total_only(1000);
  absl::StatusOr<Reservation> one = total_only.Reserve(900, "10.0.0.1");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(total_only.used_by("10.0.0.1"), 0);  // not tracked
}

// An empty request (a client can send one: the budget is taken before parsing) holds
// nothing of its client's share, so no entry is kept for it, and releasing two of them
// in any order beside a real one leaves the accounts right.
TEST(RequestMemoryBudgetTest, EmptyRequestsKeepNoClientEntry) {
  RequestMemoryBudget budget(1000, 600, nullptr);
  absl::StatusOr<Reservation> empty1 = budget.Reserve(0, "c");
  absl::StatusOr<Reservation> empty2 = budget.Reserve(0, "c");
  ASSERT_TRUE(empty1.ok() && empty2.ok());
  EXPECT_EQ(budget.clients_holding(), 0u);
  absl::StatusOr<Reservation> real = budget.Reserve(100, "c");
  ASSERT_TRUE(real.ok());
  EXPECT_EQ(budget.clients_holding(), 1u);
  empty1->Release();
  empty2->Release();
  EXPECT_EQ(budget.used_by("c"), 100);
  real->Release();
  EXPECT_EQ(budget.used_by("c"), 0);
  EXPECT_EQ(budget.clients_holding(), 0u);
  EXPECT_EQ(budget.used(), 0);
}

TEST(RequestMemoryBudgetTest, AMovedReservationReturnsItsBytesToItsClient) {
  RequestMemoryBudget budget(1000, 600, nullptr);
  absl::StatusOr<Reservation> r = budget.Reserve(500, "c");
  ASSERT_TRUE(r.ok());
  Reservation moved = *std::move(r);
  Reservation assigned;
  assigned = std::move(moved);
  EXPECT_EQ(budget.used_by("c"), 500);
  assigned.Release();
  EXPECT_EQ(budget.used_by("c"), 0);
  EXPECT_EQ(budget.used(), 0);
}

// Many threads as a few clients: no client ever holds more than its share, nor all
// together more than the total.
TEST(RequestMemoryBudgetTest, ConcurrentClientsNeverPassTheirShare) {
  constexpr int64_t kCapacity = 10'000;
  constexpr int64_t kShare = 4'000;
  RequestMemoryBudget budget(kCapacity, kShare, nullptr);
  std::atomic<int64_t> held_by[2] = {0, 0};  // what each client's threads hold
  std::atomic<bool> over{false};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const int client = t % 2;
      const std::string name = absl::StrCat("10.0.0.", client);
      std::mt19937 random(4321 + t);
      std::uniform_int_distribution<int64_t> size(1, 1500);
      std::vector<Reservation> mine;
      for (int i = 0; i < 20'000; ++i) {
        if (!mine.empty() && (random() % 2 == 0)) {
          held_by[client].fetch_sub(mine.back().bytes());
          mine.pop_back();
          continue;
        }
        absl::StatusOr<Reservation> r = budget.Reserve(size(random), name);
        if (!r.ok()) {
          refused.fetch_add(1);
          continue;
        }
        if (held_by[client].fetch_add(r->bytes()) + r->bytes() > kShare) over = true;
        mine.push_back(*std::move(r));
      }
      for (Reservation& r : mine) held_by[client].fetch_sub(r.bytes());
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(over.load()) << "a client held more than its share at once";
  EXPECT_GT(refused.load(), 0) << "no share was ever full; the test proves nothing";
  EXPECT_EQ(budget.used(), 0);
  EXPECT_EQ(budget.used_by("10.0.0.0"), 0);
  EXPECT_EQ(budget.used_by("10.0.0.1"), 0);
  EXPECT_EQ(budget.clients_holding(), 0u);
}

TEST(RequestMemoryBudgetTest, MetricsShowThePerClientLimitAndCountItsRefusals) {
  Metrics metrics;
  RequestMemoryBudget budget(int64_t{3} << 20, int64_t{1} << 20, &metrics);
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_client_limit_bytes 1048576\n"));
  absl::StatusOr<Reservation> a = budget.Reserve(int64_t{1} << 20, "c");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(budget.Reserve(1, "c").ok());
  EXPECT_FALSE(budget.TryReserve(1, "c").ok());  // uncounted
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_client_refusals_total 1\n"));
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("clipserve_request_memory_refusals_total 0\n"));
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

TEST(ValidateRequestMemoryLimitTest, APerClientLimitFitsTheLargestMessageAndTheTotal) {
  constexpr int64_t kMessage = 64 << 20;
  EXPECT_TRUE(ValidateRequestMemoryLimit(256 << 20, kMessage, 0).ok());
  EXPECT_TRUE(ValidateRequestMemoryLimit(256 << 20, kMessage, kMessage).ok());
  EXPECT_TRUE(ValidateRequestMemoryLimit(256 << 20, kMessage, 256 << 20).ok());
  EXPECT_TRUE(ValidateRequestMemoryLimit(0, kMessage, 512 << 20).ok());  // no total
  const absl::Status small =
      ValidateRequestMemoryLimit(256 << 20, kMessage, kMessage - 1);
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.message(), HasSubstr("could never be admitted"));
  const absl::Status above =
      ValidateRequestMemoryLimit(256 << 20, kMessage, (256 << 20) + 1);
  EXPECT_EQ(above.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(above.message(), HasSubstr("would never apply"));
  EXPECT_EQ(ValidateRequestMemoryLimit(256 << 20, kMessage, -1).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
