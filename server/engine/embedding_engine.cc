#include "server/engine/embedding_engine.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "server/batching/dynamic_batcher.h"
#include "server/batching/request_tracker.h"
#include "server/batching/split_retry.h"
#include "server/common/clock.h"
#include "server/common/cpu_limit.h"
#include "server/common/status_macros.h"
#include "server/common/status_payloads.h"
#include "server/engine/device_image_preprocessor.h"
#include "server/engine/model_runner.h"
#include "server/engine/thread_pool.h"
#include "server/image/preprocessor.h"
#include "server/model/device.h"
#include "server/tokenizer/bpe_tokenizer.h"

namespace clipserve {

// The state one EmbedImages/EmbedTexts call shares with its items.
struct EngineRequest {
  // The engine's clock; options.deadline is on it.
  Clock* clock = nullptr;
  EmbedOptions options;
  std::string field;
  EmbedResult result;
  EmbedCallback done;
  std::shared_ptr<RequestTracker> tracker;
  // Set once any item failed: the request's other items are then dropped (the queued
  // ones at once, by DropDead(): see ItemDone()).
  std::atomic<bool> failed{false};
  // The error that failed the request. Recorded before `failed` is set, so the
  // CANCELLED drops that `failed` causes can never be reported in its place.
  absl::Mutex mu;
  absl::Status first_error ABSL_GUARDED_BY(mu);

  bool cancelled() const {
    return failed.load(std::memory_order_acquire) ||
           (options.cancellation != nullptr && options.cancellation->cancelled());
  }
  // Why a preprocessing task should answer its items instead of preparing them: the
  // request failed, was cancelled, or its deadline passed while the task waited in the
  // pool or (for texts, checked before each one) worked on its earlier items: the
  // batcher would drop its items anyway, after the work. OK otherwise.
  absl::Status SkipPreprocessing() const {
    return Ended("before preprocessing finished");
  }
  // Why the request's items should not be computed, `when` saying at which stage it
  // was found ("before preprocessing finished"); OK while the request is live.
  absl::Status Ended(absl::string_view when) const {
    if (failed.load(std::memory_order_acquire)) {
      return absl::AbortedError("another item failed");
    }
    // gRPC cancels a call when its deadline passes: then the deadline is the reason.
    if (clock->Now() >= options.deadline) {
      return absl::DeadlineExceededError(absl::StrCat("deadline passed ", when));
    }
    if (cancelled()) return absl::CancelledError(absl::StrCat("call cancelled ", when));
    return absl::OkStatus();
  }
  // Answers one item. True when `status` is the request's first failure: its other
  // queued items are then dead, and the caller should have the batcher drop them.
  bool ItemDone(const absl::Status& status) {
    bool first_failure = false;
    if (!status.ok()) {
      {
        absl::MutexLock lock(&mu);
        if (first_error.ok()) first_error = status;
      }
      first_failure = !failed.exchange(true, std::memory_order_acq_rel);
    }
    tracker->ItemDone(status);
    return first_failure;
  }
  absl::Status FirstError() {
    absl::MutexLock lock(&mu);
    return first_error;
  }
};

// A share of a byte budget, given back when the holder is destroyed. Move-only.
class HeldBytes {
 public:
  HeldBytes() = default;
  // Takes `bytes` from `budget` when that leaves it at most `limit`; else holds none.
  static HeldBytes TryTake(std::atomic<int64_t>* budget, int64_t bytes, int64_t limit) {
    int64_t used = budget->load(std::memory_order_relaxed);
    do {
      if (used + bytes > limit) return HeldBytes();
    } while (
        !budget->compare_exchange_weak(used, used + bytes, std::memory_order_acq_rel));
    HeldBytes held;
    held.budget_ = budget;
    held.bytes_ = bytes;
    return held;
  }
  HeldBytes(HeldBytes&& other) noexcept
      : budget_(std::exchange(other.budget_, nullptr)), bytes_(other.bytes_) {}
  HeldBytes& operator=(HeldBytes&& other) noexcept {
    if (this != &other) {
      Release();
      budget_ = std::exchange(other.budget_, nullptr);
      bytes_ = other.bytes_;
    }
    return *this;
  }
  ~HeldBytes() { Release(); }
  bool held() const { return budget_ != nullptr; }

 private:
  void Release() {
    if (budget_ != nullptr) budget_->fetch_sub(bytes_, std::memory_order_acq_rel);
    budget_ = nullptr;
  }
  std::atomic<int64_t>* budget_ = nullptr;
  int64_t bytes_ = 0;
};

struct ImageItem {
  std::shared_ptr<EngineRequest> request;
  int index = 0;
  // One of the two: the normalized 3 x S x S floats, or (resize_on_device) the decoded
  // image and its share of the engine's device-resize budget.
  std::vector<float> pixels;
  image::RgbImage decoded;
  HeldBytes decoded_bytes;

  absl::Time deadline() const { return request->options.deadline; }
  bool cancelled() const { return request->cancelled(); }
  // Answers the item, its pixels and budget share given back first: a caller that
  // sends its next image as soon as it is answered finds the budget free. Returns
  // EngineRequest::ItemDone's answer.
  bool Answer(const absl::Status& status) {
    pixels = {};
    decoded = {};
    decoded_bytes = HeldBytes();
    return request->ItemDone(status);
  }
};

struct TextItem {
  std::shared_ptr<EngineRequest> request;
  int index = 0;
  std::vector<int32_t> ids;  // start ... end, unpadded

