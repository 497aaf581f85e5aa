#include "server/image/exif_orientation.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve::image {
namespace {

using ::testing::ElementsAreArray;

// A TIFF header and one IFD holding `entries` (tag, type, value[, count]; count 1 by
// default), in either byte order. SHORTs and BYTEs are left-justified in the 4-byte
// value field; other values fill it (a FLOAT's bits, or an offset).
std::string Tiff(bool little_endian, const std::vector<std::vector<uint32_t>>& entries) {
  std::string s;
  auto put16 = [&](uint32_t v) {
    if (little_endian) {
      s.push_back(static_cast<char>(v & 0xFF));
      s.push_back(static_cast<char>(v >> 8));
    } else {
      s.push_back(static_cast<char>(v >> 8));
      s.push_back(static_cast<char>(v & 0xFF));
    }
  };
  auto put32 = [&](uint32_t v) {
    if (little_endian) {
      put16(v & 0xFFFF);
      put16(v >> 16);
    } else {
      put16(v >> 16);
      put16(v & 0xFFFF);
    }
  };
  s += little_endian ? std::string("II*\0", 4) : std::string("MM\0*", 4);
  put32(8);
  put16(static_cast<uint32_t>(entries.size()));
  for (const auto& e : entries) {
    put16(e[0]);
    put16(e[1]);
    put32(e.size() > 3 ? e[3] : 1);
    if (e[1] == 3 || e[1] == 8) {  // SHORT, SSHORT
      put16(e[2]);
      put16(0);
    } else if (e[1] == 1 || e[1] == 6 || e[1] == 7) {  // BYTE, SBYTE, UNDEFINED
      s.push_back(static_cast<char>(e[2]));
      s.append(3, '\0');
    } else {
      put32(e[2]);
    }
  }
  put32(0);
  return s;
}

TEST(ExifOrientationTest, ReadsTheTagInEitherByteOrder) {
  for (bool le : {true, false}) {
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x010F, 2, 0}, {0x0112, 3, 6}})), 6);
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x0112, 4, 8}})), 8);  // LONG
    EXPECT_EQ(ExifOrientation(std::string("Exif\0\0", 6) + Tiff(le, {{0x0112, 3, 3}})),
              3);
  }
}

// As Pillow's getexif(), which fills a dict entry by entry.
TEST(ExifOrientationTest, ARepeatedTagCountsItsLastValue) {
  for (bool le : {true, false}) {
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x0112, 3, 6}, {0x0112, 3, 8}})), 8);
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x0112, 3, 6}, {0x010F, 2, 0}, {0x0112, 3, 3}})),
              3);
    // A later entry cut short leaves the earlier value.
    const std::string two = Tiff(le, {{0x0112, 3, 6}, {0x0112, 3, 8}});
    EXPECT_EQ(ExifOrientation(two.substr(0, 8 + 2 + 12 + 6)), 6);
  }
}

