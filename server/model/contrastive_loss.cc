#include "server/model/contrastive_loss.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/model/clip_model.h"

namespace clipserve {

absl::StatusOr<torch::Tensor> ScaledLogits(const torch::Tensor& image_features,
                                           const torch::Tensor& text_features,
                                           float scale) {
  if (image_features.dim() != 2 || text_features.dim() != 2 ||
      image_features.size(1) != text_features.size(1)) {
    return absl::InvalidArgumentError("features must be [n, D] and [m, D]");
  }
  if (!std::isfinite(scale) || scale <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("logit scale must be finite and > 0, got ",
                                                   scale));
  }
  torch::Tensor logits;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        c10::InferenceMode guard;
        logits = scale * torch::matmul(image_features.to(torch::kFloat),
                                       text_features.to(torch::kFloat).t());
      },
      "computing logits"));
  return logits;
}

absl::StatusOr<ContrastiveLoss> ComputeContrastiveLoss(const torch::Tensor& logits_per_image) {
  if (logits_per_image.dim() != 2 || logits_per_image.size(0) == 0 ||
      logits_per_image.size(0) != logits_per_image.size(1)) {
    return absl::InvalidArgumentError("the contrastive loss needs square n x n logits");
  }
  ContrastiveLoss loss;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        c10::InferenceMode guard;
        const torch::Tensor logits = logits_per_image.to(torch::kDouble).cpu();
        const torch::Tensor labels = torch::arange(logits.size(0), torch::kLong);
        loss.image_to_text = torch::cross_entropy_loss(logits, labels).item<double>();
        loss.text_to_image = torch::cross_entropy_loss(logits.t(), labels).item<double>();
        loss.mean = (loss.image_to_text + loss.text_to_image) / 2;
      },
      "computing the contrastive loss"));
  return loss;
}

}  // namespace clipserve
