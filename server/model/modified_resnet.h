#ifndef CLIPSERVE_SERVER_MODEL_MODIFIED_RESNET_H_
#define CLIPSERVE_SERVER_MODEL_MODIFIED_RESNET_H_

#include <torch/torch.h>

#include "server/model/model_config.h"

namespace clipserve {

// The shortcut of a Bottleneck when shape changes: AvgPool(stride) ("-1", no
// parameters), 1x1 conv ("0"), BatchNorm ("1").
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t inplanes, int64_t outplanes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t stride_;
  torch::nn::Conv2d conv_{nullptr};
  torch::nn::BatchNorm2d bn_{nullptr};
};
TORCH_MODULE(Downsample);

// CLIP's anti-aliased Bottleneck: strided convolutions replaced by an average pool
// after conv2; expansion 4.
class BottleneckImpl : public torch::nn::Module {
 public:
  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t stride_;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  Downsample downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

// Attention pooling over the final feature map: the mean feature (prepended) attends
// to all positions. Keys: positional_embedding, q_proj, k_proj, v_proj, c_proj.
class AttentionPool2dImpl : public torch::nn::Module {
 public:
  AttentionPool2dImpl(int64_t spatial_dim, int64_t embed_dim, int64_t heads,
                      int64_t output_dim);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor positional_embedding;
  torch::nn::Linear k_proj{nullptr}, q_proj{nullptr}, v_proj{nullptr}, c_proj{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(AttentionPool2d);

// CLIP's modified ResNet image tower (keys under "visual."): a 3-conv stem with an
// average pool, four stages of Bottlenecks (layer1..layer4), and attnpool.
// forward: images [N, 3, S, S] -> features [N, embed_dim] (not normalized).
class ModifiedResNetImpl : public torch::nn::Module {
 public:
  ModifiedResNetImpl(const VisionConfig& config, int64_t embed_dim);
  torch::Tensor forward(const torch::Tensor& images);

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  std::vector<torch::nn::ModuleList> stages_;
  AttentionPool2d attnpool{nullptr};
};
TORCH_MODULE(ModifiedResNet);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_MODIFIED_RESNET_H_
