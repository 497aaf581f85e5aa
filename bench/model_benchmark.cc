// The model alone, in process: CLIP towers with demo weights (random values, real
// cost), inputs already preprocessed, no server, no batching.
//
//   BM_ImageTower/model:M/batch:B/bf16:P    images/s through the image tower
//   BM_TextTower/model:M/batch:B/bf16:P/tokens:T
//       texts/s through the text tower, every text T tokens long (start and end
//       included) and the batch padded to T: 77 is what a server padding to the
//       context length pays, 20 a typical caption with padding to the longest.
//
//   BM_Matmul/bf16:P   FLOP/s of the product that dominates a ViT-B-32 batch of 32
//   BM_MatmulBf16Packed   the same in bf16 on Bf16Linear, the towers' bf16 kernel
//
// M: 0 = ViT-B-32, 1 = ViT-B-16, 2 = RN50, 3 = ViT-L-14. P: 0 = fp32, 1 = bf16.
// Threads: one LibTorch intra-op thread per CPU this process may use, as
// clip_server's default (LibTorch's own default is the physical core count, 1 on a
// 2-vCPU VM).
//
// With a CUDA device (a CUDA LibTorch and a GPU; scripts/gpu-check.sh), the same
// towers also run on cuda:0 as BM_ImageTowerCuda/model:M/batch:B/fp16:H and
// BM_TextTowerCuda/model:0/batch:B/fp16:H/tokens:T (H: 0 = bf16, 1 = fp16), inputs
// already on the GPU, each iteration ending with the features back on the host (so
// the timing covers every kernel).

#include <sched.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "server/model/bf16_linear.h"
#include "server/model/layers.h"
#include "server/model/model_loader.h"

