// Properties of the Pillow-equivalent resampler; equality with Pillow itself is in
// image_parity_test.cc.

#include "server/image/bicubic_resize.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/image/image_test_util.h"

namespace clipserve::image {
namespace {

// Pillow's two passes in their plainest form: one channel at a time, every tap.
std::vector<uint8_t> PlainResize(const RgbImage& in, int out_w, int out_h, int left,
                                 int top, int w, int h) {
  const BicubicTaps horizontal = ComputeBicubicTaps(in.width, out_w, left, w);
  const BicubicTaps vertical = ComputeBicubicTaps(in.height, out_h, top, h);
  const auto clip8 = [](int32_t sum) {
    return static_cast<uint8_t>(std::clamp(sum >> kBicubicPrecisionBits, 0, 255));
  };
  constexpr int32_t kHalf = 1 << (kBicubicPrecisionBits - 1);
  std::vector<uint8_t> temp(size_t{3} * w * in.height);
  for (int y = 0; y < in.height; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) {
        int32_t sum = kHalf;
        for (int k = 0; k < horizontal.length[x]; ++k) {
          sum +=
              in.pixels[(size_t{3} * y * in.width) + 3 * (horizontal.start[x] + k) + c] *
              horizontal.weights[horizontal.weights_offset[x] + k];
        }
        temp[(size_t{3} * y * w) + 3 * x + c] = clip8(sum);
      }
    }
  }
  std::vector<uint8_t> out(size_t{3} * w * h);
  for (int y = 0; y < h; ++y) {
    for (int i = 0; i < 3 * w; ++i) {
      int32_t sum = kHalf;
      for (int k = 0; k < vertical.length[y]; ++k) {
        sum += temp[(size_t{3} * (vertical.start[y] + k) * w) + i] *
               vertical.weights[vertical.weights_offset[y] + k];
      }
      out[(size_t{3} * y * w) + i] = clip8(sum);
    }
  }
  return out;
}

// Every instruction set this CPU runs gives the plain loops' bytes: shrinking and
// enlarging, sides of 1 to 3 pixels, windows touching the last source pixel and the
// last output byte (where the vector code reads and writes past a pixel).
TEST(ResizeBicubicTest, EveryInstructionSetGivesThePlainLoopsBytes) {
  std::vector<ResizeIsa> isas = {ResizeIsa::kAuto, ResizeIsa::kPortable};
  if (ResizeIsaSupported(ResizeIsa::kAvx2)) isas.push_back(ResizeIsa::kAvx2);
  std::mt19937 rng(16);
  for (int trial = 0; trial < 400; ++trial) {
    const int limit = trial < 100 ? 4 : 260;
    const int in_w = 1 + rng() % limit, in_h = 1 + rng() % limit;
    const int out_w = 1 + rng() % limit, out_h = 1 + rng() % limit;
    const bool whole = trial % 2 == 0;
    const int w = whole ? out_w : 1 + rng() % out_w;
    const int h = whole ? out_h : 1 + rng() % out_h;
    const int left = rng() % (out_w - w + 1), top = rng() % (out_h - h + 1);
    const RgbImage in = RandomImage(in_w, in_h, 100 + trial);
    const std::vector<uint8_t> want = PlainResize(in, out_w, out_h, left, top, w, h);
    for (const ResizeIsa isa : isas) {
      // Exactly the window's bytes; under ASan, reading past the source image or
      // writing past the resampler's scratch rows fails the test.
      std::vector<uint8_t> got(want.size());
      ASSERT_TRUE(
          ResizeBicubicWindowOn(isa, in, out_w, out_h, left, top, w, h, got.data()).ok());
      ASSERT_EQ(got, want) << "isa " << static_cast<int>(isa) << ": " << in_w << "x"
                           << in_h << " -> " << out_w << "x" << out_h << ", window " << w
                           << "x" << h << "+" << left << "+" << top;
    }
  }
}

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
