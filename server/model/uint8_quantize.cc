#include "server/model/uint8_quantize.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "server/model/avx512_rows.h"

namespace clipserve {

namespace {

inline float ToFloat(float v) { return v; }
inline float ToFloat(c10::BFloat16 v) { return static_cast<float>(v); }

// q = clamp(nearbyint(x / scale) + zero_point, 0, 255): the rounding the reference
// describes (half to even), with the zero point added after it.
template <typename T>
void QuantizeSpanScalar(const T* x, uint8_t* q, int64_t n, float scale,
                        int32_t zero_point) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t r =
        static_cast<int32_t>(std::nearbyint(ToFloat(x[i]) / scale)) + zero_point;
    q[i] = static_cast<uint8_t>(std::clamp(r, 0, 255));
  }
}

#if CLIPSERVE_ROWS_AVX512
CLIPSERVE_AVX512_WARNINGS_OFF  // see avx512_rows.h

// The same, 16 at a time (the tail under a mask): vcvtps2dq rounds half to even in
// the default rounding mode, as nearbyint does.
template <typename T>
CLIPSERVE_AVX512_TARGET void QuantizeSpanAvx512(const T* x, uint8_t* q, int64_t n,
                                                float scale, int32_t zero_point) {
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512i vzero = _mm512_set1_epi32(zero_point);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = avx512_rows::BlockMask(n - i);
    __m512i r = _mm512_add_epi32(
        _mm512_cvtps_epi32(_mm512_div_ps(avx512_rows::Load16(x + i, m), vscale)), vzero);
    r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_setzero_si512()),
                         _mm512_set1_epi32(255));
    _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(r));
  }
}
CLIPSERVE_AVX512_WARNINGS_ON
#endif

template <typename T>
void QuantizeSpan(const T* x, uint8_t* q, int64_t n, float scale, int32_t zero_point) {
#if CLIPSERVE_ROWS_AVX512
  if (avx512_rows::CpuHasAvx512()) return QuantizeSpanAvx512(x, q, n, scale, zero_point);
#endif
  QuantizeSpanScalar(x, q, n, scale, zero_point);
}

}  // namespace

at::Tensor QuantizeToUint8(const at::Tensor& x, float scale, int32_t zero_point) {
  TORCH_CHECK(x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "QuantizeToUint8 takes a contiguous fp32 or bf16 tensor");
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte));
  uint8_t* out = q.data_ptr<uint8_t>();
  constexpr int64_t kGrain = 1 << 15;
  if (x.scalar_type() == at::kBFloat16) {
    const c10::BFloat16* in = x.data_ptr<c10::BFloat16>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      QuantizeSpan(in + begin, out + begin, end - begin, scale, zero_point);
    });
  } else {
    const float* in = x.data_ptr<float>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      QuantizeSpan(in + begin, out + begin, end - begin, scale, zero_point);
    });
  }
  return q;
}

}  // namespace clipserve
