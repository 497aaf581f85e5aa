// DynamicBatcher overhead per item: a no-op process callback, so what is measured is
// queueing, batch formation, wake-ups and hand-off between the producer and workers.
//
//   BM_ScheduleAndProcess/<items per request>/<workers>/<max queue delay us>
//     one producer thread schedules requests until the benchmark stops; its last
//     iteration Shutdown()s the batcher, which drains the queue before the clock
//     stops, so items/s covers every item's round trip.
//   BM_ScheduleRefused: the fail-fast path of a full queue (RESOURCE_EXHAUSTED with a
//     RetryInfo payload), which overload makes hot.
//   BM_CancelQueued/<queued items>/<0: one by one, 1: all at once>: the calls of a
//     full queue (one item each, behind a busy worker) are cancelled, and each
//     cancellation calls DropDead(), as every call's OnCancel() does; one by one is a
//     client giving up on its calls in turn, all at once a client that disconnects.
//     ns_per_cancel is what one cancellation costs, its drop callback included.
//   BM_TimedWait/<wait us>/<0: RealClock, 1: absl::CondVar>: how late a timed wait
//     returns after its deadline (overshoot_us). RealClock waits on the monotonic
//     clock through its helper thread; absl::CondVar's own wait (on CLOCK_REALTIME,
//     which a wall-clock step moves) is what it replaced. This is what a lone item
//     pays on top of --batch_delay_ms.

#include <atomic>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "server/batching/dynamic_batcher.h"
#include "server/common/clock.h"

