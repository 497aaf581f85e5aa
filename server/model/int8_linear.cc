#include "server/model/int8_linear.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/model/quick_gelu.h"
#include "server/model/uint8_quantize.h"

#if CLIPSERVE_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include "server/model/dnnl_products.h"
#endif

namespace clipserve {

namespace {

// The weight rounded to int8 with one symmetric scale per row: the largest magnitude
// of each row maps to 127. An all-zero row gets scale 1 (any scale represents it).
struct RowQuantized {
  torch::Tensor values;  // int8 [out, in]
  torch::Tensor scales;  // fp32 [out]
};

RowQuantized QuantizeRows(const torch::Tensor& weight) {
  const torch::Tensor w = weight.to(torch::kFloat).contiguous();
  const torch::Tensor max_abs = w.abs().amax(1);
  const torch::Tensor scales =
      torch::where(max_abs > 0, max_abs / 127.0, torch::ones_like(max_abs));
  return {
      (w / scales.unsqueeze(1)).round().clamp(-127, 127).to(torch::kChar).contiguous(),
      scales.contiguous()};
}

// One affine scale for a whole input: [lo, hi] (widened to hold 0) onto [0, 255].
struct InputScale {
  float scale;
  int32_t zero_point;
};

// The scale of an input whose values span [min, max]; nullopt when either is not
// finite.
std::optional<InputScale> ChooseInputScale(double min, double max) {
  const double lo = std::min(min, 0.0);
  const double hi = std::max(max, 0.0);
  if (!std::isfinite(lo) || !std::isfinite(hi)) return std::nullopt;
  const float scale = static_cast<float>((hi - lo) / 255.0);
  // All zeros, or a range so small its scale is not a normal float: every value
  // rounds to 0 at scale 1.
  if (!(scale >= std::numeric_limits<float>::min())) return InputScale{1.0f, 0};
  return InputScale{
      scale, static_cast<int32_t>(std::clamp(std::nearbyint(-lo / scale), 0.0, 255.0))};
}

// x's scale: from `range` where its writer found it, else from a pass over x.
std::optional<InputScale> ChooseInputScale(const torch::Tensor& x,
                                           const std::optional<ValueRange>& range) {
  if (range.has_value()) return ChooseInputScale(range->min, range->max);
  const auto [lo, hi] = torch::aminmax(x);
  return ChooseInputScale(lo.item<double>(), hi.item<double>());
}

std::vector<int64_t> OutputShape(const torch::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return shape;
}

}  // namespace

#if CLIPSERVE_WITH_DNNL

namespace {

// x as a contiguous [rows, in] matrix the quantizer reads: fp32 and bf16 as they are.
torch::Tensor AsRows(const torch::Tensor& x) {
  const torch::Tensor rows = x.reshape({-1, x.size(-1)});
  return rows.scalar_type() == torch::kBFloat16 ? rows.contiguous()
                                                : rows.to(torch::kFloat).contiguous();
}

using dnnl_dt = dnnl::memory::data_type;
using dnnl_tag = dnnl::memory::format_tag;

using dnnl_products::CpuEngine;

// A product's key: input row count, width, output width, output dtype (bf16 or
// fp32) and activation. Layers of one shape share the product (the scales, the
// bias and the weights are arguments).
using ProductKey = std::tuple<int64_t, int64_t, int64_t, int, int>;

dnnl::matmul::primitive_desc DescribeProduct(int64_t rows, int64_t in, int64_t out,
                                             bool bf16, LinearActivation activation,
                                             const dnnl::memory::desc& weights) {
  const dnnl::memory::desc src({rows, in}, dnnl_dt::u8, dnnl_tag::ab);
  const dnnl::memory::desc dst({rows, out}, bf16 ? dnnl_dt::bf16 : dnnl_dt::f32,
                               dnnl_tag::ab);
  const dnnl::memory::desc per_column({1, out}, dnnl_dt::f32, dnnl_tag::ab);
  // (acc + bias / scale - zero point x weight row sum) x scale, scale = input scale x
  // row scale: the matmul's own bias (added to the int32 sums, converted) and one
  // post-op, 10% faster than a second post-op adding the bias after the scale.
  dnnl::post_ops ops;
  ops.append_binary(dnnl::algorithm::binary_mul, per_column);
  dnnl_products::AppendActivation(ops, activation);
  dnnl::primitive_attr attr;
  // Each call brings its own scratchpad: concurrent calls share no buffer.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_post_ops(ops);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, per_column, dst),
                                      attr, CpuEngine());
}

// A weight packed for oneDNN's int8 matmul.
struct OneDnnWeights {
  dnnl_products::PackedWeight weights;  // int8
  torch::Tensor row_scales;             // fp32 [out]
  torch::Tensor row_sums;               // fp32 [out]: each row's integers summed
  torch::Tensor bias;                   // fp32 [out]
};

OneDnnWeights PackForOneDnn(const torch::Tensor& weight, const torch::Tensor& bias,
                            LinearActivation activation) {
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1);
  OneDnnWeights packed;
  const RowQuantized q = QuantizeRows(weight);
  packed.row_scales = q.scales;
  packed.row_sums = q.values.sum(1, /*keepdim=*/false, torch::kLong).to(torch::kFloat);
  packed.bias = bias.defined() ? bias.to(torch::kFloat).contiguous()
                               : torch::zeros({out}, torch::kFloat);
  packed.weights = dnnl_products::PackWeight(
      q.values.data_ptr<int8_t>(), in, out, dnnl_dt::s8,
      [&](int64_t rows, const dnnl::memory::desc& any) {
        return DescribeProduct(rows, in, out, /*bf16=*/false, activation, any);
      });
  return packed;
}

