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

// The same for Protobuf's log lines (GOOGLE_LOG), which by default go straight to
// stderr: a client that sends a string field with invalid UTF-8 makes the parser log
// one. Protobuf's ERROR lines in a server are about the bytes it was given, that is a
// client's input (the call itself fails with INVALID_ARGUMENT and is logged), so they
// become glog WARNINGs, and a client cannot make the server log ERRORs at will; its
// WARNING stays WARNING, INFO stays INFO, and FATAL becomes ERROR (Protobuf then
// aborts). Process-wide; call once at start-up, after google::InitGoogleLogging().
void ForwardProtobufLogsToGlog();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_
