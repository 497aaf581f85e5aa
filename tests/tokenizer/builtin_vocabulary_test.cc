#include "server/tokenizer/builtin_vocabulary.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "tests/testing/shared_data.h"

namespace clipserve {
namespace {

TEST(BuiltinVocabularyTest, IsOpenAisFileByteForByte) {
  const std::string path = testing::SharedPath("clip/bpe_simple_vocab_16e6.txt.gz");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  EXPECT_EQ(BuiltinClipVocabularyGz(), bytes.str());
}

TEST(BuiltinVocabularyTest, TokenizesLikeClip) {
  auto vocab = BuiltinClipVocabulary();
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->tokens.size(), 49408u);
  auto tokenizer = BpeTokenizer::Create(*std::move(vocab), {});
  ASSERT_TRUE(tokenizer.ok());
  auto ids = (*tokenizer)->Encode("a photo of a cat");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->ids, (std::vector<int32_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
}

}  // namespace
}  // namespace clipserve
