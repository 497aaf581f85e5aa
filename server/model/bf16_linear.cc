#include "server/model/bf16_linear.h"

#include <torch/torch.h>

#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#if CLIPSERVE_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include "server/model/dnnl_products.h"
#endif

namespace clipserve {

#if CLIPSERVE_WITH_DNNL

namespace {

using dnnl_dt = dnnl::memory::data_type;
using dnnl_tag = dnnl::memory::format_tag;
using dnnl_products::CpuEngine;

// rows, in, out, whether there is a bias, the activation.
using ProductKey = std::tuple<int64_t, int64_t, int64_t, bool, LinearActivation>;

dnnl::matmul::primitive_desc DescribeProduct(int64_t rows, int64_t in, int64_t out,
                                             bool bias, LinearActivation activation,
                                             const dnnl::memory::desc& weights) {
  const dnnl::memory::desc src({rows, in}, dnnl_dt::bf16, dnnl_tag::ab);
  const dnnl::memory::desc dst({rows, out}, dnnl_dt::bf16, dnnl_tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops ops;
  dnnl_products::AppendActivation(ops, activation);
  attr.set_post_ops(ops);
  const dnnl::matmul::desc desc =
      bias ? dnnl::matmul::desc(src, weights,
                                dnnl::memory::desc({1, out}, dnnl_dt::bf16, dnnl_tag::ab),
                                dst)
           : dnnl::matmul::desc(src, weights, dst);
  return dnnl::matmul::primitive_desc(desc, attr, CpuEngine());
}

dnnl_products::ProductCache<ProductKey>& Products() {
  static auto* const products = new dnnl_products::ProductCache<ProductKey>;
  return *products;
}

}  // namespace

struct Bf16Linear::Impl {
  dnnl_products::PackedWeight weights;  // bf16
  at::Tensor bias;                      // bf16 [1, out], a copy of its own, or undefined
};

bool Bf16Linear::Available(LinearActivation activation) {
  // Not where oneDNN has only its reference loop for bf16 (a CPU without AVX-512):
  // LibTorch's own kernels are faster there.
  const auto check = [](LinearActivation a) {
    try {
      const dnnl::memory::desc any({256, 256}, dnnl_dt::bf16, dnnl_tag::any);
      return !dnnl_products::IsReference(
          DescribeProduct(256, 256, 256, /*bias=*/true, a, any));
    } catch (const dnnl::error&) {
      return false;
    }
  };
  static const bool none = check(LinearActivation::kNone);
  static const bool quick_gelu = none && check(LinearActivation::kQuickGelu);
  static const bool gelu = none && check(LinearActivation::kGelu);
  switch (activation) {
    case LinearActivation::kNone:
      return none;
    case LinearActivation::kQuickGelu:
      return quick_gelu;
    case LinearActivation::kGelu:
      return gelu;
  }
  return false;
}

Bf16Linear::Bf16Linear(const at::Tensor& weight, const at::Tensor& bias,
                       LinearActivation activation)
    : in_(weight.dim() == 2 ? weight.size(1) : 0),
      out_(weight.dim() == 2 ? weight.size(0) : 0),
      activation_(activation) {
  TORCH_CHECK(Available(activation),
              "Bf16Linear: oneDNN has only its reference bf16 product here");
  TORCH_CHECK(weight.dim() == 2 && weight.is_cpu(),
              "Bf16Linear: weight must be 2-D on the CPU");
  TORCH_CHECK(!bias.defined() || (bias.numel() == out_ && bias.is_cpu()),
              "Bf16Linear: bias must have the weight's ", out_, " rows");
  auto impl = std::make_unique<Impl>();
  if (bias.defined()) {
    impl->bias = bias.to(torch::kBFloat16, /*non_blocking=*/false, /*copy=*/true)
                     .contiguous()
                     .view({1, out_});
  }
  const at::Tensor plain_weight = weight.to(torch::kBFloat16).contiguous();
  impl->weights = dnnl_products::PackWeight(
      plain_weight.data_ptr(), in_, out_, dnnl_dt::bf16,
      [&](int64_t rows, const dnnl::memory::desc& any) {
        return DescribeProduct(rows, in_, out_, bias.defined(), activation_, any);
      });
  impl_ = std::move(impl);
}

at::Tensor Bf16Linear::Apply(const at::Tensor& x) const {
  TORCH_CHECK(Takes(x), "Bf16Linear takes bf16 [..., ", in_,
              "] on the CPU, with a row, outside autograd");
  const at::Tensor rows = x.reshape({-1, in_}).contiguous();
  const int64_t m = rows.size(0);
  const bool bias = impl_->bias.defined();
  const std::shared_ptr<const dnnl_products::Product> product =
      Products().Get(ProductKey{m, in_, out_, bias, activation_}, [&] {
        return DescribeProduct(m, in_, out_, bias, activation_, impl_->weights.layout);
      });
  at::Tensor y = torch::empty({m, out_}, rows.options());
  const dnnl::engine& engine = CpuEngine();
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC,
       dnnl::memory({{m, in_}, dnnl_dt::bf16, dnnl_tag::ab}, engine, rows.data_ptr())},
      {DNNL_ARG_WEIGHTS, impl_->weights.memory},
      {DNNL_ARG_DST,
       dnnl::memory({{m, out_}, dnnl_dt::bf16, dnnl_tag::ab}, engine, y.data_ptr())}};
  if (bias) {
    args.emplace(DNNL_ARG_BIAS, dnnl::memory({{1, out_}, dnnl_dt::bf16, dnnl_tag::ab},
                                             engine, impl_->bias.data_ptr()));
  }
  dnnl_products::Execute(*product, std::move(args));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_;
  return y.view(shape);
}

#else  // !CLIPSERVE_WITH_DNNL

struct Bf16Linear::Impl {};

bool Bf16Linear::Available(LinearActivation activation) {
  (void)activation;
  return false;
}

Bf16Linear::Bf16Linear(const at::Tensor& weight, const at::Tensor& bias,
                       LinearActivation activation)
    : activation_(activation) {
  (void)weight;
  (void)bias;
  TORCH_CHECK(false,
              "Bf16Linear needs a build that calls oneDNN directly (libdnnl-dev, and a "
              "LibTorch on that same libdnnl)");
}

at::Tensor Bf16Linear::Apply(const at::Tensor& x) const {
  TORCH_CHECK(false, "Bf16Linear is not in this build");
  return x;
}

#endif  // CLIPSERVE_WITH_DNNL

Bf16Linear::~Bf16Linear() = default;
Bf16Linear::Bf16Linear(Bf16Linear&&) noexcept = default;
Bf16Linear& Bf16Linear::operator=(Bf16Linear&&) noexcept = default;

bool Bf16Linear::Takes(const at::Tensor& x) const {
  return impl_ != nullptr && x.is_cpu() && x.scalar_type() == at::kBFloat16 &&
         x.dim() > 0 && x.size(-1) == in_ && x.numel() > 0 &&
         !(at::GradMode::is_enabled() && x.requires_grad());
}

}  // namespace clipserve
