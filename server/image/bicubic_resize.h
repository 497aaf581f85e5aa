#ifndef CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_
#define CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// Pillow 9.4's Image.resize((out_width, out_height), Image.BICUBIC) on an RGB image,
// bit for bit (image.resample and image.alpha are not consulted: mode_resize.h has the
// resizes of the other Pillow modes): ImagingResample's separable two-pass filter
// (horizontal pass first, its result rounded and clipped to 8 bits, then vertical),
// antialiased (support 2 * scale when shrinking), Keys cubic with a = -0.5, per-output
// coefficients normalized to sum 1, then to fixed point with 22 fractional bits
// (PRECISION_BITS = 32 - 8 - 2) and Pillow's rounding, source windows rounded as Pillow
// rounds them. An axis whose size does not change is copied, as Pillow skips that pass.
//
// Writes only the window [left, left + window_width) x [top, top + window_height) of
// the out_width x out_height result into `out` (window_width * window_height * 3 bytes,
// HWC RGB8), computing nothing outside it: a resize followed by a crop costs only the
// crop. Coefficients are built per call (one table per axis, integer weights); the
// inner loops are vectorized integer multiply-adds (see ResizeIsa).
//
// INVALID_ARGUMENT when `image` is inconsistent (ValidateRgbView()), an output side is
// < 1, or the window is empty or not inside the output. Blocks for the computation;
// thread-safe (no mutable shared state); allocates O(input width + output size) scratch.
absl::Status ResizeBicubicWindow(const RgbImageView& image, int out_width, int out_height,
                                 int left, int top, int window_width, int window_height,
                                 uint8_t* out);

// OK when the window [left, left + window_width) x [top, top + window_height) is
// non-empty and inside an out_width x out_height output (both sides >= 1);
// INVALID_ARGUMENT naming the window otherwise. Every windowed resize checks it.
absl::Status ValidateResizeWindow(int out_width, int out_height, int left, int top,
                                  int window_width, int window_height);

// The instruction sets the resampler is compiled for. Every one gives the same bits;
// kAuto, what ResizeBicubicWindow() uses, is the widest this CPU runs (AVX2 on x86-64
// CPUs that have it, else the portable build: SSE2 on x86-64).
enum class ResizeIsa { kAuto, kPortable, kAvx2 };

// Whether this CPU (and this build) can run `isa`. Thread-safe.
bool ResizeIsaSupported(ResizeIsa isa);

// ResizeBicubicWindow() on a chosen instruction set, for tests and benchmarks that
// compare them; FAILED_PRECONDITION when !ResizeIsaSupported(isa).
absl::Status ResizeBicubicWindowOn(ResizeIsa isa, const RgbImageView& image,
                                   int out_width, int out_height, int left, int top,
                                   int window_width, int window_height, uint8_t* out);

// Fractional bits of the fixed-point weights: Pillow's PRECISION_BITS, 32 - 8 - 2 (8
// bits of result, 2 of headroom for negative lobes and overshoot).
inline constexpr int kBicubicPrecisionBits = 22;

// The weights ResizeBicubicWindow() applies along one axis, for the outputs
// [first, first + count) of an in_size -> out_size resize. Output i reads length[i]
// consecutive source positions from start[i] and weights them by
// weights[weights_offset[i] + k]; its 8-bit value is
//   clamp((2^21 + sum_k source[start[i] + k] * weight_k) >> 22, 0, 255)
// in int32 arithmetic (the sums cannot overflow). An axis whose size does not change
// gets one tap of weight 2^22 per output, which leaves values as they are.
struct BicubicTaps {
  std::vector<int> start;
  std::vector<int> length;
  std::vector<int> weights_offset;
  std::vector<int32_t> weights;
};

// For callers that run the same arithmetic elsewhere (the engine's device-side
// resize). Requires in_size >= 1, out_size >= 1 and [first, first + count) inside
// [0, out_size). Thread-safe.
BicubicTaps ComputeBicubicTaps(int in_size, int out_size, int first, int count);

// The source positions [begin, end) that `taps` read together; begin == end == 0 when
// they read none. Thread-safe.
struct SourceRange {
  int begin = 0;
  int end = 0;
};
SourceRange TapsSourceRange(const BicubicTaps& taps);

// The whole out_width x out_height result of ResizeBicubicWindow(); also
// INVALID_ARGUMENT when that is more than kDefaultMaxPixels pixels.
absl::StatusOr<RgbImage> ResizeBicubic(const RgbImageView& image, int out_width,
                                       int out_height);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_
