// A small BMP reader (no library), with every field and offset checked against the
// buffer before use. It reads the uncompressed and bit-field variants Pillow 9.4
// reads, with the same pixels, and is more lenient in two ways: it also takes the
// 52- and 56-byte info headers and any contiguous bit-field masks, which Pillow
// refuses. RLE-compressed files, which Pillow reads, are refused here.

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "BMP";
constexpr uint32_t kBiRgb = 0;
constexpr uint32_t kBiRle8 = 1;
constexpr uint32_t kBiRle4 = 2;
constexpr uint32_t kBiBitfields = 3;
constexpr int64_t kFileHeaderSize = 14;

uint32_t U16(const uint8_t* p) { return p[0] | (p[1] << 8); }
uint32_t U32(const uint8_t* p) {
  return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t{p[3]} << 24);
}

// One color channel of a BI_BITFIELDS (or implied 16/32-bit) layout, scaled to 8 bits
// as Pillow's unpackers do: v * 255 / (2^bits - 1), truncated (exact for 8-bit fields).
struct MaskChannel {
  uint32_t mask = 0;
  int shift = 0;
  int bits = 0;

  uint8_t Extract(uint32_t pixel) const {
    if (bits == 0) return 0;
    const uint64_t v = (pixel & mask) >> shift;
    if (bits == 8) return static_cast<uint8_t>(v);
    return static_cast<uint8_t>(v * 255 / ((uint64_t{1} << bits) - 1));
  }
};

