#include "client/clip_client.h"

#include <algorithm>
#include <cstdint>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/reply_check.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "server/common/clock.h"
#include "server/common/grpc_millis.h"
#include "server/common/request_id.h"
#include "server/common/status_macros.h"

namespace clipserve {
namespace {

// The one place where channel security is decided (the bearer token is added per
// call in PrepareContext()).
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(
    const ClientOptions& options) {
  if (!options.tls.enabled) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.tls.root_certificates_pem;
  ssl.pem_cert_chain = options.tls.cert_chain_pem;
  ssl.pem_private_key = options.tls.private_key_pem;
  return grpc::SslCredentials(ssl);
}

absl::Status ValidateSecurity(const ClientOptions& options) {
  const ClientOptions::Tls& tls = options.tls;
  if (!tls.enabled &&
      (!tls.root_certificates_pem.empty() || !tls.cert_chain_pem.empty() ||
       !tls.private_key_pem.empty() || !tls.server_name_override.empty())) {
    return absl::InvalidArgumentError(
        "TLS certificates or a server name are set but tls.enabled is false");
  }
  if (tls.cert_chain_pem.empty() != tls.private_key_pem.empty()) {
    return absl::InvalidArgumentError(
        tls.cert_chain_pem.empty()
            ? "a TLS client key needs its certificate (cert_chain_pem)"
            : "a TLS client certificate needs its private key (private_key_pem)");
  }
  for (const char c : options.bearer_token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "the bearer token may hold only visible ASCII characters (no spaces, no "
          "line breaks)");
    }
  }
  return absl::OkStatus();
}

// Waits `delay` while the channel makes progress. A synchronous client's channel
// runs only while a call or a watch of its state is in flight: during a plain sleep
// the connection attempt a failed call started is never completed, so every retry
// found the channel still failing and a server that had started listening meanwhile
// was never reached (unless another gRPC thread in the process happened to poll).
void WaitWatchingChannel(grpc::Channel& channel, absl::Duration delay) {
  const absl::Time end = absl::Now() + delay;
  for (absl::Time now = absl::Now(); now < end; now = absl::Now()) {
    const grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_READY) {
      absl::SleepFor(end - now);
      return;
    }
    channel.WaitForStateChange(state, absl::ToChronoTime(end));
  }
}

RetryEnvironment CompleteEnvironment(RetryEnvironment env,
                                     const std::shared_ptr<grpc::Channel>& channel) {
  RetryEnvironment real = RetryEnvironment::Real();
  if (!env.now) env.now = real.now;
  if (!env.sleep) {
    env.sleep = [channel](absl::Duration delay) { WaitWatchingChannel(*channel, delay); };
  }
  if (!env.uniform) env.uniform = real.uniform;
  return env;
}

