#include "server/tokenizer/bpe_vocabulary.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_data.h"

namespace clipserve {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string WriteTemp(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/bpe_vocabulary_test_" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(ByteSymbolsTest, MatchBytesToUnicode) {
  // Printable Latin-1 maps to itself; the rest to U+0100.. in byte order.
  EXPECT_EQ(ByteToSymbol('a'), U'a');
  EXPECT_EQ(ByteToSymbol('!'), U'!');
  EXPECT_EQ(ByteToSymbol(0xE9), U'\u00E9');
  EXPECT_EQ(ByteToSymbol(0), U'\u0100');
  EXPECT_EQ(ByteToSymbol(' '), U'\u0120');
  EXPECT_EQ(ByteToSymbol(0x7F), U'\u0121');
  EXPECT_EQ(ByteToSymbol(0xAD), U'\u0143');  // the soft hyphen, last of the 68
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(SymbolToByte(ByteToSymbol(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(SymbolToByte(U'\u0144'), -1);
  EXPECT_EQ(SymbolToByte(U' '), -1);
}

TEST(OpenAiVocabularyTest, LoadsTheRealFile) {
  const std::string path = testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz");
  ASSERT_FALSE(path.empty());
  const absl::StatusOr<BpeVocabulary> vocab = LoadOpenAiVocabulary(path);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(vocab->tokens.size(), 49408u);
  ASSERT_EQ(vocab->merges.size(), kClipMergeCount);
  EXPECT_EQ(vocab->tokens[0], "!");
  EXPECT_EQ(vocab->tokens[255], "\xC5\x83");  // U+0143, the last byte symbol
  EXPECT_EQ(vocab->tokens[256], "!</w>");
  EXPECT_EQ(vocab->merges[0], std::make_pair(std::string("i"), std::string("n")));
  EXPECT_EQ(vocab->tokens[512], "in");
  EXPECT_EQ(vocab->tokens[49406], kStartOfTextToken);
  EXPECT_EQ(vocab->tokens[49407], kEndOfTextToken);
}

TEST(OpenAiVocabularyTest, MissingFileIsNotFound) {
  const absl::StatusOr<BpeVocabulary> vocab =
      LoadOpenAiVocabulary(::testing::TempDir() + "/no_such_vocab.txt.gz");
  EXPECT_EQ(vocab.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(vocab.status().message().find("no_such_vocab.txt.gz"), std::string::npos);
}

TEST(OpenAiVocabularyTest, CorruptFilesAreDataLoss) {
  const std::string real = testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz");
  ASSERT_FALSE(real.empty());
  const std::string gz = ReadAll(real);
  std::string flipped = gz;
  for (size_t i = 1000; i < 1100; ++i) flipped[i] = static_cast<char>(~flipped[i]);
  for (const auto& [name, contents] :
       {std::make_pair("truncated.gz", gz.substr(0, gz.size() / 2)),
        std::make_pair("flipped.gz", flipped),
        std::make_pair("plain.txt", std::string("#version: 0.2\ni n\n")),
        std::make_pair("empty.gz", std::string())}) {
    const absl::StatusOr<BpeVocabulary> vocab =
        LoadOpenAiVocabulary(WriteTemp(name, contents));
    EXPECT_EQ(vocab.status().code(), absl::StatusCode::kDataLoss) << name;
    EXPECT_NE(vocab.status().message().find(name), std::string::npos) << vocab.status();
  }
}

TEST(OpenAiVocabularyTest, TooFewOrMalformedMergesAreDataLoss) {
  EXPECT_EQ(ParseOpenAiVocabulary("#version: 0.2\ni n\nt h\n").status().code(),
            absl::StatusCode::kDataLoss);
  std::string text = "#version: 0.2\n";
  for (size_t i = 0; i < kClipMergeCount; ++i) text += "a b\n";
  EXPECT_TRUE(ParseOpenAiVocabulary(text).ok());
  std::string bad = text;
  bad.replace(bad.find("a b\n"), 4, "a b c\n");
  const absl::Status status = ParseOpenAiVocabulary(bad).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("line 2"), std::string::npos) << status;
}

TEST(HuggingFaceVocabularyTest, ParsesLikeClipTokenizer) {
  const absl::StatusOr<BpeVocabulary> vocab = ParseHuggingFaceVocabulary(
      R"({"b": 1, "a": 0, "ab": 2})", "#version: 0.2\na b\n\n");
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->tokens, (std::vector<std::string>{"a", "b", "ab"}));
  ASSERT_EQ(vocab->merges.size(), 1u);
  EXPECT_EQ(vocab->merges[0], std::make_pair(std::string("a"), std::string("b")));
}

TEST(HuggingFaceVocabularyTest, MalformedFilesAreDataLoss) {
  for (const char* json : {"not json", "[1, 2]", R"({"a": "0"})", R"({"a": 0, "b": 0})",
                           R"({"a": 0, "b": 5})", R"({"a": -1})", R"({"a": 0.5})"}) {
    EXPECT_EQ(ParseHuggingFaceVocabulary(json, "#version: 0.2\n").status().code(),
              absl::StatusCode::kDataLoss)
        << json;
  }
  EXPECT_EQ(
      ParseHuggingFaceVocabulary(R"({"a": 0})", "#version: 0.2\na b c\n").status().code(),
      absl::StatusCode::kDataLoss);
}

TEST(HuggingFaceTokenizerJsonTest, TakesTheModelsVocabularyAndMerges) {
  const absl::StatusOr<BpeVocabulary> vocab = ParseHuggingFaceTokenizerJson(
      R"({"model": {"type": "BPE", "vocab": {"b": 1, "a": 0, "ab": 2, "abc": 3, "c": 4},
                    "merges": ["a b", ["ab", "c"]]}})");
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->tokens, (std::vector<std::string>{"a", "b", "ab", "abc", "c"}));
  EXPECT_EQ(vocab->merges,
            (std::vector<std::pair<std::string, std::string>>{{"a", "b"}, {"ab", "c"}}));
}

TEST(HuggingFaceTokenizerJsonTest, OtherModelsAndMalformedFilesAreRefused) {
  EXPECT_EQ(ParseHuggingFaceTokenizerJson(
                R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  for (const char* json :
       {"not json", "[]", R"({"model": 1})", R"({"model": {"type": "BPE"}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": {}}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 1}, "merges": []}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}})",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [[1, 2]]}})"}) {
    EXPECT_EQ(ParseHuggingFaceTokenizerJson(json).status().code(),
              absl::StatusCode::kDataLoss)
        << json;
  }
}

TEST(HuggingFaceVocabularyTest, MissingFileIsNotFound) {
  const std::string merges = WriteTemp("merges.txt", "#version: 0.2\n");
  EXPECT_EQ(LoadHuggingFaceVocabulary(::testing::TempDir() + "/nope.json", merges)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

TEST(ByteLevelDemoVocabularyTest, HasBytesAndSpecialTokensOnly) {
  const BpeVocabulary vocab = ByteLevelDemoVocabulary();
  ASSERT_EQ(vocab.tokens.size(), 514u);
  EXPECT_TRUE(vocab.merges.empty());
  EXPECT_EQ(vocab.tokens[0], "!");
  EXPECT_EQ(vocab.tokens[256], "!</w>");
  EXPECT_EQ(vocab.tokens[512], kStartOfTextToken);
  EXPECT_EQ(vocab.tokens[513], kEndOfTextToken);
}

}  // namespace
}  // namespace clipserve
