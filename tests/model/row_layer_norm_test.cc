// RowLayerNorm computes LayerNorm in fp32 as LibTorch's layer_norm does, writes it in
// fp32 or rounded to bf16, and reports the range of what it wrote.

#include "server/model/row_layer_norm.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

class RowLayerNormTest : public ::testing::Test {
 protected:
  RowLayerNormTest() {
    torch::manual_seed(7);
    // Away from 1 and 0, so a kernel that dropped either would show.
    weight_ = torch::rand({1024}) + 0.5;
    bias_ = torch::randn({1024});
  }

  void SetUp() override {
    if (!RowLayerNormTakes(torch::ones({1, 1}), weight_, bias_)) {
      GTEST_SKIP() << "no AVX-512 on this CPU: LibTorch's layer_norm runs instead";
    }
  }

  NormalizedRows Norm(const torch::Tensor& x, c10::ScalarType out) const {
    return RowLayerNorm(x, weight_.narrow(0, 0, x.size(-1)),
                        bias_.narrow(0, 0, x.size(-1)), kEps, out);
  }

  // LayerNorm in double, rounded to fp32: what LibTorch's fp32 layer_norm approximates.
  torch::Tensor Reference(const torch::Tensor& x) const {
    const int64_t w = x.size(-1);
    return torch::layer_norm(x.to(torch::kDouble), {w},
                             weight_.narrow(0, 0, w).to(torch::kDouble),
                             bias_.narrow(0, 0, w).to(torch::kDouble), kEps)
        .to(torch::kFloat);
  }

  static constexpr double kEps = 1e-5;
  torch::Tensor weight_;
  torch::Tensor bias_;
};

// Activations with an offset and a spread per row, as a residual stream has.
torch::Tensor Activations(int64_t rows, int64_t width) {
  return torch::randn({rows, width}) * (torch::rand({rows, 1}) * 4 + 0.1) +
         torch::randn({rows, 1}) * 3;
}

void ExpectRangeOf(const NormalizedRows& n) {
  ASSERT_TRUE(n.range.has_value());
  EXPECT_EQ(n.range->min, n.y.min().item<float>());
  EXPECT_EQ(n.range->max, n.y.max().item<float>());
}

// Within LibTorch's own fp32 error of the exact result (it is 1.4e-4 for width 1,
// where the exact result is the bias: this kernel's).
TEST_F(RowLayerNormTest, Fp32IsLayerNormToFp32Precision) {
  // 768 in full blocks of 16; 13 and 781 end in a partial block; 1 is all tail.
  for (int64_t width : {768, 13, 781, 1}) {
    SCOPED_TRACE(width);
    const torch::Tensor x = Activations(67, width);
    const NormalizedRows n = Norm(x, torch::kFloat);
    ASSERT_EQ(n.y.scalar_type(), torch::kFloat);
    ASSERT_EQ(n.y.sizes(), x.sizes());
    EXPECT_TRUE(torch::allclose(n.y, Reference(x), 1e-5, 1e-5))
        << (n.y - Reference(x)).abs().max();
    if (width > 1) {
      EXPECT_TRUE(
          torch::allclose(n.y,
                          torch::layer_norm(x, {width}, weight_.narrow(0, 0, width),
                                            bias_.narrow(0, 0, width), kEps),
                          1e-5, 1e-5));
    }
    ExpectRangeOf(n);
  }
}

TEST_F(RowLayerNormTest, Bf16IsTheFp32ResultRoundedToNearestEven) {
  const torch::Tensor x = Activations(300, 781).to(torch::kBFloat16);
  const NormalizedRows fp32 = Norm(x, torch::kFloat);
  const NormalizedRows bf16 = Norm(x, torch::kBFloat16);
  ASSERT_EQ(bf16.y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(fp32.y, Reference(x), 1e-5, 1e-5));
  // Bit for bit LibTorch's rounding of the same fp32 values.
  EXPECT_TRUE(torch::equal(bf16.y, fp32.y.to(torch::kBFloat16)));
  ExpectRangeOf(bf16);
}

