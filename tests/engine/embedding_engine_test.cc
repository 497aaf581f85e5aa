#include "server/engine/embedding_engine.h"

#include <torch/cuda.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/common/fake_clock.h"
#include "server/common/status_payloads.h"
#include "server/image/image_decoder.h"
#include "server/image/preprocessor.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "server/tokenizer/bpe_vocabulary.h"
#include "tests/testing/shared_data.h"
#include "tests/testing/tiny_clip_config.h"

namespace clipserve {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string ReadShared(const std::string& relative) {
  const std::string path = testing::SharedPath(relative);
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The shared folder's files, as clients send them (encoded).
std::vector<ImageInput> EncodedImages(std::initializer_list<const char*> files) {
  std::vector<ImageInput> images;
  for (const char* f : files) {
    ImageInput input;
    input.encoded = ReadShared(f);
    images.push_back(std::move(input));
  }
  return images;
}

// The same image as raw RGB8 pixels, decoded here from `encoded`.
ImageInput Raw(const std::string& encoded) {
  const absl::StatusOr<image::RgbImage> decoded = image::DecodeImage(encoded);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  ImageInput raw;
  raw.is_raw = true;
  if (!decoded.ok()) return raw;
  raw.width = decoded->width;
  raw.height = decoded->height;
  raw.rgb8.assign(decoded->pixels.begin(), decoded->pixels.end());
  return raw;
}

// Embeds through `engine` and waits for the answer.
absl::StatusOr<EmbedResult> EmbedImagesAndWait(Engine& engine,
                                               std::vector<ImageInput> images,
                                               EmbedOptions options = {}) {
  absl::Notification done;
  absl::StatusOr<EmbedResult> out;
  engine.EmbedImages(std::move(images), options, "images",
                     [&](absl::StatusOr<EmbedResult> r) {
                       out = std::move(r);
                       done.Notify();
                     });
  done.WaitForNotification();
  return out;
}

absl::StatusOr<EmbedResult> EmbedTextsAndWait(Engine& engine,
                                              std::vector<std::string> texts,
                                              EmbedOptions options = {}) {
  absl::Notification done;
  absl::StatusOr<EmbedResult> out;
  engine.EmbedTexts(std::move(texts), options, "texts",
                    [&](absl::StatusOr<EmbedResult> r) {
                      out = std::move(r);
                      done.Notify();
                    });
  done.WaitForNotification();
  return out;
}

class EmbeddingEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = ClipModel::Create(testing::TinyClipConfig(), /*seed=*/3);
    ASSERT_TRUE(model.ok()) << model.status();
    reference_ = *ClipModel::Create(testing::TinyClipConfig(), /*seed=*/3);
    LoadedModel loaded;
    loaded.model = *std::move(model);
    loaded.name = "tiny";
    loaded.random_weights = true;
    auto vocab =
        LoadOpenAiVocabulary(testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz"));
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    auto tokenizer = BpeTokenizer::Create(*std::move(vocab), {});
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *BpeTokenizer::Create(
        *LoadOpenAiVocabulary(testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz")),
        {});
    EmbeddingEngineOptions options;
    options.max_batch_size = 4;
    auto engine =
        EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  absl::StatusOr<EmbedResult> Images(std::vector<ImageInput> images,
                                     EmbedOptions options = {}) {
    return EmbedImagesAndWait(*engine_, std::move(images), options);
  }

  absl::StatusOr<EmbedResult> Texts(std::vector<std::string> texts,
                                    EmbedOptions options = {}) {
    return EmbedTextsAndWait(*engine_, std::move(texts), options);
  }

  // The model run directly on one preprocessed image (the reference path).
  std::vector<float> DirectImage(const std::string& encoded) {
    auto decoded = image::DecodeImage(encoded);
    EXPECT_TRUE(decoded.ok());
    auto pre = image::Preprocessor::Create(
        {32, testing::TinyClipConfig().image_mean, testing::TinyClipConfig().image_std});
    torch::Tensor x = torch::empty({1, 3, 32, 32});
    EXPECT_TRUE(
        (*pre)->PreprocessInto(*decoded, {x.data_ptr<float>(), size_t(x.numel())}).ok());
    auto features = reference_->EncodeImage(x, true);
    EXPECT_TRUE(features.ok());
    return std::vector<float>(features->data_ptr<float>(),
                              features->data_ptr<float>() + 32);
  }

  std::vector<float> DirectText(const std::string& text) {
    auto encoded = tokenizer_->Encode(text);
    EXPECT_TRUE(encoded.ok());
    torch::Tensor ids = torch::zeros({1, 77}, torch::kLong);
    for (size_t k = 0; k < encoded->ids.size(); ++k) ids[0][k] = encoded->ids[k];
    auto features = reference_->EncodeText(ids, true);
    EXPECT_TRUE(features.ok());
    return std::vector<float>(features->data_ptr<float>(),
                              features->data_ptr<float>() + 32);
  }

  std::unique_ptr<ClipModel> reference_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::unique_ptr<EmbeddingEngine> engine_;
};

void ExpectRowNear(const EmbedResult& result, int row, const std::vector<float>& expected,
                   float tolerance) {
  ASSERT_EQ(result.dim, static_cast<int>(expected.size()));
  for (int k = 0; k < result.dim; ++k) {
    EXPECT_NEAR(result.row(row)[k], expected[k], tolerance)
        << "row " << row << " dim " << k;
  }
}

TEST_F(EmbeddingEngineTest, ImageRowsMatchTheModelRunDirectly) {
  const std::vector<ImageInput> inputs =
      EncodedImages({"images/chelsea.png", "images/rocket.jpg", "images/coffee.png",
                     "images/chelsea.webp", "images/chelsea.gif", "images/camera.png"});
  auto result = Images(inputs);  // 6 images, max batch 4: split across batches
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->rows(), 6);
  for (int i = 0; i < 6; ++i)
    ExpectRowNear(*result, i, DirectImage(inputs[i].encoded), 1e-5);
  EXPECT_TRUE(result->truncated.empty());
}

// The tokenizer reads a typed "<|endoftext|>" as the end token, and the reference
// model stops at the first one: what follows it changes nothing.
TEST_F(EmbeddingEngineTest, TextEndsAtATypedEndToken) {
  auto result = Texts({"a photo of a dog <|endoftext|> and a cat", "a photo of a dog",
                       "a photo of a dog and a cat"});
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectRowNear(*result, 0, DirectText("a photo of a dog"), 1e-5);
  for (int k = 0; k < result->dim; ++k) {
    EXPECT_NEAR(result->row(0)[k], result->row(1)[k], 1e-5) << k;
  }
  float farthest = 0;
  for (int k = 0; k < result->dim; ++k) {
    farthest = std::max(farthest, std::abs(result->row(0)[k] - result->row(2)[k]));
  }
  EXPECT_GT(farthest, 1e-3);
  EXPECT_EQ(result->num_tokens[0], 11);  // every token is still counted
}

TEST_F(EmbeddingEngineTest, RawPixelsEqualTheSameImageEncoded) {
  ImageInput encoded;
  encoded.encoded = ReadShared("images/chelsea.png");
  const ImageInput raw = Raw(encoded.encoded);
  ASSERT_GT(raw.width, 0);
  auto result = Images({encoded, raw});
  ASSERT_TRUE(result.ok()) << result.status();
  // Same pixels; rows of one batch may differ in the last bits (GEMM tiling).
  for (int k = 0; k < 32; ++k) EXPECT_NEAR(result->row(0)[k], result->row(1)[k], 1e-5);
}

TEST_F(EmbeddingEngineTest, TextRowsMatchPaddingTo77AndReportTokens) {
  const std::vector<std::string> texts = {"a photo of a cat", "", "a diagram",
                                          std::string(400, 'x') + " overflow"};
  auto result = Texts(texts);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->rows(), 4);
  for (int i = 0; i < 4; ++i) ExpectRowNear(*result, i, DirectText(texts[i]), 1e-5);
  EXPECT_EQ(result->num_tokens[1], 2);
  EXPECT_FALSE(result->truncated[0]);
  EXPECT_TRUE(result->truncated[3]);
  EXPECT_EQ(result->num_tokens[3], 77);
}

TEST_F(EmbeddingEngineTest, UnnormalizedRowsHaveTheModelsNorm) {
  EmbedOptions options;
  options.normalize = false;
  auto raw = Texts({"a dog"}, options);
  auto unit = Texts({"a dog"});
  ASSERT_TRUE(raw.ok() && unit.ok());
  double norm = 0;
  for (int k = 0; k < 32; ++k) norm += double(raw->row(0)[k]) * raw->row(0)[k];
  norm = std::sqrt(norm);
  EXPECT_GT(std::abs(norm - 1.0), 1e-3);
  for (int k = 0; k < 32; ++k) EXPECT_NEAR(raw->row(0)[k] / norm, unit->row(0)[k], 1e-6);
}

TEST_F(EmbeddingEngineTest, BrokenImageNamesTheItem) {
  ImageInput good;
  good.encoded = ReadShared("images/chelsea.png");
  ImageInput bad;
  bad.encoded = ReadShared("images/truncated.jpg");
  auto result = Images({good, bad});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("images[1]"));
  EXPECT_TRUE(result.status().GetPayload(kBadRequestPayloadUrl).has_value());
}

