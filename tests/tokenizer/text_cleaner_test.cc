#include "server/tokenizer/text_cleaner.h"

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace clipserve {
namespace {

TEST(CleanTextTest, CleansLikeTheReference) {
  EXPECT_EQ(*CleanText("  A Photo of a DOG.  "), "a photo of a dog.");
  EXPECT_EQ(*CleanText("line1\nline2\tTab"), "line1 line2 tab");
  EXPECT_EQ(*CleanText("&amp;lt;b&amp;gt;"), "<b>");  // unescaped twice
  EXPECT_EQ(*CleanText("A\xCC\x8Angstr\xC3\xB6m"), "\xC3\xA5ngstr\xC3\xB6m");  // NFC
  EXPECT_EQ(*CleanText("a\xC2\xA0\xE3\x80\x80 b"), "a b");  // NBSP, ideographic space
  EXPECT_EQ(*CleanText(""), "");
  EXPECT_EQ(*CleanText(" \t\n"), "");
}

TEST(CleanTextTest, StripsWhatStrStripDoesButCollapsesOnlyWhiteSpace) {
  // U+001C is str.isspace() but not White_Space: stripped at the ends, kept inside.
  EXPECT_EQ(*CleanText("\x1C"
                       "a\x1C"
                       "b\x1C"),
            "a\x1C"
            "b");
  // U+200B ZERO WIDTH SPACE is neither.
  EXPECT_EQ(*CleanText("a\xE2\x80\x8B"
                       "b"),
            "a\xE2\x80\x8B"
            "b");
}

TEST(CleanTextTest, RejectsInvalidUtf8) {
  for (const char* text : {"\xFF", "ab\xC3", "\xED\xA0\x80", "\xC0\xAF"}) {
    const absl::StatusOr<std::string> cleaned = CleanText(text);
    EXPECT_EQ(cleaned.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// testdata/cleaner_cases.jsonl holds 800 texts (handpicked and seeded-random mixes of
// entities, combining marks, casing special cases and white space look-alikes) with
// the reference cleaning computed by CPython; see make_cleaner_cases.py.
TEST(CleanTextTest, MatchesCPythonOnGeneratedCases) {
  const std::string path =
      std::string(CLIPSERVE_TOKENIZER_TESTDATA) + "/cleaner_cases.jsonl";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  int cases = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json row = nlohmann::json::parse(line);
    const std::string text = row.at("text").get<std::string>();
    const absl::StatusOr<std::string> cleaned = CleanText(text);
    ASSERT_TRUE(cleaned.ok()) << cleaned.status() << " for " << line;
    EXPECT_EQ(*cleaned, row.at("clean").get<std::string>()) << "for " << line;
    ++cases;
  }
  EXPECT_EQ(cases, 800);
}

}  // namespace
}  // namespace clipserve
