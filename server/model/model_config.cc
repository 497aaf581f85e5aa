#include "server/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "server/common/status_macros.h"
#include "server/model/json_excerpt.h"

namespace clipserve {
namespace {

using nlohmann::json;

// Every size of a config (widths, layers, image and vocabulary sizes) is at most this,
// far above any released CLIP model; products of two sizes then fit in int64.
constexpr int64_t kMaxSize = int64_t{1} << 24;
// MLP hidden width over model width: released models use 4 (up to about 5).
constexpr double kMaxMlpRatio = 64;

absl::Status Positive(int64_t value, absl::string_view field) {
  if (value <= 0 || value > kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be 1 to ", kMaxSize, ", got ", value));
  }
  return absl::OkStatus();
}

// int(width * mlp_ratio) as Python computes it: the double product, truncated.
int64_t TruncatedMlpWidth(int width, double mlp_ratio, int mlp_width) {
  if (mlp_width > 0) return mlp_width;
  const double hidden = width * mlp_ratio;
  return hidden >= 0 && hidden < 9.0e18 ? static_cast<int64_t>(hidden) : 0;
}

absl::Status MlpRatio(double ratio, absl::string_view field) {
  if (!(ratio > 0 && ratio <= kMaxMlpRatio)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be > 0 and at most ", kMaxMlpRatio, ", got ", ratio));
  }
  return absl::OkStatus();
}

ClipConfig VitPreset(std::string name, int embed_dim, int image_size, int width,
                     int layers, int patch, int text_width, int text_heads) {
  ClipConfig c;
  c.name = std::move(name);
  c.embed_dim = embed_dim;
  c.vision.arch = VisionArch::kVisionTransformer;
  c.vision.image_size = image_size;
  c.vision.width = width;
  c.vision.layers = layers;
  c.vision.patch_size = patch;
  c.vision.heads = width / 64;
  c.text.width = text_width;
  c.text.heads = text_heads;
  c.text.layers = 12;
  return c;
}

ClipConfig ResNetPreset(std::string name, int embed_dim, int image_size, int width,
                        std::array<int, 4> stages, int text_width, int text_heads) {
  ClipConfig c;
  c.name = std::move(name);
  c.embed_dim = embed_dim;
  c.vision.arch = VisionArch::kModifiedResNet;
  c.vision.image_size = image_size;
  c.vision.width = width;
  c.vision.stage_layers = stages;
  c.vision.layers = stages[0] + stages[1] + stages[2] + stages[3];
  c.vision.patch_size = 0;
  c.vision.heads = width * 32 / 64;
  c.text.width = text_width;
  c.text.heads = text_heads;
  c.text.layers = 12;
  return c;
}

const std::vector<ClipConfig>& Presets() {
  static const auto* presets = new std::vector<ClipConfig>{
      ResNetPreset("RN50", 1024, 224, 64, {3, 4, 6, 3}, 512, 8),
      ResNetPreset("RN101", 512, 224, 64, {3, 4, 23, 3}, 512, 8),
      ResNetPreset("RN50x4", 640, 288, 80, {4, 6, 10, 6}, 640, 10),
      ResNetPreset("RN50x16", 768, 384, 96, {6, 8, 18, 8}, 768, 12),
      ResNetPreset("RN50x64", 1024, 448, 128, {3, 15, 36, 10}, 1024, 16),
      VitPreset("ViT-B-32", 512, 224, 768, 12, 32, 512, 8),
      VitPreset("ViT-B-16", 512, 224, 768, 12, 16, 512, 8),
      VitPreset("ViT-L-14", 768, 224, 1024, 24, 14, 768, 12),
      VitPreset("ViT-L-14-336", 768, 336, 1024, 24, 14, 768, 12),
  };
  return *presets;
}

// Reads a JSON number field as int; `fallback` when absent.
absl::StatusOr<int> IntField(const json& object, const char* key, absl::string_view where,
                             std::optional<int> fallback = std::nullopt) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (fallback.has_value()) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " is missing"));
  }
  if (!it->is_number_integer() && !it->is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".", key, " must be an integer"));
  }
  const int64_t value = it->get<int64_t>();
  if (value <= 0 || value > (1 << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".", key, " is out of range: ", value));
  }
  return static_cast<int>(value);
}

absl::StatusOr<double> DoubleField(const json& object, const char* key,
                                   absl::string_view where, double fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be a number"));
  }
  return it->get<double>();
}

absl::StatusOr<std::string> StringField(const json& object, const char* key,
                                        absl::string_view where, const char* fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string(fallback);
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> BoolField(const json& object, const char* key,
                               absl::string_view where, bool fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".", key, " must be a boolean"));
  }
  return it->get<bool>();
}

absl::StatusOr<json> ParseJson(absl::string_view text) {
  json parsed = json::parse(text.begin(), text.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return absl::InvalidArgumentError("config is not a JSON object");
  }
  return parsed;
}

