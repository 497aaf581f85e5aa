#include "server/image/image_decoder.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/common/status_payloads.h"
#include "server/image/decoders.h"
#include "server/image/exif_orientation.h"
#include "server/image/preprocessor.h"

namespace clipserve::image {
namespace {

bool StartsWith(absl::string_view bytes, absl::string_view prefix) {
  return bytes.size() >= prefix.size() &&
         std::memcmp(bytes.data(), prefix.data(), prefix.size()) == 0;
}

}  // namespace

absl::string_view ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg:
      return "JPEG";
    case ImageFormat::kPng:
      return "PNG";
    case ImageFormat::kGif:
      return "GIF";
    case ImageFormat::kWebp:
      return "WebP";
    case ImageFormat::kBmp:
      return "BMP";
    case ImageFormat::kUnknown:
      break;
  }
  return "unknown";
}

ImageFormat SniffImageFormat(absl::string_view encoded) {
  if (StartsWith(encoded, "\xFF\xD8\xFF")) return ImageFormat::kJpeg;
  if (StartsWith(encoded, "\x89PNG\r\n\x1A\n")) return ImageFormat::kPng;
  if (StartsWith(encoded, "GIF87a") || StartsWith(encoded, "GIF89a")) {
    return ImageFormat::kGif;
  }
  if (encoded.size() >= 12 && StartsWith(encoded, "RIFF") &&
      encoded.substr(8, 4) == "WEBP") {
    return ImageFormat::kWebp;
  }
  if (StartsWith(encoded, "BM")) return ImageFormat::kBmp;
  return ImageFormat::kUnknown;
}

absl::StatusOr<RgbImage> DecodeImage(absl::string_view encoded,
                                     const DecodeOptions& options) {
  if (encoded.empty()) return absl::InvalidArgumentError("empty image data");
  if (static_cast<int64_t>(encoded.size()) > options.max_encoded_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("encoded image is ", encoded.size(),
                                                   " bytes, over the limit of ",
                                                   options.max_encoded_bytes));
  }
  int orientation = 1;
  absl::StatusOr<RgbImage> image;
  const ImageFormat format = SniffImageFormat(encoded);
  // The decoders' own buffers are vectors: one the allocator refuses (a large image
  // on a loaded or memory-limited machine) fails this image alone, as a codec's
  // refused allocation does. Their libjpeg, libpng, giflib and libwebp state is freed
  // by destructors on the way out.
  try {
    switch (format) {
      case ImageFormat::kJpeg:
        image = internal::DecodeJpeg(encoded, options, &orientation);
        break;
      case ImageFormat::kPng:
        image = internal::DecodePng(encoded, options, &orientation);
        break;
      case ImageFormat::kWebp:
        image = internal::DecodeWebp(encoded, options, &orientation);
        break;
      case ImageFormat::kGif:
        image = internal::DecodeGif(encoded, options);
        break;
      case ImageFormat::kBmp:
        image = internal::DecodeBmp(encoded, options);
        break;
      case ImageFormat::kUnknown:
        return absl::InvalidArgumentError(
            "unrecognized image format: the data starts with no JPEG, PNG, GIF, WebP or "
            "BMP signature");
    }
    // Turning the image upright takes a second copy of it.
    if (image.ok() && options.honor_exif_orientation && orientation != 1) {
      image = ApplyExifOrientation(*std::move(image), orientation);
    }
  } catch (const std::bad_alloc&) {
    return internal::OutOfMemoryError(ImageFormatName(format), "out of memory");
  }
  return image;
}

namespace internal {

absl::Status FormatError(absl::string_view format, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(format, ": ", what));
}

absl::Status OutOfMemoryError(absl::string_view format, absl::string_view what) {
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat(format, ": ", what));
  SetRetryInfoPayload(kOutOfMemoryRetryDelay, &status);
  return status;
}

absl::Status CheckDeclaredSize(absl::string_view format, int64_t width, int64_t height,
                               const DecodeOptions& options) {
  if (width < 1 || height < 1) {
    return FormatError(format,
                       absl::StrCat("declared size ", width, "x", height, " is empty"));
  }
  // Sides come from 16- or 32-bit header fields, so the product fits in int64_t.
  if (width * height > options.max_pixels) {
    return FormatError(
        format,
        absl::StrCat("declared size ", width, "x", height, " (", width * height,
                     " pixels) exceeds the limit of ", options.max_pixels, " pixels"));
  }
  if (options.resize_short_side > 0) {
    constexpr int64_t kMaxSide = std::numeric_limits<int>::max();
    if (width > kMaxSide || height > kMaxSide) {
      return FormatError(format, absl::StrCat("declared size ", width, "x", height,
                                              " has a side over ", kMaxSide));
    }
    const absl::Status resizable =
        PlanResizeAndCrop(static_cast<int>(width), static_cast<int>(height),
                          options.resize_short_side)
            .status();
    if (!resizable.ok()) return FormatError(format, resizable.message());
  }
  return absl::OkStatus();
}

absl::Status CheckPixelsPerByte(absl::string_view format, int64_t width, int64_t height,
                                size_t file_bytes) {
  const int64_t pixels = width * height;  // both checked by CheckDeclaredSize()
  if (pixels <= kPixelsFreeOfBytes ||
      pixels <= kMaxPixelsPerByte * static_cast<int64_t>(file_bytes)) {
    return absl::OkStatus();
  }
  const int64_t needed = (pixels + kMaxPixelsPerByte - 1) / kMaxPixelsPerByte;
  return FormatError(
      format,
      absl::StrCat("declared size ", width, "x", height, " needs a file of at least ",
                   needed, " bytes (one per ", kMaxPixelsPerByte, " pixels over ",
                   kPixelsFreeOfBytes, " pixels), not ", file_bytes));
}

RgbImage NewRgbImage(int width, int height) {
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  return image;
}

void SplitAlpha(const uint8_t* rgba, RgbImage* image) {
  const size_t pixels = image->pixels.size() / 3;
  image->alpha.resize(pixels);
  for (size_t i = 0; i < pixels; ++i) {
    std::memcpy(&image->pixels[i * 3], &rgba[i * 4], 3);
    image->alpha[i] = rgba[i * 4 + 3];
  }
}

Palette::Palette() {
  for (int i = 0; i < 256; ++i) Set(i, i, i, i);
}

void Palette::Set(int index, uint8_t r, uint8_t g, uint8_t b) {
  rgb[index * 3 + 0] = r;
  rgb[index * 3 + 1] = g;
  rgb[index * 3 + 2] = b;
}

bool Palette::IsGrayRamp(int count) const {
  for (int i = 0; i < count && i < 256; ++i) {
    if (rgb[i * 3] != i || rgb[i * 3 + 1] != i || rgb[i * 3 + 2] != i) return false;
  }
  return true;
}

void Palette::Expand(const uint8_t* indices, int64_t count, uint8_t* out) const {
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* color = &rgb[indices[i] * 3];
    out[i * 3 + 0] = color[0];
    out[i * 3 + 1] = color[1];
    out[i * 3 + 2] = color[2];
  }
}

}  // namespace internal
}  // namespace clipserve::image
