#include "server/common/clock.h"

namespace clipserve {

RealClock* RealClock::Get() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time RealClock::Now() { return absl::Now(); }

bool RealClock::WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv,
                                 absl::Time deadline) {
  cv->WaitWithDeadline(mu, deadline);
  return absl::Now() >= deadline;
}

}  // namespace clipserve
