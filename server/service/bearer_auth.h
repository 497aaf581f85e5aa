#ifndef CLIPSERVE_SERVER_SERVICE_BEARER_AUTH_H_
#define CLIPSERVE_SERVER_SERVICE_BEARER_AUTH_H_

#include <array>
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/string_ref.h"

namespace clipserve {

// Longest token ParseBearerTokens() accepts. gRPC refuses a call whose request
// headers exceed 8 KiB (its default, which the server keeps), the token among them,
// with a RESOURCE_EXHAUSTED that does not say why: a longer token would be accepted at
// start-up and then fail every call. 2 KiB is left for the other headers.
inline constexpr size_t kMaxBearerTokenBytes = 6 * 1024;

// Parses the contents of a token file: one token per line, surrounding whitespace
// (spaces, tabs, CR) trimmed, blank lines skipped. Every token must consist of
// visible ASCII characters (0x21..0x7E, what an HTTP/2 header value "Bearer <token>"
// can carry unchanged), at most kMaxBearerTokenBytes of them. Errors: INVALID_ARGUMENT
// when there is no token at all, or when a line holds a character outside that set or
// too many (the message names the line number, never the token).
absl::StatusOr<std::vector<std::string>> ParseBearerTokens(absl::string_view contents);

// Reads and parses a token file (see ParseBearerTokens). Errors: NOT_FOUND /
// PERMISSION_DENIED / INVALID_ARGUMENT naming `path` when it cannot be read, and the
// parse errors above.
absl::StatusOr<std::vector<std::string>> ReadBearerTokenFile(const std::string& path);

// Checks the "authorization: Bearer <token>" metadata of a call against a fixed set
// of accepted tokens.
//
// Only SHA-256 digests of the tokens are kept. A presented token is hashed and its
// digest compared with every accepted digest with CRYPTO_memcmp, without stopping at
// a match, so the time taken depends neither on how much of a token matched, nor on
// which token matched, nor on the accepted tokens' lengths.
//
// Immutable after Create(); thread-safe.
class BearerAuthenticator {
 public:
  // Errors: INVALID_ARGUMENT when `tokens` is empty or holds an empty token.
  static absl::StatusOr<std::unique_ptr<BearerAuthenticator>> Create(
      const std::vector<std::string>& tokens);

  // ReadBearerTokenFile(path), then Create().
  static absl::StatusOr<std::unique_ptr<BearerAuthenticator>> FromFile(
      const std::string& path);

  // OK when `metadata` (a call's client metadata) holds exactly one "authorization"
  // entry of the form "Bearer <token>" (scheme case-insensitive, RFC 7235) with an
  // accepted token. Otherwise UNAUTHENTICATED, with a message that says what is wrong
  // (missing, not a bearer token, several, not accepted) and never repeats what the
  // client sent.
  absl::Status Authenticate(
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;

  // The same for the value of one authorization header.
  absl::Status AuthenticateHeader(absl::string_view authorization) const;

  // Whether `token` is one of the accepted tokens, in constant time (see above).
  bool Accepts(absl::string_view token) const;

  // How many tokens are accepted.
  size_t size() const { return digests_.size(); }

 private:
  using Digest = std::array<unsigned char, 32>;
  explicit BearerAuthenticator(std::vector<Digest> digests);

  const std::vector<Digest> digests_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_BEARER_AUTH_H_
