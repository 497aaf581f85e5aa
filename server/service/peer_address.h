#ifndef CLIPSERVE_SERVER_SERVICE_PEER_ADDRESS_H_
#define CLIPSERVE_SERVER_SERVICE_PEER_ADDRESS_H_

#include <string>

#include "absl/strings/string_view.h"

namespace clipserve {

// The client host of a gRPC peer string (grpc::ServerContext::peer()), without the
// port, so that every connection from one host has the same key:
//   "ipv4:10.1.2.3:41234"       -> "10.1.2.3"
//   "ipv6:[fd00::7]:41234"      -> "fd00::7" (also with the brackets %-encoded, as
//                                   newer gRPC versions write them)
//   "ipv6:[fe80::1%eth0]:41234" -> "fe80::1%eth0" (a zone id's "%" also from "%25")
//   anything else ("unix:/run/clip.sock", "") -> the peer string as it is.
// Thread-safe; never blocks.
std::string PeerHost(absl::string_view peer);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_PEER_ADDRESS_H_
