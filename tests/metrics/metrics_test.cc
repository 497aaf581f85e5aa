#include "server/metrics/metrics.h"

#include <dlfcn.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/metrics/prometheus_text.h"

namespace clipserve {
namespace {

using ::clipserve::testing::FindSample;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::StartsWith;

TEST(MetricsTest, KnownSeriesExistAtZeroBeforeAnyWork) {
  Metrics metrics;
  const std::string text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_requests_in_flight"), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_request_memory_bytes"), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_request_memory_limit_bytes"), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_request_memory_refusals_total"), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_request_memory_client_limit_bytes"),
              Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_request_memory_client_refusals_total"),
              Optional(0.0));
  for (const char* modality : {"image", "text"}) {
    const std::string labels = absl::StrCat("{modality=\"", modality, "\"}");
    EXPECT_THAT(FindSample(text, "clipserve_queue_depth" + labels), Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_batch_size_count" + labels), Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_queue_wait_seconds_count" + labels),
                Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_preprocess_seconds_count" + labels),
                Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_preprocess_wait_seconds_count" + labels),
                Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_inference_seconds_count" + labels),
                Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_embedding_cache_hits_total" + labels),
                Optional(0.0));
    EXPECT_THAT(FindSample(text, "clipserve_embedding_cache_misses_total" + labels),
                Optional(0.0));
  }
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_hits_total"), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_misses_total"), Optional(0.0));
  // No RPC has run, so no per-RPC series yet.
  EXPECT_THAT(text, Not(HasSubstr("clipserve_requests_total{")));
}

TEST(MetricsTest, EveryMetricIsPrefixedAndDocumented) {
  Metrics metrics;
  metrics.RequestStarted();
  metrics.RequestFinished("EmbedText", absl::StatusCode::kOk, absl::Milliseconds(3));
  ModelDescription model;
  model.name = "m";
  metrics.SetModelInfo(model);
  int help_lines = 0;
  for (absl::string_view line : absl::StrSplit(metrics.Serialize(), '\n')) {
    if (line.empty()) continue;
    if (absl::StartsWith(line, "# HELP ")) ++help_lines;
    if (line[0] == '#') {
      EXPECT_THAT(std::string(line),
                  ::testing::MatchesRegex("# (HELP|TYPE) clipserve_.*"));
    } else {
      EXPECT_THAT(std::string(line), StartsWith("clipserve_"));
    }
  }
  // Requests, duration, in flight, request memory, its limit and refusals, the
  // per-client limit and refusals, model info, label cache x2, preprocess wait,
  // preprocess, queue wait, inference, batch size, queue depth, embedding cache x2.
  EXPECT_EQ(help_lines, 19);
}

TEST(MetricsTest, RequestsAreCountedByRpcAndCodeAndTimedByRpc) {
  Metrics metrics;
  metrics.RequestStarted();
  metrics.RequestStarted();
  EXPECT_THAT(FindSample(metrics.Serialize(), "clipserve_requests_in_flight"),
              Optional(2.0));
  metrics.RequestFinished("EmbedText", absl::StatusCode::kOk, absl::Milliseconds(20));
  metrics.RequestFinished("EmbedText", absl::StatusCode::kInvalidArgument,
                          absl::Milliseconds(300));
  metrics.RequestStarted();
  metrics.RequestFinished("EmbedText", absl::StatusCode::kOk, absl::Milliseconds(40));

  const std::string text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_requests_in_flight"), Optional(0.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedText"})"),
              Optional(2.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="INVALID_ARGUMENT",)"
                               R"(rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_EQ(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedImage"})"),
            std::nullopt);
  EXPECT_THAT(
      FindSample(text, R"(clipserve_request_duration_seconds_count{rpc="EmbedText"})"),
      Optional(3.0));
  const std::optional<double> sum =
      FindSample(text, R"(clipserve_request_duration_seconds_sum{rpc="EmbedText"})");
  ASSERT_TRUE(sum.has_value());
  EXPECT_NEAR(*sum, 0.36, 1e-9);
  // Buckets are cumulative: 20 ms and 40 ms are <= 0.05 s, 300 ms is not.
  EXPECT_THAT(FindSample(text, R"(clipserve_request_duration_seconds_bucket{)"
                               R"(rpc="EmbedText",le="0.05"})"),
              Optional(2.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_request_duration_seconds_bucket{)"
                               R"(rpc="EmbedText",le="0.5"})"),
              Optional(3.0));
}

