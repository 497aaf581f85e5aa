#ifndef CLIPSERVE_SERVER_MODEL_TEXT_TRANSFORMER_H_
#define CLIPSERVE_SERVER_MODEL_TEXT_TRANSFORMER_H_

#include <torch/torch.h>

#include "server/model/layers.h"
#include "server/model/model_config.h"

namespace clipserve {

// CLIP's causal text Transformer (top-level keys): token_embedding,
// positional_embedding, transformer, ln_final, text_projection.
//
// forward: ids [N, L] int64 with 1 <= L <= context_length (a batch needs padding only
// to its longest member: the causal mask keeps every position blind to what follows
// it, so padding after the end token changes nothing), lengths [N] int64 = each row's
// end-of-text position + 1 (ClipModel::EncodeText passes text.argmax(-1) + 1, as the
// reference). Returns the features at position lengths[i] - 1, projected:
// [N, embed_dim].
class TextTransformerImpl : public torch::nn::Module {
 public:
  TextTransformerImpl(const TextConfig& config, int64_t embed_dim, bool quick_gelu);
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& lengths);

  torch::nn::Embedding token_embedding{nullptr};
  torch::Tensor positional_embedding;
  Transformer transformer{nullptr};
  LayerNorm ln_final{nullptr};
  torch::Tensor text_projection;
};
TORCH_MODULE(TextTransformer);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_TEXT_TRANSFORMER_H_
