#ifndef CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_
#define CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "server/model/linear_activation.h"
#include "server/model/value_range.h"

namespace clipserve {

// The int8 kernel an Int8Linear runs on. Both compute the same rounding (below).
enum class Int8Kernel {
  // oneDNN's int8 matmul, called directly: the scales are arguments of a product
  // compiled once per input row count, and the activation is fused into it. Needs
  // oneDNN's headers at build time (libdnnl-dev) and a LibTorch that runs on that same
  // shared libdnnl, as Debian's does.
  kOneDnn,
  // LibTorch's dynamic quantized linear, on its oneDNN or FBGEMM quantized engine: it
  // prepares its kernel for each new input scale, and the activation runs as a pass
  // of its own. Any LibTorch with a quantized engine (NVIDIA's and PyTorch's archives).
  kLibTorch,
};

// kOneDnn where this build has it, kLibTorch otherwise.
Int8Kernel DefaultInt8Kernel();

// A linear layer's weight quantized to int8, one symmetric scale per output row, packed
// once for its kernel. Each call quantizes its input to uint8 with one
// affine scale for the whole tensor (its range widened to hold 0), multiplies in int8
// with int32 sums, and scales, adds the bias and applies the activation on the way
// out, in the dtype asked for: one pass over the input to quantize it, one product.
// Immutable once built: calls may run concurrently.
class Int8Linear {
 public:
  // weight [out, in] and bias [out] (or undefined), on the CPU in any float dtype.
  // Throws c10::Error for a kernel this build lacks (CheckInt8Kernel).
  Int8Linear(const at::Tensor& weight, const at::Tensor& bias,
             LinearActivation activation = LinearActivation::kNone,
             Int8Kernel kernel = DefaultInt8Kernel());
  ~Int8Linear();
  Int8Linear(Int8Linear&&) noexcept;
  Int8Linear& operator=(Int8Linear&&) noexcept;

  // x: [..., in], fp32 or bf16, on the CPU -> activation(x W^T + b): [..., out] in
  // `dtype` (fp32 or bf16). nullopt when x holds a value that is not finite (no scale
  // represents it), or (kOneDnn, which adds the bias to the integer sums) spans so
  // small a range that the bias overflows in units of its scale: the caller then runs
  // the layer unquantized. `range`, where given, must be x's smallest and largest
  // value, as the kernel that wrote x found them: it saves the pass that finds them.
  std::optional<at::Tensor> Apply(const at::Tensor& x, c10::ScalarType dtype,
                                  const std::optional<ValueRange>& range = {}) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  // The kernel's packed weight.
  struct Impl;
  static std::unique_ptr<const Impl> MakeImpl(const at::Tensor& weight,
                                              const at::Tensor& bias,
                                              LinearActivation activation,
                                              Int8Kernel kernel);

  int64_t in_ = 0;
  int64_t out_ = 0;
  LinearActivation activation_ = LinearActivation::kNone;
  std::unique_ptr<const Impl> impl_;
};

// Whether this build and CPU run Int8Linear on `kernel` for real: UNIMPLEMENTED when
// the build lacks it, or oneDNN has only a reference loop for it, or LibTorch has no
// quantized engine. For kLibTorch it selects LibTorch's quantized engine (oneDNN's,
// else FBGEMM's), a process-wide setting.
absl::Status CheckInt8Kernel(Int8Kernel kernel = DefaultInt8Kernel());

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_INT8_LINEAR_H_
