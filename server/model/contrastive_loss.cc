#include "server/model/contrastive_loss.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

// -log softmax(row)[label], in double.
double CrossEntropy(const float* row, int stride, int count, int label) {
  double max = row[0];
  for (int j = 1; j < count; ++j) max = std::max(max, double(row[j * stride]));
  double sum = 0;
  for (int j = 0; j < count; ++j) sum += std::exp(double(row[j * stride]) - max);
  return -(double(row[label * stride]) - max - std::log(sum));
}

}  // namespace

absl::StatusOr<std::vector<float>> ScaledLogits(absl::Span<const float> image_features,
                                                absl::Span<const float> text_features,
                                                int dim, float scale) {
  if (dim < 1 || image_features.size() % dim != 0 || text_features.size() % dim != 0) {
    return absl::InvalidArgumentError("features must be whole rows of dim floats");
  }
  if (!std::isfinite(scale) || scale <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("logit scale must be finite and > 0, got ", scale));
  }
  const size_t n = image_features.size() / dim;
  const size_t m = text_features.size() / dim;
  std::vector<float> logits(n * m);
  for (size_t i = 0; i < n; ++i) {
    const float* a = image_features.data() + i * dim;
    for (size_t j = 0; j < m; ++j) {
      const float* b = text_features.data() + j * dim;
      double dot = 0;
      for (int k = 0; k < dim; ++k) dot += double(a[k]) * double(b[k]);
      logits[i * m + j] = static_cast<float>(scale * dot);
    }
  }
  return logits;
}

std::vector<float> Transpose(absl::Span<const float> matrix, int rows, int cols) {
  std::vector<float> out(matrix.size());
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j)
      out[size_t(j) * rows + i] = matrix[size_t(i) * cols + j];
  }
  return out;
}

std::vector<float> RowSoftmax(absl::Span<const float> matrix, int rows, int cols) {
  std::vector<float> out(matrix.size());
  for (int i = 0; i < rows; ++i) {
    const float* row = matrix.data() + size_t(i) * cols;
    double max = row[0];
    for (int j = 1; j < cols; ++j) max = std::max(max, double(row[j]));
    double sum = 0;
    for (int j = 0; j < cols; ++j) sum += std::exp(double(row[j]) - max);
    for (int j = 0; j < cols; ++j) {
      out[size_t(i) * cols + j] =
          static_cast<float>(std::exp(double(row[j]) - max) / sum);
    }
  }
  return out;
}

absl::StatusOr<ContrastiveLoss> ComputeContrastiveLoss(absl::Span<const float> logits,
                                                       int n) {
  if (n < 1 || logits.size() != size_t(n) * n) {
    return absl::InvalidArgumentError("the contrastive loss needs square n x n logits");
  }
  ContrastiveLoss loss;
  for (int i = 0; i < n; ++i) {
    loss.image_to_text += CrossEntropy(logits.data() + size_t(i) * n, 1, n, i);
    loss.text_to_image += CrossEntropy(logits.data() + i, n, n, i);  // column i
  }
  loss.image_to_text /= n;
  loss.text_to_image /= n;
  loss.mean = (loss.image_to_text + loss.text_to_image) / 2;
  return loss;
}

}  // namespace clipserve
