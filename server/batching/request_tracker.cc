#include "server/batching/request_tracker.h"

#include <utility>

namespace clipserve {

absl::StatusOr<std::shared_ptr<RequestTracker>> RequestTracker::Create(
    int num_items, DoneCallback on_done) {
  if (num_items < 1) {
    return absl::InvalidArgumentError("a request needs at least one item to track");
  }
  if (!on_done) return absl::InvalidArgumentError("on_done is empty");
  return std::shared_ptr<RequestTracker>(
      new RequestTracker(num_items, std::move(on_done)));
}

bool RequestTracker::ItemDone(const absl::Status& status) {
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = status;
  }
  // acq_rel: each call's writes (results, first_error_) happen before the last call.
  const int before = remaining_.fetch_sub(1, std::memory_order_acq_rel);
  if (before != 1) return false;  // not the last one (or one too many: ignored)
  absl::Status outcome;
  {
    absl::MutexLock lock(&mu_);
    outcome = first_error_;
  }
  std::move(on_done_)(std::move(outcome));
  return true;
}

}  // namespace clipserve