std::optional<torch::Tensor> ApplyOneDnn(const OneDnnWeights& w, int64_t in, int64_t out,
                                         LinearActivation activation,
                                         const torch::Tensor& x, c10::ScalarType dtype,
                                         const std::optional<ValueRange>& range) {
  const torch::Tensor rows = AsRows(x);
  const std::optional<InputScale> s = ChooseInputScale(rows, range);
  if (!s.has_value()) return std::nullopt;
  // Per call: each column's scale, and its bias in units of that scale less the zero
  // point's share. A scale so small that a bias overflows there has no int8 form.
  const torch::Tensor scales = (w.row_scales * s->scale).contiguous();
  const torch::Tensor biases =
      (w.bias / scales - w.row_sums * static_cast<float>(s->zero_point)).contiguous();
  if (!biases.isfinite().all().item<bool>()) return std::nullopt;
  const torch::Tensor q = QuantizeToUint8(rows, s->scale, s->zero_point);
  const int64_t m = rows.size(0);
  const bool bf16 = dtype == torch::kBFloat16;
  static auto* const products = new dnnl_products::ProductCache<ProductKey>;
  const std::shared_ptr<const dnnl_products::Product> product = products->Get(
      ProductKey{m, in, out, bf16, static_cast<int>(activation)},
      [&] { return DescribeProduct(m, in, out, bf16, activation, w.weights.layout); });
  torch::Tensor y = torch::empty({m, out}, x.options().dtype(dtype));
  const dnnl::engine& engine = CpuEngine();
  const dnnl::memory::desc per_column({1, out}, dnnl_dt::f32, dnnl_tag::ab);
  dnnl_products::Execute(
      *product,
      {{DNNL_ARG_SRC, dnnl::memory({{m, in}, dnnl_dt::u8, dnnl_tag::ab}, engine,
                                   q.data_ptr<uint8_t>())},
       {DNNL_ARG_WEIGHTS, w.weights.memory},
       {DNNL_ARG_BIAS, dnnl::memory(per_column, engine, biases.data_ptr<float>())},
       {DNNL_ARG_DST,
        dnnl::memory({{m, out}, bf16 ? dnnl_dt::bf16 : dnnl_dt::f32, dnnl_tag::ab},
                     engine, y.data_ptr())},
       {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
        dnnl::memory(per_column, engine, scales.data_ptr<float>())}});
  return y.view(OutputShape(x, out));
}

