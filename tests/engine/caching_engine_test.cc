#include "server/engine/caching_engine.h"

#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/fake_engine.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CachingEngineTest : public ::testing::Test {
 protected:
  CachingEngineTest() : fake_(FakeEngine::DefaultDescription()) {}

  void MakeEngine(CachingEngineOptions options) {
    engine_ = std::make_unique<CachingEngine>(&fake_, options);
  }

  absl::StatusOr<EmbedResult> Texts(std::vector<std::string> texts,
                                    EmbedOptions options = {}) {
    absl::Notification done;
    absl::StatusOr<EmbedResult> out;
    engine_->EmbedTexts(std::move(texts), options, "texts",
                        [&](absl::StatusOr<EmbedResult> r) {
                          out = std::move(r);
                          done.Notify();
                        });
    done.WaitForNotification();
    return out;
  }

  absl::StatusOr<EmbedResult> Images(std::vector<ImageInput> images) {
    absl::Notification done;
    absl::StatusOr<EmbedResult> out;
    engine_->EmbedImages(std::move(images), {}, "images",
                         [&](absl::StatusOr<EmbedResult> r) {
                           out = std::move(r);
                           done.Notify();
                         });
    done.WaitForNotification();
    return out;
  }

  // The texts of the engine calls made so far.
  std::vector<std::vector<std::string>> TextCalls() const {
    std::vector<std::vector<std::string>> texts;
    for (const FakeEngine::Call& call : fake_.calls()) {
      if (call.kind == FakeEngine::Call::Kind::kTexts) texts.push_back(call.texts);
    }
    return texts;
  }

  // Row `row` of `result` is the fake's answer for `text`.
  static void ExpectTextRow(const EmbedResult& result, int row, const std::string& text,
                            bool normalize = true) {
    std::vector<float> expected = FakeEngine::TextVector(text, result.dim);
    if (normalize) expected = FakeEngine::Normalized(expected);
    ASSERT_LT(row, result.rows());
    EXPECT_EQ(std::vector<float>(result.row(row), result.row(row) + result.dim), expected)
        << "row " << row << " is not the embedding of '" << text << "'";
    EXPECT_EQ(result.num_tokens[row], static_cast<int>(text.size()) + 2);
  }

  FakeEngine fake_;
  std::unique_ptr<CachingEngine> engine_;
};

