#ifndef CLIPSERVE_SERVER_MODEL_CBOW_TEXT_ENCODER_H_
#define CLIPSERVE_SERVER_MODEL_CBOW_TEXT_ENCODER_H_

#include <torch/torch.h>

#include "server/model/model_config.h"

namespace clipserve {

// The continuous bag-of-words text encoder of the CLIP paper's efficiency baseline:
// the mean of the token embeddings of a text's tokens up to its first end token (start
// and end included, padding and anything after excluded), then a linear projection. Keys:
// token_embedding.weight, text_projection. forward takes the same (ids, lengths) as
// TextTransformer.
class CbowTextEncoderImpl : public torch::nn::Module {
 public:
  CbowTextEncoderImpl(const TextConfig& config, int64_t embed_dim);
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& lengths);

  torch::nn::Embedding token_embedding{nullptr};
  torch::Tensor text_projection;
};
TORCH_MODULE(CbowTextEncoder);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_CBOW_TEXT_ENCODER_H_
