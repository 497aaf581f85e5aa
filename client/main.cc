// clip_client: the command line for a clipserve server.
//
//   clip_client [--target HOST:PORT] [--deadline_ms N] SUBCOMMAND ...
//
// Errors print "error: CODE: message" on stderr and exit non-zero.

#include <cstdio>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/clip_client.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return EXIT_FAILURE;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"clip_client: talk to a clipserve CLIP embedding server"};
  app.require_subcommand(1);
  clipserve::ClipClientOptions options;
  int64_t deadline_ms = 30000;
  app.add_option("--target", options.target, "Server address (host:port or gRPC URI)")
      ->capture_default_str();
  app.add_option("--deadline_ms", deadline_ms, "Deadline per call in milliseconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  CLI::App* health = app.add_subcommand(
      "health", "Exit 0 when the server reports SERVING, 1 otherwise");
  std::string service;
  health->add_option("--service", service, "Service to check (default: whole server)");

  CLI11_PARSE(app, argc, argv);
  options.deadline = absl::Milliseconds(deadline_ms);

  auto client = clipserve::ClipClient::Create(options);
  if (!client.ok()) return Fail(client.status());

  if (health->parsed()) {
    auto status = (*client)->CheckHealth(service);
    if (!status.ok()) return Fail(status.status());
    const std::string name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status);
    std::printf("%s\n", name.c_str());
    return *status == grpc::health::v1::HealthCheckResponse::SERVING ? EXIT_SUCCESS
                                                                       : EXIT_FAILURE;
  }
  return EXIT_FAILURE;
}
