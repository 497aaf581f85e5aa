#include "server/image/rgb_image.h"

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"

namespace clipserve::image {

absl::Status ValidateRgbView(const RgbImageView& view) {
  if (view.width < 1 || view.height < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image has a zero or negative side: ", view.width, "x", view.height));
  }
  const int64_t expected = int64_t{view.width} * view.height * 3;
  if (static_cast<int64_t>(view.pixels.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("a ", view.width, "x", view.height,
                                                   " RGB8 image needs ", expected,
                                                   " bytes, got ", view.pixels.size()));
  }
  const int64_t pixels = expected / 3;
  const int64_t alpha_expected =
      view.resample == ResampleMode::kPremultiplied ? pixels : 0;
  if (static_cast<int64_t>(view.alpha.size()) != alpha_expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", view.width, "x", view.height, " image needs ", alpha_expected,
                     " alpha values, got ", view.alpha.size()));
  }
  const int64_t cmyk_expected = view.resample == ResampleMode::kCmyk ? pixels * 4 : 0;
  if (static_cast<int64_t>(view.cmyk.size()) != cmyk_expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", view.width, "x", view.height, " image needs ", cmyk_expected,
                     " CMYK values, got ", view.cmyk.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<RgbImageView> RawRgbView(absl::Span<const uint8_t> pixels, int64_t width,
                                        int64_t height, int64_t max_pixels) {
  if (width < 1 || height < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw RGB image: width and height must be >= 1, got ", width, "x", height));
  }
  // Each side is checked first so that the product cannot overflow.
  constexpr int64_t kMaxSide = std::numeric_limits<int>::max();
  if (width > kMaxSide || height > kMaxSide || width * height > max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat("raw RGB image: ", width, "x", height,
                                                   " exceeds the limit of ", max_pixels,
                                                   " pixels"));
  }
  const int64_t expected = width * height * 3;
  if (static_cast<int64_t>(pixels.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("raw RGB image: ", width, "x", height,
                                                   " RGB8 needs ", expected,
                                                   " bytes, got ", pixels.size()));
  }
  return RgbImageView(static_cast<int>(width), static_cast<int>(height), pixels);
}

}  // namespace clipserve::image
