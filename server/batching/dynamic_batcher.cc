#include "server/batching/dynamic_batcher.h"

#include <algorithm>

namespace clipserve {

absl::Status ValidateDynamicBatcherOptions(const DynamicBatcherOptions& options) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_size must be >= 1, got ", options.max_batch_size));
  }
  if (options.max_queue_delay < absl::ZeroDuration() ||
      options.max_queue_delay == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay must be finite and >= 0, got ",
                     absl::FormatDuration(options.max_queue_delay)));
  }
  if (options.max_queue_size < options.max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_size (", options.max_queue_size,
                     ") must be >= max_batch_size (", options.max_batch_size, ")"));
  }
  if (options.num_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_workers must be >= 1, got ", options.num_workers));
  }
  if (options.min_retry_delay < absl::ZeroDuration() ||
      options.max_retry_delay < options.min_retry_delay ||
      options.max_retry_delay == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("need 0 <= min_retry_delay <= max_retry_delay < infinity, got ",
                     absl::FormatDuration(options.min_retry_delay), " and ",
                     absl::FormatDuration(options.max_retry_delay)));
  }
  if (options.expected_batch_run_time.has_value() &&
      (*options.expected_batch_run_time < absl::ZeroDuration() ||
       *options.expected_batch_run_time == absl::InfiniteDuration())) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected_batch_run_time must be finite and >= 0, got ",
                     absl::FormatDuration(*options.expected_batch_run_time)));
  }
  return absl::OkStatus();
}

namespace batching_internal {

void RunTimeAverage::Add(absl::Duration sample) {
  if (sample < absl::ZeroDuration()) sample = absl::ZeroDuration();  // clock stepped
  if (!average_.has_value()) {
    average_ = sample;
  } else {
    *average_ += (sample - *average_) / 4;
  }
}

absl::Duration EstimateRetryDelay(const DynamicBatcherOptions& options,
                                  std::optional<absl::Duration> run_time_per_item,
                                  int64_t items_to_free) {
  const int64_t batch_size = std::max(options.max_batch_size, 1);
  const int64_t workers = std::max(options.num_workers, 1);
  const int64_t batches =
      (std::max<int64_t>(items_to_free, 1) + batch_size - 1) / batch_size;
  const int64_t rounds = (batches + workers - 1) / workers;
  const absl::Duration per_round =
      run_time_per_item.has_value()
          ? *run_time_per_item * batch_size
          : options.expected_batch_run_time.value_or(options.max_queue_delay);
  return std::clamp(per_round * rounds, options.min_retry_delay, options.max_retry_delay);
}

}  // namespace batching_internal
}  // namespace clipserve
