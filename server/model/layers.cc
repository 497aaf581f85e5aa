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
  // [N, L, 3, H, hd] -> [3, N, H, L, hd]
  torch::Tensor qkv = torch::linear(x, in_proj_weight, in_proj_bias)
                          .view({n, l, 3, heads_, width_ / heads_})
                          .permute({2, 0, 3, 1, 4});
  return Attend(qkv[0], qkv[1], qkv[2], mask);
}

torch::Tensor SelfAttentionImpl::ForwardAt(const torch::Tensor& x,
                                           const torch::Tensor& positions,
                                           const torch::Tensor& mask) {
  const int64_t n = x.size(0);
  const int64_t l = x.size(1);
  const int64_t head_dim = width_ / heads_;
  // Keys and values: rows [w, 3w) of the packed projection. [N, L, 2, H, hd] ->
  // [2, N, H, L, hd]
  torch::Tensor kv = torch::linear(x, in_proj_weight.narrow(0, width_, 2 * width_),
                                   in_proj_bias.narrow(0, width_, 2 * width_))
                         .view({n, l, 2, heads_, head_dim})
                         .permute({2, 0, 3, 1, 4});
  // The query of each sequence's one position: [N, H, 1, hd].
  const torch::Tensor rows = torch::arange(n, positions.options());
  torch::Tensor q =
      torch::linear(x.index({rows, positions}), in_proj_weight.narrow(0, 0, width_),
                    in_proj_bias.narrow(0, 0, width_))
          .view({n, heads_, 1, head_dim});
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
  return out_proj(out);
}

MlpImpl::MlpImpl(int64_t width, int64_t hidden, bool quick_gelu)
    : quick_gelu_(quick_gelu) {
  c_fc = register_module("c_fc", torch::nn::Linear(width, hidden));
  c_proj = register_module("c_proj", torch::nn::Linear(hidden, width));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = c_fc(x);
  h = quick_gelu_ ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return c_proj(h);
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
