#ifndef CLIPSERVE_SERVER_IMAGE_RGB_IMAGE_H_
#define CLIPSERVE_SERVER_IMAGE_RGB_IMAGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace clipserve::image {

// Largest width * height the image unit accepts by default: 40 megapixels, that is 120 MB
// of RGB8. Larger than any camera photo a client should send for a 224x224 model input,
// small enough that a few concurrent worst-case requests fit in a server's memory.
inline constexpr int64_t kDefaultMaxPixels = 40'000'000;

// How the reference pipeline resizes an image. torchvision's Resize runs on the image
// in the mode Pillow's Image.open() gave it, before convert("RGB"), and Pillow's resize
// depends on that mode (Image.resize in Pillow 9.4):
// - kDirect: "RGB" and "L" (and clipserve's 8-bit reading of 16-bit gray): the pixels
//   are resized as they are. Also every raw RGB8 image a client sends.
// - kNearest: "P" (palette) and "1" (bilevel): Pillow always resizes these with
//   NEAREST, whatever filter is asked for.
// - kPremultiplied: "RGBA" and "LA": Pillow multiplies the colors by alpha ("RGBa",
//   "La"), resizes colors and alpha, divides by the resized alpha, and convert("RGB")
//   then drops alpha. Fully transparent areas come out black, whatever color they hide.
// - kCmyk: "CMYK" (JPEG): Pillow resizes the four channels and converts to RGB after.
enum class ResampleMode : uint8_t { kDirect, kNearest, kPremultiplied, kCmyk };

// A decoded image: `height` rows of `width` pixels, each pixel 3 bytes R, G, B (HWC,
// interleaved, no row padding), so pixels.size() == width * height * 3: what Pillow's
// convert("RGB") gives, alpha dropped. `resample` says how to resize it. With
// kPremultiplied, `alpha` holds the width * height alpha values (row-major); with
// kCmyk, `cmyk` holds width * height * 4 values C, M, Y, K as Pillow holds them (its
// convert("RGB") gives R = 255 - K - C * (255 - K) / 255, rounded and clipped); both
// are empty otherwise. It owns its pixels; a plain value type (copyable, movable, not
// synchronized).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
  ResampleMode resample = ResampleMode::kDirect;
  std::vector<uint8_t> alpha;
  std::vector<uint8_t> cmyk;
};

// A read-only view of RGB8 pixels laid out as in RgbImage. It does not own the pixels,
// which must outlive it. Converts implicitly from RgbImage so that functions taking a
// view accept either. A view may be inconsistent (size mismatch, zero sides): every
// function taking one validates it with ValidateRgbView() and answers INVALID_ARGUMENT.
struct RgbImageView {
  RgbImageView() = default;
  RgbImageView(int width, int height, absl::Span<const uint8_t> pixels)
      : width(width), height(height), pixels(pixels) {}
  // NOLINTNEXTLINE(google-explicit-constructor): a view of an image, like string_view.
  RgbImageView(const RgbImage& image)
      : width(image.width),
        height(image.height),
        pixels(image.pixels),
        resample(image.resample),
        alpha(image.alpha),
        cmyk(image.cmyk) {}

  int width = 0;
  int height = 0;
  absl::Span<const uint8_t> pixels;
  ResampleMode resample = ResampleMode::kDirect;
  // width * height values with kPremultiplied, empty otherwise.
  absl::Span<const uint8_t> alpha;
  // width * height * 4 values with kCmyk, empty otherwise.
  absl::Span<const uint8_t> cmyk;
};

// OK when `view` has width >= 1, height >= 1, exactly width * height * 3 bytes of
// pixels, width * height alpha values with kPremultiplied and width * height * 4 CMYK
// values with kCmyk (none otherwise); INVALID_ARGUMENT naming the mismatch otherwise.
// Thread-safe; never blocks.
absl::Status ValidateRgbView(const RgbImageView& view);

// The entry point for pixels a client decoded itself: validates `width` and `height`
// (each >= 1, and width * height <= max_pixels) and that `pixels` holds exactly
// width * height * 3 bytes, then returns a view of them (no copy; `pixels` must outlive
// the view). INVALID_ARGUMENT, with the reason in the message, otherwise. The 64-bit
// sides let callers pass wire values unchecked. Thread-safe; never blocks.
absl::StatusOr<RgbImageView> RawRgbView(absl::Span<const uint8_t> pixels, int64_t width,
                                        int64_t height,
                                        int64_t max_pixels = kDefaultMaxPixels);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_RGB_IMAGE_H_