  absl::Time deadline() const { return request->options.deadline; }
  bool cancelled() const { return request->cancelled(); }
  void Answer(const absl::Status& status) { request->ItemDone(status); }
};

namespace {

std::string DeviceName(const torch::Device& device) { return device.str(); }

ModelDescription Describe(const LoadedModel& loaded, const BpeTokenizer& tokenizer) {
  const ClipModel& model = *loaded.model;
  const ClipConfig& c = model.config();
  ModelDescription d;
  d.name = loaded.name;
  const bool vit = c.vision.arch == VisionArch::kVisionTransformer;
  d.vision_architecture = vit ? "vit" : "modified_resnet";
  d.vision_width = c.vision.width;
  d.vision_layers = c.vision.layers;
  d.vision_patch_size = vit ? c.vision.patch_size : 0;
  d.vision_heads = c.vision.heads;
  if (!vit)
    d.vision_stage_layers.assign(c.vision.stage_layers.begin(),
                                 c.vision.stage_layers.end());
  d.text_architecture = c.text.arch == TextArch::kTransformer ? "transformer" : "cbow";
  d.text_width = c.text.width;
  d.text_layers = c.text.layers;
  d.text_heads = c.text.heads;
  d.embed_dim = c.embed_dim;
  d.image_size = c.vision.image_size;
  d.image_mean = c.image_mean;
  d.image_std = c.image_std;
  d.context_length = tokenizer.context_length();
  d.vocab_size = c.text.vocab_size;
  d.logit_scale = model.logit_scale();
  d.precision = std::string(PrecisionName(model.precision()));
  d.device = DeviceName(model.device());
  d.checkpoint_format = std::string(CheckpointFormatName(loaded.format));
  d.checkpoint_sha256 = loaded.sha256;
  d.random_weights = loaded.random_weights;
  return d;
}

// Writes row `features[row]` into the request's result at its item index, normalized
// when the request asked for it (in double, so the result does not depend on batching).
void StoreRow(const float* features, int dim, EngineRequest& request, int index) {
  float* out = request.result.values.data() + static_cast<size_t>(index) * dim;
  double norm = 0;
  for (int k = 0; k < dim; ++k) norm += double(features[k]) * features[k];
  const double scale =
      request.options.normalize ? 1.0 / std::max(std::sqrt(norm), 1e-12) : 1.0;
  for (int k = 0; k < dim; ++k) out[k] = static_cast<float>(features[k] * scale);
}

std::shared_ptr<EngineRequest> NewRequest(Clock* clock, int items, int dim,
                                          const EmbedOptions& options, std::string field,
                                          EmbedCallback done,
                                          std::atomic<int64_t>* pending) {
  auto request = std::make_shared<EngineRequest>();
  request->clock = clock;
  request->options = options;
  // From here on every time in the engine is on its clock (RealClock: monotonic).
  request->options.deadline = clock->FromWallTime(options.deadline);
  request->field = std::move(field);
  request->result.dim = dim;
  request->result.values.assign(static_cast<size_t>(items) * dim, 0.0f);
  request->done = std::move(done);
  // The tracker's callback may only use a raw pointer: every ItemDone caller holds a
  // shared_ptr to the request, so it is alive when the last one runs the callback.
  EngineRequest* raw = request.get();
  pending->fetch_add(1, std::memory_order_acq_rel);
  request->tracker = *RequestTracker::Create(items, [raw, pending](absl::Status status) {
    // Counted out before the callback runs, so whoever the callback wakes sees it.
    pending->fetch_sub(1, std::memory_order_acq_rel);
    if (status.ok()) {
      std::move(raw->done)(std::move(raw->result));
    } else {
      absl::Status first = raw->FirstError();
      std::move(raw->done)(first.ok() ? std::move(status) : std::move(first));
    }
  });
  return request;
}

absl::Status ItemError(const std::string& field, int index, const absl::Status& status) {
  if (status.code() != absl::StatusCode::kInvalidArgument) return status;
  return BadRequestError(absl::StrCat(field, "[", index, "]"), status.message());
}

// The number the caller gave item `index` of an embed request (its own index unless
// the request was renumbered).
int CallerNumber(const EngineRequest& request, int index) {
  const std::vector<int>& numbers = request.options.item_numbers;
  return index < static_cast<int>(numbers.size()) ? numbers[index] : index;
}

// ItemError for item `index` of an embed request, under the caller's own numbering.
absl::Status ItemError(const EngineRequest& request, int index,
                       const absl::Status& status) {
  return ItemError(request.field, CallerNumber(request, index), status);
}

// INTERNAL for a text whose ids pass the model's table (the server's tokenizer does
// not match its model: not the caller's fault), so that the text fails its own
// request instead of the whole batch it would have joined.
absl::Status CheckTokenIds(const EngineRequest& request, int index,
                           const std::vector<int32_t>& ids, int vocab_size) {
  for (const int32_t id : ids) {
    if (id >= 0 && id < vocab_size) continue;
    return absl::InternalError(
        absl::StrCat(request.field, "[", CallerNumber(request, index),
                     "]: the tokenizer gave id ", id, ", past the model's ", vocab_size,
                     " token ids; the server's --tokenizer does not match its model"));
  }
  return absl::OkStatus();
}

// Answers `count` of `request`'s items that were announced to `batcher` but will never
// be queued: withdrawn from the announcement, each answered with `status`. True when
// that failed the request (EngineRequest::ItemDone()).
template <typename Batcher>
bool AnswerUnqueued(Batcher& batcher, EngineRequest& request, int count,
                    const absl::Status& status) {
  batcher.Withdraw(count);
  bool first_failure = false;
  for (int k = 0; k < count; ++k) first_failure |= request.ItemDone(status);
  return first_failure;
}

// The options of both modality queues (named and with workers set by the engine).
DynamicBatcherOptions BatcherOptions(const EmbeddingEngineOptions& options, int workers) {
  DynamicBatcherOptions batch;
  batch.max_batch_size = options.max_batch_size;
  batch.max_queue_delay = options.max_queue_delay;
  batch.max_queue_size = options.max_queue_size;
  batch.num_workers = workers;
  batch.wait_only_for_announced = options.wait_only_for_announced;
  batch.clock = options.clock;
  return batch;
}

}  // namespace

absl::Status ValidateEmbeddingEngineOptions(const EmbeddingEngineOptions& options) {
  if (options.preprocess_threads < 1 || options.workers < 0) {
    return absl::InvalidArgumentError(
        "preprocess_threads must be >= 1 and workers >= 0 (0: by device)");
  }
  if (options.intra_op_threads < 0) {
    return absl::InvalidArgumentError("intra_op_threads must be >= 0");
  }
  if (options.max_device_resize_bytes < 0) {
    return absl::InvalidArgumentError("max_device_resize_bytes must be >= 0");
  }
  if (options.watchdog_interval <= absl::ZeroDuration() ||
      options.watchdog_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "watchdog_interval must be > 0 and watchdog_timeout >= 0");
  }
  if (options.max_pending_preprocess < options.max_queue_size) {
    // An image request of up to max_queue_size items submits one task per image: a
    // larger one than the pool holds would be refused (and retried) forever.
    return absl::InvalidArgumentError(
        absl::StrCat("max_pending_preprocess (", options.max_pending_preprocess,
                     ") must be at least max_queue_size (", options.max_queue_size, ")"));
  }
  return ValidateDynamicBatcherOptions(
      BatcherOptions(options, std::max(options.workers, 1)));
}

