#ifndef CLIPSERVE_SERVER_SERVICE_CLIP_SERVER_H_
#define CLIPSERVE_SERVER_SERVICE_CLIP_SERVER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/impl/codegen/service_type.h"
#include "grpcpp/server.h"
#include "server/service/server_credentials.h"

namespace clipserve {

class HealthService;

// Where and how the gRPC server listens.
struct ClipServerOptions {
  // Address to bind; "0.0.0.0" and "[::]" listen on every interface, IPv4 and IPv6
  // (gRPC binds either wildcard dual-stack; what a container needs), "127.0.0.1" on
  // loopback only.
  std::string host = "0.0.0.0";
  // TCP port. 0 lets the kernel pick a free one (tests); read it back with port().
  int port = 50051;
  // Largest request message accepted, in bytes. 64 MiB holds a batch of large
  // photos; bigger messages are rejected by gRPC with RESOURCE_EXHAUSTED before any
  // of our code sees them.
  int max_receive_message_bytes = 64 << 20;
  // Largest response message sent, in bytes.
  int max_send_message_bytes = 64 << 20;
  // Serve grpc.reflection.v1alpha.ServerReflection (what `grpcurl list` asks). It
  // needs no token, and gRPC's own parser reads its requests: every unknown field of
  // a hostile one is kept, and echoed in the reply, so one request of
  // max_receive_message_bytes took some 50 times that in memory. Off on networks that
  // are not trusted (the Kubernetes manifests turn it off).
  bool reflection = true;
  // nullopt (the default): plaintext. Otherwise the port speaks TLS only, with this
  // certificate, and with client_ca_pem set demands client certificates signed by
  // that CA (mutual TLS). Read it with LoadServerTlsConfig().
  std::optional<ServerTlsConfig> tls;

  // HTTP/2 connection management. absl::InfiniteDuration() means never.
  //
  // Once a connection is this old (gRPC adds ±10% jitter) the server sends it
  // GOAWAY: the client opens a new connection for its next calls, re-resolving DNS, so
  // long-lived clients spread over replicas added since they connected. Calls in
  // flight on the old connection get max_connection_age_grace to finish; the rest are
  // cancelled and the client sees UNAVAILABLE, which ClipClient retries.
  absl::Duration max_connection_age = absl::InfiniteDuration();
  absl::Duration max_connection_age_grace = absl::InfiniteDuration();
  // GOAWAY to a connection that has had no call in flight for this long.
  absl::Duration max_connection_idle = absl::InfiniteDuration();
  // The server pings every connection, idle or not, after this long without a ping,
  // and closes it when no answer comes within keepalive_timeout, cancelling its calls:
  // a client that vanished without closing its socket (a crashed host, a cut network)
  // releases its streams and socket within about keepalive_time + keepalive_timeout
  // instead of the kernel's TCP timeouts. InfiniteDuration() sends no pings.
  absl::Duration keepalive_time = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Clients may ping (their own keepalive) this often, with or without calls in
  // flight; ZeroDuration() accepts any rate. A client that pings more often is sent
  // away after a few such pings with GOAWAY "too_many_pings", as gRPC does. gRPC's own
  // default, 5 minutes and no pings without calls, sends away clients configured with
  // a common 10-30 s keepalive.
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  // Most calls (streams) one connection may have open at once, announced to the client
  // in HTTP/2 SETTINGS; 0 lifts the limit. A client's further calls wait on its side
  // for a free stream (within their deadlines) and use no server memory meanwhile, so
  // one connection cannot hold an unbounded number of calls, each with its buffers
  // and a message of up to max_receive_message_bytes in transit.
  int max_concurrent_streams = 256;
};

// Whether a server could listen on `host`:`port` now, checked by binding (and
// closing) a socket on the addresses `host` resolves to, as gRPC would: OK when one
// of them binds (gRPC then serves on those it can); UNAVAILABLE naming the address and
// the reasons when none does; INVALID_ARGUMENT when `host` does not resolve or is an
// IPv6 address without brackets (which gRPC cannot split from the port). With port 0
// only the host is checked (a bind then takes any free port). Lets a start-up fail before
// a minutes-long model load rather than after it; the port can still be taken in between,
// which Create() then reports. Thread-safe.
absl::Status CheckCanListen(absl::string_view host, int port);

// Hosts clipserve's gRPC services together with the standard grpc.health.v1.Health
// service and server reflection.
//
// Health reports SERVING for "" and for every hosted service once Create() returns:
// everything that must happen before serving (loading and warming the model) happens
// before the port opens, so no client can see a half-ready server. Shutdown() flips
// health to NOT_SERVING, stops accepting calls, lets calls in flight finish within the
// grace period, then cancels the rest.
//
// Thread-safe. The destructor shuts down with no grace period if Shutdown() was not
// called.
class ClipServer {
 public:
  // Builds the server, binds the port and starts serving `services` (which the server
  // owns). Errors: UNAVAILABLE when the address cannot be bound (port in use, bad
  // host), INVALID_ARGUMENT for options out of range (a duration above is zero or
  // negative, min_client_ping_interval negative, keepalive_timeout infinite,
  // max_concurrent_streams negative) or TLS
  // material that ValidateServerTlsConfig() refuses.
  static absl::StatusOr<std::unique_ptr<ClipServer>> Create(
      const ClipServerOptions& options,
      std::vector<std::unique_ptr<grpc::Service>> services);

  ~ClipServer();
  ClipServer(const ClipServer&) = delete;
  ClipServer& operator=(const ClipServer&) = delete;

  // The TCP port actually bound.
  int port() const { return port_; }

  // Sets the health status of "" and of every hosted service: SERVING when `serving`,
  // else NOT_SERVING, so load balancers and Kubernetes probes stop sending traffic
  // while the engine cannot serve (for example when its watchdog finds a worker stuck,
  // see Engine::healthy()) and resume when it recovers. Ignored after Shutdown(),
  // which has turned health NOT_SERVING for good. Thread-safe; never blocks for long.
  void SetServing(bool serving);

  // True while health says SERVING: from Create() until SetServing(false) or the
  // start of Shutdown(). Thread-safe.
  bool serving() const;

  // Stops serving: health turns NOT_SERVING, new calls are refused, calls in flight
  // get up to `grace` to finish and are cancelled after. Blocks until every call has
  // ended. Idempotent; later calls return at once.
  void Shutdown(absl::Duration grace);

 private:
  ClipServer(std::vector<std::unique_ptr<grpc::Service>> services, HealthService* health,
             std::unique_ptr<grpc::Server> server, int port);

  // Declared before server_ so that they outlive it; the health service among them.
  std::vector<std::unique_ptr<grpc::Service>> services_;
  HealthService* const health_;
  std::unique_ptr<grpc::Server> server_;
  const int port_;

  mutable absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_CLIP_SERVER_H_
