#include "server/model/row_softmax.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "server/model/avx512_rows.h"

namespace clipserve {

namespace {

#if CLIPSERVE_ROWS_AVX512
CLIPSERVE_AVX512_WARNINGS_OFF  // see avx512_rows.h

using avx512_rows::ExpNonPositive;
using avx512_rows::Load16;
using avx512_rows::Store16;

// One row of `width` values from x into y; `e` holds width fp32 values of scratch.
template <typename T>
CLIPSERVE_AVX512_TARGET void SoftmaxRow(const T* x, T* y, int64_t width, float* e) {
  const int64_t full = width / 16 * 16;
  const __mmask16 tail = avx512_rows::TailMask(width);
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 v = Load16(x + i, 0xffff);
    hi = _mm512_max_ps(hi, v);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  if (tail) {
    const __m512 v = Load16(x + full, tail);
    hi = _mm512_mask_max_ps(hi, tail, hi, v);
    nan |= _mm512_mask_cmp_ps_mask(tail, v, v, _CMP_UNORD_Q);
  }
  const float max = _mm512_reduce_max_ps(hi);
  if (nan != 0 || max == std::numeric_limits<float>::infinity() ||
      max == -std::numeric_limits<float>::infinity()) {
    const __m512 v = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
    for (int64_t i = 0; i < full; i += 16) Store16(v, y + i, 0xffff);
    if (tail) Store16(v, y + full, tail);
    return;
  }
  const __m512 vmax = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 v = ExpNonPositive(_mm512_sub_ps(Load16(x + i, 0xffff), vmax));
    _mm512_storeu_ps(e + i, v);
    sum = _mm512_add_ps(sum, v);
  }
  if (tail) {
    const __m512 v = ExpNonPositive(_mm512_sub_ps(Load16(x + full, tail), vmax));
    _mm512_mask_storeu_ps(e + full, tail, v);
    sum = _mm512_mask_add_ps(sum, tail, sum, v);
  }
  const __m512 scale = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (int64_t i = 0; i < full; i += 16) {
    Store16(_mm512_mul_ps(_mm512_loadu_ps(e + i), scale), y + i, 0xffff);
  }
  if (tail) {
    Store16(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, e + full), scale), y + full, tail);
  }
}

CLIPSERVE_AVX512_WARNINGS_ON

template <typename T>
void SoftmaxInParallel(const at::Tensor& x, at::Tensor& y) {
  const int64_t width = x.size(-1);
  const T* in = x.data_ptr<T>();
  T* out = y.data_ptr<T>();
  // Tasks of at least 32K values: smaller ones cost more to hand out than to run.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / width);
  at::parallel_for(0, x.numel() / width, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> e(static_cast<size_t>(width));
    for (int64_t r = begin; r < end; ++r) {
      SoftmaxRow(in + r * width, out + r * width, width, e.data());
    }
  });
}
#endif  // CLIPSERVE_ROWS_AVX512

}  // namespace

bool RowSoftmaxTakes(const at::Tensor& x) {
  return avx512_rows::TakesRows(x) && !(at::GradMode::is_enabled() && x.requires_grad());
}

at::Tensor RowSoftmax(const at::Tensor& x) {
  TORCH_CHECK(RowSoftmaxTakes(x),
              "RowSoftmax takes fp32 or bf16 on a CPU with AVX-512, outside autograd");
  const at::Tensor rows = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
#if CLIPSERVE_ROWS_AVX512
  if (x.scalar_type() == at::kBFloat16) {
    SoftmaxInParallel<c10::BFloat16>(rows, y);
  } else {
    SoftmaxInParallel<float>(rows, y);
  }
#endif
  return y;
}

}  // namespace clipserve
