#include "server/model/layers.h"

#include <cmath>

#include "server/model/quick_gelu.h"
#include "server/model/row_layer_norm.h"
#include "server/model/row_softmax.h"

namespace clipserve {

namespace F = torch::nn::functional;

LayerNormImpl::LayerNormImpl(int64_t width, double eps) : width_(width), eps_(eps) {
  weight = register_parameter("weight", torch::ones({width}));
  bias = register_parameter("bias", torch::zeros({width}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  // fp32 stays on LibTorch's layer_norm: the reference's own kernel, to the last bit.
  if (x.scalar_type() == torch::kBFloat16 && RowLayerNormTakes(x, weight, bias)) {
    return RowLayerNorm(x, weight, bias, eps_, torch::kBFloat16).y;
  }
  return FloatOnLibTorch(x).to(x.scalar_type());
}

NormalizedRows LayerNormImpl::Float(const torch::Tensor& x) {
  if (RowLayerNormTakes(x, weight, bias)) {
    NormalizedRows n = RowLayerNorm(x, weight, bias, eps_, torch::kFloat);
    // Not finite: the int8 products decline it, and the layers run exactly as without
    // int8, on LibTorch's layer_norm.
    if (n.range.has_value()) return n;
  }
  return {FloatOnLibTorch(x), std::nullopt};
}

torch::Tensor LayerNormImpl::FloatOnLibTorch(const torch::Tensor& x) {
  return torch::layer_norm(x.to(torch::kFloat), {width_}, weight.to(torch::kFloat),
                           bias.to(torch::kFloat), eps_);
}

bool Int8Projection::Takes(const torch::Tensor& x) const {
  return x.numel() / x.size(-1) >= min_rows;
}

std::optional<torch::Tensor> ApplyPacked(const std::optional<Bf16Linear>& packed,
                                         const torch::Tensor& xw) {
  if (!packed.has_value() || !packed->Takes(xw)) return std::nullopt;
  return packed->Apply(xw);
}

torch::Tensor Linear(const std::optional<Bf16Linear>& packed, const torch::Tensor& x,
                     const torch::Tensor& weight, const torch::Tensor& bias) {
  const torch::Tensor xw = x.to(weight.scalar_type());
  if (std::optional<torch::Tensor> y = ApplyPacked(packed, xw)) return *y;
  return torch::linear(xw, weight, bias);
}

torch::Tensor Project(const std::optional<Int8Projection>& int8,
                      const std::optional<Bf16Linear>& packed, const torch::Tensor& x,
                      const torch::Tensor& weight, const torch::Tensor& bias) {
  if (int8.has_value() && int8->Takes(x)) {
    if (std::optional<torch::Tensor> y = int8->linear.Apply(x, weight.scalar_type())) {
      return *y;
    }
  }
  return Linear(packed, x, weight, bias);
}

namespace {

// `weight` and `bias` packed for Bf16Linear where `on`, they are bf16 on the CPU and
// the build has it; nullopt otherwise.
std::optional<Bf16Linear> PackBf16(
    bool on, const torch::Tensor& weight, const torch::Tensor& bias,
    LinearActivation activation = LinearActivation::kNone) {
  if (!on || !Bf16Linear::Available(activation) || !weight.is_cpu() ||
      weight.scalar_type() != torch::kBFloat16) {
    return std::nullopt;
  }
  return Bf16Linear(weight, bias, activation);
}

}  // namespace

SelfAttentionImpl::SelfAttentionImpl(int64_t width, int64_t heads)
    : width_(width), heads_(heads) {
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * width}));
  out_proj = register_module("out_proj", torch::nn::Linear(width, width));
}

