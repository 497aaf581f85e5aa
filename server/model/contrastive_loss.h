#ifndef CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_
#define CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

// CLIP's similarity logits and symmetric contrastive loss on plain float rows (no
// LibTorch, so the service computes them where the embeddings already are). Sums are
// accumulated in double, so results do not depend on summation order.

namespace clipserve {

// logits_per_image [n, m] = scale * image_features @ text_features^T, row-major,
// from n and m rows of `dim` floats (L2-normalized for CLIP's cosines).
// INVALID_ARGUMENT when a span is not a whole number of rows, dim < 1, or the scale is
// not finite and > 0.
absl::StatusOr<std::vector<float>> ScaledLogits(absl::Span<const float> image_features,
                                                absl::Span<const float> text_features,
                                                int dim, float scale);

// Transposes a row-major [rows, cols] matrix.
std::vector<float> Transpose(absl::Span<const float> matrix, int rows, int cols);

// Softmax of each row of a row-major [rows, cols] matrix.
std::vector<float> RowSoftmax(absl::Span<const float> matrix, int rows, int cols);

// The symmetric contrastive loss for n paired inputs, labels 0..n-1.
struct ContrastiveLoss {
  double image_to_text = 0;  // mean cross-entropy over the rows of logits_per_image
  double text_to_image = 0;  // mean cross-entropy over the rows of logits_per_text
  double mean = 0;           // (image_to_text + text_to_image) / 2
};

// From square logits_per_image [n, n], row-major. INVALID_ARGUMENT unless n >= 1 and
// the span holds n * n values.
absl::StatusOr<ContrastiveLoss> ComputeContrastiveLoss(absl::Span<const float> logits,
                                                       int n);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_CONTRASTIVE_LOSS_H_