TEST_F(EmbeddingEngineTest, OverLongTextWithoutTruncationIsRejected) {
  EmbedOptions options;
  options.truncate = false;
  auto result = Texts({"fine", std::string(400, 'x') + " too long"}, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("texts[1]"));
}

TEST_F(EmbeddingEngineTest, ErrorsUseTheCallersItemNumbersWhenGiven) {
  EmbedOptions options;
  options.truncate = false;
  options.item_numbers = {5, 9};
  auto texts = Texts({"fine", std::string(400, 'x') + " too long"}, options);
  EXPECT_THAT(texts.status().message(), HasSubstr("texts[9]"));
  ImageInput bad;
  bad.encoded = ReadShared("images/truncated.jpg");
  options.item_numbers = {4};
  auto images = Images({bad}, options);
  EXPECT_THAT(images.status().message(), HasSubstr("images[4]"));
}

TEST_F(EmbeddingEngineTest, CancelledAndExpiredRequestsAreNotComputed) {
  const int64_t computed = engine_->computed_texts();
  const int64_t computed_images = engine_->computed_images();
  auto flag = std::make_shared<CancellationFlag>();
  flag->Cancel();
  EmbedOptions cancelled;
  cancelled.cancellation = flag;
  EXPECT_EQ(Texts({"a"}, cancelled).status().code(), absl::StatusCode::kCancelled);
  EmbedOptions expired;
  expired.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(Texts({"a"}, expired).status().code(), absl::StatusCode::kDeadlineExceeded);
  // gRPC cancels a call when its deadline passes: then the deadline is the reason.
  EmbedOptions both = expired;
  both.cancellation = flag;
  EXPECT_EQ(Texts({"a"}, both).status().code(), absl::StatusCode::kDeadlineExceeded);
  ImageInput image;
  image.encoded = ReadShared("images/chelsea.png");
  EXPECT_EQ(Images({image}, both).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(engine_->computed_texts(), computed);
  EXPECT_EQ(engine_->computed_images(), computed_images);
  EXPECT_EQ(engine_->pending_requests(), 0);
}

// The first text is over the context and truncate is off: tokenized, it would fail
// with INVALID_ARGUMENT. A dead call must end before it is.
TEST_F(EmbeddingEngineTest, TokenizeOfADeadCallTokenizesNothing) {
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "cat ";
  const auto tokenize = [&](EmbedOptions options) {
    options.truncate = false;
    absl::Notification done;
    absl::StatusOr<std::vector<TokenizedResult>> out;
    engine_->Tokenize({long_text, "a dog"}, options, "texts",
                      [&](absl::StatusOr<std::vector<TokenizedResult>> r) {
                        out = std::move(r);
                        done.Notify();
                      });
    done.WaitForNotification();
    return out.status();
  };
  EmbedOptions cancelled;
  auto flag = std::make_shared<CancellationFlag>();
  flag->Cancel();
  cancelled.cancellation = flag;
  EXPECT_EQ(tokenize(cancelled).code(), absl::StatusCode::kCancelled);
  EmbedOptions expired;
  expired.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(tokenize(expired).code(), absl::StatusCode::kDeadlineExceeded);
  expired.cancellation = flag;  // as gRPC cancels a call past its deadline
  EXPECT_EQ(tokenize(expired).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(tokenize(EmbedOptions{}).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EmbeddingEngineTest, TokenizeAndDescription) {
  absl::Notification done;
  absl::StatusOr<std::vector<TokenizedResult>> out;
  engine_->Tokenize({"a photo of a cat"}, EmbedOptions{}, "texts",
                    [&](absl::StatusOr<std::vector<TokenizedResult>> r) {
                      out = std::move(r);
                      done.Notify();
                    });
  done.WaitForNotification();
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].ids,
            (std::vector<int32_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  const ModelDescription& d = engine_->description();
  EXPECT_EQ(d.embed_dim, 32);
  EXPECT_EQ(d.vision_architecture, "vit");
  EXPECT_EQ(d.context_length, 77);
  EXPECT_EQ(d.precision, "fp32");
  EXPECT_EQ(d.device, "cpu");
  EXPECT_TRUE(d.random_weights);
  EXPECT_TRUE(engine_->healthy());
  EXPECT_EQ(engine_->workers(), 1);  // options.workers 0: one per modality on the CPU
}

TEST(EmbeddingEngineOptionsTest, NegativeWorkersAreRejected) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  EmbeddingEngineOptions options;
  options.workers = -1;
  auto engine = EmbeddingEngine::Create(
      std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
}

// A vocabulary with a token above its end token (id 514 > 513): each text still ends
// at its end token, where argmax would have stopped at the higher id.
TEST(EmbeddingEngineTextTest, TextsEndAtTheEndTokenWhenHigherIdsExist) {
  BpeVocabulary vocab = ByteLevelDemoVocabulary();
  vocab.tokens.push_back("qq</w>");  // id 514
  vocab.merges.emplace_back("q", "q</w>");
  auto tokenizer = BpeTokenizer::Create(std::move(vocab), {});
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<int32_t> ids = (*tokenizer)->Encode("a qq")->ids;
  ASSERT_EQ(ids.size(), 4u);  // start, "a", "qq", end
  ASSERT_EQ(ids[2], 514);
  ASSERT_EQ(ids[3], 513);
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  const std::unique_ptr<ClipModel> direct =
      *ClipModel::Create(testing::TinyClipConfig(), 5);
  auto engine = EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), {});
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto result = EmbedTextsAndWait(**engine, {"a qq"});
  ASSERT_TRUE(result.ok()) << result.status();

  const torch::Tensor row =
      torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong)
          .unsqueeze(0);
  // Pooled at the end token: the whole row. argmax would pool at 514, i.e. the row
  // without its end token.
  const torch::Tensor at_end = *direct->EncodeText(row, true, 513);
  const torch::Tensor at_argmax = *direct->EncodeText(row.narrow(1, 0, 3), true);
  float to_end = 0, to_argmax = 0;
  for (int k = 0; k < result->dim; ++k) {
    to_end = std::max(to_end, std::abs(result->row(0)[k] - at_end[0][k].item<float>()));
    to_argmax =
        std::max(to_argmax, std::abs(result->row(0)[k] - at_argmax[0][k].item<float>()));
  }
  EXPECT_LE(to_end, 1e-5);
  EXPECT_GT(to_argmax, 1e-3);
}

TEST_F(EmbeddingEngineTest, AfterShutdownRequestsAreUnavailable) {
  engine_->Shutdown();
  EXPECT_FALSE(engine_->healthy());
  EXPECT_EQ(Texts({"a"}).status().code(), absl::StatusCode::kUnavailable);
}

