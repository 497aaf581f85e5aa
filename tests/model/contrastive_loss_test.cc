#include "server/model/contrastive_loss.h"

#include <cmath>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// Mean over rows of -log softmax(row)[label], computed by hand in double.
double HandCrossEntropy(const std::vector<std::vector<double>>& logits) {
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    double max = logits[i][0];
    for (double v : logits[i]) max = std::max(max, v);
    double sum = 0;
    for (double v : logits[i]) sum += std::exp(v - max);
    total += -(logits[i][i] - max - std::log(sum));
  }
  return total / logits.size();
}

TEST(ContrastiveLossTest, MatchesHandComputation) {
  const std::vector<std::vector<double>> rows = {
      {3.0, 1.0, -2.0}, {0.5, 2.5, 0.0}, {-1.0, 4.0, 1.5}};
  std::vector<std::vector<double>> cols(3, std::vector<double>(3));
  torch::Tensor logits = torch::empty({3, 3}, torch::kFloat);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      logits[i][j] = rows[i][j];
      cols[j][i] = rows[i][j];
    }
  }
  auto loss = ComputeContrastiveLoss(logits);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->image_to_text, HandCrossEntropy(rows), 1e-9);
  EXPECT_NEAR(loss->text_to_image, HandCrossEntropy(cols), 1e-9);
  EXPECT_NEAR(loss->mean, (HandCrossEntropy(rows) + HandCrossEntropy(cols)) / 2, 1e-9);
  EXPECT_NE(loss->image_to_text, loss->text_to_image);
}

TEST(ContrastiveLossTest, NeedsSquareLogits) {
  EXPECT_EQ(ComputeContrastiveLoss(torch::zeros({2, 3})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContrastiveLoss(torch::zeros({0, 0})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ScaledLogitsTest, ScalesCosines) {
  torch::Tensor images = torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}});
  torch::Tensor texts = torch::tensor({{0.6f, 0.8f}});
  auto logits = ScaledLogits(images, texts, 100.0f);
  ASSERT_TRUE(logits.ok());
  ASSERT_EQ(logits->sizes(), (std::vector<int64_t>{2, 1}));
  EXPECT_NEAR((*logits)[0][0].item<float>(), 60.0f, 1e-4);
  EXPECT_NEAR((*logits)[1][0].item<float>(), 80.0f, 1e-4);
  EXPECT_FALSE(ScaledLogits(images, texts, 0.0f).ok());
  EXPECT_FALSE(ScaledLogits(images, texts, std::nanf("")).ok());
  EXPECT_FALSE(ScaledLogits(images, torch::zeros({1, 3}), 1.0f).ok());
}

}  // namespace
}  // namespace clipserve
