#ifndef CLIPSERVE_SERVER_ENGINE_EMBEDDING_ENGINE_H_
#define CLIPSERVE_SERVER_ENGINE_EMBEDDING_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/engine/engine.h"
#include "server/image/image_decoder.h"
#include "server/model/model_loader.h"

namespace clipserve {

class BpeTokenizer;
class DeviceImagePreprocessor;
class ModelRunner;
namespace image {
class Preprocessor;
}
template <typename Item>
class DynamicBatcher;
template <typename Item>
struct Batch;
struct ImageItem;
struct TextItem;
class ThreadPool;

struct EmbeddingEngineOptions {
  // Items per model run. Default 32: a CPU gains little throughput per item past
  // 16-32 ViT-B inputs, while latency grows with the batch.
  int max_batch_size = 32;
  // How long the first queued item waits for company. Default 2 ms: small next to a
  // forward pass (tens of ms on CPU), enough for concurrent callers to share batches.
  absl::Duration max_queue_delay = absl::Milliseconds(2);
  // A partial batch waits max_queue_delay for company only while more items are being
  // preprocessed; with none on their way it runs at once, so a lone request on an
  // idle server does not pay the delay. Default true.
  bool wait_only_for_announced = true;
  // Items waiting per modality before requests are refused with RESOURCE_EXHAUSTED.
  // Default 1024 (32 full batches).
  int max_queue_size = 1024;
  // Batch workers per modality. 0 (the default) picks by device: 1 on the CPU, where
  // every model run goes through one ModelRunner thread anyway (LibTorch's intra-op
  // pool already spreads a batch over every core; see model_runner.h); 2 on a GPU,
  // each with its own CUDA stream, so one batch's host-side assembly and copies
  // overlap the other's kernels.
  int workers = 0;
  // Threads decoding and resizing images and tokenizing texts. Default 2 (this
  // machine's core count): preprocessing overlaps with the model run.
  int preprocess_threads = 2;
  // LibTorch intra-op threads (process-wide: at::set_num_threads). 0 means one per CPU
  // this process may keep busy (UsableCpus(): its affinity mask, or its cgroup's CPU
  // limit where smaller): a batch is the only work that should use every core.
  int intra_op_threads = 0;
  // Preprocessing tasks waiting at most; beyond, requests get RESOURCE_EXHAUSTED. At
  // least max_queue_size: an image request submits one task per image.
  int max_pending_preprocess = 4096;
  // Image decoding limits (pixels, encoded bytes, EXIF orientation).
  image::DecodeOptions decode;
  // Resize, crop and normalize decoded images on the model's device, in the batch
  // worker (DeviceImagePreprocessor: the same bits as the host's), so that the
  // preprocessing threads only decode. For GPUs, where decoding then bounds image
  // throughput; on the CPU it only moves the work from the preprocessing threads to
  // the model's. Images with a palette or alpha and CMYK JPEGs (image::ResampleMode
  // other than kDirect) are still resized on the host. Default false.
  bool resize_on_device = false;
  // With resize_on_device: the most bytes of decoded images held between decoding and
  // their batch. An image that would exceed it is resized on the host instead, as
  // without the option, so queued work stays bounded in memory. Default 1 GiB: about
  // 1,100 queued 640x480 photos, or 29 of 12 megapixels.
  int64_t max_device_resize_bytes = int64_t{1} << 30;
  // A batch running longer than this marks the engine unhealthy (health then turns
  // NOT_SERVING so an orchestrator restarts the process), until it finishes.
  // InfiniteDuration() turns the watchdog off. Default 120 s (--batch_watchdog_s).
  absl::Duration watchdog_timeout = absl::Seconds(120);
  // How often the watchdog looks. Default 1 s.
  absl::Duration watchdog_interval = absl::Seconds(1);
  // Run one image and one text through the model before Create returns, so the first
  // request does not pay for oneDNN's kernel selection and allocator warm-up; a
  // tower that gives NaN or infinity then fails Create (FAILED_PRECONDITION). Their
  // times, on `clock`, times max_batch_size, are what a full batch is expected to take
  // until one has run (the RetryInfo estimate of a full queue).
  bool warm_up = true;
  // Optional: told about preprocessing times, batches (size, queue waits, model run
  // time) and queue depths, for metrics. Not owned; must outlive the engine. nullptr
  // (the default) reports nothing.
  EngineObserver* observer = nullptr;

