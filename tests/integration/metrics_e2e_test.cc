// Metrics end to end: a real ClipServer + ClipService + EmbeddingEngine (tiny random
// model) on loopback reporting into Metrics, served by MetricsHttpServer; the test
// sends known calls over gRPC and reads /metrics, /healthz and /readyz over HTTP.

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/engine/embedding_engine.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http_server.h"
#include "server/service/clip_server.h"
#include "server/service/clip_service.h"
#include "tests/integration/loopback_stack.h"
#include "tests/metrics/prometheus_text.h"

namespace clipserve {
namespace {

using ::clipserve::testing::FindSample;
using ::testing::Optional;
namespace pb = ::clipserve::v1;

int HttpStatus(int port, const std::string& path, std::string* body = nullptr) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  httplib::Result result = client.Get(path);
  if (!result) return -1;
  if (body != nullptr) *body = result->body;
  return result->status;
}

class MetricsE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    // As main() does: the endpoint first, before the model exists.
    MetricsHttpServerOptions http_options;
    http_options.host = "127.0.0.1";
    http_options.port = 0;
    auto http = MetricsHttpServer::Create(http_options, &metrics_);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }

  // Loads the model and starts gRPC, wired to metrics_ as main() wires them.
  void StartServing() {
    EmbeddingEngineOptions engine_options;
    engine_options.observer = &metrics_;
    ClipServiceOptions service_options;
    service_options.metrics = &metrics_;
    absl::StatusOr<testing::LoopbackStack> stack =
        testing::StartLoopbackStack(engine_options, service_options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    engine_ = std::move(stack->engine);
    server_ = std::move(stack->server);
    stub_ = std::move(stack->stub);
    metrics_.SetModelInfo(engine_->description());
    http_->SetReadinessCheck([server = server_.get(), engine = engine_.get()] {
      return server->serving() && engine->healthy();
    });
  }

  void TearDown() override {
    if (http_ != nullptr) http_->Stop();
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
    if (engine_ != nullptr) engine_->Shutdown();
  }

  grpc::Status EmbedText(const std::vector<std::string>& texts) {
    pb::EmbedTextRequest request;
    for (const std::string& text : texts) request.add_texts(text);
    pb::EmbedTextResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    return stub_->EmbedText(&context, request, &response);
  }

  std::string Scrape() {
    std::string body;
    EXPECT_EQ(HttpStatus(http_->port(), "/metrics", &body), 200);
    return body;
  }

  Metrics metrics_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::unique_ptr<EmbeddingEngine> engine_;
  std::unique_ptr<ClipServer> server_;
  std::unique_ptr<pb::ClipService::Stub> stub_;
};

TEST_F(MetricsE2ETest, CountsWhatTheClientSent) {
  StartServing();
  // One call after the other: each call's two texts are scheduled together, and the
  // next call starts only after the previous answer, so each forms one batch of 2.
  for (int i = 0; i < 3; ++i) {
    const grpc::Status status = EmbedText({absl::StrCat("a photo of ", i), "a cat"});
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  // No texts at all: refused by validation, before the engine.
  EXPECT_EQ(EmbedText({}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  const std::string text = Scrape();
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedText"})"),
              Optional(3.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="INVALID_ARGUMENT",)"
                               R"(rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_request_duration_seconds_count{rpc="EmbedText"})"),
      Optional(4.0));
  EXPECT_THAT(FindSample(text, "clipserve_requests_in_flight"), Optional(0.0));
  // The service's request memory budget reports to the same registry.
  EXPECT_THAT(
      FindSample(text, "clipserve_request_memory_limit_bytes"),
      Optional(static_cast<double>(ClipServiceOptions{}.max_request_memory_bytes)));

  const std::string t = R"({modality="text"})";
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_count" + t), Optional(3.0));
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_sum" + t), Optional(6.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_batch_size_bucket{modality="text",le="2"})"),
              Optional(3.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_batch_size_bucket{modality="text",le="1"})"),
              Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_queue_wait_seconds_count" + t), Optional(6.0));
  EXPECT_THAT(FindSample(text, "clipserve_inference_seconds_count" + t), Optional(3.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_seconds_count" + t), Optional(3.0));
  EXPECT_THAT(FindSample(text, "clipserve_queue_depth" + t), Optional(0.0));
  // No image was sent.
  const std::string i = R"({modality="image"})";
  EXPECT_THAT(FindSample(text, "clipserve_batch_size_count" + i), Optional(0.0));
  EXPECT_THAT(FindSample(text, "clipserve_preprocess_seconds_count" + i), Optional(0.0));

  const ModelDescription& d = engine_->description();
  EXPECT_THAT(
      FindSample(
          text,
          absl::StrCat(R"(clipserve_model_info{checkpoint_format=")", d.checkpoint_format,
                       R"(",device="cpu",embed_dim="32",)", R"(model="tiny",precision=")",
                       d.precision, R"(",text_architecture=")", d.text_architecture,
                       R"(",vision_architecture=")", d.vision_architecture, R"("})")),
      Optional(1.0));
}

