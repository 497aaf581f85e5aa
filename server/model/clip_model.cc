#include "server/model/clip_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/common/status_macros.h"
#include "server/model/cbow_text_encoder.h"
#include "server/model/device.h"
#include "server/model/int8_linear.h"
#include "server/model/layers.h"
#include "server/model/modified_resnet.h"
#include "server/model/text_transformer.h"
#include "server/model/vision_transformer.h"

namespace clipserve {
namespace {

// The name PyTorch users know an integer dtype by.
const char* IntegerTypeName(torch::ScalarType type) {
  switch (type) {
    case torch::kBool:
      return "bool";
    case torch::kByte:
      return "uint8";
    case torch::kChar:
      return "int8";
    case torch::kShort:
      return "int16";
    case torch::kInt:
      return "int32";
    case torch::kLong:
      return "int64";
    default:
      return "an integer type";
  }
}

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

torch::ScalarType ScalarTypeOf(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return torch::kFloat;
    case Precision::kBFloat16:
      return torch::kBFloat16;
    case Precision::kFloat16:
      return torch::kHalf;
    case Precision::kInt8:  // what is not an int8 product: see Int8Options
      return torch::kFloat;
  }
  return torch::kFloat;
}

// Packs the linear layers of every transformer under `module` (see
// Transformer::SetProducts).
void SetProducts(torch::nn::Module& module, int64_t min_rows, bool bf16_packing) {
  for (const std::shared_ptr<torch::nn::Module>& m : module.modules()) {
    if (auto* transformer = m->as<TransformerImpl>()) {
      transformer->SetProducts(min_rows, bf16_packing);
    }
  }
}

void AddNamed(const torch::nn::Module& module, const std::string& prefix,
              TensorMap& out) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace(prefix + item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.emplace(prefix + item.key(), item.value());
  }
}

}  // namespace

absl::string_view PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return "fp32";
    case Precision::kBFloat16:
      return "bf16";
    case Precision::kFloat16:
      return "fp16";
    case Precision::kInt8:
      return "int8";
  }
  return "fp32";
}

absl::StatusOr<Precision> ParsePrecision(absl::string_view name) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "bf16") return Precision::kBFloat16;
  if (name == "fp16") return Precision::kFloat16;
  if (name == "int8") return Precision::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("precision '", name, "' is not fp32, bf16, fp16 or int8"));
}

absl::Status CatchTorchErrors(const std::function<void()>& fn, absl::string_view what,
                              absl::StatusCode code) {
  bool out_of_memory = false;
  std::string message;
  try {
    fn();
    return absl::OkStatus();
  } catch (const c10::OutOfMemoryError& e) {
    out_of_memory = true;
    message = e.what();
  } catch (const std::bad_alloc& e) {
    // A standard container's allocation beside the tensors (the engine's encode step
    // builds vectors in here): memory as much as the allocator's.
    out_of_memory = true;
    message = e.what();
  } catch (const std::exception& e) {
    message = e.what();
  }
  // LibTorch messages carry a C++ backtrace after the first line.
  const size_t newline = message.find('\n');
  if (newline != std::string::npos) message.resize(newline);
  // Allocation failures that are not c10::OutOfMemoryError: the CPU allocator's, and
  // the CUDA libraries' own (CUBLAS_STATUS_ALLOC_FAILED when a worker's first matmul
  // creates its cuBLAS handle, CUDNN_STATUS_ALLOC_FAILED, ...). cublasCreate() on a
  // nearly full GPU mostly says CUBLAS_STATUS_NOT_INITIALIZED instead; as memory,
  // the batch is retried after the cached blocks are released, which gives the
  // handle its room.
  out_of_memory = out_of_memory || absl::StrContains(message, "out of memory") ||
                  absl::StrContains(message, "DefaultCPUAllocator: can't allocate") ||
                  absl::StrContains(message, "_STATUS_ALLOC_FAILED") ||
                  (absl::StrContains(message, "CUBLAS_STATUS_NOT_INITIALIZED") &&
                   absl::StrContains(message, "cublasCreate"));
  return absl::Status(out_of_memory ? absl::StatusCode::kResourceExhausted : code,
                      absl::StrCat(what, ": ", message));
}

torch::Tensor NormalizeRows(const torch::Tensor& features) {
  return features / features.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);
}

