#include "server/image/preprocessor.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/image/image_test_util.h"

namespace clipserve::image {
namespace {

using ::testing::Each;
using ::testing::HasSubstr;

std::unique_ptr<Preprocessor> MakePreprocessor(Preprocessor::Options options = {}) {
  auto created = Preprocessor::Create(options);
  EXPECT_TRUE(created.ok()) << created.status();
  return created.ok() ? *std::move(created) : nullptr;
}

TEST(PlanResizeAndCropTest, MatchesTorchvisionArithmetic) {
  struct Case {
    int width, height, size;
    int resized_width, resized_height, left, top;
  };
  // Expected values computed with torchvision 0.14: _compute_resized_output_size and
  // CenterCrop's int(round((h - size) / 2.0)), halves rounding to even.
  const std::vector<Case> cases = {
      {451, 300, 224, 336, 224, 56, 0},  // int(224 * 451 / 300) = int(336.75)
      {300, 451, 224, 224, 336, 0, 56},      {224, 224, 224, 224, 224, 0, 0},
      {225, 224, 224, 225, 224, 0, 0},  // round(0.5) = 0
      {227, 224, 224, 227, 224, 2, 0},  // round(1.5) = 2
      {229, 224, 224, 229, 224, 2, 0},  // round(2.5) = 2
      {231, 224, 224, 231, 224, 4, 0},  // round(3.5) = 4
      {4000, 30, 224, 29866, 224, 14821, 0}, {1, 1, 224, 224, 224, 0, 0},
      {640, 427, 224, 335, 224, 56, 0},  // int(335.737...)
      {1411, 1411, 224, 224, 224, 0, 0},     {3, 1000, 7, 7, 2333, 0, 1163},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.width << "x" << c.height << " -> " << c.size);
    const absl::StatusOr<ResizeCropPlan> plan =
        PlanResizeAndCrop(c.width, c.height, c.size);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->resized_width, c.resized_width);
    EXPECT_EQ(plan->resized_height, c.resized_height);
    EXPECT_EQ(plan->crop_left, c.left);
    EXPECT_EQ(plan->crop_top, c.top);
  }
}

