#ifndef CLIPSERVE_SERVER_IMAGE_DECODERS_H_
#define CLIPSERVE_SERVER_IMAGE_DECODERS_H_

// Internal to server/image: one decoder per container format, called by DecodeImage()
// after it sniffed the format and checked the encoded size. Each has DecodeImage()'s
// contract (rgb_image.h, image_decoder.h) for its format; messages start with the
// format's name. When options.honor_exif_orientation is set, each that can carry EXIF
// stores the orientation tag (1-8, 1 when absent) in *exif_orientation; DecodeImage()
// applies it.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/image/image_decoder.h"
#include "server/image/rgb_image.h"

namespace clipserve::image::internal {

absl::StatusOr<RgbImage> DecodeJpeg(absl::string_view encoded,
                                    const DecodeOptions& options, int* exif_orientation);
absl::StatusOr<RgbImage> DecodePng(absl::string_view encoded,
                                   const DecodeOptions& options, int* exif_orientation);
absl::StatusOr<RgbImage> DecodeWebp(absl::string_view encoded,
                                    const DecodeOptions& options, int* exif_orientation);
absl::StatusOr<RgbImage> DecodeGif(absl::string_view encoded,
                                   const DecodeOptions& options);
absl::StatusOr<RgbImage> DecodeBmp(absl::string_view encoded,
                                   const DecodeOptions& options);

// What Pillow 9.4 makes of the chunks of the PNG file `png` beside its pixels (read
// by libpng, which skips the ancillary chunks; DecodePng() calls this after libpng
// read the header, so the chunks before the image data have sound CRCs).
//
// INVALID_ARGUMENT where Pillow refuses the file for a chunk: a zTXt chunk naming a
// compression method other than 0; a zTXt, compressed iTXt or iCCP chunk that
// inflates to more than 1 MiB; text chunks holding more than 64 MiB in all; an empty
// sRGB chunk or one iCCP; a pHYs chunk under 9 bytes; a chunk after the image data
// that the file cuts short. Also, as a deliberate difference, where compressed chunks
// inflate to more than 64 MiB in all (Pillow does not count some of them). APNG
// chunks are not checked as Pillow checks them.
//
// Otherwise, with `want_orientation`, the EXIF orientation (1-8) that
// ImageOps.exif_transpose(Image.open(f))
// finds: from the last eXIf chunk or tEXt/zTXt/iTXt "exif" before the image data,
// else from those chunks anywhere (getexif() then loads the image and reads the
// chunks after it), else from a hex-coded "Raw profile type exif" text chunk; where
// that EXIF holds no orientation tag, from the tiff:Orientation of an
// "XML:com.adobe.xmp" text chunk. 1 where none says otherwise, and where Pillow would
// raise (EXIF it cannot read). Bounds-checked; compressed chunks are inflated 16 KiB
// at a time, to at most 1 MiB each, as Pillow does. Without `want_orientation`, 1:
// the chunks are checked but no EXIF or XMP is read.
absl::StatusOr<int> ReadPngChunks(absl::string_view png, bool want_orientation);

// INVALID_ARGUMENT "<format>: <what>".
absl::Status FormatError(absl::string_view format, absl::string_view what);

// RESOURCE_EXHAUSTED "<format>: <what>" with a RetryInfo of kOutOfMemoryRetryDelay
// (status_payloads.h): a codec's allocation failed, which other work giving memory back
// may cure, as for a model batch that ran out of memory.
absl::Status OutOfMemoryError(absl::string_view format, absl::string_view what);

// OK when the declared `width` x `height` has both sides >= 1 and at most
// options.max_pixels pixels; INVALID_ARGUMENT naming the size and the limit otherwise.
// Decoders call it right after parsing the header, before allocating pixel memory.
absl::Status CheckDeclaredSize(absl::string_view format, int64_t width, int64_t height,
                               const DecodeOptions& options);

// Some headers can declare an image far larger than the file's data describes: a GIF's
// logical screen or an animated WebP's canvas costs no bytes beyond its size fields,
// so a few bytes could cost a large image's decoding. Past kPixelsFreeOfBytes pixels,
// such a file needs a byte for each kMaxPixelsPerByte pixels (LZW, GIF's coding,
// describes at most about 2,730 pixels a byte, so a frame that covers its canvas
// always passes). OK, or INVALID_ARGUMENT naming the sizes; decoders call it with
// CheckDeclaredSize(), before allocating.
inline constexpr int64_t kMaxPixelsPerByte = 4096;
inline constexpr int64_t kPixelsFreeOfBytes = 4'000'000;
absl::Status CheckPixelsPerByte(absl::string_view format, int64_t width, int64_t height,
                                size_t file_bytes);

// A width x height image with zeroed pixels; the size must have passed
// CheckDeclaredSize().
RgbImage NewRgbImage(int width, int height);

// Fills image->pixels (RGB) and image->alpha from width * height RGBA8 pixels.
void SplitAlpha(const uint8_t* rgba, RgbImage* image);

// A 256-entry color table for palette images, as Pillow builds one: entry i starts as
// gray (i, i, i) and the file's palette overwrites the first entries, so an index past
// the end of a short palette reads as gray, not black.
struct Palette {
  Palette();
  void Set(int index, uint8_t r, uint8_t g, uint8_t b);
  // Expands `count` indices to `count` RGB8 pixels.
  void Expand(const uint8_t* indices, int64_t count, uint8_t* rgb) const;
  // Whether the first `count` entries are the gray ramp (i, i, i): Pillow then reads
  // the image as gray ("L", resized with BICUBIC) instead of as a palette ("P",
  // resized with NEAREST).
  bool IsGrayRamp(int count) const;

  uint8_t rgb[256 * 3];
};

}  // namespace clipserve::image::internal

#endif  // CLIPSERVE_SERVER_IMAGE_DECODERS_H_