absl::Status CheckOneDnnKernel() {
  try {
    const dnnl::memory::desc any({256, 256}, dnnl_dt::s8, dnnl_tag::any);
    const dnnl::matmul::primitive_desc pd =
        DescribeProduct(256, 256, 256, false, LinearActivation::kQuickGelu, any);
    if (dnnl_products::IsReference(pd)) {
      return absl::UnimplementedError(
          absl::StrCat("oneDNN has only its reference int8 matmul on this CPU (",
                       pd.impl_info_str(), ")"));
    }
  } catch (const dnnl::error& e) {
    return absl::UnimplementedError(absl::StrCat("oneDNN int8 matmul: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

#endif  // CLIPSERVE_WITH_DNNL

namespace {

c10::OperatorHandle QuantizedOp(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// The weight as LibTorch's packed int8 linear weight (with its bias).
c10::IValue PackForLibTorch(const torch::Tensor& weight, const torch::Tensor& bias) {
  // The same rounding as QuantizeRows, through LibTorch's own quantizer.
  const torch::Tensor q = torch::quantize_per_channel(
      weight.to(torch::kFloat).contiguous(),
      QuantizeRows(weight).scales.to(torch::kDouble),
      torch::zeros({weight.size(0)}, torch::kLong), 0, torch::kQInt8);
  static const c10::OperatorHandle prepack = QuantizedOp("quantized::linear_prepack");
  std::vector<c10::IValue> stack{
      q, bias.defined() ? c10::IValue(bias.to(torch::kFloat)) : c10::IValue()};
  prepack.callBoxed(&stack);
  return std::move(stack.at(0));
}

std::optional<torch::Tensor> ApplyLibTorch(const c10::IValue& packed, int64_t out,
                                           LinearActivation activation,
                                           const torch::Tensor& x, c10::ScalarType dtype,
                                           const std::optional<ValueRange>& range) {
  const torch::Tensor rows = x.reshape({-1, x.size(-1)}).to(torch::kFloat).contiguous();
  if (!ChooseInputScale(rows, range).has_value()) return std::nullopt;
  static const c10::OperatorHandle linear = QuantizedOp("quantized::linear_dynamic");
  std::vector<c10::IValue> stack{rows, packed, /*reduce_range=*/false};
  linear.callBoxed(&stack);
  torch::Tensor y = stack.at(0).toTensor();
  if (activation == LinearActivation::kQuickGelu) {
    y = y * torch::sigmoid(kQuickGeluSlope * y);
  } else if (activation == LinearActivation::kGelu) {
    torch::gelu_(y);
  }
  return y.to(dtype).view(OutputShape(x, out));
}

absl::Status CheckLibTorchKernel() {
  const std::vector<at::QEngine>& engines = at::globalContext().supportedQEngines();
  for (at::QEngine engine : {at::QEngine::ONEDNN, at::QEngine::FBGEMM}) {
    if (std::find(engines.begin(), engines.end(), engine) != engines.end()) {
      at::globalContext().setQEngine(engine);
      return absl::OkStatus();
    }
  }
  return absl::UnimplementedError(
      "LibTorch's int8 kernel needs a LibTorch built with the oneDNN or FBGEMM "
      "quantized engine");
}

}  // namespace

Int8Kernel DefaultInt8Kernel() {
#if CLIPSERVE_WITH_DNNL
  return Int8Kernel::kOneDnn;
#else
  return Int8Kernel::kLibTorch;
#endif
}

absl::Status CheckInt8Kernel(Int8Kernel kernel) {
  if (kernel == Int8Kernel::kLibTorch) return CheckLibTorchKernel();
#if CLIPSERVE_WITH_DNNL
  return CheckOneDnnKernel();
#else
  return absl::UnimplementedError(
      "this build calls oneDNN through LibTorch only: it was built without oneDNN's "
      "headers (libdnnl-dev), or against a LibTorch with a oneDNN of its own");
#endif
}

// One kernel's packed weight.
struct Int8Linear::Impl {
  Int8Kernel kernel;
#if CLIPSERVE_WITH_DNNL
  OneDnnWeights onednn;  // kOneDnn
#endif
  c10::IValue libtorch;  // kLibTorch
};

std::unique_ptr<const Int8Linear::Impl> Int8Linear::MakeImpl(const torch::Tensor& weight,
                                                             const torch::Tensor& bias,
                                                             LinearActivation activation,
                                                             Int8Kernel kernel) {
  auto impl = std::make_unique<Impl>();
  impl->kernel = kernel;
#if CLIPSERVE_WITH_DNNL
  if (kernel == Int8Kernel::kOneDnn) {
    impl->onednn = PackForOneDnn(weight, bias, activation);
    return impl;
  }
#else
  (void)activation;
  TORCH_CHECK(kernel == Int8Kernel::kLibTorch,
              "Int8Linear: ", CheckInt8Kernel(kernel).message());
#endif
  impl->libtorch = PackForLibTorch(weight, bias);
  return impl;
}

Int8Linear::Int8Linear(const torch::Tensor& weight, const torch::Tensor& bias,
                       LinearActivation activation, Int8Kernel kernel)
    : in_(weight.size(1)),
      out_(weight.size(0)),
      activation_(activation),
      impl_(MakeImpl(weight, bias, activation, kernel)) {}

Int8Linear::~Int8Linear() = default;
Int8Linear::Int8Linear(Int8Linear&&) noexcept = default;
Int8Linear& Int8Linear::operator=(Int8Linear&&) noexcept = default;

std::optional<torch::Tensor> Int8Linear::Apply(
    const torch::Tensor& x, c10::ScalarType dtype,
    const std::optional<ValueRange>& range) const {
  TORCH_CHECK(x.size(-1) == in_, "Int8Linear: input width ", x.size(-1),
              ", weight width ", in_);
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16,
              "Int8Linear outputs fp32 or bf16");
#if CLIPSERVE_WITH_DNNL
  if (impl_->kernel == Int8Kernel::kOneDnn) {
    return ApplyOneDnn(impl_->onednn, in_, out_, activation_, x, dtype, range);
  }
#endif
  return ApplyLibTorch(impl_->libtorch, out_, activation_, x, dtype, range);
}

}  // namespace clipserve
