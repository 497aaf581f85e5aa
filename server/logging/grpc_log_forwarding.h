#ifndef CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_
#define CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_

namespace clipserve {

class Clock;

// Lines forwarded from each of gRPC and Protobuf logged in one second at most: a
// client can make either log a line per call (a string that is not UTF-8, a failed
// TLS handshake), and must not flood the log with them. The first line logged after
// a full second ends with suppressed=N, the lines of that source left out since the
// last one logged (Protobuf's FATAL is never left out).
inline constexpr int kMaxForwardedLinesPerSecond = 20;

// Sends gRPC core's own log lines (gpr_log: TLS handshake failures, transport errors,
// GPR_ASSERT messages) through glog instead of gRPC's default writer on stderr, so
// that they take the format of every other line: --log_format=json output stays one
// JSON object per line even when a client triggers a gRPC error. gRPC's ERROR maps to
// glog's ERROR, except a peer's failed TLS handshake (reported from
// ssl_transport_security or a handshaker: the peer's doing, such as a plaintext
// client or a port scanner), which becomes a WARNING; its INFO and DEBUG map to INFO.
// Which severities gRPC emits is still decided by gRPC (GRPC_VERBOSITY, ERROR by
// default). The source file and line are gRPC's. At most kMaxForwardedLinesPerSecond.
// Process-wide; call once at start-up, after google::InitGoogleLogging().
void ForwardGrpcLogsToGlog();

// The same for Protobuf's log lines (GOOGLE_LOG), which by default go straight to
// stderr: a client that sends a string field with invalid UTF-8 makes the parser log
// one. Protobuf's ERROR lines in a server are about the bytes it was given, that is a
// client's input (the call itself fails with INVALID_ARGUMENT and is logged), so they
// become glog WARNINGs, and a client cannot make the server log ERRORs at will; its
// WARNING stays WARNING, INFO stays INFO, and FATAL becomes ERROR (Protobuf then
// aborts). At most kMaxForwardedLinesPerSecond. Process-wide; call once at start-up,
// after google::InitGoogleLogging().
void ForwardProtobufLogsToGlog();

// Test-only: the clock the per-second limits read (not owned; nullptr: the real one).
void SetForwardedLogClockForTest(Clock* clock);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_LOGGING_GRPC_LOG_FORWARDING_H_
