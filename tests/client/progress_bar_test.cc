#include "client/progress_bar.h"

#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(ShortDurationTest, TwoUnitsAtMost) {
  EXPECT_EQ(ShortDuration(absl::Milliseconds(400)), "0.4s");
  EXPECT_EQ(ShortDuration(absl::Seconds(42)), "42s");
  EXPECT_EQ(ShortDuration(absl::Seconds(187)), "3m07s");
  EXPECT_EQ(ShortDuration(absl::Seconds(3720)), "1h02m");
  EXPECT_EQ(ShortDuration(absl::Seconds(-3)), "0.0s");
}

TEST(FormatProgressLineTest, CountsRateAndEta) {
  EXPECT_EQ(FormatProgressLine(0.5, 512, 1024, "images", absl::Seconds(10), 10),
            "[#####.....]  50%  512/1024 images  51.2 images/s  ETA 10s");
  EXPECT_EQ(FormatProgressLine(1.0, 1024, 1024, "images", absl::Seconds(20), 10),
            "[##########] 100%  1024/1024 images  51.2 images/s  in 20s");
}

TEST(FormatProgressLineTest, UnknownTotalAndNoTimeYet) {
  EXPECT_EQ(FormatProgressLine(0.25, 7, 0, "requests", absl::ZeroDuration(), 4),
            "[#...]  25%  7 requests");
  EXPECT_EQ(FormatProgressLine(-1, 0, 0, "requests", absl::ZeroDuration(), 4),
            "[....]   0%  0 requests");
  EXPECT_EQ(FormatProgressLine(7, 0, 0, "x", absl::ZeroDuration(), 2),
            "[##] 100%  0 x  in 0.0s");
}

TEST(ProgressBarTest, DisabledBarWritesNothing) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    ProgressBar bar(false, 10, "images", out);
    bar.Update(5);
    bar.Finish();
  }
  EXPECT_EQ(std::ftell(out), 0);
  std::fclose(out);
}

TEST(ProgressBarTest, EnabledBarDrawsAndEndsTheLine) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    ProgressBar bar(true, 4, "images", out);
    bar.Update(1);
    bar.Update(4);
  }  // Finish() in the destructor
  std::rewind(out);
  char buffer[512] = {};
  const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, out);
  const std::string text(buffer, n);
  std::fclose(out);
  EXPECT_EQ(text.front(), '\r');
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text.find("4/4 images"), std::string::npos) << text;
  EXPECT_NE(text.find("100%"), std::string::npos) << text;
}

}  // namespace
}  // namespace clipserve