TEST_F(MetricsE2ETest, GetModelInfoAndClassifyAreCountedWithTheLabelCache) {
  StartServing();
  grpc::ClientContext info_context;
  pb::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&info_context, pb::GetModelInfoRequest(), &info).ok());

  // Classify twice with the same labels: 2 misses, then 2 hits.
  pb::ClassifyRequest request;
  pb::RawImage* raw = request.add_images()->mutable_raw();
  raw->set_width(8);
  raw->set_height(8);
  raw->set_rgb8(std::string(8 * 8 * 3, '\x80'));
  request.add_labels("cat");
  request.add_labels("dog");
  for (int k = 0; k < 2; ++k) {
    grpc::ClientContext context;
    pb::ClassifyResponse response;
    const grpc::Status status = stub_->Classify(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const std::string text = Scrape();
  EXPECT_THAT(
      FindSample(text, R"(clipserve_requests_total{code="OK",rpc="GetModelInfo"})"),
      Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="Classify"})"),
              Optional(2.0));
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_misses_total"), Optional(2.0));
  EXPECT_THAT(FindSample(text, "clipserve_label_cache_hits_total"), Optional(2.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_batch_size_count{modality="image"})"),
              Optional(2.0));
}

TEST_F(MetricsE2ETest, ReadyOnlyWhileServing) {
  const int port = http_->port();
  // The model is not loaded yet: alive, not ready.
  EXPECT_EQ(HttpStatus(port, "/healthz"), 200);
  EXPECT_EQ(HttpStatus(port, "/readyz"), 503);

  StartServing();
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  server_->SetServing(false);  // what main() does while the engine is unhealthy
  EXPECT_EQ(HttpStatus(port, "/readyz"), 503);
  server_->SetServing(true);
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);

  // Draining: not ready from the moment shutdown begins, still alive.
  server_->Shutdown(absl::Seconds(5));
  EXPECT_EQ(HttpStatus(port, "/readyz"), 503);
  EXPECT_EQ(HttpStatus(port, "/healthz"), 200);
  server_->SetServing(true);  // ignored after shutdown
  EXPECT_EQ(HttpStatus(port, "/readyz"), 503);
}

TEST_F(MetricsE2ETest, AnUnhealthyEngineIsNotReady) {
  StartServing();
  EXPECT_EQ(HttpStatus(http_->port(), "/readyz"), 200);
  engine_->Shutdown();  // healthy() turns false
  EXPECT_EQ(HttpStatus(http_->port(), "/readyz"), 503);
}

TEST_F(MetricsE2ETest, NotReadyWhileDrainingAndTheStreamIsCounted) {
  StartServing();
  const int port = http_->port();
  // A stream that stays open keeps the server draining until the client ends it.
  grpc::ClientContext context;
  auto stream = stub_->EmbedStream(&context);
  pb::EmbedStreamRequest item;
  item.set_id("1");
  item.set_text("a cat");
  ASSERT_TRUE(stream->Write(item));
  pb::EmbedStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));  // the call has surely reached the server
  EXPECT_EQ(answer.id(), "1");
  EXPECT_THAT(FindSample(Scrape(), "clipserve_requests_in_flight"), Optional(1.0));

  absl::Notification drained;
  std::thread shutdown([this, &drained] {
    server_->Shutdown(absl::Seconds(60));
    drained.Notify();
  });
  // Readiness drops as soon as the drain begins (polled: the drain starts on the
  // other thread), while the stream is still open.
  int status = 0;
  for (int attempt = 0; attempt < 1000 && (status = HttpStatus(port, "/readyz")) == 200;
       ++attempt) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(status, 503);
  EXPECT_FALSE(drained.HasBeenNotified());
  EXPECT_EQ(HttpStatus(port, "/healthz"), 200);

  ASSERT_TRUE(stream->WritesDone());
  while (stream->Read(&answer)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
  shutdown.join();
  EXPECT_TRUE(drained.HasBeenNotified());
  const std::string text = Scrape();
  EXPECT_THAT(
      FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedStream"})"),
      Optional(1.0));
  EXPECT_THAT(FindSample(text, "clipserve_requests_in_flight"), Optional(0.0));
}

}  // namespace
}  // namespace clipserve
