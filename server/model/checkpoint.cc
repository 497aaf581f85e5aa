#include "server/model/checkpoint.h"

#include <caffe2/serialize/inline_container.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/common/small_file.h"
#include "server/common/status_macros.h"
#include "server/model/safetensors.h"
#include "server/model/torch_pickle.h"
#include "server/model/zip_directory.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

torch::ScalarType TorchType(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF64:
      return torch::kDouble;
    case SafetensorsDtype::kF32:
      return torch::kFloat;
    case SafetensorsDtype::kF16:
      return torch::kHalf;
    case SafetensorsDtype::kBF16:
      return torch::kBFloat16;
    case SafetensorsDtype::kI64:
      return torch::kLong;
    case SafetensorsDtype::kI32:
      return torch::kInt;
    case SafetensorsDtype::kI16:
      return torch::kShort;
    case SafetensorsDtype::kI8:
      return torch::kChar;
    case SafetensorsDtype::kU8:
      return torch::kByte;
    case SafetensorsDtype::kBool:
      return torch::kBool;
  }
  return torch::kFloat;
}

// safetensors and torch.save both store little-endian data, which is used in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint data is read in place as little-endian");

// Tensors that alias the mapped file (no copy); the mapping lives while any does.
absl::StatusOr<TensorMap> ReadSafetensors(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened,
                             SafetensorsFile::Open(path));
  std::shared_ptr<SafetensorsFile> file = std::move(opened);
  TensorMap out;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        for (const SafetensorsEntry& entry : file->entries()) {
          const auto options = torch::TensorOptions().dtype(TorchType(entry.dtype));
          void* data = const_cast<uint8_t*>(file->data(entry));
          const size_t element = torch::elementSize(TorchType(entry.dtype));
          torch::Tensor tensor;
          if (reinterpret_cast<uintptr_t>(data) % element == 0) {
            tensor = torch::from_blob(
                data, entry.shape, [file](void*) {}, options);
          } else {
            // Misaligned data (header length not a multiple of 8): copy it out. An
            // empty tensor has no buffer (data_ptr() is null): nothing to copy.
            tensor = torch::empty(entry.shape, options);
            if (entry.end > entry.begin) {
              std::memcpy(tensor.data_ptr(), data, entry.end - entry.begin);
            }
          }
          out.emplace(entry.name, std::move(tensor));
        }
      },
      absl::StrCat("reading ", path), absl::StatusCode::kInvalidArgument));
  return out;
}