TEST(MetricsTest, BatchesFillSizeQueueWaitAndInferenceHistograms) {
  Metrics metrics;
  const std::vector<absl::Duration> waits = {absl::Microseconds(800),
                                             absl::Milliseconds(3), absl::Seconds(2)};
  metrics.OnBatch(Modality::kText, waits, absl::Milliseconds(70));
  metrics.OnBatch(Modality::kText, {absl::Milliseconds(1)}, absl::Milliseconds(10));
  metrics.OnBatch(Modality::kImage, {}, absl::Milliseconds(10));  // ignored
  metrics.OnPreprocessed(Modality::kImage, absl::Milliseconds(4));
  metrics.OnPreprocessWait(Modality::kText, absl::Milliseconds(30));

  const std::string text = metrics.Serialize();
  const std::string t = R"({modality="text"})";
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_count" + t), Optional(2.0));
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_sum" + t), Optional(4.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_batch_size_bucket{modality="text",le="1"})"),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_batch_size_bucket{modality="text",le="4"})"),
              Optional(2.0));
  EXPECT_THAT(FindSample(text, "clipserve_queue_wait_seconds_count" + t), Optional(4.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_queue_wait_seconds_bucket{)"
                               R"(modality="text",le="0.001"})"),
              Optional(2.0));  // 0.8 ms and 1 ms (bounds are inclusive)
  EXPECT_THAT(FindSample(text, R"(clipserve_queue_wait_seconds_bucket{)"
                               R"(modality="text",le="1"})"),
              Optional(3.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_queue_wait_seconds_bucket{)"
                               R"(modality="text",le="+Inf"})"),
              Optional(4.0));
  EXPECT_THAT(FindSample(text, "clipserve_inference_seconds_count" + t), Optional(2.0));
  const std::optional<double> inference =
      FindSample(text, "clipserve_inference_seconds_sum" + t);
  ASSERT_TRUE(inference.has_value());
  EXPECT_NEAR(*inference, 0.08, 1e-9);

  const std::string i = R"({modality="image"})";
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_count" + i), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_inference_seconds_count" + i), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_seconds_count" + i), Optional(1.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_seconds_count" + t), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_wait_seconds_count" + t),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_wait_seconds_count" + i),
              Optional(0.0));
  const std::optional<double> waited =
      FindSample(text, "clipserve_preprocess_wait_seconds_sum" + t);
  ASSERT_TRUE(waited.has_value());
  EXPECT_NEAR(*waited, 0.03, 1e-9);
}

TEST(MetricsTest, QueueDepthIsTheLastReport) {
  Metrics metrics;
  metrics.OnQueueDepth(Modality::kImage, 17);
  metrics.OnQueueDepth(Modality::kImage, 5);
  metrics.OnQueueDepth(Modality::kText, 3);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, R"(clipserve_queue_depth{modality="image"})"),
              Optional(5.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_queue_depth{modality="text"})"),
              Optional(3.0));
}

TEST(MetricsTest, CacheLookupsAreCountedByModalityAndResult) {
  Metrics metrics;
  metrics.RecordCacheLookup(Modality::kText, true);
  metrics.RecordCacheLookup(Modality::kText, true);
  metrics.RecordCacheLookup(Modality::kText, false);
  metrics.RecordCacheLookup(Modality::kImage, false);
  metrics.RecordLabelCacheLookup(true);
  metrics.RecordLabelCacheLookup(false);
  metrics.RecordLabelCacheLookup(false);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(
      FindSample(text, R"(clipserve_embedding_cache_hits_total{modality="text"})"),
      Optional(2.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_embedding_cache_misses_total{modality="text"})"),
      Optional(1.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_embedding_cache_hits_total{modality="image"})"),
      Optional(0.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_embedding_cache_misses_total{modality="image"})"),
      Optional(1.0));
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_hits_total"), Optional(1.0));
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_misses_total"), Optional(2.0));
}