// With an hour of queue delay, a lone request would hang if its partial batch waited
// for company that is not on its way.
TEST(EmbeddingEngineLatencyTest, ALoneRequestDoesNotWaitForTheQueueDelay) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), /*seed=*/3);
  loaded.name = "tiny";
  auto tokenizer = BpeTokenizer::Create(
      *LoadOpenAiVocabulary(testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz")),
      {});
  ASSERT_TRUE(tokenizer.ok());
  EmbeddingEngineOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Hours(1);
  auto engine =
      EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (int round = 0; round < 3; ++round) {
    absl::Notification texts_done, images_done;
    (*engine)->EmbedTexts({"a lone caption", "and its friend"}, {}, "texts",
                          [&](absl::StatusOr<EmbedResult> r) {
                            EXPECT_TRUE(r.ok()) << r.status();
                            texts_done.Notify();
                          });
    ImageInput image;
    image.encoded = ReadShared("images/chelsea.png");
    (*engine)->EmbedImages({image, image}, {}, "images",
                           [&](absl::StatusOr<EmbedResult> r) {
                             EXPECT_TRUE(r.ok()) << r.status();
                             images_done.Notify();
                           });
    EXPECT_TRUE(texts_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    EXPECT_TRUE(images_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  }
}

// An engine on the tiny model (vocabulary of 1000) whose tokenizer makes "qq" id 1200,
// past the model's table, as a --tokenizer that does not match the model would.
std::unique_ptr<EmbeddingEngine> EngineWithATokenPastTheModel(
    const EmbeddingEngineOptions& options) {
  ClipConfig config = testing::TinyClipConfig();
  config.text.vocab_size = 1000;
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(config, 5);
  BpeVocabulary vocab = ByteLevelDemoVocabulary();  // bytes, then start and end tokens
  for (int i = 0; vocab.tokens.size() < 1200; ++i)
    vocab.tokens.push_back(absl::StrCat("unused", i));
  vocab.tokens.push_back("qq</w>");  // id 1200
  vocab.merges.emplace_back("q", "q</w>");
  auto tokenizer = BpeTokenizer::Create(std::move(vocab), {});
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return nullptr;
  EXPECT_EQ((*tokenizer)->Encode("qq")->ids[1], 1200);
  auto engine =
      EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// Such a text fails its own request, before it joins a batch: the texts batched with
// it are answered, and no failed batch sends the engine to probe its device.
TEST(EmbeddingEngineTextTest, ATokenPastTheModelFailsOnlyItsRequest) {
  std::atomic<int> probes{0};
  EmbeddingEngineOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Hours(1);  // a batch waits for every announced text
  options.device_probe_for_test = [&] {
    ++probes;
    return absl::OkStatus();
  };
  auto engine = EngineWithATokenPastTheModel(options);
  ASSERT_NE(engine, nullptr);
  absl::StatusOr<EmbedResult> good, bad;
  absl::Notification good_done, bad_done;
  EmbedOptions renumbered;
  renumbered.item_numbers = {4, 7};
  engine->EmbedTexts({"a", "a qq"}, renumbered, "texts",
                     [&](absl::StatusOr<EmbedResult> r) {
                       bad = std::move(r);
                       bad_done.Notify();
                     });
  engine->EmbedTexts({"a", "b"}, {}, "texts", [&](absl::StatusOr<EmbedResult> r) {
    good = std::move(r);
    good_done.Notify();
  });
  ASSERT_TRUE(bad_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_TRUE(good_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInternal);  // not the caller's fault
  EXPECT_THAT(bad.status().message(), AllOf(HasSubstr("texts[7]"), HasSubstr("id 1200"),
                                            HasSubstr("1000"), HasSubstr("--tokenizer")));
  EXPECT_EQ(probes, 0);
  EXPECT_TRUE(EmbedTextsAndWait(*engine, {"a"}).ok());
}

// A tiny engine whose model runs over texts fail with INTERNAL while `*fail` is true,
// as a bug in one op would.
std::unique_ptr<EmbeddingEngine> EngineWithAFailingModel(EmbeddingEngineOptions options,
                                                         const std::atomic<bool>* fail) {
  options.model_fault_for_test = [fail](Modality modality, int) {
    return modality == Modality::kText && *fail
               ? absl::InternalError("simulated failure in the model (test)")
               : absl::OkStatus();
  };
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  auto engine = EmbeddingEngine::Create(
      std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

TEST(EmbeddingEngineFailureTest, AFailingBatchFailsOnlyItsRequests) {
  std::atomic<bool> fail{false};
  EmbeddingEngineOptions options;
  options.max_queue_delay = absl::ZeroDuration();
  auto engine = EngineWithAFailingModel(options, &fail);
  ASSERT_NE(engine, nullptr);
  auto run = [&](std::string text) {
    return EmbedTextsAndWait(*engine, {std::move(text)}).status();
  };
  EXPECT_TRUE(run("a").ok());
  fail = true;
  const absl::Status failed = run("b");
  fail = false;
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);  // not the caller's fault
  EXPECT_THAT(failed.message(), HasSubstr("simulated failure in the model"));
  EXPECT_TRUE(run("a").ok());      // the engine keeps serving
  EXPECT_TRUE(engine->healthy());  // the CPU passes its probe
}

// After a batch fails for a reason other than memory, the engine probes its device. A
// CUDA context broken by a kernel fault fails every later call, so a failing probe
// marks the engine unhealthy for good (health NOT_SERVING: the orchestrator restarts
// it); a passing one means the batch failed for its own reason.
TEST(EmbeddingEngineFailureTest, ADeviceFailingItsProbeAfterAFailedBatchIsUnhealthy) {
  std::atomic<int> probes{0};
  std::atomic<bool> fail{false};
  std::atomic<absl::StatusCode> device{absl::StatusCode::kOk};
  EmbeddingEngineOptions options;
  options.max_queue_delay = absl::Hours(1);  // a request's texts form one batch
  options.simulate_out_of_memory_above_for_test = 1;
  options.device_probe_for_test = [&]() -> absl::Status {
    ++probes;
    return absl::Status(device, "CUDA error: an illegal memory access was encountered");
  };
  auto engine = EngineWithAFailingModel(options, &fail);
  ASSERT_NE(engine, nullptr);
  auto run = [&](std::vector<std::string> texts) {
    return EmbedTextsAndWait(*engine, std::move(texts)).status();
  };
  EXPECT_TRUE(run({"a"}).ok());
  EXPECT_EQ(probes, 0);
  // Out of memory (4 texts, then halves of 2, over the limit of 1): no probe.
  EXPECT_EQ(run({"a", "b", "c", "d"}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(probes, 0);
  fail = true;
  EXPECT_EQ(run({"a"}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(probes, 1);
  EXPECT_TRUE(engine->healthy());
  // A probe short of memory says nothing about the context.
  device = absl::StatusCode::kResourceExhausted;
  EXPECT_EQ(run({"a"}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(probes, 2);
  EXPECT_TRUE(engine->healthy());
  device = absl::StatusCode::kInternal;
  EXPECT_EQ(run({"a"}).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(probes, 3);
  EXPECT_FALSE(engine->healthy());
  // For good: the context does not come back, whatever a later batch does.
  device = absl::StatusCode::kOk;
  fail = false;
  EXPECT_TRUE(run({"a"}).ok());
  EXPECT_FALSE(engine->healthy());
}

// An engine on the tiny model (seed 5) on `device` in `precision`, with the demo
// vocabulary; batches of up to 8, formed only once every announced item is queued
// (an hour of queue delay). `tune` adjusts the options further. nullptr (after
// failing the test) when anything fails.
std::unique_ptr<EmbeddingEngine> MakeTinyEngine(
    const std::function<void(EmbeddingEngineOptions&)>& tune = {},
    const torch::Device& device = torch::kCPU,
    Precision precision = Precision::kFloat32) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  const absl::Status moved = loaded.model->To(device, precision);
  EXPECT_TRUE(moved.ok()) << moved;
  EmbeddingEngineOptions options;
  options.max_batch_size = 8;
  options.max_queue_delay = absl::Hours(1);
  if (tune) tune(options);
  auto engine = EmbeddingEngine::Create(
      std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return moved.ok() && engine.ok() ? *std::move(engine) : nullptr;
}

// A model_fault_for_test that holds the first batch in the model, `running` notified,
// until `release` is.
std::function<absl::Status(Modality, int)> HoldFirstBatch(absl::Notification& running,
                                                          absl::Notification& release) {
  return [&running, &release](Modality, int) {
    if (!running.HasBeenNotified()) {
      running.Notify();
      release.WaitForNotification();
    }
    return absl::OkStatus();
  };
}

// Watches the image queue of an engine whose first batch HoldFirstBatch() holds:
// notifies `queued` once an image waits in the queue while that batch runs (the first
// image has left the queue then), and counts the images decoded.
struct ImageQueueWatch : EngineObserver {
  explicit ImageQueueWatch(const absl::Notification& running) : running(running) {}
  void OnPreprocessed(Modality modality, absl::Duration) override {
    if (modality == Modality::kImage) ++decoded;
  }
  void OnQueueDepth(Modality modality, int items) override {
    if (modality == Modality::kImage && items == 1 && running.HasBeenNotified() &&
        !queued.HasBeenNotified()) {
      queued.Notify();
    }
  }
  const absl::Notification& running;
  std::atomic<int> decoded{0};
  absl::Notification queued;
};

// Sets `options` for one worker, batches of one item and room for one queued item, the
// first batch held by HoldFirstBatch() while `watch` watches the image queue.
void OneQueuedItemBehindAHeldBatch(EmbeddingEngineOptions& options,
                                   ImageQueueWatch& watch, absl::Notification& running,
                                   absl::Notification& release) {
  options.observer = &watch;
  options.workers = 1;
  options.max_batch_size = 1;
  options.max_queue_size = 1;
  options.model_fault_for_test = HoldFirstBatch(running, release);
}

// An EmbedCallback that expects success, then notifies `done`.
EmbedCallback ExpectOkThenNotify(absl::Notification* done) {
  return [done](absl::StatusOr<EmbedResult> result) {
    EXPECT_TRUE(result.ok()) << result.status();
    done->Notify();
  };
}

// Expects row i of `all` to equal the single row `alone(i)` gives, for i < n.
void ExpectRowsMatchAlone(const EmbedResult& all, int n,
                          const std::function<absl::StatusOr<EmbedResult>(int)>& alone) {
  for (int i = 0; i < n; ++i) {
    const absl::StatusOr<EmbedResult> one = alone(i);
    ASSERT_TRUE(one.ok()) << one.status();
    for (int k = 0; k < one->dim; ++k) {
      EXPECT_NEAR(all.row(i)[k], one->row(0)[k], 1e-5) << "item " << i << " dim " << k;
    }
  }
}

// Expects each row of `got` within cosine `at_least` of the same row of `expected`
// (both unit vectors).
void ExpectCosineAtLeast(const absl::StatusOr<EmbedResult>& got,
                         const absl::StatusOr<EmbedResult>& expected, double at_least) {
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_EQ(got->rows(), expected->rows());
  for (int i = 0; i < got->rows(); ++i) {
    double dot = 0;
    for (int k = 0; k < got->dim; ++k)
      dot += double(got->row(i)[k]) * expected->row(i)[k];
    EXPECT_GE(dot, at_least) << "row " << i;
  }
}

// A finite weight can still overflow: near the largest float the towers give NaN,
// and every call would be answered OK with it. The warm-up refuses such a model.
TEST(EmbeddingEngineWarmUpTest, ATowerGivingNonFiniteValuesFailsCreate) {
  for (const char* key : {"visual.proj", "text_projection"}) {
    SCOPED_TRACE(key);
    LoadedModel loaded;
    loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
    {
      torch::NoGradGuard no_grad;
      loaded.model->NamedTensors().at(key).fill_(3e38f);
    }
    auto engine = EmbeddingEngine::Create(
        std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), {});
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(
        engine.status().message(),
        HasSubstr(absl::StrCat(std::string(key) == "visual.proj" ? "image" : "text",
                               " tower gives NaN or infinite values")));
  }
}

// Weights that overflow only on some inputs pass the warm-up (a blank image is all
// zeros, and so is its patch embedding here): such an item fails INTERNAL rather than
// being answered OK with NaN, and the other tower still serves.
TEST(EmbeddingEngineWarmUpTest, AnItemTheModelGivesNonFiniteValuesForFails) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  {
    torch::NoGradGuard no_grad;
    loaded.model->NamedTensors().at("visual.conv1.weight").fill_(3e38f);
  }
  auto engine = EmbeddingEngine::Create(
      std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), {});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const absl::StatusOr<EmbedResult> image =
      EmbedImagesAndWait(**engine, EncodedImages({"images/chelsea.png"}));
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInternal);
  // Named, as the caller numbers it, so that the caller can tell which input to drop.
  EXPECT_THAT(image.status().message(),
              HasSubstr("images[0]: the model gave NaN or infinite values"));
  EXPECT_TRUE(EmbedTextsAndWait(**engine, {"a cat"}).ok());
}

// Callers that send the same new text at once each miss the cache; when their items
// share a batch, the model runs the text once. The batch forms only when full (4), so
// both requests' items are in it: not before (wait_only_for_announced would run the
// first request's three alone when the second has not been announced yet).
TEST(EmbeddingEngineRepeatsTest, IdenticalTextsInABatchRunOnceAndAnswerEveryItem) {
  auto engine = MakeTinyEngine([](EmbeddingEngineOptions& options) {
    options.max_batch_size = 4;
    options.workers = 1;
    options.wait_only_for_announced = false;
  });
  ASSERT_NE(engine, nullptr);
  absl::Notification first_done, second_done;
  absl::StatusOr<EmbedResult> first, second;
  engine->EmbedTexts({"a red bus", "two birds", "a red bus"}, {}, "texts",
                     [&](absl::StatusOr<EmbedResult> r) {
                       first = std::move(r);
                       first_done.Notify();
                     });
  engine->EmbedTexts({"a red bus"}, {}, "texts", [&](absl::StatusOr<EmbedResult> r) {
    second = std::move(r);
    second_done.Notify();
  });
  first_done.WaitForNotification();
  second_done.WaitForNotification();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(engine->computed_texts(), 4);
  EXPECT_EQ(engine->repeated_texts(), 2);
  // Each row is its own text's embedding, computed alone.
  auto alone =
      MakeTinyEngine([](EmbeddingEngineOptions& options) { options.max_batch_size = 1; });
  ASSERT_NE(alone, nullptr);
  const std::vector<std::string> texts = {"a red bus", "two birds", "a red bus"};
  ExpectRowsMatchAlone(*first, 3,
                       [&](int i) { return EmbedTextsAndWait(*alone, {texts[i]}); });
  ExpectRowsMatchAlone(*second, 1,
                       [&](int) { return EmbedTextsAndWait(*alone, {"a red bus"}); });
  EXPECT_EQ(first->num_tokens[0], first->num_tokens[2]);
  EXPECT_EQ(second->num_tokens[0], first->num_tokens[0]);
  EXPECT_NE(first->num_tokens[1], 0);
}

// A batch that runs out of memory is retried once in two halves: each item still gets
// its own row, as computed alone; a half that runs out again fails only its items.
class EmbeddingEngineOutOfMemoryTest : public ::testing::Test {
 protected:
  // A tiny-model engine whose model runs fail above `limit` items.
  static std::unique_ptr<EmbeddingEngine> MakeEngine(int limit) {
    return MakeTinyEngine([limit](EmbeddingEngineOptions& options) {
      options.simulate_out_of_memory_above_for_test = limit;
    });
  }
};

TEST_F(EmbeddingEngineOutOfMemoryTest, TextsRetriedInHalvesMatchTextsEmbeddedAlone) {
  // Different lengths, so each half is padded to its own longest text.
  const std::vector<std::string> texts = {
      "a", "a cat on a mat", "dog", "x y z", "hello", "a long caption of a red bus",
      "b", "two birds"};
  auto retried = MakeEngine(/*limit=*/4);
  const absl::StatusOr<EmbedResult> all = EmbedTextsAndWait(*retried, texts);
  ASSERT_TRUE(all.ok()) << all.status();
  auto plain = MakeEngine(/*limit=*/0);
  ExpectRowsMatchAlone(*all, texts.size(),
                       [&](int i) { return EmbedTextsAndWait(*plain, {texts[i]}); });
  EXPECT_EQ(retried->computed_texts(), 8);
  // A limit of 2 fails both halves of the 8-text batch: the batch did form whole, so
  // the rows above came through the retry.
  auto tight = MakeEngine(/*limit=*/2);
  EXPECT_EQ(EmbedTextsAndWait(*tight, texts).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(EmbeddingEngineOutOfMemoryTest, HalvesThatRunOutAgainFailWithResourceExhausted) {
  auto engine = MakeEngine(/*limit=*/2);
  const absl::StatusOr<EmbedResult> result =
      EmbedTextsAndWait(*engine, {"a", "b", "c", "d", "e", "f", "g", "h"});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  // Retryable later, as a full queue is: the client retries only with a RetryInfo.
  EXPECT_EQ(GetRetryInfoPayload(result.status()), absl::Seconds(1));
  EXPECT_EQ(engine->computed_texts(), 0);
  // The engine keeps serving: a request within the limit runs.
  EXPECT_TRUE(EmbedTextsAndWait(*engine, {"a", "b"}).ok());
  EXPECT_TRUE(engine->healthy());
}

TEST_F(EmbeddingEngineOutOfMemoryTest, ImagesRetriedInHalvesMatchImagesEmbeddedAlone) {
  const std::vector<ImageInput> images =
      EncodedImages({"images/chelsea.png", "images/coffee.png", "images/rocket.jpg",
                     "images/astronaut.png"});
  auto retried = MakeEngine(/*limit=*/2);
  const absl::StatusOr<EmbedResult> all = EmbedImagesAndWait(*retried, images);
  ASSERT_TRUE(all.ok()) << all.status();
  auto plain = MakeEngine(/*limit=*/0);
  ExpectRowsMatchAlone(*all, images.size(),
                       [&](int i) { return EmbedImagesAndWait(*plain, {images[i]}); });
  // A limit of 1 fails both halves of the 4-image batch: the batch did form whole.
  auto tight = MakeEngine(/*limit=*/1);
  EXPECT_EQ(EmbedImagesAndWait(*tight, images).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// On a GPU (two workers with streams of their own, pinned batches, fp16), rows stay
// within cosine 0.999 of the CPU's fp32 rows, through the retry in halves too.
TEST_F(EmbeddingEngineOutOfMemoryTest, GpuRowsMatchCpuThroughTheRetry_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto gpu = MakeTinyEngine(
      [](EmbeddingEngineOptions& options) {
        options.simulate_out_of_memory_above_for_test = 4;
      },
      torch::Device(torch::kCUDA, 0), Precision::kFloat16);
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->workers(), 2);
  auto cpu = MakeEngine(/*limit=*/0);
  const std::vector<std::string> texts = {"a",     "a cat",     "dog", "x y z",
                                          "hello", "a red bus", "b",   "two birds"};
  ExpectCosineAtLeast(EmbedTextsAndWait(*gpu, texts), EmbedTextsAndWait(*cpu, texts),
                      0.999);
}

// resize_on_device: the preprocessing threads only decode, the batch worker resizes on
// the model's device (the CPU here) with the host's arithmetic, so every row equals
// the host-resized engine's.
class EmbeddingEngineDeviceResizeTest : public ::testing::Test {
 protected:
  // Each request forms one batch (MakeTinyEngine).
  static std::unique_ptr<EmbeddingEngine> MakeEngine(bool resize_on_device,
                                                     int64_t budget = int64_t{1} << 30,
                                                     int oom_limit = 0) {
    return MakeTinyEngine([&](EmbeddingEngineOptions& options) {
      options.resize_on_device = resize_on_device;
      options.max_device_resize_bytes = budget;
      options.simulate_out_of_memory_above_for_test = oom_limit;
    });
  }

  // Encoded photos of different sizes and formats, two palette images (which Pillow,
  // and so the host path, resizes with NEAREST), and one raw image.
  static std::vector<ImageInput> Inputs() {
    std::vector<ImageInput> images = EncodedImages(
        {"images/rocket.jpg", "images/coffee.png", "images/chelsea.webp",
         "images/very_wide.png", "images/chelsea.gif", "images/palette_gray.png"});
    images.push_back(Raw(ReadShared("images/astronaut.png")));
    return images;
  }

  // The inputs are the same bits (device_image_preprocessor_test); the model's own
  // runs differ in the last bits from one run to the next.
  static void ExpectSameRows(const EmbedResult& got, const EmbedResult& expected) {
    ASSERT_EQ(got.rows(), expected.rows());
    for (int i = 0; i < got.rows(); ++i) {
      for (int k = 0; k < got.dim; ++k) {
        EXPECT_NEAR(got.row(i)[k], expected.row(i)[k], 1e-6)
            << "item " << i << " dim " << k;
      }
    }
  }
};

TEST_F(EmbeddingEngineDeviceResizeTest, RowsEqualTheHostResizedEngines) {
  auto device = MakeEngine(/*resize_on_device=*/true);
  auto host = MakeEngine(/*resize_on_device=*/false);
  const absl::StatusOr<EmbedResult> on_device = EmbedImagesAndWait(*device, Inputs());
  const absl::StatusOr<EmbedResult> on_host = EmbedImagesAndWait(*host, Inputs());
  ASSERT_TRUE(on_device.ok()) << on_device.status();
  ASSERT_TRUE(on_host.ok()) << on_host.status();
  ExpectSameRows(*on_device, *on_host);
  EXPECT_EQ(device->computed_images(), 7);
}

TEST_F(EmbeddingEngineDeviceResizeTest, DecodedBytesAreGivenBackBeforeTheAnswer) {
  auto engine = MakeEngine(/*resize_on_device=*/true);
  EXPECT_EQ(engine->device_resize_bytes(), 0);
  ASSERT_TRUE(EmbedImagesAndWait(*engine, Inputs()).ok());
  // An item's share is given back before it is answered: none is held when the
  // callback runs, still on the batch's worker.
  const ImageInput raw = Raw(ReadShared("images/chelsea.png"));
  absl::Notification answered;
  int64_t held_when_answered = -1;
  engine->EmbedImages({raw}, {}, "images", [&](absl::StatusOr<EmbedResult> result) {
    EXPECT_TRUE(result.ok()) << result.status();
    held_when_answered = engine->device_resize_bytes();
    answered.Notify();
  });
  answered.WaitForNotification();
  EXPECT_EQ(held_when_answered, 0);
  engine->Shutdown();
  EXPECT_EQ(engine->device_resize_bytes(), 0);
}

// The same when the queue refuses the image: its share is back when its call is
// answered. One worker, batches of one and a queue of one: the first image's batch is
// held in the model, the second image waits in the queue, and the third is refused;
// at its answer the first two hold their shares and the third holds none.
TEST_F(EmbeddingEngineDeviceResizeTest, ARefusedImagesBytesAreGivenBackBeforeTheAnswer) {
  absl::Notification running, release;
  ImageQueueWatch watch(running);
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.resize_on_device = true;
    OneQueuedItemBehindAHeldBatch(options, watch, running, release);
  });
  ASSERT_NE(engine, nullptr);
  const ImageInput raw = Raw(ReadShared("images/chelsea.png"));
  const auto share = static_cast<int64_t>(raw.rgb8.size());
  absl::Notification first_done, second_done, third_done;
  engine->EmbedImages({raw}, {}, "images", ExpectOkThenNotify(&first_done));
  running.WaitForNotification();
  engine->EmbedImages({raw}, {}, "images", ExpectOkThenNotify(&second_done));
  watch.queued.WaitForNotification();
  int64_t held_when_answered = -1;
  engine->EmbedImages({raw}, {}, "images", [&](absl::StatusOr<EmbedResult> result) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    held_when_answered = engine->device_resize_bytes();
    third_done.Notify();
  });
  third_done.WaitForNotification();
  EXPECT_EQ(held_when_answered, 2 * share);
  release.Notify();
  first_done.WaitForNotification();
  second_done.WaitForNotification();
  engine->Shutdown();
  EXPECT_EQ(engine->device_resize_bytes(), 0);
}

TEST_F(EmbeddingEngineDeviceResizeTest, ImagesOverTheBudgetAreResizedOnTheHost) {
  // Room for one of the two images at a time: the other is resized on the host, and
  // the batch mixes both kinds of rows. No room at all: every image goes the host way.
  std::vector<ImageInput> two = {Raw(ReadShared("images/chelsea.png")),
                                 Raw(ReadShared("images/coffee.png"))};
  const int64_t larger =
      static_cast<int64_t>(std::max(two[0].rgb8.size(), two[1].rgb8.size()));
  auto host = MakeEngine(/*resize_on_device=*/false);
  const absl::StatusOr<EmbedResult> expected = EmbedImagesAndWait(*host, two);
  ASSERT_TRUE(expected.ok()) << expected.status();
  for (const int64_t budget : {larger, int64_t{0}}) {
    auto engine = MakeEngine(/*resize_on_device=*/true, budget);
    const absl::StatusOr<EmbedResult> got = EmbedImagesAndWait(*engine, two);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameRows(*got, *expected);
  }
}

TEST_F(EmbeddingEngineDeviceResizeTest, OutOfMemoryRetryInHalvesKeepsTheRows) {
  // Seven images fail as one batch; the halves, three and four, fit.
  auto retried = MakeEngine(/*resize_on_device=*/true, int64_t{1} << 30, /*oom_limit=*/4);
  auto plain = MakeEngine(/*resize_on_device=*/false);
  const std::vector<ImageInput> images = Inputs();
  const absl::StatusOr<EmbedResult> all = EmbedImagesAndWait(*retried, images);
  ASSERT_TRUE(all.ok()) << all.status();
  ExpectRowsMatchAlone(*all, images.size(),
                       [&](int i) { return EmbedImagesAndWait(*plain, {images[i]}); });
}

TEST_F(EmbeddingEngineDeviceResizeTest, ABrokenImageStillNamesItsItem) {
  auto engine = MakeEngine(/*resize_on_device=*/true);
  std::vector<ImageInput> images = Inputs();
  images[1].encoded = ReadShared("images/truncated.jpg");
  const absl::StatusOr<EmbedResult> result = EmbedImagesAndWait(*engine, images);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("images[1]"));
}

// On a GPU the decoded images are resized there; rows stay within cosine 0.9999 of the
// CPU engine's (fp32 on both; the GPU's convolutions may use TF32).
TEST_F(EmbeddingEngineDeviceResizeTest, GpuResizedRowsMatchCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto gpu = MakeTinyEngine(
      [](EmbeddingEngineOptions& options) { options.resize_on_device = true; },
      torch::Device(torch::kCUDA, 0), Precision::kFloat32);
  ASSERT_NE(gpu, nullptr);
  auto cpu = MakeEngine(/*resize_on_device=*/false);
  ExpectCosineAtLeast(EmbedImagesAndWait(*gpu, Inputs()),
                      EmbedImagesAndWait(*cpu, Inputs()), 0.9999);
}

// A text batch formed while an image batch holds the model waits for it; a call that
// ends meanwhile is answered, and its texts are never computed.
TEST(EmbeddingEngineCancelTest, ACallEndedWhileItsBatchWaitedForTheModelIsNotComputed) {
  absl::Notification image_running, release;
  // The text depth is first reported after the texts were queued (by their tokenizing
  // task, which may find them gone already, then by the batch): the first report of an
  // empty queue comes once their batch has formed.
  struct TextQueueWatch : EngineObserver {
    void OnQueueDepth(Modality modality, int items) override {
      if (modality == Modality::kText && items == 0 && !formed.HasBeenNotified()) {
        formed.Notify();
      }
    }
    absl::Notification formed;
  } watch;
  std::atomic<int> text_batches_run{0};
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.observer = &watch;
    options.model_fault_for_test = [&](Modality modality, int) {
      if (modality == Modality::kText) {
        ++text_batches_run;
      } else if (!image_running.HasBeenNotified()) {
        image_running.Notify();
        release.WaitForNotification();
      }
      return absl::OkStatus();
    };
  });
  ASSERT_NE(engine, nullptr);
  ImageInput image;
  image.encoded = ReadShared("images/chelsea.png");
  absl::Notification image_done, text_done;
  engine->EmbedImages({image}, {}, "images", ExpectOkThenNotify(&image_done));
  image_running.WaitForNotification();
  auto flag = std::make_shared<CancellationFlag>();
  EmbedOptions options;
  options.cancellation = flag;
  engine->EmbedTexts({"a cat", "a dog"}, options, "texts",
                     [&](absl::StatusOr<EmbedResult> result) {
                       EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
                       EXPECT_THAT(result.status().message(),
                                   HasSubstr("while its batch waited for the model"));
                       text_done.Notify();
                     });
  watch.formed.WaitForNotification();  // formed live, now waiting for the runner
  flag->Cancel();
  release.Notify();
  image_done.WaitForNotification();
  text_done.WaitForNotification();
  EXPECT_EQ(text_batches_run.load(), 0);
  EXPECT_EQ(engine->computed_texts(), 0);
  engine->Shutdown();
}

TEST(EmbeddingEngineWatchdogTest, ABatchPastTheLimitMarksTheEngineUnhealthy) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  auto tokenizer = BpeTokenizer::Create(ByteLevelDemoVocabulary(), {});
  EmbeddingEngineOptions options;
  options.watchdog_timeout = absl::ZeroDuration();  // any running batch is "stuck"
  options.watchdog_interval = absl::Microseconds(200);
  auto engine =
      EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), options);
  ASSERT_TRUE(engine.ok());
  EXPECT_TRUE((*engine)->healthy());  // idle: nothing running, nothing stuck
  std::vector<std::string> texts(32, std::string(60, 'q'));
  for (int attempt = 0; attempt < 200 && (*engine)->healthy(); ++attempt) {
    EmbedTextsAndWait(**engine, texts).IgnoreError();
  }
  EXPECT_FALSE((*engine)->healthy());
}

// A request the queue has no room for is refused before its images are decoded: under
// overload, decoding images only to refuse them took the CPU the model needed.
TEST(EmbeddingEngineQueueTest, ARequestWithoutRoomIsRefusedBeforeDecoding) {
  absl::Notification running, release;
  ImageQueueWatch watch(running);
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    OneQueuedItemBehindAHeldBatch(options, watch, running, release);
  });
  ASSERT_NE(engine, nullptr);
  ImageInput image;
  image.encoded = ReadShared("images/chelsea.png");
  absl::Notification first_done, second_done;
  engine->EmbedImages({image}, {}, "images", ExpectOkThenNotify(&first_done));
  running.WaitForNotification();  // the first image's batch holds the model
  engine->EmbedImages({image}, {}, "images", ExpectOkThenNotify(&second_done));
  watch.queued.WaitForNotification();  // the second waits in the full queue
  EXPECT_EQ(watch.decoded.load(), 2);
  absl::Notification third_done;
  engine->EmbedImages({image}, {}, "images", [&](absl::StatusOr<EmbedResult> result) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(GetRetryInfoPayload(result.status()).has_value());
    third_done.Notify();
  });
  third_done.WaitForNotification();
  EXPECT_EQ(watch.decoded.load(), 2);  // the third was never decoded
  release.Notify();
  first_done.WaitForNotification();
  second_done.WaitForNotification();
  engine->Shutdown();
}

