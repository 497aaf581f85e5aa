#ifndef CLIPSERVE_SERVER_MODEL_VISION_TRANSFORMER_H_
#define CLIPSERVE_SERVER_MODEL_VISION_TRANSFORMER_H_

#include <torch/torch.h>

#include "server/model/layers.h"
#include "server/model/model_config.h"

namespace clipserve {

// CLIP's Vision Transformer image tower (keys under "visual."): conv1 (patchify, no
// bias), class_embedding, positional_embedding, ln_pre, transformer, ln_post, proj.
// forward: images [N, 3, S, S] -> features [N, embed_dim] (not normalized).
class VisionTransformerImpl : public torch::nn::Module {
 public:
  VisionTransformerImpl(const VisionConfig& config, int64_t embed_dim, bool quick_gelu);
  torch::Tensor forward(const torch::Tensor& images);
  // What conv1 computes, as tokens: images [N, 3, S, S] with S = grid * patch (as
  // ClipModel checks) -> [N, grid*grid, width], row-major over the grid.
  torch::Tensor EmbedPatches(const torch::Tensor& images);

  torch::nn::Conv2d conv1{nullptr};
  torch::Tensor class_embedding;
  torch::Tensor positional_embedding;
  LayerNorm ln_pre{nullptr};
  Transformer transformer{nullptr};
  LayerNorm ln_post{nullptr};
  torch::Tensor proj;
};
TORCH_MODULE(VisionTransformer);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_VISION_TRANSFORMER_H_
