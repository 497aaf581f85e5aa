#include "server/engine/device_image_preprocessor.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "server/image/image_decoder.h"
#include "server/image/preprocessor.h"
#include "tests/testing/shared_data.h"

namespace clipserve {
namespace {

std::unique_ptr<image::Preprocessor> HostPreprocessor(int size = 224) {
  image::Preprocessor::Options options;
  options.image_size = size;
  return *image::Preprocessor::Create(options);
}

// A seeded random image: smooth gradients plus noise, so both the low and the high
// frequencies of the filter matter.
image::RgbImage RandomImage(int width, int height, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(-40, 40);
  image::RgbImage out;
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const int base =
            (x * 255 / std::max(width, 1) + y * 97 / std::max(height, 1) + c * 60) % 256;
        out.pixels[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(base + noise(rng), 0, 255));
      }
    }
  }
  return out;
}

// The host preprocessor's floats for `image`.
std::vector<float> HostFloats(const image::Preprocessor& host,
                              const image::RgbImageView& image) {
  std::vector<float> out(host.floats_per_image());
  const absl::Status status = host.PreprocessInto(image, absl::MakeSpan(out));
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// Runs every image through the device preprocessor into rows 0..n-1 of a new batch on
// `device` and expects each row to equal the host's floats bit for bit.
void ExpectBitIdentical(const std::vector<image::RgbImage>& images,
                        const torch::Device& device,
                        DeviceImagePreprocessor::Options options = {}) {
  auto host = HostPreprocessor();
  auto pre = DeviceImagePreprocessor::Create(host.get(), device, options);
  ASSERT_TRUE(pre.ok()) << pre.status();
  const int64_t n = static_cast<int64_t>(images.size());
  torch::Tensor batch =
      torch::empty({n, 3, 224, 224}, torch::TensorOptions().device(device));
  std::vector<image::RgbImageView> views(images.begin(), images.end());
  std::vector<int64_t> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = i;
  const absl::Status status = (*pre)->PreprocessInto(views, rows, batch);
  ASSERT_TRUE(status.ok()) << status;
  const torch::Tensor on_host = batch.to(torch::kCPU).contiguous();
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<float> expected = HostFloats(*host, images[i]);
    const float* got = on_host[i].data_ptr<float>();
    int differing = 0;
    for (size_t k = 0; k < expected.size(); ++k) {
      if (std::memcmp(&got[k], &expected[k], sizeof(float)) != 0) ++differing;
    }
    EXPECT_EQ(differing, 0) << "image " << i << " (" << images[i].width << "x"
                            << images[i].height << "): " << differing << " of "
                            << expected.size() << " floats differ";
  }
}

// Shrinking, enlarging, one axis unchanged, odd crops, one-pixel and elongated images:
// every path through the taps.
std::vector<image::RgbImage> ShapeZoo() {
  const std::pair<int, int> sizes[] = {{224, 224}, {640, 480},  {480, 640},  {225, 224},
                                       {224, 301}, {97, 131},   {1, 1},      {1, 500},
                                       {500, 1},   {300, 1000}, {1999, 1501}};
  std::vector<image::RgbImage> images;
  uint32_t seed = 1;
  for (const auto& [w, h] : sizes) images.push_back(RandomImage(w, h, seed++));
  return images;
}

TEST(DeviceImagePreprocessorTest, EqualsHostPreprocessorBitForBitOnCpu) {
  ExpectBitIdentical(ShapeZoo(), torch::kCPU);
}

TEST(DeviceImagePreprocessorTest, BandedPassesGiveTheSameBits) {
  // One source row (horizontal) or one output row (vertical) per piece.
  DeviceImagePreprocessor::Options options;
  options.max_scratch_bytes = 1;
  ExpectBitIdentical({RandomImage(640, 480, 7), RandomImage(97, 500, 8)}, torch::kCPU,
                     options);
}

TEST(DeviceImagePreprocessorTest, EqualsHostPreprocessorOnRealPhotos) {
  std::vector<image::RgbImage> images;
  for (const char* name :
       {"chelsea_q75.jpg", "rocket.jpg", "astronaut.png", "very_wide.png",
        "chelsea_exif_rot6.jpg", "chelsea.webp", "coffee.png"}) {
    const std::string path = testing::SharedPath(std::string("images/") + name);
    ASSERT_FALSE(path.empty());
    std::ifstream file(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(file)),
                            std::istreambuf_iterator<char>());
    auto decoded = image::DecodeImage(bytes, image::DecodeOptions());
    ASSERT_TRUE(decoded.ok()) << name << ": " << decoded.status();
    images.push_back(*std::move(decoded));
  }
  ExpectBitIdentical(images, torch::kCPU);
}

