#include "server/service/grpc_status.h"

#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/error_details.h"

namespace clipserve {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status rpc_status;
  rpc_status.set_code(static_cast<int32_t>(status.code()));
  rpc_status.set_message(std::string(status.message()));
  status.ForEachPayload([&rpc_status](absl::string_view type_url,
                                      const absl::Cord& payload) {
    google::protobuf::Any* any = rpc_status.add_details();
    any->set_type_url(std::string(type_url));
    any->set_value(std::string(payload));
  });
  grpc::Status out;
  // SetErrorDetails only fails for a null output pointer.
  grpc::SetErrorDetails(rpc_status, &out);
  return out;
}

absl::Status InvalidArgumentForField(absl::string_view field,
                                     absl::string_view description) {
  absl::Status status = absl::InvalidArgumentError(absl::StrCat(field, ": ", description));
  google::rpc::BadRequest bad_request;
  google::rpc::BadRequest::FieldViolation* violation =
      bad_request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  status.SetPayload(kBadRequestTypeUrl, absl::Cord(bad_request.SerializeAsString()));
  return status;
}

absl::Status ResourceExhaustedWithRetry(absl::string_view message,
                                        absl::Duration retry_after) {
  absl::Status status = absl::ResourceExhaustedError(message);
  google::rpc::RetryInfo retry_info;
  const int64_t nanos = absl::ToInt64Nanoseconds(retry_after);
  retry_info.mutable_retry_delay()->set_seconds(nanos / 1000000000);
  retry_info.mutable_retry_delay()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
  status.SetPayload(kRetryInfoTypeUrl, absl::Cord(retry_info.SerializeAsString()));
  return status;
}

}  // namespace clipserve
