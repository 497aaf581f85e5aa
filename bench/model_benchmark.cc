// The model alone, in process: CLIP towers with demo weights (random values, real
// cost), inputs already preprocessed, no server, no batching.
//
//   BM_ImageTower/model:M/batch:B/bf16:P    images/s through the image tower
//   BM_TextTower/model:M/batch:B/bf16:P/tokens:T
//       texts/s through the text tower, every text T tokens long (start and end
//       included) and the batch padded to T: 77 is what a server padding to the
//       context length pays, 20 a typical caption with padding to the longest.
//
// M: 0 = ViT-B-32, 1 = ViT-B-16, 2 = RN50. P: 0 = fp32, 1 = bf16. Threads: one
// LibTorch intra-op thread per CPU this process may use, as clip_server's default
// (LibTorch's own default is the physical core count, 1 on a 2-vCPU VM).

#include <sched.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "benchmark/benchmark.h"
#include "server/model/model_loader.h"

namespace clipserve {
namespace {

constexpr const char* kPresets[] = {"ViT-B-32", "ViT-B-16", "RN50"};

// One loaded model per (preset, precision), kept for the whole run.
ClipModel* GetModel(int preset, bool bf16) {
  static const bool threads_set = [] {
    cpu_set_t set;
    const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    at::set_num_threads(cpus);
    return true;
  }();
  (void)threads_set;
  static auto* const models = new std::map<std::pair<int, bool>, LoadedModel>();
  auto it = models->find({preset, bf16});
  if (it == models->end()) {
    ModelLoadOptions options;
    options.precision = bf16 ? Precision::kBFloat16 : Precision::kFloat32;
    auto loaded = LoadModel(std::string("demo:") + kPresets[preset], options);
    if (!loaded.ok()) return nullptr;
    it = models->emplace(std::make_pair(preset, bf16), *std::move(loaded)).first;
  }
  return it->second.model.get();
}

// Runs `encode` (one tower on one prepared batch of `batch` items) once untimed, then
// in the timed loop. The untimed run pays for kernel selection and for memory the
// allocator has not handed out yet.
template <typename Encode>
void TimeTower(benchmark::State& state, int preset, int64_t batch, Encode encode) {
  if (!encode().ok()) {
    state.SkipWithError("warm-up failed");
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<torch::Tensor> features = encode();
    if (!features.ok()) {
      state.SkipWithError(std::string(features.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(features->data_ptr<float>());
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetLabel(kPresets[preset]);
}

void BM_ImageTower(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int preset = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  ClipModel* model = GetModel(preset, state.range(2) != 0);
  if (model == nullptr) {
    state.SkipWithError("model failed to load");
    return;
  }
  const int64_t size = model->config().vision.image_size;
  torch::manual_seed(0);
  const torch::Tensor images = torch::randn({batch, 3, size, size});
  TimeTower(state, preset, batch,
            [&] { return model->EncodeImage(images, /*normalize=*/true); });
}

void BM_TextTower(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int preset = static_cast<int>(state.range(0));
  const int64_t batch = state.range(1);
  const int64_t tokens = state.range(3);
  ClipModel* model = GetModel(preset, state.range(2) != 0);
  if (model == nullptr) {
    state.SkipWithError("model failed to load");
    return;
  }
  const int64_t vocab = model->config().text.vocab_size;
  torch::manual_seed(0);
  torch::Tensor ids = torch::randint(1, vocab - 2, {batch, tokens}, torch::kLong);
  ids.index_put_({torch::indexing::Slice(), 0}, vocab - 2);           // start
  ids.index_put_({torch::indexing::Slice(), tokens - 1}, vocab - 1);  // end
  const torch::Tensor lengths = torch::full({batch}, tokens, torch::kLong);
  TimeTower(state, preset, batch,
            [&] { return model->EncodeText(ids, lengths, /*normalize=*/true); });
}

BENCHMARK(BM_ImageTower)
    ->ArgNames({"model", "batch", "bf16"})
    ->ArgsProduct({{0, 1, 2}, {1, 8, 32, 64}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_TextTower)
    ->ArgNames({"model", "batch", "bf16", "tokens"})
    // ViT-B-32, ViT-B-16 and RN50 share one text tower (width 512, 12 layers).
    ->ArgsProduct({{0}, {1, 8, 32, 64}, {0, 1}, {20, 77}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace clipserve

BENCHMARK_MAIN();
