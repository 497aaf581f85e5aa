#include "server/image/mode_resize.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "server/image/bicubic_resize.h"

namespace clipserve::image {
namespace {

// Pillow's COORD(): -1 below zero, else truncation.
int Coord(double v) { return v < 0.0 ? -1 : static_cast<int>(v); }

// Outputs past which the position is computed directly rather than accumulated:
// Pillow cannot allocate such an image, and accumulating would cost a step per output
// pixel (an elongated 1 x 9,000,000 palette PNG resizes to 224 x 2 billion).
constexpr int kMaxAccumulatedOutputs = 1 << 24;

// The source index Pillow's ImagingScaleAffine reads for outputs [first, first + count)
// of an in_size -> out_size NEAREST resize, -1 where it reads none (which rounding
// could give only at the last output; no size Pillow can resize gets there). The
// position is accumulated from output 0, as Pillow does it, so that rounding matches.
std::vector<int> NearestSources(int in_size, int out_size, int first, int count) {
  std::vector<int> sources(static_cast<size_t>(count));
  const double scale = static_cast<double>(in_size) / out_size;
  const auto source_at = [&](double position) {
    const int source = Coord(position);
    return source >= 0 && source < in_size ? source : -1;
  };
  if (int64_t{first} + count > kMaxAccumulatedOutputs) {
    for (int i = 0; i < count; ++i)
      sources[i] = source_at(scale * (0.5 + double(first) + i));
    return sources;
  }
  double position = scale * 0.5;  // a[2] + a[0] * 0.5 with a[2] = 0.
  for (int i = 0; i < first + count; ++i) {
    if (i >= first) sources[i - first] = source_at(position);
    position += scale;
  }
  return sources;
}

// MULDIV255(a, b): a * b / 255 rounded, in Pillow's integer form.
int MulDiv255(unsigned a, unsigned b) {
  const unsigned t = a * b + 128;
  return static_cast<int>(((t >> 8) + t) >> 8);
}

// Resizes a four-band image given as its first three bands (`three`, 3 bytes a pixel)
// and its fourth (fourth[i * stride]): the first three into `out` (the window, 3 bytes
// a pixel), the fourth into `fourth_out` (one value a pixel). The fourth band goes
// through the RGB resampler replicated into three channels, which applies to it the
// arithmetic Pillow applies to each band.
absl::Status ResizeFourBands(int width, int height, absl::Span<const uint8_t> three,
                             absl::Span<const uint8_t> fourth, size_t stride,
                             int out_width, int out_height, int left, int top,
                             int window_width, int window_height, uint8_t* out,
                             std::vector<uint8_t>* fourth_out) {
  const absl::Status window =
      ValidateResizeWindow(out_width, out_height, left, top, window_width, window_height);
  if (!window.ok()) return window;
  const size_t pixels = three.size() / 3;
  std::vector<uint8_t> replicated(pixels * 3);
  for (size_t i = 0; i < pixels; ++i) {
    std::memset(&replicated[i * 3], fourth[i * stride], 3);
  }
  const absl::Status resized =
      ResizeBicubicWindow(RgbImageView(width, height, three), out_width, out_height, left,
                          top, window_width, window_height, out);
  if (!resized.ok()) return resized;
  const size_t window_pixels =
      size_t{static_cast<unsigned>(window_width)} * window_height;
  std::vector<uint8_t> resized_fourth(window_pixels * 3);
  const absl::Status resized_4 =
      ResizeBicubicWindow(RgbImageView(width, height, replicated), out_width, out_height,
                          left, top, window_width, window_height, resized_fourth.data());
  if (!resized_4.ok()) return resized_4;
  fourth_out->resize(window_pixels);
  for (size_t i = 0; i < window_pixels; ++i) (*fourth_out)[i] = resized_fourth[i * 3];
  return absl::OkStatus();
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
  // Image.resize returns a copy when the size does not change: no premultiplication.
  if (out_width == image.width && out_height == image.height) {
    return ResizeBicubicWindow(RgbImageView(image.width, image.height, image.pixels),
                               out_width, out_height, left, top, window_width,
                               window_height, out);
  }
  // RGBa: the colors premultiplied by alpha (Pillow's rgbA2rgba).
  const size_t pixels = image.alpha.size();
  std::vector<uint8_t> premultiplied(pixels * 3);
  for (size_t i = 0; i < pixels; ++i) {
    for (int c = 0; c < 3; ++c) {
      premultiplied[i * 3 + c] =
          static_cast<uint8_t>(MulDiv255(image.pixels[i * 3 + c], image.alpha[i]));
    }
  }
  std::vector<uint8_t> alpha;
  const absl::Status resized =
      ResizeFourBands(image.width, image.height, premultiplied, image.alpha, 1, out_width,
                      out_height, left, top, window_width, window_height, out, &alpha);
  if (!resized.ok()) return resized;
  // RGBa -> RGBA (Pillow's rgba2rgbA), then the alpha is dropped.
  for (size_t i = 0; i < alpha.size(); ++i) {
    const unsigned a = alpha[i];
    if (a == 0 || a == 255) continue;
    for (int c = 0; c < 3; ++c) {
      out[i * 3 + c] = static_cast<uint8_t>(std::min(255u, 255u * out[i * 3 + c] / a));
    }
  }
  return absl::OkStatus();
}

absl::Status ResizeCmykWindow(const RgbImageView& image, int out_width, int out_height,
                              int left, int top, int window_width, int window_height,
                              uint8_t* out) {
  if (image.resample != ResampleMode::kCmyk) {
    return absl::InvalidArgumentError("a CMYK resize needs a CMYK image");
  }
  const absl::Status valid = ValidateRgbView(image);
  if (!valid.ok()) return valid;
  // Image.resize returns a copy when the size does not change: the conversion of the
  // image itself, which `pixels` holds.
  if (out_width == image.width && out_height == image.height) {
    return ResizeBicubicWindow(RgbImageView(image.width, image.height, image.pixels),
                               out_width, out_height, left, top, window_width,
                               window_height, out);
  }
  const size_t pixels = image.cmyk.size() / 4;
  std::vector<uint8_t> cmy(pixels * 3);
  for (size_t i = 0; i < pixels; ++i) std::memcpy(&cmy[i * 3], &image.cmyk[i * 4], 3);
  std::vector<uint8_t> k;
  const absl::Status resized =
      ResizeFourBands(image.width, image.height, cmy, image.cmyk.subspan(3), 4, out_width,
                      out_height, left, top, window_width, window_height, out, &k);
  if (!resized.ok()) return resized;
  // Pillow's cmyk2rgb.
  for (size_t i = 0; i < k.size(); ++i) {
    const int nk = 255 - k[i];
    for (int c = 0; c < 3; ++c) {
      out[i * 3 + c] =
          static_cast<uint8_t>(std::max(0, nk - MulDiv255(out[i * 3 + c], nk)));
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
    case ResampleMode::kCmyk:
      return ResizeCmykWindow(image, out_width, out_height, left, top, window_width,
                              window_height, out);
    case ResampleMode::kDirect:
      break;
  }
  return ResizeBicubicWindow(image, out_width, out_height, left, top, window_width,
                             window_height, out);
}

}  // namespace clipserve::image
