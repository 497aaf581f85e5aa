#include "server/service/clip_service.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/error_details.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics.h"
#include "server/model/contrastive_loss.h"
#include "server/service/clip_server.h"
#include "server/service/grpc_status.h"
#include "server/service/request_memory_budget.h"
#include "tests/metrics/prometheus_text.h"
#include "tests/service/fake_engine.h"
#include "tests/testing/async_call.h"
#include "tests/testing/poll_until.h"
#include "tests/testing/raw_call.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Kind = FakeEngine::Call::Kind;

constexpr float kTolerance = 1e-5f;

// ---------------------------------------------------------------------------
// Helpers

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

using testing::Rpc;
using testing::StartCall;

google::rpc::Status RpcStatus(const grpc::Status& status) {
  google::rpc::Status out;
  EXPECT_TRUE(grpc::ExtractErrorDetails(status, &out).ok());
  return out;
}

// The field of the first violation in the BadRequest detail, or a marker saying why
// there is none.
std::string BadField(const google::rpc::Status& status) {
  for (const google::protobuf::Any& detail : status.details()) {
    google::rpc::BadRequest bad_request;
    if (detail.UnpackTo(&bad_request)) {
      if (bad_request.field_violations_size() != 1) return "<not one violation>";
      return bad_request.field_violations(0).field();
    }
  }
  return "<no BadRequest>";
}
std::string BadField(const grpc::Status& status) { return BadField(RpcStatus(status)); }

v1::Image Encoded(std::string bytes) {
  v1::Image image;
  image.set_encoded(std::move(bytes));
  return image;
}

v1::Image Raw(uint32_t width, uint32_t height, char fill, size_t bytes) {
  v1::Image image;
  image.mutable_raw()->set_width(width);
  image.mutable_raw()->set_height(height);
  image.mutable_raw()->set_rgb8(std::string(bytes, fill));
  return image;
}
v1::Image Raw(uint32_t width, uint32_t height, char fill) {
  return Raw(width, height, fill, size_t{width} * height * 3);
}

v1::EmbedStreamRequest TextItem(std::string id, std::string text) {
  v1::EmbedStreamRequest item;
  item.set_id(std::move(id));
  item.set_text(std::move(text));
  return item;
}

v1::EmbedStreamRequest ImageItem(std::string id, v1::Image image) {
  v1::EmbedStreamRequest item;
  item.set_id(std::move(id));
  *item.mutable_image() = std::move(image);
  return item;
}

// What the fake engine computes for `image`.
std::vector<float> FakeImage(const v1::Image& image, bool normalize = true) {
  ImageInput input;
  if (image.has_raw()) {
    input.is_raw = true;
    input.rgb8 = image.raw().rgb8();
    input.width = image.raw().width();
    input.height = image.raw().height();
  } else {
    input.encoded = image.encoded();
  }
  std::vector<float> v = FakeEngine::ImageVector(input, 8);
  return normalize ? FakeEngine::Normalized(std::move(v)) : v;
}
std::vector<float> FakeText(const std::string& text, bool normalize = true) {
  std::vector<float> v = FakeEngine::TextVector(text, 8);
  return normalize ? FakeEngine::Normalized(std::move(v)) : v;
}

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

std::vector<float> Values(const v1::Embedding& e) {
  return {e.values().begin(), e.values().end()};
}

void ExpectNear(const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], kTolerance) << "at " << i;
  }
}

// Cross-entropy of `logits` (one row) against `label`, computed here from scratch.
double CrossEntropy(const std::vector<double>& logits, int label) {
  double max = logits[0];
  for (double v : logits) max = std::max(max, v);
  double sum = 0;
  for (double v : logits) sum += std::exp(v - max);
  return std::log(sum) + max - logits[label];
}

// CancellationFlag has no hook to be notified on, so this polls it (bounded).
bool WaitUntilCancelled(const EmbedOptions& options) {
  return testing::PollUntil([&] { return options.cancellation->cancelled(); });
}

// The delay of the one RetryInfo in `status`'s details; nullopt when the details are
// anything else.
std::optional<absl::Duration> RetryDelayOf(const grpc::Status& status) {
  const google::rpc::Status details = RpcStatus(status);
  google::rpc::RetryInfo retry_info;
  if (details.details_size() != 1 || !details.details(0).UnpackTo(&retry_info)) {
    return std::nullopt;
  }
  return absl::Seconds(retry_info.retry_delay().seconds()) +
         absl::Nanoseconds(retry_info.retry_delay().nanos());
}

// ---------------------------------------------------------------------------
// Fixture: a real ClipServer on a loopback port, ClipService over a FakeEngine.

// ClipService over `engine`, served by a ClipServer on a loopback port (listening on
// `host`, which must take connections to 127.0.0.1), and a stub to it over
// 127.0.0.1. `server` is null (after a test failure) when anything fails.
struct LoopbackService {
  ClipService* service = nullptr;  // owned by server
  std::unique_ptr<ClipServer> server;
  std::unique_ptr<v1::ClipService::Stub> stub;
};

LoopbackService ServeOnLoopback(Engine* engine, const ClipServiceOptions& options,
                                const std::string& host = "127.0.0.1") {
  LoopbackService out;
  absl::StatusOr<std::unique_ptr<ClipService>> service =
      ClipService::Create(engine, options);
  if (!service.ok()) {
    ADD_FAILURE() << service.status();
    return out;
  }
  out.service = service->get();
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(*std::move(service));
  ClipServerOptions server_options;
  server_options.host = host;
  server_options.port = 0;
  absl::StatusOr<std::unique_ptr<ClipServer>> server =
      ClipServer::Create(server_options, std::move(services));
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return out;
  }
  out.server = *std::move(server);
  out.stub = v1::ClipService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", out.server->port()),
                          grpc::InsecureChannelCredentials()));
  return out;
}

// A call's request bytes are returned when gRPC deletes the call, which may be just
// after its client has the answer; this waits (bounded) for the budget to show it.
bool AwaitRequestMemory(const ClipService& service, int64_t bytes) {
  return testing::PollUntil([&] { return service.request_memory_used() == bytes; });
}

class ClipServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(ClipServiceOptions{}); }

  void TearDown() override { Stop(); }

  void Start(const ClipServiceOptions& options) {
    engine_ = std::make_unique<FakeEngine>(FakeEngine::DefaultDescription());
    LoopbackService serving = ServeOnLoopback(engine_.get(), options);
    ASSERT_NE(serving.server, nullptr);
    service_ = serving.service;
    server_ = std::move(serving.server);
    stub_ = std::move(serving.stub);
  }

  // Answers whatever the engine holds, so that every call can end, then shuts down.
  void Stop() {
    if (engine_ != nullptr) engine_->set_hold(false);
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(10));
    stub_.reset();
    server_.reset();
    engine_.reset();
  }

  void Restart(const ClipServiceOptions& options) {
    Stop();
    Start(options);
  }

  // Restarts with the service recording its calls into a new metrics_.
  void RestartRecordingMetrics(ClipServiceOptions options = {}) {
    Stop();
    metrics_ = std::make_unique<Metrics>();
    options.metrics = metrics_.get();
    Start(options);
  }

  // How many `rpc` calls metrics_ counts as ended with `code`; nullopt for none.
  std::optional<double> CountedCalls(absl::string_view rpc, absl::string_view code) {
    return testing::FindSample(
        metrics_->Serialize(),
        absl::StrCat("clipserve_requests_total{code=\"", code, "\",rpc=\"", rpc, "\"}"));
  }

  // clipserve_stream_item_failures_total of EmbedStream items failed with `code`.
  std::optional<double> CountedItemFailures(absl::string_view code) {
    return testing::FindSample(
        metrics_->Serialize(),
        absl::StrCat("clipserve_stream_item_failures_total{code=\"", code,
                     "\",rpc=\"EmbedStream\"}"));
  }

  // Waits up to 10 s until CountedCalls(rpc, code) is `n`: a stream is counted when
  // gRPC is done with it, which may be after its client's Finish().
  bool AwaitCountedCalls(absl::string_view rpc, absl::string_view code, double n) {
    return testing::PollUntil([&] { return CountedCalls(rpc, code) == n; });
  }

  // Sends an EmbedText with `deadline` whose answer the engine holds, cancels it from
  // the client at `cancel_at`, waits until the server has heard the cancel, then lets
  // the engine answer it as a batch that was already running (OK). Returns what the
  // client saw.
  grpc::Status CancelAHeldEmbedText(absl::Time deadline, absl::Time cancel_at) {
    engine_->set_hold(true);
    engine_->set_answer_dead_requests(true);
    v1::EmbedTextRequest request;
    request.add_texts("a cat");
    auto call = StartCall(stub_->async(), &Rpc::EmbedText, request, deadline);
    if (!engine_->AwaitHeld(1)) {
      ADD_FAILURE() << "the call never reached the engine";
      return grpc::Status(grpc::StatusCode::INTERNAL, "not held");
    }
    absl::SleepFor(cancel_at - absl::Now());
    call->context.TryCancel();
    EXPECT_TRUE(call->Await());
    EXPECT_TRUE(WaitUntilCancelled(engine_->calls().at(0).options));  // OnCancel() ran
    engine_->set_hold(false);
    return call->status;
  }

  // Restarts under `options`, whose limit admits a 1500-byte EmbedStream item and a
  // small one beside it but not 600 bytes more: that item alone fails at once,
  // naming `flag`, and is admitted once the engine has answered the others.
  // `counter`: the metric that counts the refusals of that limit.
  void ExpectAStreamItemPastTheLimitFailsAlone(const ClipServiceOptions& options,
                                               absl::string_view flag,
                                               absl::string_view counter) {
    RestartRecordingMetrics(options);
    engine_->set_hold(true);
    const auto refusals = [&] {
      return testing::FindSample(metrics_->Serialize(), counter).value_or(0);
    };

    // Another call of the same client holds 1500 bytes while the engine holds it...
    v1::EmbedTextRequest big_request;
    big_request.add_texts(std::string(1500, 'b'));
    auto big = StartCall(stub_->async(), &Rpc::EmbedText, big_request);
    ASSERT_TRUE(engine_->AwaitHeld(1));
    EXPECT_GE(service_->request_memory_used(), 1500);
    // ...so a stream's item of 600 bytes does not fit, and the stream holds nothing of
    // its own to wait for: that item alone fails, at once.
    auto context = Context(absl::Seconds(30));
    auto stream = stub_->EmbedStream(context.get());
    ASSERT_TRUE(stream->Write(TextItem("refused", std::string(600, 'r'))));
    v1::EmbedStreamResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.id(), "refused");
    ASSERT_TRUE(response.has_error());
    EXPECT_EQ(response.error().code(),
              static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
    EXPECT_THAT(response.error().message(), HasSubstr(std::string(flag)));
    EXPECT_EQ(refusals(), 1);
    // An invalid item as large fails for what is wrong with it, and is no refusal:
    // it would hold nothing.
    v1::EmbedStreamRequest no_input;
    no_input.set_id(std::string(600, 'i'));  // over the 256-byte limit of an id
    ASSERT_TRUE(stream->Write(no_input));
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_TRUE(response.has_error());
    EXPECT_EQ(response.error().code(),
              static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    EXPECT_EQ(refusals(), 1);
    // A small item still fits beside the big call.
    ASSERT_TRUE(stream->Write(TextItem("small", "a cat")));
    ASSERT_TRUE(engine_->AwaitHeld(2));

    // Once the engine has answered, nothing is held and the 600 bytes are admitted.
    engine_->set_hold(false);
    ASSERT_TRUE(big->Await());
    EXPECT_TRUE(big->status.ok()) << big->status.error_message();
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.id(), "small");
    EXPECT_TRUE(response.has_embedding());
    EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
    ASSERT_TRUE(stream->Write(TextItem("retried", std::string(600, 'r'))));
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.id(), "retried");
    EXPECT_TRUE(response.has_embedding());
    ASSERT_TRUE(stream->WritesDone());
    EXPECT_FALSE(stream->Read(&response));
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(service_->request_memory_used(), 0);
  }

  grpc::Status EmbedImage(const v1::EmbedImageRequest& request,
                          v1::EmbedImageResponse* response) {
    return stub_->EmbedImage(Context().get(), request, response);
  }
  grpc::Status EmbedText(const v1::EmbedTextRequest& request,
                         v1::EmbedTextResponse* response) {
    return stub_->EmbedText(Context().get(), request, response);
  }
  grpc::Status Similarity(const v1::SimilarityRequest& request,
                          v1::SimilarityResponse* response) {
    return stub_->Similarity(Context().get(), request, response);
  }
  grpc::Status Classify(const v1::ClassifyRequest& request,
                        v1::ClassifyResponse* response) {
    return stub_->Classify(Context().get(), request, response);
  }

  std::unique_ptr<Metrics> metrics_;  // outlives the server (TearDown() stops it)
  std::unique_ptr<FakeEngine> engine_;
  ClipService* service_ = nullptr;  // owned by server_
  std::unique_ptr<ClipServer> server_;
  std::unique_ptr<v1::ClipService::Stub> stub_;
};

