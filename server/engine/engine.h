#ifndef CLIPSERVE_SERVER_ENGINE_ENGINE_H_
#define CLIPSERVE_SERVER_ENGINE_ENGINE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

// The seam between the gRPC service and the model: what the service asks of an
// engine. EmbeddingEngine (embedding_engine.h) is the real one; service tests plug in
// fakes. No LibTorch, no gRPC.

namespace clipserve {

// One image as a client sent it: still encoded, or raw RGB8 pixels.
struct ImageInput {
  // Encoded file bytes (JPEG, PNG, WebP, GIF, BMP), when !is_raw.
  std::string encoded;
  // Raw interleaved RGB8, row-major, width * height * 3 bytes, when is_raw.
  bool is_raw = false;
  std::string rgb8;
  int64_t width = 0;
  int64_t height = 0;
};

// Shared between a call and the engine work it started: set when the client cancels
// (or the call otherwise ends early), so queued items are dropped, not computed.
class CancellationFlag {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

struct EmbedOptions {
  // L2-normalize each embedding.
  bool normalize = true;
  // Texts: cut at the context length (else an over-long text is INVALID_ARGUMENT).
  bool truncate = true;
  // Items still queued at the deadline are dropped with DEADLINE_EXCEEDED. Wall-clock
  // time (absl::Now()'s, as gRPC reports deadlines); engines convert it to their clock.
  absl::Time deadline = absl::InfiniteFuture();
  // Optional: items still queued when it is set are dropped with CANCELLED.
  std::shared_ptr<const CancellationFlag> cancellation;
  // Optional: the number each item has in the caller's own request, used in error
  // field names ("texts[7]") when an engine is handed a subset of that request (as
  // CachingEngine hands on its misses). Empty: item i is number i.
  std::vector<int> item_numbers;
};

// Embeddings of one request, rows in input order.
struct EmbedResult {
  int dim = 0;
  // rows * dim floats, row-major.
  std::vector<float> values;
  // Texts only, per row: whether the text was truncated and the tokens it kept
  // (start and end included). Empty for images.
  std::vector<bool> truncated;
  std::vector<int> num_tokens;

  int rows() const { return dim == 0 ? 0 : static_cast<int>(values.size() / dim); }
  const float* row(int i) const { return values.data() + static_cast<size_t>(i) * dim; }
};

// One tokenized text: ids with start and end tokens, no padding.
struct TokenizedResult {
  std::vector<int32_t> ids;
  bool truncated = false;
};

// What GetModelInfo reports.
struct ModelDescription {
  std::string name;
  std::string vision_architecture;  // "vit" or "modified_resnet"
  int vision_width = 0;
  int vision_layers = 0;
  int vision_patch_size = 0;
  int vision_heads = 0;
  std::vector<int> vision_stage_layers;
  std::string text_architecture;  // "transformer" or "cbow"
  int text_width = 0;
  int text_layers = 0;
  int text_heads = 0;
  int embed_dim = 0;
  int image_size = 0;
  std::array<float, 3> image_mean{};
  std::array<float, 3> image_std{};
  int context_length = 0;
  int vocab_size = 0;
  float logit_scale = 0;  // exp(learned), clamped at 100
  std::string precision;  // "fp32", "bf16", "fp16", "int8"
  std::string device;     // "cpu", "cuda:0"
  std::string checkpoint_format;
  std::string checkpoint_sha256;
  bool random_weights = false;
  bool exif_orientation = false;  // the decode option: images turned upright by EXIF
};

// Which tower an input goes through (metrics label values "image" and "text").
enum class Modality { kImage, kText };

inline absl::string_view ModalityName(Modality modality) {
  return modality == Modality::kImage ? "image" : "text";
}

// What an engine reports about its work as it happens, for metrics. The engine does
// not own the observer, which must outlive it. Methods are called from the engine's
// preprocessing and batch worker threads, concurrently: implementations are
// thread-safe, must not block for long and must not call back into the engine. Every
// method has an empty default, so an observer overrides only what it needs.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;

  // One preprocessing task starts, `waited` after it was submitted: how long it waited
  // for one of the preprocessing threads (the tasks OnPreprocessed() reports, when
  // they run; not those skipped for a call that ended meanwhile).
  virtual void OnPreprocessWait(Modality /*modality*/, absl::Duration /*waited*/) {}