absl::StatusOr<TensorMap> ReadTorchZip(const std::string& path, bool* is_torchscript) {
  // Before LibTorch's reader inflates anything (it would inflate a record whole).
  CLIPSERVE_ASSIGN_OR_RETURN(const std::vector<ZipRecord> records,
                             ReadZipDirectory(path));
  std::error_code size_error;
  const uint64_t file_size = fs::file_size(path, size_error);
  if (size_error) return absl::InvalidArgumentError(absl::StrCat("cannot stat ", path));
  if (absl::Status status = CheckInflatedSize(records, file_size); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
  }
  // The records a storage key may name, without the archive's folder (as LibTorch's
  // reader names them: "data/0"). Checked byte for byte before the reader is asked:
  // it matches names ignoring case (miniz) and reads a key up to a NUL, so "ABC",
  // "abc" and "abc\0x" would each load record data/abc again, and a pickle caches its
  // storages by key: a 4 MB file loaded one record 256 times (1.2 GB) in a review.
  absl::flat_hash_set<std::string> record_names;
  for (const ZipRecord& record : records) {
    if (const size_t slash = record.name.find('/'); slash != std::string::npos) {
      record_names.insert(record.name.substr(slash + 1));
    }
  }
  TensorMap out;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        caffe2::serialize::PyTorchStreamReader reader(path);
        // Both torch.save and TorchScript archives pickle their tensors into data.pkl
        // with storages in data/; TorchScript's have constants.pkl and code beside it,
        // which is never run (torch::jit::load would run it, and its unpickler crashes
        // on hostile bytes).
        *is_torchscript = reader.hasRecord("constants.pkl");
        if (!reader.hasRecord("data.pkl")) {
          throw std::runtime_error(
              "zip file is neither a TorchScript archive nor torch.save");
        }
        auto [pickle, pickle_size] = reader.getRecord("data.pkl");
        StorageLoader loader = [&reader, &record_names](
                                   const std::string& key, torch::ScalarType dtype,
                                   int64_t numel) -> absl::StatusOr<torch::Tensor> {
          const std::string record = "data/" + key;
          if (!record_names.contains(record) || !reader.hasRecord(record)) {
            return absl::InvalidArgumentError(
                absl::StrCat("missing storage record ", absl::CHexEscape(record),
                             " (a storage key names its record exactly, case and all)"));
          }
          auto [data, size] = reader.getRecord(record);
          const uint64_t element = torch::elementSize(dtype);
          if (static_cast<uint64_t>(numel) > size / element) {  // no overflow
            return absl::InvalidArgumentError(
                absl::StrCat("storage record ", record, " has ", size,
                             " bytes, fewer than ", numel, " elements need"));
          }
          auto owner = std::make_shared<at::DataPtr>(std::move(data));
          return torch::from_blob(
              owner->get(), {numel}, [owner](void*) {},
              torch::TensorOptions().dtype(dtype));
        };
        const absl::string_view bytes(static_cast<const char*>(pickle.get()),
                                      pickle_size);
        auto tensors = *is_torchscript ? TensorsFromTorchScriptPickle(bytes, loader)
                                       : TensorsFromTorchPickle(bytes, loader);
        if (!tensors.ok())
          throw std::runtime_error(std::string(tensors.status().message()));
        out = *std::move(tensors);
      },
      absl::StrCat("reading ", path), absl::StatusCode::kInvalidArgument));
  return out;
}

// A model name taken from a file or folder name, which may be any bytes: as valid
// UTF-8 (ill-formed bytes become U+FFFD), since it travels in protobuf strings and
// Prometheus labels, both UTF-8 only.
std::string NameFromPath(const std::string& name) {
  return IsValidUtf8(name) ? name : EncodeUtf8(DecodeUtf8(name));
}

// What a file's first bytes say it is.
enum class FileKind { kZip, kSafetensors, kLegacyPickle, kUnknown };

absl::StatusOr<FileKind> SniffFile(const std::string& path) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot stat ", path));
  // Opened here, so that an unreadable file is named as one, not as an unrecognized
  // format.
  std::unique_ptr<FILE, int (*)(FILE*)> in(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!in) return FileError(errno, "checkpoint", path);
  std::array<char, 9> head{};
  const size_t got = std::fread(head.data(), 1, head.size(), in.get());
  if (std::ferror(in.get())) return FileError(errno, "checkpoint", path);
  if (got >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) {
    return FileKind::kZip;
  }
  const bool pickle =
      got >= 2 && static_cast<uint8_t>(head[0]) == 0x80 && head[1] >= 2 && head[1] <= 5;
  // safetensors before pickle: its first 8 bytes are a little-endian length, which
  // may well begin 0x80 0x02..0x05 (a header of 640, 896, 1152 or 1408 bytes mod 64 KiB).
  if (got == 9 && head[8] == '{') {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(head[i]);
    // A header that runs past the end is still reported as broken safetensors, unless
    // the bytes read as a pickle too.
    if (n > 0 && (!pickle || n <= size - 8)) return FileKind::kSafetensors;
  }
  if (pickle) return FileKind::kLegacyPickle;
  return FileKind::kUnknown;
}

ShapeMap Shapes(const TensorMap& weights) {
  ShapeMap shapes;
  for (const auto& [key, tensor] : weights) {
    shapes.emplace(key,
                   std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()));
  }
  return shapes;
}

// The config of the open_clip folder `dir` (its open_clip_config.json).
absl::StatusOr<ClipConfig> ReadOpenClipFolderConfig(const fs::path& dir) {
  CLIPSERVE_ASSIGN_OR_RETURN(std::string json,
                             ReadConfigFile((dir / "open_clip_config.json").string()));
  return ParseOpenClipConfig(json);
}

