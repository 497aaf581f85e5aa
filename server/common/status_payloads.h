#ifndef CLIPSERVE_SERVER_COMMON_STATUS_PAYLOADS_H_
#define CLIPSERVE_SERVER_COMMON_STATUS_PAYLOADS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace clipserve {

// Rich error details as absl::Status payloads, for layers that must not depend on
// Protobuf or gRPC (the batcher, the tokenizer). The payload bytes are the standard
// google.rpc message in protobuf wire format, written and read by hand here, and are
// keyed by the message's `type.googleapis.com/...` URL, so that ToGrpcStatus()
// (server/service/grpc_status.h) forwards them to clients unchanged.

// The payload URL of a google.rpc.RetryInfo; the same value as kRetryInfoTypeUrl in
// server/service/grpc_status.h.
inline constexpr absl::string_view kRetryInfoPayloadUrl =
    "type.googleapis.com/google.rpc.RetryInfo";

// Serializes google.rpc.RetryInfo{retry_delay: google.protobuf.Duration} for
// `retry_delay`, byte for byte as protobuf's SerializeAsString() would (the
// retry_delay field is always present). Negative delays become zero; delays beyond the
// protobuf Duration range (about 10,000 years, absl::InfiniteDuration() included) are
// clamped to its maximum. Thread-safe; never blocks.
std::string SerializeRetryInfo(absl::Duration retry_delay);

// Parses a serialized google.rpc.RetryInfo and returns its retry_delay (zero when the
// field is absent). Unknown fields are skipped, as protobuf does. INVALID_ARGUMENT for
// malformed input or a Duration outside the protobuf range or with mixed signs.
// Thread-safe; never blocks.
absl::StatusOr<absl::Duration> ParseRetryInfo(absl::string_view serialized);

// The RetryInfo delay for a server-side allocation that failed (a codec's, a model
// batch's): other calls giving their memory back may cure it within about a batch.
inline constexpr absl::Duration kOutOfMemoryRetryDelay = absl::Seconds(1);

// Attaches a RetryInfo payload asking the client to wait `retry_delay` before retrying
// (under kRetryInfoPayloadUrl, replacing any previous one). No effect on an OK status.
void SetRetryInfoPayload(absl::Duration retry_delay, absl::Status* status);

// The retry delay of the status's RetryInfo payload, or nullopt when it has none or
// the payload does not parse.
std::optional<absl::Duration> GetRetryInfoPayload(const absl::Status& status);

// Type URL under which a google.rpc.BadRequest travels as an absl::Status payload.
inline constexpr absl::string_view kBadRequestPayloadUrl =
    "type.googleapis.com/google.rpc.BadRequest";

// google.rpc.BadRequest with one field violation, in protobuf wire format.
std::string SerializeBadRequest(absl::string_view field, absl::string_view description);

// INVALID_ARGUMENT "field: description" carrying a google.rpc.BadRequest payload that
// names `field` (for example "images[3]"), so ToGrpcStatus sends it to the client as
// a standard error detail.
absl::Status BadRequestError(absl::string_view field, absl::string_view description);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_STATUS_PAYLOADS_H_
