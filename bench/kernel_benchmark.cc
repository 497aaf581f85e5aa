// clipserve's own CPU kernels against the LibTorch ops they replace, on the shapes of
// a ViT-B-32 image batch of 32 (50 tokens, width 768, 12 heads), bf16 activations.
//
//   BM_LayerNormForInt8/ours:O   a LayerNorm feeding an int8 product: its fp32 output
//       and the range the product quantizes with. O=0: LibTorch (x.float(),
//       layer_norm, aminmax); O=1: RowLayerNorm, one pass.
//   BM_Softmax/ours:O   attention weights, softmax over 50 bf16 scores in fp32. O=0:
//       LibTorch's bf16 softmax; O=1: RowSoftmax.
//   BM_QuickGelu/ours:O   the MLP's activation on its 3072-wide bf16 hidden rows.
//       O=0: LibTorch's h * sigmoid(1.702 h); O=1: QuickGeluInPlace (a fresh copy of
//       the input restored, untimed, before each call).
//   BM_Linear/rows:R/ours:O   the MLP's first product (width 768 into 3072, bias)
//       on R bf16 rows: 50 is a batch of one image, 1600 of 32. O=0: LibTorch's
//       linear, which hands oneDNN the weight in its plain layout to reorder on each
//       call; O=1: Bf16Linear, the weight laid out once.
//   BM_LinearQuickGelu/rows:R/fused:F   that product and its QuickGELU. F=0:
//       Bf16Linear, then QuickGeluInPlace, a pass of its own; F=1: Bf16Linear with
//       the activation fused into the product.
//
// Items are rows. One LibTorch intra-op thread per CPU this process may use, as
// clip_server's default.

#include <sched.h>
#include <torch/torch.h>

#include <optional>

#include "benchmark/benchmark.h"
#include "server/model/bf16_linear.h"
#include "server/model/quick_gelu.h"
#include "server/model/row_layer_norm.h"
#include "server/model/row_softmax.h"

