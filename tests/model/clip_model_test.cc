// The C++ CLIP model against the Python reference (tests/reference/): every tower,
// every checkpoint layout, fp32 and bf16, batched and single.

#include "server/model/clip_model.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/cuda.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/bf16_linear.h"
#include "server/model/checkpoint.h"
#include "server/model/contrastive_loss.h"
#include "server/model/model_config.h"
#include "server/model/model_loader.h"
#include "tests/testing/fresh_test_dir.h"
#include "tests/testing/pickle_bytes.h"
#include "tests/testing/tiny_clip_config.h"
#include "tests/testing/unprivileged.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kFixtures = CLIPSERVE_MODEL_FIXTURES;
const char* const kCases[] = {"vit_transformer", "resnet_transformer", "vit_cbow",
                              "vit_gelu"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path
                         << " (ctest runs model.generate_fixtures first)";
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Reads a torch.save'd dict of tensors written by the reference.
std::map<std::string, torch::Tensor> LoadPt(const std::string& path) {
  const std::string bytes = ReadFile(path);
  std::map<std::string, torch::Tensor> out;
  if (bytes.empty()) return out;
  c10::IValue value =
      torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  for (const auto& item : value.toGenericDict()) {
    out.emplace(item.key().toStringRef(), item.value().toTensor());
  }
  return out;
}

struct Case {
  std::string name;
  std::string dir;
  nlohmann::json manifest;
  ClipConfig config;
  std::map<std::string, torch::Tensor> inputs;
  std::map<std::string, torch::Tensor> expected;
};

Case LoadCase(const std::string& name) {
  Case c;
  c.name = name;
  c.dir = kFixtures + "/" + name;
  c.manifest = nlohmann::json::parse(ReadFile(c.dir + "/manifest.json"));
  auto config = ParseOpenClipConfig(ReadFile(c.dir + "/config.json"));
  EXPECT_TRUE(config.ok()) << config.status();
  c.config = *config;
  c.inputs = LoadPt(c.dir + "/inputs.pt");
  c.expected = LoadPt(c.dir + "/expected.pt");
  return c;
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

double MinRowCosine(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::cosine_similarity(a.to(torch::kDouble), b.to(torch::kDouble), 1)
      .min()
      .item<double>();
}

std::unique_ptr<ClipModel> LoadEntry(const Case& c, const nlohmann::json& entry,
                                     CheckpointFormat* format) {
  const std::string path = c.dir + "/" +
                           (entry.contains("dir") ? entry["dir"].get<std::string>()
                                                  : entry["path"].get<std::string>());
  ReadCheckpointOptions options;
  // Head counts are not in the shapes of tiny models; a folder has its own config.
  if (!entry.contains("dir")) options.config = c.config;
  auto checkpoint = ReadCheckpoint(path, options);
  EXPECT_TRUE(checkpoint.ok()) << path << ": " << checkpoint.status();
  if (!checkpoint.ok()) return nullptr;
  *format = checkpoint->format;
  auto model = ClipModel::Create(checkpoint->config);
  EXPECT_TRUE(model.ok()) << model.status();
  const absl::Status loaded = (*model)->LoadWeights(std::move(checkpoint->weights));
  EXPECT_TRUE(loaded.ok()) << path << ": " << loaded;
  return loaded.ok() ? *std::move(model) : nullptr;
}

CheckpointFormat ExpectedFormat(const std::string& layout) {
  if (layout == "openai_torchscript") return CheckpointFormat::kOpenAiTorchScript;
  if (layout == "torch_state_dict" || layout == "torch_training_checkpoint") {
    return CheckpointFormat::kStateDict;
  }
  if (layout == "safetensors") return CheckpointFormat::kSafetensors;
  if (layout == "open_clip_dir") return CheckpointFormat::kOpenClip;
  return CheckpointFormat::kHuggingFace;
}

class ReferenceParityTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ReferenceParityTest, EveryLayoutMatchesTheReferenceInFp32) {
  const Case c = LoadCase(GetParam());
  ASSERT_FALSE(c.expected.empty());
  const torch::Tensor& images = c.inputs.at("images");
  const torch::Tensor& texts = c.inputs.at("texts");
  int checked = 0;
  for (const auto& entry : c.manifest["checkpoints"]) {
    const std::string path = entry["path"];
    SCOPED_TRACE(c.name + "/" + path);
    CheckpointFormat format;
    auto model = LoadEntry(c, entry, &format);
    ASSERT_NE(model, nullptr);
    EXPECT_EQ(format, ExpectedFormat(entry["layout"]));
    const auto expected = LoadPt(c.dir + "/" + entry["expected"].get<std::string>());
    auto image_features = model->EncodeImage(images, /*normalize=*/false);
    auto text_features = model->EncodeText(texts, /*normalize=*/false);
    ASSERT_TRUE(image_features.ok()) << image_features.status();
    ASSERT_TRUE(text_features.ok()) << text_features.status();
    EXPECT_LE(MaxAbsDiff(*image_features, expected.at("image_features")), 1e-4);
    EXPECT_LE(MaxAbsDiff(*text_features, expected.at("text_features")), 1e-4);
    EXPECT_GE(MinRowCosine(*image_features, expected.at("image_features")), 0.99999);
    EXPECT_GE(MinRowCosine(*text_features, expected.at("text_features")), 0.99999);

    EXPECT_NEAR(model->logit_scale(), expected.at("logit_scale").item<float>(), 1e-4);
    const torch::Tensor image_rows = NormalizeRows(*image_features).contiguous();
    const torch::Tensor text_rows = NormalizeRows(*text_features).contiguous();
    const int n = static_cast<int>(image_rows.size(0));
    const int dim = static_cast<int>(image_rows.size(1));
    auto logits = ScaledLogits({image_rows.data_ptr<float>(), size_t(image_rows.numel())},
                               {text_rows.data_ptr<float>(), size_t(text_rows.numel())},
                               dim, model->logit_scale());
    ASSERT_TRUE(logits.ok());
    const torch::Tensor logits_tensor = torch::from_blob(logits->data(), {n, n}).clone();
    EXPECT_LE(MaxAbsDiff(logits_tensor, expected.at("logits_per_image")), 1e-3);
    EXPECT_LE(MaxAbsDiff(logits_tensor.t(), expected.at("logits_per_text")), 1e-3);
    auto loss = ComputeContrastiveLoss(*logits, n);
    ASSERT_TRUE(loss.ok());
    EXPECT_NEAR(loss->image_to_text, expected.at("loss_image_to_text").item<double>(),
                1e-4);
    EXPECT_NEAR(loss->text_to_image, expected.at("loss_text_to_image").item<double>(),
                1e-4);
    EXPECT_NEAR(loss->mean, expected.at("loss").item<double>(), 1e-4);
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST_P(ReferenceParityTest, BatchOfEightEqualsEightSingles) {
  const Case c = LoadCase(GetParam());
  CheckpointFormat format;
  auto model = LoadEntry(c, c.manifest["checkpoints"][0], &format);
  ASSERT_NE(model, nullptr);
  const torch::Tensor& images = c.inputs.at("images");
  const torch::Tensor& texts = c.inputs.at("texts");
  const torch::Tensor& lengths = c.inputs.at("text_lengths");
  ASSERT_EQ(images.size(0), 8);
  auto batch_images = model->EncodeImage(images, true);
  auto batch_texts = model->EncodeText(texts, true);
  ASSERT_TRUE(batch_images.ok() && batch_texts.ok());
  for (int64_t i = 0; i < 8; ++i) {
    auto one_image = model->EncodeImage(images.narrow(0, i, 1), true);
    // Each text alone, padded only to its own length.
    const int64_t len = lengths[i].item<int64_t>();
    auto one_text =
        model->EncodeText(texts.narrow(0, i, 1).narrow(1, 0, len).contiguous(), true);
    ASSERT_TRUE(one_image.ok() && one_text.ok());
    EXPECT_LE(MaxAbsDiff(*one_image, batch_images->narrow(0, i, 1)), 1e-5)
        << "image " << i;
    EXPECT_LE(MaxAbsDiff(*one_text, batch_texts->narrow(0, i, 1)), 1e-5) << "text " << i;
  }
}

TEST_P(ReferenceParityTest, PaddingToLongestEqualsPaddingToContext) {
  const Case c = LoadCase(GetParam());
  CheckpointFormat format;
  auto model = LoadEntry(c, c.manifest["checkpoints"][0], &format);
  ASSERT_NE(model, nullptr);
  // The rows shorter than the context: padded to 77 or only to their longest member.
  const torch::Tensor short_rows =
      torch::nonzero(c.inputs.at("text_lengths") < c.config.text.context_length)
          .squeeze(1);
  ASSERT_GE(short_rows.size(0), 4);
  const torch::Tensor texts = c.inputs.at("texts").index_select(0, short_rows);
  const torch::Tensor lengths = c.inputs.at("text_lengths").index_select(0, short_rows);
  const int64_t longest = lengths.max().item<int64_t>();
  ASSERT_LT(longest, texts.size(1));
  auto full = model->EncodeText(texts, false);
  auto trimmed = model->EncodeText(texts.narrow(1, 0, longest).contiguous(), false);
  ASSERT_TRUE(full.ok() && trimmed.ok());
  EXPECT_LE(MaxAbsDiff(*full, *trimmed), 1e-5);
}

// The reference pools at (CBOW: averages up to) text.argmax(-1), the first end token:
// a text that spells <|endoftext|> ends there, and what follows changes nothing.
TEST_P(ReferenceParityTest, ATypedEndTokenEndsTheTextAsInTheReference) {
  const Case c = LoadCase(GetParam());
  CheckpointFormat format;
  auto model = LoadEntry(c, c.manifest["checkpoints"][0], &format);
  ASSERT_NE(model, nullptr);
  const int64_t eot = c.config.text.vocab_size - 1;
  // Row 0 of the fixture has 17 tokens between its start and end tokens.
  const torch::Tensor text = c.inputs.at("texts").narrow(0, 0, 1);
  ASSERT_EQ(text[0][18].item<int64_t>(), eot);
  torch::Tensor typed = text.clone();
  typed[0][8] = eot;  // the end token, typed among the words
  const torch::Tensor prefix = text.narrow(1, 0, 9).clone();
  prefix[0][8] = eot;
  auto with_typed = model->EncodeText(typed, false);
  auto alone = model->EncodeText(prefix, false);
  auto whole = model->EncodeText(text, false);
  ASSERT_TRUE(with_typed.ok() && alone.ok() && whole.ok());
  EXPECT_LE(MaxAbsDiff(*with_typed, *alone), 1e-5);
  EXPECT_GT(MaxAbsDiff(*with_typed, *whole), 1e-3);
}

// A case's first checkpoint, loaded, and its inputs' normalized fp32 embeddings.
struct Fp32Run {
  Case c;
  std::unique_ptr<ClipModel> model;
  torch::Tensor images, texts;
  torch::Tensor image32, text32;
};

Fp32Run LoadAndRunFp32(const std::string& name) {
  Fp32Run run;
  run.c = LoadCase(name);
  CheckpointFormat format;
  run.model = LoadEntry(run.c, run.c.manifest["checkpoints"][0], &format);
  if (run.model == nullptr) return run;
  run.images = run.c.inputs.at("images");
  run.texts = run.c.inputs.at("texts");
  auto image = run.model->EncodeImage(run.images, true);
  auto text = run.model->EncodeText(run.texts, true);
  EXPECT_TRUE(image.ok() && text.ok());
  if (image.ok() && text.ok()) {
    run.image32 = *image;
    run.text32 = *text;
  }
  return run;
}

TEST_P(ReferenceParityTest, Bf16StaysWithinCosine999OfFp32) {
  Fp32Run run = LoadAndRunFp32(GetParam());
  ASSERT_TRUE(run.model != nullptr && run.image32.defined());
  ClipModel* model = run.model.get();
  const torch::Tensor& images = run.images;
  const torch::Tensor& texts = run.texts;
  ASSERT_TRUE(model->To(torch::kCPU, Precision::kBFloat16).ok());
  EXPECT_EQ(model->precision(), Precision::kBFloat16);
  auto image16 = model->EncodeImage(images, true);
  auto text16 = model->EncodeText(texts, true);
  ASSERT_TRUE(image16.ok() && text16.ok());
  EXPECT_EQ(image16->scalar_type(), torch::kFloat);
  EXPECT_GE(MinRowCosine(*image16, run.image32), 0.999);
  EXPECT_GE(MinRowCosine(*text16, run.text32), 0.999);
  EXPECT_GT(MaxAbsDiff(*image16, run.image32), 0.0)
      << "bf16 run should not be bit-identical";

  // Each transformer's products run on weights laid out once, by To(): a write to a
  // module's weight afterwards changes nothing (the tower outputs stay bit-identical).
  if (!Bf16Linear::Available()) return;
  {
    const torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : model->NamedTensors()) {
      if (absl::EndsWith(name, "mlp.c_fc.weight") ||
          absl::EndsWith(name, "attn.in_proj_weight")) {
        tensor.zero_();
      }
    }
  }
  auto image_after = model->EncodeImage(images, true);
  auto text_after = model->EncodeText(texts, true);
  ASSERT_TRUE(image_after.ok() && text_after.ok());
  EXPECT_TRUE(torch::equal(*image_after, *image16));
  EXPECT_TRUE(torch::equal(*text_after, *text16));
}

TEST_P(ReferenceParityTest, Int8StaysCloseToFp32AndGoesBackExactly) {
  if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    GTEST_SKIP() << "no int8 dot products on this CPU";
  }
  Fp32Run run = LoadAndRunFp32(GetParam());
  ASSERT_TRUE(run.model != nullptr && run.image32.defined());
  ClipModel* model = run.model.get();
  const torch::Tensor& images = run.images;
  const torch::Tensor& texts = run.texts;
  // Every product in int8, however small (these inputs are a few rows).
  Int8Options int8;
  int8.min_rows = 0;
  ASSERT_TRUE(model->To(torch::kCPU, Precision::kInt8, int8).ok());
  EXPECT_EQ(model->precision(), Precision::kInt8);
  auto image8 = model->EncodeImage(images, true);
  auto text8 = model->EncodeText(texts, true);
  ASSERT_TRUE(image8.ok() && text8.ok());
  EXPECT_EQ(image8->scalar_type(), torch::kFloat);
  // These towers are a few dozen wide, where one rounding step is a larger share of a
  // row than at CLIP's widths (the full-size test below holds int8 to 0.999).
  EXPECT_GE(MinRowCosine(*image8, run.image32), 0.995);
  EXPECT_GE(MinRowCosine(*text8, run.text32), 0.995);
  // Each transformer ran int8 products (a ResNet image tower and CBOW have none).
  if (absl::StartsWith(GetParam(), "vit")) {
    EXPECT_GT(MaxAbsDiff(*image8, run.image32), 0.0)
        << "the vision transformer ran in fp32";
  }
  if (std::string(GetParam()) != "vit_cbow") {
    EXPECT_GT(MaxAbsDiff(*text8, run.text32), 0.0) << "the text transformer ran in fp32";
  }
  EXPECT_EQ(model->LoadWeights(model->NamedTensors()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model->To(torch::kCPU, Precision::kFloat32).ok());
  auto image_again = model->EncodeImage(images, true);
  auto text_again = model->EncodeText(texts, true);
  ASSERT_TRUE(image_again.ok() && text_again.ok());
  EXPECT_TRUE(torch::equal(*image_again, run.image32));
  EXPECT_TRUE(torch::equal(*text_again, run.text32));
}

TEST_P(ReferenceParityTest, InferredArchitectureMatchesConfigButForHeads) {
  const Case c = LoadCase(GetParam());
  auto checkpoint = ReadCheckpoint(c.dir + "/state_dict.pt");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const ClipConfig& inferred = checkpoint->config;
  EXPECT_EQ(inferred.embed_dim, c.config.embed_dim);
  EXPECT_EQ(inferred.vision.arch, c.config.vision.arch);
  EXPECT_EQ(inferred.vision.image_size, c.config.vision.image_size);
  EXPECT_EQ(inferred.vision.width, c.config.vision.width);
  EXPECT_EQ(inferred.vision.layers, c.config.vision.layers);
  EXPECT_EQ(inferred.vision.patch_size, c.config.vision.patch_size);
  EXPECT_EQ(inferred.vision.stage_layers, c.config.vision.stage_layers);
  EXPECT_EQ(inferred.text.arch, c.config.text.arch);
  EXPECT_EQ(inferred.text.width, c.config.text.width);
  EXPECT_EQ(inferred.text.layers, c.config.text.layers);
  EXPECT_EQ(inferred.text.context_length, c.config.text.context_length);
  EXPECT_EQ(inferred.text.vocab_size, c.config.text.vocab_size);
}

// The weights file of an open_clip or Hugging Face folder, named instead of the folder,
// loads as the folder does: with its config (vit_gelu's GELU included) and key names.
TEST_P(ReferenceParityTest, AFoldersWeightsFileLoadsWithTheFoldersConfig) {
  const Case c = LoadCase(GetParam());
  int checked = 0;
  for (const auto& entry : c.manifest["checkpoints"]) {
    if (!entry.contains("dir")) continue;
    const std::string path = entry["path"];
    SCOPED_TRACE(c.name + "/" + path);
    auto checkpoint = ReadCheckpoint(c.dir + "/" + path);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    EXPECT_EQ(checkpoint->format, ExpectedFormat(entry["layout"]));
    EXPECT_EQ(checkpoint->config.quick_gelu, c.config.quick_gelu);
    EXPECT_EQ(checkpoint->config.vision.heads, c.config.vision.heads);
    EXPECT_FALSE(checkpoint->activation_assumed);
    EXPECT_EQ(checkpoint->config.name, entry["dir"].get<std::string>());
    auto model = ClipModel::Create(checkpoint->config);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_TRUE((*model)->LoadWeights(std::move(checkpoint->weights)).ok());
    const auto expected = LoadPt(c.dir + "/" + entry["expected"].get<std::string>());
    auto images = (*model)->EncodeImage(c.inputs.at("images"), false);
    auto texts = (*model)->EncodeText(c.inputs.at("texts"), false);
    ASSERT_TRUE(images.ok() && texts.ok());
    EXPECT_LE(MaxAbsDiff(*images, expected.at("image_features")), 1e-4);
    EXPECT_LE(MaxAbsDiff(*texts, expected.at("text_features")), 1e-4);
    ++checked;
  }
  EXPECT_GE(checked, 2);  // open_clip's safetensors and .bin, and Hugging Face's
}

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceParityTest, ::testing::ValuesIn(kCases));

// A weights file named from inside its folder ("model.safetensors", a relative path
// with no folder in it) still takes the folder's name.
TEST(CheckpointTest, AFoldersWeightsFileNamedFromInsideTakesTheFoldersName) {
  namespace fs = std::filesystem;
  const fs::path before = fs::current_path();
  fs::current_path(kFixtures + "/vit_gelu/open_clip");
  auto checkpoint = ReadCheckpoint("open_clip_model.safetensors");
  fs::current_path(before);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->config.name, "open_clip");
  EXPECT_EQ(checkpoint->format, CheckpointFormat::kOpenClip);
}

