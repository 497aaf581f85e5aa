#include "server/service/request_validation.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "gtest/gtest.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The field named by the BadRequest payload of `status`.
std::string BadField(const absl::Status& status) {
  const auto payload = status.GetPayload(kBadRequestTypeUrl);
  if (!payload.has_value()) return "<no BadRequest>";
  google::rpc::BadRequest bad_request;
  if (!bad_request.ParseFromString(std::string(*payload)) ||
      bad_request.field_violations_size() != 1) {
    return "<malformed BadRequest>";
  }
  return bad_request.field_violations(0).field();
}

// Encodes a code point the way a naive encoder would (no range checks).
std::string Encode(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

TEST(ValidateLimitsTest, LimitsArePositiveAndImagesAtMostAGigapixel) {
  RequestLimits limits;
  EXPECT_TRUE(ValidateLimits(limits).ok());
  limits.max_image_pixels = kMaxImagePixelsLimit;
  EXPECT_TRUE(ValidateLimits(limits).ok());
  limits.max_image_pixels = kMaxImagePixelsLimit + 1;
  EXPECT_EQ(ValidateLimits(limits).code(), absl::StatusCode::kInvalidArgument);
  limits.max_image_pixels = 0;
  EXPECT_EQ(ValidateLimits(limits).code(), absl::StatusCode::kInvalidArgument);
  limits = RequestLimits();
  limits.max_items_per_request = 0;
  EXPECT_EQ(ValidateLimits(limits).code(), absl::StatusCode::kInvalidArgument);
}

TEST(IsValidUtf8Test, AcceptsEveryScalarValueAndRejectsSurrogates) {
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    ASSERT_EQ(IsValidUtf8(Encode(cp)), !surrogate) << std::hex << cp;
  }
}

TEST(IsValidUtf8Test, RejectsMalformedSequences) {
  for (const std::string& bad : std::vector<std::string>{
           "\x80", "\xBF", "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xE0\x9F\xBF",
           "\xF0\x80\x80\x80", "\xF0\x8F\xBF\xBF", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80",
           "\xFE", "\xFF", "\xC3", "\xE2\x82", "\xF0\x9F\x90", "\xC3\x28", "\xE2\x28\xA1",
           "a\xC3", "\xE2\x82\xACok\x80"}) {
    EXPECT_FALSE(IsValidUtf8(bad)) << absl::CEscape(bad);
  }
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8(std::string("\0", 1)));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x88"));
}

TEST(ToImageInputTest, ConvertsEncodedAndRaw) {
  RequestLimits limits;
  v1::Image encoded;
  encoded.set_encoded("bytes");
  absl::StatusOr<ImageInput> input = ToImageInput(encoded, limits, "image");
  ASSERT_TRUE(input.ok());
  EXPECT_FALSE(input->is_raw);
  EXPECT_EQ(input->encoded, "bytes");

  v1::Image raw;
  raw.mutable_raw()->set_width(2);
  raw.mutable_raw()->set_height(1);
  raw.mutable_raw()->set_rgb8("abcdef");
  input = ToImageInput(raw, limits, "image");
  ASSERT_TRUE(input.ok());
  EXPECT_TRUE(input->is_raw);
  EXPECT_EQ(input->width, 2);
  EXPECT_EQ(input->height, 1);
  EXPECT_EQ(input->rgb8, "abcdef");
}

TEST(ToImageInputTest, PixelCountDoesNotOverflow) {
  v1::Image raw;
  raw.mutable_raw()->set_width(0xFFFFFFFFu);
  raw.mutable_raw()->set_height(0xFFFFFFFFu);
  const absl::Status status = ToImageInput(raw, RequestLimits{}, "images[0]").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("over the limit"));
  EXPECT_EQ(BadField(status), "images[0]");
}

TEST(ToNormalizedEmbeddingsTest, NormalizesEachRow) {
  google::protobuf::RepeatedPtrField<v1::Embedding> rows;
  for (const float v : {3.0f, 4.0f}) rows.Add()->add_values(v);
  rows[0].add_values(4.0f);
  rows[1].add_values(-3.0f);
  absl::StatusOr<std::vector<float>> out =
      ToNormalizedEmbeddings(rows, 2, RequestLimits{}, "texts");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(*out, ElementsAre(0.6f, 0.8f, 0.8f, -0.6f));

  rows[1].set_values(1, std::nanf(""));
  EXPECT_EQ(BadField(ToNormalizedEmbeddings(rows, 2, RequestLimits{}, "texts").status()),
            "texts[1]");
  // Huge but finite values whose squares overflow float are still normalized (double).
  rows[1].set_values(0, 3e38f);
  rows[1].set_values(1, 3e38f);
  out = ToNormalizedEmbeddings(rows, 2, RequestLimits{}, "texts");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_NEAR((*out)[2], std::sqrt(0.5), 1e-6);
}

TEST(ResolveLogitScaleTest, TemperatureOrModelScale) {
  EXPECT_EQ(*ResolveLogitScale(false, 0, 100), 100.0f);
  EXPECT_EQ(*ResolveLogitScale(true, 0.5f, 100), 2.0f);
  EXPECT_EQ(*ResolveLogitScale(true, 1.0f, 100), 1.0f);
  EXPECT_EQ(*ResolveLogitScale(true, kMinTemperature, 100), 1.0f / kMinTemperature);
  // 3e-39 has a finite inverse (3.4e38) but overflows the logits and the loss.
  for (const float bad :
       {0.0f, -0.0f, -1.0f, std::nanf(""), INFINITY, 1e-45f, 3e-39f, 0.9e-6f}) {
    EXPECT_EQ(BadField(ResolveLogitScale(true, bad, 100).status()), "temperature") << bad;
  }
}

TEST(ResolveTemplatesTest, DefaultsAndPlaceholders) {
  google::protobuf::RepeatedPtrField<std::string> templates;
  EXPECT_THAT(*ResolveTemplates(templates, RequestLimits{}),
              ElementsAre("a photo of a {}."));
  *templates.Add() = "{{}}";  // one placeholder, in braces
  *templates.Add() = "itap of a {}";
  EXPECT_THAT(*ResolveTemplates(templates, RequestLimits{}),
              ElementsAre("{{}}", "itap of a {}"));
  *templates.Add() = "{}{}";
  EXPECT_EQ(BadField(ResolveTemplates(templates, RequestLimits{}).status()),
            "templates[2]");
  EXPECT_EQ(ApplyTemplate("a {} b", "x{}y"), "a x{}y b");
}

TEST(ResolveTopKTest, ZeroIsFiveAndClamped) {
  EXPECT_EQ(ResolveTopK(0, 10), 5);
  EXPECT_EQ(ResolveTopK(0, 3), 3);
  EXPECT_EQ(ResolveTopK(2, 10), 2);
  EXPECT_EQ(ResolveTopK(0xFFFFFFFFu, 10), 10);
}

TEST(ValidatePromptSizesTest, TheLongestLabelInTheLongestTemplateMustFit) {
  RequestLimits limits;
  limits.max_text_bytes = 21;
  google::protobuf::RepeatedPtrField<std::string> labels;
  labels.Add("cat");
  labels.Add(std::string(10, 'x'));
  EXPECT_TRUE(ValidatePromptSizes(labels, {"a photo of {}", "{}"}, limits).ok());  // 21
  const absl::Status over =
      ValidatePromptSizes(labels, {"{}", "a photo of a {}"}, limits);
  EXPECT_EQ(BadField(over), "labels[1]");
  EXPECT_THAT(over.message(), HasSubstr("with templates[1] the prompt has 23 bytes"));
}

}  // namespace
}  // namespace clipserve
