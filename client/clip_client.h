#ifndef CLIPSERVE_CLIENT_CLIP_CLIENT_H_
#define CLIPSERVE_CLIENT_CLIP_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"

namespace clipserve {

struct ClipClientOptions {
  // The server: "host:port", or any gRPC target URI ("dns:///name:port").
  std::string target = "localhost:50051";
  // Deadline applied to each call.
  absl::Duration deadline = absl::Seconds(30);
};

// A client for a clipserve server. Thread-safe: one ClipClient may be shared by many
// threads; calls block the calling thread until the server answers or the deadline
// passes. Server errors come back as absl::Status with the gRPC code and message.
class ClipClient {
 public:
  // Creates the channel (connection happens lazily on the first call).
  // INVALID_ARGUMENT for an empty target or non-positive deadline.
  static absl::StatusOr<std::unique_ptr<ClipClient>> Create(const ClipClientOptions& options);

  // Asks grpc.health.v1.Health for `service` ("" = the whole server). Returns the
  // serving status; UNAVAILABLE when the server cannot be reached, NOT_FOUND when it
  // does not know `service`.
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
      const std::string& service = "");

 private:
  ClipClient(const ClipClientOptions& options, std::shared_ptr<grpc::Channel> channel);

  const ClipClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// Converts a gRPC status into the absl::Status the client API returns.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_CLIP_CLIENT_H_
