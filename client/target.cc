#include "client/target.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace clipserve {
namespace {

constexpr absl::string_view kSchemes[] = {
    "dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:"};

bool IsIpv4Literal(const std::string& host) {
  in_addr address;
  return inet_pton(AF_INET, host.c_str(), &address) == 1;
}

bool IsIpv6Literal(const std::string& host) {
  in6_addr address;
  return inet_pton(AF_INET6, host.c_str(), &address) == 1;
}

struct Endpoint {
  std::string host;  // without brackets
  bool bracketed = false;
  uint16_t port = 0;
};

absl::StatusOr<Endpoint> ParseEndpoint(absl::string_view entry) {
  Endpoint endpoint;
  absl::string_view port;
  if (absl::StartsWith(entry, "[")) {
    const size_t close = entry.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("missing ']' in '", entry, "'"));
    }
    endpoint.host = std::string(entry.substr(1, close - 1));
    endpoint.bracketed = true;
    absl::string_view rest = entry.substr(close + 1);
    if (!absl::ConsumePrefix(&rest, ":")) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing port in '", entry, "' (use [address]:port)"));
    }
    port = rest;
    if (!IsIpv6Literal(endpoint.host)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", endpoint.host, "' in '", entry, "' is not an IPv6 address"));
    }
  } else {
    const size_t colon = entry.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing port in '", entry, "' (use host:port)"));
    }
    endpoint.host = std::string(entry.substr(0, colon));
    port = entry.substr(colon + 1);
    if (absl::StrContains(endpoint.host, ':')) {
      // "::1" alone is an address without a port, not host "::" and port 1.
      if (IsIpv6Literal(std::string(entry))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "IPv6 address '", entry, "' needs brackets and a port: [", entry, "]:PORT"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("'", entry, "' is neither host:port nor [IPv6 address]:port"));
    }
  }
  if (std::any_of(endpoint.host.begin(), endpoint.host.end(), absl::ascii_isspace)) {
    return absl::InvalidArgumentError(absl::StrCat("space in the host of '", entry, "'"));
  }
  if (endpoint.host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("missing host in '", entry, "'"));
  }
  uint32_t number = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad port '", port, "' in '", entry, "' (1..65535)"));
  }
  endpoint.port = static_cast<uint16_t>(number);
  return endpoint;
}

void AddUnique(std::vector<std::string>* list, std::string value) {
  if (std::find(list->begin(), list->end(), value) == list->end()) {
    list->push_back(std::move(value));
  }
}

}  // namespace

HostResolver SystemHostResolver() {
  return [](const std::string& host) -> absl::StatusOr<std::vector<std::string>> {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* result = nullptr;
    const int error = getaddrinfo(host.c_str(), nullptr, &hints, &result);
    if (error != 0) {
      return absl::NotFoundError(
          absl::StrCat("cannot resolve '", host, "': ", gai_strerror(error)));
    }
    std::vector<std::string> addresses;
    for (addrinfo* info = result; info != nullptr; info = info->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw = nullptr;
      if (info->ai_family == AF_INET) {
        raw = &reinterpret_cast<sockaddr_in*>(info->ai_addr)->sin_addr;
      } else if (info->ai_family == AF_INET6) {
        raw = &reinterpret_cast<sockaddr_in6*>(info->ai_addr)->sin6_addr;
      } else {
        continue;
      }
      if (inet_ntop(info->ai_family, raw, text, sizeof(text)) != nullptr) {
        AddUnique(&addresses, text);
      }
    }
    freeaddrinfo(result);
    if (addresses.empty()) {
      return absl::NotFoundError(absl::StrCat("'", host, "' has no IP address"));
    }
    return addresses;
  };
}

