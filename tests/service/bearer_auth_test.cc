#include "server/service/bearer_auth.h"

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "grpcpp/support/string_ref.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

std::string WriteTemp(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/bearer_auth_test_" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
  return path;
}

std::unique_ptr<BearerAuthenticator> Make(const std::vector<std::string>& tokens) {
  auto auth = BearerAuthenticator::Create(tokens);
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : nullptr;
}

TEST(ParseBearerTokensTest, OneTokenPerLineTrimmedBlankLinesSkipped) {
  auto tokens = ParseBearerTokens("  alpha\t\r\n\n\r\nbeta-2_x.y~z+/=\n   \ngamma");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ElementsAre("alpha", "beta-2_x.y~z+/=", "gamma"));
}

TEST(ParseBearerTokensTest, NoTokenIsAnError) {
  for (const char* contents : {"", "\n", "  \r\n\t\n"}) {
    auto tokens = ParseBearerTokens(contents);
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("no token"));
  }
}

TEST(ParseBearerTokensTest, BadCharacterNamesTheLineNotTheToken) {
  auto tokens = ParseBearerTokens("good\nhas zebra\n");
  ASSERT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("line 2"));
  EXPECT_THAT(std::string(tokens.status().message()), Not(HasSubstr("zebra")));
  EXPECT_EQ(ParseBearerTokens("caf\xc3\xa9").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBearerTokens(std::string("nul\0byte", 8)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseBearerTokensTest, ATokenMustFitInTheHeadersGrpcAccepts) {
  const std::string longest(kMaxBearerTokenBytes, 't');
  auto tokens = ParseBearerTokens("short\n" + longest + "\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->back(), longest);
  tokens = ParseBearerTokens("short\n" + longest + "u\n");
  ASSERT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr("line 2: a token may hold at most 6144 characters"));
}

TEST(ReadBearerTokenFileTest, ReadsFileAndRefusesEmptyOrMissingOnes) {
  auto tokens = ReadBearerTokenFile(WriteTemp("two", "first\nsecond\n"));
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ElementsAre("first", "second"));

  const std::string empty = WriteTemp("empty", "");
  auto none = ReadBearerTokenFile(empty);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr(empty));

  EXPECT_EQ(ReadBearerTokenFile("/no/such/dir/tokens").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadBearerTokenFile(::testing::TempDir()).status().code(),
            absl::StatusCode::kInvalidArgument);  // a directory
  EXPECT_EQ(ReadBearerTokenFile("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BearerAuthenticatorTest, CreateRefusesNoTokenAndEmptyToken) {
  EXPECT_EQ(BearerAuthenticator::Create({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BearerAuthenticator::Create({"ok", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BearerAuthenticator::FromFile(WriteTemp("blank", "\n\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BearerAuthenticatorTest, AcceptsExactlyTheTokensWhateverTheirLengths) {
  // Tokens of different lengths, one a prefix of another.
  auto auth = Make({"short", "a-much-longer-token-0123456789", "shorter"});
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->size(), 3u);
  EXPECT_TRUE(auth->Accepts("short"));
  EXPECT_TRUE(auth->Accepts("a-much-longer-token-0123456789"));
  EXPECT_TRUE(auth->Accepts("shorter"));
  for (const char* wrong :
       {"", "s", "shor", "shortx", "Short", "a-much-longer-token",
        "a-much-longer-token-01234567890", "shorte", "shorterr", " short"}) {
    EXPECT_FALSE(auth->Accepts(wrong)) << "'" << wrong << "'";
  }
  // A token far longer than any accepted one.
  EXPECT_FALSE(auth->Accepts(std::string(100000, 'a')));
}

TEST(BearerAuthenticatorTest, TokensFromAFileAreAccepted) {
  auto auth =
      BearerAuthenticator::FromFile(WriteTemp("file", " old-token \nnew-token\n"));
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->Accepts("old-token"));
  EXPECT_TRUE((*auth)->Accepts("new-token"));
  EXPECT_FALSE((*auth)->Accepts(" old-token "));
}

TEST(BearerAuthenticatorTest, HeaderNeedsTheBearerScheme) {
  auto auth = Make({"s3cr3t"});
  ASSERT_NE(auth, nullptr);
  EXPECT_TRUE(auth->AuthenticateHeader("Bearer s3cr3t").ok());
  EXPECT_TRUE(auth->AuthenticateHeader("bearer s3cr3t").ok());  // RFC 7235
  EXPECT_TRUE(auth->AuthenticateHeader("BEARER  s3cr3t").ok());
  for (const char* header : {"s3cr3t", "Basic s3cr3t", "Bearer", "Bearer ",
                             "Bearers3cr3t", "Token s3cr3t", ""}) {
    const absl::Status status = auth->AuthenticateHeader(header);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << "'" << header << "'";
  }
}

TEST(BearerAuthenticatorTest, RefusalsNeverRepeatWhatWasSent) {
  auto auth = Make({"s3cr3t"});
  ASSERT_NE(auth, nullptr);
  for (const char* header :
       {"Bearer guessed-value", "Bearer s3cr3", "Basic guessed-value", "guessed-value"}) {
    const absl::Status status = auth->AuthenticateHeader(header);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr("guessed")));
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr("s3cr3")));
  }
  EXPECT_EQ(auth->AuthenticateHeader("Bearer s3cr3").message(),
            "the bearer token is not accepted");
}

TEST(BearerAuthenticatorTest, MetadataNeedsExactlyOneAuthorizationEntry) {
  auto auth = Make({"s3cr3t"});
  ASSERT_NE(auth, nullptr);
  const std::string key = "authorization", good = "Bearer s3cr3t", bad = "Bearer nope";
  const std::string other_key = "x-other";
  std::multimap<grpc::string_ref, grpc::string_ref> metadata;
  absl::Status missing = auth->Authenticate(metadata);
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("missing bearer token"));
  EXPECT_THAT(std::string(missing.message()), HasSubstr("authorization: Bearer <token>"));

  metadata.emplace(other_key, good);  // the right value under another key
  EXPECT_EQ(auth->Authenticate(metadata).code(), absl::StatusCode::kUnauthenticated);

  metadata.emplace(key, good);
  EXPECT_TRUE(auth->Authenticate(metadata).ok());

  metadata.emplace(key, bad);  // a second entry, even next to a good one
  const absl::Status two = auth->Authenticate(metadata);
  EXPECT_EQ(two.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(two.message()), HasSubstr("more than one"));

  std::multimap<grpc::string_ref, grpc::string_ref> wrong{{key, bad}};
  EXPECT_EQ(auth->Authenticate(wrong).code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace clipserve
