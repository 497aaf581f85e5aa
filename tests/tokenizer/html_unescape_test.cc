#include "server/tokenizer/html_unescape.h"

#include <string>

#include "gtest/gtest.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

// Unescapes UTF-8 text (a convenience for the expectations below, which come from
// Python's html.unescape).
std::string Unescape(const std::string& text) {
  return EncodeUtf8(HtmlUnescape(DecodeUtf8(text)));
}

TEST(HtmlUnescapeTest, NamedReferences) {
  EXPECT_EQ(Unescape("&lt;tag&gt; &amp;&amp;"), "<tag> &&");
  EXPECT_EQ(Unescape("&quot;hi&quot;"), "\"hi\"");
  EXPECT_EQ(Unescape("caf&eacute;"), "caf\xC3\xA9");
  EXPECT_EQ(Unescape("&nbsp;"), "\xC2\xA0");
  EXPECT_EQ(Unescape("&CounterClockwiseContourIntegral;"), "\xE2\x88\xB3");  // 32 long
  EXPECT_EQ(Unescape("&NotNestedGreaterGreater;"), "\xE2\xAA\xA2\xCC\xB8");  // two
  EXPECT_EQ(Unescape("&AMP;"), "&");
  EXPECT_EQ(Unescape("&Amp;"), "&Amp;");  // names are case-sensitive
}

TEST(HtmlUnescapeTest, LegacyNamesWithoutSemicolonAndLongestPrefix) {
  EXPECT_EQ(Unescape("&amp"), "&");
  EXPECT_EQ(Unescape("&ampx"), "&x");
  EXPECT_EQ(Unescape("&ampx;"), "&x;");
  EXPECT_EQ(Unescape("&notit;"), "\xC2\xACit;");  // "not" is the longest known prefix
  EXPECT_EQ(Unescape("&notin;"), "\xE2\x88\x89");
  EXPECT_EQ(Unescape("&Eacutex"), "\xC3\x89x");
  EXPECT_EQ(Unescape("&lt\xC3\xA9\xC3\xA9"), "<\xC3\xA9\xC3\xA9");
  EXPECT_EQ(Unescape("&bogus;"), "&bogus;");
  EXPECT_EQ(Unescape("&a"), "&a");        // prefixes shorter than two do not count
  EXPECT_EQ(Unescape("&ensp"), "&ensp");  // not a legacy name: ';' required
}

TEST(HtmlUnescapeTest, NamesAreAtMostThirtyTwoCharacters) {
  // 33 name characters: html.unescape's pattern stops at 32, so the ';' is not part of
  // the match and no prefix of "x..." is a name.
  const std::string long_name = "&" + std::string(33, 'x') + ";";
  EXPECT_EQ(Unescape(long_name), long_name);
  // "amp" followed by 29 more characters still unescapes by prefix.
  EXPECT_EQ(Unescape("&amp" + std::string(40, 'y')), "&" + std::string(40, 'y'));
}

TEST(HtmlUnescapeTest, NumericReferences) {
  EXPECT_EQ(Unescape("&#39;&#x27;&#X27;"), "'''");
  EXPECT_EQ(Unescape("&#65"), "A");  // ';' optional
  EXPECT_EQ(Unescape("&#65x"), "Ax");
  EXPECT_EQ(Unescape("&#x1F600;"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(Unescape("&#0000000065;"), "A");
}

TEST(HtmlUnescapeTest, NumericReferencesFollowHtml5Fixups) {
  EXPECT_EQ(Unescape("&#0;"), "\xEF\xBF\xBD");
  EXPECT_EQ(Unescape("&#13;"), "\r");
  EXPECT_EQ(Unescape("&#128;"), "\xE2\x82\xAC");  // Windows-1252 euro sign
  EXPECT_EQ(Unescape("&#x81;"), "\xC2\x81");      // kept as is
  EXPECT_EQ(Unescape("&#xD800;"), "\xEF\xBF\xBD");
  EXPECT_EQ(Unescape("&#x110000;"), "\xEF\xBF\xBD");
  EXPECT_EQ(Unescape("&#99999999999999999999999999;"), "\xEF\xBF\xBD");
  EXPECT_EQ(Unescape("&#xFFFFFFFFFFFFFFFFFFFFFFFF;"), "\xEF\xBF\xBD");
  EXPECT_EQ(Unescape("a&#1;b&#x7F;c&#xFDD0;d&#x10FFFF;e"), "abcde");  // dropped
}

TEST(HtmlUnescapeTest, LeavesNonReferencesAlone) {
  for (const char* text : {"&", "&&", "&#", "&#;", "&#x", "&#x;", "&#xg;", "& amp;", "&;",
                           "a & b", "no entity here", ""}) {
    EXPECT_EQ(Unescape(text), text);
  }
}

TEST(HtmlUnescapeTest, IsOnePass) {
  EXPECT_EQ(Unescape("&amp;lt;"), "&lt;");
  EXPECT_EQ(Unescape(Unescape("&amp;lt;")), "<");
  EXPECT_EQ(Unescape("&#38;#39;"), "&#39;");
}

}  // namespace
}  // namespace clipserve
