#include "server/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/tokenizer/unicode_text.h"
#include "tests/testing/shared_data.h"
#include "tests/testing/unprivileged.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int32_t kSot = 49406;
constexpr int32_t kEot = 49407;

struct Case {
  std::string text;
  std::vector<int32_t> ids;  // without start and end tokens
};

// The reference cases: openai/CLIP's simple_tokenizer with ftfy replaced by NFC.
std::vector<Case> LoadCases() {
  const std::string path = testing::SharedPath("clip/tokenizer_cases.jsonl");
  std::vector<Case> cases;
  if (path.empty()) return cases;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json row = nlohmann::json::parse(line);
    cases.push_back(
        {row.at("text").get<std::string>(), row.at("ids").get<std::vector<int32_t>>()});
  }
  return cases;
}

std::string VocabPath() {
  return testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz");
}

std::unique_ptr<BpeTokenizer> OpenAiTokenizer(const BpeTokenizer::Options& options = {}) {
  const std::string path = VocabPath();
  if (path.empty()) return nullptr;
  absl::StatusOr<BpeVocabulary> vocab = LoadOpenAiVocabulary(path);
  EXPECT_TRUE(vocab.ok()) << vocab.status();
  if (!vocab.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer =
      BpeTokenizer::Create(*std::move(vocab), options);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// A fresh, empty directory under the test's temp dir.
std::string MakeTempDir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("bpe_tokenizer_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// Checks every case against `tokenizer`; returns how many were checked.
int ExpectAllCasesMatch(const BpeTokenizer& tokenizer, const std::vector<Case>& cases) {
  int checked = 0;
  for (const Case& c : cases) {
    const absl::StatusOr<EncodedText> encoded = tokenizer.Encode(c.text);
    if (!encoded.ok()) {
      ADD_FAILURE() << encoded.status() << " for '" << c.text << "'";
      continue;
    }
    std::vector<int32_t> expected = {kSot};
    expected.insert(expected.end(), c.ids.begin(), c.ids.end());
    expected.push_back(kEot);
    EXPECT_EQ(encoded->ids, expected) << "for '" << c.text << "'";
    EXPECT_FALSE(encoded->truncated) << "for '" << c.text << "'";
    ++checked;
  }
  return checked;
}

class OpenAiTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new std::vector<Case>(LoadCases());
    tokenizer_ = OpenAiTokenizer().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete cases_;
  }
  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr);
    ASSERT_EQ(cases_->size(), 1296u);
  }

  static const BpeTokenizer& tokenizer() { return *tokenizer_; }
  static const std::vector<Case>& cases() { return *cases_; }

  // The ids of `text` without start and end tokens and without truncation.
  static std::vector<int32_t> InnerIds(const std::string& text) {
    BpeTokenizer::Options options;
    options.context_length = 1 << 20;
    static const BpeTokenizer* const unlimited = OpenAiTokenizer(options).release();
    const absl::StatusOr<EncodedText> encoded = unlimited->Encode(text);
    EXPECT_TRUE(encoded.ok()) << encoded.status();
    if (!encoded.ok()) return {};
    return std::vector<int32_t>(encoded->ids.begin() + 1, encoded->ids.end() - 1);
  }

 private:
  static const BpeTokenizer* tokenizer_;
  static std::vector<Case>* cases_;
};

const BpeTokenizer* OpenAiTokenizerTest::tokenizer_ = nullptr;
std::vector<Case>* OpenAiTokenizerTest::cases_ = nullptr;

TEST_F(OpenAiTokenizerTest, SpecialTokensComeFromTheVocabulary) {
  EXPECT_EQ(tokenizer().vocab_size(), 49408);
  EXPECT_EQ(tokenizer().start_of_text_id(), kSot);
  EXPECT_EQ(tokenizer().end_of_text_id(), kEot);
  EXPECT_EQ(tokenizer().context_length(), 77);
}

