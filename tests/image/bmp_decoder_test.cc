// The built-in BMP reader on hand-made files: layouts Pillow reads (parity for those is
// in image_parity_test.cc) and malformed headers, which must fail cleanly.

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/image/image_decoder.h"

namespace clipserve::image {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

void Put16(std::string* s, uint32_t v) {
  s->push_back(static_cast<char>(v & 0xFF));
  s->push_back(static_cast<char>((v >> 8) & 0xFF));
}
void Put32(std::string* s, uint32_t v) {
  Put16(s, v & 0xFFFF);
  Put16(s, v >> 16);
}

struct Bmp {
  int32_t width = 2;
  int32_t height = 2;  // Negative: top-down.
  uint16_t bits = 24;
  uint32_t compression = 0;
  uint32_t header_size = 40;
  uint32_t colors_used = 0;
  std::vector<uint32_t> masks;    // Written after a 40-byte header.
  std::vector<uint32_t> palette;  // 0x00RRGGBB
  std::string pixels;             // As stored, rows padded.
  int64_t data_offset = -1;       // -1: right after the palette.

  std::string Encode() const {
    std::string info;
    Put32(&info, header_size);
    Put32(&info, static_cast<uint32_t>(width));
    Put32(&info, static_cast<uint32_t>(height));
    Put16(&info, 1);
    Put16(&info, bits);
    Put32(&info, compression);
    Put32(&info, static_cast<uint32_t>(pixels.size()));
    Put32(&info, 2835);
    Put32(&info, 2835);
    Put32(&info, colors_used);
    Put32(&info, 0);
    info.resize(header_size, '\0');
    for (uint32_t m : masks) Put32(&info, m);
    for (uint32_t c : palette) Put32(&info, c);
    const uint32_t offset =
        data_offset >= 0 ? static_cast<uint32_t>(data_offset) : 14 + info.size();
    std::string file = "BM";
    Put32(&file, static_cast<uint32_t>(14 + info.size() + pixels.size()));
    Put32(&file, 0);
    Put32(&file, offset);
    return file + info + pixels;
  }
};

std::vector<uint8_t> Decoded(const Bmp& bmp) {
  const absl::StatusOr<RgbImage> image = DecodeImage(bmp.Encode());
  EXPECT_TRUE(image.ok()) << image.status();
  return image.ok() ? image->pixels : std::vector<uint8_t>();
}

absl::Status DecodeStatus(const std::string& data) { return DecodeImage(data).status(); }

TEST(BmpDecoderTest, BottomUpAndTopDown24Bit) {
  Bmp bmp;
  // Stored rows, each 2 BGR pixels + 2 bytes of padding.
  bmp.pixels =
      std::string("\x01\x02\x03\x04\x05\x06\0\0\x07\x08\x09\x0a\x0b\x0c\0\0", 16);
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({9, 8, 7, 12, 11, 10,  // top row
                                                       3, 2, 1, 6, 5, 4}));
  bmp.height = -2;
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({3, 2, 1, 6, 5, 4,  //
                                                       9, 8, 7, 12, 11, 10}));
}

TEST(BmpDecoderTest, LastRowNeedsNoPadding) {
  Bmp bmp;
  bmp.width = 1;
  bmp.height = -2;
  bmp.pixels = std::string("\x01\x02\x03\0\x04\x05\x06", 7);  // Second row unpadded.
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({3, 2, 1, 6, 5, 4}));
  bmp.pixels.pop_back();
  EXPECT_THAT(DecodeStatus(bmp.Encode()).message(), HasSubstr("truncated"));
}

TEST(BmpDecoderTest, Palette8WithIndicesPastItsEnd) {
  Bmp bmp;
  bmp.bits = 8;
  bmp.width = 4;
  bmp.height = 1;
  bmp.colors_used = 2;
  bmp.palette = {0x102030, 0x405060};
  bmp.pixels = std::string("\x00\x01\x02\xC8", 4);
  // Indices 2 and 200 are past the 2-entry palette: gray, as Pillow's palette default.
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({0x10, 0x20, 0x30, 0x40, 0x50, 0x60,
                                                       2, 2, 2, 200, 200, 200}));
}

TEST(BmpDecoderTest, Palette1And4Bit) {
  Bmp bmp;
  bmp.bits = 1;
  bmp.width = 10;
  bmp.height = 1;
  bmp.palette = {0x000000, 0xFFFFFF};
  bmp.pixels = std::string("\xA5\x40\0\0", 4);  // 1010 0101 01
  std::vector<uint8_t> want;
  for (int bit : {1, 0, 1, 0, 0, 1, 0, 1, 0, 1})
    want.insert(want.end(), 3, bit ? 255 : 0);
  EXPECT_THAT(Decoded(bmp), ElementsAreArray(want));

  bmp.bits = 4;
  bmp.width = 3;
  bmp.palette.assign(16, 0);
  bmp.palette[0x3] = 0x030303;
  bmp.palette[0xA] = 0x0A0B0C;
  bmp.palette[0xF] = 0xF0F1F2;
  bmp.pixels = std::string("\x3A\xF0\0\0", 4);
  EXPECT_THAT(Decoded(bmp),
              ElementsAreArray<uint8_t>({3, 3, 3, 0x0A, 0x0B, 0x0C, 0xF0, 0xF1, 0xF2}));
}