// Converters that keep only float tensors drop BatchNorm's num_batches_tracked, as
// PyTorch's load_state_dict allows; the model reads it nowhere, so such a ResNet
// loads and gives the reference's features. Any other missing key is still refused.
TEST(CheckpointTest, AResNetWithoutBatchNormStepCountersLoads) {
  const Case c = LoadCase("resnet_transformer");
  ReadCheckpointOptions options;
  options.config = c.config;
  auto checkpoint = ReadCheckpoint(c.dir + "/state_dict.pt", options);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_FALSE(checkpoint->heads_assumed);  // the config gives them
  int dropped = 0;
  for (auto it = checkpoint->weights.begin(); it != checkpoint->weights.end();) {
    const bool counter = absl::EndsWith(it->first, ".num_batches_tracked");
    dropped += counter;
    it = counter ? checkpoint->weights.erase(it) : std::next(it);
  }
  ASSERT_GT(dropped, 10);
  auto model = ClipModel::Create(checkpoint->config);
  ASSERT_TRUE(model.ok()) << model.status();
  TensorMap without_bias = checkpoint->weights;
  without_bias.erase("visual.bn1.bias");
  const absl::Status missing = (*model)->LoadWeights(std::move(without_bias));
  EXPECT_THAT(missing.message(), HasSubstr("missing 'visual.bn1.bias'"));
  ASSERT_TRUE((*model)->LoadWeights(std::move(checkpoint->weights)).ok());
  const auto features = (*model)->EncodeImage(c.inputs.at("images"), /*normalize=*/false);
  ASSERT_TRUE(features.ok()) << features.status();
  EXPECT_LE(MaxAbsDiff(*features, c.expected.at("image_features")), 1e-4);
}

