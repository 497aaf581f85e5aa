#include "server/image/preprocessor.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"
#include "server/image/mode_resize.h"

namespace clipserve::image {
namespace {

constexpr int kMaxImageSize = 4096;

// int(round(excess / 2.0)) in Python 3: halves round to the even neighbour.
int HalfOfRoundedToEven(int excess) {
  const int half = excess / 2;
  if (excess % 2 == 0) return half;
  return half % 2 == 0 ? half : half + 1;
}

}  // namespace

absl::StatusOr<ResizeCropPlan> PlanResizeAndCrop(int width, int height, int size) {
  if (width < 1 || height < 1 || size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resize a ", width, "x", height, " image to ", size));
  }
  const bool portrait = width <= height;
  const int short_side = portrait ? width : height;
  const int long_side = portrait ? height : width;
  // Python's int(size * long / short): exact integer product, correctly rounded true
  // division (both operands are exact doubles), truncation.
  const double new_long = static_cast<double>(int64_t{size} * long_side) / short_side;
  if (new_long >= static_cast<double>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", width, "x", height, " image is too elongated to resize to ", size));
  }
  ResizeCropPlan plan;
  plan.resized_width = portrait ? size : static_cast<int>(new_long);
  plan.resized_height = portrait ? static_cast<int>(new_long) : size;
  plan.crop_left = HalfOfRoundedToEven(plan.resized_width - size);
  plan.crop_top = HalfOfRoundedToEven(plan.resized_height - size);
  return plan;
}

absl::StatusOr<std::unique_ptr<Preprocessor>> Preprocessor::Create(
    const Options& options) {
  if (options.image_size < 1 || options.image_size > kMaxImageSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image_size must be in [1, ", kMaxImageSize, "], got ", options.image_size));
  }
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(options.mean[c]) || !std::isfinite(options.stddev[c]) ||
        options.stddev[c] == 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("channel ", c,
                       ": mean must be finite and stddev finite and "
                       "non-zero, got mean ",
                       options.mean[c], " stddev ", options.stddev[c]));
    }
  }
  return std::unique_ptr<Preprocessor>(new Preprocessor(options));
}

Preprocessor::Preprocessor(const Options& options)
    : options_(options),
      floats_per_image_(int64_t{3} * options.image_size * options.image_size) {
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      // torchvision: ToTensor's img.float().div(255), then Normalize's
      // sub_(mean).div_(std), each a float32 operation.
      const float scaled = static_cast<float>(v) / 255.0f;
      lut_[c][v] = (scaled - options_.mean[c]) / options_.stddev[c];
    }
  }
}

absl::Status Preprocessor::ResizeAndCropInto(const RgbImageView& image,
                                             uint8_t* out) const {
  const absl::Status valid = ValidateRgbView(image);
  if (!valid.ok()) return valid;
  const int size = options_.image_size;
  const absl::StatusOr<ResizeCropPlan> plan =
      PlanResizeAndCrop(image.width, image.height, size);
  if (!plan.ok()) return plan.status();
  return ResizeWindowAsPillow(image, plan->resized_width, plan->resized_height,
                              plan->crop_left, plan->crop_top, size, size, out);
}

absl::StatusOr<RgbImage> Preprocessor::ResizeAndCrop(const RgbImageView& image) const {
  RgbImage out;
  out.width = options_.image_size;
  out.height = options_.image_size;
  out.pixels.resize(static_cast<size_t>(floats_per_image_));
  const absl::Status status = ResizeAndCropInto(image, out.pixels.data());
  if (!status.ok()) return status;
  return out;
}

absl::Status Preprocessor::PreprocessInto(const RgbImageView& image,
                                          absl::Span<float> out) const {
  if (static_cast<int64_t>(out.size()) != floats_per_image_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output holds ", out.size(), " floats, one image needs ", floats_per_image_));
  }
  std::vector<uint8_t> hwc;
  absl::Status status;
  try {
    hwc.resize(static_cast<size_t>(floats_per_image_));
    status = ResizeAndCropInto(image, hwc.data());
  } catch (const std::bad_alloc&) {
    // The resize's scratch (several bytes per source pixel for alpha and CMYK).
    return internal::OutOfMemoryError("resize", "out of memory");
  }
  if (!status.ok()) return status;
  const size_t plane = static_cast<size_t>(floats_per_image_ / 3);
  for (int c = 0; c < 3; ++c) {
    const float* lut = lut_[c].data();
    float* dst = out.data() + c * plane;
    for (size_t i = 0; i < plane; ++i) dst[i] = lut[hwc[i * 3 + c]];
  }
  return absl::OkStatus();
}

absl::Status Preprocessor::PreprocessIntoBatch(const RgbImageView& image,
                                               absl::Span<float> batch,
                                               int64_t index) const {
  const int64_t size = static_cast<int64_t>(batch.size());
  if (size % floats_per_image_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch holds ", size,
                                                   " floats, not a multiple of ",
                                                   floats_per_image_, " per image"));
  }
  const int64_t rows = size / floats_per_image_;
  if (index < 0 || index >= rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("row ", index, " is outside a batch of ", rows));
  }
  return PreprocessInto(image,
                        batch.subspan(static_cast<size_t>(index * floats_per_image_),
                                      static_cast<size_t>(floats_per_image_)));
}

}  // namespace clipserve::image
