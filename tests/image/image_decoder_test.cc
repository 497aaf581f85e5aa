#include "server/image/image_decoder.h"

// jpeglib.h uses size_t and FILE without including their headers.
// clang-format off
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
#include <sys/resource.h>
#include <unistd.h>
// clang-format on
#include <gif_lib.h>
#include <webp/encode.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/common/status_payloads.h"
#include "server/image/decoders.h"
#include "tests/image/image_test_util.h"
#include "tests/testing/shared_data.h"
#include "zlib.h"

namespace clipserve::image {
namespace {

using ::testing::HasSubstr;

std::string ReadShared(const std::string& name) {
  const std::string path = testing::SharedPath("images/" + name);
  std::string data;
  EXPECT_TRUE(ReadFileBytes(path, &data)) << "cannot read " << path;
  return data;
}

TEST(SniffImageFormatTest, UsesMagicNumbersNotNames) {
  EXPECT_EQ(SniffImageFormat(ReadShared("rocket.jpg")), ImageFormat::kJpeg);
  EXPECT_EQ(SniffImageFormat(ReadShared("chelsea.png")), ImageFormat::kPng);
  EXPECT_EQ(SniffImageFormat(ReadShared("chelsea.gif")), ImageFormat::kGif);
  EXPECT_EQ(SniffImageFormat(ReadShared("chelsea.webp")), ImageFormat::kWebp);
  EXPECT_EQ(SniffImageFormat(ReadShared("chelsea.bmp")), ImageFormat::kBmp);
  EXPECT_EQ(SniffImageFormat(ReadShared("not_an_image.jpg")), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat(""), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat("GIF88a"), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat("RIFF\0\0\0\0WAVE"), ImageFormat::kUnknown);
  EXPECT_EQ(SniffImageFormat(std::string("RIFF\0\0\0\0WEBP", 12)), ImageFormat::kWebp);
  EXPECT_EQ(ImageFormatName(ImageFormat::kWebp), "WebP");
}

// API.md: RESOURCE_EXHAUSTED without a RetryInfo means retrying will not help, which
// is wrong for a codec's failed allocation.
TEST(DecodeImageTest, ACodecOutOfMemoryIsRetryable) {
  const absl::Status status = internal::OutOfMemoryError("PNG", "out of memory");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "PNG: out of memory");
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Seconds(1));
}

TEST(DecodeImageTest, EmptyInputIsInvalidArgument) {
  const absl::StatusOr<RgbImage> image = DecodeImage("");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("empty"));
}

TEST(DecodeImageTest, TextIsInvalidArgument) {
  const absl::StatusOr<RgbImage> image = DecodeImage(ReadShared("not_an_image.jpg"));
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("unrecognized image format"));
}

// libjpeg pads a short stream with gray and warns; Pillow raises, and so do we.
TEST(DecodeImageTest, TruncatedJpegIsInvalidArgument) {
  const absl::StatusOr<RgbImage> image = DecodeImage(ReadShared("truncated.jpg"));
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("JPEG: Premature end of JPEG file"));
}

// 100000 x 100000 declared in 74 bytes: refused from the header. Allocating the
// declared 30 GB would throw std::bad_alloc and fail the test process, so passing
// shows that the check came first.
TEST(DecodeImageTest, DecompressionBombIsRefusedFromTheHeader) {
  const std::string bomb = ReadShared("bomb_100k.png");
  ASSERT_EQ(bomb.size(), 74u);
  const absl::StatusOr<RgbImage> image = DecodeImage(bomb);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(),
              HasSubstr("PNG: declared size 100000x100000 (10000000000 pixels) exceeds "
                        "the limit of 40000000 pixels"));
}

std::string Be32(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
}

// A PNG chunk: length, type, data, CRC.
std::string PngChunk(const std::string& type, const std::string& data) {
  const std::string body = type + data;
  const uLong crc =
      crc32(0, reinterpret_cast<const Bytef*>(body.data()), uInt(body.size()));
  return Be32(uint32_t(data.size())) + body + Be32(uint32_t(crc));
}

std::string Deflate(const std::string& raw, int level = 9) {
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::string packed(packed_size, '\0');
  EXPECT_EQ(
      compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                reinterpret_cast<const Bytef*>(raw.data()), uLong(raw.size()), level),
      Z_OK);
  packed.resize(packed_size);
  return packed;
}

// A PNG of `width` x `height` 8-bit RGB whose IDAT holds `rows` rows of black,
// compressed as tightly as zlib can, with `before_idat` (whole chunks) after IHDR.
std::string BlackPng(uint32_t width, uint32_t height, uint32_t rows,
                     const std::string& before_idat = "") {
  const std::string raw(size_t{rows} * (1 + size_t{width} * 3), '\0');
  return std::string("\x89PNG\r\n\x1a\n", 8) +
         PngChunk("IHDR", Be32(width) + Be32(height) + std::string("\x08\x02\0\0\0", 5)) +
         before_idat + PngChunk("IDAT", Deflate(raw)) + PngChunk("IEND", "");
}

