#ifndef CLIPSERVE_SERVER_SERVICE_GRPC_STATUS_H_
#define CLIPSERVE_SERVER_SERVICE_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "server/common/status_payloads.h"

namespace clipserve {

// The one place where an internal absl::Status becomes the grpc::Status a client sees.
//
// The canonical code and message carry over unchanged (absl and gRPC share the code
// numbering). Rich details travel as absl::Status payloads keyed by their
// `type.googleapis.com/...` URL (see the helpers below); every payload becomes one
// `google.protobuf.Any` in the `google.rpc.Status` sent as the `grpc-status-details-bin`
// trailer, so any gRPC client can read `BadRequest` or `RetryInfo` with its standard
// error-details support. Thread-safe; never blocks.
grpc::Status ToGrpcStatus(const absl::Status& status);

// INVALID_ARGUMENT with a google.rpc.BadRequest detail naming `field` (for example
// "images[3]") and why it was rejected. The status message is "field: description".
absl::Status InvalidArgumentForField(absl::string_view field,
                                     absl::string_view description);

// RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail asking the client to wait
// `retry_after` before trying again.
absl::Status ResourceExhaustedWithRetry(absl::string_view message,
                                        absl::Duration retry_after);

// Type URLs of the payloads ToGrpcStatus understands (defined in server/common, which
// writes them without Protobuf).
inline constexpr absl::string_view kBadRequestTypeUrl = kBadRequestPayloadUrl;
inline constexpr absl::string_view kRetryInfoTypeUrl = kRetryInfoPayloadUrl;

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_GRPC_STATUS_H_
