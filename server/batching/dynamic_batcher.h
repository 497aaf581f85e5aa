#ifndef CLIPSERVE_SERVER_BATCHING_DYNAMIC_BATCHER_H_
#define CLIPSERVE_SERVER_BATCHING_DYNAMIC_BATCHER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/common/status_payloads.h"

namespace clipserve {

// Configuration of a DynamicBatcher. The defaults suit one CLIP modality queue of a
// ViT-B model; the engine sets them per modality and device from its flags.
struct DynamicBatcherOptions {
  // Names the queue in error messages ("image queue is full"). Default "batch".
  std::string name = "batch";

  // Most items in one batch, >= 1. Default 32: a ViT-B forward pass gains little
  // throughput per item beyond 16-32 inputs on a CPU, while its latency grows with
  // the batch; GPUs profit from more and the engine raises it there.
  int max_batch_size = 32;

  // Longest time the oldest queued item waits for company before a partial batch runs,
  // >= 0 (zero: run whatever is queued as soon as a worker is free). Default 5 ms:
  // small next to the tens of milliseconds a forward pass takes, yet long enough for
  // concurrent requests to share a batch under load.
  absl::Duration max_queue_delay = absl::Milliseconds(5);

  // Most items waiting in the queue (not counting batches being processed),
  // >= max_batch_size. Beyond it Schedule() fails fast with RESOURCE_EXHAUSTED.
  // Default 1024 items, 32 full batches: at ~50 ms a batch the last item would wait
  // about 1.6 s per worker, longer than clients typically wait, so refusing early
  // with a retry delay serves them better than queueing.
  int max_queue_size = 1024;

  // Threads that take batches off the queue and run the process callback, >= 1.
  // Default 1: one model execution per queue at a time; LibTorch's intra-op pool
  // already uses every CPU core, and concurrent batches on one GPU mostly time-slice.
  // Raise it to overlap host work (stacking, copies) with the model run.
  int num_workers = 1;

  // Bounds of the RetryInfo delay attached to RESOURCE_EXHAUSTED, 0 <= min <= max.
  // Defaults 10 ms (sooner than that a retry would meet the same full queue) and 5 s
  // (estimates further ahead are unreliable, and clients give up before then).
  absl::Duration min_retry_delay = absl::Milliseconds(10);
  absl::Duration max_retry_delay = absl::Seconds(5);

  // How long a full batch is expected to run before any batch has (from a warm-up
  // run, say), >= 0 when set: the RetryInfo estimate's time per batch until the first
  // batch ends and the measured average takes over. Unset: max_queue_delay, which
  // tells clients refused during a long first batch to come back far too soon.
  std::optional<absl::Duration> expected_batch_run_time;

  // When true, a partial batch waits for company only while items are announced
  // (Announce()) and not yet scheduled or withdrawn: with nothing on its way, waiting
  // could only add latency, so the batch runs as soon as a worker is free. A lone
  // request on an idle server then skips max_queue_delay. Default false: every
  // partial batch waits the full delay.
  bool wait_only_for_announced = false;

  // --- Test-only ---

  // Time source for enqueue times, the queue delay, item deadlines and run times; not
  // owned, must outlive the batcher. nullptr (the default) means RealClock::Get().
  Clock* clock = nullptr;
};

// OK, or INVALID_ARGUMENT naming the first option out of its documented range.
absl::Status ValidateDynamicBatcherOptions(const DynamicBatcherOptions& options);

// How a DynamicBatcher reads an item's deadline and cancellation. The default calls
// the item's own methods, so an Item type either has
//   absl::Time deadline() const;  // on the batcher's clock; InfiniteFuture() if none
//   bool cancelled() const;       // true once the caller no longer wants the result
// or the owner specializes BatchItemTraits<Item> (for example for a
// std::unique_ptr<Request>). Both are called with the batcher's lock held, by worker
// threads and by Schedule() (on a full queue): they must be cheap, must not block or
// call into the batcher, and cancelled() must be safe to call while another thread
// cancels the item (an atomic flag). An item past its deadline is dropped as
// DEADLINE_EXCEEDED whether or not it is also cancelled.
template <typename Item>
struct BatchItemTraits {
  static absl::Time Deadline(const Item& item) { return item.deadline(); }
  static bool Cancelled(const Item& item) { return item.cancelled(); }
};

// One batch handed to the process callback.
template <typename Item>
struct Batch {
  // 1 to max_batch_size items in the order they were scheduled.
  std::vector<Item> items;
  // enqueue_times[i]: when Schedule() accepted items[i] (by the batcher's clock).
  std::vector<absl::Time> enqueue_times;
  // When the worker took the items off the queue.
  absl::Time formed_time;

