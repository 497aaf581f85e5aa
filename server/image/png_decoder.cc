// PNG through libpng, reproducing Pillow 9.4's PNG modes followed by convert("RGB").

#include <png.h>
#include <zlib.h>

#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
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
  // Once the pixels are being read, a read past the end of the file is answered with
  // zeros (and `padded` set) rather than failing: see ReadPixels().
  bool pad_past_end = false;
  size_t padded = 0;  // zero bytes read past the end
  // Set by PngError(): whether every row of every pass had been read.
  bool rows_done = false;
  char message[256] = {};
};

// Zero bytes read past the end of a file at most: more than a zlib stream's end and
// checksum, the last CRC and the next chunk's header need, and few enough that a file
// declaring an IDAT chunk of gigabytes costs nothing to refuse.
constexpr size_t kMaxPadding = 32;

void PngError(png_structp png, png_const_charp message) {
  auto* context = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(context->message, sizeof(context->message), "%s", message);
  // After the last row libpng reads on to the end of the zlib stream (the row and pass
  // numbers have moved past the image then), failing where the file was cut short.
  context->rows_done =
      png_get_interlace_type(png, context->info) != PNG_INTERLACE_NONE
          ? png_get_current_pass_number(png) >= 7
          : png_get_current_row_number(png) >= png_get_image_height(png, context->info);
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
  const size_t left = context->size - context->position;
  if (length > left) {
    if (!context->pad_past_end || length - left > kMaxPadding - context->padded) {
      png_error(png, "data is truncated");
    }
    std::memcpy(out, context->data + context->position, left);
    std::memset(out + left, 0, length - left);
    context->position = context->size;
    context->padded += length - left;
    return;
  }
  std::memcpy(out, context->data + context->position, length);
  context->position += length;
}

struct Header {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int bit_depth = 0;
  int color_type = 0;
  int interlace = PNG_INTERLACE_NONE;
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
               &header->bit_depth, &header->color_type, &header->interlace, nullptr,
               nullptr);
  return true;
}

