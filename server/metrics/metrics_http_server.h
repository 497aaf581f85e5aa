#ifndef CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_
#define CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace clipserve {

class Metrics;

struct MetricsHttpServerOptions {
  // Address to bind: "0.0.0.0" (every IPv4 interface, what Prometheus in another pod
  // needs), "127.0.0.1" (loopback only) or "::" (also spelled "[::]", as --host is).
  std::string host = "0.0.0.0";
  // TCP port; 0 lets the kernel pick a free one (read it back with port()). Default
  // 9090, Prometheus' own convention for a metrics port.
  int port = 9090;
  // Connections open at once. Past it, a new connection closes the oldest one of the
  // client address that holds the most, so that a flood of connections cannot keep a
  // probe waiting behind it, and a flood from one address does not close a probe from
  // another (one from many addresses still can). Default 64.
  int max_connections = 64;
  // Time from accepting a connection to having sent its whole response; a connection
  // still open then is closed, however steadily it sends or reads. Default 2 s: a
  // probe or scrape takes milliseconds, and kubelet's probes time out after 1 s.
  absl::Duration connection_deadline = absl::Seconds(2);
};

// Serves clipserve's operational endpoints over plain HTTP/1.1, on a port of its own
// so that probes and scrapes never compete with gRPC traffic:
//
//   GET /metrics  200, Metrics::Serialize() (Prometheus text format 0.0.4)
//   GET /healthz  200 "ok" while the process runs (liveness)
//   GET /readyz   200 "ready" while the readiness check returns true, else 503
//                 "not ready" (readiness: the model is loaded and gRPC is serving,
//                 not draining)
//
// HEAD is answered as GET without the body (its errors too). Any other path is 404;
// another method 405; a request that announces a body (Content-Length,
// Transfer-Encoding, Expect) 413, its body never read; a request line and headers over
// 8 KiB 431; anything that is not an HTTP/1.x request, or has a header line that is
// not a token, a colon and a value without control characters, 400. Lines may end with
// CRLF or a bare LF; the target may be a path or an absolute URL. One request per
// connection. The server starts answering in Create(), before the model loads, so
// liveness probes pass during a long load while /readyz says 503.
//
// Why not an HTTP library: every byte that reaches this port is hostile, and what a
// general-purpose server (cpp-httplib 0.11, used before) cannot give is a deadline on
// the whole request. Its read timeout restarts with every byte, so four clients each
// sending a byte a second held its four threads, the probes queued behind them, and
// Stop() waited for them. Here one thread polls every connection without blocking,
// holds at most 8 KiB for each, and closes each at its deadline.
//
// Thread-safe. The Metrics object is not owned and must outlive the server.
class MetricsHttpServer {
 public:
  // Binds `options.host`:`options.port` and starts serving on a thread of its own.
  // INVALID_ARGUMENT for a null `metrics`, an empty host, a port outside 0..65535,
  // max_connections < 1 or a connection_deadline <= 0; UNAVAILABLE when the address
  // cannot be bound (port in use, a host that does not resolve), saying why.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const MetricsHttpServerOptions& options, const Metrics* metrics);

  // Stop().
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // The TCP port actually bound.
  int port() const { return port_; }

  // The host and bound port as a URL writes them ("0.0.0.0:9090", "[::]:9090"): an
  // IPv6 address in brackets however --metrics_host spelled it.
  std::string authority() const;

  // What /readyz asks. Until it is set, /readyz answers 503. `ready` is called on the
  // server's thread for each probe; it must be thread-safe and quick, and stay
  // callable until Stop() returns (or the check is replaced).
  void SetReadinessCheck(std::function<bool()> ready) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether /readyz would answer 200 now.
  bool Ready() const ABSL_LOCKS_EXCLUDED(mu_);

  // Stops accepting, closes every open connection (a response being sent is cut
  // short) and joins the thread: returns within milliseconds whatever clients do.
  // Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(stop_mu_);

 private:
  struct Connection;

  // Which of `connections` (not empty) a new one past max_connections closes: the
  // oldest of the address holding the most, the older one on a tie.
  static size_t EvictionVictim(const std::vector<Connection>& connections);

  MetricsHttpServer(const MetricsHttpServerOptions& options, const Metrics* metrics,
                    int listen_fd, int wake_fd, int port);
  void Loop();
  // The whole response to the request head `head` (through the blank line).
  std::string Respond(const std::string& head) const;

  const MetricsHttpServerOptions options_;
  const Metrics* const metrics_;
  const int listen_fd_;
  const int wake_fd_;  // an eventfd: Stop() wakes the thread's poll() with it
  const int port_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::function<bool()> ready_ ABSL_GUARDED_BY(mu_);

  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_METRICS_METRICS_HTTP_SERVER_H_
