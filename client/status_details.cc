#include "client/status_details.h"

#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/duration.pb.h"
#include "grpcpp/support/error_details.h"

namespace clipserve {
namespace {

absl::StatusCode CanonicalCode(int64_t code) {
  if (code <= 0 || code > static_cast<int64_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCode::kUnknown;
  }
  return static_cast<absl::StatusCode>(code);
}

void CopyDetails(const google::rpc::Status& from, absl::Status* to) {
  for (const google::protobuf::Any& detail : from.details()) {
    if (detail.type_url().empty()) continue;
    to->SetPayload(detail.type_url(), absl::Cord(detail.value()));
  }
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(CanonicalCode(status.error_code()), status.error_message());
  if (!status.error_details().empty()) {
    google::rpc::Status details;
    if (grpc::ExtractErrorDetails(status, &details).ok()) CopyDetails(details, &out);
  }
  return out;
}

absl::Status FromRpcStatus(const google::rpc::Status& status) {
  absl::Status out(CanonicalCode(status.code()), status.message());
  CopyDetails(status, &out);
  return out;
}

std::optional<absl::Duration> RetryInfoDelay(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryInfoUrl);
  if (!payload.has_value()) return std::nullopt;
  google::rpc::RetryInfo info;
  if (!info.ParseFromString(std::string(*payload))) return std::nullopt;
  const absl::Duration delay = absl::Seconds(info.retry_delay().seconds()) +
                               absl::Nanoseconds(info.retry_delay().nanos());
  if (delay < absl::ZeroDuration()) return std::nullopt;
  return delay;
}

std::optional<google::rpc::BadRequest> BadRequestOf(const absl::Status& status) {
  auto payload = status.GetPayload(kBadRequestUrl);
  if (!payload.has_value()) return std::nullopt;
  google::rpc::BadRequest bad_request;
  if (!bad_request.ParseFromString(std::string(*payload))) return std::nullopt;
  return bad_request;
}

std::optional<size_t> BadRequestItemIndex(const absl::Status& status,
                                          absl::string_view list) {
  std::optional<google::rpc::BadRequest> bad_request = BadRequestOf(status);
  if (!bad_request.has_value() || list.empty()) return std::nullopt;
  const std::string prefix = absl::StrCat(list, "[");
  for (const auto& violation : bad_request->field_violations()) {
    absl::string_view field = violation.field();
    for (size_t at = field.find(prefix); at != absl::string_view::npos;
         at = field.find(prefix, at + 1)) {
      // The list name must start the field or follow a '.'.
      if (at != 0 && field[at - 1] != '.') continue;
      absl::string_view rest = field.substr(at + prefix.size());
      const size_t close = rest.find(']');
      size_t index = 0;
      if (close != absl::string_view::npos && close > 0 &&
          absl::SimpleAtoi(rest.substr(0, close), &index)) {
        return index;
      }
    }
  }
  return std::nullopt;
}

void SetRetryInfo(absl::Duration delay, absl::Status* status) {
  google::rpc::RetryInfo info;
  const int64_t seconds = absl::IDivDuration(delay, absl::Seconds(1), &delay);
  info.mutable_retry_delay()->set_seconds(seconds);
  info.mutable_retry_delay()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(delay)));
  status->SetPayload(kRetryInfoUrl, absl::Cord(info.SerializeAsString()));
}

void SetRequestId(absl::string_view request_id, absl::Status* status) {
  if (status->ok()) return;
  status->SetPayload(kRequestIdUrl, absl::Cord(request_id));
}

std::optional<std::string> RequestIdOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kRequestIdUrl);
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

absl::Status NotProcessedError() {
  absl::Status status = absl::CancelledError("not processed: stopped at the first error");
  status.SetPayload(kNotProcessedUrl, absl::Cord());
  return status;
}

bool IsNotProcessed(const absl::Status& status) {
  return status.code() == absl::StatusCode::kCancelled &&
         status.GetPayload(kNotProcessedUrl).has_value();
}

bool IsTheItemsOwnError(const absl::Status& status, bool local) {
  if (status.ok()) return false;
  return local || status.code() == absl::StatusCode::kInvalidArgument;
}

}  // namespace clipserve
