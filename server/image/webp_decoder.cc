// WebP through libwebp. Pillow 9.4 reads every WebP with WebPAnimDecoder (RGBA, first
// frame on a transparent-black canvas); a still image decodes to the same RGB values
// directly, so only animated files go through the animation decoder.

#include <webp/decode.h>
#include <webp/demux.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"
#include "server/image/exif_orientation.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "WebP";

absl::string_view Vp8StatusText(VP8StatusCode status) {
  switch (status) {
    case VP8_STATUS_OUT_OF_MEMORY:
      return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
      return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
      return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
      return "unsupported feature";
    case VP8_STATUS_NOT_ENOUGH_DATA:
      return "data is truncated";
    default:
      return "decoding failed";
  }
}

absl::Status WebpError(VP8StatusCode status) {
  if (status == VP8_STATUS_OUT_OF_MEMORY) {
    return OutOfMemoryError("WebP", "out of memory");
  }
  return FormatError(kFormat, Vp8StatusText(status));
}

// The EXIF orientation of the file's first "EXIF" chunk, 1 when there is none, found
// as Pillow finds it: through libwebp's demuxer, which reads chunks besides the image
// only in the extended format (a VP8X header) and only from a well-formed file.
int WebpExifOrientation(absl::string_view encoded) {
  const WebPData data = {reinterpret_cast<const uint8_t*>(encoded.data()),
                         encoded.size()};
  WebPDemuxer* demuxer = WebPDemux(&data);
  if (demuxer == nullptr) return 1;
  int orientation = 1;
  WebPChunkIterator chunk;
  if (WebPDemuxGetChunk(demuxer, "EXIF", 1, &chunk)) {
    orientation = ExifOrientation(absl::string_view(
        reinterpret_cast<const char*>(chunk.chunk.bytes), chunk.chunk.size));
    WebPDemuxReleaseChunkIterator(&chunk);
  }
  WebPDemuxDelete(demuxer);
  return orientation;
}

absl::StatusOr<RgbImage> DecodeFirstAnimationFrame(absl::string_view encoded, int width,
                                                   int height, bool has_alpha) {
  WebPAnimDecoderOptions options;
  if (!WebPAnimDecoderOptionsInit(&options)) {
    return FormatError(kFormat, "libwebp ABI mismatch");
  }
  options.color_mode = MODE_RGBA;
  options.use_threads = 0;
  const WebPData data = {reinterpret_cast<const uint8_t*>(encoded.data()),
                         encoded.size()};
  // WebPAnimDecoderNew fails alike for a file its demuxer refuses and for a canvas
  // (8 bytes a pixel) it cannot allocate: the demuxer alone tells them apart.
  WebPDemuxer* demuxer = WebPDemux(&data);
  if (demuxer == nullptr) return FormatError(kFormat, "corrupt animation");
  WebPDemuxDelete(demuxer);
  WebPAnimDecoder* decoder = WebPAnimDecoderNew(&data, &options);
  if (decoder == nullptr) return OutOfMemoryError(kFormat, "out of memory");
  struct Cleanup {
    WebPAnimDecoder* decoder;
    ~Cleanup() { WebPAnimDecoderDelete(decoder); }
  } cleanup{decoder};
  WebPAnimInfo info;
  if (!WebPAnimDecoderGetInfo(decoder, &info) ||
      info.canvas_width != static_cast<uint32_t>(width) ||
      info.canvas_height != static_cast<uint32_t>(height)) {
    return FormatError(kFormat, "inconsistent animation canvas");
  }
  uint8_t* rgba = nullptr;
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(decoder, &rgba, &timestamp)) {
    return FormatError(kFormat, "corrupt first animation frame");
  }
  RgbImage image = NewRgbImage(width, height);
  if (has_alpha) {
    image.resample = ResampleMode::kPremultiplied;
    SplitAlpha(rgba, &image);
    return image;
  }
  const size_t pixels = image.pixels.size() / 3;
  for (size_t i = 0; i < pixels; ++i) std::memcpy(&image.pixels[i * 3], &rgba[i * 4], 3);
  return image;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeWebp(absl::string_view encoded,
                                    const DecodeOptions& options, int* exif_orientation) {
  const auto* data = reinterpret_cast<const uint8_t*>(encoded.data());
  WebPBitstreamFeatures features;
  const VP8StatusCode status = WebPGetFeatures(data, encoded.size(), &features);
  if (status != VP8_STATUS_OK) return WebpError(status);
  const absl::Status size_ok =
      CheckDeclaredSize(kFormat, features.width, features.height, options);
  if (!size_ok.ok()) return size_ok;
  // An animation's canvas costs no bytes: 94 bytes (a 6000x6000 canvas, one 1x1
  // frame) took 325 ms and 382 MB to decode before this check. A still image is not
  // bounded so: lossless WebP has no least cost per pixel, and screenshots come close
  // (3840x2160, a title bar and 20 lines of text on white: 1,682 bytes from Pillow,
  // 4,900 pixels a byte).
  if (features.has_animation) {
    const absl::Status bytes_ok =
        CheckPixelsPerByte(kFormat, features.width, features.height, encoded.size());
    if (!bytes_ok.ok()) return bytes_ok;
  }
  if (options.honor_exif_orientation) {
    *exif_orientation = WebpExifOrientation(encoded);
  }
  // Pillow opens a WebP whose header flags alpha as "RGBA" (resized premultiplied).
  const bool has_alpha = features.has_alpha != 0;
  if (features.has_animation) {
    return DecodeFirstAnimationFrame(encoded, features.width, features.height, has_alpha);
  }
  RgbImage image = NewRgbImage(features.width, features.height);
  std::vector<uint8_t> rgba(has_alpha ? image.pixels.size() / 3 * 4 : 0);
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) {
    return FormatError(kFormat, "libwebp ABI mismatch");
  }
  config.output.colorspace = has_alpha ? MODE_RGBA : MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = has_alpha ? rgba.data() : image.pixels.data();
  config.output.u.RGBA.stride = features.width * (has_alpha ? 4 : 3);
  config.output.u.RGBA.size = has_alpha ? rgba.size() : image.pixels.size();
  const VP8StatusCode decoded = WebPDecode(data, encoded.size(), &config);
  WebPFreeDecBuffer(&config.output);
  if (decoded != VP8_STATUS_OK) return WebpError(decoded);
  if (has_alpha) {
    image.resample = ResampleMode::kPremultiplied;
    SplitAlpha(rgba.data(), &image);
  }
  return image;
}

}  // namespace clipserve::image::internal