// Pillow checks the CRC of IHDR and of every other chunk before the first IDAT, never
// IDAT's or those after it.
TEST(DecodeImageTest, PngCrcsAreCheckedWherePillowChecksThem) {
  const std::string good = BlackPng(16, 16, 16);
  auto with_broken_crc = [&](const std::string& type) {
    std::string png = good;
    const size_t at = png.find(type);
    const uint32_t length = (uint32_t(uint8_t(png[at - 4])) << 24) |
                            (uint32_t(uint8_t(png[at - 3])) << 16) |
                            (uint32_t(uint8_t(png[at - 2])) << 8) | uint8_t(png[at - 1]);
    png[at + 4 + length] ^= 0x5a;  // the first byte of the chunk's CRC
    return png;
  };
  const absl::StatusOr<RgbImage> idat = DecodeImage(with_broken_crc("IDAT"));
  ASSERT_TRUE(idat.ok()) << idat.status();
  EXPECT_EQ(idat->width, 16);
  EXPECT_EQ(idat->pixels, DecodeImage(good)->pixels);
  EXPECT_EQ(DecodeImage(with_broken_crc("IHDR")).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An ancillary chunk's too (Pillow: "broken PNG file"), before IDAT only.
  const std::string text_body =
      std::string("tEXtComment", 11) + std::string(1, '\0') + "hi";
  const uLong text_crc =
      crc32(0, reinterpret_cast<const Bytef*>(text_body.data()), uInt(text_body.size()));
  const std::string text =
      std::string("\0\0\0\x0A", 4) + text_body +
      std::string{static_cast<char>(text_crc >> 24), static_cast<char>(text_crc >> 16),
                  static_cast<char>(text_crc >> 8), static_cast<char>(text_crc)};
  const size_t idat_at = good.find("IDAT") - 4;
  const size_t iend_at = good.find("IEND") - 4;
  std::string broken_text = text;
  broken_text.back() ^= 0x5a;
  EXPECT_TRUE(DecodeImage(good.substr(0, idat_at) + text + good.substr(idat_at)).ok());
  EXPECT_EQ(DecodeImage(good.substr(0, idat_at) + broken_text + good.substr(idat_at))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      DecodeImage(good.substr(0, iend_at) + broken_text + good.substr(iend_at)).ok());
}

// A compressed text chunk counts where it inflates to at most 1 MiB, Pillow's
// MAX_TEXT_CHUNK; past that Pillow refuses the file, and so does clipserve, as it
// does past 64 MiB of text. (tests/image/make_image_reference.py holds the other
// PNG orientation and chunk cases, each checked against Pillow.)
TEST(DecodeImageTest, PngTextWithinPillowsLimitsGivesItsOrientation) {
  DecodeOptions options;
  options.honor_exif_orientation = true;
  const std::string xmp_tag = "<x tiff:Orientation=\"6\"/>";
  // The decoded width (8 where turned a quarter), or -1 where refused.
  auto decoded_width = [&](const std::string& chunk) {
    const absl::StatusOr<RgbImage> image =
        DecodeImage(BlackPng(16, 8, 8, chunk), options);
    if (!image.ok()) {
      EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
      return -1;
    }
    return image->width;
  };
  const std::string key = std::string("XML:com.adobe.xmp") + '\0';
  for (const size_t size : {size_t{1} << 20, (size_t{1} << 20) + 1}) {
    SCOPED_TRACE(size);
    const std::string xmp = std::string(size - xmp_tag.size(), ' ') + xmp_tag;
    const int expected = size <= (size_t{1} << 20) ? 8 : -1;
    EXPECT_EQ(decoded_width(PngChunk("zTXt", key + '\0' + Deflate(xmp))), expected);
    EXPECT_EQ(
        decoded_width(PngChunk("iTXt", key + std::string("\1\0\0\0", 4) + Deflate(xmp))),
        expected);
  }
  EXPECT_EQ(decoded_width(PngChunk("tEXt", key + std::string(2 << 20, ' ') + xmp_tag)),
            8);
  // A zTXt stream cut short still gives the text it holds.
  const std::string cut = Deflate(std::string(4000, ' ') + xmp_tag);
  EXPECT_EQ(decoded_width(PngChunk("zTXt", key + '\0' + cut.substr(0, cut.size() - 4))),
            8);
  EXPECT_EQ(decoded_width(PngChunk("zTXt", key + '\0' + "not zlib" + xmp_tag)), 16);
  // Pillow refuses more than 64 MiB of text in all.
  const std::string full_chunk = PngChunk(
      "zTXt",
      key + '\0' + Deflate(std::string((1 << 20) - xmp_tag.size(), ' ') + xmp_tag));
  std::string chunks;
  for (int i = 0; i < 64; ++i) chunks += full_chunk;
  EXPECT_EQ(decoded_width(chunks), 8);
  EXPECT_EQ(decoded_width(chunks + full_chunk), -1);
}

// What Pillow does not count as text, this reader inflates only so far: 65 ICC
// profiles of 1 MiB each (a few kilobytes of file) are refused, a deliberate
// difference from Pillow, which would inflate every one.
TEST(DecodeImageTest, PngCompressedChunksInflateToAt64MiBInAll) {
  const std::string profile =
      PngChunk("iCCP", std::string("icc\0\0", 5) + Deflate(std::string(1 << 20, 'p')));
  std::string profiles;
  for (int i = 0; i < 64; ++i) profiles += profile;
  EXPECT_TRUE(DecodeImage(BlackPng(16, 8, 8, profiles)).ok());
  const std::string bomb = BlackPng(16, 8, 8, profiles + profile);
  ASSERT_LT(bomb.size(), 100'000u);
  const absl::StatusOr<RgbImage> image = DecodeImage(bomb);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("inflate to more than 64 MiB"));
}

// Pillow decodes a PNG cut short anywhere after the last compressed byte its rows need
// (in the zlib stream's end code or checksum, or the last IDAT's CRC), and refuses it
// when rows are missing; libpng reads on to the stream's end. For chelsea.png the
// last 22 bytes can go (tests/image/make_image_reference.py does not cut files).
TEST(DecodeImageTest, PngCutShortAfterItsLastRowDecodesAsPillowDoes) {
  const std::string whole = ReadShared("chelsea.png");
  const absl::StatusOr<RgbImage> expected = DecodeImage(whole);
  ASSERT_TRUE(expected.ok()) << expected.status();
  for (size_t cut = 1; cut <= 40; ++cut) {
    const absl::StatusOr<RgbImage> image =
        DecodeImage(whole.substr(0, whole.size() - cut));
    if (cut <= 22) {
      ASSERT_TRUE(image.ok()) << "cut " << cut << ": " << image.status();
      EXPECT_EQ(image->pixels, expected->pixels) << "cut " << cut;
    } else {
      EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << cut;
      EXPECT_THAT(image.status().message(), HasSubstr("PNG: data is truncated")) << cut;
    }
  }
}

// The same for an interlaced file, whose rows come in seven passes: a 37x23 gradient,
// each pixel its own value, so that a row of any pass left out would show. Its zlib
// stream is stored, not compressed, so that the zeros libpng reads past the end make
// valid rows: only the count of the bytes the passes need tells them apart.
TEST(DecodeImageTest, AnInterlacedPngCutShortAfterItsLastPassDecodesWhole) {
  constexpr uint32_t kWidth = 37, kHeight = 23;
  auto value = [](uint32_t x, uint32_t y, int c) {
    return static_cast<char>((x * 7 + y * 13 + c * 29) & 0xff);
  };
  struct Pass {
    uint32_t x0, dx, y0, dy;
  };
  constexpr Pass kAdam7[] = {{0, 8, 0, 8}, {4, 8, 0, 8}, {0, 4, 4, 8}, {2, 4, 0, 4},
                             {0, 2, 2, 4}, {1, 2, 0, 2}, {0, 1, 1, 2}};
  std::string raw;
  for (const Pass& pass : kAdam7) {
    if (pass.x0 >= kWidth || pass.y0 >= kHeight) continue;
    for (uint32_t y = pass.y0; y < kHeight; y += pass.dy) {
      raw += '\0';  // filter: none
      for (uint32_t x = pass.x0; x < kWidth; x += pass.dx) {
        for (int c = 0; c < 3; ++c) raw += value(x, y, c);
      }
    }
  }
  const std::string png =
      std::string("\x89PNG\r\n\x1a\n", 8) +
      PngChunk("IHDR",
               Be32(kWidth) + Be32(kHeight) + std::string("\x08\x02\0\0\x01", 5)) +
      PngChunk("IDAT", Deflate(raw, /*level=*/0)) + PngChunk("IEND", "");
  const absl::StatusOr<RgbImage> whole = DecodeImage(png);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<uint8_t> expected;
  for (uint32_t y = 0; y < kHeight; ++y) {
    for (uint32_t x = 0; x < kWidth; ++x) {
      for (int c = 0; c < 3; ++c)
        expected.push_back(static_cast<uint8_t>(value(x, y, c)));
    }
  }
  ASSERT_EQ(whole->pixels, expected);
  // IEND (12 bytes), the IDAT's CRC (4) and the zlib checksum (4): every row is there.
  for (size_t cut = 1; cut <= 20; ++cut) {
    const absl::StatusOr<RgbImage> image = DecodeImage(png.substr(0, png.size() - cut));
    ASSERT_TRUE(image.ok()) << "cut " << cut << ": " << image.status();
    EXPECT_EQ(image->pixels, expected) << "cut " << cut;
  }
  // From 21 bytes off, the last row's last bytes are missing: refused, whether libpng
  // reads zeros in their place (up to 32 bytes) or not.
  for (size_t cut : {21, 25, 40, 60}) {
    const absl::StatusOr<RgbImage> image = DecodeImage(png.substr(0, png.size() - cut));
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << cut;
    EXPECT_THAT(image.status().message(), HasSubstr("PNG: data is truncated")) << cut;
  }
}

// A whole file whose zlib stream stops short of its end (no final block, no or part
// of the checksum) or goes on after it: Pillow decodes each once every row is there,
// and refuses only a checksum that is all there and wrong. So too where bytes that are
// no chunk follow the stream's last IDAT (a zeroed IEND), on which libpng, reading on
// for the rest of the stream, fails after the last row (checked against Pillow 9.4).
TEST(DecodeImageTest,
     PngWhoseZlibStreamDoesNotEndCleanlyAfterItsRowsDecodesAsPillowDoes) {
  constexpr uint32_t kWidth = 37, kHeight = 23;
  std::string raw;
  std::vector<uint8_t> expected;
  for (uint32_t y = 0; y < kHeight; ++y) {
    raw += '\0';  // filter: none
    for (uint32_t x = 0; x < kWidth; ++x) {
      for (int c = 0; c < 3; ++c) {
        const auto v = static_cast<uint8_t>((x * 7 + y * 13 + c * 29) & 0xff);
        raw += static_cast<char>(v);
        expected.push_back(v);
      }
    }
  }
  const std::string whole = Deflate(raw);
  // All the rows, flushed to a byte boundary, but no final block and no checksum.
  std::string unfinished(compressBound(uLong(raw.size())) + 64, '\0');
  z_stream z = {};
  ASSERT_EQ(deflateInit(&z, 9), Z_OK);
  z.next_in = reinterpret_cast<Bytef*>(raw.data());
  z.avail_in = uInt(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(unfinished.data());
  z.avail_out = uInt(unfinished.size());
  ASSERT_EQ(deflate(&z, Z_SYNC_FLUSH), Z_OK);
  unfinished.resize(z.total_out);
  deflateEnd(&z);
  std::string wrong_checksum = whole;
  wrong_checksum.back() ^= 0x01;
  const std::string zeroed_chunk(12, '\0');
  const auto png = [&](const std::vector<std::string>& idats,
                       const std::string& after = PngChunk("IEND", "")) {
    std::string out =
        std::string("\x89PNG\r\n\x1a\n", 8) +
        PngChunk("IHDR", Be32(kWidth) + Be32(kHeight) + std::string("\x08\x02\0\0\0", 5));
    for (const std::string& idat : idats) out += PngChunk("IDAT", idat);
    return out + after;
  };
  const std::pair<std::string, std::string> accepted[] = {
      {"whole", png({whole})},
      {"no final block", png({unfinished})},
      {"no final block, two IDATs",
       png({unfinished.substr(0, 100), unfinished.substr(100)})},
      {"no checksum", png({whole.substr(0, whole.size() - 4)})},
      {"3 bytes of checksum", png({whole.substr(0, whole.size() - 1)})},
      {"bytes after the stream", png({whole + "junkjunk"})},
      {"no checksum, then no chunk",
       png({whole.substr(0, whole.size() - 4)}, zeroed_chunk)},
      {"no final block, then no chunk", png({unfinished}, zeroed_chunk)},
      {"no checksum, then another chunk",
       png({whole.substr(0, whole.size() - 4)}, PngChunk("junk", "!"))},
      {"no checksum, then the end of the file",
       png({whole.substr(0, whole.size() - 4)}, "")},
  };
  for (const auto& [name, file] : accepted) {
    const absl::StatusOr<RgbImage> image = DecodeImage(file);
    EXPECT_TRUE(image.ok()) << name << ": " << image.status();
    if (image.ok()) {
      EXPECT_EQ(image->pixels, expected) << name;
    }
  }
  const std::string half = Deflate(raw.substr(0, raw.size() / 2));
  const std::pair<std::string, std::string> refused[] = {
      {"wrong checksum", png({wrong_checksum})},
      {"wrong checksum, then no chunk", png({wrong_checksum}, zeroed_chunk)},
      {"rows missing, then no chunk",
       png({half.substr(0, half.size() - 4)}, zeroed_chunk)},
  };
  for (const auto& [name, file] : refused) {
    EXPECT_EQ(DecodeImage(file).status().code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
}

// Deflate inflates at most 1032-fold: a header that claims more pixels than the file
// could ever hold is refused before the image is allocated.
TEST(DecodeImageTest, PngClaimingMoreDataThanTheFileCanHoldIsRefusedUpFront) {
  const std::string hollow = BlackPng(6000, 6000, 1);  // 108 MB of pixels, ~100 bytes
  ASSERT_LT(hollow.size(), 200u);
  const absl::StatusOr<RgbImage> image = DecodeImage(hollow);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(),
              HasSubstr("PNG: declared size 6000x6000 needs more pixel data than a"));
  // The most compressible real image still decodes: zlib's best is under the bound.
  const std::string black = BlackPng(2000, 2000, 2000);
  const absl::StatusOr<RgbImage> decoded = DecodeImage(black);
  ASSERT_TRUE(decoded.ok()) << decoded.status() << " (" << black.size() << " bytes)";
  EXPECT_EQ(decoded->width, 2000);
}

// An image too elongated to resize to the model's input is refused from its header,
// before its pixels (here 10 million rows, 40 MB of row buffers) are decoded.
TEST(DecodeImageTest, AnImageTooElongatedToResizeIsRefusedBeforeDecoding) {
  const std::string elongated = BlackPng(1, 10'000'000, 10'000'000);
  DecodeOptions options;
  options.resize_short_side = 224;  // 224 x 2.24 billion: past any int side
  const absl::StatusOr<RgbImage> image = DecodeImage(elongated, options);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(),
              HasSubstr("PNG: a 1x10000000 image is too elongated to resize to 224"));
  const absl::StatusOr<RgbImage> square = DecodeImage(BlackPng(16, 16, 16), options);
  EXPECT_TRUE(square.ok()) << square.status();
}

#if !defined(ABSL_HAVE_ADDRESS_SANITIZER) && !defined(ABSL_HAVE_THREAD_SANITIZER)
// The sanitizers' allocators abort on a refused allocation (and need more address
// space than the limit below leaves).

// Bytes of address space this process has mapped.
int64_t MappedBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0;
  statm >> pages;
  return pages * sysconf(_SC_PAGESIZE);
}

// Decodes `encoded` with this process's address space capped `headroom` bytes above
// what it holds (for good: call it in a death test's child), printing the status on
// stderr; exits 2 where the cap cannot be set.
absl::Status DecodeWithHeadroom(const std::string& encoded, const DecodeOptions& options,
                                int64_t headroom) {
  const rlim_t cap = static_cast<rlim_t>(MappedBytes() + headroom);
  rlimit limit;
  limit.rlim_cur = cap;
  limit.rlim_max = cap;
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(2);
  const absl::Status status = DecodeImage(encoded, options).status();
  std::fprintf(stderr, "%s\n", status.ToString().c_str());
  return status;
}

// Exits 0 when decoding `encoded` within 64 MiB of headroom fails with
// RESOURCE_EXHAUSTED, out of memory (else 1).
[[noreturn]] void DecodeUnderAnAddressSpaceCap(const std::string& encoded,
                                               const DecodeOptions& options) {
  const absl::Status status = DecodeWithHeadroom(encoded, options, int64_t{64} << 20);
  const bool refused = status.code() == absl::StatusCode::kResourceExhausted &&
                       absl::StrContains(status.message(), "out of memory");
  std::_Exit(refused ? 0 : 1);
}

// An image the allocator refuses fails alone, RESOURCE_EXHAUSTED, instead of ending
// the process with an uncaught std::bad_alloc. Run in a child process whose address
// space cannot take the image's 192 MB.
TEST(DecodeImageDeathTest, AnImageTheAllocatorRefusesIsResourceExhausted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string png = BlackPng(8000, 8000, 8000);
  DecodeOptions options;
  options.max_pixels = 100'000'000;
  EXPECT_EXIT(DecodeUnderAnAddressSpaceCap(png, options), ::testing::ExitedWithCode(0),
              "PNG: out of memory");
}

// Exits 0 when `encoded` decodes within `headroom` bytes of address space (else 1).
[[noreturn]] void DecodeWithin(const std::string& encoded, const DecodeOptions& options,
                               int64_t headroom) {
  std::_Exit(DecodeWithHeadroom(encoded, options, headroom).ok() ? 0 : 1);
}

// A "Raw profile type exif" tEXt of 24 MiB of newlines (Pillow caps only compressed
// text chunks, at 1 MiB each): read in place, it takes memory in proportion to its
// text, asked for its orientation or not (split into lines it took 16 bytes a line,
// 384 MiB).
TEST(DecodeImageDeathTest, APngRawProfileOfNewlinesTakesNoMoreThanItsText) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string png =
      BlackPng(16, 8, 8,
               PngChunk("tEXt", std::string("Raw profile type exif\0", 22) +
                                    std::string(24 << 20, '\n')));
  for (const bool honor : {false, true}) {
    SCOPED_TRACE(honor);
    DecodeOptions options;
    options.honor_exif_orientation = honor;
    EXPECT_EXIT(DecodeWithin(png, options, int64_t{96} << 20),
                ::testing::ExitedWithCode(0), "OK");
  }
}

