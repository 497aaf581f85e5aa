#ifndef CLIPSERVE_SERVER_MODEL_LAYERS_H_
#define CLIPSERVE_SERVER_MODEL_LAYERS_H_

#include <torch/torch.h>

#include <optional>

#include "server/model/bf16_linear.h"
#include "server/model/int8_linear.h"
#include "server/model/row_layer_norm.h"

// Building blocks shared by CLIP's towers. Submodule and parameter names equal the
// OpenAI/open_clip checkpoint keys, so loading is a strict name-and-shape match.
// Tensors are batch-first: [batch, sequence, width].

namespace clipserve {

// LayerNorm that always computes in fp32 (CLIP's fp16 trick), whatever the dtype of
// its input and weights, and returns the input's dtype. Keys: weight, bias. fp32
// inputs run on LibTorch's layer_norm (the reference's kernel, to the last bit); bf16
// ones, and the fp32 output for int8 products, on RowLayerNorm where it takes them.
class LayerNormImpl : public torch::nn::Module {
 public:
  explicit LayerNormImpl(int64_t width, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);
  // The same, returned in fp32 (the input int8 products take without a conversion),
  // with its range where it is all finite (what they quantize it to).
  NormalizedRows Float(const torch::Tensor& x);

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  // LibTorch's layer_norm in fp32.
  torch::Tensor FloatOnLibTorch(const torch::Tensor& x);

  int64_t width_;
  double eps_;
};
TORCH_MODULE(LayerNorm);

// The int8 choice of a linear layer: its packed weight, and the fewest rows of input
// (the product of all but the last dimension) it is used for; smaller products run as
// before, on the layer's own weights. Each call pays for a pass to quantize its input
// and, unless the layer before gives it (RowLayerNorm), one to find its range; even so
// int8 is faster from one row on the CPUs measured (Int8Options::kDefaultMinRows).
struct Int8Projection {
  Int8Linear linear;
  int64_t min_rows;

  // Whether x (its rows: the product of all but the last dimension) is large enough.
  bool Takes(const torch::Tensor& x) const;
};

// `packed` applied to xw (already in its weights' dtype) where it is set and takes xw;
// nullopt where the caller runs the product another way.
std::optional<torch::Tensor> ApplyPacked(const std::optional<Bf16Linear>& packed,
                                         const torch::Tensor& xw);

// x W^T + b in the weight's dtype: on `packed` where it is set and takes x, else on
// LibTorch.
torch::Tensor Linear(const std::optional<Bf16Linear>& packed, const torch::Tensor& x,
                     const torch::Tensor& weight, const torch::Tensor& bias);

// The same, through `int8` when it is set and x has at least its min_rows rows (and
// only finite values).
torch::Tensor Project(const std::optional<Int8Projection>& int8,
                      const std::optional<Bf16Linear>& packed, const torch::Tensor& x,
                      const torch::Tensor& weight, const torch::Tensor& bias);

// Multi-head self-attention with nn.MultiheadAttention's parameter names:
// in_proj_weight [3w, w], in_proj_bias [3w], out_proj.{weight,bias}.
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t width, int64_t heads);
  // x: [N, L, w] in the weights' dtype, or in fp32 where TakesInt8(x). mask: empty, or
  // an additive [L, L] mask (0 or -inf). range: x's, where its writer found it (for the
  // int8 projection; see Int8Linear::Apply). Returns the weights' dtype.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {},
                        const std::optional<ValueRange>& range = {});
  // forward()'s output at one position per sequence, positions [N] (int64, on x's
  // device): [N, 1, w]. Keys and values are still every token's; only that query is
  // attended, the work a tower's last layer needs when it keeps one token (in int8 and
  // on packed bf16 weights, every query comes in the one product with the keys and
  // values: the weights as laid out for forward(), and one call instead of two).
  torch::Tensor ForwardAt(const torch::Tensor& x, const torch::Tensor& positions,
                          const torch::Tensor& mask = {},
                          const std::optional<ValueRange>& range = {});
  // From now on runs the projections as Int8Projection with `min_rows`, packed from the
  // current weights (on the CPU); a negative `min_rows` drops them. Not concurrently
  // with forward().
  void SetInt8(int64_t min_rows);
  // From now on runs the bf16 projections of forward() and ForwardAt() on Bf16Linear,
  // packed from the current weights, where `on`, the weights are bf16 on the CPU and the
  // build has Bf16Linear; otherwise drops them. Not concurrently with forward().
  void SetBf16Packing(bool on);
  // Whether forward(x) and ForwardAt(x) project x's queries, keys and values in int8;
  // they then take x in fp32 as readily as in the weights' dtype.
  bool TakesInt8(const torch::Tensor& x) const;

  torch::Tensor in_proj_weight;
  torch::Tensor in_proj_bias;
  torch::nn::Linear out_proj{nullptr};

 private:
  // softmax(q k^T / sqrt(hd) + mask) v with the heads merged, then out_proj:
  // q [N, H, Lq, hd] (already divided by sqrt(hd) if `q_scaled`), k and v [N, H, L, hd],
  // mask broadcastable to the scores or undefined -> [N, Lq, w].
  torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k,
                       const torch::Tensor& v, const torch::Tensor& mask, bool q_scaled);
  // x's int8 projection, the queries divided by sqrt(hd), in the weights' dtype:
  // [N, L, 3, H, hd]. nullopt where x is not finite (Int8Linear::Apply).
  std::optional<torch::Tensor> ProjectInt8(const torch::Tensor& x,
                                           const std::optional<ValueRange>& range) const;

  int64_t width_;
  int64_t heads_;
  // Set by SetInt8(min_rows >= 0): the whole input projection, its query rows divided by
  // sqrt(hd) (Attend's scaling, for free), and out_proj.
  std::optional<Int8Projection> int8_qkv_, int8_out_;
  // Set by SetBf16Packing(true): the whole input projection, and out_proj.
  std::optional<Bf16Linear> packed_qkv_, packed_out_;
};
TORCH_MODULE(SelfAttention);

