#include "server/service/bearer_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/service/secret_file.h"

namespace clipserve {
namespace {

constexpr absl::string_view kAuthorization = "authorization";
constexpr absl::string_view kHowTo = "send the metadata 'authorization: Bearer <token>'";

bool IsTokenChar(char c) { return c >= 0x21 && c <= 0x7e; }

bool Sha256(absl::string_view data, unsigned char out[32]) {
  unsigned int length = 0;
  return EVP_Digest(data.data(), data.size(), out, &length, EVP_sha256(), nullptr) == 1 &&
         length == 32;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseBearerTokens(absl::string_view contents) {
  std::vector<std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    if (line.size() > kMaxBearerTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file line ", line_number, ": a token may hold at most ",
          kMaxBearerTokenBytes, " characters (gRPC refuses request headers over 8 KiB)"));
    }
    for (const char c : line) {
      if (!IsTokenChar(c)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token file line ", line_number,
            ": a token may hold only visible ASCII characters, no spaces or control "
            "characters"));
      }
    }
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError("token file holds no token (one per line)");
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> ReadBearerTokenFile(const std::string& path) {
  absl::StatusOr<std::string> contents =
      ReadSecretFile(path, "bearer token file (--auth_token_file)");
  if (!contents.ok()) return contents.status();
  absl::StatusOr<std::vector<std::string>> tokens = ParseBearerTokens(*contents);
  if (!tokens.ok()) {
    return absl::Status(tokens.status().code(),
                        absl::StrCat("bearer token file (--auth_token_file) '", path,
                                     "': ", tokens.status().message()));
  }
  return tokens;
}

absl::StatusOr<std::unique_ptr<BearerAuthenticator>> BearerAuthenticator::Create(
    const std::vector<std::string>& tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("no bearer token given");
  std::vector<Digest> digests;
  digests.reserve(tokens.size());
  for (const std::string& token : tokens) {
    if (token.empty()) return absl::InvalidArgumentError("empty bearer token");
    Digest digest;
    if (!Sha256(token, digest.data())) {
      return absl::InternalError("SHA-256 failed in OpenSSL");
    }
    digests.push_back(digest);
  }
  return std::unique_ptr<BearerAuthenticator>(
      new BearerAuthenticator(std::move(digests)));
}

absl::StatusOr<std::unique_ptr<BearerAuthenticator>> BearerAuthenticator::FromFile(
    const std::string& path) {
  absl::StatusOr<std::vector<std::string>> tokens = ReadBearerTokenFile(path);
  if (!tokens.ok()) return tokens.status();
  return Create(*tokens);
}

BearerAuthenticator::BearerAuthenticator(std::vector<Digest> digests)
    : digests_(std::move(digests)) {}

bool BearerAuthenticator::Accepts(absl::string_view token) const {
  if (token.empty()) return false;
  Digest presented;
  if (!Sha256(token, presented.data())) return false;
  // Every accepted digest is compared, whatever the outcome of the others.
  int matches = 0;
  for (const Digest& accepted : digests_) {
    matches |= static_cast<int>(
        CRYPTO_memcmp(presented.data(), accepted.data(), presented.size()) == 0);
  }
  return matches != 0;
}

absl::Status BearerAuthenticator::AuthenticateHeader(
    absl::string_view authorization) const {
  // RFC 6750: "Bearer" 1*SP token; the scheme is case-insensitive (RFC 7235).
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::StartsWithIgnoreCase(authorization, kScheme)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the authorization metadata is not a bearer token: ", kHowTo));
  }
  absl::string_view token =
      absl::StripLeadingAsciiWhitespace(authorization.substr(kScheme.size()));
  if (!Accepts(token)) {
    return absl::UnauthenticatedError("the bearer token is not accepted");
  }
  return absl::OkStatus();
}

absl::Status BearerAuthenticator::Authenticate(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  const auto [begin, end] = metadata.equal_range(
      grpc::string_ref(kAuthorization.data(), kAuthorization.size()));
  if (begin == end) {
    return absl::UnauthenticatedError(absl::StrCat("missing bearer token: ", kHowTo));
  }
  if (std::next(begin) != end) {
    return absl::UnauthenticatedError(
        "more than one authorization metadata entry: send exactly one");
  }
  return AuthenticateHeader(
      absl::string_view(begin->second.data(), begin->second.size()));
}

}  // namespace clipserve
