#include "server/model/row_layer_norm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "server/model/avx512_rows.h"

namespace clipserve {

namespace {

// The range of the values some rows were normalized to, and whether all were finite.
struct RowsRange {
  float min = std::numeric_limits<float>::infinity();
  float max = -std::numeric_limits<float>::infinity();
  bool finite = true;
};

// One row's parameters: its width, the fp32 weight and bias, epsilon.
struct RowShape {
  int64_t width;
  const float* weight;
  const float* bias;
  float eps;
};

#if CLIPSERVE_ROWS_AVX512
RowsRange Merge(const RowsRange& a, const RowsRange& b) {
  return {std::min(a.min, b.min), std::max(a.max, b.max), a.finite && b.finite};
}

CLIPSERVE_AVX512_WARNINGS_OFF  // see avx512_rows.h

using avx512_rows::Load16;
using avx512_rows::Store16;

// 16 values (where `m` has a bit) normalized and stored, their range and whether any
// is not finite added to lo, hi and not_finite.
template <typename In, typename Out>
CLIPSERVE_AVX512_TARGET inline void NormalizeBlock(const In* x, Out* y,
                                                   const float* weight, const float* bias,
                                                   __m512 mean, __m512 rstd, __mmask16 m,
                                                   __m512& lo, __m512& hi,
                                                   __mmask16& not_finite) {
  const __m512 v =
      _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(Load16(x, m), mean), rstd),
                      _mm512_maskz_loadu_ps(m, weight), _mm512_maskz_loadu_ps(m, bias));
  Store16(v, y, m);
  lo = _mm512_mask_min_ps(lo, m, lo, v);
  hi = _mm512_mask_max_ps(hi, m, hi, v);
  // v - v is NaN exactly where v is infinite or NaN.
  const __m512 zero_if_finite = _mm512_sub_ps(v, v);
  not_finite |= _mm512_mask_cmp_ps_mask(m, zero_if_finite, zero_if_finite, _CMP_UNORD_Q);
}

template <typename In, typename Out>
CLIPSERVE_AVX512_TARGET void NormalizeRow(const In* x, Out* y, const RowShape& s,
                                          RowsRange& range) {
  const int64_t full = s.width / 16 * 16;
  const __mmask16 tail = avx512_rows::TailMask(s.width);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) sum = _mm512_add_ps(sum, Load16(x + i, 0xffff));
  if (tail) sum = _mm512_add_ps(sum, Load16(x + full, tail));
  const float mean = _mm512_reduce_add_ps(sum) / static_cast<float>(s.width);
  const __m512 vmean = _mm512_set1_ps(mean);

  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 d = _mm512_sub_ps(Load16(x + i, 0xffff), vmean);
    squares = _mm512_fmadd_ps(d, d, squares);
  }
  if (tail) {
    const __m512 d = _mm512_maskz_sub_ps(tail, Load16(x + full, tail), vmean);
    squares = _mm512_fmadd_ps(d, d, squares);
  }
  const float rstd =
      1.0f /
      std::sqrt(_mm512_reduce_add_ps(squares) / static_cast<float>(s.width) + s.eps);
  const __m512 vrstd = _mm512_set1_ps(rstd);

  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 not_finite = 0;
  for (int64_t i = 0; i < full; i += 16) {
    NormalizeBlock(x + i, y + i, s.weight + i, s.bias + i, vmean, vrstd, 0xffff, lo, hi,
                   not_finite);
  }
  if (tail) {
    NormalizeBlock(x + full, y + full, s.weight + full, s.bias + full, vmean, vrstd, tail,
                   lo, hi, not_finite);
  }
  range.finite = range.finite && not_finite == 0;
  range.min = std::min(range.min, _mm512_reduce_min_ps(lo));
  range.max = std::max(range.max, _mm512_reduce_max_ps(hi));
}

CLIPSERVE_AVX512_WARNINGS_ON

// Rows [begin, end) of x into y, in tasks of at least 32K values (smaller ones cost
// more to hand out than to run).
template <typename In, typename Out>
RowsRange NormalizeInParallel(const at::Tensor& x, at::Tensor& y, const RowShape& s) {
  const In* in = x.data_ptr<In>();
  Out* out = y.data_ptr<Out>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / s.width);
  return at::parallel_reduce(
      0, x.numel() / s.width, grain, RowsRange{},
      [&](int64_t begin, int64_t end, RowsRange range) {
        for (int64_t r = begin; r < end; ++r) {
          NormalizeRow(in + r * s.width, out + r * s.width, s, range);
        }
        return range;
      },
      Merge);
}

template <typename In>
RowsRange NormalizeInParallel(const at::Tensor& x, at::Tensor& y, const RowShape& s) {
  return y.scalar_type() == at::kBFloat16
             ? NormalizeInParallel<In, c10::BFloat16>(x, y, s)
             : NormalizeInParallel<In, float>(x, y, s);
}

#endif  // CLIPSERVE_ROWS_AVX512

}  // namespace

bool RowLayerNormTakes(const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& bias) {
  if (!avx512_rows::TakesRows(x)) return false;
  // No autograd: a graph to record goes through LibTorch's layer_norm.
  return !(at::GradMode::is_enabled() &&
           (x.requires_grad() || weight.requires_grad() || bias.requires_grad()));
}

NormalizedRows RowLayerNorm(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, double eps,
                            c10::ScalarType out_dtype) {
  TORCH_CHECK(RowLayerNormTakes(x, weight, bias),
              "RowLayerNorm takes fp32 or bf16 on a CPU with AVX-512, outside autograd");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16,
              "RowLayerNorm writes fp32 or bf16");
  const int64_t width = x.size(-1);
  TORCH_CHECK(weight.numel() == width && bias.numel() == width,
              "RowLayerNorm: weight and bias must have x's width ", width);
  const at::Tensor rows = x.contiguous();
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const at::Tensor b = bias.to(at::kFloat).contiguous();
  const RowShape shape{width, w.data_ptr<float>(), b.data_ptr<float>(),
                       static_cast<float>(eps)};
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype));
#if CLIPSERVE_ROWS_AVX512
  const RowsRange range = x.scalar_type() == at::kBFloat16
                              ? NormalizeInParallel<c10::BFloat16>(rows, y, shape)
                              : NormalizeInParallel<float>(rows, y, shape);
#else
  (void)shape;
  const RowsRange range;  // unreachable: RowLayerNormTakes is false
#endif
  NormalizedRows result{y, std::nullopt};
  if (range.finite && x.numel() > 0) {
    // Rounding is monotonic: the extremes of the rounded values are the rounded
    // extremes.
    result.range = out_dtype == at::kBFloat16
                       ? ValueRange{static_cast<float>(c10::BFloat16(range.min)),
                                    static_cast<float>(c10::BFloat16(range.max))}
                       : ValueRange{range.min, range.max};
  }
  return result;
}

}  // namespace clipserve