TEST_F(CachingEngineTest, ARepeatedTextSkipsTheModel) {
  MakeEngine({});
  auto first = Texts({"a cat", "a dog"});
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Texts({"a dog", "a bird"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(TextCalls(),
              ElementsAre(ElementsAre("a cat", "a dog"), ElementsAre("a bird")));
  ExpectTextRow(*second, 0, "a dog");
  ExpectTextRow(*second, 1, "a bird");
  const EmbeddingCache::Stats stats = engine_->text_cache_stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 3);
  EXPECT_EQ(stats.entries, 3);
}

TEST_F(CachingEngineTest, ARequestOfHitsIsAnsweredInlineWithoutTheModel) {
  MakeEngine({});
  ASSERT_TRUE(Texts({"x", "y"}).ok());
  fake_.set_hold(true);  // the fake would now hold any request it got
  bool answered = false;
  absl::StatusOr<EmbedResult> out;
  engine_->EmbedTexts({"y", "x"}, {}, "texts", [&](absl::StatusOr<EmbedResult> r) {
    out = std::move(r);
    answered = true;
  });
  EXPECT_TRUE(answered);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectTextRow(*out, 0, "y");
  ExpectTextRow(*out, 1, "x");
  EXPECT_EQ(TextCalls().size(), 1u);
  fake_.set_hold(false);
}

TEST_F(CachingEngineTest, ATextRepeatedInOneRequestIsComputedOnce) {
  MakeEngine({});
  auto result = Texts({"x", "y", "x", "x"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(TextCalls(), ElementsAre(ElementsAre("x", "y")));
  ASSERT_EQ(result->rows(), 4);
  ExpectTextRow(*result, 0, "x");
  ExpectTextRow(*result, 1, "y");
  ExpectTextRow(*result, 2, "x");
  ExpectTextRow(*result, 3, "x");
}

TEST_F(CachingEngineTest, OptionsArePartOfTheKey) {
  MakeEngine({});
  EmbedOptions raw;
  raw.normalize = false;
  ASSERT_TRUE(Texts({"same"}).ok());
  auto unnormalized = Texts({"same"}, raw);
  ASSERT_TRUE(unnormalized.ok());
  ExpectTextRow(*unnormalized, 0, "same", /*normalize=*/false);
  EmbedOptions strict;
  strict.truncate = false;
  ASSERT_TRUE(Texts({"same"}, strict).ok());
  EXPECT_EQ(TextCalls().size(), 3u);
}

TEST_F(CachingEngineTest, TruncationFactsComeBackWithACachedRow) {
  MakeEngine({});
  const std::string long_text(100, 'z');  // over the fake's context of 77
  ASSERT_TRUE(Texts({long_text}).ok());
  auto again = Texts({"short", long_text});
  ASSERT_TRUE(again.ok());
  EXPECT_THAT(again->truncated, ElementsAre(false, true));
  EXPECT_THAT(again->num_tokens, ElementsAre(7, 77));
}

TEST_F(CachingEngineTest, ErrorsNameTheCallersItemAndAreNotCached) {
  MakeEngine({});
  EmbedOptions strict;
  strict.truncate = false;
  ASSERT_TRUE(Texts({"fine"}, strict).ok());
  const std::string too_long(100, 'z');
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto result = Texts({"fine", "also fine", too_long}, strict);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    // The engine saw only the misses, but the error names the caller's item 2.
    EXPECT_THAT(result.status().message(), HasSubstr("texts[2]"));
  }
  const std::vector<FakeEngine::Call> calls = fake_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_THAT(calls[1].texts, ElementsAre("also fine", too_long));
  EXPECT_THAT(calls[1].options.item_numbers, ElementsAre(1, 2));
}

TEST_F(CachingEngineTest, EngineFailuresPassThroughAndAreNotCached) {
  MakeEngine({});
  fake_.set_error(absl::UnavailableError("shutting down"));
  EXPECT_EQ(Texts({"a"}).status().code(), absl::StatusCode::kUnavailable);
  fake_.set_error(absl::OkStatus());
  ASSERT_TRUE(Texts({"a"}).ok());
  EXPECT_EQ(TextCalls().size(), 2u);
}

class LookupCounter : public EngineObserver {
 public:
  void OnCacheLookup(Modality modality, bool hit) override {
    (modality == Modality::kText ? text : image)[hit ? 1 : 0]++;
  }
  int text[2] = {0, 0};   // misses, hits
  int image[2] = {0, 0};  // misses, hits
};

TEST_F(CachingEngineTest, TheObserverHearsOfEveryLookup) {
  LookupCounter counter;
  CachingEngineOptions options;
  options.image_cache_bytes = 1 << 20;
  options.observer = &counter;
  MakeEngine(options);
  ASSERT_TRUE(Texts({"a", "b", "a"}).ok());  // the repeat is not looked up again
  ASSERT_TRUE(Texts({"a", "c"}).ok());
  ImageInput image;
  image.encoded = "bytes";
  ASSERT_TRUE(Images({image}).ok());
  ASSERT_TRUE(Images({image}).ok());
  EXPECT_EQ(counter.text[0], 3);
  EXPECT_EQ(counter.text[1], 1);
  EXPECT_EQ(counter.image[0], 1);
  EXPECT_EQ(counter.image[1], 1);
}

TEST_F(CachingEngineTest, ADisabledTextCacheForwardsEveryText) {
  CachingEngineOptions options;
  options.text_cache_bytes = 0;
  MakeEngine(options);
  ASSERT_TRUE(Texts({"a", "a"}).ok());
  ASSERT_TRUE(Texts({"a"}).ok());
  EXPECT_THAT(TextCalls(), ElementsAre(ElementsAre("a", "a"), ElementsAre("a")));
}

TEST_F(CachingEngineTest, ImagesAreCachedOnlyWhenAskedTo) {
  ImageInput encoded;
  encoded.encoded = "some image bytes";
  ImageInput raw;
  raw.is_raw = true;
  raw.width = 1;
  raw.height = 1;
  raw.rgb8 = "abc";

  MakeEngine({});  // images off by default
  ASSERT_TRUE(Images({encoded}).ok());
  ASSERT_TRUE(Images({encoded}).ok());
  EXPECT_EQ(fake_.calls().size(), 2u);

  CachingEngineOptions options;
  options.image_cache_bytes = 1 << 20;
  MakeEngine(options);
  ASSERT_TRUE(Images({encoded, raw}).ok());
  auto again = Images({raw, encoded});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(fake_.calls().size(), 3u);
  const std::vector<float> expected =
      FakeEngine::Normalized(FakeEngine::ImageVector(raw, again->dim));
  EXPECT_EQ(std::vector<float>(again->row(0), again->row(0) + again->dim), expected);
  EXPECT_TRUE(again->num_tokens.empty());
  // The same bytes as raw pixels of another shape are another image.
  raw.width = 3;
  raw.height = 1;
  raw.rgb8 = "abcdefghi";
  ImageInput reshaped = raw;
  reshaped.width = 1;
  reshaped.height = 3;
  ASSERT_TRUE(Images({raw}).ok());
  ASSERT_TRUE(Images({reshaped}).ok());
  EXPECT_EQ(fake_.calls().size(), 5u);
}

TEST(CachingEngineLimitsTest, ReportsTheInnerEnginesTextsPerCall) {
  FakeEngine fake(FakeEngine::DefaultDescription(), /*max_texts_per_call=*/37);
  CachingEngine engine(&fake, {});
  EXPECT_EQ(engine.max_texts_per_call(), 37);
}

// A cancelled call's misses wait in the inner engine's queues: the request to drop
// them must reach it.
TEST(CachingEngineCancelTest, DropDeadItemsReachesTheInnerEngine) {
  FakeEngine fake(FakeEngine::DefaultDescription());
  CachingEngine engine(&fake, {});
  engine.DropDeadItems();
  EXPECT_EQ(fake.drop_dead_calls(), 1);
}

}  // namespace
}  // namespace clipserve
