#include "server/service/peer_address.h"

#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace clipserve {

std::string PeerHost(absl::string_view peer) {
  absl::string_view rest = peer;
  if (absl::ConsumePrefix(&rest, "ipv4:")) {
    const size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos || colon == 0) return std::string(peer);
    return std::string(rest.substr(0, colon));
  }
  if (absl::ConsumePrefix(&rest, "ipv6:")) {
    const std::string decoded = absl::StrReplaceAll(
        rest, {{"%5B", "["}, {"%5b", "["}, {"%5D", "]"}, {"%5d", "]"}, {"%25", "%"}});
    const size_t close = decoded.rfind(']');
    if (decoded.empty() || decoded[0] != '[' || close == std::string::npos || close < 2) {
      return std::string(peer);
    }
    return decoded.substr(1, close - 1);
  }
  return std::string(peer);
}

}  // namespace clipserve
