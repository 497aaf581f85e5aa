// The towers' building blocks: computing one position per sequence gives the rows of
// the full computation; int8 linear layers compute what their rounding says.

#include "server/model/layers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "server/model/model_loader.h"
#include "server/model/quick_gelu.h"

namespace clipserve {
namespace {

// A Transformer with seeded random parameters (constructors leave some uninitialized).
Transformer RandomTransformer(int64_t width, int64_t layers, int64_t heads,
                              bool quick_gelu) {
  Transformer transformer(width, layers, heads, /*mlp_width=*/4 * width, quick_gelu);
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

// With packing on, all four projections of every bf16 block run on weights laid out
// once (Bf16Linear), in forward() and in ForwardAt(): the same result as LibTorch's,
// and blind to later writes to the module's weights until packed again.
TEST(Bf16PackingTest, EveryProjectionRunsOnTheWeightsPackedOnce) {
  if (!Bf16Linear::Available()) GTEST_SKIP() << "no Bf16Linear in this build or CPU";
  torch::manual_seed(31);
  const torch::InferenceMode inference;
  Transformer transformer = RandomTransformer(64, 2, 4, true);
  transformer->to(torch::kBFloat16);
  const torch::Tensor x = torch::randn({3, 50, 64}).to(torch::kBFloat16);
  const torch::Tensor mask = CausalMask(50).to(torch::kBFloat16);
  const torch::Tensor positions = torch::tensor({49, 0, 17}, torch::kLong);
  const auto expect_close = [](const torch::Tensor& got, const torch::Tensor& want) {
    const torch::Tensor w = want.to(torch::kFloat);
    // bf16 roundings, each up to 2^-8 of a value, add up through the layers: within 2%
    // of each value plus 5% of their root mean square.
    const double rms = w.pow(2).mean().sqrt().item<double>();
    EXPECT_TRUE((got.to(torch::kFloat) - w)
                    .abs()
                    .le(w.abs() * 0.02 + 0.05 * rms)
                    .all()
                    .item<bool>());
  };
  const torch::Tensor libtorch = transformer->forward(x, mask);
  const torch::Tensor libtorch_at = transformer->ForwardAt(x, positions, mask);
  transformer->SetProducts(/*min_rows=*/-1, /*bf16_packing=*/true);
  const torch::Tensor packed = transformer->forward(x, mask);
  const torch::Tensor packed_at = transformer->ForwardAt(x, positions, mask);
  expect_close(packed, libtorch);
  expect_close(packed_at, libtorch_at);

  // One projection at a time: zeroed in the module, it still counts while packed.
  for (const auto& block : *transformer->resblocks) {
    auto* b = block->as<ResidualAttentionBlock>();
    for (torch::Tensor* weight : {&b->attn->in_proj_weight, &b->attn->out_proj->weight,
                                  &b->mlp->c_fc->weight, &b->mlp->c_proj->weight}) {
      const torch::Tensor saved = weight->clone();
      weight->zero_();
      EXPECT_TRUE(torch::equal(transformer->forward(x, mask), packed));
      EXPECT_TRUE(torch::equal(transformer->ForwardAt(x, positions, mask), packed_at));
      weight->copy_(saved);
    }
  }
  transformer->SetProducts(/*min_rows=*/-1, /*bf16_packing=*/false);
  transformer->resblocks->ptr<ResidualAttentionBlockImpl>(0)->mlp->c_fc->weight.zero_();
  EXPECT_FALSE(torch::equal(transformer->forward(x, mask), packed));
}

// Attend runs bf16 scores through LibTorch's bf16 softmax because it sums and divides
// in fp32 and rounds only its output: the fp32 softmax rounded to bf16, but for one
// ulp on a few weights. A LibTorch that summed in bf16 would miss by far more.
TEST(AttentionTest, Bf16SoftmaxIsTheFp32SoftmaxRounded) {
  torch::manual_seed(33);
  const torch::InferenceMode inference;
  const torch::Tensor scores =
      (torch::randn({8, 12, 77, 77}) * 4 + CausalMask(77)).to(torch::kBFloat16);
  const torch::Tensor got = torch::softmax(scores, -1).to(torch::kFloat);
  const torch::Tensor want =
      torch::softmax(scores, -1, torch::kFloat).to(torch::kBFloat16).to(torch::kFloat);
  // bf16 has 8 significant bits: one ulp is at most 2^-7 of the value.
  EXPECT_TRUE((got - want).abs().le(want.abs() * std::ldexp(1.0, -7)).all().item<bool>());
  EXPECT_LT(got.ne(want).to(torch::kFloat).mean().item<float>(), 1e-4);
}

// x W^T + b as Python's F.linear computes it (at::linear, the bias added inside the
// product). LibTorch C++'s nn::Linear::forward adds it afterwards to [N, L, w] inputs,
// a second bf16 rounding: the layers call at::linear.
torch::Tensor Dense(const torch::nn::Linear& linear, const torch::Tensor& x) {
  return torch::linear(x, linear->weight, linear->bias);
}

// bf16 QuickGELU runs in fp32 and rounds once (QuickGeluInPlace), where LibTorch's
// h * sigmoid(1.702 h) rounds each of its three steps to bf16; fp32 stays on those
// LibTorch ops, the reference's own, to the last bit.
TEST(MlpTest, Bf16QuickGeluRoundsOnceAndFp32StaysOnLibTorch) {
  torch::manual_seed(29);
  const torch::InferenceMode inference;
  Mlp mlp(64, 256, /*quick_gelu=*/true);
  for (torch::Tensor& p : mlp->parameters()) p.normal_(0.0, 0.3);
  const torch::Tensor x = torch::randn({4, 50, 64});
  const auto libtorch = [&](const torch::Tensor& in) {
    const torch::Tensor h = Dense(mlp->c_fc, in);
    return Dense(mlp->c_proj, h * torch::sigmoid(1.702 * h));
  };
  // This process's first fp32 product rounded differently from every later one when
  // this test ran alone (cause not pinned down): one runs before the comparison.
  Dense(mlp->c_fc, x);
  EXPECT_TRUE(torch::equal(mlp->forward(x), libtorch(x)));

  mlp->to(torch::kBFloat16);
  const torch::Tensor xb = x.to(torch::kBFloat16);
  const torch::Tensor h = Dense(mlp->c_fc, xb);
  if (!QuickGeluTakes(h)) GTEST_SKIP() << "no AVX-512 on this CPU";
  // 1.702 h in fp32, then the rest in double, rounded once to bf16.
  const torch::Tensor z = (h.to(torch::kFloat) * 1.702f).to(torch::kDouble);
  const torch::Tensor once =
      (h.to(torch::kDouble) * torch::sigmoid(z)).to(torch::kBFloat16);
  const torch::Tensor got = mlp->forward(xb);
  EXPECT_TRUE(torch::equal(got, Dense(mlp->c_proj, once)));
  EXPECT_FALSE(torch::equal(got, libtorch(xb)));
}

// Packed, the bf16 MLP runs its activation inside c_fc's product (on its fp32 sums,
// rounded once), with no pass of its own: exactly the two packed products chained.
TEST(MlpTest, PackedBf16FusesTheActivationIntoTheFirstProduct) {
  torch::manual_seed(30);
  const torch::InferenceMode inference;
  for (const bool quick_gelu : {true, false}) {
    SCOPED_TRACE(quick_gelu);
    const LinearActivation activation =
        quick_gelu ? LinearActivation::kQuickGelu : LinearActivation::kGelu;
    if (!Bf16Linear::Available(activation)) GTEST_SKIP() << "not fused on this CPU";
    Mlp mlp(64, 256, quick_gelu);
    for (torch::Tensor& p : mlp->parameters()) p.normal_(0.0, 0.3);
    mlp->to(torch::kBFloat16);
    const torch::Tensor x = torch::randn({4, 50, 64}).to(torch::kBFloat16);
    const torch::Tensor unpacked = mlp->forward(x);
    mlp->SetBf16Packing(true);
    const torch::Tensor got = mlp->forward(x);
    const Bf16Linear fc(mlp->c_fc->weight, mlp->c_fc->bias, activation);
    const Bf16Linear proj(mlp->c_proj->weight, mlp->c_proj->bias);
    EXPECT_TRUE(torch::equal(got, proj.Apply(fc.Apply(x))));
    // The activation's own pass rounds the product first: not the same bits, and
    // further from the MLP computed in double from the same bf16 weights.
    EXPECT_FALSE(torch::equal(got, unpacked));
    const auto dense = [](const torch::nn::Linear& linear, const torch::Tensor& in) {
      return torch::linear(in, linear->weight.to(torch::kDouble),
                           linear->bias.to(torch::kDouble));
    };
    const torch::Tensor h = dense(mlp->c_fc, x.to(torch::kDouble));
    const torch::Tensor exact =
        dense(mlp->c_proj, quick_gelu ? h * torch::sigmoid(1.702 * h) : torch::gelu(h));
    const auto rms = [](const torch::Tensor& t) {
      return t.to(torch::kDouble).pow(2).mean().sqrt().item<double>();
    };
    const double fused_error = rms(got.to(torch::kDouble) - exact);
    const double unfused_error = rms(unpacked.to(torch::kDouble) - exact);
    EXPECT_LT(fused_error, unfused_error);
    EXPECT_LT(fused_error, 0.01 * rms(exact));
  }
}

TEST(Int8LayersTest, BlocksSwitchToInt8AndBackToTheExactFp32Result) {
  if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    GTEST_SKIP() << "no int8 dot products on this CPU";
  }
  torch::manual_seed(24);
  const torch::InferenceMode inference;
  Transformer transformer = RandomTransformer(32, 2, 4, true);
  const torch::Tensor x = torch::randn({2, 7, 32});
  const torch::Tensor fp32 = transformer->forward(x);
  transformer->SetProducts(/*min_rows=*/0, /*bf16_packing=*/false);
  const torch::Tensor int8 = transformer->forward(x);
  const torch::Tensor positions = torch::tensor({int64_t{6}, int64_t{2}});
  const torch::Tensor int8_at = transformer->ForwardAt(x, positions);
  transformer->SetProducts(/*min_rows=*/-1, /*bf16_packing=*/false);
  EXPECT_TRUE(torch::equal(transformer->forward(x), fp32));
  EXPECT_GT((int8 - fp32).abs().max().item<float>(), 1e-4) << "int8 did not run";
  EXPECT_GE(
      torch::cosine_similarity(int8.flatten(1), fp32.flatten(1), 1).min().item<float>(),
      0.999);
  // ForwardAt's out_proj and MLP quantize their few rows with scales of their own, so
  // it agrees with the full forward to int8's precision, not exactly.
  const torch::Tensor rows = int8.index({torch::arange(2), positions});
  EXPECT_GE(torch::cosine_similarity(int8_at, rows, 1).min().item<float>(), 0.999);
}

// Weights on int8's grid: each row a random scale times integers in [-127, 127], one
// of them +-127. Rounding them to int8 is exact, and stays exact when the row is
// multiplied by any factor first, so a folded factor cannot move a weight's integer.
torch::Tensor GridWeights(int64_t rows, int64_t cols) {
  torch::Tensor steps = torch::randint(-127, 128, {rows, cols}).to(torch::kFloat);
  steps.select(1, 0).copy_(torch::where(torch::rand({rows}) < 0.5, -127.0, 127.0));
  return steps * (torch::rand({rows, 1}) * 0.004 + 0.001);
}

// got against want, the same int8 products computed without a folded factor. The
// inputs are quantized at run time, so a value on a rounding boundary may round the
// other way on one path and move its row by one rounding step; all else agrees to
// fp32's rounding. `rounding` is int8's own error, to show the products ran.
void ExpectSameInt8Result(const torch::Tensor& got, const torch::Tensor& want,
                          const torch::Tensor& exact) {
  const float scale = want.abs().max().item<float>();
  const torch::Tensor error = (got - want).abs().flatten();
  const float rounding = (want - exact).abs().max().item<float>();
  EXPECT_GT(rounding, 1e-3 * scale) << "int8 did not round";
  EXPECT_LT(torch::quantile(error, 0.9).item<float>(), 1e-5 * scale)
      << "int8's own rounding moves it by " << rounding;
  EXPECT_LT(error.max().item<float>(), 0.1 * rounding);
}

// The int8 MLP runs its activation inside c_fc's product: the result of the two
// products with the activation between them, for QuickGELU and for exact GELU.
TEST(Int8LayersTest, MlpFusesItsActivationIntoItsProductWithoutChangingTheResult) {
  if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    GTEST_SKIP() << "no int8 dot products on this CPU";
  }
  torch::manual_seed(28);
  const torch::InferenceMode inference;
  for (const bool quick_gelu : {true, false}) {
    SCOPED_TRACE(::testing::Message() << "quick_gelu " << quick_gelu);
    Mlp mlp(64, 256, quick_gelu);
    mlp->c_fc->weight.copy_(GridWeights(256, 64));
    mlp->c_fc->bias.normal_(0.0, 0.2);
    mlp->c_proj->weight.copy_(GridWeights(64, 256));
    mlp->c_proj->bias.normal_(0.0, 0.2);
    const torch::Tensor x = torch::randn({3, 11, 64});
    const auto activation = [&](const torch::Tensor& h) {
      return quick_gelu ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
    };
    const Int8Linear fc(mlp->c_fc->weight, mlp->c_fc->bias);
    const Int8Linear proj(mlp->c_proj->weight, mlp->c_proj->bias);
    const torch::Tensor want =
        *proj.Apply(activation(*fc.Apply(x, torch::kFloat)), torch::kFloat);
    const torch::Tensor exact = mlp->c_proj(activation(mlp->c_fc(x)));
    mlp->SetInt8(0);
    ASSERT_TRUE(mlp->TakesInt8(x));
    ExpectSameInt8Result(mlp->forward(x), want, exact);
  }
}

// An input no int8 scale represents (here an infinity) runs on the layers' own
// weights, as if int8 were off: the same values, the same NaNs.
TEST(Int8LayersTest, InputsThatAreNotFiniteRunUnquantized) {
  torch::manual_seed(30);
  const torch::InferenceMode inference;
  Transformer transformer = RandomTransformer(32, 2, 4, true);
  torch::Tensor x = torch::randn({2, 7, 32});
  x[1][3][5] = std::numeric_limits<float>::infinity();
  const torch::Tensor fp32 = transformer->forward(x);
  ASSERT_TRUE(fp32.isnan().any().item<bool>());
  transformer->SetProducts(/*min_rows=*/0, /*bf16_packing=*/false);
  const torch::Tensor int8 = transformer->forward(x);
  EXPECT_TRUE(torch::equal(int8.isnan(), fp32.isnan()));
  EXPECT_TRUE(torch::equal(torch::nan_to_num(int8), torch::nan_to_num(fp32)));
}

// SelfAttention packs its query rows divided by sqrt(hd) and skips that division in
// Attend: the result of packing in_proj plainly and dividing the queries, in forward
// and in ForwardAt. Scores of a few units, where a missing or doubled division would
// change the weights.
TEST(Int8LayersTest, AttentionFoldsItsQueryScaleIntoItsPackingWithoutChangingTheResult) {
  if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    GTEST_SKIP() << "no int8 dot products on this CPU";
  }
  torch::manual_seed(29);
  const torch::InferenceMode inference;
  const int64_t n = 3, l = 9, width = 64, heads = 4, hd = width / heads;
  SelfAttention attention(width, heads);
  attention->in_proj_weight.copy_(GridWeights(3 * width, width));
  attention->in_proj_bias.normal_(0.0, 0.2);
  attention->out_proj->weight.copy_(GridWeights(width, width));
  attention->out_proj->bias.normal_(0.0, 0.2);
  const torch::Tensor x = torch::randn({n, l, width});
  const torch::Tensor mask = CausalMask(l);
  const Int8Linear in_linear(attention->in_proj_weight, attention->in_proj_bias);
  const Int8Linear out_linear(attention->out_proj->weight, attention->out_proj->bias);
  const auto in_proj = [&](const torch::Tensor& t) {
    return *in_linear.Apply(t, torch::kFloat);
  };
  const auto out_proj = [&](const torch::Tensor& t) {
    return *out_linear.Apply(t, torch::kFloat);
  };
  // softmax(q k^T / sqrt(hd) + mask) v, heads merged: [N, L, w].
  const auto merged = [&](bool int8) {
    // [N, L, 3, H, hd] -> [3, N, H, L, hd]
    const torch::Tensor qkv =
        (int8 ? in_proj(x)
              : torch::linear(x, attention->in_proj_weight, attention->in_proj_bias))
            .view({n, l, 3, heads, hd})
            .permute({2, 0, 3, 1, 4});
    const torch::Tensor scores =
        torch::matmul(qkv[0] / std::sqrt(static_cast<double>(hd)),
                      qkv[1].transpose(-2, -1)) +
        mask;
    return torch::matmul(torch::softmax(scores, -1), qkv[2])
        .transpose(1, 2)
        .reshape({n, l, width});
  };
  const torch::Tensor want = out_proj(merged(true));
  const torch::Tensor exact = attention->out_proj(merged(false));
  attention->SetInt8(0);
  ASSERT_TRUE(attention->TakesInt8(x));
  ExpectSameInt8Result(attention->forward(x, mask), want, exact);
  // ForwardAt: the same queries' rows, then out_proj on those 3 rows alone (above the
  // threshold of 0, so in int8 with a scale of their own).
  const torch::Tensor positions = torch::tensor({int64_t{8}, int64_t{0}, int64_t{4}});
  const torch::Tensor rows = torch::arange(n);
  ExpectSameInt8Result(attention->ForwardAt(x, positions, mask).squeeze(1),
                       out_proj(merged(true).index({rows, positions})),
                       exact.index({rows, positions}));
}

// Products of fewer rows than the threshold keep the layer's own weights: 2 x 7 = 14
// rows in, so a threshold of 15 leaves every layer of this input in fp32 and one of 14
// does not.
TEST(Int8LayersTest, ProductsBelowTheRowThresholdStayExact) {
  torch::manual_seed(26);
  const torch::InferenceMode inference;
  Transformer transformer = RandomTransformer(32, 2, 4, false);
  const torch::Tensor x = torch::randn({2, 7, 32});
  const torch::Tensor fp32 = transformer->forward(x);
  transformer->SetProducts(/*min_rows=*/15, /*bf16_packing=*/false);
  EXPECT_TRUE(torch::equal(transformer->forward(x), fp32));
  transformer->SetProducts(/*min_rows=*/14, /*bf16_packing=*/false);
  EXPECT_FALSE(torch::equal(transformer->forward(x), fp32));
}

}  // namespace
}  // namespace clipserve
