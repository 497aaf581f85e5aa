// Int8Linear computes what its rounding says: the weight rounded per row, the input
// per call, the product exact, then the scales, the bias and the activation, for any
// row count, in the dtype asked for, from any thread, on each kernel this build has.

#include "server/model/int8_linear.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/model/model_loader.h"

namespace clipserve {
namespace {

// What Int8Linear must compute, in double: the weight rounded to int8 with one
// symmetric scale per row, the input rounded to uint8 with one affine scale for the
// whole tensor (its range widened to hold 0, the zero point rounded to an integer),
// their product exact, then the bias.
torch::Tensor Int8Reference(const torch::Tensor& x, const torch::Tensor& w,
                            const torch::Tensor& b) {
  const torch::Tensor wd = w.to(torch::kDouble);
  const torch::Tensor w_scale = wd.abs().amax(1, /*keepdim=*/true) / 127.0;
  const torch::Tensor w_rounded = (wd / w_scale).round().clamp(-128, 127) * w_scale;
  const double lo = std::min(x.min().item<double>(), 0.0);
  const double hi = std::max(x.max().item<double>(), 0.0);
  const double scale = static_cast<float>((hi - lo) / 255.0);
  const double zero_point = std::clamp(std::nearbyint(-lo / scale), 0.0, 255.0);
  const torch::Tensor xd = x.to(torch::kDouble);
  const torch::Tensor x_rounded =
      ((xd / scale).round() + zero_point).clamp(0, 255).sub(zero_point) * scale;
  return torch::matmul(x_rounded, w_rounded.t()) + b.to(torch::kDouble);
}

torch::Tensor QuickGelu(const torch::Tensor& h) { return h * torch::sigmoid(1.702 * h); }

class Int8LinearTest : public ::testing::TestWithParam<Int8Kernel> {
 protected:
  void SetUp() override {
    if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
      GTEST_SKIP() << "no int8 dot products on this CPU";
    }
    if (GetParam() == Int8Kernel::kOneDnn && DefaultInt8Kernel() != Int8Kernel::kOneDnn) {
      GTEST_SKIP() << "built without oneDNN's headers";
    }
    ASSERT_TRUE(CheckInt8Kernel(GetParam()).ok()) << CheckInt8Kernel(GetParam());
  }