// Calls ClipService's `method` with `bytes` as its request (testing::CallWithBytes).
grpc::Status CallWithBytes(const ClipServer& server, const std::string& method,
                           const std::string& bytes, std::string* response = nullptr) {
  return testing::CallWithBytes(server.port(), "/clipserve.v1.ClipService/" + method,
                                bytes, response);
}

// Bytes that are no valid request (a length-delimited field cut short) are
// INVALID_ARGUMENT naming the message type, whichever method with input receives
// them; gRPC's own parser would answer UNIMPLEMENTED with no message.
TEST_F(ClipServiceTest, MalformedRequestsAreInvalidArgument) {
  const std::string bytes("\x0a\x05\x0a", 3);
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"EmbedImage", "EmbedImageRequest"}, {"EmbedText", "EmbedTextRequest"},
      {"Similarity", "SimilarityRequest"}, {"Classify", "ClassifyRequest"},
      {"Tokenize", "TokenizeRequest"},     {"GetModelInfo", "GetModelInfoRequest"}};
  for (const auto& [method, type] : methods) {
    SCOPED_TRACE(method);
    const grpc::Status status = CallWithBytes(*server_, method, bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status.error_message(), "the request is not a valid clipserve.v1." + type);
  }
  EXPECT_THAT(engine_->calls(), ::testing::IsEmpty());
}

// GetModelInfo's request has no fields, and a typed parser would keep every unknown
// one it was sent (a 64 MiB request of empty groups took 1.6 GB): a few, from a newer
// client, are answered; more than 16 per item of the request limit are refused
// unbuilt, as in every other method.
TEST_F(ClipServiceTest, GetModelInfoRefusesAFloodOfUnknownFields) {
  std::string info_bytes;
  ASSERT_TRUE(
      CallWithBytes(*server_, "GetModelInfo", "\x0b\x0c\x10\x01", &info_bytes).ok());
  v1::ModelInfo info;
  ASSERT_TRUE(info.ParseFromString(info_bytes));
  EXPECT_EQ(info.embed_dim(), FakeEngine::DefaultDescription().embed_dim);

  std::string flood;
  for (int i = 0; i < 100'000; ++i) flood += "\x0b\x0c";
  const grpc::Status status = CallWithBytes(*server_, "GetModelInfo", flood);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              HasSubstr("the request holds 100000 fields that a "
                        "clipserve.v1.GetModelInfoRequest does not have"));
}

// ---------------------------------------------------------------------------
// Create

TEST(ClipServiceCreateTest, RejectsBadArguments) {
  FakeEngine engine(FakeEngine::DefaultDescription());
  EXPECT_EQ(ClipService::Create(nullptr, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClipServiceOptions options;
  options.max_stream_items_in_flight = 0;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.limits.max_text_bytes = 0;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.max_classify_prompts = 0;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.label_cache_capacity = -1;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.max_response_bytes = -1;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A limit no one-item answer fits in: the longest stream id with an embedding.
  const int64_t one_item = LargestOneItemResponseBytes(FakeEngine::DefaultDescription());
  EXPECT_GT(one_item, kMaxStreamIdBytes + 4 * FakeEngine::DefaultDescription().embed_dim);
  options.max_response_bytes = one_item - 1;
  const absl::Status too_small = ClipService::Create(&engine, options).status();
  EXPECT_EQ(too_small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_small.message(),
              HasSubstr(absl::StrCat("max_response_bytes (", one_item - 1, ")")));
  options.max_response_bytes = one_item;
  EXPECT_TRUE(ClipService::Create(&engine, options).ok());
  options = {};
  options.max_request_memory_bytes = -1;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.max_request_memory_per_client_bytes = -1;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.max_request_memory_per_client_bytes = options.max_request_memory_bytes + 1;
  EXPECT_EQ(ClipService::Create(&engine, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.max_request_memory_bytes = 0;  // no total: any share is allowed
  EXPECT_TRUE(ClipService::Create(&engine, options).ok());
  EXPECT_TRUE(ClipService::Create(&engine, {}).ok());

  ModelDescription no_width = FakeEngine::DefaultDescription();
  no_width.embed_dim = 0;
  FakeEngine widthless(no_width);
  EXPECT_EQ(ClipService::Create(&widthless, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ClipServiceCreateTest, RejectsLimitsOverWhatOneEngineCallMayCarry) {
  FakeEngine engine(FakeEngine::DefaultDescription(), /*max_texts_per_call=*/100);
  ClipServiceOptions options;
  options.limits.max_items_per_request = 100;
  options.max_classify_prompts = 100;
  EXPECT_TRUE(ClipService::Create(&engine, options).ok());
  options.limits.max_items_per_request = 101;
  const absl::Status items = ClipService::Create(&engine, options).status();
  EXPECT_EQ(items.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(items.message(), HasSubstr("max_items_per_request (101)"));
  options.limits.max_items_per_request = 100;
  options.max_classify_prompts = 101;
  const absl::Status prompts = ClipService::Create(&engine, options).status();
  EXPECT_EQ(prompts.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(prompts.message(), HasSubstr("max_classify_prompts (101)"));
}

// ---------------------------------------------------------------------------
// GetModelInfo

TEST_F(ClipServiceTest, GetModelInfoReportsEveryField) {
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(Context().get(), {}, &info).ok());
  EXPECT_EQ(info.name(), "fake-ViT-B-32");
  EXPECT_EQ(info.vision().architecture(), "vit");
  EXPECT_EQ(info.vision().width(), 768u);
  EXPECT_EQ(info.vision().layers(), 12u);
  EXPECT_EQ(info.vision().patch_size(), 32u);
  EXPECT_EQ(info.vision().heads(), 12u);
  EXPECT_EQ(info.vision().stage_layers_size(), 0);
  EXPECT_EQ(info.text().architecture(), "transformer");
  EXPECT_EQ(info.text().width(), 512u);
  EXPECT_EQ(info.text().layers(), 12u);
  EXPECT_EQ(info.text().heads(), 8u);
  EXPECT_EQ(info.embed_dim(), 8u);
  EXPECT_EQ(info.image_size(), 224u);
  EXPECT_THAT(info.image_mean(), ElementsAre(0.48145466f, 0.4578275f, 0.40821073f));
  EXPECT_THAT(info.image_std(), ElementsAre(0.26862954f, 0.26130258f, 0.27577711f));
  EXPECT_EQ(info.context_length(), 77u);
  EXPECT_EQ(info.vocab_size(), 49408u);
  EXPECT_EQ(info.logit_scale(), 20.0f);
  EXPECT_EQ(info.precision(), "fp32");
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.checkpoint_format(), "demo");
  EXPECT_EQ(info.checkpoint_sha256(), "");
  EXPECT_TRUE(info.random_weights());
}

TEST(ClipServiceModelInfoTest, ReportsResNetStages) {
  ModelDescription description = FakeEngine::DefaultDescription();
  description.vision_architecture = "modified_resnet";
  description.vision_stage_layers = {3, 4, 6, 3};
  FakeEngine engine(description);
  auto service = ClipService::Create(&engine, {});
  ASSERT_TRUE(service.ok());
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(*std::move(service));
  ClipServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  auto server = ClipServer::Create(options, std::move(services));
  ASSERT_TRUE(server.ok());
  auto stub = v1::ClipService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials()));
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(Context().get(), {}, &info).ok());
  EXPECT_EQ(info.vision().architecture(), "modified_resnet");
  EXPECT_THAT(info.vision().stage_layers(), ElementsAre(3u, 4u, 6u, 3u));
}

// ---------------------------------------------------------------------------
// EmbedImage / EmbedText

TEST_F(ClipServiceTest, EmbedImageReturnsNormalizedEmbeddingsInRequestOrder) {
  v1::EmbedImageRequest request;
  *request.add_images() = Encoded("png bytes of a cat");
  *request.add_images() = Raw(2, 3, 'x');
  *request.add_images() = Encoded("jpeg bytes of a dog");
  v1::EmbedImageResponse response;
  const absl::Time client_deadline = absl::Now() + absl::Seconds(10);
  ASSERT_TRUE(EmbedImage(request, &response).ok());

  EXPECT_EQ(response.dim(), 8u);
  EXPECT_EQ(response.model(), "fake-ViT-B-32");
  ASSERT_EQ(response.embeddings_size(), 3);
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    ExpectNear(Values(response.embeddings(i)), FakeImage(request.images(i)));
    EXPECT_NEAR(Dot(Values(response.embeddings(i)), Values(response.embeddings(i))), 1.0,
                1e-5);
  }
  const std::vector<FakeEngine::Call> calls = engine_->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].kind, Kind::kImages);
  EXPECT_EQ(calls[0].items, 3);
  EXPECT_EQ(calls[0].field, "images");
  EXPECT_TRUE(calls[0].options.normalize);
  ASSERT_NE(calls[0].options.cancellation, nullptr);
  EXPECT_FALSE(calls[0].options.cancellation->cancelled());
  // The client's deadline reaches the engine (give or take transport rounding).
  EXPECT_LT(absl::AbsDuration(calls[0].options.deadline - client_deadline),
            absl::Seconds(1));
}

// gRPC would refuse to send them only after the service counted the call OK, and tell
// the client just "Sent message larger than max".
TEST_F(ClipServiceTest, ResponsesOverTheLargestMessageAreResourceExhausted) {
  const auto images = [](int n) {
    v1::EmbedImageRequest request;
    for (int i = 0; i < n; ++i) *request.add_images() = Encoded("png");
    return request;
  };
  const auto texts = [](int n) {
    v1::EmbedTextRequest request;
    for (int i = 0; i < n; ++i) request.add_texts("a cat");
    return request;
  };
  const auto tokenize = [](int n) {
    v1::TokenizeRequest request;
    for (int i = 0; i < n; ++i) request.add_texts("a cat");
    return request;
  };
  const auto similarity = [](int n) {
    v1::SimilarityRequest request;
    for (int i = 0; i < n; ++i) {
      *request.mutable_images()->mutable_images()->add_images() = Encoded("png");
      request.mutable_texts()->mutable_texts()->add_texts("a cat");
    }
    return request;
  };
  // The sizes without a limit (the default): 1 and 64 items.
  constexpr int kMany = 64;
  v1::EmbedImageResponse image_responses[2];
  v1::EmbedTextResponse text_responses[2];
  v1::TokenizeResponse token_responses[2];
  v1::SimilarityResponse similarity_responses[2];
  for (int i = 0; i < 2; ++i) {
    const int n = i == 0 ? 1 : kMany;
    ASSERT_TRUE(EmbedImage(images(n), &image_responses[i]).ok());
    ASSERT_TRUE(EmbedText(texts(n), &text_responses[i]).ok());
    ASSERT_TRUE(stub_->Tokenize(Context().get(), tokenize(n), &token_responses[i]).ok());
    ASSERT_TRUE(Similarity(similarity(n), &similarity_responses[i]).ok());
  }
  const std::vector<const google::protobuf::Message*> ones = {
      &image_responses[0], &text_responses[0], &token_responses[0],
      &similarity_responses[0]};
  const std::vector<const google::protobuf::Message*> manys = {
      &image_responses[1], &text_responses[1], &token_responses[1],
      &similarity_responses[1]};
  size_t limit = 0;
  for (const auto* one : ones) limit = std::max(limit, one->ByteSizeLong());
  // No server may send less than its largest one-item response.
  limit = std::max(
      limit,
      static_cast<size_t>(LargestOneItemResponseBytes(FakeEngine::DefaultDescription())));
  for (const auto* many : manys) ASSERT_GT(many->ByteSizeLong(), limit);

  ClipServiceOptions options;
  options.max_response_bytes = static_cast<int64_t>(limit);
  Restart(options);
  const auto expect_too_large = [&](const grpc::Status& status,
                                    const google::protobuf::Message& unlimited) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(status.error_message(),
              absl::StrCat("the response is ", unlimited.ByteSizeLong(),
                           " bytes, over the largest message this server sends (", limit,
                           " bytes): ask for fewer items per call"));
  };
  // The embeddings' and matrices' sizes are known from the request: refused before
  // any model work, not after it.
  const auto expect_refused_first = [&](const grpc::Status& status,
                                        absl::string_view what) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(),
                ::testing::StartsWith("the response would be at least "));
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat(" bytes (", what,
                                       "), over the largest message this server sends (",
                                       limit, " bytes): ask for fewer items per call")));
  };
  const size_t dim = static_cast<size_t>(FakeEngine::DefaultDescription().embed_dim);
  {
    SCOPED_TRACE("EmbedImage");
    v1::EmbedImageResponse response;
    EXPECT_TRUE(EmbedImage(images(1), &response).ok());
    const int before = engine_->CountCalls(Kind::kImages);
    expect_refused_first(EmbedImage(images(kMany), &response),
                         absl::StrCat(kMany, " embeddings of ", dim, " floats"));
    EXPECT_EQ(engine_->CountCalls(Kind::kImages), before);
  }
  {
    SCOPED_TRACE("EmbedText");
    v1::EmbedTextResponse response;
    EXPECT_TRUE(EmbedText(texts(1), &response).ok());
    const int before = engine_->CountCalls(Kind::kTexts);
    expect_refused_first(EmbedText(texts(kMany), &response),
                         absl::StrCat(kMany, " embeddings of ", dim, " floats"));
    EXPECT_EQ(engine_->CountCalls(Kind::kTexts), before);
  }
  {
    SCOPED_TRACE("Tokenize");
    v1::TokenizeResponse response;
    EXPECT_TRUE(stub_->Tokenize(Context().get(), tokenize(1), &response).ok());
    expect_too_large(stub_->Tokenize(Context().get(), tokenize(kMany), &response),
                     token_responses[1]);
  }
  {
    SCOPED_TRACE("Similarity");
    v1::SimilarityResponse response;
    EXPECT_TRUE(Similarity(similarity(1), &response).ok());
    const int before = engine_->CountCalls(Kind::kImages);
    expect_refused_first(
        Similarity(similarity(kMany), &response),
        absl::StrCat("three ", kMany, " x ", kMany, " matrices of floats"));
    EXPECT_EQ(engine_->CountCalls(Kind::kImages), before);
  }
  // The early check never refuses what fits: at exactly the responses' sizes all are
  // answered, and a byte less is refused after the work, with the exact size.
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    ClipServiceOptions exact;
    exact.max_response_bytes = static_cast<int64_t>(manys[i]->ByteSizeLong());
    Restart(exact);
    const auto call = [&](auto* response) {
      if constexpr (std::is_same_v<decltype(*response), v1::EmbedImageResponse&>) {
        return EmbedImage(images(kMany), response);
      } else if constexpr (std::is_same_v<decltype(*response), v1::EmbedTextResponse&>) {
        return EmbedText(texts(kMany), response);
      } else if constexpr (std::is_same_v<decltype(*response), v1::TokenizeResponse&>) {
        return stub_->Tokenize(Context().get(), tokenize(kMany), response);
      } else {
        return Similarity(similarity(kMany), response);
      }
    };
    const auto check = [&](auto* response) {
      EXPECT_TRUE(call(response).ok());
      EXPECT_EQ(response->ByteSizeLong(), manys[i]->ByteSizeLong());
      exact.max_response_bytes -= 1;
      Restart(exact);
      limit = static_cast<size_t>(exact.max_response_bytes);
      expect_too_large(call(response), *manys[i]);
    };
    switch (i) {
      case 0:
        check(std::make_unique<v1::EmbedImageResponse>().get());
        break;
      case 1:
        check(std::make_unique<v1::EmbedTextResponse>().get());
        break;
      case 2:
        check(std::make_unique<v1::TokenizeResponse>().get());
        break;
      default:
        check(std::make_unique<v1::SimilarityResponse>().get());
        break;
    }
  }
}

