#ifndef CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_
#define CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// Pillow 9.4's Image.resize((out_width, out_height), Image.BICUBIC) on an RGB image,
// bit for bit: ImagingResample's separable two-pass filter (horizontal pass first, its
// result rounded and clipped to 8 bits, then vertical), antialiased (support 2 * scale
// when shrinking), Keys cubic with a = -0.5, per-output coefficients normalized to sum
// 1, then to fixed point with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2) and
// Pillow's rounding, source windows rounded as Pillow rounds them. An axis whose size
// does not change is copied, as Pillow skips that pass.
//
// Writes only the window [left, left + window_width) x [top, top + window_height) of
// the out_width x out_height result into `out` (window_width * window_height * 3 bytes,
// HWC RGB8), computing nothing outside it: a resize followed by a crop costs only the
// crop. Coefficients are built per call (one table per axis, integer weights) and the
// inner loops are integer multiply-adds over contiguous memory.
//
// INVALID_ARGUMENT when `image` is inconsistent (ValidateRgbView()), an output side is
// < 1, or the window is empty or not inside the output. Blocks for the computation;
// thread-safe (no shared state); allocates O(input width + output size) scratch.
absl::Status ResizeBicubicWindow(const RgbImageView& image, int out_width, int out_height,
                                 int left, int top, int window_width, int window_height,
                                 uint8_t* out);

// The whole out_width x out_height result of ResizeBicubicWindow(); also
// INVALID_ARGUMENT when that is more than kDefaultMaxPixels pixels.
absl::StatusOr<RgbImage> ResizeBicubic(const RgbImageView& image, int out_width,
                                       int out_height);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_BICUBIC_RESIZE_H_
