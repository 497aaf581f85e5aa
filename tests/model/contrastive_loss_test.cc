#include "server/model/contrastive_loss.h"

#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// Mean over rows of -log softmax(row)[label], written out by hand.
double HandCrossEntropy(const std::vector<std::vector<double>>& logits) {
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    double sum = 0;
    for (double v : logits[i]) sum += std::exp(v);
    total += std::log(sum) - logits[i][i];
  }
  return total / logits.size();
}

TEST(ContrastiveLossTest, MatchesHandComputation) {
  const std::vector<std::vector<double>> rows = {
      {3.0, 1.0, -2.0}, {0.5, 2.5, 0.0}, {-1.0, 4.0, 1.5}};
  std::vector<std::vector<double>> cols(3, std::vector<double>(3));
  std::vector<float> logits;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      logits.push_back(static_cast<float>(rows[i][j]));
      cols[j][i] = rows[i][j];
    }
  }
  auto loss = ComputeContrastiveLoss(logits, 3);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->image_to_text, HandCrossEntropy(rows), 1e-9);
  EXPECT_NEAR(loss->text_to_image, HandCrossEntropy(cols), 1e-9);
  EXPECT_NEAR(loss->mean, (HandCrossEntropy(rows) + HandCrossEntropy(cols)) / 2, 1e-9);
  EXPECT_NE(loss->image_to_text, loss->text_to_image);
}

TEST(ContrastiveLossTest, StableForLargeLogits) {
  // exp(1000) overflows a double; the max-shift must keep the loss finite.
  auto loss = ComputeContrastiveLoss({1000.0f, 0.0f, 0.0f, 1000.0f}, 2);
  ASSERT_TRUE(loss.ok());
  EXPECT_NEAR(loss->mean, 0.0, 1e-12);
}

TEST(ContrastiveLossTest, NeedsSquareLogits) {
  EXPECT_EQ(ComputeContrastiveLoss(std::vector<float>(6), 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeContrastiveLoss({}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ScaledLogitsTest, ScalesCosines) {
  const std::vector<float> images = {1, 0, 0, 1};
  const std::vector<float> texts = {0.6f, 0.8f};
  auto logits = ScaledLogits(images, texts, 2, 100.0f);
  ASSERT_TRUE(logits.ok());
  ASSERT_EQ(logits->size(), 2u);
  EXPECT_NEAR((*logits)[0], 60.0f, 1e-4);
  EXPECT_NEAR((*logits)[1], 80.0f, 1e-4);
  EXPECT_FALSE(ScaledLogits(images, texts, 2, 0.0f).ok());
  EXPECT_FALSE(ScaledLogits(images, texts, 2, std::nanf("")).ok());
  EXPECT_FALSE(ScaledLogits(images, {1, 2, 3}, 2, 1.0f).ok());
}

TEST(MatrixHelpersTest, TransposeAndSoftmax) {
  const std::vector<float> m = {1, 2, 3, 4, 5, 6};  // 2 x 3
  EXPECT_EQ(Transpose(m, 2, 3), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  const std::vector<float> p = RowSoftmax(m, 2, 3);
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(p[i * 3] + p[i * 3 + 1] + p[i * 3 + 2], 1.0f, 1e-6);
    EXPECT_NEAR(p[i * 3 + 2] / p[i * 3 + 1], std::exp(1.0f), 1e-4);
  }
}

}  // namespace
}  // namespace clipserve