TEST_F(ClipServiceTest, EmbedImageWithoutNormalizeKeepsRawEmbeddings) {
  v1::EmbedImageRequest request;
  *request.add_images() = Encoded("png bytes");
  request.set_normalize(false);
  v1::EmbedImageResponse response;
  ASSERT_TRUE(EmbedImage(request, &response).ok());
  ASSERT_EQ(response.embeddings_size(), 1);
  ExpectNear(Values(response.embeddings(0)), FakeImage(request.images(0), false));
  EXPECT_FALSE(engine_->calls()[0].options.normalize);
}

TEST_F(ClipServiceTest, CallWithoutDeadlineGivesTheEngineNone) {
  v1::EmbedTextRequest request;
  request.add_texts("no deadline");
  v1::EmbedTextResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->EmbedText(&context, request, &response).ok());
  EXPECT_EQ(engine_->calls()[0].options.deadline, absl::InfiniteFuture());
}

TEST_F(ClipServiceTest, EmbedTextReportsTruncationAndTokenCounts) {
  v1::EmbedTextRequest request;
  request.add_texts("a cat");
  request.add_texts("");
  request.add_texts(std::string(100, 'z'));
  v1::EmbedTextResponse response;
  ASSERT_TRUE(EmbedText(request, &response).ok());
  EXPECT_EQ(response.dim(), 8u);
  EXPECT_EQ(response.model(), "fake-ViT-B-32");
  ASSERT_EQ(response.embeddings_size(), 3);
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    ExpectNear(Values(response.embeddings(i)), FakeText(request.texts(i)));
  }
  EXPECT_THAT(response.truncated(), ElementsAre(false, false, true));
  EXPECT_THAT(response.num_tokens(), ElementsAre(7u, 2u, 77u));
  const FakeEngine::Call call = engine_->calls()[0];
  EXPECT_EQ(call.field, "texts");
  EXPECT_TRUE(call.options.truncate);
  EXPECT_THAT(call.texts, ElementsAreArray(request.texts()));
}

TEST_F(ClipServiceTest, EmbedTextOverLongWithoutTruncateIsTheEnginesInvalidArgument) {
  v1::EmbedTextRequest request;
  request.add_texts("short");
  request.add_texts(std::string(100, 'z'));
  request.set_truncate(false);
  request.set_normalize(false);
  v1::EmbedTextResponse response;
  const grpc::Status status = EmbedText(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadField(status), "texts[1]");
  EXPECT_FALSE(engine_->calls()[0].options.truncate);
  EXPECT_FALSE(engine_->calls()[0].options.normalize);
}

// Each case: a request and the field its BadRequest must name.
template <typename Request>
struct InvalidCase {
  std::string name;
  Request request;
  std::string field;
};

TEST_F(ClipServiceTest, InvalidImagesAreRejectedBeforeTheEngine) {
  ClipServiceOptions options;
  options.limits.max_items_per_request = 4;
  options.limits.max_image_pixels = 100;
  options.limits.max_image_bytes = 64;
  Restart(options);

  std::vector<InvalidCase<v1::EmbedImageRequest>> cases;
  auto add = [&cases](std::string name, std::vector<v1::Image> images,
                      std::string field) {
    v1::EmbedImageRequest request;
    for (v1::Image& image : images) *request.add_images() = std::move(image);
    cases.push_back({std::move(name), std::move(request), std::move(field)});
  };
  add("empty request", {}, "images");
  add("too many", std::vector<v1::Image>(5, Encoded("x")), "images");
  add("no source", {Encoded("ok"), v1::Image()}, "images[1]");
  add("raw byte count", {Encoded("ok"), Encoded("ok"), Raw(2, 2, 'a', 11)}, "images[2]");
  add("raw zero width", {Raw(0, 3, 'a')}, "images[0]");
  add("raw zero height", {Encoded("ok"), Raw(3, 0, 'a')}, "images[1]");
  add("raw over pixel limit", {Raw(11, 10, 'a')}, "images[0]");
  add("encoded empty", {Encoded("")}, "images[0]");
  add("encoded over byte limit",
      {Encoded("ok"), Encoded("ok"), Encoded("ok"), Encoded(std::string(65, 'b'))},
      "images[3]");

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    v1::EmbedImageResponse response;
    const grpc::Status status = EmbedImage(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), c.field);
    EXPECT_THAT(status.error_message(), ::testing::StartsWith(c.field + ": "));
  }
  EXPECT_TRUE(engine_->calls().empty());

  // At the limits everything passes: 4 images, 100 pixels, 64 bytes.
  v1::EmbedImageRequest at_limits;
  *at_limits.add_images() = Raw(10, 10, 'a');
  *at_limits.add_images() = Encoded(std::string(64, 'b'));
  *at_limits.add_images() = Raw(1, 1, 'c');
  *at_limits.add_images() = Encoded("d");
  v1::EmbedImageResponse response;
  EXPECT_TRUE(EmbedImage(at_limits, &response).ok());
}

TEST_F(ClipServiceTest, InvalidTextsAreRejectedBeforeTheEngine) {
  ClipServiceOptions options;
  options.limits.max_items_per_request = 4;
  options.limits.max_text_bytes = 32;
  Restart(options);

  std::vector<InvalidCase<v1::EmbedTextRequest>> cases;
  auto add = [&cases](std::string name, std::vector<std::string> texts,
                      std::string field) {
    v1::EmbedTextRequest request;
    for (std::string& text : texts) request.add_texts(std::move(text));
    cases.push_back({std::move(name), std::move(request), std::move(field)});
  };
  add("empty request", {}, "texts");
  add("too many", std::vector<std::string>(5, "a"), "texts");
  add("over byte limit", {"a", "b", std::string(33, 'c')}, "texts[2]");
  add("lone continuation byte", {"ok", "\x80"}, "texts[1]");
  add("overlong slash", {"\xC0\xAF"}, "texts[0]");
  add("overlong 3-byte", {"ok", "\xE0\x80\xAF"}, "texts[1]");
  add("surrogate", {"ok", "ok", "\xED\xA0\x80"}, "texts[2]");
  add("above U+10FFFF", {"\xF4\x90\x80\x80"}, "texts[0]");
  add("truncated sequence", {"caf\xC3"}, "texts[0]");
  add("invalid byte FF", {"ok", "a\xFF"}, "texts[1]");

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    v1::EmbedTextResponse response;
    const grpc::Status status = EmbedText(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), c.field);
  }
  EXPECT_TRUE(engine_->calls().empty());

  v1::EmbedTextRequest valid;
  valid.add_texts(std::string(32, 'c'));        // exactly at the limit
  valid.add_texts("caf\xC3\xA9 \xE2\x82\xAC");  // "café €"
  valid.add_texts("\xF0\x9F\x90\x88");          // U+1F408 cat
  valid.add_texts(std::string("nul\0inside", 10));
  v1::EmbedTextResponse response;
  EXPECT_TRUE(EmbedText(valid, &response).ok());
}

// ---------------------------------------------------------------------------
// Request ids

// The x-request-id of the server's trailing metadata, or "" when there is none.
std::string RequestIdSentBack(const grpc::ClientContext& context) {
  const auto& metadata = context.GetServerTrailingMetadata();
  const auto found = metadata.find("x-request-id");
  return found == metadata.end()
             ? ""
             : std::string(found->second.data(), found->second.size());
}

TEST_F(ClipServiceTest, ACallsRequestIdIsTheClientsOrANewOneAndComesBack) {
  // (sent id or none, whether it is kept)
  const std::vector<std::pair<std::optional<std::string>, bool>> cases = {
      {"3f2a9c1e-7b4d", true},
      {std::nullopt, false},
      {"two words", false},
      {std::string(129, 'x'), false}};
  for (const auto& [sent, kept] : cases) {
    SCOPED_TRACE(sent.value_or("(none)"));
    for (const bool fails : {false, true}) {
      v1::TokenizeRequest request;
      if (!fails) request.add_texts("a cat");  // no texts: INVALID_ARGUMENT
      v1::TokenizeResponse response;
      auto context = Context();
      if (sent.has_value()) context->AddMetadata("x-request-id", *sent);
      const grpc::Status status = stub_->Tokenize(context.get(), request, &response);
      EXPECT_EQ(status.ok(), !fails) << status.error_message();
      const std::string id = RequestIdSentBack(*context);
      if (kept) {
        EXPECT_EQ(id, *sent);
      } else {
        EXPECT_THAT(id, ::testing::MatchesRegex("[0-9a-f]{16}"));
      }
    }
  }
}

TEST_F(ClipServiceTest, EmbedStreamSendsItsRequestIdBack) {
  auto context = Context();
  context->AddMetadata("x-request-id", "stream-7");
  auto stream = stub_->EmbedStream(context.get());
  v1::EmbedStreamRequest item;
  item.set_id("a");
  item.set_text("a cat");
  ASSERT_TRUE(stream->Write(item));
  v1::EmbedStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(RequestIdSentBack(*context), "stream-7");
}

// ---------------------------------------------------------------------------
// Engine errors, deadlines, cancellation

TEST_F(ClipServiceTest, EngineResourceExhaustedReachesTheClientWithRetryInfo) {
  engine_->set_error(
      ResourceExhaustedWithRetry("image queue full", absl::Milliseconds(250)));
  auto check = [](const grpc::Status& status) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(status.error_message(), "image queue full");
    EXPECT_EQ(RetryDelayOf(status), absl::Milliseconds(250));
  };
  {
    SCOPED_TRACE("EmbedImage");
    v1::EmbedImageRequest request;
    *request.add_images() = Encoded("png");
    v1::EmbedImageResponse response;
    check(EmbedImage(request, &response));
  }
  {
    SCOPED_TRACE("Similarity");
    v1::SimilarityRequest request;
    *request.mutable_images()->mutable_images()->add_images() = Encoded("png");
    request.mutable_texts()->mutable_texts()->add_texts("a cat");
    v1::SimilarityResponse response;
    check(Similarity(request, &response));
  }
  {
    SCOPED_TRACE("Tokenize");
    v1::TokenizeRequest request;
    request.add_texts("a cat");
    v1::TokenizeResponse response;
    check(stub_->Tokenize(Context().get(), request, &response));
  }
}

void ExpectOverMemoryLimit(const grpc::Status& status) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_request_memory_mb"));
  EXPECT_EQ(RetryDelayOf(status), RequestMemoryBudget::kRetryAfter);
}

// The bytes `count` embeddings of the fake engine's width take in a response, which a
// call reserves beside its request before the engine work.
int64_t EmbeddingsResponseBytes(int count) {
  v1::EmbedTextResponse response;
  for (int i = 0; i < count; ++i) {
    response.add_embeddings()->mutable_values()->Resize(
        FakeEngine::DefaultDescription().embed_dim, 0.0f);
  }
  return static_cast<int64_t>(response.ByteSizeLong());
}

