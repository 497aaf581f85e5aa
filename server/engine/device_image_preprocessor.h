#ifndef CLIPSERVE_SERVER_ENGINE_DEVICE_IMAGE_PREPROCESSOR_H_
#define CLIPSERVE_SERVER_ENGINE_DEVICE_IMAGE_PREPROCESSOR_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/image/preprocessor.h"
#include "server/image/rgb_image.h"

namespace clipserve {

// image::Preprocessor's resize, center crop and normalization, run as LibTorch tensor
// operations on the model's device, so that on a GPU the CPUs only decode.
//
// The arithmetic is the host preprocessor's, not an approximation of it: the same
// fixed-point bicubic taps (image::ComputeBicubicTaps), exact int32 sums, the horizontal
// pass rounded to 8 bits before the vertical one, and the normalization as a lookup in
// the host preprocessor's own table. Its output is therefore bit-identical to
// image::Preprocessor::PreprocessInto() on every device (tests check this on the CPU,
// and on a GPU in the *_CUDA test).
//
// Per image it runs about a dozen small kernels, reading only the source rows and
// columns the crop needs. A batch's pixels travel to the device in one copy (from
// page-locked memory, non-blocking, on a CUDA device). Immutable after Create();
// thread-safe: work goes to the calling thread's current stream.
class DeviceImagePreprocessor {
 public:
  struct Options {
    // Largest int32 intermediate tensor of either pass, in bytes; a larger one is
    // computed in bands of rows (source rows for the horizontal pass, output rows for
    // the vertical one) that fit. Default 64 MiB: a 12-megapixel photo shrunk to
    // 224 needs about 0.4 GB in one piece, and that much per worker is not worth the
    // handful of kernels saved.
    int64_t max_scratch_bytes = int64_t{64} << 20;
  };

  // `host` supplies the output size and normalization table (copied; `host` need not
  // outlive this object). INVALID_ARGUMENT when `host` is null or max_scratch_bytes < 1;
  // RESOURCE_EXHAUSTED or INTERNAL when the table cannot be copied to the device.
  static absl::StatusOr<std::unique_ptr<DeviceImagePreprocessor>> Create(
      const image::Preprocessor* host, const torch::Device& device,
      const Options& options);

  const torch::Device& device() const { return device_; }

  // Writes image i of `images` as row rows[i] of `batch`, a float32 N x 3 x S x S
  // tensor on device(), leaving its other rows alone. The pixels must stay alive until
  // the call returns. Blocks the caller while it queues the work (on a CUDA device the
  // kernels may still be running when it returns; stream order keeps later work on
  // the same stream after them).
  //
  // INVALID_ARGUMENT when the sizes disagree (images and rows, a row outside the
  // batch, the batch's shape, dtype or device) or an image is inconsistent
  // (image::ValidateRgbView), not resized as RGB by Pillow (resample other than
  // image::ResampleMode::kDirect) or cannot be planned (image::PlanResizeAndCrop);
  // RESOURCE_EXHAUSTED when the device runs out of memory; INTERNAL for other LibTorch
  // errors. Never throws. On error, rows of `batch` may have been partly written.
  absl::Status PreprocessInto(absl::Span<const image::RgbImageView> images,
                              absl::Span<const int64_t> rows, torch::Tensor& batch) const;

 private:
  DeviceImagePreprocessor(int64_t size, const torch::Device& device,
                          const Options& options, torch::Tensor table);

  torch::Device device_;
  Options options_;
  int64_t size_;
  // table_[c][v]: the host preprocessor's normalized float for value v of channel c,
  // a 3 x 256 float32 tensor on device_.
  torch::Tensor table_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_DEVICE_IMAGE_PREPROCESSOR_H_
