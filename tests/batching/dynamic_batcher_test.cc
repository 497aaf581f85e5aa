#include "server/batching/dynamic_batcher.h"

#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batching/request_tracker.h"
#include "server/common/fake_clock.h"
#include "server/common/status_payloads.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A move-only item (so the batcher is shown never to copy) with a deadline, a
// cancellation flag shared with its "caller", and an optional request tracker.
struct TestItem {
  explicit TestItem(int id, absl::Time deadline = absl::InfiniteFuture())
      : id(id), deadline_(deadline), cancel(std::make_shared<std::atomic<bool>>(false)) {}
  TestItem(TestItem&&) = default;
  TestItem& operator=(TestItem&&) = default;
  TestItem(const TestItem&) = delete;
  TestItem& operator=(const TestItem&) = delete;

  absl::Time deadline() const { return deadline_; }
  bool cancelled() const { return cancel->load(std::memory_order_acquire); }

  int id;
  absl::Time deadline_;
  std::shared_ptr<std::atomic<bool>> cancel;
  std::shared_ptr<RequestTracker> tracker;
  std::unique_ptr<int> move_only = std::make_unique<int>(0);
};

std::vector<TestItem> Items(std::initializer_list<int> ids) {
  std::vector<TestItem> items;
  for (int id : ids) items.emplace_back(id);
  return items;
}

std::vector<TestItem> Range(int begin, int end) {
  std::vector<TestItem> items;
  for (int id = begin; id < end; ++id) items.emplace_back(id);
  return items;
}

// Records what the workers did, and lets the test wait for it. Waits are bounded by a
// generous real-time limit only so that a bug fails the test instead of hanging it;
// no test relies on real time passing.
class Recorder {
 public:
  struct Drop {
    int id;
    absl::StatusCode code;
  };

  // Runs inside the process callback, before the batch is recorded.
  void set_on_batch(std::function<void(const Batch<TestItem>&)> on_batch) {
    on_batch_ = std::move(on_batch);
  }

  void Process(Batch<TestItem> batch) {
    if (on_batch_) on_batch_(batch);
    std::vector<int> ids;
    std::vector<absl::Duration> waits;
    for (size_t i = 0; i < batch.items.size(); ++i) {
      ids.push_back(batch.items[i].id);
      waits.push_back(batch.QueueWait(i));
    }
    {
      absl::MutexLock lock(&mu_);
      batches_.push_back(std::move(ids));
      waits_.push_back(std::move(waits));
    }
    changed_.SignalAll();
    // Completed after recording, so a test woken by a tracker sees the batch.
    for (TestItem& item : batch.items) {
      if (item.tracker) item.tracker->ItemDone();
    }
  }

  void Dropped(TestItem item, absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      drops_.push_back(Drop{item.id, status.code()});
    }
    changed_.SignalAll();
    if (item.tracker) item.tracker->ItemDone(status);
  }

  // Waits until at least `batches` batches and `drops` drops have been recorded.
  bool WaitFor(size_t batches, size_t drops = 0) {
    const absl::Time limit = absl::Now() + absl::Seconds(60);
    absl::MutexLock lock(&mu_);
    while (batches_.size() < batches || drops_.size() < drops) {
      if (changed_.WaitWithDeadline(&mu_, limit)) {
        ADD_FAILURE() << "timed out waiting for " << batches << " batches and " << drops
                      << " drops; have " << batches_.size() << " and " << drops_.size();
        return false;
      }
    }
    return true;
  }

  std::vector<std::vector<int>> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  std::vector<std::vector<absl::Duration>> waits() {
    absl::MutexLock lock(&mu_);
    return waits_;
  }
  std::vector<Drop> drops() {
    absl::MutexLock lock(&mu_);
    return drops_;
  }
  size_t num_batches() {
    absl::MutexLock lock(&mu_);
    return batches_.size();
  }

 private:
  std::function<void(const Batch<TestItem>&)> on_batch_;
  absl::Mutex mu_;
  absl::CondVar changed_;
  std::vector<std::vector<int>> batches_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<absl::Duration>> waits_ ABSL_GUARDED_BY(mu_);
  std::vector<Drop> drops_ ABSL_GUARDED_BY(mu_);
};

MATCHER_P2(IsDrop, id, code, "") { return arg.id == id && arg.code == code; }

// Holds the worker inside the batch that starts with item 0, so that the queue fills
// up behind it, until Release() or until the gate is destroyed. Declare it after the
// batcher: it is then destroyed first and releases the worker before the batcher's
// destructor joins it, even when an assertion ends the test early.
class BatchGate {
 public:
  explicit BatchGate(Recorder* recorder) {
    recorder->set_on_batch([state = state_](const Batch<TestItem>& batch) {
      if (batch.items[0].id != 0) return;
      state->started.Notify();
      state->release.WaitForNotification();
    });
  }
  BatchGate(const BatchGate&) = delete;
  BatchGate& operator=(const BatchGate&) = delete;
  ~BatchGate() { Release(); }

  void AwaitStarted() { state_->started.WaitForNotification(); }
  void Release() {
    if (!state_->release.HasBeenNotified()) state_->release.Notify();
  }

 private:
  struct State {
    absl::Notification started;
    absl::Notification release;
  };
  // Shared with the callback, which may still be returning from its wait.
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

class DynamicBatcherTest : public ::testing::Test {
 protected:
  DynamicBatcherOptions Options(int max_batch_size, absl::Duration max_queue_delay) {
    DynamicBatcherOptions options;
    options.name = "test";
    options.max_batch_size = max_batch_size;
    options.max_queue_delay = max_queue_delay;
    options.max_queue_size = 100;
    options.num_workers = 1;
    options.clock = &clock_;
    return options;
  }

