#ifndef CLIPSERVE_SERVER_COMMON_REQUEST_ID_H_
#define CLIPSERVE_SERVER_COMMON_REQUEST_ID_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace clipserve {

// Request ids tie a call to the server's log lines about it. A client (or a proxy such
// as Envoy) sends one in the `x-request-id` metadata; the server logs it with every
// line about the call, makes one up when there is none, and returns it in the
// response's trailing metadata (docs/API.md says why not the initial). ClipClient
// sends one per call, the same for each retry.
inline constexpr char kRequestIdKey[] = "x-request-id";
inline constexpr size_t kMaxRequestIdBytes = 128;

// Whether `id` may serve: 1 to kMaxRequestIdBytes bytes of visible ASCII (0x21-0x7E).
// No space, line break or other control character: an id is logged as it came.
bool IsValidRequestId(absl::string_view id);

// A fresh id: 16 lowercase hex digits of a random 64-bit number. Thread-safe.
std::string NewRequestId();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_REQUEST_ID_H_
