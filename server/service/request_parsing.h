#ifndef CLIPSERVE_SERVER_SERVICE_REQUEST_PARSING_H_
#define CLIPSERVE_SERVER_SERVICE_REQUEST_PARSING_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

// Requests and responses as raw bytes, for the ClipService methods whose requests hold
// `string` fields.
//
// Why: a proto3 parser rejects a whole message when any `string` field holds invalid
// UTF-8, before any handler runs, and gRPC 1.51's callback API then answers
// UNIMPLEMENTED with no message, which tells a client nothing (and ends a whole
// EmbedStream for one bad item). Those methods take the request's bytes instead, parse
// them here, and on failure answer what the contract promises: INVALID_ARGUMENT with a
// BadRequest naming the offending item. Every function is thread-safe and never
// blocks.

namespace clipserve {

// Parses `bytes` into `message`, after CheckEntryCounts(bytes, its type, `max_items`)
// (whose error it returns). When they do not parse: INVALID_ARGUMENT naming, with a
// google.rpc.BadRequest, the first string field whose value is not valid UTF-8 (its
// path as FindInvalidUtf8Field() spells it, passed through `field_name`), else
// INVALID_ARGUMENT saying the bytes are not a message of that type.
absl::Status ParseRequest(const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* message, int max_items,
                          absl::FunctionRef<std::string(absl::string_view)> field_name);

// A `field_name` for ParseRequest(): the path of an invalid string field as it is.
inline std::string KeepFieldName(absl::string_view path) { return std::string(path); }

// Checks, without building anything, how many objects parsing `bytes` (a serialized
// message of type `descriptor`) would create: a 2-byte empty string or message on the
// wire costs a parser some 35 to 100 bytes of memory, so a request under the message
// size limit could otherwise take gigabytes before its item count is checked.
// INVALID_ARGUMENT, with a google.rpc.BadRequest naming the top-level field (as
// `field_name` gives it), when the entries of one repeated string or bytes field, or
// of one message field, over the whole request (nested ones included: a singular
// message sent again is merged into the first) number more than `max_items`;
// INVALID_ARGUMENT when the request holds more than 16 x `max_items` fields its types
// do not know (a group's fields included), in all. Bytes that are not well-formed
// are checked up to where they stop being so; the parse then refuses them.
absl::Status CheckEntryCounts(
    const grpc::ByteBuffer& bytes, const google::protobuf::Descriptor& descriptor,
    int max_items, absl::FunctionRef<std::string(absl::string_view)> field_name);

// OK when `message` serializes to at most `max_bytes` bytes (0: no limit), else
// RESOURCE_EXHAUSTED with both sizes. Checked before a response is sent: gRPC would
// refuse to send a larger one and tell the client only "Sent message larger than max",
// after the server had counted the call as OK.
absl::Status CheckResponseSize(const google::protobuf::Message& message,
                               int64_t max_bytes);

// CheckResponseSize()'s error for a response of `size` bytes over `max_bytes`.
absl::Status ResponseTooLargeError(size_t size, int64_t max_bytes);

// Serializes `message` into `out` (replacing its contents). INTERNAL if serialization
// fails.
absl::Status SerializeResponse(const google::protobuf::Message& message,
                               grpc::ByteBuffer* out);

// The bytes of `buffer` in one string.
std::string Flatten(const grpc::ByteBuffer& buffer);

// In `bytes`, a serialized message of type `descriptor`, the path of the first `string`
// field (nested messages included) whose value is not valid UTF-8 (IsValidUtf8()):
// field names joined by ".", repeated fields with their index, for example "texts[2]"
// or "texts.texts.texts[0]". nullopt when every string is valid or the bytes are not
// well-formed wire format.
std::optional<std::string> FindInvalidUtf8Field(
    const google::protobuf::Descriptor& descriptor, absl::string_view bytes);

// The last value of the top-level length-delimited field `field_number` in `bytes`
// (the value a parser keeps for a singular field), when it is present and valid UTF-8;
// else nullopt. Bytes that are not well-formed wire format are read up to the first
// malformed field: the id of a stream item that holds garbage after it still reads.
std::optional<std::string> ReadUtf8Field(absl::string_view bytes, int field_number);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_REQUEST_PARSING_H_