// The id a call sends: the caller's when valid, a new one when none was given.
absl::StatusOr<std::string> RequestIdFor(const std::string& given) {
  if (given.empty()) return NewRequestId();
  if (!IsValidRequestId(given)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id must be 1 to ", kMaxRequestIdBytes,
                     " visible ASCII characters (no spaces or control characters)"));
  }
  return given;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClipClient>> ClipClient::Create(
    const ClientOptions& options) {
  if (options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("deadline must be positive");
  }
  if (options.max_receive_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_receive_message_bytes must be positive");
  }
  if (options.keepalive_time <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "keepalive_time must be positive (infinite for no pings)");
  }
  if (options.keepalive_timeout <= absl::ZeroDuration() ||
      options.keepalive_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("keepalive_timeout must be positive and finite");
  }
  if (options.load_balancing_policy != "round_robin" &&
      options.load_balancing_policy != "pick_first") {
    return absl::InvalidArgumentError(absl::StrCat("unknown load_balancing_policy '",
                                                   options.load_balancing_policy,
                                                   "' (round_robin or pick_first)"));
  }
  if (absl::Status status = ValidateRetryPolicy(options.retry); !status.ok()) {
    return status;
  }
  if (absl::Status status = ValidateSecurity(options); !status.ok()) return status;
  absl::StatusOr<std::string> target =
      ToChannelTarget(options.target, options.host_resolver ? options.host_resolver
                                                            : SystemHostResolver());
  if (!target.ok()) return target.status();

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  args.SetMaxSendMessageSize(-1);  // the server enforces its own limit
  args.SetServiceConfigJSON(absl::StrCat(R"({"loadBalancingConfig":[{")",
                                         options.load_balancing_policy, R"(":{}}]})"));
  args.SetUserAgentPrefix("clipserve-client/0.1");
  // After a failed connection attempt gRPC refuses calls at once, without trying, until
  // its reconnect backoff (1 s by default, up to 120 s) has passed: retries sent sooner
  // could not reach a server that came back meanwhile. Its backoff follows the retry
  // policy's instead. (gRPC's "min reconnect backoff" is really the connect timeout,
  // 20 s, and stays.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              GrpcMillis(options.retry.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, GrpcMillis(options.retry.max_backoff));
  if (options.keepalive_time != absl::InfiniteDuration()) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, GrpcMillis(options.keepalive_time));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, GrpcMillis(options.keepalive_timeout));
    // Idle connections too: a dead one is found before a call is sent on it.
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // gRPC's client otherwise stops after 2 pings without data in between.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  if (!options.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls.server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(*target, ChannelCredentials(options), args);
  return std::unique_ptr<ClipClient>(
      new ClipClient(options, *std::move(target), std::move(channel)));
}

ClipClient::ClipClient(const ClientOptions& options, std::string channel_target,
                       std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      env_(CompleteEnvironment(options.retry_environment, channel)),
      stall_clock_(options.stall_clock != nullptr ? options.stall_clock
                                                  : RealClock::Get()),
      channel_target_(std::move(channel_target)),
      channel_(std::move(channel)),
      stub_(v1::ClipService::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

void ClipClient::PrepareContext(absl::Time deadline, const std::string& request_id,
                                grpc::ClientContext* context) const {
  if (deadline != absl::InfiniteFuture()) {
    context->set_deadline(absl::ToChronoTime(deadline));
  }
  context->AddMetadata(kRequestIdKey, request_id);
  if (!options_.bearer_token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.bearer_token));
  }
}

absl::Time ClipClient::DeadlineOf(const CallOptions& call) const {
  return env_.now() + call.timeout.value_or(options_.deadline);
}

template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> ClipClient::Unary(
    Stub* stub,
    grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, const CallOptions& call) {
  if (call.timeout.has_value() && *call.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("call timeout must be positive");
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string request_id, RequestIdFor(call.request_id));
  const absl::Time deadline = DeadlineOf(call);
  RetryPolicy policy = options_.retry;
  if (!call.retry) policy.max_attempts = 1;
  Response response;
  absl::Status status = RunWithRetries(policy, env_, deadline, [&](int) {
    grpc::ClientContext context;
    PrepareContext(deadline, request_id, &context);
    response.Clear();
    absl::Status attempt = FromGrpcStatus((stub->*method)(&context, request, &response));
    // This client never cancels a unary call: CANCELLED is the server's doing, as when
    // it begins to shut down while the request is still arriving (gRPC hands a unary
    // call over only once its request is whole, and kills the calls not handed over
    // yet). Every call here is idempotent: retried like UNAVAILABLE.
    if (attempt.code() == absl::StatusCode::kCancelled) {
      attempt = absl::UnavailableError(
          absl::StrCat("the server cancelled the call: ", attempt.message()));
    }
    return attempt;
  });
  if (status.ok()) status = CheckReply(request, response);
  if (!status.ok()) {
    SetRequestId(request_id, &status);
    return status;
  }
  return response;
}

absl::StatusOr<v1::EmbedImageResponse> ClipClient::EmbedImages(
    const v1::EmbedImageRequest& request, const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::EmbedImage, request, call);
}

absl::StatusOr<v1::EmbedTextResponse> ClipClient::EmbedTexts(
    const v1::EmbedTextRequest& request, const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::EmbedText, request, call);
}

