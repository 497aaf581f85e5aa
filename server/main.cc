// clip_server: serves CLIP embeddings over gRPC.
//
// Life cycle: parse flags -> build options -> start serving -> wait for SIGINT or
// SIGTERM -> stop accepting, let calls in flight finish within --shutdown_grace_s ->
// exit 0. A start-up failure exits 1 with the reason on stderr.

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <pthread.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "glog/logging.h"
#include "server/service/clip_server.h"

ABSL_FLAG(std::string, host, "0.0.0.0",
          "Address to listen on: 0.0.0.0 (all IPv4 interfaces), 127.0.0.1, or [::].");
ABSL_FLAG(int32_t, port, 50051, "gRPC port; 0 picks a free one and logs it.");
ABSL_FLAG(std::string, model, "demo:ViT-B-32",
          "The model: a checkpoint path, or demo:PRESET for seeded random weights.");
ABSL_FLAG(int32_t, max_message_bytes, 64 << 20,
          "Largest request or response message in bytes.");
ABSL_FLAG(double, shutdown_grace_s, 30.0,
          "On SIGTERM/SIGINT, seconds that calls in flight get to finish before they "
          "are cancelled. Keep it below Kubernetes' terminationGracePeriodSeconds.");

namespace clipserve {
namespace {

// Blocks SIGINT and SIGTERM in the calling thread and, since threads inherit the
// mask, in every thread started later; WaitForTermination() then receives them
// synchronously instead of in an async-signal handler.
sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForTermination(const sigset_t& set) {
  int signal = 0;
  while (sigwait(&set, &signal) != 0) {
  }
  return signal;
}

int Run() {
  const sigset_t signals = BlockTerminationSignals();

  ClipServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.max_receive_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_send_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  const absl::Duration grace = absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_s));

  std::vector<std::unique_ptr<grpc::Service>> services;
  // Every ClipService method answers UNIMPLEMENTED until the serving core lands.
  services.push_back(std::make_unique<clipserve::v1::ClipService::CallbackService>());

  auto server = ClipServer::Create(options, std::move(services));
  if (!server.ok()) {
    LOG(ERROR) << "clip_server failed to start: " << server.status();
    return EXIT_FAILURE;
  }
  LOG(INFO) << "clip_server listening on " << options.host << ":" << (*server)->port()
            << " model=" << absl::GetFlag(FLAGS_model)
            << " max_message_bytes=" << options.max_receive_message_bytes
            << " shutdown_grace_s=" << absl::GetFlag(FLAGS_shutdown_grace_s);

  const int signal = WaitForTermination(signals);
  LOG(INFO) << "received " << (signal == SIGTERM ? "SIGTERM" : "SIGINT")
            << ", draining for up to " << grace;
  (*server)->Shutdown(grace);
  LOG(INFO) << "clip_server stopped";
  return EXIT_SUCCESS;
}

}  // namespace
}  // namespace clipserve

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves CLIP embeddings over gRPC.\n"
      "Usage: clip_server [--model=demo:ViT-B-32|PATH] [--port=50051] [flags]");
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return clipserve::Run();
}
