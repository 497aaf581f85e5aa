#include "server/metrics/metrics.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace clipserve {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

Family<Counter>& CounterFamily(prometheus::Registry& registry, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

Family<Histogram>& HistogramFamily(prometheus::Registry& registry,
                                   const std::string& name, const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

Family<Gauge>& GaugeFamily(prometheus::Registry& registry, const std::string& name,
                           const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

}  // namespace

std::string StatusCodeLabel(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);
  return name.empty() ? absl::StrCat(static_cast<int>(code)) : name;
}

Metrics::Metrics(const MetricsOptions& options)
    : options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  requests_ = &CounterFamily(r, "clipserve_requests_total",
                             "RPCs finished, by method and gRPC status code.");
  stream_item_failures_ = &CounterFamily(
      r, "clipserve_stream_item_failures_total",
      "Items of a stream that failed (answered with an error in the stream, which goes "
      "on), by method and gRPC status code.");
  request_duration_ = &HistogramFamily(
      r, "clipserve_request_duration_seconds",
      "Time from receiving an RPC to finishing it, by method (EmbedStream: the "
      "whole stream).");
  in_flight_ = &GaugeFamily(r, "clipserve_requests_in_flight",
                            "RPCs started and not finished yet.")
                    .Add({});
  request_memory_ = &GaugeFamily(r, "clipserve_request_memory_bytes",
                                 "Bytes of requests held by calls in flight, as counted "
                                 "against --max_request_memory_mb.")
                         .Add({});
  request_memory_limit_ =
      &GaugeFamily(r, "clipserve_request_memory_limit_bytes",
                   "--max_request_memory_mb in bytes; 0 when there is no limit.")
           .Add({});
  request_memory_refusals_ =
      &CounterFamily(
           r, "clipserve_request_memory_refusals_total",
           "Calls and EmbedStream items refused with RESOURCE_EXHAUSTED because "
           "they would pass --max_request_memory_mb.")
           .Add({});
  request_memory_client_limit_ =
      &GaugeFamily(r, "clipserve_request_memory_client_limit_bytes",
                   "--max_request_memory_per_client_mb in bytes; 0 when there is no "
                   "per-client limit.")
           .Add({});
  request_memory_client_refusals_ =
      &CounterFamily(
           r, "clipserve_request_memory_client_refusals_total",
           "Calls and EmbedStream items refused with RESOURCE_EXHAUSTED because "
           "their client would pass --max_request_memory_per_client_mb.")
           .Add({});
  model_info_ = &GaugeFamily(r, "clipserve_model_info",
                             "The served model, described by the labels; always 1.");
  label_cache_hits_ =
      &CounterFamily(r, "clipserve_label_cache_hits_total",
                     "Classify label-embedding cache lookups that found the (label, "
                     "templates).")
           .Add({});
  label_cache_misses_ =
      &CounterFamily(r, "clipserve_label_cache_misses_total",
                     "Classify label-embedding cache lookups that had to embed.")
           .Add({});

  auto& preprocess_wait = HistogramFamily(
      r, "clipserve_preprocess_wait_seconds",
      "Time a preprocessing task waited for one of the --preprocess_threads.");
  auto& preprocess = HistogramFamily(
      r, "clipserve_preprocess_seconds",
      "One preprocessing task: decode + resize + normalize of one image (decode "
      "only with --resize_on_device), or cleaning + BPE of one request's texts.");
  auto& queue_wait = HistogramFamily(
      r, "clipserve_queue_wait_seconds",
      "Time an item waited in its modality queue before its batch formed.");
  auto& inference =
      HistogramFamily(r, "clipserve_inference_seconds",
                      "One model run over a batch, stacking and copying included "
                      "(and the images' resize with --resize_on_device).");
  auto& batch_size =
      HistogramFamily(r, "clipserve_batch_size", "Items in one model run.");
  auto& queue_depth = GaugeFamily(r, "clipserve_queue_depth",
                                  "Items waiting in the modality's batch queue.");
  auto& cache_hits = CounterFamily(r, "clipserve_embedding_cache_hits_total",
                                   "Embedding cache lookups answered from the cache.");
  auto& cache_misses = CounterFamily(r, "clipserve_embedding_cache_misses_total",
                                     "Embedding cache lookups that missed.");
  for (Modality modality : {Modality::kImage, Modality::kText}) {
    const prometheus::Labels labels = {{"modality", std::string(ModalityName(modality))}};
    PerModality& m = Of(modality);
    m.preprocess_wait = &preprocess_wait.Add(labels, options_.latency_buckets_seconds);
    m.preprocess = &preprocess.Add(labels, options_.latency_buckets_seconds);
    m.queue_wait = &queue_wait.Add(labels, options_.latency_buckets_seconds);
    m.inference = &inference.Add(labels, options_.latency_buckets_seconds);
    m.batch_size = &batch_size.Add(labels, options_.batch_size_buckets);
    m.queue_depth = &queue_depth.Add(labels);
    m.cache_hits = &cache_hits.Add(labels);
    m.cache_misses = &cache_misses.Add(labels);
  }
}

Metrics::~Metrics() = default;

void Metrics::RequestStarted() {
  in_flight_->Increment();
  requests_started_.fetch_add(1, std::memory_order_relaxed);
  requests_in_flight_.fetch_add(1, std::memory_order_relaxed);
}

