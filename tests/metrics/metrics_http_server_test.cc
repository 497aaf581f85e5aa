#include "server/metrics/metrics_http_server.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/metrics/metrics.h"
#include "tests/metrics/prometheus_text.h"

namespace clipserve {
namespace {

using ::clipserve::testing::FindSample;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;

std::unique_ptr<MetricsHttpServer> StartOnLoopback(
    const Metrics* metrics, MetricsHttpServerOptions options = {}) {
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

// A TCP connection to the loopback port, closed on destruction.
class RawConnection {
 public:
  // Connects to 127.0.0.1:`port` from `source` (an IPv4 loopback address; 0: the
  // kernel's choice, 127.0.0.1).
  explicit RawConnection(int port, uint32_t source = 0)
      : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    if (source != 0) {
      sockaddr_in from{};
      from.sin_family = AF_INET;
      from.sin_addr.s_addr = htonl(source);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) return;
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawConnection() { close(fd_); }
  bool connected() const { return connected_; }
  void Send(const std::string& bytes) {
    ASSERT_EQ(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  // Whether `bytes` could be sent: false once the server closed the connection (the
  // first send after its close may still succeed; the next one fails).
  bool TrySend(const std::string& bytes) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) {
      char probe;
      if (recv(fd_, &probe, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return false;  // closed
    }
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // What the server sends until it closes the connection or `timeout` passes.
  std::string ReadUntilClosed(absl::Duration timeout) {
    std::string out;
    const absl::Time give_up = absl::Now() + timeout;
    while (absl::Now() < give_up) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char buffer[4096];
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  const int fd_;
  bool connected_ = false;
};

// Sends `request` on a connection of its own to `port`; what came back within 3 s.
std::string Exchange(int port, const std::string& request) {
  RawConnection connection(port);
  EXPECT_TRUE(connection.connected());
  connection.Send(request);
  return connection.ReadUntilClosed(absl::Seconds(3));
}

TEST(MetricsHttpServerTest, OtherMethodsAndBodiesAreRefusedWithoutReadingThem) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  const auto exchange = [&](const std::string& request) {
    return Exchange(server->port(), request);
  };
  // A terabyte announced, none sent: answered at once, not awaited.
  std::string reply = exchange(
      "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 405", 0), 0u) << reply;
  EXPECT_THAT(reply, HasSubstr("Allow: GET, HEAD"));
  reply =
      exchange("GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  // Asked whether to send a body: refused with one whole response, rather than
  // "100 Continue" (or a bare status line with another response after it).
  reply = exchange(
      "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
      "Expect: 100-continue\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 405", 0), 0u) << reply;
  EXPECT_EQ(reply.find("HTTP/1.1", 1), std::string::npos) << reply;
  EXPECT_THAT(reply, HasSubstr("Allow: GET, HEAD"));
  reply = exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  EXPECT_EQ(reply.find("HTTP/1.1", 1), std::string::npos) << reply;
  EXPECT_THAT(reply, Not(HasSubstr("clipserve_")));       // no metrics after the refusal
  EXPECT_EQ(Get(server->port(), "/healthz").first, 200);  // still serving
}

TEST(MetricsHttpServerTest, IdleConnectionsDoNotHoldUpProbes) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 6; ++i) {
    idle.push_back(std::make_unique<RawConnection>(server->port()));
    ASSERT_TRUE(idle.back()->connected());
  }
  // Idle connections hold nothing up: the server waits on none of them.
  const absl::Time start = absl::Now();
  EXPECT_EQ(Get(server->port(), "/healthz").first, 200);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// Clients that send a byte now and then never go idle: each is closed at its deadline
// all the same, and none keeps a probe waiting meanwhile.
TEST(MetricsHttpServerTest, TricklingClientsAreClosedAtTheirDeadlineAndHoldUpNoProbe) {
  Metrics metrics;
  MetricsHttpServerOptions options;
  options.connection_deadline = absl::Seconds(1);
  auto server = StartOnLoopback(&metrics, options);
  ASSERT_NE(server, nullptr);
  constexpr int kClients = 8;
  std::vector<std::unique_ptr<RawConnection>> slow;
  // Before the first connection: each one's 1 s deadline counts from its accept.
  const absl::Time start = absl::Now();
  for (int i = 0; i < kClients; ++i) {
    slow.push_back(std::make_unique<RawConnection>(server->port()));
    ASSERT_TRUE(slow.back()->connected());
    slow.back()->Send("GET /healthz HTTP/1.1\r\nX-Slow: ");
  }
  std::vector<absl::Duration> open_for(kClients, absl::InfiniteDuration());
  std::thread trickle([&] {
    // A byte per client every 100 ms, until the server closes it (for up to 5 s).
    int open = kClients;
    while (open > 0 && absl::Now() - start < absl::Seconds(5)) {
      for (int i = 0; i < kClients; ++i) {
        if (open_for[i] == absl::InfiniteDuration() && !slow[i]->TrySend("x")) {
          open_for[i] = absl::Now() - start;
          --open;
        }
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(Get(server->port(), "/healthz").first, 200);
  // Answered while the slow clients still hold their connections: none is closed
  // before 1 s from `start`.
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  trickle.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_GE(open_for[i], absl::Milliseconds(900)) << i;
    EXPECT_LT(open_for[i], absl::Seconds(3)) << i;  // the deadline of 1 s, with slack
  }
}

// A server on loopback that holds 4 connections at most, each for up to 30 s.
std::unique_ptr<MetricsHttpServer> StartWithFourConnections(const Metrics* metrics) {
  MetricsHttpServerOptions options;
  options.max_connections = 4;
  options.connection_deadline = absl::Seconds(30);
  return StartOnLoopback(metrics, options);
}

// Twice as many idle connections from 127.0.0.1 as that server holds, in order.
std::vector<std::unique_ptr<RawConnection>> EightIdleConnections(int port) {
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<RawConnection>(port));
    EXPECT_TRUE(idle.back()->connected());
  }
  return idle;
}

// Past max_connections, a new connection closes the oldest: a probe is answered at
// once however many connections sit open.
TEST(MetricsHttpServerTest, ANewConnectionPastTheLimitClosesTheOldest) {
  Metrics metrics;
  auto server = StartWithFourConnections(&metrics);
  ASSERT_NE(server, nullptr);
  const std::vector<std::unique_ptr<RawConnection>> idle =
      EightIdleConnections(server->port());
  const absl::Time probe = absl::Now();
  EXPECT_EQ(Get(server->port(), "/healthz").first, 200);
  EXPECT_LT(absl::Now() - probe, absl::Seconds(2));
  // The first one was closed to make room (long before its deadline).
  const absl::Time read = absl::Now();
  EXPECT_EQ(idle[0]->ReadUntilClosed(absl::Seconds(10)), "");
  EXPECT_LT(absl::Now() - read, absl::Seconds(5));
}

// The connection closed to make room is the oldest of the address holding the most:
// a flood from one address closes its own connections, and a slow probe from another
// address, older than all of them, is still answered.
TEST(MetricsHttpServerTest, AFloodFromOneAddressClosesItsOwnConnections) {
  Metrics metrics;
  auto server = StartWithFourConnections(&metrics);
  ASSERT_NE(server, nullptr);
  RawConnection probe(server->port(), /*source=*/0x7F000002);  // 127.0.0.2
  if (!probe.connected()) GTEST_SKIP() << "cannot connect from 127.0.0.2 here";
  const std::vector<std::unique_ptr<RawConnection>> flood =
      EightIdleConnections(server->port());
  // Answered only once the server has taken every connection before it.
  EXPECT_EQ(Get(server->port(), "/healthz").first, 200);
  probe.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(probe.ReadUntilClosed(absl::Seconds(10)), HasSubstr("200 OK"));
  // The flood's first connection was closed to make room.
  EXPECT_EQ(flood[0]->ReadUntilClosed(absl::Seconds(10)), "");
}

TEST(MetricsHttpServerTest, HeadLongHeadsAndNonHttpRequests) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  const auto exchange = [&](const std::string& request) {
    return Exchange(server->port(), request);
  };
  // HEAD: the headers GET would send, no body.
  std::string reply = exchange("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply;
  EXPECT_THAT(reply, HasSubstr("Content-Length: 3\r\n"));
  EXPECT_TRUE(absl::EndsWith(reply, "\r\n\r\n")) << reply;
  // A query string does not change the path.
  reply = exchange("GET /readyz?verbose=1 HTTP/1.0\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 503", 0), 0u) << reply;
  // Headers of 8 KiB to the byte (blank line included) are served; one byte more is
  // refused, however the bytes arrive.
  const std::string line = "GET /healthz HTTP/1.1\r\nX-Pad: ";
  const std::string exact = line + std::string(8192 - line.size() - 4, 'a') + "\r\n\r\n";
  ASSERT_EQ(exact.size(), 8192u);
  EXPECT_EQ(exchange(exact).rfind("HTTP/1.1 200", 0), 0u);
  const std::string over = line + std::string(8192 - line.size() - 3, 'a') + "\r\n\r\n";
  EXPECT_EQ(exchange(over).rfind("HTTP/1.1 431", 0), 0u);
  // Headers past 8 KiB: refused, not buffered on.
  reply = exchange("GET /healthz HTTP/1.1\r\nX-Big: " + std::string(9000, 'a'));
  EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply;
  for (const std::string request :
       {"GET healthz HTTP/1.1\r\n\r\n", "GET /healthz\r\n\r\n", "\x16\x03\x01\r\n\r\n",
        "GET /healthz HTTP/2.0\r\n\r\n", "GET /healthz HTTP/1.\r\n\r\n",
        "GET /healthz HTTP/1.1 junk\r\n\r\n", "GET /healthz HTTP/1.10\r\n\r\n"}) {
    reply = exchange(request);
    EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << request << " -> " << reply;
  }
  // Answers to HEAD have no body, errors included.
  for (const std::string& request : std::vector<std::string>{
           "HEAD /healthz HTTP/1.1\r\nbad\r\n\r\n", "HEAD /healthz HTTP/1.9x\r\n\r\n",
           "HEAD /healthz HTTP/1.1\r\nX-Big: " + std::string(9000, 'a')}) {
    reply = exchange(request);
    EXPECT_THAT(reply, HasSubstr("Content-Length: "));
    EXPECT_TRUE(absl::EndsWith(reply, "\r\n\r\n"))
        << request.substr(0, 40) << " -> " << reply;
  }
  // Any method but GET and HEAD is 405, whatever its target.
  for (const std::string request :
       {"OPTIONS * HTTP/1.1\r\n\r\n", "CONNECT a:443 HTTP/1.1\r\n\r\n"}) {
    EXPECT_EQ(exchange(request).rfind("HTTP/1.1 405", 0), 0u) << request;
  }
}

// What RFC 9112 asks of a server beyond CRLF lines and origin-form targets: lines
// ended by a bare LF (as naive probe scripts send them) and absolute-form targets are
// served; a header with whitespace before its colon, or without a colon, is refused.
TEST(MetricsHttpServerTest, BareLineFeedsAbsoluteTargetsAndMalformedHeaders) {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  ASSERT_NE(server, nullptr);
  const auto status_line = [&](const std::string& request) {
    const std::string reply = Exchange(server->port(), request);
    return reply.substr(0, reply.find("\r\n"));
  };
  EXPECT_EQ(status_line("GET /healthz HTTP/1.1\n\n"), "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line("GET /healthz HTTP/1.1\nHost: x\n\n"), "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line("GET /healthz HTTP/1.1\r\nHost: x\n\r\n"), "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line("GET http://probe:9090/healthz HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 200 OK");
  EXPECT_EQ(status_line("GET HTTP://probe/readyz?x=1 HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 503 Service Unavailable");
  EXPECT_EQ(status_line("GET http://probe HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
  // An authority ends at '?': the path is "/", not one found in the query.
  EXPECT_EQ(status_line("GET http://x?/healthz HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 404 Not Found");
  EXPECT_EQ(status_line("GET /healthz HTTP/1.1\r\nContent-Length: 00\r\n\r\n"),
            "HTTP/1.1 200 OK");
  for (const std::string& request : std::vector<std::string>{
           "GET /healthz HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
           "GET /healthz HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n",
           "GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
           "GET /healthz HTTP/1.1\r\n: empty name\r\n\r\n",
           "GET /healthz HTTP/1.1\r\nX Y: z\r\n\r\n",
           "GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n",
           "GET /healthz HTTP/1.1\r\nHost: x\r\n Content-Length: 5\r\n\r\n",
           std::string("GET /healthz HTTP/1.1\r\nX: a\0b\r\n\r\n", 33),
           "GET ftp://x/healthz HTTP/1.1\n\n"}) {
    EXPECT_EQ(status_line(request), "HTTP/1.1 400 Bad Request") << request;
  }
}

#if !defined(ABSL_HAVE_ADDRESS_SANITIZER) && !defined(ABSL_HAVE_THREAD_SANITIZER)
// (The sanitizers' runtimes need descriptors of their own: out of them, they fail.)

// Opens connections until the process has no descriptor left for the server's
// accept(), then exits 0 when the server thread used under 150 ms of CPU over the
// next 500 ms (it used to retry at once, at a full core), else 1.
[[noreturn]] void ConnectPastTheDescriptorLimit() {
  Metrics metrics;
  auto server = StartOnLoopback(&metrics);
  if (server == nullptr || Get(server->port(), "/healthz").first != 200) std::_Exit(2);
  int open = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++open;
  }
  rlimit limit;
  limit.rlim_cur = static_cast<rlim_t>(open + 2);  // the directory's own fd is closed
  limit.rlim_max = limit.rlim_cur;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) std::_Exit(3);
  std::vector<int> clients;
  while (true) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) break;
    clients.push_back(fd);
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server->port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (const int fd : clients) {
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      std::_Exit(4);
    }
  }
  absl::SleepFor(absl::Milliseconds(100));  // the server has tried to accept by now
  rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  absl::SleepFor(absl::Milliseconds(500));
  getrusage(RUSAGE_SELF, &after);
  const auto micros = [](const rusage& r) {
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1'000'000 + r.ru_utime.tv_usec +
           r.ru_stime.tv_usec;
  };
  const int64_t cpu_us = micros(after) - micros(before);
  std::fprintf(stderr, "cpu %lld us with %zu clients\n", static_cast<long long>(cpu_us),
               clients.size());
  std::_Exit(!clients.empty() && cpu_us < 150'000 ? 0 : 1);
}

TEST(MetricsHttpServerDeathTest, OutOfDescriptorsTheServerWaitsInsteadOfSpinning) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(ConnectPastTheDescriptorLimit(), ::testing::ExitedWithCode(0), "cpu");
}
#endif

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
  EXPECT_THAT(second.status().message(), HasSubstr("Address already in use"));
  // The first one still answers.
  EXPECT_EQ(Get(first->port(), "/healthz").first, 200);
}

// A host that does not resolve says so (it once read "Cannot assign requested
// address"); an empty one is refused, not taken as every IPv4 interface.
TEST(MetricsHttpServerTest, ABadHostSaysWhy) {
  Metrics metrics;
  MetricsHttpServerOptions options;
  options.port = 0;
  options.host = "no-such-host.invalid";
  auto unresolved = MetricsHttpServer::Create(options, &metrics);
  EXPECT_EQ(unresolved.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(unresolved.status().message(),
              HasSubstr("no-such-host.invalid:0: the host does not resolve ("));
  options.host = "";
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --host takes an IPv6 address bracketed; --metrics_host takes it either way.
TEST(MetricsHttpServerTest, AnIpv6AddressMayComeBracketed) {
  Metrics metrics;
  MetricsHttpServerOptions options;
  options.port = 0;
  options.host = "::1";
  if (!MetricsHttpServer::Create(options, &metrics).ok()) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  options.host = "[::1]";
  auto server = MetricsHttpServer::Create(options, &metrics);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client client("::1", (*server)->port());
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  httplib::Result result = client.Get("/healthz");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
}

// The start-up log's URL: "http://:::9090" would be no URL.
TEST(MetricsHttpServerTest, TheAuthorityBracketsAnIpv6HostHoweverItWasSpelled) {
  Metrics metrics;
  auto v4 = StartOnLoopback(&metrics);
  ASSERT_NE(v4, nullptr);
  EXPECT_EQ(v4->authority(), "127.0.0.1:" + std::to_string(v4->port()));
  for (const std::string host : {"::", "[::]"}) {
    MetricsHttpServerOptions options;
    options.host = host;
    options.port = 0;
    auto server = MetricsHttpServer::Create(options, &metrics);
    if (!server.ok()) GTEST_SKIP() << "no IPv6 here: " << server.status();
    EXPECT_EQ((*server)->authority(), "[::]:" + std::to_string((*server)->port()));
  }
}

// Run in a network namespace of its own whose net.ipv6.bindv6only is 1, as on some
// hosts: "::" must still take IPv4 connections, as the flag's help and gRPC's port do.
// Exits 0 when /healthz answers on 127.0.0.1, 1 when not, 2 when the namespace could
// not be set up.
void ServeDualStackWhereIpv6IsOnlyByDefault() {
  if (unshare(CLONE_NEWNET) != 0) std::_Exit(2);
  // A new namespace's loopback is down.
  const int s = socket(AF_INET, SOCK_DGRAM, 0);
  ifreq lo{};
  std::snprintf(lo.ifr_name, sizeof(lo.ifr_name), "lo");
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &lo) != 0) std::_Exit(2);
  lo.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &lo) != 0) std::_Exit(2);
  close(s);
  FILE* sysctl = std::fopen("/proc/sys/net/ipv6/bindv6only", "w");
  if (sysctl == nullptr || std::fputs("1", sysctl) < 0 || std::fclose(sysctl) != 0) {
    std::_Exit(2);
  }
  Metrics metrics;
  MetricsHttpServerOptions options;
  options.host = "::";
  options.port = 0;
  auto server = MetricsHttpServer::Create(options, &metrics);
  if (!server.ok()) std::_Exit(2);
  const int status = Get((*server)->port(), "/healthz").first;
  std::fprintf(stderr, "healthz over IPv4: %d\n", status);
  std::_Exit(status == 200 ? 0 : 1);
}

TEST(MetricsHttpServerDeathTest, DualStackAlsoWhereIpv6IsOnlyByDefault) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Only where this process may make a network namespace (root outside a container
  // that drops CAP_SYS_ADMIN).
  const pid_t probe = fork();
  if (probe == 0) std::_Exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
  int probed = -1;
  ASSERT_EQ(waitpid(probe, &probed, 0), probe);
  if (!WIFEXITED(probed) || WEXITSTATUS(probed) != 0) {
    GTEST_SKIP() << "no network namespace may be made here";
  }
  EXPECT_EXIT(ServeDualStackWhereIpv6IsOnlyByDefault(), ::testing::ExitedWithCode(0),
              "healthz over IPv4: 200");
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
  options.max_connections = 0;
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.max_connections = 1;
  options.connection_deadline = absl::ZeroDuration();
  EXPECT_EQ(MetricsHttpServer::Create(options, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.connection_deadline = absl::Seconds(1);
  EXPECT_EQ(MetricsHttpServer::Create(options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace clipserve
