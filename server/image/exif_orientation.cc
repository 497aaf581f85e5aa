#include "server/image/exif_orientation.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace clipserve::image {
namespace {

constexpr uint16_t kOrientationTag = 0x0112;

// Bytes per value of each TIFF type Pillow 9.4 has a loader for (1-13 and 16), 0 for
// the others.
int TypeSize(uint16_t type) {
  switch (type) {
    case 1:
    case 2:
    case 6:
    case 7:  // BYTE, ASCII, SBYTE, UNDEFINED
      return 1;
    case 3:
    case 8:  // SHORT, SSHORT
      return 2;
    case 4:
    case 9:
    case 11:
    case 13:  // LONG, SLONG, FLOAT, IFD
      return 4;
    case 5:
    case 10:
    case 12:
    case 16:  // RATIONAL, SRATIONAL, DOUBLE, LONG8
      return 8;
    default:
      return 0;
  }
}

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

  bool U64(size_t offset, uint64_t* value) const {
    uint32_t a, b;
    if (!U32(offset, &a) || !U32(offset + 4, &b)) return false;
    *value = little_endian_ ? (uint64_t{b} << 32) | a : (uint64_t{a} << 32) | b;
    return true;
  }

  // The first value of type `type` at `offset` as Pillow compares it with 1..8: a
  // number (a rational as its quotient, NaN for a zero denominator), or NaN for the
  // types Pillow keeps as bytes or text. False when the bytes are not there.
  bool Number(uint16_t type, size_t offset, double* value) const {
    uint16_t u16;
    uint32_t u32, den;
    uint64_t u64;
    switch (type) {
      case 6:
        if (offset >= data_.size()) return false;
        *value = static_cast<int8_t>(data_[offset]);
        return true;
      case 3:
      case 8:
        if (!U16(offset, &u16)) return false;
        *value = type == 3 ? static_cast<double>(u16)
                           : static_cast<double>(static_cast<int16_t>(u16));
        return true;
      case 4:
      case 9:
      case 13:
        if (!U32(offset, &u32)) return false;
        *value = type == 9 ? static_cast<double>(static_cast<int32_t>(u32))
                           : static_cast<double>(u32);
        return true;
      case 11: {
        if (!U32(offset, &u32)) return false;
        float f;
        std::memcpy(&f, &u32, sizeof(f));
        *value = f;
        return true;
      }
      case 12:
        if (!U64(offset, &u64)) return false;
        std::memcpy(value, &u64, sizeof(*value));
        return true;
      case 16:
        if (!U64(offset, &u64)) return false;
        *value = static_cast<double>(u64);
        return true;
      case 5:
      case 10: {
        if (!U32(offset, &u32) || !U32(offset + 4, &den)) return false;
        const double num = type == 10 ? static_cast<double>(static_cast<int32_t>(u32))
                                      : static_cast<double>(u32);
        const double d = type == 10 ? static_cast<double>(static_cast<int32_t>(den))
                                    : static_cast<double>(den);
        *value = d == 0 ? std::nan("") : num / d;
        return true;
      }
      default:
        *value = std::nan("");
        return true;
    }
  }

 private:
  absl::string_view data_;
  bool little_endian_;
};

}  // namespace

int ExifOrientation(absl::string_view exif) {
  return ReadExifOrientationTag(exif).orientation;
}

ExifOrientationTag ReadExifOrientationTag(absl::string_view exif) {
  ExifOrientationTag result;
  if (exif.substr(0, 6) == absl::string_view("Exif\0\0", 6)) exif.remove_prefix(6);
  if (exif.empty()) return result;
  // The byte order Pillow takes from the first two bytes, with either of the two
  // spellings of 42 it accepts after them (not BigTIFF's 43).
  const absl::string_view head = exif.substr(0, 4);
  bool little_endian;
  if (head == absl::string_view("II*\0", 4) || head == absl::string_view("II\0*", 4)) {
    little_endian = true;
  } else if (head == absl::string_view("MM\0*", 4) ||
             head == absl::string_view("MM*\0", 4)) {
    little_endian = false;
  } else {
    result.readable = false;
    return result;
  }
  const TiffReader tiff(exif, little_endian);
  uint32_t ifd;
  uint16_t entries;
  if (!tiff.U32(4, &ifd)) {
    result.readable = false;
    return result;
  }
  // An IFD that is not there holds no tags (Pillow warns).
  if (!tiff.U16(ifd, &entries)) return result;
  // As Pillow 9.4's getexif() then exif_transpose(): the entries are read in order
  // into a dict, so when the tag repeats the last stored one wins, and reading stops
  // (keeping what it has) at an entry cut short, or at any entry, of whatever tag,
  // whose value of more than 4 bytes runs past the end of the data (its read raises
  // "Truncated File Read", which ends the directory). An entry Pillow does not store
  // leaves an earlier value: a type it has no loader for, or a count of 0. The first
  // value of a stored entry is the orientation when it equals 1..8 as a number (6,
  // 6.0 and 12/2 alike); bytes and text never do.
  double value = 1;
  for (uint32_t i = 0; i < entries; ++i) {
    const size_t entry = size_t{ifd} + 2 + size_t{i} * 12;
    uint16_t tag, type;
    uint32_t count, field;
    if (!tiff.U16(entry, &tag) || !tiff.U16(entry + 2, &type) ||
        !tiff.U32(entry + 4, &count) || !tiff.U32(entry + 8, &field)) {
      break;
    }
    const int size = TypeSize(type);
    if (size == 0 || count == 0) continue;
    const uint64_t bytes = uint64_t{count} * size;
    // Up to 4 bytes sit in the entry itself, more at the offset the field holds.
    const size_t at = bytes <= 4 ? entry + 8 : field;
    if (at > exif.size() || exif.size() - at < bytes) break;
    if (tag != kOrientationTag) continue;
    tiff.Number(type, at, &value);
    result.present = true;
  }
  for (int orientation = 1; orientation <= 8; ++orientation) {
    if (value == orientation) result.orientation = orientation;
  }
  return result;
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