// A weight that is not finite would load and answer every call OK with NaN
// embeddings; a logit_scale whose exp() is 0 would scale every logit to 0.
TEST(ClipModelTest, NonFiniteWeightsAndAZeroScaleAreRefusedAtLoad) {
  auto model = ClipModel::Create(testing::TinyClipConfig(), /*seed=*/1);
  ASSERT_TRUE(model.ok()) << model.status();
  const auto weights_with = [&](const std::string& key, float value) {
    TensorMap weights;
    for (const auto& [name, tensor] : (*model)->NamedTensors()) {
      weights[name] = tensor.clone();
    }
    weights.at(key).view({-1})[0] = value;
    return weights;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  absl::Status status = (*model)->LoadWeights(weights_with("visual.proj", nan));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'visual.proj' holds NaN or infinite"));
  status = (*model)->LoadWeights(weights_with("token_embedding.weight", -inf));
  EXPECT_THAT(status.message(), HasSubstr("'token_embedding.weight' holds NaN"));
  status = (*model)->LoadWeights(weights_with("logit_scale", -200));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'logit_scale' is -200 in the checkpoint"));
  EXPECT_THAT((*model)->LoadWeights(weights_with("logit_scale", nan)).message(),
              HasSubstr("'logit_scale' is nan"));
  // +inf is clamped to 100, as CLIP does.
  ASSERT_TRUE((*model)->LoadWeights(weights_with("logit_scale", inf)).ok());
  EXPECT_EQ((*model)->logit_scale(), 100.0f);
  // Doubles load, converted; one past float's range would be an infinity.
  TensorMap doubles = weights_with("visual.proj", 0.5f);
  for (auto& [name, tensor] : doubles) tensor = tensor.to(torch::kDouble);
  ASSERT_TRUE((*model)->LoadWeights(doubles).ok());
  EXPECT_EQ((*model)->NamedTensors().at("visual.proj").view({-1})[0].item<float>(), 0.5f);
  doubles.at("ln_final.weight").view({-1})[0] = 1e300;
  status = (*model)->LoadWeights(std::move(doubles));
  EXPECT_THAT(status.message(), HasSubstr("'ln_final.weight' holds NaN or infinite"));
  // Integers where a floating weight belongs are refused, not converted.
  TensorMap integers = weights_with("visual.proj", 1);
  integers.at("visual.proj") = integers.at("visual.proj").to(torch::kChar);
  status = (*model)->LoadWeights(std::move(integers));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'visual.proj' is int8 in the checkpoint"));
}

// A weight finite in fp32 can overflow the narrower type To() converts it to (fp16
// ends at 65504, bf16 a little below fp32's end): every answer would be NaN.
TEST(ClipModelTest, AWeightThePrecisionCannotHoldIsRefusedByName) {
  const auto model_with = [](const std::string& key, float value) {
    auto model = ClipModel::Create(testing::TinyClipConfig(), /*seed=*/1);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::NoGradGuard no_grad;
    (*model)->NamedTensors().at(key).view({-1})[0] = value;
    return std::move(*model);
  };
  // Rounds to infinity in bf16 (round to nearest: above 3.3961e38).
  const float beyond_bf16 = 3.4e38f;
  absl::Status status =
      model_with("visual.proj", beyond_bf16)->To(torch::kCPU, Precision::kBFloat16);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("'visual.proj' holds values beyond the range of BFloat16, which "
                        "--precision=bf16 runs it in: use --precision=fp32"));
  Int8Options int8;
  int8.bf16 = true;
  if (CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    status = model_with("token_embedding.weight", -beyond_bf16)
                 ->To(torch::kCPU, Precision::kInt8, int8);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(),
                HasSubstr("'token_embedding.weight' holds values beyond"));
  }
  // The same value in fp32, and a value beyond fp16's range in bf16, are fine.
  EXPECT_TRUE(
      model_with("visual.proj", beyond_bf16)->To(torch::kCPU, Precision::kFloat32).ok());
  EXPECT_TRUE(
      model_with("visual.proj", 1e5f)->To(torch::kCPU, Precision::kBFloat16).ok());
}

// The towers' MLPs are as wide as the config's MlpWidth(): open_clip's int(width *
// mlp_ratio), not its rounding (64 x 2.5390625 = 162.5 made 163, refusing open_clip's
// 162-wide checkpoint).
TEST(ClipModelTest, MlpHiddenWidthIsTheConfigs) {
  ClipConfig config = testing::TinyClipConfig();  // width 64
  config.vision.mlp_ratio = 2.5390625;
  config.text.mlp_width = 293;
  auto model = ClipModel::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  const TensorMap tensors = (*model)->NamedTensors();
  EXPECT_EQ(tensors.at("visual.transformer.resblocks.0.mlp.c_fc.weight").size(0), 162);
  EXPECT_EQ(tensors.at("transformer.resblocks.1.mlp.c_proj.weight").size(1), 293);
}

// exp(logit_scale), at most 100 as in CLIP; a NaN one stays NaN (the service refuses
// to serve it) rather than being clamped to 100.
TEST(ClipModelTest, LogitScaleIsClampedAt100AndNaNStaysNaN) {
  auto model = ClipModel::Create(testing::TinyClipConfig());
  ASSERT_TRUE(model.ok()) << model.status();
  torch::NoGradGuard no_grad;
  torch::Tensor logit_scale = (*model)->NamedTensors().at("logit_scale");
  logit_scale.fill_(-3.0);
  EXPECT_FLOAT_EQ((*model)->logit_scale(), std::exp(-3.0f));
  logit_scale.fill_(50.0);
  EXPECT_EQ((*model)->logit_scale(), 100.0f);
  logit_scale.fill_(std::numeric_limits<float>::infinity());
  EXPECT_EQ((*model)->logit_scale(), 100.0f);
  logit_scale.fill_(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan((*model)->logit_scale()));
}

