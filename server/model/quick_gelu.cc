#include "server/model/quick_gelu.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "server/model/avx512_rows.h"

namespace clipserve {

namespace {

#if CLIPSERVE_ROWS_AVX512
CLIPSERVE_AVX512_WARNINGS_OFF  // see avx512_rows.h

// QuickGELU of h's n values in place, 16 at a time (the last block under a mask).
template <typename T>
CLIPSERVE_AVX512_TARGET void QuickGeluSpan(T* h, int64_t n) {
  const __m512 slope = _mm512_set1_ps(kQuickGeluSlope);
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = avx512_rows::BlockMask(n - i);
    const __m512 v = avx512_rows::Load16(h + i, m);
    const __m512 z = _mm512_mul_ps(v, slope);
    // -|z|: the sign bit set.
    const __m512 e = avx512_rows::ExpNonPositive(_mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(z), _mm512_set1_epi32(static_cast<int32_t>(0x80000000u)))));
    const __mmask16 non_negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 sigmoid =
        _mm512_div_ps(_mm512_mask_mov_ps(e, non_negative, one), _mm512_add_ps(one, e));
    avx512_rows::Store16(_mm512_mul_ps(v, sigmoid), h + i, m);
  }
}

CLIPSERVE_AVX512_WARNINGS_ON

template <typename T>
void QuickGeluInParallel(at::Tensor& h) {
  T* p = h.data_ptr<T>();
  // Tasks of at least 32K values: smaller ones cost more to hand out than to run.
  at::parallel_for(0, h.numel(), int64_t{1} << 15, [&](int64_t begin, int64_t end) {
    QuickGeluSpan(p + begin, end - begin);
  });
}
#endif  // CLIPSERVE_ROWS_AVX512

}  // namespace

bool QuickGeluTakes(const at::Tensor& h) {
  return avx512_rows::TakesValues(h) && h.is_contiguous() &&
         !(at::GradMode::is_enabled() && h.requires_grad());
}

void QuickGeluInPlace(at::Tensor& h) {
  TORCH_CHECK(QuickGeluTakes(h),
              "QuickGeluInPlace takes contiguous fp32 or bf16 on a CPU with AVX-512, "
              "outside autograd");
#if CLIPSERVE_ROWS_AVX512
  if (h.scalar_type() == at::kBFloat16) {
    QuickGeluInParallel<c10::BFloat16>(h);
  } else {
    QuickGeluInParallel<float>(h);
  }
#endif
}

}  // namespace clipserve