absl::StatusOr<std::array<float, 3>> Triple(const json& value, absl::string_view where) {
  if (!value.is_array() || value.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(where, " must be 3 numbers"));
  }
  std::array<float, 3> out{};
  for (int i = 0; i < 3; ++i) {
    // Read as double: a value beyond float's range would make the conversion undefined.
    const double v = value[i].is_number() ? value[i].get<double>() : std::nan("");
    if (!std::isfinite(v) || std::abs(v) > 1e6) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " must be 3 numbers of magnitude at most 1e6"));
    }
    out[i] = static_cast<float>(v);
  }
  return out;
}

int Count(const ShapeMap& shapes, absl::string_view prefix, absl::string_view suffix) {
  // Counts distinct block indices N in keys "<prefix>N<suffix>".
  std::set<std::string> indices;
  for (const auto& [key, shape] : shapes) {
    if (!absl::StartsWith(key, prefix)) continue;
    absl::string_view rest = absl::string_view(key).substr(prefix.size());
    const size_t dot = rest.find('.');
    if (dot == absl::string_view::npos) continue;
    if (!absl::StartsWith(rest.substr(dot), suffix)) continue;
    indices.insert(std::string(rest.substr(0, dot)));
  }
  return static_cast<int>(indices.size());
}

absl::StatusOr<std::vector<int64_t>> Shape(const ShapeMap& shapes, const std::string& key,
                                           size_t rank) {
  auto it = shapes.find(key);
  if (it == shapes.end()) {
    return absl::InvalidArgumentError(absl::StrCat("state dict has no '", key, "'"));
  }
  if (it->second.size() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' has rank ", it->second.size(), ", expected ", rank));
  }
  for (int64_t d : it->second) {
    if (d < 0 || d > kMaxSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", key, "' has a dimension of ", d, ", over ", kMaxSize));
    }
  }
  return it->second;
}

// How an open_clip config key is treated. open_clip grows new options over time, and
// several change the computation without changing a single weight (pooling, masks,
// norm epsilons), so a checkpoint with such an option would load and return wrong
// embeddings. Every key is therefore either read, known not to matter at inference,
// or pinned to the one value clipserve implements; any other key is an error.
struct KeyRule {
  const char* key;
  enum Kind { kRead, kIgnored, kPinned } kind;
  json value = nullptr;  // kPinned: the value clipserve implements (null: only absent)
};

// Checks `section` of `file` against `rules`: a pinned key must be absent, equal to
// its value, or null where its value is null or a boolean (None/False defaults, which
// open_clip and transformers read null as); a key no rule names is rejected. `where`
// prefixes the key in messages ("" for a file's top level).
absl::Status CheckKeys(const json& section, absl::string_view file,
                       absl::string_view where, const std::vector<KeyRule>& rules) {
  for (const auto& [key, value] : section.items()) {
    const std::string name = where.empty() ? key : absl::StrCat(where, ".", key);
    const KeyRule* rule = nullptr;
    for (const KeyRule& r : rules) {
      if (key == r.key) rule = &r;
    }
    if (rule == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, " key ", name,
                       " is unknown to clipserve, which cannot tell whether it changes "
                       "the model; remove it if it does not"));
    }
    // A null reads like the default where that is None or False; a null pool_type or
    // pos_embed_type means something else (no pooling, an error).
    const bool null_is_default = rule->value.is_null() || rule->value.is_boolean();
    if (rule->kind != KeyRule::kPinned || (value.is_null() && null_is_default) ||
        value == rule->value) {
      continue;
    }
    return absl::InvalidArgumentError(
        absl::StrCat(file, " sets ", name, " = ", JsonExcerpt(value),
                     "; clipserve implements only ", JsonExcerpt(rule->value)));
  }
  return absl::OkStatus();
}

constexpr absl::string_view kOpenClip = "open_clip config";

const std::vector<KeyRule>& ModelRules() {
  static const auto* rules = new std::vector<KeyRule>{
      {"embed_dim", KeyRule::kRead},
      {"vision_cfg", KeyRule::kRead},
      {"text_cfg", KeyRule::kRead},
      {"quick_gelu", KeyRule::kRead},
      // Training-time settings; the checkpoint holds the learned logit_scale.
      {"cast_dtype", KeyRule::kIgnored},
      {"output_dict", KeyRule::kIgnored},
      {"init_logit_scale", KeyRule::kIgnored},
      // SigLIP's bias and sigmoid loss, CoCa's decoder, a text tower under "text.".
      {"init_logit_bias", KeyRule::kPinned},
      {"nonscalar_logit_scale", KeyRule::kPinned, false},
      {"multimodal_cfg", KeyRule::kPinned},
      {"custom_text", KeyRule::kPinned, false},
  };
  return *rules;
}