// Transformer MLP: c_proj(act(c_fc(x))), act = QuickGELU or exact GELU.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t width, int64_t hidden, bool quick_gelu);
  // x: [..., w] in the weights' dtype, or in fp32 where TakesInt8(x). range: as
  // SelfAttention::forward's. Returns the weights' dtype.
  torch::Tensor forward(const torch::Tensor& x,
                        const std::optional<ValueRange>& range = {});
  // As SelfAttention::SetInt8, for c_fc and c_proj.
  void SetInt8(int64_t min_rows);
  // As SelfAttention::SetBf16Packing, for c_fc (the activation fused into its product)
  // and c_proj.
  void SetBf16Packing(bool on);
  // Whether forward(x) runs in int8 (both products, the activation fused into the
  // first).
  bool TakesInt8(const torch::Tensor& x) const;

  torch::nn::Linear c_fc{nullptr};
  torch::nn::Linear c_proj{nullptr};

 private:
  LinearActivation Activation() const {
    return quick_gelu_ ? LinearActivation::kQuickGelu : LinearActivation::kGelu;
  }

  bool quick_gelu_;
  std::optional<Int8Projection> int8_fc_, int8_proj_;
  std::optional<Bf16Linear> packed_fc_, packed_proj_;
};
TORCH_MODULE(Mlp);

// Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
class ResidualAttentionBlockImpl : public torch::nn::Module {
 public:
  // `mlp_width`: the MLP's hidden width (VisionConfig::MlpWidth()).
  ResidualAttentionBlockImpl(int64_t width, int64_t heads, int64_t mlp_width,
                             bool quick_gelu);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {});
  // forward()'s output at one position per sequence (see SelfAttention::ForwardAt):
  // [N, 1, w].
  torch::Tensor ForwardAt(const torch::Tensor& x, const torch::Tensor& positions,
                          const torch::Tensor& mask = {});

  LayerNorm ln_1{nullptr};
  SelfAttention attn{nullptr};
  LayerNorm ln_2{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(ResidualAttentionBlock);

// A stack of blocks under the key prefix "resblocks.N.".
class TransformerImpl : public torch::nn::Module {
 public:
  TransformerImpl(int64_t width, int64_t layers, int64_t heads, int64_t mlp_width,
                  bool quick_gelu);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask = {});
  // forward()'s output at one position per sequence, positions [N] (int64, on x's
  // device): [N, w]. The towers pool one token, so the last block computes only that one
  // (a twelfth less work for 12 layers, less the keys and values the last block still
  // needs).
  torch::Tensor ForwardAt(torch::Tensor x, const torch::Tensor& positions,
                          const torch::Tensor& mask = {});
  // Every block's SelfAttention::SetInt8(min_rows) and SetBf16Packing(bf16_packing)
  // (and the same for its Mlp): packed from the current weights. Not concurrently with
  // forward().
  void SetProducts(int64_t min_rows, bool bf16_packing);

  torch::nn::ModuleList resblocks;
};
TORCH_MODULE(Transformer);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_LAYERS_H_
