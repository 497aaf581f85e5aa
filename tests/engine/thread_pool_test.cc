#include "server/engine/thread_pool.h"

#include <atomic>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

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
  absl::Notification started;
  ASSERT_TRUE((*pool)
                  ->Submit([&] {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();  // the worker is busy; the queue is empty
  std::atomic<int> ran{0};
  EXPECT_TRUE((*pool)->Submit([&] { ++ran; }).ok());
  EXPECT_TRUE((*pool)->Submit([&] { ++ran; }).ok());
  EXPECT_EQ((*pool)->Submit([&] { ++ran; }).code(), absl::StatusCode::kResourceExhausted);
  release.Notify();
  (*pool)->Shutdown();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_EQ((*pool)->Submit([] {}).code(), absl::StatusCode::kUnavailable);
}

TEST(ThreadPoolTest, RejectsBadSizes) {
  EXPECT_FALSE(ThreadPool::Create(0, 1).ok());
  EXPECT_FALSE(ThreadPool::Create(1, 0).ok());
}

}  // namespace
}  // namespace clipserve
