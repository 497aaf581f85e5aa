#ifndef CLIPSERVE_CLIENT_CLIP_CLIENT_H_
#define CLIPSERVE_CLIENT_CLIP_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/retry.h"
#include "client/status_details.h"
#include "client/target.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"

namespace clipserve {

class Clock;

// How a ClipClient connects, waits and retries. Every default is what the clip_client
// command line uses.
struct ClientOptions {
  // The server(s): "host:port"; a comma-separated list of endpoints, balanced
  // round-robin ("10.0.0.1:50051,10.0.0.2:50051"); or any gRPC target URI
  // ("dns:///clipserve.prod:50051" balances over every address of the name). See
  // ToChannelTarget() in client/target.h for the exact rules. Default
  // "localhost:50051", the server's default port.
  std::string target = "localhost:50051";

  // Deadline of a unary call, retries and their waits included, > 0. A CallOptions
  // may override it per call. Default 30 s: a CLIP call on a busy CPU server takes
  // seconds at worst, so this only ends calls to a server that is stuck or gone.
  absl::Duration deadline = absl::Seconds(30);

  // Retries of UNAVAILABLE and RESOURCE_EXHAUSTED (see client/retry.h).
  RetryPolicy retry;

  // Largest response message accepted, in bytes, > 0. Default 64 MiB, the server's
  // default --max_message_bytes (gRPC's own default of 4 MiB would refuse, e.g., the
  // embeddings of 256 texts of a wide model).
  int max_receive_message_bytes = 64 << 20;

  // Keepalive. The channel pings a server connection after keepalive_time without a
  // ping, idle or not, and drops it when no answer comes within keepalive_timeout:
  // its calls fail with UNAVAILABLE (retried on a new connection) and the channel
  // reconnects. Without pings, a server that vanished without closing its socket (a
  // crashed node, a cut network) would keep each call on that connection waiting
  // until its deadline, which ends it with DEADLINE_EXCEEDED, not retried.
  // keepalive_time: > 0, InfiniteDuration() for no pings; default 20 s, above
  // clip_server's default --min_client_ping_interval_s (10). A server that allows
  // fewer pings answers GOAWAY "too_many_pings", and gRPC then doubles this client's
  // interval. keepalive_timeout: > 0 and finite.
  absl::Duration keepalive_time = absl::Seconds(20);
  absl::Duration keepalive_timeout = absl::Seconds(10);

  // Load-balancing policy over the target's addresses: "round_robin" (default: spread
  // calls over every server) or "pick_first".
  std::string load_balancing_policy = "round_robin";

  // TLS. Off by default (plaintext, like the server's default). When enabled, the
  // channel verifies the server's certificate against root_certificates_pem (PEM;
  // "" = gRPC's default roots) and the target's host name (or server_name_override),
  // and with cert_chain_pem and private_key_pem presents a client certificate for a
  // server that demands one (mutual TLS: the server's --tls_client_ca). Setting any
  // field while enabled is false is INVALID_ARGUMENT, so that nothing meant to be
  // secret goes out in the clear by mistake.
  struct Tls {
    bool enabled = false;
    std::string root_certificates_pem;
    std::string cert_chain_pem;
    std::string private_key_pem;
    // The name to expect in the server's certificate instead of the target's host,
    // e.g. when connecting by IP address to a certificate issued for a name.
    std::string server_name_override;
  } tls;

  // Sent as "authorization: Bearer <token>" metadata on every call ("" = none): a
  // token of the server's --auth_token_file. Visible ASCII only. It is added to each
  // call's ClientContext rather than as gRPC call credentials, which gRPC only sends
  // over TLS, so it also works in plaintext; there it crosses the network readable
  // by anyone on the path, which is only acceptable inside a network that adds its
  // own encryption (a service mesh).
  std::string bearer_token;

  // --- Test-only.

  // Clock, sleep and randomness of retries; empty functions mean the real ones (the
  // real sleep keeps the channel connecting meanwhile).
  RetryEnvironment retry_environment;

  // Time source of EmbedStream's stall watchdog; not owned, must outlive the client.
  // nullptr means RealClock (server/common/clock.h), which runs on the monotonic
  // clock, so a step of the wall clock neither ends a stream as stalled nor extends
  // its wait.
  Clock* stall_clock = nullptr;

