#include "server/logging/grpc_log_forwarding.h"

#include <grpc/support/log.h>

#include <string>

#include "glog/logging.h"
#include "google/protobuf/stubs/logging.h"

namespace clipserve {
namespace {

void LogThroughGlog(gpr_log_func_args* args) {
  const google::LogSeverity severity =
      args->severity == GPR_LOG_SEVERITY_ERROR ? google::GLOG_ERROR : google::GLOG_INFO;
  // glog keeps only the file's base name, as for its own lines.
  google::LogMessage(args->file != nullptr ? args->file : "grpc", args->line, severity)
          .stream()
      << (args->message != nullptr ? args->message : "");
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
  google::LogMessage(filename != nullptr ? filename : "protobuf", line, severity).stream()
      << message;
}

}  // namespace

void ForwardGrpcLogsToGlog() { gpr_set_log_function(&LogThroughGlog); }

void ForwardProtobufLogsToGlog() {
  google::protobuf::SetLogHandler(&LogProtobufThroughGlog);
}

}  // namespace clipserve