#endif

TEST(DecodeImageTest, PixelLimitIsInclusive) {
  const std::string png = ReadShared("chelsea.png");  // 451 x 300 = 135300 pixels.
  DecodeOptions options;
  options.max_pixels = 135300;
  EXPECT_TRUE(DecodeImage(png, options).ok());
  options.max_pixels = 135299;
  const absl::StatusOr<RgbImage> image = DecodeImage(png, options);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("exceeds the limit of 135299 pixels"));
}

TEST(DecodeImageTest, PixelLimitAppliesToEveryFormat) {
  DecodeOptions options;
  options.max_pixels = 1000;
  for (const char* name : {"chelsea.png", "chelsea_q75.jpg", "chelsea.gif",
                           "chelsea.webp", "chelsea.bmp", "chelsea_progressive.jpg"}) {
    SCOPED_TRACE(name);
    const absl::StatusOr<RgbImage> image = DecodeImage(ReadShared(name), options);
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(image.status().message(), HasSubstr("declared size 451x300"));
  }
}

TEST(DecodeImageTest, EncodedSizeLimit) {
  const std::string png = ReadShared("chelsea.png");
  DecodeOptions options;
  options.max_encoded_bytes = static_cast<int64_t>(png.size()) - 1;
  const absl::StatusOr<RgbImage> image = DecodeImage(png, options);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("over the limit"));
  options.max_encoded_bytes = static_cast<int64_t>(png.size());
  EXPECT_TRUE(DecodeImage(png, options).ok());
}

