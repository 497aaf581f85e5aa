// Decode + CLIP preprocessing throughput, single thread: a 640x480 JPEG and a
// 2000x1500 PNG to 224x224 normalized floats, every format at both sizes
// (BM_DecodeAndPreprocess/format:F/large:L, F = JPEG, PNG, WebP, GIF, BMP), plus the
// cost of refusing bad input and the resize alone on each instruction set. Inputs are
// generated here (a deterministic photo-like pattern, encoded with libjpeg, libpng,
// libwebp, giflib and a BMP writer), so the benchmark needs no files. items_per_second is
// images per second.

// jpeglib.h uses size_t and FILE without including their headers.
// clang-format off
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
// clang-format on
#include <gif_lib.h>
#include <png.h>
#include <webp/encode.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "server/image/bicubic_resize.h"
#include "server/image/image_decoder.h"
#include "server/image/preprocessor.h"

namespace clipserve::image {
namespace {

// Smooth gradients, a low-frequency texture, a few hard-edged shapes and seeded noise:
// compresses like a photo (neither flat nor random).
RgbImage PhotoLike(int width, int height) {
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(size_t{3} * width * height);
  std::mt19937 rng(42);
  std::normal_distribution<float> noise(0.0f, 4.0f);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const float u = static_cast<float>(x) / width, v = static_cast<float>(y) / height;
      float r = 180 * u + 40 * std::sin(9 * v + 3 * u);
      float g = 120 + 80 * v * u + 30 * std::sin(13 * u) * std::cos(7 * v);
      float b = 200 - 150 * v + 25 * std::cos(17 * (u + v));
      if ((x / (width / 7)) % 3 == 1 && (y / (height / 5)) % 2 == 0) r = 255 - r, b = 40;
      const float n = noise(rng);
      uint8_t* p = &image.pixels[(size_t{static_cast<unsigned>(y)} * width + x) * 3];
      p[0] = static_cast<uint8_t>(std::clamp(r + n, 0.0f, 255.0f));
      p[1] = static_cast<uint8_t>(std::clamp(g + n, 0.0f, 255.0f));
      p[2] = static_cast<uint8_t>(std::clamp(b + n, 0.0f, 255.0f));
    }
  }
  return image;
}

std::string EncodeJpeg(const RgbImage& image, int quality) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;  // NOLINT(runtime/int): libjpeg's type.
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = image.width;
  cinfo.image_height = image.height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);  // 4:2:0, baseline, like most camera and web JPEGs.
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(
        &image.pixels[size_t{cinfo.next_scanline} * image.width * 3]);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return out;
}

void AppendPng(png_structp png, png_bytep data, size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))
      ->append(reinterpret_cast<char*>(data), length);
}

std::string EncodePng(const RgbImage& image) {
  std::string out;
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) std::abort();
  png_set_write_fn(png, &out, AppendPng, nullptr);
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, &image.pixels[size_t{static_cast<unsigned>(y)} * image.width * 3]);
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string EncodeWebp(const RgbImage& image) {
  uint8_t* data = nullptr;
  const size_t size = WebPEncodeRGB(image.pixels.data(), image.width, image.height,
                                    image.width * 3, /*quality=*/90, &data);
  std::string out(reinterpret_cast<char*>(data), size);
  WebPFree(data);
  return out;
}

int AppendGif(GifFileType* gif, const GifByteType* data, int length) {
  static_cast<std::string*>(gif->UserData)
      ->append(reinterpret_cast<const char*>(data), length);
  return length;
}

