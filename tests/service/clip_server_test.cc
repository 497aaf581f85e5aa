#include "server/service/clip_server.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/clip_client.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using grpc::health::v1::HealthCheckResponse;

std::unique_ptr<ClipServer> StartServer() {
  ClipServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(std::make_unique<clipserve::v1::ClipService::CallbackService>());
  auto server = ClipServer::Create(options, std::move(services));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<ClipClient> Connect(int port) {
  ClipClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.deadline = absl::Seconds(10);
  auto client = ClipClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

TEST(ClipServerTest, ServingOnceCreatedForServerAndClipService) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  auto client = Connect(server->port());
  auto whole = client->CheckHealth("");
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(*whole, HealthCheckResponse::SERVING);
  auto clip = client->CheckHealth("clipserve.v1.ClipService");
  ASSERT_TRUE(clip.ok()) << clip.status();
  EXPECT_EQ(*clip, HealthCheckResponse::SERVING);
  auto unknown = client->CheckHealth("no.such.Service");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

TEST(ClipServerTest, SetServingFlipsHealthUntilShutdown) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = Connect(server->port());
  for (const bool serving : {false, true, false}) {
    server->SetServing(serving);
    const auto expected =
        serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
    for (const char* service : {"", "clipserve.v1.ClipService"}) {
      auto health = client->CheckHealth(service);
      ASSERT_TRUE(health.ok()) << health.status();
      EXPECT_EQ(*health, expected) << "service '" << service << "'";
    }
  }
  server->Shutdown(absl::Seconds(1));
  server->SetServing(true);  // ignored: no crash, no effect on a stopped server
}

TEST(ClipServerTest, UnbuiltMethodsAnswerUnimplemented) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = clipserve::v1::ClipService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  clipserve::v1::GetModelInfoRequest request;
  clipserve::v1::ModelInfo response;
  EXPECT_EQ(stub->GetModelInfo(&context, request, &response).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST(ClipServerTest, ShutdownRefusesNewCallsAndIsIdempotent) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  server->Shutdown(absl::Seconds(1));
  server->Shutdown(absl::Seconds(1));
  ClipClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.deadline = absl::Seconds(2);
  auto client = ClipClient::Create(options);
  ASSERT_TRUE(client.ok());
  auto health = (*client)->CheckHealth("");
  EXPECT_FALSE(health.ok());
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable) << health.status();
}

TEST(ClipServerTest, PortInUseIsUnavailable) {
  auto first = StartServer();
  ASSERT_NE(first, nullptr);
  ClipServerOptions options;
  options.host = "127.0.0.1";
  options.port = first->port();
  std::vector<std::unique_ptr<grpc::Service>> services;
  services.push_back(std::make_unique<clipserve::v1::ClipService::CallbackService>());
  auto second = ClipServer::Create(options, std::move(services));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

// Message size limits are on without any option set: gRPC refuses a larger request
// with RESOURCE_EXHAUSTED before the service sees it.
TEST(ClipServerTest, MessageSizeLimitIsOnByDefault) {
  ClipServerOptions defaults;
  EXPECT_EQ(defaults.max_receive_message_bytes, 64 << 20);
  EXPECT_EQ(defaults.max_send_message_bytes, 64 << 20);
  auto server = StartServer();  // default limits
  ASSERT_NE(server, nullptr);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  auto stub = clipserve::v1::ClipService::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server->port()),
                                grpc::InsecureChannelCredentials(), args));
  for (const bool too_large : {true, false}) {
    clipserve::v1::EmbedImageRequest request;
    request.add_images()->set_encoded(
        std::string(too_large ? (64 << 20) + 1 : (64 << 20) - 1024, 'x'));
    clipserve::v1::EmbedImageResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    const grpc::Status status = stub->EmbedImage(&context, request, &response);
    // Under the limit the call reaches the (unimplemented) service.
    EXPECT_EQ(status.error_code(), too_large ? grpc::StatusCode::RESOURCE_EXHAUSTED
                                             : grpc::StatusCode::UNIMPLEMENTED)
        << status.error_message();
  }
}

TEST(ClipServerTest, RejectsPortOutOfRange) {
  ClipServerOptions options;
  options.port = 70000;
  auto server = ClipServer::Create(options, {});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
