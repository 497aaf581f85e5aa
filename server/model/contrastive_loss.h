#ifndef CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_
#define CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace clipserve {

// scale * image_features @ text_features^T: [n, m] logits_per_image from
// L2-normalized features [n, D] and [m, D] (fp32). logits_per_text is its transpose.
// INVALID_ARGUMENT for mismatched widths, a non-finite or non-positive scale.
absl::StatusOr<torch::Tensor> ScaledLogits(const torch::Tensor& image_features,
                                           const torch::Tensor& text_features,
                                           float scale);

// CLIP's symmetric contrastive loss for n paired inputs, labels 0..n-1.
struct ContrastiveLoss {
  double image_to_text = 0;  // mean CE over the rows of logits_per_image
  double text_to_image = 0;  // mean CE over the rows of logits_per_text
  double mean = 0;           // (image_to_text + text_to_image) / 2
};

// Computes the loss from square logits_per_image [n, n]. INVALID_ARGUMENT when it is
// not square or empty. Computed in fp64 for a stable last digit.
absl::StatusOr<ContrastiveLoss> ComputeContrastiveLoss(const torch::Tensor& logits_per_image);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_
