// The real server end to end: ClipServer + ClipService + EmbeddingEngine with a tiny
// random CLIP model, on a loopback port, called through generated gRPC stubs.

#include <fstream>
#include <initializer_list>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/time/clock.h"
#include "client/status_details.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/error_details.h"
#include "gtest/gtest.h"
#include "server/engine/embedding_engine.h"
#include "server/model/contrastive_loss.h"
#include "server/service/clip_server.h"
#include "server/service/clip_service.h"
#include "tests/integration/loopback_stack.h"
#include "tests/testing/async_call.h"
#include "tests/testing/poll_until.h"
#include "tests/testing/shared_data.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
namespace pb = ::clipserve::v1;

std::string ReadShared(const std::string& relative) {
  std::ifstream in(testing::SharedPath(relative), std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

using Stack = testing::LoopbackStack;

Stack Start(EmbeddingEngineOptions engine_options = {},
            ClipServiceOptions service_options = {}) {
  absl::StatusOr<Stack> stack =
      testing::StartLoopbackStack(engine_options, service_options);
  EXPECT_TRUE(stack.ok()) << stack.status();
  return *std::move(stack);
}

std::unique_ptr<grpc::ClientContext> Context(
    absl::Duration deadline = absl::Seconds(60)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return context;
}

// The BadRequest field named by a failed call, or "".
std::string BadField(const grpc::Status& status) {
  google::rpc::Status details;
  if (!grpc::ExtractErrorDetails(status, &details).ok()) return "";
  for (const auto& any : details.details()) {
    google::rpc::BadRequest bad;
    if (any.UnpackTo(&bad) && bad.field_violations_size() > 0) {
      return bad.field_violations(0).field();
    }
  }
  return "";
}

class ServerE2ETest : public ::testing::Test {
 protected:
  void SetUp() override { stack_ = Start(); }
  void TearDown() override {
    stack_.server->Shutdown(absl::Seconds(5));
    stack_.engine->Shutdown();
  }
  Stack stack_;
};

const char* const kPhotos[] = {"images/chelsea.png", "images/rocket.jpg",
                               "images/coffee.png", "images/astronaut.png"};

TEST_F(ServerE2ETest, BatchedRowsEqualOneByOneRows) {
  pb::EmbedImageRequest all;
  for (const char* f : kPhotos) all.add_images()->set_encoded(ReadShared(f));
  pb::EmbedImageResponse together;
  auto context = Context();
  ASSERT_TRUE(stack_.stub->EmbedImage(context.get(), all, &together).ok());
  ASSERT_EQ(together.embeddings_size(), 4);
  EXPECT_EQ(together.dim(), 32u);
  EXPECT_EQ(together.model(), "tiny");
  for (int i = 0; i < 4; ++i) {
    pb::EmbedImageRequest one;
    *one.add_images() = all.images(i);
    pb::EmbedImageResponse alone;
    auto c = Context();
    ASSERT_TRUE(stack_.stub->EmbedImage(c.get(), one, &alone).ok());
    for (int k = 0; k < 32; ++k) {
      EXPECT_NEAR(alone.embeddings(0).values(k), together.embeddings(i).values(k), 1e-5);
    }
  }

  pb::EmbedTextRequest texts;
  for (const char* t : {"a cat", "a rocket on the launch pad", "a cup of coffee"}) {
    texts.add_texts(t);
  }
  pb::EmbedTextResponse text_together;
  auto c = Context();
  ASSERT_TRUE(stack_.stub->EmbedText(c.get(), texts, &text_together).ok());
  for (int i = 0; i < 3; ++i) {
    pb::EmbedTextRequest one;
    one.add_texts(texts.texts(i));
    pb::EmbedTextResponse alone;
    auto c1 = Context();
    ASSERT_TRUE(stack_.stub->EmbedText(c1.get(), one, &alone).ok());
    EXPECT_EQ(alone.num_tokens(0), text_together.num_tokens(i));
    for (int k = 0; k < 32; ++k) {
      EXPECT_NEAR(alone.embeddings(0).values(k), text_together.embeddings(i).values(k),
                  1e-5);
    }
  }
}

TEST_F(ServerE2ETest, SimilarityLossEqualsTheModelUnitsLoss) {
  pb::SimilarityRequest request;
  for (int i = 0; i < 3; ++i) {
    request.mutable_images()->mutable_images()->add_images()->set_encoded(
        ReadShared(kPhotos[i]));
  }
  for (const char* t : {"a cat", "a rocket", "coffee"}) {
    request.mutable_texts()->mutable_texts()->add_texts(t);
  }
  request.set_paired(true);
  pb::SimilarityResponse response;
  auto context = Context();
  ASSERT_TRUE(stack_.stub->Similarity(context.get(), request, &response).ok());

  // The same embeddings through the plain RPCs, and the loss from the model unit.
  pb::EmbedImageRequest images;
  *images.mutable_images() = request.images().images().images();
  pb::EmbedImageResponse image_rows;
  auto c1 = Context();
  ASSERT_TRUE(stack_.stub->EmbedImage(c1.get(), images, &image_rows).ok());
  pb::EmbedTextRequest texts;
  *texts.mutable_texts() = request.texts().texts().texts();
  pb::EmbedTextResponse text_rows;
  auto c2 = Context();
  ASSERT_TRUE(stack_.stub->EmbedText(c2.get(), texts, &text_rows).ok());
  std::vector<float> flat_images, flat_texts;
  for (const auto& e : image_rows.embeddings())
    flat_images.insert(flat_images.end(), e.values().begin(), e.values().end());
  for (const auto& e : text_rows.embeddings())
    flat_texts.insert(flat_texts.end(), e.values().begin(), e.values().end());
  const float scale = stack_.engine->description().logit_scale;
  EXPECT_FLOAT_EQ(response.logit_scale(), scale);
  auto logits = ScaledLogits(flat_images, flat_texts, 32, scale);
  ASSERT_TRUE(logits.ok());
  ASSERT_EQ(response.logits_per_image().values_size(), 9);
  for (int i = 0; i < 9; ++i) {
    EXPECT_NEAR(response.logits_per_image().values(i), (*logits)[i], 1e-4);
  }
  auto loss = ComputeContrastiveLoss(*logits, 3);
  ASSERT_TRUE(loss.ok());
  EXPECT_NEAR(response.loss().image_to_text(), loss->image_to_text, 1e-4);
  EXPECT_NEAR(response.loss().text_to_image(), loss->text_to_image, 1e-4);
  EXPECT_NEAR(response.loss().mean(), loss->mean, 1e-4);
}

TEST_F(ServerE2ETest, ClassifyTokenizeAndModelInfo) {
  pb::ClassifyRequest classify;
  classify.add_images()->set_encoded(ReadShared(kPhotos[0]));
  for (const char* l : {"cat", "rocket", "coffee"}) classify.add_labels(l);
  classify.set_top_k(2);
  pb::ClassifyResponse classes;
  auto c1 = Context();
  ASSERT_TRUE(stack_.stub->Classify(c1.get(), classify, &classes).ok());
  ASSERT_EQ(classes.results_size(), 1);
  ASSERT_EQ(classes.results(0).labels_size(), 2);
  EXPECT_GE(classes.results(0).labels(0).probability(),
            classes.results(0).labels(1).probability());

  pb::TokenizeRequest tokenize;
  tokenize.add_texts("a photo of a cat");
  pb::TokenizeResponse tokens;
  auto c2 = Context();
  ASSERT_TRUE(stack_.stub->Tokenize(c2.get(), tokenize, &tokens).ok());
  EXPECT_THAT(tokens.texts(0).ids(),
              ::testing::ElementsAre(49406, 320, 1125, 539, 320, 2368, 49407));
  EXPECT_EQ(tokens.context_length(), 77u);

  pb::ModelInfo info;
  auto c3 = Context();
  ASSERT_TRUE(stack_.stub->GetModelInfo(c3.get(), pb::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.embed_dim(), 32u);
  EXPECT_EQ(info.image_size(), 32u);
  EXPECT_EQ(info.vision().architecture(), "vit");
  EXPECT_EQ(info.text().architecture(), "transformer");
  EXPECT_EQ(info.precision(), "fp32");
  EXPECT_TRUE(info.random_weights());
  EXPECT_EQ(info.image_mean_size(), 3);
}

TEST_F(ServerE2ETest, StreamAnswersEveryIdOnceWithMixedItems) {
  auto context = Context();
  auto stream = stack_.stub->EmbedStream(context.get());
  std::set<std::string> expected_ok, expected_bad;
  for (int i = 0; i < 12; ++i) {
    pb::EmbedStreamRequest item;
    item.set_id(absl::StrCat("item-", i));
    if (i % 4 == 0) {
      item.mutable_image()->set_encoded(ReadShared("images/not_an_image.jpg"));
      expected_bad.insert(item.id());
    } else if (i % 2 == 0) {
      item.mutable_image()->set_encoded(ReadShared(kPhotos[i % 4]));
      expected_ok.insert(item.id());
    } else {
      item.set_text(absl::StrCat("caption number ", i));
      expected_ok.insert(item.id());
    }
    ASSERT_TRUE(stream->Write(item));
  }
  stream->WritesDone();
  std::set<std::string> ok, bad;
  pb::EmbedStreamResponse response;
  while (stream->Read(&response)) {
    if (response.has_embedding()) {
      EXPECT_EQ(response.embedding().values_size(), 32);
      EXPECT_TRUE(ok.insert(response.id()).second) << "duplicate " << response.id();
    } else {
      EXPECT_EQ(response.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_TRUE(bad.insert(response.id()).second) << "duplicate " << response.id();
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(ok, expected_ok);
  EXPECT_EQ(bad, expected_bad);
}

TEST_F(ServerE2ETest, BadInputsNameTheItemAndTheServerKeepsServing) {
  for (const char* broken :
       {"images/truncated.jpg", "images/not_an_image.jpg", "images/bomb_100k.png"}) {
    pb::EmbedImageRequest request;
    request.add_images()->set_encoded(ReadShared(kPhotos[0]));
    request.add_images()->set_encoded(ReadShared(broken));
    pb::EmbedImageResponse response;
    auto context = Context();
    const grpc::Status status =
        stack_.stub->EmbedImage(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << broken;
    EXPECT_EQ(BadField(status), "images[1]") << broken << ": " << status.error_message();
  }
  {
    pb::EmbedImageResponse response;
    auto context = Context();
    EXPECT_EQ(stack_.stub->EmbedImage(context.get(), pb::EmbedImageRequest(), &response)
                  .error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    pb::EmbedTextRequest request;
    for (int i = 0; i < 257; ++i) request.add_texts("x");
    pb::EmbedTextResponse response;
    auto context = Context();
    EXPECT_EQ(stack_.stub->EmbedText(context.get(), request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    pb::EmbedTextRequest request;
    request.add_texts("fine");
    request.add_texts(std::string(2000, 'w') + " very long");
    request.set_truncate(false);
    pb::EmbedTextResponse response;
    auto context = Context();
    const grpc::Status status = stack_.stub->EmbedText(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), "texts[1]");
  }
  {
    pb::EmbedImageRequest request;
    auto* raw = request.add_images()->mutable_raw();
    raw->set_width(100000);
    raw->set_height(100000);
    raw->set_rgb8("abc");
    pb::EmbedImageResponse response;
    auto context = Context();
    const grpc::Status status =
        stack_.stub->EmbedImage(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(BadField(status), "images[0]");
  }
  // Still serving.
  pb::EmbedTextRequest request;
  request.add_texts("still here");
  pb::EmbedTextResponse response;
  auto context = Context();
  EXPECT_TRUE(stack_.stub->EmbedText(context.get(), request, &response).ok());
}

// Items queued for a batch that would run after their deadline are never computed:
// the call reaches the engine, its deadline passes while it waits, and the batch
// that runs later holds none of its images.
TEST(ServerE2EDeadlineTest, ExpiredDeadlineItemsAreNeverComputed) {
  EmbeddingEngineOptions options;
  options.max_queue_delay = absl::Seconds(4);
  options.wait_only_for_announced = false;  // a partial batch waits out the delay
  Stack stack = Start(options);
  const int64_t before = stack.engine->computed_images();
  pb::EmbedImageRequest request;
  for (int i = 0; i < 8; ++i) {
    request.add_images()->set_encoded(ReadShared("images/astronaut.png"));
  }
  auto call = testing::StartCall(stack.stub->async(), &testing::Rpc::EmbedImage, request,
                                 absl::Now() + absl::Seconds(2));
  // Queued, well before the deadline.
  EXPECT_TRUE(testing::PollUntil([&] { return stack.engine->QueuedImages() == 8; }));
  ASSERT_TRUE(call->Await(absl::Seconds(30)));
  EXPECT_EQ(call->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // Past the time the partial batch would have run.
  EXPECT_TRUE(testing::PollUntil([&] { return stack.engine->pending_requests() == 0; },
                                 absl::Seconds(30)));
  EXPECT_EQ(stack.engine->QueuedImages(), 0);
  EXPECT_EQ(stack.engine->computed_images(), before);
  stack.server->Shutdown(absl::Seconds(5));
  stack.engine->Shutdown();
}

// A cancelled call's items leave the queue at once (the service's OnCancel() asks the
// engine to drop them, which answers the call inside it), not an hour later when the
// partial batch they wait in would run.
TEST(ServerE2ECancelTest, CancelledCallsLeaveTheQueueAtOnce) {
  EmbeddingEngineOptions options;
  options.max_queue_delay = absl::Hours(1);
  options.wait_only_for_announced = false;  // a partial batch waits out the delay
  Stack stack = Start(options);
  const auto queued_texts = [&](int n) {
    return testing::PollUntil([&] { return stack.engine->QueuedTexts() == n; });
  };

  pb::EmbedTextRequest request;
  request.add_texts("a cat");
  request.add_texts("a dog");
  auto call = testing::StartCall(stack.stub->async(), &testing::Rpc::EmbedText, request);
  ASSERT_TRUE(queued_texts(2));
  call->context.TryCancel();
  ASSERT_TRUE(call->Await(absl::Seconds(30)));
  EXPECT_EQ(call->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(queued_texts(0));
  EXPECT_TRUE(testing::PollUntil([&] { return stack.engine->pending_requests() == 0; }));

  // A stream's queued item too.
  grpc::ClientContext stream_context;
  auto stream = stack.stub->EmbedStream(&stream_context);
  pb::EmbedStreamRequest item;
  item.set_id("a");
  item.set_text("a bird");
  ASSERT_TRUE(stream->Write(item));
  ASSERT_TRUE(queued_texts(1));
  stream_context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(queued_texts(0));
  EXPECT_TRUE(testing::PollUntil([&] { return stack.engine->pending_requests() == 0; }));

  stack.server->Shutdown(absl::Seconds(5));
  stack.engine->Shutdown();
}

// A call whose items do not fit in what is left of the queue is refused whole, with a
// delay to retry after; a call that fits is served, and so are the items that were
// waiting. The queue stays full by construction: a partial batch waits an hour.
TEST(ServerE2EOverloadTest,
     ACallThatDoesNotFitTheQueueGetsResourceExhaustedWithRetryInfo) {
  EmbeddingEngineOptions options;
  options.max_batch_size = 2;
  options.max_queue_size = 2;
  options.max_queue_delay = absl::Hours(1);
  options.wait_only_for_announced = false;  // a partial batch waits out the delay
  ClipServiceOptions service;  // limits no larger than the queue (ClipService::Create)
  service.limits.max_items_per_request = 2;
  service.max_classify_prompts = 2;
  Stack stack = Start(options, service);
  const auto text_request = [](std::initializer_list<const char*> texts) {
    pb::EmbedTextRequest request;
    for (const char* text : texts) request.add_texts(text);
    return request;
  };

  auto waiting = testing::StartCall(stack.stub->async(), &testing::Rpc::EmbedText,
                                    text_request({"a cat"}));
  ASSERT_TRUE(testing::PollUntil([&] { return stack.engine->QueuedTexts() == 1; }));

  pb::EmbedTextResponse refused_response;
  auto context = Context(absl::Seconds(10));  // admitted, it would wait the hour
  const grpc::Status refused = stack.stub->EmbedText(
      context.get(), text_request({"a dog", "a bird"}), &refused_response);
  ASSERT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  EXPECT_GT(RetryInfoDelay(FromGrpcStatus(refused)), absl::ZeroDuration());
  EXPECT_EQ(stack.engine->QueuedTexts(), 1);  // none of the refused call's items

  // One more item fills the batch, which runs at once with the waiting item.
  auto fits = testing::StartCall(stack.stub->async(), &testing::Rpc::EmbedText,
                                 text_request({"a fox"}));
  ASSERT_TRUE(fits->Await(absl::Seconds(30)));
  ASSERT_TRUE(waiting->Await(absl::Seconds(30)));
  EXPECT_TRUE(fits->status.ok()) << fits->status.error_message();
  EXPECT_TRUE(waiting->status.ok()) << waiting->status.error_message();
  EXPECT_EQ(fits->response.embeddings_size(), 1);
  EXPECT_EQ(waiting->response.embeddings_size(), 1);
  stack.server->Shutdown(absl::Seconds(5));
  stack.engine->Shutdown();
}

// Under a burst of calls on a tiny queue, every call ends either served or refused with
// RetryInfo: never with another error, and never hung. (Which calls are refused
// depends on timing; the test above pins the refusal itself down.)
TEST(ServerE2EOverloadTest, ABurstOnATinyQueueEndsEachCallServedOrRefusedWithRetryInfo) {
  EmbeddingEngineOptions options;
  options.max_batch_size = 1;
  options.max_queue_size = 2;
  ClipServiceOptions service;
  service.limits.max_items_per_request = 2;
  service.max_classify_prompts = 2;
  Stack stack = Start(options, service);
  constexpr int kCalls = 40;
  std::vector<grpc::Status> statuses(kCalls);
  std::vector<std::thread> threads;
  for (int t = 0; t < kCalls; ++t) {
    threads.emplace_back([&, t] {
      pb::EmbedTextRequest request;
      request.add_texts(absl::StrCat("burst text ", t));
      request.add_texts(absl::StrCat("second text ", t));
      pb::EmbedTextResponse response;
      auto context = Context();
      statuses[t] = stack.stub->EmbedText(context.get(), request, &response);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) {
      ++ok;
      continue;
    }
    ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_GT(RetryInfoDelay(FromGrpcStatus(s)), absl::ZeroDuration());
  }
  EXPECT_GT(ok, 0);  // the first call finds the queue empty, and fits it
  stack.server->Shutdown(absl::Seconds(5));
  stack.engine->Shutdown();
}

}  // namespace
}  // namespace clipserve
