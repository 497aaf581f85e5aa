#include "server/logging/grpc_log_forwarding.h"

#include <grpc/support/log.h>

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/wrappers.pb.h"
#include "gtest/gtest.h"
#include "server/common/fake_clock.h"

namespace clipserve {
namespace {

struct Line {
  google::LogSeverity severity;
  std::string file;
  int line;
  std::string message;
};

// Collects what glog sends to sinks.
class CollectingSink final : public google::LogSink {
 public:
  void send(google::LogSeverity severity, const char* /*full_filename*/,
            const char* base_filename, int line, const google::LogMessageTime& /*time*/,
            const char* message, size_t message_len) override {
    absl::MutexLock lock(&mu_);
    lines_.push_back({severity, base_filename, line, std::string(message, message_len)});
  }

  std::vector<Line> lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Line> lines_ ABSL_GUARDED_BY(mu_);
};

TEST(GrpcLogForwardingTest, GrpcCoreLinesReachGlogWithTheirSeverityAndSource) {
  CollectingSink sink;
  google::AddLogSink(&sink);
  ForwardGrpcLogsToGlog();
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_DEBUG);

  const int error_line = __LINE__ + 1;
  gpr_log(GPR_ERROR, "handshake failed: %s (%d)", "bad record", 7);
  gpr_log(GPR_INFO, "an info line");
  gpr_log(GPR_DEBUG, "a debug line");
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
  gpr_log(GPR_INFO, "below gRPC's verbosity: not logged");
  google::RemoveLogSink(&sink);

  const std::vector<Line> lines = sink.lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].severity, google::GLOG_ERROR);
  EXPECT_EQ(lines[0].file, "grpc_log_forwarding_test.cc");
  EXPECT_EQ(lines[0].line, error_line);
  EXPECT_EQ(lines[0].message, "handshake failed: bad record (7)");
  EXPECT_EQ(lines[1].severity, google::GLOG_INFO);
  EXPECT_EQ(lines[1].message, "an info line");
  EXPECT_EQ(lines[2].severity, google::GLOG_INFO);
  EXPECT_EQ(lines[2].message, "a debug line");
}

TEST(ProtobufLogForwardingTest, ParserErrorsReachGlogAsWarnings) {
  CollectingSink sink;
  google::AddLogSink(&sink);
  ForwardProtobufLogsToGlog();

  // What a client's string field with invalid UTF-8 makes the parser say.
  google::protobuf::StringValue value;
  EXPECT_FALSE(value.ParseFromString(std::string("\x0a\x01\xff", 3)));
  const int info_line = __LINE__ + 1;
  GOOGLE_LOG(INFO) << "an info line";
  GOOGLE_LOG(WARNING) << "a warning line";
  google::RemoveLogSink(&sink);

  const std::vector<Line> lines = sink.lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].severity, google::GLOG_WARNING);
  EXPECT_NE(lines[0].message.find("contains invalid UTF-8 data"), std::string::npos)
      << lines[0].message;
  EXPECT_EQ(lines[1].severity, google::GLOG_INFO);
  EXPECT_EQ(lines[1].file, "grpc_log_forwarding_test.cc");
  EXPECT_EQ(lines[1].line, info_line);
  EXPECT_EQ(lines[1].message, "an info line");
  EXPECT_EQ(lines[2].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[2].message, "a warning line");
}

// A peer's failed TLS handshake is the peer's doing: a WARNING, not a server ERROR.
TEST(GrpcLogForwardingTest, WhatAPeerSentIsAWarning) {
  CollectingSink sink;
  google::AddLogSink(&sink);
  ForwardGrpcLogsToGlog();
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);  // unset until gRPC's own init
  gpr_log("src/core/tsi/ssl_transport_security.cc", 1501, GPR_LOG_SEVERITY_ERROR,
          "Handshake failed with fatal error SSL_ERROR_SSL: %s", "wrong version number");
  gpr_log("src/core/lib/security/transport/security_handshaker.cc", 90,
          GPR_LOG_SEVERITY_ERROR, "Security handshake failed");
  gpr_log("src/core/lib/surface/server.cc", 10, GPR_LOG_SEVERITY_ERROR, "a server fault");
  // What gRPC 1.51 writes for a call with a bad header or a disabled compression,
  // any client, before the token check.
  gpr_log("src/core/ext/transport/chttp2/transport/hpack_parser.cc", 1218,
          GPR_LOG_SEVERITY_ERROR,
          "Error parsing metadata: error=invalid value key=grpc-timeout value=x");
  gpr_log("src/core/lib/surface/call.cc", 1211, GPR_LOG_SEVERITY_ERROR,
          "Compression algorithm 'gzip' is disabled.");
  gpr_log("src/core/lib/surface/call.cc", 99, GPR_LOG_SEVERITY_ERROR, "a call fault");
  google::RemoveLogSink(&sink);

  const std::vector<Line> lines = sink.lines();
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[0].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[1].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[2].severity, google::GLOG_ERROR);
  EXPECT_EQ(lines[3].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[4].severity, google::GLOG_WARNING);
  EXPECT_EQ(lines[5].severity, google::GLOG_ERROR);
}