// A batch past the limit that finishes after all was slow, not hung: health returns.
TEST(EmbeddingEngineWatchdogTest, HealthReturnsWhenTheSlowBatchFinishes) {
  absl::Notification running, release;
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.watchdog_timeout = absl::ZeroDuration();  // any running batch is "stuck"
    options.watchdog_interval = absl::Microseconds(200);
    options.model_fault_for_test = HoldFirstBatch(running, release);
  });
  ASSERT_NE(engine, nullptr);
  absl::Notification done;
  engine->EmbedTexts({"a cat"}, {}, "texts", ExpectOkThenNotify(&done));
  running.WaitForNotification();
  // The watchdog looks every 200 us; ten seconds is ample on a loaded machine.
  const auto wait_for_health = [&](bool healthy) {
    for (int i = 0; i < 10000 && engine->healthy() != healthy; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return engine->healthy() == healthy;
  };
  EXPECT_TRUE(wait_for_health(false));
  release.Notify();
  done.WaitForNotification();
  EXPECT_TRUE(wait_for_health(true));
  engine->Shutdown();
}

// An image request of up to max_queue_size items submits one preprocessing task per
// image: a pool holding fewer would refuse such a request every time it came.
TEST(EmbeddingEngineOptionsTest, ThePoolHoldsTheLargestRequestsImages) {
  EmbeddingEngineOptions options;
  options.max_queue_size = 64;
  options.max_pending_preprocess = 64;
  EXPECT_TRUE(ValidateEmbeddingEngineOptions(options).ok());
  options.max_pending_preprocess = 63;
  const absl::Status small = ValidateEmbeddingEngineOptions(options);
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.message(), HasSubstr("max_pending_preprocess (63)"));
}