// Random outputs are seldom halfway between two bf16 values: with a zero weight the
// output is the bias, here exact halfway cases either side of an even and an odd
// last bit, and NaN.
TEST_F(RowLayerNormTest, Bf16RoundsHalfwayCasesToEvenAsLibTorchDoes) {
  const torch::Tensor bias = torch::tensor(
      {1.0f + 0x1p-8f, 1.0f + 0x1p-7f + 0x1p-8f, -(1.0f + 0x1p-8f),
       -(1.0f + 0x1p-7f + 0x1p-8f), 3.0f, std::numeric_limits<float>::quiet_NaN()});
  const NormalizedRows n =
      RowLayerNorm(Activations(3, 6), torch::zeros({6}), bias, kEps, torch::kBFloat16);
  const torch::Tensor want = bias.to(torch::kBFloat16).expand({3, 6});
  EXPECT_TRUE(torch::equal(n.y.isnan(), want.isnan()));
  EXPECT_TRUE(torch::equal(torch::nan_to_num(n.y), torch::nan_to_num(want)))
      << n.y << want;
  EXPECT_EQ(n.y[0][0].item<float>(), 1.0f);
  EXPECT_EQ(n.y[0][1].item<float>(), 1.0f + 0x1p-6f);
  EXPECT_FALSE(n.range.has_value());
}

TEST_F(RowLayerNormTest, TakesAnyLayoutAndLeadingShape) {
  const torch::Tensor x = Activations(2 * 5 * 64, 1).view({2, 5, 64}).transpose(1, 2);
  ASSERT_FALSE(x.is_contiguous());
  const NormalizedRows n = Norm(x, torch::kFloat);
  ASSERT_EQ(n.y.sizes(), x.sizes());
  EXPECT_TRUE(torch::allclose(n.y, Reference(x), 1e-5, 1e-5));
}

TEST_F(RowLayerNormTest, ARowThatIsNotFiniteLeavesNoRangeAndTheOthersRight) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    torch::Tensor x = Activations(40, 768);
    x[17][300] = bad;
    const NormalizedRows n = Norm(x, torch::kFloat);
    EXPECT_FALSE(n.range.has_value()) << bad;
    const torch::Tensor others = torch::cat({torch::arange(17), torch::arange(18, 40)});
    EXPECT_TRUE(torch::allclose(n.y.index_select(0, others),
                                Reference(x).index_select(0, others), 1e-5, 1e-5));
  }
}

TEST_F(RowLayerNormTest, AValueThatOverflowsLeavesNoRange) {
  // Finite inputs, a weight so large the output is infinite.
  const torch::Tensor x = Activations(4, 32);
  const torch::Tensor weight = torch::full({32}, 3e38);
  EXPECT_FALSE(
      RowLayerNorm(x, weight, torch::zeros({32}), kEps, torch::kFloat).range.has_value());
}

TEST(RowLayerNormTakesTest, LeavesAutogradAndOtherDtypesToLibTorch) {
  const torch::Tensor w = torch::ones({8});
  const torch::Tensor b = torch::zeros({8});
  if (!RowLayerNormTakes(torch::randn({2, 8}), w, b)) {
    GTEST_SKIP() << "no AVX-512 on this CPU";
  }
  EXPECT_TRUE(RowLayerNormTakes(torch::randn({2, 8}).to(torch::kBFloat16), w, b));
  EXPECT_FALSE(RowLayerNormTakes(torch::randn({2, 8}).to(torch::kDouble), w, b));
  EXPECT_FALSE(RowLayerNormTakes(torch::randn({2, 8}).requires_grad_(), w, b));
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(RowLayerNormTakes(torch::randn({2, 8}).requires_grad_(), w, b));
  }
}

}  // namespace
}  // namespace clipserve
