#ifndef CLIPSERVE_SERVER_SERVICE_CLIP_SERVICE_H_
#define CLIPSERVE_SERVER_SERVICE_CLIP_SERVICE_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clipserve/v1/clip_service.grpc.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "server/common/clock.h"
#include "server/engine/engine.h"
#include "server/service/bearer_auth.h"
#include "server/service/label_embedding_cache.h"
#include "server/service/request_memory_budget.h"
#include "server/service/request_validation.h"
#include "server/service/rpc_recorder.h"

namespace clipserve {

class Metrics;

struct ClipServiceOptions {
  // Per-request limits (counts, text bytes, image pixels and bytes); see
  // RequestLimits for each default and its reason.
  RequestLimits limits;
  // EmbedStream flow control: items of one stream that have been read but whose
  // response has not been written yet. At the limit the service stops reading, so a
  // client that sends faster than the model computes (or than it reads its answers)
  // is held back by gRPC's own flow control. 64 items keep a few engine batches' worth
  // queued per stream without buffering unboundedly.
  int max_stream_items_in_flight = 64;
  // Classify: (label, templates) embeddings remembered, in entries. Keys are 32-byte
  // digests, so 4096 entries of a 512-wide model take about 8 MiB (16 MiB at 1024
  // wide) whatever labels and templates clients send, and hold a few hundred label
  // sets; 0 disables the cache.
  int label_cache_capacity = 4096;
  // Classify: labels x templates, the prompts one request may need embedded. Each is
  // one text in the engine's queue, and a request larger than that queue could never
  // be admitted; 512 is half the engine's default text queue (1024 items), so one
  // Classify leaves room for other work. Create() refuses a value above the engine's
  // max_texts_per_call(), as it does max_items_per_request. Counted whether or not labels
  // are cached, so that a request's validity does not depend on the cache.
  int max_classify_prompts = 512;
  // Bytes of requests held by calls in flight at most (see RequestMemoryBudget):
  // each call counts its request's size (and its response's) from its arrival until
  // it is done, an EmbedStream item (and its answer) until the answer is written, and
  // a call or item that would
  // pass the limit is refused at once with RESOURCE_EXHAUSTED and a RetryInfo. 0
  // means no limit. Default 256 MiB: four requests of the largest default message
  // size, or hundreds of typical ones, which is more than the engine's queues take
  // in at once; the process holds up to about three times this for requests (see
  // docs/OPERATIONS.md). Keep it at least the server's largest message size
  // (ValidateRequestMemoryLimit()), or such requests can never be admitted.
  int64_t max_request_memory_bytes = int64_t{256} << 20;
  // Bytes of requests one client (its host address, PeerHost()) may hold in flight at
  // most, within max_request_memory_bytes, so that one client with many large calls
  // cannot take the whole budget from the others; past it its calls and items are
  // refused the same way. 0 (the default): no per-client limit. Leave it 0 behind a
  // proxy or sidecar that opens the connections itself (Envoy, Istio, Linkerd): every
  // call then comes from the proxy's address, and it would limit all clients together.
  int64_t max_request_memory_per_client_bytes = 0;
  // The largest response gRPC will send (the server's max send message size, set
  // from --max_message_bytes). A unary response over it ends RESOURCE_EXHAUSTED with
  // its size, counted as such, instead of failing inside gRPC after the call was
  // counted OK. 0 (the default): not checked here. EmbedStream's responses, one item
  // each, are not checked: Create() refuses a limit below the largest one-item
  // response of the engine's model (a 256-byte stream id and an embedding), so they
  // always fit.
  int64_t max_response_bytes = 0;
  // When set, every ClipService call must carry "authorization: Bearer <token>"
  // metadata with a token it accepts, or it ends UNAUTHENTICATED before anything of it
  // is looked at. nullptr (the default): no token is asked for. The health and
  // reflection services are not part of ClipService and never ask for one (see
  // docs/SECURITY.md).
  std::shared_ptr<const BearerAuthenticator> authenticator;
  // Optional: where every call is counted by RPC and status code and timed, calls in
  // flight are tracked, and label cache lookups are counted (metrics.h). Not owned;
  // must outlive the service. nullptr records no metrics.
  Metrics* metrics = nullptr;
  // A successful unary call taking at least this long is logged as slow (streams
  // never are); zero disables.
  // Default 1 s (see RpcRecorderOptions). Failed calls are logged, WARNING lines at
  // most RpcRecorderOptions::max_warning_lines_per_second (20) a second.
  absl::Duration slow_request_threshold = absl::Seconds(1);

  // --- Test-only ---