bool SelfAttentionImpl::TakesInt8(const torch::Tensor& x) const {
  return int8_qkv_.has_value() && int8_qkv_->Takes(x);
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x,
                                         const torch::Tensor& mask,
                                         const std::optional<ValueRange>& range) {
  if (TakesInt8(x)) {
    if (std::optional<torch::Tensor> projected = ProjectInt8(x, range)) {
      // [N, L, 3, H, hd] -> [3, N, H, L, hd]
      const torch::Tensor qkv = projected->permute({2, 0, 3, 1, 4});
      return Attend(qkv[0], qkv[1], qkv[2], mask, /*q_scaled=*/true);
    }
  }
  const int64_t head_dim = width_ / heads_;
  // [N, L, 3, H, hd] -> [3, N, H, L, hd]
  torch::Tensor qkv = Linear(packed_qkv_, x, in_proj_weight, in_proj_bias)
                          .view({x.size(0), x.size(1), 3, heads_, head_dim})
                          .permute({2, 0, 3, 1, 4});
  return Attend(qkv[0], qkv[1], qkv[2], mask, /*q_scaled=*/false);
}

std::optional<torch::Tensor> SelfAttentionImpl::ProjectInt8(
    const torch::Tensor& x, const std::optional<ValueRange>& range) const {
  std::optional<torch::Tensor> qkv =
      int8_qkv_->linear.Apply(x, in_proj_weight.scalar_type(), range);
  if (!qkv.has_value()) return std::nullopt;
  return qkv->view({x.size(0), x.size(1), 3, heads_, width_ / heads_});
}

void SelfAttentionImpl::SetInt8(int64_t min_rows) {
  int8_qkv_.reset();
  int8_out_.reset();
  if (min_rows < 0) return;
  // One product for queries, keys and values: each call pays for its input's
  // quantization and new scale. The query rows come divided by sqrt(hd), as Attend
  // would divide them.
  torch::Tensor row_scale = torch::ones({3 * width_});
  row_scale.narrow(0, 0, width_)
      .fill_(1.0 / std::sqrt(static_cast<double>(width_ / heads_)));
  int8_qkv_.emplace(
      Int8Projection{Int8Linear(in_proj_weight.to(torch::kFloat) * row_scale.unsqueeze(1),
                                in_proj_bias.to(torch::kFloat) * row_scale),
                     min_rows});
  int8_out_.emplace(
      Int8Projection{Int8Linear(out_proj->weight, out_proj->bias), min_rows});
}

void SelfAttentionImpl::SetBf16Packing(bool on) {
  packed_qkv_ = PackBf16(on, in_proj_weight, in_proj_bias);
  packed_out_ = PackBf16(on, out_proj->weight, out_proj->bias);
}

torch::Tensor SelfAttentionImpl::ForwardAt(const torch::Tensor& x,
                                           const torch::Tensor& positions,
                                           const torch::Tensor& mask,
                                           const std::optional<ValueRange>& range) {
  const int64_t n = x.size(0);
  const int64_t l = x.size(1);
  const int64_t head_dim = width_ / heads_;
  const torch::Tensor rows = torch::arange(n, positions.options());
  // That position's row of the [L, L] mask, for every head: [N, 1, 1, L].
  const torch::Tensor row_mask =
      mask.defined() ? mask.index_select(0, positions).view({n, 1, 1, l}) : mask;
  // [N, L, 3, H, hd] (the queries divided by sqrt(hd) where q_scaled) -> attention of
  // each sequence's one query.
  const auto attend_at = [&](const torch::Tensor& qkv, bool q_scaled) {
    // [N, 3, H, hd] -> the queries [N, H, 1, hd]
    const torch::Tensor q = qkv.index({rows, positions}).select(1, 0).unsqueeze(2);
    // [N, L, 2, H, hd] -> [2, N, H, L, hd]
    const torch::Tensor kv = qkv.narrow(2, 1, 2).permute({2, 0, 3, 1, 4});
    return Attend(q, kv[0], kv[1], row_mask, q_scaled);
  };
  // In int8 and on the packed bf16 weights, every position's query comes in the one
  // product with the keys and values (half as much work again as theirs, all but one
  // query per sequence unused), on the weights laid out once. In bf16 that measured
  // as fast as two LibTorch products on slices of the weights, which LibTorch lays out
  // anew on every call (ViT-B-32 batch 32 and 1).
  if (TakesInt8(x)) {
    if (std::optional<torch::Tensor> qkv = ProjectInt8(x, range)) {
      return attend_at(*qkv, /*q_scaled=*/true);
    }
  }
  const torch::Tensor xw = x.to(in_proj_weight.scalar_type());
  if (packed_qkv_.has_value() && packed_qkv_->Takes(xw)) {
    return attend_at(packed_qkv_->Apply(xw).view({n, l, 3, heads_, head_dim}),
                     /*q_scaled=*/false);
  }
  // Keys and values: rows [w, 3w) of the packed projection. [N, L, 2, H, hd] ->
  // [2, N, H, L, hd]
  const torch::Tensor kv = torch::linear(xw, in_proj_weight.narrow(0, width_, 2 * width_),
                                         in_proj_bias.narrow(0, width_, 2 * width_))
                               .view({n, l, 2, heads_, head_dim})
                               .permute({2, 0, 3, 1, 4});
  // The query of each sequence's one position: [N, H, 1, hd].
  const torch::Tensor q =
      torch::linear(xw.index({rows, positions}), in_proj_weight.narrow(0, 0, width_),
                    in_proj_bias.narrow(0, 0, width_))
          .view({n, heads_, 1, head_dim});
  return Attend(q, kv[0], kv[1], row_mask, /*q_scaled=*/false);
}

