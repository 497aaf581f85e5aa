#include "server/batching/request_tracker.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(RequestTrackerTest, RejectsEmptyRequestsAndCallbacks) {
  EXPECT_EQ(RequestTracker::Create(0, [](absl::Status) {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequestTracker::Create(-1, [](absl::Status) {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequestTracker::Create(1, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RequestTrackerTest, FiresOnceWithOkAfterTheLastItem) {
  int calls = 0;
  absl::Status outcome = absl::UnknownError("not called");
  auto tracker = RequestTracker::Create(3, [&](absl::Status status) {
    ++calls;
    outcome = status;
  });
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  EXPECT_EQ((*tracker)->remaining(), 3);
  EXPECT_FALSE((*tracker)->ItemDone());
  EXPECT_FALSE((*tracker)->ItemDone(absl::OkStatus()));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ((*tracker)->remaining(), 1);
  EXPECT_TRUE((*tracker)->ItemDone());
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(outcome.ok());
  // Calls beyond the item count are ignored.
  EXPECT_FALSE((*tracker)->ItemDone(absl::InternalError("late")));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ((*tracker)->remaining(), 0);
}

TEST(RequestTrackerTest, ReportsTheFirstError) {
  absl::Status outcome;
  auto tracker = RequestTracker::Create(
      4, [&](absl::Status status) { outcome = std::move(status); });
  ASSERT_TRUE(tracker.ok());
  (*tracker)->ItemDone();
  (*tracker)->ItemDone(absl::DeadlineExceededError("item 1 expired"));
  (*tracker)->ItemDone(absl::CancelledError("item 2 cancelled"));
  EXPECT_TRUE((*tracker)->ItemDone());
  EXPECT_EQ(outcome, absl::DeadlineExceededError("item 1 expired"));
}

TEST(RequestTrackerTest, CallbackMayOwnMoveOnlyState) {
  auto payload = std::make_unique<int>(7);
  int seen = 0;
  auto tracker = RequestTracker::Create(
      1, [payload = std::move(payload), &seen](absl::Status) { seen = *payload; });
  ASSERT_TRUE(tracker.ok());
  EXPECT_TRUE((*tracker)->ItemDone());
  EXPECT_EQ(seen, 7);
}

// Items finish on many threads; each writes its own result slot before ItemDone(), and
// the callback (on whichever thread is last) reads them all.
TEST(RequestTrackerTest, ConcurrentItemsFireExactlyOnceAndPublishResults) {
  constexpr int kRequests = 50;
  constexpr int kItems = 8;
  for (int request = 0; request < kRequests; ++request) {
    std::vector<int> results(kItems, 0);
    std::atomic<int> calls{0};
    std::atomic<int> sum{0};
    auto tracker = RequestTracker::Create(kItems, [&](absl::Status status) {
      EXPECT_TRUE(status.ok());
      int total = 0;
      for (int value : results) total += value;
      sum.store(total);
      calls.fetch_add(1);
    });
    ASSERT_TRUE(tracker.ok());
    std::shared_ptr<RequestTracker> shared = *std::move(tracker);
    std::atomic<int> last_count{0};
    std::vector<std::thread> threads;
    for (int item = 0; item < kItems; ++item) {
      threads.emplace_back([&results, &last_count, shared, item] {
        results[item] = item + 1;
        if (shared->ItemDone()) last_count.fetch_add(1);
      });
    }
    shared.reset();
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(last_count.load(), 1);
    EXPECT_EQ(sum.load(), kItems * (kItems + 1) / 2);
  }
}

}  // namespace
}  // namespace clipserve
