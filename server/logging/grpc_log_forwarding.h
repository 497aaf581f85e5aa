#ifndef CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_
#define CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_

namespace clipserve {

// Sends gRPC core's own log lines (gpr_log: TLS handshake failures, transport errors,
// GPR_ASSERT messages) through glog instead of gRPC's default writer on stderr, so
// that they take the format of every other line: --log_format=json output stays one
// JSON object per line even when a client triggers a gRPC error. gRPC's ERROR maps to
// glog's ERROR, its INFO and DEBUG to INFO; which severities gRPC emits is still
// decided by gRPC (GRPC_VERBOSITY, ERROR by default). The source file and line are
// gRPC's. Process-wide; call once at start-up, after google::InitGoogleLogging().
void ForwardGrpcLogsToGlog();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_