TEST(PlanResizeAndCropTest, RejectsEmptyAndExtremeShapes) {
  EXPECT_EQ(PlanResizeAndCrop(0, 5, 224).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanResizeAndCrop(5, 5, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<ResizeCropPlan> plan = PlanResizeAndCrop(20'000'000, 1, 224);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("too elongated"));
}

TEST(PreprocessorTest, CreateValidatesOptions) {
  EXPECT_NE(MakePreprocessor(), nullptr);
  Preprocessor::Options options;
  options.image_size = 0;
  EXPECT_EQ(Preprocessor::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.image_size = 4097;
  EXPECT_EQ(Preprocessor::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.stddev[1] = 0.0f;
  EXPECT_EQ(Preprocessor::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.mean[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Preprocessor::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PreprocessorTest, DefaultsAreOpenAiClip) {
  const Preprocessor::Options options;
  EXPECT_EQ(options.image_size, 224);
  EXPECT_FLOAT_EQ(options.mean[0], 0.48145466f);
  EXPECT_FLOAT_EQ(options.stddev[2], 0.27577711f);
  EXPECT_EQ(MakePreprocessor()->floats_per_image(), 3 * 224 * 224);
}

// A uniform image stays uniform through the resize (Pillow's normalized weights), and
// each channel's floats are torch's float32 ((v / 255) - mean) / std.
TEST(PreprocessorTest, NormalizesLikeTorch) {
  const auto preprocessor = MakePreprocessor();
  const Preprocessor::Options& o = preprocessor->options();
  for (int v : {0, 1, 128, 254, 255}) {
    SCOPED_TRACE(v);
    RgbImage image;
    image.width = 300;
    image.height = 451;
    for (int i = 0; i < 300 * 451; ++i) {
      image.pixels.insert(image.pixels.end(),
                          {uint8_t(v), uint8_t(255 - v), uint8_t(v / 2)});
    }
    std::vector<float> out(preprocessor->floats_per_image());
    ASSERT_TRUE(preprocessor->PreprocessInto(image, absl::MakeSpan(out)).ok());
    const int values[3] = {v, 255 - v, v / 2};
    const size_t plane = 224 * 224;
    for (int c = 0; c < 3; ++c) {
      const float want =
          (static_cast<float>(values[c]) / 255.0f - o.mean[c]) / o.stddev[c];
      const std::vector<float> channel(out.begin() + c * plane,
                                       out.begin() + (c + 1) * plane);
      EXPECT_THAT(channel, Each(want)) << "channel " << c;
    }
  }
}

TEST(PreprocessorTest, ImageAlreadyAtSizeIsUnchanged) {
  const auto preprocessor = MakePreprocessor();
  const RgbImage image = RandomImage(224, 224, 1);
  const absl::StatusOr<RgbImage> out = preprocessor->ResizeAndCrop(image);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->pixels, image.pixels);
}

// Only the short side changes: a 224 x 300 image is cropped, not resampled.
TEST(PreprocessorTest, ShortSideAtSizeIsOnlyCropped) {
  const auto preprocessor = MakePreprocessor();
  const RgbImage image = RandomImage(224, 300, 2);
  const absl::StatusOr<RgbImage> out = preprocessor->ResizeAndCrop(image);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<uint8_t> rows(image.pixels.begin() + 38 * 224 * 3,
                                  image.pixels.begin() + (38 + 224) * 224 * 3);
  EXPECT_EQ(out->pixels, rows);  // crop_top = round(76 / 2) = 38
}

TEST(PreprocessorTest, InconsistentImagesAreInvalidArgument) {
  const auto preprocessor = MakePreprocessor();
  RgbImage image = RandomImage(10, 10, 3);
  image.pixels.pop_back();
  EXPECT_EQ(preprocessor->ResizeAndCrop(image).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> out(preprocessor->floats_per_image(), 7.0f);
  const absl::Status status = preprocessor->PreprocessInto(image, absl::MakeSpan(out));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("needs 300 bytes, got 299"));
  EXPECT_THAT(out, Each(7.0f));  // Untouched on error.
  RgbImage empty;
  EXPECT_EQ(preprocessor->ResizeAndCrop(empty).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PreprocessorTest, OutputSpanMustFitExactly) {
  const auto preprocessor = MakePreprocessor();
  const RgbImage image = RandomImage(50, 40, 4);
  std::vector<float> out(preprocessor->floats_per_image() + 1);
  EXPECT_EQ(preprocessor->PreprocessInto(image, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(preprocessor->PreprocessInto(image, absl::MakeSpan(out).subspan(2)).code(),
            absl::StatusCode::kInvalidArgument);
}

// Rows of a batch equal single results, and writing a row touches no other.
TEST(PreprocessorTest, BatchRowsEqualSingleResults) {
  Preprocessor::Options options;
  options.image_size = 32;
  const auto preprocessor = MakePreprocessor(options);
  const int64_t per_image = preprocessor->floats_per_image();
  const std::vector<RgbImage> images = {RandomImage(40, 33, 5), RandomImage(17, 90, 6),
                                        RandomImage(32, 32, 7)};
  std::vector<float> batch(per_image * 3, -99.0f);
  ASSERT_TRUE(
      preprocessor->PreprocessIntoBatch(images[1], absl::MakeSpan(batch), 1).ok());
  EXPECT_THAT(std::vector<float>(batch.begin(), batch.begin() + per_image), Each(-99.0f));
  EXPECT_THAT(std::vector<float>(batch.begin() + 2 * per_image, batch.end()),
              Each(-99.0f));
  ASSERT_TRUE(
      preprocessor->PreprocessIntoBatch(images[0], absl::MakeSpan(batch), 0).ok());
  ASSERT_TRUE(
      preprocessor->PreprocessIntoBatch(images[2], absl::MakeSpan(batch), 2).ok());
  for (int i = 0; i < 3; ++i) {
    std::vector<float> single(per_image);
    ASSERT_TRUE(preprocessor->PreprocessInto(images[i], absl::MakeSpan(single)).ok());
    EXPECT_EQ(std::vector<float>(batch.begin() + i * per_image,
                                 batch.begin() + (i + 1) * per_image),
              single)
        << "row " << i;
  }
  for (int64_t index : {int64_t{-1}, int64_t{3}}) {
    EXPECT_EQ(
        preprocessor->PreprocessIntoBatch(images[0], absl::MakeSpan(batch), index).code(),
        absl::StatusCode::kInvalidArgument);
  }
  std::vector<float> ragged(per_image * 2 + 5);
  EXPECT_THAT(
      preprocessor->PreprocessIntoBatch(images[0], absl::MakeSpan(ragged), 0).message(),
      HasSubstr("not a multiple"));
}

TEST(RawRgbViewTest, ValidatesClientPixels) {
  const std::vector<uint8_t> pixels(2 * 3 * 3, 9);
  const absl::StatusOr<RgbImageView> view = RawRgbView(pixels, 2, 3);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->width, 2);
  EXPECT_EQ(view->height, 3);
  EXPECT_EQ(view->pixels.data(), pixels.data());  // No copy.

  EXPECT_THAT(RawRgbView(pixels, 0, 3).status().message(), HasSubstr(">= 1"));
  EXPECT_THAT(RawRgbView(pixels, 2, -3).status().message(), HasSubstr(">= 1"));
  EXPECT_THAT(RawRgbView(pixels, 3, 3).status().message(),
              HasSubstr("needs 27 bytes, got 18"));
  EXPECT_THAT(RawRgbView({}, 1, 1).status().message(), HasSubstr("needs 3 bytes, got 0"));
  EXPECT_THAT(RawRgbView(pixels, int64_t{1} << 40, int64_t{1} << 40).status().message(),
              HasSubstr("exceeds the limit"));
  EXPECT_THAT(RawRgbView(pixels, 2, 3, /*max_pixels=*/5).status().message(),
              HasSubstr("exceeds the limit of 5 pixels"));

  // The view feeds the preprocessor like a decoded image.
  const auto preprocessor = MakePreprocessor();
  EXPECT_TRUE(preprocessor->ResizeAndCrop(*view).ok());
}

}  // namespace
}  // namespace clipserve::image