const std::vector<KeyRule>& VisionRules() {
  static const auto* rules = new std::vector<KeyRule>{
      {"layers", KeyRule::kRead},
      {"width", KeyRule::kRead},
      {"head_width", KeyRule::kRead},
      {"mlp_ratio", KeyRule::kRead},
      {"patch_size", KeyRule::kRead},
      {"image_size", KeyRule::kRead},
      // Training-time or output-format only, or read only by a pinned-off option.
      {"patch_dropout", KeyRule::kIgnored},
      {"output_tokens", KeyRule::kIgnored},
      {"attn_pooler_queries", KeyRule::kIgnored},
      {"attn_pooler_heads", KeyRule::kIgnored},
      {"timm_model_pretrained", KeyRule::kIgnored},
      {"timm_pool", KeyRule::kIgnored},
      {"timm_proj", KeyRule::kIgnored},
      {"timm_proj_bias", KeyRule::kIgnored},
      {"timm_drop", KeyRule::kIgnored},
      {"timm_drop_path", KeyRule::kIgnored},
      // CLIP's ViT pools the class token after ln_post, with learned positions.
      {"pool_type", KeyRule::kPinned, "tok"},
      {"global_average_pool", KeyRule::kPinned, false},
      {"final_ln_after_pool", KeyRule::kPinned, false},
      {"attentional_pool", KeyRule::kPinned, false},
      {"pos_embed_type", KeyRule::kPinned, "learnable"},
      {"no_ln_pre", KeyRule::kPinned, false},
      {"input_patchnorm", KeyRule::kPinned, false},
      {"ls_init_value", KeyRule::kPinned},
      {"act_kwargs", KeyRule::kPinned},
      {"norm_kwargs", KeyRule::kPinned},
      {"block_type", KeyRule::kPinned},
      {"timm_model_name", KeyRule::kPinned},
  };
  return *rules;
}

const std::vector<KeyRule>& TextRules() {
  static const auto* rules = new std::vector<KeyRule>{
      {"context_length", KeyRule::kRead},
      {"vocab_size", KeyRule::kRead},
      {"width", KeyRule::kRead},
      {"heads", KeyRule::kRead},
      {"layers", KeyRule::kRead},
      {"mlp_ratio", KeyRule::kRead},
      {"encoder_type", KeyRule::kRead},
      // Output format, or read only by a pinned-off option (embed_cls, "eos" pooling,
      // a Hugging Face text tower).
      {"output_tokens", KeyRule::kIgnored},
      {"pad_id", KeyRule::kIgnored},
      {"eos_id", KeyRule::kIgnored},
      {"hf_model_pretrained", KeyRule::kIgnored},
      {"hf_proj_type", KeyRule::kIgnored},
      {"hf_pooler_type", KeyRule::kIgnored},
      // CLIP's text tower: causal mask, ln_final then the EOT (argmax) token, a bias-free
      // projection, CLIP's own BPE tokenizer.
      {"pool_type", KeyRule::kPinned, "argmax"},
      {"no_causal_mask", KeyRule::kPinned, false},
      {"final_ln_after_pool", KeyRule::kPinned, false},
      {"embed_cls", KeyRule::kPinned, false},
      {"proj_bias", KeyRule::kPinned, false},
      {"proj_type", KeyRule::kPinned, "linear"},
      {"ls_init_value", KeyRule::kPinned},
      {"act_kwargs", KeyRule::kPinned},
      {"norm_kwargs", KeyRule::kPinned},
      {"block_type", KeyRule::kPinned},
      {"hf_model_name", KeyRule::kPinned},
      {"hf_tokenizer_name", KeyRule::kPinned},
      {"tokenizer_mode", KeyRule::kPinned},
      {"tokenizer_kwargs", KeyRule::kPinned},
  };
  return *rules;
}

const std::vector<KeyRule>& PreprocessRules() {
  static const auto* rules = new std::vector<KeyRule>{
      {"mean", KeyRule::kRead},
      {"std", KeyRule::kRead},
      {"size", KeyRule::kRead},
      // Only resize_mode "longest" pads, with this color.
      {"fill_color", KeyRule::kIgnored},
      // Resize the short side with bicubic, center-crop, RGB: CLIP's preprocessing.
      {"mode", KeyRule::kPinned, "RGB"},
      {"interpolation", KeyRule::kPinned, "bicubic"},
      {"resize_mode", KeyRule::kPinned, "shortest"},
  };
  return *rules;
}

// transformers' CLIPImageProcessor (and its fast twin) as saved in
// preprocessor_config.json.
const std::vector<KeyRule>& HfPreprocessorRules() {
  static const auto* rules = new std::vector<KeyRule>{
      {"size", KeyRule::kRead},
      {"crop_size", KeyRule::kRead},
      {"image_mean", KeyRule::kRead},
      {"image_std", KeyRule::kRead},
      {"rescale_factor", KeyRule::kRead},
      {"image_processor_type", KeyRule::kRead},
      {"feature_extractor_type", KeyRule::kRead},
      // Bookkeeping, output layout and tensor type, where the processor runs; and the
      // RGB conversion, which clipserve always applies.
      {"processor_class", KeyRule::kIgnored},
      {"_valid_processor_keys", KeyRule::kIgnored},
      {"data_format", KeyRule::kIgnored},
      {"input_data_format", KeyRule::kIgnored},
      {"return_tensors", KeyRule::kIgnored},
      {"device", KeyRule::kIgnored},
      {"disable_grouping", KeyRule::kIgnored},
      {"do_convert_rgb", KeyRule::kIgnored},
      // CLIP's steps: resize the short side with bicubic (PIL resample 3), center crop,
      // scale to [0, 1], normalize; no padding, no crop_pct.
      {"do_resize", KeyRule::kPinned, true},
      {"resample", KeyRule::kPinned, 3},
      {"do_center_crop", KeyRule::kPinned, true},
      {"do_rescale", KeyRule::kPinned, true},
      {"do_normalize", KeyRule::kPinned, true},
      {"default_to_square", KeyRule::kPinned, false},
      {"do_pad", KeyRule::kPinned, false},
      {"pad_size", KeyRule::kPinned},
      {"crop_pct", KeyRule::kPinned},
  };
  return *rules;
}

