#ifndef CLIPSERVE_SERVER_IMAGE_PREPROCESSOR_H_
#define CLIPSERVE_SERVER_IMAGE_PREPROCESSOR_H_

#include <array>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// Where torchvision's Resize(size, BICUBIC) + CenterCrop(size) put a width x height
// image: the resized size (the shorter side becomes `size`, the longer
// int(size * long / short), as torchvision 0.14's _compute_resized_output_size) and the
// crop's top-left corner in it (int(round((resized - size) / 2.0)), Python's
// round-half-to-even). The crop never needs padding: the resized image is at least
// size x size.
struct ResizeCropPlan {
  int resized_width = 0;
  int resized_height = 0;
  int crop_left = 0;
  int crop_top = 0;
};

// INVALID_ARGUMENT when a side or `size` is < 1, or the longer resized side would not
// fit in an int (an aspect ratio above ~9.6 million : 1 at size 224). Thread-safe.
absl::StatusOr<ResizeCropPlan> PlanResizeAndCrop(int width, int height, int size);

// CLIP image preprocessing on decoded RGB8 images, equal to OpenAI's
//   Compose([Resize(S, InterpolationMode.BICUBIC), CenterCrop(S),
//            _convert_image_to_rgb, ToTensor(), Normalize(mean, std)])
// (open_clip's is the same) applied to the image Image.open() gives, with torchvision
// 0.14 and Pillow 9.4: the uint8 image after the crop is bit-exact, resized the way
// Pillow resizes the image's mode before the RGB conversion (image.resample;
// bicubic_resize.h, mode_resize.h), and each float is computed in float32 as torch
// does it, ((v / 255) - mean[c]) / std[c]. Output is CHW float32 (3 x S x S),
// channel-major, the layout of one row of an N x 3 x S x S batch tensor.
//
// No tensors here: callers own the float buffers (another layer wraps them). Immutable
// after Create(); every method is const and thread-safe, and blocks the caller for the
// computation (about 1 ms per image at S = 224 for photo-sized inputs).
class Preprocessor {
 public:
  struct Options {
    // Output side S, in pixels: the shorter side is resized to it and the center
    // S x S square is kept. 224 for ViT-B/32, ViT-B/16, ViT-L/14 and RN50.
    int image_size = 224;
    // Per-channel (R, G, B) mean and standard deviation subtracted from and divided
    // into values scaled to [0, 1]. Defaults: OpenAI CLIP's, which open_clip and Hugging
    // Face CLIP checkpoints use too.
    std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
    std::array<float, 3> stddev = {0.26862954f, 0.26130258f, 0.27577711f};
  };

  // INVALID_ARGUMENT when image_size is outside [1, 4096] or a mean or stddev is not
  // finite or a stddev is zero.
  static absl::StatusOr<std::unique_ptr<Preprocessor>> Create(const Options& options);

  const Options& options() const { return options_; }

  // The float PreprocessInto() writes for 8-bit value `v` of channel `c` (0 R, 1 G,
  // 2 B; outside that range is undefined): (float(v) / 255 - mean[c]) / stddev[c].
  float NormalizedValue(int c, uint8_t v) const { return lut_[c][v]; }

  // Floats one image occupies: 3 * S * S.
  int64_t floats_per_image() const { return floats_per_image_; }

  // The uint8 S x S image after resize and center crop (before scaling and
  // normalization), for parity tests and debugging. INVALID_ARGUMENT when `image` is
  // inconsistent (ValidateRgbView()) or PlanResizeAndCrop() fails.
  absl::StatusOr<RgbImage> ResizeAndCrop(const RgbImageView& image) const;

  // Writes the normalized CHW floats of `image` to `out`, which must hold exactly
  // floats_per_image() floats (INVALID_ARGUMENT otherwise, as for ResizeAndCrop()).
  // `out` is untouched on error.
  absl::Status PreprocessInto(const RgbImageView& image, absl::Span<float> out) const;

  // Batched form: writes `image` as row `index` of `batch`, a caller-owned N x 3 x S x S
  // buffer (batch.size() must be a multiple of floats_per_image()), touching no other
  // row, so workers may fill different rows of one buffer concurrently.
  // INVALID_ARGUMENT when `index` is outside [0, N) or as for PreprocessInto().
  absl::Status PreprocessIntoBatch(const RgbImageView& image, absl::Span<float> batch,
                                   int64_t index) const;

 private:
  explicit Preprocessor(const Options& options);

  absl::Status ResizeAndCropInto(const RgbImageView& image, uint8_t* out) const;

  Options options_;
  int64_t floats_per_image_;
  // lut_[c][v] = (float(v) / 255 - mean[c]) / stddev[c], in float32 like torch.
  std::array<std::array<float, 256>, 3> lut_;
};

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_PREPROCESSOR_H_