  // How long items[i] waited in the queue (for metrics).
  absl::Duration QueueWait(size_t i) const { return formed_time - enqueue_times[i]; }
};

namespace batching_internal {

// Exponential moving average of durations (the batchers': a batch's run time per
// item), each new sample weighted 1/4 (about the last four count). Thread-compatible.
class RunTimeAverage {
 public:
  void Add(absl::Duration sample);
  // nullopt until the first sample.
  std::optional<absl::Duration> Get() const { return average_; }

 private:
  std::optional<absl::Duration> average_;
};

// The RetryInfo delay for a request refused because `items_to_free` more queue slots
// would have to empty first: queue slots free as workers take batches, so that takes
// ceil(ceil(items_to_free / max_batch_size) / num_workers) rounds of one full batch's
// run time each (max_batch_size x `run_time_per_item`, the recent batches' average;
// before any batch has run, expected_batch_run_time or else max_queue_delay), clamped
// to [min_retry_delay, max_retry_delay]. Per item, so that a small batch (a cold
// server's first lone request) does not pass for a full one: the queue is full only
// under load, when batches are full and the per-item time is a full batch's.
absl::Duration EstimateRetryDelay(const DynamicBatcherOptions& options,
                                  std::optional<absl::Duration> run_time_per_item,
                                  int64_t items_to_free);

}  // namespace batching_internal

// Groups items scheduled by many threads into batches for a process callback, like
// TF Serving's BasicBatchScheduler: one bounded FIFO queue served by
// `num_workers` threads. It knows nothing of CLIP; the engine creates one per modality
// with Item = one preprocessed image or tokenized text plus the handle to answer it.
// A header-only template so items are moved, never type-erased or copied.
//
// Batches are formed greedily: a worker takes up to max_batch_size items from the
// front of the queue as soon as max_batch_size are queued, when the oldest one has
// waited max_queue_delay (by the clock), or at once while shutting down. Items whose
// call was cancelled or whose deadline has passed (by the clock, at that moment) are
// taken out too but never occupy a batch slot: they go to the drop callback with
// CANCELLED or DEADLINE_EXCEEDED, so their owner can answer them. A queued item is
// checked when a batch is formed, when a Schedule() finds the queue too full (the dead
// items then never keep live ones out while the workers are busy with a long batch),
// and when DropDead() is called (on a cancellation); so one whose deadline passes
// unnoticed is answered when its batch would have run. Schedule() never queues an item
// that is dead already. A request's items may so end up in several batches;
// RequestTracker (request_tracker.h) tells its owner when all are done.
//
// Batches are formed in FIFO order, items keep their order inside a batch, and with
// one worker batches also finish in order; with several they may finish out of order.
//
// Callbacks run on worker threads, and the drop callback also on a thread in
// Schedule() or DropDead(), never with the batcher's lock held; they may call Schedule()
// but must not call Shutdown() or destroy the batcher, and must not throw (clipserve does
// not use exceptions; one escaping a worker ends the process).
//
// Thread-safe: Schedule(), DropDead() and NumQueuedItems() may be called from any
// thread.
template <typename Item>
class DynamicBatcher {
 public:
  static_assert(std::is_move_constructible_v<Item> && std::is_move_assignable_v<Item>,
                "items are moved into batches and within the queue");

