#include "server/model/json_excerpt.h"

#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

nlohmann::json Json(const std::string& text) { return nlohmann::json::parse(text); }

TEST(JsonExcerptTest, SmallValuesReadAsTheirJson) {
  const std::pair<const char*, const char*> cases[] = {
      {R"("avg")", R"("avg")"},
      {"64", "64"},
      {"true", "true"},
      {"null", "null"},
      {"[]", "[]"},
      {"{}", "{}"},
      {"[32, 48]", "[32, 48]"},
      {R"({"eps":1e-06})", R"({"eps": 1e-06})"},
      {R"([[1,2],{"a":[3]}])", R"([[1, 2], {"a": [3]}])"},
  };
  for (const auto& [text, excerpt] : cases) {
    EXPECT_EQ(JsonExcerpt(Json(text)), excerpt) << text;
  }
}

TEST(JsonExcerptTest, LongStringsAndManyMembersAreCut) {
  EXPECT_EQ(JsonExcerpt(nlohmann::json(std::string(1000, 'x'))),
            "\"" + std::string(64, 'x') + "\"... (1000 bytes)");
  nlohmann::json many = nlohmann::json::array();
  for (int i = 0; i < 100; ++i) many.push_back(i);
  EXPECT_EQ(JsonExcerpt(many), "[0, 1, 2, 3, 4, 5, 6, 7, ... (100 in all)]");
}

TEST(JsonExcerptTest, BytesThatAreNotUtf8AreReplacedNotThrown) {
  EXPECT_THAT(JsonExcerpt(nlohmann::json(std::string("a\xff"))), HasSubstr("a"));
}

// dump() recurses once per level: a million levels would overflow the stack.
TEST(JsonExcerptTest, DeepNestingIsCutAtThreeLevels) {
  constexpr int kDepth = 1'000'000;
  const nlohmann::json deep =
      Json(std::string(kDepth, '[') + "1" + std::string(kDepth, ']'));
  EXPECT_EQ(JsonExcerpt(deep), "[[[[...]]]]");
  EXPECT_EQ(JsonExcerpt(Json(R"({"a": {"b": {"c": {"d": 1}}}})")),
            R"({"a": {"b": {"c": {...}}}})");
}

}  // namespace
}  // namespace clipserve
