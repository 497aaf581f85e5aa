#include "server/image/mode_resize.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "server/image/bicubic_resize.h"

namespace clipserve::image {
namespace {

// Pillow's COORD(): -1 below zero, else truncation.
int Coord(double v) { return v < 0.0 ? -1 : static_cast<int>(v); }

// The source index Pillow's ImagingScaleAffine reads for outputs [first, first + count)
// of an in_size -> out_size NEAREST resize, -1 where it reads none. The position is
// accumulated from output 0, as Pillow does it, so that rounding matches.
std::vector<int> NearestSources(int in_size, int out_size, int first, int count) {
  std::vector<int> sources(static_cast<size_t>(count));
  const double scale = static_cast<double>(in_size) / out_size;
  double position = scale * 0.5;  // a[2] + a[0] * 0.5 with a[2] = 0.
  for (int i = 0; i < first + count; ++i) {
    if (i >= first) {
      const int source = Coord(position);
      sources[i - first] = source >= 0 && source < in_size ? source : -1;
    }
    position += scale;
  }
  return sources;
}

// MULDIV255(a, b): a * b / 255 rounded, in Pillow's integer form.
uint8_t MulDiv255(unsigned a, unsigned b) {
  const unsigned t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

}  // namespace

absl::Status ResizeNearestWindow(const RgbImageView& image, int out_width, int out_height,
                                 int left, int top, int window_width, int window_height,
                                 uint8_t* out) {
  const absl::Status valid = ValidateRgbView(image);
  if (!valid.ok()) return valid;
  const absl::Status window =
      ValidateResizeWindow(out_width, out_height, left, top, window_width, window_height);
  if (!window.ok()) return window;
  const std::vector<int> columns =
      NearestSources(image.width, out_width, left, window_width);
  const std::vector<int> rows =
      NearestSources(image.height, out_height, top, window_height);
  const size_t out_stride = size_t{static_cast<unsigned>(window_width)} * 3;
  for (int y = 0; y < window_height; ++y) {
    uint8_t* dst = out + y * out_stride;
    if (rows[y] < 0) {
      std::memset(dst, 0, out_stride);
      continue;
    }
    const uint8_t* src =
        image.pixels.data() + size_t{static_cast<unsigned>(rows[y])} * image.width * 3;
    for (int x = 0; x < window_width; ++x) {
      if (columns[x] < 0) {
        std::memset(dst + x * 3, 0, 3);
      } else {
        std::memcpy(dst + x * 3, src + size_t{static_cast<unsigned>(columns[x])} * 3, 3);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ResizePremultipliedWindow(const RgbImageView& image, int out_width,
                                       int out_height, int left, int top,
                                       int window_width, int window_height,
                                       uint8_t* out) {
  if (image.resample != ResampleMode::kPremultiplied) {
    return absl::InvalidArgumentError("a premultiplied resize needs an image with alpha");
  }
  const absl::Status valid = ValidateRgbView(image);
  if (!valid.ok()) return valid;
  const RgbImageView colors(image.width, image.height, image.pixels);
  // Image.resize returns a copy when the size does not change: no premultiplication.
  if (out_width == image.width && out_height == image.height) {
    return ResizeBicubicWindow(colors, out_width, out_height, left, top, window_width,
                               window_height, out);
  }
  const absl::Status window =
      ValidateResizeWindow(out_width, out_height, left, top, window_width, window_height);
  if (!window.ok()) return window;

  // RGBa, and alpha in all three channels so that the RGB resampler resizes it with the
  // same per-channel arithmetic Pillow applies to the fourth band.
  const size_t pixels = image.alpha.size();
  std::vector<uint8_t> premultiplied(pixels * 3);
  std::vector<uint8_t> alpha3(pixels * 3);
  for (size_t i = 0; i < pixels; ++i) {
    const uint8_t a = image.alpha[i];
    for (int c = 0; c < 3; ++c) {
      premultiplied[i * 3 + c] = MulDiv255(image.pixels[i * 3 + c], a);
      alpha3[i * 3 + c] = a;
    }
  }
  const absl::Status resized = ResizeBicubicWindow(
      RgbImageView(image.width, image.height, premultiplied), out_width, out_height, left,
      top, window_width, window_height, out);
  if (!resized.ok()) return resized;
  const size_t window_pixels =
      size_t{static_cast<unsigned>(window_width)} * window_height;
  std::vector<uint8_t> resized_alpha(window_pixels * 3);
  const absl::Status resized_a = ResizeBicubicWindow(
      RgbImageView(image.width, image.height, alpha3), out_width, out_height, left, top,
      window_width, window_height, resized_alpha.data());
  if (!resized_a.ok()) return resized_a;
  // RGBa -> RGBA (Pillow's rgba2rgbA), then the alpha is dropped.
  for (size_t i = 0; i < window_pixels; ++i) {
    const unsigned a = resized_alpha[i * 3];
    if (a == 0 || a == 255) continue;
    for (int c = 0; c < 3; ++c) {
      out[i * 3 + c] = static_cast<uint8_t>(std::min(255u, 255u * out[i * 3 + c] / a));
    }
  }
  return absl::OkStatus();
}

absl::Status ResizeWindowAsPillow(const RgbImageView& image, int out_width,
                                  int out_height, int left, int top, int window_width,
                                  int window_height, uint8_t* out) {
  switch (image.resample) {
    case ResampleMode::kNearest:
      return ResizeNearestWindow(image, out_width, out_height, left, top, window_width,
                                 window_height, out);
    case ResampleMode::kPremultiplied:
      return ResizePremultipliedWindow(image, out_width, out_height, left, top,
                                       window_width, window_height, out);
    case ResampleMode::kDirect:
      break;
  }
  return ResizeBicubicWindow(image, out_width, out_height, left, top, window_width,
                             window_height, out);
}

}  // namespace clipserve::image
