// The towers' building blocks: computing one position per sequence gives the rows of
// the full computation.

#include "server/model/layers.h"

#include <torch/torch.h>

#include <limits>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

// A Transformer with seeded random parameters (constructors leave some uninitialized).
Transformer RandomTransformer(int64_t width, int64_t layers, int64_t heads,
                              bool quick_gelu) {
  Transformer transformer(width, layers, heads, /*mlp_ratio=*/4.0, quick_gelu);
  torch::NoGradGuard no_grad;
  for (torch::Tensor& p : transformer->parameters()) p.normal_(0.0, 0.2);
  return transformer;
}

torch::Tensor CausalMask(int64_t l) {
  return torch::full({l, l}, -std::numeric_limits<float>::infinity()).triu(1);
}

TEST(TransformerTest, ForwardAtGivesTheFullForwardsRowAtEachPosition) {
  torch::manual_seed(21);
  const torch::InferenceMode inference;
  const int64_t n = 4, l = 9, width = 32;
  for (const bool quick_gelu : {true, false}) {
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "quick_gelu " << quick_gelu << " causal " << causal);
      Transformer transformer = RandomTransformer(width, 3, 4, quick_gelu);
      const torch::Tensor x = torch::randn({n, l, width});
      const torch::Tensor mask = causal ? CausalMask(l) : torch::Tensor();
      // First, last and inner positions, one per sequence.
      const torch::Tensor positions =
          torch::tensor({int64_t{0}, l - 1, int64_t{3}, int64_t{5}});
      const torch::Tensor full = transformer->forward(x, mask);
      const torch::Tensor want = full.index({torch::arange(n), positions});
      const torch::Tensor got = transformer->ForwardAt(x, positions, mask);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(torch::allclose(got, want, /*rtol=*/1e-5, /*atol=*/1e-5))
          << "max difference " << (got - want).abs().max().item<float>();
    }
  }
}

// Under a causal mask a position sees only what precedes it, so what follows (here
// changed at random) cannot reach it.
TEST(TransformerTest, ForwardAtUnderACausalMaskIgnoresLaterTokens) {
  torch::manual_seed(22);
  const torch::InferenceMode inference;
  Transformer transformer = RandomTransformer(16, 2, 2, true);
  const torch::Tensor x = torch::randn({2, 8, 16});
  torch::Tensor changed = x.clone();
  changed.narrow(1, 5, 3).normal_();
  const torch::Tensor positions = torch::tensor({4, 2}, torch::kLong);
  EXPECT_TRUE(torch::allclose(transformer->ForwardAt(x, positions, CausalMask(8)),
                              transformer->ForwardAt(changed, positions, CausalMask(8))));
}

}  // namespace
}  // namespace clipserve
