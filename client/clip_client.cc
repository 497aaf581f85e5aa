#include "client/clip_client.h"

#include <utility>

#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace clipserve {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::StatusOr<std::unique_ptr<ClipClient>> ClipClient::Create(
    const ClipClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("empty target");
  if (options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("deadline must be positive");
  }
  auto channel = grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  return std::unique_ptr<ClipClient>(new ClipClient(options, std::move(channel)));
}

ClipClient::ClipClient(const ClipClientOptions& options,
                       std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
ClipClient::CheckHealth(const std::string& service) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health_->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.status();
}

}  // namespace clipserve
