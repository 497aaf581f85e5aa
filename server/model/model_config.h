#ifndef CLIPSERVE_SERVER_MODEL_MODEL_CONFIG_H_
#define CLIPSERVE_SERVER_MODEL_MODEL_CONFIG_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// The architecture of a CLIP model: what a checkpoint's shapes, an open_clip JSON, a
// Hugging Face config.json or a preset name describe. Plain data, no LibTorch.

namespace clipserve {

enum class VisionArch { kVisionTransformer, kModifiedResNet };
enum class TextArch { kTransformer, kCbow };

struct VisionConfig {
  VisionArch arch = VisionArch::kVisionTransformer;
  // Input images are image_size x image_size pixels.
  int image_size = 224;
  // ViT: transformer width. ModifiedResNet: base width (stem is width/2, attention
  // pool is width*32).
  int width = 768;
  // ViT only: transformer blocks and patch size in pixels.
  int layers = 12;
  int patch_size = 32;
  // ModifiedResNet only: Bottleneck blocks per stage.
  std::array<int, 4> stage_layers = {0, 0, 0, 0};
  // Attention heads (ViT blocks, or the ResNet's attention pool).
  int heads = 12;
  // Hidden width of each MLP: mlp_width where a checkpoint's shapes or a Hugging Face
  // config give it, else width * mlp_ratio truncated, as open_clip's int() takes it.
  double mlp_ratio = 4.0;
  int mlp_width = 0;
  int64_t MlpWidth() const;
};

struct TextConfig {
  TextArch arch = TextArch::kTransformer;
  // Tokens per text, start and end included.
  int context_length = 77;
  int vocab_size = 49408;
  int width = 512;
  // Transformer only.
  int heads = 8;
  int layers = 12;
  // As VisionConfig's.
  double mlp_ratio = 4.0;
  int mlp_width = 0;
  int64_t MlpWidth() const;
};

struct ClipConfig {
  // Preset or checkpoint name, for reporting.
  std::string name;
  int embed_dim = 512;
  // QuickGELU (x * sigmoid(1.702 x), what OpenAI trained with) or exact GELU.
  bool quick_gelu = true;
  VisionConfig vision;
  TextConfig text;
  // Image normalization per channel (R, G, B), applied after scaling to [0, 1].
  std::array<float, 3> image_mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> image_std = {0.26862954f, 0.26130258f, 0.27577711f};
};

// Checks that every size is positive and divisible where the networks need it
// (width by heads, image size by patch size or by 32). INVALID_ARGUMENT naming the
// field otherwise.
absl::Status ValidateConfig(const ClipConfig& config);

// A lower bound on the number of values the weights of a model of `config` hold,
// counting only its largest matrices (projections, MLPs, embeddings): a checkpoint
// with fewer cannot fill the model, so loading refuses it before building a model
// that could be far larger than the file. In double, so that no product overflows.
double MinimumParameterCount(const ClipConfig& config);

// The built-in presets with OpenAI's published dimensions: RN50, RN101, RN50x4,
// RN50x16, RN50x64, ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336. NOT_FOUND otherwise.
absl::StatusOr<ClipConfig> PresetConfig(absl::string_view name);
std::vector<std::string> PresetNames();

// Parses open_clip's model JSON ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})
// or an open_clip_config.json that wraps it as {"model_cfg": ..., "preprocess_cfg":
// {"mean", "std"}}. text_cfg may carry clipserve's "encoder_type": "cbow".
// INVALID_ARGUMENT for malformed JSON or missing/invalid fields.
absl::StatusOr<ClipConfig> ParseOpenClipConfig(absl::string_view json);

// Parses a Hugging Face transformers config.json with model_type "clip".
absl::StatusOr<ClipConfig> ParseHfConfig(absl::string_view json);

// Reads the preprocessor_config.json of a Hugging Face CLIP directory (transformers'
// CLIPImageProcessor, legacy or current schema) into `config`: image_mean and
// image_std. size (an integer or {"shortest_edge"}) and crop_size (an integer or
// {"height", "width"}) must equal config->vision.image_size; the steps must be CLIP's
// (resize with bicubic, center crop, rescale by 1/255, normalize); every other key is
// known not to matter or an error, as in ParseOpenClipConfig(). INVALID_ARGUMENT
// naming the key otherwise; `config` may then be partly updated.
absl::Status ApplyHfPreprocessorConfig(absl::string_view json, ClipConfig* config);

// The index of a checkpoint split over several files (model.safetensors.index.json or
// pytorch_model.bin.index.json, as Hugging Face's save_pretrained() writes past its
// shard size): {"metadata": {...}, "weight_map": {"<tensor>": "<file>", ...}}.
struct ShardIndex {
  // The shards' file names, each once, sorted (save_pretrained() numbers them with
  // zeros before: model-00001-of-00003.safetensors, ...).
  std::vector<std::string> files;
  // Tensor name -> the file the index places it in.
  std::map<std::string, std::string> tensor_file;
};

// INVALID_ARGUMENT unless weight_map is a non-empty object of strings, each a plain
// file name (no folder part, not "." or "..": the shards sit beside the index).
absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view json);

// Tensor name -> shape, as found in a checkpoint.
using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// The attention heads of a released CLIP ViT image tower of `width`, which its
// shapes cannot tell: 64 wide (OpenAI's, and open_clip's up to ViT-L), except
// open_clip's ViT-H, -g, -bigG and -e (widths 1280, 1408, 1664, 1792), which have 16.
int VisionTransformerHeads(int width);

// Infers the architecture from OpenAI/open_clip state-dict shapes the way OpenAI's
// build_model does: ViT when `visual.proj` exists, else ModifiedResNet; widths,
// layers, patch size, resolution and context from the shapes. Shapes cannot tell
// heads apart: a ViT image tower's are VisionTransformerHeads(width), the text
// tower's and a ResNet's attention pool's 64 wide, as in every released checkpoint.
// A state dict without `ln_final.weight` and `positional_embedding` has the CBOW text
// encoder. INVALID_ARGUMENT naming the missing key or inconsistent shape.
absl::StatusOr<ClipConfig> InferConfigFromStateDict(const ShapeMap& shapes);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_MODEL_CONFIG_H_