// The config of the Hugging Face folder `dir`: its config.json, with the normalization
// of its preprocessor_config.json when there is one.
absl::StatusOr<ClipConfig> ReadHfFolderConfig(const fs::path& dir) {
  CLIPSERVE_ASSIGN_OR_RETURN(std::string json,
                             ReadConfigFile((dir / "config.json").string()));
  CLIPSERVE_ASSIGN_OR_RETURN(ClipConfig config, ParseHfConfig(json));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const bool has_preprocessor,
      IsRegularFile((dir / "preprocessor_config.json").string(), "model configuration"));
  if (has_preprocessor) {
    CLIPSERVE_ASSIGN_OR_RETURN(
        std::string preprocessor,
        ReadConfigFile((dir / "preprocessor_config.json").string()));
    CLIPSERVE_RETURN_IF_ERROR(ApplyHfPreprocessorConfig(preprocessor, &config));
  }
  return config;
}

// Whether `weights` carry Hugging Face CLIPModel key names.
bool HasHuggingFaceKeys(const TensorMap& weights) {
  for (const auto& [key, tensor] : weights) {
    if (absl::StartsWith(key, "vision_model.") || absl::StartsWith(key, "text_model.")) {
      return true;
    }
  }
  return false;
}

// The two folder layouts that carry their own config.
enum class FolderKind { kOpenClip, kHuggingFace };

// The name of the folder `dir` as a model name ("" and "." name the working folder).
std::string FolderName(const fs::path& dir) {
  std::error_code ec;
  fs::path full = fs::absolute(dir.empty() ? fs::path(".") : dir, ec);
  if (ec) full = dir;
  full = full.lexically_normal();
  return NameFromPath(full.filename().empty() ? full.parent_path().filename().string()
                                              : full.filename().string());
}

// Gives `checkpoint`, whose weights (as read) came from a file in the `kind` folder
// `dir`, that folder's config, key names, format and name.
absl::Status TakeFolderConfig(const fs::path& dir, FolderKind kind,
                              Checkpoint* checkpoint) {
  if (kind == FolderKind::kOpenClip) {
    CLIPSERVE_ASSIGN_OR_RETURN(checkpoint->config, ReadOpenClipFolderConfig(dir));
    checkpoint->format = CheckpointFormat::kOpenClip;
  } else {
    CLIPSERVE_ASSIGN_OR_RETURN(checkpoint->config, ReadHfFolderConfig(dir));
    CLIPSERVE_ASSIGN_OR_RETURN(checkpoint->weights,
                               MapHuggingFaceKeys(std::move(checkpoint->weights)));
    checkpoint->format = CheckpointFormat::kHuggingFace;
  }
  checkpoint->config.name = FolderName(dir);
  return absl::OkStatus();
}

// A file torch.save wrote before PyTorch 1.6: a bare pickle, which clipserve does not
// read (only the zip format, or safetensors).
absl::Status LegacyPickleError(const std::string& path) {
  return absl::UnimplementedError(absl::StrCat(
      path,
      " uses torch.save's legacy (pre-1.6) format; re-save it with a current "
      "PyTorch (torch.save writes zip files by default)"));
}

// The weights in the file `path`, whatever its kind, with the format they came in:
// kOpenAiTorchScript, kStateDict (a torch.save zip) or kSafetensors.
struct WeightsFile {
  TensorMap weights;
  CheckpointFormat format;
  std::vector<std::string> files;  // Checkpoint::weight_files
};

// DataParallel's "module." before every key, as a training checkpoint saves its
// state_dict(), dropped (from torch.save files and safetensors converted from them).
void StripDataParallelPrefix(TensorMap* weights) {
  if (weights->empty()) return;
  for (const auto& [key, tensor] : *weights) {
    if (!absl::StartsWith(key, "module.")) return;
  }
  TensorMap stripped;
  for (auto& [key, tensor] : *weights) stripped.emplace(key.substr(7), std::move(tensor));
  *weights = std::move(stripped);
}