  // Time source for call durations; not owned. nullptr means RealClock::Get().
  Clock* clock = nullptr;
};

// The largest of the responses that answer one item with the model `d` describes:
// GetModelInfo's, a one-text EmbedText's and an EmbedStream item's with the longest id
// (kMaxStreamIdBytes). ClipService::Create() refuses a max_response_bytes below it,
// since such a server could answer nothing. Thread-safe.
int64_t LargestOneItemResponseBytes(const ModelDescription& d);

// The generated service with every method on gRPC's callback API. The methods that
// take input receive the request's bytes and parse them themselves
// (request_parsing.h): a proto3 parser rejects a malformed message, or one with
// invalid UTF-8 in any string, before a typed handler runs, and gRPC 1.51 then answers
// UNIMPLEMENTED with no message, where the contract promises INVALID_ARGUMENT naming
// the item (and, in EmbedStream, an error for that item alone); and the request
// memory budget is charged before the bytes are parsed into a second copy. Clients
// see the same typed service. GetModelInfo's request is empty, but raw too: a typed
// parser keeps whatever unknown fields come, which for a message size's worth of
// 2-byte groups takes some 25 times that size, before a handler could refuse them.
using ClipServiceBase = v1::ClipService::WithRawCallbackMethod_EmbedImage<
    v1::ClipService::WithRawCallbackMethod_EmbedText<
        v1::ClipService::WithRawCallbackMethod_Similarity<
            v1::ClipService::WithRawCallbackMethod_Classify<
                v1::ClipService::WithRawCallbackMethod_EmbedStream<
                    v1::ClipService::WithRawCallbackMethod_Tokenize<
                        v1::ClipService::WithRawCallbackMethod_GetModelInfo<
                            v1::ClipService::Service>>>>>>>;

// clipserve.v1.ClipService over an Engine, with gRPC's callback API.
//
// Handlers never block: they reserve the request's bytes in the service's
// RequestMemoryBudget (RESOURCE_EXHAUSTED with RetryInfo when over
// max_request_memory_bytes), validate the request (INVALID_ARGUMENT with a
// google.rpc.BadRequest naming the offending item, before the engine sees anything),
// reserve the response the request asks for in the same budget (gRPC holds it until
// the client has read it), convert the request, hand it to the engine, and return; the
// call is finished from the engine's callback. Each call's EmbedOptions carries the
// client's deadline and a CancellationFlag that is set when the call is cancelled (client
// cancel, deadline, server shutdown), so its queued items are dropped. Engine errors
// reach the client unchanged through ToGrpcStatus() (RESOURCE_EXHAUSTED keeps its
// RetryInfo).
//
// Every call is recorded once, as it finishes, by an RpcRecorder: metrics (when
// options.metrics is set) and one log line per failed or slow call.
//
// Similarity and Classify compute on the engine's L2-normalized embeddings with the
// torch-free functions of server/model/contrastive_loss.h, running both towers
// concurrently. Classify remembers label embeddings in a LabelEmbeddingCache.
//
// With ClipServiceOptions::authenticator set, every handler first checks the call's
// bearer token (Authenticate()) and ends the call UNAUTHENTICATED when it fails; this
// check is the only gate, and a new RPC must start with it too (security_test calls
// every method of the service descriptor without a token to catch one that does
// not). It sits here rather than in a grpc::AuthMetadataProcessor, which gRPC runs
// only on TLS ports, or a server interceptor, which in gRPC 1.51 cannot end a call
// with a status (see docs/SECURITY.md).
//
// Thread-safe. The engine is not owned and must outlive the service; the service must
// outlive the grpc::Server it is registered with (ClipServer takes care of that).
class ClipService final : public ClipServiceBase {
 public:
  // INVALID_ARGUMENT for a null engine or options out of range (limits not positive,
  // max_stream_items_in_flight or max_classify_prompts < 1, label_cache_capacity or
  // max_request_memory_bytes, max_request_memory_per_client_bytes or
  // max_response_bytes < 0), or a max_response_bytes below the largest response that
  // answers one item (GetModelInfo, one text, or one stream item with the longest id);
  // FAILED_PRECONDITION when the engine describes no embedding width or context
  // length, or no finite positive logit scale.
  static absl::StatusOr<std::unique_ptr<ClipService>> Create(
      Engine* engine, const ClipServiceOptions& options);

  ClipService(const ClipService&) = delete;
  ClipService& operator=(const ClipService&) = delete;

  // The methods that take input take raw bytes (see ClipServiceBase).
  grpc::ServerUnaryReactor* EmbedImage(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* EmbedText(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Similarity(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* EmbedStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  // The server's shutdown begins, with `grace` for the calls in flight (see
  // RpcRecorder::ShutdownBegins()). Call it just before grpc::Server::Shutdown().
  // Thread-safe.
  void ShutdownBegins(absl::Duration grace) const { recorder_.ShutdownBegins(grace); }

  // Classify's label cache (for metrics and tests).
  const LabelEmbeddingCache& label_cache() const { return label_cache_; }
  // Bytes of requests held now (for tests).
  int64_t request_memory_used() const { return request_memory_.used(); }
  // Bytes of EmbedStream items waiting for their stream's own memory (for tests).
  int64_t stream_items_waiting_bytes() const { return stream_parking_.used(); }

 private:
  ClipService(Engine* engine, const ClipServiceOptions& options);

  // OK without an authenticator, else its verdict on the call's metadata.
  absl::Status Authenticate(const grpc::CallbackServerContext& context) const;

  Engine* const engine_;
  const ClipServiceOptions options_;
  const RpcRecorder recorder_;
  LabelEmbeddingCache label_cache_;
  RequestMemoryBudget request_memory_;
  // EmbedStream items refused by request_memory_ that wait for their own stream's
  // items (read, so held in memory too): bounded as requests in flight are, so that
  // waiting streams hold at most that much more.
  RequestMemoryBudget stream_parking_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_CLIP_SERVICE_H_
