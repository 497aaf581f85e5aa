#include "server/common/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(IsValidUtf8Test, AcceptsWellFormedText) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8(std::string("nul\0inside", 10)));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80"));
  EXPECT_TRUE(IsValidUtf8("\xED\x9F\xBF"));      // U+D7FF, just below the surrogates
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
}

TEST(IsValidUtf8Test, RejectsEveryKindOfIllFormedText) {
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("ab\xE6\x97"));        // truncated at the end
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong, 3 bytes
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // U+D800, a surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(IsValidUtf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC3\x28"));  // continuation byte missing
}

TEST(DecodeUtf8Test, ReplacesEachMaximalIllFormedSubpartOnce) {
  // Python: b"a\xe6\x97b\x80\xf0\x9f\x98".decode("utf-8", "replace") ==
  // "a\ufffdb\ufffd\ufffd"
  EXPECT_EQ(DecodeUtf8("a\xE6\x97"
                       "b\x80\xF0\x9F\x98"),
            U"a\uFFFDb\uFFFD\uFFFD");
  // A surrogate's bytes are three separate errors (Python gives three U+FFFD).
  EXPECT_EQ(DecodeUtf8("\xED\xA0\x80"), U"\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(DecodeUtf8("caf\xC3\xA9"), U"caf\u00E9");
}

TEST(EncodeUtf8Test, RoundTripsEveryScalarValue) {
  std::u32string all;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c < 0xD800 || c > 0xDFFF) all.push_back(c);
  }
  const std::string utf8 = EncodeUtf8(all);
  EXPECT_TRUE(IsValidUtf8(utf8));
  EXPECT_EQ(DecodeUtf8(utf8), all);
  EXPECT_EQ(EncodeUtf8(U"\xD800"), "\xEF\xBF\xBD");  // no surrogate ever comes out
}

TEST(ValidUtf8PrefixLengthTest, StopsAtTheFirstIllFormedSequence) {
  EXPECT_EQ(ValidUtf8PrefixLength(""), 0u);
  EXPECT_EQ(ValidUtf8PrefixLength("caf\xC3\xA9"), 5u);
  EXPECT_EQ(ValidUtf8PrefixLength("caf\xE9 au lait"), 3u);  // Latin-1
  EXPECT_EQ(ValidUtf8PrefixLength("ab\xE6\x97"), 2u);       // truncated at the end
  EXPECT_EQ(ValidUtf8PrefixLength("\xED\xA0\x80"), 0u);     // a surrogate
}

TEST(Utf8PrefixTest, CutsBetweenSequences) {
  const std::string text = "a\xC3\xA9\xE6\x97\xA5";  // a, U+00E9, U+65E5
  EXPECT_EQ(Utf8Prefix(text, 100), text);
  EXPECT_EQ(Utf8Prefix(text, 6), text);
  EXPECT_EQ(Utf8Prefix(text, 5), "a\xC3\xA9");
  EXPECT_EQ(Utf8Prefix(text, 4), "a\xC3\xA9");
  EXPECT_EQ(Utf8Prefix(text, 3), "a\xC3\xA9");
  EXPECT_EQ(Utf8Prefix(text, 2), "a");
  EXPECT_EQ(Utf8Prefix(text, 1), "a");
  EXPECT_EQ(Utf8Prefix(text, 0), "");
}

}  // namespace
}  // namespace clipserve