  // Resolves names in a comma-separated target; empty means getaddrinfo.
  HostResolver host_resolver;
};

// The name this type had first; kept for existing callers.
using ClipClientOptions = ClientOptions;

// Per-call settings of a ClipClient method.
struct CallOptions {
  // Time the call may take, retries included; nullopt means ClientOptions::deadline.
  std::optional<absl::Duration> timeout;
  // Retry UNAVAILABLE / RESOURCE_EXHAUSTED per ClientOptions::retry. Default true; a
  // load generator turns it off to see every refusal.
  bool retry = true;
  // Sent as `x-request-id` with every attempt, so the server's log lines about the
  // call (and its retries) name it: 1 to 128 visible ASCII characters, e.g. the id of
  // the request this call serves. Empty (the default): a new random id per call.
  std::string request_id;
};

// One input of ClipClient::EmbedStream: an encoded image (a file's bytes as they
// are, sniffed by the server) or a UTF-8 text.
struct EmbedItem {
  enum class Kind { kImage, kText };
  Kind kind = Kind::kText;
  std::string data;

  static EmbedItem Image(std::string encoded) {
    return {Kind::kImage, std::move(encoded)};
  }
  static EmbedItem Text(std::string text) { return {Kind::kText, std::move(text)}; }
};

// The result of one EmbedStream item.
struct EmbeddedItem {
  std::vector<float> embedding;
  // Texts only: whether the text was cut to the context, and the tokens read.
  bool truncated = false;
  uint32_t num_tokens = 0;
};

// Produces item `index` (0 <= index < count) for EmbedStream, e.g. by reading a file.
// An error fails that item alone (and is its result) without sending anything.
// Called from one internal thread at a time, in index order within a pass (an item
// retried after a transient failure is loaded again).
using EmbedItemLoader = std::function<absl::StatusOr<EmbedItem>(size_t index)>;

struct EmbedStreamOptions {
  // Most items sent and not yet answered, >= 1. Bounds the client's memory and lets
  // the server batch. Default 64, the server's own per-stream read-ahead.
  int max_in_flight = 64;

  // As in EmbedImageRequest / EmbedTextRequest.
  bool normalize = true;
  bool truncate = true;

  // Time the whole job may take, > 0. Default: no limit, since a bulk job's length
  // grows with its input; stall_timeout catches a server that stops answering.
  absl::Duration timeout = absl::InfiniteDuration();

  // Longest wait for the stream to open (the connection included) and for the next
  // answer while items are in flight, > 0; when it passes the stream is cancelled and
  // its unanswered items fail with DEADLINE_EXCEEDED.
  // Timed on the monotonic clock (ClientOptions::stall_clock).
  // nullopt means ClientOptions::deadline (the most one call may take).
  std::optional<absl::Duration> stall_timeout;

  // Stop at the first item that fails for good (after retries): the stream is
  // cancelled and the items not answered yet fail with CANCELLED, marked as such
  // (IsNotProcessed). Default false: every item is tried, except that an item larger
  // than the server's largest message ends the whole stream (gRPC's
  // RESOURCE_EXHAUSTED, for every item not answered yet): give the loader a size
  // limit (ReadFileBytes' max_bytes), as clip_client does.
  bool stop_on_error = false;

  // Retry, per ClientOptions::retry, items that failed with UNAVAILABLE or
  // RESOURCE_EXHAUSTED and items left unanswered by a stream that broke with one of
  // those codes, on a new stream. A pass that completes any item resets the attempt
  // count. Default true.
  bool retry = true;

  // As CallOptions::request_id: one id for the job's every stream.
  std::string request_id;