absl::StatusOr<WeightsFile> ReadOneWeightsFile(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(FileKind kind, SniffFile(path));
  WeightsFile file;
  file.files = {path};
  switch (kind) {
    case FileKind::kZip: {
      bool is_torchscript = false;
      CLIPSERVE_ASSIGN_OR_RETURN(file.weights, ReadTorchZip(path, &is_torchscript));
      file.format = is_torchscript ? CheckpointFormat::kOpenAiTorchScript
                                   : CheckpointFormat::kStateDict;
      return file;
    }
    case FileKind::kSafetensors: {
      CLIPSERVE_ASSIGN_OR_RETURN(file.weights, ReadSafetensors(path));
      file.format = CheckpointFormat::kSafetensors;
      return file;
    }
    case FileKind::kLegacyPickle:
      return LegacyPickleError(path);
    case FileKind::kUnknown:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   " is not a recognized checkpoint (expected a TorchScript archive, a "
                   "torch.save zip file, or safetensors)"));
}

// Whether `path` names the index of a checkpoint in several files.
bool IsShardIndex(const std::string& path) {
  return absl::EndsWith(fs::path(path).filename().string(), ".index.json");
}

// The weights of every shard the index at `path` names, read from beside it: all of
// one kind (safetensors or torch.save files), each tensor in one shard only, every
// tensor of the index in the shard it names.
absl::StatusOr<WeightsFile> ReadShardedWeights(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(std::string json, ReadConfigFile(path));
  absl::StatusOr<ShardIndex> index = ParseShardIndex(json);
  if (!index.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", index.status().message()));
  }
  const fs::path dir = fs::path(path).parent_path();
  WeightsFile out;
  std::map<std::string, std::string> file_of;  // tensor -> the shard it came from
  for (size_t i = 0; i < index->files.size(); ++i) {
    const std::string shard = (dir / index->files[i]).string();
    CLIPSERVE_ASSIGN_OR_RETURN(const bool present, IsRegularFile(shard, "checkpoint"));
    if (!present) {
      return absl::NotFoundError(absl::StrCat(path, " names the shard ", index->files[i],
                                              ", which is not there"));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(WeightsFile file, ReadOneWeightsFile(shard));
    if (file.format == CheckpointFormat::kOpenAiTorchScript) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": the shard ", index->files[i],
                       " is a TorchScript archive, not weights"));
    }
    if (i > 0 && file.format != out.format) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": the shards are of two kinds (", CheckpointFormatName(out.format),
          ", then ", CheckpointFormatName(file.format), " in ", index->files[i], ")"));
    }
    out.format = file.format;
    out.files.push_back(shard);
    for (auto& [name, tensor] : file.weights) {
      if (const auto [at, added] = file_of.emplace(name, index->files[i]); !added) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": '", name, "' is in both ", at->second, " and ", index->files[i]));
      }
      out.weights.emplace(name, std::move(tensor));
    }
  }
  for (const auto& [name, file] : index->tensor_file) {
    const auto it = file_of.find(name);
    if (it == file_of.end() || it->second != file) {
      return absl::InvalidArgumentError(absl::StrCat(path, " places '", name, "' in ",
                                                     file, ", which does not hold it"));
    }
  }
  return out;
}

// The weights at `path`: one file of any kind, or every shard of an index.
absl::StatusOr<WeightsFile> ReadAnyWeights(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(WeightsFile file, IsShardIndex(path)
                                                   ? ReadShardedWeights(path)
                                                   : ReadOneWeightsFile(path));
  if (file.format != CheckpointFormat::kOpenAiTorchScript) {
    StripDataParallelPrefix(&file.weights);
  }
  return file;
}

