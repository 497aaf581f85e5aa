#include "client/bench.h"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/synthetic_image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/image/image_decoder.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "tests/testing/shared_data.h"

namespace clipserve {
namespace {

TEST(ParseBenchDurationTest, UnitsAndBareSeconds) {
  EXPECT_EQ(ParseBenchDuration("30s").value(), absl::Seconds(30));
  EXPECT_EQ(ParseBenchDuration("500ms").value(), absl::Milliseconds(500));
  EXPECT_EQ(ParseBenchDuration("2m").value(), absl::Minutes(2));
  EXPECT_EQ(ParseBenchDuration("1h30m").value(), absl::Minutes(90));
  EXPECT_EQ(ParseBenchDuration("45").value(), absl::Seconds(45));
  EXPECT_EQ(ParseBenchDuration("2.5").value(), absl::Milliseconds(2500));
  EXPECT_EQ(ParseBenchDuration("8760h").value(), absl::Hours(8760));  // a year
  for (const char* bad : {"", "0", "0s", "-1s", "soon", "inf", "nan", "30 parsecs",
                          "8761h", "1e11", "3000000h"}) {
    EXPECT_EQ(ParseBenchDuration(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(DefaultCaptionsTest, ManyDistinctShortCaptions) {
  const auto& captions = DefaultCaptions();
  EXPECT_GE(captions.size(), 32u);
  EXPECT_EQ(std::set<std::string>(captions.begin(), captions.end()).size(),
            captions.size());
  for (const std::string& caption : captions) {
    EXPECT_FALSE(caption.empty());
    EXPECT_LT(caption.size(), 80u) << caption;
  }
}

// The words --unique_texts appends: 256 distinct ones, each a single token of the
// real CLIP vocabulary, so a suffix adds exactly 3 tokens.
TEST(UniqueTextSuffixTest, ThreeSingleTokenWordsDistinctForEveryNumberInRange) {
  const std::vector<std::string>& words = UniqueTextWords();
  ASSERT_EQ(words.size(), 256u);
  EXPECT_EQ(std::set<std::string>(words.begin(), words.end()).size(), 256u);
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> clip =
      LoadTokenizerNextTo(testing::SharedPath("clip"));
  ASSERT_TRUE(clip.ok()) << clip.status();
  for (const std::string& word : words) {
    const absl::StatusOr<EncodedText> encoded = (*clip)->Encode(word);
    ASSERT_TRUE(encoded.ok());
    EXPECT_EQ(encoded->ids.size(), 3u) << word;  // start, the word, end
  }
  const absl::StatusOr<EncodedText> suffixed =
      (*clip)->Encode("a photo of a cat" + UniqueTextSuffix(123456789));
  ASSERT_TRUE(suffixed.ok());
  EXPECT_EQ(suffixed->ids.size(), 2u + 5u + 3u);

  // Each digit of the number in base 256 picks a word: neighbours, and numbers that
  // differ only in their highest digit, differ.
  std::set<std::string> suffixes;
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{255}, uint64_t{256},
                     uint64_t{65535}, uint64_t{65536}, kUniqueTextSuffixes - 1}) {
    EXPECT_TRUE(suffixes.insert(UniqueTextSuffix(n)).second) << n;
  }
  EXPECT_EQ(UniqueTextSuffix(7), UniqueTextSuffix(7 + kUniqueTextSuffixes));
  EXPECT_EQ(UniqueTextSuffix(0), " " + words[0] + " " + words[0] + " " + words[0]);
  std::set<std::string> spread;
  for (uint64_t n = 0; n < 70000; ++n) spread.insert(UniqueTextSuffix(n * 239));
  EXPECT_EQ(spread.size(), 70000u);
}

TEST(SyntheticImageTest, DeterministicPerSeedAndDifferentAcrossSeeds) {
  EXPECT_EQ(SyntheticRgb(64, 48, 1), SyntheticRgb(64, 48, 1));
  EXPECT_NE(SyntheticRgb(64, 48, 1), SyntheticRgb(64, 48, 2));
  EXPECT_EQ(SyntheticJpeg(64, 48, 3).value(), SyntheticJpeg(64, 48, 3).value());
}

TEST(SyntheticImageTest, PhotoSizedJpegThatTheServerDecodes) {
  auto jpeg = SyntheticJpeg(640, 480, 1);
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  EXPECT_EQ(jpeg->substr(0, 3), "\xFF\xD8\xFF");
  // A flat image would be a few KB and noise hundreds; a photo of this size at
  // quality 90 is tens of KB.
  EXPECT_GT(jpeg->size(), 20'000u);
  EXPECT_LT(jpeg->size(), 250'000u);
  auto decoded = image::DecodeImage(*jpeg);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, 640);
  EXPECT_EQ(decoded->height, 480);
}

TEST(SyntheticImageTest, HasStructureNotJustNoise) {
  // Neighbouring pixels correlate strongly (smooth regions), as in photos.
  const int w = 160, h = 120;
  const std::vector<uint8_t> rgb = SyntheticRgb(w, h, 5);
  double diff = 0;
  int count = 0;
  for (int y = 0; y < h; ++y) {
    for (int x = 1; x < w; ++x) {
      diff += std::abs(rgb[(y * w + x) * 3] - rgb[(y * w + x - 1) * 3]);
      ++count;
    }
  }
  EXPECT_LT(diff / count, 12.0);
  EXPECT_GT(diff / count, 1.0) << "and some texture";
}

TEST(SyntheticImageTest, RejectsBadArguments) {
  EXPECT_EQ(SyntheticJpeg(0, 10, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SyntheticJpeg(10, 10, 1, 101).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BenchJsonTest, ContractKeysAndRates) {
  BenchResult result;
  result.requests = 20;
  result.items = 40;
  result.succeeded = 18;
  result.errors["RESOURCE_EXHAUSTED"] = 2;
  result.elapsed = absl::Seconds(4);
  result.latency_ms = {10, 20, 30, 40};
  BenchOptions options;
  options.items_per_request = 2;
  const nlohmann::ordered_json json = BenchJson(result, options);
  EXPECT_EQ(json["requests"], 20);
  EXPECT_EQ(json["items"], 40);
  EXPECT_EQ(json["errors"]["RESOURCE_EXHAUSTED"], 2);
  EXPECT_DOUBLE_EQ(json["qps"].get<double>(), 5.0);          // every request sent
  EXPECT_DOUBLE_EQ(json["items_per_s"].get<double>(), 9.0);  // answered items only
  EXPECT_EQ(json["latency_ms"]["p50"], 10.0);
  EXPECT_EQ(json["latency_ms"]["max"], 40.0);
  EXPECT_NE(BenchText(result, options).find("RESOURCE_EXHAUSTED 2"), std::string::npos);
  options.modality = BenchModality::kText;
  EXPECT_THAT(BenchText(result, options), ::testing::HasSubstr(", 2 texts per request,"));
  options.items_per_request = 1;
  EXPECT_THAT(BenchText(result, options), ::testing::HasSubstr(", 1 text per request,"));
}

}  // namespace
}  // namespace clipserve