absl::StatusOr<std::string> ToChannelTarget(absl::string_view target,
                                            const HostResolver& resolve) {
  target = absl::StripAsciiWhitespace(target);
  if (target.empty()) return absl::InvalidArgumentError("empty target");
  // A gRPC URI ("dns:///name:port"), passed through whole: gRPC reads its scheme as
  // written, so one in capitals would be taken for a host name.
  const auto is_uri = [](absl::string_view text) {
    // "scheme://...", the scheme a letter, then letters, digits, '+', '-' or '.'.
    if (const size_t at = text.find("://");
        at != absl::string_view::npos && at > 0 && absl::ascii_isalpha(text[0]) &&
        std::all_of(text.begin(), text.begin() + at, [](char c) {
          return absl::ascii_isalnum(c) || c == '+' || c == '-' || c == '.';
        })) {
      return true;
    }
    for (absl::string_view scheme : kSchemes) {
      if (absl::StartsWithIgnoreCase(text, scheme)) return true;
    }
    return false;
  };
  if (is_uri(target)) {
    const absl::string_view scheme = target.substr(0, target.find(':'));
    if (std::any_of(scheme.begin(), scheme.end(), absl::ascii_isupper)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the scheme of '", target, "' is written in lowercase (",
                       absl::AsciiStrToLower(scheme), ":)"));
    }
    return std::string(target);  // "ipv4:" and "ipv6:" take lists of their own
  }
  std::vector<Endpoint> endpoints;
  for (absl::string_view entry : absl::StrSplit(target, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("empty entry in target '", target, "'"));
    }
    if (is_uri(entry)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", entry, "' in target '", target,
                       "': a comma-separated list takes host:port entries; give a URI "
                       "(dns:///name:port) alone"));
    }
    absl::StatusOr<Endpoint> endpoint = ParseEndpoint(entry);
    if (!endpoint.ok()) return endpoint.status();
    endpoints.push_back(*std::move(endpoint));
  }
  if (endpoints.size() == 1) {
    const Endpoint& e = endpoints[0];
    return e.bracketed ? absl::StrCat("[", e.host, "]:", e.port)
                       : absl::StrCat(e.host, ":", e.port);
  }

  // Several endpoints: one multi-address target of a single family.
  struct Addresses {
    std::vector<std::string> v4, v6;
  };
  std::vector<Addresses> per_entry;
  for (const Endpoint& e : endpoints) {
    Addresses addresses;
    if (e.bracketed) {
      addresses.v6.push_back(e.host);
    } else if (IsIpv4Literal(e.host)) {
      addresses.v4.push_back(e.host);
    } else {
      absl::StatusOr<std::vector<std::string>> resolved = resolve(e.host);
      if (!resolved.ok()) return resolved.status();
      for (std::string& address : *resolved) {
        if (IsIpv4Literal(address)) {
          addresses.v4.push_back(std::move(address));
        } else if (IsIpv6Literal(address)) {
          addresses.v6.push_back(std::move(address));
        }
      }
      if (addresses.v4.empty() && addresses.v6.empty()) {
        return absl::NotFoundError(absl::StrCat("'", e.host, "' has no IP address"));
      }
    }
    per_entry.push_back(std::move(addresses));
  }
  const bool all_v4 = std::all_of(per_entry.begin(), per_entry.end(),
                                  [](const Addresses& a) { return !a.v4.empty(); });
  const bool all_v6 = std::all_of(per_entry.begin(), per_entry.end(),
                                  [](const Addresses& a) { return !a.v6.empty(); });
  if (!all_v4 && !all_v6) {
    return absl::InvalidArgumentError(
        absl::StrCat("target '", target,
                     "' mixes IPv4 and IPv6 endpoints; list one family, or use a "
                     "dns:///name:port target"));
  }
  std::vector<std::string> parts;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    for (const std::string& address : all_v4 ? per_entry[i].v4 : per_entry[i].v6) {
      AddUnique(&parts, all_v4 ? absl::StrCat(address, ":", endpoints[i].port)
                               : absl::StrCat("[", address, "]:", endpoints[i].port));
    }
  }
  return absl::StrCat(all_v4 ? "ipv4:" : "ipv6:", absl::StrJoin(parts, ","));
}

}  // namespace clipserve