TEST_F(ClipServiceTest, CallsPastTheRequestMemoryLimitAreRefusedBeforeTheEngine) {
  ClipServiceOptions options;
  options.max_request_memory_bytes = 2000;
  Restart(options);
  engine_->set_hold(true);

  // One call of some 1500 bytes is held by the engine...
  v1::EmbedImageRequest big_request;
  *big_request.add_images() = Encoded(std::string(1500, 'j'));
  auto big = StartCall(stub_->async(), &Rpc::EmbedImage, big_request);
  ASSERT_TRUE(engine_->AwaitHeld(1));
  const int64_t held =
      static_cast<int64_t>(big_request.ByteSizeLong()) + EmbeddingsResponseBytes(1);
  EXPECT_EQ(service_->request_memory_used(), held);

  // ...so no method admits another 600 bytes, and none of them reaches the engine.
  const std::string text(600, 't');
  {
    SCOPED_TRACE("EmbedImage");
    v1::EmbedImageRequest request;
    *request.add_images() = Encoded(std::string(600, 'j'));
    v1::EmbedImageResponse response;
    ExpectOverMemoryLimit(EmbedImage(request, &response));
  }
  {
    SCOPED_TRACE("EmbedText");
    v1::EmbedTextRequest request;
    request.add_texts(text);
    v1::EmbedTextResponse response;
    ExpectOverMemoryLimit(EmbedText(request, &response));
  }
  {
    SCOPED_TRACE("Similarity");
    v1::SimilarityRequest request;
    *request.mutable_images()->mutable_images()->add_images() = Encoded("png");
    request.mutable_texts()->mutable_texts()->add_texts(text);
    v1::SimilarityResponse response;
    ExpectOverMemoryLimit(Similarity(request, &response));
  }
  {
    SCOPED_TRACE("Classify");
    v1::ClassifyRequest request;
    *request.add_images() = Encoded("png");
    request.add_labels(text);
    request.add_labels("dog");
    v1::ClassifyResponse response;
    ExpectOverMemoryLimit(Classify(request, &response));
  }
  {
    SCOPED_TRACE("Tokenize");
    v1::TokenizeRequest request;
    request.add_texts(text);
    v1::TokenizeResponse response;
    ExpectOverMemoryLimit(stub_->Tokenize(Context().get(), request, &response));
  }
  EXPECT_EQ(engine_->calls().size(), 1u);
  EXPECT_EQ(service_->request_memory_used(), held);

  // Once the held call is done its bytes are free again.
  engine_->set_hold(false);
  ASSERT_TRUE(big->Await());
  EXPECT_TRUE(big->status.ok()) << big->status.error_message();
  ASSERT_TRUE(AwaitRequestMemory(*service_, 0));
  v1::EmbedTextRequest request;
  request.add_texts(text);
  v1::EmbedTextResponse response;
  const grpc::Status status = EmbedText(request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
}

TEST_F(ClipServiceTest, EngineErrorsKeepTheirCode) {
  for (const absl::Status& error :
       {absl::UnavailableError("shutting down"), absl::InternalError("batch failed"),
        absl::DeadlineExceededError("deadline passed while queued")}) {
    SCOPED_TRACE(error.ToString());
    engine_->set_error(error);
    v1::EmbedTextRequest request;
    request.add_texts("a cat");
    v1::EmbedTextResponse response;
    const grpc::Status status = EmbedText(request, &response);
    EXPECT_EQ(static_cast<int>(status.error_code()), static_cast<int>(error.code()));
    EXPECT_EQ(status.error_message(), error.message());
  }
}

TEST_F(ClipServiceTest, ClientDeadlineReachesTheEngineAndCancelsQueuedWork) {
  RestartRecordingMetrics();
  engine_->set_hold(true);
  v1::EmbedTextRequest request;
  request.add_texts("slow");
  v1::EmbedTextResponse response;
  // Long enough that the client's own cancel at its deadline, which may reach the
  // server before the server's deadline timer fires, falls within the 100 ms slack.
  // Real time, and long enough to reach the engine on a loaded machine.
  const absl::Time client_deadline = absl::Now() + absl::Seconds(3);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(client_deadline));
  EXPECT_EQ(stub_->EmbedText(&context, request, &response).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);

  ASSERT_TRUE(engine_->AwaitHeld(1));
  const FakeEngine::Call call = engine_->calls()[0];
  EXPECT_LT(absl::AbsDuration(call.options.deadline - client_deadline), absl::Seconds(1));
  // The server's own deadline timer cancels the call, which drops the queued work.
  EXPECT_TRUE(WaitUntilCancelled(call.options));
  // The engine answers late (CANCELLED); the call ends cleanly and the server serves on.
  engine_->set_hold(false);
  v1::EmbedTextResponse next;
  EXPECT_TRUE(EmbedText(request, &next).ok());
  // The call is counted as its client saw it end: the cancel was its deadline's.
  EXPECT_EQ(CountedCalls("EmbedText", "DEADLINE_EXCEEDED"), 1.0);
  EXPECT_EQ(CountedCalls("EmbedText", "CANCELLED"), std::nullopt);
}

// Its items, which the engine answers DEADLINE_EXCEEDED (their deadline is the
// stream's), are never answered in the stream: they are not item failures too.
TEST_F(ClipServiceTest, AStreamPastItsDeadlineIsCountedAsDeadlineExceeded) {
  RestartRecordingMetrics();
  engine_->set_hold(true);
  engine_->set_answer_dead_requests(true);
  engine_->set_error(absl::DeadlineExceededError("deadline passed while queued"));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  auto stream = stub_->EmbedStream(&context);
  ASSERT_TRUE(stream->Write(TextItem("a", "slow")));
  ASSERT_TRUE(stream->Write(ImageItem("b", Encoded("slower"))));
  ASSERT_TRUE(engine_->AwaitHeld(2));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  engine_->set_hold(false);
  EXPECT_TRUE(AwaitCountedCalls("EmbedStream", "DEADLINE_EXCEEDED", 1));
  EXPECT_EQ(CountedItemFailures("DEADLINE_EXCEEDED"), std::nullopt);
}

// The engine checks deadlines on its own clock, and can answer an item
// DEADLINE_EXCEEDED before gRPC's timer ends the stream; one that then finishes OK
// (here: no deadline at all, the engine's answer forced) counts its item as failed.
TEST_F(ClipServiceTest, AnItemPastTheDeadlineOfAStreamThatFinishesOkCounts) {
  RestartRecordingMetrics();
  engine_->set_answer_dead_requests(true);
  engine_->set_error(absl::DeadlineExceededError("deadline passed while queued"));
  auto context = Context();
  auto stream = stub_->EmbedStream(context.get());
  ASSERT_TRUE(stream->Write(TextItem("a", "late")));
  ASSERT_TRUE(stream->WritesDone());
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.error().code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(AwaitCountedCalls("EmbedStream", "OK", 1));
  EXPECT_EQ(CountedItemFailures("DEADLINE_EXCEEDED"), 1.0);
}

TEST_F(ClipServiceTest, ClientCancelSetsTheCancellationFlag) {
  engine_->set_hold(true);
  v1::EmbedImageRequest request;
  *request.add_images() = Encoded("png");
  auto cancelled = StartCall(stub_->async(), &Rpc::EmbedImage, request);
  ASSERT_TRUE(engine_->AwaitHeld(1));
  const FakeEngine::Call call = engine_->calls()[0];
  EXPECT_FALSE(call.options.cancellation->cancelled());
  cancelled->context.TryCancel();
  ASSERT_TRUE(cancelled->Await());
  EXPECT_EQ(cancelled->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitUntilCancelled(call.options));
  // The engine's callback comes after OnCancel; the reactor must still be alive.
  engine_->ReleaseAll();
  engine_->set_hold(false);
  v1::EmbedImageResponse next;
  EXPECT_TRUE(EmbedImage(request, &next).ok());
}

// The engine may answer OK a call the client has cancelled (its batch was running):
// the client sees CANCELLED, and so do the metrics.
TEST_F(ClipServiceTest, ACallCancelledWhileItsBatchRanIsCountedCancelled) {
  RestartRecordingMetrics();
  const absl::Time now = absl::Now();
  EXPECT_EQ(CancelAHeldEmbedText(now + absl::Seconds(60), now).error_code(),
            grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitCountedCalls("EmbedText", "CANCELLED", 1));
  EXPECT_EQ(CountedCalls("EmbedText", "OK").value_or(0), 0);
  // A deadline far off does not make an early cancel the deadline's.
  EXPECT_EQ(CountedCalls("EmbedText", "DEADLINE_EXCEEDED"), std::nullopt);
}