TEST(DecodeImageTest, EdgeSizes) {
  const absl::StatusOr<RgbImage> one = DecodeImage(ReadShared("one_pixel.png"));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->width, 1);
  EXPECT_EQ(one->height, 1);
  EXPECT_EQ(one->pixels.size(), 3u);
  const absl::StatusOr<RgbImage> wide = DecodeImage(ReadShared("very_wide.png"));
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->width, 4000);
  EXPECT_EQ(wide->height, 30);
}

// A zero side in the header is refused by the codec or by the size check.
TEST(DecodeImageTest, ZeroSizedImagesAreInvalidArgument) {
  std::string png = ReadShared("one_pixel.png");
  png[16 + 3] = 0;  // IHDR width 1 -> 0 (the CRC no longer matches either).
  EXPECT_EQ(DecodeImage(png).status().code(), absl::StatusCode::kInvalidArgument);
  // GIF: 0 x 0 logical screen and frame.
  constexpr char kGif[] = "GIF89a\0\0\0\0\0\0\0,\0\0\0\0\0\0\0\0\0\x02\x02\x44\x01\0;";
  const std::string gif(kGif, sizeof(kGif) - 1);
  const absl::StatusOr<RgbImage> image = DecodeImage(gif);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("GIF: declared size 0x0 is empty"));
}