torch::Tensor SelfAttentionImpl::Attend(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, const torch::Tensor& mask,
                                        bool q_scaled) {
  const int64_t head_dim = width_ / heads_;
  const torch::Tensor scaled_q =
      q_scaled ? q : q * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  torch::Tensor scores = torch::matmul(scaled_q, k.transpose(-2, -1));
  if (mask.defined()) scores = scores + mask;
  // Softmax sums in fp32 whatever the compute precision: they are where bf16 loses.
  // RowSoftmax and LibTorch's CPU softmax of bf16 both sum and divide in fp32,
  // rounding only their output (the result of the fp32 softmax rounded to bf16, but for
  // one ulp on a few weights), in one pass instead of three; RowSoftmax is the faster
  // on these short rows. fp32 stays on LibTorch's, the reference's kernel.
  const bool bf16 = scores.scalar_type() == torch::kBFloat16;
  torch::Tensor weights =
      bf16 && RowSoftmaxTakes(scores) ? RowSoftmax(scores)
      : bf16 && scores.is_cpu()
          ? torch::softmax(scores, -1)
          : torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
  // [N, H, Lq, hd] -> [N, Lq, w]
  torch::Tensor out =
      torch::matmul(weights, v).transpose(1, 2).reshape({q.size(0), q.size(2), width_});
  return Project(int8_out_, packed_out_, out, out_proj->weight, out_proj->bias);
}

MlpImpl::MlpImpl(int64_t width, int64_t hidden, bool quick_gelu)
    : quick_gelu_(quick_gelu) {
  c_fc = register_module("c_fc", torch::nn::Linear(width, hidden));
  c_proj = register_module("c_proj", torch::nn::Linear(hidden, width));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x,
                               const std::optional<ValueRange>& range) {
  if (TakesInt8(x)) {
    // Both products in int8, the activation fused into c_fc's: no pass of its own.
    const torch::ScalarType dtype = c_fc->weight.scalar_type();
    if (std::optional<torch::Tensor> h = int8_fc_->linear.Apply(x, dtype, range)) {
      if (std::optional<torch::Tensor> y = int8_proj_->linear.Apply(*h, dtype)) return *y;
    }
  }
  const torch::Tensor xw = x.to(c_fc->weight.scalar_type());
  // The activation fused into the packed product: no pass of its own.
  if (std::optional<torch::Tensor> h = ApplyPacked(packed_fc_, xw)) {
    return Linear(packed_proj_, *h, c_proj->weight, c_proj->bias);
  }
  torch::Tensor h = torch::linear(xw, c_fc->weight, c_fc->bias);
  if (!quick_gelu_) {
    h = torch::gelu(h);
  } else if (h.scalar_type() == torch::kBFloat16 && QuickGeluTakes(h)) {
    // One pass in fp32, rounded once, where LibTorch's three passes round each step to
    // bf16. fp32 stays on LibTorch's ops, the reference's own, to the last bit.
    QuickGeluInPlace(h);
  } else {
    h = h * torch::sigmoid(static_cast<double>(kQuickGeluSlope) * h);
  }
  return Linear(packed_proj_, h, c_proj->weight, c_proj->bias);
}

