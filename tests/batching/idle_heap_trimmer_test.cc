#include "server/common/idle_heap_trimmer.h"

#include <cstdint>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

class IdleHeapTrimmerTest : public ::testing::Test {
 protected:
  // Ticks at `t0_` + `seconds`; whether it trimmed.
  bool TickAt(double seconds, int64_t started, int64_t in_flight) {
    int64_t released = 0;
    const bool trimmed =
        trimmer_.Tick(t0_ + absl::Seconds(seconds), started, in_flight, &released);
    if (trimmed) {
      EXPECT_EQ(released, 4096);
    }
    return trimmed;
  }

  const absl::Time t0_ = absl::FromUnixSeconds(1700000000);
  int trims_ = 0;
  IdleHeapTrimmer trimmer_{absl::Seconds(10), [this] {
                             ++trims_;
                             return int64_t{4096};
                           }};
};

// Once after start-up (the model load freed its buffers), once after each burst, and
// only when nothing has started or been in flight for the whole quiet time.
TEST_F(IdleHeapTrimmerTest, TrimsOncePerQuietSpellAfterActivity) {
  EXPECT_FALSE(TickAt(0, 0, 0));
  EXPECT_FALSE(TickAt(9, 0, 0));
  EXPECT_TRUE(TickAt(10, 0, 0));   // after start-up
  EXPECT_FALSE(TickAt(30, 0, 0));  // nothing happened since
  EXPECT_EQ(trims_, 1);

  EXPECT_FALSE(TickAt(31, 5, 2));  // a burst
  EXPECT_FALSE(TickAt(45, 5, 2));  // calls in flight for long: never while busy
  EXPECT_FALSE(TickAt(46, 5, 0));  // the last call ended: quiet from now
  EXPECT_FALSE(TickAt(50, 6, 0));  // a short call started and ended: quiet again
  EXPECT_FALSE(TickAt(59, 6, 0));
  EXPECT_TRUE(TickAt(60, 6, 0));    // 10 s without a call
  EXPECT_FALSE(TickAt(100, 6, 0));  // once per quiet spell
  EXPECT_EQ(trims_, 2);
}

// A clock that went back (it never should) restarts the quiet time instead of
// reading as a long one.
TEST_F(IdleHeapTrimmerTest, ATimeBeforeTheQuietBeganRestartsIt) {
  EXPECT_FALSE(TickAt(100, 0, 0));
  EXPECT_FALSE(TickAt(50, 0, 0));
  EXPECT_FALSE(TickAt(59, 0, 0));
  EXPECT_TRUE(TickAt(60, 0, 0));
}

// The real trim runs and says what it gave back (glibc: the RSS it dropped by).
TEST(IdleHeapTrimmerDefaultTest, TheDefaultTrimRuns) {
  IdleHeapTrimmer trimmer(absl::ZeroDuration());
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  int64_t released = 0;
  EXPECT_FALSE(trimmer.Tick(t0, 0, 0, &released));
  EXPECT_TRUE(trimmer.Tick(t0, 0, 0, &released));
}

}  // namespace
}  // namespace clipserve
