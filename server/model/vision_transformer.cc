#include "server/model/vision_transformer.h"

namespace clipserve {

VisionTransformerImpl::VisionTransformerImpl(const VisionConfig& config,
                                             int64_t embed_dim, bool quick_gelu) {
  const int64_t width = config.width;
  const int64_t grid = config.image_size / config.patch_size;
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, width, config.patch_size)
                                     .stride(config.patch_size)
                                     .bias(false)));
  class_embedding = register_parameter("class_embedding", torch::zeros({width}));
  positional_embedding =
      register_parameter("positional_embedding", torch::zeros({grid * grid + 1, width}));
  ln_pre = register_module("ln_pre", LayerNorm(width));
  transformer = register_module(
      "transformer",
      Transformer(width, config.layers, config.heads, config.mlp_ratio, quick_gelu));
  ln_post = register_module("ln_post", LayerNorm(width));
  proj = register_parameter("proj", torch::zeros({width, embed_dim}));
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& images) {
  // [N, w, g, g] -> [N, g*g, w]
  torch::Tensor x = conv1(images).flatten(2).transpose(1, 2);
  torch::Tensor cls =
      class_embedding.to(x.scalar_type()).expand({x.size(0), 1, x.size(2)});
  x = torch::cat({cls, x}, 1) + positional_embedding.to(x.scalar_type());
  // Only the class token (position 0) is pooled.
  const torch::Tensor first = torch::zeros(
      {x.size(0)}, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
  x = ln_post(transformer->ForwardAt(ln_pre(x), first));
  return torch::matmul(x, proj);
}

}  // namespace clipserve