  // Called after each item is settled (answered, or failed for good), with the number
  // settled so far and the total. Called from internal threads, one call at a time;
  // must not call back into the stream.
  std::function<void(size_t done, size_t total)> on_progress;
};

// A client for a clipserve server (proto/clipserve/v1/clip_service.proto).
//
// Every method blocks the calling thread until the answer, a non-retryable error, or
// the deadline. Errors come back as absl::Status with the server's gRPC code, message
// and rich details (google.rpc.BadRequest, RetryInfo) as payloads; read them with
// BadRequestOf() / RetryInfoDelay() from client/status_details.h. The error of a call
// (or of an EmbedStream item the server failed or left unanswered) also carries the
// call's x-request-id, read with RequestIdOf(), to find the server's log line about
// it. A server that cannot be reached is UNAVAILABLE (after the retries), a passed
// deadline DEADLINE_EXCEEDED.
//
// Thread-safe: one ClipClient (one channel, HTTP/2-multiplexed, balanced over the
// target's servers) is meant to be shared by all threads of a process.
class ClipClient {
 public:
  // Creates the channel; connecting happens lazily on the first call. Errors:
  // INVALID_ARGUMENT for a bad target, a non-positive deadline or message limit, an
  // unknown load-balancing policy, a bad retry policy, TLS fields without
  // tls.enabled, a client certificate without its key (or the reverse), or a bearer
  // token with characters other than visible ASCII; NOT_FOUND when a name in a target
  // list does not resolve. Certificates are parsed by gRPC when it connects: bad PEM
  // then shows as UNAVAILABLE on the first call.
  static absl::StatusOr<std::unique_ptr<ClipClient>> Create(const ClientOptions& options);

  // The gRPC target the channel was created with (after ToChannelTarget()).
  const std::string& channel_target() const { return channel_target_; }

  // Embeds images (encoded bytes or raw RGB8). See EmbedImageRequest for limits;
  // INVALID_ARGUMENT names the bad image ("images[3]") in a BadRequest detail.
  absl::StatusOr<v1::EmbedImageResponse> EmbedImages(const v1::EmbedImageRequest& request,
                                                     const CallOptions& call = {});

  // Embeds texts. See EmbedTextRequest.
  absl::StatusOr<v1::EmbedTextResponse> EmbedTexts(const v1::EmbedTextRequest& request,
                                                   const CallOptions& call = {});

  // Scaled cosine similarities, probabilities and, for paired inputs, the loss.
  absl::StatusOr<v1::SimilarityResponse> Similarity(const v1::SimilarityRequest& request,
                                                    const CallOptions& call = {});

  // Zero-shot classification.
  absl::StatusOr<v1::ClassifyResponse> Classify(const v1::ClassifyRequest& request,
                                                const CallOptions& call = {});

  // Tokenizes texts with the server's tokenizer.
  absl::StatusOr<v1::TokenizeResponse> Tokenize(const v1::TokenizeRequest& request,
                                                const CallOptions& call = {});

  // Describes the served model.
  absl::StatusOr<v1::ModelInfo> GetModelInfo(const CallOptions& call = {});

  // Asks grpc.health.v1.Health for `service` ("" = the whole server). Returns the
  // serving status; UNAVAILABLE when the server cannot be reached, NOT_FOUND when it
  // does not know `service`. Not retried: a health check reports the present.
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
      const std::string& service = "", const CallOptions& call = {});

  // Embeds `count` items over EmbedStream, loading item i with `load(i)` just before it
  // is sent, with at most options.max_in_flight items unanswered at a time. Returns one
  // result per item, in input order: the embedding, or the item's own error (its
  // loader's error, the server's error for it, or the stream's error when the stream
  // ended before answering it). The outer status is INVALID_ARGUMENT for bad options
  // only. Blocks until every item is settled; uses two internal threads per pass.
  absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> EmbedStream(
      size_t count, const EmbedItemLoader& load, const EmbedStreamOptions& options = {});

  // The same over items already in memory.
  absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> EmbedStream(
      const std::vector<EmbedItem>& items, const EmbedStreamOptions& options = {});

 private:
  ClipClient(const ClientOptions& options, std::string channel_target,
             std::shared_ptr<grpc::Channel> channel);

  // Runs a unary RPC with the deadline and retries of `call`.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Unary(Stub* stub,
                                 grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                              const Request&, Response*),
                                 const Request& request, const CallOptions& call);

  // Sets the deadline, the bearer token and the request id metadata of one attempt.
  void PrepareContext(absl::Time deadline, const std::string& request_id,
                      grpc::ClientContext* context) const;

  absl::Time DeadlineOf(const CallOptions& call) const;

  const ClientOptions options_;
  const RetryEnvironment env_;
  Clock* const stall_clock_;
  const std::string channel_target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ClipService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_CLIP_CLIENT_H_