  std::unique_ptr<DynamicBatcher<TestItem>> Make(const DynamicBatcherOptions& options) {
    auto batcher = DynamicBatcher<TestItem>::Create(
        options, [this](Batch<TestItem> batch) { recorder_.Process(std::move(batch)); },
        [this](TestItem item, absl::Status status) {
          recorder_.Dropped(std::move(item), std::move(status));
        });
    EXPECT_TRUE(batcher.ok()) << batcher.status();
    return batcher.ok() ? *std::move(batcher) : nullptr;
  }

  // Each batch "runs" `per_item` of fake time per item; the batch whose first item is
  // `held_id` then notifies `started` and waits for `release`, so the queue behind it
  // can fill up.
  void RunBatchesAndHold(absl::Duration per_item, int held_id,
                         absl::Notification& started, absl::Notification& release) {
    recorder_.set_on_batch(
        [this, per_item, held_id, &started, &release](const Batch<TestItem>& batch) {
          clock_.AdvanceTime(per_item * static_cast<int64_t>(batch.items.size()));
          if (batch.items[0].id == held_id) {
            started.Notify();
            release.WaitForNotification();
          }
        });
  }

  FakeClock clock_;
  Recorder recorder_;
};

TEST_F(DynamicBatcherTest, RejectsBadOptionsAndCallbacks) {
  auto process = [](Batch<TestItem>) {};
  auto drop = [](TestItem, absl::Status) {};
  const DynamicBatcherOptions good = Options(4, absl::Milliseconds(1));
  std::vector<DynamicBatcherOptions> bad(7, good);
  bad[0].max_batch_size = 0;
  bad[1].max_queue_delay = -absl::Nanoseconds(1);
  bad[2].max_queue_delay = absl::InfiniteDuration();
  bad[3].max_queue_size = 3;  // smaller than one batch
  bad[4].num_workers = 0;
  bad[5].min_retry_delay = absl::Seconds(10);  // above max_retry_delay (5 s)
  bad[6].max_retry_delay = absl::InfiniteDuration();
  for (const DynamicBatcherOptions& options : bad) {
    EXPECT_EQ(DynamicBatcher<TestItem>::Create(options, process, drop).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(DynamicBatcher<TestItem>::Create(good, nullptr, drop).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DynamicBatcher<TestItem>::Create(good, process, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(DynamicBatcher<TestItem>::Create(good, process, drop).ok());
  EXPECT_TRUE(ValidateDynamicBatcherOptions(DynamicBatcherOptions()).ok());
}

TEST_F(DynamicBatcherTest, RejectsNullAndEmptyRequests) {
  auto batcher = Make(Options(4, absl::Milliseconds(1)));
  EXPECT_EQ(batcher->Schedule(nullptr).code(), absl::StatusCode::kInvalidArgument);
  std::vector<TestItem> none;
  EXPECT_EQ(batcher->Schedule(&none).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DynamicBatcherTest, FullBatchRunsWithoutAdvancingTheClock) {
  auto batcher = Make(Options(4, absl::Hours(1)));
  std::vector<TestItem> items = Items({10, 11, 12, 13});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  EXPECT_THAT(items, IsEmpty());  // moved in on OK
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(10, 11, 12, 13)));
  EXPECT_THAT(recorder_.waits()[0],
              ElementsAre(absl::ZeroDuration(), absl::ZeroDuration(),
                          absl::ZeroDuration(), absl::ZeroDuration()));
}

TEST_F(DynamicBatcherTest, RequestsShareABatch) {
  auto batcher = Make(Options(4, absl::Hours(1)));
  std::vector<TestItem> first = Items({1});
  std::vector<TestItem> second = Items({2, 3});
  std::vector<TestItem> third = Items({4, 5});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  ASSERT_TRUE(batcher->Schedule(&second).ok());
  ASSERT_TRUE(batcher->Schedule(&third).ok());
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 2, 3, 4)));
  EXPECT_EQ(batcher->NumQueuedItems(), 1);  // item 5 waits for company or the delay
}

TEST_F(DynamicBatcherTest, PartialBatchRunsExactlyWhenTheDelayElapses) {
  const absl::Duration delay = absl::Milliseconds(10);
  auto batcher = Make(Options(4, delay));
  std::vector<TestItem> items = Items({1, 2, 3});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  clock_.AdvanceTime(delay - absl::Nanoseconds(1));
  // No batch can form before the delay: the queue is not full and time has not come.
  EXPECT_EQ(recorder_.num_batches(), 0u);
  EXPECT_EQ(batcher->NumQueuedItems(), 3);
  clock_.AdvanceTime(absl::Nanoseconds(1));
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 2, 3)));
  EXPECT_THAT(recorder_.waits()[0], ElementsAre(delay, delay, delay));
  EXPECT_EQ(batcher->NumQueuedItems(), 0);
}

TEST_F(DynamicBatcherTest, DelayCountsFromTheOldestItem) {
  auto batcher = Make(Options(4, absl::Milliseconds(10)));
  std::vector<TestItem> first = Items({1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  clock_.AdvanceTime(absl::Milliseconds(6));
  std::vector<TestItem> second = Items({2});
  ASSERT_TRUE(batcher->Schedule(&second).ok());
  clock_.AdvanceTime(absl::Milliseconds(3));
  EXPECT_EQ(recorder_.num_batches(), 0u);
  clock_.AdvanceTime(absl::Milliseconds(1));
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 2)));
  EXPECT_THAT(recorder_.waits()[0],
              ElementsAre(absl::Milliseconds(10), absl::Milliseconds(4)));
}

TEST_F(DynamicBatcherTest, ZeroDelayRunsWhateverIsQueued) {
  auto batcher = Make(Options(4, absl::ZeroDuration()));
  std::vector<TestItem> items = Items({1});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1)));
}

TEST_F(DynamicBatcherTest, WithNothingAnnouncedAPartialBatchRunsAtOnce) {
  DynamicBatcherOptions options = Options(4, absl::Hours(1));
  options.wait_only_for_announced = true;
  auto batcher = Make(options);
  std::vector<TestItem> items = Items({1});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  ASSERT_TRUE(recorder_.WaitFor(1));  // the clock never moves
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1)));
  EXPECT_THAT(recorder_.waits()[0], ElementsAre(absl::ZeroDuration()));
}