// The side a preprocessor_config.json size field asks for: an integer, or an object
// with exactly `keys` (all equal).
absl::StatusOr<int> HfSide(const json& config, const char* key,
                           const std::vector<const char*>& keys) {
  constexpr absl::string_view kFile = "preprocessor_config.json";
  const json& value = config[key];
  if (value.is_number_integer()) return IntField(config, key, kFile);
  const auto wrong = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(kFile, " sets ", key, " = ", JsonExcerpt(value),
                     "; clipserve implements an integer or {", absl::StrJoin(keys, ", "),
                     "} with one side (CLIP's short-side resize and square crop)"));
  };
  if (!value.is_object() || value.size() != keys.size()) return wrong();
  std::optional<int> side;
  for (const char* k : keys) {
    if (!value.contains(k)) return wrong();
    CLIPSERVE_ASSIGN_OR_RETURN(const int v,
                               IntField(value, k, absl::StrCat(kFile, " ", key)));
    if (side.has_value() && *side != v) return wrong();
    side = v;
  }
  return *side;
}

int IntSqrt(int64_t n) { return static_cast<int>(std::lround(std::sqrt(double(n)))); }

}  // namespace

int64_t VisionConfig::MlpWidth() const {
  return TruncatedMlpWidth(width, mlp_ratio, mlp_width);
}

int64_t TextConfig::MlpWidth() const {
  return TruncatedMlpWidth(width, mlp_ratio, mlp_width);
}

absl::Status ValidateConfig(const ClipConfig& c) {
  CLIPSERVE_RETURN_IF_ERROR(Positive(c.embed_dim, "embed_dim"));
  const VisionConfig& v = c.vision;
  CLIPSERVE_RETURN_IF_ERROR(Positive(v.image_size, "vision.image_size"));
  CLIPSERVE_RETURN_IF_ERROR(Positive(v.width, "vision.width"));
  CLIPSERVE_RETURN_IF_ERROR(Positive(v.heads, "vision.heads"));
  if (v.arch == VisionArch::kVisionTransformer) {
    CLIPSERVE_RETURN_IF_ERROR(Positive(v.layers, "vision.layers"));
    CLIPSERVE_RETURN_IF_ERROR(Positive(v.patch_size, "vision.patch_size"));
    if (v.image_size % v.patch_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("vision.image_size ", v.image_size,
                                                     " is not a multiple of patch_size ",
                                                     v.patch_size));
    }
    if (v.width % v.heads != 0) {
      return absl::InvalidArgumentError("vision.width is not a multiple of vision.heads");
    }
  } else {
    for (int n : v.stage_layers)
      CLIPSERVE_RETURN_IF_ERROR(Positive(n, "vision.layers[i]"));
    if (v.image_size % 32 != 0) {
      return absl::InvalidArgumentError(
          "ModifiedResNet image_size must be a multiple of 32");
    }
    if (v.width % 2 != 0 || (v.width * 32) % v.heads != 0) {
      return absl::InvalidArgumentError(
          "ModifiedResNet width must be even and width*32 a multiple of heads");
    }
  }
  CLIPSERVE_RETURN_IF_ERROR(MlpRatio(v.mlp_ratio, "vision.mlp_ratio"));
  if (v.arch == VisionArch::kVisionTransformer) {
    CLIPSERVE_RETURN_IF_ERROR(
        Positive(v.MlpWidth(), "vision MLP width (width x mlp_ratio)"));
  }
  const TextConfig& t = c.text;
  CLIPSERVE_RETURN_IF_ERROR(Positive(t.context_length, "text.context_length"));
  CLIPSERVE_RETURN_IF_ERROR(Positive(t.vocab_size, "text.vocab_size"));
  CLIPSERVE_RETURN_IF_ERROR(Positive(t.width, "text.width"));
  if (t.arch == TextArch::kTransformer) {
    CLIPSERVE_RETURN_IF_ERROR(Positive(t.heads, "text.heads"));
    CLIPSERVE_RETURN_IF_ERROR(Positive(t.layers, "text.layers"));
    if (t.width % t.heads != 0) {
      return absl::InvalidArgumentError("text.width is not a multiple of text.heads");
    }
    CLIPSERVE_RETURN_IF_ERROR(MlpRatio(t.mlp_ratio, "text.mlp_ratio"));
    CLIPSERVE_RETURN_IF_ERROR(
        Positive(t.MlpWidth(), "text MLP width (width x mlp_ratio)"));
  }
  for (int i = 0; i < 3; ++i) {
    if (!(c.image_std[i] > 0)) return absl::InvalidArgumentError("image std must be > 0");
  }
  return absl::OkStatus();
}

