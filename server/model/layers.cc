#include "server/model/layers.h"

#include <cmath>

namespace clipserve {

namespace F = torch::nn::functional;

LayerNormImpl::LayerNormImpl(int64_t width, double eps) : width_(width), eps_(eps) {
  weight = register_parameter("weight", torch::ones({width}));
  bias = register_parameter("bias", torch::zeros({width}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  if (x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat) {
    return torch::layer_norm(x, {width_}, weight, bias, eps_);
  }
  return torch::layer_norm(x.to(torch::kFloat), {width_}, weight.to(torch::kFloat),
                           bias.to(torch::kFloat), eps_)
      .to(x.scalar_type());
}

namespace {

c10::OperatorHandle QuantizedOp(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

}  // namespace

Int8Linear::Int8Linear(const torch::Tensor& weight, const torch::Tensor& bias) {
  // Symmetric per-row scales: the largest magnitude of each row maps to 127. An
  // all-zero row gets scale 1 (any scale represents it exactly).
  const torch::Tensor w = weight.to(torch::kFloat).contiguous();
  const torch::Tensor max_abs = w.abs().amax(1);
  const torch::Tensor scales =
      torch::where(max_abs > 0, max_abs / 127.0, torch::ones_like(max_abs))
          .to(torch::kDouble);
  const torch::Tensor q = torch::quantize_per_channel(
      w, scales, torch::zeros({weight.size(0)}, torch::kLong), 0, torch::kQInt8);
  static const c10::OperatorHandle prepack = QuantizedOp("quantized::linear_prepack");
  std::vector<c10::IValue> stack{
      q, bias.defined() ? c10::IValue(bias.to(torch::kFloat)) : c10::IValue()};
  prepack.callBoxed(&stack);
  packed_ = std::move(stack.at(0));
}

torch::Tensor Int8Linear::operator()(const torch::Tensor& x) const {
  static const c10::OperatorHandle linear = QuantizedOp("quantized::linear_dynamic");
  // The kernel takes and gives fp32.
  std::vector<c10::IValue> stack{x.to(torch::kFloat).contiguous(), packed_,
                                 /*reduce_range=*/false};
  linear.callBoxed(&stack);
  return stack.at(0).toTensor().to(x.scalar_type());
}

torch::Tensor Project(const std::optional<Int8Projection>& int8, const torch::Tensor& x,
                      const torch::Tensor& weight, const torch::Tensor& bias) {
  if (int8.has_value() && x.numel() / x.size(-1) >= int8->min_rows) {
    return int8->linear(x);
  }
  return torch::linear(x, weight, bias);
}

SelfAttentionImpl::SelfAttentionImpl(int64_t width, int64_t heads)
    : width_(width), heads_(heads) {
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * width}));
  out_proj = register_module("out_proj", torch::nn::Linear(width, width));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x,
                                         const torch::Tensor& mask) {
  const int64_t n = x.size(0);
  const int64_t l = x.size(1);
  const int64_t head_dim = width_ / heads_;
  if (int8_q_.has_value() && x.size(0) * x.size(1) >= int8_q_->min_rows) {
    // The same products as the packed projection below, in two kernels: the query
    // rows and the key and value rows are packed apart for ForwardAt.
    torch::Tensor q = ProjectQ(x).view({n, l, heads_, head_dim}).transpose(1, 2);
    torch::Tensor kv =
        ProjectKV(x).view({n, l, 2, heads_, head_dim}).permute({2, 0, 3, 1, 4});
    return Attend(q, kv[0], kv[1], mask);
  }
  // [N, L, 3, H, hd] -> [3, N, H, L, hd]
  torch::Tensor qkv = torch::linear(x, in_proj_weight, in_proj_bias)
                          .view({n, l, 3, heads_, head_dim})
                          .permute({2, 0, 3, 1, 4});
  return Attend(qkv[0], qkv[1], qkv[2], mask);
}

torch::Tensor SelfAttentionImpl::ProjectQ(const torch::Tensor& x) const {
  return Project(int8_q_, x, in_proj_weight.narrow(0, 0, width_),
                 in_proj_bias.narrow(0, 0, width_));
}

torch::Tensor SelfAttentionImpl::ProjectKV(const torch::Tensor& x) const {
  return Project(int8_kv_, x, in_proj_weight.narrow(0, width_, 2 * width_),
                 in_proj_bias.narrow(0, width_, 2 * width_));
}

void SelfAttentionImpl::SetInt8(int64_t min_rows) {
  int8_q_.reset();
  int8_kv_.reset();
  int8_out_.reset();
  if (min_rows < 0) return;
  int8_q_.emplace(Int8Projection{
      Int8Linear(in_proj_weight.narrow(0, 0, width_), in_proj_bias.narrow(0, 0, width_)),
      min_rows});
  int8_kv_.emplace(Int8Projection{Int8Linear(in_proj_weight.narrow(0, width_, 2 * width_),
                                             in_proj_bias.narrow(0, width_, 2 * width_)),
                                  min_rows});
  int8_out_.emplace(
      Int8Projection{Int8Linear(out_proj->weight, out_proj->bias), min_rows});
}

torch::Tensor SelfAttentionImpl::ForwardAt(const torch::Tensor& x,
                                           const torch::Tensor& positions,
                                           const torch::Tensor& mask) {
  const int64_t n = x.size(0);
  const int64_t l = x.size(1);
  const int64_t head_dim = width_ / heads_;
  // Keys and values: rows [w, 3w) of the packed projection. [N, L, 2, H, hd] ->
  // [2, N, H, L, hd]
  torch::Tensor kv =
      ProjectKV(x).view({n, l, 2, heads_, head_dim}).permute({2, 0, 3, 1, 4});
  // The query of each sequence's one position: [N, H, 1, hd].
  const torch::Tensor rows = torch::arange(n, positions.options());
  torch::Tensor q = ProjectQ(x.index({rows, positions})).view({n, heads_, 1, head_dim});
  // That position's row of the [L, L] mask, for every head: [N, 1, 1, L].
  const torch::Tensor row_mask =
      mask.defined() ? mask.index_select(0, positions).view({n, 1, 1, l}) : mask;
  return Attend(q, kv[0], kv[1], row_mask);
}

torch::Tensor SelfAttentionImpl::Attend(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v,
                                        const torch::Tensor& mask) {
  const int64_t head_dim = width_ / heads_;
  torch::Tensor scores = torch::matmul(
      q * (1.0 / std::sqrt(static_cast<double>(head_dim))), k.transpose(-2, -1));
  if (mask.defined()) scores = scores + mask;
  // Softmax in fp32 whatever the compute precision: its sums are where bf16 loses.
  torch::Tensor weights = torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
  // [N, H, Lq, hd] -> [N, Lq, w]
  torch::Tensor out =
      torch::matmul(weights, v).transpose(1, 2).reshape({q.size(0), q.size(2), width_});
  return Project(int8_out_, out, out_proj->weight, out_proj->bias);
}

MlpImpl::MlpImpl(int64_t width, int64_t hidden, bool quick_gelu)
    : quick_gelu_(quick_gelu) {
  c_fc = register_module("c_fc", torch::nn::Linear(width, hidden));
  c_proj = register_module("c_proj", torch::nn::Linear(hidden, width));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = Project(int8_fc_, x, c_fc->weight, c_fc->bias);
  h = quick_gelu_ ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return Project(int8_proj_, h, c_proj->weight, c_proj->bias);
}

void MlpImpl::SetInt8(int64_t min_rows) {
  int8_fc_.reset();
  int8_proj_.reset();
  if (min_rows < 0) return;
  int8_fc_.emplace(Int8Projection{Int8Linear(c_fc->weight, c_fc->bias), min_rows});
  int8_proj_.emplace(Int8Projection{Int8Linear(c_proj->weight, c_proj->bias), min_rows});
}

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(int64_t width, int64_t heads,
                                                       double mlp_ratio,
                                                       bool quick_gelu) {
  ln_1 = register_module("ln_1", LayerNorm(width));
  attn = register_module("attn", SelfAttention(width, heads));
  ln_2 = register_module("ln_2", LayerNorm(width));
  mlp = register_module(
      "mlp",
      Mlp(width, static_cast<int64_t>(std::lround(width * mlp_ratio)), quick_gelu));
}

torch::Tensor ResidualAttentionBlockImpl::forward(const torch::Tensor& x,
                                                  const torch::Tensor& mask) {
  torch::Tensor h = x + attn(ln_1(x), mask);
  return h + mlp(ln_2(h));
}

torch::Tensor ResidualAttentionBlockImpl::ForwardAt(const torch::Tensor& x,
                                                    const torch::Tensor& positions,
                                                    const torch::Tensor& mask) {
  const torch::Tensor rows = torch::arange(x.size(0), positions.options());
  torch::Tensor h =
      x.index({rows, positions}).unsqueeze(1) + attn->ForwardAt(ln_1(x), positions, mask);
  return h + mlp(ln_2(h));
}

TransformerImpl::TransformerImpl(int64_t width, int64_t layers, int64_t heads,
                                 double mlp_ratio, bool quick_gelu) {
  resblocks = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    resblocks->push_back(ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu));
  }
}

torch::Tensor TransformerImpl::forward(torch::Tensor x, const torch::Tensor& mask) {
  for (const auto& block : *resblocks) {
    x = block->as<ResidualAttentionBlock>()->forward(x, mask);
  }
  return x;
}

torch::Tensor TransformerImpl::ForwardAt(torch::Tensor x, const torch::Tensor& positions,
                                         const torch::Tensor& mask) {
  const size_t layers = resblocks->size();
  if (layers == 0) {
    return x.index({torch::arange(x.size(0), positions.options()), positions});
  }
  for (size_t i = 0; i + 1 < layers; ++i) {
    x = resblocks->ptr<ResidualAttentionBlockImpl>(i)->forward(x, mask);
  }
  return resblocks->ptr<ResidualAttentionBlockImpl>(layers - 1)
      ->ForwardAt(x, positions, mask)
      .squeeze(1);
}

}  // namespace clipserve