// A bare state dict's shapes cannot tell QuickGELU from GELU: the checkpoint says it
// assumed QuickGELU, except for OpenAI's archives (QuickGELU models) and where a config
// was given.
TEST(CheckpointTest, ABareStateDictSaysItsActivationWasAssumed) {
  const Case c = LoadCase("vit_gelu");
  for (const char* file : {"state_dict.pt", "model_f32.safetensors"}) {
    auto bare = ReadCheckpoint(c.dir + "/" + file);
    ASSERT_TRUE(bare.ok()) << bare.status();
    EXPECT_TRUE(bare->activation_assumed) << file;
    EXPECT_TRUE(bare->config.quick_gelu) << file;
  }
  auto openai = ReadCheckpoint(c.dir + "/openai.pt");
  ASSERT_TRUE(openai.ok()) << openai.status();
  EXPECT_FALSE(openai->activation_assumed);
  ReadCheckpointOptions options;
  options.config = c.config;
  auto configured = ReadCheckpoint(c.dir + "/state_dict.pt", options);
  ASSERT_TRUE(configured.ok()) << configured.status();
  EXPECT_FALSE(configured->activation_assumed);
  EXPECT_FALSE(configured->config.quick_gelu);
}

// --model_config is for a single weights file with OpenAI/open_clip key names: a folder
// or Hugging Face weights carry their own config, and refuse one rather than ignore it.
TEST(CheckpointTest, AConfigForAFolderOrHuggingFaceWeightsIsRefused) {
  namespace fs = std::filesystem;
  const Case c = LoadCase("vit_gelu");
  ReadCheckpointOptions options;
  options.config = c.config;
  for (const char* path : {"open_clip", "hf", "hf/model.safetensors"}) {
    const absl::Status status = ReadCheckpoint(c.dir + "/" + path, options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(status.message(), HasSubstr("config")) << path;
  }
  // Hugging Face weights away from their config.json cannot be read as a model.
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_weights_alone";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy(c.dir + "/hf/model.safetensors", dir / "model.safetensors");
  const absl::Status alone =
      ReadCheckpoint((dir / "model.safetensors").string()).status();
  EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(alone.message(),
              HasSubstr("load the model's folder, with its config.json"));
  fs::remove_all(dir);
}

// Checkpoints whose head counts follow OpenAI's width/64 rule load from the shapes
// alone, as a real OpenAI .pt does, and still match the reference.
TEST(InferredArchitectureTest, OpenAiShapedCheckpointsLoadWithoutConfig) {
  for (const char* name : {"vit_openai_shapes", "resnet_openai_shapes"}) {
    const Case c = LoadCase(name);
    ASSERT_TRUE(c.manifest["heads_follow_openai_rule"].get<bool>());
    for (const char* file : {"openai.pt", "state_dict.pt"}) {
      SCOPED_TRACE(std::string(name) + "/" + file);
      auto loaded = LoadModel(c.dir + "/" + file);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      EXPECT_FALSE(loaded->random_weights);
      // Logged at start-up: the heads come from OpenAI's rule, not the file.
      EXPECT_TRUE(loaded->heads_assumed);
      EXPECT_EQ(loaded->activation_assumed, std::string(file) == "state_dict.pt");
      EXPECT_EQ(loaded->sha256.size(), 64u);
      EXPECT_EQ(loaded->model->config().vision.heads, c.config.vision.heads);
      auto images = loaded->model->EncodeImage(c.inputs.at("images"), false);
      auto texts = loaded->model->EncodeText(c.inputs.at("texts"), false);
      ASSERT_TRUE(images.ok() && texts.ok());
      EXPECT_LE(MaxAbsDiff(*images, c.expected.at("image_features")), 1e-4);
      EXPECT_LE(MaxAbsDiff(*texts, c.expected.at("text_features")), 1e-4);
    }
  }
}

// Each names the file too: the operator has to find it, and a folder holds several.
TEST(CorruptCheckpointTest, EachGivesItsSpecificErrorNamingTheFile) {
  const std::string dir = kFixtures + "/corrupt";
  const auto manifest = nlohmann::json::parse(ReadFile(dir + "/manifest.json"));
  ASSERT_GE(manifest.size(), 10u);
  for (const auto& entry : manifest) {
    const std::string file = entry["file"];
    SCOPED_TRACE(file);
    ModelLoadOptions options;
    options.config_path = dir + "/" + entry["config"].get<std::string>();
    const absl::Status status = LoadModel(dir + "/" + file, options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(file));
    if (entry.contains("key") && entry["key"].is_string()) {
      EXPECT_THAT(status.message(), HasSubstr(entry["key"].get<std::string>()));
    }
  }
}

// Views with stride 0 repeat one stored value over any shape: their element counts say
// nothing about what the file holds, so the check counts stored values.
TEST(CheckpointTest, StrideZeroViewsCannotPassForAModel) {
  namespace fs = std::filesystem;
  c10::Dict<std::string, at::Tensor> dict;
  const auto add = [&](const std::string& key, std::vector<int64_t> shape) {
    dict.insert(key, torch::zeros({1}).expand(shape));  // one value, stride 0
  };
  add("visual.proj", {1024, 512});
  add("visual.conv1.weight", {1024, 3, 14, 14});
  add("visual.positional_embedding", {257, 1024});
  for (int i = 0; i < 24; ++i) {
    add(absl::StrCat("visual.transformer.resblocks.", i, ".attn.in_proj_weight"),
        {3072, 1024});
  }
  add("visual.transformer.resblocks.0.mlp.c_fc.weight", {4096, 1024});
  add("text_projection", {8, 512});
  add("token_embedding.weight", {1000, 8});
  const std::vector<char> bytes = torch::jit::pickle_save(dict);
  ASSERT_LT(bytes.size(), 1u << 20);  // the views were saved as views
  const fs::path path = fs::path(::testing::TempDir()) / "stride0.pt";
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());

  auto loaded = LoadModel(path.string());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr("needs at least"));
}

// LibTorch's zip reader finds records ignoring case and reads a name up to a NUL, and
// the pickle caches storages by key: "ABCDEFGH" and "abcdefgh\0x" each loaded record
// data/abcdefgh again (256 spellings of one 4 MiB record took 1.2 GB). A key must name
// its record exactly; the exact key twice still loads, once.
TEST(CheckpointTest, AStorageKeyMustNameItsRecordExactly) {
  namespace fs = std::filesystem;
  using testing::PickleFloatTensor;
  using testing::PickleUnicode;
  const auto read = [&](const std::string& second_key) {
    const std::string pickle = std::string("\x80\x02}(") + PickleUnicode("a") +
                               PickleFloatTensor("abcdefgh") + PickleUnicode("b") +
                               PickleFloatTensor(second_key) + "u.";
    const fs::path path = fs::path(::testing::TempDir()) / "aliased.pt";
    {
      caffe2::serialize::PyTorchStreamWriter writer(path.string());
      writer.writeRecord("data.pkl", pickle.data(), pickle.size());
      const float values[4] = {1, 2, 3, 4};
      writer.writeRecord("data/abcdefgh", values, sizeof values);
      writer.writeEndOfFile();
    }
    return ReadCheckpoint(path.string()).status();
  };
  for (const std::string& alias :
       {std::string("ABCDEFGH"), std::string("abcdefgh\0x", 10)}) {
    const absl::Status status = read(alias);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("names its record exactly")) << status;
  }
  // The exact key twice gets past the storages (to the missing model keys).
  EXPECT_THAT(read("abcdefgh").message(), Not(HasSubstr("storage record")));
}

// A file name may be any bytes; the model name it gives travels in protobuf strings
// and Prometheus labels, which must be UTF-8.
TEST(CheckpointTest, ANameFromIllFormedBytesIsValidUtf8) {
  namespace fs = std::filesystem;
  const Case c = LoadCase("vit_transformer");
  const fs::path path = fs::path(::testing::TempDir()) / "model\xff.safetensors";
  fs::copy_file(c.dir + "/model_f32.safetensors", path,
                fs::copy_options::overwrite_existing);
  ReadCheckpointOptions options;
  options.config = c.config;
  auto checkpoint = ReadCheckpoint(path.string(), options);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->config.name, "model\xEF\xBF\xBD");  // U+FFFD
}

// A safetensors header's length is little-endian, so its first bytes can read as a
// pickle protocol header (0x80 0x02): such a file is still safetensors.
// Loading compares a checkpoint with MinimumParameterCount() before building the
// model, so the bound must never exceed a real model's count.
TEST(MinimumParameterCountTest, IsALowerBoundForEveryArchitecture) {
  std::vector<std::pair<std::string, ClipConfig>> configs;
  for (const char* name : {"ViT-B-32", "RN50"})
    configs.emplace_back(name, *PresetConfig(name));
  for (const char* name : kCases) configs.emplace_back(name, LoadCase(name).config);
  // A ResNet whose weight is in its many narrow blocks, beside a small text tower: the
  // attention pool alone would be a fraction of it.
  ClipConfig deep_resnet = *PresetConfig("RN50");
  deep_resnet.vision.width = 8;
  deep_resnet.vision.stage_layers = {1, 1, 1, 200};
  deep_resnet.text.width = 64;
  deep_resnet.text.heads = 4;
  deep_resnet.text.layers = 1;
  configs.emplace_back("RN with 200 blocks in stage 4", deep_resnet);
  for (const auto& [name, config] : configs) {
    auto model = ClipModel::CreateForLoading(config);
    ASSERT_TRUE(model.ok()) << name << ": " << model.status();
    const double bound = MinimumParameterCount(config);
    const double actual = static_cast<double>((*model)->num_parameters());
    EXPECT_LE(bound, actual) << name;
    EXPECT_GE(bound, 0.5 * actual) << name;  // close enough to catch a hollow file
  }
}

