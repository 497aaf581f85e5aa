#include "server/model/text_transformer.h"

#include <limits>

namespace clipserve {

TextTransformerImpl::TextTransformerImpl(const TextConfig& config, int64_t embed_dim,
                                         bool quick_gelu) {
  token_embedding = register_module(
      "token_embedding", torch::nn::Embedding(config.vocab_size, config.width));
  positional_embedding = register_parameter(
      "positional_embedding", torch::zeros({config.context_length, config.width}));
  transformer = register_module("transformer",
                                Transformer(config.width, config.layers, config.heads,
                                            config.MlpWidth(), quick_gelu));
  ln_final = register_module("ln_final", LayerNorm(config.width));
  text_projection =
      register_parameter("text_projection", torch::zeros({config.width, embed_dim}));
}

torch::Tensor TextTransformerImpl::forward(const torch::Tensor& ids,
                                           const torch::Tensor& lengths) {
  const int64_t l = ids.size(1);
  const auto dtype = positional_embedding.scalar_type();
  torch::Tensor x = token_embedding(ids).to(dtype) + positional_embedding.narrow(0, 0, l);
  const torch::Tensor mask =
      torch::full({l, l}, -std::numeric_limits<float>::infinity(),
                  torch::TensorOptions().dtype(dtype).device(x.device()))
          .triu(1);
  // Only each text's first end token (position lengths - 1) is pooled.
  const torch::Tensor pooled = ln_final(transformer->ForwardAt(x, lengths - 1, mask));
  return torch::matmul(pooled, text_projection);
}

}  // namespace clipserve
