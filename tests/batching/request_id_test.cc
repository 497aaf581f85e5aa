#include "server/common/request_id.h"

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(RequestIdTest, VisibleAsciiUpTo128BytesIsValid) {
  EXPECT_TRUE(IsValidRequestId("a"));
  EXPECT_TRUE(IsValidRequestId("3f2a9c1e-7b4d-4e8a-9f00-0c1d2e3f4a5b"));
  EXPECT_TRUE(IsValidRequestId("!~\"=:/"));
  EXPECT_TRUE(IsValidRequestId(std::string(kMaxRequestIdBytes, 'x')));
}

TEST(RequestIdTest, EmptyLongSpacedControlOrNonAsciiIsInvalid) {
  EXPECT_FALSE(IsValidRequestId(""));
  EXPECT_FALSE(IsValidRequestId(std::string(kMaxRequestIdBytes + 1, 'x')));
  EXPECT_FALSE(IsValidRequestId("a b"));
  EXPECT_FALSE(IsValidRequestId("a\nrpc=Forged"));
  EXPECT_FALSE(IsValidRequestId(std::string("a\0b", 3)));
  EXPECT_FALSE(IsValidRequestId("\x7f"));
  EXPECT_FALSE(IsValidRequestId("caf\xc3\xa9"));
}

TEST(RequestIdTest, NewIdsAreValidHexAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewRequestId();
    EXPECT_THAT(id, ::testing::MatchesRegex("[0-9a-f]{16}"));
    EXPECT_TRUE(IsValidRequestId(id));
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

}  // namespace
}  // namespace clipserve
