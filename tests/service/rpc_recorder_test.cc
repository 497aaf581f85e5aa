#include "server/service/rpc_recorder.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/common/fake_clock.h"
#include "server/logging/structured_log.h"
#include "server/metrics/metrics.h"
#include "tests/metrics/prometheus_text.h"

namespace clipserve {
namespace {

using ::clipserve::testing::FindSample;
using ::testing::HasSubstr;
using ::testing::Optional;

// Collects the lines logged while it is installed: severity, message text and the
// structured fields as "key=value" strings.
class CapturingSink : public google::LogSink {
 public:
  struct Line {
    google::LogSeverity severity;
    std::string text;
    std::vector<std::string> fields;
  };
  CapturingSink() { google::AddLogSink(this); }
  ~CapturingSink() override { google::RemoveLogSink(this); }

  void send(google::LogSeverity severity, const char*, const char*, int,
            const google::LogMessageTime&, const char* message, size_t length) override {
    Line line{severity, std::string(message, length), {}};
    if (const StructuredLogRecord* record = CurrentStructuredLog(); record != nullptr) {
      for (const LogFields::Field& field : record->fields->fields()) {
        line.fields.push_back(field.key + "=" + field.value);
      }
    }
    absl::MutexLock lock(&mu_);
    lines_.push_back(std::move(line));
  }
  std::vector<Line> lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Line> lines_;
};

class RpcRecorderTest : public ::testing::Test {
 protected:
  RpcRecorderOptions Options(absl::Duration slow = absl::Seconds(1)) {
    RpcRecorderOptions options;
    options.metrics = &metrics_;
    options.clock = &clock_;
    options.slow_request_threshold = slow;
    return options;
  }

  FakeClock clock_;
  Metrics metrics_;
  CapturingSink sink_;
};

TEST_F(RpcRecorderTest, CountsTimesAndTracksCallsInFlight) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call a = recorder.Start("EmbedText", "ipv4:127.0.0.1:1000");
  RpcRecorder::Call b = recorder.Start("EmbedImage", "ipv4:127.0.0.1:1001");
  EXPECT_THAT(FindSample(metrics_.Serialize(), "clipserve_requests_in_flight"),
              Optional(2.0));
  clock_.AdvanceTime(absl::Milliseconds(250));
  recorder.End(a, absl::OkStatus());
  clock_.AdvanceTime(absl::Milliseconds(250));
  recorder.End(b, absl::OkStatus());
  recorder.End(b, absl::OkStatus());  // a second End is ignored

  const std::string text = metrics_.Serialize();
  EXPECT_THAT(FindSample(text, "clipserve_requests_in_flight"), Optional(0.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedImage"})"),
              Optional(1.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_request_duration_seconds_sum{rpc="EmbedText"})"),
      Optional(0.25));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_request_duration_seconds_sum{rpc="EmbedImage"})"),
      Optional(0.5));
  EXPECT_TRUE(sink_.lines().empty());  // fast and successful: nothing logged
}

// Calls the server's shutdown cancels when its grace ends reach their clients as
// UNAVAILABLE, and are counted so; a client's cancel before then stays CANCELLED.
TEST_F(RpcRecorderTest, CallsCancelledWhenTheShutdownGraceEndsAreUnavailable) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call before = recorder.Start("EmbedText", "ipv4:127.0.0.1:1000");
  RpcRecorder::Call after =
      recorder.Start("EmbedStream", "ipv4:127.0.0.1:1001", RpcRecorder::Kind::kStream);
  RpcRecorder::Call failed = recorder.Start("EmbedText", "ipv4:127.0.0.1:1002");
  recorder.ShutdownBegins(absl::Seconds(30));
  recorder.ShutdownBegins(absl::Seconds(60));  // the earliest end counts
  clock_.AdvanceTime(absl::Seconds(29));
  recorder.End(before, absl::CancelledError("call cancelled"));
  clock_.AdvanceTime(absl::Seconds(1));
  recorder.End(after, absl::CancelledError("stream cancelled"));
  recorder.End(failed, absl::InternalError("boom"));  // other codes stay as they are

  const std::string text = metrics_.Serialize();
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="CANCELLED",)"
                               R"(rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="UNAVAILABLE",)"
                               R"(rpc="EmbedStream"})"),
              Optional(1.0));
  EXPECT_EQ(FindSample(text, R"(clipserve_requests_total{code="CANCELLED",)"
                             R"(rpc="EmbedStream"})"),
            std::nullopt);
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="INTERNAL",)"
                               R"(rpc="EmbedText"})"),
              Optional(1.0));
  bool logged = false;
  for (const auto& line : sink_.lines()) {
    logged |= absl::StrContains(line.text,
                                "rpc=EmbedStream code=UNAVAILABLE "
                                "error=\"cancelled by the server's shutdown");
  }
  EXPECT_TRUE(logged);
}

