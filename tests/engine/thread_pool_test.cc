#include "server/engine/thread_pool.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// Gives the pool's one worker a task that runs until `release` is notified, and returns
// once it runs: the queue is then empty. False when the pool refused it.
bool OccupyTheWorker(ThreadPool& pool, absl::Notification& release) {
  auto started = std::make_shared<absl::Notification>();
  if (!pool.Submit([started, &release] {
             started->Notify();
             release.WaitForNotification();
           })
           .ok()) {
    return false;
  }
  started->WaitForNotification();
  return true;
}

TEST(ThreadPoolTest, RunsEveryTask) {
  auto pool = ThreadPool::Create(2, 100);
  ASSERT_TRUE(pool.ok());
  std::atomic<int> sum{0};
  absl::BlockingCounter done(50);
  for (int i = 1; i <= 50; ++i) {
    ASSERT_TRUE((*pool)
                    ->Submit([&, i] {
                      sum += i;
                      done.DecrementCount();
                    })
                    .ok());
  }
  done.Wait();
  EXPECT_EQ(sum.load(), 50 * 51 / 2);
}

TEST(ThreadPoolTest, BoundedQueueRefusesAndShutdownDrains) {
  auto pool = ThreadPool::Create(1, 2);
  ASSERT_TRUE(pool.ok());
  absl::Notification release;
  ASSERT_TRUE(OccupyTheWorker(**pool, release));  // the queue is empty
  std::atomic<int> ran{0};
  EXPECT_TRUE((*pool)->Submit([&] { ++ran; }).ok());
  EXPECT_TRUE((*pool)->Submit([&] { ++ran; }).ok());
  EXPECT_EQ((*pool)->Submit([&] { ++ran; }).code(), absl::StatusCode::kResourceExhausted);
  release.Notify();
  (*pool)->Shutdown();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_EQ((*pool)->Submit([] {}).code(), absl::StatusCode::kUnavailable);
}

// Quick tasks (tokenizing) go before slow ones already queued (decoding), but a slow
// one goes first after kMaxOvertakes quick ones in a row.
TEST(ThreadPoolTest, QuickTasksOvertakeSlowOnesABoundedNumberOfTimes) {
  auto pool = ThreadPool::Create(1, 100);
  ASSERT_TRUE(pool.ok());
  absl::Notification release;
  ASSERT_TRUE(OccupyTheWorker(**pool, release));  // what follows queues
  std::vector<std::string> order;                 // only the one worker writes it
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        (*pool)->Submit([&order, i] { order.push_back(absl::StrCat("s", i)); }).ok());
  }
  for (int i = 0; i < ThreadPool::kMaxOvertakes + 2; ++i) {
    ASSERT_TRUE((*pool)
                    ->Submit([&order, i] { order.push_back(absl::StrCat("q", i)); },
                             ThreadPool::Priority::kQuick)
                    .ok());
  }
  release.Notify();
  (*pool)->Shutdown();
  std::vector<std::string> expected;
  for (int i = 0; i < ThreadPool::kMaxOvertakes; ++i)
    expected.push_back(absl::StrCat("q", i));
  expected.push_back("s0");
  for (int i = ThreadPool::kMaxOvertakes; i < ThreadPool::kMaxOvertakes + 2; ++i) {
    expected.push_back(absl::StrCat("q", i));
  }
  expected.push_back("s1");
  EXPECT_EQ(order, expected);
}

TEST(ThreadPoolTest, RejectsBadSizes) {
  EXPECT_FALSE(ThreadPool::Create(0, 1).ok());
  EXPECT_FALSE(ThreadPool::Create(1, 0).ok());
}

}  // namespace
}  // namespace clipserve
