#include "client/retry.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/status_details.h"

namespace clipserve {

absl::Status ValidateRetryPolicy(const RetryPolicy& policy) {
  if (policy.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry.max_attempts must be >= 1, got ", policy.max_attempts));
  }
  if (policy.initial_backoff <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry.initial_backoff must be > 0");
  }
  if (policy.max_backoff < policy.initial_backoff) {
    return absl::InvalidArgumentError("retry.max_backoff must be >= initial_backoff");
  }
  if (!(policy.backoff_multiplier >= 1.0) || std::isinf(policy.backoff_multiplier)) {
    return absl::InvalidArgumentError("retry.backoff_multiplier must be finite and >= 1");
  }
  if (!(policy.jitter >= 0.0 && policy.jitter <= 1.0)) {
    return absl::InvalidArgumentError("retry.jitter must be in [0, 1]");
  }
  if (policy.max_retry_info_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry.max_retry_info_delay must be >= 0");
  }
  return absl::OkStatus();
}

bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         (status.code() == absl::StatusCode::kResourceExhausted &&
          RetryInfoDelay(status).has_value());
}

std::optional<absl::Duration> NextRetryDelay(const RetryPolicy& policy,
                                             const absl::Status& status,
                                             int attempts_made, absl::Duration time_left,
                                             double uniform) {
  if (status.ok() || !IsRetryable(status)) return std::nullopt;
  if (attempts_made >= policy.max_attempts) return std::nullopt;
  uniform = std::clamp(uniform, 0.0, 1.0);
  absl::Duration delay;
  std::optional<absl::Duration> server_delay;
  if (policy.honor_retry_info) server_delay = RetryInfoDelay(status);
  if (server_delay.has_value()) {
    const absl::Duration base = std::min(*server_delay, policy.max_retry_info_delay);
    delay = base * (1.0 + policy.jitter * uniform);
  } else {
    // initial * multiplier^(retries before this one), computed in floating point and
    // capped before converting so that large attempt counts cannot overflow.
    const double factor = std::pow(policy.backoff_multiplier, attempts_made - 1);
    const double cap = absl::FDivDuration(policy.max_backoff, policy.initial_backoff);
    const absl::Duration base = policy.initial_backoff * std::min(factor, cap);
    delay = base * (1.0 - policy.jitter + 2.0 * policy.jitter * uniform);
  }
  if (delay >= time_left) return std::nullopt;
  return delay;
}

RetryEnvironment RetryEnvironment::Real() {
  RetryEnvironment env;
  env.now = [] { return absl::Now(); };
  env.sleep = [](absl::Duration d) { absl::SleepFor(d); };
  env.uniform = [] {
    thread_local std::mt19937_64 generator{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(generator);
  };
  return env;
}

absl::Status RunWithRetries(const RetryPolicy& policy, const RetryEnvironment& env,
                            absl::Time deadline,
                            absl::FunctionRef<absl::Status(int attempt)> attempt) {
  for (int n = 1;; ++n) {
    absl::Status status = attempt(n);
    std::optional<absl::Duration> delay =
        NextRetryDelay(policy, status, n, deadline - env.now(), env.uniform());
    if (!delay.has_value()) return status;
    env.sleep(*delay);
  }
}

}  // namespace clipserve