// Each expectation is what Pillow 9.4 (Debian's python3-pil) gives for a JPEG with
// this EXIF: getexif().get(0x0112) and whether ImageOps.exif_transpose() turns it.
TEST(ExifOrientationTest, EntryTypesAndCountsAsPillowReadsThem) {
  struct Case {
    const char* name;
    std::vector<std::vector<uint32_t>> entries;
    int expected;
  };
  const Case cases[] = {
      {"BYTE is stored as bytes, which exif_transpose ignores", {{0x0112, 1, 6}}, 1},
      {"UNDEFINED likewise", {{0x0112, 7, 6}}, 1},
      {"SSHORT", {{0x0112, 8, 6}}, 6},
      {"SLONG", {{0x0112, 9, 6}}, 6},
      {"an unknown type is skipped", {{0x0112, 3, 6}, {0x0112, 99, 1, 8}}, 6},
      {"type 14 is unknown too", {{0x0112, 3, 6}, {0x0112, 14, 8}}, 6},
      {"type 0 is skipped", {{0x0112, 3, 6}, {0x0112, 0, 8}}, 6},
      {"a later BYTE entry replaces it", {{0x0112, 3, 6}, {0x0112, 1, 8}}, 1},
      {"a count of 0 is skipped", {{0x0112, 3, 6}, {0x0112, 3, 8, 0}}, 6},
      {"two SHORTs: the first counts", {{0x0112, 3, 6, 2}}, 6},
      {"SBYTE", {{0x0112, 6, 6}}, 6},
      {"SBYTE -2", {{0x0112, 6, 0xFE}}, 1},
      {"FLOAT 6.0", {{0x0112, 11, 0x40C00000}}, 6},
      {"FLOAT 6.5", {{0x0112, 11, 0x40D00000}}, 1},
      {"IFD", {{0x0112, 13, 6}}, 6},
      {"ASCII is text, which exif_transpose ignores", {{0x0112, 2, 6}}, 1},
  };
  for (const Case& c : cases) {
    for (bool le : {true, false}) {
      EXPECT_EQ(ExifOrientation(Tiff(le, c.entries)), c.expected)
          << c.name << (le ? " (II)" : " (MM)");
    }
  }
  // Two LONGs are 8 bytes, stored at the offset the entry holds: here the 8 bytes after
  // the IFD's next-IFD link (8 + 2 + 12 + 4 = 26).
  for (bool le : {true, false}) {
    std::string with_values = Tiff(le, {{0x0112, 4, 26, 2}});
    const std::string six = Tiff(le, {{0x0112, 4, 6}}).substr(18, 4);  // LONG 6
    with_values += six + six;
    EXPECT_EQ(ExifOrientation(with_values), 6) << le;
    // Pointing past the end: not stored, so upright.
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x0112, 4, 1000, 2}})), 1) << le;
    // Any entry whose value runs past the end (here an ASCII Make of 20 bytes) ends
    // the directory: an orientation after it is never read, one before it stays.
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x010F, 2, 1000, 20}, {0x0112, 3, 6}})), 1)
        << le;
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x0112, 3, 6}, {0x010F, 2, 1000, 20}})), 6)
        << le;
    EXPECT_EQ(ExifOrientation(Tiff(le, {{0x010F, 99, 1000, 20}, {0x0112, 3, 6}})), 6)
        << le << ": a type Pillow has no loader for is skipped before its value is read";
    // A value that ends right at the end of the data is read; a byte further is not.
    const size_t end = Tiff(le, {{0x010F, 2, 0, 8}, {0x0112, 3, 6}}).size();
    for (const uint32_t offset : {end, end + 1}) {
      const std::string tiff =
          Tiff(le, {{0x010F, 2, static_cast<uint32_t>(offset), 8}, {0x0112, 3, 6}}) +
          std::string("ABCDEFG\0", 8);
      EXPECT_EQ(ExifOrientation(tiff), offset == end ? 6 : 1) << le << " " << offset;
    }
  }
  // 8-byte types, their value at offset 26 likewise (as Pillow gave them: 6.0, 6, nan).
  struct Wide {
    const char* name;
    uint32_t type;
    uint32_t high, low;  // the 8 bytes as two 32-bit words, in the file's order
    int expected;
  };
  const Wide wide[] = {
      {"RATIONAL 12/2", 5, 12, 2, 6},
      {"RATIONAL 13/2", 5, 13, 2, 1},
      {"RATIONAL 6/0", 5, 6, 0, 1},
      {"SRATIONAL -12/-2", 10, 0xFFFFFFF4, 0xFFFFFFFE, 6},
      {"DOUBLE 6.0", 12, 0x40180000, 0, 6},
      {"LONG8 6", 16, 0, 6, 6},
  };
  for (const Wide& w : wide) {
    for (bool le : {true, false}) {
      std::string tiff = Tiff(le, {{0x0112, w.type, 26}});
      // Words as LONGs of this byte order; DOUBLE and LONG8 swap them in II.
      const bool swap = le && (w.type == 12 || w.type == 16);
      for (uint32_t word : {swap ? w.low : w.high, swap ? w.high : w.low}) {
        tiff += Tiff(le, {{0x0112, 4, word}}).substr(18, 4);
      }
      EXPECT_EQ(ExifOrientation(tiff), w.expected) << w.name << (le ? " (II)" : " (MM)");
    }
  }
}

