#include "server/logging/grpc_log_forwarding.h"

#include <grpc/support/log.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "glog/logging.h"
#include "google/protobuf/stubs/logging.h"
#include "server/common/clock.h"
#include "server/common/line_rate_limiter.h"
#include "server/logging/structured_log.h"

namespace clipserve {
namespace {

std::atomic<Clock*> forwarded_log_clock{nullptr};

Clock& ForwardedLogClock() {
  Clock* clock = forwarded_log_clock.load(std::memory_order_acquire);
  return clock != nullptr ? *clock : *RealClock::Get();
}

// Each source may write at most kMaxForwardedLinesPerSecond lines a second.
LineRateLimiter& GrpcLines() {
  static LineRateLimiter* const limiter =
      new LineRateLimiter(kMaxForwardedLinesPerSecond);
  return *limiter;
}

LineRateLimiter& ProtobufLines() {
  static LineRateLimiter* const limiter =
      new LineRateLimiter(kMaxForwardedLinesPerSecond);
  return *limiter;
}

// One forwarded line, with suppressed=N when lines were left out before it. gRPC
// quotes what a peer sent (a header value it refuses) as it came: its control
// characters are escaped, so that no peer can start a line of its own in the log.
void Log(const char* file, int line, google::LogSeverity severity, const char* message,
         int64_t suppressed) {
  google::LogMessage log(file, line, severity);
  log.stream() << EscapeControlCharacters(message);
  if (suppressed > 0) log.stream() << " suppressed=" << suppressed;
}

// Whether gRPC's ERROR line from `file` reports what a peer sent, its doing and not
// the server's: a failed TLS handshake (a port scanner, a client speaking plaintext),
// a header the HPACK parser refuses (a bad grpc-timeout or content-type), a call
// compressed with an algorithm the server has disabled (gzip, see ClipServer).
bool ReportsAPeer(const char* file, const char* message) {
  if (file == nullptr) return false;
  if (std::strstr(file, "ssl_transport_security") != nullptr ||
      std::strstr(file, "handshake") != nullptr ||
      std::strstr(file, "hpack_parser") != nullptr) {
    return true;
  }
  const char* base = std::strrchr(file, '/');
  return std::strcmp(base != nullptr ? base + 1 : file, "call.cc") == 0 &&
         message != nullptr && std::strstr(message, "ompression") != nullptr;
}

void LogThroughGlog(gpr_log_func_args* args) {
  google::LogSeverity severity =
      args->severity == GPR_LOG_SEVERITY_ERROR ? google::GLOG_ERROR : google::GLOG_INFO;
  if (severity == google::GLOG_ERROR && ReportsAPeer(args->file, args->message)) {
    severity = google::GLOG_WARNING;
  }
  int64_t suppressed = 0;
  if (!GrpcLines().Admit(ForwardedLogClock().Now(), &suppressed)) return;
  // glog keeps only the file's base name, as for its own lines.
  Log(args->file != nullptr ? args->file : "grpc", args->line, severity,
      args->message != nullptr ? args->message : "", suppressed);
}

void LogProtobufThroughGlog(google::protobuf::LogLevel level, const char* filename,
                            int line, const std::string& message) {
  google::LogSeverity severity = google::GLOG_WARNING;
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO:
      severity = google::GLOG_INFO;
      break;
    case google::protobuf::LOGLEVEL_WARNING:
    case google::protobuf::LOGLEVEL_ERROR:  // a client's bytes (see the header)
      severity = google::GLOG_WARNING;
      break;
    case google::protobuf::LOGLEVEL_FATAL:
      severity = google::GLOG_ERROR;
      break;
  }
  int64_t suppressed = 0;
  // FATAL is never left out: Protobuf aborts after it.
  if (level != google::protobuf::LOGLEVEL_FATAL &&
      !ProtobufLines().Admit(ForwardedLogClock().Now(), &suppressed)) {
    return;
  }
  Log(filename != nullptr ? filename : "protobuf", line, severity, message.c_str(),
      suppressed);
}

}  // namespace

void ForwardGrpcLogsToGlog() { gpr_set_log_function(&LogThroughGlog); }

void ForwardProtobufLogsToGlog() {
  google::protobuf::SetLogHandler(&LogProtobufThroughGlog);
}

void SetForwardedLogClockForTest(Clock* clock) {
  forwarded_log_clock.store(clock, std::memory_order_release);
}

}  // namespace clipserve
