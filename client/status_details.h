#ifndef CLIPSERVE_CLIENT_STATUS_DETAILS_H_
#define CLIPSERVE_CLIENT_STATUS_DETAILS_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/status.h"

namespace clipserve {

// The bridge between gRPC's error model and the absl::Status the client API returns.
//
// A clipserve error carries rich details (google.rpc.BadRequest naming the bad item,
// google.rpc.RetryInfo saying when to retry) as a google.rpc.Status in the
// `grpc-status-details-bin` trailer. The client keeps each detail as an absl::Status
// payload keyed by its type URL (`type.googleapis.com/google.rpc.RetryInfo`) holding
// the serialized message, exactly the way the server holds them before sending, so a
// caller can read them back with the helpers below or with Status::GetPayload().
// All functions are thread-safe and never block.

// Type URLs of the details clipserve sends.
inline constexpr absl::string_view kRetryInfoUrl =
    "type.googleapis.com/google.rpc.RetryInfo";
inline constexpr absl::string_view kBadRequestUrl =
    "type.googleapis.com/google.rpc.BadRequest";

// grpc::Status -> absl::Status with the same code and message, plus one payload per
// detail of the status's google.rpc.Status details (extracted with
// grpc::ExtractErrorDetails). Details that do not parse are dropped; the code and
// message are kept. OK maps to OK.
absl::Status FromGrpcStatus(const grpc::Status& status);

// google.rpc.Status (as in EmbedStreamResponse.error) -> absl::Status, keeping its
// details as payloads. Codes outside the canonical range become UNKNOWN; a code of 0
// (OK) with a message becomes UNKNOWN too, since an error entry must not read as
// success.
absl::Status FromRpcStatus(const google::rpc::Status& status);

// The retry_delay of the status's RetryInfo payload, or nullopt when there is none,
// it does not parse, or it is negative.
std::optional<absl::Duration> RetryInfoDelay(const absl::Status& status);

// The status's BadRequest payload, or nullopt when there is none or it does not parse.
std::optional<google::rpc::BadRequest> BadRequestOf(const absl::Status& status);

// When the status's BadRequest has a field violation naming an item of the list
// `list` ("images[3]", also nested as "images.images[3]"), that item's index.
std::optional<size_t> BadRequestItemIndex(const absl::Status& status,
                                          absl::string_view list);

// Whether an item's error is the item's own, so that a job over many items (clip_client
// embed-image --skip_errors) may skip that item and go on: an error `local` to the
// client (a file it could not read), or INVALID_ARGUMENT from the server (not an
// image, too many pixels, a text too long). Any other error (the server unreachable,
// refusing the call, overloaded or failing, the deadline passed) is not about the item
// and would befall the others alike.
bool IsTheItemsOwnError(const absl::Status& status, bool local);

// The payload URL under which ClipClient puts, on the error of a call it sent or
// tried to send, the call's `x-request-id`: the id that the server's log line about
// the failure names. Kept on the client; never sent.
inline constexpr absl::string_view kRequestIdUrl = "clipserve/x-request-id";

// Puts `request_id` on a non-OK status under kRequestIdUrl (replacing any). No effect
// on OK.
void SetRequestId(absl::string_view request_id, absl::Status* status);

// The request id ClipClient put on a failed call's status, or nullopt.
std::optional<std::string> RequestIdOf(const absl::Status& status);

// The payload URL under which ClipClient::EmbedStream marks the CANCELLED error of an
// item it did not send or gave up on because an earlier item failed
// (EmbedStreamOptions::stop_on_error): a CANCELLED from the server is not marked.
inline constexpr absl::string_view kNotProcessedUrl = "clipserve/not-processed";

// An item's error for having been left out after an earlier item failed: CANCELLED,
// marked under kNotProcessedUrl.
absl::Status NotProcessedError();

// Whether `status` is NotProcessedError()'s (whatever payloads were added since).
bool IsNotProcessed(const absl::Status& status);

// Adds a RetryInfo payload (for tests and fakes that play the server).
void SetRetryInfo(absl::Duration delay, absl::Status* status);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_STATUS_DETAILS_H_