absl::StatusOr<Checkpoint> ReadWeightsFile(const std::string& path,
                                           const ReadCheckpointOptions& options) {
  CLIPSERVE_ASSIGN_OR_RETURN(WeightsFile file, ReadAnyWeights(path));
  Checkpoint checkpoint;
  checkpoint.weights_path = path;
  checkpoint.directory = fs::path(path).parent_path().string();
  checkpoint.weights = std::move(file.weights);
  checkpoint.weight_files = std::move(file.files);
  checkpoint.format = file.format;
  // The weights file of an open_clip or Hugging Face folder, named instead of its
  // folder: the config beside it describes it.
  const fs::path dir = fs::path(path).parent_path();
  if (HasHuggingFaceKeys(checkpoint.weights)) {
    if (options.config.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path,
                       " holds Hugging Face CLIP weights, which their config.json "
                       "describes: --model_config is for OpenAI/open_clip key names"));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(
        const bool has_config,
        IsRegularFile((dir / "config.json").string(), "model configuration"));
    if (!has_config) {
      return absl::InvalidArgumentError(absl::StrCat(
          path,
          " holds Hugging Face CLIP weights (vision_model.*, text_model.*) with no "
          "config.json beside it: load the model's folder, with its config.json"));
    }
    CLIPSERVE_RETURN_IF_ERROR(
        TakeFolderConfig(dir, FolderKind::kHuggingFace, &checkpoint));
    return checkpoint;
  }
  if (options.config.has_value()) {
    checkpoint.config = *options.config;
  } else {
    CLIPSERVE_ASSIGN_OR_RETURN(
        const bool beside_open_clip_config,
        IsRegularFile((dir / "open_clip_config.json").string(), "model configuration"));
    if (beside_open_clip_config) {
      CLIPSERVE_RETURN_IF_ERROR(
          TakeFolderConfig(dir, FolderKind::kOpenClip, &checkpoint));
      return checkpoint;
    }
    CLIPSERVE_ASSIGN_OR_RETURN(checkpoint.config,
                               InferConfigFromStateDict(Shapes(checkpoint.weights)));
    // OpenAI's archives are QuickGELU models; a bare state dict may be either.
    checkpoint.activation_assumed =
        checkpoint.format != CheckpointFormat::kOpenAiTorchScript;
    checkpoint.heads_assumed = true;
  }
  // "model.safetensors.index.json" is named as its shards would be: "model".
  fs::path stem = fs::path(path).stem();
  if (IsShardIndex(path)) stem = stem.stem().stem();
  checkpoint.config.name = NameFromPath(stem.string());
  return checkpoint;
}

// The first of `names` present in `dir`, or NOT_FOUND.
absl::StatusOr<std::string> FirstExisting(const fs::path& dir,
                                          std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const std::string path = (dir / name).string();
    CLIPSERVE_ASSIGN_OR_RETURN(const bool present, IsRegularFile(path, "checkpoint"));
    if (present) return path;
  }
  std::string list;
  for (const char* name : names) absl::StrAppend(&list, list.empty() ? "" : " or ", name);
  return absl::NotFoundError(absl::StrCat(dir.string(), " has no ", list));
}

absl::StatusOr<Checkpoint> ReadDirectory(const fs::path& dir) {
  Checkpoint checkpoint;
  checkpoint.directory = dir.string();
  CLIPSERVE_ASSIGN_OR_RETURN(
      const bool open_clip,
      IsRegularFile((dir / "open_clip_config.json").string(), "model configuration"));
  CLIPSERVE_ASSIGN_OR_RETURN(
      const bool hugging_face,
      IsRegularFile((dir / "config.json").string(), "model configuration"));
  if (!open_clip && !hugging_face) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir.string(), " is a directory without open_clip_config.json or config.json"));
  }
  // A model hub's folder may hold both configs and the weights of either: open_clip's
  // first, else Hugging Face's (one file, or the index of several).
  absl::StatusOr<std::string> open_clip_weights =
      open_clip ? FirstExisting(
                      dir, {"open_clip_model.safetensors", "open_clip_pytorch_model.bin"})
                : absl::NotFoundError("");
  absl::StatusOr<std::string> hf_weights =
      hugging_face && !open_clip_weights.ok()
          ? FirstExisting(dir, {"model.safetensors", "model.safetensors.index.json",
                                "pytorch_model.bin", "pytorch_model.bin.index.json"})
          : absl::NotFoundError("");
  FolderKind kind;
  if (open_clip_weights.ok()) {
    kind = FolderKind::kOpenClip;
    checkpoint.weights_path = *std::move(open_clip_weights);
  } else if (hf_weights.ok()) {
    kind = FolderKind::kHuggingFace;
    checkpoint.weights_path = *std::move(hf_weights);
  } else if (!hugging_face) {
    return open_clip_weights.status();
  } else if (!open_clip) {
    return hf_weights.status();
  } else {
    return absl::NotFoundError(absl::StrCat(
        open_clip_weights.status().message(), ", nor the Hugging Face weights of its ",
        "config.json: ", hf_weights.status().message()));
  }
  // The folder's config describes its weights, whatever file format carries them.
  CLIPSERVE_ASSIGN_OR_RETURN(WeightsFile file, ReadAnyWeights(checkpoint.weights_path));
  checkpoint.weights = std::move(file.weights);
  checkpoint.weight_files = std::move(file.files);
  CLIPSERVE_RETURN_IF_ERROR(TakeFolderConfig(dir, kind, &checkpoint));
  return checkpoint;
}

