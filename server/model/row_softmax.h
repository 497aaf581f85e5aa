#ifndef CLIPSERVE_SERVER_MODEL_ROW_SOFTMAX_H_
#define CLIPSERVE_SERVER_MODEL_ROW_SOFTMAX_H_

#include <ATen/core/Tensor.h>

namespace clipserve {

// Whether RowSoftmax takes x: bf16 or fp32 on the CPU, no autograd graph to record, and
// a CPU with AVX-512 (F, BW and VL).
bool RowSoftmaxTakes(const at::Tensor& x);

// softmax(x, -1) in fp32 whatever x's dtype, written in x's dtype (bf16 rounded to
// nearest even): each row's max, exp(x - max) and its sum, each value divided by the
// sum, a row at a time while it is in cache. A row holding a NaN or +inf, or only
// -inf, comes out NaN, as LibTorch's softmax gives it. Attention rows are short: for a
// ViT-B-32 batch of 32, bf16 scores [32, 12, 50, 50], LibTorch 1.13's softmax took
// 0.69 ms here where exp of the same values in fp32 took 0.21. exp is a polynomial
// good to about 1 ulp of fp32, so results may differ from LibTorch's in the last bits
// of fp32. x: RowSoftmaxTakes(x); throws
// c10::Error otherwise.
at::Tensor RowSoftmax(const at::Tensor& x);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_ROW_SOFTMAX_H_