namespace clipserve {
namespace {

struct BenchItem {
  int value = 0;
  // The call's cancellation flag, as a server call's; none in most benchmarks.
  const std::atomic<bool>* cancel = nullptr;
  absl::Time deadline() const { return absl::InfiniteFuture(); }
  bool cancelled() const {
    return cancel != nullptr && cancel->load(std::memory_order_acquire);
  }
};

void BM_ScheduleAndProcess(benchmark::State& state) {
  const int items_per_request = static_cast<int>(state.range(0));
  DynamicBatcherOptions options;
  options.name = "bench";
  options.max_batch_size = 32;
  options.num_workers = static_cast<int>(state.range(1));
  options.max_queue_delay = absl::Microseconds(state.range(2));
  options.max_queue_size = 1 << 16;
  std::atomic<int64_t> processed{0};
  std::atomic<int64_t> batches{0};
  auto batcher = DynamicBatcher<BenchItem>::Create(
      options,
      [&](Batch<BenchItem> batch) {
        benchmark::DoNotOptimize(batch.items.data());
        processed.fetch_add(static_cast<int64_t>(batch.items.size()),
                            std::memory_order_relaxed);
        batches.fetch_add(1, std::memory_order_relaxed);
      },
      [](BenchItem, absl::Status) {});
  if (!batcher.ok()) {
    state.SkipWithError(std::string(batcher.status().message()).c_str());
    return;
  }
  int64_t refused = 0;
  std::vector<BenchItem> items;
  benchmark::IterationCount done = 0;
  for (auto _ : state) {
    items.resize(items_per_request);
    while (!(*batcher)->Schedule(&items).ok()) {
      ++refused;
      std::this_thread::yield();
    }
    // The drain is part of the measured work: the clock stops after the loop, so the
    // last iteration waits for every queued item (up to max_queue_size) to be run.
    if (++done == state.max_iterations) (*batcher)->Shutdown();
  }
  if (done != state.max_iterations) (*batcher)->Shutdown();
  const int64_t total = state.iterations() * items_per_request;
  if (processed.load() != total) state.SkipWithError("items were lost");
  state.SetItemsProcessed(total);
  state.counters["ns_per_item"] =
      benchmark::Counter(static_cast<double>(total),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["items_per_batch"] =
      static_cast<double>(processed.load()) /
      static_cast<double>(std::max<int64_t>(batches.load(), 1));
  state.counters["refusals"] = static_cast<double>(refused);
}
BENCHMARK(BM_ScheduleAndProcess)
    ->ArgNames({"items", "workers", "delay_us"})
    ->Args({1, 1, 0})
    ->Args({1, 1, 1000})
    ->Args({8, 1, 1000})
    ->Args({32, 1, 1000})
    ->Args({1, 2, 1000})
    ->Args({8, 2, 1000})
    ->UseRealTime();

void BM_ScheduleRefused(benchmark::State& state) {
  DynamicBatcherOptions options;
  options.name = "bench";
  options.max_batch_size = 8;
  options.max_queue_size = 8;
  options.max_queue_delay = absl::Hours(1);
  absl::Notification release;
  auto batcher = DynamicBatcher<BenchItem>::Create(
      options, [&](Batch<BenchItem>) { release.WaitForNotification(); },
      [](BenchItem, absl::Status) {});
  if (!batcher.ok()) {
    state.SkipWithError(std::string(batcher.status().message()).c_str());
    return;
  }
  // One full batch keeps the worker busy until released; the next fills the queue.
  std::vector<BenchItem> fill(8);
  (*batcher)->Schedule(&fill).IgnoreError();
  while ((*batcher)->NumQueuedItems() != 0) std::this_thread::yield();
  fill.resize(8);
  (*batcher)->Schedule(&fill).IgnoreError();
  std::vector<BenchItem> items(1);
  if ((*batcher)->Schedule(&items).code() != absl::StatusCode::kResourceExhausted) {
    state.SkipWithError("the full queue took the item: not the refusal path");
    release.Notify();
    (*batcher)->Shutdown();
    return;
  }
  for (auto _ : state) {
    absl::Status status = (*batcher)->Schedule(&items);
    benchmark::DoNotOptimize(status);
  }
  release.Notify();
  (*batcher)->Shutdown();
}
BENCHMARK(BM_ScheduleRefused);

void BM_CancelQueued(benchmark::State& state) {
  const int queued = static_cast<int>(state.range(0));
  const bool all_at_once = state.range(1) == 1;
  DynamicBatcherOptions options;
  options.name = "bench";
  options.max_batch_size = queued;
  options.max_queue_size = queued;
  options.max_queue_delay = absl::Hours(1);
  absl::Notification release;
  int64_t dropped = 0;  // only DropDead() callers (this thread) drop here
  auto batcher = DynamicBatcher<BenchItem>::Create(
      options, [&](Batch<BenchItem>) { release.WaitForNotification(); },
      [&](BenchItem, absl::Status) { ++dropped; });
  if (!batcher.ok()) {
    state.SkipWithError(std::string(batcher.status().message()).c_str());
    return;
  }
  // A full batch keeps the one worker busy until released: the queue stays as filled.
  std::vector<BenchItem> items(static_cast<size_t>(queued));
  (*batcher)->Schedule(&items).IgnoreError();
  while ((*batcher)->NumQueuedItems() != 0) std::this_thread::yield();
  std::vector<std::atomic<bool>> flags(static_cast<size_t>(queued));
  for (auto _ : state) {
    state.PauseTiming();
    for (int i = 0; i < queued; ++i) {
      flags[i].store(false);
      std::vector<BenchItem> one(1);
      one[0].cancel = &flags[i];
      if (!(*batcher)->Schedule(&one).ok()) state.SkipWithError("refused");
    }
    state.ResumeTiming();
    if (all_at_once) {
      for (std::atomic<bool>& flag : flags) flag.store(true, std::memory_order_release);
    }
    for (int i = 0; i < queued; ++i) {
      if (!all_at_once) flags[i].store(true, std::memory_order_release);
      (*batcher)->DropDead();
    }
  }
  if (dropped != state.iterations() * queued) state.SkipWithError("items were lost");
  release.Notify();
  (*batcher)->Shutdown();
  state.counters["ns_per_cancel"] =
      benchmark::Counter(static_cast<double>(state.iterations() * queued),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_CancelQueued)
    ->ArgNames({"queued", "all_at_once"})
    ->Args({64, 0})
    ->Args({1024, 0})
    ->Args({1024, 1});

void BM_TimedWait(benchmark::State& state) {
  const absl::Duration wait = absl::Microseconds(state.range(0));
  const bool absl_wait = state.range(1) == 1;
  RealClock* clock = RealClock::Get();
  absl::Mutex mu;
  absl::CondVar cv;
  absl::Duration overshoot;
  absl::MutexLock lock(&mu);
  for (auto _ : state) {
    if (absl_wait) {
      const absl::Time deadline = absl::Now() + wait;
      while (!cv.WaitWithDeadline(&mu, deadline)) {
      }
      overshoot += absl::Now() - deadline;
    } else {
      const absl::Time deadline = clock->Now() + wait;
      while (!clock->WaitWithDeadline(&mu, &cv, deadline)) {
      }
      overshoot += clock->Now() - deadline;
    }
  }
  state.counters["overshoot_us"] =
      absl::ToDoubleMicroseconds(overshoot) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_TimedWait)
    ->ArgNames({"wait_us", "absl"})
    ->Args({100, 0})
    ->Args({100, 1})
    ->Args({1000, 0})
    ->Args({1000, 1})
    ->UseRealTime();

}  // namespace
}  // namespace clipserve

BENCHMARK_MAIN();