  using Options = DynamicBatcherOptions;
  // Runs one batch (takes ownership of it). Blocking is fine: it is the worker's job.
  using ProcessBatchFn = std::function<void(Batch<Item> batch)>;
  // Takes ownership of an item dropped for `status` (CANCELLED or DEADLINE_EXCEEDED).
  using DropItemFn = std::function<void(Item item, absl::Status status)>;

  // Validates `options` and starts the workers. INVALID_ARGUMENT for options out of
  // range (see DynamicBatcherOptions) or an empty callback.
  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(
      const Options& options, ProcessBatchFn process_batch, DropItemFn drop_item);

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Shutdown(): runs every item still queued, then joins the workers.
  ~DynamicBatcher() { Shutdown(); }

  // Enqueues all of `*items` at the back of the queue, or none of them. Items already
  // cancelled or expired are not queued: on OK they go to the drop callback on this
  // thread before it returns.
  //
  // OK: the items were moved out and `*items` is left empty; each one will reach the
  // process callback or the drop callback exactly once. On any other status `*items`
  // is untouched (ownership stays with the caller, as in TF Serving's Schedule()):
  //   INVALID_ARGUMENT    `items` is null or empty, or holds more than max_queue_size
  //                       items, which could never be queued (retrying cannot help).
  //   RESOURCE_EXHAUSTED  the queue lacks room for all of them right now, counting
  //                       its live items, these and the room Announce() holds for
  //                       items on their way (never for items announced: their room
  //                       is held). The status carries a
  //                       google.rpc.RetryInfo payload (status_payloads.h) with
  //                       EstimateRetryDelay(): roughly how long until workers have
  //                       taken enough batches off the queue to make room.
  //   UNAVAILABLE         Shutdown() has begun.
  // When the queue is too full, the cancelled and expired items in it are taken out
  // and handed to the drop callback on this thread before it returns (OK or
  // RESOURCE_EXHAUSTED): so the caller must not hold a lock that the drop callback
  // takes. Never blocks on the workers (it takes the queue's lock only). Thread-safe.
  absl::Status Schedule(std::vector<Item>* items) ABSL_LOCKS_EXCLUDED(mu_);

  // Stops accepting items (Schedule() returns UNAVAILABLE from now on), lets the
  // workers run everything already queued at once, without waiting for the queue delay
  // (expired and cancelled items still go to the drop callback), and joins them.
  // Blocks until the last callback has returned. Idempotent and thread-safe; must not
  // be called from a callback.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_, join_mu_);

  // Takes every cancelled or expired item out of the queue now, wherever it is in the
  // queue, and hands each to the drop callback on this thread before returning; the
  // live items keep their order. For a caller that has just learnt of a cancellation
  // (a gRPC call's OnCancel()): the dead items then free their memory at once, not
  // when a batch reaches them, which behind a long queue can take many batches. One
  // pass over the queue under its lock; the same lock rule as Schedule(). Thread-safe;
  // after Shutdown() has begun it drops what is still queued the same way.
  void DropDead() ABSL_LOCKS_EXCLUDED(mu_);

  // Items waiting in the queue now (a gauge for metrics). Thread-safe; never blocks
  // for long.
  int NumQueuedItems() const ABSL_LOCKS_EXCLUDED(mu_);