void MlpImpl::SetBf16Packing(bool on) {
  packed_fc_ = PackBf16(on, c_fc->weight, c_fc->bias, Activation());
  packed_proj_ = PackBf16(on, c_proj->weight, c_proj->bias);
}

bool MlpImpl::TakesInt8(const torch::Tensor& x) const {
  // c_proj's rows are c_fc's: both take x or neither does.
  return int8_fc_.has_value() && int8_fc_->Takes(x);
}

void MlpImpl::SetInt8(int64_t min_rows) {
  int8_fc_.reset();
  int8_proj_.reset();
  if (min_rows < 0) return;
  int8_fc_.emplace(
      Int8Projection{Int8Linear(c_fc->weight, c_fc->bias, Activation()), min_rows});
  int8_proj_.emplace(Int8Projection{Int8Linear(c_proj->weight, c_proj->bias), min_rows});
}

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(int64_t width, int64_t heads,
                                                       int64_t mlp_width,
                                                       bool quick_gelu) {
  ln_1 = register_module("ln_1", LayerNorm(width));
  attn = register_module("attn", SelfAttention(width, heads));
  ln_2 = register_module("ln_2", LayerNorm(width));
  mlp = register_module("mlp", Mlp(width, mlp_width, quick_gelu));
}

namespace {

// ln(x), in fp32 and with its range for a layer that takes it in int8.
NormalizedRows Normalize(LayerNorm& ln, const torch::Tensor& x, bool for_int8) {
  if (for_int8) return ln->Float(x);
  return {ln(x), std::nullopt};
}

// h + mlp(ln_2(h)).
torch::Tensor AddMlp(ResidualAttentionBlockImpl& block, const torch::Tensor& h) {
  const NormalizedRows n = Normalize(block.ln_2, h, block.mlp->TakesInt8(h));
  return h + block.mlp(n.y, n.range);
}

}  // namespace

torch::Tensor ResidualAttentionBlockImpl::forward(const torch::Tensor& x,
                                                  const torch::Tensor& mask) {
  const NormalizedRows n = Normalize(ln_1, x, attn->TakesInt8(x));
  return AddMlp(*this, x + attn(n.y, mask, n.range));
}

torch::Tensor ResidualAttentionBlockImpl::ForwardAt(const torch::Tensor& x,
                                                    const torch::Tensor& positions,
                                                    const torch::Tensor& mask) {
  const torch::Tensor rows = torch::arange(x.size(0), positions.options());
  const NormalizedRows n = Normalize(ln_1, x, attn->TakesInt8(x));
  return AddMlp(*this, x.index({rows, positions}).unsqueeze(1) +
                           attn->ForwardAt(n.y, positions, mask, n.range));
}

TransformerImpl::TransformerImpl(int64_t width, int64_t layers, int64_t heads,
                                 int64_t mlp_width, bool quick_gelu) {
  resblocks = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    resblocks->push_back(ResidualAttentionBlock(width, heads, mlp_width, quick_gelu));
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

void TransformerImpl::SetProducts(int64_t min_rows, bool bf16_packing) {
  for (const auto& block : *resblocks) {
    auto* b = block->as<ResidualAttentionBlock>();
    b->attn->SetInt8(min_rows);
    b->attn->SetBf16Packing(bf16_packing);
    b->mlp->SetInt8(min_rows);
    b->mlp->SetBf16Packing(bf16_packing);
  }
}

}  // namespace clipserve