  // Test-only. When > 0, a model run over more than this many items fails with
  // RESOURCE_EXHAUSTED before it reaches the model, as a GPU out of memory does, so
  // tests exercise the retry in halves on any device. 0 (the default): never.
  int simulate_out_of_memory_above_for_test = 0;
  // Test-only. When set, called before each model run over `items` items of a batch;
  // a status other than OK fails that run as the model failing would (any code but
  // RESOURCE_EXHAUSTED then makes the engine probe its device).
  std::function<absl::Status(Modality modality, int items)> model_fault_for_test;
  // Test-only. When set, called instead of ProbeDevice() on the model's device after
  // a batch fails for a reason other than memory, so tests can play a broken device.
  std::function<absl::Status()> device_probe_for_test;
  // Test-only. The clock for deadlines, the queue delay, run times and the watchdog;
  // not owned, must outlive the engine. nullptr (the default): RealClock::Get().
  Clock* clock = nullptr;
};

// INVALID_ARGUMENT naming the first option out of range (threads, queue and batch
// sizes, the queue delay), as EmbeddingEngine::Create() would find it; needs no
// model, so a server can check its flags before a long load.
absl::Status ValidateEmbeddingEngineOptions(const EmbeddingEngineOptions& options);

// The real Engine: owns the model, tokenizer, preprocessor, one DynamicBatcher per
// modality, the preprocessing pool, on the CPU the model runner, and the watchdog.
//
// A request travels: caller thread (validation only) -> preprocessing pool (decode +
// resize + normalize, or tokenize) -> modality queue -> batch worker (stack, run the
// model, split rows, normalize per request) -> the request's callback once all its
// items are done. A text batch is padded only to its longest member, and runs each
// distinct text once however many of its items carry it. A batch whose model run
// fails fails only its own items.
//
// Thread-safe. Destruction shuts down: queued work finishes, then threads join.
class EmbeddingEngine : public Engine {
 public:
  // Takes the loaded model and its tokenizer. INVALID_ARGUMENT for bad options,
  // INTERNAL when warm-up fails.
  static absl::StatusOr<std::unique_ptr<EmbeddingEngine>> Create(
      LoadedModel model, std::unique_ptr<BpeTokenizer> tokenizer,
      const EmbeddingEngineOptions& options);
  ~EmbeddingEngine() override;

  void EmbedImages(std::vector<ImageInput> images, const EmbedOptions& options,
                   std::string field, EmbedCallback done) override;
  void EmbedTexts(std::vector<std::string> texts, const EmbedOptions& options,
                  std::string field, EmbedCallback done) override;
  void Tokenize(std::vector<std::string> texts, const EmbedOptions& options,
                std::string field, TokenizeCallback done) override;
  const ModelDescription& description() const override { return description_; }
  // The text queue's size (max_queue_size).
  int max_texts_per_call() const override { return options_.max_queue_size; }
  bool healthy() const override;
  // Both queues' dead items (DynamicBatcher::DropDead()). Items waiting for a
  // preprocessing thread are dropped when their task starts, before any work; items
  // being preprocessed, when they reach their queue (never queued).
  void DropDeadItems() override;

  // LibTorch's intra-op thread count in effect.
  int intra_op_threads() const;
  // Batch workers per modality in effect (options.workers, or the device's default).
  int workers() const { return workers_; }

  // Items waiting in each queue (gauges).
  int QueuedImages() const;
  int QueuedTexts() const;

  // Items that went through the model since start (counters for metrics and tests).
  int64_t computed_images() const {
    return computed_images_.load(std::memory_order_relaxed);
  }
  int64_t computed_texts() const {
    return computed_texts_.load(std::memory_order_relaxed);
  }
  // Of computed_texts(), those answered with the row of an identical text (the same
  // token ids) in the same batch, which the model ran once for all of them.
  int64_t repeated_texts() const {
    return repeated_texts_.load(std::memory_order_relaxed);
  }
  // Bytes of decoded images now waiting to be resized on the device (see
  // max_device_resize_bytes).
  int64_t device_resize_bytes() const {
    return device_resize_bytes_.load(std::memory_order_acquire);
  }
  // Embed requests accepted whose callback has not been called yet.
  int64_t pending_requests() const {
    return pending_requests_.load(std::memory_order_acquire);
  }

  // Finishes queued work and stops every thread. Idempotent; a call made while
  // another is still draining returns only once that one has finished.
  void Shutdown() ABSL_LOCKS_EXCLUDED(shutdown_mu_);

