#include "server/metrics/metrics_http_server.h"

#include <atomic>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/metrics/metrics.h"
#include "tests/metrics/prometheus_text.h"

namespace clipserve {
namespace {

using ::clipserve::testing::FindSample;
using ::testing::HasSubstr;
using ::testing::Optional;

std::unique_ptr<MetricsHttpServer> StartOnLoopback(const Metrics* metrics) {
  MetricsHttpServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  auto server = MetricsHttpServer::Create(options, metrics);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Status code of GET `path`, and its body; -1 when the request failed.
std::pair<int, std::string> Get(int port, const std::string& path,
                                std::string* content_type = nullptr) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  httplib::Result result = client.Get(path);
  if (!result) return {-1, ""};
  if (content_type != nullptr) *content_type = result->get_header_value("Content-Type");
  return {result->status, result->body};
}

TEST(MetricsHttpServerTest, MetricsEndpointServesTheRegistry) {
  Metrics metrics;
  metrics.OnQueueDepth(Modality::kText, 7);
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  std::string content_type;
  auto [status, body] = Get(server->port(), "/metrics", &content_type);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(content_type, Metrics::kContentType);
  EXPECT_THAT(FindSample(body, R"(clipserve_queue_depth{modality="text"})"),
              Optional(7.0));
  // Each scrape reads the current values.
  metrics.OnQueueDepth(Modality::kText, 2);
  EXPECT_THAT(FindSample(Get(server->port(), "/metrics").second,
                         R"(clipserve_queue_depth{modality="text"})"),
              Optional(2.0));
}

TEST(MetricsHttpServerTest, HealthzIsAlwaysOkAndReadyzFollowsTheCheck) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  EXPECT_EQ(Get(port, "/healthz").first, 200);
  // No readiness check yet (the model is still loading): not ready.
  EXPECT_EQ(Get(port, "/readyz").first, 503);
  EXPECT_FALSE(server->Ready());

  std::atomic<bool> ready{true};
  server->SetReadinessCheck([&ready] { return ready.load(); });
  EXPECT_EQ(Get(port, "/readyz"), std::make_pair(200, std::string("ready\n")));
  ready = false;
  EXPECT_EQ(Get(port, "/readyz"), std::make_pair(503, std::string("not ready\n")));
  EXPECT_EQ(Get(port, "/healthz").first, 200);
  ready = true;
  EXPECT_EQ(Get(port, "/readyz").first, 200);
  server->SetReadinessCheck(nullptr);
  EXPECT_EQ(Get(port, "/readyz").first, 503);
}

TEST(MetricsHttpServerTest, UnknownPathsAre404) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(Get(server->port(), "/").first, 404);
  EXPECT_EQ(Get(server->port(), "/metricsx").first, 404);
}

TEST(MetricsHttpServerTest, StopClosesThePortAndIsIdempotent) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  server->Stop();
  EXPECT_EQ(Get(port, "/healthz").first, -1);
  server->Stop();
}

TEST(MetricsHttpServerTest, APortInUseIsUnavailable) {
  Metrics metrics;
  auto first = StartOnLoopback(&metrics);
  ASSERT_NE(first, nullptr);
  MetricsHttpServerOptions options;
  options.host = "127.0.0.1";
  options.port = first->port();
  auto second = MetricsHttpServer::Create(options, &metrics);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr(std::to_string(first->port())));
  // The first one still answers.
  EXPECT_EQ(Get(first->port(), "/healthz").first, 200);
}

TEST(MetricsHttpServerTest, BadOptionsAreInvalidArgument) {
  Metrics metrics;
  MetricsHttpServerOptions options;
  options.host = "127.0.0.1";
  options.port = 70000;
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.port = -1;
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.port = 0;
  options.threads = 0;
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.threads = 1;
  EXPECT_EQ(MetricsHttpServer::Create(options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
