// PNG through libpng, reproducing Pillow 9.4's PNG modes followed by convert("RGB").

#include <png.h>

#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "PNG";

// Per-decode state; libpng reaches it through its error and io pointers.
struct PngContext {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t position = 0;
  char message[256] = {};
};

void PngError(png_structp png, png_const_charp message) {
  auto* context = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(context->message, sizeof(context->message), "%s", message);
  png_longjmp(png, 1);
}

// The error for what PngError() recorded: libpng's refused allocations ("Out of
// memory", "Insufficient memory", zlib's "insufficient memory") are
// RESOURCE_EXHAUSTED as for the other codecs, anything else the file's fault.
absl::Status PngFailure(const PngContext& context) {
  const absl::string_view message = context.message;
  if (absl::StrContains(absl::AsciiStrToLower(message), "memory")) {
    return OutOfMemoryError(kFormat, message);
  }
  return FormatError(kFormat, message);
}

void PngWarning(png_structp, png_const_charp) {}  // Never print to stderr.

void PngRead(png_structp png, png_bytep out, size_t length) {
  auto* context = static_cast<PngContext*>(png_get_io_ptr(png));
  if (length > context->size - context->position) {
    png_error(png, "data is truncated");
  }
  std::memcpy(out, context->data + context->position, length);
  context->position += length;
}

struct Header {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int bit_depth = 0;
  int color_type = 0;
};

