#include "server/service/request_parsing.h"

#include <string>

#include "absl/status/status.h"
#include "clipserve/v1/clip_service.pb.h"
#include "google/rpc/error_details.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

// Proto3 C++ serializes invalid UTF-8 in a string field (it only logs), so tests can
// produce the bytes a careless client would send.
std::string Bytes(const google::protobuf::Message& message) {
  return message.SerializeAsString();
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Identity(absl::string_view path) { return std::string(path); }

std::string BadField(const absl::Status& status) {
  const auto payload = status.GetPayload(kBadRequestTypeUrl);
  if (!payload.has_value()) return "<no BadRequest>";
  google::rpc::BadRequest bad_request;
  if (!bad_request.ParseFromString(std::string(*payload))) return "<malformed>";
  return bad_request.field_violations(0).field();
}

TEST(ParseRequestTest, ParsesValidRequests) {
  v1::EmbedTextRequest request;
  request.add_texts("a cat");
  request.add_texts("caf\xC3\xA9");
  request.set_truncate(false);
  v1::EmbedTextRequest parsed;
  ASSERT_TRUE(ParseRequest(Buffer(Bytes(request)), &parsed, Identity).ok());
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());
}

TEST(ParseRequestTest, NamesTheFieldWithInvalidUtf8) {
  v1::EmbedTextRequest request;
  request.add_texts("ok");
  request.add_texts("ok");
  request.add_texts("bad \xFF");
  v1::EmbedTextRequest parsed;
  const absl::Status status = ParseRequest(Buffer(Bytes(request)), &parsed, Identity);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BadField(status), "texts[2]");
  EXPECT_EQ(status.message(), "texts[2]: not valid UTF-8");
}

TEST(ParseRequestTest, NamesNestedFieldsThroughTheRename) {
  v1::SimilarityRequest request;
  request.mutable_images()->mutable_images()->add_images()->set_encoded("\xFF\xD8 jpeg");
  request.mutable_texts()->mutable_texts()->add_texts("fine");
  request.mutable_texts()->mutable_texts()->add_texts("\xED\xA0\x80");
  EXPECT_EQ(FindInvalidUtf8Field(*v1::SimilarityRequest::descriptor(), Bytes(request)),
            "texts.texts.texts[1]");
  v1::SimilarityRequest parsed;
  const absl::Status status =
      ParseRequest(Buffer(Bytes(request)), &parsed,
                   [](absl::string_view path) { return "renamed " + std::string(path); });
  EXPECT_EQ(BadField(status), "renamed texts.texts.texts[1]");
}

TEST(ParseRequestTest, BytesThatAreNoMessageAreInvalidArgument) {
  v1::EmbedTextRequest parsed;
  const absl::Status status = ParseRequest(Buffer("\xFF\xFF\xFF"), &parsed, Identity);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "the request is not a valid clipserve.v1.EmbedTextRequest");
  EXPECT_EQ(BadField(status), "<no BadRequest>");
}

TEST(ReadUtf8FieldTest, ReadsTheLastValidValue) {
  v1::EmbedStreamRequest item;
  item.set_id("first");
  std::string bytes = Bytes(item);
  item.set_id("second");
  item.set_text("\xC3");  // invalid, elsewhere in the message
  bytes += Bytes(item);
  EXPECT_EQ(ReadUtf8Field(bytes, v1::EmbedStreamRequest::kIdFieldNumber), "second");
  EXPECT_EQ(ReadUtf8Field(bytes, v1::EmbedStreamRequest::kTextFieldNumber), std::nullopt);
  EXPECT_EQ(ReadUtf8Field(bytes, 9), std::nullopt);
  EXPECT_EQ(ReadUtf8Field("\xFF\xFF", 1), std::nullopt);
}

TEST(SerializeResponseTest, RoundTrips) {
  v1::EmbedTextResponse response;
  response.add_embeddings()->add_values(0.5f);
  response.set_model("m");
  grpc::ByteBuffer buffer;
  ASSERT_TRUE(SerializeResponse(response, &buffer).ok());
  EXPECT_EQ(Flatten(buffer), response.SerializeAsString());
}

}  // namespace
}  // namespace clipserve
