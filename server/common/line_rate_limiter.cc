#include "server/common/line_rate_limiter.h"

namespace clipserve {

bool LineRateLimiter::Admit(absl::Time now, int64_t* suppressed) {
  *suppressed = 0;
  if (max_per_second_ <= 0) return true;
  absl::MutexLock lock(&mu_);
  if (now < window_start_ || now - window_start_ >= absl::Seconds(1)) {
    window_start_ = now;
    window_lines_ = 0;
  }
  if (window_lines_ >= max_per_second_) {
    ++suppressed_;
    return false;
  }
  ++window_lines_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

}  // namespace clipserve