  // Says that `n` more items are on their way (being preprocessed), so that under
  // wait_only_for_announced a partial batch waits for them, and holds room in the queue
  // for them: queued and announced items together stay within max_queue_size, so a
  // Schedule() of announced items is never refused for room. A request is so refused
  // (RESOURCE_EXHAUSTED with a RetryInfo, as Schedule()) before its items are
  // preprocessed, not one image at a time after each decode; INVALID_ARGUMENT for more
  // than max_queue_size; UNAVAILABLE after Shutdown(). On any refusal nothing is
  // announced.
  //
  // Under sustained load the queue frees room a batch at a time and small requests
  // would take each bit of it, so a large request could be refused for ever. So a
  // refused request sets its item count aside (the largest refused lately, until twice
  // its retry delay and a second have passed, or sooner its `deadline`, on the
  // batcher's clock: a client retries within its call's deadline, as clip_client does,
  // so past it no retry comes to take the room; a request as large refused later takes
  // the claim over only if it would hold it as long): while at least a batch of items is
  // queued or on its way (the queue drains by itself), smaller requests are refused
  // unless they fit beside that room; one at least as large (its retry, or another as
  // large) takes the room and ends the claim. With less than a batch pending, the room
  // is not held: a partial batch may be waiting for the very items it would refuse,
  // and an idle queue must not refuse anyone for a request that never came back. Each
  // Schedule() of k items settles up to k announced ones, whether or not it succeeds;
  // Withdraw() settles items that will never be scheduled (failed or cancelled on the
  // way). Thread-safe; the same lock rule as Schedule().
  absl::Status Announce(int n, absl::Time deadline = absl::InfiniteFuture())
      ABSL_LOCKS_EXCLUDED(mu_);
  void Withdraw(int n) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Traits = BatchItemTraits<Item>;

  struct Entry {
    Item item;
    absl::Time enqueue_time;
  };

  enum class DropReason { kCancelled, kDeadlineExceeded };

  struct Dropped {
    Item item;
    DropReason reason;
  };

  DynamicBatcher(const Options& options, ProcessBatchFn process_batch,
                 DropItemFn drop_item)
      : options_(options),
        clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
        process_batch_(std::move(process_batch)),
        drop_item_(std::move(drop_item)) {}