// Pillow accepts 42 spelled either way after the byte order mark.
TEST(ExifOrientationTest, EitherSpellingOfTheTiffMagic) {
  for (bool le : {true, false}) {
    std::string tiff = Tiff(le, {{0x0112, 3, 6}});
    std::swap(tiff[2], tiff[3]);
    EXPECT_EQ(ExifOrientation(tiff), 6) << le;
    tiff[2] = '+';  // BigTIFF: another layout, not read
    EXPECT_EQ(ExifOrientation(tiff), 1) << le;
  }
}

TEST(ExifOrientationTest, MissingOrMalformedIsUpright) {
  EXPECT_EQ(ExifOrientation(""), 1);
  EXPECT_EQ(ExifOrientation("not exif at all"), 1);
  EXPECT_EQ(ExifOrientation(Tiff(true, {})), 1);
  EXPECT_EQ(ExifOrientation(Tiff(true, {{0x0112, 3, 9}})), 1);  // Out of range.
  EXPECT_EQ(ExifOrientation(Tiff(true, {{0x0112, 3, 0}})), 1);
  const std::string full = Tiff(true, {{0x0100, 3, 1}, {0x0112, 3, 5}});
  EXPECT_EQ(ExifOrientation(full), 5);
  // Every cut before the end of the orientation's value (byte 32) reads as upright.
  for (size_t n = 0; n < 32; ++n) {
    EXPECT_EQ(ExifOrientation(full.substr(0, n)), 1) << n;
  }
  std::string bad_offset = full;
  bad_offset[4] = '\xF0';  // IFD offset far past the end.
  EXPECT_EQ(ExifOrientation(bad_offset), 1);
}

// A 3 x 2 image whose pixel (x, y) is (10 * y + x, 0, 0):
//   0  1  2
//  10 11 12
RgbImage Numbered() {
  RgbImage image;
  image.width = 3;
  image.height = 2;
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 3; ++x)
      image.pixels.insert(image.pixels.end(), {uint8_t(10 * y + x), 0, 0});
  }
  return image;
}

std::vector<int> Reds(const RgbImage& image) {
  std::vector<int> reds;
  for (size_t i = 0; i < image.pixels.size(); i += 3) reds.push_back(image.pixels[i]);
  return reds;
}

