#ifndef CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_
#define CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace httplib {
class Server;
}

namespace clipserve {

class Metrics;

struct MetricsHttpServerOptions {
  // Address to bind: "0.0.0.0" (every IPv4 interface, what Prometheus in another pod
  // needs), "127.0.0.1" (loopback only) or "::".
  std::string host = "0.0.0.0";
  // TCP port; 0 lets the kernel pick a free one (read it back with port()). Default
  // 9090, Prometheus' own convention for a metrics port.
  int port = 9090;
  // Threads answering HTTP requests. Default 4: scrapes and probes are rare and
  // cheap, and a few slow clients must not hold up a liveness probe (a connection
  // that sends nothing for a second is closed).
  int threads = 4;
};

// Serves clipserve's operational endpoints over plain HTTP/1.1 (cpp-httplib), on a
// port of its own so that probes and scrapes never compete with gRPC traffic:
//
//   GET /metrics  200, Metrics::Serialize() (Prometheus text format 0.0.4)
//   GET /healthz  200 "ok" while the process runs (liveness)
//   GET /readyz   200 "ready" while the readiness check returns true, else 503
//                 "not ready" (readiness: the model is loaded and gRPC is serving,
//                 not draining)
//
// Any other path is 404; another method 405, a request with a body 413 (neither is
// read). One request per connection. The server starts answering in Create(), before
// the model loads, so liveness probes pass during a long load while /readyz says 503.
//
// Thread-safe. The Metrics object is not owned and must outlive the server.
class MetricsHttpServer {
 public:
  // Binds `options.host`:`options.port` and starts serving on its own threads.
  // INVALID_ARGUMENT for a null `metrics`, a port outside 0..65535 or threads < 1;
  // UNAVAILABLE when the address cannot be bound (port in use, bad host).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const MetricsHttpServerOptions& options, const Metrics* metrics);

  // Stop().
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // The TCP port actually bound.
  int port() const { return port_; }

  // What /readyz asks. Until it is set, /readyz answers 503. `ready` is called on an
  // HTTP thread for each probe; it must be thread-safe and quick, and stay callable
  // until Stop() returns (or the check is replaced).
  void SetReadinessCheck(std::function<bool()> ready) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether /readyz would answer 200 now.
  bool Ready() const ABSL_LOCKS_EXCLUDED(mu_);

  // Stops accepting connections, waits for the requests being answered and joins
  // the threads. Idempotent.
  void Stop();

 private:
  MetricsHttpServer(std::unique_ptr<httplib::Server> server, int port);

  std::unique_ptr<httplib::Server> server_;
  const int port_;
  std::thread listener_;

  mutable absl::Mutex mu_;
  std::function<bool()> ready_ ABSL_GUARDED_BY(mu_);

  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_
