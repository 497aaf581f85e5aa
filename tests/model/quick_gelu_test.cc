// QuickGeluInPlace is h * sigmoid(1.702 h) computed in fp32 and rounded once to h's
// dtype, with LibTorch's answers for infinities and NaN.

#include "server/model/quick_gelu.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class QuickGeluTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!QuickGeluTakes(torch::ones({1}))) {
      GTEST_SKIP() << "no AVX-512 on this CPU: LibTorch's ops run instead";
    }
    torch::manual_seed(5);
  }
};

// The definition in double on h's own values, rounded once to h's dtype; 1.702 h is
// first rounded to fp32, as the kernel (and LibTorch's fp32 ops) compute it: far in
// sigmoid's tail its rounding alone moves the result by |1.702 h| fp32 ulps.
torch::Tensor Exact(const torch::Tensor& h) {
  const torch::Tensor z = (h.to(torch::kFloat) * kQuickGeluSlope).to(torch::kDouble);
  return (h.to(torch::kDouble) * torch::sigmoid(z)).to(h.scalar_type());
}

// The largest |got - want| / |want| where want is not 0.
double MaxRelativeError(const torch::Tensor& got, const torch::Tensor& want) {
  const torch::Tensor w = want.to(torch::kDouble);
  const torch::Tensor nonzero = w.ne(0);
  return ((got.to(torch::kDouble) - w).abs() / w.abs())
      .masked_select(nonzero)
      .max()
      .item<double>();
}

torch::Tensor Applied(torch::Tensor h) {
  QuickGeluInPlace(h);
  return h;
}

// Activations of a few units either way, and the tails where sigmoid saturates, in
// sizes with and without a partial last block and past the parallel grain.
TEST_F(QuickGeluTest, Fp32IsQuickGeluToAFewUlps) {
  for (int64_t n : {1, 15, 16, 17, 3072, 100003}) {
    SCOPED_TRACE(n);
    const torch::Tensor h = torch::randn({n}) * 8;
    const torch::Tensor got = Applied(h.clone());
    const torch::Tensor want = Exact(h);
    // A few fp32 ulps (2^-23 each): exp's, the division's and the product's roundings.
    EXPECT_LT(MaxRelativeError(got, want), 4 * std::ldexp(1.0, -23));
    EXPECT_TRUE(got.eq(0).equal(want.eq(0)));
  }
}

// bf16: one rounding of a result good to about 1 ulp of fp32, so the correctly
// rounded bf16 value but where the exact result lies within that of halfway between
// two bf16 neighbours. A kernel that rounds sigmoid's result to bf16 before the product
// (as passes over bf16 tensors do) misses far more often: the test shows that its
// threshold tells the two apart.
TEST_F(QuickGeluTest, Bf16IsTheRoundedResult) {
  const torch::Tensor h = (torch::randn({32 * 50, 3072}) * 4).to(torch::kBFloat16);
  const torch::Tensor got = Applied(h.clone());
  const torch::Tensor want = Exact(h);
  const double mismatched = got.ne(want).to(torch::kDouble).mean().item<double>();
  EXPECT_LT(mismatched, 1e-4);
  // Where they differ, by one bf16 step at most.
  const torch::Tensor diff = (got.to(torch::kDouble) - want.to(torch::kDouble)).abs();
  const torch::Tensor step = want.to(torch::kDouble).abs() * std::ldexp(1.0, -7);
  EXPECT_TRUE(diff.le(step + 1e-38).all().item<bool>());

  // Rounded twice, each step in double: sigmoid to bf16, then the product.
  const torch::Tensor z = (h.to(torch::kFloat) * kQuickGeluSlope).to(torch::kDouble);
  const torch::Tensor sigmoid_bf16 = torch::sigmoid(z).to(torch::kBFloat16);
  const torch::Tensor twice =
      (h.to(torch::kDouble) * sigmoid_bf16.to(torch::kDouble)).to(torch::kBFloat16);
  const double twice_mismatched = twice.ne(want).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(twice_mismatched, 10 * mismatched);
  EXPECT_GT(twice_mismatched, 1e-3);
}

// +inf stays +inf; -inf and NaN give NaN (-inf * 0, as LibTorch's formula gives them);
// far out, sigmoid saturates to 1 and to 0 without overflowing.
TEST_F(QuickGeluTest, InfinitiesNaNAndSaturation) {
  const std::vector<float> values = {kInf,  -kInf,  kNaN,   0.0f,
                                     1e30f, -1e30f, 100.0f, -100.0f};
  const std::vector<float> expected = {kInf, kNaN, kNaN, 0.0f, 1e30f, 0.0f, 100.0f, 0.0f};
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(dtype);
    const torch::Tensor got =
        Applied(torch::tensor(values).to(dtype)).to(torch::kFloat).contiguous();
    const torch::Tensor want = torch::tensor(expected).to(dtype).to(torch::kFloat);
    for (size_t i = 0; i < values.size(); ++i) {
      SCOPED_TRACE(values[i]);
      const float g = got[i].item<float>();
      const float w = want[i].item<float>();
      if (std::isnan(w)) {
        EXPECT_TRUE(std::isnan(g)) << g;
      } else {
        EXPECT_EQ(g, w);
      }
    }
  }
}

TEST_F(QuickGeluTest, KeepsTheShapeAndWritesInPlace) {
  torch::Tensor h = torch::randn({2, 3, 40});
  const torch::Tensor want = Exact(h);
  const void* data = h.data_ptr();
  QuickGeluInPlace(h);
  EXPECT_EQ(h.data_ptr(), data);
  EXPECT_EQ(h.sizes(), want.sizes());
  EXPECT_LT(MaxRelativeError(h, want), 4 * std::ldexp(1.0, -23));
}

TEST_F(QuickGeluTest, TakesOnlyWhatItCanWriteInPlace) {
  EXPECT_FALSE(QuickGeluTakes(torch::zeros({4}, torch::kDouble)));
  EXPECT_FALSE(QuickGeluTakes(torch::zeros({4, 4}).t()));
  EXPECT_FALSE(QuickGeluTakes(torch::zeros({4}, torch::requires_grad())));
  {
    const torch::NoGradGuard no_grad;
    EXPECT_TRUE(QuickGeluTakes(torch::zeros({4}, torch::requires_grad())));
  }
  torch::Tensor strided = torch::zeros({4, 4}).t();
  EXPECT_THROW(QuickGeluInPlace(strided), c10::Error);
}

// Elementwise, it needs no rows: a scalar and empty tensors are its to take.
TEST_F(QuickGeluTest, TakesScalarsAndEmptyTensors) {
  torch::Tensor scalar = torch::tensor(1.5f);
  ASSERT_TRUE(QuickGeluTakes(scalar));
  const torch::Tensor want = Exact(scalar);
  QuickGeluInPlace(scalar);
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_LT(MaxRelativeError(scalar, want), 4 * std::ldexp(1.0, -23));
  for (const auto& shape : {std::vector<int64_t>{0}, std::vector<int64_t>{3, 0}}) {
    torch::Tensor empty = torch::zeros(shape, torch::kBFloat16);
    ASSERT_TRUE(QuickGeluTakes(empty));
    QuickGeluInPlace(empty);
    EXPECT_EQ(empty.sizes(), torch::IntArrayRef(shape));
  }
}

}  // namespace
}  // namespace clipserve
