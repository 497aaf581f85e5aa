#ifndef CLIPSERVE_SERVER_IMAGE_MODE_RESIZE_H_
#define CLIPSERVE_SERVER_IMAGE_MODE_RESIZE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// The resizes of the Pillow modes that are not resized as they are (ResampleMode in
// rgb_image.h). Each writes only the window [left, left + window_width) x
// [top, top + window_height) of the out_width x out_height result into `out`
// (window_width * window_height * 3 bytes, HWC RGB8), as ResizeBicubicWindow() does,
// and answers INVALID_ARGUMENT for an inconsistent image or a window outside the
// output (ValidateRgbView(), ValidateResizeWindow()). Thread-safe; blocks for the
// computation.

// Pillow 9.4's resize of a "P" or "1" image, which is NEAREST whatever filter is asked
// for, bit for bit: ImagingScaleAffine's source column for output x is
// int(scale * 0.5 + x * scale) with scale = in / out, the sum accumulated in double one
// step per output pixel as Pillow does (rows alike; past 2^24 output pixels, sizes
// Pillow cannot allocate, the product is computed directly so that the cost stays with
// the window). Palette lookups commute with it, so `image` holds the expanded colors.
absl::Status ResizeNearestWindow(const RgbImageView& image, int out_width, int out_height,
                                 int left, int top, int window_width, int window_height,
                                 uint8_t* out);

// Pillow 9.4's resize(BICUBIC) of an "RGBA" or "LA" image followed by convert("RGB"),
// bit for bit: colors premultiplied by alpha as Pillow's RGBA -> RGBa conversion does
// it (c * a / 255 rounded, MULDIV255), colors and alpha resized with
// ResizeBicubicWindow()'s arithmetic, then divided by the resized alpha as RGBa -> RGBA
// does it (min(255, 255 * c / a) in integers; values with alpha 0 or 255 stay as they
// are); alpha is then dropped. When the size does not change Pillow copies the image
// without the round trip, and so does this. Needs image.resample == kPremultiplied
// (INVALID_ARGUMENT otherwise). Allocates two width * height * 3 scratch buffers.
absl::Status ResizePremultipliedWindow(const RgbImageView& image, int out_width,
                                       int out_height, int left, int top,
                                       int window_width, int window_height, uint8_t* out);

// Pillow 9.4's resize(BICUBIC) of a "CMYK" image followed by convert("RGB"), bit for
// bit: the four channels resized with ResizeBicubicWindow()'s arithmetic, then
// Pillow's cmyk2rgb (R = clip(255 - K - MULDIV255(C, 255 - K)), G and B alike). When
// the size does not change, Pillow copies the image: the window of image.pixels. Needs
// image.resample == kCmyk (INVALID_ARGUMENT otherwise). Allocates two
// width * height * 3 scratch buffers.
absl::Status ResizeCmykWindow(const RgbImageView& image, int out_width, int out_height,
                              int left, int top, int window_width, int window_height,
                              uint8_t* out);

// The resize the reference pipeline applies to `image`, by image.resample:
// ResizeBicubicWindow(), ResizeNearestWindow(), ResizePremultipliedWindow() or
// ResizeCmykWindow().
absl::Status ResizeWindowAsPillow(const RgbImageView& image, int out_width,
                                  int out_height, int left, int top, int window_width,
                                  int window_height, uint8_t* out);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_MODE_RESIZE_H_