namespace clipserve {
namespace {

void UseEveryCpu() {
  cpu_set_t set;
  at::set_num_threads(sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1);
}

void BM_LayerNormForInt8(benchmark::State& state) {
  UseEveryCpu();
  const torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({32, 50, 768}).to(torch::kBFloat16);
  const torch::Tensor w = torch::rand({768}).to(torch::kBFloat16);
  const torch::Tensor b = torch::randn({768}).to(torch::kBFloat16);
  const bool ours = state.range(0) == 1;
  if (ours && !RowLayerNormTakes(x, w, b)) {
    state.SkipWithError("not on this machine: RowLayerNorm needs AVX-512");
    return;
  }
  for (auto _ : state) {
    if (ours) {
      const NormalizedRows n = RowLayerNorm(x, w, b, 1e-5, torch::kFloat);
      benchmark::DoNotOptimize(n.range);
    } else {
      const torch::Tensor y = torch::layer_norm(x.to(torch::kFloat), {768},
                                                w.to(torch::kFloat), b.to(torch::kFloat));
      const auto [lo, hi] = torch::aminmax(y);
      benchmark::DoNotOptimize(lo.item<float>() + hi.item<float>());
    }
  }
  state.SetItemsProcessed(state.iterations() * 32 * 50);
  state.SetLabel(ours ? "RowLayerNorm" : "LibTorch");
}
BENCHMARK(BM_LayerNormForInt8)->ArgName("ours")->Arg(0)->Arg(1)->UseRealTime();

void BM_Softmax(benchmark::State& state) {
  UseEveryCpu();
  const torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const torch::Tensor scores = (torch::randn({32, 12, 50, 50}) * 4).to(torch::kBFloat16);
  const bool ours = state.range(0) == 1;
  if (ours && !RowSoftmaxTakes(scores)) {
    state.SkipWithError("not on this machine: RowSoftmax needs AVX-512");
    return;
  }
  for (auto _ : state) {
    const torch::Tensor weights = ours ? RowSoftmax(scores) : torch::softmax(scores, -1);
    benchmark::DoNotOptimize(weights.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 32 * 12 * 50);
  state.SetLabel(ours ? "RowSoftmax" : "LibTorch");
}
BENCHMARK(BM_Softmax)->ArgName("ours")->Arg(0)->Arg(1)->UseRealTime();

void BM_QuickGelu(benchmark::State& state) {
  UseEveryCpu();
  const torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const torch::Tensor h = (torch::randn({32 * 50, 3072}) * 2).to(torch::kBFloat16);
  torch::Tensor work = h.clone();
  const bool ours = state.range(0) == 1;
  if (ours && !QuickGeluTakes(work)) {
    state.SkipWithError("not on this machine: QuickGeluInPlace needs AVX-512");
    return;
  }
  for (auto _ : state) {
    if (ours) {
      state.PauseTiming();
      work.copy_(h);
      state.ResumeTiming();
      QuickGeluInPlace(work);
      benchmark::DoNotOptimize(work.data_ptr());
    } else {
      const torch::Tensor y = h * torch::sigmoid(kQuickGeluSlope * h);
      benchmark::DoNotOptimize(y.data_ptr());
    }
  }
  state.SetItemsProcessed(state.iterations() * 32 * 50);
  state.SetLabel(ours ? "QuickGeluInPlace" : "LibTorch");
}
BENCHMARK(BM_QuickGelu)->ArgName("ours")->Arg(0)->Arg(1)->UseRealTime();

// The MLP's first product (768 into 3072, with a bias) and `rows` bf16 rows for it.
struct MlpFirstProduct {
  torch::Tensor w, b, x;
};

MlpFirstProduct MakeMlpFirstProduct(int64_t rows) {
  torch::manual_seed(0);
  // Braced: the three draws happen in this order.
  return {torch::randn({3072, 768}).to(torch::kBFloat16),
          torch::randn({3072}).to(torch::kBFloat16),
          torch::randn({rows, 768}).to(torch::kBFloat16)};
}

void BM_Linear(benchmark::State& state) {
  UseEveryCpu();
  const torch::InferenceMode inference;
  const int64_t rows = state.range(0);
  const bool ours = state.range(1) == 1;
  const auto [w, b, x] = MakeMlpFirstProduct(rows);
  if (ours && !Bf16Linear::Available()) {
    state.SkipWithError("not on this machine: no Bf16Linear in this build or CPU");
    return;
  }
  const std::optional<Bf16Linear> packed =
      ours ? std::optional<Bf16Linear>(Bf16Linear(w, b)) : std::nullopt;
  for (auto _ : state) {
    const torch::Tensor y = ours ? packed->Apply(x) : torch::linear(x, w, b);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * rows);
  state.SetLabel(ours ? "Bf16Linear" : "LibTorch");
}
BENCHMARK(BM_Linear)
    ->ArgNames({"rows", "ours"})
    ->ArgsProduct({{50, 1600}, {0, 1}})
    ->UseRealTime();

void BM_LinearQuickGelu(benchmark::State& state) {
  UseEveryCpu();
  const torch::InferenceMode inference;
  const int64_t rows = state.range(0);
  const bool fused = state.range(1) == 1;
  const auto [w, b, x] = MakeMlpFirstProduct(rows);
  if (!Bf16Linear::Available(LinearActivation::kQuickGelu)) {
    state.SkipWithError("not on this machine: no Bf16Linear in this build or CPU");
    return;
  }
  const Bf16Linear linear(w, b,
                          fused ? LinearActivation::kQuickGelu : LinearActivation::kNone);
  for (auto _ : state) {
    torch::Tensor y = linear.Apply(x);
    if (!fused) QuickGeluInPlace(y);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * rows);
  state.SetLabel(fused ? "fused" : "Bf16Linear, then QuickGeluInPlace");
}
BENCHMARK(BM_LinearQuickGelu)
    ->ArgNames({"rows", "fused"})
    ->ArgsProduct({{50, 1600}, {0, 1}})
    ->UseRealTime();

}  // namespace
}  // namespace clipserve

BENCHMARK_MAIN();
