// The Pillow-mode resizes. Expected values were read off Pillow 9.4
// (Image.resize on "P"/"I", "RGBA" and "CMYK" images); the parity test checks whole
// files.

#include "server/image/mode_resize.h"

#include <cstdint>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/image/bicubic_resize.h"
#include "server/image/preprocessor.h"

namespace clipserve::image {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// A width x 1 image whose pixel x is (x, x, x): the output names its source column.
RgbImage Ramp(int width, int height) {
  RgbImage image;
  image.width = width;
  image.height = height;
  for (int i = 0; i < width * height; ++i) {
    image.pixels.insert(image.pixels.end(), 3, static_cast<uint8_t>(i));
  }
  image.resample = ResampleMode::kNearest;
  return image;
}

// The first channel of each output pixel.
std::vector<int> Sources(const std::vector<uint8_t>& rgb) {
  std::vector<int> out;
  for (size_t i = 0; i < rgb.size(); i += 3) out.push_back(rgb[i]);
  return out;
}

TEST(ResizeNearestWindowTest, PicksPillowsSourceColumns) {
  struct Case {
    int in, out;
    std::vector<int> want;
  };
  for (const Case& c : std::vector<Case>{{10, 7, {0, 2, 3, 5, 6, 7, 9}},
                                         {7, 10, {0, 1, 1, 2, 3, 3, 4, 5, 5, 6}},
                                         {5, 3, {0, 2, 4}}}) {
    std::vector<uint8_t> out(static_cast<size_t>(c.out) * 3);
    ASSERT_TRUE(
        ResizeNearestWindow(Ramp(c.in, 1), c.out, 1, 0, 0, c.out, 1, out.data()).ok());
    EXPECT_THAT(Sources(out), ElementsAreArray(c.want)) << c.in << " -> " << c.out;
  }
}

// Pillow steps the source position by in/out once per output pixel; for 2 -> 7 the
// fourth position sums to just under 1.0, where (x + 0.5) * in / out is exactly 1.
TEST(ResizeNearestWindowTest, AccumulatesThePositionAsPillowDoes) {
  std::vector<uint8_t> out(7 * 3);
  ASSERT_TRUE(ResizeNearestWindow(Ramp(2, 1), 7, 1, 0, 0, 7, 1, out.data()).ok());
  EXPECT_THAT(Sources(out), ElementsAre(0, 0, 0, 0, 1, 1, 1));
  ASSERT_TRUE(ResizeNearestWindow(Ramp(1, 2), 1, 7, 0, 0, 1, 7, out.data()).ok());
  EXPECT_THAT(Sources(out), ElementsAre(0, 0, 0, 0, 1, 1, 1));
}

TEST(ResizeNearestWindowTest, WindowIsThatPartOfTheWholeResize) {
  const RgbImage image = Ramp(13, 11);
  std::vector<uint8_t> whole(9 * 8 * 3);
  ASSERT_TRUE(ResizeNearestWindow(image, 9, 8, 0, 0, 9, 8, whole.data()).ok());
  std::vector<uint8_t> window(4 * 3 * 3);
  ASSERT_TRUE(ResizeNearestWindow(image, 9, 8, 2, 5, 4, 3, window.data()).ok());
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 4 * 3; ++x) {
      EXPECT_EQ(window[y * 12 + x], whole[(5 + y) * 27 + 2 * 3 + x]);
    }
  }
  EXPECT_THAT(ResizeNearestWindow(image, 9, 8, 6, 0, 4, 3, window.data()).message(),
              HasSubstr("not inside"));
}

RgbImage Rgba(int width, const std::vector<std::vector<uint8_t>>& pixels) {
  RgbImage image;
  image.width = width;
  image.height = static_cast<int>(pixels.size()) / width;
  for (const auto& p : pixels) {
    image.pixels.insert(image.pixels.end(), p.begin(), p.begin() + 3);
    image.alpha.push_back(p[3]);
  }
  image.resample = ResampleMode::kPremultiplied;
  return image;
}