// Empty tensors carry shapes but no bytes: a few hundred bytes of safetensors can
// describe a ViT-L-sized model. It is refused before that model is built.
TEST(CheckpointTest, ShapesOfAModelTheFileCannotFillAreRefusedBeforeBuilding) {
  namespace fs = std::filesystem;
  nlohmann::json header;
  // The only bytes: a 1000 x 8 token embedding (the text width must be positive).
  constexpr int64_t kData = 1000 * 8 * 4;
  const auto add = [&](const std::string& key, std::vector<int64_t> shape) {
    header[key] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {kData, kData}}};
  };
  add("visual.proj", {1024, 0});
  add("visual.conv1.weight", {1024, 0, 14, 14});
  add("visual.positional_embedding", {257, 0});
  for (int i = 0; i < 24; ++i) {
    add(absl::StrCat("visual.transformer.resblocks.", i, ".attn.in_proj_weight"),
        {0, 1024});
  }
  add("visual.transformer.resblocks.0.mlp.c_fc.weight", {4096, 0});
  add("text_projection", {0, 512});
  header["token_embedding.weight"] = {
      {"dtype", "F32"}, {"shape", {1000, 8}}, {"data_offsets", {0, kData}}};
  const std::string text = header.dump();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  bytes += text;
  bytes += std::string(kData, '\0');
  const fs::path path = fs::path(::testing::TempDir()) / "hollow.safetensors";
  std::ofstream(path, std::ios::binary) << bytes;

  auto loaded = LoadModel(path.string());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr("needs at least"));
}

TEST(CheckpointTest, SafetensorsWhoseLengthLooksLikeAPickleStillLoads) {
  namespace fs = std::filesystem;
  const Case c = LoadCase("vit_transformer");
  const std::string bytes = ReadFile(c.dir + "/model_f32.safetensors");
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  constexpr uint64_t kLength = 0x10280;  // little-endian 80 02 01 00 ...
  ASSERT_LE(n, kLength);
  // The same header padded with spaces (the format allows them); the data offsets
  // count from the header's end, so they stay valid.
  std::string header = bytes.substr(8, n);
  header.append(kLength - n, ' ');
  std::string padded("\x80\x02\x01\0\0\0\0\0", 8);
  padded += header;
  padded += bytes.substr(8 + n);
  const fs::path path = fs::path(::testing::TempDir()) / "pickle_like.safetensors";
  std::ofstream(path, std::ios::binary) << padded;

  ReadCheckpointOptions options;
  options.config = c.config;
  auto checkpoint = ReadCheckpoint(path.string(), options);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->format, CheckpointFormat::kSafetensors);
}

// With a config given, what lies beside the weights is never looked at: a broken entry
// there does not matter.
TEST(CheckpointTest, AGivenConfigLooksAtNothingBesideTheWeights) {
  namespace fs = std::filesystem;
  const Case c = LoadCase("vit_transformer");
  const fs::path dir = testing::FreshTestDir("config_given");
  fs::copy_file(c.dir + "/model_f32.safetensors", dir / "model.safetensors");
  fs::create_symlink("open_clip_config.json", dir / "open_clip_config.json");
  ReadCheckpointOptions options;
  options.config = c.config;
  const auto checkpoint = ReadCheckpoint((dir / "model.safetensors").string(), options);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  fs::remove_all(dir);
}

// Each safetensors dtype becomes the torch dtype of the same name, values and all.
TEST(CheckpointTest, SafetensorsDtypesKeepTheirValues) {
  namespace fs = std::filesystem;
  std::string data;
  nlohmann::json header = nlohmann::json::object();
  const auto add = [&](const std::string& name, const char* dtype, const void* values,
                       size_t bytes) {
    header[name] = {{"dtype", dtype},
                    {"shape", {2}},
                    {"data_offsets", {data.size(), data.size() + bytes}}};
    data.append(static_cast<const char*>(values), bytes);
  };
  const double f64[] = {1.5, -2.25};
  const int64_t i64[] = {int64_t{1} << 40, -9};
  const int32_t i32[] = {70000, -8};
  const int16_t i16[] = {300, -301};
  const int8_t i8[] = {5, -6};
  const uint8_t u8[] = {200, 1};
  const uint8_t b8[] = {1, 0};
  add("f64", "F64", f64, sizeof(f64));
  add("i64", "I64", i64, sizeof(i64));
  add("i32", "I32", i32, sizeof(i32));
  add("i16", "I16", i16, sizeof(i16));
  add("i8", "I8", i8, sizeof(i8));
  add("u8", "U8", u8, sizeof(u8));
  add("bool", "BOOL", b8, sizeof(b8));
  const std::string json = header.dump();
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i)
    file[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  file += json + data;
  const fs::path path = fs::path(::testing::TempDir()) / "dtypes.safetensors";
  std::ofstream(path, std::ios::binary) << file;
  ReadCheckpointOptions options;
  options.config = testing::TinyClipConfig();
  auto checkpoint = ReadCheckpoint(path.string(), options);
  fs::remove(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const TensorMap& w = checkpoint->weights;
  EXPECT_TRUE(w.at("f64").equal(torch::tensor({1.5, -2.25}, torch::kDouble)));
  EXPECT_TRUE(w.at("i64").equal(torch::tensor({int64_t{1} << 40, int64_t{-9}})));
  EXPECT_TRUE(w.at("i32").equal(torch::tensor({70000, -8}, torch::kInt)));
  EXPECT_TRUE(w.at("i16").equal(torch::tensor({300, -301}, torch::kShort)));
  EXPECT_TRUE(w.at("i8").equal(torch::tensor({5, -6}, torch::kChar)));
  EXPECT_TRUE(w.at("u8").equal(torch::tensor({200, 1}, torch::kByte)));
  EXPECT_TRUE(w.at("bool").equal(torch::tensor({true, false}, torch::kBool)));
}

// Hugging Face weights are transposed and fused before the model's checks: a view that
// repeats one stored value (stride 0) would be made whole there, gigabytes from a file
// of bytes.
TEST(CheckpointTest, HuggingFaceViewsThatRepeatStoredValuesAreRefused) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_stride0";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy(kFixtures + "/vit_transformer/hf/config.json", dir / "config.json");
  c10::Dict<std::string, at::Tensor> dict;
  dict.insert("visual_projection.weight", torch::zeros({1}).expand({20000, 20000}));
  const std::vector<char> bytes = torch::jit::pickle_save(dict);
  ASSERT_LT(bytes.size(), 1u << 20);  // the view was saved as a view
  std::ofstream(dir / "pytorch_model.bin", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto checkpoint = ReadCheckpoint(dir.string());
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(checkpoint.status().message(),
              HasSubstr("'visual_projection.weight' repeats stored values"));
  // Many tensors over one storage, each inside it: fused, they would be copied each.
  c10::Dict<std::string, at::Tensor> shared;
  const torch::Tensor one = torch::zeros({64, 64});
  for (int layer = 0; layer < 50; ++layer) {
    for (const char* proj : {"q", "k", "v"}) {
      shared.insert(absl::StrCat("vision_model.encoder.layers.", layer, ".self_attn.",
                                 proj, "_proj.weight"),
                    one);
    }
  }
  const std::vector<char> shared_bytes = torch::jit::pickle_save(shared);
  std::ofstream(dir / "pytorch_model.bin", std::ios::binary | std::ios::trunc)
      .write(shared_bytes.data(), static_cast<std::streamsize>(shared_bytes.size()));
  checkpoint = ReadCheckpoint(dir.string());
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("they share stored values"));
}

// An integer q, k or v part would be promoted to float by the fusing torch::cat, past
// the model's check that weights are floating-point (a review found it).
TEST(CheckpointTest, AHuggingFaceIntegerAttentionPartIsRefused) {
  namespace fs = std::filesystem;
  const fs::path dir = testing::FreshTestDir("hf_integer_q");
  fs::copy(kFixtures + "/vit_transformer/hf/config.json", dir / "config.json");
  c10::Dict<std::string, at::Tensor> dict;
  for (const char* proj : {"q", "k", "v"}) {
    const torch::Tensor part = torch::ones({64, 64});
    dict.insert(
        absl::StrCat("vision_model.encoder.layers.0.self_attn.", proj, "_proj.weight"),
        std::string(proj) == "q" ? part.to(torch::kChar) : part);
  }
  const std::vector<char> bytes = torch::jit::pickle_save(dict);
  std::ofstream(dir / "pytorch_model.bin", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const absl::Status status = ReadCheckpoint(dir.string()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(
      std::string(status.message()),
      HasSubstr("q_proj.weight of visual.transformer.resblocks.0. holds integers"));
  fs::remove_all(dir);
}

// A Hugging Face directory's preprocessor_config.json gives the normalization, and
// one that asks for another input size or other steps is refused at load.
TEST(CheckpointTest, HuggingFaceDirectoryReadsItsPreprocessorConfig) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_with_preprocessor";
  fs::remove_all(dir);
  fs::copy(kFixtures + "/vit_transformer/hf", dir);
  const auto write = [&](const std::string& text) {
    std::ofstream(dir / "preprocessor_config.json") << text;
  };
  auto plain = ReadCheckpoint(dir.string());
  ASSERT_TRUE(plain.ok()) << plain.status();
  const int size = plain->config.vision.image_size;
  EXPECT_FLOAT_EQ(plain->config.image_mean[0], 0.48145466f);  // OpenAI's, the default

  write(absl::StrCat(R"({"crop_size": {"height": )", size, R"(, "width": )", size,
                     R"(}, "do_center_crop": true, "do_convert_rgb": true,
      "do_normalize": true, "do_rescale": true, "do_resize": true,
      "image_mean": [0.5, 0.25, 0.125], "image_processor_type": "CLIPImageProcessor",
      "image_std": [0.5, 0.5, 0.5], "processor_class": "CLIPProcessor", "resample": 3,
      "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": )",
                     size, "}}"));
  auto custom = ReadCheckpoint(dir.string());
  ASSERT_TRUE(custom.ok()) << custom.status();
  EXPECT_FLOAT_EQ(custom->config.image_mean[1], 0.25f);
  EXPECT_FLOAT_EQ(custom->config.image_std[2], 0.5f);

  write(absl::StrCat(R"({"crop_size": )", size + 1, "}"));
  EXPECT_THAT(ReadCheckpoint(dir.string()).status().message(),
              HasSubstr("preprocessor_config.json sets crop_size"));
  fs::remove_all(dir);
}