TEST_F(DynamicBatcherTest, APartialBatchWaitsForAnnouncedItems) {
  DynamicBatcherOptions options = Options(4, absl::Milliseconds(10));
  options.wait_only_for_announced = true;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(3).ok());
  std::vector<TestItem> first = Items({1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());  // two more are on their way
  clock_.AdvanceTime(absl::Milliseconds(4));
  EXPECT_EQ(recorder_.num_batches(), 0u);
  std::vector<TestItem> second = Items({2});
  ASSERT_TRUE(batcher->Schedule(&second).ok());
  clock_.AdvanceTime(absl::Milliseconds(1));
  EXPECT_EQ(recorder_.num_batches(), 0u);
  // The last announced item fails on its way: nothing more is coming, so the two
  // queued items run now instead of at the 10 ms delay. The waits show when: a batch
  // formed at the second Schedule() would have waited (4 ms, 0).
  batcher->Withdraw(1);
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 2)));
  EXPECT_THAT(recorder_.waits()[0],
              ElementsAre(absl::Milliseconds(5), absl::Milliseconds(1)));
}

TEST_F(DynamicBatcherTest, AnnouncedItemsThatNeverComeWaitOnlyTheDelay) {
  DynamicBatcherOptions options = Options(4, absl::Milliseconds(10));
  options.wait_only_for_announced = true;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(5).ok());
  std::vector<TestItem> items = Items({1});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  clock_.AdvanceTime(absl::Milliseconds(10) - absl::Nanoseconds(1));
  EXPECT_EQ(recorder_.num_batches(), 0u);
  clock_.AdvanceTime(absl::Nanoseconds(1));
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1)));
  // Formed at the delay, not before it (the check above races the worker).
  EXPECT_THAT(recorder_.waits()[0], ElementsAre(absl::Milliseconds(10)));
}

TEST_F(DynamicBatcherTest, ARefusedScheduleStillSettlesItsAnnouncement) {
  DynamicBatcherOptions options = Options(4, absl::Hours(1));
  options.max_queue_size = 4;
  options.wait_only_for_announced = true;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(4).ok());
  std::vector<TestItem> first = Items({1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  EXPECT_EQ(recorder_.num_batches(), 0u);  // three more announced
  std::vector<TestItem> too_many = Items({2, 3, 4, 5, 6});
  EXPECT_EQ(batcher->Schedule(&too_many).code(), absl::StatusCode::kInvalidArgument);
  // Refused, yet no longer on their way: {1} runs though the clock never moves.
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1)));
}

// Announcing holds room: queued and announced items stay within max_queue_size, so a
// request is refused before its items are preprocessed, and announced ones always fit.
TEST_F(DynamicBatcherTest, AnnouncingHoldsRoomInTheQueue) {
  // Batches of 8 and an hour of delay: nothing leaves the queue below 8 items.
  DynamicBatcherOptions options = Options(8, absl::Hours(1));
  options.max_queue_size = 8;
  auto batcher = Make(options);
  EXPECT_EQ(batcher->Announce(9).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(batcher->Announce(6).ok());
  std::vector<TestItem> one = Items({10});
  ASSERT_TRUE(batcher->Schedule(&one).ok());  // settles one of the six
  // Queued 1, on their way 5: room for two more items.
  ASSERT_TRUE(batcher->Announce(2).ok());
  const absl::Status refused = batcher->Announce(1);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(
      std::string(refused.message()),
      ::testing::HasSubstr("1 items queued and 7 on their way of 8, no room for 1"));
  EXPECT_TRUE(GetRetryInfoPayload(refused).has_value());
  // Announced items fit whatever was refused meanwhile.
  std::vector<TestItem> more = Items({11, 12, 13});
  ASSERT_TRUE(batcher->Schedule(&more).ok());
  EXPECT_EQ(batcher->NumQueuedItems(), 4);
  EXPECT_EQ(batcher->Announce(1).code(), absl::StatusCode::kResourceExhausted);
  batcher->Shutdown();
  EXPECT_EQ(batcher->Announce(1).code(), absl::StatusCode::kUnavailable);
}

TEST_F(DynamicBatcherTest, WithdrawingGivesTheRoomBack) {
  DynamicBatcherOptions options = Options(4, absl::Hours(1));
  options.max_queue_size = 4;  // nothing is queued: no batch ever forms
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(4).ok());
  EXPECT_EQ(batcher->Announce(1).code(), absl::StatusCode::kResourceExhausted);
  batcher->Withdraw(2);  // two failed on their way
  EXPECT_TRUE(batcher->Announce(2).ok());
}

TEST_F(DynamicBatcherTest, ARefusedRequestSetsItsRoomAsideFromSmallerOnes) {
  // Batches of 2: with 2 or more items pending the queue drains by itself.
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 8;  // nothing is queued: room frees only by withdrawals
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(6).ok());
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted);
  batcher->Withdraw(3);  // 3 on their way: 5 free, but 4 of them claimed
  const absl::Status refused = batcher->Announce(2);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.message()),
              ::testing::HasSubstr("0 items queued and 3 on their way of 8, 4 set aside "
                                   "for a larger request refused before, no room for 2"));
  EXPECT_TRUE(GetRetryInfoPayload(refused).has_value());
  ASSERT_TRUE(batcher->Announce(1).ok());  // fits beside the claim
  ASSERT_TRUE(batcher->Announce(4).ok());  // the refused request's retry takes its room
  batcher->Withdraw(8);
  // The claim ended with it: small requests fill the queue again.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(batcher->Announce(2).ok()) << i;
}

