#include "server/service/grpc_status.h"

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/error_details.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

google::rpc::Status Details(const grpc::Status& status) {
  google::rpc::Status details;
  EXPECT_TRUE(grpc::ExtractErrorDetails(status, &details).ok());
  return details;
}

TEST(ToGrpcStatusTest, OkStaysOk) { EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok()); }

TEST(ToGrpcStatusTest, EveryCanonicalCodeKeepsItsNumberAndMessage) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status in(static_cast<absl::StatusCode>(code), "why it failed");
    const grpc::Status out = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.error_code()), code);
    EXPECT_EQ(out.error_message(), "why it failed");
    EXPECT_EQ(Details(out).code(), code);
  }
}

TEST(ToGrpcStatusTest, BadRequestNamesTheField) {
  const grpc::Status out = ToGrpcStatus(
      InvalidArgumentForField("images[3]", "not a JPEG, PNG, WebP, GIF or BMP"));
  EXPECT_EQ(out.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.error_message(), "images[3]: not a JPEG, PNG, WebP, GIF or BMP");
  const google::rpc::Status details = Details(out);
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::BadRequest bad_request;
  ASSERT_TRUE(details.details(0).UnpackTo(&bad_request));
  ASSERT_EQ(bad_request.field_violations_size(), 1);
  EXPECT_EQ(bad_request.field_violations(0).field(), "images[3]");
  EXPECT_EQ(bad_request.field_violations(0).description(),
            "not a JPEG, PNG, WebP, GIF or BMP");
}

TEST(ToGrpcStatusTest, RetryInfoCarriesTheDelay) {
  const grpc::Status out =
      ToGrpcStatus(ResourceExhaustedWithRetry("queue full", absl::Milliseconds(1500)));
  EXPECT_EQ(out.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  const google::rpc::Status details = Details(out);
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::RetryInfo retry_info;
  ASSERT_TRUE(details.details(0).UnpackTo(&retry_info));
  EXPECT_EQ(retry_info.retry_delay().seconds(), 1);
  EXPECT_EQ(retry_info.retry_delay().nanos(), 500000000);
}

}  // namespace
}  // namespace clipserve
