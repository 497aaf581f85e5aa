#ifndef CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_
#define CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>

#include "absl/status/status.h"

namespace clipserve {

// The activation an Int8Linear applies to its product, in the same pass.
enum class Int8Activation {
  kNone,
  kQuickGelu,  // h * sigmoid(1.702 h), OpenAI CLIP's
  kGelu,       // exact (erf) GELU
};

// A linear layer's weight quantized to int8, one symmetric scale per output row, laid
// out once for oneDNN's int8 matmul. Each call quantizes its input to uint8 with one
// affine scale for the whole tensor (its range widened to hold 0), multiplies in int8
// with int32 sums, and scales, adds the bias and applies the activation on the way
// out, in the dtype asked for: one pass over the input to quantize it, one product.
// Immutable once built: calls may run concurrently.
//
// Built with oneDNN's headers (libdnnl-dev, the library LibTorch links on Debian) the
// scales are arguments of a product compiled once per input row count. Without them it
// falls back to LibTorch's dynamic quantized linear, which prepares its kernel for each
// new input scale, and the activation runs as a pass of its own.
class Int8Linear {
 public:
  // weight [out, in] and bias [out] (or undefined), on the CPU in any float dtype.
  Int8Linear(const at::Tensor& weight, const at::Tensor& bias,
             Int8Activation activation = Int8Activation::kNone);
  ~Int8Linear();
  Int8Linear(Int8Linear&&) noexcept;
  Int8Linear& operator=(Int8Linear&&) noexcept;

  // x: [..., in], fp32 or bf16, on the CPU -> activation(x W^T + b): [..., out] in
  // `dtype` (fp32 or bf16). nullopt when x holds a value that is not finite (no scale
  // represents it), or spans so small a range that the bias overflows in units of its
  // scale: the caller then runs the layer unquantized.
  std::optional<at::Tensor> Apply(const at::Tensor& x, c10::ScalarType dtype) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  // The kernel's state: oneDNN's packed weights and scales, or LibTorch's packed
  // weight (int8_linear.cc, one definition per backend).
  struct Impl;
  static std::unique_ptr<const Impl> MakeImpl(const at::Tensor& weight,
                                              const at::Tensor& bias,
                                              Int8Activation activation);
  // Apply, its arguments checked.
  std::optional<at::Tensor> ApplyChecked(const at::Tensor& x,
                                         c10::ScalarType dtype) const;

  int64_t in_ = 0;
  int64_t out_ = 0;
  Int8Activation activation_ = Int8Activation::kNone;
  std::unique_ptr<const Impl> impl_;
};

// Whether this build and CPU run Int8Linear on a real int8 kernel: UNIMPLEMENTED when
// oneDNN (or LibTorch's quantized engine, without oneDNN's headers) has none but a
// reference loop for it.
absl::Status CheckInt8Kernel();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_