ClipModel::ClipModel(const ClipConfig& config) : config_(config) {
  if (config.vision.arch == VisionArch::kVisionTransformer) {
    auto vit = std::make_shared<VisionTransformerImpl>(config.vision, config.embed_dim,
                                                       config.quick_gelu);
    encode_image_ = [vit](const torch::Tensor& x) { return vit->forward(x); };
    visual_ = vit;
  } else {
    auto resnet = std::make_shared<ModifiedResNetImpl>(config.vision, config.embed_dim);
    encode_image_ = [resnet](const torch::Tensor& x) { return resnet->forward(x); };
    visual_ = resnet;
  }
  if (config.text.arch == TextArch::kTransformer) {
    auto text = std::make_shared<TextTransformerImpl>(config.text, config.embed_dim,
                                                      config.quick_gelu);
    encode_text_ = [text](const torch::Tensor& ids, const torch::Tensor& lengths) {
      return text->forward(ids, lengths);
    };
    text_ = text;
  } else {
    auto cbow = std::make_shared<CbowTextEncoderImpl>(config.text, config.embed_dim);
    encode_text_ = [cbow](const torch::Tensor& ids, const torch::Tensor& lengths) {
      return cbow->forward(ids, lengths);
    };
    text_ = cbow;
  }
  logit_scale_ = torch::full({}, std::log(1.0 / 0.07));
  visual_->eval();
  text_->eval();
}

absl::StatusOr<std::unique_ptr<ClipModel>> ClipModel::Create(const ClipConfig& config,
                                                             uint64_t seed) {
  CLIPSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ClipModel> model, CreateForLoading(config));
  CLIPSERVE_RETURN_IF_ERROR(
      CatchTorchErrors([&] { model->InitializeRandom(seed); }, "initializing the model"));
  return model;
}

absl::StatusOr<std::unique_ptr<ClipModel>> ClipModel::CreateForLoading(
    const ClipConfig& config) {
  CLIPSERVE_RETURN_IF_ERROR(ValidateConfig(config));
  std::unique_ptr<ClipModel> model;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        torch::NoGradGuard no_grad;
        model.reset(new ClipModel(config));
      },
      "building the model"));
  return model;
}

void ClipModel::InitializeRandom(uint64_t seed) {
  // OpenAI's scheme, driven by parameter names: normal weights scaled by fan-in,
  // small embeddings, LayerNorm/BatchNorm at identity, zero biases.
  torch::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& [name, tensor] : NamedTensors()) {
    if (!tensor.is_floating_point()) continue;
    const bool is_norm =
        absl::StrContains(name, "ln_") || absl::StrContains(name, ".bn") ||
        absl::StartsWith(name, "visual.bn") || absl::StrContains(name, "downsample.1");
    if (name == "logit_scale" || absl::StrContains(name, "running_")) continue;
    if (is_norm) continue;  // weight 1, bias 0 from construction
    if (absl::EndsWith(name, "bias")) {
      tensor.zero_();
      continue;
    }
    double std = 0.02;
    if (name == "token_embedding.weight") {
      std = 0.02;
    } else if (name == "positional_embedding") {
      std = 0.01;
    } else if (tensor.dim() == 1) {
      std = 1.0 / std::sqrt(static_cast<double>(tensor.size(0)));
    } else if (absl::EndsWith(name, "proj") || absl::EndsWith(name, "projection") ||
               absl::EndsWith(name, "positional_embedding")) {
      std = 1.0 / std::sqrt(static_cast<double>(tensor.size(0)));  // [in, out]
    } else {
      int64_t fan_in = 1;
      for (int64_t d = 1; d < tensor.dim(); ++d) fan_in *= tensor.size(d);
      std = 1.0 / std::sqrt(static_cast<double>(fan_in));
    }
    tensor.normal_(0.0, std, gen);
  }
}

TensorMap ClipModel::NamedTensors() const {
  TensorMap out;
  AddNamed(*visual_, "visual.", out);
  AddNamed(*text_, "", out);
  out.emplace("logit_scale", logit_scale_);
  return out;
}

int64_t ClipModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : visual_->parameters()) n += p.numel();
  for (const auto& p : text_->parameters()) n += p.numel();
  return n + 1;
}