// A watchdog that looked every 0 s would spin holding the engine's batch lock.
TEST(EmbeddingEngineOptionsTest, TheWatchdogNeedsAPositiveInterval) {
  EmbeddingEngineOptions options;
  EXPECT_TRUE(ValidateEmbeddingEngineOptions(options).ok());
  options.watchdog_timeout = absl::ZeroDuration();  // allowed: any batch is "stuck"
  EXPECT_TRUE(ValidateEmbeddingEngineOptions(options).ok());
  options.watchdog_timeout = -absl::Seconds(1);
  EXPECT_EQ(ValidateEmbeddingEngineOptions(options).code(),
            absl::StatusCode::kInvalidArgument);
  options.watchdog_timeout = absl::Seconds(1);
  options.watchdog_interval = absl::ZeroDuration();
  EXPECT_EQ(ValidateEmbeddingEngineOptions(options).code(),
            absl::StatusCode::kInvalidArgument);
}

// A request's deadline is a wall-clock time (gRPC's); the engine converts it once, as
// the request arrives, to its own clock, which need not read the wall time (RealClock
// is monotonic, and parts from the wall clock when that steps). Here the engine's
// clock reads 15 years ahead of, or behind, the wall clock.
class EmbeddingEngineClockTest : public ::testing::TestWithParam<int> {};

