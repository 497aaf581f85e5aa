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
      Transformer(width, config.layers, config.heads, config.MlpWidth(), quick_gelu));
  ln_post = register_module("ln_post", LayerNorm(width));
  proj = register_parameter("proj", torch::zeros({width, embed_dim}));
}

torch::Tensor VisionTransformerImpl::EmbedPatches(const torch::Tensor& images) {
  // conv1 has kernel = stride = patch, so it is one matrix product over the patches:
  // [N, 3, g*p, g*p] -> [N, g, g, 3, p, p] -> [N, g*g, 3*p*p], times the weight seen
  // as [w, 3*p*p]. A product, unlike a convolution, accumulates in fp32 in bf16 on
  // every CPU: LibTorch's fallback convolution (CPUs without AVX-512) sums in bf16
  // and moved a ViT-B-32 embedding to cosine 0.9987 of fp32.
  const int64_t n = images.size(0);
  const int64_t p = conv1->options.kernel_size()->at(0);
  const int64_t g = images.size(2) / p;
  const torch::Tensor patches = images.reshape({n, 3, g, p, g, p})
                                    .permute({0, 2, 4, 1, 3, 5})
                                    .reshape({n, g * g, 3 * p * p});
  return torch::linear(patches, conv1->weight.view({conv1->weight.size(0), -1}));
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& images) {
  torch::Tensor x = EmbedPatches(images);
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