TEST(BmpDecoderTest, SixteenBitLayouts) {
  Bmp bmp;
  bmp.bits = 16;
  bmp.width = 2;
  bmp.height = 1;
  // BI_RGB is X1R5G5B5: 0x7FFF white, 0x7C00 red.
  bmp.pixels = std::string("\xFF\x7F\x00\x7C", 4);
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({255, 255, 255, 255, 0, 0}));
  // BI_BITFIELDS R5G6B5; 6-bit green 1 scales to 255 / 63 = 4 (truncated, as Pillow).
  bmp.compression = 3;
  bmp.masks = {0xF800, 0x07E0, 0x001F};
  bmp.pixels = std::string("\x20\x00\x1F\xF8", 4);  // 0x0020 (G=1), 0xF81F (R, B)
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({0, 4, 0, 255, 0, 255}));
  // A layout Pillow does not read (R4G4B4): scaled the same way.
  bmp.masks = {0x0F00, 0x00F0, 0x000F};
  bmp.pixels = std::string("\x5A\x03\0\0", 4);  // R=3, G=5, B=10
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({51, 85, 170, 0, 0, 0}));
}

TEST(BmpDecoderTest, ThirtyTwoBitLayouts) {
  Bmp bmp;
  bmp.bits = 32;
  bmp.width = 1;
  bmp.height = 1;
  bmp.pixels = std::string("\x01\x02\x03\x99", 4);  // BGRX: X ignored.
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({3, 2, 1}));
  bmp.compression = 3;
  bmp.masks = {0xFF000000, 0x00FF0000, 0x0000FF00};  // XBGR
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({0x99, 3, 2}));
  bmp.masks = {0, 0, 0};  // Pillow reads all-zero masks as BGRA.
  EXPECT_THAT(Decoded(bmp), ElementsAreArray<uint8_t>({3, 2, 1}));
}

TEST(BmpDecoderTest, MalformedHeadersAreInvalidArgument) {
  Bmp good;
  good.pixels = std::string(16, '\0');
  ASSERT_TRUE(DecodeImage(good.Encode()).ok());

  EXPECT_THAT(
      DecodeStatus("BM"),
      ::testing::Property(&absl::Status::message, HasSubstr("BMP: header is truncated")));
  std::string file = good.Encode();
  EXPECT_THAT(DecodeStatus(file.substr(0, 30)).message(),
              HasSubstr("header is truncated"));

  Bmp bad = good;
  bad.header_size = 20;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
              HasSubstr("unsupported header size 20"));

  bad = good;
  bad.width = 0;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
              HasSubstr("declared size 0x2 is empty"));
  bad = good;
  bad.width = -5;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("is empty"));
  bad = good;
  bad.height = INT32_MIN;  // |height| does not fit in 32 bits signed.
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("exceeds the limit"));

  bad = good;
  bad.width = 100000;
  bad.height = 100000;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
              HasSubstr("declared size 100000x100000 (10000000000 pixels) exceeds"));

  bad = good;
  bad.bits = 2;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("unsupported bit depth 2"));

  bad = good;
  bad.bits = 8;
  bad.compression = 1;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("RLE"));
  bad.compression = 4;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
              HasSubstr("unsupported compression 4"));
  bad.compression = 3;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
              HasSubstr("bitfields with bit depth 8"));

  bad = good;
  bad.bits = 32;
  bad.compression = 3;
  bad.masks = {0xF0F000, 0xFF00, 0xFF};
  bad.pixels = std::string(8, '\0');
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("not contiguous"));
  bad.masks = {0xFF0000};  // Masks cut off by the end of the file.
  bad.pixels.clear();
  EXPECT_EQ(DecodeStatus(bad.Encode()).code(), absl::StatusCode::kInvalidArgument);

  bad = good;
  bad.bits = 8;
  bad.colors_used = 70000;
  EXPECT_THAT(DecodeStatus(bad.Encode()).message(), HasSubstr("palette size 70000"));

  for (int64_t offset : {int64_t{1000}, int64_t{0xFFFFFFFF}, int64_t{60}}) {
    bad = good;
    bad.data_offset = offset;
    EXPECT_THAT(DecodeStatus(bad.Encode()).message(),
                HasSubstr("pixel data is truncated"))
        << offset;
  }
}

}  // namespace
}  // namespace clipserve::image
