#include "server/logging/json_log_sink.h"

#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/logging/structured_log.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

TEST(LogFieldsTest, LogfmtQuotesOnlyWhatNeedsIt) {
  LogFields fields;
  fields.Add("rpc", "EmbedText")
      .Add("error", "texts[0] is \"bad\"")
      .Add("peer", "")
      .Add("count", 3)
      .Add("duration_ms", 12.5)
      .Add("line", "a\nb")
      .Add("ansi", "\x1b[2Jx\x7f");
  EXPECT_EQ(fields.ToLogfmt(),
            R"( rpc=EmbedText error="texts[0] is \"bad\"" peer="" count=3 )"
            R"(duration_ms=12.5 line="a\nb" ansi="\x1b[2Jx\x7f")");
  EXPECT_EQ(LogFields().ToLogfmt(), "");
}

TEST(FormatJsonLogLineTest, BaseMembersInOrderAndFieldsWithTheirTypes) {
  LogFields fields;
  fields.Add("rpc", "EmbedText").Add("duration_ms", 1.25).Add("items", 3);
  // 2026-11-27T12:30:01Z plus 42 microseconds.
  const std::string line =
      FormatJsonLogLine(google::GLOG_WARNING, "clip_service.cc", 123, 1795782601, 42, 77,
                        "request failed", &fields);
  EXPECT_EQ(line,
            R"({"time":"2026-11-27T12:30:01.000042Z","severity":"WARNING",)"
            R"("source":"clip_service.cc:123","thread":77,"message":"request failed",)"
            R"("rpc":"EmbedText","duration_ms":1.25,"items":3})");
}

TEST(FormatJsonLogLineTest, AlwaysOneLineOfValidJson) {
  LogFields fields;
  fields.Add("error", std::string("bad \xff\xfe utf-8"));
  fields.Add("ratio", std::numeric_limits<double>::infinity());
  const std::string line = FormatJsonLogLine(google::GLOG_ERROR, "x.cc", 1, 0, 0, 1,
                                             "two\nlines \"quoted\"", &fields);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const json parsed = json::parse(line);
  EXPECT_EQ(parsed["message"], "two\nlines \"quoted\"");
  EXPECT_EQ(parsed["severity"], "ERROR");
  EXPECT_EQ(parsed["time"], "1970-01-01T00:00:00.000000Z");
  EXPECT_THAT(parsed["error"].get<std::string>(), HasSubstr("\xEF\xBF\xBD"));  // U+FFFD
  EXPECT_EQ(parsed["ratio"], "inf");  // JSON has no infinity
}

// Routes glog into a JsonLogSink on a temporary file for one test.
class JsonLogSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::tmpfile();
    ASSERT_NE(file_, nullptr);
    sink_ = std::make_unique<JsonLogSink>(file_);
    google::AddLogSink(sink_.get());
  }
  void TearDown() override {
    google::RemoveLogSink(sink_.get());
    std::fclose(file_);
  }

  std::vector<json> Lines() {
    std::fflush(file_);
    std::rewind(file_);
    std::string text;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), file_)) > 0) text.append(buffer, n);
    std::vector<json> out;
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      out.push_back(json::parse(line));  // throws, failing the test, if not JSON
    }
    return out;
  }

  std::FILE* file_ = nullptr;
  std::unique_ptr<JsonLogSink> sink_;
};

TEST_F(JsonLogSinkTest, PlainLogLinesBecomeObjects) {
  const int line = __LINE__ + 1;
  LOG(INFO) << "hello " << 42;
  const std::vector<json> lines = Lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["message"], "hello 42");
  EXPECT_EQ(lines[0]["severity"], "INFO");
  EXPECT_EQ(lines[0]["source"], "json_log_sink_test.cc:" + std::to_string(line));
  EXPECT_TRUE(lines[0]["thread"].is_number_integer());
  EXPECT_THAT(lines[0]["time"].get<std::string>(),
              ::testing::MatchesRegex(
                  "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z"));
}

TEST_F(JsonLogSinkTest, StructuredLinesCarryTheirFieldsAndTheBareMessage) {
  LogFields fields;
  fields.Add("rpc", "Classify").Add("code", "INTERNAL").Add("duration_ms", 3.5);
  const int line = __LINE__ + 1;
  CLIPSERVE_LOG_FIELDS(WARNING, "request failed", fields);
  LOG(INFO) << "after";  // no fields leak into the next line
  const std::vector<json> lines = Lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["message"], "request failed");
  EXPECT_EQ(lines[0]["severity"], "WARNING");
  EXPECT_EQ(lines[0]["source"], "json_log_sink_test.cc:" + std::to_string(line));
  EXPECT_EQ(lines[0]["rpc"], "Classify");
  EXPECT_EQ(lines[0]["code"], "INTERNAL");
  EXPECT_EQ(lines[0]["duration_ms"], 3.5);
  EXPECT_EQ(lines[1]["message"], "after");
  EXPECT_FALSE(lines[1].contains("rpc"));
}

TEST_F(JsonLogSinkTest, ConcurrentLinesStayWhole) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 50; ++i) {
        LogFields fields;
        fields.Add("t", t).Add("i", i);
        CLIPSERVE_LOG_FIELDS(INFO, std::string(40, 'x'), fields);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const std::vector<json> lines = Lines();  // each parses
  EXPECT_EQ(lines.size(), 200u);
}

TEST(SetLogFormatTest, OnlyTextAndJsonAreAccepted) {
  EXPECT_TRUE(SetLogFormat("text").ok());
  EXPECT_EQ(SetLogFormat("xml").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetLogFormat("JSON").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
