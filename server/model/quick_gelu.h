#ifndef CLIPSERVE_SERVER_MODEL_QUICK_GELU_H_
#define CLIPSERVE_SERVER_MODEL_QUICK_GELU_H_

#include <ATen/core/Tensor.h>

namespace clipserve {

// QuickGELU(h) = h * sigmoid(1.702 h), the activation OpenAI's CLIP trained with.
inline constexpr float kQuickGeluSlope = 1.702f;

// Whether QuickGeluInPlace takes h: contiguous fp32 or bf16 on the CPU, no autograd
// graph to record, and a CPU with AVX-512 (F, BW and VL).
bool QuickGeluTakes(const at::Tensor& h);

// h = QuickGELU(h), computed in fp32 whatever h's dtype and rounded once to h's dtype
// (bf16 to nearest even), in one pass over memory. It stands in for LibTorch's
// h * sigmoid(1.702 * h): three passes, each rounding its result to h's dtype. For a
// ViT-B-32 batch of 32 in bf16 ([1600, 3072]) those take about 3 ms on a 2-core EPYC,
// a quarter of the c_fc product that feeds them, and this pass about 1.1 ms
// (bench/kernel_benchmark BM_QuickGelu). sigmoid(z) is 1 / (1 + e) for z >= 0
// and e / (1 + e) below, with e = exp(-|z|) (ExpNonPositive, about 1 ulp of fp32), so
// nothing overflows; +inf gives +inf, -inf and NaN give NaN, as LibTorch's formula.
// Throws c10::Error where !QuickGeluTakes(h).
void QuickGeluInPlace(at::Tensor& h);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_QUICK_GELU_H_