absl::StatusOr<std::unique_ptr<EmbeddingEngine>> EmbeddingEngine::Create(
    LoadedModel model, std::unique_ptr<BpeTokenizer> tokenizer,
    const EmbeddingEngineOptions& options) {
  if (model.model == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("the engine needs a model and a tokenizer");
  }
  CLIPSERVE_RETURN_IF_ERROR(ValidateEmbeddingEngineOptions(options));
  if (tokenizer->context_length() > model.model->config().text.context_length) {
    return absl::InvalidArgumentError("the tokenizer's context exceeds the model's");
  }
  if (tokenizer->vocab_size() > model.model->config().text.vocab_size) {
    // Texts whose ids fall past the model's table fail their requests (INTERNAL).
    LOG(ERROR) << "the tokenizer has " << tokenizer->vocab_size()
               << " tokens but the model's embedding table only "
               << model.model->config().text.vocab_size
               << "; texts using the extra tokens will fail. Check --tokenizer.";
  } else if (tokenizer->vocab_size() < model.model->config().text.vocab_size) {
    // Harmless where the table was padded, but also what a checkpoint served with
    // another vocabulary than its own looks like.
    LOG(WARNING) << "the tokenizer has " << tokenizer->vocab_size()
                 << " tokens and the model's embedding table "
                 << model.model->config().text.vocab_size
                 << ": if the checkpoint came with its own tokenizer, pass it with "
                    "--tokenizer.";
  }
  std::unique_ptr<EmbeddingEngine> engine(
      new EmbeddingEngine(std::move(model), std::move(tokenizer), options));
  CLIPSERVE_RETURN_IF_ERROR(engine->Start());
  return engine;
}

EmbeddingEngine::EmbeddingEngine(LoadedModel model,
                                 std::unique_ptr<BpeTokenizer> tokenizer,
                                 const EmbeddingEngineOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)) {
  workers_ =
      options.workers > 0 ? options.workers : (model_.model->device().is_cuda() ? 2 : 1);
  description_ = Describe(model_, *tokenizer_);
  description_.exif_orientation = options_.decode.honor_exif_orientation;
  check_token_ids_ = tokenizer_->vocab_size() > description_.vocab_size;
}

int EmbeddingEngine::intra_op_threads() const { return at::get_num_threads(); }

