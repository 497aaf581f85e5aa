#ifndef CLIPSERVE_SERVER_MODEL_AVX512_ROWS_H_
#define CLIPSERVE_SERVER_MODEL_AVX512_ROWS_H_

// What the row kernels (RowLayerNorm, RowSoftmax, QuickGeluInPlace, the uint8 quantizer)
// share: whether the CPU runs their AVX-512 code, which tensors they take, 16-value
// loads and stores of fp32 and bf16 rows, and exp. Private to server/model's .cc files.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIPSERVE_ROWS_AVX512 1
#define CLIPSERVE_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

namespace clipserve::avx512_rows {

// Whether this CPU has AVX-512 F, BW and VL (and this build can use them).
inline bool CpuHasAvx512() {
#if CLIPSERVE_ROWS_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl");
  return avx512;
#else
  return false;
#endif
}

// Whether an elementwise kernel takes x: fp32 or bf16 on the CPU, and a CPU with
// AVX-512. Layout and whether autograd records x are each kernel's own question.
inline bool TakesValues(const at::Tensor& x) {
  return CpuHasAvx512() && x.is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

// Whether a row kernel takes x: as TakesValues, with at least one value per row.
inline bool TakesRows(const at::Tensor& x) {
  return TakesValues(x) && x.dim() > 0 && x.size(-1) > 0;
}

// GCC 12's AVX-512 conversion intrinsics start from an "undefined" register it then
// reports as (maybe) uninitialized (GCC bug 105593): not a fault of this code. Code
// around them (and around the _mm512_reduce_* helpers) sits between these two.
#if defined(__GNUC__) && !defined(__clang__)
#define CLIPSERVE_AVX512_WARNINGS_OFF                             \
  _Pragma("GCC diagnostic push")                                  \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
          _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define CLIPSERVE_AVX512_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define CLIPSERVE_AVX512_WARNINGS_OFF
#define CLIPSERVE_AVX512_WARNINGS_ON
#endif

#if CLIPSERVE_ROWS_AVX512
CLIPSERVE_AVX512_WARNINGS_OFF

// 16 values from p where `m` has a bit, 0 elsewhere.
CLIPSERVE_AVX512_TARGET inline __m512 Load16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
CLIPSERVE_AVX512_TARGET inline __m512 Load16(const c10::BFloat16* p, __mmask16 m) {
  // bf16 is the top half of an fp32.
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

CLIPSERVE_AVX512_TARGET inline void Store16(__m512 v, float* p, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}
// Rounded to nearest even as c10::BFloat16 rounds, NaN to 0x7fc0.
CLIPSERVE_AVX512_TARGET inline void Store16(__m512 v, c10::BFloat16* p, __mmask16 m) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                  _mm512_set1_epi32(0x7fc0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(rounded));
}

// exp(x) for x <= 0 (softmax's x - max, sigmoid's -|x|), to about 1 ulp: x = n ln2 + r
// with |r| <= ln2 / 2 (ln2 in two parts, so n ln2 is exact), exp(r) by Cephes' expf
// polynomial, times 2^n (scalef rounds into the subnormals as exp does). Below -104
// exp is under half the smallest subnormal: 0 (and 0 for a NaN x: callers that can
// meet one handle it themselves).
CLIPSERVE_AVX512_TARGET inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  // 1 + r + r^2 p
  const __m512 e =
      _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, n);
}

// The lanes of a row's last, partial block of 16 (none when 16 divides the width).
inline __mmask16 TailMask(int64_t width) {
  return static_cast<__mmask16>((1u << (width % 16)) - 1);
}

// The lanes of the block of 16 that starts with `left` values left: all 16, or the
// tail's.
inline __mmask16 BlockMask(int64_t left) {
  return left >= 16 ? __mmask16{0xffff} : TailMask(left);
}

CLIPSERVE_AVX512_WARNINGS_ON
#endif  // CLIPSERVE_ROWS_AVX512

}  // namespace clipserve::avx512_rows

#endif  // CLIPSERVE_SERVER_MODEL_AVX512_ROWS_H_