TEST_F(DynamicBatcherTest, AClaimLapsesWhenItsRequestDoesNotComeBack) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 8;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(8).ok());
  const absl::Status refused = batcher->Announce(5);
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  const std::optional<absl::Duration> retry = GetRetryInfoPayload(refused);
  ASSERT_TRUE(retry.has_value());
  batcher->Withdraw(6);  // 2 left on their way: a batch pending
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted);
  // Refusals for the claim's sake do not prolong it: it lapses twice the retry delay
  // and a second after the refusal that made it.
  clock_.AdvanceTime(2 * *retry + absl::Seconds(1) - absl::Milliseconds(1));
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted);
  clock_.AdvanceTime(absl::Milliseconds(1));
  EXPECT_TRUE(batcher->Announce(4).ok());
  EXPECT_TRUE(batcher->Announce(2).ok());
}

// A client retries within its call's deadline: past it, no retry comes to take the
// room, and smaller requests get it back at once.
TEST_F(DynamicBatcherTest, AClaimEndsAtItsRequestsDeadline) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 8;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(8).ok());
  const absl::Time deadline = clock_.Now() + absl::Milliseconds(50);
  const absl::Status refused = batcher->Announce(5, deadline);
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  ASSERT_GT(*GetRetryInfoPayload(refused), absl::ZeroDuration());
  batcher->Withdraw(6);  // 2 left on their way: a batch pending
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted);
  clock_.AdvanceTime(absl::Milliseconds(49));
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted);
  clock_.AdvanceTime(absl::Milliseconds(1));
  EXPECT_TRUE(batcher->Announce(4).ok());
  EXPECT_TRUE(batcher->Announce(2).ok());
}

// A request as large that gives up sooner does not cut a claim short: the first
// claimant's retry would find its room gone.
TEST_F(DynamicBatcherTest, ARequestThatGivesUpSoonerLeavesTheClaimAsItWas) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 8;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(8).ok());
  ASSERT_EQ(batcher->Announce(5, clock_.Now() + absl::Seconds(30)).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_EQ(batcher->Announce(5, clock_.Now() + absl::Milliseconds(10)).code(),
            absl::StatusCode::kResourceExhausted);
  batcher->Withdraw(6);  // 2 left on their way: a batch pending
  clock_.AdvanceTime(absl::Milliseconds(20));
  EXPECT_EQ(batcher->Announce(4).code(), absl::StatusCode::kResourceExhausted)
      << "the first claim holds past the second request's deadline";
  EXPECT_TRUE(batcher->Announce(5).ok());  // the first claimant's retry
}

// With less than a batch pending, a claim holds no room: a partial batch may wait for
// the items it would refuse, and an idle queue must not refuse anyone.
TEST_F(DynamicBatcherTest, AClaimHoldsNoRoomWhileLessThanABatchIsPending) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 8;
  auto batcher = Make(options);
  ASSERT_TRUE(batcher->Announce(8).ok());
  ASSERT_EQ(batcher->Announce(8).code(), absl::StatusCode::kResourceExhausted);
  batcher->Withdraw(7);                    // one item on its way
  EXPECT_TRUE(batcher->Announce(1).ok());  // 1 + 1 + 8 set aside would not fit
  EXPECT_EQ(batcher->Announce(1).code(), absl::StatusCode::kResourceExhausted)
      << "a batch pending: the claim holds its room again";
  batcher->Withdraw(2);
  EXPECT_TRUE(batcher->Announce(8).ok());  // the claimant comes back
}

TEST_F(DynamicBatcherTest, OrderIsPreservedAcrossBatches) {
  auto batcher = Make(Options(3, absl::Milliseconds(5)));
  for (int id = 0; id < 10; ++id) {
    std::vector<TestItem> items = Items({id});
    ASSERT_TRUE(batcher->Schedule(&items).ok());
  }
  ASSERT_TRUE(recorder_.WaitFor(3));  // three full batches, no clock needed
  clock_.AdvanceTime(absl::Milliseconds(5));
  ASSERT_TRUE(recorder_.WaitFor(4));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1, 2), ElementsAre(3, 4, 5),
                                               ElementsAre(6, 7, 8), ElementsAre(9)));
}

TEST_F(DynamicBatcherTest, LargeRequestIsSplitAndItsTrackerFiresOnce) {
  auto batcher = Make(Options(2, absl::Milliseconds(5)));
  std::atomic<int> fired{0};
  absl::Notification done;
  absl::Status outcome;
  auto tracker = RequestTracker::Create(5, [&](absl::Status status) {
    outcome = status;
    fired.fetch_add(1);
    done.Notify();
  });
  ASSERT_TRUE(tracker.ok());
  std::vector<TestItem> items = Range(0, 5);
  for (TestItem& item : items) item.tracker = *tracker;
  tracker->reset();  // the items own it now
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  ASSERT_TRUE(recorder_.WaitFor(2));  // 2 + 2 at once
  EXPECT_FALSE(done.HasBeenNotified());
  clock_.AdvanceTime(absl::Milliseconds(5));  // the 1 left over
  done.WaitForNotification();
  EXPECT_THAT(recorder_.batches(),
              ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3), ElementsAre(4)));
  EXPECT_EQ(fired.load(), 1);
  EXPECT_TRUE(outcome.ok());
}