TEST(DeviceImagePreprocessorTest, WritesOnlyTheRowsItIsGiven) {
  auto host = HostPreprocessor();
  auto pre = DeviceImagePreprocessor::Create(host.get(), torch::kCPU, {});
  ASSERT_TRUE(pre.ok());
  const float sentinel = std::numeric_limits<float>::quiet_NaN();
  torch::Tensor batch = torch::full({3, 3, 224, 224}, sentinel);
  const image::RgbImage a = RandomImage(300, 200, 1), b = RandomImage(200, 300, 2);
  const std::vector<image::RgbImageView> views = {a, b};
  const std::vector<int64_t> rows = {2, 0};
  ASSERT_TRUE((*pre)->PreprocessInto(views, rows, batch).ok());
  EXPECT_TRUE(batch[1].isnan().all().item<bool>());
  const std::vector<float> expected_a = HostFloats(*host, a);
  const std::vector<float> expected_b = HostFloats(*host, b);
  EXPECT_EQ(std::memcmp(batch[2].data_ptr<float>(), expected_a.data(),
                        expected_a.size() * sizeof(float)),
            0);
  EXPECT_EQ(std::memcmp(batch[0].data_ptr<float>(), expected_b.data(),
                        expected_b.size() * sizeof(float)),
            0);
}

TEST(DeviceImagePreprocessorTest, RefusesWhatDoesNotFit) {
  auto host = HostPreprocessor();
  EXPECT_EQ(DeviceImagePreprocessor::Create(nullptr, torch::kCPU, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  DeviceImagePreprocessor::Options no_scratch;
  no_scratch.max_scratch_bytes = 0;
  EXPECT_EQ(DeviceImagePreprocessor::Create(host.get(), torch::kCPU, no_scratch)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  auto pre = *DeviceImagePreprocessor::Create(host.get(), torch::kCPU, {});
  const image::RgbImage good = RandomImage(50, 40, 3);
  const std::vector<image::RgbImageView> one = {good};
  const std::vector<int64_t> row0 = {0};
  torch::Tensor batch = torch::zeros({1, 3, 224, 224});
  const auto code = [&](absl::Span<const image::RgbImageView> images,
                        absl::Span<const int64_t> rows, torch::Tensor target) {
    return pre->PreprocessInto(images, rows, target).code();
  };
  EXPECT_EQ(code(one, {}, batch), absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> outside = {1};
  EXPECT_EQ(code(one, outside, batch), absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> negative = {-1};
  EXPECT_EQ(code(one, negative, batch), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(one, row0, torch::zeros({1, 3, 224, 224}, torch::kDouble)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(one, row0, torch::zeros({1, 3, 225, 224})),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(one, row0, torch::Tensor()), absl::StatusCode::kInvalidArgument);
  // A view whose byte count does not match its sides.
  const std::vector<image::RgbImageView> short_view = {
      image::RgbImageView(50, 41, good.pixels)};
  EXPECT_EQ(code(short_view, row0, batch), absl::StatusCode::kInvalidArgument);
  // An image Pillow resizes in another mode than RGB (here a palette image).
  image::RgbImageView palette = good;
  palette.resample = image::ResampleMode::kNearest;
  EXPECT_EQ(code({palette}, row0, batch), absl::StatusCode::kInvalidArgument);
  // Nothing to do is fine.
  EXPECT_EQ(code({}, {}, batch), absl::StatusCode::kOk);
  EXPECT_TRUE(batch.eq(0).all().item<bool>()) << "a refused call wrote to the batch";
}

TEST(DeviceImagePreprocessorTest, EqualsHostPreprocessorBitForBit_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  ExpectBitIdentical(ShapeZoo(), torch::Device(torch::kCUDA, 0));
  DeviceImagePreprocessor::Options banded;
  banded.max_scratch_bytes = 1;
  ExpectBitIdentical({RandomImage(640, 480, 7)}, torch::Device(torch::kCUDA, 0), banded);
}

}  // namespace
}  // namespace clipserve