absl::Status ClipModel::LoadWeights(TensorMap weights) {
  if (precision_ == Precision::kInt8) {
    // The packed int8 weights would keep the old values.
    return absl::FailedPreconditionError("LoadWeights after To(int8): load first");
  }
  static const std::set<std::string> kIgnored = {"input_resolution", "context_length",
                                                 "vocab_size"};
  for (const std::string& key : kIgnored) weights.erase(key);
  TensorMap targets = NamedTensors();
  // BatchNorm's step counter: inference never reads it, and PyTorch's own loading
  // leaves it as it was when a state dict lacks it (converters that keep only float
  // tensors drop it).
  const auto optional = [](const std::string& key) {
    return absl::EndsWith(key, ".num_batches_tracked");
  };
  for (const auto& [key, target] : targets) {
    auto it = weights.find(key);
    if (it == weights.end() && optional(key)) continue;
    if (it == weights.end()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint is missing '", key,
                                                     "' (the model expects shape ",
                                                     ShapeString(target.sizes()), ")"));
    }
    if (it->second.sizes() != target.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", key, "' has shape ", ShapeString(it->second.sizes()),
          " in the checkpoint but the model expects ", ShapeString(target.sizes())));
    }
    // Integers where a floating weight belongs are quantized or damaged values that
    // copying would turn into floats without a word (torch.save and safetensors both
    // store every integer dtype, for buffers).
    if (target.is_floating_point() && !it->second.is_floating_point()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", key, "' is ", IntegerTypeName(it->second.scalar_type()),
                       " in the checkpoint; the model expects a floating-point weight"));
    }
    // A NaN or an infinity in a weight would answer every call OK with NaN
    // embeddings. logit_scale may be +inf (clamped to log 100, as CLIP does).
    // A double past float's range becomes an infinity in the copy: checked as copied.
    if (key != "logit_scale" && it->second.is_floating_point() &&
        !torch::isfinite(it->second.scalar_type() == torch::kDouble &&
                                 target.is_floating_point()
                             ? it->second.to(target.scalar_type())
                             : it->second)
             .all()
             .item<bool>()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", key, "' holds NaN or infinite values in the checkpoint"));
    }
  }
  if (auto scale = weights.find("logit_scale");
      scale != weights.end() && scale->second.numel() == 1) {
    const float value = scale->second.to(torch::kFloat).item<float>();
    if (!(std::exp(value) > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'logit_scale' is ", value, " in the checkpoint: exp(", value,
                       ") is not a positive temperature scale"));
    }
  }
  for (const auto& [key, tensor] : weights) {
    if (targets.count(key) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint has unexpected key '",
                                                     key, "' with shape ",
                                                     ShapeString(tensor.sizes())));
    }
  }
  return CatchTorchErrors(
      [&] {
        torch::NoGradGuard no_grad;
        for (auto& [key, target] : targets) {
          auto it = weights.find(key);
          if (it == weights.end()) continue;  // optional(key)
          target.copy_(it->second);
          weights.erase(it);  // release the checkpoint's copy at once
        }
      },
      "copying checkpoint weights");
}

absl::Status ClipModel::To(const torch::Device& device, Precision precision,
                           const Int8Options& int8_options) {
  if (device.is_cpu() && precision == Precision::kFloat16) {
    return absl::UnimplementedError(
        "fp16 is not supported on CPU; use fp32, bf16 or int8");
  }
  const bool int8 = precision == Precision::kInt8;
  if (int8 && !device.is_cpu()) {
    return absl::UnimplementedError(
        "int8 runs on the CPU only; use fp16 or bf16 on a GPU");
  }
  if (int8) CLIPSERVE_RETURN_IF_ERROR(CheckInt8Kernel());
  CLIPSERVE_RETURN_IF_ERROR(CheckDeviceUsable(device));
  const torch::ScalarType dtype =
      int8 && int8_options.bf16 ? torch::kBFloat16 : ScalarTypeOf(precision);
  int64_t min_rows = -1;
  if (int8) {
    min_rows =
        int8_options.min_rows >= 0 ? int8_options.min_rows : Int8Options::kDefaultMinRows;
  }
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        torch::NoGradGuard no_grad;
        visual_->to(device, dtype);
        text_->to(device, dtype);
      },
      "moving the model"));
  // LoadWeights() refused non-finite weights, but a finite fp32 value can overflow a
  // narrower type (fp16 ends at 65504): every call would then answer with NaN rows,
  // which the engine fails one by one. Refuse the precision here instead.
  if (dtype != torch::kFloat) {
    for (const auto& [key, converted] : NamedTensors()) {
      if (key == "logit_scale" || !converted.is_floating_point()) continue;
      const torch::Tensor& tensor = converted;  // a binding cannot be captured in C++17
      bool finite = true;
      CLIPSERVE_RETURN_IF_ERROR(
          CatchTorchErrors([&] { finite = torch::isfinite(tensor).all().item<bool>(); },
                           "checking the converted weights"));
      if (!finite) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", key, "' holds values beyond the range of ", c10::toString(dtype),
            ", which --precision=", PrecisionName(precision),
            " runs it in: use --precision=",
            dtype == torch::kHalf ? "bf16 or fp32" : "fp32"));
      }
    }
  }
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        torch::NoGradGuard no_grad;
        // Packed from the weights just converted, after any earlier packing is dropped
        // (so from bf16-rounded weights when the rest runs in bf16). bf16 weights are
        // laid out once for oneDNN's bf16 product (Bf16Linear), where the build has it.
        SetProducts(*visual_, min_rows, /*bf16_packing=*/true);
        SetProducts(*text_, min_rows, /*bf16_packing=*/true);
        // BatchNorm's integer counter stays integer; logit_scale stays fp32.
        logit_scale_ = logit_scale_.to(device, torch::kFloat);
        // Workers run on streams of their own, which do not wait for the stream
        // these copies and conversions ran on.
        if (device.is_cuda()) torch::cuda::synchronize(device.index());
      },
      "moving the model"));
  device_ = device;
  precision_ = precision;
  dtype_ = dtype;
  return absl::OkStatus();
}

