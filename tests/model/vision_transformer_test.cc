#include "server/model/vision_transformer.h"

#include <torch/torch.h>

#include "gtest/gtest.h"
#include "server/model/model_config.h"

namespace clipserve {
namespace {

VisionTransformer SmallVit(int image_size, int patch_size) {
  VisionConfig config;
  config.arch = VisionArch::kVisionTransformer;
  config.image_size = image_size;
  config.patch_size = patch_size;
  config.width = 48;
  config.layers = 1;
  config.heads = 4;
  VisionTransformer vit(config, /*embed_dim=*/16, /*quick_gelu=*/true);
  torch::NoGradGuard no_grad;
  vit->conv1->weight.normal_(0, 0.05);
  return vit;
}

torch::Tensor Conv1Tokens(VisionTransformer& vit, const torch::Tensor& images, int p) {
  return torch::conv2d(images, vit->conv1->weight, {}, p).flatten(2).transpose(1, 2);
}

// The patch embedding, computed as a product over the patches, is the convolution
// checkpoints define it as (kernel = stride = patch, no bias), token order included.
TEST(VisionTransformerTest, PatchEmbeddingEqualsTheConvolution) {
  torch::manual_seed(7);
  VisionTransformer vit = SmallVit(32, 8);
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::randn({3, 3, 32, 32});
  const torch::Tensor want = Conv1Tokens(vit, images, 8);
  const torch::Tensor got = vit->EmbedPatches(images);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5)) << (got - want).abs().max();
}

// In bf16 the patch embedding sums in fp32 on every CPU, so its error is the rounding
// of inputs and output. LibTorch's fallback bf16 convolution (CPUs without AVX-512)
// sums in bf16: 6% relative error for a 32x32 patch, which took a ViT-B-32 embedding
// below cosine 0.999 of fp32.
TEST(VisionTransformerTest, Bf16PatchEmbeddingSumsInFp32) {
  torch::manual_seed(8);
  VisionTransformer vit = SmallVit(64, 32);
  torch::NoGradGuard no_grad;
  const torch::Tensor images = torch::randn({4, 3, 64, 64}).to(torch::kBFloat16);
  vit->to(torch::kBFloat16);
  const torch::Tensor got = vit->EmbedPatches(images).to(torch::kFloat);
  // The same bf16 values, summed in fp32.
  const torch::Tensor want = torch::conv2d(images.to(torch::kFloat),
                                           vit->conv1->weight.to(torch::kFloat), {}, 32)
                                 .flatten(2)
                                 .transpose(1, 2);
  const double error = ((got - want).norm() / want.norm()).item<double>();
  EXPECT_LT(error, 0.004);  // bf16 output rounding alone: about 0.002
}

}  // namespace
}  // namespace clipserve