// Any prefix of a valid file either decodes (formats whose tail is optional for
// Pillow, e.g. a PNG missing IEND) or fails with INVALID_ARGUMENT; the middle of the
// pixel data is never enough.
TEST(DecodeImageTest, TruncatedFilesOfEveryFormat) {
  for (const char* name :
       {"chelsea.png", "chelsea_q75.jpg", "chelsea_progressive.jpg", "chelsea_cmyk.jpg",
        "chelsea.gif", "chelsea.webp", "chelsea.bmp", "green_palette.png"}) {
    SCOPED_TRACE(name);
    const std::string data = ReadShared(name);
    for (size_t length : {size_t{1}, size_t{8}, size_t{20}, size_t{100}, data.size() / 3,
                          data.size() / 2, data.size() * 9 / 10}) {
      SCOPED_TRACE(length);
      const absl::StatusOr<RgbImage> image = DecodeImage(data.substr(0, length));
      EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    }
    for (size_t cut = 1; cut <= 16; ++cut) {
      const absl::StatusOr<RgbImage> image =
          DecodeImage(data.substr(0, data.size() - cut));
      EXPECT_TRUE(image.ok() ||
                  image.status().code() == absl::StatusCode::kInvalidArgument)
          << image.status();
    }
  }
}

// Decoding shares no state between calls: concurrent decodes of every shared file
// give the single-threaded results (and TSan, in the tsan preset, sees no race).
TEST(DecodeImageTest, ConcurrentDecodesAgree) {
  const std::vector<std::string> names = {
      "chelsea.png",  "chelsea_q75.jpg", "chelsea_cmyk.jpg", "chelsea.gif",
      "chelsea.webp", "chelsea.bmp",     "truncated.jpg",    "logo.png"};
  std::vector<std::string> files;
  std::vector<absl::StatusOr<RgbImage>> expected;
  for (const std::string& name : names) {
    files.push_back(ReadShared(name));
    expected.push_back(DecodeImage(files.back()));
  }
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t i = 0; i < files.size(); ++i) {
          const size_t k = (i + t) % files.size();
          const absl::StatusOr<RgbImage> image = DecodeImage(files[k]);
          const bool same = image.ok() == expected[k].ok() &&
                            (!image.ok() ? image.status() == expected[k].status()
                                         : image->pixels == expected[k]->pixels);
          if (!same) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ::testing::Each(0));
}

