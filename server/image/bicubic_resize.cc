#include "server/image/bicubic_resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace clipserve::image {
namespace {

constexpr int kPrecisionBits = kBicubicPrecisionBits;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

// Pillow's bicubic_filter, same operations in the same order (the coefficients must be
// the same doubles).
double BicubicFilter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Pillow's clip8: the 8-bit value of a fixed-point sum, clamped to [0, 255].
inline uint8_t Clip8(int32_t sum) {
  const int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace

// Pillow's precompute_coeffs() followed by normalize_coeffs_8bpc(), for the outputs
// [first, first + count) of an in_size -> out_size resize with box (0, in_size).
BicubicTaps ComputeBicubicTaps(int in_size, int out_size, int first, int count) {
  BicubicTaps taps;
  taps.start.resize(count);
  taps.length.resize(count);
  taps.weights_offset.resize(count);
  if (in_size == out_size) {  // Pillow skips the pass; an identity tap is the same.
    taps.weights.assign(count, int32_t{1} << kPrecisionBits);
    for (int i = 0; i < count; ++i) {
      taps.start[i] = first + i;
      taps.length[i] = 1;
      taps.weights_offset[i] = i;
    }
    return taps;
  }
  // Pillow takes the box as floats.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  double filterscale, scale;
  filterscale = scale = static_cast<double>(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = 2.0 * filterscale;  // BICUBIC support is 2.0.
  std::vector<double> k;
  for (int i = 0; i < count; ++i) {
    const int xx = first + i;
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    k.resize(std::max(xmax, 0));
    for (int x = 0; x < xmax; ++x) {
      const double w = BicubicFilter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    taps.start[i] = xmin;
    taps.length[i] = std::max(xmax, 0);
    taps.weights_offset[i] = static_cast<int>(taps.weights.size());
    for (int x = 0; x < xmax; ++x) {
      taps.weights.push_back(
          k[x] < 0 ? static_cast<int32_t>(-0.5 + k[x] * (1 << kPrecisionBits))
                   : static_cast<int32_t>(0.5 + k[x] * (1 << kPrecisionBits)));
    }
  }
  return taps;
}

SourceRange TapsSourceRange(const BicubicTaps& taps) {
  SourceRange range{std::numeric_limits<int>::max(), 0};
  for (size_t i = 0; i < taps.start.size(); ++i) {
    if (taps.length[i] == 0) continue;
    range.begin = std::min(range.begin, taps.start[i]);
    range.end = std::max(range.end, taps.start[i] + taps.length[i]);
  }
  if (range.end <= range.begin) return SourceRange{};
  return range;
}

namespace {

#if defined(__GNUC__)
#define CLIPSERVE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define CLIPSERVE_ALWAYS_INLINE inline
#endif

// How many bytes past a source row's last pixel a horizontal row function may read.
constexpr size_t kRowReadSlack = 8;

// What one resize computes, after validation.
struct ResizeJob {
  const uint8_t* pixels;  // The source, width * height * 3 bytes.
  int width;
  int height;
  const BicubicTaps* horizontal;  // window_width outputs.
  const BicubicTaps* vertical;    // window_height outputs.
  int window_width;
  int window_height;
  uint8_t* out;
};

// Horizontal pass for one source row: `width` output pixels from `src`, one channel at
// a time.
void ResampleRowPortable(const uint8_t* src, const BicubicTaps& taps, int width,
                         uint8_t* dst) {
  for (int xx = 0; xx < width; ++xx) {
    const uint8_t* p = src + size_t{static_cast<unsigned>(taps.start[xx])} * 3;
    const int32_t* k = &taps.weights[taps.weights_offset[xx]];
    const int n = taps.length[xx];
    int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
    for (int x = 0; x < n; ++x) {
      s0 += p[x * 3 + 0] * k[x];
      s1 += p[x * 3 + 1] * k[x];
      s2 += p[x * 3 + 2] * k[x];
    }
    dst[xx * 3 + 0] = Clip8(s0);
    dst[xx * 3 + 1] = Clip8(s1);
    dst[xx * 3 + 2] = Clip8(s2);
  }
}

// Both passes, with `resample_row(src, dst)` for the horizontal one (job.window_width
// outputs of one source row); compiled once per instruction set below, the vertical
// pass vectorized by the compiler for each.
template <typename ResampleRow>
CLIPSERVE_ALWAYS_INLINE void RunResize(const ResizeJob& job,
                                       const ResampleRow& resample_row) {
  const BicubicTaps& vertical = *job.vertical;

  // Source rows the window's vertical taps read.
  const SourceRange rows = TapsSourceRange(vertical);
  const int row_begin = rows.begin, row_end = rows.end;

  // Horizontal pass, into 8-bit rows as Pillow's intermediate image. A row function
  // may read up to kRowReadSlack bytes past a row's last pixel (the next rows' bytes,
  // or for rows that end closer than that to the image's end a padded copy) and write
  // one byte past its last output (the next row's first byte, written after it, or a
  // spare byte at the end).
  const size_t row_values = size_t{static_cast<unsigned>(job.window_width)} * 3;
  const size_t src_stride = size_t{static_cast<unsigned>(job.width)} * 3;
  const size_t image_bytes = src_stride * static_cast<unsigned>(job.height);
  std::vector<uint8_t> temp(row_values * (row_end - row_begin) + 1);
  std::vector<uint8_t> padded_row;
  for (int y = row_begin; y < row_end; ++y) {
    const uint8_t* src = job.pixels + y * src_stride;
    if (image_bytes - (y + 1) * src_stride < kRowReadSlack) {
      padded_row.assign(src, src + src_stride);
      padded_row.resize(src_stride + kRowReadSlack, 0);
      src = padded_row.data();
    }
    resample_row(src, &temp[(y - row_begin) * row_values]);
  }

  // Vertical pass: whole rows at a time, so the inner loop runs over contiguous bytes.
  std::vector<int32_t> sums(row_values);
  for (int yy = 0; yy < job.window_height; ++yy) {
    std::fill(sums.begin(), sums.end(), kHalf);
    const int32_t* k = &vertical.weights[vertical.weights_offset[yy]];
    for (int y = 0; y < vertical.length[yy]; ++y) {
      const uint8_t* row = &temp[(vertical.start[yy] + y - row_begin) * row_values];
      const int32_t weight = k[y];
      int32_t* __restrict s = sums.data();
      const uint8_t* __restrict r = row;
      for (size_t i = 0; i < row_values; ++i) s[i] += r[i] * weight;
    }
    uint8_t* dst = job.out + yy * row_values;
    for (size_t i = 0; i < row_values; ++i) dst[i] = Clip8(sums[i]);
  }
}

void RunResizePortable(const ResizeJob& job) {
  RunResize(job, [&job](const uint8_t* src, uint8_t* dst) {
    ResampleRowPortable(src, *job.horizontal, job.window_width, dst);
  });
}

#if defined(__x86_64__)
#define CLIPSERVE_RESIZE_AVX2 1

// vpmaddwd multiplies int16s and a weight has 22 fractional bits, so each weight is
// split as w = high * 2^11 + low with low in [0, 2^11): the sums of value * high and of
// value * low are exact in int32, and (high_sum << 11) + low_sum is Pillow's sum.
constexpr int kLowWeightBits = 11;

// The horizontal taps as ResampleRowAvx2() reads them. Every output reads the same even
// number of source positions, 2 * pairs (the most any reads, rounded up): a shorter
// window moves left where it would run past `in_size` (not below 0) and gets zero
// weights where it grew, which add exact zeros to its sums; a loop whose length never
// changes costs no branch mispredictions. For outputs 2i and 2i + 1 and the tap pair
// (2j, 2j + 1), weights[(i * pairs + j) * 32 ...] holds two vectors of 16 int16s, the
// high parts and then the low parts, each laid out as the values they multiply: the
// pair of output 2i's weights three times and a pair of zeros, then output 2i + 1's.
struct MaddTaps {
  int pairs = 0;
  std::vector<int> start;
  std::vector<int16_t> weights;
};

// nullopt when a weight's high part does not fit in int16 (bicubic weights stay far
// below 2^26, so it does not happen; the caller then takes the portable loop).
std::optional<MaddTaps> MakeMaddTaps(const BicubicTaps& taps, int in_size) {
  const int count = static_cast<int>(taps.start.size());
  int n = 0;
  for (int i = 0; i < count; ++i) n = std::max(n, taps.length[i]);
  MaddTaps madd;
  madd.pairs = (n + 1) / 2;
  const int even = 2 * madd.pairs;
  madd.start.resize(count);
  madd.weights.assign(size_t{static_cast<unsigned>((count + 1) / 2)} * madd.pairs * 32,
                      0);
  for (int i = 0; i < count; ++i) {
    const int start = std::max(0, std::min(taps.start[i], in_size - even));
    madd.start[i] = start;
    const int shift = taps.start[i] - start;
    for (int k = 0; k < taps.length[i]; ++k) {
      const int32_t w = taps.weights[taps.weights_offset[i] + k];
      const int32_t high = w >> kLowWeightBits;  // Rounds down: low is not negative.
      const int32_t low = w - high * (int32_t{1} << kLowWeightBits);
      if (high < std::numeric_limits<int16_t>::min() ||
          high > std::numeric_limits<int16_t>::max()) {
        return std::nullopt;
      }
      const int tap = shift + k;
      int16_t* block = &madd.weights[(size_t{static_cast<unsigned>(i / 2)} * madd.pairs +
                                      static_cast<unsigned>(tap / 2)) *
                                     32];
      for (int channel = 0; channel < 3; ++channel) {
        const int lane = (i % 2) * 8 + channel * 2 + tap % 2;
        block[lane] = static_cast<int16_t>(high);
        block[16 + lane] = static_cast<int16_t>(low);
      }
    }
  }
  return madd;
}

// The horizontal pass, two output pixels per vector, two taps per multiply-add: in
// each 128-bit half (pixel xx in the lower, xx + 1 in the upper), the six bytes of a
// tap pair (R0 G0 B0 R1 G1 B1) become the int16 pairs (R0, R1), (G0, G1), (B0, B1) and
// a pair of zeros, and vpmaddwd against the pair's weights adds both taps of a channel
// into one int32 lane. The same int32 sums as ResampleRowPortable. Reads up to 5 bytes
// past the row's end (8-byte loads of 6, and windows that a row narrower than them
// pushes past its end, with zero weights there), and writes one byte past the last
// output pixel.
__attribute__((target("avx2"))) void ResampleRowAvx2(const uint8_t* src,
                                                     const MaddTaps& taps, int width,
                                                     uint8_t* dst) {
  const int pairs = taps.pairs;
  const __m128i pair_bytes =
      _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
  const __m256i gather = _mm256_broadcastsi128_si256(pair_bytes);
  const auto load8 = [](const uint8_t* p) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  };
  const auto load16 = [](const int16_t* k) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(k));
  };
  int xx = 0;
  for (; xx + 1 < width; xx += 2) {
    const uint8_t* a = src + size_t{static_cast<unsigned>(taps.start[xx])} * 3;
    const uint8_t* b = src + size_t{static_cast<unsigned>(taps.start[xx + 1])} * 3;
    const int16_t* k = &taps.weights[size_t{static_cast<unsigned>(xx / 2)} * pairs * 32];
    __m256i high = _mm256_setzero_si256();
    __m256i low = _mm256_setzero_si256();
    for (int j = 0; j < pairs; ++j) {
      const __m256i both = _mm256_inserti128_si256(
          _mm256_castsi128_si256(load8(a + 6 * j)), load8(b + 6 * j), 1);
      const __m256i values = _mm256_shuffle_epi8(both, gather);
      high = _mm256_add_epi32(
          high,
          _mm256_madd_epi16(
              values, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 32 * j))));
      low = _mm256_add_epi32(
          low,
          _mm256_madd_epi16(values, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                        k + 32 * j + 16))));
    }
    const __m256i sum =
        _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(high, kLowWeightBits), low),
                         _mm256_set1_epi32(kHalf));
    // Clip8 on every lane: the shifted sums are within int16, so the two saturating
    // packs (per 128-bit half) clamp them to [0, 255] exactly as it does. Lanes 3 and
    // 7 (the zero pairs) give the 0 written past each pixel.
    const __m256i shifted = _mm256_srai_epi32(sum, kPrecisionBits);
    const __m256i words = _mm256_packs_epi32(shifted, shifted);
    const __m256i bytes = _mm256_packus_epi16(words, words);
    const int32_t pixel_a = _mm_cvtsi128_si32(_mm256_castsi256_si128(bytes));
    const int32_t pixel_b = _mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1));
    std::memcpy(dst + xx * 3, &pixel_a, sizeof(pixel_a));
    std::memcpy(dst + (xx + 1) * 3, &pixel_b, sizeof(pixel_b));
  }
  if (xx < width) {  // An odd last output: the lower half alone.
    const uint8_t* a = src + size_t{static_cast<unsigned>(taps.start[xx])} * 3;
    const int16_t* k = &taps.weights[size_t{static_cast<unsigned>(xx / 2)} * pairs * 32];
    __m128i high = _mm_setzero_si128();
    __m128i low = _mm_setzero_si128();
    for (int j = 0; j < pairs; ++j) {
      const __m128i values = _mm_shuffle_epi8(load8(a + 6 * j), pair_bytes);
      high = _mm_add_epi32(high, _mm_madd_epi16(values, load16(k + 32 * j)));
      low = _mm_add_epi32(low, _mm_madd_epi16(values, load16(k + 32 * j + 16)));
    }
    const __m128i sum = _mm_add_epi32(
        _mm_add_epi32(_mm_slli_epi32(high, kLowWeightBits), low), _mm_set1_epi32(kHalf));
    const __m128i shifted = _mm_srai_epi32(sum, kPrecisionBits);
    const __m128i words = _mm_packs_epi32(shifted, shifted);
    const int32_t pixel = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
    std::memcpy(dst + xx * 3, &pixel, sizeof(pixel));
  }
}

