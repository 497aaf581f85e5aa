#ifndef CLIPSERVE_SERVER_METRICS_METRICS_H_
#define CLIPSERVE_SERVER_METRICS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/engine/engine.h"
#include "server/metrics/gpu_stats.h"

namespace clipserve {

struct MetricsOptions {
  // Upper bounds, in seconds, of the latency histograms (queue wait, preprocessing,
  // inference, request duration). Default 0.5 ms .. 60 s, roughly x2.5 per bucket: a
  // tiny text batch takes under a millisecond, a ViT-L image batch on a slow CPU tens
  // of seconds, and every scrape carries each bucket, so 17 of them.
  std::vector<double> latency_buckets_seconds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
      0.5,    1,     2.5,    5,     10,   20,    30,   60};
  // Upper bounds of the batch size histogram, in items. Default powers of two up to
  // 256: --max_batch_size is typically one of them, so a full batch lands exactly on
  // a bucket bound.
  std::vector<double> batch_size_buckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};
};

// clipserve's metrics: a prometheus-cpp registry and typed handles to every metric,
// every name prefixed "clipserve_" (docs/METRICS.md lists them). The service records
// each RPC through RequestStarted()/RequestFinished(), the engine reports its work
// through the EngineObserver interface this class implements, caches call
// RecordCacheLookup(), and the HTTP endpoint (metrics_http_server.h) serves
// Serialize().
//
// Series that are known up front (both modalities, the in-flight gauge) exist from
// construction with value 0, so dashboards and rate() see them before the first
// request; per-RPC series appear with the first call of that RPC and code.
//
// Thread-safe: every method may be called from any thread (prometheus-cpp counters
// and gauges are atomics, histograms and label lookups take short mutexes). Never
// blocks for long.
class Metrics final : public EngineObserver {
 public:
  explicit Metrics(const MetricsOptions& options = {});
  ~Metrics() override;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // --- RPCs (the service) ---

  // A call of any RPC started: clipserve_requests_in_flight + 1.
  void RequestStarted();
  // A call ended with `code` after `elapsed` (receipt to Finish): in flight - 1,
  // clipserve_requests_total{rpc,code} + 1, clipserve_request_duration_seconds{rpc}
  // observes `elapsed`. Call once per RequestStarted().
  void RequestFinished(absl::string_view rpc, absl::StatusCode code,
                       absl::Duration elapsed);
  // An item of a stream of `rpc` failed with `code` (the stream goes on):
  // clipserve_stream_item_failures_total{rpc,code} + 1.
  void StreamItemFailed(absl::string_view rpc, absl::StatusCode code);
  // Calls started so far, and in flight now (what the two above counted).
  int64_t requests_started() const {
    return requests_started_.load(std::memory_order_relaxed);
  }
  int64_t requests_in_flight() const {
    return requests_in_flight_.load(std::memory_order_relaxed);
  }
  // Bytes of requests held (RequestMemoryBudget) changed by `delta`:
  // clipserve_request_memory_bytes += delta.
  void AddRequestMemory(int64_t delta);
  // The budget's limit in bytes, 0 for none: clipserve_request_memory_limit_bytes.
  void SetRequestMemoryLimit(int64_t bytes);
  // A call or EmbedStream item refused for lack of room in the budget:
  // clipserve_request_memory_refusals_total + 1.
  void RecordRequestMemoryRefusal();
  // The budget's per-client limit in bytes, 0 for none:
  // clipserve_request_memory_client_limit_bytes.
  void SetRequestMemoryClientLimit(int64_t bytes);
  // A call or EmbedStream item refused because its client holds its share:
  // clipserve_request_memory_client_refusals_total + 1.
  void RecordRequestMemoryClientRefusal();

  // --- The engine (EngineObserver) ---

  // clipserve_preprocess_wait_seconds{modality}.
  void OnPreprocessWait(Modality modality, absl::Duration waited) override;
  // clipserve_preprocess_seconds{modality}.
  void OnPreprocessed(Modality modality, absl::Duration elapsed) override;
  // clipserve_batch_size{modality} observes queue_waits.size(),
  // clipserve_queue_wait_seconds{modality} each wait, clipserve_inference_seconds
  // {modality} the model run. An empty batch is ignored.
  void OnBatch(Modality modality, absl::Span<const absl::Duration> queue_waits,
               absl::Duration inference) override;
  // clipserve_queue_depth{modality}.
  void OnQueueDepth(Modality modality, int items) override;
  void OnCacheLookup(Modality modality, bool hit) override {
    RecordCacheLookup(modality, hit);
  }