TEST_F(DynamicBatcherTest, QueueFullIsResourceExhaustedWithAnHonestRetryDelay) {
  DynamicBatcherOptions options = Options(2, absl::Milliseconds(5));
  options.max_queue_size = 4;
  options.num_workers = 1;
  auto batcher = Make(options);

  // Each batch of 2 "runs" 100 ms of fake time; the second one then blocks until
  // released, so the queue behind it fills up.
  absl::Notification second_started;
  absl::Notification release_second;
  RunBatchesAndHold(absl::Milliseconds(50), 2, second_started, release_second);
  std::vector<TestItem> first = Items({0, 1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  ASSERT_TRUE(recorder_.WaitFor(1));
  std::vector<TestItem> second = Items({2, 3});
  ASSERT_TRUE(batcher->Schedule(&second).ok());
  second_started.WaitForNotification();
  std::vector<TestItem> queued = Items({4, 5, 6, 7});
  ASSERT_TRUE(batcher->Schedule(&queued).ok());
  EXPECT_EQ(batcher->NumQueuedItems(), 4);

  // One more item needs one batch taken off the queue: one 100 ms round.
  std::vector<TestItem> refused = Items({100});
  absl::Status status = batcher->Schedule(&refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Milliseconds(100));
  ASSERT_EQ(refused.size(), 1u);  // ownership stayed with the caller
  EXPECT_EQ(refused[0].id, 100);
  ASSERT_NE(refused[0].move_only, nullptr);

  // Three items need two batches; all-or-nothing, so none of them is queued.
  std::vector<TestItem> refused3 = Items({101, 102, 103});
  status = batcher->Schedule(&refused3);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Milliseconds(200));
  EXPECT_EQ(refused3.size(), 3u);
  EXPECT_EQ(batcher->NumQueuedItems(), 4);

  // More than the queue could ever hold is not worth retrying.
  std::vector<TestItem> too_many = Range(200, 205);
  EXPECT_EQ(batcher->Schedule(&too_many).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_many.size(), 5u);

  release_second.Notify();
  ASSERT_TRUE(recorder_.WaitFor(4));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3),
                                               ElementsAre(4, 5), ElementsAre(6, 7)));
  EXPECT_THAT(recorder_.drops(), IsEmpty());
}

TEST_F(DynamicBatcherTest, AFullQueueDropsItsDeadItemsToMakeRoom) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 4;
  auto batcher = Make(options);
  // The worker is busy with a long batch while the queue fills up.
  BatchGate gate(&recorder_);
  std::vector<TestItem> first = Items({0, 1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  gate.AwaitStarted();
  const absl::Time soon = clock_.Now() + absl::Seconds(1);
  std::vector<TestItem> queued;
  queued.emplace_back(2, soon);
  queued.emplace_back(3);
  queued.emplace_back(4);
  queued.emplace_back(5, soon);
  std::shared_ptr<std::atomic<bool>> cancel_3 = queued[1].cancel;
  ASSERT_TRUE(batcher->Schedule(&queued).ok());

  // Every queued item is live: refused, and nothing dropped.
  std::vector<TestItem> refused = Items({6});
  EXPECT_EQ(batcher->Schedule(&refused).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(recorder_.drops(), IsEmpty());

  // Items 2 and 5 time out and item 3's caller goes away: their slots are free again,
  // and they are answered before Schedule() returns, with the worker still busy.
  cancel_3->store(true);
  clock_.AdvanceTime(absl::Seconds(1));
  std::vector<TestItem> admitted = Items({6, 7});
  ASSERT_TRUE(batcher->Schedule(&admitted).ok());
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(2, absl::StatusCode::kDeadlineExceeded),
                          IsDrop(3, absl::StatusCode::kCancelled),
                          IsDrop(5, absl::StatusCode::kDeadlineExceeded)));
  EXPECT_EQ(batcher->NumQueuedItems(), 3);
  EXPECT_EQ(recorder_.num_batches(), 0u);

  gate.Release();
  ASSERT_TRUE(recorder_.WaitFor(2, 3));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1), ElementsAre(4, 6)));
  EXPECT_EQ(batcher->NumQueuedItems(), 1);  // item 7 waits for company
}

TEST_F(DynamicBatcherTest, DropDeadAnswersDeadItemsAnywhereInTheQueueAtOnce) {
  auto batcher = Make(Options(10, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2, 3, 4, 5});
  items[4].deadline_ = clock_.Now() + absl::Seconds(1);
  std::shared_ptr<std::atomic<bool>> cancel_1 = items[1].cancel;
  std::shared_ptr<std::atomic<bool>> cancel_3 = items[3].cancel;
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  // Nothing dead yet: the queue is left as it is.
  batcher->DropDead();
  EXPECT_THAT(recorder_.drops(), IsEmpty());
  EXPECT_EQ(batcher->NumQueuedItems(), 6);

  // Items 1 and 3 are cancelled and item 4 expires while the partial batch waits out
  // its hour: they are answered before DropDead() returns, not an hour later.
  cancel_1->store(true);
  cancel_3->store(true);
  clock_.AdvanceTime(absl::Seconds(1));
  batcher->DropDead();
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(1, absl::StatusCode::kCancelled),
                          IsDrop(3, absl::StatusCode::kCancelled),
                          IsDrop(4, absl::StatusCode::kDeadlineExceeded)));
  EXPECT_EQ(batcher->NumQueuedItems(), 3);
  EXPECT_EQ(recorder_.num_batches(), 0u);

  // The live ones, before, between and after the dead ones, keep their order and
  // their enqueue time.
  clock_.AdvanceTime(absl::Hours(1) - absl::Seconds(1));
  ASSERT_TRUE(recorder_.WaitFor(1, 3));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 2, 5)));
}

// A call cancelled while its items were being prepared (maybe after its DropDead())
// must not leave them queued until a batch reaches them.
TEST_F(DynamicBatcherTest, ItemsDeadOnArrivalAreAnsweredNotQueued) {
  auto batcher = Make(Options(10, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2});
  items[0].cancel->store(true);
  items[2].deadline_ = clock_.Now();
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  EXPECT_TRUE(items.empty());
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(0, absl::StatusCode::kCancelled),
                          IsDrop(2, absl::StatusCode::kDeadlineExceeded)));
  EXPECT_EQ(batcher->NumQueuedItems(), 1);
  clock_.AdvanceTime(absl::Hours(1));
  ASSERT_TRUE(recorder_.WaitFor(1, 2));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1)));
}

