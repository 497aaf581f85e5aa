#ifndef CLIPSERVE_SERVER_IMAGE_IMAGE_DECODER_H_
#define CLIPSERVE_SERVER_IMAGE_IMAGE_DECODER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// The container formats DecodeImage() understands, told apart by their magic numbers.
enum class ImageFormat { kUnknown, kJpeg, kPng, kGif, kWebp, kBmp };

// "JPEG", "PNG", "GIF", "WebP", "BMP" or "unknown".
absl::string_view ImageFormatName(ImageFormat format);

// The format whose signature `encoded` starts with, from the bytes alone (file names and
// client-declared types are never consulted): JPEG FF D8 FF; PNG 89 'PNG' 0D 0A 1A 0A;
// GIF "GIF87a"/"GIF89a"; WebP "RIFF" <size> "WEBP"; BMP "BM". kUnknown otherwise.
// Thread-safe; never blocks.
ImageFormat SniffImageFormat(absl::string_view encoded);

struct DecodeOptions {
  // Largest width * height accepted, checked against the dimensions the header declares
  // before any pixel memory is allocated. Default kDefaultMaxPixels (40 megapixels).
  // A decode holds the 3-byte-per-pixel result plus the codec's buffers and the
  // planes kept for the resize: palette indices (1 byte per pixel), RGBA then alpha (5),
  // CMYK samples (4), a progressive JPEG's coefficients (2 bytes per sample), an
  // animated WebP's two canvases (8). Keep the limit to what the process can allocate.
  int64_t max_pixels = kDefaultMaxPixels;

  // Largest encoded input accepted, in bytes. 32 MiB: a 40-megapixel JPEG at high
  // quality is ~15 MB; this stays below the server's default 64 MiB message limit.
  int64_t max_encoded_bytes = int64_t{32} << 20;

  // When true, an EXIF orientation tag (JPEG APP1, PNG eXIf, WebP EXIF chunk) is
  // applied the way Pillow's ImageOps.exif_transpose() does it, so a photo stored
  // sideways comes out upright. Default false: the OpenAI/torchvision reference
  // pipeline (Image.open(f).convert("RGB")) ignores EXIF, and embeddings must match it.
  bool honor_exif_orientation = false;

  // When > 0, the side the image's short side will be resized to (the model's input
  // size): an image PlanResizeAndCrop() would refuse as too elongated for it is
  // refused from its header, before its pixels are decoded for nothing. 0: no check.
  int resize_short_side = 0;
};

// Decodes an encoded image to RGB8, the way Pillow 9.4's Image.open(f).convert("RGB")
// does it: alpha is dropped (not composited over a background), palettes are expanded,
// gray is replicated, CMYK (Adobe-inverted, as Pillow always assumes) is converted with
// Pillow's formula, and for GIF and animated WebP the first frame is taken on its
// canvas. One deliberate difference: 16-bit samples become their high byte (v >> 8),
// the rule Pillow itself applies to 16-bit RGB PNGs, where Pillow would clip 16-bit
// gray to 255 and return a white image.
//
// Formats: JPEG (libjpeg-turbo: baseline, progressive, gray, RGB, CMYK, YCCK), PNG
// (libpng: 1-16 bits, gray, RGB, palette, alpha, interlaced; tRNS ignored as in
// Pillow's convert("RGB")), GIF (giflib: first frame, global/local palette), WebP
// (libwebp: lossy, lossless, alpha, animated), BMP (built in: 1/4/8-bit palette,
// 16/24/32-bit BI_RGB and BI_BITFIELDS, bottom-up and top-down; no RLE).
//
// Errors, all with the reason in the message:
// - INVALID_ARGUMENT: empty input; input longer than options.max_encoded_bytes; no known
//   signature; a declared size with a zero side or more than options.max_pixels, or
//   too elongated to resize to options.resize_short_side (checked from the header,
//   before pixel memory is allocated); truncated or corrupt
//   data, including a JPEG that ends early (libjpeg's "premature end of data" warning
//   is an error here, as Pillow raises on such files); unsupported variants.
// - RESOURCE_EXHAUSTED: a codec, or an allocation of the decoder's own, ran out of
//   memory, with a RetryInfo of 1 s (the memory may be back once other work is done;
//   see docs/API.md).
// Never crashes or exits on malformed input: codec errors come back through
// setjmp/longjmp error managers, and no codec global state is touched.
//
// Blocks the calling thread for the decode (CPU-bound, about 1-3 ms per megapixel).
// Thread-safe: concurrent calls share nothing.
absl::StatusOr<RgbImage> DecodeImage(absl::string_view encoded,
                                     const DecodeOptions& options = {});

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_IMAGE_DECODER_H_