  // --- Caches ---

  // One lookup in the embedding cache for `modality`:
  // clipserve_embedding_cache_hits_total or _misses_total{modality} + 1.
  void RecordCacheLookup(Modality modality, bool hit);
  // One lookup in Classify's label-embedding cache:
  // clipserve_label_cache_hits_total or _misses_total + 1.
  void RecordLabelCacheLookup(bool hit);

  // --- The model ---

  // Sets clipserve_model_info{model,vision_architecture,text_architecture,embed_dim,
  // device,precision,checkpoint_format} to 1, replacing an earlier model's series.
  void SetModelInfo(const ModelDescription& model);

  // --- The GPU ---

  // From now on each Serialize() first reads GPU `index` from `source` and sets
  // clipserve_gpu_memory_used_bytes, clipserve_gpu_memory_total_bytes and
  // clipserve_gpu_utilization_ratio, each labeled device=`device` ("cuda:0"); the
  // last only when the reading has one (not on MIG instances). A failed
  // reading leaves the previous values and counts
  // clipserve_gpu_sample_errors_total{device}. Call at most once; thread-safe, may
  // run while /metrics is being served. Serialize() then blocks on the NVML reading,
  // under a mutex, so concurrent scrapes take turns.
  void WatchGpu(std::unique_ptr<GpuStatsSource> source, int index,
                const std::string& device);

  // Every metric in the Prometheus text exposition format, version 0.0.4 (the body
  // of GET /metrics).
  std::string Serialize() const;

  // The registry, for code that adds metrics of its own (names must start with
  // "clipserve_"). Lives as long as this object.
  prometheus::Registry& registry() { return *registry_; }

  // The Content-Type of Serialize()'s output.
  static constexpr absl::string_view kContentType =
      "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct PerModality {
    prometheus::Histogram* preprocess_wait = nullptr;
    prometheus::Histogram* preprocess = nullptr;
    prometheus::Histogram* queue_wait = nullptr;
    prometheus::Histogram* inference = nullptr;
    prometheus::Histogram* batch_size = nullptr;
    prometheus::Gauge* queue_depth = nullptr;
    prometheus::Counter* cache_hits = nullptr;
    prometheus::Counter* cache_misses = nullptr;
  };
  PerModality& Of(Modality modality) {
    return modality == Modality::kImage ? image_ : text_;
  }

  const MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Counter>* stream_item_failures_ = nullptr;
  prometheus::Family<prometheus::Histogram>* request_duration_ = nullptr;
  prometheus::Gauge* in_flight_ = nullptr;
  std::atomic<int64_t> requests_started_{0};
  std::atomic<int64_t> requests_in_flight_{0};
  prometheus::Gauge* request_memory_ = nullptr;
  prometheus::Gauge* request_memory_limit_ = nullptr;
  prometheus::Counter* request_memory_refusals_ = nullptr;
  prometheus::Gauge* request_memory_client_limit_ = nullptr;
  prometheus::Counter* request_memory_client_refusals_ = nullptr;
  prometheus::Family<prometheus::Gauge>* model_info_ = nullptr;
  absl::Mutex model_mu_;
  prometheus::Gauge* model_info_series_ ABSL_GUARDED_BY(model_mu_) = nullptr;
  prometheus::Counter* label_cache_hits_ = nullptr;
  prometheus::Counter* label_cache_misses_ = nullptr;
  PerModality image_;
  PerModality text_;

  struct Gpu {
    std::unique_ptr<GpuStatsSource> source;
    int index = 0;
    prometheus::Gauge* memory_used = nullptr;
    prometheus::Gauge* memory_total = nullptr;
    prometheus::Gauge* utilization = nullptr;
    prometheus::Counter* sample_errors = nullptr;
  };
  // Set once by WatchGpu; read (sampled) by every Serialize().
  mutable absl::Mutex gpu_mu_;
  std::unique_ptr<Gpu> gpu_ ABSL_GUARDED_BY(gpu_mu_);
};

// The gRPC name of a status code as Prometheus label value: "OK", "INVALID_ARGUMENT",
// ... (absl::StatusCode and grpc::StatusCode share numbers and names).
std::string StatusCodeLabel(absl::StatusCode code);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_METRICS_METRICS_H_