  // One preprocessing task is done (successfully or not): decode + resize + normalize
  // of one image, or cleaning + BPE of one request's texts. `elapsed` is its run time.
  virtual void OnPreprocessed(Modality /*modality*/, absl::Duration /*elapsed*/) {}

  // A batch of `queue_waits.size()` items went through the model (or failed there):
  // queue_waits[i] is how long item i waited in its queue before the batch formed,
  // `inference` how long the model run took (stacking and copying included).
  virtual void OnBatch(Modality /*modality*/,
                       absl::Span<const absl::Duration> /*queue_waits*/,
                       absl::Duration /*inference*/) {}

  // Items now waiting in the modality's queue; reported after each enqueue, when a
  // batch starts and when queued items are dropped, one report at a time, so the last
  // one is the current depth.
  virtual void OnQueueDepth(Modality /*modality*/, int /*items*/) {}

  // One lookup in an embedding cache (CachingEngine) found its item or did not.
  virtual void OnCacheLookup(Modality /*modality*/, bool /*hit*/) {}
};

// Called exactly once per request with the embeddings or the request's error: on an
// engine thread, or inline on the caller's thread when the request is answered at once
// (refused as empty, queue full or shutting down; or served from a cache), so callers
// must not hold a lock the callback takes. Must not block for long.
using EmbedCallback = absl::AnyInvocable<void(absl::StatusOr<EmbedResult>) &&>;
using TokenizeCallback =
    absl::AnyInvocable<void(absl::StatusOr<std::vector<TokenizedResult>>) &&>;

// Turns images and texts into embeddings. Implementations are thread-safe, and their
// methods never block the caller: work happens on the engine's own threads and ends
// in the callback.
//
// Errors passed to callbacks: INVALID_ARGUMENT for a bad item, carrying a
// google.rpc.BadRequest payload naming it as "<field>[i]" (field given by the caller,
// e.g. "images"); RESOURCE_EXHAUSTED with RetryInfo when the queue is full;
// DEADLINE_EXCEEDED / CANCELLED for items dropped before they ran; UNAVAILABLE while
// shutting down; INTERNAL or RESOURCE_EXHAUSTED when the model fails a batch (only that
// batch's requests fail).
class Engine {
 public:
  virtual ~Engine() = default;

  // Embeds `images` (at least one). `field` names the request field in errors.
  virtual void EmbedImages(std::vector<ImageInput> images, const EmbedOptions& options,
                           std::string field, EmbedCallback done) = 0;

  // Embeds `texts` (at least one, UTF-8).
  virtual void EmbedTexts(std::vector<std::string> texts, const EmbedOptions& options,
                          std::string field, EmbedCallback done) = 0;

  // Tokenizes `texts` with the model's tokenizer (no model run). Of `options`, it
  // reads truncate, and the deadline and cancellation: a call dead before or while it
  // runs is answered DEADLINE_EXCEEDED or CANCELLED without tokenizing the rest.
  virtual void Tokenize(std::vector<std::string> texts, const EmbedOptions& options,
                        std::string field, TokenizeCallback done) = 0;

  virtual const ModelDescription& description() const = 0;

  // The most texts one EmbedTexts call may carry. A call's texts are queued together,
  // all or none, so a larger call could never be admitted: it fails with
  // INVALID_ARGUMENT. Callers size their requests (and refuse to start with limits
  // above it) by this.
  virtual int max_texts_per_call() const = 0;

  // True while the engine can serve: false when a worker is stuck past the watchdog
  // limit, when the device failed a probe after a batch failed (a broken CUDA
  // context), or after shutdown began.
  virtual bool healthy() const = 0;

  // Answers at once the queued items of requests that were cancelled or passed their
  // deadline (CANCELLED or DEADLINE_EXCEEDED, through their callbacks, possibly on
  // this thread), instead of when a batch reaches them, so that their memory is freed
  // now. For a caller that has just learnt that a request was cancelled. Never blocks
  // for long; callers must not hold a lock a callback takes. Default: nothing (an
  // engine without queues).
  virtual void DropDeadItems() {}
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_ENGINE_H_