TEST_P(EmbeddingEngineClockTest, WallClockDeadlinesAreMetOnTheEnginesClock) {
  FakeClock clock(absl::Now() + GetParam() * absl::Hours(24 * 365 * 15));
  auto engine = MakeTinyEngine(
      [&clock](EmbeddingEngineOptions& options) { options.clock = &clock; });
  ASSERT_NE(engine, nullptr);
  EmbedOptions live;
  live.deadline = absl::Now() + absl::Minutes(10);
  EXPECT_TRUE(EmbedTextsAndWait(*engine, {"a cat"}, live).ok());
  EmbedOptions expired;
  expired.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(EmbedTextsAndWait(*engine, {"a cat"}, expired).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(EmbedImagesAndWait(*engine, EncodedImages({"images/chelsea.png"}), expired)
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

INSTANTIATE_TEST_SUITE_P(AheadAndBehind, EmbeddingEngineClockTest,
                         ::testing::Values(1, -1));

// A FakeClock that moves 1 ms forward each time it is read, so that time passes while
// the engine works through a request, at a pace the test knows.
class TickingClock final : public Clock {
 public:
  explicit TickingClock(absl::Time start) : clock_(start) {}
  absl::Time Now() override {
    clock_.AdvanceTime(absl::Milliseconds(1));
    return clock_.Now();
  }
  bool WaitWithDeadline(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return clock_.WaitWithDeadline(mu, cv, deadline);
  }

 private:
  FakeClock clock_;
};

// A text request's deadline is checked before each of its texts is tokenized, not only
// before the first: the deadline (100 ticks away) passes while the 300 texts are read,
// before the last one, which is over the context with truncate off and would fail the
// request with INVALID_ARGUMENT had it been reached.
TEST(EmbeddingEngineDeadlineTest, ADeadlinePassingWhileTokenizingStopsTheRequest) {
  TickingClock clock(absl::Now());
  auto engine = MakeTinyEngine(
      [&clock](EmbeddingEngineOptions& options) { options.clock = &clock; });
  ASSERT_NE(engine, nullptr);
  std::vector<std::string> texts(299, "a photo of a cat");
  std::string too_long;
  for (int i = 0; i < 100; ++i) too_long += "cat ";
  texts.push_back(too_long);
  EmbedOptions options;
  options.truncate = false;
  options.deadline = absl::Now() + absl::Milliseconds(100);
  const absl::StatusOr<EmbedResult> result = EmbedTextsAndWait(*engine, texts, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded)
      << result.status();
  EXPECT_EQ(engine->computed_texts(), 0);
}

// Until a batch has run, a full queue's RetryInfo counts a full batch at the warm-up
// item's pace: max_queue_delay (an hour here, 2 ms in clip_server) says nothing of how
// long a cold server's first batch takes, and clients retry when told. The clock moves
// 1 ms a read, so each warm-up item takes 1 ms and a full batch of 16 is expected to
// take 16 ms.
TEST(EmbeddingEngineQueueTest, BeforeAnyBatchHasRunARefusalWaitsForAWarmUpPacedBatch) {
  TickingClock clock(absl::Now());
  absl::Notification running, release;
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.clock = &clock;
    options.workers = 1;
    options.max_batch_size = 16;
    options.max_queue_size = 16;
    options.model_fault_for_test = HoldFirstBatch(running, release);
  });
  ASSERT_NE(engine, nullptr);
  absl::Notification first_done, second_done, third_done;
  engine->EmbedTexts({"a cat"}, {}, "texts", ExpectOkThenNotify(&first_done));
  running.WaitForNotification();  // the first batch holds the model
  engine->EmbedTexts(std::vector<std::string>(16, "a dog"), {}, "texts",
                     ExpectOkThenNotify(&second_done));
  engine->EmbedTexts({"a bird"}, {}, "texts", [&](absl::StatusOr<EmbedResult> result) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(GetRetryInfoPayload(result.status()), absl::Milliseconds(16));
    third_done.Notify();
  });
  third_done.WaitForNotification();
  release.Notify();
  first_done.WaitForNotification();
  second_done.WaitForNotification();
  engine->Shutdown();
}