// A weights file of a kind clipserve does not read gets the same answer named alone
// or found in its open_clip folder: a pre-1.6 torch.save file the advice to re-save
// it, anything else the kinds that are read.
TEST(CheckpointTest, AnUnreadWeightsFileGetsOneAnswerAloneOrInItsFolder) {
  namespace fs = std::filesystem;
  struct Case {
    std::string bytes;
    absl::StatusCode code;
    std::string message;
  };
  const Case cases[] = {
      {std::string("\x80\x02\x8a\x0a", 4) + std::string(100, 'x'),
       absl::StatusCode::kUnimplemented, "legacy (pre-1.6) format; re-save it"},
      {"<html>not found</html>", absl::StatusCode::kInvalidArgument,
       "is not a recognized checkpoint (expected a TorchScript archive, a torch.save "
       "zip file, or safetensors)"},
  };
  for (const Case& c : cases) {
    const fs::path dir = testing::FreshTestDir("unread_weights");
    fs::copy_file(kFixtures + "/vit_gelu/open_clip/open_clip_config.json",
                  dir / "open_clip_config.json");
    const fs::path weights = dir / "open_clip_pytorch_model.bin";
    std::ofstream(weights, std::ios::binary) << c.bytes;
    for (const fs::path& path : {dir, weights}) {
      SCOPED_TRACE(path.string());
      const absl::Status status = ReadCheckpoint(path.string()).status();
      EXPECT_EQ(status.code(), c.code) << status;
      EXPECT_THAT(status.message(), HasSubstr(c.message));
    }
    fs::remove_all(dir);
  }
}

// What file modes forbid is named as such, with the path, never as a missing or
// unrecognized checkpoint (or, from a throwing std::filesystem call, a crash): an
// operator must fix a permission, not look for a file. Needs a user that file modes
// bind: as root, it runs as nobody.
TEST(CheckpointTest, WhatMayNotBeReadIsPermissionDenied) {
  namespace fs = std::filesystem;
  const fs::path dir = testing::FreshTestDir("unreadable_checkpoint");
  const fs::path folder = dir / "open_clip";
  fs::create_directories(folder);
  fs::copy_file(kFixtures + "/vit_gelu/open_clip/open_clip_config.json",
                folder / "open_clip_config.json");
  fs::copy_file(kFixtures + "/vit_gelu/open_clip/open_clip_model.safetensors",
                folder / "open_clip_model.safetensors");
  fs::copy_file(kFixtures + "/vit_gelu/model_f32.safetensors",
                dir / "secret.safetensors");
  testing::RunUnprivileged(dir, [&] {
    fs::permissions(dir / "secret.safetensors", fs::perms::none);
    fs::permissions(folder, fs::perms::none);
    if (std::ifstream(dir / "secret.safetensors").is_open()) {
      fs::permissions(folder, fs::perms::owner_all);
      GTEST_SKIP() << "this user reads files whatever their mode";
    }
    const struct {
      fs::path path;
      std::string names;
    } cases[] = {
        {dir / "secret.safetensors",
         "cannot read checkpoint '" + (dir / "secret.safetensors").string() + "'"},
        {folder, "cannot look for model configuration '" +
                     (folder / "open_clip_config.json").string() + "'"},
        {folder / "open_clip_model.safetensors", "cannot read checkpoint '"},
    };
    for (const auto& c : cases) {
      SCOPED_TRACE(c.path.string());
      const absl::Status status = ReadCheckpoint(c.path.string()).status();
      EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
      EXPECT_THAT(std::string(status.message()), HasSubstr(c.names));
      EXPECT_THAT(std::string(status.message()), HasSubstr("Permission denied"));
    }
    fs::permissions(folder, fs::perms::owner_all);
    fs::permissions(dir / "secret.safetensors", fs::perms::owner_all);
  });
  fs::remove_all(dir);
}

