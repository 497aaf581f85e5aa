#include "server/engine/model_runner.h"

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// Waits until `runner` has `n` tasks queued (they are queued by other threads).
void WaitForQueued(const ModelRunner& runner, int n) {
  while (runner.queued() < n) std::this_thread::yield();
}

// Keeps `runner` busy with a task of its own from construction until Release(), so a
// test can queue tasks behind it.
class Blocker {
 public:
  explicit Blocker(ModelRunner& runner)
      : thread_([&runner, this] {
          EXPECT_TRUE(runner
                          .Run(0,
                               [this] {
                                 started_.Notify();
                                 release_.WaitForNotification();
                               })
                          .ok());
        }) {
    started_.WaitForNotification();
  }
  // Lets the blocking task finish and waits for its caller.
  void Release() {
    release_.Notify();
    thread_.join();
  }

 private:
  absl::Notification started_;
  absl::Notification release_;
  std::thread thread_;
};

TEST(ModelRunnerTest, EveryTaskRunsOnTheRunnersOneThread) {
  ModelRunner runner;
  std::vector<std::thread::id> ran_on(8);
  std::vector<std::thread> callers;
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&, i] {
      ASSERT_TRUE(
          runner.Run(i % 2, [&] { ran_on[i] = std::this_thread::get_id(); }).ok());
    });
  }
  for (std::thread& caller : callers) caller.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(ran_on[i], ran_on[0]);
    EXPECT_NE(ran_on[i], std::this_thread::get_id());
  }
}

TEST(ModelRunnerTest, RunReturnsAfterTheTaskRanSoItMayUseTheCallersStack) {
  ModelRunner runner;
  int value = 0;
  ASSERT_TRUE(runner.Run(0, [&] { value = 42; }).ok());
  EXPECT_EQ(value, 42);  // written before Run returned
}

TEST(ModelRunnerTest, ATaskThatThrowsFailsOnlyItsOwnRun) {
  ModelRunner runner;
  const absl::Status thrown =
      runner.Run(0, [] { throw std::runtime_error("out of tensors"); });
  EXPECT_EQ(thrown.code(), absl::StatusCode::kInternal);
  EXPECT_NE(thrown.message().find("out of tensors"), absl::string_view::npos) << thrown;
  bool ran = false;
  EXPECT_TRUE(runner.Run(0, [&] { ran = true; }).ok());
  EXPECT_TRUE(ran);
}

// Runs tasks of `priorities`, queued in that order while `runner` is busy, and returns
// the order (indices into `priorities`) they ran in.
std::vector<int> RunOrder(ModelRunner& runner, const std::vector<int>& priorities) {
  Blocker blocker(runner);
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::thread> callers;
  for (int i = 0; i < static_cast<int>(priorities.size()); ++i) {
    callers.emplace_back([&, i] {
      EXPECT_TRUE(runner
                      .Run(priorities[i],
                           [&, i] {
                             absl::MutexLock lock(&mu);
                             order.push_back(i);
                           })
                      .ok());
    });
    WaitForQueued(runner, i + 1);  // one at a time, so arrival order is known
  }
  blocker.Release();
  for (std::thread& caller : callers) caller.join();
  return order;
}

TEST(ModelRunnerTest, HigherPriorityFirstThenArrivalOrder) {
  ModelRunner runner(/*max_overtakes=*/2);
  // Priorities 0, 1, 0, 1 -> run as 1 (second), 1 (fourth), 0 (first), 0 (third).
  EXPECT_EQ(RunOrder(runner, {0, 1, 0, 1}), (std::vector<int>{1, 3, 0, 2}));
}

// Text batches (priority 1) from several workers that keep coming do not starve an
// image batch (priority 0): it runs once `max_overtakes` later tasks went first.
TEST(ModelRunnerTest, ALowerPriorityRunsOnceOvertakenTheMostTimes) {
  const std::vector<int> priorities = {0, 1, 1, 1, 0, 1};
  ModelRunner one(/*max_overtakes=*/1);
  EXPECT_EQ(RunOrder(one, priorities), (std::vector<int>{1, 0, 2, 3, 5, 4}));
  ModelRunner two(/*max_overtakes=*/2);
  EXPECT_EQ(RunOrder(two, priorities), (std::vector<int>{1, 2, 0, 3, 5, 4}));
  ModelRunner none(/*max_overtakes=*/0);  // arrival order
  EXPECT_EQ(RunOrder(none, priorities), (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

TEST(ModelRunnerTest, ShutdownRunsWhatIsQueuedThenRefuses) {
  ModelRunner runner;
  Blocker blocker(runner);
  std::atomic<bool> queued_ran{false};
  std::thread queued(
      [&] { EXPECT_TRUE(runner.Run(0, [&] { queued_ran = true; }).ok()); });
  WaitForQueued(runner, 1);
  std::thread stopper([&] { runner.Shutdown(); });
  // Released once the shutdown has begun: the queued task runs during it.
  while (!runner.stopping()) std::this_thread::yield();
  blocker.Release();
  stopper.join();
  queued.join();
  EXPECT_TRUE(queued_ran);
  bool ran = false;
  EXPECT_EQ(runner.Run(0, [&] { ran = true; }).code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(ran);
  runner.Shutdown();  // idempotent
}

}  // namespace
}  // namespace clipserve
