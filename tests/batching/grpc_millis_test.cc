#include "server/common/grpc_millis.h"

#include <limits>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(GrpcMillisTest, RoundsUpToWholeMillisecondsAndAtLeastOne) {
  EXPECT_EQ(GrpcMillis(absl::Seconds(20)), 20000);
  EXPECT_EQ(GrpcMillis(absl::Microseconds(1500)), 2);
  EXPECT_EQ(GrpcMillis(absl::Nanoseconds(1)), 1);
  EXPECT_EQ(GrpcMillis(absl::ZeroDuration()), 1);
}

TEST(GrpcMillisTest, InfiniteOrTooLongIsNever) {
  constexpr int kNever = std::numeric_limits<int>::max();
  EXPECT_EQ(GrpcMillis(absl::InfiniteDuration()), kNever);
  EXPECT_EQ(GrpcMillis(absl::Hours(24 * 365)), kNever);
  EXPECT_EQ(GrpcMillis(absl::Milliseconds(kNever)), kNever);
}

}  // namespace
}  // namespace clipserve