// gRPC runs a raw-bytes handler even for a call that brought no request message. One
// cancelled during its upload is counted CANCELLED, not as a malformed request; one its
// client closed without a message is refused, saying so.
TEST_F(ClipServiceTest, ACallWithoutARequestMessageIsCountedAsItEnded) {
  RestartRecordingMetrics();
  const grpc::Status closed = testing::CallWithoutMessage(
      server_->port(), "/clipserve.v1.ClipService/EmbedText", /*cancel=*/false);
  EXPECT_EQ(closed.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(closed.error_message(), HasSubstr("carried no request message"));
  EXPECT_TRUE(AwaitCountedCalls("EmbedText", "INVALID_ARGUMENT", 1));
  const grpc::Status cancelled = testing::CallWithoutMessage(
      server_->port(), "/clipserve.v1.ClipService/EmbedText", /*cancel=*/true);
  EXPECT_EQ(cancelled.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitCountedCalls("EmbedText", "CANCELLED", 1));
  EXPECT_EQ(CountedCalls("EmbedText", "INVALID_ARGUMENT"), 1);
}

// The client's deadline timer starts before the server's, which counts from the
// request's arrival, so the client's cancel at its deadline can reach the server
// first. A cancel that close to the deadline is counted as the client saw it end.
TEST_F(ClipServiceTest, ACancelJustBeforeTheDeadlineIsCountedAsTheDeadlines) {
  RestartRecordingMetrics();
  // Real time: the server's deadline timer is gRPC's. Cancelled late, the call meets
  // its deadline first and is counted the same. The call has 3 s to reach the engine.
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  CancelAHeldEmbedText(deadline, deadline - absl::Milliseconds(30));
  EXPECT_TRUE(AwaitCountedCalls("EmbedText", "DEADLINE_EXCEEDED", 1));
  EXPECT_EQ(CountedCalls("EmbedText", "CANCELLED"), std::nullopt);
}

// ---------------------------------------------------------------------------
// Similarity

v1::SimilarityRequest ImagesAndTexts(const std::vector<v1::Image>& images,
                                     const std::vector<std::string>& texts) {
  v1::SimilarityRequest request;
  for (const v1::Image& image : images) {
    *request.mutable_images()->mutable_images()->add_images() = image;
  }
  for (const std::string& text : texts) {
    request.mutable_texts()->mutable_texts()->add_texts(text);
  }
  return request;
}

// logits[i][j] = scale * cos(image i, text j) from the fake's vectors, in double.
std::vector<std::vector<double>> ExpectedLogits(const std::vector<v1::Image>& images,
                                                const std::vector<std::string>& texts,
                                                double scale) {
  std::vector<std::vector<double>> logits;
  for (const v1::Image& image : images) {
    logits.emplace_back();
    for (const std::string& text : texts) {
      logits.back().push_back(scale * Dot(FakeImage(image), FakeText(text)));
    }
  }
  return logits;
}

void ExpectSimilarity(const v1::SimilarityResponse& response,
                      const std::vector<std::vector<double>>& logits, float scale) {
  const int n = static_cast<int>(logits.size());
  const int m = static_cast<int>(logits[0].size());
  EXPECT_FLOAT_EQ(response.logit_scale(), scale);
  ASSERT_EQ(response.logits_per_image().rows(), static_cast<uint32_t>(n));
  ASSERT_EQ(response.logits_per_image().cols(), static_cast<uint32_t>(m));
  ASSERT_EQ(response.logits_per_image().values_size(), n * m);
  ASSERT_EQ(response.logits_per_text().rows(), static_cast<uint32_t>(m));
  ASSERT_EQ(response.logits_per_text().cols(), static_cast<uint32_t>(n));
  ASSERT_EQ(response.logits_per_text().values_size(), n * m);
  ASSERT_EQ(response.probs().rows(), static_cast<uint32_t>(n));
  ASSERT_EQ(response.probs().cols(), static_cast<uint32_t>(m));
  ASSERT_EQ(response.probs().values_size(), n * m);
  for (int i = 0; i < n; ++i) {
    double max = logits[i][0];
    for (double v : logits[i]) max = std::max(max, v);
    double sum_exp = 0;
    for (double v : logits[i]) sum_exp += std::exp(v - max);
    double prob_sum = 0;
    for (int j = 0; j < m; ++j) {
      SCOPED_TRACE(absl::StrCat("(", i, ", ", j, ")"));
      EXPECT_NEAR(response.logits_per_image().values(i * m + j), logits[i][j], 1e-4);
      EXPECT_EQ(response.logits_per_text().values(j * n + i),
                response.logits_per_image().values(i * m + j));
      EXPECT_NEAR(response.probs().values(i * m + j),
                  std::exp(logits[i][j] - max) / sum_exp, 1e-5);
      prob_sum += response.probs().values(i * m + j);
    }
    EXPECT_NEAR(prob_sum, 1.0, 1e-5);
  }
}

TEST_F(ClipServiceTest, SimilarityIsTheScaledCosineOfBothTowersRunConcurrently) {
  const std::vector<v1::Image> images = {Encoded("a cat photo"), Raw(4, 4, 'q')};
  const std::vector<std::string> texts = {"a cat", "a dog", "a diagram"};
  const v1::SimilarityRequest request = ImagesAndTexts(images, texts);

  // Hold the engine: both towers must be asked before either answers.
  engine_->set_hold(true);
  auto similarity = StartCall(stub_->async(), &Rpc::Similarity, request);
  ASSERT_TRUE(engine_->AwaitHeld(2));
  engine_->set_hold(false);
  ASSERT_TRUE(similarity->Await());
  ASSERT_TRUE(similarity->status.ok()) << similarity->status.error_message();

  const v1::SimilarityResponse& response = similarity->response;
  ExpectSimilarity(response, ExpectedLogits(images, texts, 20.0), 20.0f);
  EXPECT_FALSE(response.has_loss());
  const std::vector<FakeEngine::Call> calls = engine_->calls();
  ASSERT_EQ(calls.size(), 2u);
  for (const FakeEngine::Call& call : calls) {
    EXPECT_TRUE(call.options.normalize);
    EXPECT_EQ(call.field, call.kind == Kind::kImages ? "images" : "texts");
  }
}

TEST_F(ClipServiceTest, SimilarityTemperatureReplacesTheModelScale) {
  const std::vector<v1::Image> images = {Encoded("one"), Encoded("two")};
  const std::vector<std::string> texts = {"first", "second"};
  v1::SimilarityRequest request = ImagesAndTexts(images, texts);
  request.set_temperature(0.5f);
  v1::SimilarityResponse response;
  ASSERT_TRUE(Similarity(request, &response).ok());
  ExpectSimilarity(response, ExpectedLogits(images, texts, 2.0), 2.0f);
}

TEST_F(ClipServiceTest, SimilarityPairedAddsTheContrastiveLoss) {
  const std::vector<v1::Image> images = {Encoded("im0"), Encoded("im1"), Encoded("im2")};
  const std::vector<std::string> texts = {"t0", "t1", "t2"};
  v1::SimilarityRequest request = ImagesAndTexts(images, texts);
  request.set_paired(true);
  request.set_temperature(0.25f);
  v1::SimilarityResponse response;
  ASSERT_TRUE(Similarity(request, &response).ok());
  const auto logits = ExpectedLogits(images, texts, 4.0);
  ExpectSimilarity(response, logits, 4.0f);
  ASSERT_TRUE(response.has_loss());

  // Same as the library function on the returned logits...
  const std::vector<float> returned(response.logits_per_image().values().begin(),
                                    response.logits_per_image().values().end());
  absl::StatusOr<ContrastiveLoss> loss = ComputeContrastiveLoss(returned, 3);
  ASSERT_TRUE(loss.ok());
  EXPECT_FLOAT_EQ(response.loss().image_to_text(),
                  static_cast<float>(loss->image_to_text));
  EXPECT_FLOAT_EQ(response.loss().text_to_image(),
                  static_cast<float>(loss->text_to_image));
  EXPECT_FLOAT_EQ(response.loss().mean(), static_cast<float>(loss->mean));
  // ...and as cross-entropy computed here from the fake's vectors.
  double image_to_text = 0, text_to_image = 0;
  for (int i = 0; i < 3; ++i) {
    image_to_text += CrossEntropy(logits[i], i) / 3;
    text_to_image += CrossEntropy({logits[0][i], logits[1][i], logits[2][i]}, i) / 3;
  }
  EXPECT_NEAR(response.loss().image_to_text(), image_to_text, 1e-4);
  EXPECT_NEAR(response.loss().text_to_image(), text_to_image, 1e-4);
  EXPECT_NEAR(response.loss().mean(), (image_to_text + text_to_image) / 2, 1e-4);
}

TEST_F(ClipServiceTest, SimilarityAcceptsPrecomputedEmbeddingsOfAnyLength) {
  const std::vector<v1::Image> images = {Encoded("img a"), Encoded("img b")};
  const std::vector<std::string> texts = {"x", "y", "z"};
  // Images as raw (unnormalized, scaled) embeddings; texts embedded by the engine.
  v1::SimilarityRequest request = ImagesAndTexts({}, texts);
  for (const v1::Image& image : images) {
    v1::Embedding* e = request.mutable_images()->mutable_embeddings()->add_embeddings();
    for (const float v : FakeImage(image, /*normalize=*/false)) e->add_values(3.0f * v);
  }
  v1::SimilarityResponse response;
  ASSERT_TRUE(Similarity(request, &response).ok());
  ExpectSimilarity(response, ExpectedLogits(images, texts, 20.0), 20.0f);
  EXPECT_EQ(engine_->CountCalls(Kind::kImages), 0);
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 1);

  // Both sides precomputed: no engine at all.
  for (const std::string& text : texts) {
    v1::Embedding* e = request.mutable_texts()->mutable_embeddings()->add_embeddings();
    for (const float v : FakeText(text)) e->add_values(v);
  }
  request.set_paired(false);
  v1::SimilarityResponse precomputed;
  ASSERT_TRUE(Similarity(request, &precomputed).ok());
  ExpectSimilarity(precomputed, ExpectedLogits(images, texts, 20.0), 20.0f);
  EXPECT_EQ(engine_->calls().size(), 1u);
}

TEST_F(ClipServiceTest, InvalidSimilarityRequestsAreRejectedBeforeTheEngine) {
  const v1::SimilarityRequest base = ImagesAndTexts({Encoded("a"), Encoded("b")}, {"t"});
  std::vector<InvalidCase<v1::SimilarityRequest>> cases;
  auto add = [&cases](std::string name, v1::SimilarityRequest request,
                      std::string field) {
    cases.push_back({std::move(name), std::move(request), std::move(field)});
  };
  auto embeddings = [](std::vector<std::vector<float>> rows) {
    v1::EmbeddingList list;
    for (const auto& row : rows) {
      v1::Embedding* e = list.add_embeddings();
      for (float v : row) e->add_values(v);
    }
    return list;
  };
  const std::vector<float> good(8, 0.5f);

  v1::SimilarityRequest r = base;
  r.clear_images();
  add("no images", r, "images");
  r = base;
  r.clear_texts();
  add("no texts", r, "texts");
  r = base;
  r.mutable_images()->mutable_images();  // an empty list
  r.mutable_images()->mutable_images()->clear_images();
  add("empty image list", r, "images");
  r = base;
  *r.mutable_images()->mutable_images()->mutable_images(1) = v1::Image();
  add("image without source", r, "images[1]");
  r = base;
  *r.mutable_images()->mutable_embeddings() =
      embeddings({good, std::vector<float>(7, 1)});
  add("embedding of the wrong width", r, "images[1]");
  r = base;
  *r.mutable_texts()->mutable_embeddings() =
      embeddings({{1, 2, 3, 4, 5, 6, 7, std::nanf("")}});
  add("NaN embedding", r, "texts[0]");
  r = base;
  *r.mutable_texts()->mutable_embeddings() =
      embeddings({good, {1, 2, 3, 4, 5, 6, 7, INFINITY}});
  add("infinite embedding", r, "texts[1]");
  r = base;
  *r.mutable_images()->mutable_embeddings() = embeddings({std::vector<float>(8, 0)});
  add("zero embedding", r, "images[0]");
  r = base;
  r.mutable_texts()->mutable_texts()->add_texts("\xC0\xAF");
  add("invalid UTF-8", r, "texts[1]");
  for (const float t : {0.0f, -1.0f, std::nanf(""), INFINITY, 1e-45f}) {
    r = base;
    r.set_temperature(t);
    add(absl::StrCat("temperature ", t), r, "temperature");
  }
  r = base;
  r.set_paired(true);
  add("paired 2 images with 1 text", r, "paired");

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    v1::SimilarityResponse response;
    const grpc::Status status = Similarity(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), c.field);
  }
  EXPECT_TRUE(engine_->calls().empty());
}

// gRPC holds a response until its client reads it: a client that reads none would
// hold response after response for a few bytes of request each. So each call
// reserves its response beside its request, before the engine work, until gRPC is
// done with it: small requests asking for large responses fill the budget too.
TEST_F(ClipServiceTest, ResponsesCountAgainstTheRequestMemoryLimit) {
  ClipServiceOptions options;
  options.max_request_memory_bytes = 3000;
  Restart(options);
  engine_->set_hold(true);
  // 50 one-byte texts: about 150 bytes of request, 50 embeddings of response.
  v1::EmbedTextRequest many;
  for (int i = 0; i < 50; ++i) many.add_texts("a");
  auto held = StartCall(stub_->async(), &Rpc::EmbedText, many);
  ASSERT_TRUE(engine_->AwaitHeld(1));
  const int64_t response_bytes = EmbeddingsResponseBytes(50);
  ASSERT_GT(response_bytes, 1500);
  // And at least a byte each for the texts' truncated and num_tokens.
  EXPECT_EQ(service_->request_memory_used(),
            static_cast<int64_t>(many.ByteSizeLong()) + response_bytes + 2 * 50);
  // A second such request is refused, though its request alone would fit.
  v1::EmbedTextResponse response;
  ExpectOverMemoryLimit(EmbedText(many, &response));
  {
    SCOPED_TRACE("Tokenize: up to 3 bytes an id, and 2 ids more than its bytes");
    v1::TokenizeRequest request;
    for (int i = 0; i < 100; ++i) request.add_texts("ab");
    v1::TokenizeResponse tokenized;
    ExpectOverMemoryLimit(stub_->Tokenize(Context().get(), request, &tokenized));
  }
  {
    SCOPED_TRACE("Classify: each image's top_k longest labels");
    v1::ClassifyRequest request;
    for (int i = 0; i < 40; ++i) *request.add_images() = Encoded("j");
    request.add_labels(std::string(40, 'l'));
    request.add_labels("dog");
    request.set_top_k(1);
    v1::ClassifyResponse classified;
    ExpectOverMemoryLimit(Classify(request, &classified));
  }
  {
    SCOPED_TRACE("Similarity: three n x m matrices");
    v1::SimilarityRequest request;
    for (int i = 0; i < 20; ++i) {
      *request.mutable_images()->mutable_images()->add_images() = Encoded("j");
      request.mutable_texts()->mutable_texts()->add_texts("a");
    }
    v1::SimilarityResponse similar;
    ExpectOverMemoryLimit(Similarity(request, &similar));
  }
  EXPECT_EQ(engine_->calls().size(), 1u);
  engine_->set_hold(false);
  ASSERT_TRUE(held->Await());
  EXPECT_TRUE(held->status.ok()) << held->status.error_message();
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  // A response larger than the whole budget alone is not refused for that: a call
  // counts at most the budget.
  v1::EmbedTextRequest huge;
  for (int i = 0; i < 100; ++i) huge.add_texts("a");
  ASSERT_GT(EmbeddingsResponseBytes(100), 3000);
  EXPECT_TRUE(EmbedText(huge, &response).ok());
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
}

