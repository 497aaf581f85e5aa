#include "server/model/cbow_text_encoder.h"

namespace clipserve {

CbowTextEncoderImpl::CbowTextEncoderImpl(const TextConfig& config, int64_t embed_dim) {
  token_embedding = register_module(
      "token_embedding", torch::nn::Embedding(config.vocab_size, config.width));
  text_projection =
      register_parameter("text_projection", torch::zeros({config.width, embed_dim}));
}

torch::Tensor CbowTextEncoderImpl::forward(const torch::Tensor& ids,
                                           const torch::Tensor& lengths) {
  const int64_t l = ids.size(1);
  torch::Tensor x = token_embedding(ids);  // [N, L, w]
  // Counted tokens are positions [0, length), up to the first end token; sum them in
  // fp32 for accuracy.
  torch::Tensor real =
      (torch::arange(l, lengths.options()).unsqueeze(0) < lengths.unsqueeze(1))
          .to(torch::kFloat)
          .unsqueeze(2);
  torch::Tensor mean = (x.to(torch::kFloat) * real).sum(1) /
                       lengths.to(torch::kFloat).clamp_min(1).unsqueeze(1);
  return torch::matmul(mean.to(text_projection.scalar_type()), text_projection);
}

}  // namespace clipserve
