#include "server/tokenizer/unicode_text.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "re2/re2.h"

namespace clipserve {
namespace {

TEST(NormalizeNfcTest, ComposesReordersAndRespectsExclusions) {
  // Expected values from Python's unicodedata.normalize("NFC", ...).
  EXPECT_EQ(NormalizeNfc(U"e\u0301"), U"\u00E9");
  EXPECT_EQ(NormalizeNfc(U"A\u030A"), U"\u00C5");
  EXPECT_EQ(NormalizeNfc(U"\u212B"), U"\u00C5");  // singleton: ANGSTROM SIGN
  EXPECT_EQ(NormalizeNfc(U"\u2126"), U"\u03A9");  // OHM SIGN
  // Marks out of canonical order are sorted, then the right one composes.
  EXPECT_EQ(NormalizeNfc(U"a\u0302\u0323"), U"\u1EAD");
  EXPECT_EQ(NormalizeNfc(U"q\u0307\u0323"), U"q\u0323\u0307");
  EXPECT_EQ(NormalizeNfc(U"\u1E9B\u0323"), U"\u1E9B\u0323");
  // Composition exclusions stay decomposed.
  EXPECT_EQ(NormalizeNfc(U"\u0958"), U"\u0915\u093C");
  EXPECT_EQ(NormalizeNfc(U"\uFB2C"), U"\u05E9\u05BC\u05C1");
  EXPECT_EQ(NormalizeNfc(U"\u0344"), U"\u0308\u0301");
  // Hangul by formula, including LV + T.
  EXPECT_EQ(NormalizeNfc(U"\u1100\u1161\u11A8"), U"\uAC01");
  EXPECT_EQ(NormalizeNfc(U"\uAC00\u11A8"), U"\uAC01");
  // Two starters that compose (Oriya vowel sign).
  EXPECT_EQ(NormalizeNfc(U"\u0B47\u0B3E"), U"\u0B4B");
  // A blocked mark: the second acute has the same class as the first.
  EXPECT_EQ(NormalizeNfc(U"e\u0301\u0301"), U"\u00E9\u0301");
  // A leading mark has no starter to join.
  EXPECT_EQ(NormalizeNfc(U"\u0301e"), U"\u0301e");
  EXPECT_EQ(NormalizeNfc(U"plain"), U"plain");
}

TEST(NormalizeNfcTest, IsIdempotentOnEveryCodePoint) {
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    const std::u32string once = NormalizeNfc(std::u32string(1, c));
    ASSERT_EQ(NormalizeNfc(once), once) << "U+" << std::hex << static_cast<uint32_t>(c);
  }
}

TEST(PythonLowerTest, MatchesStrLower) {
  EXPECT_EQ(PythonLower(U"A Photo OF"), U"a photo of");
  EXPECT_EQ(PythonLower(U"\u00DCBER STRASSE \u1E9E"), U"\u00FCber strasse \u00DF");
  EXPECT_EQ(PythonLower(U"\u0130"), U"i\u0307");         // the one two-code-point mapping
  EXPECT_EQ(PythonLower(U"\u212A"), U"k");               // KELVIN SIGN
  EXPECT_EQ(PythonLower(U"\u01C5"), U"\u01C6");          // titlecase digraph
  EXPECT_EQ(PythonLower(U"\U00010400"), U"\U00010428");  // Deseret, outside the BMP
  EXPECT_EQ(PythonLower(U"\u2160\u24B6"), U"\u2170\u24D0");  // Roman numeral, circled
}

TEST(PythonLowerTest, AppliesFinalSigma) {
  // Expected values from Python's str.lower().
  EXPECT_EQ(PythonLower(U"\u039F\u0394\u039F\u03A3"), U"\u03BF\u03B4\u03BF\u03C2");
  EXPECT_EQ(PythonLower(U"\u03A3"), U"\u03C3");      // no cased letter before
  EXPECT_EQ(PythonLower(U"a\u03A3b"), U"a\u03C3b");  // a cased letter follows
  EXPECT_EQ(PythonLower(U"a\u03A3."), U"a\u03C2.");
  EXPECT_EQ(PythonLower(U"a'\u03A3"), U"a'\u03C2");    // ' is case-ignorable
  EXPECT_EQ(PythonLower(U"a\u03A3'b"), U"a\u03C3'b");  // ... on both sides
  EXPECT_EQ(PythonLower(U"1\u03A3"), U"1\u03C3");      // digits are not cased
}

TEST(WhiteSpaceTest, PythonSpaceAddsTheInformationSeparators) {
  for (char32_t c :
       {0x09, 0x0A, 0x0B,   0x0C,   0x0D,   0x1C,   0x1D,   0x1E,   0x1F,   0x20,
        0x85, 0xA0, 0x1680, 0x2000, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}) {
    EXPECT_TRUE(IsPythonSpace(c)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_EQ(IsWhiteSpace(c), c < 0x1C || c > 0x1F)
        << std::hex << static_cast<uint32_t>(c);
  }
  for (char32_t c : {0x00, 0x08, 0x21, 0x180E, 0x200B, 0xFEFF, 0x3001}) {
    EXPECT_FALSE(IsPythonSpace(c)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_FALSE(IsWhiteSpace(c)) << std::hex << static_cast<uint32_t>(c);
  }
}

TEST(WhiteSpaceTest, Re2ClassMatchesIsWhiteSpaceOnEveryCodePoint) {
  const RE2 re(absl::StrCat("[", kWhiteSpaceRe2Class, "]"));
  ASSERT_TRUE(re.ok()) << re.error();
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string utf8;
    AppendUtf8(c, &utf8);
    ASSERT_EQ(RE2::FullMatch(utf8, re), IsWhiteSpace(c))
        << "U+" << std::hex << static_cast<uint32_t>(c);
  }
}

}  // namespace
}  // namespace clipserve