// A cancelled call's queued items are dropped at once, not when the engine's workers
// reach them: its request memory is free while the engine is still busy.
TEST_F(ClipServiceTest, ACancelledCallFreesItsRequestMemoryWhileTheEngineIsBusy) {
  engine_->set_hold(true);
  engine_->set_drop_dead_items(true);
  v1::EmbedTextRequest request;
  request.add_texts(std::string(1000, 't'));
  auto text = StartCall(stub_->async(), &Rpc::EmbedText, request);
  ASSERT_TRUE(engine_->AwaitHeld(1));
  EXPECT_GE(service_->request_memory_used(), 1000);
  EXPECT_EQ(engine_->drop_dead_calls(), 0);

  text->context.TryCancel();
  ASSERT_TRUE(text->Await());
  EXPECT_EQ(text->status.error_code(), grpc::StatusCode::CANCELLED);
  // Still holding: only the service's OnCancel() can have let the answer out.
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  EXPECT_TRUE(testing::PollUntil([&] { return engine_->outstanding() == 0; }));
  EXPECT_GE(engine_->drop_dead_calls(), 1);

  // The same for a stream's items.
  grpc::ClientContext stream_context;
  auto stream = stub_->EmbedStream(&stream_context);
  ASSERT_TRUE(stream->Write(TextItem("a", std::string(1000, 's'))));
  ASSERT_TRUE(engine_->AwaitHeld(1));
  EXPECT_GE(service_->request_memory_used(), 1000);
  const int drops_before = engine_->drop_dead_calls();
  stream_context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  EXPECT_TRUE(testing::PollUntil([&] { return engine_->outstanding() == 0; }));
  EXPECT_GT(engine_->drop_dead_calls(), drops_before);

  // And a Similarity call's two engine requests, both answered inside OnCancel().
  auto similarity =
      StartCall(stub_->async(), &Rpc::Similarity,
                ImagesAndTexts({Encoded(std::string(1000, 'i'))}, {"a cat"}));
  ASSERT_TRUE(engine_->AwaitHeld(2));
  EXPECT_GE(service_->request_memory_used(), 1000);
  similarity->context.TryCancel();
  ASSERT_TRUE(similarity->Await());
  EXPECT_EQ(similarity->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  EXPECT_TRUE(testing::PollUntil([&] { return engine_->outstanding() == 0; }));
}

// When one tower of a Similarity call fails, the other's queued work is dropped at
// once: the call fails without waiting for the batch that work is queued for.
TEST_F(ClipServiceTest, SimilarityFailsWithoutWaitingForTheOtherTowersQueue) {
  engine_->set_hold(true);
  engine_->set_drop_dead_items(true);
  auto similarity = StartCall(stub_->async(), &Rpc::Similarity,
                              ImagesAndTexts({Encoded("undecodable bytes")}, {"a cat"}));
  ASSERT_TRUE(engine_->AwaitHeld(2));
  ASSERT_TRUE(engine_->ReleaseOne());  // the images: INVALID_ARGUMENT
  // The texts stay held by the fake unless the service had them dropped.
  ASSERT_TRUE(similarity->Await());
  EXPECT_EQ(similarity->status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadField(similarity->status), "images[0]");
  EXPECT_TRUE(testing::PollUntil([&] { return engine_->outstanding() == 0; }));
}

TEST_F(ClipServiceTest, SimilarityEngineFailureOfOneTowerFailsTheCall) {
  // The fake rejects this image, as a decoder would; the text tower succeeds.
  const v1::SimilarityRequest request =
      ImagesAndTexts({Encoded("fine"), Encoded("undecodable bytes")}, {"a", "b"});
  v1::SimilarityResponse response;
  const grpc::Status status = Similarity(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadField(status), "images[1]");
  EXPECT_FALSE(response.has_logits_per_image());
}

// Answers image requests with an error and text requests with rows, each on a thread
// of its own, and the two requests of a call at the same moment: as a real engine's
// preprocessing and text workers can, so the two answers of a Similarity call race.
class RacingEngine : public Engine {
 public:
  RacingEngine() : description_(FakeEngine::DefaultDescription()) {}
  ~RacingEngine() override {
    absl::MutexLock lock(&mu_);
    for (std::thread& t : threads_) t.join();
  }

  void EmbedImages(std::vector<ImageInput> /*images*/, const EmbedOptions& /*options*/,
                   std::string field, EmbedCallback done) override {
    Answer([field, done = std::move(done)]() mutable {
      std::move(done)(absl::InvalidArgumentError(field + "[0]: not an image"));
    });
  }
  void EmbedTexts(std::vector<std::string> texts, const EmbedOptions& /*options*/,
                  std::string /*field*/, EmbedCallback done) override {
    EmbedResult result;
    result.dim = description_.embed_dim;
    for (const std::string& text : texts) {
      const std::vector<float> row =
          FakeEngine::Normalized(FakeEngine::TextVector(text, result.dim));
      result.values.insert(result.values.end(), row.begin(), row.end());
      result.truncated.push_back(false);
      result.num_tokens.push_back(3);
    }
    Answer([result = std::move(result), done = std::move(done)]() mutable {
      std::move(done)(std::move(result));
    });
  }
  void Tokenize(std::vector<std::string> /*texts*/, const EmbedOptions& /*options*/,
                std::string /*field*/, TokenizeCallback done) override {
    std::move(done)(absl::UnimplementedError("not in this test"));
  }
  const ModelDescription& description() const override { return description_; }
  int max_texts_per_call() const override { return 1 << 20; }
  bool healthy() const override { return true; }

 private:
  // Runs `answer` on a new thread; every second request releases itself and the one
  // before it together.
  void Answer(absl::AnyInvocable<void() &&> answer) {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<absl::Notification> gate = std::move(waiting_);
    const bool second = gate != nullptr;
    if (!second) waiting_ = gate = std::make_shared<absl::Notification>();
    threads_.emplace_back([gate, answer = std::move(answer)]() mutable {
      gate->WaitForNotification();
      std::move(answer)();
    });
    if (second) gate->Notify();
  }

  const ModelDescription description_;
  absl::Mutex mu_;
  std::shared_ptr<absl::Notification> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

// The failing answer cancels the other's work, and may not be the last one: the call
// must not be touched after the other answer finished it (run under ASan and TSan).
TEST(ClipServiceRaceTest, OneTowerFailingWhileTheOtherAnswersFinishesEveryCallOnce) {
  RacingEngine engine;
  LoopbackService serving = ServeOnLoopback(&engine, {});
  ASSERT_NE(serving.server, nullptr);
  const v1::SimilarityRequest request = ImagesAndTexts({Encoded("x")}, {"a"});
  for (int i = 0; i < 200; ++i) {
    v1::SimilarityResponse response;
    const grpc::Status status =
        serving.stub->Similarity(Context().get(), request, &response);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << i;
  }
  serving.server->Shutdown(absl::Seconds(10));
}

// ---------------------------------------------------------------------------
// Classify

// normalize(mean over templates of normalize(text embedding of the prompt)).
std::vector<float> ExpectedLabel(const std::string& label,
                                 const std::vector<std::string>& templates) {
  std::vector<double> sum(8, 0.0);
  for (const std::string& t : templates) {
    std::string prompt = t;
    prompt.replace(prompt.find("{}"), 2, label);
    const std::vector<float> v = FakeText(prompt);
    for (int d = 0; d < 8; ++d) sum[d] += v[d];
  }
  return FakeEngine::Normalized(std::vector<float>(sum.begin(), sum.end()));
}

struct ExpectedScore {
  int index;
  double logit;
  double probability;
};

// Every label's score for `image`, best first.
std::vector<ExpectedScore> ExpectedRanking(const v1::Image& image,
                                           const std::vector<std::string>& labels,
                                           const std::vector<std::string>& templates,
                                           double scale) {
  std::vector<ExpectedScore> scores;
  double max = -INFINITY;
  for (size_t l = 0; l < labels.size(); ++l) {
    const double logit =
        scale * Dot(FakeImage(image), ExpectedLabel(labels[l], templates));
    scores.push_back({static_cast<int>(l), logit, 0});
    max = std::max(max, logit);
  }
  double sum = 0;
  for (const auto& s : scores) sum += std::exp(s.logit - max);
  for (auto& s : scores) s.probability = std::exp(s.logit - max) / sum;
  std::sort(
      scores.begin(), scores.end(),
      [](const ExpectedScore& a, const ExpectedScore& b) { return a.logit > b.logit; });
  return scores;
}

v1::ClassifyRequest ClassifyRequest(const std::vector<v1::Image>& images,
                                    const std::vector<std::string>& labels,
                                    const std::vector<std::string>& templates,
                                    uint32_t top_k) {
  v1::ClassifyRequest request;
  for (const v1::Image& image : images) *request.add_images() = image;
  for (const std::string& label : labels) request.add_labels(label);
  for (const std::string& t : templates) request.add_templates(t);
  request.set_top_k(top_k);
  return request;
}

TEST_F(ClipServiceTest, ClassifyRanksLabelsBestFirst) {
  const std::vector<v1::Image> images = {Encoded("cat.jpg"), Raw(3, 3, 'k')};
  const std::vector<std::string> labels = {"cat", "dog", "car", "plane", "tree"};
  const std::vector<std::string> templates = {"a photo of a {}.", "a sketch of a {}"};
  v1::ClassifyResponse response;
  ASSERT_TRUE(Classify(ClassifyRequest(images, labels, templates, 3), &response).ok());

  ASSERT_EQ(response.results_size(), 2);
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const auto expected = ExpectedRanking(images[i], labels, templates, 20.0);
    const v1::Classification& result = response.results(i);
    ASSERT_EQ(result.labels_size(), 3);
    for (int r = 0; r < 3; ++r) {
      SCOPED_TRACE(r);
      const v1::LabelScore& score = result.labels(r);
      EXPECT_EQ(score.index(), static_cast<uint32_t>(expected[r].index));
      EXPECT_EQ(score.label(), labels[expected[r].index]);
      EXPECT_NEAR(score.logit(), expected[r].logit, 1e-4);
      EXPECT_NEAR(score.probability(), expected[r].probability, 1e-5);
      if (r > 0) {
        EXPECT_GE(result.labels(r - 1).probability(), score.probability());
      }
    }
  }
  // One text call with every prompt, label-major.
  std::vector<std::string> prompts;
  for (const std::string& label : labels) {
    prompts.push_back("a photo of a " + label + ".");
    prompts.push_back("a sketch of a " + label);
  }
  ASSERT_EQ(engine_->CountCalls(Kind::kTexts), 1);
  for (const FakeEngine::Call& call : engine_->calls()) {
    EXPECT_TRUE(call.options.normalize);
    if (call.kind == Kind::kTexts) {
      EXPECT_THAT(call.texts, ElementsAreArray(prompts));
    }
  }
}

TEST_F(ClipServiceTest, ClassifyTopKDefaultsToFiveAndIsClampedToTheLabels) {
  const std::vector<v1::Image> images = {Encoded("x")};
  const std::vector<std::string> seven = {"a", "b", "c", "d", "e", "f", "g"};
  v1::ClassifyResponse response;
  ASSERT_TRUE(Classify(ClassifyRequest(images, seven, {}, 0), &response).ok());
  EXPECT_EQ(response.results(0).labels_size(), 5);
  response.Clear();
  ASSERT_TRUE(Classify(ClassifyRequest(images, seven, {}, 100), &response).ok());
  ASSERT_EQ(response.results(0).labels_size(), 7);
  // All labels: probabilities sum to one.
  double sum = 0;
  for (const auto& score : response.results(0).labels()) sum += score.probability();
  EXPECT_NEAR(sum, 1.0, 1e-5);
  response.Clear();
  ASSERT_TRUE(
      Classify(ClassifyRequest(images, {"yes", "no", "maybe"}, {}, 0), &response).ok());
  EXPECT_EQ(response.results(0).labels_size(), 3);
}

// Classify copies a label's text into every image's top_k scores, so a small request
// can ask for a response far over the send limit.
TEST_F(ClipServiceTest, ClassifyResponsesOverTheLargestMessageAreResourceExhausted) {
  const std::vector<v1::Image> images(4, Raw(1, 1, 'c'));
  const std::vector<std::string> labels = {"first cat", "second dog", "third car",
                                           "fourth bus"};
  const v1::ClassifyRequest request = ClassifyRequest(images, labels, {}, 4);
  v1::ClassifyResponse unlimited;
  ASSERT_TRUE(Classify(request, &unlimited).ok());
  const int64_t size = static_cast<int64_t>(unlimited.ByteSizeLong());
  ASSERT_GE(size - 1, LargestOneItemResponseBytes(FakeEngine::DefaultDescription()));

  ClipServiceOptions options;
  options.max_response_bytes = size;
  Restart(options);
  v1::ClassifyResponse response;
  ASSERT_TRUE(Classify(request, &response).ok());
  EXPECT_EQ(response.ByteSizeLong(), unlimited.ByteSizeLong());

  // One byte less: the model ran (the scores decide the size), and the response is
  // refused with its exact size.
  options.max_response_bytes = size - 1;
  Restart(options);
  grpc::Status status = Classify(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(),
            absl::StrCat("the response is ", size,
                         " bytes, over the largest message this server sends (", size - 1,
                         " bytes): ask for fewer items per call"));
  EXPECT_EQ(engine_->CountCalls(Kind::kImages), 1);

  // Labels so long that no ranking could fit: refused before any model work.
  Restart(options);
  const std::vector<std::string> long_labels = {
      std::string(100, 'a'), std::string(100, 'b'), std::string(100, 'c'),
      std::string(100, 'd')};
  status = Classify(ClassifyRequest(images, long_labels, {}, 4), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(),
              ::testing::StartsWith("the response would be at least "));
  EXPECT_THAT(status.error_message(),
              HasSubstr("(4 images x top_k 4 labels), over the largest message this "
                        "server sends"));
  EXPECT_THAT(engine_->calls(), ::testing::IsEmpty());
}

TEST_F(ClipServiceTest, ClassifyUsesTheDefaultTemplate) {
  v1::ClassifyResponse response;
  ASSERT_TRUE(
      Classify(ClassifyRequest({Encoded("x")}, {"cat", "dog"}, {}, 0), &response).ok());
  const auto expected =
      ExpectedRanking(Encoded("x"), {"cat", "dog"}, {"a photo of a {}."}, 20.0);
  EXPECT_EQ(response.results(0).labels(0).index(),
            static_cast<uint32_t>(expected[0].index));
  EXPECT_NEAR(response.results(0).labels(0).logit(), expected[0].logit, 1e-4);
  for (const FakeEngine::Call& call : engine_->calls()) {
    if (call.kind == Kind::kTexts) {
      EXPECT_THAT(call.texts, ElementsAre("a photo of a cat.", "a photo of a dog."));
    }
  }
}

TEST_F(ClipServiceTest, ClassifyCachesLabelEmbeddings) {
  const std::vector<v1::Image> images = {Encoded("img")};
  const std::vector<std::string> templates = {"a {}", "the {}", "my {}"};
  const v1::ClassifyRequest request =
      ClassifyRequest(images, {"cat", "dog", "bird"}, templates, 3);
  v1::ClassifyResponse first;
  ASSERT_TRUE(Classify(request, &first).ok());
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 1);
  EXPECT_EQ(engine_->texts_embedded(), 9);

  // The same labels and templates again: no text model, the same answer.
  v1::ClassifyResponse second;
  ASSERT_TRUE(Classify(request, &second).ok());
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 1);
  EXPECT_EQ(engine_->CountCalls(Kind::kImages), 2);
  EXPECT_EQ(second.SerializeAsString(), first.SerializeAsString());
  EXPECT_EQ(service_->label_cache().hits(), 3);

  // One new label: only its prompts are embedded; the cached ones still rank right.
  v1::ClassifyResponse third;
  const std::vector<std::string> labels = {"cat", "fish", "bird"};
  ASSERT_TRUE(Classify(ClassifyRequest(images, labels, templates, 3), &third).ok());
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 2);
  EXPECT_EQ(engine_->texts_embedded(), 12);
  EXPECT_THAT(engine_->calls().back().texts,
              ElementsAre("a fish", "the fish", "my fish"));
  const auto expected = ExpectedRanking(images[0], labels, templates, 20.0);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(third.results(0).labels(r).index(),
              static_cast<uint32_t>(expected[r].index));
    EXPECT_NEAR(third.results(0).labels(r).logit(), expected[r].logit, 1e-4);
  }

  // Other templates are other keys.
  v1::ClassifyResponse fourth;
  ASSERT_TRUE(
      Classify(ClassifyRequest(images, {"cat", "dog", "bird"}, {"a {}"}, 3), &fourth)
          .ok());
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 3);
  EXPECT_EQ(engine_->texts_embedded(), 15);
}