// Phase 2: pixels. `rows` points at height rows of the output: RGB8, RGBA8 for color
// types with alpha, or for palette images the index buffer (one byte per pixel);
// `palette` receives the PLTE.
bool ReadPixels(PngContext* context, const Header& header, bool image_data_cut_short,
                png_bytep* rows, size_t row_bytes, Palette* palette) {
  png_structp png = context->png;
  if (setjmp(png_jmpbuf(png))) return false;
  // A zlib stream the file cuts short has no checksum to check; past the end of the
  // file libpng reads zeros in its place (see below).
  if (image_data_cut_short) png_set_option(png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
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
  // image data (IEND included) are missing or broken. Pillow also accepts a file cut
  // short anywhere after the last compressed byte its rows need (in the zlib stream's
  // end code or checksum, or the last IDAT's CRC), where libpng reads on to the end of
  // the stream: past the end of the file it reads a few zeros (neither the zlib
  // checksum nor the CRC is checked there), and the caller then checks that the bytes
  // present held every row.
  context->pad_past_end = true;
  png_read_image(png, rows);
  return true;
}

int Channels(const Header& header) {
  switch (header.color_type) {
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      return 2;
    case PNG_COLOR_TYPE_RGB:
      return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      return 4;
    default:
      return 1;  // gray, palette indices
  }
}

// The bytes the image data inflates to: each row of each pass (Adam7 for interlaced
// files) with its filter byte.
uint64_t FilteredBytes(const Header& header) {
  struct Pass {
    uint32_t x0, dx, y0, dy;
  };
  static constexpr Pass kAdam7[] = {{0, 8, 0, 8}, {4, 8, 0, 8}, {0, 4, 4, 8},
                                    {2, 4, 0, 4}, {0, 2, 2, 4}, {1, 2, 0, 2},
                                    {0, 1, 1, 2}};
  static constexpr Pass kWhole[] = {{0, 1, 0, 1}};
  const absl::Span<const Pass> passes = header.interlace != PNG_INTERLACE_NONE
                                            ? absl::MakeConstSpan(kAdam7)
                                            : absl::MakeConstSpan(kWhole);
  const uint64_t bits =
      static_cast<uint64_t>(Channels(header)) * static_cast<uint64_t>(header.bit_depth);
  uint64_t total = 0;
  for (const Pass& pass : passes) {
    if (header.width <= pass.x0 || header.height <= pass.y0) continue;
    const uint64_t width = (header.width - pass.x0 + pass.dx - 1) / pass.dx;
    const uint64_t rows = (header.height - pass.y0 + pass.dy - 1) / pass.dy;
    total += rows * (1 + (width * bits + 7) / 8);
  }
  return total;
}

// Calls `visit(payload, cut_short)` for each chunk of the file's run of IDAT chunks,
// in order, while it returns true; the last payload may be cut short by the end of the
// file. Allocates nothing: a file can hold millions of empty chunks.
template <typename Visit>
void ForEachImageDataChunk(absl::string_view png, Visit visit) {
  bool in_image_data = false;
  for (size_t at = 8; at + 8 <= png.size();) {
    const auto* p = reinterpret_cast<const unsigned char*>(png.data() + at);
    const size_t length =
        (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | size_t{p[3]};
    const bool cut_short = length > png.size() - at - 8;
    if (png.substr(at + 4, 4) == "IDAT") {
      in_image_data = true;
      if (!visit(png.substr(at + 8, length), cut_short)) return;  // clipped at the end
    } else if (in_image_data) {
      return;  // the image data is one run of IDAT chunks
    }
    if (cut_short) return;
    at += 8 + length + 4;
  }
}

// Whether the file ends inside its image data.
bool ImageDataCutShort(absl::string_view png) {
  bool cut = false;
  ForEachImageDataChunk(png, [&cut](absl::string_view, bool cut_short) {
    cut = cut_short;
    return true;
  });
  return cut;
}

// What the image data's zlib stream gives, inflated chunk by chunk until `enough`
// bytes came out or the IDAT run ends.
struct InflatedImageData {
  uint64_t produced = 0;
  // Z_OK where the input ran out first, Z_STREAM_END at the stream's end, else the
  // error.
  int end = Z_OK;
};

InflatedImageData InflateImageData(absl::string_view png, uint64_t enough) {
  InflatedImageData out;
  z_stream z = {};
  if (inflateInit(&z) != Z_OK) {
    out.end = Z_MEM_ERROR;
    return out;
  }
  unsigned char sink[1 << 16];
  ForEachImageDataChunk(png, [&](absl::string_view payload, bool) {
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(payload.data()));
    z.avail_in = static_cast<uInt>(payload.size());
    // Output zlib holds back for want of room counts even once the input is read.
    do {
      z.next_out = sink;
      z.avail_out = sizeof(sink);
      out.end = inflate(&z, Z_SYNC_FLUSH);
      out.produced += sizeof(sink) - z.avail_out;
    } while (out.end == Z_OK && out.produced < enough &&
             (z.avail_in > 0 || z.avail_out == 0));
    if (out.end == Z_BUF_ERROR) out.end = Z_OK;  // no progress possible: the next chunk
    return out.end == Z_OK && out.produced < enough;
  });
  inflateEnd(&z);
  return out;
}

// Whether the image data present inflates to at least FilteredBytes(): inflating is
// sequential, so the zeros libpng read past the end of the file changed no byte of
// the rows then.
bool ImageDataIsWhole(absl::string_view png, const Header& header) {
  const uint64_t needed = FilteredBytes(header);
  return InflateImageData(png, needed).produced >= needed;
}

// Whether the image data's zlib stream stops unfinished where its run of IDAT chunks
// ends, with no error in what is there. libpng then reads on for more data, and fails
// on whatever it meets there: a chunk that is not IDAT ("Not enough image data"), or
// bytes that are no chunk header at all ("invalid chunk type"). Pillow stops at
// either, and keeps the image when the rows are there.
bool ImageDataEndsUnfinished(absl::string_view png) {
  return InflateImageData(png, std::numeric_limits<uint64_t>::max()).end == Z_OK;
}

// Deflate codes a run of at most 258 bytes in no fewer than 2 bits, so no stream
// inflates to more than 1032 times its size. A header whose pixels would need more
// than the whole file could hold is refused before anything is allocated for them:
// otherwise a few dozen bytes could make the decoder allocate and clear (and libpng
// allocate its row buffers for) an image of up to the pixel limit, only to fail on
// the missing data.
constexpr double kMaxDeflateRatio = 1032;

absl::Status CheckCompressedSize(const Header& header, size_t file_bytes) {
  const int channels = Channels(header);
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
  const absl::StatusOr<int> orientation =
      ReadPngChunks(encoded, options.honor_exif_orientation);
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
  const bool read = ReadPixels(&context, header, ImageDataCutShort(encoded), rows.data(),
                               row_bytes, &palette);
  // After the last row libpng reads on to the end of the zlib stream. Where the data
  // stops first (the file ends: zeros were read past it; or the IDAT chunks end: a
  // stream without its final block or checksum, followed by another chunk or by bytes
  // that are none), every row is in `rows` when the bytes present hold them all and
  // libpng failed, if at all, only after the last row. Pillow keeps such an image; it
  // refuses a stream that is there and wrong (a bad checksum).
  const bool ran_out_of_data =
      context.padded > 0 ||
      absl::string_view(context.message) == "Not enough image data" ||
      (!read && context.rows_done && ImageDataEndsUnfinished(encoded));
  if (ran_out_of_data && (read || context.rows_done)) {
    if (!ImageDataIsWhole(encoded, header)) {
      return FormatError(kFormat, "data is truncated");
    }
  } else if (!read) {
    return context.padded > 0 ? FormatError(kFormat, "data is truncated")
                              : PngFailure(context);
  }
  if (is_palette) palette.Expand(buffer.data(), buffer.size(), image.pixels.data());
  if (has_alpha) SplitAlpha(buffer.data(), &image);
  return image;
}

}  // namespace clipserve::image::internal