double MinimumParameterCount(const ClipConfig& c) {
  const VisionConfig& v = c.vision;
  const TextConfig& t = c.text;
  const double embed = c.embed_dim;
  double n = 0;
  if (v.arch == VisionArch::kVisionTransformer) {
    const double w = v.width;
    const double hidden = static_cast<double>(v.MlpWidth());
    const double grid = v.patch_size > 0 ? v.image_size / v.patch_size : 0;
    n += v.layers * (4 * w * w + 2 * w * hidden);  // attention projections, MLP
    n += (grid * grid + 1) * w;                    // positional embedding
    n += w * 3.0 * v.patch_size * v.patch_size;    // patch embedding
    n += w * embed;                                // visual.proj
  } else {
    const double e = 32.0 * v.width;  // the attention pool's width
    const double grid = v.image_size / 32;
    n += (grid * grid + 1) * e + 3 * e * e + e * embed;  // positions, q/k/v, c_proj
    const double stem = v.width / 2;
    n += 9 * stem * stem + 9 * stem * v.width;  // the stem's second and third convs
    for (int s = 0; s < 4; ++s) {
      // Each Bottleneck's 3x3 conv (planes x planes x 9) and its 1x1 expansion
      // (planes x 4 planes); the stage's blocks may be many, each stage's twice as wide.
      const double planes = std::ldexp(static_cast<double>(v.width), s);
      n += v.stage_layers[s] * 13 * planes * planes;
    }
  }
  const double w = t.width;
  n += static_cast<double>(t.vocab_size) * w +
       w * embed;  // token embedding, text_projection
  if (t.arch == TextArch::kTransformer) {
    const double hidden = static_cast<double>(t.MlpWidth());
    n += t.layers * (4 * w * w + 2 * w * hidden) +
         static_cast<double>(t.context_length) * w;
  }
  return n;
}

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const ClipConfig& c : Presets()) names.push_back(c.name);
  return names;
}

absl::StatusOr<ClipConfig> PresetConfig(absl::string_view name) {
  for (const ClipConfig& c : Presets()) {
    if (c.name == name) return c;
  }
  return absl::NotFoundError(absl::StrCat(
      "no preset '", name, "'; known presets: ", absl::StrJoin(PresetNames(), ", ")));
}