TEST_F(ClipServiceTest, ClassifyWithoutCacheAsksTheTextModelEveryTime) {
  ClipServiceOptions options;
  options.label_cache_capacity = 0;
  Restart(options);
  const v1::ClassifyRequest request = ClassifyRequest({Encoded("i")}, {"a", "b"}, {}, 0);
  v1::ClassifyResponse response;
  ASSERT_TRUE(Classify(request, &response).ok());
  ASSERT_TRUE(Classify(request, &response).ok());
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 2);
}

TEST_F(ClipServiceTest, InvalidClassifyRequestsAreRejectedBeforeTheEngine) {
  const std::vector<v1::Image> images = {Encoded("i")};
  std::vector<InvalidCase<v1::ClassifyRequest>> cases = {
      {"no images", ClassifyRequest({}, {"a", "b"}, {}, 0), "images"},
      {"bad image", ClassifyRequest({Encoded("i"), Encoded("")}, {"a", "b"}, {}, 0),
       "images[1]"},
      {"one label", ClassifyRequest(images, {"a"}, {}, 0), "labels"},
      {"empty label", ClassifyRequest(images, {"a", ""}, {}, 0), "labels[1]"},
      {"duplicate label", ClassifyRequest(images, {"a", "b", "a"}, {}, 0), "labels[2]"},
      {"invalid UTF-8 label", ClassifyRequest(images, {"a", "b\xFF"}, {}, 0),
       "labels[1]"},
      {"template without {}", ClassifyRequest(images, {"a", "b"}, {"a photo"}, 0),
       "templates[0]"},
      {"template with two {}",
       ClassifyRequest(images, {"a", "b"}, {"{}", "{} and {}"}, 0), "templates[1]"},
      // Label and template each within the 16 KiB a text may have; their prompt not.
      {"prompt over the text limit",
       ClassifyRequest(images, {"a", std::string(16380, 'x')}, {}, 0), "labels[1]"},
  };
  v1::ClassifyRequest cold = ClassifyRequest(images, {"a", "b"}, {}, 0);
  cold.set_temperature(-2);
  cases.push_back({"negative temperature", cold, "temperature"});
  cold.set_temperature(3e-39f);  // a finite inverse, but logits that overflow
  cases.push_back({"temperature below 1e-6", cold, "temperature"});

  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ClassifyResponse response;
    const grpc::Status status = Classify(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), c.field);
  }
  EXPECT_TRUE(engine_->calls().empty());
}

TEST_F(ClipServiceTest, ClassifyLimitsLabelsTimesTemplates) {
  ClipServiceOptions options;
  options.max_classify_prompts = 6;
  Restart(options);
  const std::vector<v1::Image> images = {Encoded("i")};
  v1::ClassifyResponse response;
  EXPECT_TRUE(
      Classify(ClassifyRequest(images, {"a", "b", "c"}, {"{}", "x {}"}, 0), &response)
          .ok());
  const grpc::Status status = Classify(
      ClassifyRequest(images, {"a", "b", "c", "d"}, {"{}", "x {}"}, 0), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadField(status), "labels");
  EXPECT_EQ(engine_->CountCalls(Kind::kTexts), 1);
}

// The engine names an item it failed with INTERNAL (NaN from the model) at the start
// of the message, under the list it was given: renamed to the request's own field
// where that list is not the request's, so that the caller can tell which input to
// drop. Classify's prompt 2 here is templates[0] applied to labels[1].
TEST_F(ClipServiceTest, AnItemTheEngineFailsInternallyIsNamedAsTheRequestNamesIt) {
  const std::string bad(FakeEngine::kNonFinite);
  v1::EmbedTextRequest texts;
  texts.add_texts("a cat");
  texts.add_texts(bad);
  v1::EmbedTextResponse embedded;
  grpc::Status status = EmbedText(texts, &embedded);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(status.error_message(), StartsWith("texts[1]: the model gave NaN"));

  v1::ClassifyResponse classified;
  status = Classify(ClassifyRequest({Encoded("i")}, {"a", bad, "c"}, {"{}", "x {}"}, 0),
                    &classified);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(status.error_message(), StartsWith("labels[1]: the model gave NaN"));

  auto context = Context();
  auto stream = stub_->EmbedStream(context.get());
  ASSERT_TRUE(stream->Write(TextItem("bad", bad)));
  ASSERT_TRUE(stream->WritesDone());
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.error().code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(response.error().message(), StartsWith("text: the model gave NaN"));
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ClipServiceTest, ClassifyTemperatureReplacesTheModelScale) {
  const std::vector<v1::Image> images = {Encoded("i")};
  v1::ClassifyRequest request = ClassifyRequest(images, {"a", "b", "c"}, {}, 3);
  request.set_temperature(0.1f);
  v1::ClassifyResponse response;
  ASSERT_TRUE(Classify(request, &response).ok());
  const auto expected =
      ExpectedRanking(images[0], {"a", "b", "c"}, {"a photo of a {}."}, 10.0);
  for (int r = 0; r < 3; ++r) {
    EXPECT_NEAR(response.results(0).labels(r).logit(), expected[r].logit, 1e-4);
    EXPECT_NEAR(response.results(0).labels(r).probability(), expected[r].probability,
                1e-5);
  }
}

// ---------------------------------------------------------------------------
// Tokenize

TEST_F(ClipServiceTest, TokenizeReturnsIdsAndTheContextLength) {
  v1::TokenizeRequest request;
  request.add_texts("ab");
  request.add_texts(std::string(100, 'z'));
  v1::TokenizeResponse response;
  ASSERT_TRUE(stub_->Tokenize(Context().get(), request, &response).ok());
  EXPECT_EQ(response.context_length(), 77u);
  ASSERT_EQ(response.texts_size(), 2);
  EXPECT_THAT(response.texts(0).ids(), ElementsAre(49406, 'a' + 1, 'b' + 1, 49407));
  EXPECT_FALSE(response.texts(0).truncated());
  EXPECT_EQ(response.texts(1).ids_size(), 77);
  EXPECT_EQ(response.texts(1).ids(76), 49407);
  EXPECT_TRUE(response.texts(1).truncated());

  request.set_truncate(false);
  const grpc::Status status = stub_->Tokenize(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadField(status), "texts[1]");

  v1::TokenizeRequest invalid;
  invalid.add_texts("\xED\xBF\xBF");
  EXPECT_EQ(BadField(stub_->Tokenize(Context().get(), invalid, &response)), "texts[0]");
  EXPECT_EQ(engine_->CountCalls(Kind::kTokenize), 2);
  // The engine gets the call's deadline and cancellation, so a call that went away
  // costs no tokenizing.
  for (const FakeEngine::Call& call : engine_->calls()) {
    EXPECT_NE(call.options.cancellation, nullptr);
    EXPECT_LT(call.options.deadline, absl::Now() + absl::Seconds(11));
  }
}

// ---------------------------------------------------------------------------
// EmbedStream