TEST(MetricsTest, ModelInfoIsOneSeriesWithTheModelsLabels) {
  Metrics metrics;
  ModelDescription model;
  model.name = "ViT-B-32";
  model.vision_architecture = "vit";
  model.text_architecture = "transformer";
  model.embed_dim = 512;
  model.device = "cpu";
  model.precision = "fp32";
  model.checkpoint_format = "openai";
  metrics.SetModelInfo(model);
  const std::string first =
      R"(clipserve_model_info{checkpoint_format="openai",device="cpu",embed_dim="512",)"
      R"(model="ViT-B-32",precision="fp32",text_architecture="transformer",)"
      R"(vision_architecture="vit"})";
  EXPECT_THAT(FindSample(metrics.Serialize(), first), Optional(1.0));

  model.name = "RN50";
  model.vision_architecture = "modified_resnet";
  metrics.SetModelInfo(model);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(FindSample(text, first), std::nullopt);  // replaced, not added
  EXPECT_THAT(
      FindSample(
          text,
          R"(clipserve_model_info{checkpoint_format="openai",device="cpu",)"
          R"(embed_dim="512",model="RN50",precision="fp32",)"
          R"(text_architecture="transformer",vision_architecture="modified_resnet"})"),
      Optional(1.0));
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  Metrics metrics;
  ModelDescription model;
  model.name = "a \"quoted\"\\name\nx";
  metrics.SetModelInfo(model);
  EXPECT_THAT(metrics.Serialize(), HasSubstr(R"(model="a \"quoted\"\\name\nx")"));
}

TEST(MetricsTest, StatusCodeLabelsAreGrpcNames) {
  EXPECT_EQ(StatusCodeLabel(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeLabel(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeLabel(absl::StatusCode::kDeadlineExceeded), "DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeLabel(static_cast<absl::StatusCode>(42)), "42");
}

// A GPU that reads as scripted: each Sample() takes the next reading (an error once
// the script runs out) and records the index asked for.
class FakeGpu final : public GpuStatsSource {
 public:
  explicit FakeGpu(std::vector<GpuSample> readings, std::vector<int>* asked)
      : readings_(std::move(readings)), asked_(asked) {}
  absl::StatusOr<GpuSample> Sample(int index) override {
    asked_->push_back(index);
    if (next_ >= readings_.size()) return absl::UnavailableError("GPU fell off the bus");
    return readings_[next_++];
  }
  absl::StatusOr<int> IndexOfPciBusId(const std::string& pci_bus_id) override {
    return absl::NotFoundError(pci_bus_id);
  }

 private:
  std::vector<GpuSample> readings_;
  size_t next_ = 0;
  std::vector<int>* asked_;
};

TEST(MetricsTest, GpuSeriesAppearOnlyOnceWatchedAndAreReadAtEachScrape) {
  Metrics metrics;
  EXPECT_THAT(metrics.Serialize(), Not(HasSubstr("clipserve_gpu_")));
  std::vector<int> asked;
  metrics.WatchGpu(
      std::make_unique<FakeGpu>(
          std::vector<GpuSample>{{1000, 8000, 0.25}, {3000, 8000, 0.75}}, &asked),
      1, "cuda:1");
  const std::string labels = R"({device="cuda:1"})";
  std::string text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_used_bytes" + labels),
              Optional(1000.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_total_bytes" + labels),
              Optional(8000.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_utilization_ratio" + labels),
              Optional(0.25));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_sample_errors_total" + labels),
              Optional(0.0));
  text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_used_bytes" + labels),
              Optional(3000.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_utilization_ratio" + labels),
              Optional(0.75));
  // A failed reading keeps the last values and is counted.
  text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_used_bytes" + labels),
              Optional(3000.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_sample_errors_total" + labels),
              Optional(1.0));
  EXPECT_EQ(asked, (std::vector<int>{1, 1, 1}));
}

TEST(MetricsTest, AGpuWithoutUtilizationStillReportsItsMemory) {
  Metrics metrics;
  std::vector<int> asked;
  GpuSample mig;  // a MIG instance: memory, no utilization
  mig.memory_used_bytes = 500;
  mig.memory_total_bytes = 4000;
  metrics.WatchGpu(std::make_unique<FakeGpu>(std::vector<GpuSample>{mig}, &asked), 0,
                   "cuda:0");
  const std::string labels = R"({device="cuda:0"})";
  const std::string text = metrics.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_used_bytes" + labels),
              Optional(500.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_memory_total_bytes" + labels),
              Optional(4000.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_utilization_ratio" + labels),
              Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_gpu_sample_errors_total" + labels),
              Optional(0.0));
}

TEST(MetricsTest, NvmlIsUnavailableWithoutTheDriverLibrary) {
  if (void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL)) {
    dlclose(nvml);
    GTEST_SKIP() << "this machine has NVML";
  }
  EXPECT_EQ(OpenNvml().status().code(), absl::StatusCode::kUnavailable);
}

TEST(MetricsTest, NvmlReadsTheFirstGpu_CUDA) {
  void* driver = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver == nullptr) GTEST_SKIP() << "no NVML on this machine";
  dlclose(driver);
  if (!std::filesystem::exists("/dev/nvidiactl")) GTEST_SKIP() << "no NVIDIA device";
  // With the driver's library and a device present, NVML must open: a broken one is
  // a failure, not a skip.
  auto nvml = OpenNvml();
  ASSERT_TRUE(nvml.ok()) << nvml.status();
  auto sample = (*nvml)->Sample(0);
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_GT(sample->memory_total_bytes, 0u);
  EXPECT_LE(sample->memory_used_bytes, sample->memory_total_bytes);
  if (sample->utilization.has_value()) {  // not on MIG instances
    EXPECT_GE(*sample->utilization, 0.0);
    EXPECT_LE(*sample->utilization, 1.0);
  }
}

}  // namespace
}  // namespace clipserve
