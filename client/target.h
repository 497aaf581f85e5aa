#ifndef CLIPSERVE_CLIENT_TARGET_H_
#define CLIPSERVE_CLIENT_TARGET_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// Turns the target a user writes into the target string a gRPC channel understands.
//
// Accepted forms:
//   * A gRPC target URI, passed through unchanged: anything with "://" or starting
//     with a resolver scheme ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:",
//     "vsock:", "xds:"). `dns:///name:port` makes gRPC resolve (and re-resolve) the name
//     and, with round_robin, spread calls over all of its addresses.
//   * One endpoint "host:port" (host a name, an IPv4 literal, or "[IPv6]"), passed
//     through unchanged: gRPC's default DNS resolver handles it.
//   * Several endpoints, comma-separated: "10.0.0.1:50051,10.0.0.2:50051". They become
//     one `ipv4:` (or `ipv6:`) multi-address target, so the channel's round_robin
//     policy balances over them without any resolver. Names in the list are resolved
//     once, here, with `resolve`; a name whose addresses change belongs in a dns:///
//     target instead. All endpoints must share an address family (gRPC's multi-address
//     syntax cannot mix them): a name contributes its IPv4 addresses when every entry
//     has one, else its IPv6 addresses.
// Errors: INVALID_ARGUMENT for an empty target, an entry without a port or with a port
// outside 1..65535, a bare IPv6 address without brackets, or families that cannot be
// reconciled; whatever `resolve` returns for a name it cannot resolve.

// Resolves a host name to its addresses as literals ("10.0.0.1", "::1" without
// brackets). Must return at least one address or an error.
using HostResolver =
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& host)>;

// The system resolver (getaddrinfo). NOT_FOUND naming the host when it does not
// resolve. Blocks on DNS.
HostResolver SystemHostResolver();

// See above. Pure apart from `resolve`, which is only called for names in a list.
absl::StatusOr<std::string> ToChannelTarget(absl::string_view target,
                                            const HostResolver& resolve);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_TARGET_H_