absl::Status EmbeddingEngine::Start() {
  // Explicit even for the default: LibTorch's lazy OpenMP setup can otherwise leave
  // the calling thread's count at 1.
  at::set_num_threads(options_.intra_op_threads > 0 ? options_.intra_op_threads
                                                    : UsableCpus());
  const ClipConfig& config = model_.model->config();
  image::Preprocessor::Options pre;
  pre.image_size = config.vision.image_size;
  pre.mean = config.image_mean;
  pre.stddev = config.image_std;
  CLIPSERVE_ASSIGN_OR_RETURN(preprocessor_, image::Preprocessor::Create(pre));
  decode_ = options_.decode;
  decode_.resize_short_side = config.vision.image_size;
  if (options_.resize_on_device) {
    CLIPSERVE_ASSIGN_OR_RETURN(
        device_preprocessor_,
        DeviceImagePreprocessor::Create(preprocessor_.get(), model_.model->device(), {}));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(pool_, ThreadPool::Create(options_.preprocess_threads,
                                                       options_.max_pending_preprocess));

  if (!model_.model->device().is_cuda()) runner_ = std::make_unique<ModelRunner>();
  // How long each tower's warm-up item took (on the engine's clock), when it ran.
  std::optional<absl::Duration> image_warm_up, text_warm_up;
  if (options_.warm_up) {
    absl::Status warmed;
    const auto warm_up = [&] {
      absl::Status encoded;
      // Finite weights can still overflow (a value near the largest float, or fp16's
      // range): a model whose towers give NaN or infinity for a blank image or an
      // empty text would answer every call OK with them.
      const auto finite = [&encoded](const absl::StatusOr<torch::Tensor>& rows,
                                     absl::string_view tower) {
        encoded = rows.status();
        if (encoded.ok() && !torch::isfinite(*rows).all().item<bool>()) {
          encoded = absl::FailedPreconditionError(
              absl::StrCat("the ", tower, " tower gives NaN or infinite values for a ",
                           tower == "image" ? "blank image" : "empty text",
                           ": the checkpoint's weights overflow at this precision"));
        }
        return encoded.ok();
      };
      warmed = CatchTorchErrors(
          [&] {
            const int64_t s = config.vision.image_size;
            absl::Time start = clock_->Now();
            if (!finite(model_.model->EncodeImage(torch::zeros({1, 3, s, s}), false),
                        "image")) {
              return;
            }
            image_warm_up = clock_->Now() - start;
            torch::Tensor ids = torch::tensor({int64_t{tokenizer_->start_of_text_id()},
                                               int64_t{tokenizer_->end_of_text_id()}},
                                              torch::kLong)
                                    .unsqueeze(0);
            start = clock_->Now();
            if (finite(model_.model->EncodeText(ids, false, tokenizer_->end_of_text_id()),
                       "text")) {
              text_warm_up = clock_->Now() - start;
            }
          },
          "warming up the model");
      if (warmed.ok()) warmed = encoded;
    };
    // On the thread that will run the batches (its OpenMP team; see ModelRunner).
    if (runner_ != nullptr) {
      CLIPSERVE_RETURN_IF_ERROR(runner_->Run(0, warm_up));
    } else {
      warm_up();
    }
    CLIPSERVE_RETURN_IF_ERROR(warmed);
  }

  DynamicBatcherOptions batch = BatcherOptions(options_, workers_);
  // A queue whose items all died forms no batch, which would leave the depth gauge at
  // its last enqueue: each drop reports it, before answering.
  auto drop_image = [this](ImageItem item, absl::Status status) {
    ReportQueueDepth(Modality::kImage);
    item.Answer(status);
  };
  auto drop_text = [this](TextItem item, absl::Status status) {
    ReportQueueDepth(Modality::kText);
    item.Answer(status);
  };
  // Until a batch has run, a refused request is told to come back after a full batch
  // at the warm-up item's pace: on the CPU the first batch of a cold server (new
  // replicas get bursts) can take seconds, and clients retry when told. Rough (an
  // item costs less in a batch than alone and the first run pays for its set-up, so
  // it errs long; the warm-up text is empty, which errs short for long texts), but of
  // the right order; the first batch to end replaces it. Not on a GPU, where a batch
  // costs about what one item does and the first run loads kernels: that would say
  // seconds for milliseconds.
  const bool on_gpu = model_.model->device().is_cuda();
  const auto full_batch = [&](std::optional<absl::Duration> one) {
    return one.has_value() && !on_gpu ? std::optional(*one * options_.max_batch_size)
                                      : std::nullopt;
  };
  batch.name = "image";
  batch.expected_batch_run_time = full_batch(image_warm_up);
  CLIPSERVE_ASSIGN_OR_RETURN(
      image_batcher_,
      DynamicBatcher<ImageItem>::Create(
          batch, [this](Batch<ImageItem> b) { RunImageBatch(b); }, drop_image));
  batch.name = "text";
  batch.expected_batch_run_time = full_batch(text_warm_up);
  CLIPSERVE_ASSIGN_OR_RETURN(
      text_batcher_,
      DynamicBatcher<TextItem>::Create(
          batch, [this](Batch<TextItem> b) { RunTextBatch(b); }, drop_text));
  watchdog_ = std::thread([this] { WatchdogLoop(); });
  return absl::OkStatus();
}

EmbeddingEngine::~EmbeddingEngine() { Shutdown(); }

void EmbeddingEngine::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_.exchange(true)) return;
  // Preprocessing first (it feeds the queues), then the queues, then the model runner
  // (the queues' workers use it while they drain), then the watchdog.
  if (pool_) pool_->Shutdown();
  if (image_batcher_) image_batcher_->Shutdown();
  if (text_batcher_) text_batcher_->Shutdown();
  if (runner_) runner_->Shutdown();
  {
    absl::MutexLock lock(&running_mu_);
    stop_watchdog_ = true;
  }
  watchdog_wakeup_.Signal();
  if (watchdog_.joinable()) watchdog_.join();
}

bool EmbeddingEngine::healthy() const {
  return !stuck_.load(std::memory_order_acquire) &&
         !device_broken_.load(std::memory_order_acquire) &&
         !shut_down_.load(std::memory_order_acquire);
}

void EmbeddingEngine::DropDeadItems() {
  image_batcher_->DropDead();
  text_batcher_->DropDead();
}

int EmbeddingEngine::QueuedImages() const { return image_batcher_->NumQueuedItems(); }
int EmbeddingEngine::QueuedTexts() const { return text_batcher_->NumQueuedItems(); }

void EmbeddingEngine::EmbedImages(std::vector<ImageInput> images,
                                  const EmbedOptions& options, std::string field,
                                  EmbedCallback done) {
  if (images.empty()) {
    std::move(done)(absl::InvalidArgumentError(absl::StrCat(field, " is empty")));
    return;
  }
  const int n = static_cast<int>(images.size());
  auto request = NewRequest(clock_, n, description_.embed_dim, options, std::move(field),
                            std::move(done), &pending_requests_);
  // One preprocessing task per image, so a request's images decode in parallel. The
  // batcher knows they are coming, so a partial batch can wait for them, and holds
  // room for them: a request is refused for a full queue here, before any decoding.
  if (absl::Status room = image_batcher_->Announce(n, request->options.deadline);
      !room.ok()) {
    for (int k = 0; k < n; ++k) request->ItemDone(room);
    return;
  }
  const absl::Time submitted_at = clock_->Now();
  for (int i = 0; i < n; ++i) {
    absl::Status submitted = pool_->Submit(
        [this, request, i, submitted_at, input = std::move(images[i])]() mutable {
          if (absl::Status skip = request->SkipPreprocessing(); !skip.ok()) {
            if (AnswerUnqueued(*image_batcher_, *request, 1, skip)) {
              image_batcher_->DropDead();
            }
            return;
          }
          const absl::Time started = clock_->Now();
          if (options_.observer != nullptr) {
            options_.observer->OnPreprocessWait(Modality::kImage, started - submitted_at);
          }
          ImageItem item;
          item.request = request;
          item.index = i;
          absl::Status status;
          try {
            status = PrepareImage(input, item);
          } catch (const std::bad_alloc&) {
            // Thrown past this task, it would end the process.
            status = absl::ResourceExhaustedError("out of memory preparing the image");
            SetRetryInfoPayload(kOutOfMemoryRetryDelay, &status);
          }
          if (options_.observer != nullptr) {
            options_.observer->OnPreprocessed(Modality::kImage, clock_->Now() - started);
          }
          // A request's images are queued one by one: when one fails, the ones
          // already queued are dropped now (here, above and below), or the error, the
          // call's answer, would wait until a batch reached them, behind the whole
          // queue under load.
          if (!status.ok()) {
            if (AnswerUnqueued(*image_batcher_, *request, 1,
                               ItemError(*request, i, status))) {
              image_batcher_->DropDead();
            }
            return;
          }
          std::vector<ImageItem> one;
          one.push_back(std::move(item));
          absl::Status scheduled = image_batcher_->Schedule(&one);
          // Refused, the item is still ours: answered through it, its share goes back.
          if (!scheduled.ok() && one.front().Answer(scheduled)) {
            image_batcher_->DropDead();
          }
          ReportQueueDepth(Modality::kImage);
        });
    if (!submitted.ok()) {
      // The pool is full: answer this item and the ones not submitted yet at once.
      if (AnswerUnqueued(*image_batcher_, *request, n - i, submitted)) {
        image_batcher_->DropDead();
      }
      break;
    }
  }
}