// Phase 1: signature and chunks up to the first IDAT. As in every setjmp frame here,
// no object with a destructor lives in it; the caller owns and destroys the structs.
bool ReadHeader(PngContext* context, Header* header) {
  if (setjmp(png_jmpbuf(context->png))) return false;
  png_set_read_fn(context->png, context, PngRead);
  // Pillow's convert("RGB") needs only IHDR, PLTE and IDAT: skip every ancillary chunk
  // (text, ICC profiles, ...) unparsed, so none can cost time or memory.
  png_set_keep_unknown_chunks(context->png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
  // Pillow checks the CRC of every chunk before the first IDAT, ancillary ones too
  // (libpng's default only warns about those).
  png_set_crc_action(context->png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
  // libpng's default caps each side at 1,000,000; DecodeOptions::max_pixels governs.
  png_set_user_limits(context->png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_read_info(context->png, context->info);
  png_get_IHDR(context->png, context->info, &header->width, &header->height,
               &header->bit_depth, &header->color_type, nullptr, nullptr, nullptr);
  return true;
}

// Phase 2: pixels. `rows` points at height rows of the output: RGB8, RGBA8 for color
// types with alpha, or for palette images the index buffer (one byte per pixel);
// `palette` receives the PLTE.
bool ReadPixels(PngContext* context, const Header& header, png_bytep* rows,
                size_t row_bytes, Palette* palette) {
  png_structp png = context->png;
  if (setjmp(png_jmpbuf(png))) return false;
  // Like Pillow, which never checks IDAT's CRC: a wrong one there is used quietly.
  // (Those of the chunks before it, which Pillow checks, ReadHeader checked.)
  png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_DEFAULT);
  png_set_strip_16(png);  // 16-bit samples keep their high byte: v >> 8.
  if (header.color_type == PNG_COLOR_TYPE_PALETTE) {
    png_set_packing(png);  // 1/2/4-bit indices to one byte each.
    png_colorp entries = nullptr;
    int count = 0;
    if (png_get_PLTE(png, context->info, &entries, &count) == PNG_INFO_PLTE) {
      for (int i = 0; i < count && i < 256; ++i) {
        palette->Set(i, entries[i].red, entries[i].green, entries[i].blue);
      }
    }
  } else {
    // 1/2/4-bit gray scaled by bit replication (Pillow's "1", "L;2", "L;4"), gray
    // replicated, alpha kept for the caller; tRNS is never expanded, as Pillow keeps it
    // out of the pixels too.
    png_set_expand_gray_1_2_4_to_8(png);
    png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, context->info);
  if (png_get_rowbytes(png, context->info) != row_bytes) {
    std::snprintf(context->message, sizeof(context->message),
                  "unexpected row size after conversion");
    return false;
  }
  // png_read_end() is not called: like Pillow, accept files whose chunks after the
  // image data (IEND included) are missing or broken.
  png_read_image(png, rows);
  return true;
}

// Deflate codes a run of at most 258 bytes in no fewer than 2 bits, so no stream
// inflates to more than 1032 times its size. A header whose pixels would need more
// than the whole file could hold is refused before anything is allocated for them:
// otherwise a few dozen bytes could make the decoder allocate and clear (and libpng
// allocate its row buffers for) an image of up to the pixel limit, only to fail on
// the missing data.
constexpr double kMaxDeflateRatio = 1032;

absl::Status CheckCompressedSize(const Header& header, size_t file_bytes) {
  int channels = 1;  // gray, palette indices
  if (header.color_type == PNG_COLOR_TYPE_GRAY_ALPHA) channels = 2;
  if (header.color_type == PNG_COLOR_TYPE_RGB) channels = 3;
  if (header.color_type == PNG_COLOR_TYPE_RGB_ALPHA) channels = 4;
  // The filtered rows hold at least the packed pixel bits (plus filter bytes).
  const double raw_bytes =
      static_cast<double>(header.width) * header.height * channels * header.bit_depth / 8;
  if (raw_bytes > kMaxDeflateRatio * static_cast<double>(file_bytes)) {
    return FormatError(kFormat,
                       absl::StrCat("declared size ", header.width, "x", header.height,
                                    " needs more pixel data than a ", file_bytes,
                                    "-byte file can hold compressed"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RgbImage> DecodePng(absl::string_view encoded,
                                   const DecodeOptions& options, int* exif_orientation) {
  PngContext context;
  context.data = reinterpret_cast<const uint8_t*>(encoded.data());
  context.size = encoded.size();
  context.png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &context, PngError, PngWarning);
  if (context.png == nullptr) return OutOfMemoryError("PNG", "out of memory");
  context.info = png_create_info_struct(context.png);
  struct Cleanup {
    PngContext* context;
    ~Cleanup() { png_destroy_read_struct(&context->png, &context->info, nullptr); }
  } cleanup{&context};
  if (context.info == nullptr) return OutOfMemoryError("PNG", "out of memory");

  Header header;
  if (!ReadHeader(&context, &header)) return PngFailure(context);
  const absl::Status size_ok =
      CheckDeclaredSize(kFormat, header.width, header.height, options);
  if (!size_ok.ok()) return size_ok;
  const absl::Status data_ok = CheckCompressedSize(header, encoded.size());
  if (!data_ok.ok()) return data_ok;
  const absl::StatusOr<int> orientation = ReadPngChunks(encoded);
  if (!orientation.ok()) return orientation.status();
  if (options.honor_exif_orientation) *exif_orientation = *orientation;

  const int width = static_cast<int>(header.width);
  const int height = static_cast<int>(header.height);
  RgbImage image = NewRgbImage(width, height);
  const bool is_palette = header.color_type == PNG_COLOR_TYPE_PALETTE;
  const bool has_alpha = (header.color_type & PNG_COLOR_MASK_ALPHA) != 0;
  // Pillow's modes: "P" for palettes and "1" for 1-bit gray resize with NEAREST, "LA"
  // and "RGBA" premultiplied.
  if (is_palette || (header.color_type == PNG_COLOR_TYPE_GRAY && header.bit_depth == 1)) {
    image.resample = ResampleMode::kNearest;
  } else if (has_alpha) {
    image.resample = ResampleMode::kPremultiplied;
  }
  // Indices for palettes, RGBA for alpha, else the RGB output itself.
  const size_t pixels = image.pixels.size() / 3;
  std::vector<uint8_t> buffer(is_palette ? pixels : has_alpha ? pixels * 4 : 0);
  const size_t row_bytes = size_t{header.width} * (is_palette ? 1 : has_alpha ? 4 : 3);
  uint8_t* base = buffer.empty() ? image.pixels.data() : buffer.data();
  std::vector<png_bytep> rows(height);
  for (int y = 0; y < height; ++y) rows[y] = base + y * row_bytes;
  Palette palette;
  if (!ReadPixels(&context, header, rows.data(), row_bytes, &palette)) {
    return PngFailure(context);
  }
  if (is_palette) palette.Expand(buffer.data(), buffer.size(), image.pixels.data());
  if (has_alpha) SplitAlpha(buffer.data(), &image);
  return image;
}

}  // namespace clipserve::image::internal