// A Hugging Face folder in shards: each shard read from beside the index, once, and
// the index and the shards must agree.
TEST(CheckpointTest, AShardIndexMustAgreeWithItsShards) {
  namespace fs = std::filesystem;
  const fs::path dir = testing::FreshTestDir("hf_shards");
  fs::remove_all(dir);
  fs::copy(kFixtures + "/vit_transformer/hf_sharded", dir);
  const fs::path index = dir / "model.safetensors.index.json";
  std::string original;
  {
    std::ifstream in(index);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string first = "model-00001-of-00003.safetensors";
  const std::string second = "model-00002-of-00003.safetensors";
  const std::string third = "model-00003-of-00003.safetensors";
  // The first and third shards swapped, so that the tensor named first (in sorted
  // order, as the index is read) sits in the last shard.
  fs::rename(dir / first, dir / "swap");
  fs::rename(dir / third, dir / first);
  fs::rename(dir / "swap", dir / third);
  for (size_t at = 0; (at = original.find("-of-00003", at)) != std::string::npos;) {
    const size_t digit = at - 1;  // 1 <-> 3
    original[digit] = original[digit] == '1' ? '3' : original[digit] == '3' ? '1' : '2';
    at += 9;
  }
  std::ofstream(index, std::ios::trunc) << original;
  auto whole = ReadCheckpoint(dir.string());
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->format, CheckpointFormat::kHuggingFace);
  EXPECT_TRUE(absl::EndsWith(whole->weights_path, "model.safetensors.index.json"));
  // The digest covers every shard's bytes in the order of their names: what
  // `cat model-*.safetensors | sha256sum` prints.
  ASSERT_EQ(whole->weight_files,
            (std::vector<std::string>{(dir / first).string(), (dir / second).string(),
                                      (dir / third).string()}));
  {
    std::ofstream cat(dir / "cat.bin", std::ios::binary);
    for (const std::string& name : {first, second, third}) {
      std::ifstream shard(dir / name, std::ios::binary);
      cat << shard.rdbuf();
    }
  }
  auto digest = Sha256OfFiles(whole->weight_files);
  ASSERT_TRUE(digest.ok());
  EXPECT_EQ(*digest, *Sha256OfFiles({(dir / "cat.bin").string()}));
  fs::remove(dir / "cat.bin");
  const auto refused = [&](const std::string& text) {
    std::ofstream(index, std::ios::trunc) << text;
    return ReadCheckpoint(dir.string()).status();
  };
  // A tensor the index places in a shard that does not hold it.
  std::string moved = original;
  const size_t at = moved.find(first);
  ASSERT_NE(at, std::string::npos);
  moved.replace(at, first.size(), second);
  EXPECT_THAT(refused(moved).message(), HasSubstr(", which does not hold it"));
  // A shard that is not there, and names that are not files beside the index.
  EXPECT_EQ(refused(R"({"weight_map": {"logit_scale": "model-9.safetensors"}})").code(),
            absl::StatusCode::kNotFound);
  for (const char* name : {"../hf/model.safetensors", "/etc/passwd", "..", ""}) {
    SCOPED_TRACE(name);
    const absl::Status status =
        refused(absl::StrCat(R"({"weight_map": {"logit_scale": ")", name, R"("}})"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("is not a file name beside the index"));
  }
  EXPECT_THAT(refused(R"({"metadata": {}})").message(), HasSubstr("no weight_map"));
  EXPECT_THAT(refused("[]").message(), HasSubstr("model.safetensors.index.json: "));
  // One tensor in two shards.
  fs::copy_file(dir / first, dir / "copy.safetensors");
  std::string twice = original;
  twice.insert(twice.rfind('}', twice.rfind('}') - 1),
               R"(, "zzz.extra": "copy.safetensors")");
  EXPECT_THAT(refused(twice).message(), HasSubstr("' is in both "));
  std::ofstream(index, std::ios::trunc) << original;
  ASSERT_TRUE(ReadCheckpoint(dir.string()).ok());
  fs::remove_all(dir);
}

// A model hub's folder may hold open_clip's config beside config.json with only the
// Hugging Face weights: those are read.
TEST(CheckpointTest, AFolderWithBothConfigsReadsTheWeightsItHas) {
  namespace fs = std::filesystem;
  const fs::path dir = testing::FreshTestDir("both_configs");
  fs::remove_all(dir);
  fs::copy(kFixtures + "/vit_transformer/hf", dir);
  fs::copy_file(kFixtures + "/vit_transformer/open_clip/open_clip_config.json",
                dir / "open_clip_config.json");
  auto hf = ReadCheckpoint(dir.string());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->format, CheckpointFormat::kHuggingFace);
  fs::copy_file(kFixtures + "/vit_transformer/open_clip/open_clip_model.safetensors",
                dir / "open_clip_model.safetensors");
  auto open_clip = ReadCheckpoint(dir.string());
  ASSERT_TRUE(open_clip.ok()) << open_clip.status();
  EXPECT_EQ(open_clip->format, CheckpointFormat::kOpenClip);
  fs::remove(dir / "open_clip_model.safetensors");
  fs::remove(dir / "model.safetensors");
  const absl::Status neither = ReadCheckpoint(dir.string()).status();
  EXPECT_EQ(neither.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(neither.message(), HasSubstr("nor the Hugging Face weights of its"));
  fs::remove_all(dir);
}

TEST(CheckpointTest, MissingPathIsNotFound) {
  EXPECT_EQ(ReadCheckpoint("/nonexistent/model.pt").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(HuggingFaceKeysTest, UnknownKeyAndIncompleteQkvAreNamed) {
  TensorMap unknown;
  unknown["vision_model.mystery.weight"] = torch::zeros({1});
  EXPECT_THAT(MapHuggingFaceKeys(unknown).status().message(),
              HasSubstr("vision_model.mystery.weight"));
  TensorMap partial;
  partial["text_model.encoder.layers.0.self_attn.q_proj.weight"] = torch::zeros({4, 4});
  partial["text_model.encoder.layers.0.self_attn.k_proj.weight"] = torch::zeros({4, 4});
  EXPECT_THAT(MapHuggingFaceKeys(partial).status().message(), HasSubstr("v_proj.weight"));
}

TEST(DemoModelTest, SeededPresetIsDeterministicAndReportsRandomWeights) {
  auto a = LoadModel("demo:ViT-B-32");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->random_weights);
  EXPECT_EQ(a->format, CheckpointFormat::kDemo);
  EXPECT_TRUE(a->sha256.empty());
  const ClipModel& model = *a->model;
  EXPECT_EQ(model.config().embed_dim, 512);
  EXPECT_NEAR(model.num_parameters(), 151.3e6, 0.5e6);
  torch::Tensor images = torch::randn(
      {2, 3, 224, 224}, torch::Generator(at::make_generator<at::CPUGeneratorImpl>(7)));
  auto features = model.EncodeImage(images, true);
  ASSERT_TRUE(features.ok()) << features.status();
  EXPECT_EQ(features->sizes(), (std::vector<int64_t>{2, 512}));
  EXPECT_NEAR(features->norm(2, 1).min().item<float>(), 1.0f, 1e-5);
  EXPECT_FALSE(torch::isnan(*features).any().item<bool>());

  auto b = LoadModel("demo:ViT-B-32");
  ASSERT_TRUE(b.ok());
  auto again = b->model->EncodeImage(images, true);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(torch::equal(*features, *again));
  EXPECT_EQ(LoadModel("demo:NoSuchNet").status().code(), absl::StatusCode::kNotFound);
  // A config file is for checkpoints: given with a demo model, it is refused, not
  // ignored (even one that does not exist was accepted).
  ModelLoadOptions with_config;
  with_config.config_path = "/no/such/open_clip_config.json";
  const auto configured = LoadModel("demo:ViT-B-32", with_config);
  EXPECT_EQ(configured.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(configured.status().message(), HasSubstr("drop --model_config"));
}

// Configuration files (--model_config, a folder's config.json) are read whole, so
// only regular files of a sane size are: /dev/zero filled 3 GB before a review killed
// it, and a FIFO blocked the start-up.
TEST(ReadConfigFileTest, OnlyRegularFilesOfAtMost16MiB) {
  const std::filesystem::path dir = testing::FreshTestDir("read_config_file");
  const std::string small = (dir / "config.json").string();
  std::ofstream(small) << R"({"embed_dim": 512})";
  const absl::StatusOr<std::string> text = ReadConfigFile(small);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, R"({"embed_dim": 512})");
  const absl::StatusOr<std::string> device = ReadConfigFile("/dev/zero");
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      device.status().message(),
      HasSubstr("cannot read model configuration '/dev/zero': not a regular file"));
  const std::string large = (dir / "large.json").string();
  std::ofstream{large};
  std::filesystem::resize_file(large, kMaxConfigFileBytes + 1);  // sparse
  const absl::StatusOr<std::string> too_large = ReadConfigFile(large);
  EXPECT_EQ(too_large.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_large.status().message(), HasSubstr("larger than 16777216 bytes"));
  EXPECT_EQ(ReadConfigFile((dir / "missing.json").string()).status().code(),
            absl::StatusCode::kNotFound);
}

// Four random images and four texts of 5, 12, 30 and 77 tokens (start, random ids,
// end, zero padding) for `model`, from a generator seeded with `seed`.
struct SampleInputs {
  torch::Tensor images;
  torch::Tensor ids;
};
SampleInputs MakeSampleInputs(const ClipModel& model, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t s = model.config().vision.image_size;
  SampleInputs in;
  in.images = torch::randn({4, 3, s, s}, generator);
  const int64_t vocab = model.config().text.vocab_size;
  in.ids = torch::zeros({4, 77}, torch::kLong);
  const std::vector<int64_t> lengths = {5, 12, 30, 77};
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t n = lengths[i];
    in.ids[i][0] = vocab - 2;
    in.ids[i].narrow(0, 1, n - 2).copy_(torch::randint(1, vocab - 2, {n - 2}, generator));
    in.ids[i][n - 1] = vocab - 1;
  }
  return in;
}

// Expects the unit rows of `rows` far enough apart (cosine below 0.99) that a check
// of each at cosine 0.999 against its reference would fail a swapped or stale row.
void ExpectRowsApart(const torch::Tensor& rows) {
  ASSERT_TRUE(rows.defined());
  const torch::Tensor unit = rows.to(torch::kDouble);
  const torch::Tensor cosines =
      unit.matmul(unit.t()) - torch::eye(rows.size(0), torch::kDouble) * 2;
  EXPECT_LT(cosines.max().item<double>(), 0.99) << cosines;
}

// Encodes `in` with `model` as it is now placed, normalized; the results on the CPU.
std::pair<torch::Tensor, torch::Tensor> EncodeSample(const ClipModel& model,
                                                     const SampleInputs& in) {
  auto image = model.EncodeImage(in.images, true);
  auto text = model.EncodeText(in.ids, true);
  EXPECT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(text.ok()) << text.status();
  if (!image.ok() || !text.ok()) return {};
  return {image->cpu(), text->cpu()};
}

// The full-size network, where bf16's rounding has 12 layers of width 768 to
// accumulate in (the reference cases above are tiny).
TEST(DemoModelTest, FullSizeViTB32InBf16StaysWithinCosine999OfFp32) {
  auto loaded = LoadModel("demo:ViT-B-32");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ClipModel& model = *loaded->model;
  const SampleInputs in = MakeSampleInputs(model, 11);
  const auto [image32, text32] = EncodeSample(model, in);
  ExpectRowsApart(image32);
  ExpectRowsApart(text32);
  ASSERT_TRUE(model.To(torch::kCPU, Precision::kBFloat16).ok());
  const auto [image16, text16] = EncodeSample(model, in);
  ASSERT_TRUE(image16.defined() && image32.defined());
  EXPECT_GE(MinRowCosine(image16, image32), 0.999);
  EXPECT_GE(MinRowCosine(text16, text32), 0.999);
}

TEST(DemoModelTest, FullSizeViTB32InInt8StaysWithinCosine999OfFp32) {
  if (!CpuInfoHasInt8Dot(ReadProcCpuinfo())) {
    GTEST_SKIP() << "no int8 dot products on this CPU";
  }
  auto loaded = LoadModel("demo:ViT-B-32");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ClipModel& model = *loaded->model;
  const SampleInputs in = MakeSampleInputs(model, 12);
  const auto [image32, text32] = EncodeSample(model, in);
  ExpectRowsApart(image32);
  ExpectRowsApart(text32);
  ASSERT_TRUE(model.To(torch::kCPU, Precision::kBFloat16).ok());
  const auto [image16, text16] = EncodeSample(model, in);
  // The rest in fp32 and in bf16, every product in int8.
  for (const bool bf16 : {false, true}) {
    Int8Options int8;
    int8.bf16 = bf16;
    int8.min_rows = 0;
    ASSERT_TRUE(model.To(torch::kCPU, Precision::kInt8, int8).ok());
    const auto [image8, text8] = EncodeSample(model, in);
    ASSERT_TRUE(image8.defined() && image32.defined());
    EXPECT_GE(MinRowCosine(image8, image32), 0.999) << "bf16 " << bf16;
    EXPECT_GE(MinRowCosine(text8, text32), 0.999) << "bf16 " << bf16;
    // Not the bf16 model's results: the int8 products ran.
    EXPECT_GT(MaxAbsDiff(image8, image16), 1e-4) << "bf16 " << bf16;
    EXPECT_GT(MaxAbsDiff(text8, text16), 1e-4) << "bf16 " << bf16;
    std::cout << "int8 (rest in " << (bf16 ? "bf16" : "fp32")
              << ") vs fp32, lowest cosine: images " << MinRowCosine(image8, image32)
              << ", texts " << MinRowCosine(text8, text32) << "\n";
  }
}

