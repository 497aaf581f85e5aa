#ifndef CLIPSERVE_SERVER_MODEL_CLIP_MODEL_H_
#define CLIPSERVE_SERVER_MODEL_CLIP_MODEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/model/model_config.h"

namespace clipserve {

// The precision a model computes in. Outputs are always fp32. kInt8 (CPU only): the
// linear layers of every transformer block multiply int8 weights (one scale per
// output row) by int8-quantized inputs (one scale per call, Int8Linear); everything
// else runs in fp32 or bf16 (Int8Options).
enum class Precision { kFloat32, kBFloat16, kFloat16, kInt8 };

// How Precision::kInt8 runs.
struct Int8Options {
  // Every product from one row: int8 (its quantization included) beats bf16 at every
  // size of CLIP's, measured on a 2-core EPYC (Zen 4) with each call on a new input, as
  // in serving: a ViT-B-32 image alone (50 rows) 13.5 ms against 26.4, a 20-token
  // caption alone 4.8 ms against 9.0 (bench/model_benchmark). fp32 is slower still.
  static constexpr int64_t kDefaultMinRows = 1;

  // Everything but the int8 products in bf16 (for CPUs with AVX512-BF16 or AMX);
  // otherwise fp32.
  bool bf16 = false;
  // The fewest input rows (batch x tokens) a linear layer takes the int8 kernel for;
  // smaller products run in the dtype above. Negative: kDefaultMinRows.
  int64_t min_rows = -1;
};

absl::string_view PrecisionName(Precision precision);  // "fp32", "bf16", "fp16", "int8"
// Parses "fp32", "bf16", "fp16", "int8". INVALID_ARGUMENT otherwise.
absl::StatusOr<Precision> ParsePrecision(absl::string_view name);

// Tensors by checkpoint key ("visual.conv1.weight", "token_embedding.weight", ...).
using TensorMap = std::map<std::string, torch::Tensor>;

// CLIP: an image tower (ViT or ModifiedResNet), a text tower (causal Transformer or
// CBOW), both projected to embed_dim, and the learned logit scale.
//
// Thread-safety: after construction and loading, EncodeImage/EncodeText may be called
// concurrently from any number of threads (they run under InferenceMode and only read
// the weights). LoadWeights and To must not run concurrently with anything else.
// LibTorch exceptions never escape: they come back as absl::Status.
class ClipModel {
 public:
  // Builds the networks for `config` on the CPU in fp32 with random weights drawn
  // from a generator seeded with `seed` (OpenAI's initialization scheme), so the same
  // seed always gives the same model. INVALID_ARGUMENT for an invalid config.
  static absl::StatusOr<std::unique_ptr<ClipModel>> Create(const ClipConfig& config,
                                                           uint64_t seed = 0);

  // Builds the networks for `config` without drawing random weights (they keep
  // LibTorch's construction-time values), for a caller that LoadWeights() next: the
  // strict load overwrites every parameter and buffer. INVALID_ARGUMENT for an invalid
  // config.
  static absl::StatusOr<std::unique_ptr<ClipModel>> CreateForLoading(
      const ClipConfig& config);

  // Copies checkpoint weights into the model, converting dtypes. Strict: every
  // parameter and buffer of the model must be present with exactly its shape, and no
  // other key may be present (OpenAI's non-tensor attributes input_resolution,
  // context_length and vocab_size are ignored). Entries are released as they are
  // copied, so loading holds at most one extra copy of the weights. INVALID_ARGUMENT
  // naming the first missing, unexpected or misshapen key and both shapes.
  // FAILED_PRECONDITION after To(int8): load first.
  absl::Status LoadWeights(TensorMap weights);

  // Moves the weights to `device` in `precision` (int8 packs its int8 weights here,
  // once, beside the float ones). UNIMPLEMENTED for fp16 on CPU, int8 on a GPU or
  // without a quantized engine; INVALID_ARGUMENT/UNAVAILABLE when the device cannot be
  // used; INVALID_ARGUMENT naming the first weight that overflows the narrower type
  // (fp16 ends at 65504). After a failure once the conversion started, the model may be
  // partly converted: discard it.
  absl::Status To(const torch::Device& device, Precision precision,
                  const Int8Options& int8_options = {});

  // images: float [N, 3, S, S], S = config().vision.image_size, already normalized,
  // on any device. A pinned host tensor is copied to a GPU asynchronously on the
  // current stream: do not write to it until that stream has passed the copy (copying
  // the result back to the host waits for it). Returns fp32 [N, embed_dim] on the model's
  // device, L2-normalized when `normalize`. INVALID_ARGUMENT for a wrong shape; INTERNAL
  // (or RESOURCE_EXHAUSTED for out of memory) when LibTorch fails.
  absl::StatusOr<torch::Tensor> EncodeImage(const torch::Tensor& images,
                                            bool normalize) const;

  // ids: int64 [N, L], 1 <= L <= context_length, each row start token, tokens, end
  // token, then padding (id 0). Each row ends at its first end token, an <|endoftext|>
  // the text typed included: the transformer pools there, CBOW averages up to there,
  // later tokens change nothing. That position is the reference's text.argmax(-1)
  // (CLIP's end token is its vocabulary's last id); with `end_of_text_id` >= 0 it is
  // the first position holding that id instead, as Hugging Face finds it, which is the
  // same for CLIP's vocabulary and still right for one with ids above its end token
  // (a row without it falls back to argmax). Pinned host inputs are copied
  // asynchronously, as for EncodeImage. Returns fp32 [N, embed_dim] on the model's
  // device, normalized when `normalize`.
  absl::StatusOr<torch::Tensor> EncodeText(const torch::Tensor& ids, bool normalize,
                                           int64_t end_of_text_id = -1) const;

  // exp(learned logit_scale), clamped at 100 as CLIP does; NaN for a NaN one.
  float logit_scale() const;

  const ClipConfig& config() const { return config_; }
  const torch::Device& device() const { return device_; }
  Precision precision() const { return precision_; }
  // Number of parameters.
  int64_t num_parameters() const;

  // Every parameter and buffer under its checkpoint key.
  TensorMap NamedTensors() const;

 private:
  explicit ClipModel(const ClipConfig& config);
  void InitializeRandom(uint64_t seed);

  ClipConfig config_;
  // The image tower's keys are prefixed "visual."; the text tower's are top-level.
  std::shared_ptr<torch::nn::Module> visual_;
  std::shared_ptr<torch::nn::Module> text_;
  std::function<torch::Tensor(const torch::Tensor&)> encode_image_;
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> encode_text_;
  torch::Tensor logit_scale_;
  torch::Device device_ = torch::kCPU;
  Precision precision_ = Precision::kFloat32;
  // What the towers compute in (inputs are converted to it).
  torch::ScalarType dtype_ = torch::kFloat;
};

// L2-normalizes each row (features [N, D]).
torch::Tensor NormalizeRows(const torch::Tensor& features);

// Runs `fn`, turning a LibTorch exception into `code` (RESOURCE_EXHAUSTED for out of
// memory: c10::OutOfMemoryError, std::bad_alloc, or an allocator's or CUDA library's
// allocation failure by its message) with "what: " and the exception's first line. The
// model boundary's only catch site: nothing in server/model lets an exception escape.
absl::Status CatchTorchErrors(const std::function<void()>& fn, absl::string_view what,
                              absl::StatusCode code = absl::StatusCode::kInternal);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_CLIP_MODEL_H_
