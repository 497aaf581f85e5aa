#ifndef CLIPSERVE_CLIENT_RETRY_H_
#define CLIPSERVE_CLIENT_RETRY_H_

#include <functional>
#include <optional>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace clipserve {

// When and how long a ClipClient waits before it tries a failed call again.
//
// Only UNAVAILABLE (server unreachable, restarting, draining) and RESOURCE_EXHAUSTED
// (the server's queue is full) are retried: both mean "nothing was computed, try
// later". Every other code is the answer. When the error carries a google.rpc.RetryInfo
// (clipserve attaches one to RESOURCE_EXHAUSTED with its estimate of when there will be
// room), its delay replaces the exponential backoff; otherwise the n-th retry waits
// about initial_backoff * multiplier^(n-1), capped at max_backoff. Both are jittered so
// that many clients refused at the same moment do not return at the same moment. A
// retry is never started when its wait would reach the call's deadline: the call then
// returns the last error at once instead of sleeping into a DEADLINE_EXCEEDED.
struct RetryPolicy {
  // Attempts per call, the first one included; 1 disables retries. Default 4: with the
  // default backoff (waits of about 100, 200 and 400 ms) a call rides out about 0.7 s
  // of unavailability, a connection reset or a replica going away behind a load
  // balancer, without hiding an outage for long.
  int max_attempts = 4;

  // Wait before the first retry when the server gave no RetryInfo, > 0. Default 100 ms:
  // long enough not to hammer a server that just refused, short next to a CLIP call.
  absl::Duration initial_backoff = absl::Milliseconds(100);

  // Cap of the exponential backoff, >= initial_backoff. Default 5 s.
  absl::Duration max_backoff = absl::Seconds(5);

  // Growth of the backoff per retry, >= 1. Default 2.
  double backoff_multiplier = 2.0;

  // Relative jitter, in [0, 1]. An exponential backoff b becomes uniform in
  // [b * (1 - jitter), b * (1 + jitter)]; a RetryInfo delay d (the server's "not
  // before") becomes uniform in [d, d * (1 + jitter)], never earlier. Default 0.2.
  double jitter = 0.2;

  // Honour google.rpc.RetryInfo. Default true.
  bool honor_retry_info = true;

  // Cap of a server-suggested delay, >= 0, so a confused server cannot park a client
  // for hours. Default 30 s.
  absl::Duration max_retry_info_delay = absl::Seconds(30);
};

// OK, or INVALID_ARGUMENT naming the first field out of its documented range.
absl::Status ValidateRetryPolicy(const RetryPolicy& policy);

// Whether a call that failed with `status` may be retried: UNAVAILABLE, and
// RESOURCE_EXHAUSTED when it carries a google.rpc.RetryInfo (the server's full queue or
// out-of-memory batch). Without one it is permanent: gRPC's own refusal of a message
// over the size limit, for example, would fail the same way every time.
bool IsRetryable(const absl::Status& status);

// The wait before the next attempt after `attempts_made` (>= 1) attempts, the last of
// which failed with `status`; `time_left` is the time until the call's deadline and
// `uniform` a random number in [0, 1) that draws the jitter. nullopt means "do not
// retry": the status is OK or not retryable, the attempts are used up, or the wait
// would not end before the deadline. Pure: thread-safe, never blocks.
std::optional<absl::Duration> NextRetryDelay(const RetryPolicy& policy,
                                             const absl::Status& status,
                                             int attempts_made, absl::Duration time_left,
                                             double uniform);

// What RunWithRetries needs from the world, injectable so tests run instantly on a
// fake clock. Each function must be thread-safe when the environment is shared.
struct RetryEnvironment {
  // Current time. Default absl::Now.
  std::function<absl::Time()> now;
  // Blocks for a duration. Default absl::SleepFor.
  std::function<void(absl::Duration)> sleep;
  // A uniform random number in [0, 1). Default: a thread-local generator seeded from
  // std::random_device.
  std::function<double()> uniform;

  // The real clock, sleep and randomness.
  static RetryEnvironment Real();
};

// Calls `attempt(n)` for n = 1, 2, ... until it returns OK or NextRetryDelay() says
// stop, sleeping through env.sleep between attempts, and returns the last status.
// `deadline` bounds the retries (each attempt should use it as its own deadline).
// Blocks the calling thread; thread-safe when `env` is.
absl::Status RunWithRetries(const RetryPolicy& policy, const RetryEnvironment& env,
                            absl::Time deadline,
                            absl::FunctionRef<absl::Status(int attempt)> attempt);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_RETRY_H_