  void StartWorkers() ABSL_LOCKS_EXCLUDED(join_mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until a batch may be formed; false when shut down with an empty queue.
  bool WaitForBatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Settles up to `n` announced items; true when that leaves none announced while
  // items wait, so a worker waiting for company should look again.
  bool SettleLocked(int n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves up to max_batch_size live items into `*batch`, dead ones into `*dropped`.
  void FormBatchLocked(Batch<Item>* batch, std::vector<Dropped>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves every dead item in the queue into `*dropped`; the live ones keep their order.
  void DropDeadLocked(std::vector<Dropped>* dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why `item` should not run at `now`: its deadline passed (whether or not that also
  // cancelled it), or it was cancelled; nullopt when it is live.
  static std::optional<DropReason> DeadReason(const Item& item, absl::Time now);
  void DeliverDrops(std::vector<Dropped>* dropped);
  absl::Status DropStatus(DropReason reason) const;
  // "text queue is full: ..." for a refusal of `wanted` items, with `queued` items in
  // the queue, room `held` for items on their way and `set_aside` for a larger request.
  std::string FullMessage(size_t queued, size_t held, size_t wanted, size_t set_aside,
                          absl::Duration retry_delay) const;

  const Options options_;
  Clock* const clock_;
  const ProcessBatchFn process_batch_;
  const DropItemFn drop_item_;

  // Serializes Shutdown() calls while they join; taken before mu_, never inside it.
  absl::Mutex join_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(join_mu_);

  mutable absl::Mutex mu_;
  // Workers wait here for work, through clock_->WaitWithDeadline().
  absl::CondVar work_available_;
  std::deque<Entry> queue_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  int64_t announced_ ABSL_GUARDED_BY(mu_) = 0;
  // Room Announce() keeps from smaller requests for the largest one refused lately.
  struct Claim {
    int64_t items;
    absl::Time until;
  };
  std::optional<Claim> claim_ ABSL_GUARDED_BY(mu_);
  // Batch run times per item.
  batching_internal::RunTimeAverage run_time_ ABSL_GUARDED_BY(mu_);
};

// --- Implementation ----------------------------------------------------------------

template <typename Item>
absl::StatusOr<std::unique_ptr<DynamicBatcher<Item>>> DynamicBatcher<Item>::Create(
    const Options& options, ProcessBatchFn process_batch, DropItemFn drop_item) {
  absl::Status status = ValidateDynamicBatcherOptions(options);
  if (!status.ok()) return status;
  if (!process_batch) return absl::InvalidArgumentError("process_batch is empty");
  if (!drop_item) return absl::InvalidArgumentError("drop_item is empty");
  auto batcher = absl::WrapUnique(
      new DynamicBatcher(options, std::move(process_batch), std::move(drop_item)));
  batcher->StartWorkers();
  return batcher;
}

template <typename Item>
void DynamicBatcher<Item>::StartWorkers() {
  absl::MutexLock lock(&join_mu_);
  workers_.reserve(options_.num_workers);
  for (int i = 0; i < options_.num_workers; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

template <typename Item>
absl::Status DynamicBatcher<Item>::Schedule(std::vector<Item>* items) {
  if (items == nullptr || items->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options_.name, " batcher: no items to schedule"));
  }
  const size_t count = items->size();
  if (count > static_cast<size_t>(options_.max_queue_size)) {
    Withdraw(static_cast<int>(std::min<size_t>(count, 1 << 30)));
    return absl::InvalidArgumentError(
        absl::StrCat(count, " items are more than the ", options_.name,
                     " queue can ever hold (", options_.max_queue_size, ")"));
  }
  bool notify = false;
  std::optional<absl::Duration> retry_delay;
  std::string full_message;
  std::vector<Dropped> dropped;
  {
    absl::MutexLock lock(&mu_);
    // These items are no longer on their way, whatever happens to them below.
    notify = SettleLocked(static_cast<int>(count));
    if (shutting_down_) {
      return absl::UnavailableError(
          absl::StrCat(options_.name, " batcher is shutting down"));
    }
    // Read under the lock so that enqueue times never decrease along the queue.
    const absl::Time now = clock_->Now();
    // Items that are dead already (their call was cancelled while they were being
    // preprocessed, maybe after a DropDead()) are answered, never queued.
    absl::InlinedVector<std::optional<DropReason>, 16> dead(count);
    size_t live = 0;
    for (size_t i = 0; i < count; ++i) {
      dead[i] = DeadReason((*items)[i], now);
      if (!dead[i].has_value()) ++live;
    }
    // Room held for other items on their way counts as taken (these items' own was
    // settled above).
    const size_t held = static_cast<size_t>(announced_);
    if (queue_.size() + held + live > static_cast<size_t>(options_.max_queue_size)) {
      // Calls that timed out or went away while a long batch runs must not keep
      // live ones out.
      DropDeadLocked(&dropped);
    }
    const size_t queued = queue_.size();
    if (queued + held + live > static_cast<size_t>(options_.max_queue_size)) {
      retry_delay = batching_internal::EstimateRetryDelay(
          options_, run_time_.Get(),
          static_cast<int64_t>(queued + held + live) - options_.max_queue_size);
      full_message = FullMessage(queued, held, live, 0, *retry_delay);
    } else {
      for (size_t i = 0; i < count; ++i) {
        Item& item = (*items)[i];
        if (dead[i].has_value()) {
          dropped.push_back(Dropped{std::move(item), *dead[i]});
        } else {
          queue_.push_back(Entry{std::move(item), now});
        }
      }
      const size_t full = static_cast<size_t>(options_.max_batch_size);
      // Wake a worker when it has a new oldest item to time, or a full batch to take.
      // A worker that forms a batch and leaves items behind wakes the next one.
      notify = notify ||
               (live > 0 && (queued == 0 || (queued < full && queued + live >= full)));
    }
  }
  // A worker first: answering the dropped items may take a while.
  if (notify) work_available_.Signal();
  DeliverDrops(&dropped);
  if (retry_delay.has_value()) {
    absl::Status status = absl::ResourceExhaustedError(full_message);
    SetRetryInfoPayload(*retry_delay, &status);
    return status;
  }
  items->clear();
  return absl::OkStatus();
}

template <typename Item>
std::string DynamicBatcher<Item>::FullMessage(size_t queued, size_t held, size_t wanted,
                                              size_t set_aside,
                                              absl::Duration retry_delay) const {
  return absl::StrCat(
      options_.name, " queue is full: ", queued, " items queued and ", held,
      " on their way of ", options_.max_queue_size,
      set_aside > 0 ? absl::StrCat(", ", set_aside,
                                   " set aside for a larger request refused before")
                    : "",
      ", no room for ", wanted, " more; retry after ", absl::FormatDuration(retry_delay));
}

template <typename Item>
absl::Status DynamicBatcher<Item>::Announce(int n, absl::Time deadline) {
  if (n <= 0) return absl::OkStatus();
  if (n > options_.max_queue_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " items are more than the ", options_.name,
                     " queue can ever hold (", options_.max_queue_size, ")"));
  }
  std::vector<Dropped> dropped;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return absl::UnavailableError(
          absl::StrCat(options_.name, " batcher is shutting down"));
    }
    const absl::Time now = clock_->Now();
    if (claim_.has_value() && now >= claim_->until) claim_.reset();
    // A claim keeps its room from smaller requests only, and only while the queue
    // drains by itself.
    const bool draining =
        static_cast<int64_t>(queue_.size()) + announced_ >= options_.max_batch_size;
    const int64_t set_aside =
        claim_.has_value() && n < claim_->items && draining ? claim_->items : 0;
    const auto fits = [&] {
      return static_cast<int64_t>(queue_.size()) + announced_ + n + set_aside <=
             options_.max_queue_size;
    };
    if (!fits()) DropDeadLocked(&dropped);
    if (fits()) {
      announced_ += n;
      // This request was the largest refused (or as large).
      if (claim_.has_value() && n >= claim_->items) claim_.reset();
    } else {
      const size_t queued = queue_.size();
      const size_t held = static_cast<size_t>(announced_);
      const absl::Duration retry_delay = batching_internal::EstimateRetryDelay(
          options_, run_time_.Get(),
          static_cast<int64_t>(queued + held) + n + set_aside - options_.max_queue_size);
      status = absl::ResourceExhaustedError(
          FullMessage(queued, held, static_cast<size_t>(n),
                      static_cast<size_t>(set_aside), retry_delay));
      SetRetryInfoPayload(retry_delay, &status);
      // The largest request refused claims the room it needs; smaller ones refused
      // for the claim's sake neither grow nor prolong it, and one that gives up sooner
      // than the claim's holder does not cut the claim short.
      const absl::Time until =
          std::min(now + 2 * retry_delay + absl::Seconds(1), deadline);
      if (!claim_.has_value() || (n >= claim_->items && until >= claim_->until)) {
        claim_ = Claim{n, until};
      }
    }
  }
  DeliverDrops(&dropped);
  return status;
}

template <typename Item>
void DynamicBatcher<Item>::Withdraw(int n) {
  bool notify;
  {
    absl::MutexLock lock(&mu_);
    notify = SettleLocked(n);
  }
  if (notify) work_available_.Signal();
}

template <typename Item>
bool DynamicBatcher<Item>::SettleLocked(int n) {
  if (n <= 0 || announced_ == 0) return false;
  announced_ -= std::min<int64_t>(n, announced_);
  return announced_ == 0 && !queue_.empty() && options_.wait_only_for_announced;
}

template <typename Item>
void DynamicBatcher<Item>::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
  }
  work_available_.SignalAll();
  absl::MutexLock lock(&join_mu_);
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

template <typename Item>
void DynamicBatcher<Item>::DropDead() {
  std::vector<Dropped> dropped;
  {
    absl::MutexLock lock(&mu_);
    DropDeadLocked(&dropped);
  }
  DeliverDrops(&dropped);
}

template <typename Item>
int DynamicBatcher<Item>::NumQueuedItems() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

template <typename Item>
void DynamicBatcher<Item>::WorkerLoop() {
  std::optional<absl::Duration> last_run_time;
  while (true) {
    Batch<Item> batch;
    std::vector<Dropped> dropped;
    bool more = false;
    {
      absl::MutexLock lock(&mu_);
      if (last_run_time.has_value()) run_time_.Add(*last_run_time);
      last_run_time.reset();
      if (!WaitForBatchLocked()) return;
      FormBatchLocked(&batch, &dropped);
      more = !queue_.empty();
    }
    // Another worker may take what is left, or time the new oldest item.
    if (more) work_available_.Signal();
    DeliverDrops(&dropped);
    if (batch.items.empty()) continue;
    const int64_t items = static_cast<int64_t>(batch.items.size());
    const absl::Time start = clock_->Now();
    process_batch_(std::move(batch));
    last_run_time = (clock_->Now() - start) / items;
  }
}

template <typename Item>
bool DynamicBatcher<Item>::WaitForBatchLocked() {
  while (true) {
    if (queue_.empty()) {
      if (shutting_down_) return false;
      clock_->WaitWithDeadline(&mu_, &work_available_, absl::InfiniteFuture());
      continue;
    }
    if (shutting_down_ || queue_.size() >= static_cast<size_t>(options_.max_batch_size)) {
      return true;
    }
    if (options_.wait_only_for_announced && announced_ == 0) return true;
    const absl::Time due = queue_.front().enqueue_time + options_.max_queue_delay;
    if (clock_->Now() >= due) return true;
    clock_->WaitWithDeadline(&mu_, &work_available_, due);
  }
}

template <typename Item>
void DynamicBatcher<Item>::FormBatchLocked(Batch<Item>* batch,
                                           std::vector<Dropped>* dropped) {
  const absl::Time now = clock_->Now();
  const size_t max_size = static_cast<size_t>(options_.max_batch_size);
  batch->formed_time = now;
  batch->items.reserve(std::min(max_size, queue_.size()));
  batch->enqueue_times.reserve(std::min(max_size, queue_.size()));
  while (!queue_.empty() && batch->items.size() < max_size) {
    Entry& entry = queue_.front();
    if (std::optional<DropReason> reason = DeadReason(entry.item, now)) {
      dropped->push_back(Dropped{std::move(entry.item), *reason});
    } else {
      batch->items.push_back(std::move(entry.item));
      batch->enqueue_times.push_back(entry.enqueue_time);
    }
    queue_.pop_front();
  }
}

template <typename Item>
void DynamicBatcher<Item>::DropDeadLocked(std::vector<Dropped>* dropped) {
  const absl::Time now = clock_->Now();
  // Compacted in place: the live items move forward over the dead ones, and nothing
  // before the first dead item is moved (a queue of live items is left as it is). Each
  // item's fate is decided once.
  auto out = queue_.begin();
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (std::optional<DropReason> reason = DeadReason(it->item, now)) {
      dropped->push_back(Dropped{std::move(it->item), *reason});
    } else {
      if (out != it) *out = std::move(*it);
      ++out;
    }
  }
  queue_.erase(out, queue_.end());
}

template <typename Item>
std::optional<typename DynamicBatcher<Item>::DropReason> DynamicBatcher<Item>::DeadReason(
    const Item& item, absl::Time now) {
  // A server call is cancelled when its deadline passes: the deadline is the reason.
  if (Traits::Deadline(item) <= now) return DropReason::kDeadlineExceeded;
  if (Traits::Cancelled(item)) return DropReason::kCancelled;
  return std::nullopt;
}

template <typename Item>
void DynamicBatcher<Item>::DeliverDrops(std::vector<Dropped>* dropped) {
  for (Dropped& item : *dropped) {
    drop_item_(std::move(item.item), DropStatus(item.reason));
  }
  dropped->clear();
}

template <typename Item>
absl::Status DynamicBatcher<Item>::DropStatus(DropReason reason) const {
  switch (reason) {
    case DropReason::kCancelled:
      return absl::CancelledError(
          absl::StrCat("cancelled while waiting in the ", options_.name, " queue"));
    case DropReason::kDeadlineExceeded:
      break;
  }
  return absl::DeadlineExceededError(
      absl::StrCat("deadline passed while waiting in the ", options_.name, " queue"));
}

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_BATCHING_DYNAMIC_BATCHER_H_