void Metrics::AddRequestMemory(int64_t delta) {
  // prometheus-cpp's Gauge::Increment(v) and Decrement(v) are meant for v >= 0.
  if (delta >= 0) {
    request_memory_->Increment(static_cast<double>(delta));
  } else {
    request_memory_->Decrement(-static_cast<double>(delta));
  }
}

void Metrics::RecordRequestMemoryRefusal() { request_memory_refusals_->Increment(); }

void Metrics::RecordRequestMemoryClientRefusal() {
  request_memory_client_refusals_->Increment();
}

void Metrics::SetRequestMemoryClientLimit(int64_t bytes) {
  request_memory_client_limit_->Set(static_cast<double>(bytes));
}

void Metrics::SetRequestMemoryLimit(int64_t bytes) {
  request_memory_limit_->Set(static_cast<double>(bytes));
}

void Metrics::RequestFinished(absl::string_view rpc, absl::StatusCode code,
                              absl::Duration elapsed) {
  in_flight_->Decrement();
  requests_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  const std::string method(rpc);
  requests_->Add({{"rpc", method}, {"code", StatusCodeLabel(code)}}).Increment();
  request_duration_->Add({{"rpc", method}}, options_.latency_buckets_seconds)
      .Observe(absl::ToDoubleSeconds(elapsed));
}

void Metrics::StreamItemFailed(absl::string_view rpc, absl::StatusCode code) {
  stream_item_failures_->Add({{"rpc", std::string(rpc)}, {"code", StatusCodeLabel(code)}})
      .Increment();
}

void Metrics::OnPreprocessWait(Modality modality, absl::Duration waited) {
  Of(modality).preprocess_wait->Observe(absl::ToDoubleSeconds(waited));
}

void Metrics::OnPreprocessed(Modality modality, absl::Duration elapsed) {
  Of(modality).preprocess->Observe(absl::ToDoubleSeconds(elapsed));
}

void Metrics::OnBatch(Modality modality, absl::Span<const absl::Duration> queue_waits,
                      absl::Duration inference) {
  if (queue_waits.empty()) return;
  PerModality& m = Of(modality);
  m.batch_size->Observe(static_cast<double>(queue_waits.size()));
  for (absl::Duration wait : queue_waits) {
    m.queue_wait->Observe(absl::ToDoubleSeconds(wait));
  }
  m.inference->Observe(absl::ToDoubleSeconds(inference));
}

void Metrics::OnQueueDepth(Modality modality, int items) {
  Of(modality).queue_depth->Set(items);
}

void Metrics::RecordCacheLookup(Modality modality, bool hit) {
  PerModality& m = Of(modality);
  (hit ? m.cache_hits : m.cache_misses)->Increment();
}

void Metrics::RecordLabelCacheLookup(bool hit) {
  (hit ? label_cache_hits_ : label_cache_misses_)->Increment();
}

void Metrics::SetModelInfo(const ModelDescription& model) {
  absl::MutexLock lock(&model_mu_);
  // One model per process; a second call replaces the first series.
  if (model_info_series_ != nullptr) model_info_->Remove(model_info_series_);
  model_info_series_ =
      &model_info_->Add({{"model", model.name},
                         {"vision_architecture", model.vision_architecture},
                         {"text_architecture", model.text_architecture},
                         {"embed_dim", absl::StrCat(model.embed_dim)},
                         {"device", model.device},
                         {"precision", model.precision},
                         {"checkpoint_format", model.checkpoint_format}});
  model_info_series_->Set(1);
}

void Metrics::WatchGpu(std::unique_ptr<GpuStatsSource> source, int index,
                       const std::string& device) {
  prometheus::Registry& r = *registry_;
  auto gpu = std::make_unique<Gpu>();
  gpu->source = std::move(source);
  gpu->index = index;
  const prometheus::Labels labels = {{"device", device}};
  gpu->memory_used = &GaugeFamily(r, "clipserve_gpu_memory_used_bytes",
                                  "GPU memory in use by every process, as NVML reports "
                                  "it at scrape time.")
                          .Add(labels);
  gpu->memory_total =
      &GaugeFamily(r, "clipserve_gpu_memory_total_bytes", "GPU memory installed.")
           .Add(labels);
  gpu->utilization = &GaugeFamily(r, "clipserve_gpu_utilization_ratio",
                                  "Fraction of NVML's last sample period (about 1 s) "
                                  "during which a kernel ran on the GPU.")
                          .Add(labels);
  gpu->sample_errors = &CounterFamily(r, "clipserve_gpu_sample_errors_total",
                                      "Scrapes at which the GPU could not be read.")
                            .Add(labels);
  absl::MutexLock lock(&gpu_mu_);
  gpu_ = std::move(gpu);
}

std::string Metrics::Serialize() const {
  {
    absl::MutexLock lock(&gpu_mu_);
    if (gpu_ != nullptr) {
      const absl::StatusOr<GpuSample> sample = gpu_->source->Sample(gpu_->index);
      if (sample.ok()) {
        gpu_->memory_used->Set(static_cast<double>(sample->memory_used_bytes));
        gpu_->memory_total->Set(static_cast<double>(sample->memory_total_bytes));
        if (sample->utilization.has_value()) gpu_->utilization->Set(*sample->utilization);
      } else {
        gpu_->sample_errors->Increment();
      }
    }
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace clipserve