// Records what the engine reports, for the observer test below.
class RecordingObserver : public EngineObserver {
 public:
  struct BatchReport {
    Modality modality;
    size_t items;
    absl::Duration inference;
  };
  void OnPreprocessWait(Modality modality, absl::Duration waited) override {
    absl::MutexLock lock(&mu_);
    ++waits_[static_cast<int>(modality)];
    EXPECT_GE(waited, absl::ZeroDuration());
  }
  void OnPreprocessed(Modality modality, absl::Duration elapsed) override {
    absl::MutexLock lock(&mu_);
    ++preprocessed_[static_cast<int>(modality)];
    EXPECT_GE(elapsed, absl::ZeroDuration());
  }
  void OnBatch(Modality modality, absl::Span<const absl::Duration> queue_waits,
               absl::Duration inference) override {
    absl::MutexLock lock(&mu_);
    batches_.push_back({modality, queue_waits.size(), inference});
    for (absl::Duration wait : queue_waits) EXPECT_GE(wait, absl::ZeroDuration());
  }
  void OnQueueDepth(Modality modality, int items) override {
    absl::MutexLock lock(&mu_);
    ++depth_reports_[static_cast<int>(modality)];
    last_depth_[static_cast<int>(modality)] = items;
    depth_reported_.SignalAll();
    EXPECT_GE(items, 0);
  }
  int preprocessed(Modality m) {
    absl::MutexLock lock(&mu_);
    return preprocessed_[static_cast<int>(m)];
  }
  int waits(Modality m) {
    absl::MutexLock lock(&mu_);
    return waits_[static_cast<int>(m)];
  }
  int depth_reports(Modality m) {
    absl::MutexLock lock(&mu_);
    return depth_reports_[static_cast<int>(m)];
  }
  // The last depth reported, -1 before any.
  int last_depth(Modality m) {
    absl::MutexLock lock(&mu_);
    return last_depth_[static_cast<int>(m)];
  }
  // Waits (bounded, only so that a bug fails instead of hanging) for a report of
  // `items`. A CondVar, not Mutex::Await(), so that ThreadSanitizer sees the
  // hand-over (server/common/tsan_absl_annotations.cc).
  bool AwaitLastDepth(Modality m, int items) {
    const absl::Time limit = absl::Now() + absl::Seconds(60);
    absl::MutexLock lock(&mu_);
    while (last_depth_[static_cast<int>(m)] != items) {
      if (depth_reported_.WaitWithDeadline(&mu_, limit)) return false;
    }
    return true;
  }
  std::vector<BatchReport> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }

 private:
  absl::Mutex mu_;
  int preprocessed_[2] = {0, 0};
  int waits_[2] = {0, 0};
  int depth_reports_[2] = {0, 0};
  int last_depth_[2] = {-1, -1};
  absl::CondVar depth_reported_;
  std::vector<BatchReport> batches_;
};

TEST(EmbeddingEngineObserverTest, ReportsPreprocessingBatchesAndQueueDepth) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  auto tokenizer = BpeTokenizer::Create(ByteLevelDemoVocabulary(), {});
  RecordingObserver observer;
  EmbeddingEngineOptions options;
  options.observer = &observer;
  auto engine =
      EmbeddingEngine::Create(std::move(loaded), *std::move(tokenizer), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Warm-up runs the model directly, not through the queues: nothing reported yet.
  EXPECT_TRUE(observer.batches().empty());

  auto embed_texts = [&](std::vector<std::string> texts) {
    const absl::StatusOr<EmbedResult> r = EmbedTextsAndWait(**engine, std::move(texts));
    EXPECT_TRUE(r.ok()) << r.status();
  };
  // One request after the other, so each one's texts form one batch of their own.
  embed_texts({"a cat", "a dog", "a bird"});
  embed_texts({"a car"});
  ImageInput image;
  image.encoded = ReadShared("images/chelsea.png");
  const absl::StatusOr<EmbedResult> images = EmbedImagesAndWait(**engine, {image, image});
  EXPECT_TRUE(images.ok()) << images.status();

  // Requests cancelled or past their deadline are answered without being prepared.
  EmbedOptions expired;
  expired.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(EmbedImagesAndWait(**engine, {image}, expired).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(EmbedTextsAndWait(**engine, {"a fox"}, expired).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  auto flag = std::make_shared<CancellationFlag>();
  flag->Cancel();
  EmbedOptions cancelled;
  cancelled.cancellation = flag;
  EXPECT_EQ(EmbedTextsAndWait(**engine, {"a fox"}, cancelled).status().code(),
            absl::StatusCode::kCancelled);
  // Tokenize's tasks share the threads and count as text preprocessing; one whose call
  // already ended counts as nothing.
  const auto tokenize = [&](const EmbedOptions& options) {
    absl::Notification done;
    absl::StatusCode code = absl::StatusCode::kUnknown;
    (*engine)->Tokenize({"a cat", "a dog"}, options, "texts",
                        [&](absl::StatusOr<std::vector<TokenizedResult>> r) {
                          code = r.status().code();
                          done.Notify();
                        });
    done.WaitForNotification();
    return code;
  };
  EXPECT_EQ(tokenize(EmbedOptions{}), absl::StatusCode::kOk);
  EXPECT_EQ(tokenize(expired), absl::StatusCode::kDeadlineExceeded);

  // Texts: one tokenizing task per request (two EmbedTexts, one Tokenize); images: one
  // task per image. Each task that ran reported its wait for a thread first.
  EXPECT_EQ(observer.preprocessed(Modality::kText), 3);
  EXPECT_EQ(observer.preprocessed(Modality::kImage), 2);
  EXPECT_EQ(observer.waits(Modality::kText), 3);
  EXPECT_EQ(observer.waits(Modality::kImage), 2);
  size_t text_items = 0, image_items = 0;
  int text_batches = 0;
  for (const auto& batch : observer.batches()) {
    EXPECT_GT(batch.inference, absl::ZeroDuration());
    if (batch.modality == Modality::kText) {
      text_items += batch.items;
      ++text_batches;
    } else {
      image_items += batch.items;
    }
  }
  EXPECT_EQ(text_batches, 2);
  EXPECT_EQ(text_items, 4u);
  // The two images are scheduled by separate tasks and may or may not share a batch.
  EXPECT_EQ(image_items, 2u);
  // After each enqueue and at each batch start.
  EXPECT_GE(observer.depth_reports(Modality::kText), 4);
  EXPECT_GE(observer.depth_reports(Modality::kImage), 3);
}

// An engine on `clock` whose partial batches wait an hour, however many items are
// announced, so that what is queued stays queued until the clock is advanced.
std::unique_ptr<EmbeddingEngine> MakeWaitingEngine(FakeClock* clock,
                                                   RecordingObserver* observer) {
  return MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.clock = clock;
    options.observer = observer;
    options.max_queue_delay = absl::Hours(1);
    options.wait_only_for_announced = false;
  });
}