namespace clipserve {
namespace {

constexpr const char* kPresets[] = {"ViT-B-32", "ViT-B-16", "RN50", "ViT-L-14"};

// One LibTorch intra-op thread per CPU this process may use, set once.
void UseEveryCpu() {
  static const bool threads_set = [] {
    cpu_set_t set;
    const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    at::set_num_threads(cpus);
    return true;
  }();
  (void)threads_set;
}

// One loaded model per (preset, precision, device), kept for the whole run.
// The model of `preset` in `precision`, loaded once; else why it could not be.
absl::StatusOr<ClipModel*> GetModel(int preset, Precision precision, bool cuda = false) {
  UseEveryCpu();
  using Key = std::tuple<int, Precision, bool>;
  static auto* const models = new std::map<Key, LoadedModel>();
  const Key key{preset, precision, cuda};
  auto it = models->find(key);
  if (it == models->end()) {
    ModelLoadOptions options;
    options.precision = precision;
    // As clip_server runs int8: the rest as --precision=auto would.
    options.int8.bf16 = CpuInfoPrefersBf16(ReadProcCpuinfo());
    if (cuda) options.device = torch::Device(torch::kCUDA, 0);
    auto loaded = LoadModel(std::string("demo:") + kPresets[preset], options);
    if (!loaded.ok()) return loaded.status();
    it = models->emplace(key, *std::move(loaded)).first;
  }
  return it->second.model.get();
}

// Sets `model`, or skips the benchmark: "not on this machine" where the build or CPU
// lacks the precision's kernels (int8 without oneDNN's) or the device, for the report
// to list; any other failure is the benchmark's own.
bool LoadOrSkip(benchmark::State& state, int preset, Precision precision, bool cuda,
                ClipModel** model) {
  const absl::StatusOr<ClipModel*> loaded = GetModel(preset, precision, cuda);
  if (loaded.ok()) {
    *model = *loaded;
    return true;
  }
  const absl::StatusCode code = loaded.status().code();
  const std::string message = absl::StrCat(
      code == absl::StatusCode::kUnimplemented || code == absl::StatusCode::kUnavailable
          ? "not on this machine: "
          : "model failed to load: ",
      loaded.status().message());
  state.SkipWithError(message.c_str());
  return false;
}

// Runs `encode(input)` (one tower on a batch of `batch` items) on a new input from
// `make()` each iteration, made with the timer paused: served batches are each new to
// the kernels, which may keep what they prepared for an input (LibTorch's quantized
// ops did, per input scale), so repeated inputs could time only that cache. One untimed
// run first pays for kernel selection and compilation and for memory the allocator has
// not handed out yet.
template <typename Make, typename Encode>
void TimeTower(benchmark::State& state, int preset, int64_t batch, Make make,
               Encode encode) {
  if (!encode(make()).ok()) {
    state.SkipWithError("warm-up failed");
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    const torch::Tensor input = make();
    state.ResumeTiming();
    absl::StatusOr<torch::Tensor> features = encode(input);
    if (!features.ok()) {
      state.SkipWithError(std::string(features.status().message()).c_str());
      return;
    }
    // On a GPU the copy to the host waits for every kernel of the batch.
    const torch::Tensor host = features->to(torch::kCPU);
    benchmark::DoNotOptimize(host.data_ptr<float>());
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetLabel(kPresets[preset]);
}

void ImageTower(benchmark::State& state, Precision precision, bool cuda) {
  torch::NoGradGuard no_grad;
  const int preset = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  ClipModel* model = nullptr;
  if (!LoadOrSkip(state, preset, precision, cuda, &model)) return;
  const int64_t size = model->config().vision.image_size;
  torch::manual_seed(0);
  TimeTower(
      state, preset, batch,
      [&] {
        // Made where the model runs: on a GPU, a batch of 256 made on the CPU and
        // copied over took longer (untimed, but device time) than the model's run.
        return torch::randn({batch, 3, size, size},
                            torch::TensorOptions().device(model->device()));
      },
      [&](const torch::Tensor& images) {
        return model->EncodeImage(images, /*normalize=*/true);
      });
}

void TextTower(benchmark::State& state, Precision precision, bool cuda) {
  torch::NoGradGuard no_grad;
  const int preset = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  const int64_t tokens = state.range(3);
  ClipModel* model = nullptr;
  if (!LoadOrSkip(state, preset, precision, cuda, &model)) return;
  const int64_t vocab = model->config().text.vocab_size;
  torch::manual_seed(0);
  TimeTower(
      state, preset, batch,
      [&] {
        torch::Tensor ids = torch::randint(
            1, vocab - 2, {batch, tokens},
            torch::TensorOptions().dtype(torch::kLong).device(model->device()));
        ids.index_put_({torch::indexing::Slice(), 0}, vocab - 2);           // start
        ids.index_put_({torch::indexing::Slice(), tokens - 1}, vocab - 1);  // end
        return ids;
      },
      [&](const torch::Tensor& ids) {
        return model->EncodeText(ids, /*normalize=*/true);
      });
}

// The roofline: one matrix product of the shape that dominates a ViT-B-32 batch of 32
// (32 x 50 tokens by width 768, into the MLP's 3072), through the same LibTorch
// kernels the towers use. items/s are floating-point operations per second.
void BM_Matmul(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  UseEveryCpu();  // as the towers do
  const bool bf16 = state.range(0) != 0;
  const int64_t m = 32 * 50, k = 768, n = 3072;
  torch::manual_seed(0);
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  const torch::Tensor a = torch::randn({m, k}).to(dtype);
  const torch::Tensor w = torch::randn({n, k}).to(dtype);
  torch::Tensor out = torch::nn::functional::linear(a, w);  // warm-up
  for (auto _ : state) {
    out = torch::nn::functional::linear(a, w);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 2 * m * n * k);
  state.SetLabel(bf16 ? "bf16 FLOP/s" : "fp32 FLOP/s");
}

// The same bf16 product on Bf16Linear (its weight laid out once), as the towers run
// their transformer products in bf16 where the build has it.
void BM_MatmulBf16Packed(benchmark::State& state) {
  const torch::InferenceMode inference;
  UseEveryCpu();
  const int64_t m = 32 * 50, k = 768, n = 3072;
  torch::manual_seed(0);
  if (!Bf16Linear::Available()) {
    state.SkipWithError("not on this machine: no Bf16Linear in this build or CPU");
    return;
  }
  const torch::Tensor a = torch::randn({m, k}).to(torch::kBFloat16);
  const Bf16Linear linear(torch::randn({n, k}), torch::Tensor());
  torch::Tensor out = linear.Apply(a);  // warm-up
  for (auto _ : state) {
    out = linear.Apply(a);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 2 * m * n * k);
  state.SetLabel("bf16 FLOP/s");
}

// The same product through Int8Linear, each call on a new input (as in a tower, where
// every batch brings its own scale), its quantization included, fp32 in and out:
// items/s count the fp32-equivalent operations.
void BM_MatmulInt8(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  UseEveryCpu();
  const int64_t m = 32 * 50, k = 768, n = 3072;
  torch::manual_seed(0);
  if (!CheckInt8Kernel().ok()) {
    state.SkipWithError("not on this machine: no int8 kernel in this build");
    return;
  }
  const Int8Linear linear(torch::randn({n, k}), torch::Tensor());
  torch::Tensor out = *linear.Apply(torch::randn({m, k}), torch::kFloat);  // warm-up
  for (auto _ : state) {
    state.PauseTiming();
    const torch::Tensor input = torch::randn({m, k});
    state.ResumeTiming();
    out = *linear.Apply(input, torch::kFloat);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 2 * m * n * k);
  state.SetLabel("int8 FLOP/s");
}

Precision CpuPrecision(const benchmark::State& state) {
  return state.range(2) != 0 ? Precision::kBFloat16 : Precision::kFloat32;
}
Precision GpuPrecision(const benchmark::State& state) {
  return state.range(2) != 0 ? Precision::kFloat16 : Precision::kBFloat16;
}

void BM_ImageTower(benchmark::State& state) {
  ImageTower(state, CpuPrecision(state), false);
}
void BM_TextTower(benchmark::State& state) {
  TextTower(state, CpuPrecision(state), false);
}
// int8 (Precision::kInt8): the "bf16" argument of the rows above is absent; the
// arguments are otherwise theirs, so the rows line up with them.
void BM_ImageTowerInt8(benchmark::State& state) {
  ImageTower(state, Precision::kInt8, false);
}
void BM_TextTowerInt8(benchmark::State& state) {
  TextTower(state, Precision::kInt8, false);
}
void BM_ImageTowerCuda(benchmark::State& state) {
  ImageTower(state, GpuPrecision(state), true);
}
void BM_TextTowerCuda(benchmark::State& state) {
  TextTower(state, GpuPrecision(state), true);
}

BENCHMARK(BM_ImageTower)
    ->ArgNames({"model", "batch", "bf16"})
    ->ArgsProduct({{0, 1, 2}, {1, 8, 32, 64}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_ImageTowerInt8)
    ->ArgNames({"model", "batch", "int8"})
    ->ArgsProduct({{0, 1, 2}, {1, 8, 32, 64}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_Matmul)
    ->ArgNames({"bf16"})
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_MatmulBf16Packed)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_MatmulInt8)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_TextTower)
    ->ArgNames({"model", "batch", "bf16", "tokens"})
    // ViT-B-32, ViT-B-16 and RN50 share one text tower (width 512, 12 layers).
    ->ArgsProduct({{0}, {1, 8, 32, 64}, {0, 1}, {20, 77}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_TextTowerInt8)
    ->ArgNames({"model", "batch", "int8", "tokens"})
    ->ArgsProduct({{0}, {1, 8, 32, 64}, {1}, {20, 77}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The GPU runs, registered only when there is a GPU: ViT-B-32 and ViT-L-14 at batch
// 64 and 256 in bf16 and fp16, and the text tower at batch 256.
void RegisterCudaBenchmarks() {
  if (!torch::cuda::is_available()) return;
  benchmark::RegisterBenchmark("BM_ImageTowerCuda", BM_ImageTowerCuda)
      ->ArgNames({"model", "batch", "fp16"})
      ->ArgsProduct({{0, 3}, {64, 256}, {0, 1}})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_TextTowerCuda", BM_TextTowerCuda)
      ->ArgNames({"model", "batch", "fp16", "tokens"})
      ->ArgsProduct({{0}, {256}, {0, 1}, {20, 77}})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

}  // namespace
}  // namespace clipserve

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  clipserve::RegisterCudaBenchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
