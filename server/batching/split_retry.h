#ifndef CLIPSERVE_SERVER_BATCHING_SPLIT_RETRY_H_
#define CLIPSERVE_SERVER_BATCHING_SPLIT_RETRY_H_

#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace clipserve {

// Items [begin, end) of a batch that could not be run, and why.
struct FailedRange {
  int begin = 0;
  int end = 0;
  absl::Status status;
};

// Runs a batch of `n` items through `run`, splitting it once when it runs out of
// memory, so a batch too big for the device's free memory costs a retry rather than
// its callers' requests.
//
// run(begin, end) runs items [begin, end) and returns OK once it has kept their
// results; any other status means it kept none. When the whole batch fails with
// RESOURCE_EXHAUSTED (out of memory) and n > 1, `before_retry` is called once (to
// release cached device memory) and each half, [0, n/2) and [n/2, n), is run once
// more. A half that fails again is not split further: its failure is returned.
//
// Returns the ranges that failed, in order, with their errors (empty when every item
// ran). Blocks while `run` runs; calls `run` at most three times, from the calling
// thread. n < 1 runs nothing.
std::vector<FailedRange> RunSplittingOnOutOfMemory(
    int n, absl::FunctionRef<absl::Status(int begin, int end)> run,
    absl::FunctionRef<void()> before_retry);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_BATCHING_SPLIT_RETRY_H_