absl::StatusOr<v1::SimilarityResponse> ClipClient::Similarity(
    const v1::SimilarityRequest& request, const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::Similarity, request, call);
}

absl::StatusOr<v1::ClassifyResponse> ClipClient::Classify(
    const v1::ClassifyRequest& request, const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::Classify, request, call);
}

absl::StatusOr<v1::TokenizeResponse> ClipClient::Tokenize(
    const v1::TokenizeRequest& request, const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::Tokenize, request, call);
}

absl::StatusOr<v1::ModelInfo> ClipClient::GetModelInfo(const CallOptions& call) {
  return Unary(stub_.get(), &v1::ClipService::Stub::GetModelInfo,
               v1::GetModelInfoRequest(), call);
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
ClipClient::CheckHealth(const std::string& service, const CallOptions& call) {
  CallOptions once = call;
  once.retry = false;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  absl::StatusOr<grpc::health::v1::HealthCheckResponse> response =
      Unary(health_.get(), &grpc::health::v1::Health::Stub::Check, request, once);
  if (!response.ok()) return response.status();
  return response->status();
}

// ---------------------------------------------------------------------------
// EmbedStream

namespace {

// Where an item stands within the whole job.
enum class ItemState : uint8_t {
  kIdle,     // not part of the current pass
  kQueued,   // in the current pass, not sent yet
  kSent,     // sent, no answer yet
  kRetry,    // failed transiently in this pass; may go again
  kSettled,  // has its final result
};

// The state one EmbedStream job shares between the writer, reader and watchdog of a
// pass. Results and states are indexed by item.
struct StreamJob {
  StreamJob(size_t count, const EmbedStreamOptions& options)
      : options(options),
        results(count, absl::UnknownError("not processed")),
        states(count, ItemState::kIdle) {}

  const EmbedStreamOptions& options;

  absl::Mutex mu;
  absl::CondVar cv;
  std::vector<absl::StatusOr<EmbeddedItem>> results ABSL_GUARDED_BY(mu);
  std::vector<ItemState> states ABSL_GUARDED_BY(mu);
  // Transient errors of the items in kRetry.
  std::vector<std::pair<size_t, absl::Status>> retry ABSL_GUARDED_BY(mu);
  size_t settled ABSL_GUARDED_BY(mu) = 0;
  bool stop ABSL_GUARDED_BY(mu) = false;  // stop_on_error tripped
  // Width of the embeddings answered so far, 0 before the first.
  size_t width ABSL_GUARDED_BY(mu) = 0;

  // Per pass.
  int in_flight ABSL_GUARDED_BY(mu) = 0;
  // While the stream opens: that waits for the connection, for as long as gRPC's
  // connect timeout (20 s) allows, with no item in flight yet.
  bool opening ABSL_GUARDED_BY(mu) = false;
  bool reader_done ABSL_GUARDED_BY(mu) = false;
  bool stalled ABSL_GUARDED_BY(mu) = false;
  bool stalled_opening ABSL_GUARDED_BY(mu) = false;
  size_t answered_in_pass ABSL_GUARDED_BY(mu) = 0;
  absl::Time last_progress ABSL_GUARDED_BY(mu);

  void SettleLocked(size_t index, absl::StatusOr<EmbeddedItem> result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!result.ok() && options.stop_on_error) stop = true;
    results[index] = std::move(result);
    states[index] = ItemState::kSettled;
    ++settled;
    if (options.on_progress) options.on_progress(settled, results.size());
  }
};

}  // namespace

absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> ClipClient::EmbedStream(
    const std::vector<EmbedItem>& items, const EmbedStreamOptions& options) {
  return EmbedStream(
      items.size(), [&items](size_t i) -> absl::StatusOr<EmbedItem> { return items[i]; },
      options);
}

