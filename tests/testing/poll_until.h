#ifndef CLIPSERVE_TESTS_TESTING_POLL_UNTIL_H_
#define CLIPSERVE_TESTS_TESTING_POLL_UNTIL_H_

#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace clipserve::testing {

// Checks `done` every `interval` until it holds (true) or `timeout` has passed
// (false). For tests that wait on real threads or sockets with no event to wait on;
// the timeout only bounds a failing test, it is not a timing under test.
inline bool PollUntil(const std::function<bool()>& done,
                      absl::Duration timeout = absl::Seconds(10),
                      absl::Duration interval = absl::Milliseconds(1)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(interval);
  }
  return true;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_POLL_UNTIL_H_