// A 256-colour GIF of the image (giflib's median-cut quantizer).
std::string EncodeGif(const RgbImage& image) {
  const size_t n = size_t{static_cast<unsigned>(image.width)} * image.height;
  std::vector<GifByteType> r(n), g(n), b(n), indices(n);
  for (size_t i = 0; i < n; ++i) {
    r[i] = image.pixels[3 * i];
    g[i] = image.pixels[3 * i + 1];
    b[i] = image.pixels[3 * i + 2];
  }
  int colors = 256;
  GifColorType palette[256];
  if (GifQuantizeBuffer(image.width, image.height, &colors, r.data(), g.data(), b.data(),
                        indices.data(), palette) != GIF_OK) {
    std::abort();
  }
  std::string out;
  int error = 0;
  GifFileType* gif = EGifOpen(&out, AppendGif, &error);
  ColorMapObject* map = GifMakeMapObject(256, palette);
  if (gif == nullptr || map == nullptr ||
      EGifPutScreenDesc(gif, image.width, image.height, 8, 0, map) != GIF_OK ||
      EGifPutImageDesc(gif, 0, 0, image.width, image.height, false, nullptr) != GIF_OK) {
    std::abort();
  }
  for (int y = 0; y < image.height; ++y) {
    if (EGifPutLine(gif, &indices[size_t{static_cast<unsigned>(y)} * image.width],
                    image.width) != GIF_OK) {
      std::abort();
    }
  }
  GifFreeMapObject(map);
  EGifCloseFile(gif, &error);
  return out;
}

// An uncompressed 24-bit bottom-up BMP.
std::string EncodeBmp(const RgbImage& image) {
  const uint32_t row = (static_cast<uint32_t>(image.width) * 3 + 3) & ~3u;
  const uint32_t data_size = row * image.height;
  std::string out;
  auto put = [&out](uint32_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
  };
  out += "BM";
  put(54 + data_size, 4);
  put(0, 4);
  put(54, 4);
  put(40, 4);
  put(image.width, 4);
  put(image.height, 4);
  put(1, 2);
  put(24, 2);
  put(0, 4);
  put(data_size, 4);
  put(2835, 4);
  put(2835, 4);
  put(0, 4);
  put(0, 4);
  for (int y = image.height - 1; y >= 0; --y) {
    const uint8_t* p = &image.pixels[size_t{static_cast<unsigned>(y)} * image.width * 3];
    for (int x = 0; x < image.width; ++x) {
      out.push_back(static_cast<char>(p[3 * x + 2]));
      out.push_back(static_cast<char>(p[3 * x + 1]));
      out.push_back(static_cast<char>(p[3 * x]));
    }
    out.append(row - image.width * 3, '\0');
  }
  return out;
}

constexpr const char* kFormats[] = {"jpeg", "png", "webp", "gif", "bmp"};

// Format `format` (index into kFormats) of a 640x480 or 2000x1500 photo, made once.
const std::string& Encoded(int format, bool large) {
  static std::string* cache[5][2] = {};
  std::string*& slot = cache[format][large ? 1 : 0];
  if (slot == nullptr) {
    const RgbImage image = large ? PhotoLike(2000, 1500) : PhotoLike(640, 480);
    switch (format) {
      case 0:
        slot = new std::string(EncodeJpeg(image, 90));
        break;
      case 1:
        slot = new std::string(EncodePng(image));
        break;
      case 2:
        slot = new std::string(EncodeWebp(image));
        break;
      case 3:
        slot = new std::string(EncodeGif(image));
        break;
      default:
        slot = new std::string(EncodeBmp(image));
        break;
    }
  }
  return *slot;
}

// A PNG signature and an IHDR declaring 100000 x 100000 RGB, then nothing.
std::string PngBomb() {
  std::string ihdr("IHDR\0\x01\x86\xA0\0\x01\x86\xA0\x08\x02\0\0\0", 17);
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(ihdr.data()), ihdr.size());
  std::string out("\x89PNG\r\n\x1A\n\0\0\0\x0D", 12);
  out += ihdr;
  for (int shift : {24, 16, 8, 0})
    out.push_back(static_cast<char>((crc >> shift) & 0xFF));
  return out;
}

const std::string& Jpeg640x480() {
  static const std::string* jpeg = new std::string(EncodeJpeg(PhotoLike(640, 480), 90));
  return *jpeg;
}

const std::string& Png2000x1500() {
  static const std::string* png = new std::string(EncodePng(PhotoLike(2000, 1500)));
  return *png;
}