// Pillow: Image.fromarray(pixels, "RGBA").resize((4, 1), BICUBIC).convert("RGB").
// Transparent white comes out black; straight resizing would give (255, 255, 255),
// (206, 105, 110), (37, 148, 118), (200, 27, 96).
TEST(ResizePremultipliedWindowTest, EqualsPillowsRgbaRoundTrip) {
  const RgbImage image = Rgba(6, {{255, 255, 255, 0},
                                  {255, 255, 255, 0},
                                  {200, 10, 50, 255},
                                  {10, 200, 50, 128},
                                  {90, 90, 250, 60},
                                  {255, 0, 0, 255}});
  std::vector<uint8_t> out(4 * 3);
  ASSERT_TRUE(ResizePremultipliedWindow(image, 4, 1, 0, 0, 4, 1, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(0, 0, 0, 189, 21, 47, 42, 158, 93, 242, 5, 30));
}

TEST(ResizePremultipliedWindowTest, OpaqueImageResizesAsRgb) {
  RgbImage image = Ramp(9, 5);
  image.resample = ResampleMode::kPremultiplied;
  image.alpha.assign(9 * 5, 255);
  std::vector<uint8_t> got(4 * 3 * 3), want(4 * 3 * 3);
  ASSERT_TRUE(ResizePremultipliedWindow(image, 6, 4, 1, 1, 4, 3, got.data()).ok());
  ASSERT_TRUE(
      ResizeBicubicWindow(RgbImageView(9, 5, image.pixels), 6, 4, 1, 1, 4, 3, want.data())
          .ok());
  EXPECT_EQ(got, want);
}

// Image.resize returns a copy when the size does not change: the hidden colors of
// transparent pixels survive, with no premultiplication round trip.
TEST(ResizePremultipliedWindowTest, SameSizeCopiesWithoutTheRoundTrip) {
  const RgbImage image = Rgba(3, {{255, 255, 255, 0}, {10, 20, 30, 7}, {1, 2, 3, 255}});
  std::vector<uint8_t> out(2 * 3);
  ASSERT_TRUE(ResizePremultipliedWindow(image, 3, 1, 0, 0, 2, 1, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(255, 255, 255, 10, 20, 30));
}

TEST(ResizePremultipliedWindowTest, RefusesImagesWithoutAlpha) {
  RgbImage image = Ramp(4, 4);
  std::vector<uint8_t> out(2 * 2 * 3);
  image.resample = ResampleMode::kDirect;
  EXPECT_THAT(ResizePremultipliedWindow(image, 2, 2, 0, 0, 2, 2, out.data()).message(),
              HasSubstr("needs an image with alpha"));
  image.resample = ResampleMode::kPremultiplied;
  image.alpha.assign(15, 255);  // One short.
  EXPECT_THAT(ResizePremultipliedWindow(image, 2, 2, 0, 0, 2, 2, out.data()).message(),
              HasSubstr("alpha values"));
}

// Pillow: Image.fromarray(cmyk, "CMYK").resize((4, 1), BICUBIC).convert("RGB").
// Converting first and resizing the RGB would give (160, 255, 255), (94, 117, 170),
// (87, 64, 0), (72, 112, 136).
TEST(ResizeCmykWindowTest, EqualsPillowsCmykResize) {
  RgbImage image;
  image.width = 6;
  image.height = 1;
  image.resample = ResampleMode::kCmyk;
  image.cmyk = {0,  0,  0,   0,  255, 0, 0, 0,   10,  200, 30, 100,
                90, 90, 250, 60, 0,   0, 0, 255, 128, 64,  32, 16};
  image.pixels = {255, 255, 255, 0, 255, 255, 149, 33,  137,
                  126, 126, 4,   0, 0,   0,   119, 179, 209};  // Its convert("RGB").
  std::vector<uint8_t> out(4 * 3);
  ASSERT_TRUE(ResizeCmykWindow(image, 4, 1, 0, 0, 4, 1, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(156, 255, 255, 113, 96, 167, 97, 83, 45, 101, 126, 141));
  // The same size: Pillow copies, so the window of the converted pixels.
  ASSERT_TRUE(ResizeCmykWindow(image, 6, 1, 2, 0, 4, 1, out.data()).ok());
  EXPECT_THAT(out, ElementsAre(149, 33, 137, 126, 126, 4, 0, 0, 0, 119, 179, 209));
  image.cmyk.pop_back();
  EXPECT_THAT(ResizeCmykWindow(image, 4, 1, 0, 0, 4, 1, out.data()).message(),
              HasSubstr("CMYK values"));
}

// The preprocessor resizes each image with the resize of its mode: the same bytes as
// calling that resize with the preprocessor's plan, and four different results.
TEST(ResizeWindowAsPillowTest, PreprocessorUsesTheResizeOfEachMode) {
  auto preprocessor = Preprocessor::Create({.image_size = 4});
  ASSERT_TRUE(preprocessor.ok());
  const absl::StatusOr<ResizeCropPlan> plan = PlanResizeAndCrop(10, 7, 4);
  ASSERT_TRUE(plan.ok());
  using Resize =
      absl::Status (*)(const RgbImageView&, int, int, int, int, int, int, uint8_t*);
  struct Case {
    ResampleMode mode;
    Resize resize;
  };
  std::set<std::vector<uint8_t>> distinct;
  for (const Case& c : {Case{ResampleMode::kDirect, &ResizeBicubicWindow},
                        Case{ResampleMode::kNearest, &ResizeNearestWindow},
                        Case{ResampleMode::kPremultiplied, &ResizePremultipliedWindow},
                        Case{ResampleMode::kCmyk, &ResizeCmykWindow}}) {
    SCOPED_TRACE(static_cast<int>(c.mode));
    RgbImage image = Ramp(10, 7);
    image.resample = c.mode;
    if (c.mode == ResampleMode::kPremultiplied) {
      for (int i = 0; i < 70; ++i) image.alpha.push_back(static_cast<uint8_t>(i * 3));
    }
    if (c.mode == ResampleMode::kCmyk) {
      for (int i = 0; i < 70; ++i) {
        image.cmyk.insert(image.cmyk.end(), {static_cast<uint8_t>(i), 9, 99,
                                             static_cast<uint8_t>(200 - i)});
      }
    }
    const absl::StatusOr<RgbImage> got = (*preprocessor)->ResizeAndCrop(image);
    ASSERT_TRUE(got.ok()) << got.status();
    std::vector<uint8_t> want(4 * 4 * 3);
    ASSERT_TRUE(c.resize(image, plan->resized_width, plan->resized_height,
                         plan->crop_left, plan->crop_top, 4, 4, want.data())
                    .ok());
    EXPECT_EQ(got->pixels, want);
    distinct.insert(want);
  }
  EXPECT_EQ(distinct.size(), 4u);
}

// A 1 x 200,000 palette image resizes to 224 x 44,800,000: the window's source rows
// are computed directly, not accumulated over 22 million outputs, and still land
// where (y + 0.5) * scale does.
TEST(ResizeNearestWindowTest, ExtremeAspectRatioCostsOnlyTheWindow) {
  const int height = 200'000;
  RgbImage image;
  image.width = 1;
  image.height = height;
  image.resample = ResampleMode::kNearest;
  for (int y = 0; y < height; ++y) {
    image.pixels.insert(image.pixels.end(),
                        {static_cast<uint8_t>(y), static_cast<uint8_t>(y >> 8),
                         static_cast<uint8_t>(y >> 16)});
  }
  const absl::StatusOr<ResizeCropPlan> plan = PlanResizeAndCrop(1, height, 224);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->resized_height, 44'800'000);
  std::vector<uint8_t> out(224 * 224 * 3);
  ASSERT_TRUE(ResizeNearestWindow(image, plan->resized_width, plan->resized_height,
                                  plan->crop_left, plan->crop_top, 224, 224, out.data())
                  .ok());
  for (int y = 0; y < 224; ++y) {
    const uint8_t* p = &out[static_cast<size_t>(y) * 224 * 3];
    const int source = p[0] | (p[1] << 8) | (p[2] << 16);
    const double exact = (plan->crop_top + y + 0.5) * height / plan->resized_height;
    EXPECT_EQ(source, static_cast<int>(exact)) << y;
  }
}

}  // namespace
}  // namespace clipserve::image
