#include "server/metrics/metrics_http_server.h"

#include <sys/socket.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "httplib.h"
#include "server/common/clock.h"
#include "server/metrics/metrics.h"

namespace clipserve {

namespace {

// Refuses, in `response`, a request that is not a GET or HEAD (405) or announces a
// body (413); false, leaving `response` alone, for any other request.
bool Refuse(const httplib::Request& request, bool announces_body,
            httplib::Response& response) {
  const bool get = request.method == "GET" || request.method == "HEAD";
  if (get && !announces_body) return false;
  response.status = get ? 413 : 405;
  if (!get) response.set_header("Allow", "GET, HEAD");
  response.set_header("Connection", "close");
  response.set_content(
      get ? "a request body is not accepted\n" : "only GET and HEAD are served\n",
      "text/plain");
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const MetricsHttpServerOptions& options, const Metrics* metrics) {
  if (metrics == nullptr) {
    return absl::InvalidArgumentError("MetricsHttpServer needs a Metrics object");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics port ", options.port, " is outside 0..65535"));
  }
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics threads must be at least 1, got ", options.threads));
  }
  auto server = std::make_unique<httplib::Server>();
  const int threads = options.threads;
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // cpp-httplib also sets SO_REUSEPORT by default, which would let a second server
  // share the port with a running one unnoticed; a clear bind error is better.
  server->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // Every byte a client sends is hostile. Only GET and HEAD are answered, and a request
  // announcing a body is refused before anything reads it: cpp-httplib would read any
  // body into memory whole (chunked or compressed ones without limit). One request per
  // connection, and a client that is idle for a second loses its thread, so idle
  // connections cannot keep the probes waiting for long.
  server->set_pre_routing_handler([](const httplib::Request& request,
                                     httplib::Response& response) {
    const bool body = request.has_header("Transfer-Encoding") ||
                      (request.has_header("Content-Length") &&
                       request.get_header_value("Content-Length") != "0");
    return Refuse(request, body, response) ? httplib::Server::HandlerResponse::Handled
                                           : httplib::Server::HandlerResponse::Unhandled;
  });
  // "Expect: 100-continue" is answered before the handler above runs; its default
  // answer invites the client to send its body. Refused here with a whole response:
  // any code but 100 and 417 makes cpp-httplib send `response` and stop, where 417
  // would send a bare status line and go on to route the request.
  server->set_expect_100_continue_handler(
      [](const httplib::Request& request, httplib::Response& response) {
        Refuse(request, /*announces_body=*/true, response);
        return response.status;
      });
  server->set_keep_alive_max_count(1);
  server->set_keep_alive_timeout(1);
  server->set_read_timeout(1, 0);
  server->set_write_timeout(5, 0);
  int port = options.port;
  if (port == 0) {
    port = server->bind_to_any_port(options.host);
  } else if (!server->bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", options.host,
                                               ":", options.port,
                                               " (address in use or invalid)"));
  }

  std::unique_ptr<MetricsHttpServer> self(new MetricsHttpServer(std::move(server), port));
  MetricsHttpServer* raw = self.get();
  self->server_->Get(
      "/metrics", [metrics](const httplib::Request&, httplib::Response& response) {
        response.set_content(metrics->Serialize(), std::string(Metrics::kContentType));
      });
  self->server_->Get("/healthz",
                     [](const httplib::Request&, httplib::Response& response) {
                       response.set_content("ok\n", "text/plain");
                     });
  self->server_->Get(
      "/readyz", [raw](const httplib::Request&, httplib::Response& response) {
        const bool ready = raw->Ready();
        response.status = ready ? 200 : 503;
        response.set_content(ready ? "ready\n" : "not ready\n", "text/plain");
      });
  self->listener_ = std::thread([raw] { raw->server_->listen_after_bind(); });
  // Stop() only reaches a server that has entered its accept loop; wait for it so that
  // a Stop() right after Create() cannot be lost (and leave the thread unjoinable).
  RealClock* clock = RealClock::Get();
  const absl::Time give_up = clock->Now() + absl::Seconds(10);
  while (!self->server_->is_running()) {
    if (clock->Now() > give_up) {
      self->server_->stop();
      return absl::InternalError("the metrics HTTP server did not start within 10 s");
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  return self;
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<httplib::Server> server, int port)
    : server_(std::move(server)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::SetReadinessCheck(std::function<bool()> ready) {
  absl::MutexLock lock(&mu_);
  ready_ = std::move(ready);
}

bool MetricsHttpServer::Ready() const {
  std::function<bool()> ready;
  {
    absl::MutexLock lock(&mu_);
    ready = ready_;
  }
  // Called without mu_, so the check may take locks of its own.
  return ready != nullptr && ready();
}

void MetricsHttpServer::Stop() {
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (server_ != nullptr) server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace clipserve
