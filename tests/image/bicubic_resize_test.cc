// Properties of the Pillow-equivalent resampler; equality with Pillow itself is in
// image_parity_test.cc.

#include "server/image/bicubic_resize.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/image/image_test_util.h"

namespace clipserve::image {
namespace {

// Computing only a window gives exactly that region of the whole resize, for
// shrinking, enlarging and mixed axes.
TEST(ResizeBicubicTest, WindowEqualsCropOfFullResize) {
  struct Case {
    int in_w, in_h, out_w, out_h;
  };
  for (const Case& c : std::vector<Case>{{97, 61, 40, 30},
                                         {40, 30, 97, 61},
                                         {300, 20, 60, 70},
                                         {1, 1, 9, 5},
                                         {500, 400, 224, 179}}) {
    SCOPED_TRACE(::testing::Message()
                 << c.in_w << "x" << c.in_h << " -> " << c.out_w << "x" << c.out_h);
    const RgbImage in = RandomImage(c.in_w, c.in_h, 11);
    const absl::StatusOr<RgbImage> full = ResizeBicubic(in, c.out_w, c.out_h);
    ASSERT_TRUE(full.ok()) << full.status();
    std::mt19937 rng(12);
    for (int trial = 0; trial < 20; ++trial) {
      const int w = 1 + rng() % c.out_w, h = 1 + rng() % c.out_h;
      const int left = rng() % (c.out_w - w + 1), top = rng() % (c.out_h - h + 1);
      std::vector<uint8_t> window(size_t{3} * w * h);
      ASSERT_TRUE(
          ResizeBicubicWindow(in, c.out_w, c.out_h, left, top, w, h, window.data()).ok());
      for (int y = 0; y < h; ++y) {
        const auto row = full->pixels.begin() + ((top + y) * c.out_w + left) * 3;
        ASSERT_TRUE(std::equal(row, row + w * 3, window.begin() + y * w * 3))
            << "window " << w << "x" << h << "+" << left << "+" << top << " row " << y;
      }
    }
  }
}

// Pillow's coefficients are normalized, so flat areas keep their exact value.
TEST(ResizeBicubicTest, UniformImagesStayUniform) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 30; ++trial) {
    const int in_w = 1 + rng() % 300, in_h = 1 + rng() % 300;
    const int out_w = 1 + rng() % 300, out_h = 1 + rng() % 300;
    const uint8_t value = static_cast<uint8_t>(rng());
    RgbImage in;
    in.width = in_w;
    in.height = in_h;
    in.pixels.assign(size_t{3} * in_w * in_h, value);
    const absl::StatusOr<RgbImage> out = ResizeBicubic(in, out_w, out_h);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_THAT(out->pixels, ::testing::Each(value))
        << in_w << "x" << in_h << " -> " << out_w << "x" << out_h;
  }
}

TEST(ResizeBicubicTest, SameSizeIsIdentity) {
  const RgbImage in = RandomImage(31, 17, 14);
  const absl::StatusOr<RgbImage> out = ResizeBicubic(in, 31, 17);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->pixels, in.pixels);
}

TEST(ResizeBicubicTest, RejectsBadArguments) {
  const RgbImage in = RandomImage(8, 8, 15);
  std::vector<uint8_t> out(3 * 8 * 8);
  EXPECT_EQ(ResizeBicubic(in, 0, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResizeBicubic(in, 100000, 100000).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResizeBicubicWindow(in, 8, 8, 1, 0, 8, 8, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResizeBicubicWindow(in, 8, 8, 0, -1, 4, 4, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResizeBicubicWindow(in, 8, 8, 0, 0, 0, 4, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  RgbImage broken = in;
  broken.pixels.resize(5);
  EXPECT_EQ(ResizeBicubic(broken, 4, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve::image
