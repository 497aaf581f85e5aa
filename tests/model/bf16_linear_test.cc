// Bf16Linear computes LibTorch's bf16 linear (at::linear, the bias added inside the
// product), from a weight laid out once, for any row count, from any thread, with an
// activation fused where asked.

#include "server/model/bf16_linear.h"

#include <torch/torch.h>

#include <cmath>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/model/model_loader.h"

namespace clipserve {
namespace {

class Bf16LinearTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Bf16Linear::Available()) GTEST_SKIP() << "no Bf16Linear in this build or CPU";
  }
};

// Each |got - want| is at most one bf16 ulp of want (2^-7 of its magnitude, as bf16
// has 8 significant bits), and at least 99% are equal.
void ExpectWithinOneUlp(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  const torch::Tensor g = got.to(torch::kFloat);
  const torch::Tensor w = want.to(torch::kFloat);
  EXPECT_TRUE((g - w).abs().le(w.abs() * std::ldexp(1.0, -7)).all().item<bool>());
  EXPECT_LT(g.ne(w).to(torch::kFloat).mean().item<float>(), 0.01);
}

TEST_F(Bf16LinearTest, ComputesLibTorchsBf16Linear) {
  torch::manual_seed(41);
  const torch::InferenceMode inference;
  for (const bool with_bias : {true, false}) {
    const torch::Tensor w = torch::randn({96, 80}).to(torch::kBFloat16);
    const torch::Tensor b =
        with_bias ? torch::randn({96}).to(torch::kBFloat16) : torch::Tensor();
    const Bf16Linear linear(w, b);
    EXPECT_EQ(linear.in_features(), 80);
    EXPECT_EQ(linear.out_features(), 96);
    // One row to a batch's worth, each a product compiled of its own; 2-D and 3-D.
    for (const int64_t rows : {1, 7, 50, 333, 1600}) {
      const torch::Tensor x = torch::randn({rows, 80}).to(torch::kBFloat16);
      ExpectWithinOneUlp(linear.Apply(x), torch::linear(x, w, b));
      const torch::Tensor x3 = x.view({1, rows, 80});
      ExpectWithinOneUlp(linear.Apply(x3), torch::linear(x3, w, b));
    }
  }
}

// The sums run in fp32 and round once: against the product in double, each value is
// within one bf16 ulp plus what fp32 sums can lose.
TEST_F(Bf16LinearTest, RoundsOnceFromFp32Sums) {
  torch::manual_seed(42);
  const torch::InferenceMode inference;
  const torch::Tensor w = torch::randn({64, 768}).to(torch::kBFloat16);
  const torch::Tensor b = torch::randn({64}).to(torch::kBFloat16);
  const torch::Tensor x = torch::randn({2, 50, 768}).to(torch::kBFloat16);
  const torch::Tensor got = Bf16Linear(w, b).Apply(x).to(torch::kDouble);
  const torch::Tensor exact =
      torch::linear(x.to(torch::kDouble), w.to(torch::kDouble), b.to(torch::kDouble));
  const torch::Tensor bound =
      exact.abs() * std::ldexp(1.0, -8) +
      torch::linear(x.to(torch::kDouble).abs(), w.to(torch::kDouble).abs()) *
          (768 * std::ldexp(1.0, -24));
  EXPECT_TRUE((got - exact).abs().le(bound).all().item<bool>());
}

// An activation runs on the fp32 sums, bias added, and the result rounds once: against
// the activation of the product in double, each value is within one bf16 ulp plus what
// fp32 sums can lose (both activations' slopes stay under 1.2) and the last bits of
// oneDNN's fp32 exp and erf.
TEST_F(Bf16LinearTest, FusesTheActivationIntoTheFp32Sums) {
  torch::manual_seed(46);
  const torch::InferenceMode inference;
  const torch::Tensor w = (torch::randn({96, 768}) * 0.05).to(torch::kBFloat16);
  const torch::Tensor b = torch::randn({96}).to(torch::kBFloat16);
  const torch::Tensor x = torch::randn({2, 50, 768}).to(torch::kBFloat16);
  const torch::Tensor exact =
      torch::linear(x.to(torch::kDouble), w.to(torch::kDouble), b.to(torch::kDouble));
  const torch::Tensor sums_bound =
      torch::linear(x.to(torch::kDouble).abs(), w.to(torch::kDouble).abs()) *
      (768 * std::ldexp(1.0, -24));
  for (const LinearActivation activation :
       {LinearActivation::kQuickGelu, LinearActivation::kGelu}) {
    SCOPED_TRACE(static_cast<int>(activation));
    if (!Bf16Linear::Available(activation)) GTEST_SKIP() << "not fused on this CPU";
    const torch::Tensor want = activation == LinearActivation::kQuickGelu
                                   ? exact * torch::sigmoid(1.702 * exact)
                                   : torch::gelu(exact);
    const torch::Tensor got = Bf16Linear(w, b, activation).Apply(x);
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    const torch::Tensor bound =
        want.abs() * (std::ldexp(1.0, -8) + std::ldexp(1.0, -18)) + sums_bound * 1.25;
    EXPECT_TRUE((got.to(torch::kDouble) - want).abs().le(bound).all().item<bool>());
  }
}

