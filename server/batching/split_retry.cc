#include "server/batching/split_retry.h"

#include <utility>

namespace clipserve {

std::vector<FailedRange> RunSplittingOnOutOfMemory(
    int n, absl::FunctionRef<absl::Status(int begin, int end)> run,
    absl::FunctionRef<void()> before_retry) {
  std::vector<FailedRange> failed;
  if (n < 1) return failed;
  absl::Status whole = run(0, n);
  if (whole.ok()) return failed;
  if (whole.code() != absl::StatusCode::kResourceExhausted || n == 1) {
    failed.push_back({0, n, std::move(whole)});
    return failed;
  }
  before_retry();
  const int middle = n / 2;
  for (const auto& [begin, end] : {std::pair{0, middle}, std::pair{middle, n}}) {
    absl::Status half = run(begin, end);
    if (!half.ok()) failed.push_back({begin, end, std::move(half)});
  }
  return failed;
}

}  // namespace clipserve
