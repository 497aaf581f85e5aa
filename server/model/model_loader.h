#ifndef CLIPSERVE_SERVER_MODEL_MODEL_LOADER_H_
#define CLIPSERVE_SERVER_MODEL_MODEL_LOADER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/model/checkpoint.h"
#include "server/model/clip_model.h"

namespace clipserve {

struct ModelLoadOptions {
  // Where the model runs and in what precision.
  torch::Device device = torch::kCPU;
  Precision precision = Precision::kFloat32;
  // For Precision::kInt8: how the rest runs.
  Int8Options int8;
  // An open_clip JSON config to use instead of inferring the architecture from a bare
  // state dict (see ReadCheckpointOptions::config). INVALID_ARGUMENT with a demo model.
  std::optional<std::string> config_path;
  // Seed of the demo model's random weights.
  uint64_t demo_seed = 0;
};

// A model ready to serve, with what GetModelInfo reports about it.
struct LoadedModel {
  std::unique_ptr<ClipModel> model;
  std::string name;
  CheckpointFormat format = CheckpointFormat::kDemo;
  // Hex SHA-256 of the weights file; empty for the demo model.
  std::string sha256;
  // True for the demo model: its embeddings carry no meaning.
  bool random_weights = false;
  // Folder of the checkpoint, where tokenizer files may sit; empty for the demo.
  std::string directory;
  // Checkpoint::activation_assumed: QuickGELU was assumed for a bare state dict.
  bool activation_assumed = false;
  // Checkpoint::heads_assumed: the attention heads follow OpenAI's rule.
  bool heads_assumed = false;
};

// True when /proc/cpuinfo-style `cpuinfo` lists AMX-BF16 or AVX512-BF16: oneDNN runs
// bf16 products on the CPU's own bf16 instructions, where without them LibTorch
// emulates bf16, slower than fp32.
bool CpuInfoHasBf16(absl::string_view cpuinfo);

// True when bf16 matrix products outrun fp32 ones on the CPU `cpuinfo` describes:
// AMX-BF16 (Intel's tile unit), or AVX512-BF16 on an AMD CPU (vendor_id AuthenticAMD;
// on an EPYC VM the bf16 ViT-B-32 image tower ran a batch of 32 2.3x as fast as fp32
// on OpenBLAS's AVX-512 kernels, docs/PERFORMANCE.md at 44c4113). An Intel CPU whose
// only bf16 instruction is AVX512-BF16 (Cooper Lake, or a Sapphire Rapids or later
// whose VM hides AMX) is not one: its bf16 dot products peak at the arithmetic rate of
// its fp32 FMAs, and the same batch ran at 0.62x fp32 on an Intel Xeon VM
// (docs/PERFORMANCE.md).
bool CpuInfoPrefersBf16(absl::string_view cpuinfo);

// The contents of /proc/cpuinfo (empty where it cannot be read).
std::string ReadProcCpuinfo();

// True when `cpuinfo` lists int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or
// AMX-INT8). Without them oneDNN multiplies uint8 by int8 with vpmaddubsw, whose
// int16 sums of pairs saturate: --precision=int8 refuses such CPUs.
bool CpuInfoHasInt8Dot(absl::string_view cpuinfo);

// Parses --device: "cpu", "cuda" or "cuda:N". INVALID_ARGUMENT otherwise.
absl::StatusOr<torch::Device> ParseDevice(absl::string_view name);

// Resolves --precision for `device`: "fp32", "bf16", "fp16", "int8" as given; "auto"
// picks what the device does fastest at CLIP's accuracy (bf16 embeddings stay within
// cosine 0.999 of fp32): fp16 on CUDA, bf16 on CPUs where CpuInfoPrefersBf16, fp32 on
// other CPUs. `cpuinfo` is the contents of /proc/cpuinfo (read by the caller, so tests
// can pass their own).
absl::StatusOr<Precision> ResolvePrecision(absl::string_view flag,
                                           const torch::Device& device,
                                           absl::string_view cpuinfo);

// Loads `spec`: "demo:PRESET" builds that preset with seeded random weights (no files
// needed); anything else is a checkpoint path in any format ReadCheckpoint knows.
// Then moves the model to the device and precision. Errors as ReadCheckpoint,
// ClipModel::LoadWeights and ClipModel::To, plus NOT_FOUND for an unknown preset.
// Blocks (reads the file); call once at start-up.
absl::StatusOr<LoadedModel> LoadModel(const std::string& spec,
                                      const ModelLoadOptions& options = {});

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_MODEL_LOADER_H_
