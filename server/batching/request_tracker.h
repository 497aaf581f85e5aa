#ifndef CLIPSERVE_SERVER_BATCHING_REQUEST_TRACKER_H_
#define CLIPSERVE_SERVER_BATCHING_REQUEST_TRACKER_H_

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace clipserve {

// Tells the owner of a request when all of its items are done.
//
// A request with k inputs becomes k DynamicBatcher items, which may land in different
// batches, run on different workers, or be dropped (deadline, cancellation). Each item
// holds a std::shared_ptr to the request's tracker and calls ItemDone() exactly once,
// from whatever thread finished it. The call that finishes the k-th item runs
// `on_done` (on that thread, exactly once) with OK when every item succeeded, else the
// first error reported. The tracker only counts: per-item results (embedding rows) go
// to the owner's own storage, written before ItemDone() and read in `on_done`, which
// ItemDone()'s ordering makes safe.
//
// Thread-safe: ItemDone() may be called concurrently from any threads.
class RequestTracker {
 public:
  // Called once with the request's outcome; may answer the RPC. Must not throw.
  using DoneCallback = absl::AnyInvocable<void(absl::Status) &&>;

  // A tracker waiting for `num_items` ItemDone() calls. INVALID_ARGUMENT when
  // `num_items` < 1 (a request without items has nothing to wait for) or `on_done` is
  // empty.
  static absl::StatusOr<std::shared_ptr<RequestTracker>> Create(int num_items,
                                                                DoneCallback on_done);

  RequestTracker(const RequestTracker&) = delete;
  RequestTracker& operator=(const RequestTracker&) = delete;

  // Marks one item done with `status` (OK for success). Everything the calling thread
  // wrote before the call is visible to `on_done`. Returns true when this call was the
  // last one and ran `on_done` before returning. Calls beyond `num_items` are a bug in
  // the caller; they are ignored and return false. Never blocks (beyond a short lock
  // on error and whatever `on_done` does).
  bool ItemDone(const absl::Status& status = absl::OkStatus()) ABSL_LOCKS_EXCLUDED(mu_);

  // Items not yet done (for tests and diagnostics); racy by nature.
  int remaining() const {
    return std::max(remaining_.load(std::memory_order_acquire), 0);
  }

 private:
  RequestTracker(int num_items, DoneCallback on_done)
      : remaining_(num_items), on_done_(std::move(on_done)) {}

  std::atomic<int> remaining_;
  absl::Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  // Touched only by the constructor and by the call that finishes the last item.
  DoneCallback on_done_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_BATCHING_REQUEST_TRACKER_H_
