#ifndef CLIPSERVE_SERVER_MODEL_UINT8_QUANTIZE_H_
#define CLIPSERVE_SERVER_MODEL_UINT8_QUANTIZE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace clipserve {

// x (contiguous fp32 or bf16) quantized to uint8 at one affine scale, in parallel over
// LibTorch's intra-op threads: clamp(nearbyint(x / scale) + zero_point, 0, 255), the
// rounding half to even (Int8Linear's input rounding).
at::Tensor QuantizeToUint8(const at::Tensor& x, float scale, int32_t zero_point);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_UINT8_QUANTIZE_H_