// Items that die in the queue form no batch; the gauge must not keep showing them.
TEST(EmbeddingEngineObserverTest, QueueDepthFallsWhenQueuedItemsAreDropped) {
  FakeClock clock(absl::Now());
  RecordingObserver observer;
  auto engine = MakeWaitingEngine(&clock, &observer);
  ASSERT_NE(engine, nullptr);
  auto flag = std::make_shared<CancellationFlag>();
  EmbedOptions options;
  options.cancellation = flag;
  absl::Notification answered;
  absl::Status status;
  engine->EmbedTexts({"a cat", "a dog"}, options, "texts",
                     [&](absl::StatusOr<EmbedResult> r) {
                       status = r.status();
                       answered.Notify();
                     });
  ASSERT_TRUE(observer.AwaitLastDepth(Modality::kText, 2));
  flag->Cancel();
  clock.AdvanceTime(absl::Hours(2));  // the worker wakes and finds only dead items
  answered.WaitForNotification();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(observer.batches().empty());
  EXPECT_EQ(observer.last_depth(Modality::kText), 0);
}

TEST(EmbeddingEngineCancelTest, DropDeadItemsAnswersCancelledQueuedRequestsAtOnce) {
  FakeClock clock(absl::Now());
  RecordingObserver observer;
  auto engine = MakeWaitingEngine(&clock, &observer);
  ASSERT_NE(engine, nullptr);
  auto flag = std::make_shared<CancellationFlag>();
  EmbedOptions cancellable;
  cancellable.cancellation = flag;
  absl::Notification texts_answered, image_answered, live_answered;
  absl::Status texts_status, image_status;
  engine->EmbedTexts({"a cat", "a dog"}, cancellable, "texts",
                     [&](absl::StatusOr<EmbedResult> r) {
                       texts_status = r.status();
                       texts_answered.Notify();
                     });
  engine->EmbedTexts({"a bird"}, {}, "texts", [&](absl::StatusOr<EmbedResult> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    live_answered.Notify();
  });
  engine->EmbedImages(EncodedImages({"images/chelsea.png"}), cancellable, "images",
                      [&](absl::StatusOr<EmbedResult> r) {
                        image_status = r.status();
                        image_answered.Notify();
                      });
  ASSERT_TRUE(observer.AwaitLastDepth(Modality::kText, 3));
  ASSERT_TRUE(observer.AwaitLastDepth(Modality::kImage, 1));

  flag->Cancel();
  engine->DropDeadItems();
  // Answered on this thread, before it returned: no batch had to reach them.
  EXPECT_TRUE(texts_answered.HasBeenNotified());
  EXPECT_TRUE(image_answered.HasBeenNotified());
  EXPECT_EQ(texts_status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(image_status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->QueuedTexts(), 1);
  EXPECT_EQ(engine->QueuedImages(), 0);
  EXPECT_EQ(observer.last_depth(Modality::kText), 1);
  EXPECT_FALSE(live_answered.HasBeenNotified());

  clock.AdvanceTime(absl::Hours(1));  // the live text's batch runs as it would have
  live_answered.WaitForNotification();
}

// A request's images are queued one by one. When one fails, its queued siblings are
// dropped at once: the error, the call's answer, must not wait until a batch reaches
// them (behind the whole queue, under load). Other requests' images stay queued.
TEST(EmbeddingEngineFailureTest, AFailedImageDropsItsRequestsQueuedImagesAtOnce) {
  FakeClock clock(absl::Now());
  RecordingObserver observer;
  auto engine = MakeTinyEngine([&](EmbeddingEngineOptions& options) {
    options.clock = &clock;
    options.observer = &observer;
    options.max_queue_delay = absl::Hours(1);
    options.wait_only_for_announced = false;
    // One preprocessing thread: the good images are queued before the bad one fails.
    options.preprocess_threads = 1;
  });
  ASSERT_NE(engine, nullptr);
  absl::Notification other_answered, failed_answered;
  engine->EmbedImages(EncodedImages({"images/chelsea.png"}), {}, "images",
                      [&](absl::StatusOr<EmbedResult> r) {
                        EXPECT_TRUE(r.ok()) << r.status();
                        other_answered.Notify();
                      });
  absl::Status status;
  engine->EmbedImages(
      EncodedImages({"images/chelsea.png", "images/chelsea.png", "images/truncated.jpg"}),
      {}, "images", [&](absl::StatusOr<EmbedResult> r) {
        status = r.status();
        failed_answered.Notify();
      });
  // The clock stands still: only the drop can answer the failed request.
  ASSERT_TRUE(failed_answered.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("images[2]"));
  EXPECT_EQ(engine->QueuedImages(), 1);
  EXPECT_TRUE(observer.batches().empty());
  EXPECT_FALSE(other_answered.HasBeenNotified());

  clock.AdvanceTime(absl::Hours(1));  // the other request's batch runs as it would have
  other_answered.WaitForNotification();
}

// clipserve_inference_seconds times the model run: the device probe that follows a
// failed batch is not part of it.
TEST(EmbeddingEngineFailureTest, TheProbeAfterAFailedBatchIsNotInItsInferenceTime) {
  FakeClock clock(absl::Now());
  RecordingObserver observer;
  std::atomic<int> probes{0};
  std::atomic<bool> fail{true};
  EmbeddingEngineOptions options;
  options.clock = &clock;
  options.observer = &observer;
  options.max_queue_delay = absl::ZeroDuration();
  options.device_probe_for_test = [&] {
    ++probes;
    clock.AdvanceTime(absl::Seconds(10));  // a probe that takes ten seconds
    return absl::OkStatus();
  };
  auto engine = EngineWithAFailingModel(options, &fail);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(EmbedTextsAndWait(*engine, {"a"}).status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(probes, 1);
  ASSERT_EQ(observer.batches().size(), 1u);
  EXPECT_EQ(observer.batches()[0].items, 1u);
  EXPECT_LT(observer.batches()[0].inference, absl::Seconds(10));
}

TEST(EmbeddingEngineLimitsTest, TextsOverTheQueueSizeAreRefusedBeforeTokenizing) {
  RecordingObserver observer;
  auto engine = MakeTinyEngine([&observer](EmbeddingEngineOptions& options) {
    options.max_queue_size = 4;
    options.max_batch_size = 4;
    options.max_queue_delay = absl::ZeroDuration();
    options.observer = &observer;
  });
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->max_texts_per_call(), 4);
  const absl::Status over =
      EmbedTextsAndWait(*engine, {"a", "b", "c", "d", "e"}).status();
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.message(), HasSubstr("texts holds 5 texts"));
  EXPECT_EQ(observer.preprocessed(Modality::kText), 0);
  EXPECT_TRUE(EmbedTextsAndWait(*engine, {"a", "b", "c", "d"}).ok());
  EXPECT_EQ(observer.preprocessed(Modality::kText), 1);
}

// Holds the first preprocessing task until released, so a test can catch Shutdown()
// in the middle of draining.
class BlockingObserver : public EngineObserver {
 public:
  void OnPreprocessed(Modality /*modality*/, absl::Duration /*elapsed*/) override {
    if (!entered.HasBeenNotified()) entered.Notify();
    release.WaitForNotification();
  }
  absl::Notification entered;
  absl::Notification release;
};

TEST(EmbeddingEngineShutdownTest, ASecondCallReturnsOnlyAfterTheFirstHasDrained) {
  LoadedModel loaded;
  loaded.model = *ClipModel::Create(testing::TinyClipConfig(), 5);
  BlockingObserver observer;
  EmbeddingEngineOptions options;
  options.observer = &observer;
  auto engine = EmbeddingEngine::Create(
      std::move(loaded), *BpeTokenizer::Create(ByteLevelDemoVocabulary(), {}), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::Notification answered;
  (*engine)->EmbedTexts({"a cat"}, {}, "texts", [&](absl::StatusOr<EmbedResult> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    answered.Notify();
  });
  observer.entered.WaitForNotification();  // the request's task is held

  std::thread first([&] { (*engine)->Shutdown(); });
  while ((*engine)->healthy()) std::this_thread::yield();  // the first call began
  bool answered_when_second_returned = false;
  absl::Notification second_returned;
  std::thread second([&] {
    (*engine)->Shutdown();
    answered_when_second_returned = answered.HasBeenNotified();
    second_returned.Notify();
  });
  // Whoever calls Shutdown() may destroy the engine next: the second call must not
  // return while the first is still draining the held request.
  EXPECT_FALSE(second_returned.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  observer.release.Notify();
  first.join();
  second.join();
  EXPECT_TRUE(answered_when_second_returned);
}

}  // namespace
}  // namespace clipserve