TEST_F(DynamicBatcherTest, ItemsDeadOnArrivalNeedNoRoomInAFullQueue) {
  DynamicBatcherOptions options = Options(2, absl::Hours(1));
  options.max_queue_size = 2;
  auto batcher = Make(options);
  BatchGate gate(&recorder_);
  std::vector<TestItem> first = Items({0, 1});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  gate.AwaitStarted();
  std::vector<TestItem> queued = Items({2, 3});
  ASSERT_TRUE(batcher->Schedule(&queued).ok());

  // The queue is full of live items: dead ones are answered, a live one is refused.
  std::vector<TestItem> dead = Items({4, 5});
  for (TestItem& item : dead) item.cancel->store(true);
  ASSERT_TRUE(batcher->Schedule(&dead).ok());
  EXPECT_THAT(recorder_.drops(), ElementsAre(IsDrop(4, absl::StatusCode::kCancelled),
                                             IsDrop(5, absl::StatusCode::kCancelled)));
  std::vector<TestItem> refused = Items({6});
  EXPECT_EQ(batcher->Schedule(&refused).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(refused.size(), 1u);

  gate.Release();
  ASSERT_TRUE(recorder_.WaitFor(2, 2));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3)));
}

TEST_F(DynamicBatcherTest, AnExpiredItemIsDeadlineExceededThoughItsCallWasCancelled) {
  // gRPC cancels a server call when its deadline passes; the client sees
  // DEADLINE_EXCEEDED, and so do the server's logs and metrics.
  auto batcher = Make(Options(2, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2});
  items[0].deadline_ = clock_.Now();
  items[0].cancel->store(true);
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  ASSERT_TRUE(recorder_.WaitFor(1, 1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 2)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(0, absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(DynamicBatcherTest, ItemsExpiredWhenTheBatchFormsAreDropped) {
  auto batcher = Make(Options(5, absl::Milliseconds(10)));
  const absl::Time now = clock_.Now();
  std::vector<TestItem> items;
  items.emplace_back(0);
  items.emplace_back(1, now + absl::Milliseconds(5));   // expires while queued
  items.emplace_back(2, now + absl::Milliseconds(10));  // expires exactly at formation
  items.emplace_back(3, now + absl::Milliseconds(11));
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  clock_.AdvanceTime(absl::Milliseconds(10));
  ASSERT_TRUE(recorder_.WaitFor(1, 2));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 3)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(1, absl::StatusCode::kDeadlineExceeded),
                          IsDrop(2, absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(DynamicBatcherTest, DroppedItemsTakeNoBatchSlot) {
  auto batcher = Make(Options(2, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2, 3});
  items[0].cancel->store(true);
  items[2].deadline_ = clock_.Now();  // already expired
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  // Four queued make a full batch; the two dead ones are skipped, not counted.
  ASSERT_TRUE(recorder_.WaitFor(1, 2));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(1, 3)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(0, absl::StatusCode::kCancelled),
                          IsDrop(2, absl::StatusCode::kDeadlineExceeded)));
  EXPECT_EQ(batcher->NumQueuedItems(), 0);
}

TEST_F(DynamicBatcherTest, ItemsCancelledWhileQueuedAreDropped) {
  auto batcher = Make(Options(4, absl::Milliseconds(10)));
  std::vector<TestItem> items = Items({0, 1, 2});
  std::shared_ptr<std::atomic<bool>> cancel_1 = items[1].cancel;
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  cancel_1->store(true);  // the client goes away while item 1 waits
  clock_.AdvanceTime(absl::Milliseconds(10));
  ASSERT_TRUE(recorder_.WaitFor(1, 1));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 2)));
  EXPECT_THAT(recorder_.drops(), ElementsAre(IsDrop(1, absl::StatusCode::kCancelled)));
}

TEST_F(DynamicBatcherTest, BatchOfOnlyDeadItemsIsNeverProcessed) {
  auto batcher = Make(Options(2, absl::Hours(1)));
  std::vector<TestItem> dead = Items({0, 1});
  dead[0].cancel->store(true);
  dead[1].deadline_ = clock_.Now() - absl::Seconds(1);
  ASSERT_TRUE(batcher->Schedule(&dead).ok());
  ASSERT_TRUE(recorder_.WaitFor(0, 2));
  std::vector<TestItem> live = Items({2, 3});
  ASSERT_TRUE(batcher->Schedule(&live).ok());
  ASSERT_TRUE(recorder_.WaitFor(1, 2));
  // One worker runs in order: an empty batch would have been recorded first.
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(2, 3)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(0, absl::StatusCode::kCancelled),
                          IsDrop(1, absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(DynamicBatcherTest, DroppedItemsCompleteTheirRequestWithTheError) {
  auto batcher = Make(Options(4, absl::Milliseconds(1)));
  absl::Notification done;
  absl::Status outcome;
  auto tracker = RequestTracker::Create(3, [&](absl::Status status) {
    outcome = status;
    done.Notify();
  });
  ASSERT_TRUE(tracker.ok());
  std::vector<TestItem> items = Items({0, 1, 2});
  for (TestItem& item : items) item.tracker = *tracker;
  items[1].cancel->store(true);
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  clock_.AdvanceTime(absl::Milliseconds(1));
  done.WaitForNotification();
  EXPECT_EQ(outcome.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 2)));
}

TEST_F(DynamicBatcherTest, ShutdownDrainsWithoutWaitingForTheDelay) {
  auto batcher = Make(Options(2, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2, 3, 4});
  items[3].deadline_ = clock_.Now();  // expired: still dropped while draining
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  batcher->Shutdown();  // returns after the last callback
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1), ElementsAre(2, 4)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(IsDrop(3, absl::StatusCode::kDeadlineExceeded)));
  EXPECT_EQ(batcher->NumQueuedItems(), 0);

  std::vector<TestItem> late = Items({9});
  EXPECT_EQ(batcher->Schedule(&late).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(late.size(), 1u);
  batcher->Shutdown();  // idempotent
}

TEST_F(DynamicBatcherTest, DestructorDrains) {
  auto batcher = Make(Options(4, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  batcher.reset();
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0, 1, 2)));
}

