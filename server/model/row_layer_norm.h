#ifndef CLIPSERVE_SERVER_MODEL_ROW_LAYER_NORM_H_
#define CLIPSERVE_SERVER_MODEL_ROW_LAYER_NORM_H_

#include <ATen/core/Tensor.h>

#include <optional>

#include "server/model/value_range.h"

namespace clipserve {

// LayerNorm's output, and the range of its values where they are all finite.
struct NormalizedRows {
  at::Tensor y;
  std::optional<ValueRange> range;
};

// Whether RowLayerNorm takes x: fp32 or bf16 on the CPU, no autograd graph to record,
// and a CPU with AVX-512 (F, BW and VL). Elsewhere LibTorch's layer_norm runs, as
// before this kernel.
bool RowLayerNormTakes(const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& bias);

// LayerNorm over x's last dimension as CLIP computes it, in fp32 whatever x's dtype:
// each row's mean and (biased) variance, then (x - mean) / sqrt(var + eps) * weight +
// bias, written in `out_dtype` (fp32, or bf16 rounded to nearest even), in one pass
// over x (each row read while it is in cache) that also finds the range of what it
// wrote. It stands in for layer_norm(x.float()).to(out_dtype) and the aminmax of that
// an int8 product needs before it quantizes its input: four passes over memory.
// x: [..., w] with RowLayerNormTakes(x, weight, bias); weight and bias: [w], any float
// dtype. The sums run in a different order from LibTorch's, so the results may differ
// from its layer_norm in the last bits of fp32. Throws c10::Error where
// !RowLayerNormTakes(x, weight, bias).
NormalizedRows RowLayerNorm(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, double eps,
                            c10::ScalarType out_dtype);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_ROW_LAYER_NORM_H_