void Decode(benchmark::State& state, const std::string& encoded) {
  for (auto _ : state) {
    absl::StatusOr<RgbImage> image = DecodeImage(encoded);
    if (!image.ok()) state.SkipWithError(std::string(image.status().message()).c_str());
    benchmark::DoNotOptimize(image);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["encoded_KiB"] = encoded.size() / 1024.0;
}

void DecodeAndPreprocess(benchmark::State& state, const std::string& encoded) {
  const auto preprocessor = *Preprocessor::Create({});
  std::vector<float> out(preprocessor->floats_per_image());
  for (auto _ : state) {
    absl::StatusOr<RgbImage> image = DecodeImage(encoded);
    if (!image.ok() || !preprocessor->PreprocessInto(*image, absl::MakeSpan(out)).ok()) {
      state.SkipWithError("decode or preprocess failed");
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}

void Preprocess(benchmark::State& state, const std::string& encoded) {
  const auto preprocessor = *Preprocessor::Create({});
  const RgbImage image = *DecodeImage(encoded);
  std::vector<float> out(preprocessor->floats_per_image());
  for (auto _ : state) {
    if (!preprocessor->PreprocessInto(image, absl::MakeSpan(out)).ok()) {
      state.SkipWithError("preprocess failed");
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}

void Reject(benchmark::State& state, const std::string& encoded) {
  for (auto _ : state) {
    absl::StatusOr<RgbImage> image = DecodeImage(encoded);
    if (image.ok()) state.SkipWithError("expected an error");
    benchmark::DoNotOptimize(image);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_DecodeJpeg640x480(benchmark::State& state) { Decode(state, Jpeg640x480()); }
void BM_DecodePng2000x1500(benchmark::State& state) { Decode(state, Png2000x1500()); }
void BM_PreprocessFrom640x480(benchmark::State& state) {
  Preprocess(state, Jpeg640x480());
}
void BM_PreprocessFrom2000x1500(benchmark::State& state) {
  Preprocess(state, Png2000x1500());
}
void BM_DecodeAndPreprocessJpeg640x480(benchmark::State& state) {
  DecodeAndPreprocess(state, Jpeg640x480());
}
void BM_DecodeAndPreprocessPng2000x1500(benchmark::State& state) {
  DecodeAndPreprocess(state, Png2000x1500());
}
void BM_DecodeAndPreprocess(benchmark::State& state) {
  const int format = static_cast<int>(state.range(0));
  const bool large = state.range(1) != 0;
  const std::string& encoded = Encoded(format, large);
  state.SetLabel(std::string(kFormats[format]) + (large ? " 2000x1500" : " 640x480"));
  state.counters["encoded_KiB"] = encoded.size() / 1024.0;
  DecodeAndPreprocess(state, encoded);
}
// The resize alone, 640x480 to 298x224 keeping the centre 224x224 (what CLIP's
// preprocessing does to such a photo), on each instruction set: isa 1 = portable,
// 2 = AVX2 (an error where the CPU lacks it).
void BM_ResizeCrop640x480(benchmark::State& state) {
  const auto isa = static_cast<ResizeIsa>(state.range(0));
  state.SetLabel(isa == ResizeIsa::kAvx2 ? "avx2" : "portable");
  if (!ResizeIsaSupported(isa)) {
    state.SkipWithError("not on this machine: the CPU lacks the instruction set");
    return;
  }
  const RgbImage image = PhotoLike(640, 480);
  std::vector<uint8_t> out(size_t{3} * 224 * 224);
  for (auto _ : state) {
    if (!ResizeBicubicWindowOn(isa, image, 298, 224, 37, 0, 224, 224, out.data()).ok()) {
      state.SkipWithError("resize failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
void BM_RejectPngBomb100kx100k(benchmark::State& state) { Reject(state, PngBomb()); }
void BM_RejectTruncatedJpeg(benchmark::State& state) {
  Reject(state, Jpeg640x480().substr(0, Jpeg640x480().size() / 2));
}

BENCHMARK(BM_DecodeJpeg640x480)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PreprocessFrom640x480)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAndPreprocessJpeg640x480)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodePng2000x1500)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PreprocessFrom2000x1500)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAndPreprocessPng2000x1500)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAndPreprocess)
    ->ArgNames({"format", "large"})
    ->ArgsProduct({{0, 1, 2, 3, 4}, {0, 1}})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ResizeCrop640x480)
    ->ArgName("isa")
    ->Arg(static_cast<int>(ResizeIsa::kPortable))
    ->Arg(static_cast<int>(ResizeIsa::kAvx2))
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RejectPngBomb100kx100k)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RejectTruncatedJpeg)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace clipserve::image

BENCHMARK_MAIN();