absl::Status EmbeddingEngine::PrepareImage(ImageInput& input, ImageItem& item) {
  image::RgbImage decoded;
  image::RgbImageView view;
  if (input.is_raw) {
    CLIPSERVE_ASSIGN_OR_RETURN(
        view, image::RawRgbView(
                  absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(input.rgb8.data()),
                                      input.rgb8.size()),
                  input.width, input.height, options_.decode.max_pixels));
  } else {
    CLIPSERVE_ASSIGN_OR_RETURN(decoded, image::DecodeImage(input.encoded, decode_));
    view = decoded;
  }
  // The device resizes as Pillow resizes RGB; images Pillow resizes in another mode
  // (palette, alpha, CMYK: image::ResampleMode) are resized here.
  if (device_preprocessor_ != nullptr && view.resample == image::ResampleMode::kDirect) {
    // Refused here, not in the batch, when the resize cannot be planned.
    CLIPSERVE_RETURN_IF_ERROR(
        image::PlanResizeAndCrop(view.width, view.height, description_.image_size)
            .status());
    HeldBytes held = HeldBytes::TryTake(&device_resize_bytes_,
                                        static_cast<int64_t>(view.pixels.size()),
                                        options_.max_device_resize_bytes);
    if (held.held()) {
      if (input.is_raw) {
        decoded.width = view.width;
        decoded.height = view.height;
        decoded.pixels.assign(view.pixels.begin(), view.pixels.end());
      }
      item.decoded = std::move(decoded);
      item.decoded_bytes = std::move(held);
      return absl::OkStatus();
    }
    // Over the budget: this one is resized here instead.
  }
  item.pixels.resize(preprocessor_->floats_per_image());
  return preprocessor_->PreprocessInto(view, absl::MakeSpan(item.pixels));
}

void EmbeddingEngine::EmbedTexts(std::vector<std::string> texts,
                                 const EmbedOptions& options, std::string field,
                                 EmbedCallback done) {
  if (texts.empty()) {
    std::move(done)(absl::InvalidArgumentError(absl::StrCat(field, " is empty")));
    return;
  }
  const int n = static_cast<int>(texts.size());
  if (n > max_texts_per_call()) {
    // The queue takes a call's texts all at once: refused before any is tokenized.
    std::move(done)(absl::InvalidArgumentError(
        absl::StrCat(field, " holds ", n, " texts, more than the text queue holds (",
                     max_texts_per_call(), ")")));
    return;
  }
  auto request = NewRequest(clock_, n, description_.embed_dim, options, std::move(field),
                            std::move(done), &pending_requests_);
  request->result.truncated.assign(n, false);
  request->result.num_tokens.assign(n, 0);
  // Tokenizing is fast (microseconds a text): one task for the whole request, which
  // then schedules all its items at once into the room announcing them holds.
  if (absl::Status room = text_batcher_->Announce(n, request->options.deadline);
      !room.ok()) {
    for (int k = 0; k < n; ++k) request->ItemDone(room);
    return;
  }
  const absl::Time submitted_at = clock_->Now();
  absl::Status submitted = pool_->Submit(
      [this, request, submitted_at, texts = std::move(texts)]() mutable {
        const int count = static_cast<int>(texts.size());
        if (absl::Status skip = request->SkipPreprocessing(); !skip.ok()) {
          AnswerUnqueued(*text_batcher_, *request, count, skip);
          return;
        }
        const absl::Time started = clock_->Now();
        if (options_.observer != nullptr) {
          options_.observer->OnPreprocessWait(Modality::kText, started - submitted_at);
        }
        // Fails the request once, on behalf of every item (none is scheduled yet).
        const auto fail = [&](const absl::Status& status) {
          if (options_.observer != nullptr) {
            options_.observer->OnPreprocessed(Modality::kText, clock_->Now() - started);
          }
          AnswerUnqueued(*text_batcher_, *request, count, status);
        };
        std::vector<TextItem> items;
        items.reserve(texts.size());
        for (int i = 0; i < count; ++i) {
          // Before every text, not only the first: 256 texts of 16 KiB without a space
          // take about a second, which a call that ended meanwhile should not cost the
          // threads images share.
          if (i > 0) {
            if (absl::Status skip = request->SkipPreprocessing(); !skip.ok()) {
              fail(skip);
              return;
            }
          }
          auto encoded = tokenizer_->Encode(texts[i], request->options.truncate);
          absl::Status failed =
              encoded.ok() ? absl::OkStatus() : ItemError(*request, i, encoded.status());
          if (failed.ok() && check_token_ids_) {
            failed = CheckTokenIds(*request, i, encoded->ids, description_.vocab_size);
          }
          if (!failed.ok()) {
            fail(failed);
            return;
          }
          request->result.truncated[i] = encoded->truncated;
          request->result.num_tokens[i] = static_cast<int>(encoded->ids.size());
          TextItem item;
          item.request = request;
          item.index = i;
          item.ids = std::move(encoded->ids);
          items.push_back(std::move(item));
        }
        if (options_.observer != nullptr) {
          options_.observer->OnPreprocessed(Modality::kText, clock_->Now() - started);
        }
        absl::Status scheduled = text_batcher_->Schedule(&items);
        if (!scheduled.ok()) {
          for (size_t k = 0; k < items.size(); ++k) request->ItemDone(scheduled);
        }
        ReportQueueDepth(Modality::kText);
      },
      ThreadPool::Priority::kQuick);
  if (!submitted.ok()) AnswerUnqueued(*text_batcher_, *request, n, submitted);
}

