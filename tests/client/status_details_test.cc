#include "client/status_details.h"

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/error_details.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

google::rpc::Status RichStatus(int code, const std::string& message) {
  google::rpc::Status status;
  status.set_code(code);
  status.set_message(message);
  google::rpc::BadRequest bad_request;
  auto* violation = bad_request.add_field_violations();
  violation->set_field("images[3]");
  violation->set_description("unrecognized image format");
  google::protobuf::Any* any = status.add_details();
  any->set_type_url(std::string(kBadRequestUrl));
  any->set_value(bad_request.SerializeAsString());
  google::rpc::RetryInfo retry_info;
  retry_info.mutable_retry_delay()->set_seconds(1);
  retry_info.mutable_retry_delay()->set_nanos(250'000'000);
  any = status.add_details();
  any->set_type_url(std::string(kRetryInfoUrl));
  any->set_value(retry_info.SerializeAsString());
  return status;
}

TEST(FromGrpcStatusTest, OkIsOk) { EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok()); }

TEST(FromGrpcStatusTest, KeepsCodeAndMessageWithoutDetails) {
  absl::Status status =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"));
  EXPECT_EQ(status, absl::UnavailableError("connection refused"));
}

TEST(FromGrpcStatusTest, KeepsEveryDetailAsAPayload) {
  grpc::Status grpc_status;
  ASSERT_TRUE(grpc::SetErrorDetails(RichStatus(3, "images[3]: unrecognized image format"),
                                    &grpc_status)
                  .ok());
  absl::Status status = FromGrpcStatus(grpc_status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "images[3]: unrecognized image format");
  std::optional<google::rpc::BadRequest> bad_request = BadRequestOf(status);
  ASSERT_TRUE(bad_request.has_value());
  ASSERT_EQ(bad_request->field_violations_size(), 1);
  EXPECT_EQ(bad_request->field_violations(0).field(), "images[3]");
  EXPECT_EQ(RetryInfoDelay(status), absl::Milliseconds(1250));
  EXPECT_EQ(BadRequestItemIndex(status, "images"), 3u);
}

TEST(FromGrpcStatusTest, UnparsableDetailsKeepCodeAndMessage) {
  absl::Status status = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full", "\xff\xff\xff"));
  EXPECT_EQ(status, absl::ResourceExhaustedError("queue full"));
  EXPECT_FALSE(RetryInfoDelay(status).has_value());
}

TEST(FromRpcStatusTest, StreamItemErrorKeepsDetails) {
  absl::Status status = FromRpcStatus(RichStatus(8, "image queue is full"));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "image queue is full");
  EXPECT_EQ(RetryInfoDelay(status), absl::Milliseconds(1250));
}

TEST(FromRpcStatusTest, OutOfRangeOrOkCodesBecomeUnknown) {
  google::rpc::Status rpc;
  rpc.set_code(99);
  EXPECT_EQ(FromRpcStatus(rpc).code(), absl::StatusCode::kUnknown);
  rpc.set_code(0);
  rpc.set_message("an error entry that says OK");
  EXPECT_EQ(FromRpcStatus(rpc).code(), absl::StatusCode::kUnknown);
}

TEST(RetryInfoTest, SetAndReadBack) {
  absl::Status status = absl::ResourceExhaustedError("full");
  EXPECT_FALSE(RetryInfoDelay(status).has_value());
  SetRetryInfo(absl::Milliseconds(2500), &status);
  EXPECT_EQ(RetryInfoDelay(status), absl::Milliseconds(2500));
}

TEST(RequestIdTest, SetOnErrorsOnlyAndReadBack) {
  absl::Status status = absl::InvalidArgumentError("bad");
  EXPECT_FALSE(RequestIdOf(status).has_value());
  SetRequestId("job-7", &status);
  EXPECT_EQ(RequestIdOf(status), "job-7");
  SetRequestId("job-8", &status);
  EXPECT_EQ(RequestIdOf(status), "job-8");
  EXPECT_EQ(status.message(), "bad");
  absl::Status ok;
  SetRequestId("job-9", &ok);
  EXPECT_FALSE(RequestIdOf(ok).has_value());
}

TEST(NotProcessedTest, OnlyTheClientsOwnMarkCounts) {
  absl::Status status = NotProcessedError();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  SetRequestId("job-7", &status);
  EXPECT_TRUE(IsNotProcessed(status));
  // A CANCELLED from the server (it dropped the item, or is shutting down) is not.
  EXPECT_FALSE(IsNotProcessed(absl::CancelledError(NotProcessedError().message())));
  EXPECT_FALSE(IsNotProcessed(absl::OkStatus()));
}

TEST(BadRequestItemIndexTest, FindsTheItemOfTheNamedList) {
  absl::Status status = absl::InvalidArgumentError("bad");
  google::rpc::BadRequest bad_request;
  bad_request.add_field_violations()->set_field("texts.texts[12]");
  status.SetPayload(kBadRequestUrl, absl::Cord(bad_request.SerializeAsString()));
  EXPECT_EQ(BadRequestItemIndex(status, "texts"), 12u);
  EXPECT_FALSE(BadRequestItemIndex(status, "images").has_value());
  EXPECT_FALSE(BadRequestItemIndex(status, "xts").has_value());
  EXPECT_FALSE(BadRequestItemIndex(absl::InvalidArgumentError("x"), "texts").has_value());
}

TEST(IsTheItemsOwnErrorTest, OnlyLocalOrInvalidInputErrorsAreTheItems) {
  EXPECT_TRUE(IsTheItemsOwnError(absl::InvalidArgumentError("not an image"), false));
  EXPECT_TRUE(IsTheItemsOwnError(absl::NotFoundError("x.jpg: no such file"), true));
  EXPECT_TRUE(IsTheItemsOwnError(absl::PermissionDeniedError("x.jpg: denied"), true));
  for (const absl::Status& status :
       {absl::UnavailableError("connection refused"),
        absl::UnauthenticatedError("missing bearer token"),
        absl::PermissionDeniedError("not allowed"),
        absl::DeadlineExceededError("no answer from the server"),
        absl::ResourceExhaustedError("the queue is full"),
        absl::InternalError("model failed"), absl::CancelledError("shutting down"),
        absl::UnimplementedError("no such method")}) {
    EXPECT_FALSE(IsTheItemsOwnError(status, false)) << status;
  }
  EXPECT_FALSE(IsTheItemsOwnError(absl::OkStatus(), true));
}

}  // namespace
}  // namespace clipserve
