#include "client/error_naming.h"

#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "client/status_details.h"
#include "google/rpc/error_details.pb.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

// An INVALID_ARGUMENT from the server about `field` ("images[1]"), with a request id.
absl::Status ServerError(const std::string& field, const std::string& message) {
  absl::Status status = absl::InvalidArgumentError(message);
  google::rpc::BadRequest bad_request;
  bad_request.add_field_violations()->set_field(field);
  status.SetPayload(kBadRequestUrl, absl::Cord(bad_request.SerializeAsString()));
  SetRequestId("req-7", &status);
  return status;
}

TEST(ErrorNamingTest, PrefixesKeepTheCodeAndDetails) {
  absl::Status status = WithPrefix(ServerError("images[0]", "not an image"), "a.jpg");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "a.jpg: not an image");
  EXPECT_EQ(RequestIdOf(status), "req-7");
  EXPECT_EQ(BadRequestItemIndex(status, "images"), 0u);
  EXPECT_EQ(Prefixed(status, "a.jpg").message(), "a.jpg: not an image");
  EXPECT_EQ(Prefixed(status, "b.jpg").message(), "b.jpg: a.jpg: not an image");
  EXPECT_TRUE(WithPrefix(absl::OkStatus(), "a.jpg").ok());
  EXPECT_EQ(WithPrefix(status, ""), status);
}

TEST(ErrorNamingTest, LongTextsAreCutAtACharacter) {
  EXPECT_EQ(QuoteText("a cat"), "text \"a cat\"");
  const std::string sixty(60, 'x');
  EXPECT_EQ(QuoteText(sixty), absl::StrCat("text \"", sixty, "\""));
  // 56 bytes, then a 2-byte character that would straddle byte 57.
  const std::string text = std::string(56, 'x') + "\xc3\xa9" + "tail";
  EXPECT_EQ(QuoteText(text), absl::StrCat("text \"", std::string(56, 'x'), "...\""));
}

TEST(ErrorNamingTest, TheItemPointedAtIsNamedWhereItStandsInTheJob) {
  const std::vector<std::string> paths = {"a.jpg", "b.jpg", "c.jpg", "d.jpg"};
  EXPECT_EQ(NameItem(ServerError("images[1]", "images[1]: not an image"), "images", paths,
                     0, false)
                .message(),
            "b.jpg: images[1]: not an image");
  // The second request of two items each: its images[1] is the job's fourth.
  absl::Status named = NameItem(ServerError("images[1]", "images[1]: not an image"),
                                "images", paths, 2, false);
  EXPECT_EQ(named.message(), "d.jpg: images[3]: not an image");
  EXPECT_EQ(named.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequestIdOf(named), "req-7");
  const std::vector<std::string> texts = {"a cat", "a dog"};
  EXPECT_EQ(
      NameItem(ServerError("texts[0]", "too long"), "texts", texts, 1, true).message(),
      "text \"a dog\": too long");
}

TEST(ErrorNamingTest, AnIndexPastTheItemsSentNamesNothing) {
  const std::vector<std::string> paths = {"a.jpg", "b.jpg", "c.jpg"};
  // Past the list, past the request's part of it, and huge: offset + index would
  // wrap around to a small number and name a file that was never the matter.
  for (const auto& [field, offset] : std::vector<std::pair<std::string, size_t>>{
           {"images[3]", 0},
           {"images[1]", 2},
           {"images[0]", 3},
           {absl::StrCat("images[", std::numeric_limits<size_t>::max() - 1, "]"), 2}}) {
    const absl::Status status = ServerError(field, "bad image");
    EXPECT_EQ(NameItem(status, "images", paths, offset, false), status)
        << field << " at offset " << offset;
  }
  const absl::Status texts = ServerError("texts[0]", "bad text");
  EXPECT_EQ(NameItem(texts, "images", paths, 0, false), texts);
}

// A server that answered part of a job was reached: losing it is not a wrong address.
TEST(ErrorNamingTest, AnUnavailableServerIsLostOnlyOnceItAnswered) {
  EXPECT_EQ(UnavailablePrefix("h:1", 0, 40, "images"), "cannot reach the server at h:1");
  EXPECT_EQ(UnavailablePrefix("h:1", 37, 40, "images"),
            "lost the server at h:1 after 37 of 40 images");
}

}  // namespace
}  // namespace clipserve