void EmbeddingEngine::Tokenize(std::vector<std::string> texts,
                               const EmbedOptions& options, std::string field,
                               TokenizeCallback done) {
  auto shared_done = std::make_shared<TokenizeCallback>(std::move(done));
  const bool truncate = options.truncate;
  const absl::Time deadline = clock_->FromWallTime(options.deadline);
  const absl::Time submitted_at = clock_->Now();
  absl::Status submitted = pool_->Submit(
      [this, texts = std::move(texts), truncate, deadline, submitted_at,
       cancellation = options.cancellation, field, shared_done]() mutable {
        // Reported as text preprocessing, as EmbedTexts' tokenizing is: these tasks
        // take the threads images decode on. A task answered before it tokenized
        // anything (its call already ended) reports nothing, as there.
        const absl::Time started = clock_->Now();
        bool reported = false;
        const auto answer = [&](absl::StatusOr<std::vector<TokenizedResult>> result) {
          if (reported) {
            options_.observer->OnPreprocessed(Modality::kText, clock_->Now() - started);
          }
          std::move (*shared_done)(std::move(result));
        };
        std::vector<TokenizedResult> out;
        out.reserve(texts.size());
        for (int i = 0; i < static_cast<int>(texts.size()); ++i) {
          // A call that went away, waiting for this thread or during a long request,
          // costs the threads images share no more.
          // The deadline first: gRPC cancels a call when it passes.
          if (clock_->Now() >= deadline) {
            answer(absl::DeadlineExceededError(
                "deadline passed before the texts were tokenized"));
            return;
          }
          if (cancellation != nullptr && cancellation->cancelled()) {
            answer(absl::CancelledError("call cancelled"));
            return;
          }
          if (!reported && options_.observer != nullptr) {
            reported = true;
            options_.observer->OnPreprocessWait(Modality::kText, started - submitted_at);
          }
          auto encoded = tokenizer_->Encode(texts[i], truncate);
          if (!encoded.ok()) {
            answer(ItemError(field, i, encoded.status()));
            return;
          }
          out.push_back({std::move(encoded->ids), encoded->truncated});
        }
        answer(std::move(out));
      },
      ThreadPool::Priority::kQuick);
  if (!submitted.ok()) std::move (*shared_done)(submitted);
}

int64_t EmbeddingEngine::BatchStarted() {
  absl::MutexLock lock(&running_mu_);
  const int64_t id = next_batch_id_++;
  running_.emplace(id, clock_->Now());
  return id;
}

void EmbeddingEngine::BatchFinished(int64_t id) {
  absl::MutexLock lock(&running_mu_);
  running_.erase(id);
}

void EmbeddingEngine::ReportQueueDepth(Modality modality) {
  if (options_.observer == nullptr) return;
  absl::MutexLock lock(&depth_mu_);
  options_.observer->OnQueueDepth(modality, modality == Modality::kImage
                                                ? image_batcher_->NumQueuedItems()
                                                : text_batcher_->NumQueuedItems());
}

template <typename Item>
void EmbeddingEngine::ReportBatch(Modality modality, const Batch<Item>& batch,
                                  absl::Time start, absl::Time end) {
  if (options_.observer == nullptr) return;
  const absl::Duration inference = end - start;
  std::vector<absl::Duration> waits(batch.items.size());
  for (size_t i = 0; i < waits.size(); ++i) waits[i] = batch.QueueWait(i);
  options_.observer->OnBatch(modality, waits, inference);
}