TEST(PrecisionTest, Int8IsForTheCpuOnly) {
  auto model = ClipModel::Create(LoadCase("vit_transformer").config);
  ASSERT_TRUE(model.ok()) << model.status();
  const absl::Status status =
      (*model)->To(torch::Device(torch::kCUDA, 0), Precision::kInt8);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  EXPECT_EQ((*model)->precision(), Precision::kFloat32);
  EXPECT_EQ(*ParsePrecision("int8"), Precision::kInt8);
  EXPECT_TRUE(CpuInfoHasInt8Dot("flags\t\t: fpu avx512f avx512_vnni avx512_bf16\n"));
  EXPECT_TRUE(CpuInfoHasInt8Dot("flags\t\t: fpu avx2 avx_vnni\n"));
  EXPECT_TRUE(CpuInfoHasInt8Dot("flags\t\t: fpu amx_int8 amx_tile\n"));
  EXPECT_FALSE(CpuInfoHasInt8Dot("flags\t\t: fpu avx2 avx512f avx512bw\n"));
  EXPECT_FALSE(CpuInfoHasInt8Dot("model name\t: avx512_vnni in a name\n"));
  EXPECT_EQ(PrecisionName(Precision::kInt8), "int8");
}

// On a GPU, in fp16 and bf16, both image tower families stay within cosine 0.999 of
// the CPU in fp32. Skipped without a CUDA device.
TEST(DemoModelTest, GpuHalfPrecisionStaysWithinCosine999OfCpuFp32_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"demo:ViT-B-32", "demo:RN50"}) {
    SCOPED_TRACE(name);
    auto cpu = LoadModel(name);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    const SampleInputs in = MakeSampleInputs(*cpu->model, 12);
    const auto [image32, text32] = EncodeSample(*cpu->model, in);
    ExpectRowsApart(image32);
    ExpectRowsApart(text32);
    for (Precision precision : {Precision::kFloat16, Precision::kBFloat16}) {
      SCOPED_TRACE(std::string(PrecisionName(precision)));
      // Straight from the fp32 weights (the seeded demo gives the same ones).
      ModelLoadOptions options;
      options.device = torch::Device(torch::kCUDA, 0);
      options.precision = precision;
      auto gpu = LoadModel(name, options);
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      const auto [image16, text16] = EncodeSample(*gpu->model, in);
      ASSERT_TRUE(image16.defined() && image32.defined());
      EXPECT_GE(MinRowCosine(image16, image32), 0.999);
      EXPECT_GE(MinRowCosine(text16, text32), 0.999);
    }
  }
}

TEST(PrecisionTest, AutoPicksBf16WhereItOutrunsFp32) {
  const char* amx =
      "processor : 0\nvendor_id\t: GenuineIntel\n"
      "flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n";
  const char* amd_avx512bf16 =
      "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n";
  // Cooper Lake, or a Sapphire Rapids in a VM that hides AMX: bf16 instructions, but
  // products no faster than fp32's.
  const char* intel_avx512bf16 =
      "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f avx512_bf16\n";
  const char* amd_plain = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f\n";
  const char* no_vendor = "flags\t\t: fpu avx512f avx512_bf16\n";
  EXPECT_EQ(*ResolvePrecision("auto", torch::kCPU, amx), Precision::kBFloat16);
  EXPECT_EQ(*ResolvePrecision("auto", torch::kCPU, amd_avx512bf16), Precision::kBFloat16);
  EXPECT_EQ(*ResolvePrecision("auto", torch::kCPU, intel_avx512bf16),
            Precision::kFloat32);
  EXPECT_EQ(*ResolvePrecision("auto", torch::kCPU, amd_plain), Precision::kFloat32);
  EXPECT_EQ(*ResolvePrecision("auto", torch::kCPU, no_vendor), Precision::kFloat32);
  EXPECT_EQ(*ResolvePrecision("int8", torch::kCPU, amx), Precision::kInt8);
  // Names are lower case; the refusal lists every choice of the flag, auto too.
  EXPECT_THAT(ResolvePrecision("FP32", torch::kCPU, amx).status().message(),
              HasSubstr("'FP32' is not auto, fp32, bf16, fp16 or int8"));
  // bf16 runs natively (not emulated) wherever the instructions are.
  EXPECT_TRUE(CpuInfoHasBf16(intel_avx512bf16));
  EXPECT_TRUE(CpuInfoHasBf16(amx));
  EXPECT_FALSE(CpuInfoHasBf16(amd_plain));
  // The vendor comes from its own line, not from a flag or a model name.
  EXPECT_FALSE(CpuInfoPrefersBf16(
      "vendor_id\t: GenuineIntel\nmodel name\t: AuthenticAMD lookalike\n"
      "flags\t\t: fpu avx512_bf16\n"));
  EXPECT_TRUE(CpuInfoPrefersBf16("vendor_id : AuthenticAMD\nflags : avx512_bf16\n"));
  EXPECT_EQ(*ResolvePrecision("auto", torch::Device(torch::kCUDA, 0), amd_plain),
            Precision::kFloat16);
  EXPECT_EQ(*ResolvePrecision("fp32", torch::kCPU, amx), Precision::kFloat32);
  EXPECT_FALSE(ResolvePrecision("fp8", torch::kCPU, amx).ok());
  EXPECT_EQ(ParseDevice("cuda:1")->index(), 1);
  EXPECT_TRUE(ParseDevice("cpu")->is_cpu());
  EXPECT_FALSE(ParseDevice("tpu").ok());
  EXPECT_FALSE(ParseDevice("cuda:x").ok());
}

TEST(CatchTorchErrorsTest, AllocationFailuresAreResourceExhausted) {
  EXPECT_TRUE(CatchTorchErrors([] {}, "x").ok());
  const absl::Status typed = CatchTorchErrors(
      [] { TORCH_CHECK_WITH(OutOfMemoryError, false, "Tried to allocate 2.00 GiB"); },
      "running");
  EXPECT_EQ(typed.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(typed.message()), HasSubstr("running: Tried to allocate"));
  // A standard container's failed allocation beside the tensors is memory too.
  const absl::Status standard =
      CatchTorchErrors([] { throw std::bad_alloc(); }, "running");
  EXPECT_EQ(standard.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(standard.message(), "running: std::bad_alloc");
  // The code a LibTorch exception with `message` becomes.
  const auto code_of = [](const char* message) {
    return CatchTorchErrors([message] { throw std::runtime_error(message); }, "running")
        .code();
  };
  EXPECT_EQ(code_of("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                    "`cublasCreate(handle)`\nbacktrace"),
            absl::StatusCode::kResourceExhausted);
  // What cublasCreate() mostly says when the GPU is nearly full.
  EXPECT_EQ(code_of("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling "
                    "`cublasCreate(handle)`\nbacktrace"),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(code_of("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling "
                    "`cublasLtMatmul(...)`"),
            absl::StatusCode::kInternal);
  const absl::Status other = CatchTorchErrors(
      [] { throw std::runtime_error("CUDA error: an illegal memory access\nbacktrace"); },
      "running", absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.message(), "running: CUDA error: an illegal memory access");
}

TEST(ClipModelTest, RejectsBadInputsWithoutThrowing) {
  auto config = PresetConfig("ViT-B-32");
  ASSERT_TRUE(config.ok());
  config->vision.width = 64;
  config->vision.heads = 1;
  config->vision.layers = 1;
  config->text.width = 64;
  config->text.heads = 1;
  config->text.layers = 1;
  auto model = ClipModel::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->EncodeImage(torch::zeros({1, 3, 100, 100}), true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)
                ->EncodeText(torch::full({1, 78}, 49407, torch::kLong), true)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      (*model)->EncodeText(torch::full({2}, 49407, torch::kLong), true).status().code(),
      absl::StatusCode::kInvalidArgument);
  // Ids must lie in [0, vocab_size): the bounds themselves, in any row.
  const auto ids_status = [&](int64_t id) {
    torch::Tensor ids = torch::full({2, 3}, 49406, torch::kLong);
    ids[1][2] = id;
    return (*model)->EncodeText(ids, true).status();
  };
  EXPECT_TRUE(ids_status(0).ok());
  EXPECT_TRUE(ids_status(49407).ok());
  for (const int64_t id : {int64_t{-1}, int64_t{49408}, int64_t{50000}}) {
    EXPECT_EQ(ids_status(id).code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_THAT(ids_status(id).message(), HasSubstr("token ids must be in [0, 49408)"));
  }
  EXPECT_EQ((*model)->To(torch::kCPU, Precision::kFloat16).code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace clipserve