// AVX2 also brings 32-bit multiplies (SSE2 has none) and eight lanes to the vertical
// pass.
__attribute__((target("avx2"))) void RunResizeAvx2(const ResizeJob& job) {
  const std::optional<MaddTaps> madd = MakeMaddTaps(*job.horizontal, job.width);
  if (!madd.has_value()) {
    RunResizePortable(job);
    return;
  }
  RunResize(job, [&](const uint8_t* src, uint8_t* dst) {
    ResampleRowAvx2(src, *madd, job.window_width, dst);
  });
}
#endif

ResizeIsa BestIsa() {
#ifdef CLIPSERVE_RESIZE_AVX2
  if (__builtin_cpu_supports("avx2")) return ResizeIsa::kAvx2;
#endif
  return ResizeIsa::kPortable;
}

}  // namespace

bool ResizeIsaSupported(ResizeIsa isa) {
  switch (isa) {
    case ResizeIsa::kAuto:
    case ResizeIsa::kPortable:
      return true;
    case ResizeIsa::kAvx2:
      return BestIsa() == ResizeIsa::kAvx2;
  }
  return false;
}

absl::Status ValidateResizeWindow(int out_width, int out_height, int left, int top,
                                  int window_width, int window_height) {
  if (out_width < 1 || out_height < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("resize to an empty size ", out_width, "x", out_height));
  }
  if (window_width < 1 || window_height < 1 || left < 0 || top < 0 ||
      left > out_width - window_width || top > out_height - window_height) {
    return absl::InvalidArgumentError(
        absl::StrCat("window ", window_width, "x", window_height, "+", left, "+", top,
                     " is not inside the ", out_width, "x", out_height, " output"));
  }
  return absl::OkStatus();
}