// Laid out once: changing the tensor it was built from later changes nothing.
TEST_F(Bf16LinearTest, PacksItsWeightOnceAtConstruction) {
  torch::manual_seed(43);
  const torch::InferenceMode inference;
  torch::Tensor w = torch::randn({32, 48}).to(torch::kBFloat16);
  torch::Tensor b = torch::randn({32}).to(torch::kBFloat16);
  const Bf16Linear linear(w, b);
  const torch::Tensor x = torch::randn({5, 48}).to(torch::kBFloat16);
  const torch::Tensor before = linear.Apply(x);
  w.zero_();
  b.zero_();
  EXPECT_TRUE(torch::equal(linear.Apply(x), before));
  EXPECT_FALSE(torch::equal(before, torch::linear(x, w, b)));
}

// fp32 weights are rounded to bf16 first, as module.to(bf16) would.
TEST_F(Bf16LinearTest, RoundsAFloatWeightToBf16) {
  torch::manual_seed(44);
  const torch::InferenceMode inference;
  const torch::Tensor w = torch::randn({16, 24});
  const torch::Tensor b = torch::randn({16});
  const torch::Tensor x = torch::randn({3, 24}).to(torch::kBFloat16);
  EXPECT_TRUE(
      torch::equal(Bf16Linear(w, b).Apply(x),
                   Bf16Linear(w.to(torch::kBFloat16), b.to(torch::kBFloat16)).Apply(x)));
}

TEST_F(Bf16LinearTest, TakesOnlyBf16RowsOfItsWidthOutsideAutograd) {
  const Bf16Linear linear(torch::randn({8, 16}), torch::Tensor());
  EXPECT_TRUE(linear.Takes(torch::zeros({2, 16}, torch::kBFloat16)));
  EXPECT_TRUE(linear.Takes(torch::zeros({2, 3, 16}, torch::kBFloat16).transpose(0, 1)));
  EXPECT_FALSE(linear.Takes(torch::zeros({2, 16})));
  EXPECT_FALSE(linear.Takes(torch::zeros({2, 15}, torch::kBFloat16)));
  EXPECT_FALSE(linear.Takes(torch::zeros({0, 16}, torch::kBFloat16)));
  EXPECT_FALSE(linear.Takes(
      torch::zeros({2, 16}, torch::dtype(torch::kBFloat16).requires_grad(true))));
  {
    const torch::NoGradGuard no_grad;
    EXPECT_TRUE(linear.Takes(
        torch::zeros({2, 16}, torch::dtype(torch::kBFloat16).requires_grad(true))));
  }
  EXPECT_THROW(linear.Apply(torch::zeros({2, 16})), c10::Error);
  EXPECT_THROW(Bf16Linear(torch::zeros({8}), torch::Tensor()), c10::Error);
  EXPECT_THROW(Bf16Linear(torch::zeros({8, 16}), torch::zeros({7})), c10::Error);
}

// Concurrent calls (workers share one model) bring their own scratchpads and agree
// with a call made alone.
TEST_F(Bf16LinearTest, ConcurrentCallsAgreeWithSerialOnes) {
  torch::manual_seed(45);
  const torch::InferenceMode inference;
  const Bf16Linear linear(torch::randn({64, 128}), torch::randn({64}));
  std::vector<torch::Tensor> inputs, want;
  for (int i = 0; i < 4; ++i) {
    inputs.push_back(torch::randn({10 + 30 * i, 128}).to(torch::kBFloat16));
    want.push_back(linear.Apply(inputs.back()));
  }
  std::vector<torch::Tensor> got(inputs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < inputs.size(); ++i) {
    threads.emplace_back([&, i] {
      const torch::InferenceMode thread_inference;
      for (int round = 0; round < 20; ++round) got[i] = linear.Apply(inputs[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_TRUE(torch::equal(got[i], want[i]));
}

#if CLIPSERVE_WITH_DNNL
// A CPU with bf16 instructions has oneDNN's fast bf16 product: Bf16Linear is not left
// off where it pays (the tests above would skip, not fail).
TEST(Bf16LinearBuildTest, AvailableWhereTheCpuHasBf16Instructions) {
  if (!CpuInfoHasBf16(ReadProcCpuinfo())) GTEST_SKIP() << "no bf16 instructions";
  EXPECT_TRUE(Bf16Linear::Available());
  EXPECT_TRUE(Bf16Linear::Available(LinearActivation::kQuickGelu));
  EXPECT_TRUE(Bf16Linear::Available(LinearActivation::kGelu));
}
#else
// A build that calls oneDNN only through LibTorch has none, and says so.
TEST(Bf16LinearBuildTest, NoneWithoutOneDnnHeaders) {
  EXPECT_FALSE(Bf16Linear::Available());
  EXPECT_THROW(Bf16Linear(torch::ones({2, 2}), torch::Tensor()), c10::Error);
}
#endif

}  // namespace
}  // namespace clipserve