TEST_F(ClipServiceTest, EmbedStreamAnswersEveryItemOnceAndBadItemsOnlyFailThemselves) {
  RestartRecordingMetrics();
  std::vector<v1::EmbedStreamRequest> items = {
      ImageItem("img-ok", Encoded("png of a cat")), TextItem("txt-ok", "a dog"),
      ImageItem("raw-bad", Raw(2, 2, 'a', 5)),      TextItem("utf8-bad", "\xFF"),
      TextItem("long-text", std::string(100, 'l')),
  };
  v1::EmbedStreamRequest no_input;
  no_input.set_id("no-input");
  items.push_back(no_input);
  items.push_back(ImageItem("undecodable", Encoded("undecodable bytes")));
  v1::EmbedStreamRequest raw_values = TextItem("unnormalized", "raw please");
  raw_values.set_normalize(false);
  items.push_back(raw_values);
  items.push_back(TextItem("\xC0\xAF", "an id that is not UTF-8"));
  v1::EmbedStreamRequest strict = TextItem("no-truncate", std::string(100, 's'));
  strict.set_truncate(false);
  items.push_back(strict);
  items.push_back(ImageItem("raw-ok", Raw(1, 2, 'r')));

  auto context = Context();
  auto stream = stub_->EmbedStream(context.get());
  for (const auto& item : items) ASSERT_TRUE(stream->Write(item));
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, v1::EmbedStreamResponse> answers;
  std::map<std::string, int> seen;
  v1::EmbedStreamResponse response;
  while (stream->Read(&response)) {
    ++seen[response.id()];
    answers[response.id()] = response;
  }
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();

  // Every id once; the one that is not UTF-8 cannot be echoed and comes back empty.
  ASSERT_EQ(seen.size(), items.size());
  for (const auto& item : items) {
    const std::string id = item.id() == "\xC0\xAF" ? "" : item.id();
    EXPECT_EQ(seen[id], 1) << id;
  }

  auto expect_embedding = [&answers](const std::string& id, const std::vector<float>& v) {
    SCOPED_TRACE(id);
    ASSERT_TRUE(answers[id].has_embedding()) << answers[id].error().message();
    ExpectNear(Values(answers[id].embedding()), v);
  };
  expect_embedding("img-ok", FakeImage(Encoded("png of a cat")));
  expect_embedding("txt-ok", FakeText("a dog"));
  EXPECT_EQ(answers["txt-ok"].num_tokens(), 7u);
  EXPECT_FALSE(answers["txt-ok"].truncated());
  expect_embedding("long-text", FakeText(std::string(100, 'l')));
  EXPECT_EQ(answers["long-text"].num_tokens(), 77u);
  EXPECT_TRUE(answers["long-text"].truncated());
  expect_embedding("unnormalized", FakeText("raw please", /*normalize=*/false));
  expect_embedding("raw-ok", FakeImage(Raw(1, 2, 'r')));

  const std::map<std::string, std::string> bad = {
      {"raw-bad", "image"},     {"utf8-bad", "text"},    {"no-input", "input"},
      {"undecodable", "image"}, {"no-truncate", "text"}, {"", "id"},
  };
  for (const auto& [id, field] : bad) {
    SCOPED_TRACE(id);
    const v1::EmbedStreamResponse& answer = answers[id];
    ASSERT_TRUE(answer.has_error());
    EXPECT_EQ(answer.error().code(),
              static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    EXPECT_EQ(BadField(answer.error()), field);
    EXPECT_THAT(answer.error().message(), ::testing::StartsWith(field + ": "));
  }
  // Only the items that passed validation reached the engine, one request each.
  EXPECT_EQ(engine_->calls().size(), 7u);
  // The stream ends OK: its failed items are counted apart, each answered before this.
  EXPECT_THAT(CountedItemFailures("INVALID_ARGUMENT"),
              ::testing::Optional(static_cast<double>(bad.size())));
}

// An id over the limit is not echoed: the error would be as large as the id, and a
// response over the send limit would end the whole stream.
TEST_F(ClipServiceTest, EmbedStreamDoesNotEchoAnIdOverTheLimit) {
  for (const size_t length :
       {static_cast<size_t>(kMaxStreamIdBytes) + 1, static_cast<size_t>(1 << 20)}) {
    SCOPED_TRACE(length);
    auto context = Context();
    auto stream = stub_->EmbedStream(context.get());
    ASSERT_TRUE(stream->Write(TextItem(std::string(length, 'i'), "id too long")));
    ASSERT_TRUE(stream->Write(TextItem("after", "a dog")));
    ASSERT_TRUE(stream->WritesDone());
    std::map<std::string, v1::EmbedStreamResponse> answers;
    v1::EmbedStreamResponse response;
    while (stream->Read(&response)) answers[response.id()] = response;
    const grpc::Status status = stream->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(answers.size(), 2u);
    ASSERT_TRUE(answers[""].has_error());
    EXPECT_EQ(BadField(answers[""].error()), "id");
    EXPECT_EQ(answers[""].error().message(),
              absl::StrCat("id: id of ", length, " bytes is over the limit of ",
                           kMaxStreamIdBytes, " bytes"));
    EXPECT_TRUE(answers["after"].has_embedding());
  }
}

TEST_F(ClipServiceTest, EmbedStreamKeepsAtMostTheLimitInFlight) {
  constexpr int kLimit = 3;
  constexpr int kItems = 12;
  ClipServiceOptions options;
  options.max_stream_items_in_flight = kLimit;
  Restart(options);
  engine_->set_hold(true);

  auto context = Context(absl::Seconds(30));
  auto stream = stub_->EmbedStream(context.get());
  // Everything is sent at once; only the server's reads hold it back.
  std::thread writer([&stream] {
    for (int i = 0; i < kItems; ++i) {
      if (!stream->Write(TextItem(absl::StrCat("item-", i), absl::StrCat("text ", i)))) {
        return;
      }
    }
    stream->WritesDone();
  });

  // The server reads ahead up to the limit...
  ASSERT_TRUE(engine_->AwaitHeld(kLimit));
  std::map<std::string, int> seen;
  v1::EmbedStreamResponse response;
  for (int answered = 0; answered < kItems; ++answered) {
    // ...and one more item for each answer written.
    ASSERT_TRUE(engine_->AwaitHeld(1)) << "after " << answered << " answers";
    ASSERT_TRUE(engine_->ReleaseOne());
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_TRUE(response.has_embedding());
    ExpectNear(Values(response.embedding()),
               FakeText(absl::StrCat("text ", response.id().substr(5))));
    ++seen[response.id()];
  }
  EXPECT_FALSE(stream->Read(&response));
  writer.join();
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  EXPECT_EQ(seen.size(), static_cast<size_t>(kItems));
  for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id;
  EXPECT_EQ(engine_->max_outstanding(), kLimit);
  EXPECT_EQ(engine_->calls().size(), static_cast<size_t>(kItems));
}

// With a per-client limit, one client past its share is refused while another client
// is still admitted. The two clients are IPv4 and IPv6 loopback connections to a
// dual-stack server: two host addresses on one machine.
TEST(ClipServicePerClientMemoryTest, AClientPastItsShareIsRefusedWhileAnotherIsServed) {
  FakeEngine engine(FakeEngine::DefaultDescription());
  ClipServiceOptions options;
  options.max_request_memory_bytes = 4000;
  options.max_request_memory_per_client_bytes = 2000;
  LoopbackService serving = ServeOnLoopback(&engine, options, "[::]");
  ASSERT_NE(serving.server, nullptr);
  auto v6_stub = v1::ClipService::NewStub(
      grpc::CreateChannel(absl::StrCat("[::1]:", serving.server->port()),
                          grpc::InsecureChannelCredentials()));
  {
    v1::TokenizeResponse response;
    const grpc::Status probe =
        v6_stub->Tokenize(Context().get(), v1::TokenizeRequest(), &response);
    if (probe.error_code() == grpc::StatusCode::UNAVAILABLE ||
        probe.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      GTEST_SKIP() << "no IPv6 loopback on this machine";
    }
  }
  engine.set_hold(true);

  // The IPv4 client's call of some 1500 bytes is held by the engine...
  v1::EmbedImageRequest big_request;
  *big_request.add_images() = Encoded(std::string(1500, 'j'));
  auto big = StartCall(serving.stub->async(), &Rpc::EmbedImage, big_request);
  ASSERT_TRUE(engine.AwaitHeld(1));

  // ...so its next 600 bytes pass its share of 2000, although the total has room.
  v1::EmbedTextRequest text;
  text.add_texts(std::string(600, 't'));
  v1::EmbedTextResponse refused_response;
  const grpc::Status refused =
      serving.stub->EmbedText(Context().get(), text, &refused_response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("--max_request_memory_per_client_mb"));
  EXPECT_EQ(RetryDelayOf(refused), RequestMemoryBudget::kRetryAfter);

  // The IPv6 client's same request is admitted: it reaches the engine.
  auto v6 = StartCall(v6_stub->async(), &Rpc::EmbedText, text);
  ASSERT_TRUE(engine.AwaitHeld(2));

  engine.set_hold(false);
  ASSERT_TRUE(big->Await());
  ASSERT_TRUE(v6->Await());
  EXPECT_TRUE(big->status.ok()) << big->status.error_message();
  EXPECT_TRUE(v6->status.ok()) << v6->status.error_message();
  EXPECT_TRUE(AwaitRequestMemory(*serving.service, 0));
  serving.server->Shutdown(absl::Seconds(10));
}

TEST_F(ClipServiceTest, EmbedStreamItemsPastTheRequestMemoryLimitFailAlone) {
  ClipServiceOptions options;
  options.max_request_memory_bytes = 2000;
  ExpectAStreamItemPastTheLimitFailsAlone(options, "--max_request_memory_mb",
                                          "clipserve_request_memory_refusals_total");
}

// An EmbedStream item counts against its client's share too: with room left in the
// total, the client's item past its share fails alone, with the per-client message.
TEST_F(ClipServiceTest, EmbedStreamItemsPastTheClientsShareFailAlone) {
  ClipServiceOptions options;
  options.max_request_memory_bytes = 4000;
  options.max_request_memory_per_client_bytes = 2000;
  ExpectAStreamItemPastTheLimitFailsAlone(
      options, "--max_request_memory_per_client_mb",
      "clipserve_request_memory_client_refusals_total");
}

// An item that fits the budget alone, but not with its answer, is served when nothing
// else is held, as a unary call of the same size is: the budget is at least the
// largest message, so such an item would otherwise fail every retry.
TEST_F(ClipServiceTest, AnEmbedStreamItemAsLargeAsTheBudgetFitsAnEmptyOne) {
  for (const bool per_client : {false, true}) {
    SCOPED_TRACE(per_client ? "per-client share" : "total");
    ClipServiceOptions options;
    options.max_request_memory_bytes = per_client ? 4000 : 2000;
    options.max_request_memory_per_client_bytes = per_client ? 2000 : 0;
    Restart(options);
    // 1990 bytes: the answer's 50 or so would take the item past 2000.
    v1::EmbedStreamRequest item = TextItem("full", std::string(1900, 'f'));
    while (item.ByteSizeLong() < 1990) item.mutable_text()->push_back('f');
    ASSERT_EQ(item.ByteSizeLong(), 1990u);
    auto context = Context(absl::Seconds(30));
    auto stream = stub_->EmbedStream(context.get());
    ASSERT_TRUE(stream->Write(item));
    ASSERT_TRUE(stream->WritesDone());
    v1::EmbedStreamResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.id(), "full");
    EXPECT_TRUE(response.has_embedding()) << response.error().message();
    EXPECT_FALSE(stream->Read(&response));
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  }
}

// A stream whose own earlier item holds the memory its next item needs is slowed
// down, not refused: the item waits for it, and the stream reads no further meanwhile.
TEST_F(ClipServiceTest, AnEmbedStreamItemPastTheLimitWaitsForTheStreamsOwn) {
  ClipServiceOptions options;
  options.max_request_memory_bytes = 2000;
  RestartRecordingMetrics(options);
  engine_->set_hold(true);
  auto context = Context(absl::Seconds(30));
  auto stream = stub_->EmbedStream(context.get());
  ASSERT_TRUE(stream->Write(TextItem("big", std::string(1500, 'b'))));
  ASSERT_TRUE(engine_->AwaitHeld(1));
  // An item larger than the whole budget could never fit: it fails at once.
  ASSERT_TRUE(stream->Write(TextItem("huge", std::string(2500, 'h'))));
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.id(), "huge");
  EXPECT_EQ(response.error().code(),
            static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  // 600 bytes do not fit beside the stream's own 1500: they wait, and the small item
  // after them, which would fit, is not read before them.
  ASSERT_TRUE(stream->Write(TextItem("waits", std::string(600, 'w'))));
  ASSERT_TRUE(
      testing::PollUntil([&] { return service_->stream_items_waiting_bytes() > 0; }));
  ASSERT_TRUE(stream->Write(TextItem("small", "a cat")));
  ASSERT_TRUE(stream->WritesDone());
  engine_->set_hold(false);
  std::vector<std::string> ids;
  while (stream->Read(&response)) {
    EXPECT_TRUE(response.has_embedding())
        << response.id() << ": " << response.error().message();
    ids.push_back(response.id());
  }
  EXPECT_THAT(ids, ::testing::UnorderedElementsAre("big", "waits", "small"));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> order;
  for (const FakeEngine::Call& call : engine_->calls()) order.push_back(call.texts.at(0));
  EXPECT_THAT(order, ElementsAre(std::string(1500, 'b'), std::string(600, 'w'), "a cat"));
  EXPECT_EQ(testing::FindSample(metrics_->Serialize(),
                                "clipserve_request_memory_refusals_total")
                .value_or(0),
            1);  // "huge" alone
  EXPECT_EQ(service_->stream_items_waiting_bytes(), 0);
  EXPECT_EQ(service_->request_memory_used(), 0);
}

// gRPC holds an answer until its client reads it, so a stream item reserves its
// answer with itself and keeps both until the answer is written: a client that
// reads none holds its budget, not memory outside it.
TEST_F(ClipServiceTest, AnEmbedStreamItemReservesItsAnswerUntilItIsWritten) {
  engine_->set_hold(true);
  auto context = Context(absl::Seconds(30));
  auto stream = stub_->EmbedStream(context.get());
  const v1::EmbedStreamRequest item = TextItem("one", "a cat");
  ASSERT_TRUE(stream->Write(item));
  ASSERT_TRUE(engine_->AwaitHeld(1));
  // Its bytes, and at least the answer's embedding.
  EXPECT_GE(service_->request_memory_used(),
            static_cast<int64_t>(item.ByteSizeLong()) + EmbeddingsResponseBytes(1));
  engine_->set_hold(false);
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.has_embedding()) << response.error().message();
  // Its reservation came back with the write, before the stream ends.
  EXPECT_TRUE(AwaitRequestMemory(*service_, 0));
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ClipServiceTest, EmbedStreamCancelDropsQueuedWork) {
  RestartRecordingMetrics();
  engine_->set_hold(true);
  grpc::ClientContext context;
  auto stream = stub_->EmbedStream(&context);
  ASSERT_TRUE(stream->Write(TextItem("a", "first")));
  ASSERT_TRUE(stream->Write(ImageItem("b", Encoded("second"))));
  ASSERT_TRUE(engine_->AwaitHeld(2));
  context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const std::vector<FakeEngine::Call> calls = engine_->calls();
  ASSERT_EQ(calls.size(), 2u);
  for (const FakeEngine::Call& call : calls)
    EXPECT_TRUE(WaitUntilCancelled(call.options));

  // The engine answers after the cancel (CANCELLED, on this thread); the stream ends
  // cleanly and a new one works. Those answers are never sent: no item failure counts.
  engine_->set_hold(false);
  EXPECT_EQ(CountedItemFailures("CANCELLED"), std::nullopt);
  auto next_context = Context();
  auto next = stub_->EmbedStream(next_context.get());
  ASSERT_TRUE(next->Write(TextItem("c", "third")));
  ASSERT_TRUE(next->WritesDone());
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(next->Read(&response));
  EXPECT_EQ(response.id(), "c");
  EXPECT_TRUE(next->Finish().ok());
}

// A client that cancels a stream with nothing in flight ends its read as a half-close
// would: the call counts as CANCELLED all the same, whichever gRPC reports first.
TEST_F(ClipServiceTest, EmbedStreamCancelledWithNothingInFlightIsCountedCancelled) {
  RestartRecordingMetrics();
  constexpr int kStreams = 20;
  for (int i = 0; i < kStreams; ++i) {
    grpc::ClientContext context;
    auto stream = stub_->EmbedStream(&context);
    ASSERT_TRUE(stream->Write(TextItem("a", "first")));
    v1::EmbedStreamResponse response;
    ASSERT_TRUE(stream->Read(&response));
    context.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(AwaitCountedCalls("EmbedStream", "CANCELLED", kStreams));
  EXPECT_EQ(CountedCalls("EmbedStream", "OK"), std::nullopt);

  // A stream the client half-closes is counted OK.
  auto context = Context();
  auto stream = stub_->EmbedStream(context.get());
  ASSERT_TRUE(stream->Write(TextItem("b", "second")));
  ASSERT_TRUE(stream->WritesDone());
  v1::EmbedStreamResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(AwaitCountedCalls("EmbedStream", "OK", 1));
}

TEST_F(ClipServiceTest, EmbedStreamWithNoItemsFinishesOk) {
  auto context = Context();
  auto stream = stub_->EmbedStream(context.get());
  ASSERT_TRUE(stream->WritesDone());
  v1::EmbedStreamResponse response;
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace clipserve
