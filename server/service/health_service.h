#ifndef CLIPSERVE_SERVER_SERVICE_HEALTH_SERVICE_H_
#define CLIPSERVE_SERVER_SERVICE_HEALTH_SERVICE_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/support/byte_buffer.h"

namespace clipserve {

// grpc.health.v1.Health for ClipServer, in place of gRPC's default service, whose
// Watch calls outlive its shutdown: gRPC 1.51 tells them NOT_SERVING but keeps them
// open, so a server draining with one open (gRPC's client-side health checking keeps one
// on each connection) waited out its whole grace for it. Here Shutdown() sends each
// Watch NOT_SERVING and then ends it (OK), and later calls still get NOT_SERVING until
// the server stops accepting them.
//
// The services it knows are fixed at construction ("" is the server as a whole); all
// share one status. Check answers NOT_FOUND for any other name, Watch streams
// SERVICE_UNKNOWN for it, as the health protocol says. Thread-safe.
//
// Both methods take the request's bytes and parse them here (ParseRequest()), as
// ClipService does: health checks need no token, and a typed parser keeps every
// unknown field, so one 64 MiB request of 2-byte fields took a gigabyte of memory
// (measured: RSS 862 -> 1,862 MiB, kept after the call). A request with more than a
// few unknown fields, or that does not parse, is INVALID_ARGUMENT.
using HealthServiceBase = grpc::health::v1::Health::WithRawCallbackMethod_Check<
    grpc::health::v1::Health::WithRawCallbackMethod_Watch<
        grpc::health::v1::Health::Service>>;

class HealthService final : public HealthServiceBase {
 public:
  explicit HealthService(std::vector<std::string> services);
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;
  ~HealthService() override;

  // SERVING or NOT_SERVING for every known service, streamed to every Watch whose last
  // answer differs. Ignored after Shutdown().
  void SetServing(bool serving) ABSL_LOCKS_EXCLUDED(mu_);
  // NOT_SERVING for good; every open Watch gets it and then ends. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);
  // Open Watch calls (for tests).
  int NumWatches() const ABSL_LOCKS_EXCLUDED(mu_);

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;

 private:
  class WatchReactor;
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  Status StatusOfLocked(const std::string& service) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void Forget(WatchReactor* watch) ABSL_LOCKS_EXCLUDED(mu_);

  const std::vector<std::string> services_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<WatchReactor*> watches_ ABSL_GUARDED_BY(mu_);
  // Signalled when the last watch is forgotten.
  absl::CondVar no_watches_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_HEALTH_SERVICE_H_