// What counts is when gRPC cancelled a call, where its reactor says so: a client's
// cancel just before the cutoff stays CANCELLED though the call ends after it, and the
// shutdown's cancel at the cutoff is UNAVAILABLE however the call ends.
TEST_F(RpcRecorderTest, ACallIsLabelledByWhenItWasCancelled) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call client = recorder.Start("EmbedText", "ipv4:127.0.0.1:1000");
  RpcRecorder::Call shutdown = recorder.Start("EmbedImage", "ipv4:127.0.0.1:1001");
  recorder.ShutdownBegins(absl::Seconds(30));
  clock_.AdvanceTime(absl::Seconds(30) - absl::Milliseconds(1));
  recorder.Cancelled(client);
  clock_.AdvanceTime(absl::Milliseconds(1));
  recorder.Cancelled(shutdown);
  recorder.Cancelled(client);  // the first time counts
  clock_.AdvanceTime(absl::Milliseconds(5));
  recorder.End(client, absl::CancelledError("call cancelled"));
  recorder.End(shutdown, absl::CancelledError("call cancelled"));

  const std::string text = metrics_.Serialize();
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="CANCELLED",)"
                               R"(rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_requests_total{code="UNAVAILABLE",)"
                               R"(rpc="EmbedImage"})"),
              Optional(1.0));
}

TEST_F(RpcRecorderTest, AFailedCallIsLoggedOnceWithItsDetails) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call call = recorder.Start("EmbedText", "ipv4:10.0.0.7:5555");
  clock_.AdvanceTime(absl::Milliseconds(12));
  recorder.End(call, absl::InvalidArgumentError("texts[1] is empty"));

  EXPECT_THAT(FindSample(metrics_.Serialize(),
                         R"(clipserve_requests_total{code="INVALID_ARGUMENT",)"
                         R"(rpc="EmbedText"})"),
              Optional(1.0));
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[0].text,
            R"(request failed rpc=EmbedText code=INVALID_ARGUMENT )"
            R"(error="texts[1] is empty" peer=ipv4:10.0.0.7:5555 duration_ms=12)");
  EXPECT_THAT(lines[0].fields,
              ::testing::ElementsAre("rpc=EmbedText", "code=INVALID_ARGUMENT",
                                     "error=texts[1] is empty", "peer=ipv4:10.0.0.7:5555",
                                     "duration_ms=12"));
}

// A client sending bad requests in a loop must not write a line per call: at most
// max_warning_lines_per_second WARNING lines a second, and the next line says how many
// were left out. Server faults are always logged; every call is counted.
TEST_F(RpcRecorderTest, WarningLinesAreRateLimited) {
  RpcRecorderOptions options = Options();
  options.max_warning_lines_per_second = 3;
  RpcRecorder recorder(options);
  const auto fail = [&](absl::Status status) {
    RpcRecorder::Call call = recorder.Start("EmbedText", "ipv4:10.0.0.7:5555");
    recorder.End(call, status);
  };
  for (int i = 0; i < 10; ++i) fail(absl::InvalidArgumentError("bad"));
  fail(absl::InternalError("broken"));
  auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(lines[i].severity, google::GLOG_WARNING);
    EXPECT_THAT(lines[i].text, ::testing::Not(HasSubstr("suppressed")));
  }
  EXPECT_EQ(lines[3].severity, google::GLOG_ERROR);

  // Within the same second: still left out. A second later: logged, with the count.
  clock_.AdvanceTime(absl::Milliseconds(999));
  fail(absl::InvalidArgumentError("bad"));
  EXPECT_EQ(sink_.lines().size(), 4u);
  clock_.AdvanceTime(absl::Milliseconds(1));
  fail(absl::ResourceExhaustedError("full"));
  lines = sink_.lines();
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(lines[4].fields, ::testing::Contains("suppressed=8"));
  fail(absl::InvalidArgumentError("bad"));
  lines = sink_.lines();
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_THAT(lines[5].text, ::testing::Not(HasSubstr("suppressed")));

  EXPECT_THAT(FindSample(metrics_.Serialize(),
                         R"(clipserve_requests_total{code="INVALID_ARGUMENT",)"
                         R"(rpc="EmbedText"})"),
              Optional(12.0));
}