template <typename Item>
void EmbeddingEngine::RunBatch(
    Modality modality, Batch<Item>& batch, std::atomic<int64_t>& computed,
    const std::function<absl::StatusOr<torch::Tensor>(int, int)>& encode) {
  ReportQueueDepth(modality);
  std::vector<Item>& items = batch.items;
  int n = static_cast<int>(items.size());
  const torch::Device& device = model_.model->device();
  absl::Time start;
  int64_t id = 0;
  bool started = false;
  // The rows of each range that ran, answered only after the batch is reported.
  std::vector<std::pair<int, torch::Tensor>> done;
  std::vector<FailedRange> failed;
  // Items whose call ended after the batch formed, while it waited for the model (the
  // runner busy with the other modality's batch): answered, never computed.
  std::vector<std::pair<Item, absl::Status>> ended;
  const auto run = [&] {
    size_t live = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      absl::Status status =
          items[i].request->Ended("while its batch waited for the model");
      if (!status.ok()) {
        ended.emplace_back(std::move(items[i]), std::move(status));
        continue;
      }
      if (live != i) {
        items[live] = std::move(items[i]);
        batch.enqueue_times[live] = batch.enqueue_times[i];
      }
      ++live;
    }
    items.resize(live);
    batch.enqueue_times.resize(live);
    n = static_cast<int>(live);
    if (n == 0) return;
    start = clock_->Now();
    id = BatchStarted();
    started = true;
    DeviceStreamScope stream(device);
    if (!stream.status().ok()) {
      LOG_EVERY_N(WARNING, 100) << stream.status();
    }
    failed = RunSplittingOnOutOfMemory(
        n,
        [&](int begin, int end) -> absl::Status {
          const int limit = options_.simulate_out_of_memory_above_for_test;
          if (limit > 0 && end - begin > limit) {
            return absl::ResourceExhaustedError("simulated out of memory (test)");
          }
          if (options_.model_fault_for_test) {
            CLIPSERVE_RETURN_IF_ERROR(
                options_.model_fault_for_test(modality, end - begin));
          }
          absl::StatusOr<torch::Tensor> rows;
          CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
              [&] {
                rows = encode(begin, end);
                if (rows.ok()) *rows = rows->to(torch::kCPU).contiguous();
              },
              modality == Modality::kImage ? "running an image batch"
                                           : "running a text batch"));
          if (!rows.ok()) return rows.status();
          done.emplace_back(begin, *std::move(rows));
          return absl::OkStatus();
        },
        [&] {
          LOG(WARNING) << "out of memory on " << device.str() << " running a batch of "
                       << n << (modality == Modality::kImage ? " images" : " texts")
                       << "; retrying it in two halves";
          const absl::Status released = ReleaseCachedDeviceMemory(device);
          if (!released.ok()) LOG(WARNING) << released;
        });
  };
  if (runner_ == nullptr) {
    run();
  } else {
    // Text batches are short: they go before queued image batches (at most one
    // ahead of each, so several text workers cannot starve images).
    const absl::Status ran = runner_->Run(modality == Modality::kText ? 1 : 0, run);
    if (!ran.ok()) {
      // The batch threw past every catch (INTERNAL), or the runner had stopped
      // (UNAVAILABLE; not reached: Shutdown() stops it after the batchers drained).
      // No item has been answered yet.
      if (started) {
        BatchFinished(id);
        ReportBatch(modality, batch, start, clock_->Now());
      }
      for (Item& item : items) item.Answer(ran);
      for (auto& [item, status] : ended) item.Answer(status);
      return;
    }
  }
  // The model run ends here: a device probe is not part of its time.
  const absl::Time end = clock_->Now();
  for (auto& [item, status] : ended) item.Answer(status);
  if (!started) return;  // every item had ended
  // Before the batch counts as finished, so the watchdog sees a probe that hangs.
  for (const FailedRange& range : failed) {
    if (range.status.code() != absl::StatusCode::kResourceExhausted) {
      CheckDevice(range.status);
      break;
    }
  }
  BatchFinished(id);
  // Before the items are answered, so a client that reads the metrics after its
  // answer finds its batch counted.
  ReportBatch(modality, batch, start, end);
  for (auto& [begin, rows] : done) AnswerRows(items, begin, rows, computed);
  for (const FailedRange& range : failed) {
    FailItems(items, range.begin, range.end, range.status);
  }
}

absl::StatusOr<torch::Tensor> EmbeddingEngine::StackImages(
    const std::vector<ImageItem>& items, int begin, int end) {
  const int64_t n = end - begin;
  const int64_t s = description_.image_size;
  const int64_t per_image = 3 * s * s;
  const torch::Device& device = model_.model->device();
  std::vector<image::RgbImageView> decoded;
  std::vector<int64_t> decoded_rows;
  for (int64_t i = 0; i < n; ++i) {
    if (items[begin + i].decoded_bytes.held()) {
      decoded.emplace_back(items[begin + i].decoded);
      decoded_rows.push_back(i);
    }
  }
  torch::Tensor pixels;
  if (static_cast<int64_t>(decoded.size()) == n) {
    pixels = torch::empty({n, 3, s, s}, torch::TensorOptions().device(device));
  } else {
    // Page-locked on a GPU, so the copy to the device does not block.
    torch::Tensor host =
        torch::empty({n, 3, s, s}, HostBatchOptions(device, torch::kFloat));
    float* dst = host.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const ImageItem& item = items[begin + i];
      if (item.decoded_bytes.held()) continue;
      std::memcpy(dst + i * per_image, item.pixels.data(), per_image * sizeof(float));
    }
    if (decoded.empty()) return host;
    pixels = host.to(device, /*non_blocking=*/true);
  }
  CLIPSERVE_RETURN_IF_ERROR(
      device_preprocessor_->PreprocessInto(decoded, decoded_rows, pixels));
  return pixels;
}

void EmbeddingEngine::RunImageBatch(Batch<ImageItem>& batch) {
  const std::vector<ImageItem>& items = batch.items;
  RunBatch(Modality::kImage, batch, computed_images_,
           [&](int begin, int end) -> absl::StatusOr<torch::Tensor> {
             CLIPSERVE_ASSIGN_OR_RETURN(torch::Tensor pixels,
                                        StackImages(items, begin, end));
             return model_.model->EncodeImage(pixels, /*normalize=*/false);
           });
}