// Encodes width x height pixels of `components` samples in `space` with libjpeg:
// `configure` runs after jpeg_set_defaults(), `fill_row(y, row)` fills each row.
std::string EncodeWithLibjpeg(int width, int height, int components, J_COLOR_SPACE space,
                              const std::function<void(jpeg_compress_struct*)>& configure,
                              const std::function<void(int, uint8_t*)>& fill_row) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;  // NOLINT(runtime/int): libjpeg's type.
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = components;
  cinfo.in_color_space = space;
  jpeg_set_defaults(&cinfo);
  configure(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  std::vector<uint8_t> row(static_cast<size_t>(width) * components);
  while (cinfo.next_scanline < cinfo.image_height) {
    fill_row(static_cast<int>(cinfo.next_scanline), row.data());
    JSAMPROW rows[1] = {row.data()};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return out;
}

// Encodes a synthetic RGB image as a 4-component JPEG with libjpeg, stored the way
// Adobe applications store CMYK (inverted: stored = 255 - ink, here R, G, B, 255), in
// the given color space (JCS_CMYK, or JCS_YCCK which libjpeg transforms to).
std::string EncodeAdobeCmyk(const std::vector<uint8_t>& rgb, int width, int height,
                            J_COLOR_SPACE space) {
  return EncodeWithLibjpeg(
      width, height, 4, JCS_CMYK,
      [space](jpeg_compress_struct* cinfo) {
        jpeg_set_colorspace(cinfo, space);
        jpeg_set_quality(cinfo, 100, TRUE);
      },
      [&](int y, uint8_t* row) {
        for (int x = 0; x < width; ++x) {
          for (int c = 0; c < 3; ++c) row[x * 4 + c] = rgb[(y * width + x) * 3 + c];
          row[x * 4 + 3] = 255;
        }
      });
}

// A progressive gray JPEG of a smooth gradient, libjpeg's standard scan script.
std::string EncodeProgressiveGray(int width, int height) {
  return EncodeWithLibjpeg(
      width, height, 1, JCS_GRAYSCALE,
      [](jpeg_compress_struct* cinfo) { jpeg_simple_progression(cinfo); },
      [&](int y, uint8_t* row) {
        for (int x = 0; x < width; ++x) row[x] = static_cast<uint8_t>((x + y) % 256);
      });
}

// The scans (SOS marker through its entropy-coded data) of a JPEG, in order, and where
// the end-of-image marker is.
std::vector<std::string> Scans(const std::string& jpeg, size_t* eoi) {
  std::vector<std::string> scans;
  size_t i = 2;
  while (i + 4 <= jpeg.size()) {
    const uint8_t marker = static_cast<uint8_t>(jpeg[i + 1]);
    if (marker == 0xD9) break;
    const size_t length = (size_t{uint8_t(jpeg[i + 2])} << 8) | uint8_t(jpeg[i + 3]);
    size_t end = i + 2 + length;
    if (marker == 0xDA) {  // entropy-coded data up to the next marker but RSTn/stuffing
      while (end + 1 < jpeg.size() &&
             !(uint8_t(jpeg[end]) == 0xFF && uint8_t(jpeg[end + 1]) != 0 &&
               (uint8_t(jpeg[end + 1]) < 0xD0 || uint8_t(jpeg[end + 1]) > 0xD7))) {
        ++end;
      }
      scans.push_back(jpeg.substr(i, end - i));
    }
    i = end;
  }
  *eoi = i;
  return scans;
}

// `jpeg` with `total` scans: its last scan repeated before the end-of-image marker.
std::string WithScans(const std::string& jpeg, int total) {
  size_t eoi = 0;
  const std::vector<std::string> scans = Scans(jpeg, &eoi);
  std::string out = jpeg.substr(0, eoi);
  for (int n = static_cast<int>(scans.size()); n < total; ++n) out += scans.back();
  return out + jpeg.substr(eoi);
}

// Each scan can be a pass over every block in a few bytes: the scans allowed shrink
// as the image grows, 32 at the pixel limit, up to 500 for small images.
TEST(DecodeImageTest, ProgressiveScansAreLimitedByImageSize) {
  DecodeOptions options;
  options.max_pixels = 1000 * 1000;
  const std::string at_limit = EncodeProgressiveGray(1000, 1000);
  size_t eoi = 0;
  ASSERT_GE(Scans(at_limit, &eoi).size(), 4u);
  ASSERT_LT(Scans(at_limit, &eoi).size(), 32u);
  EXPECT_TRUE(DecodeImage(WithScans(at_limit, 32), options).ok());
  const absl::StatusOr<RgbImage> refused = DecodeImage(WithScans(at_limit, 33), options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("more than 32 scans, the most allowed at 1000x1000"));
  // A sixteenth of the pixels: sixteen times as many scans (512), capped at 500.
  const std::string small = EncodeProgressiveGray(250, 250);
  EXPECT_TRUE(DecodeImage(WithScans(small, 500), options).ok());
  EXPECT_THAT(DecodeImage(WithScans(small, 501), options).status().message(),
              HasSubstr("more than 500 scans"));
}

// A GIF with a `width` x `height` logical screen and one 1x1 frame at its corner, 35
// bytes whatever the screen's size.
std::string CanvasGif(uint16_t width, uint16_t height) {
  std::string gif = "GIF89a";
  for (const uint16_t side : {width, height}) {
    gif += static_cast<char>(side & 0xFF);
    gif += static_cast<char>(side >> 8);
  }
  gif += std::string("\x80\0\0", 3);                  // 2-color global palette
  gif += std::string("\0\0\0\xFF\xFF\xFF", 6);        // black, white
  gif += std::string(",\0\0\0\0\x01\0\x01\0\0", 10);  // 1x1 frame at 0,0
  gif += std::string("\x02\x02\x44\x01\0;", 6);       // LZW: clear, 0, end
  return gif;
}

// A flat `width` x `height` GIF as giflib writes it.
std::string FlatGif(int width, int height) {
  std::string out;
  int error = 0;
  GifFileType* gif = EGifOpen(
      &out,
      [](GifFileType* g, const GifByteType* data, int n) {
        static_cast<std::string*>(g->UserData)
            ->append(reinterpret_cast<const char*>(data), n);
        return n;
      },
      &error);
  EXPECT_NE(gif, nullptr) << error;
  if (gif == nullptr) return out;
  GifColorType colors[2] = {{0, 0, 0}, {10, 200, 30}};
  ColorMapObject* map = GifMakeMapObject(2, colors);
  EXPECT_EQ(EGifPutScreenDesc(gif, width, height, 1, 0, map), GIF_OK);
  EXPECT_EQ(EGifPutImageDesc(gif, 0, 0, width, height, false, nullptr), GIF_OK);
  std::vector<GifPixelType> row(width, 1);
  for (int y = 0; y < height; ++y) EGifPutLine(gif, row.data(), width);
  EXPECT_EQ(EGifCloseFile(gif, &error), GIF_OK) << error;
  GifFreeMapObject(map);
  return out;
}

// Expects `make(width, height)` (a file with that canvas and a tiny frame) refused at
// 6000x6000 for its few bytes, with `message`, decoded at 2000x2000 (4 megapixels pass
// whatever the bytes) and refused at 2001x2000.
void ExpectCanvasBound(const std::function<std::string(int, int)>& make,
                       absl::string_view message) {
  const absl::StatusOr<RgbImage> image = DecodeImage(make(6000, 6000));
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr(message));
  const absl::StatusOr<RgbImage> small = DecodeImage(make(2000, 2000));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->width, 2000);
  EXPECT_EQ(DecodeImage(make(2001, 2000)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A GIF's canvas costs no bytes beyond its size fields, and LZW describes at most about
// 2,730 pixels a byte: past 4 megapixels, a canvas needs a byte of file per 4,096
// pixels, checked before it is allocated. Pillow decodes it, filled with the background.
// Bytes that start no record (',' image, '!' extension, ';' end) are skipped, as
// Pillow's reader skips them: some encoders leave a stray block terminator. Pillow
// 9.4 decodes the file below to the original's pixels.
TEST(DecodeImageTest, GifBytesBetweenRecordsAreSkippedAsPillowSkipsThem) {
  const std::string gif = ReadShared("chelsea.gif");
  // Header (6) and logical screen (7), then the global palette its flags declare.
  const auto flags = static_cast<uint8_t>(gif[10]);
  const size_t first_record = 13 + ((flags & 0x80) != 0 ? 3u << ((flags & 7) + 1) : 0);
  ASSERT_EQ(gif[first_record], ',');
  const std::string padded =
      gif.substr(0, first_record) + std::string("\0\0x", 3) + gif.substr(first_record);
  const absl::StatusOr<RgbImage> image = DecodeImage(padded);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, DecodeImage(gif)->pixels);
  // Nothing but such bytes after the screen: no image, as in Pillow.
  EXPECT_EQ(
      DecodeImage(gif.substr(0, first_record) + std::string("\0", 1)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(DecodeImageTest, GifCanvasBeyondWhatItsBytesCouldDescribeIsRefused) {
  ASSERT_EQ(CanvasGif(6000, 6000).size(), 35u);
  ExpectCanvasBound(CanvasGif,
                    "GIF: declared size 6000x6000 needs a file of at least 8790 bytes "
                    "(one per 4096 pixels over 4000000 pixels), not 35");
  // The flattest GIF an encoder writes still decodes.
  const std::string flat = FlatGif(3000, 3000);
  const absl::StatusOr<RgbImage> decoded = DecodeImage(flat);
  ASSERT_TRUE(decoded.ok()) << decoded.status() << " (" << flat.size() << " bytes)";
  EXPECT_EQ(decoded->width, 3000);
  EXPECT_EQ(decoded->pixels[1], 200);
}

// A flat `width` x `height` RGB image (10, 200, 30) as lossless WebP.
std::string FlatLosslessWebp(int width, int height) {
  std::vector<uint8_t> rgb(size_t{3} * width * height);
  for (size_t i = 0; i < rgb.size(); i += 3) {
    rgb[i] = 10;
    rgb[i + 1] = 200;
    rgb[i + 2] = 30;
  }
  uint8_t* out = nullptr;
  const size_t size = WebPEncodeLosslessRGB(rgb.data(), width, height, width * 3, &out);
  std::string webp(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  return webp;
}

// An animated WebP with a `width` x `height` canvas and one 1x1 frame at its corner
// (RIFF, VP8X with the animation flag, ANIM, one ANMF holding a lossless frame), and
// an unknown chunk of `padding` bytes after it.
std::string AnimatedWebp(int width, int height, uint32_t padding = 0) {
  const auto le = [](uint32_t v, int bytes) {
    std::string out;
    for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
    return out;
  };
  const std::string frame = FlatLosslessWebp(1, 1).substr(12);  // its VP8L chunk
  const std::string vp8x = "VP8X" + le(10, 4) + std::string("\x02\0\0\0", 4) +
                           le(width - 1, 3) + le(height - 1, 3);
  const std::string anim = "ANIM" + le(6, 4) + std::string(6, '\0');
  const std::string anmf_payload = le(0, 3) + le(0, 3) + le(0, 3) + le(0, 3) +
                                   le(100, 3) + std::string(1, '\0') + frame;
  const std::string anmf = "ANMF" + le(anmf_payload.size(), 4) + anmf_payload;
  std::string body = "WEBP" + vp8x + anim + anmf;
  if (padding > 0) body += "XPAD" + le(padding, 4) + std::string(padding, '\0');
  return "RIFF" + le(body.size(), 4) + body;
}

// An animated WebP's canvas costs no bytes beyond its size fields either: past 4
// megapixels it needs a byte per 4,096 pixels. A still image is not bounded so:
// lossless coding has no least cost per pixel, and real screenshots come close.
TEST(DecodeImageTest, WebpAnimationCanvasBeyondWhatItsBytesCouldDescribeIsRefused) {
  ASSERT_LT(AnimatedWebp(6000, 6000).size(), 100u);
  ExpectCanvasBound([](int width, int height) { return AnimatedWebp(width, height); },
                    "WebP: declared size 6000x6000 needs a file of at least 8790 bytes");
  // A flat still image far past the ratio decodes.
  const std::string flat = FlatLosslessWebp(2048, 2048);
  ASSERT_LT(flat.size(), 2048u * 2048 / 4096);
  const absl::StatusOr<RgbImage> decoded = DecodeImage(flat);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels[1], 200);
}

#if !defined(ABSL_HAVE_ADDRESS_SANITIZER) && !defined(ABSL_HAVE_THREAD_SANITIZER)
// libwebp's animation decoder fails alike for a corrupt file and for canvases (8 bytes a
// pixel) it cannot allocate: the latter is RESOURCE_EXHAUSTED, not a corrupt file.
TEST(DecodeImageDeathTest, AnAnimatedWebpCanvasTheAllocatorRefusesIsResourceExhausted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string webp = AnimatedWebp(8000, 8000, 16'000);  // 512 MB of canvases
  DecodeOptions options;
  options.max_pixels = 100'000'000;
  EXPECT_EXIT(DecodeUnderAnAddressSpaceCap(webp, options), ::testing::ExitedWithCode(0),
              "WebP: out of memory");
  // Without the allocator's refusal, the same file decodes: it is not corrupt.
  const absl::StatusOr<RgbImage> small = DecodeImage(AnimatedWebp(2000, 2000, 16'000));
  EXPECT_TRUE(small.ok()) << small.status();
}
#endif

// A flat RGB image as a JPEG, configured by `configure` after libjpeg's defaults.
std::string FlatJpeg(int width, int height,
                     const std::function<void(jpeg_compress_struct*)>& configure) {
  return EncodeWithLibjpeg(width, height, 3, JCS_RGB, configure, [&](int, uint8_t* row) {
    for (int x = 0; x < width; ++x) {
      row[x * 3 + 0] = 10;
      row[x * 3 + 1] = 200;
      row[x * 3 + 2] = 30;
    }
  });
}

#if !defined(ABSL_HAVE_ADDRESS_SANITIZER) && !defined(ABSL_HAVE_THREAD_SANITIZER)
// As AnImageTheAllocatorRefusesIsResourceExhausted, when the decode fits and turning it
// upright (--exif_orientation) takes the second copy that does not: a 4000x3400 JPEG is
// 41 MB of pixels.
TEST(DecodeImageDeathTest, AnUprightCopyTheAllocatorRefusesIsResourceExhausted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::string jpeg = FlatJpeg(4000, 3400, [](jpeg_compress_struct*) {});
  // An Exif APP1 segment whose IFD0 holds Orientation = 6, after the SOI marker.
  jpeg.insert(2, std::string("\xFF\xE1\x00\x22"
                             "Exif\0\0MM\0\x2A\0\0\0\x08\0\x01"
                             "\x01\x12\0\x03\0\0\0\x01\0\x06\0\0"
                             "\0\0\0\0",
                             36));
  DecodeOptions options;
  options.max_pixels = 100'000'000;
  options.honor_exif_orientation = true;
  EXPECT_EXIT(DecodeUnderAnAddressSpaceCap(jpeg, options), ::testing::ExitedWithCode(0),
              "JPEG: out of memory");
}
#endif

// Patches a JPEG's baseline frame header (SOF0: FF C0, length, precision, height,
// width) to declare `side` x `side` pixels.
void DeclareSide(std::string* jpeg, uint16_t side) {
  const size_t sof = jpeg->find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  const char bytes[4] = {static_cast<char>(side >> 8), static_cast<char>(side & 0xFF),
                         static_cast<char>(side >> 8), static_cast<char>(side & 0xFF)};
  jpeg->replace(sof + 5, 4, bytes, 4);
}

// Huffman coding spends at least one bit on each block of each component: a header
// that declares more blocks than the bytes after the first scan header have bits is
// refused before the image is allocated. libjpeg and Pillow would decode it, padding
// the missing blocks with gray.
TEST(DecodeImageTest, JpegDeclaringMoreBlocksThanItsDataCanCodeIsRefused) {
  // 16x16 coded, declaring 4000x4000: 4:2:0 makes 250,000 luma and 2 x 62,500 chroma
  // blocks, of which the scan codes 6.
  std::string hollow = FlatJpeg(16, 16, [](jpeg_compress_struct*) {});
  DeclareSide(&hollow, 4000);
  ASSERT_LT(hollow.size(), 1000u);
  const absl::StatusOr<RgbImage> image = DecodeImage(hollow);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(),
              HasSubstr("JPEG: declared size 4000x4000 needs at least one bit for each "
                        "of its 375000 blocks, more than the"));

  // Every component counts, not only the first scan's: here the first scan holds only
  // Cb (62,500 blocks, 7,813 bytes), and 10,000 bytes of padding follow the image.
  static const jpeg_scan_info kCbFirst[] = {
      {1, {1}, 0, 63, 0, 0}, {1, {2}, 0, 63, 0, 0}, {1, {0}, 0, 63, 0, 0}};
  std::string cb_first = FlatJpeg(16, 16, [](jpeg_compress_struct* c) {
    c->scan_info = kCbFirst;
    c->num_scans = 3;
  });
  DeclareSide(&cb_first, 4000);
  cb_first += std::string(10000, '\0');
  const absl::StatusOr<RgbImage> padded = DecodeImage(cb_first);
  EXPECT_EQ(padded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(padded.status().message(), HasSubstr("each of its 375000 blocks"));

  // The most compressible valid files still decode: a flat image with optimized
  // Huffman tables (two bits a block) and progressive (one bit a block in its first,
  // DC, scan).
  const std::string optimized =
      FlatJpeg(2048, 2048, [](jpeg_compress_struct* c) { c->optimize_coding = TRUE; });
  const std::string progressive =
      FlatJpeg(2048, 2048, [](jpeg_compress_struct* c) { jpeg_simple_progression(c); });
  for (const std::string* jpeg : {&optimized, &progressive}) {
    const absl::StatusOr<RgbImage> decoded = DecodeImage(*jpeg);
    ASSERT_TRUE(decoded.ok()) << decoded.status() << " (" << jpeg->size() << " bytes)";
    EXPECT_EQ(decoded->width, 2048);
    EXPECT_EQ(decoded->pixels[0], 10);
  }

  // Arithmetic coding can code a flat image in fewer bits still; the same bound
  // refuses it (documented in docs/API.md).
  const std::string arithmetic =
      FlatJpeg(2048, 2048, [](jpeg_compress_struct* c) { c->arith_code = TRUE; });
  ASSERT_LT(arithmetic.size(), 1000u);
  EXPECT_EQ(DecodeImage(arithmetic).status().code(), absl::StatusCode::kInvalidArgument);
  // A photo coded arithmetically carries far more than a bit a block.
  const std::string photo = ReadShared("chelsea_q75.jpg");
  const absl::StatusOr<RgbImage> expected = DecodeImage(photo);
  ASSERT_TRUE(expected.ok());
  const std::string recoded = EncodeWithLibjpeg(
      expected->width, expected->height, 3, JCS_RGB,
      [](jpeg_compress_struct* c) { c->arith_code = TRUE; },
      [&](int y, uint8_t* row) {
        std::memcpy(row, &expected->pixels[size_t{3} * y * expected->width],
                    size_t{3} * expected->width);
      });
  EXPECT_TRUE(DecodeImage(recoded).ok());
}

// YCCK (CMYK with the color channels in YCbCr) has no Pillow-written sample; its
// CMYK after libjpeg's transform goes through the same Adobe-inverted conversion.
TEST(DecodeImageTest, AdobeCmykAndYcckJpegsDecodeToTheirColors) {
  const int width = 64, height = 48;
  std::vector<uint8_t> rgb(width * height * 3);
  std::mt19937 rng(7);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &rgb[(y * width + x) * 3];
      p[0] = static_cast<uint8_t>(x * 4);
      p[1] = static_cast<uint8_t>(y * 5);
      p[2] = static_cast<uint8_t>(128 + (rng() % 16));
    }
  }
  for (J_COLOR_SPACE space : {JCS_CMYK, JCS_YCCK}) {
    SCOPED_TRACE(space == JCS_CMYK ? "CMYK" : "YCCK");
    const absl::StatusOr<RgbImage> image =
        DecodeImage(EncodeAdobeCmyk(rgb, width, height, space));
    ASSERT_TRUE(image.ok()) << image.status();
    ASSERT_EQ(image->pixels.size(), rgb.size());
    double total = 0;
    int worst = 0;
    for (size_t i = 0; i < rgb.size(); ++i) {
      const int d = std::abs(int{image->pixels[i]} - rgb[i]);
      total += d;
      worst = std::max(worst, d);
    }
    EXPECT_LT(total / rgb.size(), 2.0);  // Quality 100: only rounding and chroma loss.
    EXPECT_LE(worst, 24);
  }
}

TEST(DecodeImageTest, ExifOrientationIsIgnoredByDefault) {
  const std::string jpeg = ReadShared("chelsea_exif_rot6.jpg");
  const absl::StatusOr<RgbImage> stored = DecodeImage(jpeg);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->width, 300);
  EXPECT_EQ(stored->height, 451);
  DecodeOptions options;
  options.honor_exif_orientation = true;
  const absl::StatusOr<RgbImage> upright = DecodeImage(jpeg, options);
  ASSERT_TRUE(upright.ok()) << upright.status();
  EXPECT_EQ(upright->width, 451);
  EXPECT_EQ(upright->height, 300);
  // Orientation 6 means "rotate 90 degrees clockwise to display": the upright top-left
  // pixel is the stored bottom-left one.
  const size_t bottom_left = size_t{450} * 300 * 3;
  EXPECT_EQ(upright->pixels[0], stored->pixels[bottom_left]);
  EXPECT_EQ(upright->pixels[1], stored->pixels[bottom_left + 1]);
  EXPECT_EQ(upright->pixels[2], stored->pixels[bottom_left + 2]);
}

}  // namespace
}  // namespace clipserve::image