float ClipModel::logit_scale() const {
  const float scale = std::exp(logit_scale_.item<float>());
  // NaN passes through (std::min would make it 100), for the service to refuse.
  return std::isnan(scale) ? scale : std::min(100.0f, scale);
}

absl::StatusOr<torch::Tensor> ClipModel::EncodeImage(const torch::Tensor& images,
                                                     bool normalize) const {
  const int64_t s = config_.vision.image_size;
  if (images.dim() != 4 || images.size(1) != 3 || images.size(2) != s ||
      images.size(3) != s || images.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images must be [N, 3, ", s, ", ", s, "], got ", ShapeString(images.sizes())));
  }
  torch::Tensor out;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        c10::InferenceMode guard;
        // Copied in the caller's dtype, asynchronously when the caller's buffer is
        // pinned (HostBatchOptions), then converted on the device.
        torch::Tensor x =
            images.to(device_, images.scalar_type(), /*non_blocking=*/true).to(dtype_);
        out = encode_image_(x).to(torch::kFloat);
        if (normalize) out = NormalizeRows(out);
      },
      "encoding images"));
  return out;
}

absl::StatusOr<torch::Tensor> ClipModel::EncodeText(const torch::Tensor& ids,
                                                    bool normalize,
                                                    int64_t end_of_text_id) const {
  if (ids.dim() != 2 || ids.size(0) == 0 || ids.size(1) < 1 ||
      ids.size(1) > config_.text.context_length || ids.scalar_type() != torch::kLong) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ids must be int64 [N, L] with 1 <= L <= ", config_.text.context_length, ", got ",
        ShapeString(ids.sizes())));
  }
  // One pass and, for ids already on a GPU, one wait for both bounds; a device that
  // fails here answers INTERNAL like any other failed run.
  int64_t lowest = 0;
  int64_t highest = 0;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        const auto [min, max] = torch::aminmax(ids);
        const torch::Tensor bounds = torch::stack({min, max}).cpu();
        lowest = bounds[0].item<int64_t>();
        highest = bounds[1].item<int64_t>();
      },
      "checking token ids"));
  if (lowest < 0 || highest >= config_.text.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ids must be in [0, ", config_.text.vocab_size, ")"));
  }
  torch::Tensor out;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        c10::InferenceMode guard;
        const torch::Tensor on_device =
            ids.to(device_, ids.scalar_type(), /*non_blocking=*/true);
        // As the reference, text.argmax(-1): the first position of the row's highest
        // id, which is its end token (the vocabulary's last id), or the first one when
        // the text itself spells <|endoftext|>. Only the tokens up to there count.
        torch::Tensor end = on_device.argmax(-1);
        if (end_of_text_id >= 0) {
          const torch::Tensor is_end = on_device == end_of_text_id;
          end = torch::where(is_end.any(-1), is_end.to(torch::kInt).argmax(-1), end);
        }
        const torch::Tensor lengths = end + 1;
        out = encode_text_(on_device, lengths).to(torch::kFloat);
        if (normalize) out = NormalizeRows(out);
      },
      "encoding texts"));
  return out;
}

}  // namespace clipserve
