#ifndef CLIPSERVE_SERVER_MODEL_BF16_LINEAR_H_
#define CLIPSERVE_SERVER_MODEL_BF16_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "server/model/linear_activation.h"

namespace clipserve {

// A bf16 linear layer whose weight is laid out once, at construction, in the blocked
// form oneDNN's bf16 matmul reads. LibTorch 1.13's bf16 linear hands oneDNN the weight
// in its plain layout, and oneDNN reorders it on every call: on the MLP's first
// ViT-B-32 product that was a quarter of a batch-32 call's time and 40% of a batch-1
// call's (bench/kernel_benchmark BM_Linear). The product is the same kernel's, so the
// results are LibTorch's (bit for bit on the machine measured). Each input row count
// compiles a product of its own once (a bounded cache shared by every layer of that
// shape). Immutable once built: calls may run concurrently.
class Bf16Linear {
 public:
  // Whether this build has it (it calls oneDNN directly: CLIPSERVE_WITH_DNNL, as
  // Int8Linear's kOneDnn kernel does) and oneDNN has more than its reference loop
  // for bf16 on this CPU, with `activation` fused.
  static bool Available(LinearActivation activation = LinearActivation::kNone);

  // weight [out, in] and bias [out] (or undefined), on the CPU in any float dtype
  // (rounded to bf16). Throws c10::Error where !Available(activation).
  Bf16Linear(const at::Tensor& weight, const at::Tensor& bias,
             LinearActivation activation = LinearActivation::kNone);
  ~Bf16Linear();
  Bf16Linear(Bf16Linear&&) noexcept;
  Bf16Linear& operator=(Bf16Linear&&) noexcept;

  // Whether Apply takes x: bf16 on the CPU, [..., in] with at least one row, and no
  // autograd graph to record.
  bool Takes(const at::Tensor& x) const;

  // activation(x W^T + b): [..., out] in bf16, the sums in fp32 as LibTorch's bf16
  // linear does. An activation runs on those fp32 sums, in the product's pass, and the
  // result is rounded to bf16 once: where LibTorch would round the product, then the
  // activation's result again, and pass over the [rows, out] output a second time
  // (QuickGeluInPlace's 1.0 ms after each ViT-B-32 batch-32 c_fc). Throws c10::Error
  // where !Takes(x).
  at::Tensor Apply(const at::Tensor& x) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  struct Impl;  // the packed weight and bias

  int64_t in_ = 0;
  int64_t out_ = 0;
  LinearActivation activation_ = LinearActivation::kNone;
  std::unique_ptr<const Impl> impl_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_BF16_LINEAR_H_
