#include "server/service/clip_server.h"

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/clip_client.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "tests/testing/poll_until.h"
#include "tests/testing/raw_call.h"
#include "tests/testing/tcp_proxy.h"

namespace clipserve {
namespace {

using grpc::health::v1::HealthCheckResponse;

std::unique_ptr<ClipServer> StartServer(ClipServerOptions options = {}) {
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

// Health checks need no token, and a typed parser would keep every unknown field of a
// request (a message size of 2-byte fields took a gigabyte): the service parses the
// bytes itself and refuses more than a few, and bytes that are not a request, with
// INVALID_ARGUMENT; a request with a few unknown fields is still answered.
TEST(ClipServerTest, HealthChecksRefuseRequestsOfManyUnknownFieldsCheaply) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  constexpr char kCheck[] = "/grpc.health.v1.Health/Check";
  std::string unknown;
  for (int i = 0; i < 100'000; ++i) unknown += "\x10\x01";
  EXPECT_EQ(testing::CallWithBytes(server->port(), kCheck, unknown).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(testing::CallWithBytes(server->port(), kCheck,
                                   "\x0A\x05"
                                   "ab")
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);  // a field cut short
  std::string answer;
  // An unknown varint field, then service "".
  ASSERT_TRUE(testing::CallWithBytes(server->port(), kCheck,
                                     std::string("\x10\x01\x0A\x00", 4), &answer)
                  .ok());
  HealthCheckResponse response;
  ASSERT_TRUE(response.ParseFromString(answer));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
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

// Reflection's list_services, sent as the one message of a call; the reply's bytes.
absl::StatusOr<std::string> ListServices(int port) {
  std::string reply;
  const grpc::Status status = testing::CallWithBytes(
      port, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      std::string("\x3a\x00", 2), &reply);  // list_services = ""
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return reply;
}

TEST(ClipServerTest, ReflectionIsOnUnlessTurnedOff) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const absl::StatusOr<std::string> listed = ListServices(server->port());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT(*listed, ::testing::HasSubstr("clipserve.v1.ClipService"));

  ClipServerOptions options;
  options.reflection = false;
  auto without = StartServer(options);
  ASSERT_NE(without, nullptr);
  EXPECT_EQ(ListServices(without->port()).status().code(),
            absl::StatusCode::kUnimplemented);
  // Process-wide, the plugin still serves the servers that want it.
  auto again = StartServer();
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(ListServices(again->port()).ok());
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

TEST(ClipServerTest, CheckCanListenFindsATakenPortBeforeAnyServerStarts) {
  auto first = StartServer();  // listens on 127.0.0.1
  ASSERT_NE(first, nullptr);
  const int port = first->port();
  const absl::Status taken = CheckCanListen("127.0.0.1", port);
  EXPECT_EQ(taken.code(), absl::StatusCode::kUnavailable) << taken;
  EXPECT_EQ(taken.message(), absl::StrCat("cannot listen on 127.0.0.1:", port,
                                          ": Address already in use"));
  // The IPv4 wildcard takes every IPv4 address, 127.0.0.1's port included.
  EXPECT_EQ(CheckCanListen("0.0.0.0", port).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(CheckCanListen("127.0.0.1", 0).ok());
}

// gRPC cannot split "::1:50051" into a host and a port; it would fail after the load.
TEST(ClipServerTest, CheckCanListenAsksForBracketsAroundIPv6) {
  const absl::Status bare = CheckCanListen("::1", 50051);
  EXPECT_EQ(bare.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bare.message(),
            "cannot listen on ::1:50051: write an IPv6 address in brackets, as [::1]");
  // Port 0 (any free port) does not skip the host's check.
  EXPECT_EQ(CheckCanListen("::1", 0).code(), absl::StatusCode::kInvalidArgument);
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

TEST(ClipServerTest, CompressedRequestsAreRefusedBeforeTheyAreInflated) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::string target = absl::StrCat("127.0.0.1:", server->port());
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto clip = clipserve::v1::ClipService::NewStub(channel);
  // 64 MiB of one byte: about 65 KB of gzip.
  clipserve::v1::EmbedImageRequest image;
  image.add_images()->set_encoded(std::string((64 << 20) - 1024, 'x'));
  for (const grpc_compression_algorithm algorithm :
       {GRPC_COMPRESS_GZIP, GRPC_COMPRESS_DEFLATE}) {
    grpc::ClientContext health_context;
    health_context.set_compression_algorithm(algorithm);
    HealthCheckResponse health_response;
    const grpc::Status health_status = health->Check(
        &health_context, grpc::health::v1::HealthCheckRequest(), &health_response);
    EXPECT_EQ(health_status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_THAT(health_status.error_message(), ::testing::HasSubstr("is disabled"));

    grpc::ClientContext image_context;
    image_context.set_compression_algorithm(algorithm);
    image_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    clipserve::v1::EmbedImageResponse image_response;
    const grpc::Status image_status =
        clip->EmbedImage(&image_context, image, &image_response);
    EXPECT_EQ(image_status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_THAT(image_status.error_message(), ::testing::HasSubstr("is disabled"));
  }
  grpc::ClientContext plain;  // the same call uncompressed is answered
  HealthCheckResponse response;
  EXPECT_TRUE(
      health->Check(&plain, grpc::health::v1::HealthCheckRequest(), &response).ok());
}

std::unique_ptr<testing::TcpProxy> ProxyTo(const ClipServer& server) {
  auto proxy = testing::TcpProxy::Start(server.port());
  EXPECT_TRUE(proxy.ok()) << proxy.status();
  return proxy.ok() ? *std::move(proxy) : nullptr;
}

std::shared_ptr<grpc::Channel> ChannelTo(int port, grpc::ChannelArguments args = {}) {
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

// One health check over `channel`, which opens its connection.
void CheckHealth(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::health::v1::HealthCheckRequest request;
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

using testing::PollUntil;

TEST(ClipServerTest, ConnectionDefaults) {
  const ClipServerOptions defaults;
  EXPECT_EQ(defaults.max_connection_age, absl::InfiniteDuration());
  EXPECT_EQ(defaults.max_connection_age_grace, absl::InfiniteDuration());
  EXPECT_EQ(defaults.max_connection_idle, absl::InfiniteDuration());
  EXPECT_EQ(defaults.keepalive_time, absl::Seconds(60));
  EXPECT_EQ(defaults.keepalive_timeout, absl::Seconds(20));
  EXPECT_EQ(defaults.min_client_ping_interval, absl::Seconds(10));
  EXPECT_EQ(defaults.max_concurrent_streams, 256);
}

// A client that vanishes without closing its socket, played by a proxy that turns
// into a black hole, is found by the server's keepalive pings and its connection
// closed. An idle connection is pinged again and again, not only once or twice.
TEST(ClipServerTest, KeepaliveClosesTheConnectionOfAVanishedClient) {
  ClipServerOptions options;
  options.keepalive_time = absl::Milliseconds(100);
  options.keepalive_timeout = absl::Seconds(2);  // slack for a loaded machine
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto proxy = ProxyTo(*server);
  ASSERT_NE(proxy, nullptr);
  auto channel = ChannelTo(proxy->port());
  CheckHealth(channel);  // then the connection stays idle
  ASSERT_TRUE(
      PollUntil([&] { return proxy->pings_from_server() >= 5; }, absl::Seconds(20)))
      << "server pings: " << proxy->pings_from_server();
  EXPECT_EQ(proxy->closed(), 0);
  proxy->BlackHole();
  // Well within gRPC's default keepalive timeout of 20 s.
  EXPECT_TRUE(PollUntil([&] { return proxy->closed() >= 1; }, absl::Seconds(8)));
}

// A connection past its maximum age gets GOAWAY; a call still running on it is
// cancelled once the grace period ends, and the connection closes.
TEST(ClipServerTest, MaxConnectionAgeEndsConnectionsAfterTheGrace) {
  ClipServerOptions options;
  options.max_connection_age = absl::Seconds(1);
  options.max_connection_age_grace = absl::Seconds(1);
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto proxy = ProxyTo(*server);
  ASSERT_NE(proxy, nullptr);
  // Before the connection is made: its age counts from then.
  const absl::Time before_connecting = absl::Now();
  auto stub = grpc::health::v1::Health::NewStub(ChannelTo(proxy->port()));
  // Watch streams health changes and never ends on its own.
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  grpc::health::v1::HealthCheckRequest request;
  auto watch = stub->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  EXPECT_FALSE(watch->Read(&response));
  // Not before the age (at least 0.9 s, with gRPC's jitter) and the grace have passed.
  EXPECT_GE(absl::Now() - before_connecting, absl::Milliseconds(1850));
  const grpc::Status status = watch->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_TRUE(PollUntil([&] { return proxy->closed() >= 1; }, absl::Seconds(20)));
}

TEST(ClipServerTest, MaxConnectionIdleClosesConnectionsWithoutCalls) {
  ClipServerOptions options;
  options.max_connection_idle = absl::Milliseconds(200);
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto proxy = ProxyTo(*server);
  ASSERT_NE(proxy, nullptr);
  auto channel = ChannelTo(proxy->port());  // kept: its end would close the connection
  CheckHealth(channel);
  EXPECT_TRUE(PollUntil([&] { return proxy->closed() >= 1; }, absl::Seconds(20)));
}

// Clients that keep their connections warm with their own keepalive pings are served
// when they ping no more often than min_client_ping_interval, even with no call in
// flight; faster pingers are sent away, as gRPC does.
TEST(ClipServerTest, ClientPingsAreWelcomeDownToTheMinimumInterval) {
  for (const absl::Duration interval : {absl::Milliseconds(50), absl::Seconds(10)}) {
    SCOPED_TRACE(absl::FormatDuration(interval));
    ClipServerOptions options;
    options.keepalive_time = absl::InfiniteDuration();  // only the client pings
    options.min_client_ping_interval = interval;
    auto server = StartServer(options);
    ASSERT_NE(server, nullptr);
    auto proxy = ProxyTo(*server);
    ASSERT_NE(proxy, nullptr);
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 100);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, 100);
    auto channel = ChannelTo(proxy->port(), args);
    CheckHealth(channel);
    if (interval < absl::Seconds(1)) {
      ASSERT_TRUE(
          PollUntil([&] { return proxy->pings_from_client() >= 6; }, absl::Seconds(30)))
          << "client pings: " << proxy->pings_from_client();
      EXPECT_EQ(proxy->closed(), 0);
    } else {
      EXPECT_TRUE(PollUntil([&] { return proxy->closed() >= 1; }, absl::Seconds(30)))
          << "client pings: " << proxy->pings_from_client();
    }
  }
}

// Opens a Health Watch over `stub`, which holds a stream open until `context` is
// cancelled, and waits for its first answer: the stream is then open on the server.
std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> OpenWatch(
    grpc::health::v1::Health::Stub& stub, grpc::ClientContext& context) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto watch = stub.Watch(&context, grpc::health::v1::HealthCheckRequest());
  HealthCheckResponse response;
  EXPECT_TRUE(watch->Read(&response));
  return watch;
}

grpc::StatusCode HealthCheckCode(grpc::health::v1::Health::Stub& stub,
                                 absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  HealthCheckResponse response;
  return stub.Check(&context, grpc::health::v1::HealthCheckRequest(), &response)
      .error_code();
}

TEST(ClipServerTest, WatchesFollowHealthAndEndWhenTheDrainStarts) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = grpc::health::v1::Health::NewStub(ChannelTo(server->port()));
  grpc::ClientContext whole_context, unknown_context;
  whole_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  unknown_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto whole = stub->Watch(&whole_context, grpc::health::v1::HealthCheckRequest());
  grpc::health::v1::HealthCheckRequest unknown_request;
  unknown_request.set_service("no.such.Service");
  auto unknown = stub->Watch(&unknown_context, unknown_request);
  HealthCheckResponse response;
  ASSERT_TRUE(whole->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(unknown->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  server->SetServing(false);
  ASSERT_TRUE(whole->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  server->SetServing(false);  // no change, no answer
  server->SetServing(true);
  ASSERT_TRUE(whole->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  // A drain with a long grace: the watches are told and end at its start rather than
  // holding it until the grace runs out (gRPC's default service kept them open).
  absl::Notification drained;
  std::thread drain([&] {
    server->Shutdown(absl::Hours(1));
    drained.Notify();
  });
  ASSERT_TRUE(whole->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(whole->Read(&response));
  EXPECT_TRUE(whole->Finish().ok());
  EXPECT_FALSE(unknown->Read(&response));  // still unknown: nothing more to say
  EXPECT_TRUE(unknown->Finish().ok());
  const bool in_time = drained.WaitForNotificationWithTimeout(absl::Seconds(30));
  EXPECT_TRUE(in_time) << "the drain waited for the watches";
  if (!in_time) whole_context.TryCancel();
  drain.join();
}

// A connection holds at most max_concurrent_streams calls; the client's next call
// waits for one of them to end, while other connections are served meanwhile.
TEST(ClipServerTest, MaxConcurrentStreamsBoundsTheCallsOfOneConnection) {
  ClipServerOptions options;
  options.max_concurrent_streams = 2;
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto full = grpc::health::v1::Health::NewStub(ChannelTo(server->port()));
  grpc::ClientContext first_context;
  grpc::ClientContext second_context;
  auto first = OpenWatch(*full, first_context);
  auto second = OpenWatch(*full, second_context);
  EXPECT_EQ(HealthCheckCode(*full, absl::Milliseconds(500)),
            grpc::StatusCode::DEADLINE_EXCEEDED);

  // Another connection (its own subchannel, not the shared one) is not affected.
  grpc::ChannelArguments own_connection;
  own_connection.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto other =
      grpc::health::v1::Health::NewStub(ChannelTo(server->port(), own_connection));
  EXPECT_EQ(HealthCheckCode(*other, absl::Seconds(10)), grpc::StatusCode::OK);

  // Once a stream ends, the full connection has room again.
  first_context.TryCancel();
  EXPECT_EQ(first->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(HealthCheckCode(*full, absl::Seconds(10)), grpc::StatusCode::OK);
  second_context.TryCancel();
  EXPECT_EQ(second->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(ClipServerTest, RejectsConnectionOptionsOutOfRange) {
  const std::vector<std::pair<const char*, std::function<void(ClipServerOptions&)>>>
      cases = {
          {"zero age", [](auto& o) { o.max_connection_age = absl::ZeroDuration(); }},
          {"negative grace",
           [](auto& o) { o.max_connection_age_grace = -absl::Seconds(1); }},
          {"zero idle", [](auto& o) { o.max_connection_idle = absl::ZeroDuration(); }},
          {"zero keepalive", [](auto& o) { o.keepalive_time = absl::ZeroDuration(); }},
          {"infinite timeout",
           [](auto& o) { o.keepalive_timeout = absl::InfiniteDuration(); }},
          {"negative ping interval",
           [](auto& o) { o.min_client_ping_interval = -absl::Milliseconds(1); }},
          {"negative stream limit", [](auto& o) { o.max_concurrent_streams = -1; }},
      };
  for (const auto& [name, change] : cases) {
    ClipServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    change(options);
    auto server = ClipServer::Create(options, {});
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << name;
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