TEST_F(DynamicBatcherTest, ConcurrentShutdownsAllReturnAfterTheDrain) {
  auto batcher = Make(Options(4, absl::Hours(1)));
  std::vector<TestItem> items = Items({0, 1, 2});
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      batcher->Shutdown();
      EXPECT_EQ(recorder_.num_batches(), 1u);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

TEST_F(DynamicBatcherTest, SeveralWorkersRunBatchesConcurrently) {
  constexpr int kWorkers = 3;
  DynamicBatcherOptions options = Options(1, absl::Hours(1));
  options.num_workers = kWorkers;
  auto batcher = Make(options);
  // Every batch waits until all kWorkers batches are running at the same time, which
  // only happens if kWorkers workers process them concurrently.
  absl::Mutex mu;
  absl::CondVar cv;
  int running = 0;
  bool all_running = false;
  recorder_.set_on_batch([&](const Batch<TestItem>&) {
    const absl::Time limit = absl::Now() + absl::Seconds(60);
    absl::MutexLock lock(&mu);
    if (++running == kWorkers) {
      all_running = true;
      cv.SignalAll();
    }
    while (!all_running) {
      if (cv.WaitWithDeadline(&mu, limit)) {
        ADD_FAILURE() << "only " << running << " batches ran concurrently";
        return;
      }
    }
  });
  std::vector<TestItem> items = Range(0, kWorkers);
  ASSERT_TRUE(batcher->Schedule(&items).ok());
  ASSERT_TRUE(recorder_.WaitFor(kWorkers));
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(all_running);
}

TEST_F(DynamicBatcherTest, CallbacksMayScheduleMoreWork) {
  std::unique_ptr<DynamicBatcher<TestItem>> batcher;
  recorder_.set_on_batch([&](const Batch<TestItem>& batch) {
    if (batch.items[0].id < 3) {
      std::vector<TestItem> next = Items({batch.items[0].id + 1});
      EXPECT_TRUE(batcher->Schedule(&next).ok());
    }
  });
  batcher = Make(Options(1, absl::Hours(1)));
  std::vector<TestItem> first = Items({0});
  ASSERT_TRUE(batcher->Schedule(&first).ok());
  ASSERT_TRUE(recorder_.WaitFor(4));
  EXPECT_THAT(recorder_.batches(), ElementsAre(ElementsAre(0), ElementsAre(1),
                                               ElementsAre(2), ElementsAre(3)));
}

// The run time learned from a small batch counts per item: a cold server's first lone
// item (100 ms here) does not make a full batch of 4 look like 100 ms to the requests
// refused while full batches run.
TEST_F(DynamicBatcherTest, ARetryDelayCountsFullBatchesWhateverSizeTheLastRanAt) {
  DynamicBatcherOptions options = Options(4, absl::Milliseconds(5));
  options.max_queue_size = 4;
  options.num_workers = 1;
  auto batcher = Make(options);
  absl::Notification second_started;
  absl::Notification release_second;
  RunBatchesAndHold(absl::Milliseconds(100), 1, second_started, release_second);
  std::vector<TestItem> lone = Items({0});
  ASSERT_TRUE(batcher->Schedule(&lone).ok());
  clock_.AdvanceTime(absl::Milliseconds(5));  // the partial batch's wait
  ASSERT_TRUE(recorder_.WaitFor(1));
  std::vector<TestItem> full = Items({1, 2, 3, 4});
  ASSERT_TRUE(batcher->Schedule(&full).ok());
  second_started.WaitForNotification();
  std::vector<TestItem> queued = Items({5, 6, 7, 8});
  ASSERT_TRUE(batcher->Schedule(&queued).ok());
  std::vector<TestItem> refused = Items({100});
  const absl::Status status = batcher->Schedule(&refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Milliseconds(400));
  release_second.Notify();
  ASSERT_TRUE(recorder_.WaitFor(3));
}

TEST(EstimateRetryDelayTest, RoundsOfBatchRunTime) {
  DynamicBatcherOptions options;
  options.max_batch_size = 8;
  options.num_workers = 2;
  options.max_queue_delay = absl::Milliseconds(5);
  options.min_retry_delay = absl::Milliseconds(10);
  options.max_retry_delay = absl::Seconds(5);
  const absl::Duration per_item = absl::Milliseconds(5);
  const absl::Duration run = 8 * per_item;  // a full batch
  using batching_internal::EstimateRetryDelay;
  // 1..16 items: up to two batches, one per worker: one round.
  EXPECT_EQ(EstimateRetryDelay(options, per_item, 1), run);
  EXPECT_EQ(EstimateRetryDelay(options, per_item, 16), run);
  // 17..32 items: three or four batches: two rounds.
  EXPECT_EQ(EstimateRetryDelay(options, per_item, 17), 2 * run);
  EXPECT_EQ(EstimateRetryDelay(options, per_item, 32), 2 * run);
  // Clamped at both ends.
  EXPECT_EQ(EstimateRetryDelay(options, absl::Microseconds(100), 1),
            absl::Milliseconds(10));
  EXPECT_EQ(EstimateRetryDelay(options, absl::Seconds(1), 1000), absl::Seconds(5));
  // Before any batch has run, a round counts as max_queue_delay (then clamped).
  EXPECT_EQ(EstimateRetryDelay(options, std::nullopt, 64), absl::Milliseconds(20));
  EXPECT_EQ(EstimateRetryDelay(options, std::nullopt, 1), absl::Milliseconds(10));
  // ... unless a full batch's time is expected (a warm-up's), which a measured
  // average then replaces.
  options.expected_batch_run_time = absl::Milliseconds(700);
  EXPECT_EQ(EstimateRetryDelay(options, std::nullopt, 64), absl::Milliseconds(2800));
  EXPECT_EQ(EstimateRetryDelay(options, std::nullopt, 1), absl::Milliseconds(700));
  EXPECT_EQ(EstimateRetryDelay(options, per_item, 1), run);
}

TEST(ValidateDynamicBatcherOptionsTest, AnExpectedBatchRunTimeIsFiniteAndNotNegative) {
  DynamicBatcherOptions options;
  options.max_batch_size = 8;
  options.max_queue_size = 8;
  EXPECT_TRUE(ValidateDynamicBatcherOptions(options).ok());
  options.expected_batch_run_time = absl::ZeroDuration();
  EXPECT_TRUE(ValidateDynamicBatcherOptions(options).ok());
  options.expected_batch_run_time = -absl::Milliseconds(1);
  EXPECT_EQ(ValidateDynamicBatcherOptions(options).code(),
            absl::StatusCode::kInvalidArgument);
  options.expected_batch_run_time = absl::InfiniteDuration();
  EXPECT_EQ(ValidateDynamicBatcherOptions(options).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RunTimeAverageTest, StartsAtTheFirstSampleAndMovesAQuarterTowardsEachNext) {
  batching_internal::RunTimeAverage average;
  EXPECT_EQ(average.Get(), std::nullopt);
  average.Add(absl::Milliseconds(100));
  EXPECT_EQ(average.Get(), absl::Milliseconds(100));
  average.Add(absl::Milliseconds(20));
  EXPECT_EQ(average.Get(), absl::Milliseconds(80));
  average.Add(-absl::Milliseconds(5));  // a clock step back counts as zero
  EXPECT_EQ(average.Get(), absl::Milliseconds(60));
}

// Producers schedule requests of 1-5 items (some cancelled, some already expired,
// some cancelled while queued) into a small queue while workers drain it and a thread
// keeps moving the fake clock; refused requests are retried. Every accepted item must
// reach exactly one callback, refused ones none, and every request's tracker must fire
// exactly once.
TEST(DynamicBatcherStressTest, EveryItemIsProcessedOrDroppedExactlyOnce) {
  constexpr int kProducers = 4;
  constexpr int kRequestsPerProducer = 1000;
  constexpr int kMaxItems = 5;
  constexpr int kIdsPerProducer = kRequestsPerProducer * kMaxItems;
  FakeClock clock;
  std::vector<std::atomic<int>> seen(kProducers * kIdsPerProducer);
  std::atomic<int> processed{0};
  std::atomic<int> dropped{0};
  std::atomic<int> fired{0};
  std::atomic<int> refusals{0};
  std::atomic<int> oversized_batches{0};
  std::atomic<int> accepted_items{0};

  DynamicBatcherOptions options;
  options.name = "stress";
  options.max_batch_size = 4;
  options.max_queue_delay = absl::Microseconds(50);
  options.max_queue_size = 16;
  options.num_workers = 3;
  options.clock = &clock;
  auto created = DynamicBatcher<TestItem>::Create(
      options,
      [&](Batch<TestItem> batch) {
        if (batch.items.size() > 4 || batch.items.empty()) oversized_batches.fetch_add(1);
        for (TestItem& item : batch.items) {
          seen[item.id].fetch_add(1);
          processed.fetch_add(1);
          item.tracker->ItemDone();
        }
      },
      [&](TestItem item, absl::Status status) {
        EXPECT_TRUE(absl::IsCancelled(status) || absl::IsDeadlineExceeded(status))
            << status;
        seen[item.id].fetch_add(1);
        dropped.fetch_add(1);
        item.tracker->ItemDone(status);
      });
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<DynamicBatcher<TestItem>> batcher = *std::move(created);

  std::atomic<bool> producing{true};
  std::thread ticker([&] {
    while (producing.load()) {
      clock.AdvanceTime(absl::Microseconds(10));
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937 random(1234 + p);
      std::vector<std::shared_ptr<std::atomic<bool>>> to_cancel;
      int next_id = p * kIdsPerProducer;
      for (int r = 0; r < kRequestsPerProducer; ++r) {
        const int size = 1 + static_cast<int>(random() % kMaxItems);
        auto tracker =
            RequestTracker::Create(size, [&](absl::Status) { fired.fetch_add(1); });
        ASSERT_TRUE(tracker.ok());
        std::vector<TestItem> items;
        for (int i = 0; i < size; ++i) {
          items.emplace_back(next_id++);
          items.back().tracker = *tracker;
          switch (random() % 10) {
            case 0:
              items.back().cancel->store(true);
              break;
            case 1:
              items.back().deadline_ = clock.Now();
              break;
            case 2:
              to_cancel.push_back(items.back().cancel);
              break;
            default:
              break;
          }
        }
        while (true) {
          const absl::Status status = batcher->Schedule(&items);
          if (status.ok()) break;
          ASSERT_TRUE(absl::IsResourceExhausted(status)) << status;
          ASSERT_TRUE(GetRetryInfoPayload(status).has_value());
          ASSERT_EQ(items.size(), static_cast<size_t>(size));
          refusals.fetch_add(1);
          std::this_thread::yield();
        }
        ASSERT_TRUE(items.empty());
        accepted_items.fetch_add(size);
        if (to_cancel.size() > 4) {
          for (auto& cancel : to_cancel) cancel->store(true);
          to_cancel.clear();
        }
      }
    });
  }
  for (std::thread& producer : producers) producer.join();
  producing.store(false);
  ticker.join();
  batcher->Shutdown();

  // Ids are unique, so "at most once each" plus "as many as were accepted" means
  // every accepted item exactly once.
  int seen_total = 0;
  for (std::atomic<int>& count : seen) {
    EXPECT_LE(count.load(), 1);
    seen_total += count.load();
  }
  EXPECT_EQ(seen_total, accepted_items.load());
  EXPECT_EQ(processed.load() + dropped.load(), accepted_items.load());
  EXPECT_EQ(fired.load(), kProducers * kRequestsPerProducer);
  EXPECT_EQ(oversized_batches.load(), 0);
  EXPECT_GT(dropped.load(), 0);
  EXPECT_GT(processed.load(), 0);
  // Refusals depend on scheduling; typically in the hundreds with a 16-item queue.
  RecordProperty("refusals", refusals.load());
}

}  // namespace
}  // namespace clipserve