absl::StatusOr<ClipConfig> ParseOpenClipConfig(absl::string_view text) {
  CLIPSERVE_ASSIGN_OR_RETURN(json root, ParseJson(text));
  ClipConfig c;
  const json* model = &root;
  if (root.contains("model_cfg")) {
    model = &root["model_cfg"];
    if (root.contains("preprocess_cfg")) {
      const json& pre = root["preprocess_cfg"];
      if (!pre.is_object())
        return absl::InvalidArgumentError("preprocess_cfg is not an object");
      CLIPSERVE_RETURN_IF_ERROR(
          CheckKeys(pre, kOpenClip, "preprocess_cfg", PreprocessRules()));
      if (pre.contains("mean")) {
        CLIPSERVE_ASSIGN_OR_RETURN(c.image_mean,
                                   Triple(pre["mean"], "preprocess_cfg.mean"));
      }
      if (pre.contains("std")) {
        CLIPSERVE_ASSIGN_OR_RETURN(c.image_std, Triple(pre["std"], "preprocess_cfg.std"));
      }
    }
  }
  if (!model->is_object() || !model->contains("vision_cfg") ||
      !model->contains("text_cfg")) {
    return absl::InvalidArgumentError("open_clip config needs vision_cfg and text_cfg");
  }
  const char* const model_where = model == &root ? "config" : "model_cfg";
  CLIPSERVE_RETURN_IF_ERROR(CheckKeys(*model, kOpenClip, model_where, ModelRules()));
  CLIPSERVE_ASSIGN_OR_RETURN(c.embed_dim, IntField(*model, "embed_dim", model_where));
  CLIPSERVE_ASSIGN_OR_RETURN(c.quick_gelu,
                             BoolField(*model, "quick_gelu", model_where, false));

  const json& vision = (*model)["vision_cfg"];
  if (!vision.is_object())
    return absl::InvalidArgumentError("vision_cfg is not an object");
  CLIPSERVE_RETURN_IF_ERROR(CheckKeys(vision, kOpenClip, "vision_cfg", VisionRules()));
  VisionConfig& v = c.vision;
  CLIPSERVE_ASSIGN_OR_RETURN(v.image_size, IntField(vision, "image_size", "vision_cfg"));
  CLIPSERVE_ASSIGN_OR_RETURN(v.width, IntField(vision, "width", "vision_cfg"));
  CLIPSERVE_ASSIGN_OR_RETURN(const int head_width,
                             IntField(vision, "head_width", "vision_cfg", 64));
  CLIPSERVE_ASSIGN_OR_RETURN(v.mlp_ratio,
                             DoubleField(vision, "mlp_ratio", "vision_cfg", 4.0));
  if (!vision.contains("layers"))
    return absl::InvalidArgumentError("vision_cfg.layers is missing");
  const json& layers = vision["layers"];
  if (layers.is_array()) {
    if (layers.size() != 4) {
      return absl::InvalidArgumentError("vision_cfg.layers must be an int or 4 ints");
    }
    v.arch = VisionArch::kModifiedResNet;
    v.layers = 0;
    for (int i = 0; i < 4; ++i) {
      if (!layers[i].is_number_integer() || layers[i].get<int64_t>() < 1 ||
          layers[i].get<int64_t>() > 1024) {
        return absl::InvalidArgumentError("vision_cfg.layers must be an int or 4 ints");
      }
      v.stage_layers[i] = layers[i].get<int>();
      v.layers += v.stage_layers[i];
    }
    v.patch_size = 0;
    v.heads = v.width * 32 / head_width;
  } else {
    v.arch = VisionArch::kVisionTransformer;
    CLIPSERVE_ASSIGN_OR_RETURN(v.layers, IntField(vision, "layers", "vision_cfg"));
    CLIPSERVE_ASSIGN_OR_RETURN(v.patch_size,
                               IntField(vision, "patch_size", "vision_cfg"));
    v.heads = v.width / head_width;
  }

  const json& textj = (*model)["text_cfg"];
  if (!textj.is_object()) return absl::InvalidArgumentError("text_cfg is not an object");
  CLIPSERVE_RETURN_IF_ERROR(CheckKeys(textj, kOpenClip, "text_cfg", TextRules()));
  TextConfig& t = c.text;
  CLIPSERVE_ASSIGN_OR_RETURN(
      const std::string encoder,
      StringField(textj, "encoder_type", "text_cfg", "transformer"));
  if (encoder == "cbow") {
    t.arch = TextArch::kCbow;
  } else if (encoder != "transformer") {
    return absl::InvalidArgumentError(
        absl::StrCat("text_cfg.encoder_type '", encoder, "' is not transformer or cbow"));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(t.context_length,
                             IntField(textj, "context_length", "text_cfg", 77));
  CLIPSERVE_ASSIGN_OR_RETURN(t.vocab_size,
                             IntField(textj, "vocab_size", "text_cfg", 49408));
  CLIPSERVE_ASSIGN_OR_RETURN(t.width, IntField(textj, "width", "text_cfg"));
  if (t.arch == TextArch::kTransformer) {
    CLIPSERVE_ASSIGN_OR_RETURN(t.heads, IntField(textj, "heads", "text_cfg"));
    CLIPSERVE_ASSIGN_OR_RETURN(t.layers, IntField(textj, "layers", "text_cfg"));
    CLIPSERVE_ASSIGN_OR_RETURN(t.mlp_ratio,
                               DoubleField(textj, "mlp_ratio", "text_cfg", 4.0));
  } else {
    t.heads = 0;
    t.layers = 0;
  }
  if (root.contains("model_cfg") && root.contains("preprocess_cfg") &&
      root["preprocess_cfg"].contains("size")) {
    // open_clip writes the crop size as an int or as [height, width].
    const json& size = root["preprocess_cfg"]["size"];
    const json square = json::array({v.image_size, v.image_size});
    if (size != json(v.image_size) && size != square) {
      return absl::InvalidArgumentError(
          absl::StrCat("preprocess_cfg.size ", JsonExcerpt(size),
                       " differs from vision_cfg.image_size ", v.image_size));
    }
  }
  CLIPSERVE_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

absl::Status ApplyHfPreprocessorConfig(absl::string_view text, ClipConfig* config) {
  constexpr absl::string_view kFile = "preprocessor_config.json";
  absl::StatusOr<json> parsed = ParseJson(text);
  if (!parsed.ok())
    return absl::InvalidArgumentError(absl::StrCat(kFile, " is not a JSON object"));
  const json& root = *parsed;
  CLIPSERVE_RETURN_IF_ERROR(CheckKeys(root, kFile, "", HfPreprocessorRules()));
  for (const char* key : {"image_processor_type", "feature_extractor_type"}) {
    CLIPSERVE_ASSIGN_OR_RETURN(const std::string type, StringField(root, key, kFile, ""));
    if (!type.empty() && type != "CLIPImageProcessor" &&
        type != "CLIPImageProcessorFast" && type != "CLIPFeatureExtractor") {
      return absl::InvalidArgumentError(
          absl::StrCat(kFile, " sets ", key, " = \"", type,
                       "\"; clipserve implements only CLIP's image processor"));
    }
  }
  const int image_size = config->vision.image_size;
  struct SideField {
    const char* key;
    std::vector<const char*> keys;
  };
  for (const SideField& field : std::vector<SideField>{
           {"size", {"shortest_edge"}}, {"crop_size", {"height", "width"}}}) {
    const char* key = field.key;
    if (!root.contains(key) || root[key].is_null()) continue;
    CLIPSERVE_ASSIGN_OR_RETURN(const int side, HfSide(root, key, field.keys));
    if (side != image_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(kFile, " sets ", key, " to ", side,
                       " pixels; the model's image_size is ", image_size));
    }
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const double rescale,
                             DoubleField(root, "rescale_factor", kFile, 1.0 / 255));
  if (std::abs(rescale * 255 - 1) > 1e-9) {
    return absl::InvalidArgumentError(absl::StrCat(
        kFile, " sets rescale_factor = ", rescale, "; clipserve implements only 1/255"));
  }
  if (root.contains("image_mean") && !root["image_mean"].is_null()) {
    CLIPSERVE_ASSIGN_OR_RETURN(
        config->image_mean,
        Triple(root["image_mean"], absl::StrCat(kFile, " image_mean")));
  }
  if (root.contains("image_std") && !root["image_std"].is_null()) {
    CLIPSERVE_ASSIGN_OR_RETURN(
        config->image_std, Triple(root["image_std"], absl::StrCat(kFile, " image_std")));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClipConfig> ParseHfConfig(absl::string_view text) {
  CLIPSERVE_ASSIGN_OR_RETURN(json root, ParseJson(text));
  if (!root.contains("model_type") || root["model_type"] != "clip") {
    return absl::InvalidArgumentError(
        "config.json is not a Hugging Face CLIP config "
        "(model_type must be \"clip\")");
  }
  if (!root.contains("vision_config") || !root.contains("text_config")) {
    return absl::InvalidArgumentError("config.json needs vision_config and text_config");
  }
  const json& vision = root["vision_config"];
  const json& textj = root["text_config"];
  ClipConfig c;
  CLIPSERVE_ASSIGN_OR_RETURN(c.embed_dim,
                             IntField(root, "projection_dim", "config", 512));
  VisionConfig& v = c.vision;
  v.arch = VisionArch::kVisionTransformer;
  CLIPSERVE_ASSIGN_OR_RETURN(v.width,
                             IntField(vision, "hidden_size", "vision_config", 768));
  CLIPSERVE_ASSIGN_OR_RETURN(v.layers,
                             IntField(vision, "num_hidden_layers", "vision_config", 12));
  CLIPSERVE_ASSIGN_OR_RETURN(
      v.heads, IntField(vision, "num_attention_heads", "vision_config", 12));
  CLIPSERVE_ASSIGN_OR_RETURN(v.image_size,
                             IntField(vision, "image_size", "vision_config", 224));
  CLIPSERVE_ASSIGN_OR_RETURN(v.patch_size,
                             IntField(vision, "patch_size", "vision_config", 32));
  CLIPSERVE_ASSIGN_OR_RETURN(const int v_inter, IntField(vision, "intermediate_size",
                                                         "vision_config", v.width * 4));
  v.mlp_ratio = double(v_inter) / v.width;
  v.mlp_width = v_inter;
  TextConfig& t = c.text;
  CLIPSERVE_ASSIGN_OR_RETURN(t.width, IntField(textj, "hidden_size", "text_config", 512));
  CLIPSERVE_ASSIGN_OR_RETURN(t.layers,
                             IntField(textj, "num_hidden_layers", "text_config", 12));
  CLIPSERVE_ASSIGN_OR_RETURN(t.heads,
                             IntField(textj, "num_attention_heads", "text_config", 8));
  CLIPSERVE_ASSIGN_OR_RETURN(
      t.context_length, IntField(textj, "max_position_embeddings", "text_config", 77));
  CLIPSERVE_ASSIGN_OR_RETURN(t.vocab_size,
                             IntField(textj, "vocab_size", "text_config", 49408));
  CLIPSERVE_ASSIGN_OR_RETURN(const int t_inter, IntField(textj, "intermediate_size",
                                                         "text_config", t.width * 4));
  t.mlp_ratio = double(t_inter) / t.width;
  t.mlp_width = t_inter;
  CLIPSERVE_ASSIGN_OR_RETURN(
      const std::string v_act,
      StringField(vision, "hidden_act", "vision_config", "quick_gelu"));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const std::string t_act,
      StringField(textj, "hidden_act", "text_config", "quick_gelu"));
  // Settings transformers reads that change the computation without changing weights.
  for (const auto& [tower, where] :
       {std::pair<const json*, const char*>{&vision, "vision_config"},
        {&textj, "text_config"}}) {
    CLIPSERVE_ASSIGN_OR_RETURN(const double eps,
                               DoubleField(*tower, "layer_norm_eps", where, 1e-5));
    if (eps != 1e-5) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".layer_norm_eps = ", eps, "; clipserve implements only 1e-05"));
    }
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const int channels,
                             IntField(vision, "num_channels", "vision_config", 3));
  if (channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("vision_config.num_channels = ", channels, "; images are RGB"));
  }
  if (v_act != t_act) {
    return absl::InvalidArgumentError("vision and text hidden_act differ; unsupported");
  }
  if (v_act == "quick_gelu") {
    c.quick_gelu = true;
  } else if (v_act == "gelu") {
    c.quick_gelu = false;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_act '", v_act, "' unsupported"));
  }
  CLIPSERVE_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