// False for a mask whose set bits are not contiguous.
bool MakeMaskChannel(uint32_t mask, MaskChannel* channel) {
  channel->mask = mask;
  channel->shift = 0;
  channel->bits = 0;
  if (mask == 0) return true;
  while (((mask >> channel->shift) & 1) == 0) ++channel->shift;
  const uint64_t field = uint64_t{mask} >> channel->shift;
  while (channel->bits < 32 && ((field >> channel->bits) & 1) != 0) ++channel->bits;
  return (field >> channel->bits) == 0;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeBmp(absl::string_view encoded,
                                   const DecodeOptions& options) {
  const auto* data = reinterpret_cast<const uint8_t*>(encoded.data());
  const int64_t size = static_cast<int64_t>(encoded.size());
  if (size < kFileHeaderSize + 4) return FormatError(kFormat, "header is truncated");
  int64_t data_offset = U32(data + 10);
  const int64_t header_size = U32(data + 14);
  switch (header_size) {
    case 12:   // OS/2 1.x BITMAPCOREHEADER
    case 40:   // BITMAPINFOHEADER
    case 52:   // BITMAPV2INFOHEADER
    case 56:   // BITMAPV3INFOHEADER
    case 64:   // OS/2 2.x
    case 108:  // BITMAPV4HEADER
    case 124:  // BITMAPV5HEADER
      break;
    default:
      return FormatError(kFormat, absl::StrCat("unsupported header size ", header_size));
  }
  if (kFileHeaderSize + header_size > size) {
    return FormatError(kFormat, "header is truncated");
  }
  const uint8_t* info = data + kFileHeaderSize;
  int64_t width, height;
  bool top_down = false;
  int bits;
  uint32_t compression = kBiRgb;
  int64_t colors = 0;
  if (header_size == 12) {
    width = U16(info + 4);
    height = U16(info + 6);
    bits = static_cast<int>(U16(info + 10));
  } else {
    width = static_cast<int32_t>(U32(info + 4));
    const int32_t signed_height = static_cast<int32_t>(U32(info + 8));
    top_down = signed_height < 0;  // Negative height: rows stored top to bottom.
    height = top_down ? -int64_t{signed_height} : signed_height;
    bits = static_cast<int>(U16(info + 14));
    compression = U32(info + 16);
    colors = U32(info + 32);
  }
  const absl::Status size_ok = CheckDeclaredSize(kFormat, width, height, options);
  if (!size_ok.ok()) return size_ok;
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32) {
    return FormatError(kFormat, absl::StrCat("unsupported bit depth ", bits));
  }

  // Where the palette (or the 40-byte header's trailing masks) starts.
  int64_t position = kFileHeaderSize + header_size;
  MaskChannel red, green, blue, alpha;
  bool has_alpha = false;
  if (compression == kBiBitfields) {
    if (bits < 16) {
      return FormatError(kFormat, absl::StrCat("bitfields with bit depth ", bits));
    }
    // Masks sit at file offset 54 both inside v2+ headers and after a 40-byte one.
    if (kFileHeaderSize + 40 + 12 > size) {
      return FormatError(kFormat, "masks are truncated");
    }
    if (header_size == 40) position += 12;
    uint32_t r = U32(data + 54), g = U32(data + 58), b = U32(data + 62);
    // Pillow reads an alpha mask from headers of 56 bytes and more only.
    uint32_t a = header_size >= 56 ? U32(data + 66) : 0;
    if (bits == 32 && r == 0 && g == 0 && b == 0 && a == 0) {
      // Pillow reads all-zero masks as BGRA.
      r = 0xFF0000, g = 0xFF00, b = 0xFF, a = 0xFF000000;
    }
    // The 32-bit layouts with alpha Pillow knows (RGBA, BGRA, ABGR) open as "RGBA"; it
    // refuses others that have an alpha mask, and ignores the alpha of any other.
    has_alpha =
        bits == 32 && ((r == 0xFF && g == 0xFF00 && b == 0xFF0000 && a == 0xFF000000) ||
                       (r == 0xFF0000 && g == 0xFF00 && b == 0xFF && a == 0xFF000000) ||
                       (r == 0xFF000000 && g == 0xFF0000 && b == 0xFF00 && a == 0xFF));
    if (has_alpha) MakeMaskChannel(a, &alpha);
    if (!MakeMaskChannel(r, &red) || !MakeMaskChannel(g, &green) ||
        !MakeMaskChannel(b, &blue)) {
      return FormatError(kFormat, "bitfield masks are not contiguous");
    }
  } else if (compression == kBiRle8 || compression == kBiRle4) {
    return FormatError(kFormat, "RLE compression is not supported");
  } else if (compression != kBiRgb) {
    return FormatError(kFormat, absl::StrCat("unsupported compression ", compression));
  } else if (bits == 16) {
    // BI_RGB 16-bit is X1R5G5B5.
    MakeMaskChannel(0x7C00, &red);
    MakeMaskChannel(0x3E0, &green);
    MakeMaskChannel(0x1F, &blue);
  }

  Palette palette;
  ResampleMode resample =
      has_alpha ? ResampleMode::kPremultiplied : ResampleMode::kDirect;
  if (bits <= 8) {
    if (colors == 0) colors = int64_t{1} << bits;
    if (colors > 65536) {
      return FormatError(kFormat, absl::StrCat("unsupported palette size ", colors));
    }
    // BGR entries (OS/2) or BGRX; a palette cut short by the end of the file keeps
    // Pillow's gray defaults for the missing entries.
    const int64_t entry_size = header_size == 12 ? 3 : 4;
    int64_t entries = 0;
    for (int64_t i = 0; i < colors && i < 256; ++i) {
      const int64_t at = position + i * entry_size;
      if (at + 3 > size) break;
      palette.Set(static_cast<int>(i), data[at + 2], data[at + 1], data[at]);
      ++entries;
    }
    // Pillow's mode: two colors are "1" (black and white) or "P", and both resize with
    // NEAREST; a complete gray ramp (i, i, i) is "L"; any other palette is "P". (Pillow
    // compares entry i with i & 255, so a ramp repeated past 256 colors would be "L";
    // clipserve keeps 256 entries and reads such a file as "P".)
    const bool gray =
        colors != 2 && entries == colors && palette.IsGrayRamp(static_cast<int>(colors));
    if (!gray) resample = ResampleMode::kNearest;
    // Pillow's fix for writers whose data offset points at the palette.
    if (data_offset == kFileHeaderSize + header_size) data_offset += 4 * colors;
    position += entry_size * colors;
  }
  if (data_offset == 0) data_offset = position;  // Pillow: "offset or fp.tell()".

  // Rows are padded to 4 bytes; the last row needs no padding (Pillow's raw decoder).
  const int64_t row_bytes = (width * bits + 7) / 8;
  const int64_t stride = ((width * bits + 31) >> 3) & ~int64_t{3};
  if (data_offset > size || size - data_offset < stride * (height - 1) + row_bytes) {
    return FormatError(kFormat, "pixel data is truncated");
  }

  RgbImage image = NewRgbImage(static_cast<int>(width), static_cast<int>(height));
  image.resample = resample;
  if (has_alpha) image.alpha.resize(image.pixels.size() / 3);
  std::vector<uint8_t> indices(bits <= 8 ? static_cast<size_t>(width) : 0);
  for (int64_t r = 0; r < height; ++r) {
    const uint8_t* src = data + data_offset + r * stride;
    const int64_t y = top_down ? r : height - 1 - r;
    uint8_t* dst = &image.pixels[static_cast<size_t>(y * width * 3)];
    switch (bits) {
      case 1:
      case 4:
      case 8: {
        const int per_byte = 8 / bits;
        const int mask = (1 << bits) - 1;
        for (int64_t x = 0; x < width; ++x) {
          const int shift = 8 - bits * (1 + static_cast<int>(x % per_byte));
          indices[x] = static_cast<uint8_t>((src[x / per_byte] >> shift) & mask);
        }
        palette.Expand(indices.data(), width, dst);
        break;
      }
      case 16:
        for (int64_t x = 0; x < width; ++x) {
          const uint32_t pixel = U16(src + x * 2);
          dst[x * 3 + 0] = red.Extract(pixel);
          dst[x * 3 + 1] = green.Extract(pixel);
          dst[x * 3 + 2] = blue.Extract(pixel);
        }
        break;
      case 24:
        if (compression == kBiRgb) {
          for (int64_t x = 0; x < width; ++x) {
            dst[x * 3 + 0] = src[x * 3 + 2];
            dst[x * 3 + 1] = src[x * 3 + 1];
            dst[x * 3 + 2] = src[x * 3 + 0];
          }
        } else {
          for (int64_t x = 0; x < width; ++x) {
            const uint8_t* p = src + x * 3;
            const uint32_t pixel = p[0] | (p[1] << 8) | (p[2] << 16);
            dst[x * 3 + 0] = red.Extract(pixel);
            dst[x * 3 + 1] = green.Extract(pixel);
            dst[x * 3 + 2] = blue.Extract(pixel);
          }
        }
        break;
      case 32:
        if (compression == kBiRgb) {  // BGRX: the fourth byte is ignored, as in Pillow.
          for (int64_t x = 0; x < width; ++x) {
            dst[x * 3 + 0] = src[x * 4 + 2];
            dst[x * 3 + 1] = src[x * 4 + 1];
            dst[x * 3 + 2] = src[x * 4 + 0];
          }
        } else {
          for (int64_t x = 0; x < width; ++x) {
            const uint32_t pixel = U32(src + x * 4);
            dst[x * 3 + 0] = red.Extract(pixel);
            dst[x * 3 + 1] = green.Extract(pixel);
            dst[x * 3 + 2] = blue.Extract(pixel);
          }
          if (has_alpha) {
            uint8_t* alpha_row = &image.alpha[static_cast<size_t>(y * width)];
            for (int64_t x = 0; x < width; ++x)
              alpha_row[x] = alpha.Extract(U32(src + x * 4));
          }
        }
        break;
    }
  }
  return image;
}

}  // namespace clipserve::image::internal
