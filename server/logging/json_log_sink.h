#ifndef CLIPSERVE_SERVER_LOGGING_JSON_LOG_SINK_H_
#define CLIPSERVE_SERVER_LOGGING_JSON_LOG_SINK_H_

#include <cstdio>
#include <ctime>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "server/logging/structured_log.h"

namespace clipserve {

// One log line as a JSON object, without the newline:
//   {"time":"2026-11-27T12:30:01.123456Z","severity":"WARNING",
//    "source":"clip_service.cc:123","thread":1234,"message":"request failed",
//    "rpc":"EmbedText","code":"INVALID_ARGUMENT",...}
// `time` is UTC with microseconds (RFC 3339); `fields` (may be null) add members after
// "message", numbers as numbers. Invalid UTF-8 in any string is replaced by U+FFFD,
// so the output is always valid JSON on one line.
std::string FormatJsonLogLine(google::LogSeverity severity, absl::string_view file,
                              int line, std::time_t timestamp, int microseconds,
                              long thread_id, absl::string_view message,
                              const LogFields* fields);

// A glog sink that writes each line as one JSON object (FormatJsonLogLine) to a
// stdio stream, flushing after each line. Lines logged with LogStructured() carry
// their fields as members; plain LOG() lines have only the base members.
//
// Thread-safe: glog may call send() from several threads at once; lines are written
// whole, one at a time. The stream is not owned and must outlive the sink.
class JsonLogSink final : public google::LogSink {
 public:
  explicit JsonLogSink(std::FILE* out) : out_(out) {}

  void send(google::LogSeverity severity, const char* full_filename,
            const char* base_filename, int line, const google::LogMessageTime& time,
            const char* message, size_t message_len) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::FILE* const out_;
  absl::Mutex mu_;
};

// Switches the process's logging to `format`: "text" (glog's own lines on stderr,
// the default; nothing changes) or "json" (one JSON object per line on stderr through
// a JsonLogSink that lives until exit; glog's own stderr output and its log files are
// turned off). Call once, after google::InitGoogleLogging() and before other threads
// log. INVALID_ARGUMENT for any other format. A crash's stack trace (LOG(FATAL),
// signals) is still written by glog as plain text after the JSON line. gRPC core's
// lines reach the sink only through ForwardGrpcLogsToGlog() (grpc_log_forwarding.h).
absl::Status SetLogFormat(absl::string_view format);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_LOGGING_JSON_LOG_SINK_H_