TEST_F(OpenAiTokenizerTest, MatchesAllReferenceCases) {
  EXPECT_EQ(ExpectAllCasesMatch(tokenizer(), cases()), 1296);
}

TEST_F(OpenAiTokenizerTest, HuggingFaceFilesOfTheSameVocabularyGiveTheSameIds) {
  // Convert OpenAI's file into transformers' vocab.json + merges.txt, load that through
  // LoadTokenizerNextTo, and expect the same ids for every case.
  absl::StatusOr<BpeVocabulary> vocab = LoadOpenAiVocabulary(VocabPath());
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  nlohmann::json json = nlohmann::json::object();
  for (size_t id = 0; id < vocab->tokens.size(); ++id) json[vocab->tokens[id]] = id;
  std::string merges = "#version: 0.2\n";
  for (const auto& [left, right] : vocab->merges)
    absl::StrAppend(&merges, left, " ", right, "\n");
  const std::string dir = MakeTempDir("hf");
  std::ofstream(dir + "/vocab.json") << json.dump();
  std::ofstream(dir + "/merges.txt") << merges;
  // Files the pair comes before are never looked at: a broken one does not matter.
  std::filesystem::create_symlink("tokenizer.json", dir + "/tokenizer.json");

  absl::StatusOr<std::unique_ptr<BpeTokenizer>> hf = LoadTokenizerNextTo(dir);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->vocab_size(), 49408);
  EXPECT_EQ(ExpectAllCasesMatch(**hf, cases()), 1296);
}

// The same with a tokenizer.json alone, as a checkpoint folder may carry it: merges in
// both of the tokenizers library's spellings, ids in an order of their own.
TEST_F(OpenAiTokenizerTest, AHuggingFaceTokenizerJsonOfTheSameVocabularyGivesTheSameIds) {
  absl::StatusOr<BpeVocabulary> vocab = LoadOpenAiVocabulary(VocabPath());
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  for (const bool pairs : {false, true}) {
    SCOPED_TRACE(pairs ? "merges as pairs" : "merges as strings");
    nlohmann::json tokens = nlohmann::json::object();
    for (size_t id = 0; id < vocab->tokens.size(); ++id) tokens[vocab->tokens[id]] = id;
    nlohmann::json merges = nlohmann::json::array();
    for (const auto& [left, right] : vocab->merges) {
      merges.push_back(pairs ? nlohmann::json::array({left, right})
                             : nlohmann::json(absl::StrCat(left, " ", right)));
    }
    nlohmann::json file = {
        {"version", "1.0"},
        {"normalizer", nullptr},
        {"model", {{"type", "BPE"}, {"vocab", tokens}, {"merges", merges}}}};
    const std::string dir =
        MakeTempDir(pairs ? "tokenizer_json_pairs" : "tokenizer_json");
    std::ofstream(dir + "/tokenizer.json") << file.dump();
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded = LoadTokenizerNextTo(dir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->vocab_size(), 49408);
    EXPECT_EQ(ExpectAllCasesMatch(**loaded, cases()), 1296);
  }
}

TEST_F(OpenAiTokenizerTest, AtExactlyTheContextLengthNothingIsCut) {
  // The case file's long run of x needs exactly 75 tokens + start + end.
  const auto it = std::find_if(cases().begin(), cases().end(),
                               [](const Case& c) { return c.ids.size() == 75; });
  ASSERT_NE(it, cases().end());
  const absl::StatusOr<EncodedText> encoded = tokenizer().Encode(it->text, false);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(encoded->length(), 77u);
  EXPECT_FALSE(encoded->truncated);
}

TEST_F(OpenAiTokenizerTest, TruncationKeepsStartCutsAndEndsWithEnd) {
  std::string text;
  for (int i = 0; i < 40; ++i)
    absl::StrAppend(&text, "a photo of a cat number ", i, ". ");
  const std::vector<int32_t> inner = InnerIds(text);
  ASSERT_GT(inner.size(), 200u);

  const absl::StatusOr<EncodedText> encoded = tokenizer().Encode(text);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_EQ(encoded->length(), 77u);
  EXPECT_TRUE(encoded->truncated);
  EXPECT_EQ(encoded->ids.front(), kSot);
  EXPECT_EQ(encoded->ids.back(), kEot);
  EXPECT_THAT(std::vector<int32_t>(encoded->ids.begin() + 1, encoded->ids.end() - 1),
              ElementsAreArray(inner.begin(), inner.begin() + 75));
}

