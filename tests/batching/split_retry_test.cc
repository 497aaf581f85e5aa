#include "server/batching/split_retry.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A fake model run: records each range it was asked for and answers from a script
// (one status per call, OK once the script runs out).
class FakeRun {
 public:
  explicit FakeRun(std::vector<absl::Status> script) : script_(std::move(script)) {}
  absl::Status operator()(int begin, int end) {
    calls.emplace_back(begin, end);
    if (next_ < script_.size()) return script_[next_++];
    return absl::OkStatus();
  }
  std::vector<std::pair<int, int>> calls;

 private:
  std::vector<absl::Status> script_;
  size_t next_ = 0;
};

absl::Status Oom() { return absl::ResourceExhaustedError("CUDA out of memory"); }

TEST(SplitRetryTest, BatchThatRunsIsRunOnceWhole) {
  FakeRun run({});
  int retries = 0;
  EXPECT_THAT(RunSplittingOnOutOfMemory(
                  8, [&](int b, int e) { return run(b, e); }, [&] { ++retries; }),
              IsEmpty());
  EXPECT_THAT(run.calls, ElementsAre(std::pair{0, 8}));
  EXPECT_EQ(retries, 0);
}

TEST(SplitRetryTest, OutOfMemoryRetriesEachHalfOnceAfterReleasingMemory) {
  FakeRun run({Oom()});
  int retries = 0;
  EXPECT_THAT(RunSplittingOnOutOfMemory(
                  7, [&](int b, int e) { return run(b, e); }, [&] { ++retries; }),
              IsEmpty());
  EXPECT_THAT(run.calls, ElementsAre(std::pair{0, 7}, std::pair{0, 3}, std::pair{3, 7}));
  EXPECT_EQ(retries, 1);
}

TEST(SplitRetryTest, HalfThatRunsOutOfMemoryAgainFailsAloneAndIsNotSplitFurther) {
  FakeRun run({Oom(), absl::OkStatus(), Oom()});
  const std::vector<FailedRange> failed = RunSplittingOnOutOfMemory(
      8, [&](int b, int e) { return run(b, e); }, [] {});
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].begin, 4);
  EXPECT_EQ(failed[0].end, 8);
  EXPECT_EQ(failed[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(run.calls, ElementsAre(std::pair{0, 8}, std::pair{0, 4}, std::pair{4, 8}));
}

TEST(SplitRetryTest, BothHalvesCanFailWithTheirOwnErrors) {
  FakeRun run({Oom(), absl::InternalError("first half"), Oom()});
  const std::vector<FailedRange> failed = RunSplittingOnOutOfMemory(
      2, [&](int b, int e) { return run(b, e); }, [] {});
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_EQ(failed[0].begin, 0);
  EXPECT_EQ(failed[0].end, 1);
  EXPECT_EQ(failed[0].status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(failed[1].begin, 1);
  EXPECT_EQ(failed[1].end, 2);
  EXPECT_EQ(failed[1].status.code(), absl::StatusCode::kResourceExhausted);
}

TEST(SplitRetryTest, OtherErrorsAreNotRetried) {
  FakeRun run({absl::InternalError("bad kernel")});
  int retries = 0;
  const std::vector<FailedRange> failed = RunSplittingOnOutOfMemory(
      8, [&](int b, int e) { return run(b, e); }, [&] { ++retries; });
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].begin, 0);
  EXPECT_EQ(failed[0].end, 8);
  EXPECT_EQ(failed[0].status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(run.calls, ElementsAre(std::pair{0, 8}));
  EXPECT_EQ(retries, 0);
}

TEST(SplitRetryTest, SingleItemOutOfMemoryIsNotRetried) {
  FakeRun run({Oom()});
  int retries = 0;
  const std::vector<FailedRange> failed = RunSplittingOnOutOfMemory(
      1, [&](int b, int e) { return run(b, e); }, [&] { ++retries; });
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(run.calls, ElementsAre(std::pair{0, 1}));
  EXPECT_EQ(retries, 0);
}

TEST(SplitRetryTest, EmptyBatchRunsNothing) {
  FakeRun run({});
  EXPECT_THAT(RunSplittingOnOutOfMemory(
                  0, [&](int b, int e) { return run(b, e); }, [] {}),
              IsEmpty());
  EXPECT_THAT(run.calls, IsEmpty());
}

}  // namespace
}  // namespace clipserve
