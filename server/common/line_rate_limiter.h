#ifndef CLIPSERVE_SERVER_COMMON_LINE_RATE_LIMITER_H_
#define CLIPSERVE_SERVER_COMMON_LINE_RATE_LIMITER_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace clipserve {

// Bounds the log lines a source writes: at most `max_per_second` in each one-second
// window, which starts at the first line after the previous window ended. The first
// line admitted after some were refused learns how many were, so its writer can add
// suppressed=N. Thread-safe. The caller passes the time, from its own Clock.
class LineRateLimiter {
 public:
  // `max_per_second` <= 0: no limit.
  explicit LineRateLimiter(int max_per_second) : max_per_second_(max_per_second) {}

  LineRateLimiter(const LineRateLimiter&) = delete;
  LineRateLimiter& operator=(const LineRateLimiter&) = delete;

  // Whether a line may be written at `now`; when it may, `*suppressed` is the number
  // of lines refused since the last one admitted. A time before the window's start (a
  // clock set back) starts a new window.
  bool Admit(absl::Time now, int64_t* suppressed);

 private:
  const int max_per_second_;
  absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int window_lines_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_LINE_RATE_LIMITER_H_
