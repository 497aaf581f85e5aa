#ifndef CLIPSERVE_SERVER_MODEL_CHECKPOINT_H_
#define CLIPSERVE_SERVER_MODEL_CHECKPOINT_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/model/clip_model.h"
#include "server/model/model_config.h"

namespace clipserve {

enum class CheckpointFormat {
  kOpenAiTorchScript,  // OpenAI's released .pt: a TorchScript archive
  kStateDict,          // torch.save(state_dict) zip, optionally {"state_dict": ...}
  kSafetensors,        // a .safetensors file with OpenAI/open_clip key names
  kOpenClip,           // open_clip directory: open_clip_config.json + weights
  kHuggingFace,        // transformers directory: config.json + weights, HF key names
  kDemo,               // no file: seeded random weights
};

// "openai_torchscript", "state_dict", "safetensors", "open_clip", "hf", "demo".
absl::string_view CheckpointFormatName(CheckpointFormat format);

// A checkpoint read into memory: its architecture and its weights under
// OpenAI/open_clip key names (Hugging Face names already mapped, q/k/v fused).
struct Checkpoint {
  ClipConfig config;
  TensorMap weights;
  CheckpointFormat format = CheckpointFormat::kStateDict;
  // The file the weights came from (inside a directory for open_clip/HF; the index of
  // a checkpoint in several files).
  std::string weights_path;
  // The files whose bytes hold the weights: weights_path, or the shards its index
  // names, sorted by name.
  std::vector<std::string> weight_files;
  // The directory holding the checkpoint, where tokenizer files may sit.
  std::string directory;
  // True where the architecture came from a bare state dict's shapes, which cannot
  // tell QuickGELU (OpenAI's, assumed) from GELU (open_clip's own architectures):
  // the loader warns, and --model_config (an open_clip config) settles it.
  bool activation_assumed = false;
  // True wherever the architecture came from the shapes, OpenAI's archives too: the
  // attention heads then follow OpenAI's rule (width / 64), which shapes cannot check.
  bool heads_assumed = false;
};

struct ReadCheckpointOptions {
  // Architecture to use instead of inferring it from a bare state dict's shapes
  // (needed for checkpoints whose head width is not 64, or whose activation is GELU).
  // INVALID_ARGUMENT with a directory or Hugging Face weights, which carry their own.
  std::optional<ClipConfig> config;
};

// The contents of a JSON configuration file (config.json, --model_config, ...), read
// by ReadSmallFile() (its errors) with a cap of kMaxConfigFileBytes, far more than any
// real configuration: a FIFO would otherwise block the start-up, /dev/zero fill the
// memory.
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;
absl::StatusOr<std::string> ReadConfigFile(const std::string& path);

// Reads a checkpoint, detecting its format from the content, not the name: a
// directory with open_clip_config.json (open_clip) or config.json (Hugging Face, with
// its preprocessor_config.json when there is one: ApplyHfPreprocessorConfig()); a
// zip holding constants.pkl (TorchScript archive) or data.pkl (torch.save); a file
// starting with a plausible safetensors header; a "*.index.json" file, the index of a
// checkpoint in several such files beside it (a Hugging Face folder's
// model.safetensors.index.json or pytorch_model.bin.index.json, read when the folder
// has no single weights file). A model hub's folder with both configs takes open_clip's
// weights, else Hugging Face's. A "module." before every key (DataParallel) is
// dropped. A weights file inside an open_clip folder (without options.config) or with
// Hugging Face key names takes the config of its folder, as the folder itself would.
// Errors: NOT_FOUND (no such path),
// INVALID_ARGUMENT (unrecognized, truncated or corrupt file, bad config, HF key that
// maps nowhere), UNIMPLEMENTED (legacy pre-1.6 torch.save format), RESOURCE_EXHAUSTED
// (memory ran out while reading).
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path,
                                          const ReadCheckpointOptions& options = {});

// Renames Hugging Face CLIPModel keys to OpenAI's, fusing q/k/v projections into
// in_proj_{weight,bias} and transposing the projections. position_ids buffers are
// dropped. INVALID_ARGUMENT naming a key it cannot map or an incomplete q/k/v set.
absl::StatusOr<TensorMap> MapHuggingFaceKeys(TensorMap hf);

// Hex SHA-256 of a file's bytes, or of several files' bytes one after another (what
// `cat FILES | sha256sum` prints, for shards `cat model-*.safetensors | sha256sum`).
absl::StatusOr<std::string> Sha256OfFiles(const std::vector<std::string>& paths);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_CHECKPOINT_H_