 private:
  struct Request;
  EmbeddingEngine(LoadedModel model, std::unique_ptr<BpeTokenizer> tokenizer,
                  const EmbeddingEngineOptions& options);
  absl::Status Start();
  // Decodes (or takes the raw pixels of) `input` into `item`: normalized floats, or
  // with resize_on_device and room in its budget the decoded image itself.
  absl::Status PrepareImage(ImageInput& input, ImageItem& item);
  // The N x 3 x S x S float input of items [begin, end), on the model's device when
  // some of them are resized there.
  absl::StatusOr<torch::Tensor> StackImages(const std::vector<ImageItem>& items,
                                            int begin, int end);
  void RunImageBatch(Batch<ImageItem>& batch);
  // The unnormalized embeddings of text items [begin, end), one row each; the model
  // runs each distinct sequence of token ids once (see repeated_texts()).
  absl::StatusOr<torch::Tensor> EncodeTexts(const std::vector<TextItem>& items, int begin,
                                            int end);
  void RunTextBatch(Batch<TextItem>& batch);
  // Runs `batch` on the model's device through `encode(begin, end)` (the features of
  // items [begin, end), on any device), on this worker's own CUDA stream, retrying in
  // halves once on out of memory; then reports it and answers every item.
  template <typename Item>
  void RunBatch(Modality modality, Batch<Item>& batch, std::atomic<int64_t>& computed,
                const std::function<absl::StatusOr<torch::Tensor>(int, int)>& encode);
  // Reports a batch whose model run went from `start` to `end` to the observer, if
  // any.
  template <typename Item>
  void ReportBatch(Modality modality, const Batch<Item>& batch, absl::Time start,
                   absl::Time end);
  // Reports the modality's queue depth to the observer, if any. Each read and its
  // report happen under depth_mu_, so reports come in the order of their reads and
  // the last one is the depth after the last change.
  void ReportQueueDepth(Modality modality) ABSL_LOCKS_EXCLUDED(depth_mu_);
  // Stores row i of `rows` (fp32 [n, dim] on the CPU) as item begin + i's result and
  // answers it.
  template <typename Item>
  void AnswerRows(std::vector<Item>& items, int begin, const torch::Tensor& rows,
                  std::atomic<int64_t>& computed);
  // Fails items [begin, end) with the model's error.
  template <typename Item>
  void FailItems(std::vector<Item>& items, int begin, int end,
                 const absl::Status& status);
  // After a batch failed with `batch_error` (not out of memory): probes the device and
  // marks the engine unhealthy for good when the probe fails too. A CUDA context
  // broken by a kernel fault fails every later batch, so only a restart helps.
  void CheckDevice(const absl::Status& batch_error);
  void WatchdogLoop() ABSL_LOCKS_EXCLUDED(running_mu_);
  int64_t BatchStarted() ABSL_LOCKS_EXCLUDED(running_mu_);
  void BatchFinished(int64_t id) ABSL_LOCKS_EXCLUDED(running_mu_);

  const EmbeddingEngineOptions options_;
  Clock* const clock_;  // options_.clock, else RealClock::Get()
  int workers_ = 1;
  LoadedModel model_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::unique_ptr<image::Preprocessor> preprocessor_;
  // options_.decode, refusing from the header an image too elongated for the model's
  // input size (set by Start()).
  image::DecodeOptions decode_;
  // Set with resize_on_device.
  std::unique_ptr<DeviceImagePreprocessor> device_preprocessor_;
  // Bytes of decoded images held for the device resize (items own their share and
  // give it back when destroyed, so this outlives the queues).
  std::atomic<int64_t> device_resize_bytes_{0};
  ModelDescription description_;
  // The tokenizer can give ids past the model's embedding table (a --tokenizer that
  // does not match the model): each text's ids are then checked before it is queued.
  bool check_token_ids_ = false;
  std::unique_ptr<ThreadPool> pool_;
  // On the CPU, the one thread every model run goes through (null on a GPU, where
  // each worker drives its own CUDA stream). Declared before the batchers, whose
  // workers call it, so it outlives them.
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<DynamicBatcher<ImageItem>> image_batcher_;
  std::unique_ptr<DynamicBatcher<TextItem>> text_batcher_;

  std::atomic<int64_t> computed_images_{0};
  std::atomic<int64_t> computed_texts_{0};
  std::atomic<int64_t> repeated_texts_{0};
  std::atomic<int64_t> pending_requests_{0};
  std::atomic<bool> stuck_{false};
  // Set once the device failed its probe after a failed batch (CheckDevice()).
  std::atomic<bool> device_broken_{false};
  // Set when Shutdown() begins (healthy() reads it without a lock).
  std::atomic<bool> shut_down_{false};
  // Held across the whole of Shutdown(), so a second call waits for the first.
  absl::Mutex shutdown_mu_;
  // Orders the queue-depth reports (ReportQueueDepth()); taken before a batcher's lock.
  absl::Mutex depth_mu_;
  absl::Mutex running_mu_;
  int64_t next_batch_id_ ABSL_GUARDED_BY(running_mu_) = 0;
  std::map<int64_t, absl::Time> running_ ABSL_GUARDED_BY(running_mu_);
  absl::CondVar watchdog_wakeup_;  // signalled when stop_watchdog_ is set
  bool stop_watchdog_ ABSL_GUARDED_BY(running_mu_) = false;
  std::thread watchdog_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_EMBEDDING_ENGINE_H_
