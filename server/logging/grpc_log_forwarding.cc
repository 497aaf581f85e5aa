#include "server/logging/grpc_log_forwarding.h"

#include <grpc/support/log.h>

#include "glog/logging.h"

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

}  // namespace

void ForwardGrpcLogsToGlog() { gpr_set_log_function(&LogThroughGlog); }

}  // namespace clipserve
