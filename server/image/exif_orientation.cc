#include "server/image/exif_orientation.h"

#include <cstdint>
#include <cstring>
#include <utility>

namespace clipserve::image {
namespace {

constexpr uint16_t kOrientationTag = 0x0112;
constexpr uint16_t kTypeShort = 3;
constexpr uint16_t kTypeLong = 4;
constexpr uint16_t kTypeSignedShort = 8;
constexpr uint16_t kTypeSignedLong = 9;

// Bounds-checked reads from a TIFF structure of either byte order.
class TiffReader {
 public:
  TiffReader(absl::string_view data, bool little_endian)
      : data_(data), little_endian_(little_endian) {}

  bool U16(size_t offset, uint16_t* value) const {
    if (offset > data_.size() || data_.size() - offset < 2) return false;
    const auto* p = reinterpret_cast<const uint8_t*>(data_.data()) + offset;
    *value = little_endian_ ? static_cast<uint16_t>(p[0] | (p[1] << 8))
                            : static_cast<uint16_t>((p[0] << 8) | p[1]);
    return true;
  }

  bool U32(size_t offset, uint32_t* value) const {
    uint16_t a, b;
    if (!U16(offset, &a) || !U16(offset + 2, &b)) return false;
    *value = little_endian_ ? (uint32_t{b} << 16) | a : (uint32_t{a} << 16) | b;
    return true;
  }

 private:
  absl::string_view data_;
  bool little_endian_;
};

}  // namespace

int ExifOrientation(absl::string_view exif) {
  if (exif.substr(0, 6) == absl::string_view("Exif\0\0", 6)) exif.remove_prefix(6);
  bool little_endian;
  if (exif.substr(0, 4) == absl::string_view("II*\0", 4)) {
    little_endian = true;
  } else if (exif.substr(0, 4) == absl::string_view("MM\0*", 4)) {
    little_endian = false;
  } else {
    return 1;
  }
  const TiffReader tiff(exif, little_endian);
  uint32_t ifd;
  uint16_t entries;
  if (!tiff.U32(4, &ifd) || !tiff.U16(ifd, &entries)) return 1;
  // As Pillow 9.4's getexif() then exif_transpose(): the entries are read in order
  // into a dict, so when the tag repeats the last stored one wins, and reading stops
  // (keeping what it has) at an entry cut short. An entry Pillow does not store leaves
  // an earlier value: a type it has no loader for (TIFF types 1-13 and 16 it has), a
  // count of 0, or a value whose bytes lie outside the data. SHORT and LONG, signed
  // or not, give their first value; any other type a value exif_transpose() ignores.
  uint32_t value = 1;
  for (uint32_t i = 0; i < entries; ++i) {
    const size_t entry = size_t{ifd} + 2 + size_t{i} * 12;
    uint16_t tag, type;
    uint32_t count, field;
    if (!tiff.U16(entry, &tag) || !tiff.U16(entry + 2, &type) ||
        !tiff.U32(entry + 4, &count) || !tiff.U32(entry + 8, &field)) {
      break;
    }
    if (tag != kOrientationTag) continue;
    if (type == 0 || (type > 13 && type != 16) || count == 0) continue;
    const bool is_short = type == kTypeShort || type == kTypeSignedShort;
    const bool is_long = type == kTypeLong || type == kTypeSignedLong;
    if (!is_short && !is_long) {
      value = 1;
      continue;
    }
    const uint64_t bytes = uint64_t{count} * (is_short ? 2 : 4);
    // Up to 4 bytes sit in the entry itself, more at the offset the field holds.
    const size_t at = bytes <= 4 ? entry + 8 : field;
    if (at > exif.size() || exif.size() - at < bytes) continue;
    if (is_short) {
      uint16_t first;
      if (!tiff.U16(at, &first)) continue;
      value = first;
    } else if (!tiff.U32(at, &value)) {
      continue;
    }
  }
  return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
}

RgbImage ApplyExifOrientation(RgbImage image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const int w = image.width;
  const int h = image.height;
  const bool swaps_sides = orientation >= 5;
  RgbImage out;
  out.width = swaps_sides ? h : w;
  out.height = swaps_sides ? w : h;
  out.pixels.resize(image.pixels.size());
  out.resample = image.resample;
  out.alpha.resize(image.alpha.size());
  out.cmyk.resize(image.cmyk.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      // (sx, sy): the source pixel that lands on output (x, y).
      int sx = x, sy = y;
      switch (orientation) {
        case 2:  // FLIP_LEFT_RIGHT
          sx = w - 1 - x;
          break;
        case 3:  // ROTATE_180
          sx = w - 1 - x;
          sy = h - 1 - y;
          break;
        case 4:  // FLIP_TOP_BOTTOM
          sy = h - 1 - y;
          break;
        case 5:  // TRANSPOSE
          sx = y;
          sy = x;
          break;
        case 6:  // ROTATE_270 (counter-clockwise), i.e. 90 clockwise
          sx = y;
          sy = h - 1 - x;
          break;
        case 7:  // TRANSVERSE
          sx = w - 1 - y;
          sy = h - 1 - x;
          break;
        case 8:  // ROTATE_90 (counter-clockwise)
          sx = w - 1 - y;
          sy = x;
          break;
      }
      const size_t to = size_t{static_cast<unsigned>(y)} * out.width + x;
      const size_t from = size_t{static_cast<unsigned>(sy)} * w + sx;
      std::memcpy(&out.pixels[to * 3], &image.pixels[from * 3], 3);
      if (!image.alpha.empty()) out.alpha[to] = image.alpha[from];
      if (!image.cmyk.empty()) std::memcpy(&out.cmyk[to * 4], &image.cmyk[from * 4], 4);
    }
  }
  return out;
}

}  // namespace clipserve::image