TEST_F(OpenAiTokenizerTest, WithoutTruncationAnOverlongTextIsInvalid) {
  std::string text;
  for (int i = 0; i < 80; ++i) text += "cat ";
  const absl::StatusOr<EncodedText> encoded = tokenizer().Encode(text, false);
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(encoded.status().message(), HasSubstr("more than 77 tokens"));
  // One word fewer fits: 75 words + start + end.
  EXPECT_EQ(tokenizer().Encode(text.substr(0, 4 * 75), false)->length(), 77u);
  EXPECT_EQ(tokenizer().Encode(text.substr(0, 4 * 76), false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(OpenAiTokenizerTest, InvalidUtf8IsInvalidArgument) {
  for (const char* text : {"caf\xC3", "\xFF\xFE", "a\xED\xA0\x80z", "\xC0\xAF"}) {
    EXPECT_EQ(tokenizer().Encode(text).status().code(),
              absl::StatusCode::kInvalidArgument)
        << text;
  }
}

TEST_F(OpenAiTokenizerTest, TextsOverTheByteLimitAreInvalidArgument) {
  const std::string at_limit(16384, 'a');
  EXPECT_TRUE(tokenizer().Encode(at_limit).ok());
  const absl::StatusOr<EncodedText> over = tokenizer().Encode(at_limit + "a");
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(), HasSubstr("16385 bytes"));
}

TEST_F(OpenAiTokenizerTest, EmptyTextIsStartAndEnd) {
  for (const char* text : {"", "   ", "\t\n"}) {
    const absl::StatusOr<EncodedText> encoded = tokenizer().Encode(text);
    ASSERT_TRUE(encoded.ok());
    EXPECT_THAT(encoded->ids, ElementsAre(kSot, kEot));
  }
}

TEST_F(OpenAiTokenizerTest, TypedSpecialTokensAreSpecialAsInTheReference) {
  // simple_tokenizer matches the spellings (any case, after lower-casing) and maps them
  // to the special ids.
  EXPECT_THAT(InnerIds("<|endoftext|>"), ElementsAre(kEot));
  EXPECT_THAT(InnerIds("<|StartOfText|>"), ElementsAre(kSot));
  EXPECT_EQ(InnerIds("a <|endoftext|> cat").size(), 3u);
}

// U+0345 (COMBINING GREEK YPOGEGRAMMENI, uppercase Greek iota) survives cleaning
// and, in the reference's pattern, matches no alternative: `regex` (IGNORECASE)
// finds "a", "b" in "a\u0345b". RE2 folding case into [\p{L}] made it a letter.
TEST_F(OpenAiTokenizerTest, ACombiningIotaIsDroppedAsInTheReference) {
  EXPECT_THAT(InnerIds("a\u0345b"), ElementsAre(320, 321));  // "a</w>", "b</w>"
  EXPECT_EQ(InnerIds("a photo of a cat\u0345"), InnerIds("a photo of a cat"));
  EXPECT_EQ(InnerIds("!\u0345?"), InnerIds("! ?"));
  EXPECT_THAT(InnerIds("\u0345"), ::testing::IsEmpty());
  // Still one word where the reference keeps one: Greek with its capital iota.
  EXPECT_EQ(InnerIds("\u0391\u0399"), InnerIds("\u03b1\u03b9"));
}

TEST_F(OpenAiTokenizerTest, DecodeInvertsEncodeUpToCleaning) {
  const absl::StatusOr<EncodedText> encoded = tokenizer().Encode("A Photo of a CAT.");
  ASSERT_TRUE(encoded.ok());
  const std::vector<int32_t> inner(encoded->ids.begin() + 1, encoded->ids.end() - 1);
  EXPECT_EQ(*tokenizer().Decode(inner), "a photo of a cat . ");
  EXPECT_EQ(*tokenizer().Decode(InnerIds("日本語のテキスト")), "日本語のテキスト ");
  EXPECT_EQ(tokenizer().Decode({49408}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tokenizer().Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(OpenAiTokenizerTest, LongWordsAndRandomTextStayBounded) {
  // One 16 KiB word: the merge loop must not go quadratic (this finishes in
  // milliseconds), and the result is cut to the context.
  const absl::StatusOr<EncodedText> word = tokenizer().Encode(std::string(16384, 'x'));
  ASSERT_TRUE(word.ok());
  EXPECT_EQ(word->ids.size(), 77u);
  EXPECT_TRUE(word->truncated);
  // Seeded random valid UTF-8 never fails and always has the right frame.
  std::mt19937 rng(42);
  std::uniform_int_distribution<uint32_t> code_point(1, 0x2FFFF);
  for (int i = 0; i < 200; ++i) {
    std::string text;
    for (int j = 0; j < 50; ++j) {
      uint32_t c = code_point(rng);
      if (c >= 0xD800 && c <= 0xDFFF) c = 'a';
      AppendUtf8(c, &text);
    }
    const absl::StatusOr<EncodedText> encoded = tokenizer().Encode(text);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(encoded->ids.front(), kSot);
    EXPECT_EQ(encoded->ids.back(), kEot);
    EXPECT_LE(encoded->ids.size(), 77u);
  }
}

TEST_F(OpenAiTokenizerTest, ConcurrentEncodingGivesTheSingleThreadedIds) {
  BpeTokenizer::Options options;
  options.cache.capacity = 64;  // tiny: shards are emptied while other threads read
  const std::unique_ptr<BpeTokenizer> shared = OpenAiTokenizer(options);
  ASSERT_NE(shared, nullptr);
  constexpr int kThreads = 8;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<size_t> order(cases().size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), std::mt19937(100 + t));
      for (size_t i : order) {
        const absl::StatusOr<EncodedText> encoded = shared->Encode(cases()[i].text);
        if (!encoded.ok() || !std::equal(encoded->ids.begin() + 1, encoded->ids.end() - 1,
                                         cases()[i].ids.begin(), cases()[i].ids.end())) {
          ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
  EXPECT_LE(shared->cache_size(), 64u);
}

TEST_F(OpenAiTokenizerTest, WordCacheIsUsedAndBounded) {
  BpeTokenizer::Options options;
  options.cache.capacity = 128;
  const std::unique_ptr<BpeTokenizer> small = OpenAiTokenizer(options);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->cache_size(), 0u);
  ASSERT_EQ(ExpectAllCasesMatch(*small, cases()), 1296);  // hundreds of distinct words
  EXPECT_GT(small->cache_size(), 0u);
  EXPECT_LE(small->cache_size(), 128u);

  options.cache.capacity = 0;
  const std::unique_ptr<BpeTokenizer> uncached = OpenAiTokenizer(options);
  ASSERT_NE(uncached, nullptr);
  ASSERT_EQ(ExpectAllCasesMatch(*uncached, cases()), 1296);
  EXPECT_EQ(uncached->cache_size(), 0u);
}

// A byte-level BPE that is not CLIP's (here with no byte symbols at all) is refused
// naming the file it came from.
TEST(LoadTokenizerNextToTest, AVocabularyThatIsNotClipsNamesItsFile) {
  const std::string dir = MakeTempDir("not_clip");
  std::ofstream(dir + "/tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  const absl::Status status = LoadTokenizerNextTo(dir).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(dir + "/tokenizer.json: "));
}

TEST_F(OpenAiTokenizerTest, LoadTokenizerNextToFindsOpenAiFile) {
  const std::string dir = MakeTempDir("openai");
  std::filesystem::copy_file(VocabPath(), dir + "/bpe_simple_vocab_16e6.txt.gz");
  BpeTokenizer::Options options;
  options.context_length = 5;
  // Given the directory, or a checkpoint file inside it.
  for (const std::string& path : {dir, dir + "/ViT-B-32.pt"}) {
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded =
        LoadTokenizerNextTo(path, options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->context_length(), 5);
    const absl::StatusOr<EncodedText> encoded = (*loaded)->Encode("a photo of a cat");
    ASSERT_TRUE(encoded.ok());
    EXPECT_THAT(encoded->ids, ElementsAre(kSot, 320, 1125, 539, kEot));
    EXPECT_TRUE(encoded->truncated);
  }
}

TEST(LoadTokenizerNextToTest, NothingThereIsNotFound) {
  const std::string dir = MakeTempDir("empty");
  const absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded = LoadTokenizerNextTo(dir);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(), HasSubstr("vocab.json"));
  EXPECT_THAT(loaded.status().message(), HasSubstr("bpe_simple_vocab_16e6.txt.gz"));
}

// A folder that may not be searched is not an empty one, nor a vocabulary file that
// may not be read a corrupt one. Needs a user that file modes bind: as root, it runs
// as nobody.
TEST(LoadTokenizerNextToTest, WhatMayNotBeReadIsPermissionDenied) {
  namespace fs = std::filesystem;
  const fs::path dir = MakeTempDir("unreadable");
  fs::create_directories(dir / "locked");
  fs::create_directories(dir / "unreadable_file");
  std::ofstream(dir / "unreadable_file" / "bpe_simple_vocab_16e6.txt.gz") << "x";
  testing::RunUnprivileged(dir, [&] {
    const fs::path file = dir / "unreadable_file" / "bpe_simple_vocab_16e6.txt.gz";
    fs::permissions(dir / "locked", fs::perms::none);
    fs::permissions(file, fs::perms::none);
    if (std::ifstream(file).is_open()) {
      fs::permissions(dir / "locked", fs::perms::owner_all);
      GTEST_SKIP() << "this user reads files whatever their mode";
    }
    const absl::Status locked = LoadTokenizerNextTo((dir / "locked").string()).status();
    const absl::Status unreadable =
        LoadTokenizerNextTo((dir / "unreadable_file").string()).status();
    fs::permissions(dir / "locked", fs::perms::owner_all);
    EXPECT_EQ(locked.code(), absl::StatusCode::kPermissionDenied) << locked;
    EXPECT_THAT(
        std::string(locked.message()),
        HasSubstr("cannot look for tokenizer file '" + (dir / "locked").string()));
    EXPECT_EQ(unreadable.code(), absl::StatusCode::kPermissionDenied) << unreadable;
    EXPECT_THAT(std::string(unreadable.message()),
                HasSubstr("cannot read vocabulary file '" + file.string() +
                          "': Permission denied"));
  });
  fs::remove_all(dir);
}

TEST(LoadTokenizerNextToTest, CorruptVocabularyIsDataLoss) {
  const std::string dir = MakeTempDir("corrupt");
  std::ofstream(dir + "/bpe_simple_vocab_16e6.txt.gz") << "not gzip at all";
  const absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded = LoadTokenizerNextTo(dir);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(loaded.status().message(), HasSubstr("bpe_simple_vocab_16e6.txt.gz"));

  const std::string hf = MakeTempDir("corrupt_hf");
  std::ofstream(hf + "/vocab.json") << "{\"a\": ";
  std::ofstream(hf + "/merges.txt") << "#version: 0.2\n";
  EXPECT_EQ(LoadTokenizerNextTo(hf).status().code(), absl::StatusCode::kDataLoss);
}

std::unique_ptr<BpeTokenizer> DemoTokenizer(
    BpeVocabulary vocab = ByteLevelDemoVocabulary()) {
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer =
      BpeTokenizer::Create(std::move(vocab), BpeTokenizer::Options{});
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(DemoVocabularyTest, EveryByteIsOneToken) {
  const std::unique_ptr<BpeTokenizer> demo = DemoTokenizer();
  ASSERT_NE(demo, nullptr);
  EXPECT_EQ(demo->vocab_size(), 514);
  EXPECT_EQ(demo->start_of_text_id(), 512);
  EXPECT_EQ(demo->end_of_text_id(), 513);
  // "hi" -> 'h', 'i</w>'; "!" -> '!</w>' (ids: printable bytes from '!' = 0 onwards).
  EXPECT_THAT(demo->Encode("Hi!")->ids,
              ElementsAre(512, 'h' - '!', 256 + 'i' - '!', 256, 513));
  // U+00E9 is two bytes, 0xC3 (id 127) and 0xA9 (id 102, + 256 with </w>).
  EXPECT_THAT(demo->Encode("\xC3\xA9")->ids, ElementsAre(512, 127, 358, 513));
  EXPECT_EQ(*demo->Decode(demo->Encode("Hi, caf\xC3\xA9!")->ids),
            "<|startoftext|>hi , caf\xC3\xA9 ! <|endoftext|>");
}

// A vocabulary of the demo bytes plus the given merges (and their results).
BpeVocabulary WithMerges(std::vector<std::pair<std::string, std::string>> merges) {
  BpeVocabulary vocab = ByteLevelDemoVocabulary();
  for (const auto& [left, right] : merges) vocab.tokens.push_back(left + right);
  vocab.merges = std::move(merges);
  return vocab;
}

TEST(MergeOrderTest, AllOccurrencesOfTheBestPairMergeBeforeAnyOtherPair) {
  // Ranks: ("ab", "a") is better than ("a", "b"), but it only exists once "a b" has
  // merged. The reference merges every "a b" in one pass first: "ab ab c</w>". Merging
  // greedily pair by pair would make "aba b c</w>" instead.
  const std::unique_ptr<BpeTokenizer> tokenizer =
      DemoTokenizer(WithMerges({{"ab", "a"}, {"a", "b"}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("ababc")->ids,
              ElementsAre(512, 515, 515, 256 + 'c' - '!', 513));
}

TEST(MergeOrderTest, OverlappingOccurrencesMergeLeftToRight) {
  const std::unique_ptr<BpeTokenizer> tokenizer = DemoTokenizer(WithMerges({{"a", "a"}}));
  ASSERT_NE(tokenizer, nullptr);
  const int32_t a = 'a' - '!';
  const int32_t a_end = 256 + a;
  EXPECT_THAT(tokenizer->Encode("aaaa")->ids, ElementsAre(512, 514, a, a_end, 513));
  EXPECT_THAT(tokenizer->Encode("aaaaa")->ids, ElementsAre(512, 514, 514, a_end, 513));
}

TEST(CreateTest, RejectsUnusableOptionsAndVocabularies) {
  BpeTokenizer::Options options;
  options.context_length = 1;
  EXPECT_EQ(BpeTokenizer::Create(ByteLevelDemoVocabulary(), options).status().code(),
            absl::StatusCode::kInvalidArgument);

  BpeVocabulary no_end = ByteLevelDemoVocabulary();
  no_end.tokens.pop_back();
  EXPECT_THAT(BpeTokenizer::Create(no_end, {}).status().message(),
              HasSubstr("<|endoftext|>"));

  BpeVocabulary no_byte = ByteLevelDemoVocabulary();
  no_byte.tokens[5] = "not a byte";
  EXPECT_EQ(BpeTokenizer::Create(no_byte, {}).status().code(),
            absl::StatusCode::kInvalidArgument);

  BpeVocabulary bad_merge = ByteLevelDemoVocabulary();
  bad_merge.merges.push_back({"a", "b"});  // "ab" is no token
  EXPECT_THAT(BpeTokenizer::Create(bad_merge, {}).status().message(),
              HasSubstr("'ab', which is not in the vocabulary"));
}

}  // namespace
}  // namespace clipserve
