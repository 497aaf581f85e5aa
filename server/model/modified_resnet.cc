#include "server/model/modified_resnet.h"

#include <cmath>
#include <string>

namespace clipserve {
namespace {

torch::nn::Conv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .stride(stride)
                               .padding(kernel / 2)
                               .bias(false));
}

torch::Tensor Pool(const torch::Tensor& x, int64_t k) {
  return k > 1 ? torch::avg_pool2d(x, {k, k}) : x;
}

}  // namespace

DownsampleImpl::DownsampleImpl(int64_t inplanes, int64_t outplanes, int64_t stride)
    : stride_(stride) {
  conv_ = register_module("0", Conv(inplanes, outplanes, 1));
  bn_ = register_module("1", torch::nn::BatchNorm2d(outplanes));
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  return bn_(conv_(Pool(x, stride_)));
}

BottleneckImpl::BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride)
    : stride_(stride) {
  conv1 = register_module("conv1", Conv(inplanes, planes, 1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
  conv2 = register_module("conv2", Conv(planes, planes, 3));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
  conv3 = register_module("conv3", Conv(planes, planes * 4, 1));
  bn3 = register_module("bn3", torch::nn::BatchNorm2d(planes * 4));
  if (stride > 1 || inplanes != planes * 4) {
    downsample = register_module("downsample", Downsample(inplanes, planes * 4, stride));
  }
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  torch::Tensor out = torch::relu(bn1(conv1(x)));
  out = torch::relu(bn2(conv2(out)));
  out = bn3(conv3(Pool(out, stride_)));
  torch::Tensor identity = downsample ? downsample(x) : x;
  return torch::relu(out + identity);
}

AttentionPool2dImpl::AttentionPool2dImpl(int64_t spatial_dim, int64_t embed_dim,
                                         int64_t heads, int64_t output_dim)
    : heads_(heads) {
  positional_embedding = register_parameter(
      "positional_embedding", torch::zeros({spatial_dim * spatial_dim + 1, embed_dim}));
  k_proj = register_module("k_proj", torch::nn::Linear(embed_dim, embed_dim));
  q_proj = register_module("q_proj", torch::nn::Linear(embed_dim, embed_dim));
  v_proj = register_module("v_proj", torch::nn::Linear(embed_dim, embed_dim));
  c_proj = register_module("c_proj", torch::nn::Linear(embed_dim, output_dim));
}

torch::Tensor AttentionPool2dImpl::forward(const torch::Tensor& input) {
  const int64_t n = input.size(0);
  const int64_t c = input.size(1);
  const int64_t head_dim = c / heads_;
  // [N, C, H, W] -> [N, HW, C], with the mean prepended: [N, HW+1, C].
  torch::Tensor x = input.flatten(2).transpose(1, 2);
  x = torch::cat({x.mean(1, /*keepdim=*/true), x}, 1) +
      positional_embedding.to(x.scalar_type());
  const int64_t l = x.size(1);
  torch::Tensor q =
      q_proj(x.narrow(1, 0, 1)).view({n, 1, heads_, head_dim}).transpose(1, 2);
  torch::Tensor k = k_proj(x).view({n, l, heads_, head_dim}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({n, l, heads_, head_dim}).transpose(1, 2);
  q = q * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  torch::Tensor weights =
      torch::softmax(torch::matmul(q, k.transpose(-2, -1)), -1, torch::kFloat)
          .to(x.scalar_type());
  torch::Tensor out = torch::matmul(weights, v).transpose(1, 2).reshape({n, c});
  return c_proj(out);
}

ModifiedResNetImpl::ModifiedResNetImpl(const VisionConfig& config, int64_t embed_dim) {
  const int64_t width = config.width;
  conv1 = register_module("conv1", Conv(3, width / 2, 3, 2));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(width / 2));
  conv2 = register_module("conv2", Conv(width / 2, width / 2, 3));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(width / 2));
  conv3 = register_module("conv3", Conv(width / 2, width, 3));
  bn3 = register_module("bn3", torch::nn::BatchNorm2d(width));
  int64_t inplanes = width;
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = width << s;
    torch::nn::ModuleList stage;
    for (int b = 0; b < config.stage_layers[s]; ++b) {
      const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
      stage->push_back(Bottleneck(inplanes, planes, stride));
      inplanes = planes * 4;
    }
    stages_.push_back(register_module("layer" + std::to_string(s + 1), stage));
  }
  attnpool = register_module(
      "attnpool",
      AttentionPool2d(config.image_size / 32, width * 32, config.heads, embed_dim));
}

torch::Tensor ModifiedResNetImpl::forward(const torch::Tensor& images) {
  torch::Tensor x = torch::relu(bn1(conv1(images)));
  x = torch::relu(bn2(conv2(x)));
  x = torch::relu(bn3(conv3(x)));
  x = torch::avg_pool2d(x, {2, 2});
  for (const auto& stage : stages_) {
    for (const auto& block : *stage) x = block->as<Bottleneck>()->forward(x);
  }
  return attnpool(x);
}

}  // namespace clipserve
