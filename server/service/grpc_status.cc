#include "server/service/grpc_status.h"

#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/error_details.h"
#include "server/common/status_payloads.h"

namespace clipserve {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status rpc_status;
  rpc_status.set_code(static_cast<int32_t>(status.code()));
  rpc_status.set_message(std::string(status.message()));
  status.ForEachPayload(
      [&rpc_status](absl::string_view type_url, const absl::Cord& payload) {
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
  return BadRequestError(field, description);
}

absl::Status ResourceExhaustedWithRetry(absl::string_view message,
                                        absl::Duration retry_after) {
  // The payload is written by server/common so that layers without Protobuf (the
  // batcher) attach the very same bytes.
  absl::Status status = absl::ResourceExhaustedError(message);
  SetRetryInfoPayload(retry_after, &status);
  return status;
}

}  // namespace clipserve
