#include "server/service/clip_server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "glog/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/common/grpc_millis.h"
#include "server/service/health_service.h"

namespace clipserve {
namespace {

absl::Status ValidateConnectionOptions(const ClipServerOptions& options) {
  const std::pair<const char*, absl::Duration> positive[] = {
      {"max_connection_age", options.max_connection_age},
      {"max_connection_age_grace", options.max_connection_age_grace},
      {"max_connection_idle", options.max_connection_idle},
      {"keepalive_time", options.keepalive_time},
      {"keepalive_timeout", options.keepalive_timeout},
  };
  for (const auto& [name, duration] : positive) {
    if (duration <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be positive (infinite for never), not ",
                       absl::FormatDuration(duration)));
    }
  }
  if (options.keepalive_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("keepalive_timeout must be finite");
  }
  if (options.min_client_ping_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("min_client_ping_interval must not be negative");
  }
  if (options.max_concurrent_streams < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrent_streams must not be negative (0 for no limit), not ",
                     options.max_concurrent_streams));
  }
  return absl::OkStatus();
}

// Leaves the plugin named `name` out of one server (plugins are registered for the
// whole process).
class WithoutPlugin final : public grpc::ServerBuilderOption {
 public:
  explicit WithoutPlugin(std::string name) : name_(std::move(name)) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(
      std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [&](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
                         return plugin->name() == name_;
                       }),
        plugins->end());
  }

 private:
  const std::string name_;
};

}  // namespace

absl::Status CheckCanListen(absl::string_view host, int port) {
  // Port 0 too: its bind takes a free port, so only the host can fail it.
  const std::string address = absl::StrCat(host, ":", port);
  // gRPC writes IPv6 addresses in brackets, and cannot split a bare one from its
  // port; getaddrinfo() takes them bare.
  absl::string_view name = host;
  if (absl::StartsWith(name, "[") && absl::EndsWith(name, "]")) {
    name = name.substr(1, name.size() - 2);
  } else if (absl::StrContains(name, ':')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot listen on ", address, ": write an IPv6 address in brackets, as [::1]"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int error =
          getaddrinfo(std::string(name).c_str(), service.c_str(), &hints, &found);
      error != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", address,
                                                   ": the host does not resolve (",
                                                   gai_strerror(error), ")"));
  }
  // Like gRPC, which serves when at least one of the addresses binds (localhost's
  // ::1 may be unusable where IPv6 is off): refused only when none does.
  bool bound = false;
  std::string errors;
  for (const addrinfo* a = found; a != nullptr && !bound; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;  // an address family this host lacks; gRPC skips it too
    // As gRPC's listeners: a port in TIME_WAIT is free, one with a listener is not.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0) {
      bound = true;
    } else {
      const char* reason = std::strerror(errno);
      if (!absl::StrContains(errors, reason)) {
        absl::StrAppend(&errors, errors.empty() ? "" : "; ", reason);
      }
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (bound || errors.empty()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", errors));
}

absl::StatusOr<std::unique_ptr<ClipServer>> ClipServer::Create(
    const ClipServerOptions& options,
    std::vector<std::unique_ptr<grpc::Service>> services) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port ", options.port, " is outside 0..65535"));
  }
  if (options.max_receive_message_bytes <= 0 || options.max_send_message_bytes <= 0) {
    return absl::InvalidArgumentError("message size limits must be positive");
  }
  if (absl::Status status = ValidateConnectionOptions(options); !status.ok()) {
    return status;
  }
  if (options.tls.has_value()) {
    if (absl::Status status = ValidateServerTlsConfig(*options.tls); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: ", status.message()));
    }
  }

  // Both are process-wide switches that only take effect for servers built later;
  // calling them again is harmless. Health is HealthService, not gRPC's default.
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto health = std::make_unique<HealthService>(std::vector<std::string>{
      "", std::string(clipserve::v1::ClipService::service_full_name())});
  HealthService* const health_service = health.get();
  services.push_back(std::move(health));

  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  int bound_port = 0;
  builder.AddListeningPort(address, MakeServerCredentials(options.tls), &bound_port);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  // No compressed messages, either way: gRPC inflates a request to its full size before
  // any handler sees it, so 65 KB of gzip became 64 MiB each, in memory before the
  // request memory budget could refuse the call (40 such calls took the server from
  // 0.8 to 4 GB). Calls that ask for it end with UNIMPLEMENTED when their headers
  // arrive, before a byte is inflated. JPEG or PNG input and float embeddings gain
  // nothing from it anyway.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  // gRPC sets SO_REUSEPORT by default, which would let a second server silently share
  // the port with a running one; a clear bind error is what an operator wants.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             GrpcMillis(options.max_connection_age));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             GrpcMillis(options.max_connection_age_grace));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             GrpcMillis(options.max_connection_idle));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             GrpcMillis(options.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             GrpcMillis(options.keepalive_timeout));
  // Pings on connections without calls, both ways: the server's keepalive finds a
  // vanished idle client too, and clients that keep idle connections warm are welcome.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             options.min_client_ping_interval == absl::ZeroDuration()
                                 ? 0
                                 : GrpcMillis(options.min_client_ping_interval));
  if (options.max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               options.max_concurrent_streams);
  }
  if (!options.reflection) {
    builder.SetOption(std::make_unique<WithoutPlugin>(
        grpc::reflection::ProtoServerReflectionPlugin().name()));
  }
  for (const auto& service : services) builder.RegisterService(service.get());

  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (address in use or invalid)"));
  }

  return std::unique_ptr<ClipServer>(
      new ClipServer(std::move(services), health_service, std::move(server), bound_port));
}

ClipServer::ClipServer(std::vector<std::unique_ptr<grpc::Service>> services,
                       HealthService* health, std::unique_ptr<grpc::Server> server,
                       int port)
    : services_(std::move(services)),
      health_(health),
      server_(std::move(server)),
      port_(port) {}

ClipServer::~ClipServer() { Shutdown(absl::ZeroDuration()); }

void ClipServer::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  serving_ = serving;
  // Updates every status Create() registered ("" and the ClipService).
  health_->SetServing(serving);
}

bool ClipServer::serving() const {
  absl::MutexLock lock(&mu_);
  return serving_ && !shut_down_;
}

void ClipServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  // Health first: NOT_SERVING for every status, and the end of every Watch call, which
  // would otherwise stay open as a call in flight until the grace ran out (gRPC's
  // client-side health checking keeps one open on each connection).
  // grpc::Server::Shutdown then refuses new calls and waits for calls in flight until
  // the deadline, cancelling the rest.
  health_->Shutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

}  // namespace clipserve