// Maps the part of an HF encoder-layer key after "layers.N.".
std::optional<std::string> MapLayerSuffix(absl::string_view rest) {
  static const std::array<std::pair<absl::string_view, absl::string_view>, 5> kRules = {{
      {"layer_norm1.", "ln_1."},
      {"layer_norm2.", "ln_2."},
      {"mlp.fc1.", "mlp.c_fc."},
      {"mlp.fc2.", "mlp.c_proj."},
      {"self_attn.out_proj.", "attn.out_proj."},
  }};
  for (const auto& [from, to] : kRules) {
    if (absl::StartsWith(rest, from)) return absl::StrCat(to, rest.substr(from.size()));
  }
  return std::nullopt;
}

}  // namespace

absl::string_view CheckpointFormatName(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kOpenAiTorchScript:
      return "openai_torchscript";
    case CheckpointFormat::kStateDict:
      return "state_dict";
    case CheckpointFormat::kSafetensors:
      return "safetensors";
    case CheckpointFormat::kOpenClip:
      return "open_clip";
    case CheckpointFormat::kHuggingFace:
      return "hf";
    case CheckpointFormat::kDemo:
      return "demo";
  }
  return "unknown";
}

absl::StatusOr<TensorMap> MapHuggingFaceKeys(TensorMap hf) {
  static const std::map<std::string, std::string> kDirect = {
      {"logit_scale", "logit_scale"},
      {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
      {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
      {"vision_model.embeddings.position_embedding.weight",
       "visual.positional_embedding"},
      {"vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"},
      {"vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"},
      {"vision_model.post_layernorm.weight", "visual.ln_post.weight"},
      {"vision_model.post_layernorm.bias", "visual.ln_post.bias"},
      {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
      {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
      {"text_model.final_layer_norm.weight", "ln_final.weight"},
      {"text_model.final_layer_norm.bias", "ln_final.bias"},
  };
  static const std::array<std::pair<absl::string_view, absl::string_view>, 2> kLayers = {{
      {"vision_model.encoder.layers.", "visual.transformer.resblocks."},
      {"text_model.encoder.layers.", "transformer.resblocks."},
  }};
  // Transposing or fusing below makes each tensor whole, before the model's own checks
  // run: views that repeat stored values (stride 0), or many tensors over one storage,
  // would turn bytes of file into gigabytes. Real checkpoints store each value once.
  uint64_t view_bytes = 0;
  uint64_t stored_bytes = 0;
  absl::flat_hash_set<const void*> storages;
  for (const auto& [key, tensor] : hf) {
    if (absl::EndsWith(key, "position_ids")) continue;
    const uint64_t storage = tensor.storage().nbytes();
    const uint64_t element = static_cast<uint64_t>(tensor.element_size());
    if (static_cast<uint64_t>(tensor.numel()) >
        storage / std::max<uint64_t>(element, 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Hugging Face tensor '", key,
                       "' repeats stored values (a stride-0 or overlapping view)"));
    }
    view_bytes += static_cast<uint64_t>(tensor.numel()) * element;
    if (storages.insert(tensor.storage().data()).second) stored_bytes += storage;
  }
  if (view_bytes > stored_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hugging Face tensors hold ", view_bytes, " bytes over ",
                     stored_bytes, " stored: they share stored values"));
  }
  TensorMap out;
  // "<block prefix>|weight" -> {q, k, v}
  std::map<std::string, std::array<torch::Tensor, 3>> qkv;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        for (auto& [key, tensor] : hf) {
          if (absl::EndsWith(key, "position_ids")) continue;
          if (auto it = kDirect.find(key); it != kDirect.end()) {
            out.emplace(it->second, std::move(tensor));
            continue;
          }
          if (key == "visual_projection.weight") {
            out.emplace("visual.proj", tensor.t().contiguous());
            continue;
          }
          if (key == "text_projection.weight") {
            out.emplace("text_projection", tensor.t().contiguous());
            continue;
          }
          bool mapped = false;
          for (const auto& [from, to] : kLayers) {
            if (!absl::StartsWith(key, from)) continue;
            absl::string_view rest = absl::string_view(key).substr(from.size());
            const size_t dot = rest.find('.');
            if (dot == absl::string_view::npos) break;
            const std::string block = absl::StrCat(to, rest.substr(0, dot), ".");
            rest = rest.substr(dot + 1);
            if (auto suffix = MapLayerSuffix(rest)) {
              out.emplace(block + *suffix, std::move(tensor));
              mapped = true;
            } else {
              for (int i = 0; i < 3; ++i) {
                const std::string proj =
                    absl::StrCat("self_attn.", absl::string_view(&"qkv"[i], 1), "_proj.");
                if (absl::StartsWith(rest, proj)) {
                  const std::string kind(rest.substr(proj.size()));
                  qkv[block + "|" + kind][i] = std::move(tensor);
                  mapped = true;
                  break;
                }
              }
            }
            break;
          }
          if (!mapped) {
            throw std::invalid_argument(
                absl::StrCat("no clipserve module for Hugging Face key '", key, "'"));
          }
        }
      },
      "mapping Hugging Face keys", absl::StatusCode::kInvalidArgument));
  for (auto& entry : qkv) {
    const std::string& id = entry.first;
    auto& parts = entry.second;  // Not a structured binding: lambdas capture it below.
    const size_t bar = id.find('|');
    const std::string block = id.substr(0, bar);
    const std::string kind = id.substr(bar + 1);
    for (int i = 0; i < 3; ++i) {
      if (!parts[i].defined()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Hugging Face checkpoint lacks the ",
                         absl::string_view(&"qkv"[i], 1), "_proj.", kind, " of ", block));
      }
      // Before torch::cat, which would promote one integer part beside floating ones
      // past the loader's check that weights are floating-point.
      if (!parts[i].is_floating_point()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the Hugging Face checkpoint's ",
                         absl::string_view(&"qkv"[i], 1), "_proj.", kind, " of ", block,
                         " holds integers; the model expects a floating-point "
                         "weight"));
      }
    }
    CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
        [&] {
          out.emplace(block + "attn.in_proj_" + kind,
                      torch::cat({parts[0], parts[1], parts[2]}, 0));
        },
        absl::StrCat("fusing the q/k/v ", kind, " of ", block),
        absl::StatusCode::kInvalidArgument));
  }
  return out;
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  return ReadSmallFile(path, "model configuration", kMaxConfigFileBytes);
}

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path,
                                          const ReadCheckpointOptions& options) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat("no checkpoint at ", path));
  }
  // A folder on the way that may not be searched, and the like.
  if (ec) return FileError(ec.value(), "checkpoint", path);
  if (fs::is_directory(status)) {
    if (options.config.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model_config is for a single weights file; the folder ", path,
                       " carries its own config"));
    }
    return ReadDirectory(fs::path(path));
  }
  return ReadWeightsFile(path, options);
}

absl::StatusOr<std::string> Sha256OfFiles(const std::vector<std::string>& paths) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(),
                                                         &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("SHA-256 unavailable");
  }
  std::vector<unsigned char> buffer(1 << 20);
  for (const std::string& path : paths) {
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"),
                                               &std::fclose);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    size_t n = 0;
    while ((n = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0) {
      EVP_DigestUpdate(ctx.get(), buffer.data(), n);
    }
    if (std::ferror(file.get()))
      return absl::DataLossError(absl::StrCat("read error on ", path));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i)
    absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

}  // namespace clipserve
