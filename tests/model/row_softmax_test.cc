// RowSoftmax is the softmax over the last dimension in fp32, written in the input's
// dtype, with LibTorch's answer for rows it cannot normalize.

#include "server/model/row_softmax.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

class RowSoftmaxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RowSoftmaxTakes(torch::ones({1, 1}))) {
      GTEST_SKIP() << "no AVX-512 on this CPU: LibTorch's softmax runs instead";
    }
    torch::manual_seed(11);
  }
};

// softmax in double, rounded to fp32.
torch::Tensor Exact(const torch::Tensor& x) {
  return torch::softmax(x.to(torch::kDouble), -1).to(torch::kFloat);
}

// Attention scores of a few units either way, and rows reaching far into exp's
// subnormal range, in widths with and without a partial last block.
TEST_F(RowSoftmaxTest, Fp32IsSoftmaxAsCloseAsLibTorchs) {
  for (int64_t width : {50, 77, 16, 1, 257}) {
    SCOPED_TRACE(width);
    for (double spread : {4.0, 40.0}) {
      const torch::Tensor x = torch::randn({2, 3, 40, width}) * spread;
      const torch::Tensor got = RowSoftmax(x);
      ASSERT_EQ(got.sizes(), x.sizes());
      ASSERT_EQ(got.scalar_type(), torch::kFloat);
      const torch::Tensor want = Exact(x);
      // fp32's x - max is off by up to half an ulp of its size, which exp turns into a
      // relative error: about 1e-5 for the smallest weights of the wide rows. LibTorch's
      // fp32 softmax misses the exact result by as much (its sums are fp32 too), and
      // this kernel agrees with it closer than with the exact result. Below fp32's
      // normal range exp loses relative precision: an absolute 1e-40 there.
      const double rtol = 2e-6 + spread * 6e-7;
      EXPECT_TRUE(torch::allclose(got, want, rtol, 1e-40))
          << spread << ": " << ((got - want).abs() - want * rtol).max();
      EXPECT_TRUE(torch::allclose(torch::softmax(x, -1), want, rtol, 1e-40));
      EXPECT_TRUE(torch::allclose(got, torch::softmax(x, -1), 2e-6, 1e-40));
    }
  }
}

// What the attention layers run on: LibTorch's fp32 softmax rounded to bf16, but for
// one ulp on a few weights, under a causal mask.
TEST_F(RowSoftmaxTest, Bf16IsTheFp32SoftmaxRounded) {
  const torch::Tensor mask = torch::full({77, 77}, -kInf).triu(1);
  const torch::Tensor scores =
      (torch::randn({8, 12, 77, 77}) * 4 + mask).to(torch::kBFloat16);
  const torch::Tensor got = RowSoftmax(scores);
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  const torch::Tensor want =
      torch::softmax(scores, -1, torch::kFloat).to(torch::kBFloat16);
  const torch::Tensor gotf = got.to(torch::kFloat);
  const torch::Tensor wantf = want.to(torch::kFloat);
  // bf16 has 8 significant bits: one ulp is at most 2^-7 of the value.
  EXPECT_TRUE(
      (gotf - wantf).abs().le(wantf.abs() * std::ldexp(1.0, -7)).all().item<bool>());
  EXPECT_LT(gotf.ne(wantf).to(torch::kFloat).mean().item<float>(), 1e-4);
  // Masked weights are exactly 0.
  EXPECT_TRUE(got.masked_select(mask.isinf()).eq(0).all().item<bool>());
}

// Rows with a NaN, a +inf, or nothing but -inf have no softmax: NaN, as in LibTorch's.
// The rows beside them are untouched.
TEST_F(RowSoftmaxTest, RowsWithoutASoftmaxAreNaNAsInLibTorch) {
  torch::Tensor x = torch::randn({5, 50});
  x[0][3] = std::numeric_limits<float>::quiet_NaN();
  x[1][49] = kInf;
  x[2].fill_(-kInf);
  x[3][0] = -kInf;  // one -inf among finite values: a weight of 0
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const torch::Tensor in = x.to(dtype);
    const torch::Tensor got = RowSoftmax(in).to(torch::kFloat);
    const torch::Tensor want = torch::softmax(in, -1, torch::kFloat);
    EXPECT_TRUE(torch::equal(got.isnan(), want.isnan())) << got.isnan().sum(1);
    EXPECT_TRUE(got.narrow(0, 0, 3).isnan().all().item<bool>());
    EXPECT_EQ(got[3][0].item<float>(), 0.0f);
    EXPECT_TRUE(torch::allclose(got.narrow(0, 3, 2), want.narrow(0, 3, 2), 1e-2, 1e-6));
  }
}

TEST_F(RowSoftmaxTest, TakesAnyLayout) {
  const torch::Tensor x = torch::randn({6, 50, 3}).transpose(1, 2);
  ASSERT_FALSE(x.is_contiguous());
  EXPECT_TRUE(torch::allclose(RowSoftmax(x), Exact(x), 2e-6, 1e-40));
}

TEST(RowSoftmaxTakesTest, LeavesAutogradAndOtherDtypesToLibTorch) {
  if (!RowSoftmaxTakes(torch::randn({2, 8}))) GTEST_SKIP() << "no AVX-512 on this CPU";
  EXPECT_TRUE(RowSoftmaxTakes(torch::randn({2, 8}).to(torch::kBFloat16)));
  EXPECT_FALSE(RowSoftmaxTakes(torch::randn({2, 8}).to(torch::kDouble)));
  EXPECT_FALSE(RowSoftmaxTakes(torch::randn({2, 8}).requires_grad_()));
  EXPECT_FALSE(RowSoftmaxTakes(torch::randn({2, 0})));
}

}  // namespace
}  // namespace clipserve
