#include "client/retry.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/status_details.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

absl::Status Overloaded(absl::Duration retry_after) {
  absl::Status status = absl::ResourceExhaustedError("image queue is full");
  SetRetryInfo(retry_after, &status);
  return status;
}

RetryPolicy NoJitter() {
  RetryPolicy policy;
  policy.jitter = 0;
  return policy;
}

TEST(RetryPolicyTest, DefaultsAreValid) {
  EXPECT_TRUE(ValidateRetryPolicy(RetryPolicy()).ok());
}

TEST(RetryPolicyTest, RejectsOutOfRangeFields) {
  RetryPolicy policy;
  policy.max_attempts = 0;
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy = RetryPolicy();
  policy.initial_backoff = absl::ZeroDuration();
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy = RetryPolicy();
  policy.max_backoff = absl::Milliseconds(10);
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy = RetryPolicy();
  policy.backoff_multiplier = 0.5;
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy = RetryPolicy();
  policy.jitter = 1.5;
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy = RetryPolicy();
  policy.max_retry_info_delay = absl::Seconds(-1);
  EXPECT_EQ(ValidateRetryPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
}

TEST(RetryPolicyTest, OnlyUnavailableAndResourceExhaustedWithRetryInfoAreRetryable) {
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("down")));
  EXPECT_TRUE(IsRetryable(Overloaded(absl::Milliseconds(100))));
  // gRPC's refusal of an oversized message: permanent, no RetryInfo.
  EXPECT_FALSE(IsRetryable(absl::ResourceExhaustedError(
      "Received message larger than max (70000000 vs. 67108864)")));
  for (absl::StatusCode code :
       {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kCancelled,
        absl::StatusCode::kInternal, absl::StatusCode::kUnimplemented,
        absl::StatusCode::kNotFound, absl::StatusCode::kAborted}) {
    EXPECT_FALSE(IsRetryable(absl::Status(code, "x"))) << absl::StatusCodeToString(code);
  }
}

TEST(NextRetryDelayTest, ExponentialBackoffCappedAtMax) {
  RetryPolicy policy = NoJitter();
  policy.max_attempts = 100;
  const absl::Status unavailable = absl::UnavailableError("down");
  const absl::Duration left = absl::Hours(1);
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 1, left, 0.5), absl::Milliseconds(100));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 2, left, 0.5), absl::Milliseconds(200));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 3, left, 0.5), absl::Milliseconds(400));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 7, left, 0.5), absl::Milliseconds(5000));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 60, left, 0.5), absl::Milliseconds(5000));
}

TEST(NextRetryDelayTest, JitterSpreadsBackoffBothWays) {
  RetryPolicy policy;  // jitter 0.2
  const absl::Status unavailable = absl::UnavailableError("down");
  const absl::Duration left = absl::Hours(1);
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 2, left, 0.0), absl::Milliseconds(160));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 2, left, 0.5), absl::Milliseconds(200));
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 2, left, 1.0), absl::Milliseconds(240));
}

TEST(NextRetryDelayTest, StopsForOkNonRetryableAndExhaustedAttempts) {
  const RetryPolicy policy;  // 4 attempts
  const absl::Duration left = absl::Hours(1);
  EXPECT_FALSE(NextRetryDelay(policy, absl::OkStatus(), 1, left, 0.5).has_value());
  EXPECT_FALSE(NextRetryDelay(policy, absl::InvalidArgumentError("bad"), 1, left, 0.5)
                   .has_value());
  EXPECT_FALSE(NextRetryDelay(policy, absl::DeadlineExceededError("late"), 1, left, 0.5)
                   .has_value());
  const absl::Status unavailable = absl::UnavailableError("down");
  EXPECT_TRUE(NextRetryDelay(policy, unavailable, 3, left, 0.5).has_value());
  EXPECT_FALSE(NextRetryDelay(policy, unavailable, 4, left, 0.5).has_value());
}

TEST(NextRetryDelayTest, NeverWaitsIntoTheDeadline) {
  const RetryPolicy policy = NoJitter();
  const absl::Status unavailable = absl::UnavailableError("down");
  EXPECT_TRUE(NextRetryDelay(policy, unavailable, 1, absl::Milliseconds(101), 0.5));
  EXPECT_FALSE(NextRetryDelay(policy, unavailable, 1, absl::Milliseconds(100), 0.5));
  EXPECT_FALSE(NextRetryDelay(policy, unavailable, 1, absl::Milliseconds(-5), 0.5));
  EXPECT_FALSE(
      NextRetryDelay(policy, Overloaded(absl::Seconds(2)), 1, absl::Seconds(1), 0.5));
}

TEST(NextRetryDelayTest, HonoursRetryInfoInsteadOfBackoff) {
  RetryPolicy policy = NoJitter();
  const absl::Duration left = absl::Hours(1);
  // The server's estimate replaces the exponential schedule, short or long.
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Milliseconds(750)), 1, left, 0.5),
            absl::Milliseconds(750));
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Milliseconds(10)), 3, left, 0.5),
            absl::Milliseconds(10));
  // On UNAVAILABLE too.
  absl::Status unavailable = absl::UnavailableError("draining");
  SetRetryInfo(absl::Milliseconds(1500), &unavailable);
  EXPECT_EQ(NextRetryDelay(policy, unavailable, 1, left, 0.5), absl::Milliseconds(1500));
}