// What a PNG's XMP fallback needs: whether Pillow could read the EXIF at all, and
// whether it holds the tag whatever its value.
TEST(ExifOrientationTest, ReadExifOrientationTagTellsAbsentFromUnreadable) {
  auto read = [](absl::string_view exif) {
    const ExifOrientationTag tag = ReadExifOrientationTag(exif);
    return std::vector<int>{tag.readable, tag.present, tag.orientation};
  };
  EXPECT_EQ(read(""), (std::vector<int>{1, 0, 1}));
  EXPECT_EQ(read(std::string("Exif\0\0", 6)), (std::vector<int>{1, 0, 1}));
  EXPECT_EQ(read(Tiff(true, {{0x010F, 2, 0}})), (std::vector<int>{1, 0, 1}));
  EXPECT_EQ(read(Tiff(true, {{0x0112, 3, 6}})), (std::vector<int>{1, 1, 6}));
  EXPECT_EQ(read(Tiff(false, {{0x0112, 3, 9}})), (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(read(Tiff(true, {{0x0112, 3, 0}})), (std::vector<int>{1, 1, 1}));
  // An IFD offset past the end: no tags, as Pillow reads it (with a warning).
  std::string far = Tiff(true, {{0x0112, 3, 6}});
  far[4] = '\x7f';
  EXPECT_EQ(read(far), (std::vector<int>{1, 0, 1}));
  // Pillow raises: no TIFF magic, a header cut short, BigTIFF, "Exif\0\0" twice.
  EXPECT_EQ(read("JFIF"), (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(read(std::string("II*\0\x08\0", 6)), (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(read(std::string("II+\0\x08\0\0\0\0\0\0\0", 12)),
            (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(read(std::string("Exif\0\0Exif\0\0", 12) + Tiff(true, {{0x0112, 3, 6}})),
            (std::vector<int>{0, 0, 1}));
}

TEST(ApplyExifOrientationTest, EachOrientation) {
  struct Case {
    int orientation, width, height;
    std::vector<int> reds;
  };
  const std::vector<Case> cases = {
      {1, 3, 2, {0, 1, 2, 10, 11, 12}},
      {2, 3, 2, {2, 1, 0, 12, 11, 10}},  // mirror left-right
      {3, 3, 2, {12, 11, 10, 2, 1, 0}},  // rotate 180
      {4, 3, 2, {10, 11, 12, 0, 1, 2}},  // mirror top-bottom
      {5, 2, 3, {0, 10, 1, 11, 2, 12}},  // transpose
      {6, 2, 3, {10, 0, 11, 1, 12, 2}},  // rotate 90 clockwise
      {7, 2, 3, {12, 2, 11, 1, 10, 0}},  // transverse
      {8, 2, 3, {2, 12, 1, 11, 0, 10}},  // rotate 90 counter-clockwise
      {9, 3, 2, {0, 1, 2, 10, 11, 12}},  // invalid: unchanged
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.orientation);
    const RgbImage out = ApplyExifOrientation(Numbered(), c.orientation);
    EXPECT_EQ(out.width, c.width);
    EXPECT_EQ(out.height, c.height);
    EXPECT_THAT(Reds(out), ElementsAreArray(c.reds));
    EXPECT_TRUE(out.alpha.empty());

    // Alpha turns with the pixels, and the resample mode stays.
    RgbImage with_alpha = Numbered();
    with_alpha.resample = ResampleMode::kPremultiplied;
    for (size_t i = 0; i < with_alpha.pixels.size(); i += 3) {
      with_alpha.alpha.push_back(static_cast<uint8_t>(100 + with_alpha.pixels[i]));
    }
    const RgbImage turned = ApplyExifOrientation(with_alpha, c.orientation);
    EXPECT_EQ(turned.resample, ResampleMode::kPremultiplied);
    std::vector<int> alpha_minus_100;
    for (uint8_t a : turned.alpha) alpha_minus_100.push_back(a - 100);
    EXPECT_THAT(alpha_minus_100, ElementsAreArray(c.reds));

    RgbImage with_cmyk = Numbered();
    with_cmyk.resample = ResampleMode::kCmyk;
    for (size_t i = 0; i < with_cmyk.pixels.size(); i += 3) {
      const uint8_t v = with_cmyk.pixels[i];
      with_cmyk.cmyk.insert(with_cmyk.cmyk.end(),
                            {v, 1, 2, static_cast<uint8_t>(200 + v)});
    }
    const RgbImage turned_cmyk = ApplyExifOrientation(with_cmyk, c.orientation);
    std::vector<int> cyan, black_minus_200;
    for (size_t i = 0; i < turned_cmyk.cmyk.size(); i += 4) {
      cyan.push_back(turned_cmyk.cmyk[i]);
      black_minus_200.push_back(turned_cmyk.cmyk[i + 3] - 200);
    }
    EXPECT_THAT(cyan, ElementsAreArray(c.reds));
    EXPECT_THAT(black_minus_200, ElementsAreArray(c.reds));
  }
}

}  // namespace
}  // namespace clipserve::image