  Int8Linear Make(const torch::Tensor& w, const torch::Tensor& b,
                  LinearActivation activation = LinearActivation::kNone) const {
    return Int8Linear(w, b, activation, GetParam());
  }
};

INSTANTIATE_TEST_SUITE_P(Kernels, Int8LinearTest,
                         ::testing::Values(Int8Kernel::kOneDnn, Int8Kernel::kLibTorch),
                         [](const ::testing::TestParamInfo<Int8Kernel>& info) {
                           return info.param == Int8Kernel::kOneDnn ? "OneDnn"
                                                                    : "LibTorch";
                         });

// A build without oneDNN's headers says so, and runs on LibTorch's kernel.
TEST(Int8KernelTest, TheDefaultIsOneDnnWhereBuiltIn) {
#if CLIPSERVE_WITH_DNNL
  EXPECT_EQ(DefaultInt8Kernel(), Int8Kernel::kOneDnn);
#else
  EXPECT_EQ(DefaultInt8Kernel(), Int8Kernel::kLibTorch);
  EXPECT_EQ(CheckInt8Kernel(Int8Kernel::kOneDnn).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_THROW(Int8Linear(torch::ones({2, 2}), torch::Tensor(), LinearActivation::kNone,
                          Int8Kernel::kOneDnn),
               c10::Error);
#endif
}

// Row counts from one to a batch's worth (each compiles a product of its own), inputs
// centred and skewed (zero points near the middle and at the edge of the range).
TEST_P(Int8LinearTest, ComputesTheProductOfItsRoundedWeightAndInput) {
  torch::manual_seed(23);
  const torch::InferenceMode inference;
  const torch::Tensor w = torch::randn({48, 64}) * 0.1;
  const torch::Tensor b = torch::randn({48});
  const Int8Linear linear = Make(w, b);
  EXPECT_EQ(linear.in_features(), 64);
  EXPECT_EQ(linear.out_features(), 48);
  for (const int64_t rows : {1, 3, 15, 100}) {
    for (const double shift : {0.0, 2.5, -4.0}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, shift " << shift);
      const torch::Tensor x = torch::randn({rows, 1, 64}) + shift;
      const std::optional<torch::Tensor> got = linear.Apply(x, torch::kFloat);
      ASSERT_TRUE(got.has_value());
      ASSERT_EQ(got->sizes(), (std::vector<int64_t>{rows, 1, 48}));
      ASSERT_EQ(got->scalar_type(), torch::kFloat);
      const torch::Tensor want = Int8Reference(x, w, b);
      const torch::Tensor exact =
          torch::nn::functional::linear(x, w, b).to(torch::kDouble);
      const double rounding_error = (want - exact).abs().max().item<double>();
      const double error = (got->to(torch::kDouble) - want).abs().max().item<double>();
      // The int8 rounding moves outputs by ~1e-2; the kernel must agree with its
      // description to fp32's precision.
      EXPECT_GT(rounding_error, 1e-3);
      EXPECT_LT(error, 1e-4) << "the int8 rounding alone differs by " << rounding_error;
    }
  }
}

// The activation runs on the scaled product plus bias, inside the same call.
TEST_P(Int8LinearTest, AppliesItsActivationToTheProduct) {
  torch::manual_seed(31);
  const torch::InferenceMode inference;
  const torch::Tensor w = torch::randn({40, 32}) * 0.3;
  const torch::Tensor b = torch::randn({40});
  const torch::Tensor x = torch::randn({2, 9, 32});
  const torch::Tensor product = Int8Reference(x, w, b);
  const std::optional<torch::Tensor> quick =
      Make(w, b, LinearActivation::kQuickGelu).Apply(x, torch::kFloat);
  const std::optional<torch::Tensor> gelu =
      Make(w, b, LinearActivation::kGelu).Apply(x, torch::kFloat);
  ASSERT_TRUE(quick.has_value() && gelu.has_value());
  EXPECT_LT((quick->to(torch::kDouble) - QuickGelu(product)).abs().max().item<double>(),
            1e-4);
  EXPECT_LT((gelu->to(torch::kDouble) - torch::gelu(product)).abs().max().item<double>(),
            1e-4);
  // The two differ where it matters (QuickGELU is not GELU by about 2e-2).
  EXPECT_GT((*quick - *gelu).abs().max().item<float>(), 1e-3);
}

// bf16 in, bf16 out, and either into the other: the bf16 result is the fp32 one
// rounded.
TEST_P(Int8LinearTest, ReadsAndWritesFp32OrBf16) {
  torch::manual_seed(25);
  const torch::InferenceMode inference;
  const torch::Tensor w = torch::randn({16, 32});
  const Int8Linear linear = Make(w.to(torch::kBFloat16), torch::Tensor());
  const torch::Tensor x = torch::randn({4, 32}).to(torch::kBFloat16).to(torch::kFloat);
  const torch::Tensor fp32 = *linear.Apply(x, torch::kFloat);
  for (const torch::ScalarType in : {torch::kFloat, torch::kBFloat16}) {
    const torch::Tensor bf16 = *linear.Apply(x.to(in), torch::kBFloat16);
    EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
    // x is exact in bf16, so both inputs quantize alike.
    EXPECT_TRUE(torch::equal(bf16, fp32.to(torch::kBFloat16)));
    EXPECT_TRUE(torch::equal(*linear.Apply(x.to(in), torch::kFloat), fp32));
  }
  EXPECT_GE(
      torch::cosine_similarity(fp32, torch::matmul(x, w.t()), 1).min().item<float>(),
      0.999);
}

// No scale represents an infinity or a NaN, nor a bias in units of a vanishing one: the
// caller is told, not given garbage. All zeros is representable: the bias, through the
// activation.
TEST_P(Int8LinearTest, RefusesInputsThatAreNotFiniteAndTakesZeros) {
  const torch::InferenceMode inference;
  torch::manual_seed(32);
  const torch::Tensor b = torch::randn({8});
  const Int8Linear linear = Make(torch::randn({8, 16}), b, LinearActivation::kQuickGelu);
  for (const float bad :
       {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
        std::numeric_limits<float>::quiet_NaN()}) {
    torch::Tensor x = torch::randn({3, 16});
    x[2][7] = bad;
    EXPECT_FALSE(linear.Apply(x, torch::kFloat).has_value()) << bad;
  }
  // A range of 1e-36: its scale (times the rows' ~0.02) is so small that the bias in
  // units of it overflows, where the bias joins the integer sums (oneDNN's kernel).
  // LibTorch's adds it after the scale: the product is ~0, the bias what remains.
  const std::optional<torch::Tensor> tiny =
      linear.Apply(torch::randn({3, 16}) * 1e-36, torch::kFloat);
  if (GetParam() == Int8Kernel::kOneDnn) {
    EXPECT_FALSE(tiny.has_value());
  } else {
    ASSERT_TRUE(tiny.has_value());
    EXPECT_TRUE(torch::allclose(*tiny, QuickGelu(b).expand({3, 8}), 1e-5, 1e-6));
  }
  const std::optional<torch::Tensor> zeros =
      linear.Apply(torch::zeros({3, 16}), torch::kFloat);
  ASSERT_TRUE(zeros.has_value());
  EXPECT_TRUE(torch::allclose(*zeros, QuickGelu(b).expand({3, 8}), 1e-5, 1e-6));
}

// A caller that wrote x (RowLayerNorm) passes its range instead of a pass to find it:
// the same result. oneDNN's kernel quantizes with the range it is given; LibTorch's
// finds its own in its kernel, and takes from it only whether x is finite.
TEST_P(Int8LinearTest, AGivenRangeStandsInForThePassThatFindsIt) {
  const torch::InferenceMode inference;
  torch::manual_seed(33);
  const Int8Linear linear = Make(torch::randn({8, 16}), torch::randn({8}));
  const torch::Tensor x = torch::randn({5, 16}) + 0.5;
  const ValueRange range{x.min().item<float>(), x.max().item<float>()};
  const std::optional<torch::Tensor> found = linear.Apply(x, torch::kFloat);
  const std::optional<torch::Tensor> given = linear.Apply(x, torch::kFloat, range);
  ASSERT_TRUE(found.has_value() && given.has_value());
  EXPECT_TRUE(torch::equal(*found, *given));
  EXPECT_FALSE(linear
                   .Apply(x, torch::kFloat,
                          ValueRange{-std::numeric_limits<float>::infinity(), 1.0f})
                   .has_value());
  if (GetParam() == Int8Kernel::kOneDnn) {
    // A wider range: the scale of x with a row that spans it, to the last bit.
    torch::Tensor wide = torch::zeros({1, 16});
    wide[0][0] = range.min * 3;
    wide[0][1] = range.max * 3;
    const std::optional<torch::Tensor> with_row =
        linear.Apply(torch::cat({x, wide}), torch::kFloat);
    const std::optional<torch::Tensor> widened =
        linear.Apply(x, torch::kFloat, ValueRange{range.min * 3, range.max * 3});
    ASSERT_TRUE(with_row.has_value() && widened.has_value());
    EXPECT_TRUE(torch::equal(with_row->narrow(0, 0, 5), *widened));
    EXPECT_FALSE(torch::equal(*widened, *found));
  }
}

// The engine's workers may share a tower: concurrent calls on one packed weight give
// what each gives alone, across row counts compiled on first use by any thread.
TEST_P(Int8LinearTest, ConcurrentCallsGiveWhatEachGivesAlone) {
  torch::manual_seed(27);
  const Int8Linear linear =
      Make(torch::randn({256, 128}), torch::randn({256}), LinearActivation::kGelu);
  std::vector<torch::Tensor> inputs, alone;
  {
    const torch::InferenceMode inference;
    for (int i = 0; i < 4; ++i) {
      inputs.push_back(torch::randn({64 + 16 * i, 128}) * (i + 1));
      alone.push_back(*linear.Apply(inputs.back(), torch::kFloat));
    }
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const torch::InferenceMode inference;
      for (int round = 0; round < 25; ++round) {
        const int i = (t + round) % 4;
        // A row count no other call uses, compiled while others run.
        const torch::Tensor fresh = torch::randn({1 + t * 25 + round, 128});
        if (!linear.Apply(fresh, torch::kBFloat16).has_value()) ++mismatches;
        if (!torch::equal(*linear.Apply(inputs[i], torch::kFloat), alone[i]))
          ++mismatches;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace clipserve