TEST(NextRetryDelayTest, RetryInfoJitterIsNeverEarlier) {
  const RetryPolicy policy;  // jitter 0.2
  const absl::Duration left = absl::Hours(1);
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Milliseconds(500)), 1, left, 0.0),
            absl::Milliseconds(500));
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Milliseconds(500)), 1, left, 1.0),
            absl::Milliseconds(600));
}

TEST(NextRetryDelayTest, RetryInfoIsCappedAndCanBeIgnored) {
  RetryPolicy policy = NoJitter();
  policy.max_retry_info_delay = absl::Seconds(2);
  const absl::Duration left = absl::Hours(10);
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Hours(3)), 1, left, 0.5),
            absl::Seconds(2));
  policy.honor_retry_info = false;
  EXPECT_EQ(NextRetryDelay(policy, Overloaded(absl::Seconds(1)), 1, left, 0.5),
            absl::Milliseconds(100));
}

// A clock that only moves when the code under test sleeps.
struct FakeWorld {
  absl::Time now = absl::FromUnixSeconds(1000);
  std::vector<absl::Duration> sleeps;
  double uniform = 0.5;

  RetryEnvironment Environment() {
    RetryEnvironment env;
    env.now = [this] { return now; };
    env.sleep = [this](absl::Duration d) {
      sleeps.push_back(d);
      now += d;
    };
    env.uniform = [this] { return uniform; };
    return env;
  }
};

TEST(RunWithRetriesTest, ReturnsFirstSuccessWithoutSleeping) {
  FakeWorld world;
  int calls = 0;
  absl::Status status = RunWithRetries(RetryPolicy(), world.Environment(),
                                       world.now + absl::Seconds(30), [&](int attempt) {
                                         EXPECT_EQ(attempt, ++calls);
                                         return absl::OkStatus();
                                       });
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(world.sleeps.empty());
}

TEST(RunWithRetriesTest, WaitsWhatRetryInfoSaysThenSucceeds) {
  FakeWorld world;
  world.uniform = 0;  // the low end of the jitter: exactly the server's delay
  int calls = 0;
  absl::Status status = RunWithRetries(RetryPolicy(), world.Environment(),
                                       world.now + absl::Seconds(30), [&](int) {
                                         ++calls;
                                         if (calls == 1)
                                           return Overloaded(absl::Milliseconds(300));
                                         if (calls == 2)
                                           return Overloaded(absl::Milliseconds(40));
                                         return absl::OkStatus();
                                       });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(world.sleeps, (std::vector<absl::Duration>{absl::Milliseconds(300),
                                                       absl::Milliseconds(40)}));
}

TEST(RunWithRetriesTest, GivesUpAfterMaxAttemptsWithTheLastError) {
  FakeWorld world;
  RetryPolicy policy = NoJitter();
  policy.max_attempts = 3;
  int calls = 0;
  absl::Status status = RunWithRetries(
      policy, world.Environment(), world.now + absl::Seconds(30),
      [&](int) { return absl::UnavailableError(absl::StrCat("down ", ++calls)); });
  EXPECT_EQ(status, absl::UnavailableError("down 3"));
  EXPECT_EQ(world.sleeps, (std::vector<absl::Duration>{absl::Milliseconds(100),
                                                       absl::Milliseconds(200)}));
}

TEST(RunWithRetriesTest, StopsWhenTheNextWaitWouldPassTheDeadline) {
  FakeWorld world;
  RetryPolicy policy = NoJitter();
  policy.max_attempts = 100;
  int calls = 0;
  const absl::Time deadline = world.now + absl::Milliseconds(1000);
  absl::Status status = RunWithRetries(policy, world.Environment(), deadline, [&](int) {
    ++calls;
    world.now += absl::Milliseconds(50);  // each attempt takes 50 ms
    return absl::UnavailableError("down");
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  // 50 +100 +50 +200 +50 +400 +50 = 900 ms; the next wait (800 ms) would pass 1000 ms.
  EXPECT_EQ(calls, 4);
  EXPECT_LE(world.now, deadline);
}

TEST(RunWithRetriesTest, ServerDelayBeyondTheDeadlineEndsAtOnce) {
  FakeWorld world;
  int calls = 0;
  absl::Status status = RunWithRetries(RetryPolicy(), world.Environment(),
                                       world.now + absl::Seconds(1), [&](int) {
                                         ++calls;
                                         return Overloaded(absl::Seconds(5));
                                       });
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(world.sleeps.empty());
  EXPECT_EQ(RetryInfoDelay(status), absl::Seconds(5)) << "details reach the caller";
}

TEST(RunWithRetriesTest, NonRetryableErrorIsReturnedAtOnce) {
  FakeWorld world;
  int calls = 0;
  absl::Status status = RunWithRetries(
      RetryPolicy(), world.Environment(), world.now + absl::Seconds(30), [&](int) {
        ++calls;
        return absl::InvalidArgumentError("images[0]: bad");
      });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace clipserve