absl::StatusOr<std::vector<absl::StatusOr<EmbeddedItem>>> ClipClient::EmbedStream(
    size_t count, const EmbedItemLoader& load, const EmbedStreamOptions& options) {
  if (!load) return absl::InvalidArgumentError("EmbedStream needs a loader");
  if (options.max_in_flight < 1) {
    return absl::InvalidArgumentError("max_in_flight must be at least 1");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  const absl::Duration stall = options.stall_timeout.value_or(options_.deadline);
  if (stall <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("stall_timeout must be positive");
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string request_id,
                             RequestIdFor(options.request_id));
  const absl::Time deadline = options.timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : env_.now() + options.timeout;

  StreamJob job(count, options);
  std::vector<size_t> pending(count);
  for (size_t i = 0; i < count; ++i) pending[i] = i;
  int attempts = 0;
  while (!pending.empty()) {
    ++attempts;
    {
      absl::MutexLock lock(&job.mu);
      for (size_t i : pending) job.states[i] = ItemState::kQueued;
      job.retry.clear();
      job.in_flight = 0;
      job.opening = true;
      job.reader_done = false;
      job.stalled = false;
      job.stalled_opening = false;
      job.answered_in_pass = 0;
      job.last_progress = stall_clock_->Now();
    }

    grpc::ClientContext context;
    PrepareContext(deadline, request_id, &context);
    // Watchdog: cancels the pass when the stream has not opened within `stall`, or
    // no answer comes for `stall` while items are in flight.
    std::thread watchdog([&] {
      absl::MutexLock lock(&job.mu);
      while (!job.reader_done) {
        const absl::Time now = stall_clock_->Now();
        const bool waiting = job.opening || job.in_flight > 0;
        if (waiting && now - job.last_progress >= stall) {
          job.stalled = true;
          job.stalled_opening = job.opening;
          context.TryCancel();
          return;
        }
        // Not absl::CondVar's timed wait, which this Abseil times on the wall clock.
        stall_clock_->WaitWithDeadline(&job.mu, &job.cv,
                                       (waiting ? job.last_progress : now) + stall);
      }
    });
    std::unique_ptr<
        grpc::ClientReaderWriter<v1::EmbedStreamRequest, v1::EmbedStreamResponse>>
        stream = stub_->EmbedStream(&context);
    {
      absl::MutexLock lock(&job.mu);
      job.opening = false;
      job.last_progress = stall_clock_->Now();
      job.cv.SignalAll();
    }

    // Writer: loads and sends the pass's items, keeping at most max_in_flight
    // unanswered.
    std::thread writer([&] {
      for (size_t index : pending) {
        {
          absl::MutexLock lock(&job.mu);
          while (job.in_flight >= options.max_in_flight && !job.reader_done &&
                 !job.stop) {
            job.cv.Wait(&job.mu);
          }
          if (job.reader_done || job.stop) break;
        }
        absl::StatusOr<EmbedItem> item = load(index);
        if (!item.ok()) {
          absl::MutexLock lock(&job.mu);
          job.SettleLocked(index, item.status());
          if (job.stop) context.TryCancel();
          continue;
        }
        v1::EmbedStreamRequest request;
        request.set_id(absl::StrCat(index));
        if (item->kind == EmbedItem::Kind::kImage) {
          request.mutable_image()->set_encoded(std::move(item->data));
        } else {
          request.set_text(std::move(item->data));
        }
        request.set_normalize(options.normalize);
        request.set_truncate(options.truncate);
        {
          absl::MutexLock lock(&job.mu);
          if (job.in_flight++ == 0) job.last_progress = stall_clock_->Now();
          job.states[index] = ItemState::kSent;
          job.cv.SignalAll();
        }
        if (!stream->Write(request)) break;  // the stream is over; Finish() says why
      }
      stream->WritesDone();
    });

    // Reader: this thread.
    v1::EmbedStreamResponse response;
    while (stream->Read(&response)) {
      size_t index = 0;
      absl::MutexLock lock(&job.mu);
      if (!absl::SimpleAtoi(response.id(), &index) || index >= count ||
          job.states[index] != ItemState::kSent) {
        continue;  // not an answer to an outstanding item of ours: ignore it
      }
      --job.in_flight;
      job.last_progress = stall_clock_->Now();
      job.cv.SignalAll();
      if (response.has_error()) {
        absl::Status error = FromRpcStatus(response.error());
        SetRequestId(request_id, &error);
        if (options.retry && IsRetryable(error)) {
          job.states[index] = ItemState::kRetry;
          job.retry.emplace_back(index, std::move(error));
          continue;
        }
        ++job.answered_in_pass;
        job.SettleLocked(index, std::move(error));
        if (job.stop) context.TryCancel();
        continue;
      }
      ++job.answered_in_pass;
      if (!response.has_embedding()) {
        absl::Status error = absl::InternalError("the server answered without a result");
        SetRequestId(request_id, &error);
        job.SettleLocked(index, std::move(error));
        if (job.stop) context.TryCancel();
        continue;
      }
      // Every embedding of the job as wide as the first, checked as each arrives, so a
      // server cannot make the client keep rows it could not write.
      if (absl::Status malformed = CheckStreamEmbedding(job.width, response.embedding());
          !malformed.ok()) {
        SetRequestId(request_id, &malformed);
        job.SettleLocked(index, std::move(malformed));
        if (job.stop) context.TryCancel();
        continue;
      }
      job.width = static_cast<size_t>(response.embedding().values_size());
      EmbeddedItem result;
      result.embedding.assign(response.embedding().values().begin(),
                              response.embedding().values().end());
      result.truncated = response.truncated();
      result.num_tokens = response.num_tokens();
      job.SettleLocked(index, std::move(result));
    }
    {
      absl::MutexLock lock(&job.mu);
      job.reader_done = true;
      job.cv.SignalAll();
    }
    writer.join();
    watchdog.join();
    const absl::Status stream_status = FromGrpcStatus(stream->Finish());

    // Decide the fate of every item of the pass that has no final result.
    std::vector<size_t> next;
    absl::Status retry_reason;
    std::optional<absl::Duration> delay;
    {
      absl::MutexLock lock(&job.mu);
      absl::Status unanswered = stream_status;
      bool unanswered_retryable = options.retry && IsRetryable(stream_status);
      if (job.stalled) {
        unanswered = absl::DeadlineExceededError(
            job.stalled_opening
                ? absl::StrCat("the server did not accept the stream within ",
                               absl::FormatDuration(stall))
                : absl::StrCat("no answer from the server for ",
                               absl::FormatDuration(stall)));
        unanswered_retryable = false;
      } else if (job.stop) {
        unanswered = NotProcessedError();
        unanswered_retryable = false;
      } else if (unanswered.ok()) {
        unanswered = absl::InternalError("the stream ended without answering this item");
      }
      SetRequestId(request_id, &unanswered);
      std::optional<absl::Duration> longest_hint;
      for (auto& [index, status] : job.retry) {
        std::optional<absl::Duration> hint = RetryInfoDelay(status);
        if (retry_reason.ok() || (hint && (!longest_hint || *hint > *longest_hint))) {
          retry_reason = status;
          longest_hint = hint;
        }
      }
      if (retry_reason.ok() && unanswered_retryable) retry_reason = unanswered;
      for (size_t index : pending) {
        switch (job.states[index]) {
          case ItemState::kQueued:
          case ItemState::kSent:
            if (unanswered_retryable) {
              job.states[index] = ItemState::kRetry;
              job.retry.emplace_back(index, unanswered);
            } else {
              job.SettleLocked(index, unanswered);
            }
            break;
          default:
            break;
        }
      }
      for (auto& [index, status] : job.retry) next.push_back(index);
      std::sort(next.begin(), next.end());
      if (job.answered_in_pass > 0) attempts = 1;
      if (!next.empty() && !job.stop) {
        delay = NextRetryDelay(options_.retry, retry_reason, attempts,
                               deadline - env_.now(), env_.uniform());
      }
      if (!delay.has_value()) {
        for (auto& [index, status] : job.retry)
          job.SettleLocked(index, std::move(status));
        next.clear();
      }
    }
    if (delay.has_value()) env_.sleep(*delay);
    pending = std::move(next);
  }
  absl::MutexLock lock(&job.mu);
  return std::move(job.results);
}

}  // namespace clipserve