// gRPC quotes a header value it refuses as the peer sent it, before any token check: a
// line break in it would start a line of the peer's own in the text log, an escape
// sequence rewrite the terminal showing it. Both come out escaped, and a backslash of
// the peer's doubled, so that its own \n (backslash, n) cannot read as a line break.
TEST(GrpcLogForwardingTest, APeersControlCharactersAreEscaped) {
  CollectingSink sink;
  google::AddLogSink(&sink);
  ForwardGrpcLogsToGlog();
  ForwardProtobufLogsToGlog();
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);  // unset until gRPC's own init
  gpr_log("src/core/ext/transport/chttp2/transport/hpack_parser.cc", 1218,
          GPR_LOG_SEVERITY_ERROR,
          "Error parsing metadata: error=invalid value key=grpc-timeout value=%s",
          "1S\r\nE1207 00:00:00.000000 1 main.cc:1] FORGED\x1b[2J\x7f\t\\n");
  GOOGLE_LOG(WARNING) << "line\nbreak";
  google::RemoveLogSink(&sink);

  const std::vector<Line> lines = sink.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].message,
            "Error parsing metadata: error=invalid value key=grpc-timeout "
            "value=1S\\r\\nE1207 00:00:00.000000 1 main.cc:1] FORGED\\x1b[2J\\x7f\\t"
            "\\\\n");
  EXPECT_EQ(lines[1].message, "line\\nbreak");
}

// A client can make gRPC or Protobuf log a line per call; each source logs at most
// kMaxForwardedLinesPerSecond a second, and the next line says how many it left out.
TEST(ForwardedLogLimitTest, EachSourceLogsAtMostItsLinesPerSecond) {
  // Ahead of the real clock, so the limits start a fresh second.
  FakeClock clock(absl::Now() + absl::Hours(1));
  SetForwardedLogClockForTest(&clock);
  CollectingSink sink;
  google::AddLogSink(&sink);
  ForwardGrpcLogsToGlog();
  ForwardProtobufLogsToGlog();
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);  // unset until gRPC's own init

  const int over = kMaxForwardedLinesPerSecond + 5;
  google::protobuf::StringValue value;
  for (int i = 0; i < over; ++i) {
    gpr_log(GPR_ERROR, "handshake %d", i);
    EXPECT_FALSE(value.ParseFromString(std::string("\x0a\x01\xff", 3)));
  }
  clock.AdvanceTime(absl::Milliseconds(999));
  gpr_log(GPR_ERROR, "still the same second");
  std::vector<Line> lines = sink.lines();
  EXPECT_EQ(lines.size(), 2u * kMaxForwardedLinesPerSecond);

  clock.AdvanceTime(absl::Milliseconds(1));
  gpr_log(GPR_ERROR, "the next second");
  EXPECT_FALSE(value.ParseFromString(std::string("\x0a\x01\xfe", 3)));
  google::RemoveLogSink(&sink);
  SetForwardedLogClockForTest(nullptr);

  lines = sink.lines();
  ASSERT_EQ(lines.size(), 2u * kMaxForwardedLinesPerSecond + 2);
  EXPECT_EQ(lines[lines.size() - 2].message, "the next second suppressed=6");
  EXPECT_NE(lines.back().message.find("invalid UTF-8"), std::string::npos);
  EXPECT_NE(lines.back().message.find(" suppressed=5"), std::string::npos)
      << lines.back().message;
}

}  // namespace
}  // namespace clipserve