absl::StatusOr<torch::Tensor> EmbeddingEngine::EncodeTexts(
    const std::vector<TextItem>& items, int begin, int end) {
  const int64_t n = end - begin;
  // Identical token ids run once: callers that send the same label or query at the
  // same time each miss the cache, and their items meet here. source[i] is the row of
  // the run that answers item begin + i.
  absl::flat_hash_map<absl::Span<const int32_t>, int64_t> row_of_ids;
  std::vector<int64_t> source(n);
  std::vector<int> distinct;
  for (int64_t i = 0; i < n; ++i) {
    const auto [it, added] = row_of_ids.try_emplace(
        absl::MakeConstSpan(items[begin + i].ids), static_cast<int64_t>(distinct.size()));
    if (added) distinct.push_back(begin + static_cast<int>(i));
    source[i] = it->second;
  }
  const int64_t m = static_cast<int64_t>(distinct.size());
  // Padded only to the longest text of this range: the causal mask and end-token
  // pooling make the padding invisible to the real tokens.
  size_t longest = 0;
  for (int item : distinct) longest = std::max(longest, items[item].ids.size());
  torch::Tensor ids =
      torch::zeros({m, static_cast<int64_t>(longest)},
                   HostBatchOptions(model_.model->device(), torch::kLong));
  int64_t* ids_ptr = ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<int32_t>& row = items[distinct[r]].ids;
    for (size_t k = 0; k < row.size(); ++k) ids_ptr[r * longest + k] = row[k];
  }
  CLIPSERVE_ASSIGN_OR_RETURN(
      torch::Tensor rows,
      model_.model->EncodeText(ids, /*normalize=*/false, tokenizer_->end_of_text_id()));
  if (m == n) return rows;
  // Brought to the host here, not after return as other rows are, so that the repeats
  // are counted only once nothing is left to fail: a range that fails before is
  // retried in halves, and each half counts its own.
  torch::Tensor answered =
      rows.index_select(0,
                        torch::tensor(source, torch::TensorOptions().dtype(torch::kLong))
                            .to(rows.device()))
          .to(torch::kCPU)
          .contiguous();
  repeated_texts_.fetch_add(n - m, std::memory_order_relaxed);
  return answered;
}

void EmbeddingEngine::RunTextBatch(Batch<TextItem>& batch) {
  const std::vector<TextItem>& items = batch.items;
  RunBatch(Modality::kText, batch, computed_texts_,
           [&](int begin, int end) { return EncodeTexts(items, begin, end); });
}

template <typename Item>
void EmbeddingEngine::AnswerRows(std::vector<Item>& items, int begin,
                                 const torch::Tensor& rows,
                                 std::atomic<int64_t>& computed) {
  const int n = static_cast<int>(rows.size(0));
  computed.fetch_add(n, std::memory_order_relaxed);
  const int dim = description_.embed_dim;
  const float* data = rows.data_ptr<float>();
  for (int i = 0; i < n; ++i) {
    Item& item = items[begin + i];
    const float* row = data + static_cast<size_t>(i) * dim;
    // Weights that are finite can still overflow on some inputs only (the warm-up's
    // blank image and empty text can pass): never answer OK with NaN or infinity.
    if (!std::all_of(row, row + dim, [](float v) { return std::isfinite(v); })) {
      LOG_EVERY_N(ERROR, 1000)
          << "the model gave NaN or infinite values for an item: its weights overflow "
             "at this precision";
      item.Answer(absl::InternalError(
          absl::StrCat(item.request->field, "[", CallerNumber(*item.request, item.index),
                       "]: the model gave NaN or infinite values for this item (its "
                       "weights overflow at this precision)")));
      continue;
    }
    StoreRow(row, dim, *item.request, item.index);
    item.Answer(absl::OkStatus());
  }
}

template <typename Item>
void EmbeddingEngine::FailItems(std::vector<Item>& items, int begin, int end,
                                const absl::Status& status) {
  // Not the callers' fault: the model failed on these items. Out of memory stays
  // RESOURCE_EXHAUSTED, with a RetryInfo so that clients retry once the batches in
  // flight have given their memory back; anything else is INTERNAL.
  absl::Status error =
      status.code() == absl::StatusCode::kResourceExhausted
          ? status
          : absl::InternalError(absl::StrCat("model failed on a batch of ", end - begin,
                                             ": ", status.message()));
  if (error.code() == absl::StatusCode::kResourceExhausted &&
      !GetRetryInfoPayload(error).has_value()) {
    SetRetryInfoPayload(kOutOfMemoryRetryDelay, &error);
  }
  for (int i = begin; i < end; ++i) items[i].Answer(error);
}

void EmbeddingEngine::CheckDevice(const absl::Status& batch_error) {
  const torch::Device& device = model_.model->device();
  const absl::Status probe = options_.device_probe_for_test
                                 ? options_.device_probe_for_test()
                                 : ProbeDevice(device);
  // A probe short of memory says nothing about the context.
  if (probe.ok() || probe.code() == absl::StatusCode::kResourceExhausted ||
      device_broken_.exchange(true)) {
    return;
  }
  LOG(ERROR) << "after a batch failed (" << batch_error.message() << "), " << device.str()
             << " failed a probe: " << probe.message()
             << "; reporting NOT_SERVING from now on (a liveness probe, or "
                "--exit_after_unhealthy_s, restarts the process)";
}

void EmbeddingEngine::WatchdogLoop() {
  absl::Time next_check = clock_->Now() + options_.watchdog_interval;
  while (true) {
    bool report = false;
    bool stuck = false;
    {
      absl::MutexLock lock(&running_mu_);
      while (!stop_watchdog_ &&
             !clock_->WaitWithDeadline(&running_mu_, &watchdog_wakeup_, next_check)) {
      }
      if (stop_watchdog_) return;
      const absl::Time now = clock_->Now();
      next_check = now + options_.watchdog_interval;
      absl::Time oldest = absl::InfiniteFuture();
      for (const auto& [id, start] : running_) oldest = std::min(oldest, start);
      const bool over =
          oldest != absl::InfiniteFuture() && now - oldest > options_.watchdog_timeout;
      // A batch that finishes after all was slow, not hung: health comes back.
      if (over != stuck_.load(std::memory_order_relaxed)) {
        stuck_.store(over, std::memory_order_release);
        report = true;
      }
      stuck = over;
    }
    if (report && stuck) {
      LOG(ERROR) << "a batch has been running for over " << options_.watchdog_timeout
                 << "; reporting NOT_SERVING until it ends (a liveness probe, or "
                    "--exit_after_unhealthy_s, restarts a process that stays so)";
    } else if (report) {
      LOG(WARNING) << "the batch that ran past " << options_.watchdog_timeout
                   << " has finished; the watchdog no longer holds health NOT_SERVING";
    }
  }
}

}  // namespace clipserve