absl::Status ResizeBicubicWindow(const RgbImageView& image, int out_width, int out_height,
                                 int left, int top, int window_width, int window_height,
                                 uint8_t* out) {
  return ResizeBicubicWindowOn(ResizeIsa::kAuto, image, out_width, out_height, left, top,
                               window_width, window_height, out);
}

absl::Status ResizeBicubicWindowOn(ResizeIsa isa, const RgbImageView& image,
                                   int out_width, int out_height, int left, int top,
                                   int window_width, int window_height, uint8_t* out) {
  if (!ResizeIsaSupported(isa)) {
    return absl::FailedPreconditionError("this CPU lacks the requested instruction set");
  }
  const absl::Status valid = ValidateRgbView(image);
  if (!valid.ok()) return valid;
  const absl::Status window =
      ValidateResizeWindow(out_width, out_height, left, top, window_width, window_height);
  if (!window.ok()) return window;
  const BicubicTaps horizontal =
      ComputeBicubicTaps(image.width, out_width, left, window_width);
  const BicubicTaps vertical =
      ComputeBicubicTaps(image.height, out_height, top, window_height);
  const ResizeJob job{image.pixels.data(), image.width,  image.height,  &horizontal,
                      &vertical,           window_width, window_height, out};
  static const ResizeIsa best = BestIsa();
  if (isa == ResizeIsa::kAuto) isa = best;
  switch (isa) {
#ifdef CLIPSERVE_RESIZE_AVX2
    case ResizeIsa::kAvx2:
      RunResizeAvx2(job);
      break;
#endif
    default:
      RunResizePortable(job);
      break;
  }
  return absl::OkStatus();
}

absl::StatusOr<RgbImage> ResizeBicubic(const RgbImageView& image, int out_width,
                                       int out_height) {
  if (out_width < 1 || out_height < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("resize to an empty size ", out_width, "x", out_height));
  }
  if (int64_t{out_width} * out_height > kDefaultMaxPixels) {
    return absl::InvalidArgumentError(absl::StrCat("resize to ", out_width, "x",
                                                   out_height, " exceeds the limit of ",
                                                   kDefaultMaxPixels, " pixels"));
  }
  RgbImage out;
  out.width = out_width;
  out.height = out_height;
  out.pixels.resize(size_t{static_cast<unsigned>(out_width)} * out_height * 3);
  const absl::Status status = ResizeBicubicWindow(
      image, out_width, out_height, 0, 0, out_width, out_height, out.pixels.data());
  if (!status.ok()) return status;
  return out;
}

}  // namespace clipserve::image
