#ifndef CLIPSERVE_TESTS_INTEGRATION_LOOPBACK_STACK_H_
#define CLIPSERVE_TESTS_INTEGRATION_LOOPBACK_STACK_H_

#include <memory>

#include "absl/status/statusor.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "server/engine/embedding_engine.h"
#include "server/service/clip_server.h"
#include "server/service/clip_service.h"

namespace clipserve::testing {

// The real server as main() assembles it, for the end-to-end tests.
struct LoopbackStack {
  std::unique_ptr<EmbeddingEngine> engine;
  std::unique_ptr<ClipServer> server;
  std::unique_ptr<v1::ClipService::Stub> stub;
};

// An EmbeddingEngine over the tiny seeded model (TinyClipConfig(), seed 11, named
// "tiny") with CLIP's built-in vocabulary, a ClipService on it, a ClipServer on
// 127.0.0.1 at a free port, and an insecure stub connected to that port.
absl::StatusOr<LoopbackStack> StartLoopbackStack(
    const EmbeddingEngineOptions& engine_options = {},
    const ClipServiceOptions& service_options = {});

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_INTEGRATION_LOOPBACK_STACK_H_