TEST_F(RpcRecorderTest, ZeroLinesPerSecondMeansNoLimit) {
  RpcRecorderOptions options = Options();
  options.max_warning_lines_per_second = 0;
  RpcRecorder recorder(options);
  for (int i = 0; i < 50; ++i) {
    RpcRecorder::Call call = recorder.Start("EmbedText", "ipv4:10.0.0.7:5555");
    recorder.End(call, absl::InvalidArgumentError("bad"));
  }
  EXPECT_EQ(sink_.lines().size(), 50u);
}

TEST_F(RpcRecorderTest, AFailedCallsLineNamesItsRequestId) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call call = recorder.Start("EmbedText", "ipv4:10.0.0.7:5555",
                                          RpcRecorder::Kind::kUnary, "req-42");
  clock_.AdvanceTime(absl::Milliseconds(12));
  recorder.End(call, absl::InvalidArgumentError("texts[1] is empty"));
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].text,
            R"(request failed rpc=EmbedText code=INVALID_ARGUMENT )"
            R"(error="texts[1] is empty" peer=ipv4:10.0.0.7:5555 request_id=req-42 )"
            R"(duration_ms=12)");
}

// A stream's failed item is counted apart from the stream's own code, and logged like a
// failed call, with the item's id.
TEST_F(RpcRecorderTest, AFailedStreamItemIsCountedAndLoggedWithItsId) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call call = recorder.Start("EmbedStream", "ipv4:10.0.0.7:5555",
                                          RpcRecorder::Kind::kStream, "req-7");
  clock_.AdvanceTime(absl::Milliseconds(5));
  recorder.ItemFailed(call, "photo-3", absl::InvalidArgumentError("image: not an image"));
  recorder.ItemFailed(call, "photo-4", absl::InternalError("model failed"));
  recorder.End(call, absl::OkStatus());
  const std::string text = metrics_.Serialize();
  EXPECT_THAT(FindSample(text, R"(clipserve_stream_item_failures_total{)"
                               R"(code="INVALID_ARGUMENT",rpc="EmbedStream"})"),
              Optional(1.0));
  EXPECT_THAT(FindSample(text, R"(clipserve_stream_item_failures_total{)"
                               R"(code="INTERNAL",rpc="EmbedStream"})"),
              Optional(1.0));
  EXPECT_THAT(
      FindSample(text, R"(clipserve_requests_total{code="OK",rpc="EmbedStream"})"),
      Optional(1.0));
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[0].text,
            R"(stream item failed rpc=EmbedStream code=INVALID_ARGUMENT )"
            R"(error="image: not an image" peer=ipv4:10.0.0.7:5555 request_id=req-7 )"
            R"(item_id=photo-3 duration_ms=5)");
  EXPECT_EQ(lines[1].severity, google::GLOG_ERROR);
}

TEST_F(RpcRecorderTest, AQuietFailureIsCountedButNotLogged) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call call = recorder.Start("EmbedText", "peer");
  recorder.End(call, absl::UnauthenticatedError("no bearer token"),
               RpcRecorder::Logging::kQuiet);
  EXPECT_THAT(FindSample(metrics_.Serialize(),
                         R"(clipserve_requests_total{code="UNAUTHENTICATED",)"
                         R"(rpc="EmbedText"})"),
              Optional(1.0));
  EXPECT_TRUE(sink_.lines().empty());
}