int VisionTransformerHeads(int width) {
  // open_clip's ViT-H-14 (1280), ViT-g-14 (1408), ViT-bigG-14 (1664) and ViT-e-14
  // (1792): 16 heads of 80, 88, 104 and 112.
  for (int wide : {1280, 1408, 1664, 1792}) {
    if (width == wide) return 16;
  }
  return std::max(1, width / 64);
}

absl::StatusOr<ClipConfig> InferConfigFromStateDict(const ShapeMap& shapes) {
  ClipConfig c;
  c.name = "checkpoint";
  VisionConfig& v = c.vision;
  if (shapes.count("visual.proj") > 0) {
    v.arch = VisionArch::kVisionTransformer;
    CLIPSERVE_ASSIGN_OR_RETURN(auto conv, Shape(shapes, "visual.conv1.weight", 4));
    CLIPSERVE_ASSIGN_OR_RETURN(auto pos, Shape(shapes, "visual.positional_embedding", 2));
    v.width = static_cast<int>(conv[0]);
    v.patch_size = static_cast<int>(conv[3]);
    v.layers = Count(shapes, "visual.transformer.resblocks.", ".attn.in_proj_weight");
    const int grid = IntSqrt(pos[0] - 1);
    if (int64_t(grid) * grid + 1 != pos[0]) {
      return absl::InvalidArgumentError(
          "visual.positional_embedding is not a square grid + 1");
    }
    const int64_t image_size = int64_t{grid} * v.patch_size;
    CLIPSERVE_RETURN_IF_ERROR(Positive(image_size, "vision.image_size (grid x patch)"));
    v.image_size = static_cast<int>(image_size);
    v.heads = VisionTransformerHeads(v.width);
    CLIPSERVE_ASSIGN_OR_RETURN(
        auto fc, Shape(shapes, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2));
    v.mlp_ratio = double(fc[0]) / v.width;
    v.mlp_width = static_cast<int>(fc[0]);
  } else if (shapes.count("visual.attnpool.positional_embedding") > 0) {
    v.arch = VisionArch::kModifiedResNet;
    v.patch_size = 0;
    v.layers = 0;
    for (int b = 0; b < 4; ++b) {
      v.stage_layers[b] =
          Count(shapes, absl::StrCat("visual.layer", b + 1, "."), ".conv1.weight");
      v.layers += v.stage_layers[b];
    }
    CLIPSERVE_ASSIGN_OR_RETURN(auto conv,
                               Shape(shapes, "visual.layer1.0.conv1.weight", 4));
    CLIPSERVE_ASSIGN_OR_RETURN(auto pos,
                               Shape(shapes, "visual.attnpool.positional_embedding", 2));
    v.width = static_cast<int>(conv[0]);
    const int grid = IntSqrt(pos[0] - 1);
    if (int64_t(grid) * grid + 1 != pos[0]) {
      return absl::InvalidArgumentError(
          "visual.attnpool.positional_embedding is not a square grid + 1");
    }
    v.image_size = grid * 32;
    v.heads = std::max(1, v.width * 32 / 64);
  } else {
    return absl::InvalidArgumentError(
        "state dict has neither 'visual.proj' (ViT) nor "
        "'visual.attnpool.positional_embedding' (ModifiedResNet)");
  }

  CLIPSERVE_ASSIGN_OR_RETURN(auto proj, Shape(shapes, "text_projection", 2));
  CLIPSERVE_ASSIGN_OR_RETURN(auto tok, Shape(shapes, "token_embedding.weight", 2));
  c.embed_dim = static_cast<int>(proj[1]);
  TextConfig& t = c.text;
  t.vocab_size = static_cast<int>(tok[0]);
  t.width = static_cast<int>(tok[1]);
  if (shapes.count("ln_final.weight") == 0 && shapes.count("positional_embedding") == 0) {
    t.arch = TextArch::kCbow;
    t.heads = 0;
    t.layers = 0;
  } else {
    t.arch = TextArch::kTransformer;
    CLIPSERVE_ASSIGN_OR_RETURN(auto pos, Shape(shapes, "positional_embedding", 2));
    CLIPSERVE_ASSIGN_OR_RETURN(auto ln, Shape(shapes, "ln_final.weight", 1));
    t.context_length = static_cast<int>(pos[0]);
    t.width = static_cast<int>(ln[0]);
    t.heads = std::max(1, t.width / 64);
    t.layers = Count(shapes, "transformer.resblocks.", ".attn.in_proj_weight");
    CLIPSERVE_ASSIGN_OR_RETURN(
        auto fc, Shape(shapes, "transformer.resblocks.0.mlp.c_fc.weight", 2));
    t.mlp_ratio = double(fc[0]) / t.width;
    t.mlp_width = static_cast<int>(fc[0]);
  }
  // Every released OpenAI/open_clip checkpoint of this layout uses QuickGELU.
  c.quick_gelu = true;
  CLIPSERVE_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view text) {
  CLIPSERVE_ASSIGN_OR_RETURN(json parsed, ParseJson(text));
  const auto map = parsed.find("weight_map");
  if (map == parsed.end() || !map->is_object() || map->empty()) {
    return absl::InvalidArgumentError(
        "the shard index has no weight_map object naming each tensor's file");
  }
  ShardIndex index;
  for (const auto& item : map->items()) {
    const std::string& tensor = item.key();
    const json& file = item.value();
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the shard index's weight_map gives '", tensor, "' no file name"));
    }
    const std::string& name = file.get_ref<const std::string&>();
    if (name.empty() || name == "." || name == ".." ||
        name.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("the shard index places '", tensor, "' in ", JsonExcerpt(file),
                       ", which is not a file name beside the index"));
    }
    index.tensor_file.emplace(tensor, name);
  }
  for (const auto& [tensor, file] : index.tensor_file) index.files.push_back(file);
  std::sort(index.files.begin(), index.files.end());
  index.files.erase(std::unique(index.files.begin(), index.files.end()),
                    index.files.end());
  return index;
}

}  // namespace clipserve