TEST_F(RpcRecorderTest, ServerFaultsAreErrors) {
  RpcRecorder recorder(Options());
  RpcRecorder::Call call = recorder.Start("Classify", "peer");
  recorder.End(call, absl::InternalError("model failed on a batch of 3"));
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].severity, google::GLOG_ERROR);
  EXPECT_THAT(lines[0].text, HasSubstr("code=INTERNAL"));
}

TEST_F(RpcRecorderTest, LongErrorMessagesAreCut) {
  RpcRecorderOptions options = Options();
  options.max_logged_message_bytes = 10;
  RpcRecorder recorder(options);
  RpcRecorder::Call call = recorder.Start("Tokenize", "peer");
  recorder.End(call, absl::InvalidArgumentError(std::string(1000, 'z')));
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0].fields, ::testing::Contains("error=zzzzzzzzzz"));
}

TEST_F(RpcRecorderTest, SlowSuccessfulCallsAreLoggedAtTheThreshold) {
  RpcRecorder recorder(Options(absl::Seconds(1)));
  RpcRecorder::Call fast = recorder.Start("EmbedImage", "peer");
  clock_.AdvanceTime(absl::Milliseconds(999));
  recorder.End(fast, absl::OkStatus());
  EXPECT_TRUE(sink_.lines().empty());

  RpcRecorder::Call slow = recorder.Start("EmbedImage", "ipv6:[::1]:4000");
  clock_.AdvanceTime(absl::Milliseconds(1000));
  recorder.End(slow, absl::OkStatus());
  const auto lines = sink_.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[0].text,
            "slow request rpc=EmbedImage code=OK peer=ipv6:[::1]:4000 duration_ms=1000");
}

TEST_F(RpcRecorderTest, StreamsAreTimedButNeverSlow) {
  RpcRecorder recorder(Options(absl::Seconds(1)));
  RpcRecorder::Call stream =
      recorder.Start("EmbedStream", "peer", RpcRecorder::Kind::kStream);
  clock_.AdvanceTime(absl::Minutes(10));
  recorder.End(stream, absl::OkStatus());
  EXPECT_TRUE(sink_.lines().empty());
  EXPECT_THAT(FindSample(metrics_.Serialize(),
                         R"(clipserve_request_duration_seconds_sum{rpc="EmbedStream"})"),
              Optional(600.0));
  // A failed stream is logged like any failed call.
  RpcRecorder::Call failed =
      recorder.Start("EmbedStream", "peer", RpcRecorder::Kind::kStream);
  recorder.End(failed, absl::CancelledError("stream cancelled"));
  EXPECT_EQ(sink_.lines().size(), 1u);
}

TEST_F(RpcRecorderTest, ZeroThresholdTurnsSlowLogsOff) {
  RpcRecorder recorder(Options(absl::ZeroDuration()));
  RpcRecorder::Call call = recorder.Start("EmbedImage", "peer");
  clock_.AdvanceTime(absl::Hours(1));
  recorder.End(call, absl::OkStatus());
  EXPECT_TRUE(sink_.lines().empty());
  // Failures are still logged.
  RpcRecorder::Call failed = recorder.Start("EmbedImage", "peer");
  recorder.End(failed, absl::DeadlineExceededError("deadline"));
  EXPECT_EQ(sink_.lines().size(), 1u);
}

TEST_F(RpcRecorderTest, WorksWithoutMetrics) {
  RpcRecorderOptions options = Options();
  options.metrics = nullptr;
  RpcRecorder recorder(options);
  RpcRecorder::Call call = recorder.Start("EmbedText", "peer");
  recorder.End(call, absl::UnavailableError("shutting down"));
  EXPECT_EQ(sink_.lines().size(), 1u);
  EXPECT_EQ(FindSample(metrics_.Serialize(), R"(clipserve_requests_total{code=)"
                                             R"("UNAVAILABLE",rpc="EmbedText"})"),
            std::nullopt);
}

}  // namespace
}  // namespace clipserve
